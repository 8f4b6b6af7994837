//! `tsvault backup ...` and `tsvault restore`: the repository commands. Each shows a progress
//! bar on a terminal and prints JSON with `--json`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tsvault_backup::{BackupManifest, BackupType, Cipher, Progress, RepoOptions, Repository};

/// How to reach and open a repository.
#[derive(Args, Debug, Clone)]
pub struct RepoArgs {
    /// The repository: a path, file:///path, or s3://bucket/prefix (credentials and region from
    /// the AWS_* environment variables).
    #[arg(long, env = "TSVAULT_REPO")]
    repo: String,
    /// A file whose first line is the passphrase (else TSVAULT_REPO_PASSWORD).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// The S3 endpoint, for S3-compatible servers.
    #[arg(long, env = "AWS_ENDPOINT")]
    s3_endpoint: Option<String>,
    /// Allow plain HTTP to the S3 endpoint.
    #[arg(long)]
    s3_allow_http: bool,
    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    json: bool,
}

/// The passphrase: the first line of `file` when given, else the environment variable `env`.
pub(crate) fn passphrase(file: Option<&PathBuf>, env: &str) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("reading the passphrase from {}", f.display()))?;
            Some(text.lines().next().unwrap_or("").as_bytes().to_vec())
        }
        None => std::env::var_os(env).map(|p| p.to_string_lossy().as_bytes().to_vec()),
    })
}

impl RepoArgs {
    fn options(&self) -> anyhow::Result<RepoOptions> {
        let password = passphrase(self.password_file.as_ref(), "TSVAULT_REPO_PASSWORD")?;
        Ok(RepoOptions {
            url: self.repo.clone(),
            password,
            s3_endpoint: self.s3_endpoint.clone(),
            s3_allow_http: self.s3_allow_http,
            ..RepoOptions::default()
        })
    }
}

#[derive(Subcommand, Debug)]
pub enum BackupCommand {
    /// Create a repository (encrypted unless --no-encryption).
    Init {
        #[command(flatten)]
        repo: RepoArgs,
        /// Store backups unencrypted (compressed and checksummed only).
        #[arg(long)]
        no_encryption: bool,
        /// The cipher that seals the repository's objects: aes-256-gcm (fastest with AES-NI,
        /// as on most x86-64 and ARMv8 servers) or chacha20-poly1305 (fastest without).
        #[arg(long, default_value = "aes-256-gcm", value_parser = parse_cipher, conflicts_with = "no_encryption")]
        cipher: Cipher,
    },
    /// Back up a running server online (--server) or a stopped data directory (--data-dir);
    /// blobs the repository already holds are not uploaded again.
    Create {
        #[command(flatten)]
        repo: RepoArgs,
        /// A running server's URL (http://host:port): it takes a snapshot, the CLI pulls the
        /// snapshot's files over HTTP, then releases it. Writes keep flowing meanwhile.
        #[arg(
            long,
            conflicts_with = "data_dir",
            required_unless_present = "data_dir"
        )]
        server: Option<String>,
        /// With --server, run on the server's machine: the server's data directory, where
        /// the snapshot's files are then read instead of over HTTP (each still checked
        /// against the server's listing). The same backup, with less work for the server.
        #[arg(long, requires = "server")]
        server_data_dir: Option<PathBuf>,
        /// The data directory of a stopped server.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// full, incremental (against the newest backup of this directory) or differential
        /// (against its newest full). Default: incremental if a full backup exists, else full.
        #[arg(long = "type", value_parser = ["full", "incremental", "differential"])]
        kind: Option<String>,
        /// The pack size aimed at (bytes, or with KiB or MiB): files under 4 MiB are stored
        /// together in packs of about this size, at most 8 MiB. 0 stores every file in blobs
        /// of its own.
        #[arg(long, default_value = "4MiB", value_parser = parse_pack_size)]
        pack_size: u64,
        /// Compress segments with zstd too. By default they are stored as the engine wrote
        /// them (their columns are compressed already): zstd makes a backup about a tenth
        /// smaller for about 40% more CPU.
        #[arg(long)]
        compress_segments: bool,
    },
    /// List the backups.
    List {
        #[command(flatten)]
        repo: RepoArgs,
    },
    /// Show one backup.
    Show {
        #[command(flatten)]
        repo: RepoArgs,
        /// The backup id, or `latest`.
        id: String,
    },
    /// Check backups without restoring them: every referenced blob exists; with
    /// --read-data, every blob is read, decrypted and hashed. Exits 1 naming each problem.
    Verify {
        #[command(flatten)]
        repo: RepoArgs,
        /// The backup id, or `latest`.
        #[arg(conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every backup.
        #[arg(long)]
        all: bool,
        /// Read, decrypt and hash every blob.
        #[arg(long)]
        read_data: bool,
        /// Restore into a scratch directory (under TMPDIR) and compare every file's
        /// per-series digests with those recorded at backup time; open it with the engine.
        #[arg(long)]
        deep: bool,
    },
    /// Fold an incremental or differential backup and its chain into a synthetic full
    /// backup, without reading the source.
    Consolidate {
        #[command(flatten)]
        repo: RepoArgs,
        /// The backup id, or `latest`.
        id: String,
    },
    /// Remove the backups a keep policy does not keep, then delete the blobs no remaining
    /// backup references (never while a backup is running).
    Prune {
        #[command(flatten)]
        repo: RepoArgs,
        /// Keep the newest N backups.
        #[arg(long, default_value_t = 0)]
        keep_last: usize,
        /// Keep the newest backup of each of the last N hours that have one.
        #[arg(long, default_value_t = 0)]
        keep_hourly: usize,
        /// ... of each of the last N days (UTC).
        #[arg(long, default_value_t = 0)]
        keep_daily: usize,
        /// ... of each of the last N weeks (Monday to Sunday, UTC).
        #[arg(long, default_value_t = 0)]
        keep_weekly: usize,
        /// ... of each of the last N months (UTC).
        #[arg(long, default_value_t = 0)]
        keep_monthly: usize,
        /// Report what would be removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Copy backups to a second repository (offsite), uploading only the blobs it lacks.
    Copy {
        #[command(flatten)]
        repo: RepoArgs,
        /// The target repository (a path, file:///path or s3://bucket/prefix).
        #[arg(long)]
        to: String,
        /// A file whose first line is the target's passphrase (else
        /// TSVAULT_TO_REPO_PASSWORD).
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// The target's S3 endpoint, for S3-compatible servers.
        #[arg(long)]
        to_s3_endpoint: Option<String>,
        /// The backup id, or `latest`.
        #[arg(conflicts_with = "all", required_unless_present = "all")]
        id: Option<String>,
        /// Every backup.
        #[arg(long)]
        all: bool,
        /// Compress segments with zstd in the blobs the copy stores (see `backup create`).
        #[arg(long)]
        compress_segments: bool,
    },
}

