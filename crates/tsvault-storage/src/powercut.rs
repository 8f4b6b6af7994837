//! Simulated power cuts (builds with the `failpoints` feature, for tests; otherwise every
//! hook is empty). With `TSVAULT_POWERCUT=1` in the environment, the engine records what is
//! durable as it runs: a file's bytes up to its last fsync, a directory's entries as of its
//! last fsync. What is durable is kept in `.powercut-state` in the data directory as it
//! changes, so that a process killed without a cut (SIGKILL, a clean exit) hands the next
//! one what was really fsynced, not what the page cache still shows: bytes a killed process
//! wrote but never fsynced stay undurable until a later fsync. Only a directory with no
//! such record (first use, or after a cut, which leaves everything durable) is taken as
//! durable as found. When the fault point `powercut` (or `powercut-after-open`, at the end
//! of a start) fires, the data directory is put back to exactly that state (bytes written but not
//! fsynced are dropped, except, at random, a prefix of them: a torn write; files created,
//! renamed or removed since their directory's last fsync are un-created, renamed back or
//! brought back), and the process aborts. What a restart then finds is what a machine that
//! lost power at that moment would have kept, on a file system that keeps no more than
//! POSIX promises.
//!
//! The points where a cut can fall are before and after every fsync (of files and of
//! directories), rename and removal, and after every WAL append. Snapshots (`snapshots/`)
//! and quarantined files are left as they are: they are not part of the store's state.

#[cfg(feature = "failpoints")]
pub(crate) use imp::*;

#[cfg(not(feature = "failpoints"))]
mod off {
    use std::fs::File;
    use std::path::Path;

    #[inline(always)]
    pub(crate) fn start(_: &Path) {}
    #[inline(always)]
    pub(crate) fn point() {}
    #[inline(always)]
    pub(crate) fn after_open() {}
    #[inline(always)]
    pub(crate) fn file_synced(_: &File) {}
    #[inline(always)]
    pub(crate) fn dir_synced(_: &Path) {}
    #[inline(always)]
    pub(crate) fn before_unlink(_: &Path) {}
}
#[cfg(not(feature = "failpoints"))]
pub(crate) use off::*;

#[cfg(feature = "failpoints")]
mod imp {
    use std::collections::HashMap;
    use std::ffi::OsString;
    use std::fs::{self, File};
    use std::os::unix::fs::MetadataExt;
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    /// The stash of unlinked files (hard links keep their bytes), inside the data directory.
    const STASH: &str = ".powercut";
    /// What is durable, as of the last fsync of this process or an earlier one.
    const RECORD: &str = ".powercut-state";

    struct State {
        root: PathBuf,
        /// Bytes of each file (by inode) that are durable.
        synced: HashMap<u64, u64>,
        /// The durable entries (name → inode) of each simulated directory.
        entries: HashMap<PathBuf, HashMap<OsString, u64>>,
        rng: u64,
    }

    static STATE: Mutex<Option<State>> = Mutex::new(None);

    fn simulated(root: &Path) -> [PathBuf; 3] {
        [root.to_owned(), root.join("wal"), root.join("segments")]
    }

    /// The files of `dir` (name → inode), without the lock and the stash.
    fn files(dir: &Path) -> HashMap<OsString, u64> {
        let Ok(list) = fs::read_dir(dir) else {
            return HashMap::new();
        };
        list.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter(|e| e.file_name() != crate::engine::LOCK_FILE && e.file_name() != RECORD)
            .filter_map(|e| Some((e.file_name(), e.metadata().ok()?.ino())))
            .collect()
    }

    /// Starts recording for the data directory `root` when `TSVAULT_POWERCUT` is set: what an
    /// earlier process recorded as durable, or, with no record, what is there now.
    pub(crate) fn start(root: &Path) {
        if std::env::var_os("TSVAULT_POWERCUT").is_none() {
            return;
        }
        let (synced, entries) = load(root).unwrap_or_else(|| {
            let mut synced = HashMap::new();
            let mut entries = HashMap::new();
            for dir in simulated(root) {
                let here = files(&dir);
                for (name, &ino) in &here {
                    if let Ok(md) = fs::metadata(dir.join(name)) {
                        synced.insert(ino, md.len());
                    }
                }
                entries.insert(dir, here);
            }
            (synced, entries)
        });
        let seed = std::env::var("TSVAULT_POWERCUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        let st = State {
            root: root.to_owned(),
            synced,
            entries,
            rng: seed | 1,
        };
        save(&st);
        *STATE.lock().unwrap_or_else(|p| p.into_inner()) = Some(st);
    }

