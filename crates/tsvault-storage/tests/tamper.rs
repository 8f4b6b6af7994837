//! The class "every file a recovery depends on is accounted for": deleting, truncating or
//! reordering any one file of a stopped data directory is reported by `tsvault check` and at
//! start (refused, or served without it and named), or loses nothing acknowledged.
//!
//! One exception, a limit of any write-ahead log without an external record of its length:
//! the newest WAL file cut inside its records (past the header and first record fsynced at
//! its creation) looks like the torn write a crash leaves; `check` names it, the start logs
//! the cut, but which records were acknowledged no file can tell (a cut at a record boundary
//! is not even seen). A crash cannot do it: every acknowledged record was fsynced. Every
//! older file is checked against the length its successor recorded when it was created.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::{HOUR, key, open, pt};
use tsvault_model::ReadCap;
use tsvault_storage::{Engine, EngineConfig};

/// A stopped directory with two segments and three WAL files, and every acknowledged
/// (series, ts) -> value.
fn build(dir: &Path) -> BTreeMap<(String, i64), f64> {
    let mut acked = BTreeMap::new();
    let mut write = |e: &Engine, host: &str, ts: i64, v: f64| {
        e.write(&[pt(&key("m", host), ts, v)]).unwrap();
        acked.insert((host.to_owned(), ts), v);
    };
    {
        let e = open(dir);
        write(&e, "a", HOUR, 1.0);
        e.flush().unwrap();
        write(&e, "b", 7 * HOUR, 2.0);
        e.flush().unwrap();
        write(&e, "c", 13 * HOUR, 3.0);
        write(&e, "c", 13 * HOUR + 1, 3.5);
        e.close_without_flush();
    }
    for (host, ts) in [("d", 19 * HOUR), ("e", 25 * HOUR)] {
        let e = open(dir);
        write(&e, host, ts, 4.0);
        write(&e, host, ts + 1, 4.5);
        e.close_without_flush();
    }
    acked
}

