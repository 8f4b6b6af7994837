//! The query engine's errors. Each message names what was wrong and where, for a person.
//!
//! Sub-queries are numbered from 1 in messages ("query 2" is the second `m=` parameter or the
//! second entry of `queries`), because the messages are read by people, not programs.

use crate::filter::FILTER_TYPE_NAMES;
use crate::source::SourceError;

/// Why a request could not be parsed or executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The POST body is not JSON, or not a JSON object.
    #[error("request body is not a valid JSON query: {0}")]
    Json(String),
    /// A request-level field has the wrong type or value.
    #[error("field '{field}': {problem}")]
    Field {
        /// The field's name as sent, e.g. `msResolution`.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// No `start` was given.
    #[error("missing start time; give 'start' as e.g. 1h-ago, 1356998400 or 2013/01/01-00:00:00")]
    MissingStart,
    /// A start or end time does not parse.
    #[error("{which} time '{value}' is invalid: {reason}")]
    BadTime {
        /// "start" or "end".
        which: &'static str,
        /// The value as sent.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The end time is not after the start time.
    #[error("end time {end_ms} ms must be after start time {start_ms} ms")]
    EndNotAfterStart {
        /// Resolved start, ms since the epoch.
        start_ms: i64,
        /// Resolved end, ms since the epoch.
        end_ms: i64,
    },
    /// The request holds no sub-query.
    #[error("no sub-queries; give at least one m= parameter or one entry in 'queries'")]
    NoQueries,
    /// A sub-query names no aggregator.
    #[error("query {query}: missing aggregator; see /api/aggregators")]
    MissingAggregator {
        /// The sub-query, numbered from 1.
        query: usize,
    },
    /// A sub-query names an aggregator that does not exist.
    #[error("query {query}: unknown aggregator '{name}'; see /api/aggregators")]
    UnknownAggregator {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The name as sent.
        name: String,
    },
    /// A sub-query names no metric.
    #[error("query {query}: missing metric")]
    MissingMetric {
        /// The sub-query, numbered from 1.
        query: usize,
    },
    /// A downsample specification does not parse.
    #[error(
        "query {query}: bad downsample '{spec}': {reason}; expected <interval><unit>-<aggregator>[-<fill>] such as 1h-avg or 5m-sum-zero"
    )]
    BadDownsample {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The specification as sent.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Rate options do not parse.
    #[error("query {query}: bad rate options '{spec}': {reason}")]
    BadRateOptions {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The options as sent.
        spec: String,
        /// What is wrong with them.
        reason: String,
    },
    /// A filter names a type that does not exist.
    #[error(
        "query {query}: unknown filter type '{kind}' on tag '{tagk}'; known types: {FILTER_TYPE_NAMES}"
    )]
    UnknownFilter {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The filter type as sent.
        kind: String,
        /// The tag key it applies to.
        tagk: String,
    },
    /// A filter's expression is invalid (empty, a wildcard without `*`, a bad regex, ...).
    #[error("query {query}: bad filter on tag '{tagk}': {reason}")]
    BadFilter {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The tag key it applies to.
        tagk: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A sub-query field has the wrong type or value.
    #[error("query {query}: field '{field}': {problem}")]
    QueryField {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The field's name as sent.
        field: String,
        /// What is wrong with it.
        problem: String,
    },
    /// An `m=` parameter does not parse.
    #[error("query {query}: bad m parameter '{m}': {reason}")]
    BadMetricQuery {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The parameter's value as sent.
        m: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `/api/query/last` `timeseries` parameter does not parse.
    #[error("query {query}: bad timeseries parameter '{expr}': {reason}")]
    BadTimeseries {
        /// The query, numbered from 1.
        query: usize,
        /// The parameter's value as sent.
        expr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A GET parameter (other than a time or a query) is missing or has the wrong value.
    #[error("parameter '{name}': {problem}")]
    Parameter {
        /// The parameter's name, e.g. `back_scan`.
        name: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// The request asks for an OpenTSDB feature tsvault does not implement.
    #[error("{feature} is not supported by tsvault")]
    Unsupported {
        /// The feature, with the sub-query when there is one.
        feature: String,
    },
    /// The metric has never been written (OpenTSDB answers "No such name for 'metrics'").
    #[error("query {query}: no such metric '{metric}'")]
    UnknownMetric {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The metric name.
        metric: String,
    },
    /// The request holds more sub-queries than [`crate::Limits::sub_queries_max`].
    #[error("the request has {count} sub-queries; the limit is {limit} (sub_queries_max)")]
    TooManyQueries {
        /// How many sub-queries the request holds.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// The request would do more work than [`crate::Limits`] allows.
    #[error(
        "query {query}: {what} exceeds the limit of {limit} ({limit_name}); narrow the time range, add filters or downsample"
    )]
    LimitExceeded {
        /// The sub-query, numbered from 1.
        query: usize,
        /// What grew too large, e.g. "the number of matching series (1200000)".
        what: String,
        /// The limit's value.
        limit: usize,
        /// The limit's field name in [`crate::Limits`].
        limit_name: &'static str,
    },
    /// An aggregation produced an infinite value, which JSON cannot carry (OpenTSDB fails too).
    #[error("query {query}: the result is infinite at {ts_ms} ms (values too large to aggregate)")]
    Infinite {
        /// The sub-query, numbered from 1.
        query: usize,
        /// The timestamp of the infinite value.
        ts_ms: i64,
    },
    /// The data source failed (e.g. a corrupt block) or broke its contract; the message names
    /// the sub-query and metric. A server error, unlike the others, which are the client's.
    #[error("storage error: {0}")]
    Source(SourceError),
    /// `/api/suggest` was asked for a type other than metrics, tagk or tagv.
    #[error("suggest type '{0}' is unknown; use metrics, tagk or tagv")]
    BadSuggestType(String),
}

/// The query engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
