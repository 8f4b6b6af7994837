//! `tsvault serve` settings: flags over `TSVAULT_*` environment variables over a TOML file
//! over the embedded defaults, for every key alike (booleans too: `--quarantine-corrupt=false`
//! overrides a file's `true`). Paths in a file are relative to the file's directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};
use serde::Deserialize;
use tsvault_backup::RepoOptions;
use tsvault_server::{BackupConfig, BodyLimits, ConnectionLimits, QueryLimits, ServerConfig};

use crate::backup_cli::passphrase;
use tsvault_storage::{EngineConfig, FsyncMode};

/// Fsync policy names as written in flags and files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FsyncPolicy {
    /// Fsync before every acknowledgement.
    Always,
    /// Fsync every `--fsync-interval`; the last interval's acknowledged writes may be lost.
    Interval,
}

/// Flags of `tsvault serve`. Each may also be set by its `TSVAULT_*` variable or in the file.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Print the settings in effect (after flags, environment, file and defaults) as JSON
    /// and exit, without starting.
    #[arg(long)]
    pub(crate) print_config: bool,
    /// A TOML file with the same keys as these flags (e.g. `data-dir = "/var/lib/tsvault"`);
    /// relative paths in it are relative to its directory.
    #[arg(long, env = "TSVAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Where data lives [default: ./tsvault-data].
    #[arg(long, env = "TSVAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:4242].
    #[arg(long, env = "TSVAULT_LISTEN")]
    listen: Option<String>,
    /// Drop data older than this, e.g. 30d or 1y [default: unlimited].
    #[arg(long, env = "TSVAULT_RETENTION")]
    retention: Option<String>,
    /// Width of a time partition (one segment file per partition) [default: the data
    /// directory's width; 6h for a new one].
    #[arg(long, env = "TSVAULT_SEGMENT_DURATION")]
    segment_duration: Option<String>,
    /// When writes are fsynced [default: always].
    #[arg(long, env = "TSVAULT_FSYNC", value_enum)]
    fsync: Option<FsyncPolicy>,
    /// With `--fsync interval`: the longest time between fsyncs [default: 1s].
    #[arg(long, env = "TSVAULT_FSYNC_INTERVAL")]
    fsync_interval: Option<String>,
    /// Largest accepted request body in bytes, after decompression [default: 67108864].
    #[arg(long, env = "TSVAULT_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Most bytes of request bodies held at once across all requests; beyond it a request
    /// gets 503 [default: 268435456].
    #[arg(long, env = "TSVAULT_MAX_BUFFERED_BYTES")]
    max_buffered_bytes: Option<usize>,
    /// Most connections open at once; more wait in the listen backlog [default: 512].
    #[arg(long, env = "TSVAULT_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Longest time for a request's headers, and for an idle keep-alive connection
    /// [default: 30s].
    #[arg(long, env = "TSVAULT_HEADER_TIMEOUT")]
    header_timeout: Option<String>,
    /// Longest time for a whole request body [default: 5m]; a body that stalls for 30 s is
    /// refused sooner.
    #[arg(long, env = "TSVAULT_BODY_TIMEOUT")]
    body_timeout: Option<String>,
    /// On SIGTERM or SIGINT, the longest wait for requests under way before the flush; a
    /// second signal stops waiting [default: 30s].
    #[arg(long, env = "TSVAULT_SHUTDOWN_TIMEOUT")]
    shutdown_timeout: Option<String>,
    /// Queries run at once; more wait up to 10 s for a turn, then get 503 [default: the
    /// number of cores].
    #[arg(long, env = "TSVAULT_QUERY_CONCURRENCY")]
    query_concurrency: Option<usize>,
    /// Most samples one query may read [default: 20000000].
    #[arg(long, env = "TSVAULT_QUERY_SAMPLES_MAX")]
    query_samples_max: Option<usize>,
    /// Flush the in-memory head to segments once it holds this many samples
    /// [default: 16777216].
    #[arg(long, env = "TSVAULT_HEAD_SAMPLES_MAX")]
    head_samples_max: Option<usize>,
    /// Start even when files are damaged: move them aside, serve the rest, report the loss
    /// in /health and the log [default: false].
    #[arg(long, env = "TSVAULT_QUARANTINE_CORRUPT", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    quarantine_corrupt: Option<bool>,
    /// A backup repository (made with `tsvault backup init`) the server backs itself up
    /// into: on `POST /api/admin/backups`, and every --backup-every. A path, file:///path
    /// or s3://bucket/prefix.
    #[arg(long, env = "TSVAULT_BACKUP_REPO")]
    backup_repo: Option<String>,
    /// A file whose first line is the backup repository's passphrase (else
    /// TSVAULT_REPO_PASSWORD).
    #[arg(long, env = "TSVAULT_BACKUP_PASSWORD_FILE")]
    backup_password_file: Option<PathBuf>,
    /// Take a backup this often, e.g. 1h (the first one this long after start); needs
    /// --backup-repo [default: only when asked].
    #[arg(long, env = "TSVAULT_BACKUP_EVERY")]
    backup_every: Option<String>,
    /// The backup repository's S3 endpoint, for S3-compatible servers.
    #[arg(long, env = "TSVAULT_BACKUP_S3_ENDPOINT")]
    backup_s3_endpoint: Option<String>,
    /// Allow plain HTTP to the backup repository's S3 endpoint [default: false].
    #[arg(long, env = "TSVAULT_BACKUP_S3_ALLOW_HTTP", num_args = 0..=1, default_missing_value = "true", value_parser = BoolishValueParser::new())]
    backup_s3_allow_http: Option<bool>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    retention: Option<String>,
    segment_duration: Option<String>,
    fsync: Option<FsyncPolicy>,
    fsync_interval: Option<String>,
    max_body_bytes: Option<usize>,
    max_buffered_bytes: Option<usize>,
    max_connections: Option<usize>,
    header_timeout: Option<String>,
    body_timeout: Option<String>,
    shutdown_timeout: Option<String>,
    query_concurrency: Option<usize>,
    query_samples_max: Option<usize>,
    head_samples_max: Option<usize>,
    quarantine_corrupt: Option<bool>,
    backup_repo: Option<String>,
    backup_password_file: Option<PathBuf>,
    backup_every: Option<String>,
    backup_s3_endpoint: Option<String>,
    backup_s3_allow_http: Option<bool>,
}

