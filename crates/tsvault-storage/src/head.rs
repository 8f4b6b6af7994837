//! The head: recent samples in memory, per series, queryable the moment they are durable.
//!
//! Samples are kept compressed, in the order they were written (unsorted): a series is one
//! byte stream of its samples, each a timestamp as the zigzag varint of its delta-of-delta
//! and a value as the delta of a scaled decimal (a two-decimal gauge or an integer costs a
//! byte or two) or, when it is no short decimal, its 64 bits. Readers decode, sort and
//! deduplicate (the last written value of a timestamp wins), so out-of-order and late
//! samples cost nothing at write. A TSBS sample takes about 3 bytes here, not the 16 of a
//! `Sample`: the head is most of the server's memory.

use std::collections::{BTreeMap, HashMap};

use tsvault_model::Sample;

use crate::bytes::put_uvarint;
use crate::index::SeriesId;

/// A series' stream doubles its capacity up to this many bytes, then grows by an eighth.
const HEAD_DOUBLING_MAX: usize = 4096;
/// The most decimal places a value is scaled by.
const PLACES_MAX: u8 = 9;
/// Powers of ten up to [`PLACES_MAX`], exact as f64.
const POW10: [f64; PLACES_MAX as usize + 1] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Value records: the low two bits of the first varint (or byte) say which.
const TAG_DELTA: u64 = 0;
const TAG_RAW: u8 = 1;
const TAG_SCALE: u64 = 2;

/// Samples as a byte stream, and what the next sample is encoded against.
#[derive(Debug, Clone, Default)]
struct Stream {
    bytes: Vec<u8>,
    count: u32,
    prev_ts: i64,
    prev_delta: i64,
    /// The current scale (decimal places) and the last value written at it, scaled.
    places: u8,
    prev_scaled: i64,
    /// Whether a scale was set (the first decimal value sets one).
    scaled: bool,
    /// Whether the last value was written raw: a series of full-precision floats is not
    /// searched for a scale at every sample (only every [`RESCAN_EVERY`]th).
    raw: bool,
}

/// How often a series written raw looks for a scale again.
const RESCAN_EVERY: u32 = 64;

/// `v` scaled by `10^places` when that is exact: the scaled integer divided back gives the
/// same bits (so -0.0, NaN, infinities and values of 2^53 or more never fit).
fn fits(v: f64, places: u8) -> Option<i64> {
    const EXACT_MAX: f64 = 9_007_199_254_740_992.0; // 2^53
    let x = (v * POW10[places as usize]).round();
    // NaN fails too.
    if x.is_nan() || x.abs() >= EXACT_MAX {
        return None;
    }
    let scaled = x as i64;
    (unscale(scaled, places).to_bits() == v.to_bits()).then_some(scaled)
}

