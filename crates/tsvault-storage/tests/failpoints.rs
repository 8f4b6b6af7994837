//! Fault injection (the `fail` crate): a failed WAL write (whole or short) or fsync, or a
//! failed flush, poisons the store. Later writes are refused with a clear error (the failed
//! fsync is never retried), reads keep working, and a restart recovers everything
//! acknowledged from the WAL. A full disk is different: the write (or flush) is refused
//! without poisoning, and writes and flushes succeed again once there is room. A read error
//! is an error naming the file, never data.

use fail::FailScenario;
use tsvault_model::{Point, ReadCap, Sample, SeriesKey};
use tsvault_storage::{Engine, EngineConfig, Error};

fn pt(ts_ms: i64, value: f64) -> Point {
    Point {
        key: SeriesKey::new("m", &[("host", "a")]).unwrap(),
        ts_ms,
        value,
    }
}

fn samples(e: &Engine) -> Vec<Sample> {
    e.select("m", &|_| true, (i64::MIN, i64::MAX), ReadCap::NONE)
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s)
        .collect()
}

fn s(ts_ms: i64, value: f64) -> Sample {
    Sample { ts_ms, value }
}

fn poisons_on(failpoint: &str, action: &str, message: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    fail::cfg(failpoint, action).unwrap();
    let err = e.write(&[pt(2, 2.0)]).unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{failpoint}: {err}");
    assert!(err.to_string().contains(message), "{err}");
    fail::remove(failpoint);
    // The fault is gone, but the store does not trust the file any more.
    let err = e.write(&[pt(3, 3.0)]).unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{failpoint}: {err}");
    assert!(e.poisoned().is_some());
    assert_eq!(
        samples(&e),
        vec![s(1, 1.0)],
        "reads work; the failed write is not visible"
    );
    e.close_without_flush();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert!(e.poisoned().is_none(), "a restart recovers");
    let got = samples(&e);
    assert_eq!(got[0], s(1, 1.0), "the acknowledged write survived");
    assert!(
        !got.contains(&s(3, 3.0)),
        "the refused write was never written"
    );
    e.write(&[pt(4, 4.0)]).unwrap();
    scenario.teardown();
}

#[test]
fn failed_wal_fsync_poisons() {
    poisons_on("wal-fsync", "return", "injected failure");
}

/// A full disk at fsync time is not a refused write: what the page cache holds is unknown,
/// so it poisons like any failed fsync.
#[test]
fn a_full_disk_at_fsync_poisons() {
    poisons_on("wal-fsync", "return(enospc)", "No space left on device");
}

#[test]
fn failed_wal_write_poisons() {
    poisons_on("wal-append", "return", "injected failure");
}

/// A write that stops part-way with an I/O error (a short write) poisons; the restart cuts
/// the partial record as a torn tail.
#[test]
fn a_short_wal_write_poisons() {
    poisons_on("wal-append", "return(eio-partial)", "Input/output error");
}

/// A full disk refuses the write (an error that says so, which the server turns into 507)
/// but does not poison: the part of it that reached the WAL is cut off, and once there is
/// room writes go on. Nothing acknowledged is lost, nothing refused appears, and the
/// directory checks clean.
#[test]
fn a_full_disk_refuses_writes_until_space_returns() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    fail::cfg("wal-append", "2*return(enospc-partial)").unwrap();
    // The refused writes are the first of series b: the WAL must define it again when a
    // later write uses it.
    let b = |ts_ms: i64, value: f64| Point {
        key: SeriesKey::new("m", &[("host", "b")]).unwrap(),
        ts_ms,
        value,
    };
    for t in [2, 3] {
        let err = e.write(&[b(t, t as f64)]).unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains("No space left on device"), "{err}");
        assert!(e.poisoned().is_none(), "a full disk does not poison");
    }
    // Space is back (the fault fired twice): writes succeed, after the cut-off bytes.
    e.write(&[pt(4, 4.0), b(5, 5.0)]).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(4, 4.0), s(5, 5.0)]);
    fail::remove("wal-append");
    e.close_without_flush();
    drop(e);
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report.problems.is_empty() && report.notes.is_empty(),
        "{report:?}"
    );
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(4, 4.0), s(5, 5.0)]);
    scenario.teardown();
}

