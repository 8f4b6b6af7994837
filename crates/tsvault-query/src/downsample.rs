//! Downsampling one series into fixed buckets (OpenTSDB 2.x, "Downsampling").
//!
//! Buckets start at epoch multiples of the interval (`ts - ts % interval`), hold the samples in
//! `[bucket, bucket + interval)` and are stamped with their start. `0all-<agg>` folds the whole
//! query range `[start, end)` into one point stamped with the query start. With a fill policy
//! every bucket of the scanned range is emitted, empty ones as NaN (nan, null) or 0 (zero).

use crate::aggregator::Aggregator;
use crate::time::parse_duration_ms;

/// The longest bucket accepted, so bucket arithmetic on any valid time cannot overflow.
const INTERVAL_MS_MAX: i64 = 1000 * 365 * 86_400_000;

/// What an empty bucket becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillPolicy {
    /// Nothing is emitted; series are interpolated when merged.
    None,
    /// NaN, serialized as the string "NaN" as OpenTSDB's Jackson writer does.
    Nan,
    /// NaN while computing, serialized as `null`.
    Null,
    /// Zero.
    Zero,
}

impl FillPolicy {
    /// The policy's name in a downsample specification.
    pub fn name(self) -> &'static str {
        match self {
            FillPolicy::None => "none",
            FillPolicy::Nan => "nan",
            FillPolicy::Null => "null",
            FillPolicy::Zero => "zero",
        }
    }
}

/// The width of a downsample bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interval {
    /// Fixed buckets of this many milliseconds.
    Ms(i64),
    /// One bucket over the whole query range (`0all`).
    All,
}

/// A parsed `<interval><unit>-<aggregator>[-<fill>]` specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downsample {
    /// The bucket width.
    pub interval: Interval,
    /// The function folding each bucket.
    pub function: Aggregator,
    /// What empty buckets become.
    pub fill: FillPolicy,
    spec: String,
}

