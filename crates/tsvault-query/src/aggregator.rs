//! OpenTSDB 2.4's aggregation functions, used both across series and inside downsample buckets.
//!
//! Every function works on doubles and, like OpenTSDB's `runDouble`, skips NaN inputs (which
//! only fill policies produce), except `mult`, `first`, `last` and `none`, which OpenTSDB does not
//! guard either.

/// How a series that has no sample at a timestamp contributes to a cross-series aggregation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// Linear interpolation between the series' neighbouring samples.
    Lerp,
    /// Zero.
    Zim,
    /// The largest double.
    Max,
    /// The most negative double.
    Min,
    /// The series' previous sample.
    Prev,
}

/// Which percentile estimator a percentile aggregator uses (Apache Commons Math's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimation {
    /// Commons Math's default: index `p(n+1)`, linear between neighbours (`pNN`).
    Legacy,
    /// R-3: the nearest observation, ties to even (`epNNr3`).
    R3,
    /// R-7, as spreadsheets compute it: index `1 + (n-1)p` (`epNNr7`).
    R7,
}

/// One aggregation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregator {
    /// Sum, linear interpolation.
    Sum,
    /// Sum, previous value when missing.
    Pfsum,
    /// Sum, zero when missing.
    Zimsum,
    /// Sum of squares, zero when missing.
    SquareSum,
    /// Minimum, linear interpolation.
    Min,
    /// Maximum, linear interpolation.
    Max,
    /// Minimum, the largest double when missing.
    Mimmin,
    /// Maximum, the most negative double when missing.
    Mimmax,
    /// Mean, linear interpolation.
    Avg,
    /// The upper median (`sorted[n/2]`), linear interpolation.
    Median,
    /// Product, linear interpolation.
    Mult,
    /// Population standard deviation, linear interpolation.
    Dev,
    /// Last value minus first, linear interpolation.
    Diff,
    /// Number of values, zero when missing.
    Count,
    /// The first value.
    First,
    /// The last value.
    Last,
    /// No aggregation: every series is returned on its own.
    None,
    /// A percentile; `per_mille` is the percentile times ten (999 is the 99.9th).
    Percentile {
        /// The percentile times ten.
        per_mille: u16,
        /// The estimator.
        estimation: Estimation,
    },
}

use Aggregator as A;
use Estimation as E;

const fn pct(per_mille: u16, estimation: Estimation) -> Aggregator {
    Aggregator::Percentile {
        per_mille,
        estimation,
    }
}

/// Every aggregator by its OpenTSDB name, sorted by name.
const TABLE: &[(&str, Aggregator)] = &[
    ("avg", A::Avg),
    ("count", A::Count),
    ("dev", A::Dev),
    ("diff", A::Diff),
    ("ep50r3", pct(500, E::R3)),
    ("ep50r7", pct(500, E::R7)),
    ("ep75r3", pct(750, E::R3)),
    ("ep75r7", pct(750, E::R7)),
    ("ep90r3", pct(900, E::R3)),
    ("ep90r7", pct(900, E::R7)),
    ("ep95r3", pct(950, E::R3)),
    ("ep95r7", pct(950, E::R7)),
    ("ep999r3", pct(999, E::R3)),
    ("ep999r7", pct(999, E::R7)),
    ("ep99r3", pct(990, E::R3)),
    ("ep99r7", pct(990, E::R7)),
    ("first", A::First),
    ("last", A::Last),
    ("max", A::Max),
    ("median", A::Median),
    ("mimmax", A::Mimmax),
    ("mimmin", A::Mimmin),
    ("min", A::Min),
    ("mult", A::Mult),
    ("none", A::None),
    ("p50", pct(500, E::Legacy)),
    ("p75", pct(750, E::Legacy)),
    ("p90", pct(900, E::Legacy)),
    ("p95", pct(950, E::Legacy)),
    ("p99", pct(990, E::Legacy)),
    ("p999", pct(999, E::Legacy)),
    ("pfsum", A::Pfsum),
    ("squareSum", A::SquareSum),
    ("sum", A::Sum),
    ("zimsum", A::Zimsum),
];

/// The names of every aggregator, sorted, as `/api/aggregators` lists them.
pub fn aggregator_names() -> Vec<&'static str> {
    TABLE.iter().map(|(name, _)| *name).collect()
}