/// `tsvault restore`.
#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The backup id, or `latest`.
    #[arg(long, default_value = "latest")]
    backup: String,
    /// An empty (or new) directory to restore into.
    #[arg(long, conflicts_with = "server", required_unless_present = "server")]
    data_dir: Option<PathBuf>,
    /// A running server's URL (http://host:port) to restore into: restored samples merge, and
    /// a sample the server already has at a timestamp is never overwritten.
    #[arg(long)]
    server: Option<String>,
    /// Only metrics matching this pattern (`*` matches any text; case-insensitive).
    #[arg(long)]
    metric: Option<String>,
    /// Only samples at or after this time (RFC 3339, or milliseconds since the epoch).
    #[arg(long, value_parser = parse_time)]
    start: Option<i64>,
    /// Only samples at or before this time (RFC 3339, or milliseconds since the epoch).
    #[arg(long, value_parser = parse_time)]
    end: Option<i64>,
}

/// A cipher by its id (`aes-256-gcm`, `chacha20-poly1305`); an unknown one is named with
/// the ids there are.
fn parse_cipher(text: &str) -> Result<Cipher, String> {
    Cipher::from_id(text).ok_or_else(|| {
        let ids: Vec<_> = Cipher::ALL.iter().map(|c| c.id()).collect();
        format!("unknown cipher {text:?}: {}", ids.join(" or "))
    })
}

/// A pack size: bytes, or a number of KiB or MiB (`512KiB`, `4MiB`; `K` and `M` too), at
/// most 8 MiB.
fn parse_pack_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        _ => return Err(format!("'{text}': the unit is not one of B, KiB, MiB")),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (e.g. 4MiB, 512KiB, 0)"))?;
    match n
        .checked_shl(shift)
        .filter(|&b| b >> shift == n && b <= 8 << 20)
    {
        Some(bytes) => Ok(bytes),
        None => Err(format!("'{text}' is larger than the largest pack, 8MiB")),
    }
}

