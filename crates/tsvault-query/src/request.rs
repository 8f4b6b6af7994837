//! Parsing `/api/query` requests: POST JSON bodies and GET `m=` query strings.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use tsvault_model::SeriesKey;

use crate::aggregator::Aggregator;
use crate::downsample::Downsample;
use crate::error::{Error, Result};
use crate::filter::{Filter, FilterError};
use crate::rate::RateOptions;
use crate::row_filter::{COMPARE_OP_NAMES, CompareOp, RowFilter};
use crate::time::parse_time;

/// The latest time accepted, 9999-12-31T23:59:59.999Z: the latest a write may store.
const TIME_MS_MAX: i64 = tsvault_model::TS_MS_MAX;

/// Most `:`-separated parts in an `m=` parameter: aggregator, three modifiers, metric.
const M_PARTS_MAX: usize = 5;

/// A parsed `/api/query` request with its times resolved.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    /// Start of the range, ms since the epoch, inclusive.
    pub start_ms: i64,
    /// End of the range, ms since the epoch, inclusive.
    pub end_ms: i64,
    /// The sub-queries, in request order.
    pub queries: Vec<SubQuery>,
    /// Emit timestamps in milliseconds rather than seconds.
    pub ms_resolution: bool,
    /// Echo each sub-query in its results.
    pub show_query: bool,
    /// Accepted for compatibility; tsvault stores no annotations.
    pub no_annotations: bool,
    /// Accepted for compatibility; tsvault stores no annotations.
    pub global_annotations: bool,
}

/// One metric sub-query.
#[derive(Debug, Clone)]
pub struct SubQuery {
    /// How series of a group are merged.
    pub aggregator: Aggregator,
    /// The exact metric name.
    pub metric: String,
    /// Rate conversion, when asked for.
    pub rate: Option<RateOptions>,
    /// Downsampling, when asked for.
    pub downsample: Option<Downsample>,
    /// Tag filters, all of which a series must pass.
    pub filters: Vec<Filter>,
    /// Series must have exactly the filtered tag keys and no others.
    pub explicit_tags: bool,
    /// The `where` row filter, applied to raw samples before rate, downsampling and
    /// aggregation. Only the POST JSON body can set it; GET `m=` parameters have no syntax
    /// for it.
    pub row_filter: Option<RowFilter>,
}

impl SubQuery {
    /// True when the series passes every filter (and, with explicit tags, has no other tag).
    pub fn matches(&self, key: &SeriesKey) -> bool {
        if !self.filters.iter().all(|f| f.matches(key)) {
            return false;
        }
        if self.explicit_tags {
            let wanted: BTreeSet<&str> = self.filters.iter().map(Filter::tagk).collect();
            let has: BTreeSet<&str> = key.tags().map(|(k, _)| k).collect();
            return wanted == has;
        }
        true
    }

    /// The tag keys results are split by, sorted: those with any group-by filter.
    pub fn group_by_keys(&self) -> Vec<&str> {
        let keys: BTreeSet<&str> = self
            .filters
            .iter()
            .filter(|f| f.group_by())
            .map(Filter::tagk)
            .collect();
        keys.into_iter().collect()
    }

    /// The sub-query in OpenTSDB's `showQuery` shape, plus `where` when it has a row filter.
    pub fn to_json(&self) -> Value {
        let filters: Vec<Value> = self
            .filters
            .iter()
            .map(|f| {
                json!({
                    "tagk": f.tagk(),
                    "filter": f.expr(),
                    "group_by": f.group_by(),
                    "type": f.kind().name(),
                })
            })
            .collect();
        let rate_options = self.rate.map(|o| {
            json!({
                "counter": o.counter,
                "counterMax": o.counter_max,
                "resetValue": o.reset_value,
                "dropResets": o.drop_resets,
            })
        });
        let mut out = json!({
            "aggregator": self.aggregator.name(),
            "metric": self.metric,
            "tsuids": null,
            "downsample": self.downsample.as_ref().map(Downsample::spec),
            "rate": self.rate.is_some(),
            "explicitTags": self.explicit_tags,
            "filters": filters,
            "rateOptions": rate_options,
            "tags": {},
        });
        // Only when set, so the echo of a plain OpenTSDB query keeps OpenTSDB's shape.
        if let (Some(row_filter), Value::Object(obj)) = (&self.row_filter, &mut out) {
            obj.insert(
                "where".into(),
                json!({
                    "metric": row_filter.metric,
                    "op": row_filter.op.name(),
                    "value": row_filter.value,
                }),
            );
        }
        out
    }
}

impl QueryRequest {
    /// Parses a POST `/api/query` JSON body; `now_ms` resolves relative and missing times.
    pub fn from_json(body: &[u8], now_ms: i64) -> Result<Self> {
        let obj = json_object(body, "expected a JSON object with 'start' and 'queries'")?;
        let (start_ms, end_ms) = resolve_range(
            time_text(&obj, "start")?.as_deref(),
            time_text(&obj, "end")?.as_deref(),
            now_ms,
        )?;
        check_utc(obj.get("timezone").and_then(Value::as_str))?;
        if flag(&obj, &["useCalendar"])? {
            return Err(unsupported("useCalendar (calendar downsampling)"));
        }
        if flag(&obj, &["delete"])? {
            return Err(unsupported("delete (the query engine never writes)"));
        }
        let queries = json_queries(
            &obj,
            "expected an array of sub-queries",
            sub_query_from_json,
        )?;
        if queries.is_empty() {
            return Err(Error::NoQueries);
        }
        Ok(QueryRequest {
            start_ms,
            end_ms,
            queries,
            ms_resolution: flag(&obj, &["msResolution", "ms"])?,
            show_query: flag(&obj, &["showQuery"])?,
            no_annotations: flag(&obj, &["noAnnotations"])?,
            global_annotations: flag(&obj, &["globalAnnotations"])?,
        })
    }

