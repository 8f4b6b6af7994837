//! The OpenTSDB HTTP API: `/api/put`, `/api/query`, `/api/query/last`, `/api/suggest`,
//! `/api/aggregators`, `/api/version`, with OpenTSDB's error shape
//! `{"error":{"code":..,"message":..}}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tsvault_ingest::parse_opentsdb_put;
use tsvault_model::{ReadCap, SeriesKey};
use tsvault_query::{LastRequest, Limits, QueryRequest, Selection, Source, SourceError};
use tsvault_storage::{Engine, Error as StorageError, system_clock_ms};

use crate::app::{Shared, blocking};
use crate::body::{BodyError, Received};
use crate::error::storage_status;

fn tsdb_error(status: StatusCode, message: impl Into<String>, details: Option<String>) -> Response {
    let mut err = json!({ "code": status.as_u16(), "message": message.into() });
    if let Some(d) = details {
        err["details"] = json!(d);
    }
    (status, Json(json!({ "error": err }))).into_response()
}

fn flag(params: &[(String, String)], name: &str) -> bool {
    params.iter().any(|(k, v)| k == name && v != "false")
}

fn body_error(e: &BodyError) -> Response {
    let (status, msg) = e.status_message();
    tsdb_error(status, msg, None)
}

async fn received_or_error(
    st: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<Received, Response> {
    st.bodies
        .read(headers, body)
        .await
        .map_err(|e| body_error(&e))
}

/// The body's bytes, decoded on the blocking pool.
async fn decoded_or_error(
    st: &Shared,
    headers: &HeaderMap,
    body: Body,
) -> Result<crate::body::Decoded, Response> {
    let received = received_or_error(st, headers, body).await?;
    blocking(move || received.decode())
        .await
        .map_err(|e| body_error(&e))
}

/// `POST /api/put[?summary][&details][&sync]`. Under `--fsync always` (the default) every
/// write is durable before its answer; under `--fsync interval`, `sync` asks for the fsync
/// before the answer all the same.
pub(crate) async fn put(
    State(st): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = match received_or_error(&st, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let engine = st.engine.clone();
    let sync = flag(&params, "sync");
    let result = blocking(move || {
        let body = received.decode().map_err(PutFailure::Body)?;
        let mut parsed = parse_opentsdb_put(&body.bytes).map_err(PutFailure::Parse)?;
        if let Some(cutoff) = engine.retention_cutoff_ms() {
            let (keep, old): (Vec<_>, Vec<_>) = parsed.points.into_iter().partition(|(_, p)| p.ts_ms >= cutoff);
            parsed.points = keep;
            for (index, p) in old {
                parsed.errors.push(tsvault_ingest::PutError {
                    index,
                    datapoint: json!({ "metric": p.key.metric(), "timestamp": p.ts_ms, "value": p.value }),
                    error: "timestamp is older than the retention period".into(),
                });
            }
            parsed.errors.sort_by_key(|e| e.index);
        }
        let points: Vec<_> = parsed.points.iter().map(|(_, p)| p.clone()).collect();
        let written = if sync {
            engine.write_synced(&points)
        } else {
            engine.write(&points)
        };
        Ok::<_, PutFailure>((parsed, written))
    })
    .await;
    let (parsed, written) = match result {
        Ok(r) => r,
        Err(PutFailure::Body(e)) => return body_error(&e),
        Err(PutFailure::Parse(e)) => {
            return tsdb_error(StatusCode::BAD_REQUEST, e.to_string(), None);
        }
    };
    if let Err(e) = written {
        tracing::error!(error = %e, "put failed");
        let (status, msg) = storage_status(&e);
        return tsdb_error(status, msg, None);
    }
    let success = parsed.points.len();
    let failed = parsed.errors.len();
    if parsed.integers_rounded > 0 {
        st.metrics
            .not_stored_as_sent
            .get_or_create(&vec![("reason", "integer_rounded")])
            .inc_by(parsed.integers_rounded);
    }
    let rounded = (parsed.integers_rounded > 0).then(|| {
        format!(
            "{} integer(s) beyond 2^53 stored rounded to the nearest float",
            parsed.integers_rounded
        )
    });
    st.metrics
        .samples_ingested
        .get_or_create(&vec![("protocol", "opentsdb")])
        .inc_by(success as u64);
    st.metrics.lines_rejected.inc_by(failed as u64);
    let status = if failed == 0 {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    };
    // What was not stored as sent is said in the header of every answer shape.
    let warned = |mut response: Response| {
        if let Some(w) = &rounded
            && let Ok(v) = axum::http::HeaderValue::from_str(w)
        {
            response
                .headers_mut()
                .insert(crate::influx::WARNING_HEADER, v);
        }
        response
    };
    if flag(&params, "details") {
        let errors: Vec<_> = parsed
            .errors
            .iter()
            .map(|e| json!({ "datapoint": e.datapoint, "error": e.error }))
            .collect();
        return warned(
            (
                status,
                Json(with_warning(
                    json!({ "success": success, "failed": failed, "errors": errors }),
                    &rounded,
                )),
            )
                .into_response(),
        );
    }
    if flag(&params, "summary") {
        return warned(
            (
                status,
                Json(with_warning(
                    json!({ "success": success, "failed": failed }),
                    &rounded,
                )),
            )
                .into_response(),
        );
    }
    if failed == 0 {
        return warned(StatusCode::NO_CONTENT.into_response());
    }
    let first = &parsed.errors[0];
    tsdb_error(
        StatusCode::BAD_REQUEST,
        format!("One or more data points had errors ({failed} failed, {success} written)"),
        Some(format!(
            "first error: data point {}: {}; append ?details to the request to see every error",
            first.index, first.error
        )),
    )
}

/// Why a put's body was refused whole.
enum PutFailure {
    Body(BodyError),
    Parse(tsvault_ingest::PutBodyError),
}

/// `answer` with what was not stored as sent, when something was.
fn with_warning(mut answer: serde_json::Value, warning: &Option<String>) -> serde_json::Value {
    if let (Some(w), Some(o)) = (warning, answer.as_object_mut()) {
        o.insert("not_stored_as_sent".into(), json!(w));
    }
    answer
}

/// The engine seen through the query crate's data-source trait; reads stop once the
/// client has gone away (`cancelled`).
struct EngineSource {
    engine: Arc<Engine>,
    cancelled: Arc<AtomicBool>,
}

impl EngineSource {
    fn new(engine: Arc<Engine>) -> (Self, CancelOnDrop) {
        let cancelled = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop(cancelled.clone());
        (EngineSource { engine, cancelled }, guard)
    }
}

/// Held by the request's future: when the client goes away the future is dropped, and the
/// query running on the blocking pool stops at its next read.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Source for EngineSource {
    fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        start_ms: i64,
        end_ms: i64,
        cap: ReadCap,
    ) -> Result<Selection, SourceError> {
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(SourceError::Failed(
                "the client went away; the query was stopped".into(),
            ));
        }
        self.engine
            .select(metric, filter, (start_ms, end_ms), cap)
            .map_err(|e| match e {
                StorageError::Capped { series, samples } => SourceError::Capped { series, samples },
                e => SourceError::Failed(e.to_string()),
            })
    }

    fn metric_names(&self) -> Vec<String> {
        self.engine.metric_names()
    }

    fn tag_keys(&self) -> Vec<String> {
        self.engine.tag_keys()
    }

    fn tag_values(&self) -> Vec<String> {
        self.engine.tag_values()
    }
}

