//! Connections: accepted up to a bound, each served by hyper with a header read timeout
//! (which also closes idle keep-alive connections), answered `starting` until the engine is
//! open, and drained on stop with a deadline a second signal cuts short. Every error answer
//! is JSON in the shape of the protocol the path belongs to.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::app::{ConnectionLimits, Stop};

/// Longest error body turned into JSON (axum's rejections are a line).
const ERROR_BODY_BYTES_MAX: usize = 64 << 10;

/// Accepts connections until `stop.graceful`, then drains them: returns once every
/// connection has finished, the drain timeout has passed, or `stop.now` fired.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    full: Arc<OnceLock<Router>>,
    limits: ConnectionLimits,
    stop: Stop,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max.max(1)));
    let graceful = GracefulShutdown::new();
    let starting = starting_router();
    let mut full_warned = false;
    loop {
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !full_warned {
                    tracing::warn!(
                        max = limits.max,
                        "at the connection limit: new connections wait in the listen backlog until one closes"
                    );
                    full_warned = true;
                }
                tokio::select! {
                    p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                    () = stop.graceful.cancelled() => break,
                }
            }
        };
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before it was taken:
                    // the listener itself is fine. A short pause keeps an exhausted
                    // descriptor table from spinning this loop.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.graceful.cancelled() => break,
        };
        full_warned = false;
        // TCP_NODELAY: a response written in pieces must not wait for the client's delayed
        // ACK, which costs 40 ms per request on Linux.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
        let (full, starting) = (full.clone(), starting.clone());
        let service = tower::service_fn(move |req: hyper::Request<Incoming>| {
            let router = full.get().cloned().unwrap_or_else(|| starting.clone());
            async move { router.oneshot(req.map(Body::new)).await }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .keep_alive(true);
        let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        timeout_s = limits.drain_timeout.as_secs(),
        "stop signal: no new connections; waiting for the requests under way (a second signal stops waiting)"
    );
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout_s = limits.drain_timeout.as_secs(), "requests still under way after the drain timeout are cut off");
        }
        () = stop.now.cancelled() => {
            tracing::warn!("second stop signal: requests still under way are cut off");
        }
    }
    Ok(())
}

/// What answers while the engine opens (the WAL replays): `/health` is alive and says
/// `starting` (a liveness probe must not kill a long replay), everything else is 503.
fn starting_router() -> Router {
    const WHY: &str = "the server is starting: it is opening its data directory and replaying the write-ahead log; retry shortly";
    Router::new()
        .route(
            "/health",
            get(|| async { axum::Json(json!({ "status": "starting", "detail": WHY })) }),
        )
        .fallback(|req: Request| async move {
            error_answer(
                req.uri().path(),
                StatusCode::SERVICE_UNAVAILABLE,
                WHY.into(),
            )
        })
}

/// An error answer in the shape of the protocol `path` belongs to: InfluxDB 1.x's
/// `{"error": ..}`, 2.x's `{"code": .., "message": ..}`, else OpenTSDB's
/// `{"error": {"code": .., "message": ..}}` (which tsvault's own endpoints use too).
pub(crate) fn error_answer(path: &str, status: StatusCode, message: String) -> Response {
    let body = match path {
        "/write" => json!({ "error": message }),
        "/api/v2/write" => {
            let code = match status.as_u16() {
                400 | 404 | 405 | 408 | 413 => "invalid",
                503 | 507 => "unavailable",
                _ => "internal error",
            };
            json!({ "code": code, "message": message })
        }
        _ => json!({ "error": { "code": status.as_u16(), "message": message } }),
    };
    (status, axum::Json(body)).into_response()
}

/// The fallback for paths no route has.
pub(crate) async fn not_found(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    error_answer(
        &path,
        StatusCode::NOT_FOUND,
        format!("no endpoint at {path}; the endpoints are listed in README.md"),
    )
}

/// The fallback for a known path asked with the wrong method.
pub(crate) async fn method_not_allowed(req: Request) -> Response {
    let path = req.uri().path().to_owned();
    error_answer(
        &path,
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {path}", req.method()),
    )
}

/// Turns an error answer that is not JSON (axum's rejections: a missing or malformed query
/// parameter, an unreadable path) into JSON of the path's protocol.
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, ERROR_BODY_BYTES_MAX)
        .collect()
        .await
    {
        Ok(c) => String::from_utf8_lossy(&c.to_bytes()).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("error")
            .to_ascii_lowercase()
    } else {
        text
    };
    let mut answer = error_answer(&path, status, message);
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            answer.headers_mut().insert(k.clone(), v.clone());
        }
    }
    answer
}

/// A panic in a handler (a bug): a JSON 500 naming it.
pub(crate) fn panic_answer(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked");
    error_answer(
        "",
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("internal error (a bug; the server goes on): {what}"),
    )
}