    /// Parses GET `/api/query` parameters (`start`, `end`, repeated `m`, flags such as `ms`).
    pub fn from_params(params: &[(String, String)], now_ms: i64) -> Result<Self> {
        let get = |name: &str| param(params, name);
        let has = |name: &str| params.iter().any(|(k, _)| k == name);
        let (start_ms, end_ms) = resolve_range(get("start"), get("end"), now_ms)?;
        check_utc(get("tz").or_else(|| get("timezone")))?;
        if has("tsuid") {
            return Err(unsupported("tsuid sub-queries"));
        }
        let queries = distinct_params(params, "m", parse_m)?;
        if queries.is_empty() {
            return Err(Error::NoQueries);
        }
        Ok(QueryRequest {
            start_ms,
            end_ms,
            queries,
            ms_resolution: has("ms") || has("msResolution"),
            show_query: has("show_query"),
            no_annotations: has("no_annotations"),
            global_annotations: has("global_annotations"),
        })
    }
}

/// The value of the first GET parameter called `name`.
pub(crate) fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A query string's `k=v` pairs, undecoded, for tests (`k` alone is `k=`).
#[cfg(test)]
pub(crate) fn test_params(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Each distinct value of the repeated GET parameter `name`, parsed in order by `parse` with
/// its number from 1: OpenTSDB drops repeated identical sub-queries.
pub(crate) fn distinct_params<T>(
    params: &[(String, String)],
    name: &str,
    parse: impl Fn(&str, usize) -> Result<T>,
) -> Result<Vec<T>> {
    let mut seen = BTreeSet::new();
    let mut parsed = Vec::new();
    for (_, value) in params.iter().filter(|(k, _)| k == name) {
        if seen.insert(value.as_str()) {
            parsed.push(parse(value, parsed.len() + 1)?);
        }
    }
    Ok(parsed)
}

/// A POST body, which must be a JSON object; `expected` says what it should hold.
pub(crate) fn json_object(body: &[u8], expected: &str) -> Result<Map<String, Value>> {
    match serde_json::from_slice(body).map_err(|e| Error::Json(e.to_string()))? {
        Value::Object(obj) => Ok(obj),
        _ => Err(Error::Json(expected.to_owned())),
    }
}

/// The entries of a body's `queries` array, each parsed by `parse` with its number from 1;
/// absent or null is none. `problem` is the error when it is not an array.
pub(crate) fn json_queries<T>(
    obj: &Map<String, Value>,
    problem: &str,
    parse: impl Fn(&Value, usize) -> Result<T>,
) -> Result<Vec<T>> {
    match obj.get("queries") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| parse(item, i + 1))
            .collect(),
        Some(_) => Err(field_err("queries", problem)),
    }
}

fn resolve_range(start: Option<&str>, end: Option<&str>, now_ms: i64) -> Result<(i64, i64)> {
    let start = start.filter(|s| !s.is_empty()).ok_or(Error::MissingStart)?;
    let start_ms = resolve_time("start", Some(start), now_ms)?;
    let end_ms = resolve_time("end", end, now_ms)?;
    if end_ms <= start_ms {
        return Err(Error::EndNotAfterStart { start_ms, end_ms });
    }
    Ok((start_ms, end_ms))
}

/// Resolves the `which` time ("start" or "end") in any form [`parse_time`] reads; absent or
/// empty is `now_ms`. Times after the year 9999 are refused, so range arithmetic cannot
/// overflow.
pub(crate) fn resolve_time(which: &'static str, value: Option<&str>, now_ms: i64) -> Result<i64> {
    let value = value.filter(|s| !s.is_empty());
    let at_ms = match value {
        None => now_ms,
        Some(text) => parse_time(text, now_ms).map_err(|reason| Error::BadTime {
            which,
            value: text.to_owned(),
            reason,
        })?,
    };
    if at_ms > TIME_MS_MAX {
        return Err(Error::BadTime {
            which,
            value: value.unwrap_or("now").to_owned(),
            reason: "it lies after the year 9999".into(),
        });
    }
    Ok(at_ms)
}

pub(crate) fn check_utc(zone: Option<&str>) -> Result<()> {
    match zone {
        None | Some("" | "UTC" | "Etc/UTC" | "GMT" | "Z") => Ok(()),
        Some(other) => Err(unsupported(&format!(
            "timezone '{other}' (tsvault reads dates as UTC)"
        ))),
    }
}

pub(crate) fn unsupported(feature: &str) -> Error {
    Error::Unsupported {
        feature: feature.to_owned(),
    }
}

pub(crate) fn field_err(field: &str, problem: &str) -> Error {
    Error::Field {
        field: field.to_owned(),
        problem: problem.to_owned(),
    }
}

/// A JSON time: a string, or a number, which OpenTSDB reads through its string form.
pub(crate) fn time_text(obj: &Map<String, Value>, field: &str) -> Result<Option<String>> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(field_err(field, "expected a string or an integer time")),
    }
}

/// A boolean as Jackson reads one: `true`, `false`, `"true"`, `"false"` or absent.
fn boolish(value: Option<&Value>) -> Result<bool, String> {
    match value {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") || s.is_empty() => Ok(false),
        Some(other) => Err(format!("expected true or false, got {other}")),
    }
}

/// The first of `names` present in `obj`, read as a boolean.
fn flag(obj: &Map<String, Value>, names: &[&str]) -> Result<bool> {
    for name in names {
        if let Some(v) = obj.get(*name) {
            return boolish(Some(v)).map_err(|problem| field_err(name, &problem));
        }
    }
    Ok(false)
}

