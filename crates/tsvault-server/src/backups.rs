//! Backups the server takes itself, into the repository it was started with
//! (`tsvault serve --backup-repo URL`):
//!
//! - `POST /api/admin/backups[?type=full|incremental|differential]`: takes one now and
//!   answers its summary (what `tsvault backup create --json` prints) once it is complete;
//!   the type defaults to incremental when the repository holds a full backup of this data
//!   directory, else full. Backups run one at a time: a request made during one waits.
//! - `GET /api/admin/backups`: the repository (and whether it is open: its key derived, a
//!   backup would start at once), the schedule, and how the last backups went
//!   (also in `/metrics`: `tsvault_backups_total{result}`,
//!   `tsvault_backup_last_success_timestamp_seconds`, `tsvault_backup_last_duration_seconds`).
//! - With `--backup-every D`, one is taken every D (the first D after start).
//!
//! Each is an online backup of a snapshot the engine takes (`tsvault_backup::backup_engine`):
//! the same backup `tsvault backup create --server URL --server-data-dir DIR` takes, without
//! the HTTP and the process, and with the repository opened (its key derived) once rather
//! than at every backup. Backups are known by the data directory's path, so they continue a
//! chain begun by backups of the stopped directory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tsvault_backup::{BackupManifest, BackupType, NoProgress, RepoOptions, Repository};
use tsvault_storage::Engine;

use crate::app::Shared;
use crate::metrics::Metrics;

/// Where and how often the server backs itself up.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// The repository (created beforehand with `tsvault backup init`) and its passphrase.
    pub repo: RepoOptions,
    /// Take a backup this often; None: only when asked.
    pub every: Option<Duration>,
    /// The file the passphrase was read from, if it came from one (for `--print-config`).
    pub password_file: Option<std::path::PathBuf>,
}

/// A backup that failed: when, and why.
#[derive(Debug, Clone, Serialize)]
struct Failure {
    at_ms: i64,
    error: String,
}

/// How the server's backups went, as `GET /api/admin/backups` shows it.
#[derive(Debug, Clone, Default, Serialize)]
struct Status {
    /// When the backup under way started (ms since the epoch).
    running_since_ms: Option<i64>,
    succeeded: u64,
    failed: u64,
    /// The summary of the newest backup that succeeded, and how long it took.
    last_success: Option<serde_json::Value>,
    last_success_duration_ms: Option<u64>,
    last_failure: Option<Failure>,
}

/// The server's backups: its repository, opened on first use and kept open.
pub(crate) struct Backups {
    config: BackupConfig,
    /// Held for the whole of a backup, so that backups run one at a time.
    repo: tokio::sync::Mutex<Option<Repository>>,
    /// Whether the repository is open (its key derived): a backup then starts at once.
    open: std::sync::atomic::AtomicBool,
    status: Mutex<Status>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Why a backup could not be taken, with the status to answer.
pub(crate) struct BackupError {
    status: StatusCode,
    message: String,
}

impl From<tsvault_backup::Error> for BackupError {
    fn from(e: tsvault_backup::Error) -> Self {
        let status = match e {
            // Not possible in the repository's present state (no full backup to take an
            // incremental against; a prune holds the repository).
            tsvault_backup::Error::Invalid(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        BackupError {
            status,
            message: e.to_string(),
        }
    }
}

impl Backups {
    pub(crate) fn new(config: BackupConfig) -> Backups {
        Backups {
            config,
            repo: tokio::sync::Mutex::new(None),
            open: Default::default(),
            status: Mutex::new(Status::default()),
        }
    }

    /// The repository, opened now if it is not yet.
    async fn open<'a>(
        &self,
        repo: &'a mut Option<Repository>,
    ) -> Result<&'a Repository, tsvault_backup::Error> {
        if repo.is_none() {
            *repo = Some(Repository::open(&self.config.repo).await?);
            self.open.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(repo.as_ref().expect("just opened"))
    }

    /// Opens the repository at start, so that a wrong URL or passphrase is in the log at
    /// once, and the key is derived before the first backup. A failure is logged; each
    /// backup tries again.
    pub(crate) async fn open_at_start(&self) {
        let mut repo = self.repo.lock().await;
        match self.open(&mut repo).await {
            Ok(r) => {
                tracing::info!(repo = %r.url, every = ?self.config.every, "backups go to this repository")
            }
            Err(e) => {
                tracing::error!(repo = %self.config.repo.url, error = %e, "the backup repository cannot be opened; each backup will try again")
            }
        }
    }

    /// Takes a backup of `engine` now (after the one under way, if any), unless the server
    /// was told to stop meanwhile (`stopping`): no backup starts after the stop signal.
    pub(crate) async fn run(
        &self,
        engine: Arc<Engine>,
        kind: Option<BackupType>,
        metrics: &Metrics,
        stopping: &CancellationToken,
    ) -> Result<BackupManifest, BackupError> {
        let mut repo = self.repo.lock().await;
        if stopping.is_cancelled() {
            return Err(BackupError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "the server is stopping; no backup starts now".into(),
            });
        }
        let started = Instant::now();
        tracing::info!(repo = %self.config.repo.url, kind = ?kind, "backup started");
        self.status.lock().expect("not poisoned").running_since_ms = Some(now_ms());
        let result = match self.open(&mut repo).await {
            Ok(repo) => tsvault_backup::backup_engine(repo, engine, kind, &NoProgress).await,
            Err(e) => Err(e),
        };
        let took = started.elapsed();
        let mut status = self.status.lock().expect("not poisoned");
        status.running_since_ms = None;
        match &result {
            Ok(m) => {
                tracing::info!(id = %m.id, kind = ?m.kind, uploaded_bytes = m.uploaded_bytes, seconds = took.as_secs_f64(), "backup taken");
                status.succeeded += 1;
                status.last_success = Some(m.summary_json());
                status.last_success_duration_ms = Some(took.as_millis() as u64);
                metrics.backup_succeeded(m.finished_ms, took);
            }
            Err(e) => {
                tracing::error!(repo = %self.config.repo.url, error = %e, "backup failed");
                status.failed += 1;
                status.last_failure = Some(Failure {
                    at_ms: now_ms(),
                    error: e.to_string(),
                });
                metrics.backup_failed();
            }
        }
        Ok(result?)
    }

