//! OpenTSDB's last data point query, `/api/query/last`: the latest sample of every series of
//! a metric (or of those its tags select) in a window, with the sample's own timestamp (a
//! `0all-last` downsample stamps the value with the window's start instead).
//!
//! OpenTSDB looks back `back_scan` hours from now; tsvault adds `end` ("as of", any time form
//! `/api/query` reads), so the window is `(end - back_scan hours, end]` in milliseconds. Each
//! query's series are read over exactly that window through the same checked path as
//! `/api/query` ([`read_series`]), charged to the same samples budget, and each keeps its last
//! sample: no more work than a `0all-last` query of the same series, which reads a wider,
//! hour-aligned range. Tag values are read as `/api/query`'s `tags`: an exact value, `*`,
//! `a|b`, or a `type(expr)` filter. tsvault has no tsuids: names are always resolved
//! (`resolve`, `resolveNames` are accepted and ignored) and tsuid queries are refused. As in
//! `/api/query`, a metric never written is an error (a typo would otherwise look like a quiet
//! metric), a time zone other than UTC is refused, and a parameter given twice, empty, or
//! spelt for the other form (`backScan` in GET, `back_scan` in POST) is refused rather than
//! guessed at. The series read by all the queries of a request together are bounded by
//! `series_max`, and each series is kept once, so that many copies of one query cost no more
//! memory than one.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{Value, json};
use tsvault_model::SeriesKey;

use crate::error::{Error, Result};
use crate::executor::{
    Allowance, Budget, Limits, SERIES_CHARGE, SERIES_WEIGHT, known_metric, read_series,
};
use crate::filter::Filter;
use crate::request::{
    ExprError, check_utc, distinct_params, field_err, filters_from_tags, json_object, json_queries,
    param, parse_metric_and_filters, refuse_tsuids, resolve_time, tag_map, time_text, unsupported,
};
use crate::source::Source;

/// How far back a query looks when it does not say, as in OpenTSDB.
pub const BACK_SCAN_HOURS_DEFAULT: i64 = 24;
/// The longest look-back accepted: ten years of 365 days.
pub const BACK_SCAN_HOURS_MAX: i64 = 87_600;

const HOUR_MS: i64 = 3_600_000;

/// A parsed `/api/query/last` request with its end time resolved.
#[derive(Debug, Clone)]
pub struct LastRequest {
    /// End of the window ("as of"), ms since the epoch, inclusive.
    pub end_ms: i64,
    /// Width of the window in hours, from 1 to [`BACK_SCAN_HOURS_MAX`].
    pub back_scan_hours: i64,
    /// The queries, in request order.
    pub queries: Vec<LastQuery>,
}

/// One metric, and the tag filters its series must pass.
#[derive(Debug, Clone)]
pub struct LastQuery {
    /// The exact metric name.
    pub metric: String,
    /// Tag filters, all of which a series must pass; none selects every series of the metric.
    pub filters: Vec<Filter>,
}

impl LastQuery {
    /// True when the series passes every filter.
    pub fn matches(&self, key: &SeriesKey) -> bool {
        self.filters.iter().all(|f| f.matches(key))
    }
}

/// The last sample of one series in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct LastPoint {
    /// The series.
    pub key: SeriesKey,
    /// The sample's own timestamp, ms since the epoch.
    pub ts_ms: i64,
    /// The sample's value.
    pub value: f64,
}

impl LastPoint {
    /// OpenTSDB's JSON object: `metric`, `timestamp` (ms), `value` as a string, `tags`.
    ///
    /// The value is written as the shortest decimal that reads back to the same double, with
    /// no exponent and no `.0` on whole numbers: what OpenTSDB writes for integer data.
    pub fn to_json(&self) -> Value {
        json!({
            "metric": self.key.metric(),
            "timestamp": self.ts_ms,
            "value": self.value.to_string(),
            "tags": tag_map(&self.key),
        })
    }
}

/// The whole `/api/query/last` response: an array of [`LastPoint::to_json`].
pub fn last_points_to_json(points: &[LastPoint]) -> Value {
    Value::Array(points.iter().map(LastPoint::to_json).collect())
}

impl LastRequest {
    /// The window as a half-open range of ms, `[end - back_scan hours + 1, end + 1)`.
    pub fn window_ms(&self) -> (i64, i64) {
        (
            self.end_ms - self.back_scan_hours * HOUR_MS + 1,
            self.end_ms + 1,
        )
    }