fn unscale(scaled: i64, places: u8) -> f64 {
    scaled as f64 / POW10[places as usize]
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

impl Stream {
    fn push(&mut self, ts: i64, v: f64) {
        let b = &mut self.bytes;
        if b.len() + 20 > b.capacity() && b.capacity() >= HEAD_DOUBLING_MAX {
            // Past a few KiB a stream grows by an eighth rather than doubling: doubling left
            // up to half of it unused.
            b.reserve_exact(b.capacity() / 8);
        }
        // The first sample's delta is its timestamp (against 0), and delta-of-delta works on
        // wrapping arithmetic: any i64 round-trips.
        let delta = ts.wrapping_sub(self.prev_ts);
        put_uvarint(b, zigzag(delta.wrapping_sub(self.prev_delta)));
        self.prev_ts = ts;
        self.prev_delta = delta;
        let same_scale = if self.scaled {
            fits(v, self.places).and_then(|s| Some((s, s.checked_sub(self.prev_scaled)?)))
        } else {
            None
        };
        if let Some((scaled, d)) = same_scale.filter(|(_, d)| d.unsigned_abs() < 1 << 61) {
            put_uvarint(b, (zigzag(d) << 2) | TAG_DELTA);
            self.prev_scaled = scaled;
            self.raw = false;
        } else if let Some((places, scaled)) = (!self.raw
            || self.count.is_multiple_of(RESCAN_EVERY))
        .then(|| (0..=PLACES_MAX).find_map(|p| fits(v, p).map(|s| (p, s))))
        .flatten()
        {
            // A new scale (places << 2 | tag), then the value in full.
            put_uvarint(b, TAG_SCALE | (u64::from(places) << 2));
            put_uvarint(b, zigzag(scaled));
            self.places = places;
            self.prev_scaled = scaled;
            self.scaled = true;
            self.raw = false;
        } else {
            b.push(TAG_RAW);
            b.extend_from_slice(&v.to_bits().to_le_bytes());
            self.raw = true;
        }
        self.count += 1;
    }

    /// Calls `f` with every sample, in write order.
    fn for_each(&self, mut f: impl FnMut(Sample)) {
        let mut r = StreamReader {
            b: &self.bytes,
            pos: 0,
        };
        let (mut ts, mut delta, mut places, mut scaled) = (0i64, 0i64, 0u8, 0i64);
        for _ in 0..self.count {
            delta = delta.wrapping_add(unzigzag(r.uvarint()));
            ts = ts.wrapping_add(delta);
            let value = match r.b[r.pos] & 3 {
                t if t == TAG_RAW => {
                    let bits = u64::from_le_bytes(
                        r.b[r.pos + 1..r.pos + 9]
                            .try_into()
                            .expect("head invariant: a raw value is 8 bytes"),
                    );
                    r.pos += 9;
                    f64::from_bits(bits)
                }
                _ => {
                    let x = r.uvarint();
                    if x & 3 == TAG_SCALE {
                        places = (x >> 2) as u8;
                        scaled = unzigzag(r.uvarint());
                    } else {
                        scaled = scaled.wrapping_add(unzigzag(x >> 2));
                    }
                    unscale(scaled, places)
                }
            };
            f(Sample { ts_ms: ts, value });
        }
    }
}

/// Reads what [`Stream::push`] wrote (the head's own bytes, never input).
struct StreamReader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl StreamReader<'_> {
    fn uvarint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let byte = self.b[self.pos];
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return v;
            }
            shift += 7;
        }
    }
}

/// One series' samples in the head: a stream per time partition (a head of a bulk load
/// spans many), so that a flush decodes each sample once and a read only the partitions
/// it asks for.
#[derive(Debug, Clone, Default)]
pub(crate) struct SeriesHead {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
struct Part {
    /// The partition: `[start, last]` ms.
    start: i64,
    last: i64,
    stream: Stream,
}

impl SeriesHead {
    /// Appends the samples in `[start_ms, end_ms]` to `out`, in write order within each
    /// partition (a timestamp is in one partition only).
    pub(crate) fn collect(&self, start_ms: i64, end_ms: i64, out: &mut Vec<Sample>) {
        for p in self.parts_in(start_ms, end_ms) {
            p.stream.for_each(|x| {
                if x.ts_ms >= start_ms && x.ts_ms <= end_ms {
                    out.push(x);
                }
            });
        }
    }

    /// A copy of the partitions that hold `[start_ms, end_ms]` (for a reader: copied under
    /// the state's lock, decoded after it).
    pub(crate) fn copy_range(&self, start_ms: i64, end_ms: i64) -> SeriesHead {
        SeriesHead {
            parts: self.parts_in(start_ms, end_ms).cloned().collect(),
        }
    }

    fn parts_in(&self, start_ms: i64, end_ms: i64) -> impl Iterator<Item = &Part> {
        self.parts
            .iter()
            .filter(move |p| p.start <= end_ms && p.last >= start_ms)
    }
}

/// In-memory samples of every series, in the order they were written.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    series: HashMap<SeriesId, SeriesHead>,
    /// The width of the time partitions its streams are cut by.
    partition_ms: i64,
    samples: usize,
    /// The streams' capacity.
    bytes: usize,
    /// Each series' state: its place in the map and its partitions.
    state_bytes: usize,
}

impl Head {
    /// An empty head whose streams are cut by partitions `partition_ms` wide.
    pub(crate) fn new(partition_ms: i64) -> Head {
        Head {
            series: HashMap::new(),
            partition_ms,
            samples: 0,
            bytes: 0,
            state_bytes: 0,
        }
    }

    /// An empty head cut as this one is.
    pub(crate) fn empty_like(&self) -> Head {
        Head::new(self.partition_ms)
    }

