//! `tsvault check --data-dir DIR`: verifies every checksum and invariant of a stopped data
//! directory and names each problem (exit code 1 when there is one).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use tsvault_backup::Progress;

use crate::backup_cli::Bar;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The data directory (its server stopped).
    #[arg(long, env = "TSVAULT_DATA_DIR")]
    data_dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let bar = Bar::new(args.json, "checking");
    bar.start(dir_bytes(&args.data_dir));
    let report = tsvault_storage::check_data_dir(&args.data_dir, &mut |n| bar.advance(n))
        .with_context(|| format!("checking {}", args.data_dir.display()))?;
    bar.0.finish_and_clear();
    if args.json {
        println!(
            "{}",
            json!({"data_dir": args.data_dir, "ok": report.problems.is_empty(), "report": report})
        );
    } else {
        for p in &report.problems {
            println!("problem: {}: {}", p.file.display(), p.detail);
        }
        for n in &report.notes {
            println!("note: {}: {}", n.file.display(), n.detail);
        }
        println!(
            "{}: {} segment(s), {} block(s), {} samples in segments; {} WAL file(s), {} samples in the WAL; {} snapshot(s); {} bytes read; {} problem(s), {} note(s)",
            args.data_dir.display(),
            report.segments,
            report.blocks,
            report.segment_samples,
            report.wal_files,
            report.wal_samples,
            report.snapshots,
            report.bytes_read,
            report.problems.len(),
            report.notes.len()
        );
    }
    Ok(if report.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Bytes of the files under `dir` (for the progress bar; unreadable parts count nothing).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map_or(0, |m| m.len()),
            Err(_) => 0,
        })
        .sum()
}
