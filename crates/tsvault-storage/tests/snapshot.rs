//! Snapshots (online, consistent, cheap), imports that never overwrite, and file digests.

use std::fs;
use std::path::Path;

mod common;

use common::{HOUR, open, pt};
use tsvault_model::{Sample, SeriesKey};
use tsvault_storage::{
    DigestBasis, Engine, EngineConfig, Error, ImportOutcome, SNAPSHOTS_DIR, file_digests,
};

fn key(host: &str) -> SeriesKey {
    common::key("cpu", host)
}

fn all(e: &Engine) -> Vec<(SeriesKey, Vec<Sample>)> {
    common::all(e, "cpu")
}

/// Copies the files a snapshot lists into `dst`, as a backup and restore would.
fn copy_snapshot(e: &Engine, id: &str, dst: &Path) {
    let info = e
        .snapshots()
        .unwrap()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap();
    for f in &info.files {
        let (src, meta) = e.snapshot_file(id, &f.path).unwrap();
        assert_eq!(&meta, f);
        let bytes = fs::read(&src).unwrap();
        assert_eq!(bytes.len() as u64, f.size, "{}", f.path);
        assert_eq!(
            blake3::hash(&bytes).to_hex().as_str(),
            f.blake3,
            "{}",
            f.path
        );
        let out = dst.join(&f.path);
        fs::create_dir_all(out.parent().unwrap()).unwrap();
        fs::write(out, bytes).unwrap();
    }
    // As `tsvault restore` does: the record of the newest WAL file is the directory's own.
    tsvault_storage::record_newest_wal(dst).unwrap();
}

#[test]
fn a_snapshot_holds_exactly_what_was_acknowledged_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key("a"), key("b"));
    let e = open(dir.path());
    // Some data in segments, some only in the WAL and head.
    e.write(&[pt(&a, HOUR, 1.0), pt(&b, HOUR, 2.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(&a, 2 * HOUR, 3.0), pt(&a, HOUR, 1.5)])
        .unwrap();
    let before = all(&e);
    let snap = e.snapshot().unwrap();
    assert!(snap.files.iter().any(|f| f.path.starts_with("segments/")));
    assert!(snap.files.iter().any(|f| f.path.starts_with("wal/")));
    assert!(snap.files.iter().any(|f| f.path == "MANIFEST"));

    // After the snapshot: more writes, a flush and a compaction delete the files it linked.
    e.write(&[pt(&b, 3 * HOUR, 9.0), pt(&a, HOUR, 7.0)])
        .unwrap();
    e.flush().unwrap();
    e.compact().unwrap();
    let after = all(&e);
    assert_ne!(before, after);

    let copy = tempfile::tempdir().unwrap();
    copy_snapshot(&e, &snap.id, copy.path());
    let restored = open(copy.path());
    assert_eq!(all(&restored), before);
    restored.close().unwrap();

    // Snapshots outlive a restart until released; the live store is unaffected.
    e.close().unwrap();
    let e = open(dir.path());
    assert_eq!(all(&e), after);
    assert_eq!(e.snapshots().unwrap().len(), 1);
    e.release_snapshot(&snap.id).unwrap();
    assert!(e.snapshots().unwrap().is_empty());
    assert!(matches!(
        e.release_snapshot(&snap.id),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        e.snapshot_file(&snap.id, "MANIFEST"),
        Err(Error::NotFound(_))
    ));
    assert_eq!(all(&e), after);
}

#[test]
fn snapshot_files_are_named_only_from_its_list() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
    let snap = e.snapshot().unwrap();
    for bad in ["../LOCK", "snapshot.json", "/etc/passwd", "wal", ""] {
        assert!(
            matches!(e.snapshot_file(&snap.id, bad), Err(Error::NotFound(_))),
            "{bad:?}"
        );
    }
    for bad_id in ["../snapshots", "x", "1-2-3"] {
        assert!(matches!(
            e.snapshot_file(bad_id, "MANIFEST"),
            Err(Error::NotFound(_))
        ));
    }
}

#[test]
fn an_interrupted_snapshot_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let e = open(dir.path());
        e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
        e.snapshot().unwrap();
    }
    let partial = dir.path().join(SNAPSHOTS_DIR).join("5-0.tmp");
    fs::create_dir_all(partial.join("wal")).unwrap();
    // Releases cut short (found by the crash test, which killed the server while
    // it removed a snapshot's files): renamed out of the way, or, by versions that removed
    // the files in place, a snapshot directory without its description.
    let released = dir.path().join(SNAPSHOTS_DIR).join("6-0.released.tmp");
    let half_removed = dir.path().join(SNAPSHOTS_DIR).join("7-0");
    for d in [&released, &half_removed] {
        fs::create_dir_all(d.join("segments")).unwrap();
    }
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.notes.len(), 3, "{:?}", report.notes);
    let e = open(dir.path());
    for d in [&partial, &released, &half_removed] {
        assert!(!d.exists(), "{} left", d.display());
    }
    assert_eq!(e.snapshots().unwrap().len(), 1);
}