    pub(crate) fn append(&mut self, id: SeriesId, ts_ms: i64, value: f64) {
        let s = match self.series.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // Its place in the map, and one partition (most series have one).
                self.state_bytes +=
                    std::mem::size_of::<(SeriesId, SeriesHead)>() + 8 + std::mem::size_of::<Part>();
                e.insert(SeriesHead {
                    parts: Vec::with_capacity(1),
                })
            }
        };
        // Most writes go to the newest partition: looked for from the end.
        let part = match s
            .parts
            .iter()
            .rposition(|p| p.start <= ts_ms && ts_ms <= p.last)
        {
            Some(i) => &mut s.parts[i],
            None => {
                let start = partition_start(ts_ms, self.partition_ms);
                let before = s.parts.capacity();
                s.parts.push(Part {
                    start,
                    last: start.saturating_add(self.partition_ms - 1),
                    stream: Stream::default(),
                });
                self.state_bytes +=
                    (s.parts.capacity() - before.max(1)) * std::mem::size_of::<Part>();
                s.parts.last_mut().expect("pushed above")
            }
        };
        let before = part.stream.bytes.capacity();
        part.stream.push(ts_ms, value);
        self.bytes += part.stream.bytes.capacity() - before;
        self.samples += 1;
    }

    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    /// Bytes the samples take (the streams' capacity): what a flush frees for good. The
    /// head's limits are on this, not on the state of each series written to, which the
    /// next head has again as long as the series is written (counting it, a million
    /// series would fill a 64 MiB head before holding a sample each, and flush at every
    /// write).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// All the head takes: the samples and each series' state.
    pub(crate) fn memory(&self) -> usize {
        self.bytes + self.state_bytes
    }

    /// One head holding `older`'s samples, then `newer`'s, in write order (so a timestamp
    /// written in both keeps `newer`'s value).
    pub(crate) fn joined(mut older: Head, newer: Head) -> Head {
        for (id, s) in &newer.series {
            for p in &s.parts {
                p.stream.for_each(|x| older.append(*id, x.ts_ms, x.value));
            }
        }
        older
    }

    /// Appends the samples of `id` in `[start_ms, end_ms]` to `out` (see
    /// [`SeriesHead::collect`]).
    pub(crate) fn collect(&self, id: SeriesId, start_ms: i64, end_ms: i64, out: &mut Vec<Sample>) {
        if let Some(s) = self.series.get(&id) {
            s.collect(start_ms, end_ms, out);
        }
    }

    /// The samples of `id`, still compressed.
    pub(crate) fn series(&self, id: SeriesId) -> Option<&SeriesHead> {
        self.series.get(&id)
    }

    /// The time partitions the head's samples fall in, each with the series that have
    /// samples there (see [`Head::series_in`] for their samples).
    pub(crate) fn partitions(&self) -> BTreeMap<i64, Vec<SeriesId>> {
        let mut out: BTreeMap<i64, Vec<SeriesId>> = BTreeMap::new();
        for (&id, s) in &self.series {
            for p in &s.parts {
                out.entry(p.start).or_default().push(id);
            }
        }
        out
    }

    /// The samples of `id` in the partition starting at `start_ms`, sorted and
    /// deduplicated.
    pub(crate) fn series_in(&self, id: SeriesId, start_ms: i64) -> Vec<Sample> {
        let mut out = Vec::new();
        if let Some(p) = self
            .series
            .get(&id)
            .and_then(|s| s.parts.iter().find(|p| p.start == start_ms))
        {
            out.reserve_exact(p.stream.count as usize);
            p.stream.for_each(|x| out.push(x));
        }
        normalize(&mut out);
        out
    }
}

