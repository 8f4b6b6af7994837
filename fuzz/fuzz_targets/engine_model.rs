//! The engine against a model (a `BTreeMap` where the last write of a timestamp wins) under
//! arbitrary sequences of writes, imports, flushes, compactions, snapshots, clean reopens
//! and reopens without a flush (what a crash after the acknowledgement leaves): every read
//! answers as the model does.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tsvault_model::{Point, ReadCap, SeriesKey};
use tsvault_storage::{Engine, EngineConfig, FsyncMode};

#[derive(Arbitrary, Debug)]
enum Op {
    Write(Vec<(u8, u16, i16)>),
    Import(Vec<(u8, u16, i16)>),
    Flush,
    Compact,
    Snapshot,
    Reopen,
    ReopenWithoutFlush,
    Check,
}

fn key(s: u8) -> SeriesKey {
    SeriesKey::new("m", &[("s", &format!("{}", s % 4))]).expect("valid key")
}

fn ts(t: u16) -> i64 {
    // Spread over several 6-hour partitions.
    1_700_000_000_000 + i64::from(t) * 60_000
}

/// At most 256 points of a write or an import.
fn to_points(points: &[(u8, u16, i16)]) -> Vec<Point> {
    points
        .iter()
        .take(256)
        .map(|&(s, t, v)| Point {
            key: key(s),
            ts_ms: ts(t),
            value: f64::from(v),
        })
        .collect()
}

fn open(dir: &std::path::Path) -> Engine {
    let mut c = EngineConfig::new(dir);
    // The model checks answers, not durability (the crash and power-cut tests do).
    c.fsync = FsyncMode::Interval {
        interval_ms: 3_600_000,
    };
    c.head_samples_max = 64;
    c.flush_interval_ms = 3_600_000;
    Engine::open(c).expect("engine opens")
}

fn check(e: &Engine, model: &BTreeMap<(u8, i64), f64>) {
    let got: BTreeMap<(u8, i64), f64> = e
        .select("m", &|_| true, (i64::MIN / 4, i64::MAX / 4), ReadCap::NONE)
        .expect("select")
        .into_iter()
        .flat_map(|(k, samples)| {
            let s: u8 = k.tag("s").and_then(|v| v.parse().ok()).unwrap_or(255);
            samples.into_iter().map(move |x| ((s, x.ts_ms), x.value))
        })
        .collect();
    assert_eq!(&got, model);
}

fuzz_target!(|ops: Vec<Op>| {
    let dir = tempfile::tempdir().expect("scratch directory");
    let mut e = Some(open(dir.path()));
    let mut model: BTreeMap<(u8, i64), f64> = BTreeMap::new();
    for op in ops.into_iter().take(48) {
        let engine = e.as_ref().expect("open");
        match op {
            Op::Write(points) => {
                engine.write(&to_points(&points)).expect("write");
                for &(s, t, v) in points.iter().take(256) {
                    model.insert((s % 4, ts(t)), f64::from(v));
                }
            }
            Op::Import(points) => {
                engine.import(&to_points(&points)).expect("import");
                for &(s, t, v) in points.iter().take(256) {
                    model.entry((s % 4, ts(t))).or_insert(f64::from(v));
                }
            }
            Op::Flush => engine.flush().expect("flush"),
            Op::Compact => {
                engine.compact().expect("compact");
            }
            Op::Snapshot => {
                let s = engine.snapshot().expect("snapshot");
                engine.release_snapshot(&s.id).expect("release");
            }
            Op::Reopen => {
                e.take().expect("open").close().expect("close");
                e = Some(open(dir.path()));
            }
            Op::ReopenWithoutFlush => {
                e.take().expect("open").close_without_flush();
                e = Some(open(dir.path()));
            }
            Op::Check => check(engine, &model),
        }
    }
    let engine = e.take().expect("open");
    check(&engine, &model);
    engine.close_without_flush();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).expect("check runs");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    check(&open(dir.path()), &model);
});
