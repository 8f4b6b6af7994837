//! Backups of a stopped data directory, and restores into an empty one.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use rand::RngCore;

use crate::error::{Error, Result};
use crate::locks::{Lock, LockKind, now_ms};
use crate::manifest::{BackupManifest, BackupType, FileEntry};
use crate::prune::civil;
use crate::repo::Repository;
use tsvault_storage::RESTORE_MARKER;

/// Files are cut into blobs of this size: big enough that per-object overhead is small,
/// small enough that an appended WAL file shares all but its last blob with its last backup.
pub const CHUNK_BYTES: usize = 8 << 20;

/// Progress of a long operation: bytes done of a total.
pub trait Progress: Sync {
    fn start(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
}

/// A progress sink that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// A new backup id: the UTC time to the millisecond, then random hex, so ids sort by time.
fn new_backup_id(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut rnd = [0u8; 4];
    rand::rng().fill_bytes(&mut rnd);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000),
        hex::encode(rnd)
    )
}

/// Every file of the data directory to back up, relative, sorted; the lock file and
/// quarantined files are left out.
fn data_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
        let here = root.join(rel);
        for e in fs::read_dir(&here).map_err(Error::io("list", &here))? {
            let e = e.map_err(Error::io("list", &here))?;
            let name = e.file_name().into_string().map_err(|n| {
                Error::Invalid(format!("{}: file name {n:?} is not UTF-8", here.display()))
            })?;
            let rel_path = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            let ty = e.file_type().map_err(Error::io("stat", e.path()))?;
            if ty.is_dir() {
                if rel.is_empty() && name == "quarantine" {
                    continue;
                }
                walk(root, &rel_path, out)?;
            } else if ty.is_file() {
                if rel.is_empty() && name == "LOCK" {
                    continue;
                }
                out.push(rel_path);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, "", &mut out)?;
    out.sort();
    Ok(out)
}

/// Backs up the stopped data directory `dir`. `kind` None: incremental when the repository
/// holds a full backup of this directory, else full. Incremental (against the newest backup
/// of the directory) and differential (against its newest full) backups list every file but
/// read only those whose size or modification time changed. Refuses a directory a running
/// server holds (its lock is taken). Blobs first, the manifest last.
pub async fn backup_data_dir(
    repo: &Repository,
    dir: &Path,
    kind: Option<BackupType>,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    if !dir.join("MANIFEST").is_file() && !dir.join("wal").is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a tsvault data directory (no MANIFEST, no wal/)",
            dir.display()
        )));
    }
    if dir.join(RESTORE_MARKER).exists() {
        return Err(Error::Invalid(format!(
            "{} holds an interrupted restore; finish it (run the restore again) before backing it up",
            dir.display()
        )));
    }
    // A running server holds an exclusive lock on LOCK; holding it here keeps one from
    // starting on the directory while it is read.
    let lock_path = dir.join("LOCK");
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(Error::io("open", &lock_path))?;
    if lock.try_lock().is_err() {
        return Err(Error::Invalid(format!(
            "{} is in use by a running tsvault server; stop it, or back it up online with --server",
            dir.display()
        )));
    }
    let repo_lock = Lock::acquire(repo, LockKind::Backup).await?;
    let result = backup_locked(repo, dir, kind, progress, repo_lock).await;
    drop(lock);
    result
}

/// The body of [`backup_data_dir`], holding the repository's shared lock, which it releases
/// (on success and on failure) after the manifest is written.
async fn backup_locked(
    repo: &Repository,
    dir: &Path,
    kind: Option<BackupType>,
    progress: &dyn Progress,
    mut repo_lock: Lock,
) -> Result<BackupManifest> {
    let written = write_backup(repo, dir, kind, progress, &mut repo_lock).await;
    let released = repo_lock.release(repo).await;
    let manifest = written?;
    released?;
    Ok(manifest)
}

/// The modification time of `md` in ns since the epoch (0 when the system has none).
fn mtime_ns(md: &fs::Metadata) -> i128 {
    md.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128)
}

