//! The data model shared by every tsvault layer: series keys, samples and points.
//!
//! A series is a metric name plus a sorted set of `key=value` tags. Its identity is the
//! [`SeriesKey`], a validated canonical string that every layer (WAL, segments, index, query)
//! stores and compares as plain bytes. This crate holds no I/O and no protocol parsing.

mod key;

pub use key::{KeyError, LIMITS, SeriesKey, TagSet};

/// One sample of a series: a timestamp in milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The sample's value; never NaN or infinite once accepted by an ingest path.
    pub value: f64,
}

/// One sample addressed to its series, as produced by the ingest parsers.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The series the sample belongs to.
    pub key: SeriesKey,
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The sample's value (finite).
    pub value: f64,
}
