//! Row filters: a sub-query's `where` condition, which keeps a raw sample of a series only when
//! the series of another (or the same) metric with exactly the same tag set holds a sample at
//! exactly the same timestamp whose value passes a comparison.
//!
//! This answers InfluxQL's `SELECT * FROM cpu WHERE usage_user > 90`, since line protocol
//! turns each field of a row into its own metric with the row's tags and timestamp. OpenTSDB
//! has no such feature; it is a tsvault extension of the POST JSON body only.

use tsvault_model::{Sample, SeriesKey};

/// A comparison between a condition sample's value and a threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    /// `gt` or `>`.
    Gt,
    /// `ge` or `>=`.
    Ge,
    /// `lt` or `<`.
    Lt,
    /// `le` or `<=`.
    Le,
    /// `eq` or `==`.
    Eq,
    /// `ne` or `!=`.
    Ne,
}

/// Every operator name [`CompareOp::from_name`] accepts, for error messages.
pub(crate) const COMPARE_OP_NAMES: &str = "gt, ge, lt, le, eq, ne, >, >=, <, <=, ==, !=";

impl CompareOp {
    /// The operator for a name (`gt`) or symbol (`>`); `None` when there is none.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "gt" | ">" => CompareOp::Gt,
            "ge" | ">=" => CompareOp::Ge,
            "lt" | "<" => CompareOp::Lt,
            "le" | "<=" => CompareOp::Le,
            "eq" | "==" => CompareOp::Eq,
            "ne" | "!=" => CompareOp::Ne,
            _ => return None,
        })
    }

    /// The operator's name, as `showQuery` echoes it.
    pub fn name(self) -> &'static str {
        match self {
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
        }
    }

    /// True when `value op threshold` holds; IEEE rules, so a NaN value passes only `ne`.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            CompareOp::Gt => value > threshold,
            CompareOp::Ge => value >= threshold,
            CompareOp::Lt => value < threshold,
            CompareOp::Le => value <= threshold,
            CompareOp::Eq => value == threshold,
            CompareOp::Ne => value != threshold,
        }
    }
}

/// A sub-query's `where` condition: `metric op value`, joined on tag set and timestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct RowFilter {
    /// The metric whose samples decide; may be the sub-query's own metric.
    pub metric: String,
    /// How a condition sample's value is compared.
    pub op: CompareOp,
    /// The threshold, always finite.
    pub value: f64,
}

impl RowFilter {
    /// True when a condition sample with `value` lets its row through.
    pub fn passes(&self, value: f64) -> bool {
        self.op.holds(value, self.value)
    }
}

/// The canonical encoding of `key`'s tag set, without the metric: equal for two keys exactly
/// when their tag sets are equal, so it joins series of different metrics without allocating.
pub(crate) fn tag_set_of(key: &SeriesKey) -> &str {
    &key.as_str()[key.metric().len()..]
}

/// Keeps the points that have a condition sample at the same timestamp that passes `filter`.
/// Both inputs are sorted by strictly increasing timestamp, so one merge walk does it.
pub(crate) fn retain_passing(
    points: &mut Vec<(i64, f64)>,
    condition: &[Sample],
    filter: &RowFilter,
) {
    let mut next = 0;
    points.retain(|&(ts_ms, _)| {
        while next < condition.len() && condition[next].ts_ms < ts_ms {
            next += 1;
        }
        condition
            .get(next)
            .is_some_and(|c| c.ts_ms == ts_ms && filter.passes(c.value))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(points: &[(i64, f64)]) -> Vec<Sample> {
        points
            .iter()
            .map(|&(ts_ms, value)| Sample { ts_ms, value })
            .collect()
    }

    #[test]
    fn every_op_by_name_and_symbol() {
        let mut got = String::new();
        for (word, symbol) in [
            ("gt", ">"),
            ("ge", ">="),
            ("lt", "<"),
            ("le", "<="),
            ("eq", "=="),
            ("ne", "!="),
        ] {
            let op = CompareOp::from_name(word).unwrap();
            assert_eq!(CompareOp::from_name(symbol), Some(op));
            assert_eq!(op.name(), word);
            let results: Vec<String> = [1.0, 2.0, 3.0, f64::NAN]
                .iter()
                .map(|v| format!("{v}:{}", op.holds(*v, 2.0)))
                .collect();
            got.push_str(&format!("{word} 2: {}\n", results.join(" ")));
        }
        assert_eq!(CompareOp::from_name("GT"), None);
        assert_eq!(CompareOp::from_name("=>"), None);
        expect_test::expect![[r#"
            gt 2: 1:false 2:false 3:true NaN:false
            ge 2: 1:false 2:true 3:true NaN:false
            lt 2: 1:true 2:false 3:false NaN:false
            le 2: 1:true 2:true 3:false NaN:false
            eq 2: 1:false 2:true 3:false NaN:false
            ne 2: 1:true 2:false 3:true NaN:true
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn merge_walk_matches_exact_timestamps_only() {
        let filter = RowFilter {
            metric: "c".into(),
            op: CompareOp::Gt,
            value: 90.0,
        };
        let mut points = vec![
            (0, 1.0),
            (10, 2.0),
            (20, 3.0),
            (30, 4.0),
            (40, 5.0),
            (50, 6.0),
        ];
        // No condition at 10 or 50; 15 and 60 match no point; 30 fails the comparison.
        let condition = samples(&[
            (0, 95.0),
            (15, 99.0),
            (20, 91.0),
            (30, 90.0),
            (40, 100.0),
            (60, 99.0),
        ]);
        retain_passing(&mut points, &condition, &filter);
        assert_eq!(points, vec![(0, 1.0), (20, 3.0), (40, 5.0)]);

        let mut points = vec![(0, 1.0), (10, 2.0)];
        retain_passing(&mut points, &[], &filter);
        assert_eq!(points, vec![]);
    }

    #[test]
    fn tag_set_ignores_the_metric() {
        let a = SeriesKey::new("cpu_usage_user", &[("host", "a"), ("dc", "eu")]).unwrap();
        let b = SeriesKey::new("cpu_usage_system", &[("dc", "eu"), ("host", "a")]).unwrap();
        let c = SeriesKey::new("cpu_usage_system", &[("host", "a")]).unwrap();
        let bare = SeriesKey::new::<&str, &str>("cpu", &[]).unwrap();
        assert_eq!(tag_set_of(&a), tag_set_of(&b));
        assert_ne!(tag_set_of(&a), tag_set_of(&c));
        assert_eq!(tag_set_of(&bare), "");
    }
}
