//! The `tsvault` command: `tsvault serve` runs the server; `tsvault backup` and
//! `tsvault restore` work with backup repositories; `tsvault check` verifies a stopped data
//! directory.

mod backup_cli;
mod check_cli;
mod config;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::config::ServeArgs;

/// tsvault: a time-series database that does not lose data.
#[derive(Parser)]
#[command(name = "tsvault", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (single node).
    Serve(Box<ServeArgs>),
    /// Backup repositories: init, create, list, show, verify.
    #[command(subcommand)]
    Backup(backup_cli::BackupCommand),
    /// Restore a backup into an empty data directory.
    Restore(backup_cli::RestoreArgs),
    /// Verify every checksum and invariant of a stopped data directory, naming each problem.
    Check(check_cli::CheckArgs),
}

fn main() -> anyhow::Result<ExitCode> {
    tune_allocator();
    let open_files_soft_limit = raise_open_files_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TSVAULT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // Fault points for tests (FAILPOINTS=...; only in builds with them).
            tsvault_backup::failpoints_from_env();
            let print = args.print_config;
            let config = args.resolve()?;
            if print {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&config::effective(&config))?
                );
                return Ok(ExitCode::SUCCESS);
            }
            // A quarter of what the process may open goes to segment files (opened on
            // demand, the least recently read closed first); the rest is for connections,
            // the WAL and backups. With the common soft limit of 1,024: 256.
            tsvault_storage::set_open_files_max((open_files_soft_limit / 4).clamp(64, 4096));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let stop = tsvault_server::Stop::default();
            rt.block_on(async {
                watch_signals(stop.clone());
                tsvault_server::serve(config, stop).await
            })
            .context("tsvault serve")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(cmd) => backup_cli::backup(cmd),
        Command::Restore(args) => backup_cli::restore(args),
        Command::Check(args) => check_cli::check(args),
    }
}

/// Tunes glibc's allocator for a server whose memory is mostly the head and query buffers.
/// - With its defaults, column-sized buffers above the (adaptive) mmap threshold were mapped
///   and unmapped, and the worker threads' heaps trimmed with madvise, on each query: a
///   quarter of a large query's time went to page faults. Buffers up to 32 MiB now come from
///   the heap, and a heap keeps up to 64 MiB of free space before it is trimmed.
/// - glibc makes up to 8 arenas per core, each keeping its own free memory; one per core
///   lowered peak memory during ingest by about a fifth at no measurable cost in speed.
///
/// Measurements in BENCHMARKS.md.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only changes allocator parameters; it is called before any other
        // thread exists, and glibc documents these parameters as changeable at any time.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Raises the soft limit on open files to the hard one (as most servers do) and returns the
/// soft limit in force. Not relied on: every open file has its own bound (segment files,
/// connections), so the server works at a soft limit of 1,024 too.
fn raise_open_files_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
}

/// Listens for SIGINT and SIGTERM: the first asks for a graceful stop, a second stops the
/// wait for requests under way (the flush still happens).
fn watch_signals(stop: tsvault_server::Stop) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    None
                }
            };
        for n in 0..2 {
            let which = tokio::select! {
                r = tokio::signal::ctrl_c() => match r {
                    Ok(()) => "SIGINT",
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGINT");
                        std::future::pending::<&str>().await
                    }
                },
                Some(()) = async {
                    match term.as_mut() {
                        Some(t) => t.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGTERM",
            };
            if n == 0 {
                tracing::info!(
                    "{which} received; shutting down (a second signal stops waiting for requests under way)"
                );
                stop.graceful.cancel();
            } else {
                tracing::warn!("{which} received again; no more waiting for requests under way");
                stop.now.cancel();
            }
        }
    });
}