    /// The durable state an earlier process recorded for `root`, if any.
    #[allow(clippy::type_complexity)]
    fn load(root: &Path) -> Option<(HashMap<u64, u64>, HashMap<PathBuf, HashMap<OsString, u64>>)> {
        let text = fs::read_to_string(root.join(RECORD)).ok()?;
        let dirs = simulated(root);
        let mut synced = HashMap::new();
        let mut entries: HashMap<PathBuf, HashMap<OsString, u64>> =
            dirs.iter().map(|d| (d.clone(), HashMap::new())).collect();
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["S", ino, len] => {
                    synced.insert(ino.parse().ok()?, len.parse().ok()?);
                }
                ["E", d, ino, name] => {
                    let dir = dirs.get(d.parse::<usize>().ok()?)?;
                    entries
                        .get_mut(dir)?
                        .insert(OsString::from(name), ino.parse().ok()?);
                }
                _ => return None,
            }
        }
        Some((synced, entries))
    }

    /// Records what is durable now, for a later process (see the module's comment).
    fn save(st: &State) {
        let mut text = String::new();
        for (ino, len) in &st.synced {
            text.push_str(&format!("S {ino} {len}\n"));
        }
        for (i, dir) in simulated(&st.root).iter().enumerate() {
            for (name, ino) in st.entries.get(dir).into_iter().flatten() {
                text.push_str(&format!("E {i} {ino} {}\n", name.to_string_lossy()));
            }
        }
        let tmp = st.root.join(format!("{RECORD}.tmp"));
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, st.root.join(RECORD));
        }
    }

    /// A moment where the power may go (the `powercut` fault point).
    pub(crate) fn point() {
        fail::fail_point!("powercut", |_| cut());
    }

    /// The end of a start (the `powercut-after-open` fault point): the moment the engine
    /// has replayed the WAL and created its new WAL file.
    pub(crate) fn after_open() {
        fail::fail_point!("powercut-after-open", |_| cut());
    }

    /// `file` was fsynced: its bytes so far are durable.
    pub(crate) fn file_synced(file: &File) {
        let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(st), Ok(md)) = (guard.as_mut(), file.metadata()) {
            st.synced.insert(md.ino(), md.len());
            save(st);
        }
    }

    /// Directory `dir` was fsynced: its entries are durable.
    pub(crate) fn dir_synced(dir: &Path) {
        let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(st) = guard.as_mut()
            && let Some(e) = st.entries.get_mut(dir)
        {
            *e = files(dir);
            save(st);
        }
    }

    /// `path` is about to be unlinked (removed, or replaced by a rename): a hard link in the
    /// stash keeps its bytes, which a cut before the directory's fsync brings back.
    pub(crate) fn before_unlink(path: &Path) {
        let guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        let Some(st) = guard.as_ref() else { return };
        let Ok(md) = fs::symlink_metadata(path) else {
            return;
        };
        if !md.is_file() {
            return;
        }
        let stash = st.root.join(STASH);
        let _ = fs::create_dir_all(&stash);
        let _ = fs::hard_link(path, stash.join(md.ino().to_string()));
    }

    /// Puts the directory back to its durable state and aborts the process.
    fn cut() -> ! {
        let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(st) => match apply(st) {
                Ok(()) => eprintln!("power cut simulated in {}", st.root.display()),
                Err(e) => eprintln!("power cut simulation failed: {e}"),
            },
            // Before the engine took its lock (creating its directories): nothing of this
            // process is in the store yet, so there is nothing to take back.
            None => eprintln!("power cut simulated before the store opened"),
        }
        std::process::abort()
    }

    fn apply(st: &mut State) -> std::io::Result<()> {
        // Where each inode can still be found: the simulated directories and the stash.
        let mut found: HashMap<u64, PathBuf> = HashMap::new();
        let stash = st.root.join(STASH);
        for dir in simulated(&st.root).iter().chain([&stash]) {
            for (name, ino) in files(dir) {
                found.entry(ino).or_insert_with(|| dir.join(name));
            }
        }
        // The durable names that no longer point at their file, each with that file first
        // linked into the stash: relinking one name then never takes away what another needs.
        fs::create_dir_all(&stash)?;
        let mut relink = Vec::new();
        for dir in simulated(&st.root) {
            let durable = st.entries.get(&dir).cloned().unwrap_or_default();
            let now = files(&dir);
            for (name, ino) in &durable {
                if now.get(name) == Some(ino) {
                    continue;
                }
                let src = found.get(ino).ok_or_else(|| {
                    std::io::Error::other(format!(
                        "{} (inode {ino}) is durable but gone: an unlink without a hook",
                        dir.join(name).display()
                    ))
                })?;
                let kept = stash.join(ino.to_string());
                if !kept.exists() {
                    fs::hard_link(src, &kept)?;
                }
                relink.push((dir.join(name), kept));
            }
        }
        // Names a directory did not durably hold go (a durable name that points at another
        // file is relinked below).
        for dir in simulated(&st.root) {
            let durable = st.entries.get(&dir).cloned().unwrap_or_default();
            for name in files(&dir).keys() {
                if !durable.contains_key(name) {
                    fs::remove_file(dir.join(name))?;
                }
            }
        }
        for (dst, src) in relink {
            let _ = fs::remove_file(&dst);
            fs::hard_link(&src, &dst)?;
        }
        // Bytes not fsynced are lost; at random, a prefix of them made it (a torn write).
        for dir in simulated(&st.root) {
            for (name, ino) in files(&dir) {
                let path = dir.join(&name);
                let len = fs::metadata(&path)?.len();
                let synced = st.synced.get(&ino).copied().unwrap_or(0).min(len);
                if len > synced {
                    st.rng ^= st.rng << 13;
                    st.rng ^= st.rng >> 7;
                    st.rng ^= st.rng << 17;
                    let kept = if st.rng.is_multiple_of(2) {
                        0
                    } else {
                        (st.rng >> 8) % (len - synced + 1)
                    };
                    let f = fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(synced + kept)?;
                    f.sync_all()?;
                }
            }
            File::open(&dir)?.sync_all()?;
        }
        let _ = fs::remove_dir_all(&stash);
        // Everything left is durable now: no record, the next start takes it as found.
        let _ = fs::remove_file(st.root.join(RECORD));
        File::open(&st.root)?.sync_all()
    }
}