/// A time given as milliseconds since the epoch or as RFC 3339 (UTC when no offset is given).
fn parse_time(text: &str) -> Result<i64, String> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text).map_err(|e| {
        format!("'{text}' is neither milliseconds since the epoch nor an RFC 3339 time ({e}); e.g. 1700000000000 or 2023-11-14T22:13:20Z")
    })?;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => {
            i64::try_from(d.as_millis()).map_err(|_| format!("'{text}' is too far in the future"))
        }
        Err(e) => i64::try_from(e.duration().as_millis())
            .map(|ms| -ms)
            .map_err(|_| format!("'{text}' is too far in the past")),
    }
}

/// A byte progress bar on a terminal; nothing otherwise or with --json.
/// A progress bar on a terminal (hidden under --json or when stderr is not one).
pub(crate) struct Bar(pub(crate) ProgressBar);

impl Bar {
    pub(crate) fn new(json: bool, what: &str) -> Bar {
        let pb = if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("template")
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        Bar(pb)
    }
}

impl Progress for Bar {
    fn start(&self, total_bytes: u64) {
        self.0.set_length(total_bytes);
    }
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A time in ms since the epoch as RFC 3339 (UTC, milliseconds).
fn rfc3339(ms: i64) -> String {
    u64::try_from(ms)
        .map(|ms| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            )
            .to_string()
        })
        .unwrap_or_else(|_| format!("{ms} ms"))
}

/// `backup show` for a person.
fn print_show(m: &BackupManifest) {
    let kind = format!("{:?}", m.kind).to_lowercase();
    println!("backup       {}", m.id);
    println!("type         {kind}");
    if let Some(p) = &m.parent {
        println!("parent       {p}");
    }
    if let Some(b) = &m.base {
        println!("base         {b}");
    }
    if let Some(c) = &m.consolidated_from {
        println!("folded from  {c}");
    }
    println!("source       {}", m.source);
    println!(
        "time         {} .. {} ({:.1} s)",
        rfc3339(m.started_ms),
        rfc3339(m.finished_ms),
        (m.finished_ms - m.started_ms) as f64 / 1000.0
    );
    if let Some(c) = &m.consistency {
        println!(
            "consistent   at {}: WAL position {}{}",
            rfc3339(c.at_ms),
            c.wal_position,
            c.snapshot
                .as_ref()
                .map(|s| format!(", server snapshot {s}"))
                .unwrap_or_else(|| ", stopped data directory".into())
        );
    }
    println!(
        "sizes        {} bytes logical, {} read, {} uploaded, {} deduplicated",
        m.logical_bytes, m.read_bytes, m.uploaded_bytes, m.deduplicated_bytes
    );
    if let Some(d) = &m.summary {
        println!(
            "data         {} series, {} samples stored{}",
            d.series,
            d.samples,
            match (d.min_ts_ms, d.max_ts_ms) {
                (Some(a), Some(b)) => format!(", {} .. {}", rfc3339(a), rfc3339(b)),
                _ => String::new(),
            }
        );
    }
    println!("files        {}", m.files.len());
    for f in &m.files {
        println!("  {}  {} bytes  {} blobs", f.path, f.size, f.blobs.len());
    }
}

async fn resolve(repo: &Repository, id: &str) -> anyhow::Result<String> {
    if id != "latest" {
        return Ok(id.to_string());
    }
    repo.backup_ids()
        .await?
        .pop()
        .with_context(|| format!("repository {} holds no backup", repo.url))
}