fn sub_query_from_json(item: &Value, query: usize) -> Result<SubQuery> {
    let qerr = |field: &str, problem: String| Error::QueryField {
        query,
        field: field.to_owned(),
        problem,
    };
    let Value::Object(obj) = item else {
        return Err(qerr(
            "queries",
            "each sub-query must be a JSON object".into(),
        ));
    };
    let text = |field: &str| -> Result<Option<&str>> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(other) => Err(qerr(field, format!("expected a string, got {other}"))),
        }
    };
    let qflag = |field: &str| boolish(obj.get(field)).map_err(|p| qerr(field, p));

    let aggregator = aggregator_named(text("aggregator")?, query)?;
    refuse_tsuids(obj, query)?;
    if obj
        .get("percentiles")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported(&format!(
            "query {query}: histogram percentiles"
        )));
    }
    let metric = text("metric")?
        .ok_or(Error::MissingMetric { query })?
        .to_owned();
    let downsample = text("downsample")?
        .map(|spec| {
            Downsample::parse(spec).map_err(|reason| Error::BadDownsample {
                query,
                spec: spec.to_owned(),
                reason,
            })
        })
        .transpose()?;
    let rate = if qflag("rate")? {
        Some(rate_options_from_json(obj.get("rateOptions"), query)?)
    } else {
        None
    };

    let mut filters = Vec::new();
    match obj.get("filters") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                filters.push(filter_from_json(item, query)?);
            }
        }
        Some(other) => return Err(qerr("filters", format!("expected an array, got {other}"))),
    }
    // OpenTSDB applies whichever of `tags` and `filters` it reads last; prefer the newer one.
    if filters.is_empty() {
        filters = filters_from_tags(obj.get("tags"), query)?;
    }
    Ok(SubQuery {
        aggregator,
        metric,
        rate,
        downsample,
        filters,
        explicit_tags: qflag("explicitTags")?,
        row_filter: row_filter_from_json(obj.get("where"), query)?,
    })
}

/// tsvault names series by metric and tags only: a sub-query's non-empty `tsuids` is refused.
pub(crate) fn refuse_tsuids(obj: &Map<String, Value>, query: usize) -> Result<()> {
    if obj
        .get("tsuids")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(unsupported(&format!("query {query}: tsuids sub-queries")));
    }
    Ok(())
}

/// The filters of an old-style `"tags": {"tagk": "value"}` map (each grouping by its key, as
/// OpenTSDB's `tags` do); absent or null is none. See [`Filter::from_tag_value`].
pub(crate) fn filters_from_tags(value: Option<&Value>, query: usize) -> Result<Vec<Filter>> {
    let qerr = |problem: String| Error::QueryField {
        query,
        field: "tags".into(),
        problem,
    };
    let tags = match value {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(tags)) => tags,
        Some(other) => return Err(qerr(format!("expected an object, got {other}"))),
    };
    tags.iter()
        .map(|(tagk, value)| {
            let value = value
                .as_str()
                .ok_or_else(|| qerr(format!("value of '{tagk}' must be a string")))?;
            Filter::from_tag_value(tagk, value, true).map_err(|e| filter_err(e, tagk, query))
        })
        .collect()
}

/// Parses `"where": {"metric": "...", "op": "gt", "value": 90}`; absent or null is no filter.
fn row_filter_from_json(value: Option<&Value>, query: usize) -> Result<Option<RowFilter>> {
    let err = |field: &str, problem: String| Error::QueryField {
        query,
        field: field.to_owned(),
        problem,
    };
    let obj = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(err(
                "where",
                format!(
                    "expected an object such as {{\"metric\": \"cpu_usage_user\", \"op\": \"gt\", \"value\": 90}}, got {other}"
                ),
            ));
        }
    };
    let metric = match obj.get("metric") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            return Err(err(
                "where.metric",
                format!("expected a metric name, got {other}"),
            ));
        }
    };
    let metric = metric.ok_or_else(|| {
        err(
            "where.metric",
            "missing; name the metric whose value decides which rows are kept".into(),
        )
    })?;
    let op = match obj.get("op") {
        None | Some(Value::Null) => {
            return Err(err(
                "where.op",
                format!("missing; use one of {COMPARE_OP_NAMES}"),
            ));
        }
        Some(Value::String(name)) => CompareOp::from_name(name).ok_or_else(|| {
            err(
                "where.op",
                format!("unknown operator '{name}'; use one of {COMPARE_OP_NAMES}"),
            )
        })?,
        Some(other) => {
            return Err(err(
                "where.op",
                format!("expected one of {COMPARE_OP_NAMES}, got {other}"),
            ));
        }
    };
    let value = obj.get("value").unwrap_or(&Value::Null);
    // A number, or a string holding one, as Jackson reads numbers.
    let threshold = match value {
        Value::Null => return Err(err("where.value", "missing; give a number".into())),
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| err("where.value", format!("expected a number, got {value}")))?;
    if !threshold.is_finite() {
        return Err(err(
            "where.value",
            format!("expected a finite number, got {value}"),
        ));
    }
    Ok(Some(RowFilter {
        metric,
        op,
        value: threshold,
    }))
}

fn aggregator_named(name: Option<&str>, query: usize) -> Result<Aggregator> {
    let name = name.ok_or(Error::MissingAggregator { query })?;
    Aggregator::from_name(name).ok_or_else(|| Error::UnknownAggregator {
        query,
        name: name.to_owned(),
    })
}

