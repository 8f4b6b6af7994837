//! Merging the series of one group into one, OpenTSDB's `AggregationIterator`.
//!
//! The result has a point at every timestamp any series of the group has. A series takes part
//! at timestamp `x` only between its own first and last points; inside that span, where it has
//! no point at `x`, its aggregator's [`Interpolation`] supplies one (linear interpolation for
//! sum, avg, ...; 0 for zimsum; the largest double for mimmin; the most negative for mimmax).
//! Rate series are never interpolated: they contribute their previous rate, as in OpenTSDB.

use crate::aggregator::{Aggregator, Interpolation};

/// Every timestamp of any series within `[lo_ms, hi_ms]`, sorted and unique.
pub(crate) fn union_timestamps(series: &[Vec<(i64, f64)>], lo_ms: i64, hi_ms: i64) -> Vec<i64> {
    let mut all: Vec<i64> = series
        .iter()
        .flat_map(|points| points.iter().map(|(ts, _)| *ts))
        .filter(|ts| (lo_ms..=hi_ms).contains(ts))
        .collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Merges `series` (each sorted, strictly increasing) at `timestamps` with `aggregator`.
pub(crate) fn merge(
    series: &[Vec<(i64, f64)>],
    timestamps: &[i64],
    aggregator: Aggregator,
    rate_mode: bool,
) -> Vec<(i64, f64)> {
    let method = if rate_mode {
        Interpolation::Prev
    } else {
        aggregator.interpolation()
    };
    // cursors[s]: index of the first point of series s at or after the current timestamp.
    let mut cursors = vec![0usize; series.len()];
    let mut values = Vec::with_capacity(series.len());
    let mut out = Vec::with_capacity(timestamps.len());
    for &x in timestamps {
        values.clear();
        for (points, cursor) in series.iter().zip(cursors.iter_mut()) {
            let (Some(first), Some(last)) = (points.first(), points.last()) else {
                continue;
            };
            if x < first.0 || x > last.0 {
                continue;
            }
            while points[*cursor].0 < x {
                *cursor += 1;
            }
            let (t1, v1) = points[*cursor];
            if t1 == x {
                values.push(v1);
                continue;
            }
            // first.0 <= x < t1, so the cursor is past the first point.
            let (t0, v0) = points[*cursor - 1];
            values.push(match method {
                Interpolation::Lerp => v0 + (x - t0) as f64 * (v1 - v0) / (t1 - t0) as f64,
                Interpolation::Zim => 0.0,
                Interpolation::Max => f64::MAX,
                Interpolation::Min => f64::MIN,
                Interpolation::Prev => v0,
            });
        }
        out.push((x, aggregator.run(&values)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(series: &[Vec<(i64, f64)>], agg: &str, rate_mode: bool) -> Vec<(i64, f64)> {
        let ts = union_timestamps(series, i64::MIN, i64::MAX);
        merge(series, &ts, Aggregator::from_name(agg).unwrap(), rate_mode)
    }

    /// The user guide's interpolation table: A every 20 s from t0+10, B every 20 s from t0.
    #[test]
    fn lerp_matches_the_user_guide() {
        let a = vec![(10, 5.0), (30, 15.0), (50, 5.0)];
        let b = vec![(0, 10.0), (20, 20.0), (40, 10.0), (60, 20.0)];
        let got = run(&[a, b], "sum", false);
        // The guide prints 25 at +30s, but its own rows give A 15 + interpolated B 15 = 30.
        let want = [
            (0, 10.0),
            (10, 20.0),
            (20, 30.0),
            (30, 30.0),
            (40, 20.0),
            (50, 20.0),
            (60, 20.0),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn substitution_and_rate_mode() {
        let a = vec![(0, 4.0), (20, 8.0)];
        let b = vec![(10, 6.0)];
        assert_eq!(
            run(&[a.clone(), b.clone()], "zimsum", false),
            [(0, 4.0), (10, 6.0), (20, 8.0)]
        );
        assert_eq!(
            run(&[a.clone(), b.clone()], "mimmin", false),
            [(0, 4.0), (10, 6.0), (20, 8.0)]
        );
        assert_eq!(
            run(&[a.clone(), b.clone()], "mimmax", false),
            [(0, 4.0), (10, 6.0), (20, 8.0)]
        );
        assert_eq!(
            run(&[a.clone(), b.clone()], "count", false),
            [(0, 1.0), (10, 2.0), (20, 1.0)]
        );
        assert_eq!(
            run(&[a.clone(), b.clone()], "sum", false),
            [(0, 4.0), (10, 12.0), (20, 8.0)]
        );
        assert_eq!(
            run(&[a.clone(), b.clone()], "pfsum", false),
            [(0, 4.0), (10, 10.0), (20, 8.0)]
        );
        // Rate series hold their previous value instead of interpolating.
        assert_eq!(run(&[a, b], "sum", true), [(0, 4.0), (10, 10.0), (20, 8.0)]);
    }
}
