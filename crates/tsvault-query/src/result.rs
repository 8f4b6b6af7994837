//! Query results and their OpenTSDB JSON shape.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

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
        let mut dps = Map::new();
        for &(ts_ms, value) in &self.dps {
            let key = if ms_resolution {
                ts_ms
            } else {
                ts_ms.div_euclid(1000)
            };
            dps.insert(key.to_string(), self.value_json(value));
        }
        let mut obj = Map::new();
        obj.insert("metric".into(), Value::String(self.metric.clone()));
        obj.insert(
            "tags".into(),
            Value::Object(
                self.tags
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            ),
        );
        obj.insert(
            "aggregateTags".into(),
            Value::Array(
                self.aggregate_tags
                    .iter()
                    .cloned()
                    .map(Value::String)
                    .collect(),
            ),
        );
        obj.insert("dps".into(), Value::Object(dps));
        Value::Object(obj)
    }

    fn value_json(&self, value: f64) -> Value {
        if value.is_nan() {
            if self.nan_as_null {
                Value::Null
            } else {
                Value::String("NaN".into())
            }
        } else {
            // Finite: the executor refuses infinite results.
            serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number)
        }
    }
}

/// The whole `/api/query` response: every result, each with its sub-query when `showQuery`.
pub fn results_to_json(results: &[QueryResult], request: &QueryRequest) -> Value {
    Value::Array(
        results
            .iter()
            .map(|r| {
                let mut value = r.to_json(request.ms_resolution);
                if request.show_query
                    && let (Value::Object(obj), Some(q)) =
                        (&mut value, request.queries.get(r.query_index))
                {
                    obj.insert("query".into(), q.to_json());
                }
                value
            })
            .collect(),
    )
}
