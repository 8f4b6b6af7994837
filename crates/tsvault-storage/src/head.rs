//! The head: recent samples in memory, per series, queryable the moment they are durable.
//!
//! Samples are appended in WAL order, unsorted; readers sort and deduplicate (the last
//! written value of a timestamp wins), so out-of-order and late samples cost nothing at write.

use std::collections::{BTreeMap, HashMap};

use tsvault_model::Sample;

use crate::index::SeriesId;

/// A head series doubles its capacity up to this many samples, then grows by an eighth.
const HEAD_DOUBLING_MAX: usize = 1024;

/// In-memory samples of every series, in the order they were written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Head {
    series: HashMap<SeriesId, Vec<Sample>>,
    samples: usize,
}

impl Head {
    pub(crate) fn append(&mut self, id: SeriesId, ts_ms: i64, value: f64) {
        let samples = self.series.entry(id).or_default();
        // Past a few KiB a series grows by an eighth rather than doubling: the head holds
        // most of the server's memory, and doubling left up to half of it unused.
        if samples.len() == samples.capacity() && samples.len() >= HEAD_DOUBLING_MAX {
            samples.reserve_exact(samples.len() / 8);
        }
        samples.push(Sample { ts_ms, value });
        self.samples += 1;
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// One head holding `older`'s samples, then `newer`'s, in write order (so a timestamp
    /// written in both keeps `newer`'s value). Moves the samples; copies none.
    pub(crate) fn joined(mut older: Head, newer: Head) -> Head {
        for (id, samples) in newer.series {
            older.samples += samples.len();
            older.series.entry(id).or_default().extend(samples);
        }
        older
    }

    /// Appends the samples of `id` in `[start_ms, end_ms]` to `out`, in write order.
    pub(crate) fn collect(&self, id: SeriesId, start_ms: i64, end_ms: i64, out: &mut Vec<Sample>) {
        if let Some(s) = self.series.get(&id) {
            out.extend(
                s.iter()
                    .filter(|s| s.ts_ms >= start_ms && s.ts_ms <= end_ms),
            );
        }
    }

    /// Splits the head by time partition, each series sorted and deduplicated.
    pub(crate) fn partitions(
        &self,
        segment_duration_ms: i64,
    ) -> BTreeMap<i64, Vec<(SeriesId, Vec<Sample>)>> {
        let mut out: BTreeMap<i64, Vec<(SeriesId, Vec<Sample>)>> = BTreeMap::new();
        for (&id, samples) in &self.series {
            let mut samples = samples.clone();
            normalize(&mut samples);
            let mut rest = samples.as_slice();
            while let Some(first) = rest.first() {
                let start = partition_start(first.ts_ms, segment_duration_ms);
                let end = start.saturating_add(segment_duration_ms);
                let n = rest.partition_point(|s| s.ts_ms < end);
                out.entry(start).or_default().push((id, rest[..n].to_vec()));
                rest = &rest[n..];
            }
        }
        out
    }
}

/// The start of the partition holding `ts_ms`.
pub(crate) fn partition_start(ts_ms: i64, segment_duration_ms: i64) -> i64 {
    ts_ms.div_euclid(segment_duration_ms) * segment_duration_ms
}

/// Sorts samples given oldest-written first by time and keeps, for each timestamp, the one
/// written last.
pub(crate) fn normalize(samples: &mut Vec<Sample>) {
    if samples.windows(2).all(|w| w[0].ts_ms < w[1].ts_ms) {
        return;
    }
    // A stable sort keeps write order among equal timestamps, so the last one is the newest.
    samples.sort_by_key(|s| s.ts_ms);
    let mut out: Vec<Sample> = Vec::with_capacity(samples.len());
    for s in samples.drain(..) {
        match out.last_mut() {
            Some(last) if last.ts_ms == s.ts_ms => *last = s,
            _ => out.push(s),
        }
    }
    *samples = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_keeps_last_written() {
        let s = |ts, value| Sample { ts_ms: ts, value };
        let mut v = vec![s(3, 1.0), s(1, 2.0), s(3, 3.0), s(2, 4.0), s(1, 5.0)];
        normalize(&mut v);
        assert_eq!(v, vec![s(1, 5.0), s(2, 4.0), s(3, 3.0)]);
    }

    #[test]
    fn partitions_split_on_boundaries() {
        let mut h = Head::default();
        for ts in [-1, 0, 9, 10, 25] {
            h.append(0, ts, ts as f64);
        }
        let p = h.partitions(10);
        let starts: Vec<i64> = p.keys().copied().collect();
        assert_eq!(starts, vec![-10, 0, 10, 20]);
        assert_eq!(p[&0][0].1.len(), 2);
    }
}