#[test]
fn imports_merge_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (key("a"), key("b"));
    let e = open(dir.path());
    e.write(&[pt(&a, HOUR, 1.0)]).unwrap();
    e.flush().unwrap(); // in a segment
    e.write(&[pt(&a, 2 * HOUR, 2.0)]).unwrap(); // in the head
    let got = e
        .import(&[
            pt(&a, HOUR, -1.0),
            pt(&a, 2 * HOUR, -2.0),
            pt(&a, 3 * HOUR, 3.0),
            pt(&a, 3 * HOUR, -3.0),
            pt(&b, HOUR, 4.0),
        ])
        .unwrap();
    assert_eq!(
        got,
        ImportOutcome {
            imported: 2,
            skipped_existing: 2,
            duplicates_in_request: 1,
            dropped_beyond_retention: 0
        }
    );
    let want = vec![
        (
            a.clone(),
            vec![
                Sample {
                    ts_ms: HOUR,
                    value: 1.0,
                },
                Sample {
                    ts_ms: 2 * HOUR,
                    value: 2.0,
                },
                Sample {
                    ts_ms: 3 * HOUR,
                    value: 3.0,
                },
            ],
        ),
        (
            b.clone(),
            vec![Sample {
                ts_ms: HOUR,
                value: 4.0,
            }],
        ),
    ];
    assert_eq!(all(&e), want);
    // Imported samples are as durable as writes.
    e.close_without_flush();
    let e = open(dir.path());
    assert_eq!(all(&e), want);
}

#[test]
fn digests_are_the_same_for_a_copy_and_name_damage() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let a = key("a");
    e.write(
        &(0..100)
            .map(|i| pt(&a, i * 1000, i as f64))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    e.flush().unwrap();
    e.write(&[pt(&a, 5, 0.5), pt(&key("b"), 7, 1.0)]).unwrap();
    let snap = e.snapshot().unwrap();
    let copy = tempfile::tempdir().unwrap();
    copy_snapshot(&e, &snap.id, copy.path());
    let mut seen_samples = 0;
    let mut segments = 0;
    for f in &snap.files {
        let (src, _) = e.snapshot_file(&snap.id, &f.path).unwrap();
        let basis = DigestBasis::for_file(&f.path);
        let d = file_digests(&src, basis).unwrap();
        assert_eq!(d, file_digests(&copy.path().join(&f.path), basis).unwrap());
        seen_samples += d.iter().map(|x| x.samples).sum::<u64>();
        if basis.is_blocks() {
            // Digests of blocks (any hash) count and bound the same samples as digests
            // of samples; only the hashes differ.
            assert_eq!(basis, DigestBasis::BlocksCrc32c);
            segments += 1;
            let by_samples = file_digests(&src, DigestBasis::Samples).unwrap();
            let by_blake3 = file_digests(&src, DigestBasis::Blocks).unwrap();
            let by_xxh3 = file_digests(&src, DigestBasis::BlocksXxh3).unwrap();
            assert_eq!(by_samples.len(), d.len());
            assert_eq!(by_blake3.len(), d.len());
            assert_eq!(by_xxh3.len(), d.len());
            for (((x, s), b), h) in d.iter().zip(&by_samples).zip(&by_blake3).zip(&by_xxh3) {
                for other in [s, b, h] {
                    assert_eq!(
                        (&x.series, x.samples, x.min_ts_ms, x.max_ts_ms),
                        (
                            &other.series,
                            other.samples,
                            other.min_ts_ms,
                            other.max_ts_ms
                        )
                    );
                    assert_ne!(x.hash, other.hash);
                }
                assert_eq!(
                    (
                        x.hash.as_bytes().len(),
                        s.hash.as_bytes().len(),
                        b.hash.as_bytes().len(),
                        h.hash.as_bytes().len()
                    ),
                    (4, 32, 32, 16)
                );
            }
        } else {
            for blocks in [
                DigestBasis::Blocks,
                DigestBasis::BlocksXxh3,
                DigestBasis::BlocksCrc32c,
            ] {
                let err = file_digests(&src, blocks).unwrap_err();
                assert!(err.to_string().contains("segment files only"), "{err}");
            }
        }
    }
    assert_eq!((seen_samples, segments), (102, 1));
    let seg = snap
        .files
        .iter()
        .find(|f| f.path.starts_with("segments/"))
        .unwrap();
    let p = copy.path().join(&seg.path);
    let mut bytes = fs::read(&p).unwrap();
    // A byte of the first block: the CRC32C digests take the index's word for the
    // block's checksum, and still refuse the file (its whole hash fails).
    bytes[20] ^= 1;
    fs::write(&p, bytes).unwrap();
    for basis in [
        DigestBasis::Samples,
        DigestBasis::Blocks,
        DigestBasis::BlocksXxh3,
        DigestBasis::BlocksCrc32c,
    ] {
        let err = file_digests(&p, basis).unwrap_err();
        assert!(
            matches!(&err, Error::Corrupt { path, .. } if path == &p),
            "{err}"
        );
    }
}