impl Downsample {
    /// Parses a specification such as `1h-avg`, `30m-sum-zero` or `0all-max`.
    pub(crate) fn parse(spec: &str) -> Result<Self, String> {
        let parts: Vec<&str> = spec.split('-').collect();
        if parts.len() < 2 {
            return Err("it needs at least an interval and a function".into());
        }
        if parts.len() > 3 {
            return Err("it has more than interval, function and fill policy".into());
        }
        let interval_text = parts[0];
        let interval = if let Some(digits) = interval_text.strip_suffix("all") {
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("interval '{interval_text}' is not <n>all"));
            }
            Interval::All
        } else if interval_text.ends_with('c') {
            return Err(format!(
                "calendar downsampling ('{interval_text}') is not supported by tsvault; \
                 drop the 'c' to use epoch-aligned buckets"
            ));
        } else {
            let ms = parse_duration_ms(interval_text)?;
            if ms > INTERVAL_MS_MAX {
                return Err(format!(
                    "interval '{interval_text}' is longer than 1000 years"
                ));
            }
            Interval::Ms(ms)
        };
        let function = Aggregator::from_name(parts[1])
            .ok_or_else(|| format!("unknown function '{}'; see /api/aggregators", parts[1]))?;
        if function == Aggregator::None {
            return Err("'none' cannot be used to downsample".into());
        }
        let fill = match parts.get(2).map(|p| p.to_ascii_lowercase()).as_deref() {
            None | Some("none") => FillPolicy::None,
            Some("nan") => FillPolicy::Nan,
            Some("null") => FillPolicy::Null,
            Some("zero") => FillPolicy::Zero,
            Some("scalar") => {
                return Err(
                    "fill policy 'scalar' is only for expressions, not downsampling".into(),
                );
            }
            Some(_) => {
                return Err(format!(
                    "unknown fill policy '{}'; use none, nan, null or zero",
                    parts[2]
                ));
            }
        };
        Ok(Downsample {
            interval,
            function,
            fill,
            spec: spec.to_owned(),
        })
    }

    /// The specification as given.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// How many points [`Downsample::apply`] emits per series when it fills, so the caller can
    /// refuse a request before building them; zero when it does not fill.
    pub(crate) fn filled_buckets(&self, scan_start_ms: i64, scan_end_ms: i64) -> u64 {
        match (self.interval, self.fill) {
            (Interval::Ms(iv), fill) if fill != FillPolicy::None => {
                let span = align(scan_end_ms, iv) - align(scan_start_ms, iv);
                u64::try_from(span / iv).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// Downsamples one series' `(ts, value)` samples, all in `[scan_start_ms, scan_end_ms)`.
    pub(crate) fn apply(
        &self,
        samples: &[(i64, f64)],
        scan_start_ms: i64,
        scan_end_ms: i64,
        start_ms: i64,
        end_ms: i64,
    ) -> Vec<(i64, f64)> {
        let iv = match self.interval {
            Interval::All => {
                let values: Vec<f64> = samples
                    .iter()
                    .filter(|(ts, _)| (start_ms..end_ms).contains(ts))
                    .map(|(_, value)| *value)
                    .collect();
                if values.is_empty() {
                    return Vec::new();
                }
                return vec![(start_ms, self.function.run(&values))];
            }
            Interval::Ms(iv) => iv,
        };
        // OpenTSDB seeks to the first bucket boundary at or after the scan start.
        let first_boundary = align(scan_start_ms.saturating_add(iv - 1), iv);
        let samples = &samples[samples.partition_point(|(ts, _)| *ts < first_boundary)..];
        let buckets = match Fold::of(self.function) {
            Some(fold) => fold.buckets(samples, iv),
            None => self.buffered_buckets(samples, iv),
        };
        let fill_value = match self.fill {
            FillPolicy::None => return buckets,
            FillPolicy::Nan | FillPolicy::Null => f64::NAN,
            FillPolicy::Zero => 0.0,
        };
        let last = align(scan_end_ms, iv);
        let mut filled = Vec::new();
        let mut next = buckets.iter().peekable();
        let mut t = align(scan_start_ms, iv);
        while t < last {
            match next.peek() {
                Some((ts, v)) if *ts == t => {
                    filled.push((t, *v));
                    next.next();
                }
                _ => filled.push((t, fill_value)),
            }
            t += iv;
        }
        filled
    }
}

impl Downsample {
    /// Buckets of sorted `samples`, each aggregated by [`Aggregator::run`] over its values.
    fn buffered_buckets(&self, samples: &[(i64, f64)], iv: i64) -> Vec<(i64, f64)> {
        let mut buckets: Vec<(i64, f64)> = Vec::new();
        let mut values: Vec<f64> = Vec::new();
        let mut current: Option<i64> = None;
        // Samples are sorted, so a bucket closes only when a sample reaches its end: one
        // division per bucket rather than per sample.
        let mut bucket_end = i64::MIN;
        for &(ts, value) in samples {
            if ts >= bucket_end {
                if let Some(open) = current {
                    buckets.push((open, self.function.run(&values)));
                    values.clear();
                }
                let bucket = align(ts, iv);
                current = Some(bucket);
                bucket_end = bucket.saturating_add(iv);
            }
            values.push(value);
        }
        if let Some(open) = current {
            buckets.push((open, self.function.run(&values)));
        }
        buckets
    }
}

/// The downsampling functions computed in one pass without holding a bucket's values; each
/// gives the same bits as [`Aggregator::run`] over the bucket (tested below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fold {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    First,
    Last,
}

/// The running state of one bucket.
struct FoldState {
    /// Values that are not NaN, and their sum from +0.0 in input order.
    n: usize,
    total: f64,
    /// The running min or max (NaN-skipping, NaN until a number is seen).
    extreme: f64,
    first: Option<f64>,
    last: f64,
}

impl Fold {
    fn of(function: Aggregator) -> Option<Fold> {
        Some(match function {
            Aggregator::Sum | Aggregator::Pfsum | Aggregator::Zimsum => Fold::Sum,
            Aggregator::Avg => Fold::Avg,
            Aggregator::Min | Aggregator::Mimmin => Fold::Min,
            Aggregator::Max | Aggregator::Mimmax => Fold::Max,
            Aggregator::Count => Fold::Count,
            Aggregator::First | Aggregator::None => Fold::First,
            Aggregator::Last => Fold::Last,
            _ => return None,
        })
    }

    fn start() -> FoldState {
        FoldState {
            n: 0,
            total: 0.0,
            extreme: f64::NAN,
            first: None,
            last: f64::NAN,
        }
    }

    fn add(self, st: &mut FoldState, v: f64) {
        if !v.is_nan() {
            st.n += 1;
            st.total += v;
        }
        match self {
            Fold::Min => st.extreme = st.extreme.min(v),
            Fold::Max => st.extreme = st.extreme.max(v),
            _ => {}
        }
        if st.first.is_none() {
            st.first = Some(v);
        }
        st.last = v;
    }

    fn finish(self, st: &FoldState) -> f64 {
        let nan_if_none = |v: f64| if st.n == 0 { f64::NAN } else { v };
        match self {
            Fold::Sum => nan_if_none(st.total),
            Fold::Avg => nan_if_none(st.total / st.n as f64),
            Fold::Min | Fold::Max => st.extreme,
            Fold::Count => st.n as f64,
            Fold::First => st.first.unwrap_or(f64::NAN),
            Fold::Last => st.last,
        }
    }

    /// Buckets of sorted `samples`.
    fn buckets(self, samples: &[(i64, f64)], iv: i64) -> Vec<(i64, f64)> {
        let mut buckets = Vec::new();
        let mut st = Fold::start();
        let mut current: Option<i64> = None;
        let mut bucket_end = i64::MIN;
        for &(ts, value) in samples {
            if ts >= bucket_end {
                if let Some(open) = current {
                    buckets.push((open, self.finish(&st)));
                    st = Fold::start();
                }
                let bucket = align(ts, iv);
                current = Some(bucket);
                bucket_end = bucket.saturating_add(iv);
            }
            self.add(&mut st, value);
        }
        if let Some(open) = current {
            buckets.push((open, self.finish(&st)));
        }
        buckets
    }
}

/// The start of the bucket holding `ts_ms`.
fn align(ts_ms: i64, interval_ms: i64) -> i64 {
    ts_ms - ts_ms.rem_euclid(interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    proptest::proptest! {
        #[test]
        fn one_pass_folds_match_the_aggregators_bit_for_bit(
            raw in proptest::collection::vec((0i64..50, proptest::num::f64::ANY), 0..200),
            function in proptest::sample::select(vec![
                "sum", "pfsum", "zimsum", "avg", "min", "mimmin", "max", "mimmax", "count",
                "first", "last", "none",
            ]),
        ) {
            let mut samples: Vec<(i64, f64)> = raw
                .iter()
                .enumerate()
                .map(|(i, &(gap, v))| (i as i64 * 7 + gap, if gap % 5 == 0 { f64::NAN } else { v }))
                .collect();
            samples.sort_by_key(|s| s.0);
            samples.dedup_by_key(|s| s.0);
            let agg = Aggregator::from_name(function).unwrap();
            let ds = Downsample { function: agg, ..Downsample::parse("10ms-sum").unwrap() };
            let fold = Fold::of(agg).unwrap();
            let a = fold.buckets(&samples, 10);
            let b = ds.buffered_buckets(&samples, 10);
            proptest::prop_assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                proptest::prop_assert_eq!(x.0, y.0);
                proptest::prop_assert_eq!(x.1.to_bits(), y.1.to_bits(), "{} at {}", function, x.0);
            }
        }
    }

    #[test]
    fn parses_specs() {
        let got: Vec<String> = [
            "1h-avg",
            "30m-sum-NaN",
            "1s-max-null",
            "10ms-count-zero",
            "0all-sum",
            "all-first",
            "1h-sum-none",
            "1h",
            "1h-avg-nan-x",
            "1h-summ",
            "1h-none",
            "0h-sum",
            "1dc-sum",
            "1h-sum-scalar",
            "1h-sum-bogus",
            "xall-sum",
            "1001y-sum",
        ]
        .into_iter()
        .map(|s| match Downsample::parse(s) {
            Ok(d) => format!(
                "{s}: {:?} {} {}",
                d.interval,
                d.function.name(),
                d.fill.name()
            ),
            Err(e) => format!("{s}: error: {e}"),
        })
        .collect();
        expect![[r#"
            [
                "1h-avg: Ms(3600000) avg none",
                "30m-sum-NaN: Ms(1800000) sum nan",
                "1s-max-null: Ms(1000) max null",
                "10ms-count-zero: Ms(10) count zero",
                "0all-sum: All sum none",
                "all-first: All first none",
                "1h-sum-none: Ms(3600000) sum none",
                "1h: error: it needs at least an interval and a function",
                "1h-avg-nan-x: error: it has more than interval, function and fill policy",
                "1h-summ: error: unknown function 'summ'; see /api/aggregators",
                "1h-none: error: 'none' cannot be used to downsample",
                "0h-sum: error: duration '0h' must be greater than zero",
                "1dc-sum: error: calendar downsampling ('1dc') is not supported by tsvault; drop the 'c' to use epoch-aligned buckets",
                "1h-sum-scalar: error: fill policy 'scalar' is only for expressions, not downsampling",
                "1h-sum-bogus: error: unknown fill policy 'bogus'; use none, nan, null or zero",
                "xall-sum: error: interval 'xall' is not <n>all",
                "1001y-sum: error: interval '1001y' is longer than 1000 years",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    /// The documentation's 30s-sum example: buckets at t0, t0+30s, t0+60s.
    #[test]
    fn sums_aligned_buckets() {
        let samples: Vec<(i64, f64)> = [5.0, 5.0, 10.0, 15.0, 20.0, 5.0, 1.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (60_000 + i as i64 * 10_000, *v))
            .collect();
        let ds = Downsample::parse("30s-sum").unwrap();
        let got = ds.apply(&samples, 0, 3_600_000, 60_000, 130_000);
        assert_eq!(got, vec![(60_000, 20.0), (90_000, 40.0), (120_000, 1.0)]);
        let all = Downsample::parse("0all-sum").unwrap();
        // [start, end): the sample at exactly 120 s is left out.
        assert_eq!(
            all.apply(&samples, 0, 3_600_000, 65_000, 120_000),
            vec![(65_000, 55.0)]
        );
    }
}