    /// Parses GET parameters: repeated `timeseries=<metric>[{tagk=value,...}]`, `back_scan`
    /// (hours), `end`; `resolve` is ignored. `now_ms` resolves relative and missing times.
    pub fn from_params(params: &[(String, String)], now_ms: i64) -> Result<Self> {
        // A parameter of the POST body's spelling, or one this query does not have, would
        // otherwise be ignored and the default window used without a word.
        for (wrong, right) in [
            ("backScan", "back_scan"),
            ("backscan", "back_scan"),
            ("start", "end and back_scan"),
        ] {
            if params.iter().any(|(k, _)| k == wrong) {
                return Err(Error::Parameter {
                    name: wrong,
                    problem: format!(
                        "not a parameter of /api/query/last; the window is given by {right}"
                    ),
                });
            }
        }
        for name in ["back_scan", "end", "tz", "timezone"] {
            let given: Vec<&str> = params
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect();
            if given.len() > 1 {
                return Err(Error::Parameter {
                    name: param_name(name),
                    problem: format!(
                        "given {} times ({}); give it once",
                        given.len(),
                        given.join(", ")
                    ),
                });
            }
            if given == [""] && name != "tz" && name != "timezone" {
                return Err(Error::Parameter {
                    name: param_name(name),
                    problem: "empty; leave it out for its default".into(),
                });
            }
        }
        let get = |name: &str| param(params, name);
        check_utc(get("tz").or_else(|| get("timezone")))?;
        let end_ms = resolve_time("end", get("end"), now_ms)?;
        let back_scan_hours = match get("back_scan") {
            None => BACK_SCAN_HOURS_DEFAULT,
            Some(text) => back_scan_hours(text).map_err(|problem| Error::Parameter {
                name: "back_scan",
                problem,
            })?,
        };
        if params.iter().any(|(k, _)| k == "tsuids") {
            return Err(unsupported("tsuids queries"));
        }
        let queries = distinct_params(params, "timeseries", parse_timeseries)?;
        if queries.is_empty() {
            return Err(Error::Parameter {
                name: "timeseries",
                problem:
                    "missing; give at least one, such as timeseries=cpu_usage_user{hostname=*}"
                        .into(),
            });
        }
        Ok(LastRequest {
            end_ms,
            back_scan_hours,
            queries,
        })
    }

    /// Parses a POST body: `{"queries": [{"metric": .., "tags": {..}}], "backScan": hours,
    /// "end": time}`; `resolveNames` is ignored. `now_ms` resolves relative and missing times.
    pub fn from_json(body: &[u8], now_ms: i64) -> Result<Self> {
        let obj = json_object(body, "expected a JSON object with 'queries'")?;
        refuse_unknown_fields(&obj, TOP_FIELDS, None)?;
        check_utc(obj.get("timezone").and_then(Value::as_str))?;
        let end_text = time_text(&obj, "end")?;
        if end_text.as_deref() == Some("") {
            return Err(field_err("end", "empty; leave it out for now"));
        }
        let end_ms = resolve_time("end", end_text.as_deref(), now_ms)?;
        let back_scan_hours = match obj.get("backScan") {
            None | Some(Value::Null) => Ok(BACK_SCAN_HOURS_DEFAULT),
            Some(Value::Number(n)) => back_scan_hours(&n.to_string()),
            Some(Value::String(s)) => back_scan_hours(s),
            Some(other) => Err(format!("expected a whole number of hours, got {other}")),
        }
        .map_err(|problem: String| field_err("backScan", &problem))?;
        let example = r#"{"metric": "cpu_usage_user", "tags": {"hostname": "*"}}"#;
        let queries = json_queries(
            &obj,
            &format!("expected an array of queries such as [{example}]"),
            last_query_from_json,
        )?;
        if queries.is_empty() {
            return Err(field_err(
                "queries",
                &format!("missing or empty; give at least one query such as {example}"),
            ));
        }
        Ok(LastRequest {
            end_ms,
            back_scan_hours,
            queries,
        })
    }
}

/// The fields of a POST body, and of each of its queries: any other is refused rather than
/// ignored (a `back_scan` spelt as in GET would silently leave the window at its default).
const TOP_FIELDS: &[&str] = &["queries", "backScan", "end", "resolveNames", "timezone"];
const QUERY_FIELDS: &[&str] = &["metric", "tags"];

/// Refuses a field of `obj` not in `known`, naming it and the known ones; `query` is the
/// query it belongs to, if any.
fn refuse_unknown_fields(
    obj: &serde_json::Map<String, Value>,
    known: &[&str],
    query: Option<usize>,
) -> Result<()> {
    let Some(unknown) = obj.keys().find(|k| !known.contains(&k.as_str())) else {
        return Ok(());
    };
    let problem = format!(
        "unknown field; /api/query/last reads {}",
        known
            .iter()
            .map(|k| format!("'{k}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Err(match query {
        Some(query) => Error::QueryField {
            query,
            field: unknown.clone(),
            problem,
        },
        None => field_err(unknown, &problem),
    })
}

/// The `&'static` name of a GET parameter of this query.
fn param_name(name: &str) -> &'static str {
    match name {
        "back_scan" => "back_scan",
        "end" => "end",
        "tz" => "tz",
        _ => "timezone",
    }
}