    /// Returns once no backup is under way (none starts after it unless asked for).
    pub(crate) async fn wait_idle(&self) {
        drop(self.repo.lock().await);
    }

    /// Takes a backup every `config.every` until `stop` is cancelled; a backup under way
    /// then ends first.
    pub(crate) async fn schedule(self: Arc<Self>, state: Shared, stop: CancellationToken) {
        let Some(every) = self.config.every else {
            return;
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            // Logged and counted in run.
            let _ = self
                .run(state.engine.clone(), None, &state.metrics, &stop)
                .await;
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct BackupQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
}

fn not_configured() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "this server has no backup repository: start it with --backup-repo URL (and the repository's passphrase in --backup-password-file or TSVAULT_REPO_PASSWORD), or back it up with `tsvault backup create --server`"})),
    )
        .into_response()
}

/// `POST /api/admin/backups[?type=...]`.
pub(crate) async fn create(State(st): State<Shared>, Query(q): Query<BackupQuery>) -> Response {
    let Some(backups) = &st.backups else {
        return not_configured();
    };
    let kind = match q.kind.as_deref() {
        None => None,
        Some("full") => Some(BackupType::Full),
        Some("incremental") => Some(BackupType::Incremental),
        Some("differential") => Some(BackupType::Differential),
        Some(other) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("type={other:?}: the backup type is one of full, incremental, differential")})),
            )
                .into_response();
        }
    };
    // On a task of its own: a client that goes away does not cancel the backup half-way
    // (its lock and snapshot held until they expire); it runs to its end, and is counted.
    let (backups, state) = (backups.clone(), st.clone());
    let run = tokio::spawn(async move {
        backups
            .run(state.engine.clone(), kind, &state.metrics, &state.stopping)
            .await
    });
    match run.await.expect("a backup task does not panic") {
        Ok(m) => (StatusCode::CREATED, Json(m.summary_json())).into_response(),
        Err(e) => (e.status, Json(json!({"error": e.message}))).into_response(),
    }
}

/// `GET /api/admin/backups`.
pub(crate) async fn status(State(st): State<Shared>) -> Response {
    let Some(backups) = &st.backups else {
        return not_configured();
    };
    let status = backups.status.lock().expect("not poisoned").clone();
    Json(json!({
        "repository": backups.config.repo.url,
        "open": backups.open.load(std::sync::atomic::Ordering::Relaxed),
        "every_seconds": backups.config.every.map(|d| d.as_secs_f64()),
        "status": status,
    }))
    .into_response()
}