fn rate_options_from_json(value: Option<&Value>, query: usize) -> Result<RateOptions> {
    let mut options = RateOptions::default();
    let obj = match value {
        None | Some(Value::Null) => return Ok(options),
        Some(Value::Object(obj)) => obj,
        Some(other) => {
            return Err(Error::BadRateOptions {
                query,
                spec: other.to_string(),
                reason: "expected an object".into(),
            });
        }
    };
    let spec = || Value::Object(obj.clone()).to_string();
    let bad = |reason: String| Error::BadRateOptions {
        query,
        spec: spec(),
        reason,
    };
    let int = |field: &str, default: i64| -> Result<i64> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| bad(format!("'{field}' must be an integer, got {n}"))),
            Some(Value::String(s)) => s
                .parse()
                .map_err(|_| bad(format!("'{field}' must be an integer, got '{s}'"))),
            Some(other) => Err(bad(format!("'{field}' must be an integer, got {other}"))),
        }
    };
    options.counter = boolish(obj.get("counter")).map_err(bad)?;
    options.drop_resets = boolish(obj.get("dropResets")).map_err(bad)?;
    options.counter_max = int("counterMax", i64::MAX)?;
    options.reset_value = int("resetValue", 0)?;
    options.validate().map_err(bad)?;
    Ok(options)
}

fn filter_from_json(item: &Value, query: usize) -> Result<Filter> {
    let Value::Object(obj) = item else {
        return Err(Error::QueryField {
            query,
            field: "filters".into(),
            problem: format!("each filter must be an object, got {item}"),
        });
    };
    let text = |field: &str| obj.get(field).and_then(Value::as_str).unwrap_or_default();
    let tagk = text("tagk");
    let kind = text("type");
    if kind.is_empty() {
        return Err(Error::BadFilter {
            query,
            tagk: tagk.to_owned(),
            reason: "missing 'type'".into(),
        });
    }
    let group_by = boolish(obj.get("groupBy").or_else(|| obj.get("group_by"))).map_err(|p| {
        Error::BadFilter {
            query,
            tagk: tagk.to_owned(),
            reason: format!("groupBy: {p}"),
        }
    })?;
    Filter::from_type_name(kind, tagk, text("filter"), group_by)
        .map_err(|e| filter_err(e, tagk, query))
}

fn filter_err(e: FilterError, tagk: &str, query: usize) -> Error {
    match e {
        FilterError::UnknownType(kind) => Error::UnknownFilter {
            query,
            kind,
            tagk: tagk.to_owned(),
        },
        FilterError::Bad(reason) => Error::BadFilter {
            query,
            tagk: tagk.to_owned(),
            reason,
        },
    }
}

/// Parses `<agg>:[<downsample>:][rate[{...}]:][explicit_tags:]<metric>[{group}][{filter}]`;
/// the modifiers may come in any order, as in OpenTSDB.
fn parse_m(m: &str, query: usize) -> Result<SubQuery> {
    let bad = |reason: String| Error::BadMetricQuery {
        query,
        m: m.to_owned(),
        reason,
    };
    if m.is_empty() {
        return Err(bad("it is empty".into()));
    }
    let parts = split_top_level(m, ':');
    if parts.len() < 2 {
        return Err(bad(
            "not enough ':'-separated parts; expected <aggregator>:[<downsample>:][rate:]<metric>"
                .into(),
        ));
    }
    if parts.len() > M_PARTS_MAX {
        return Err(bad(format!("more than {M_PARTS_MAX} ':'-separated parts")));
    }
    let aggregator = aggregator_named(Some(parts[0]).filter(|a| !a.is_empty()), query)?;
    let (metric, filters) =
        parse_metric_and_filters(parts[parts.len() - 1]).map_err(|e| match e {
            ExprError::MissingMetric => Error::MissingMetric { query },
            ExprError::Syntax(reason) => bad(reason),
            ExprError::Filter { tagk, error } => filter_err(error, &tagk, query),
        })?;
    let mut sub = SubQuery {
        aggregator,
        metric,
        rate: None,
        downsample: None,
        filters,
        explicit_tags: false,
        row_filter: None,
    };
    for part in &parts[1..parts.len() - 1] {
        let lower = part.to_ascii_lowercase();
        if lower.starts_with("rate") {
            sub.rate =
                Some(
                    RateOptions::parse_uri(part).map_err(|reason| Error::BadRateOptions {
                        query,
                        spec: (*part).to_owned(),
                        reason,
                    })?,
                );
        } else if part.starts_with(|c: char| c.is_ascii_digit()) || lower.starts_with("all-") {
            sub.downsample =
                Some(
                    Downsample::parse(part).map_err(|reason| Error::BadDownsample {
                        query,
                        spec: (*part).to_owned(),
                        reason,
                    })?,
                );
        } else if lower == "explicit_tags" {
            sub.explicit_tags = true;
        } else if lower == "pre-agg" || lower.starts_with("rollup_") {
            // Rollup hints: tsvault always reads raw data, which is OpenTSDB's ROLLUP_RAW.
        } else if lower.starts_with("percentiles") || lower.starts_with("show-histogram-buckets") {
            return Err(unsupported(&format!(
                "query {query}: histogram percentiles"
            )));
        } else {
            return Err(bad(format!(
                "unknown part '{part}'; expected a downsample such as 1h-avg, rate, or explicit_tags"
            )));
        }
    }
    Ok(sub)
}

/// Why a `<metric>{tagk=value,...}{...}` expression does not parse; each caller words it for
/// its own parameter.
pub(crate) enum ExprError {
    /// Nothing before the braces, or nothing at all.
    MissingMetric,
    /// The braces or a `tagk=value` item are malformed: why.
    Syntax(String),
    /// A tag's value is not a valid filter.
    Filter {
        /// The tag key.
        tagk: String,
        /// What is wrong with its filter.
        error: FilterError,
    },
}