/// The start of the partition holding `ts_ms`.
pub(crate) fn partition_start(ts_ms: i64, segment_duration_ms: i64) -> i64 {
    // Saturating: the partition of a timestamp near i64::MIN starts at it.
    ts_ms
        .div_euclid(segment_duration_ms)
        .saturating_mul(segment_duration_ms)
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
    use proptest::prelude::*;

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
        let mut h = Head::new(10);
        for ts in [-1, 0, 9, 10, 25, 1] {
            h.append(0, ts, ts as f64);
        }
        let p = h.partitions();
        let starts: Vec<i64> = p.keys().copied().collect();
        assert_eq!(starts, vec![-10, 0, 10, 20]);
        let s = |ts: i64| Sample {
            ts_ms: ts,
            value: ts as f64,
        };
        assert_eq!(h.series_in(0, 0), vec![s(0), s(1), s(9)]);
        let mut out = Vec::new();
        h.collect(0, 1, 10, &mut out);
        assert_eq!(out, vec![s(9), s(1), s(10)]);
    }

    /// Every sample comes back bit for bit, in write order.
    fn round_trips(samples: &[(i64, f64)]) {
        let mut stream = Stream::default();
        for &(ts, v) in samples {
            stream.push(ts, v);
        }
        let mut out = Vec::new();
        stream.for_each(|x| out.push(x));
        let got: Vec<(i64, u64)> = out.iter().map(|s| (s.ts_ms, s.value.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
        // Through a head: each partition's samples in write order, all of them there.
        let mut h = Head::new(6 * 3_600_000);
        for &(ts, v) in samples {
            h.append(7, ts, v);
        }
        let mut out = Vec::new();
        h.collect(7, i64::MIN, i64::MAX, &mut out);
        let mut got: Vec<(i64, u64)> = out.iter().map(|s| (s.ts_ms, s.value.to_bits())).collect();
        let mut want = want;
        got.sort_by_key(|x| x.0);
        want.sort_by_key(|x| x.0);
        // Equal timestamps share a partition, so their order (the write order) is kept.
        assert_eq!(got, want);
        assert_eq!(h.samples(), samples.len());
    }

    #[test]
    fn edge_values_and_times_round_trip() {
        round_trips(&[
            (0, 0.0),
            (1, -0.0),
            (i64::MAX, f64::NAN),
            (i64::MIN, f64::INFINITY),
            (-1, f64::NEG_INFINITY),
            (5, 9_007_199_254_740_992.0),
            (6, 1e300),
            (7, 5e-324),
            (7, 0.1),
            (8, 123.456_789_012),
            (8, 37.45),
            (9, 37.0),
            (10, -37.5),
            (10, f64::from_bits(0x7ff8_0000_0000_1234)),
            (i64::MAX, 1.0),
            (i64::MIN, 2.0),
        ]);
    }

    /// The head's limits are on its samples' bytes: the state of each series written to
    /// (which the next head takes again) is reported but never fills it. Counted, a million
    /// series filled the 64 MiB head with fewer than three samples each, and every write
    /// waited for a flush of a million tiny blocks.
    #[test]
    fn each_series_state_is_memory_but_not_sample_bytes() {
        let mut h = Head::new(6 * 3_600_000);
        for id in 0..20_000 {
            h.append(id, 1_000, 1.0);
        }
        assert!(h.bytes() <= 20_000 * 16, "{} bytes of samples", h.bytes());
        assert!(h.memory() >= h.bytes() + 20_000 * 100, "{}", h.memory());
        // A second partition of one series is its state too.
        let before = h.memory();
        h.append(7, 7 * 3_600_000, 1.0);
        assert!(h.memory() - before >= std::mem::size_of::<Part>());
    }

    #[test]
    fn a_regular_series_of_two_decimal_gauges_takes_about_three_bytes_a_sample() {
        let mut h = Head::new(6 * 3_600_000);
        let mut v = 50.0f64;
        for i in 0..10_000i64 {
            v = ((v + ((i * 7919) % 201 - 100) as f64 / 100.0) * 100.0).round() / 100.0;
            h.append(1, 1_451_606_400_000 + i * 10_000, v);
        }
        let per_sample = h.bytes() as f64 / 10_000.0;
        assert!(per_sample <= 3.5, "{per_sample} bytes a sample");
    }

    proptest! {
        #[test]
        fn any_samples_round_trip(
            samples in prop::collection::vec(
                (
                    prop_oneof![any::<i64>(), 0i64..1_000_000, Just(1_000i64)],
                    prop_oneof![
                        any::<f64>(),
                        (-100_000i64..100_000).prop_map(|x| x as f64 / 100.0),
                        (-1000i64..1000).prop_map(|x| x as f64),
                    ],
                ),
                0..200,
            )
        ) {
            round_trips(&samples);
        }
    }
}
