//! `/health`, `/ready`, `/metrics` and the admin endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::{Shared, blocking};
use crate::error::storage_status;

/// `GET /health`: 200 "ok", 200 "degraded" when damaged files were quarantined at start
/// (naming them and what was lost), 503 "failing" when writes are refused.
pub(crate) async fn health(State(st): State<Shared>) -> Response {
    let poisoned = st.engine.poisoned();
    let quarantined = st.engine.quarantined();
    let (status, word) = match (&poisoned, quarantined.is_empty()) {
        (Some(_), _) => (StatusCode::SERVICE_UNAVAILABLE, "failing"),
        (None, false) => (StatusCode::OK, "degraded"),
        (None, true) => (StatusCode::OK, "ok"),
    };
    (
        status,
        Json(json!({ "status": word, "writes_refused": poisoned, "quarantined": quarantined })),
    )
        .into_response()
}

/// `GET /ready`: 200 while the server accepts writes.
pub(crate) async fn ready(State(st): State<Shared>) -> Response {
    match st.engine.poisoned() {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(msg) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {msg}\n"),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    let stats = blocking(move || engine.stats()).await;
    let body = st.metrics.render(&stats, st.engine.poisoned().is_some());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `POST /api/admin/flush`: writes the head to segments now.
pub(crate) async fn flush(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    match blocking(move || engine.flush()).await {
        Ok(()) => Json(json!({ "flushed": true })).into_response(),
        Err(e) => {
            let (status, msg) = storage_status(&e);
            (status, Json(json!({ "error": msg }))).into_response()
        }
    }
}

/// `POST /api/admin/compact`: merges every partition that has several segments.
pub(crate) async fn compact(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    match blocking(move || engine.compact()).await {
        Ok(n) => Json(json!({ "partitions_compacted": n })).into_response(),
        Err(e) => {
            let (status, msg) = storage_status(&e);
            (status, Json(json!({ "error": msg }))).into_response()
        }
    }
}
