//! `/health`, `/ready`, `/metrics` and the admin endpoints.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::{Shared, blocking};
use crate::error::storage_status;

/// `GET /health`: 200 "ok"; 200 "degraded" when something needs an operator but writes
/// still work (damaged files quarantined at this start or found by a read while serving,
/// each named with what was lost, or set aside by an earlier start and not yet deleted); 503 "failing" when writes are refused (after a failed fsync)
/// or fail (the disk is full). While the server starts it answers 200 "starting" (see
/// `http::starting_router`), so a liveness probe does not kill a long WAL replay.
pub(crate) async fn health(State(st): State<Shared>) -> Response {
    let poisoned = st.engine.poisoned();
    let disk_full = st.engine.disk_full();
    let quarantined = st.engine.quarantined();
    let kept = {
        let engine = st.engine.clone();
        blocking(move || engine.quarantine_kept()).await
    };
    let corruption: Vec<_> = st
        .engine
        .corruption_found()
        .into_iter()
        .map(|(file, detail)| json!({ "file": file, "detail": detail }))
        .collect();
    let (status, word) = if poisoned.is_some() || disk_full.is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "failing")
    } else if !quarantined.is_empty() || !kept.is_empty() || !corruption.is_empty() {
        (StatusCode::OK, "degraded")
    } else {
        (StatusCode::OK, "ok")
    };
    (
        status,
        Json(json!({
            "status": word,
            "writes_refused": poisoned,
            "disk_full": disk_full,
            "quarantined": quarantined,
            "quarantine_kept": kept,
            "corruption_found": corruption,
        })),
    )
        .into_response()
}

/// `GET /ready`: 200 while writes can succeed; 503 naming why not (refused after a failed
/// fsync, or failing on a full disk), and while the server starts.
pub(crate) async fn ready(State(st): State<Shared>) -> Response {
    match st.engine.poisoned().or_else(|| st.engine.disk_full()) {
        None => Json(json!({ "ready": true })).into_response(),
        Some(msg) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "ready": false, "error": { "code": 503, "message": format!("not ready: {msg}") } })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub(crate) async fn metrics(State(st): State<Shared>) -> Response {
    let engine = st.engine.clone();
    let stats = blocking(move || engine.stats()).await;
    let body = st
        .metrics
        .render(&stats, st.engine.poisoned().is_some(), st.bodies.held());
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
