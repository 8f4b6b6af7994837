//! The data model shared by every tsvault layer: series keys, samples and points.
//!
//! A series is a metric name plus a sorted set of `key=value` tags. Its identity is the
//! [`SeriesKey`], a validated canonical string that every layer (WAL, segments, index, query)
//! stores and compares as plain bytes. This crate holds no I/O and no protocol parsing.

mod key;

pub use key::{KeyError, LIMITS, SeriesKey, TagSet};

/// The earliest timestamp tsvault stores: the Unix epoch. Every write path accepts exactly
/// the times a query can ask for (OpenTSDB queries have no negative times), so nothing is
/// acknowledged that no query could read.
pub const TS_MS_MIN: i64 = 0;
/// The latest timestamp tsvault stores (and a query may name): 9999-12-31T23:59:59.999Z.
/// Bounding time also keeps partition and range arithmetic far from i64 overflow.
pub const TS_MS_MAX: i64 = 253_402_300_799_999;

/// True when `ts_ms` lies in the supported range [`TS_MS_MIN`, `TS_MS_MAX`].
pub fn ts_in_range(ts_ms: i64) -> bool {
    (TS_MS_MIN..=TS_MS_MAX).contains(&ts_ms)
}

/// One sample of a series: a timestamp in milliseconds since the Unix epoch and a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The sample's value; never NaN or infinite once accepted by an ingest path.
    pub value: f64,
}

/// How much one read of series may take before it stops: what its query has left of its
/// budget. Storage checks it as it reads, so a query past its limits is refused having held
/// about its budget in memory, not everything it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadCap {
    /// Most series with samples in the range.
    pub series_max: usize,
    /// Most of `series × series_weight + samples`.
    pub budget: usize,
    /// What one series counts for in `budget`, in samples (its key, buffers and answer).
    pub series_weight: usize,
}

impl ReadCap {
    /// No bound (a backup's or a test's read).
    pub const NONE: ReadCap = ReadCap {
        series_max: usize::MAX,
        budget: usize::MAX,
        series_weight: 0,
    };

    /// True when `series` series holding `samples` samples are more than it allows.
    pub fn exceeded_by(&self, series: usize, samples: usize) -> bool {
        series > self.series_max
            || series
                .saturating_mul(self.series_weight)
                .saturating_add(samples)
                > self.budget
    }
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
