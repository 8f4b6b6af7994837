//! InfluxDB line protocol writes: `POST /write` (1.x) and `POST /api/v2/write` (2.x).
//!
//! Valid lines of a body are written even when others are malformed (1.x "partial write"):
//! the response is then 400, names each bad line and what is wrong with it, and says how
//! many lines and samples were written. What was accepted but not stored as sent (string
//! fields, timestamps cut to the millisecond, integers rounded) is said in a
//! `Tsvault-Warning` header of the 204 (and in the 400's body), and counted in `/metrics`.
//!
//! The database (`db` of 1.x, `bucket` of 2.x) is kept as a tag `db` on every point that
//! has no such tag itself, as VictoriaMetrics does: the same series written to two databases
//! stays two series. A retention policy (`rp`) other than the default (`autogen`) is kept
//! as a tag `rp` the same way. The 2.x `org` is not stored: tsvault has one organization.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tsvault_ingest::{Precision, parse_line_protocol_tagged};
use tsvault_storage::system_clock_ms;

use crate::app::{Shared, blocking};
use crate::body::BodyError;
use crate::error::storage_status;

/// Most line errors spelled out in one response; the rest are counted.
const LINE_ERRORS_SHOWN_MAX: usize = 10;

#[derive(Clone, Copy)]
enum Flavor {
    V1,
    V2,
}