/// A full disk during a flush leaves the samples in memory and in the WAL, keeps accepting
/// writes, and a later flush writes them all.
#[test]
fn a_full_disk_during_a_flush_is_tried_again_later() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    // Two partitions, so the flush has written one segment when the second fails.
    let far = 10 * 86_400_000;
    e.write(&[pt(1, 1.0), pt(far, 2.0)]).unwrap();
    fail::cfg("segment-write", "1*off->1*return(enospc)").unwrap();
    let err = e.flush().unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(e.poisoned().is_none());
    e.write(&[pt(2, 3.0), pt(1, 1.5)]).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.5), s(2, 3.0), s(far, 2.0)]);
    assert!(
        e.segments().is_empty(),
        "the failed flush installed nothing"
    );
    let stray = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(stray, 0, "the segment it had written is removed");
    fail::remove("segment-write");
    e.flush().unwrap();
    assert_eq!(e.segments().len(), 2);
    assert_eq!(samples(&e), vec![s(1, 1.5), s(2, 3.0), s(far, 2.0)]);
    e.close().unwrap();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.5), s(2, 3.0), s(far, 2.0)]);
    scenario.teardown();
}

/// A read error (EIO) on a segment is an error naming the file, never data; reads work
/// again when the fault is gone.
#[test]
fn a_read_error_is_named_and_never_served_as_data() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    e.flush().unwrap();
    let seg = e.segments()[0].clone();
    fail::cfg("segment-read", "return(eio)").unwrap();
    let err = e
        .select("m", &|_| true, (i64::MIN, i64::MAX), ReadCap::NONE)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Input/output error") && err.contains(&format!("{:020}.seg", seg.seq)),
        "{err}"
    );
    fail::remove("segment-read");
    assert_eq!(samples(&e), vec![s(1, 1.0)]);
    // At start, an unreadable WAL file stops the open with its name.
    e.write(&[pt(2, 2.0)]).unwrap();
    e.close_without_flush();
    drop(e);
    fail::cfg("wal-read", "return(eio)").unwrap();
    let Err(err) = Engine::open(EngineConfig::new(dir.path())) else {
        panic!("opened with an unreadable WAL file");
    };
    let err = err.to_string();
    assert!(
        err.contains("Input/output error") && err.contains(".wal"),
        "{err}"
    );
    fail::remove("wal-read");
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    scenario.teardown();
}

fn failed_flush_keeps_data(failpoint: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0), pt(2, 2.0)]).unwrap();
    fail::cfg(failpoint, "return").unwrap();
    let err = e.flush().unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
    fail::remove(failpoint);
    assert!(matches!(e.write(&[pt(3, 3.0)]), Err(Error::Poisoned(_))));
    assert_eq!(
        samples(&e),
        vec![s(1, 1.0), s(2, 2.0)],
        "the frozen head is still served"
    );
    e.close().unwrap();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(
        samples(&e),
        vec![s(1, 1.0), s(2, 2.0)],
        "the WAL still held everything"
    );
    e.flush().unwrap();
    assert_eq!(e.segments().len(), 1);
    scenario.teardown();
}

#[test]
fn failed_segment_write_keeps_data() {
    failed_flush_keeps_data("segment-write");
}

#[test]
fn failed_manifest_write_keeps_data() {
    failed_flush_keeps_data("manifest-store");
}

/// A full disk when a flush starts a new WAL file: the flush fails without poisoning, the
/// current WAL file goes on taking writes, and the flush succeeds once there is room.
#[test]
fn a_full_disk_when_the_wal_rolls_is_tried_again_later() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    fail::cfg("wal-create", "1*return(enospc)").unwrap();
    let err = e.flush().unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(e.poisoned().is_none());
    e.write(&[pt(2, 2.0)]).unwrap();
    e.flush().unwrap();
    fail::remove("wal-create");
    assert_eq!(e.segments().len(), 1);
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    e.close_without_flush();
    drop(e);
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    scenario.teardown();
}

