//! Recovery from the write-ahead log: what a crash, a torn or damaged record, a power cut
//! or a lost file (WAL file, manifest, segment) leaves, and what the start and `check` make
//! of it: replayed, cut and reported, or refused naming the file, never a silent loss of
//! anything acknowledged.

use std::fs;
use std::path::Path;

mod common;

use common::{HOUR, all, key, open, pt, s};
use tsvault_model::SeriesKey;
use tsvault_storage::{Engine, EngineConfig};

/// A store whose WAL holds two records of series `m{host=a}` (samples at 1 and 2 ms), closed
/// without a flush as after a crash.
fn two_wal_records_then_a_crash() -> (tempfile::TempDir, SeriesKey) {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    let e = open(dir.path());
    e.write(&[pt(&a, 1, 1.0)]).unwrap();
    e.write(&[pt(&a, 2, 2.0)]).unwrap();
    e.close_without_flush();
    (dir, a)
}

#[test]
fn torn_wal_tail_is_cut_and_later_writes_survive() {
    let (dir, a) = two_wal_records_then_a_crash();
    let wal_dir = dir.path().join("wal");
    let mut wals: Vec<_> = fs::read_dir(&wal_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wals.sort();
    let last_with_data = wals
        .iter()
        .rev()
        .find(|p| fs::metadata(p).unwrap().len() > 8)
        .unwrap()
        .clone();
    let len = fs::metadata(&last_with_data).unwrap().len();
    // Tear the last record: cut its final 5 bytes.
    fs::OpenOptions::new()
        .write(true)
        .open(&last_with_data)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    {
        let e = open(dir.path());
        assert_eq!(
            all(&e, "m")[0].1,
            vec![s(1, 1.0)],
            "the torn (unacknowledged) record is gone"
        );
        e.write(&[pt(&a, 3, 3.0)]).unwrap();
        e.close_without_flush();
    }
    assert_eq!(all(&open(dir.path()), "m")[0].1, vec![s(1, 1.0), s(3, 3.0)]);
}

#[test]
fn damaged_tail_of_an_older_wal_file_is_corruption_not_a_torn_write() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    for ts in [1, 2] {
        let e = open(dir.path());
        e.write(&[pt(&a, ts, ts as f64)]).unwrap();
        e.close_without_flush();
    }
    let mut wals: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wals.sort();
    let older = wals[0].clone();
    let len = fs::metadata(&older).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&older)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("must refuse to start");
    let msg = err.to_string();
    assert!(
        msg.contains(&older.display().to_string()) && msg.contains("not the newest"),
        "{msg}"
    );
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(
        all(&e, "m")[0].1,
        vec![s(2, 2.0)],
        "the intact newer file is still replayed"
    );
}

/// A store whose only WAL file holds three one-sample records (ts 1, 2, 3): its directory,
/// the file, its bytes, and the byte offset of the second record.
fn three_records_in_one_wal_file() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    {
        let e = open(dir.path());
        for ts in 1..=3 {
            e.write(&[pt(&a, ts, ts as f64)]).unwrap();
        }
        e.close_without_flush();
    }
    let wal = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap();
    let bytes = fs::read(&wal).unwrap();
    let first_len = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    (dir, wal, bytes, 8 + 8 + first_len)
}

#[test]
fn damage_no_crash_can_cause_in_the_newest_wal_file_refuses_to_start() {
    let (dir, wal, mut bytes, _) = three_records_in_one_wal_file();
    bytes[..8].fill(0); // the header was fsynced when the file was created
    fs::write(&wal, &bytes).unwrap();
    let msg = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("must refuse")
        .to_string();
    assert!(
        msg.contains("bad magic") && msg.contains(&wal.display().to_string()),
        "{msg}"
    );
    assert!(wal.exists(), "nothing was cut or deleted");
}

#[test]
fn quarantined_wal_keeps_its_replayed_prefix_across_a_later_crash() {
    let (dir, wal, mut bytes, second) = three_records_in_one_wal_file();
    bytes[second + 8 + 2] ^= 0x40; // inside the second record's payload
    fs::write(&wal, &bytes).unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    {
        let e = Engine::open(cfg).unwrap();
        assert_eq!(e.quarantined().len(), 1);
        assert!(
            e.quarantined()[0].moved_to.exists(),
            "a copy of the damaged file is kept"
        );
        assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0)]);
        e.close_without_flush();
    }
    let e = open(dir.path());
    assert_eq!(
        all(&e, "m")[0].1,
        vec![s(1, 1.0)],
        "the replayed prefix survived the crash"
    );
}