/// Parses a read request's GET parameters; the time now (ms) resolves relative and missing
/// times.
type ParseParams<R> = for<'a> fn(&'a [(String, String)], i64) -> Result<R, tsvault_query::Error>;
/// Parses a read request's POST body, as [`ParseParams`].
type ParseBody<R> = for<'a> fn(&'a [u8], i64) -> Result<R, tsvault_query::Error>;

/// A read request of the OpenTSDB API, parsed from GET parameters or a POST JSON body and
/// answered as JSON by the query engine.
pub(crate) trait ReadRequest: Sized + Send + 'static {
    /// The `endpoint` label of the query latency metric.
    const ENDPOINT: &'static str;
    /// Parses GET parameters.
    const FROM_PARAMS: ParseParams<Self>;
    /// Parses a POST body.
    const FROM_JSON: ParseBody<Self>;
    /// Runs the request against `source` within `limits` (blocking) and encodes the
    /// response body.
    fn answer(self, source: &dyn Source, limits: &Limits) -> Result<Vec<u8>, tsvault_query::Error>;
}

/// `/api/query`.
impl ReadRequest for QueryRequest {
    const ENDPOINT: &'static str = "query";
    const FROM_PARAMS: ParseParams<Self> = QueryRequest::from_params;
    const FROM_JSON: ParseBody<Self> = QueryRequest::from_json;

    fn answer(self, source: &dyn Source, limits: &Limits) -> Result<Vec<u8>, tsvault_query::Error> {
        let results = tsvault_query::execute_with_limits(source, &self, limits)?;
        Ok(tsvault_query::results_to_bytes(&results, &self))
    }
}

/// `/api/query/last`, with `/api/query`'s limits.
impl ReadRequest for LastRequest {
    const ENDPOINT: &'static str = "query_last";
    const FROM_PARAMS: ParseParams<Self> = LastRequest::from_params;
    const FROM_JSON: ParseBody<Self> = LastRequest::from_json;

    fn answer(self, source: &dyn Source, limits: &Limits) -> Result<Vec<u8>, tsvault_query::Error> {
        let points = tsvault_query::execute_last(source, &self, limits)?;
        let answer = tsvault_query::last_points_to_json(&points);
        Ok(serde_json::to_vec(&answer).expect("a JSON value encodes"))
    }
}

