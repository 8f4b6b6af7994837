//! Helpers the engine's integration tests share.

#![allow(dead_code)] // each test binary uses a different part

use std::path::Path;

use tsvault_model::{Point, ReadCap, Sample, SeriesKey};
use tsvault_storage::{Engine, EngineConfig};

pub const HOUR: i64 = 3_600_000;

pub fn key(metric: &str, host: &str) -> SeriesKey {
    SeriesKey::new(metric, &[("host", host)]).unwrap()
}

pub fn pt(k: &SeriesKey, ts_ms: i64, value: f64) -> Point {
    Point {
        key: k.clone(),
        ts_ms,
        value,
    }
}

/// Opens `dir` with the default configuration.
pub fn open(dir: &Path) -> Engine {
    Engine::open(EngineConfig::new(dir)).unwrap()
}

/// Every series of `metric` with all its samples.
pub fn all(e: &Engine, metric: &str) -> Vec<(SeriesKey, Vec<Sample>)> {
    e.select(metric, &|_| true, (i64::MIN, i64::MAX), ReadCap::NONE)
        .unwrap()
}

pub fn s(ts_ms: i64, value: f64) -> Sample {
    Sample { ts_ms, value }
}