/// The newest backup of `source`, and its newest full backup, in one scan of the manifests
/// from the newest: what an incremental and a differential backup are taken against.
async fn references(
    repo: &Repository,
    source: &str,
) -> Result<(Option<BackupManifest>, Option<BackupManifest>)> {
    let mut newest = None;
    for id in repo.backup_ids().await?.iter().rev() {
        let m = repo.manifest(id).await?;
        if m.source != source {
            continue;
        }
        if m.kind == BackupType::Full {
            let newest = newest.unwrap_or_else(|| m.clone());
            return Ok((Some(newest), Some(m)));
        }
        newest.get_or_insert(m);
    }
    Ok((newest, None))
}

async fn write_backup(
    repo: &Repository,
    dir: &Path,
    kind: Option<BackupType>,
    progress: &dyn Progress,
    repo_lock: &mut Lock,
) -> Result<BackupManifest> {
    let started_ms = now_ms();
    let source = fs::canonicalize(dir)
        .map_err(Error::io("resolve", dir))?
        .display()
        .to_string();
    let (newest, newest_full) = match kind {
        Some(BackupType::Full) => (None, None),
        _ => references(repo, &source).await?,
    };
    // Default: incremental when a full backup of this source exists, else full.
    let kind = kind.unwrap_or(if newest_full.is_some() {
        BackupType::Incremental
    } else {
        BackupType::Full
    });
    let reference = match kind {
        BackupType::Full => None,
        BackupType::Incremental => newest,
        BackupType::Differential => newest_full,
    };
    if kind != BackupType::Full && reference.is_none() {
        return Err(Error::Invalid(format!(
            "no full backup of {source} in repository {} to take a {} backup against; take a full one first",
            repo.url,
            if kind == BackupType::Incremental {
                "incremental"
            } else {
                "differential"
            }
        )));
    }
    let known: std::collections::HashMap<&str, &FileEntry> = reference
        .iter()
        .flat_map(|m| m.files.iter().map(|f| (f.path.as_str(), f)))
        .collect();
    let files = data_files(dir)?;
    let mut stats = Vec::with_capacity(files.len());
    let mut total = 0;
    for f in &files {
        let p = dir.join(f);
        let md = fs::metadata(&p).map_err(Error::io("stat", &p))?;
        total += md.len();
        stats.push((md.len(), mtime_ns(&md)));
    }
    progress.start(total);
    let mut entries = Vec::with_capacity(files.len());
    let (mut logical, mut uploaded, mut read) = (0u64, 0u64, 0u64);
    let mut buf = vec![0u8; CHUNK_BYTES];
    for (rel, (size_now, mtime)) in files.into_iter().zip(stats) {
        // Unchanged since the reference (same size and modification time) and still whole
        // in the repository: its entry is reused without reading the file.
        if let Some(old) = known.get(rel.as_str())
            && old.size == size_now
            && old.mtime_ns == mtime
            && mtime != 0
        {
            let mut present = true;
            for blob in &old.blobs {
                present &= repo.has_blob(blob).await?;
            }
            if present {
                logical += old.size;
                progress.advance(old.size);
                entries.push((*old).clone());
                continue;
            }
        }
        let p = dir.join(&rel);
        let mut file = File::open(&p).map_err(Error::io("open", &p))?;
        let mut hasher = blake3::Hasher::new();
        let mut blobs = Vec::new();
        let mut size = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf).map_err(Error::io("read", &p))?;
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            hasher.update(chunk);
            let (id, up) = repo.put_blob(chunk).await?;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("backup-blob-stored", |_| std::process::abort());
            repo_lock.refresh_if_due(repo).await?;
            blobs.push(id);
            uploaded += up;
            size += n as u64;
            progress.advance(n as u64);
        }
        read += size;
        logical += size;
        entries.push(FileEntry {
            path: rel,
            size,
            blake3: hasher.finalize().to_hex().to_string(),
            blobs,
            mtime_ns: mtime,
        });
    }
    let (parent, base) = match (&reference, kind) {
        (Some(r), BackupType::Incremental) => (
            Some(r.id.clone()),
            if r.kind == BackupType::Full {
                Some(r.id.clone())
            } else {
                r.base.clone()
            },
        ),
        (Some(r), BackupType::Differential) => (Some(r.id.clone()), Some(r.id.clone())),
        _ => (None, None),
    };
    let manifest = BackupManifest {
        id: new_backup_id(started_ms),
        kind,
        parent,
        base,
        started_ms,
        finished_ms: now_ms(),
        source,
        logical_bytes: logical,
        uploaded_bytes: uploaded,
        read_bytes: read,
        files: entries,
    };
    repo.put_manifest(&manifest).await?;
    Ok(manifest)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `path` from a manifest as a safe relative path: normal components only, so that nothing