impl Flavor {
    fn error(
        self,
        status: StatusCode,
        code: &str,
        message: String,
        extra: serde_json::Value,
    ) -> Response {
        let mut body = match self {
            Flavor::V1 => json!({ "error": message }),
            Flavor::V2 => json!({ "code": code, "message": message }),
        };
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        (status, Json(body)).into_response()
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `POST /write?db=&rp=&precision=`: InfluxDB 1.x.
pub(crate) async fn write_v1(
    State(st): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // 1.x spells nanoseconds "n" as well as "ns".
    let precision = match param(&params, "precision") {
        None | Some("") | Some("n") => "ns",
        Some(p) => p,
    };
    let mut tags = database_tag(param(&params, "db"));
    if let Some(rp) = param(&params, "rp").filter(|rp| !rp.is_empty() && *rp != "autogen") {
        tags.push(("rp".to_owned(), rp.to_owned()));
    }
    write(st, Flavor::V1, precision, tags, headers, body).await
}

/// `POST /api/v2/write?bucket=&org=&precision=`: InfluxDB 2.x.
pub(crate) async fn write_v2(
    State(st): State<Shared>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let precision = param(&params, "precision")
        .filter(|p| !p.is_empty())
        .unwrap_or("ns");
    let tags = database_tag(param(&params, "bucket"));
    write(st, Flavor::V2, precision, tags, headers, body).await
}

/// The `db` tag for a database (or bucket) name, when one is given.
fn database_tag(name: Option<&str>) -> Vec<(String, String)> {
    name.filter(|n| !n.is_empty())
        .map(|n| ("db".to_owned(), n.to_owned()))
        .into_iter()
        .collect()
}

/// Compares a body's metric names with those seen before: a name made by a different
/// measurement/field pair than before (`a_b c` after `a b_c`) is one series with it. Counts
/// them, logging each name once.
fn note_metric_splits(st: &Shared, splits: &std::collections::HashMap<String, usize>) -> u64 {
    /// A name already seen made by two pairs.
    const COLLIDED: usize = usize::MAX;
    let mut known = st.metric_splits.lock().expect("not poisoned");
    let mut collisions = 0;
    for (metric, &split) in splits {
        match known.get(metric).copied() {
            // Logged already: counted.
            Some(COLLIDED) => collisions += 1,
            Some(s) if s != split => {
                collisions += 1;
                tracing::warn!(
                    %metric,
                    first = %format!("{} {}", &metric[..s], &metric[s + 1..]),
                    now = %format!("{} {}", &metric[..split], &metric[split + 1..]),
                    "two measurement/field pairs make one metric name: their points are one series (logged once; counted in tsvault_points_not_stored_as_sent_total{{reason=\"metric_collision\"}})"
                );
                known.insert(metric.clone(), COLLIDED);
            }
            Some(_) => {}
            None => {
                known.insert(metric.clone(), split);
            }
        }
    }
    collisions
}

/// The header that says what a 2xx write accepted but did not store as sent.
pub(crate) const WARNING_HEADER: &str = "tsvault-warning";

async fn write(
    st: Shared,
    flavor: Flavor,
    precision: &str,
    tags: Vec<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let none = json!({});
    let precision: Precision = match precision.parse() {
        Ok(p) => p,
        Err(_) => {
            return flavor.error(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("invalid precision '{precision}'; use one of ns, u, us, ms, s, m, h"),
                none,
            );
        }
    };
    let body_error = |e: BodyError| {
        let (status, msg) = e.status_message();
        let code = match e {
            BodyError::TooLarge(_) | BodyError::AnswerTooLarge(..) => "request too large",
            BodyError::Busy(_) => "unavailable",
            BodyError::Bad(_) | BodyError::Timeout(_) => "invalid",
        };
        flavor.error(status, code, msg, json!({}))
    };
    let received = match st.bodies.read(&headers, body).await {
        Ok(b) => b,
        Err(e) => return body_error(e),
    };
    let engine = st.engine.clone();
    let shared = st.clone();
    let result = blocking(move || {
        let body = received.decode()?;
        let mut parsed =
            parse_line_protocol_tagged(&body.bytes, precision, system_clock_ms(), &tags);
        parsed.metric_collisions += note_metric_splits(&shared, &parsed.metric_splits);
        let cutoff = engine.retention_cutoff_ms();
        let before = parsed.points.len();
        if let Some(c) = cutoff {
            parsed.points.retain(|p| p.ts_ms >= c);
        }
        let beyond_retention = before - parsed.points.len();
        let written = engine.write(&parsed.points);
        Ok((parsed, beyond_retention, written))
    })
    .await;
    let (parsed, beyond_retention, written) = match result {
        Ok(r) => r,
        Err(e) => return body_error(e),
    };
    st.metrics.lines_rejected.inc_by(parsed.errors.len() as u64);
    st.metrics
        .string_fields_skipped
        .inc_by(parsed.string_fields_skipped);
    for (reason, n) in [
        ("timestamp_truncated", parsed.timestamps_truncated),
        ("collapsed", parsed.points_collapsed),
        ("integer_rounded", parsed.integers_rounded),
        ("time_field", parsed.time_fields_dropped),
        ("metric_collision", parsed.metric_collisions),
    ] {
        if n > 0 {
            st.metrics
                .not_stored_as_sent
                .get_or_create(&vec![("reason", reason)])
                .inc_by(n);
        }
    }
    let outcome = match written {
        Ok(o) => o,
        Err(e) => {
            let (status, msg) = storage_status(&e);
            tracing::error!(error = %e, "line protocol write failed");
            // InfluxDB 2.x's codes for these statuses.
            let code = match status {
                StatusCode::SERVICE_UNAVAILABLE => "unavailable",
                StatusCode::INSUFFICIENT_STORAGE => "unavailable",
                StatusCode::BAD_REQUEST => "invalid",
                _ => "internal error",
            };
            return flavor.error(status, code, msg, none);
        }
    };
    st.metrics
        .samples_ingested
        .get_or_create(&vec![("protocol", "influx")])
        .inc_by(outcome.written as u64);
    let dropped = beyond_retention + outcome.dropped_beyond_retention;
    let warning = parsed.not_stored_as_sent();
    if parsed.errors.is_empty() && dropped == 0 {
        let mut response = StatusCode::NO_CONTENT.into_response();
        if let Some(w) = warning
            && let Ok(v) = axum::http::HeaderValue::from_str(&w)
        {
            response.headers_mut().insert(WARNING_HEADER, v);
        }
        return response;
    }
    let mut problems: Vec<String> = parsed
        .errors
        .iter()
        .take(LINE_ERRORS_SHOWN_MAX)
        .map(|e| e.to_string())
        .collect();
    if parsed.errors.len() > LINE_ERRORS_SHOWN_MAX {
        problems.push(format!(
            "and {} more bad lines",
            parsed.errors.len() - LINE_ERRORS_SHOWN_MAX
        ));
    }
    if dropped > 0 {
        problems.push(format!(
            "{dropped} samples older than the retention period were dropped"
        ));
    }
    let message = format!(
        "partial write: {}; {} lines written ({} samples), {} lines rejected",
        problems.join("; "),
        parsed.lines_written,
        outcome.written,
        parsed.errors.len()
    );
    flavor.error(StatusCode::BAD_REQUEST, "invalid", message, {
        let mut extra = json!({
            "lines_written": parsed.lines_written,
            "lines_rejected": parsed.errors.len(),
            "samples_written": outcome.written,
            "samples_dropped_beyond_retention": dropped,
        });
        if let (Some(w), Some(o)) = (warning, extra.as_object_mut()) {
            o.insert("not_stored_as_sent".into(), json!(w));
        }
        extra
    })
}