pub fn backup(cmd: BackupCommand) -> anyhow::Result<ExitCode> {
    tsvault_backup::failpoints_from_env();
    let rt = runtime()?;
    rt.block_on(async move {
        match cmd {
            BackupCommand::Init {
                repo,
                no_encryption,
                cipher,
            } => {
                let r = Repository::init(&repo.options()?, (!no_encryption).then_some(cipher))
                    .await?;
                if repo.json {
                    let cipher = r.config.encryption.as_ref().and_then(|wrap| wrap.cipher);
                    println!("{}", json!({"repository": r.url, "id": r.config.id, "encrypted": r.encrypted(), "cipher": cipher}));
                } else {
                    println!(
                        "created {} repository {} at {}",
                        if r.encrypted() {
                            format!("encrypted ({})", cipher.name())
                        } else {
                            "unencrypted".to_string()
                        },
                        r.config.id,
                        r.url
                    );
                }
            }
            BackupCommand::Create {
                repo,
                server,
                server_data_dir,
                data_dir,
                kind,
                pack_size,
                compress_segments,
            } => {
                let r = Repository::open(&RepoOptions {
                    pack_target: Some(pack_size),
                    compress_segments,
                    ..repo.options()?
                })
                .await?;
                let kind = kind.map(|k| match k.as_str() {
                    "full" => BackupType::Full,
                    "incremental" => BackupType::Incremental,
                    _ => BackupType::Differential,
                });
                let bar = Bar::new(repo.json, "backing up");
                let m = match (&server, &data_dir) {
                    (Some(url), _) => {
                        let local = server_data_dir.as_deref();
                        tsvault_backup::backup_server(&r, url, local, kind, &bar).await?
                    }
                    (None, Some(dir)) => {
                        tsvault_backup::backup_data_dir(&r, dir, kind, &bar).await?
                    }
                    (None, None) => anyhow::bail!("give --server URL or --data-dir DIR"),
                };
                bar.0.finish_and_clear();
                if repo.json {
                    println!("{}", m.summary_json());
                } else {
                    println!(
                        "backup {} ({:?}): {} files, {} bytes, {} bytes uploaded",
                        m.id,
                        m.kind,
                        m.files.len(),
                        m.logical_bytes,
                        m.uploaded_bytes
                    );
                }
            }
            BackupCommand::List { repo } => {
                let r = Repository::open(&repo.options()?).await?;
                let mut all = Vec::new();
                for id in r.backup_ids().await? {
                    all.push(r.manifest(&id).await?);
                }
                if repo.json {
                    println!("{}", json!(all.iter().map(BackupManifest::summary_json).collect::<Vec<_>>()));
                } else {
                    for m in &all {
                        println!(
                            "{}  {:<12}  {:>6} files  {:>14} bytes  {:>14} uploaded  {}",
                            m.id,
                            format!("{:?}", m.kind).to_lowercase(),
                            m.files.len(),
                            m.logical_bytes,
                            m.uploaded_bytes,
                            m.source
                        );
                    }
                }
            }
            BackupCommand::Show { repo, id } => {
                let r = Repository::open(&repo.options()?).await?;
                let m = r.manifest(&resolve(&r, &id).await?).await?;
                if repo.json {
                    println!("{}", serde_json::to_string_pretty(&m)?);
                } else {
                    print_show(&m);
                }
            }
            BackupCommand::Verify {
                repo,
                id,
                all,
                read_data,
                deep,
            } => {
                let r = Repository::open(&repo.options()?).await?;
                let ids = if all {
                    r.backup_ids().await?
                } else {
                    vec![resolve(&r, id.as_deref().unwrap_or("latest")).await?]
                };
                let mut problems = Vec::new();
                for id in &ids {
                    // A deep verification restores, which reads and hashes every blob: the
                    // structure is checked first (cheap, and names missing blobs plainly),
                    // the blobs are not read a second time.
                    let found = tsvault_backup::verify_backup(&r, id, read_data && !deep).await;
                    let structure_ok = found.is_empty();
                    problems.extend(found);
                    if deep && structure_ok {
                        problems.extend(tsvault_backup::verify_deep(&r, id).await);
                    }
                }
                let level = if deep {
                    "deep"
                } else if read_data {
                    "read-data"
                } else {
                    "structure"
                };
                if repo.json {
                    println!(
                        "{}",
                        json!({"backups": ids, "level": level, "ok": problems.is_empty(),
                               "problems": problems.iter().map(|p| json!({"backup": p.backup, "problem": p.detail})).collect::<Vec<_>>()})
                    );
                } else {
                    for p in &problems {
                        eprintln!("backup {}: {}", p.backup, p.detail);
                    }
                    if problems.is_empty() {
                        println!(
                            "{} backup(s) verified ({})",
                            ids.len(),
                            match level {
                                "deep" => "restored into a scratch directory, every series digest compared, opened by the engine",
                                "read-data" => "every blob read and hashed",
                                _ => "every blob present",
                            }
                        );
                    }
                }
                if !problems.is_empty() {
                    return Ok(ExitCode::FAILURE);
                }
            }
            BackupCommand::Copy {
                repo,
                to,
                to_password_file,
                to_s3_endpoint,
                id,
                all,
                compress_segments,
            } => {
                let from = Repository::open(&repo.options()?).await?;
                let password = passphrase(to_password_file.as_ref(), "TSVAULT_TO_REPO_PASSWORD")?;
                let target = Repository::open(&RepoOptions {
                    url: to,
                    password,
                    s3_endpoint: to_s3_endpoint,
                    s3_allow_http: repo.s3_allow_http,
                    compress_segments,
                    ..RepoOptions::default()
                })
                .await?;
                let ids = if all {
                    from.backup_ids().await?
                } else {
                    vec![resolve(&from, id.as_deref().unwrap_or("latest")).await?]
                };
                let report = tsvault_backup::copy_backups(&from, &target, &ids).await?;
                if repo.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    println!(
                        "copied {} backup(s) to {} ({} already there): {} blob(s), {} bytes uploaded",
                        report.copied.len(),
                        target.url,
                        report.already_there.len(),
                        report.blobs_uploaded,
                        report.bytes_uploaded
                    );
                }
            }
            BackupCommand::Consolidate { repo, id } => {
                let r = Repository::open(&repo.options()?).await?;
                let id = resolve(&r, &id).await?;
                let m = tsvault_backup::consolidate(&r, &id).await?;
                if repo.json {
                    println!("{}", m.summary_json());
                } else {
                    println!(
                        "synthetic full backup {} of the image of {id}: {} files, {} bytes, nothing read from the source",
                        m.id,
                        m.files.len(),
                        m.logical_bytes
                    );
                }
            }
            BackupCommand::Prune {
                repo,
                keep_last,
                keep_hourly,
                keep_daily,
                keep_weekly,
                keep_monthly,
                dry_run,
            } => {
                let r = Repository::open(&repo.options()?).await?;
                let policy = tsvault_backup::KeepPolicy {
                    last: keep_last,
                    hourly: keep_hourly,
                    daily: keep_daily,
                    weekly: keep_weekly,
                    monthly: keep_monthly,
                };
                let report = tsvault_backup::prune(&r, &policy, dry_run).await?;
                if repo.json {
                    println!("{}", serde_json::to_string(&report)?);
                } else {
                    let verb = if dry_run { "would remove" } else { "removed" };
                    for (id, why) in &report.kept {
                        println!("keep    {id}  ({})", why.join(", "));
                    }
                    for id in &report.removed {
                        println!("{verb:<7} {id}");
                    }
                    println!(
                        "{} {} backup(s) and {} unreferenced blob(s), {} bytes; {} blob(s) kept",
                        verb,
                        report.removed.len(),
                        report.blobs_deleted,
                        report.bytes_deleted,
                        report.blobs_kept
                    );
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    tsvault_backup::failpoints_from_env();
    let rt = runtime()?;
    rt.block_on(async move {
        let r = Repository::open(&args.repo.options()?).await?;
        let bar = Bar::new(args.repo.json, "restoring");
        let filter = tsvault_backup::RestoreFilter {
            metric: args.metric.clone(),
            start_ms: args.start,
            end_ms: args.end,
        };
        let data_dir = match (&args.server, &args.data_dir) {
            (Some(url), _) => {
                let (m, report, counts) = tsvault_backup::restore_into_server(
                    &r,
                    Some(&args.backup),
                    url,
                    &filter,
                    &bar,
                )
                .await?;
                bar.0.finish_and_clear();
                if args.repo.json {
                    println!(
                        "{}",
                        json!({"restored": m.summary_json(), "server": url, "selected": report, "import": counts})
                    );
                } else {
                    println!(
                        "restored backup {} into {url}: {} series of {} metric(s), {} samples imported, {} left alone (the server had a sample at that time), {} beyond the server's retention",
                        m.id,
                        report.series,
                        report.metrics.len(),
                        counts.imported,
                        counts.skipped_existing,
                        counts.dropped_beyond_retention
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            (None, Some(dir)) => dir.clone(),
            (None, None) => anyhow::bail!("give --data-dir DIR or --server URL"),
        };
        if args.metric.is_some() || args.start.is_some() || args.end.is_some() {
            let (m, report) =
                tsvault_backup::restore_selected(&r, Some(&args.backup), &data_dir, &filter, &bar)
                    .await?;
            bar.0.finish_and_clear();
            if args.repo.json {
                println!(
                    "{}",
                    json!({"restored": m.summary_json(), "data_dir": data_dir, "selected": report})
                );
            } else {
                println!(
                    "restored {} series ({} samples) of {} metric(s) from backup {} into {}",
                    report.series,
                    report.samples,
                    report.metrics.len(),
                    m.id,
                    data_dir.display()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        let m = tsvault_backup::restore_data_dir(&r, Some(&args.backup), &data_dir, &bar).await?;
        bar.0.finish_and_clear();
        if args.repo.json {
            println!("{}", json!({"restored": m.summary_json(), "data_dir": data_dir}));
        } else {
            println!(
                "restored backup {} into {} ({} files, {} bytes)",
                m.id,
                data_dir.display(),
                m.files.len(),
                m.logical_bytes
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