/// A start that finds the disk full, with no room for its new WAL file nor for the series
/// file it must write anew: it opens and serves, refuses writes and flushes as full, and
/// writes both once there is room, with nothing lost.
#[test]
fn a_start_on_a_full_disk_serves_and_writes_once_there_is_room() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(2, 2.0)]).unwrap();
    e.close_without_flush();
    drop(e);
    std::fs::remove_file(dir.path().join("SERIES")).unwrap();
    fail::cfg("wal-create", "return(enospc)").unwrap();
    fail::cfg("series-create", "return(enospc)").unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    let full = e.disk_full().expect("the start says the disk is full");
    assert!(full.contains("No space left"), "{full}");
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    let err = e.write(&[pt(3, 3.0)]).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(e.flush().unwrap_err().is_disk_full());
    assert!(e.poisoned().is_none());
    fail::remove("wal-create");
    fail::remove("series-create");
    e.write(&[pt(4, 4.0)]).unwrap();
    assert!(e.disk_full().is_none());
    e.flush().unwrap();
    e.close().unwrap();
    drop(e);
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0), s(4, 4.0)]);
    scenario.teardown();
}

/// A full disk when a flush stores its manifest: the segments it wrote are removed at once
/// (retries would otherwise fill the disk with strays), nothing is poisoned, the samples stay
/// served, and a later flush writes them.
#[test]
fn a_full_disk_when_the_manifest_is_stored_leaves_no_segment_behind() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    fail::cfg("manifest-store", "return(enospc)").unwrap();
    for _ in 0..3 {
        let err = e.flush().unwrap_err();
        assert!(err.is_disk_full(), "{err}");
    }
    assert!(e.poisoned().is_none());
    let left = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(left, 0, "no segment of the failed flushes is left");
    assert_eq!(samples(&e), vec![s(1, 1.0)]);
    fail::remove("manifest-store");
    e.flush().unwrap();
    assert_eq!(e.segments().len(), 1);
    e.close().unwrap();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0)]);
    scenario.teardown();
}

/// A full disk while a compaction writes its merged segment changes nothing and does not
/// poison; the flush before it still succeeds; the next compaction merges.
#[test]
fn a_full_disk_during_a_compaction_is_tried_again_later() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(2, 2.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(3, 3.0)]).unwrap();
    let merges = e.stats().compactions;
    fail::cfg("segment-write", "1*off->1*return(enospc)").unwrap();
    // The flush's own segment is written; the compaction after it finds the disk full.
    e.flush().unwrap();
    assert!(e.poisoned().is_none(), "a full disk does not poison");
    let before = e.segments();
    assert_eq!(before.len(), 2, "the merge was not installed: {before:?}");
    assert_eq!(e.stats().compactions, merges);
    assert_eq!(e.stats().head_samples, 0, "the flush itself is done");
    let strays = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(strays, 2, "the merge left no file behind");
    fail::remove("segment-write");
    // The same segments, the same policy: the next flush (nothing to write) merges them,
    // so the one before had tried to.
    e.flush().unwrap();
    assert_eq!(e.stats().compactions, merges + 1);
    assert_eq!(e.segments().len(), 1);
    e.write(&[pt(4, 4.0)]).unwrap();
    assert_eq!(
        samples(&e),
        vec![s(1, 1.0), s(2, 2.0), s(3, 3.0), s(4, 4.0)]
    );
    e.close().unwrap();
    scenario.teardown();
}

/// A directory fsync that fails after the manifest's rename, even with ENOSPC, is not a full
/// disk that changed nothing: the renamed manifest may be the durable one, so the segments
/// it names must stay, and the store is poisoned (a restart finds everything).
#[test]
fn a_failed_directory_fsync_after_the_manifest_rename_poisons_and_deletes_nothing() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0), pt(2, 2.0)]).unwrap();
    fail::cfg("manifest-dir-fsync", "return(enospc)").unwrap();
    let err = e.flush().unwrap_err();
    assert!(err.to_string().contains("No space left"), "{err}");
    fail::remove("manifest-dir-fsync");
    assert!(
        matches!(e.write(&[pt(3, 3.0)]), Err(Error::Poisoned(_))),
        "a failed fsync poisons, whatever its errno"
    );
    e.close_without_flush();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(
        e.segments().len(),
        1,
        "the renamed manifest's segment is kept"
    );
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    // Closed before the fault points go to the next test: closing flushes, which would
    // consume their counts.
    drop(e);
    scenario.teardown();
}