#[test]
fn power_cut_hole_in_the_newest_wal_file_is_cut_and_reported() {
    let (dir, wal, mut bytes, second) = three_records_in_one_wal_file();
    let a = key("m", "a");
    // The second record's pages never reached the disk; the third one's did.
    let second_len = 8 + u32::from_le_bytes(bytes[second..second + 4].try_into().unwrap()) as usize;
    bytes[second..second + second_len].fill(0);
    fs::write(&wal, &bytes).unwrap();
    let e = open(dir.path());
    assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0)]);
    assert_eq!(e.quarantined().len(), 1, "the cut is reported");
    assert!(e.quarantined()[0].lost.contains("newest WAL file"));
    e.write(&[pt(&a, 4, 4.0)]).unwrap();
    e.close_without_flush();
    drop(e);
    let e = open(dir.path());
    assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0), s(4, 4.0)]);
    assert!(e.quarantined().is_empty(), "the next start is clean");
}

/// A last WAL record whose bytes are all there but fail their checksum was damaged after it
/// was written (or a power cut reordered its pages): it is cut like a torn write, but a copy
/// is kept and the cut is reported, not passed over as a crash leftover.
#[test]
fn a_whole_damaged_last_record_is_reported_not_taken_for_a_torn_write() {
    let (dir, _) = two_wal_records_then_a_crash();
    let mut wals: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wals.sort();
    let newest = wals.last().unwrap();
    let mut bytes = fs::read(newest).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // the last record's last payload byte
    fs::write(newest, &bytes).unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.file == *newest && p.detail.contains("whole but fails its checksum")),
        "{report:?}"
    );
    let e = open(dir.path());
    assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0)]);
    assert_eq!(e.quarantined().len(), 1, "the cut is reported");
}

/// Two WAL files holding acknowledged samples (A in the first, B in the second), nothing
/// flushed.
fn two_wal_files_with_data() -> (tempfile::TempDir, SeriesKey, Vec<std::path::PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    for ts in [1, 2] {
        let e = open(dir.path());
        e.write(&[pt(&a, ts, ts as f64)]).unwrap();
        e.close_without_flush();
    }
    let mut wals: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wals.sort();
    assert_eq!(wals.len(), 2);
    (dir, a, wals)
}

/// A WAL file deleted from a stopped data directory, the first, the newest or one flushed
/// past its start, is reported by `check` and refused at start, naming it; with
/// `--quarantine-corrupt` the rest is served and the loss reported, once.
#[test]
fn a_missing_wal_file_is_reported_by_check_and_refused_at_start() {
    for victim in [0, 1] {
        let (dir, a, wals) = two_wal_files_with_data();
        fs::remove_file(&wals[victim]).unwrap();
        let name = wals[victim]
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.file == wals[victim] && p.detail.contains("missing")),
            "victim {name}: {report:?}"
        );
        let msg = Engine::open(EngineConfig::new(dir.path()))
            .err()
            .expect("must refuse")
            .to_string();
        assert!(msg.contains(&name) && msg.contains("missing"), "{msg}");
        let mut cfg = EngineConfig::new(dir.path());
        cfg.quarantine_corrupt = true;
        {
            let e = Engine::open(cfg).unwrap();
            assert_eq!(e.quarantined().len(), 1, "{:?}", e.quarantined());
            let kept = if victim == 0 { s(2, 2.0) } else { s(1, 1.0) };
            assert_eq!(all(&e, "m")[0].1, vec![kept]);
            e.write(&[pt(&a, 3, 3.0)]).unwrap();
            e.close_without_flush();
        }
        let e = open(dir.path());
        assert!(e.quarantined().is_empty(), "the loss is reported once");
        assert_eq!(all(&e, "m")[0].1.len(), 2);
    }
}

/// With a manifest, the WAL file it starts replay at must be there even when it is the
/// only one.
#[test]
fn a_missing_wal_start_file_after_a_flush_is_refused() {
    let dir = flushed_then_written();
    let wals: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(wals.len(), 1, "{wals:?}");
    fs::remove_file(&wals[0]).unwrap();
    // The record of the newest file goes too: the manifest alone still tells.
    fs::remove_file(dir.path().join("WAL-NEWEST")).unwrap();
    reported_and_refused(dir.path(), "missing");
}

/// The manifest and the WAL deleted together (the files, or the whole `wal/`): the record
/// of the newest WAL file still tells that one is missing, so `check` reports it and a start
/// refuses, rather than rebuilding a manifest from the segments and serving without the
/// acknowledged writes only the WAL held.
#[test]
fn a_lost_manifest_and_wal_are_reported_and_refused() {
    for whole_dir in [false, true] {
        let dir = flushed_then_written();
        fs::remove_file(dir.path().join("MANIFEST")).unwrap();
        let wal = dir.path().join("wal");
        if whole_dir {
            fs::remove_dir_all(&wal).unwrap();
        } else {
            for f in fs::read_dir(&wal).unwrap() {
                fs::remove_file(f.unwrap().path()).unwrap();
            }
        }
        reported_and_refused(dir.path(), "missing");
    }
}

/// A stopped data directory with one sample in a segment and one only in the WAL.
fn flushed_then_written() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    let e = open(dir.path());
    e.write(&[pt(&a, 1, 1.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(&a, 2, 2.0)]).unwrap();
    e.close_without_flush();
    dir
}

