//! Server start-up, routing, shared state and the bounds every request works within.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tsvault_query::{LastRequest, QueryRequest};
use tsvault_storage::{Engine, EngineConfig, FsyncMode};

use tokio_util::sync::CancellationToken;

use crate::backups::{self, BackupConfig, Backups};
use crate::body::BodyBudget;
pub use crate::body::BodyLimits;
use crate::metrics::Metrics;
use crate::query_slots::QuerySlots;
use crate::{admin, health, http, influx, opentsdb};

/// Everything the server needs to start; every field has a working default in the CLI.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on, `host:port` (port 0 picks a free one).
    pub listen: String,
    /// The storage engine's configuration.
    pub engine: EngineConfig,
    /// Bounds on request bodies (size, time, bytes held across requests).
    pub body: BodyLimits,
    /// Bounds on connections.
    pub connections: ConnectionLimits,
    /// Bounds on queries across requests.
    pub queries: QueryLimits,
    /// Backups the server takes itself, when it has a repository for them.
    pub backup: Option<BackupConfig>,
}

/// Bounds on connections and their timing.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Most connections open at once; more wait in the listen backlog until one closes.
    pub max: usize,
    /// Longest time a request's headers may take to arrive, and the longest an idle
    /// keep-alive connection stays open.
    pub header_read_timeout: Duration,
    /// After a stop signal, the longest wait for requests under way to finish (a second
    /// signal ends it at once); the engine is flushed either way.
    pub drain_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max: 512,
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// Bounds on queries across all requests.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Queries run at once; more wait their turn.
    pub concurrency: usize,
    /// Longest wait for a turn before the answer is 503.
    pub queue_timeout: Duration,
    /// Most samples one query may read (so at most `concurrency` times this in memory).
    pub samples_max: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            queue_timeout: Duration::from_secs(10),
            samples_max: 20_000_000,
        }
    }
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
    pub bodies: BodyBudget,
    pub queries: QuerySlots,
    pub backups: Option<Arc<Backups>>,
    /// Cancelled at the stop signal: no backup starts after it.
    pub stopping: CancellationToken,
    /// The measurement/field split of each line-protocol metric name seen since start, to
    /// find names two pairs make (`a_b c` and `a b_c` both make `a_b_c`).
    pub metric_splits: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

pub(crate) type Shared = Arc<AppState>;

/// How a running server is told to stop.
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// The first signal: stop accepting, drain the requests under way (for at most the
    /// drain timeout), stop the backup schedule, flush, exit.
    pub graceful: CancellationToken,
    /// A second signal: stop waiting for requests under way (the flush still happens).
    pub now: CancellationToken,
}

/// Binds the address at once (answering `starting` while the data directory opens and the
/// WAL replays), opens the engine, serves HTTP until `stop.graceful`, drains, and flushes
/// the engine.
pub async fn serve(config: ServerConfig, stop: Stop) -> Result<(), ServerError> {
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
    let local = listener.local_addr().map_err(ServerError::Serve)?;
    tracing::info!(
        "tsvault {} accepting connections on http://{local} while it opens {} (answering 503 `starting` until then)",
        env!("CARGO_PKG_VERSION"),
        config.engine.data_dir.display()
    );
    let full: Arc<OnceLock<Router>> = Arc::new(OnceLock::new());
    let accepting = tokio::spawn(http::accept_loop(
        listener,
        full.clone(),
        config.connections.clone(),
        stop.clone(),
    ));
    let engine_config = config.engine.clone();
    let opened = tokio::task::spawn_blocking(move || Engine::open(engine_config))
        .await
        .expect("engine open task does not panic");
    let engine = match opened {
        Ok(e) => e,
        Err(e) => {
            // Nothing to drain: the listener goes with the task.
            accepting.abort();
            return Err(e.into());
        }
    };
    for q in engine.quarantined() {
        tracing::error!(file = %q.file.display(), reason = %q.reason, lost = %q.lost, "serving without a damaged file");
    }
    let fsync = match config.engine.fsync {
        FsyncMode::Always => "always".to_string(),
        FsyncMode::Interval { interval_ms } => format!("interval ({interval_ms} ms)"),
    };
    let state = Arc::new(AppState {
        engine: Arc::new(engine),
        metrics: Metrics::new(),
        bodies: BodyBudget::new(config.body.clone()),
        queries: QuerySlots::new(config.queries.clone()),
        backups: config.backup.clone().map(|b| Arc::new(Backups::new(b))),
        stopping: stop.graceful.clone(),
        metric_splits: Default::default(),
    });
    let _ = full.set(router(state.clone()));
    tracing::info!(
        "tsvault {} listening on http://{local}, data in {}, fsync {fsync}",
        env!("CARGO_PKG_VERSION"),
        config.engine.data_dir.display()
    );
    let schedule = state.backups.clone().map(|backups| {
        let (state, stop) = (state.clone(), stop.graceful.clone());
        tokio::spawn(async move {
            // A repository that cannot be reached does not hold up a stop.
            tokio::select! {
                () = backups.open_at_start() => {}
                () = stop.cancelled() => return,
            }
            backups.schedule(state, stop).await;
        })
    });
    // Returns once the connections are drained (or the drain is cut short).
    accepting
        .await
        .expect("accept loop does not panic")
        .map_err(ServerError::Serve)?;
    if let Some(task) = schedule
        && let Err(e) = task.await
    {
        tracing::error!(error = %e, "the backup schedule ended in a panic");
    }
    // A backup under way ends (and releases its snapshot) before the engine closes, unless
    // a second signal asked not to wait.
    if let Some(backups) = &state.backups {
        tokio::select! {
            () = backups.wait_idle() => {}
            () = stop.now.cancelled() => {
                tracing::warn!("not waiting for the backup under way; its snapshot is released when it expires");
            }
        }
    }
    tracing::info!("stopped accepting requests; closing the store");
    let engine = state.engine.clone();
    tokio::task::spawn_blocking(move || engine.close())
        .await
        .expect("engine close task does not panic")?;
    tracing::info!("closed; bye");
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
        .fallback(http::not_found)
        .method_not_allowed_fallback(http::method_not_allowed)
        .with_state(state)
        // Every error answer is JSON, axum's own rejections (a missing or malformed query
        // parameter, a bad path) included.
        .layer(axum::middleware::from_fn(http::json_errors))
        // A panic in a handler (a bug, never expected input) answers 500 instead of
        // dropping the connection without a word.
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            http::panic_answer,
        ))
}

/// Runs blocking engine work off the async workers. A panic there is re-raised in the
/// handler, where the router's `CatchPanicLayer` turns it into a 500.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking request task does not panic")
}