/// The same after a new segment's rename: the store is poisoned, nothing is lost.
#[test]
fn a_failed_directory_fsync_after_a_segment_rename_poisons() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0), pt(2, 2.0)]).unwrap();
    fail::cfg("segment-dir-fsync", "return(enospc)").unwrap();
    e.flush().unwrap_err();
    fail::remove("segment-dir-fsync");
    assert!(matches!(e.write(&[pt(3, 3.0)]), Err(Error::Poisoned(_))));
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    e.close_without_flush();
    drop(e);
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    assert_eq!(samples(&e), vec![s(1, 1.0), s(2, 2.0)]);
    // Closed before the fault points go to the next test: closing flushes, which would
    // consume their counts.
    drop(e);
    scenario.teardown();
}

/// A poisoned store still lets its snapshots expire (expiry stopped with the rest of the
/// maintenance).
#[test]
fn snapshots_expire_while_the_store_is_poisoned() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.snapshot_max_age_ms = 500;
    let e = Engine::open(cfg).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    e.snapshot().unwrap();
    fail::cfg("wal-fsync", "return").unwrap();
    assert!(e.write(&[pt(2, 2.0)]).is_err());
    fail::remove("wal-fsync");
    assert!(e.poisoned().is_some());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !e.snapshots().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the snapshot never expired"
        );
        std::thread::yield_now();
    }
    drop(e);
    scenario.teardown();
}

/// A head at twice its limit while a flush writes holds the next writes back until the
/// flush is done (they are acknowledged then, all of them), so the head stays bounded when
/// flushes are slower than ingest (many series).
#[test]
fn writes_wait_for_a_flush_once_the_head_is_at_twice_its_limit() {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.head_samples_max = 100;
    let e = Arc::new(Engine::open(cfg).unwrap());
    // The flush stops in its segment write until released: the frozen head is set, the
    // manifest held.
    let (reached_tx, reached_rx) = channel::<()>();
    let (release_tx, release_rx) = channel::<()>();
    let (reached_tx, release_rx) = (Mutex::new(reached_tx), Mutex::new(release_rx));
    fail::cfg_callback("segment-write", move || {
        let _ = reached_tx.lock().unwrap().send(());
        let _ = release_rx.lock().unwrap().recv();
    })
    .unwrap();
    e.write(&(0..100).map(|i| pt(i, 1.0)).collect::<Vec<_>>())
        .unwrap();
    let flusher = {
        let e = e.clone();
        std::thread::spawn(move || e.flush())
    };
    reached_rx.recv().unwrap();
    // 50 writes of 10: the first 20 fill the live head to twice its limit, the rest wait.
    let (done_tx, done_rx) = channel();
    let writer = {
        let e = e.clone();
        std::thread::spawn(move || {
            for b in 0..50i64 {
                let batch: Vec<Point> = (0..10).map(|i| pt(1000 + b * 10 + i, 2.0)).collect();
                e.write(&batch).unwrap();
            }
            done_tx.send(()).unwrap();
        })
    };
    // A bound, not a synchronisation: without the backpressure the writer ends at once.
    assert_eq!(
        done_rx.recv_timeout(Duration::from_millis(500)),
        Err(RecvTimeoutError::Timeout),
        "the writes went on while the flush was held"
    );
    let held = e.stats().head_samples;
    assert!(held <= 100 + 200 + 10, "the head grew to {held} samples");
    // The flush is let go (the next flushes too): every write is acknowledged.
    fail::remove("segment-write");
    drop(release_tx);
    flusher.join().unwrap().unwrap();
    done_rx.recv().unwrap();
    writer.join().unwrap();
    assert_eq!(samples(&e).len(), 600);
    assert!(e.stats().write_stall_ms > 0, "the wait is counted");
    scenario.teardown();
}