/// Reads a `back_scan` of whole hours from 1 to [`BACK_SCAN_HOURS_MAX`].
fn back_scan_hours(text: &str) -> Result<i64, String> {
    text.parse::<i64>()
        .ok()
        .filter(|h| (1..=BACK_SCAN_HOURS_MAX).contains(h))
        .ok_or_else(|| {
            format!("'{text}' is not a whole number of hours from 1 to {BACK_SCAN_HOURS_MAX}")
        })
}

/// Parses `<metric>[{tagk=value,...}]`, query `query` (numbered from 1).
fn parse_timeseries(expr: &str, query: usize) -> Result<LastQuery> {
    let (metric, filters) = parse_metric_and_filters(expr).map_err(|e| Error::BadTimeseries {
        query,
        expr: expr.to_owned(),
        reason: match e {
            ExprError::MissingMetric => {
                "the metric name is missing; expected <metric>{tagk=value,...}".into()
            }
            ExprError::Syntax(reason) => reason,
            ExprError::Filter { tagk, error } => format!("bad filter on tag '{tagk}': {error}"),
        },
    })?;
    Ok(LastQuery { metric, filters })
}

/// Parses one entry of `queries`, query `query` (numbered from 1).
fn last_query_from_json(item: &Value, query: usize) -> Result<LastQuery> {
    let Value::Object(obj) = item else {
        return Err(Error::QueryField {
            query,
            field: "queries".into(),
            problem: format!("each query must be a JSON object, got {item}"),
        });
    };
    refuse_tsuids(obj, query)?;
    refuse_unknown_fields(obj, QUERY_FIELDS, Some(query))?;
    let metric = match obj.get("metric") {
        None | Some(Value::Null) => return Err(Error::MissingMetric { query }),
        Some(Value::String(s)) if s.is_empty() => return Err(Error::MissingMetric { query }),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(Error::QueryField {
                query,
                field: "metric".into(),
                problem: format!("expected a string, got {other}"),
            });
        }
    };
    Ok(LastQuery {
        metric,
        filters: filters_from_tags(obj.get("tags"), query)?,
    })
}

/// The last sample in the window of every series any query selects, each series once, sorted
/// by metric then tags; refuses work beyond `limits` as `/api/query` does.
pub fn execute_last(
    source: &dyn Source,
    request: &LastRequest,
    limits: &Limits,
) -> Result<Vec<LastPoint>> {
    limits.check_sub_queries(request.queries.len())?;
    let window = request.window_ms();
    let mut budget = Budget::new(limits);
    // Each series once however many queries select it, so memory is bounded by the series,
    // not by queries times series; and the series read by all the queries together are
    // bounded as one query's are, so that many queries of the same many series are refused
    // instead of reading them again and again.
    let mut last: BTreeMap<SeriesKey, (i64, f64)> = BTreeMap::new();
    let mut series_read = 0usize;
    for (index, q) in request.queries.iter().enumerate() {
        let query = index + 1;
        let series = read_series(
            source,
            query,
            &q.metric,
            &|key| q.matches(key),
            window,
            limits,
            Allowance {
                used: budget.samples,
                series_used: series_read,
                reading: "the number of samples read",
            },
        )?;
        if series.is_empty() {
            known_metric(source, query, &q.metric)?;
        }
        series_read += series.len();
        if series_read > limits.series_max {
            return Err(Error::LimitExceeded {
                query,
                what: format!(
                    "the number of series read by this request's queries together ({series_read})"
                ),
                limit: limits.series_max,
                limit_name: "series_max",
            });
        }
        let read = series.iter().map(|(_, samples)| samples.len()).sum();
        budget.take_samples(query, read, "the number of samples read")?;
        budget.take_samples(query, series.len() * SERIES_WEIGHT, SERIES_CHARGE)?;
        // `read_series` keeps only series with samples in the window, sorted by time; two
        // queries selecting one series find the same last sample.
        for (key, samples) in series {
            if let Some(&point) = samples.last() {
                last.entry(key).or_insert(point);
            }
        }
    }
    let mut points: Vec<LastPoint> = last
        .into_iter()
        .map(|(key, (ts_ms, value))| LastPoint { key, ts_ms, value })
        .collect();
    points.sort_by(|a, b| metric_then_tags(&a.key, &b.key));
    Ok(points)
}

fn metric_then_tags(a: &SeriesKey, b: &SeriesKey) -> Ordering {
    a.metric()
        .cmp(b.metric())
        .then_with(|| a.tags().cmp(b.tags()))
}

#[cfg(test)]
mod tests;