/// `check` reports a problem saying `what`, and a start refuses saying it too.
fn reported_and_refused(dir: &Path, what: &str) {
    let report = tsvault_storage::check_data_dir(dir, &mut |_| {}).unwrap();
    assert!(
        report.problems.iter().any(|p| p.detail.contains(what)),
        "{report:?}"
    );
    let err = Engine::open(EngineConfig::new(dir))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains(what), "{err}");
}

/// The newest WAL file cut shorter than its header and predecessor record, which were
/// fsynced when it was created: no crash does that, so the start refuses (it held
/// acknowledged writes) unless told to serve the rest.
#[test]
fn a_newest_wal_file_cut_below_what_was_fsynced_is_refused() {
    let (dir, _a, wals) = two_wal_files_with_data();
    fs::OpenOptions::new()
        .write(true)
        .open(&wals[1])
        .unwrap()
        .set_len(4)
        .unwrap();
    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("must refuse");
    assert!(
        err.to_string().contains("cut, not torn by a crash"),
        "{err}"
    );
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.quarantined().len(), 1, "{:?}", e.quarantined());
    assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0)]);
}

/// A newest file cut to nothing at start (its header never reached the disk) leaves no gap:
/// its number is used again.
#[test]
fn a_newest_wal_file_without_its_header_is_removed_and_leaves_no_gap() {
    let (dir, a, wals) = two_wal_files_with_data();
    // A file created after the last record, its header lost (zeros where blocks were
    // allocated): what a power cut during WalWriter::create leaves.
    let n: u64 = wals[1]
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .parse()
        .unwrap();
    fs::write(
        dir.path().join("wal").join(format!("{:020}.wal", n + 1)),
        [0u8; 8],
    )
    .unwrap();
    for ts in [3, 4] {
        let e = open(dir.path());
        let want: Vec<_> = (1..ts).map(|t| s(t, t as f64)).collect();
        assert_eq!(all(&e, "m")[0].1, want);
        e.write(&[pt(&a, ts, ts as f64)]).unwrap();
        e.close_without_flush();
    }
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
}

/// The record of the newest WAL file deleted together with the newest file (which holds
/// acknowledged writes): the older files' predecessor records show a server that keeps the
/// record, so check and the start report it (both said nothing, and the writes were gone).
#[test]
fn the_newest_wal_record_deleted_with_the_newest_file_is_reported() {
    let (dir, _a, wals) = two_wal_files_with_data();
    // A third file, so the one left is not the only one.
    {
        let e = open(dir.path());
        e.write(&[pt(&key("m", "a"), 3, 3.0)]).unwrap();
        e.close_without_flush();
    }
    let mut all_wals: Vec<_> = fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    all_wals.sort();
    assert_eq!(all_wals.len(), 3, "{wals:?}");
    fs::remove_file(all_wals.last().unwrap()).unwrap();
    fs::remove_file(dir.path().join("WAL-NEWEST")).unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.file.ends_with("WAL-NEWEST")),
        "{report:?}"
    );
    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("WAL-NEWEST"), "{err}");
}

/// MANIFEST and a segment deleted after flushes: refused (the rebuilt manifest would have
/// served the rest as if nothing were missing).
#[test]
fn a_lost_manifest_and_segment_are_refused_not_rebuilt_silently() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("m", "a");
    {
        let e = open(dir.path());
        e.write(&[pt(&k, HOUR, 1.0), pt(&k, 7 * HOUR, 2.0)])
            .unwrap();
        e.flush().unwrap();
        e.close_without_flush();
    }
    fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    let seg = fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(seg).unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(!report.problems.is_empty(), "{report:?}");
    assert!(Engine::open(EngineConfig::new(dir.path())).is_err());
}

/// A directory written before the record of the newest WAL file existed (no record, no
/// predecessor records) gets the record before its first file with a predecessor record, so
/// a crash between the two leaves a record naming an older file (accepted), never a file
/// with a predecessor record and no record (refused as a deleted record).
#[test]
fn a_directory_without_the_newest_wal_record_gets_one_first() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    {
        let e = open(dir.path());
        e.write(&[pt(&a, 1, 1.0)]).unwrap();
        e.close_without_flush();
    }
    // As an earlier version left it: one WAL file, no record.
    let record = dir.path().join("WAL-NEWEST");
    let names_first = fs::read(&record).unwrap();
    fs::remove_file(&record).unwrap();
    {
        let e = open(dir.path());
        e.write(&[pt(&a, 2, 2.0)]).unwrap();
        e.close_without_flush();
    }
    // What a crash right after the new file's creation leaves: the record written first,
    // naming the older file.
    fs::write(&record, names_first).unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let e = open(dir.path());
    assert_eq!(all(&e, "m")[0].1, vec![s(1, 1.0), s(2, 2.0)]);
}