/// A snapshot's description is read once and remembered while its files are served; a
/// release (here) or an expiry (below) forgets it, so the files of a snapshot gone are never
/// found.
#[test]
fn the_files_of_a_released_snapshot_are_not_found_after_being_served() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
    let (released, kept) = (e.snapshot().unwrap(), e.snapshot().unwrap());
    for snap in [&released, &kept] {
        for f in &snap.files {
            let (path, meta) = e.snapshot_file(&snap.id, &f.path).unwrap();
            assert_eq!(&meta, f);
            assert_eq!(fs::metadata(path).unwrap().len(), f.size);
        }
    }
    e.release_snapshot(&released.id).unwrap();
    assert!(matches!(
        e.snapshot_file(&released.id, &released.files[0].path),
        Err(Error::NotFound(_))
    ));
    // Served from memory meanwhile, the other is still found.
    assert!(e.snapshot_file(&kept.id, "MANIFEST").is_ok());
}

#[test]
fn snapshots_past_their_age_limit_are_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    let e = Engine::open(config.clone()).unwrap();
    e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
    let snap = e.snapshot().unwrap();
    // Under the default limit (a day) it stays.
    assert!(e.expire_snapshots().unwrap().is_empty());
    assert_eq!(e.snapshots().unwrap().len(), 1);
    e.close().unwrap();
    config.snapshot_max_age_ms = 0;
    let e = Engine::open(config).unwrap();
    // A file served (its description remembered), then the snapshot expired: not found.
    assert!(e.snapshot_file(&snap.id, "MANIFEST").is_ok());
    assert_eq!(e.expire_snapshots().unwrap(), vec![snap.id.clone()]);
    assert!(matches!(
        e.snapshot_file(&snap.id, "MANIFEST"),
        Err(Error::NotFound(_))
    ));
    assert!(e.snapshots().unwrap().is_empty());
    assert_eq!(all(&e).len(), 1);
}

#[test]
fn a_damaged_snapshot_description_is_named_and_never_stops_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let snap = {
        let e = open(dir.path());
        e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
        e.snapshot().unwrap()
    };
    let desc = dir
        .path()
        .join(SNAPSHOTS_DIR)
        .join(&snap.id)
        .join("snapshot.json");
    fs::write(&desc, b"{not json").unwrap();
    let e = open(dir.path());
    assert_eq!(all(&e).len(), 1);
    let err = e.snapshots().unwrap_err();
    assert!(
        matches!(&err, Error::Corrupt { path, .. } if path == &desc),
        "{err}"
    );
    assert!(matches!(
        e.snapshot_info(&snap.id),
        Err(Error::Corrupt { .. })
    ));
    // It still expires (its time is in its id), and then the list is whole again.
    e.close().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.snapshot_max_age_ms = 0;
    let e = Engine::open(config).unwrap();
    assert_eq!(e.expire_snapshots().unwrap(), vec![snap.id]);
    assert!(e.snapshots().unwrap().is_empty());
}

/// Snapshots taken at the same time (often in the same millisecond) each claim their own
/// id: none is removed or damaged by another's failure, and every one is whole.
#[test]
fn concurrent_snapshots_get_their_own_ids_and_are_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tsvault_storage::EngineConfig::new(dir.path());
    config.snapshots_max = 64;
    let e = Engine::open(config).unwrap();
    e.write(&[pt(&key("a"), HOUR, 1.0)]).unwrap();
    e.flush().unwrap();
    let ids: Vec<String> = std::thread::scope(|s| {
        let takers: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    (0..15)
                        .map(|_| e.snapshot().unwrap().id)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        takers.into_iter().flat_map(|t| t.join().unwrap()).collect()
    });
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), 45);
    assert_eq!(e.snapshots().unwrap().len(), 45);
    e.close().unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report.problems.is_empty() && report.notes.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.snapshots, 45);
}

/// Snapshots are bounded in number: one past the bound is refused (nothing taken) until one
/// is released.
#[test]
fn snapshots_are_bounded_in_number() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tsvault_storage::EngineConfig::new(dir.path());
    cfg.snapshots_max = 2;
    let e = tsvault_storage::Engine::open(cfg).unwrap();
    let a = e.snapshot().unwrap();
    e.snapshot().unwrap();
    let err = e.snapshot().unwrap_err();
    assert!(matches!(err, tsvault_storage::Error::Limit(_)), "{err}");
    assert!(err.to_string().contains("2 snapshots exist"), "{err}");
    assert_eq!(e.snapshots().unwrap().len(), 2);
    e.release_snapshot(&a.id).unwrap();
    e.snapshot().unwrap();
}