/// One way to damage a file, given its path in the copy.
type Tamper = Box<dyn Fn(&Path)>;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in ["", "wal", "segments"] {
        for e in fs::read_dir(dir.join(sub)).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() && !p.ends_with("LOCK") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The byte at which the first record after the header (and the predecessor record, when
/// the file has one) ends: a cut there is at a record boundary.
fn first_record_end(bytes: &[u8]) -> usize {
    let frame =
        |off: usize| 8 + u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
    let mut off = 8;
    let mut end = off + frame(off);
    // A predecessor record (type 3) comes first; the boundary wanted is after a data record.
    if bytes[off + 8] == 3 && end < bytes.len() {
        off = end;
        end = off + frame(off);
    }
    end
}

#[test]
fn any_one_file_deleted_cut_or_reordered_is_reported_or_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    let acked = build(&clean);
    let targets = files(&clean);
    let wal_files: Vec<&PathBuf> = targets
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    assert_eq!(wal_files.len(), 3, "{targets:?}");
    let newest_wal = wal_files.last().unwrap().to_path_buf();
    let mut cases = 0;
    let (mut reported, mut harmless, mut torn_newest) = (0, 0, 0);
    for target in &targets {
        let rel = target.strip_prefix(&clean).unwrap().to_path_buf();
        let len = fs::metadata(target).unwrap().len() as usize;
        let bytes = fs::read(target).unwrap();
        let mut ops: Vec<(String, Tamper)> = vec![
            (
                "delete".into(),
                Box::new(|p: &Path| fs::remove_file(p).unwrap()),
            ),
            (
                "cut to 0".into(),
                Box::new(|p: &Path| {
                    fs::File::options()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(0)
                        .unwrap()
                }),
            ),
        ];
        for cut in [len / 2, len.saturating_sub(1), 8.min(len)] {
            ops.push((
                format!("cut to {cut}"),
                Box::new(move |p: &Path| {
                    fs::File::options()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(cut as u64)
                        .unwrap()
                }),
            ));
        }
        let is_wal = target.extension().is_some_and(|e| e == "wal");
        if is_wal && *target != newest_wal {
            let cut = first_record_end(&bytes);
            ops.push((
                format!("cut at the record boundary {cut}"),
                Box::new(move |p: &Path| {
                    fs::File::options()
                        .write(true)
                        .open(p)
                        .unwrap()
                        .set_len(cut as u64)
                        .unwrap()
                }),
            ));
        }
        // Reordered: swapped with the next file of its kind.
        let same_kind: Vec<&PathBuf> = targets
            .iter()
            .filter(|p| p.parent() == target.parent() && p.extension() == target.extension())
            .collect();
        if let Some(pos) = same_kind.iter().position(|p| *p == target)
            && let Some(other) = same_kind.get(pos + 1)
        {
            let other_rel = other.strip_prefix(&clean).unwrap().to_path_buf();
            let rel = rel.clone();
            ops.push((
                format!("swapped with {}", other_rel.display()),
                Box::new(move |p: &Path| {
                    let root = p
                        .ancestors()
                        .nth(rel.components().count())
                        .unwrap()
                        .to_path_buf();
                    let (a, b) = (root.join(&rel), root.join(&other_rel));
                    let tmp = a.with_extension("swap");
                    fs::rename(&a, &tmp).unwrap();
                    fs::rename(&b, &a).unwrap();
                    fs::rename(&tmp, &b).unwrap();
                }),
            ));
        }
        for (what, op) in ops {
            cases += 1;
            let work = tmp.path().join(format!("case{cases}"));
            copy_dir(&clean, &work);
            op(&work.join(&rel));
            let case = format!("{} {what}", rel.display());
            let report = tsvault_storage::check_data_dir(&work, &mut |_| {}).unwrap();
            let named = |f: &tsvault_storage::Finding| f.file.starts_with(&work);
            let check_says = !report.problems.is_empty() || report.notes.iter().any(named);
            let opened = Engine::open(EngineConfig::new(&work));
            let whole = |e: &Engine| {
                let got: BTreeMap<(String, i64), f64> = e
                    .select("m", &|_| true, (i64::MIN, i64::MAX), ReadCap::NONE)
                    .unwrap()
                    .into_iter()
                    .flat_map(|(k, samples)| {
                        let host = k.tags().next().unwrap().1.to_owned();
                        samples
                            .into_iter()
                            .map(move |s| ((host.clone(), s.ts_ms), s.value))
                    })
                    .collect();
                got == acked
            };
            match opened {
                Ok(e) if whole(&e) => harmless += 1,
                Ok(_)
                    if *target == newest_wal
                        && report.problems.is_empty()
                        && report.notes.iter().any(|n| n.detail.contains("torn write")) =>
                {
                    // The newest file cut inside a record, past what its creation fsynced:
                    // what a crash during an unacknowledged write leaves. Check names it, the
                    // start logs the cut; which records were acknowledged, no file can tell.
                    torn_newest += 1;
                }
                Ok(e) => {
                    // Something acknowledged is missing: both check and start must say so.
                    assert!(check_says, "{case}: data lost and check silent: {report:?}");
                    assert!(
                        !e.quarantined().is_empty(),
                        "{case}: data lost and the start said nothing (check said {report:?})"
                    );
                    reported += 1;
                }
                Err(err) => {
                    assert!(
                        check_says,
                        "{case}: the start refuses ({err}) but check is silent"
                    );
                    reported += 1;
                }
            }
        }
    }
    eprintln!(
        "tamper: {cases} cases over {} files: {reported} reported, {harmless} lost nothing, {torn_newest} a torn newest WAL file (named by check)",
        targets.len()
    );
    assert_eq!(reported + harmless + torn_newest, cases);
    assert!(
        torn_newest <= 2,
        "only cuts inside the newest file's records pass for torn"
    );
}
