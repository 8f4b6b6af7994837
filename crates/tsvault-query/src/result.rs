//! Query results and their OpenTSDB JSON shape.

use std::collections::BTreeMap;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

use crate::request::QueryRequest;

/// One output series: a group of input series merged by the sub-query's aggregator.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    /// Which sub-query produced it, from 0.
    pub query_index: usize,
    /// The metric name.
    pub metric: String,
    /// Tags every series of the group has, with the same value.
    pub tags: BTreeMap<String, String>,
    /// Tag keys every series of the group has, with differing values; sorted.
    pub aggregate_tags: Vec<String>,
    /// `(timestamp ms, value)` points in time order; NaN marks a filled empty bucket.
    pub dps: Vec<(i64, f64)>,
    /// The sub-query's fill policy is `null`: NaN serializes as `null` rather than "NaN".
    pub nan_as_null: bool,
}

impl QueryResult {
    /// OpenTSDB's JSON object for this result: `metric`, `tags`, `aggregateTags` and `dps`.
    ///
    /// `dps` keys are epoch seconds, or milliseconds with `ms_resolution`. OpenTSDB writes one
    /// key per point even when several share a second (duplicate keys); a JSON object can hold
    /// one, so the last point of each second is kept, which is what JSON readers of OpenTSDB's
    /// output see. NaN is written as the string "NaN", as OpenTSDB's Jackson writer does.
    pub fn to_json(&self, ms_resolution: bool) -> Value {
        serde_json::to_value(Encoded {
            result: self,
            ms_resolution,
            query: None,
        })
        .expect("a query result encodes")
    }

    /// The `dps` entries: each key once (its last point), in the order of the keys as
    /// strings (the order of a JSON object's members as this answer has always written them).
    fn dps_entries(&self, ms_resolution: bool) -> Vec<(i64, f64)> {
        let key_of = |ts_ms: i64| {
            if ms_resolution {
                ts_ms
            } else {
                ts_ms.div_euclid(1000)
            }
        };
        // Points are in time order, so the points of one key are adjacent.
        let mut entries: Vec<(i64, f64)> = Vec::with_capacity(self.dps.len());
        for &(ts_ms, value) in &self.dps {
            let key = key_of(ts_ms);
            match entries.last_mut() {
                Some(last) if last.0 == key => last.1 = value,
                _ => entries.push((key, value)),
            }
        }
        // Keys of one sign and one number of digits (nearly always) are in string order
        // already; others are sorted as strings.
        let digits = |k: i64| (k < 0, k.unsigned_abs().checked_ilog10());
        if entries.windows(2).any(|w| digits(w[0].0) != digits(w[1].0)) {
            entries.sort_by_cached_key(|(k, _)| k.to_string());
        }
        entries
    }
}

/// A result as OpenTSDB's JSON object, written member by member (no tree of JSON values: a
/// large answer would take several times its size in memory).
struct Encoded<'a> {
    result: &'a QueryResult,
    ms_resolution: bool,
    /// The sub-query, with `showQuery`.
    query: Option<Value>,
}

impl Serialize for Encoded<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct Dps<'a>(&'a QueryResult, Vec<(i64, f64)>);
        impl Serialize for Dps<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.1.len()))?;
                for (key, value) in &self.1 {
                    map.serialize_entry(key, &PointValue(*value, self.0.nan_as_null))?;
                }
                map.end()
            }
        }
        let r = self.result;
        // Members in the order of their names, as before.
        let mut obj = serializer.serialize_map(None)?;
        obj.serialize_entry("aggregateTags", &r.aggregate_tags)?;
        obj.serialize_entry("dps", &Dps(r, r.dps_entries(self.ms_resolution)))?;
        obj.serialize_entry("metric", &r.metric)?;
        if let Some(query) = &self.query {
            obj.serialize_entry("query", query)?;
        }
        obj.serialize_entry("tags", &r.tags)?;
        obj.end()
    }
}

/// One point's value: finite as a number (the executor refuses infinite results), NaN as
/// the string "NaN" or, with `fill: null`, as null.
struct PointValue(f64, bool);

impl Serialize for PointValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            PointValue(v, true) if v.is_nan() => serializer.serialize_unit(),
            PointValue(v, false) if v.is_nan() => serializer.serialize_str("NaN"),
            PointValue(v, _) if v.is_finite() => serializer.serialize_f64(*v),
            PointValue(..) => serializer.serialize_unit(),
        }
    }
}

/// The whole `/api/query` response, as [`results_to_json`] builds it, encoded as it is
/// written.
pub fn results_to_bytes(results: &[QueryResult], request: &QueryRequest) -> Vec<u8> {
    serde_json::to_vec(&Answer { results, request }).expect("query results encode")
}

struct Answer<'a> {
    results: &'a [QueryResult],
    request: &'a QueryRequest,
}

impl Serialize for Answer<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.results.len()))?;
        for r in self.results {
            seq.serialize_element(&Encoded {
                result: r,
                ms_resolution: self.request.ms_resolution,
                query: self
                    .request
                    .show_query
                    .then(|| self.request.queries.get(r.query_index).map(|q| q.to_json()))
                    .flatten(),
            })?;
        }
        seq.end()
    }
}

/// The whole `/api/query` response: every result, each with its sub-query when `showQuery`.
pub fn results_to_json(results: &[QueryResult], request: &QueryRequest) -> Value {
    serde_json::to_value(Answer { results, request }).expect("query results encode")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn request(ms_resolution: bool, show_query: bool) -> QueryRequest {
        let body = format!(
            r#"{{"start":0,"msResolution":{ms_resolution},"showQuery":{show_query},"queries":[{{"metric":"m","aggregator":"sum"}}]}}"#
        );
        QueryRequest::from_json(body.as_bytes(), 1_700_000_000_000).unwrap()
    }

    proptest! {
        /// The answer written member by member is the one a tree of JSON values (whose
        /// objects keep their members sorted by name) encodes: same members, same order, one
        /// entry per second.
        #[test]
        fn the_written_answer_is_the_json_tree_encoded(
            mut ts in prop::collection::btree_set(-20_000_000i64..20_000_000_000, 0..60),
            values in prop::collection::vec(prop_oneof![Just(f64::NAN), any::<f64>().prop_filter("finite", |v| v.is_finite())], 60),
            ms_resolution: bool,
            show_query: bool,
            nan_as_null: bool,
        ) {
            // Some points within one second of each other.
            let extra: Vec<i64> = ts.iter().map(|t| t + 1).collect();
            ts.extend(extra);
            let result = QueryResult {
                query_index: 0,
                metric: "m".into(),
                tags: BTreeMap::from([("host".into(), "a\"b".into())]),
                aggregate_tags: vec!["dc".into()],
                dps: ts.iter().zip(values.iter().cycle()).map(|(&t, &v)| (t, v)).collect(),
                nan_as_null,
            };
            let req = request(ms_resolution, show_query);
            let results = [result.clone(), result];
            let written = String::from_utf8(results_to_bytes(&results, &req)).unwrap();
            prop_assert_eq!(written, results_to_json(&results, &req).to_string());
        }
    }
}