impl Aggregator {
    /// The aggregator called `name` (case-sensitive, as in OpenTSDB).
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }

    /// The aggregator's OpenTSDB name.
    pub fn name(self) -> &'static str {
        TABLE
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("unknown", |(n, _)| n)
    }

    /// How missing samples are filled when this aggregator merges series.
    pub fn interpolation(self) -> Interpolation {
        match self {
            A::Pfsum => Interpolation::Prev,
            A::Zimsum | A::SquareSum | A::Count | A::First | A::Last | A::None => {
                Interpolation::Zim
            }
            A::Mimmin => Interpolation::Max,
            A::Mimmax => Interpolation::Min,
            A::Sum
            | A::Min
            | A::Max
            | A::Avg
            | A::Median
            | A::Mult
            | A::Dev
            | A::Diff
            | A::Percentile { .. } => Interpolation::Lerp,
        }
    }

    /// Aggregates `values`; NaN when there is nothing to aggregate.
    pub fn run(self, values: &[f64]) -> f64 {
        let real = || values.iter().copied().filter(|v| !v.is_nan());
        match self {
            A::Sum | A::Pfsum | A::Zimsum => {
                let (n, total) = count_and_sum(values);
                nan_if_none(n, total)
            }
            A::SquareSum => nan_if_none(real().count(), sum(real().map(|v| v * v))),
            // f64::min and f64::max skip a NaN operand; NaN only when every value is NaN.
            A::Min | A::Mimmin => values.iter().copied().fold(f64::NAN, f64::min),
            A::Max | A::Mimmax => values.iter().copied().fold(f64::NAN, f64::max),
            A::Avg => {
                let (n, total) = count_and_sum(values);
                nan_if_none(n, total / n as f64)
            }
            A::Median => {
                let mut sorted: Vec<f64> = real().collect();
                sorted.sort_by(f64::total_cmp);
                sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
            }
            A::Mult => values.iter().product::<f64>(),
            A::Dev => dev(values),
            A::Diff => diff(values),
            A::Count => real().count() as f64,
            A::First | A::None => values.first().copied().unwrap_or(f64::NAN),
            A::Last => values.last().copied().unwrap_or(f64::NAN),
            A::Percentile {
                per_mille,
                estimation,
            } => percentile(values, per_mille, estimation),
        }
    }
}

/// The count and the sum (from +0.0, in input order) of the values that are not NaN, in one
/// pass: the same bits as [`sum`] over the filtered values.
fn count_and_sum(values: &[f64]) -> (usize, f64) {
    let mut n = 0;
    let mut total = 0.0;
    for &v in values {
        if !v.is_nan() {
            n += 1;
            total += v;
        }
    }
    (n, total)
}

/// Sums from +0.0 in input order, as OpenTSDB does (`Iterator::sum` starts from -0.0).
fn sum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |acc, v| acc + v)
}

fn nan_if_none(n: usize, value: f64) -> f64 {
    if n == 0 { f64::NAN } else { value }
}

/// Welford's population deviation in OpenTSDB's order, so results match bit for bit.
fn dev(values: &[f64]) -> f64 {
    let mut it = values.iter().copied().skip_while(|v| v.is_nan());
    let Some(mut mean) = it.next() else {
        return f64::NAN;
    };
    let mut n = 2.0_f64;
    let mut m2 = 0.0_f64;
    for x in it.filter(|v| !v.is_nan()) {
        let new_mean = mean + (x - mean) / n;
        m2 += (x - mean) * (x - new_mean);
        mean = new_mean;
        n += 1.0;
    }
    if n == 2.0 {
        0.0
    } else {
        (m2 / (n - 1.0)).sqrt()
    }
}

/// Last minus first; like OpenTSDB, only the first value skips NaN.
fn diff(values: &[f64]) -> f64 {
    let mut it = values.iter().copied().skip_while(|v| v.is_nan());
    let Some(first) = it.next() else {
        return f64::NAN;
    };
    match it.last() {
        Some(last) => last - first,
        None => 0.0,
    }
}