/// Splits the metric from up to two brace groups: group-by filters, then plain filters. In
/// the metric, a backslash takes the next character as it is, so any metric a write stored
/// can be named: `a\{b` is the metric `a{b`, `a\\b` the metric `a\b`.
pub(crate) fn parse_metric_and_filters(text: &str) -> Result<(String, Vec<Filter>), ExprError> {
    let mut metric = String::new();
    let mut curly = None;
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, next)) => metric.push(next),
                None => {
                    return Err(ExprError::Syntax(format!(
                        "'{text}' ends in a lone backslash; write \\\\ for a backslash in a metric name"
                    )));
                }
            },
            '{' => {
                curly = Some(i);
                break;
            }
            c => metric.push(c),
        }
    }
    if metric.is_empty() {
        return Err(ExprError::MissingMetric);
    }
    let Some(curly) = curly else {
        return Ok((metric, Vec::new()));
    };
    let bad = |reason: String| ExprError::Syntax(reason);
    if !text.ends_with('}') {
        return Err(bad(format!("missing '}}' at the end of '{text}'")));
    }
    let groups = brace_groups(&text[curly..])
        .ok_or_else(|| bad(format!("unbalanced or misplaced braces in '{text}'")))?;
    if groups.len() > 2 {
        return Err(bad(
            "more than two {...} groups; expected {group-by filters}{filters}".into(),
        ));
    }
    let mut filters = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let group_by = i == 0;
        if group.is_empty() {
            continue;
        }
        for item in split_top_level(group, ',') {
            let Some((tagk, value)) = item
                .split_once('=')
                .filter(|(k, v)| !k.is_empty() && !v.is_empty())
            else {
                return Err(bad(format!(
                    "invalid tag '{item}'; expected tagk=value or tagk=type(expr)"
                )));
            };
            filters.push(
                Filter::from_tag_value(tagk, value, group_by).map_err(|error| {
                    ExprError::Filter {
                        tagk: tagk.to_owned(),
                        error,
                    }
                })?,
            );
        }
    }
    Ok((metric.to_owned(), filters))
}

