//! Fault injection (the `fail` crate): a failed WAL write or fsync, or a failed flush, poisons
//! the store. Later writes are refused with a clear error (the failed fsync is never
//! retried), reads keep working, and a restart recovers everything acknowledged from the WAL.

use fail::FailScenario;
use tsvault_model::{Point, Sample, SeriesKey};
use tsvault_storage::{Engine, EngineConfig, Error};

fn pt(ts_ms: i64, value: f64) -> Point {
    Point {
        key: SeriesKey::new("m", &[("host", "a")]).unwrap(),
        ts_ms,
        value,
    }
}

fn samples(e: &Engine) -> Vec<Sample> {
    e.select("m", &|_| true, i64::MIN, i64::MAX)
        .unwrap()
        .into_iter()
        .flat_map(|(_, s)| s)
        .collect()
}

fn s(ts_ms: i64, value: f64) -> Sample {
    Sample { ts_ms, value }
}

fn poisons_on(failpoint: &str) {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
    e.write(&[pt(1, 1.0)]).unwrap();
    fail::cfg(failpoint, "return").unwrap();
    let err = e.write(&[pt(2, 2.0)]).unwrap_err();
    assert!(matches!(err, Error::Poisoned(_)), "{failpoint}: {err}");
    assert!(err.to_string().contains("injected failure"), "{err}");
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
    poisons_on("wal-fsync");
}

#[test]
fn failed_wal_write_poisons() {
    poisons_on("wal-append");
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
