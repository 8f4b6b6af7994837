//! `tsvault serve` settings: flags (and `TSVAULT_*` environment variables) over a TOML file
//! over the embedded defaults.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;
use tsvault_backup::RepoOptions;
use tsvault_server::{BackupConfig, ServerConfig};

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

/// Flags of `tsvault serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// A TOML file with the same keys as these flags (e.g. `data-dir = "/var/lib/tsvault"`).
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
    /// Flush the in-memory head to segments once it holds this many samples
    /// [default: 33554432].
    #[arg(long, env = "TSVAULT_HEAD_SAMPLES_MAX")]
    head_samples_max: Option<usize>,
    /// Start even when files are damaged: move them aside, serve the rest, report the loss
    /// in /health and the log.
    #[arg(long, env = "TSVAULT_QUARANTINE_CORRUPT")]
    quarantine_corrupt: bool,
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
    /// Allow plain HTTP to the backup repository's S3 endpoint.
    #[arg(long, env = "TSVAULT_BACKUP_S3_ALLOW_HTTP")]
    backup_s3_allow_http: bool,
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
    head_samples_max: Option<usize>,
    quarantine_corrupt: Option<bool>,
    backup_repo: Option<String>,
    backup_password_file: Option<PathBuf>,
    backup_every: Option<String>,
    backup_s3_endpoint: Option<String>,
    backup_s3_allow_http: Option<bool>,
}

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

impl ServeArgs {
    /// Merges flags over the file over the defaults and checks every value.
    pub(crate) fn resolve(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("tsvault-data"));
        let mut engine = EngineConfig::new(data_dir);
        if let Some(r) = self.retention.or(file.retention)
            && !matches!(r.trim(), "unlimited" | "0" | "")
        {
            engine.retention_ms = Some(duration_ms("--retention", &r)?);
        }
        if let Some(s) = self.segment_duration.or(file.segment_duration) {
            engine.segment_duration_ms = Some(duration_ms("--segment-duration", &s)?);
        }
        let interval = self.fsync_interval.or(file.fsync_interval);
        engine.fsync = match self.fsync.or(file.fsync).unwrap_or(FsyncPolicy::Always) {
            FsyncPolicy::Always => {
                if interval.is_some() {
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
        if let Some(n) = self.head_samples_max.or(file.head_samples_max) {
            if n == 0 {
                bail!("--head-samples-max must be at least 1");
            }
            engine.head_samples_max = n;
        }
        engine.quarantine_corrupt =
            self.quarantine_corrupt || file.quarantine_corrupt.unwrap_or(false);
        let max_body_bytes = self
            .max_body_bytes
            .or(file.max_body_bytes)
            .unwrap_or(64 << 20);
        if max_body_bytes == 0 {
            bail!("--max-body-bytes must be at least 1");
        }
        let every = self.backup_every.or(file.backup_every);
        let password_file = self.backup_password_file.or(file.backup_password_file);
        let s3_endpoint = self.backup_s3_endpoint.or(file.backup_s3_endpoint);
        let s3_allow_http = self.backup_s3_allow_http || file.backup_s3_allow_http.unwrap_or(false);
        let backup = match self.backup_repo.or(file.backup_repo) {
            None => {
                // A backup setting without a repository is a mistake, not a no-op.
                let given = [
                    (every.is_some(), "--backup-every"),
                    (password_file.is_some(), "--backup-password-file"),
                    (s3_endpoint.is_some(), "--backup-s3-endpoint"),
                    (s3_allow_http, "--backup-s3-allow-http"),
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
                    .map(|ms| std::time::Duration::from_millis(ms as u64));
                Some(BackupConfig {
                    repo: RepoOptions {
                        url,
                        password: passphrase(password_file.as_ref(), "TSVAULT_REPO_PASSWORD")?,
                        s3_endpoint,
                        s3_allow_http,
                        ..RepoOptions::default()
                    },
                    every,
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
            max_body_bytes,
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
        assert_eq!(d.max_body_bytes, 64 << 20);

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