/// Commons Math's `Percentile` with the given estimator, over the non-NaN values.
fn percentile(values: &[f64], per_mille: u16, estimation: Estimation) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let len = sorted.len();
    match len {
        0 => return f64::NAN,
        1 => return sorted[0],
        _ => {}
    }
    let n = len as f64;
    // Commons Math takes the percentile in (0, 100] and divides by 100; do the same.
    let p = (f64::from(per_mille) / 10.0) / 100.0;
    let pos = match estimation {
        Estimation::Legacy if p == 1.0 => n,
        Estimation::Legacy => p * (n + 1.0),
        Estimation::R3 if p <= 0.5 / n => 0.0,
        Estimation::R3 => (n * p).round_ties_even(),
        Estimation::R7 if p == 1.0 => n,
        Estimation::R7 => 1.0 + (n - 1.0) * p,
    };
    if pos < 1.0 {
        return sorted[0];
    }
    if pos >= n {
        return sorted[len - 1];
    }
    let floor = pos.floor();
    // 1 <= pos < n, so floor is an index in 1..len.
    let i = floor as usize;
    let lower = sorted[i - 1];
    let upper = sorted[i];
    lower + (pos - floor) * (upper - lower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn names_round_trip() {
        for name in aggregator_names() {
            let agg = Aggregator::from_name(name).unwrap();
            assert_eq!(agg.name(), name);
        }
        assert_eq!(Aggregator::from_name("summ"), None);
        assert_eq!(Aggregator::from_name("SUM"), None);
        let names = aggregator_names();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    /// Every aggregator over one known set; values hand-checked below the table.
    #[test]
    fn every_aggregator_on_a_known_set() {
        let values = [1.0, 2.0, 3.0, 4.0, 10.0];
        let got: String = aggregator_names()
            .into_iter()
            .map(|name| {
                let agg = Aggregator::from_name(name).unwrap();
                format!("{name:<10} {:?}\n", agg.run(&values))
            })
            .collect();
        // sum 20, avg 4, squareSum 1+4+9+16+100=130, dev sqrt(((9+4+1+0+36)/5))=sqrt(10),
        // median sorted[2]=3, diff 10-1=9, mult 240.
        // p50 legacy: pos 0.5*6=3 -> 3; p75: 4.5 -> 4+0.5*6=7; p90: 5.4 -> last=10;
        // p99: 5.94 -> 10. R-3 p50: rint(2.5)=2 -> sorted[1]=2; p75: rint(3.75)=4 -> 4;
        // p90: rint(4.5)=4 -> 4; p95: rint(4.75)=5 -> 10. R-7 p50: 1+4*0.5=3 -> 3;
        // p75: 4 -> 4; p90: 4.6 -> 4+0.6*6=7.6; p95: 4.8 -> 8.8; p99: 4.96 -> 9.76.
        expect![[r#"
            avg        4.0
            count      5.0
            dev        3.1622776601683795
            diff       9.0
            ep50r3     2.0
            ep50r7     3.0
            ep75r3     4.0
            ep75r7     4.0
            ep90r3     4.0
            ep90r7     7.599999999999998
            ep95r3     10.0
            ep95r7     8.799999999999999
            ep999r3    10.0
            ep999r7    9.976000000000003
            ep99r3     10.0
            ep99r7     9.76
            first      1.0
            last       10.0
            max        10.0
            median     3.0
            mimmax     10.0
            mimmin     1.0
            min        1.0
            mult       240.0
            none       1.0
            p50        3.0
            p75        7.0
            p90        10.0
            p95        10.0
            p99        10.0
            p999       10.0
            pfsum      20.0
            squareSum  130.0
            sum        20.0
            zimsum     20.0
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn nan_inputs_are_skipped_like_opentsdb() {
        let values = [f64::NAN, 2.0, f64::NAN, 4.0];
        let got: String = [
            "sum", "avg", "min", "max", "count", "dev", "diff", "p50", "last",
        ]
        .into_iter()
        .map(|name| {
            let v = Aggregator::from_name(name).unwrap().run(&values);
            format!("{name} {v:?}\n")
        })
        .collect();
        expect![[r#"
            sum 6.0
            avg 3.0
            min 2.0
            max 4.0
            count 2.0
            dev 1.0
            diff 2.0
            p50 3.0
            last 4.0
        "#]]
        .assert_eq(&got);
        assert!(Aggregator::Sum.run(&[f64::NAN]).is_nan());
        assert!(Aggregator::Avg.run(&[]).is_nan());
        assert_eq!(Aggregator::Dev.run(&[5.0]), 0.0);
    }
}