/// Answers a parsed read request off the async workers, timed under its endpoint: a parse or
/// request error is a 400, a storage failure a 500 naming what failed (and nothing of the data).
async fn run_read<R: ReadRequest>(st: Shared, parsed: Result<R, tsvault_query::Error>) -> Response {
    let req = match parsed {
        Ok(r) => r,
        Err(e) => return tsdb_error(StatusCode::BAD_REQUEST, e.to_string(), None),
    };
    // A turn among the queries running at once: their memory together stays bounded.
    let slot = match st.queries.acquire().await {
        Ok(s) => s,
        Err((status, msg)) => return tsdb_error(status, msg, None),
    };
    let started = Instant::now();
    let (source, _cancel_on_drop) = EngineSource::new(st.engine.clone());
    let limits = Limits {
        samples_max: st.queries.samples_max(),
        ..Limits::default()
    };
    // The answer is encoded there too (a large one takes milliseconds of CPU), within the
    // query's turn: its memory is the query's.
    let result = blocking(move || {
        let answer = req.answer(&source, &limits);
        drop(slot);
        answer
    })
    .await;
    st.metrics
        .query_duration
        .get_or_create(&vec![("endpoint", R::ENDPOINT)])
        .observe(started.elapsed().as_secs_f64());
    match result {
        Ok(bytes) => match st.bodies.hold_answer(bytes) {
            Ok(body) => (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => {
                let (status, msg) = e.status_message();
                tsdb_error(status, msg, None)
            }
        },
        Err(tsvault_query::Error::Source(e)) => {
            tracing::error!(error = %e, "query failed reading storage");
            tsdb_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("reading stored data failed: {e}"),
                None,
            )
        }
        Err(e) => tsdb_error(StatusCode::BAD_REQUEST, e.to_string(), None),
    }
}

/// `GET /api/query?start=..&m=..`, `GET /api/query/last?timeseries=..&back_scan=..&end=..`.
pub(crate) async fn read_get<R: ReadRequest>(
    State(st): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    run_read(st, R::FROM_PARAMS(&params, system_clock_ms())).await
}

/// `POST /api/query`, `POST /api/query/last` with a JSON body.
pub(crate) async fn read_post<R: ReadRequest>(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match decoded_or_error(&st, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    run_read(st, R::FROM_JSON(&body.bytes, system_clock_ms())).await
}

/// Answers a suggest on the blocking pool: it reads every name of a kind under the index
/// lock, which takes milliseconds at hundreds of thousands of series.
async fn suggest(st: &Shared, kind: &str, q: &str, max: Option<&str>) -> Response {
    let max = match max.map(str::parse::<usize>) {
        None => 25,
        Some(Ok(m)) => m,
        Some(Err(_)) => {
            return tsdb_error(StatusCode::BAD_REQUEST, "max must be a whole number", None);
        }
    };
    let (source, _cancel_on_drop) = EngineSource::new(st.engine.clone());
    let (kind, q) = (kind.to_owned(), q.to_owned());
    match blocking(move || tsvault_query::suggest(&source, &kind, &q, max)).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => tsdb_error(StatusCode::BAD_REQUEST, e.to_string(), None),
    }
}

/// A suggest without a usable `type`.
fn suggest_type_missing(found: Option<&serde_json::Value>) -> Response {
    let message = match found {
        None | Some(serde_json::Value::Null) => {
            "missing parameter 'type': one of metrics, tagk, tagv".to_string()
        }
        Some(other) => {
            format!("parameter 'type' must be one of \"metrics\", \"tagk\", \"tagv\", not {other}")
        }
    };
    tsdb_error(StatusCode::BAD_REQUEST, message, None)
}

/// `GET /api/suggest?type=metrics|tagk|tagv&q=&max=`.
pub(crate) async fn suggest_get(
    State(st): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let Some(kind) = get("type") else {
        return suggest_type_missing(None);
    };
    suggest(&st, kind, get("q").unwrap_or(""), get("max")).await
}

/// `POST /api/suggest` with `{"type":..,"q":..,"max":..}`.
pub(crate) async fn suggest_post(
    State(st): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let body = match decoded_or_error(&st, &headers, body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let v: serde_json::Value = match serde_json::from_slice(&body.bytes) {
        Ok(v) => v,
        Err(e) => {
            return tsdb_error(
                StatusCode::BAD_REQUEST,
                format!("Unable to parse the given JSON: {e}"),
                None,
            );
        }
    };
    let Some(kind) = v.get("type").and_then(|t| t.as_str()) else {
        return suggest_type_missing(v.get("type"));
    };
    let max = v.get("max").map(|m| m.to_string());
    suggest(
        &st,
        kind,
        v.get("q").and_then(|q| q.as_str()).unwrap_or(""),
        max.as_deref(),
    )
    .await
}

/// `GET /api/aggregators`.
pub(crate) async fn aggregators() -> Response {
    Json(tsvault_query::aggregator_names()).into_response()
}

/// `GET /api/version`.
pub(crate) async fn version() -> Response {
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "short_revision": "",
        "full_revision": "",
        "repo_status": "MODIFIED",
        "user": "",
        "host": "",
        "timestamp": "",
        "product": "tsvault",
    }))
    .into_response()
}
