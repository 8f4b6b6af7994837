//! The narrow read-only interface the engine queries, and an in-memory implementation.

use std::collections::{BTreeMap, BTreeSet};

use tsvault_model::{ReadCap, Sample, SeriesKey};

/// Why a [`Source`] returned no selection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// A storage failure, e.g. a corrupt block.
    #[error("{0}")]
    Failed(String),
    /// The read stopped at its [`ReadCap`], having read at least this much.
    #[error("the read stopped at its limit after {series} series and {samples} samples")]
    Capped {
        /// Series with samples in the range.
        series: usize,
        /// Samples.
        samples: usize,
    },
}

/// The series a [`Source::select`] returns: each key with its samples.
pub type Selection = Vec<(SeriesKey, Vec<Sample>)>;

/// Where the engine reads series from; implemented by the storage engine. `Sync`, because
/// the executor reads several sub-queries at once.
pub trait Source: Sync {
    /// Every series of `metric` (exact name) for which `filter` is true and that has samples in
    /// `[start_ms, end_ms]`, with those samples sorted by time and without duplicate
    /// timestamps. Returning more (series without samples in range, samples outside the range)
    /// is allowed; the engine trims. `filter` lets storage skip reading non-matching series.
    /// Stops with [`SourceError::Capped`] once what it read (the series with samples in the
    /// range, and their samples) is more than `cap` allows.
    fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        start_ms: i64,
        end_ms: i64,
        cap: ReadCap,
    ) -> Result<Selection, SourceError>;

    /// Every metric name, sorted.
    fn metric_names(&self) -> Vec<String>;

    /// Every tag key, sorted.
    fn tag_keys(&self) -> Vec<String>;

    /// Every tag value of any key, sorted.
    fn tag_values(&self) -> Vec<String>;
}

/// A [`Source`] held in a `BTreeMap`, for tests and as the reference model for storage.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    series: BTreeMap<SeriesKey, BTreeMap<i64, f64>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores one sample; a later sample at the same timestamp replaces the earlier one.
    pub fn insert(&mut self, key: &SeriesKey, ts_ms: i64, value: f64) {
        self.series
            .entry(key.clone())
            .or_default()
            .insert(ts_ms, value);
    }
}

impl Source for MemorySource {
    fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        start_ms: i64,
        end_ms: i64,
        cap: ReadCap,
    ) -> Result<Selection, SourceError> {
        let mut out = Vec::new();
        if start_ms > end_ms {
            return Ok(out);
        }
        let mut samples_read = 0usize;
        for (key, samples) in &self.series {
            if key.metric() != metric || !filter(key) {
                continue;
            }
            let picked: Vec<Sample> = samples
                .range(start_ms..=end_ms)
                .map(|(&ts_ms, &value)| Sample { ts_ms, value })
                .collect();
            if !picked.is_empty() {
                samples_read += picked.len();
                out.push((key.clone(), picked));
                if cap.exceeded_by(out.len(), samples_read) {
                    return Err(SourceError::Capped {
                        series: out.len(),
                        samples: samples_read,
                    });
                }
            }
        }
        Ok(out)
    }

    fn metric_names(&self) -> Vec<String> {
        let names: BTreeSet<&str> = self.series.keys().map(SeriesKey::metric).collect();
        names.into_iter().map(str::to_owned).collect()
    }

    fn tag_keys(&self) -> Vec<String> {
        let keys: BTreeSet<&str> = self
            .series
            .keys()
            .flat_map(|k| k.tags().map(|(tk, _)| tk))
            .collect();
        keys.into_iter().map(str::to_owned).collect()
    }

    fn tag_values(&self) -> Vec<String> {
        let values: BTreeSet<&str> = self
            .series
            .keys()
            .flat_map(|k| k.tags().map(|(_, tv)| tv))
            .collect();
        values.into_iter().map(str::to_owned).collect()
    }
}

/// One [`RecordingSource::select`] call that succeeded.
#[cfg(test)]
pub(crate) struct SelectCall {
    pub metric: String,
    pub start_ms: i64,
    pub end_ms: i64,
    /// The keys of the series returned, as displayed.
    pub keys: Vec<String>,
}

/// A [`MemorySource`] for tests that records each `select`, can fail for one metric, and can
/// break its side of the contract (samples sorted by time).
#[cfg(test)]
pub(crate) struct RecordingSource {
    pub inner: MemorySource,
    /// Reads of this metric fail with "block 2 fails its checksum".
    pub fail_metric: Option<&'static str>,
    /// Each series' samples come newest first.
    pub reverse_samples: bool,
    pub calls: std::sync::Mutex<Vec<SelectCall>>,
}

#[cfg(test)]
impl RecordingSource {
    /// Records, never fails, and answers as `inner` does.
    pub(crate) fn new(inner: MemorySource) -> Self {
        RecordingSource {
            inner,
            fail_metric: None,
            reverse_samples: false,
            calls: Default::default(),
        }
    }
}

#[cfg(test)]
impl Source for RecordingSource {
    fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        start_ms: i64,
        end_ms: i64,
        cap: ReadCap,
    ) -> Result<Selection, SourceError> {
        if self.fail_metric == Some(metric) {
            return Err(SourceError::Failed("block 2 fails its checksum".into()));
        }
        let mut selection = self.inner.select(metric, filter, start_ms, end_ms, cap)?;
        if self.reverse_samples {
            for (_, samples) in &mut selection {
                samples.reverse();
            }
        }
        self.calls.lock().unwrap().push(SelectCall {
            metric: metric.to_owned(),
            start_ms,
            end_ms,
            keys: selection.iter().map(|(k, _)| k.to_string()).collect(),
        });
        Ok(selection)
    }

    fn metric_names(&self) -> Vec<String> {
        self.inner.metric_names()
    }

    fn tag_keys(&self) -> Vec<String> {
        self.inner.tag_keys()
    }

    fn tag_values(&self) -> Vec<String> {
        self.inner.tag_values()
    }
}