/// The narrowest time partition a server may be started with.
const SEGMENT_DURATION_MIN_MS: i64 = 60_000;

fn duration_ms(what: &str, text: &str) -> anyhow::Result<i64> {
    let d = humantime::parse_duration(text.trim()).with_context(|| {
        format!("{what} '{text}' is not a duration (examples: 90s, 15m, 2h, 30d)")
    })?;
    let ms =
        i64::try_from(d.as_millis()).with_context(|| format!("{what} '{text}' is too long"))?;
    if ms <= 0 {
        bail!("{what} '{text}' must be longer than zero");
    }
    Ok(ms)
}

fn duration(what: &str, text: Option<String>, default: Duration) -> anyhow::Result<Duration> {
    Ok(match text {
        None => default,
        Some(t) => Duration::from_millis(duration_ms(what, &t)? as u64),
    })
}

fn at_least_one(what: &str, n: Option<usize>, default: usize) -> anyhow::Result<usize> {
    match n {
        Some(0) => bail!("{what} must be at least 1"),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// A path from the file, relative to the file's directory.
fn from_file_dir(file: Option<&Path>, path: PathBuf) -> PathBuf {
    match file.and_then(Path::parent) {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path,
    }
}

/// The settings in effect, as `--print-config` shows them (no passphrase).
pub(crate) fn effective(c: &ServerConfig) -> serde_json::Value {
    let ms = |d: Duration| d.as_millis() as u64;
    let (fsync, fsync_interval_ms) = match c.engine.fsync {
        FsyncMode::Always => ("always", None),
        FsyncMode::Interval { interval_ms } => ("interval", Some(interval_ms)),
    };
    serde_json::json!({
        "data-dir": c.engine.data_dir,
        "listen": c.listen,
        "retention-ms": c.engine.retention_ms,
        "segment-duration-ms": c.engine.segment_duration_ms,
        "fsync": fsync,
        "fsync-interval-ms": fsync_interval_ms,
        "max-body-bytes": c.body.max_bytes,
        "max-buffered-bytes": c.body.buffered_bytes_max,
        "max-connections": c.connections.max,
        "header-timeout-ms": ms(c.connections.header_read_timeout),
        "body-timeout-ms": ms(c.body.read_timeout),
        "shutdown-timeout-ms": ms(c.connections.drain_timeout),
        "query-concurrency": c.queries.concurrency,
        "query-samples-max": c.queries.samples_max,
        "head-samples-max": c.engine.head_samples_max,
        "quarantine-corrupt": c.engine.quarantine_corrupt,
        "backup-repo": c.backup.as_ref().map(|b| &b.repo.url),
        "backup-every-ms": c.backup.as_ref().and_then(|b| b.every).map(ms),
        "backup-s3-endpoint": c.backup.as_ref().and_then(|b| b.repo.s3_endpoint.as_ref()),
        "backup-s3-allow-http": c.backup.as_ref().map(|b| b.repo.s3_allow_http),
        "backup-password-set": c.backup.as_ref().map(|b| b.repo.password.is_some()),
        "backup-password-file": c.backup.as_ref().and_then(|b| b.password_file.as_ref()),
    })
}

impl ServeArgs {
    /// Merges flags (and the environment, which clap reads beneath them) over the file over
    /// the defaults and checks every value.
    pub(crate) fn resolve(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
        };
        let file_path = self.config.as_deref();
        let data_dir = self
            .data_dir
            .or(file.data_dir.map(|d| from_file_dir(file_path, d)))
            .unwrap_or_else(|| PathBuf::from("tsvault-data"));
        let mut engine = EngineConfig::new(data_dir);
        if let Some(r) = self.retention.or(file.retention)
            && !matches!(r.trim(), "unlimited" | "0" | "")
        {
            engine.retention_ms = Some(duration_ms("--retention", &r)?);
        }
        if let Some(s) = self.segment_duration.or(file.segment_duration) {
            let ms = duration_ms("--segment-duration", &s)?;
            // One segment file per partition and flush: a width of milliseconds would make a
            // file per millisecond of data.
            if ms < SEGMENT_DURATION_MIN_MS {
                bail!("--segment-duration '{s}' is shorter than the minimum of 1m");
            }
            engine.segment_duration_ms = Some(ms);
        }
        // An interval given where `always` was chosen, or above it, is a contradiction; one
        // in the file beneath a flag's `always` is simply overridden.
        let (policy, policy_level) = match (self.fsync, file.fsync) {
            (Some(p), _) => (p, 2),
            (None, Some(p)) => (p, 1),
            (None, None) => (FsyncPolicy::Always, 0),
        };
        let (interval, interval_level) = match (self.fsync_interval, file.fsync_interval) {
            (Some(i), _) => (Some(i), 2),
            (None, Some(i)) => (Some(i), 1),
            (None, None) => (None, 0),
        };
        engine.fsync = match policy {
            FsyncPolicy::Always => {
                if interval.is_some() && interval_level >= policy_level {
                    bail!("--fsync-interval needs --fsync interval");
                }
                FsyncMode::Always
            }
            FsyncPolicy::Interval => {
                let ms = interval
                    .map(|i| duration_ms("--fsync-interval", &i))
                    .transpose()?
                    .unwrap_or(1000);
                FsyncMode::Interval {
                    interval_ms: ms as u64,
                }
            }
        };
        engine.head_samples_max = at_least_one(
            "--head-samples-max",
            self.head_samples_max.or(file.head_samples_max),
            engine.head_samples_max,
        )?;
        engine.quarantine_corrupt = self
            .quarantine_corrupt
            .or(file.quarantine_corrupt)
            .unwrap_or(false);
        let body_defaults = BodyLimits::default();
        let body = BodyLimits {
            max_bytes: at_least_one(
                "--max-body-bytes",
                self.max_body_bytes.or(file.max_body_bytes),
                body_defaults.max_bytes,
            )?,
            buffered_bytes_max: at_least_one(
                "--max-buffered-bytes",
                self.max_buffered_bytes.or(file.max_buffered_bytes),
                body_defaults.buffered_bytes_max,
            )?,
            read_timeout: duration(
                "--body-timeout",
                self.body_timeout.or(file.body_timeout),
                body_defaults.read_timeout,
            )?,
            ..body_defaults
        };
        if body.buffered_bytes_max < body.max_bytes {
            bail!(
                "--max-buffered-bytes ({}) must be at least --max-body-bytes ({}): one request of the largest size must fit",
                body.buffered_bytes_max,
                body.max_bytes
            );
        }
        let conn_defaults = ConnectionLimits::default();
        let connections = ConnectionLimits {
            max: at_least_one(
                "--max-connections",
                self.max_connections.or(file.max_connections),
                conn_defaults.max,
            )?,
            header_read_timeout: duration(
                "--header-timeout",
                self.header_timeout.or(file.header_timeout),
                conn_defaults.header_read_timeout,
            )?,
            drain_timeout: duration(
                "--shutdown-timeout",
                self.shutdown_timeout.or(file.shutdown_timeout),
                conn_defaults.drain_timeout,
            )?,
        };
        let query_defaults = QueryLimits::default();
        let queries = QueryLimits {
            concurrency: at_least_one(
                "--query-concurrency",
                self.query_concurrency.or(file.query_concurrency),
                query_defaults.concurrency,
            )?,
            samples_max: at_least_one(
                "--query-samples-max",
                self.query_samples_max.or(file.query_samples_max),
                query_defaults.samples_max,
            )?,
            ..query_defaults
        };
        let every = self.backup_every.or(file.backup_every);
        let password_file = self.backup_password_file.or(file
            .backup_password_file
            .map(|p| from_file_dir(file_path, p)));
        let s3_endpoint = self.backup_s3_endpoint.or(file.backup_s3_endpoint);
        let s3_allow_http = self.backup_s3_allow_http.or(file.backup_s3_allow_http);
        let backup = match self.backup_repo.or(file.backup_repo) {
            None => {
                // A backup setting without a repository is a mistake, not a no-op.
                let given = [
                    (every.is_some(), "--backup-every"),
                    (password_file.is_some(), "--backup-password-file"),
                    (s3_endpoint.is_some(), "--backup-s3-endpoint"),
                    (s3_allow_http == Some(true), "--backup-s3-allow-http"),
                ];
                if let Some((_, flag)) = given.iter().find(|(set, _)| *set) {
                    bail!("{flag} needs --backup-repo");
                }
                None
            }
            Some(url) => {
                let every = every
                    .map(|e| duration_ms("--backup-every", &e))
                    .transpose()?
                    .map(|ms| Duration::from_millis(ms as u64));
                Some(BackupConfig {
                    repo: RepoOptions {
                        url,
                        password: passphrase(password_file.as_ref(), "TSVAULT_REPO_PASSWORD")?,
                        s3_endpoint,
                        s3_allow_http: s3_allow_http.unwrap_or(false),
                        ..RepoOptions::default()
                    },
                    every,
                    password_file,
                })
            }
        };
        Ok(ServerConfig {
            backup,
            listen: self
                .listen
                .or(file.listen)
                .unwrap_or_else(|| "127.0.0.1:4242".into()),
            engine,
            body,
            connections,
            queries,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<ServerConfig> {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))?
            .serve
            .resolve()
    }

    #[test]
    fn defaults_file_and_flags_in_that_order() {
        let d = resolve(&[]).unwrap();
        assert_eq!(d.listen, "127.0.0.1:4242");
        assert_eq!(d.engine.data_dir, PathBuf::from("tsvault-data"));
        assert_eq!(d.engine.fsync, FsyncMode::Always);
        assert_eq!(d.engine.retention_ms, None);
        assert_eq!(d.engine.segment_duration_ms, None);
        assert_eq!(d.body.max_bytes, 64 << 20);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tsvault.toml");
        std::fs::write(
            &file,
            "data-dir = \"/srv/ts\"\nlisten = \"0.0.0.0:9999\"\nretention = \"30d\"\nfsync = \"interval\"\nfsync-interval = \"250ms\"\nsegment-duration = \"1h\"\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let c = resolve(&["--config", f]).unwrap();
        assert_eq!(c.engine.data_dir, PathBuf::from("/srv/ts"));
        assert_eq!(c.listen, "0.0.0.0:9999");
        assert_eq!(c.engine.retention_ms, Some(30 * 86_400_000));
        assert_eq!(c.engine.fsync, FsyncMode::Interval { interval_ms: 250 });
        assert_eq!(c.engine.segment_duration_ms, Some(3_600_000));
        let c = resolve(&[
            "--config",
            f,
            "--listen",
            "127.0.0.1:1",
            "--retention",
            "unlimited",
        ])
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:1", "flags win over the file");
        assert_eq!(c.engine.retention_ms, None);
    }

    #[test]
    fn bad_values_are_named() {
        let e = |args: &[&str]| format!("{:#}", resolve(args).unwrap_err());
        assert!(e(&["--retention", "forever"]).contains("--retention 'forever'"));
        assert!(e(&["--segment-duration", "0s"]).contains("longer than zero"));
        assert!(e(&["--segment-duration", "1ms"]).contains("shorter than the minimum of 1m"));
        assert!(e(&["--fsync-interval", "1s"]).contains("needs --fsync interval"));
        assert!(e(&["--max-body-bytes", "0"]).contains("at least 1"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "data_dirr = 1\n").unwrap();
        let msg = e(&["--config", file.to_str().unwrap()]);
        assert!(msg.contains("c.toml") && msg.contains("data_dirr"), "{msg}");
        assert!(e(&["--config", "/nonexistent.toml"]).contains("/nonexistent.toml"));
        assert!(e(&["--backup-every", "1h"]).contains("--backup-every needs --backup-repo"));
        assert!(
            e(&["--backup-password-file", "/pw"])
                .contains("--backup-password-file needs --backup-repo")
        );
        assert!(
            e(&["--backup-s3-allow-http"]).contains("--backup-s3-allow-http needs --backup-repo")
        );
        let msg = e(&["--backup-repo", "/r", "--backup-every", "hourly"]);
        assert!(msg.contains("--backup-every 'hourly'"), "{msg}");
        let msg = e(&[
            "--backup-repo",
            "/r",
            "--backup-password-file",
            "/nonexistent-pw",
        ]);
        assert!(msg.contains("/nonexistent-pw"), "{msg}");
    }

    #[test]
    fn backups_from_the_file_and_flags() {
        assert!(resolve(&[]).unwrap().backup.is_none());
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\nignored\n").unwrap();
        let file = dir.path().join("tsvault.toml");
        std::fs::write(
            &file,
            format!(
                "backup-repo = \"s3://bucket/ts\"\nbackup-password-file = {:?}\nbackup-every = \"6h\"\nbackup-s3-endpoint = \"http://127.0.0.1:9000\"\nbackup-s3-allow-http = true\n",
                pw.display().to_string()
            ),
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let b = resolve(&["--config", f]).unwrap().backup.unwrap();
        assert_eq!(b.repo.url, "s3://bucket/ts");
        assert_eq!(b.repo.password.as_deref(), Some(&b"secret"[..]));
        assert_eq!(b.every, Some(std::time::Duration::from_secs(6 * 3600)));
        assert_eq!(b.repo.s3_endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(b.repo.s3_allow_http);
        let b = resolve(&[
            "--config",
            f,
            "--backup-repo",
            "/local",
            "--backup-every",
            "90s",
        ])
        .unwrap()
        .backup
        .unwrap();
        assert_eq!(b.repo.url, "/local", "flags win over the file");
        assert_eq!(b.every, Some(std::time::Duration::from_secs(90)));
    }
}