/// is written outside the target.
fn safe_relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    // Checked on the text as well as the parsed path: `Path` silently drops `.` and
    // repeated separators, and a manifest holds exactly what was written.
    let ok = !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::Invalid(format!(
            "the manifest names the file {path:?}, which would be written outside the target; refusing to restore it"
        )));
    }
    Ok(p.to_path_buf())
}

/// Restores backup `id` (or the newest) into `target`, which must be empty or absent, or hold
/// an interrupted restore of the same backup (which is resumed: files already in place and
/// right are kept). While it runs, `target` holds a `RESTORING` marker that keeps a server
/// from starting on it. Every file is checked against its hash before it is renamed into
/// place; files and directories are fsynced.
pub async fn restore_data_dir(
    repo: &Repository,
    id: Option<&str>,
    target: &Path,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    let id =
        match id {
            Some(id) if id != "latest" => id.to_string(),
            _ => repo.backup_ids().await?.pop().ok_or_else(|| {
                Error::Invalid(format!("repository {} holds no backup", repo.url))
            })?,
        };
    let manifest = repo.manifest(&id).await?;
    // Every path is checked before anything is written.
    let paths: Vec<PathBuf> = manifest
        .files
        .iter()
        .map(|f| safe_relative(&f.path))
        .collect::<Result<_>>()?;
    if manifest.files.iter().any(|f| f.path == RESTORE_MARKER) {
        return Err(Error::Invalid(format!(
            "backup {id} names a file {RESTORE_MARKER}, which restore reserves; refusing it"
        )));
    }
    // The target is empty, or holds an interrupted restore of this same backup (resumed).
    let marker = target.join(RESTORE_MARKER);
    let resuming = match fs::read_to_string(&marker) {
        Ok(text) if text.trim() == id => true,
        Ok(text) => {
            return Err(Error::Invalid(format!(
                "{} holds an interrupted restore of backup {}; finish that one, or restore into an empty directory",
                target.display(),
                text.trim()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("read", &marker)(e)),
    };
    if !resuming && target.exists() {
        let mut entries = fs::read_dir(target).map_err(Error::io("list", target))?;
        if entries.next().is_some() {
            return Err(Error::Invalid(format!(
                "{} is not empty; restore into an empty or new directory",
                target.display()
            )));
        }
    }
    if !resuming {
        fs::create_dir_all(target).map_err(Error::io("create", target))?;
        let mut m = File::create(&marker).map_err(Error::io("create", &marker))?;
        m.write_all(id.as_bytes())
            .and_then(|()| m.sync_all())
            .map_err(Error::io("write", &marker))?;
        sync_dir(target)?;
    }
    progress.start(manifest.logical_bytes);
    for (entry, rel) in manifest.files.iter().zip(paths) {
        let dst = target.join(&rel);
        let parent = dst.parent().unwrap_or(target).to_path_buf();
        fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
        // Resuming: a file already in place is kept if it is whole and right.
        if resuming && file_matches(&dst, entry)? {
            progress.advance(entry.size);
            continue;
        }
        // Written under a temporary name, renamed into place only once whole and checked.
        let tmp = dst.with_extension("restoring");
        let written = restore_file(repo, &manifest.id, entry, &tmp, progress).await;
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        fs::rename(&tmp, &dst).map_err(Error::io("rename", &dst))?;
    }
    sync_tree(target)?;
    // Done: without the marker, the directory is a data directory again.
    fs::remove_file(&marker).map_err(Error::io("remove", &marker))?;
    sync_dir(target)?;
    Ok(manifest)
}

/// Whether `path` exists with exactly `entry`'s size and BLAKE3.
fn file_matches(path: &Path, entry: &FileEntry) -> Result<bool> {
    match fs::metadata(path) {
        Ok(md) if md.len() == entry.size => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("stat", path)(e)),
    }
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(path).map_err(Error::io("open", path))?;
    std::io::copy(&mut f, &mut hasher).map_err(Error::io("read", path))?;
    Ok(hasher.finalize().to_hex().as_str() == entry.blake3)
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// Writes `entry`'s blobs to `tmp`, checks its size and hash, and fsyncs it.
async fn restore_file(
    repo: &Repository,
    backup: &str,
    entry: &FileEntry,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut out = File::create(tmp).map_err(Error::io("create", tmp))?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    for blob in &entry.blobs {
        let whose = || format!("(file {} of backup {backup})", entry.path);
        let bytes = repo.get_blob(blob).await.map_err(|e| match e {
            Error::Missing { what } => Error::Missing {
                what: format!("{what} {}", whose()),
            },
            Error::Corrupt { what, detail } => Error::Corrupt {
                what: format!("{what} {}", whose()),
                detail,
            },
            e => e,
        })?;
        hasher.update(&bytes);
        size += bytes.len() as u64;
        out.write_all(&bytes).map_err(Error::io("write", tmp))?;
        #[cfg(feature = "failpoints")]
        fail::fail_point!("restore-blob-written", |_| std::process::abort());
        progress.advance(bytes.len() as u64);
    }
    if size != entry.size || hasher.finalize().to_hex().as_str() != entry.blake3 {
        return Err(Error::Corrupt {
            what: format!("file {} of backup {backup}", entry.path),
            detail: "its restored bytes do not match the size and hash in the manifest".into(),
        });
    }
    out.sync_all().map_err(Error::io("fsync", tmp))
}

/// Fsyncs every directory under `dir` (and `dir`), so restored names survive power loss.
fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let e = e.map_err(Error::io("list", dir))?;
        if e.file_type().map_err(Error::io("stat", e.path()))?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub backup: String,
    pub detail: String,
}

/// Checks backup `id`: its manifest decodes, and every blob it names exists; with
/// `read_data`, every blob is also read, decrypted and hashed. Returns every problem found.
pub async fn verify_backup(repo: &Repository, id: &str, read_data: bool) -> Vec<Problem> {
    let problem = |detail: String| Problem {
        backup: id.to_string(),
        detail,
    };
    let manifest = match repo.manifest(id).await {
        Ok(m) => m,
        Err(e) => return vec![problem(e.to_string())],
    };
    let mut problems = Vec::new();
    // A blob shared by several files (or repeated in one) is checked once.
    let mut checked = std::collections::HashSet::new();
    for f in &manifest.files {
        if let Err(e) = safe_relative(&f.path) {
            problems.push(problem(e.to_string()));
        }
        for blob in &f.blobs {
            if !checked.insert(blob.as_str()) {
                continue;
            }
            let r = if read_data {
                repo.get_blob(blob).await.map(|_| ())
            } else {
                match repo.has_blob(blob).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(Error::Missing {
                        what: format!("blob {blob}"),
                    }),
                    Err(e) => Err(e),
                }
            };
            if let Err(e) = r {
                problems.push(problem(format!("file {}: {e}", f.path)));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_ids_sort_by_time_and_name_the_utc_date() {
        let a = new_backup_id(0);
        assert!(a.starts_with("19700101T000000.000Z-"), "{a}");
        let b = new_backup_id(1_763_700_000_123);
        assert!(b.starts_with("20251121T044000.123Z-"), "{b}");
        assert!(a < b);
        assert!(new_backup_id(951_782_400_000).starts_with("20000229T"));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        for good in ["MANIFEST", "segments/00000000000000000001.seg", "wal/x"] {
            assert!(safe_relative(good).is_ok(), "{good:?}");
        }
    }
}
