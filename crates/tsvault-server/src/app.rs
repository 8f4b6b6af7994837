//! Server start-up, routing, shared state and request-body handling.

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tsvault_query::{LastRequest, QueryRequest};
use tsvault_storage::{Engine, EngineConfig, FsyncMode};

use tokio_util::sync::CancellationToken;

use crate::backups::{self, BackupConfig, Backups};
use crate::metrics::Metrics;
use crate::{admin, health, influx, opentsdb};

/// Everything the server needs to start; every field has a working default in the CLI.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// The storage engine's configuration.
    pub engine: EngineConfig,
    /// Largest request body accepted, after decompression.
    pub max_body_bytes: usize,
    /// Backups the server takes itself, when it has a repository for them.
    pub backup: Option<BackupConfig>,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The storage engine failed to open or to close cleanly.
    #[error(transparent)]
    Storage(#[from] tsvault_storage::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
}

pub(crate) struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: Metrics,
    pub max_body_bytes: usize,
    pub backups: Option<Arc<Backups>>,
}

pub(crate) type Shared = Arc<AppState>;

/// Opens the engine, serves HTTP until `shutdown` resolves, then stops accepting, finishes
/// in-flight requests, and flushes the engine.
pub async fn serve(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let engine_config = config.engine.clone();
    let engine = tokio::task::spawn_blocking(move || Engine::open(engine_config))
        .await
        .expect("engine open task does not panic")?;
    for q in engine.quarantined() {
        tracing::error!(file = %q.file.display(), reason = %q.reason, lost = %q.lost, "serving without a damaged file");
    }
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    let fsync = match config.engine.fsync {
        FsyncMode::Always => "always".to_string(),
        FsyncMode::Interval { interval_ms } => format!("interval ({interval_ms} ms)"),
    };
    tracing::info!(
        "tsvault {} listening on http://{local}, data in {}, fsync {fsync}",
        env!("CARGO_PKG_VERSION"),
        config.engine.data_dir.display()
    );
    let state = Arc::new(AppState {
        engine: Arc::new(engine),
        metrics: Metrics::new(),
        max_body_bytes: config.max_body_bytes,
        backups: config.backup.clone().map(|b| Arc::new(Backups::new(b))),
    });
    let stop_schedule = CancellationToken::new();
    let schedule = state.backups.clone().map(|backups| {
        let (state, stop) = (state.clone(), stop_schedule.clone());
        tokio::spawn(async move {
            // A repository that cannot be reached does not hold up a stop.
            tokio::select! {
                () = backups.open_at_start() => {}
                () = stop.cancelled() => return,
            }
            backups.schedule(state, stop).await;
        })
    });
    // TCP_NODELAY: a response written in pieces (headers, then a streamed body) must not wait
    // for the client's delayed ACK, which costs 40 ms per request on Linux.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on a connection");
        }
    });
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)?;
    // A backup under way ends (and releases its snapshot) before the engine closes.
    stop_schedule.cancel();
    if let Some(task) = schedule
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the backup schedule ended in a panic");
    }
    // As does one asked for by a client that has gone away (see backups::create).
    if let Some(backups) = &state.backups {
        backups.wait_idle().await;
    }
    tracing::info!("stopped accepting requests; flushing");
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || engine.close())
        .await
        .expect("engine close task does not panic")?;
    tracing::info!("flushed; bye");
    Ok(())
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/write", post(influx::write_v1))
        .route("/api/v2/write", post(influx::write_v2))
        .route("/api/put", post(opentsdb::put))
        .route(
            "/api/query",
            get(opentsdb::read_get::<QueryRequest>).post(opentsdb::read_post::<QueryRequest>),
        )
        .route(
            "/api/query/last",
            get(opentsdb::read_get::<LastRequest>).post(opentsdb::read_post::<LastRequest>),
        )
        .route(
            "/api/suggest",
            get(opentsdb::suggest_get).post(opentsdb::suggest_post),
        )
        .route("/api/aggregators", get(opentsdb::aggregators))
        .route("/api/version", get(opentsdb::version))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(health::metrics))
        .route("/api/admin/flush", post(health::flush))
        .route("/api/admin/compact", post(health::compact))
        .route(
            "/api/admin/snapshots",
            get(admin::list_snapshots).post(admin::create_snapshot),
        )
        .route(
            "/api/admin/snapshots/{id}",
            get(admin::show_snapshot).delete(admin::release_snapshot),
        )
        .route("/api/admin/snapshots/{id}/file", get(admin::snapshot_file))
        .route(
            "/api/admin/snapshots/{id}/digests",
            get(admin::snapshot_digests),
        )
        .route("/api/admin/import", post(admin::import))
        .route(
            "/api/admin/backups",
            get(backups::status).post(backups::create),
        )
        .with_state(state)
        // A panic in a handler (a bug, never expected input) answers 500 instead of
        // dropping the connection without a word.
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
}

/// Why a request body could not be read.
pub(crate) enum BodyError {
    /// Larger than the limit (before or after decompression).
    TooLarge,
    /// Not readable as sent (bad gzip, unknown encoding, broken connection).
    Bad(String),
}

/// Reads a body up to `limit` bytes, decompressing `Content-Encoding: gzip` with the same
/// limit on the decompressed size (a small gzip bomb cannot take the memory).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Vec<u8>, BodyError> {
    let raw = match Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(BodyError::TooLarge);
        }
        Err(e) => return Err(BodyError::Bad(format!("cannot read the request body: {e}"))),
    };
    let encoding = headers.get(axum::http::header::CONTENT_ENCODING).map(|v| {
        v.to_str()
            .unwrap_or("(not ASCII)")
            .trim()
            .to_ascii_lowercase()
    });
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw.to_vec()),
        Some("gzip") => {
            let mut out = Vec::new();
            // Every member of a multi-member stream (concatenated gzip files are one valid
            // gzip file), and bytes after the last member are an error, not ignored.
            let mut dec = flate2::read::MultiGzDecoder::new(&raw[..]).take(limit as u64 + 1);
            dec.read_to_end(&mut out)
                .map_err(|e| BodyError::Bad(format!("the body is not valid gzip: {e}")))?;
            if out.len() > limit {
                return Err(BodyError::TooLarge);
            }
            Ok(out)
        }
        Some(other) => Err(BodyError::Bad(format!(
            "Content-Encoding '{other}' is not supported; send the body plain or gzip-compressed"
        ))),
    }
}

/// Runs blocking engine work off the async workers. A panic there is re-raised in the
/// handler, where the router's `CatchPanicLayer` turns it into a 500.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking request task does not panic")
}