/// The contents of consecutive top-level `{...}` groups filling all of `text`, or `None`.
fn brace_groups(text: &str) -> Option<Vec<&str>> {
    let mut groups = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        rest = rest.strip_prefix('{')?;
        let mut paren_depth = 0usize;
        let mut close = None;
        for (i, c) in rest.char_indices() {
            match c {
                '(' => paren_depth += 1,
                ')' => paren_depth = paren_depth.saturating_sub(1),
                '}' if paren_depth == 0 => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close?;
        groups.push(&rest[..close]);
        rest = &rest[close + 1..];
    }
    Some(groups)
}

/// Splits on `sep` outside parentheses and braces, so `regexp(a{1,3})` stays whole; a
/// character after a backslash is never a separator or a bracket (a metric name may hold
/// any of them, written `\{`, `\:`...).
fn split_top_level(text: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' => escaped = true,
            '(' | '{' => depth += 1,
            ')' | '}' => depth = depth.saturating_sub(1),
            c if c == sep && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The tag map of `key` as an ordered map, for results.
pub(crate) fn tag_map(key: &SeriesKey) -> BTreeMap<String, String> {
    key.tags()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    const NOW_MS: i64 = 1_700_000_000_000;

    /// Any metric a write stored can be named in GET `m=`: a backslash takes the next
    /// character as it is (braces, colons, commas and backslashes in line-protocol names).
    #[test]
    fn metric_names_with_brackets_and_colons_are_escaped_in_m() {
        let metric_of = |m: &str| {
            let params = vec![
                ("start".to_string(), "1h-ago".to_string()),
                ("m".to_string(), m.to_string()),
            ];
            QueryRequest::from_params(&params, NOW_MS).map(|r| {
                let q = &r.queries[0];
                (q.metric.clone(), q.filters.len())
            })
        };
        assert_eq!(metric_of(r"sum:a\{b_v").unwrap(), ("a{b_v".into(), 0));
        assert_eq!(
            metric_of(r"sum:a\{b\}_v{host=x}").unwrap(),
            ("a{b}_v".into(), 1)
        );
        assert_eq!(
            metric_of(r"sum:1m-avg:a\:b_v").unwrap(),
            ("a:b_v".into(), 0)
        );
        assert_eq!(metric_of(r"sum:m\\x_v").unwrap(), (r"m\x_v".into(), 0));
        assert!(metric_of(r"sum:m\").is_err());
    }

    fn describe(req: &QueryRequest) -> String {
        let mut out = format!(
            "start={} end={} ms={} show_query={}\n",
            req.start_ms, req.end_ms, req.ms_resolution, req.show_query
        );
        for (i, q) in req.queries.iter().enumerate() {
            out.push_str(&format!(
                "  q{}: {} {} downsample={:?} rate={:?} explicit={}\n",
                i + 1,
                q.aggregator.name(),
                q.metric,
                q.downsample.as_ref().map(Downsample::spec),
                q.rate,
                q.explicit_tags
            ));
            for f in &q.filters {
                out.push_str(&format!(
                    "    {}={}({}) group_by={}\n",
                    f.tagk(),
                    f.kind().name(),
                    f.expr(),
                    f.group_by()
                ));
            }
            if let Some(w) = &q.row_filter {
                out.push_str(&format!(
                    "    where {} {} {:?}\n",
                    w.metric,
                    w.op.name(),
                    w.value
                ));
            }
        }
        out
    }

    fn check_params(query: &str, expect: Expect) {
        let got = match QueryRequest::from_params(&test_params(query), NOW_MS) {
            Ok(req) => describe(&req),
            Err(e) => format!("error: {e}\n"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn get_m_with_filters_in_braces() {
        check_params(
            "start=1h-ago&m=sum:sys.cpu{host=*,dc=lga|lgb}{owner=regexp(^j.*),rack=web*}",
            expect![[r#"
                start=1699996400000 end=1700000000000 ms=false show_query=false
                  q1: sum sys.cpu downsample=None rate=None explicit=false
                    host=wildcard(*) group_by=true
                    dc=literal_or(lga|lgb) group_by=true
                    owner=regexp(^j.*) group_by=false
                    rack=iwildcard(web*) group_by=false
            "#]],
        );
        check_params(
            "start=1h-ago&m=avg:{}",
            expect![[r#"
                error: query 1: missing metric
            "#]],
        );
        check_params(
            "start=1h-ago&m=sum:m{}{host=wildcard(web*)}",
            expect![[r#"
                start=1699996400000 end=1700000000000 ms=false show_query=false
                  q1: sum m downsample=None rate=None explicit=false
                    host=wildcard(web*) group_by=false
            "#]],
        );
        check_params(
            "start=1h-ago&m=sum:m{host=regexp(web[0-9]{1,2}:x)}",
            expect![[r#"
                start=1699996400000 end=1700000000000 ms=false show_query=false
                  q1: sum m downsample=None rate=None explicit=false
                    host=regexp(web[0-9]{1,2}:x) group_by=true
            "#]],
        );
    }

    #[test]
    fn get_m_modifiers_in_any_order() {
        check_params(
            "start=1356998400&end=1356998460&ms&show_query&m=sum:rate{counter,65535,100}:5m-avg-zero:explicit_tags:if.octets{host=a}&m=p99:1h-max:rate:m&m=none:m",
            expect![[r#"
                start=1356998400000 end=1356998460000 ms=true show_query=true
                  q1: sum if.octets downsample=Some("5m-avg-zero") rate=Some(RateOptions { counter: true, counter_max: 65535, reset_value: 100, drop_resets: false }) explicit=true
                    host=literal_or(a) group_by=true
                  q2: p99 m downsample=Some("1h-max") rate=Some(RateOptions { counter: false, counter_max: 9223372036854775807, reset_value: 0, drop_resets: false }) explicit=false
                  q3: none m downsample=None rate=None explicit=false
            "#]],
        );
    }

    #[test]
    fn get_errors() {
        let cases = [
            "m=sum:m",
            "start=1h-ago",
            "start=1h-ago&m=summ:m",
            "start=1h-ago&m=:m",
            "start=1h-ago&m=sum",
            "start=1h-ago&m=sum:1h-avg:rate:explicit_tags:pre-agg:m",
            "start=1h-ago&m=sum:1x-avg:m",
            "start=1h-ago&m=sum:rate{counter,abc}:m",
            "start=1h-ago&m=sum:bogus:m",
            "start=1h-ago&m=sum:m{host=web01",
            "start=1h-ago&m=sum:m{host}",
            "start=1h-ago&m=sum:m{host=like(x)}",
            "start=1h-ago&m=sum:m{host=regexp(()}",
            "start=1h-ago&m=sum:m{host=regexp(web[)}",
            "start=1h-ago&m=sum:m{a=b}{c=d}{e=f}",
            "start=1h-ago&m=sum:m&m=sum:n&m=sum:o{host=web}&m=sum:p{dc=wildcard(x)}",
            "start=tomorrow&m=sum:m",
            "start=1h-ago&end=2h-ago&m=sum:m",
            "start=1h-ago&tz=Asia/Kabul&m=sum:m",
            "start=1h-ago&tsuid=sum:000001",
            "start=1h-ago&m=sum:percentiles[99]:m",
        ];
        let got: String = cases
            .iter()
            .map(
                |q| match QueryRequest::from_params(&test_params(q), NOW_MS) {
                    Ok(r) => format!("ok: {} queries\n", r.queries.len()),
                    Err(e) => format!("{e}\n"),
                },
            )
            .collect();
        expect![[r#"
            missing start time; give 'start' as e.g. 1h-ago, 1356998400 or 2013/01/01-00:00:00
            no sub-queries; give at least one m= parameter or one entry in 'queries'
            query 1: unknown aggregator 'summ'; see /api/aggregators
            query 1: missing aggregator; see /api/aggregators
            query 1: bad m parameter 'sum': not enough ':'-separated parts; expected <aggregator>:[<downsample>:][rate:]<metric>
            query 1: bad m parameter 'sum:1h-avg:rate:explicit_tags:pre-agg:m': more than 5 ':'-separated parts
            query 1: bad downsample '1x-avg': duration '1x' has unknown unit 'x'; use ms, s, m, h, d, w, n or y; expected <interval><unit>-<aggregator>[-<fill>] such as 1h-avg or 5m-sum-zero
            query 1: bad rate options 'rate{counter,abc}': counter max 'abc' is not an integer
            query 1: bad m parameter 'sum:bogus:m': unknown part 'bogus'; expected a downsample such as 1h-avg, rate, or explicit_tags
            query 1: bad m parameter 'sum:m{host=web01': missing '}' at the end of 'm{host=web01'
            query 1: bad m parameter 'sum:m{host}': invalid tag 'host'; expected tagk=value or tagk=type(expr)
            query 1: unknown filter type 'like' on tag 'host'; known types: literal_or, iliteral_or, not_literal_or, not_iliteral_or, wildcard, iwildcard, regexp
            query 1: bad m parameter 'sum:m{host=regexp(()}': unbalanced or misplaced braces in 'm{host=regexp(()}'
            query 1: bad filter on tag 'host': invalid regexp 'web[': regex parse error:
                web[
                   ^
            error: unclosed character class
            query 1: bad m parameter 'sum:m{a=b}{c=d}{e=f}': more than two {...} groups; expected {group-by filters}{filters}
            query 4: bad filter on tag 'dc': wildcard 'x' must contain an asterisk; use literal_or for exact values
            start time 'tomorrow' is invalid: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago
            end time 1699992800000 ms must be after start time 1699996400000 ms
            timezone 'Asia/Kabul' (tsvault reads dates as UTC) is not supported by tsvault
            tsuid sub-queries is not supported by tsvault
            query 1: histogram percentiles is not supported by tsvault
        "#]]
        .assert_eq(&got);
    }

    fn check_json(body: &str, expect: Expect) {
        let got = match QueryRequest::from_json(body.as_bytes(), NOW_MS) {
            Ok(req) => describe(&req),
            Err(e) => format!("error: {e}\n"),
        };
        expect.assert_eq(&got);
    }

    #[test]
    fn post_json_body() {
        check_json(
            r#"{"start": 1356998400, "end": "1356998460000", "msResolution": "true", "showQuery": true,
                "noAnnotations": true, "globalAnnotations": false, "someFutureField": 1,
                "queries": [
                  {"aggregator": "sum", "metric": "sys.cpu.0", "rate": "true",
                   "rateOptions": {"counter": true, "counterMax": 65535, "resetValue": 10, "dropResets": true},
                   "downsample": "1m-avg-nan",
                   "filters": [
                     {"type": "regexp", "tagk": "host", "filter": "web[0-9]+", "groupBy": true},
                     {"type": "literal_or", "tagk": "dc", "filter": "lga|lga1", "groupBy": false}
                   ]},
                  {"aggregator": "max", "metric": "m2", "tags": {"host": "*", "dc": "lax"}, "explicitTags": true},
                  {"aggregator": "avg", "metric": "m3", "rate": false, "rateOptions": {"counter": true}}
                ]}"#,
            expect![[r#"
                start=1356998400000 end=1356998460000 ms=true show_query=true
                  q1: sum sys.cpu.0 downsample=Some("1m-avg-nan") rate=Some(RateOptions { counter: true, counter_max: 65535, reset_value: 10, drop_resets: true }) explicit=false
                    host=regexp(web[0-9]+) group_by=true
                    dc=literal_or(lga|lga1) group_by=false
                  q2: max m2 downsample=None rate=None explicit=true
                    dc=literal_or(lax) group_by=true
                    host=wildcard(*) group_by=true
                  q3: avg m3 downsample=None rate=None explicit=false
            "#]],
        );
        // No end: now.
        check_json(
            r#"{"start": "2h-ago", "queries": [{"aggregator": "sum", "metric": "m"}]}"#,
            expect![[r#"
                start=1699992800000 end=1700000000000 ms=false show_query=false
                  q1: sum m downsample=None rate=None explicit=false
            "#]],
        );
    }

    #[test]
    fn post_json_errors() {
        let cases = [
            r#"not json"#,
            r#"[1]"#,
            r#"{"queries": [{"aggregator": "sum", "metric": "m"}]}"#,
            r#"{"start": true, "queries": []}"#,
            r#"{"start": "1h-ago"}"#,
            r#"{"start": "1h-ago", "queries": []}"#,
            r#"{"start": "1h-ago", "queries": [{"metric": "m"}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m"}, {"aggregator": "summ", "metric": "m"}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum"}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "downsample": "1h"}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "filters": [{"type": "glob", "tagk": "h", "filter": "x"}]}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "filters": [{"type": "regexp", "tagk": "h", "filter": "[z"}]}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "filters": [{"tagk": "h", "filter": "x"}]}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "rate": true, "rateOptions": {"counterMax": "lots"}}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "metric": "m", "rate": 3}]}"#,
            r#"{"start": "1h-ago", "msResolution": 1, "queries": [{"aggregator": "sum", "metric": "m"}]}"#,
            r#"{"start": "1h-ago", "delete": true, "queries": [{"aggregator": "sum", "metric": "m"}]}"#,
            r#"{"start": "1h-ago", "queries": [{"aggregator": "sum", "tsuids": ["0001"]}]}"#,
        ];
        let got: String = cases
            .iter()
            .map(
                |body| match QueryRequest::from_json(body.as_bytes(), NOW_MS) {
                    Ok(r) => format!("ok: {} queries\n", r.queries.len()),
                    Err(e) => format!("{e}\n"),
                },
            )
            .collect();
        expect![[r#"
            request body is not a valid JSON query: expected ident at line 1 column 2
            request body is not a valid JSON query: expected a JSON object with 'start' and 'queries'
            missing start time; give 'start' as e.g. 1h-ago, 1356998400 or 2013/01/01-00:00:00
            field 'start': expected a string or an integer time
            no sub-queries; give at least one m= parameter or one entry in 'queries'
            no sub-queries; give at least one m= parameter or one entry in 'queries'
            query 1: missing aggregator; see /api/aggregators
            query 2: unknown aggregator 'summ'; see /api/aggregators
            query 1: missing metric
            query 1: bad downsample '1h': it needs at least an interval and a function; expected <interval><unit>-<aggregator>[-<fill>] such as 1h-avg or 5m-sum-zero
            query 1: unknown filter type 'glob' on tag 'h'; known types: literal_or, iliteral_or, not_literal_or, not_iliteral_or, wildcard, iwildcard, regexp
            query 1: bad filter on tag 'h': invalid regexp '[z': regex parse error:
                [z
                ^
            error: unclosed character class
            query 1: bad filter on tag 'h': missing 'type'
            query 1: bad rate options '{"counterMax":"lots"}': 'counterMax' must be an integer, got 'lots'
            query 1: field 'rate': expected true or false, got 3
            field 'msResolution': expected true or false, got 1
            delete (the query engine never writes) is not supported by tsvault
            query 1: tsuids sub-queries is not supported by tsvault
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn post_json_where() {
        check_json(
            r#"{"start": "1h-ago", "queries": [
                  {"aggregator": "none", "metric": "cpu_usage_system",
                   "filters": [{"type": "literal_or", "tagk": "hostname", "filter": "host_3", "groupBy": false}],
                   "where": {"metric": "cpu_usage_user", "op": "gt", "value": 90}},
                  {"aggregator": "sum", "metric": "m", "where": {"metric": "m", "op": "<=", "value": "-2.5e3"}},
                  {"aggregator": "sum", "metric": "m", "where": null}
                ]}"#,
            expect![[r#"
                start=1699996400000 end=1700000000000 ms=false show_query=false
                  q1: none cpu_usage_system downsample=None rate=None explicit=false
                    hostname=literal_or(host_3) group_by=false
                    where cpu_usage_user gt 90.0
                  q2: sum m downsample=None rate=None explicit=false
                    where m le -2500.0
                  q3: sum m downsample=None rate=None explicit=false
            "#]],
        );
    }

    /// `showQuery`'s echo of a sub-query parses back to the same sub-query.
    #[test]
    fn show_query_echo_round_trips() {
        let body = r#"{"start": "1h-ago", "queries": [
            {"aggregator": "max", "metric": "cpu_usage_system", "downsample": "1m-max", "rate": true,
             "rateOptions": {"counter": true, "counterMax": 100},
             "filters": [{"type": "wildcard", "tagk": "hostname", "filter": "host_*", "groupBy": true}],
             "where": {"metric": "cpu_usage_user", "op": "!=", "value": 0.5}},
            {"aggregator": "sum", "metric": "m"}]}"#;
        let req = QueryRequest::from_json(body.as_bytes(), NOW_MS).unwrap();
        let echoed: Vec<Value> = req.queries.iter().map(SubQuery::to_json).collect();
        expect![[r#"
            {"aggregator":"max","downsample":"1m-max","explicitTags":false,"filters":[{"filter":"host_*","group_by":true,"tagk":"hostname","type":"wildcard"}],"metric":"cpu_usage_system","rate":true,"rateOptions":{"counter":true,"counterMax":100,"dropResets":false,"resetValue":0},"tags":{},"tsuids":null,"where":{"metric":"cpu_usage_user","op":"ne","value":0.5}}
            {"aggregator":"sum","downsample":null,"explicitTags":false,"filters":[],"metric":"m","rate":false,"rateOptions":null,"tags":{},"tsuids":null}
        "#]]
        .assert_eq(&echoed.iter().map(|q| format!("{q}\n")).collect::<String>());
        let again = json!({"start": "1h-ago", "queries": echoed}).to_string();
        let reparsed = QueryRequest::from_json(again.as_bytes(), NOW_MS).unwrap();
        assert_eq!(describe(&reparsed), describe(&req));
    }

    #[test]
    fn post_json_where_errors() {
        let cases = [
            r#""where": [1]"#,
            r#""where": "usage_user > 90""#,
            r#""where": {"op": "gt", "value": 90}"#,
            r#""where": {"metric": "", "op": "gt", "value": 90}"#,
            r#""where": {"metric": 7, "op": "gt", "value": 90}"#,
            r#""where": {"metric": "u", "value": 90}"#,
            r#""where": {"metric": "u", "op": "=>", "value": 90}"#,
            r#""where": {"metric": "u", "op": "GT", "value": 90}"#,
            r#""where": {"metric": "u", "op": 1, "value": 90}"#,
            r#""where": {"metric": "u", "op": "gt"}"#,
            r#""where": {"metric": "u", "op": "gt", "value": "ninety"}"#,
            r#""where": {"metric": "u", "op": "gt", "value": true}"#,
            r#""where": {"metric": "u", "op": "gt", "value": [90]}"#,
            r#""where": {"metric": "u", "op": "gt", "value": "NaN"}"#,
            r#""where": {"metric": "u", "op": "gt", "value": "-inf"}"#,
            r#""where": {"metric": "u", "op": "gt", "value": "1e400"}"#,
        ];
        let got: String = cases
            .iter()
            .map(|w| {
                let body = format!(
                    r#"{{"start": "1h-ago", "queries": [{{"aggregator": "sum", "metric": "m"}},
                        {{"aggregator": "sum", "metric": "m", {w}}}]}}"#
                );
                match QueryRequest::from_json(body.as_bytes(), NOW_MS) {
                    Ok(r) => format!("ok: {} queries\n", r.queries.len()),
                    Err(e) => format!("{e}\n"),
                }
            })
            .collect();
        expect![[r#"
            query 2: field 'where': expected an object such as {"metric": "cpu_usage_user", "op": "gt", "value": 90}, got [1]
            query 2: field 'where': expected an object such as {"metric": "cpu_usage_user", "op": "gt", "value": 90}, got "usage_user > 90"
            query 2: field 'where.metric': missing; name the metric whose value decides which rows are kept
            query 2: field 'where.metric': missing; name the metric whose value decides which rows are kept
            query 2: field 'where.metric': expected a metric name, got 7
            query 2: field 'where.op': missing; use one of gt, ge, lt, le, eq, ne, >, >=, <, <=, ==, !=
            query 2: field 'where.op': unknown operator '=>'; use one of gt, ge, lt, le, eq, ne, >, >=, <, <=, ==, !=
            query 2: field 'where.op': unknown operator 'GT'; use one of gt, ge, lt, le, eq, ne, >, >=, <, <=, ==, !=
            query 2: field 'where.op': expected one of gt, ge, lt, le, eq, ne, >, >=, <, <=, ==, !=, got 1
            query 2: field 'where.value': missing; give a number
            query 2: field 'where.value': expected a number, got "ninety"
            query 2: field 'where.value': expected a number, got true
            query 2: field 'where.value': expected a number, got [90]
            query 2: field 'where.value': expected a finite number, got "NaN"
            query 2: field 'where.value': expected a finite number, got "-inf"
            query 2: field 'where.value': expected a finite number, got "1e400"
        "#]]
        .assert_eq(&got);
    }
}
