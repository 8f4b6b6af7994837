//! Selective restore: only the series of the chosen metrics and only the samples in a time
//! range. The backup is restored whole into a scratch directory beside the target, read
//! through the engine one metric and one partition at a time (bounded memory), written into
//! a new data directory beside the target, which is renamed into place only when complete.

use std::path::Path;

use tsvault_model::{Point, ReadCap};
use tsvault_storage::{Engine, EngineConfig, ImportOutcome};

use crate::data_dir::{Progress, restore_data_dir};
use crate::error::{Error, Result, panicked};
use crate::manifest::BackupManifest;
use crate::repo::Repository;
use crate::source::ServerClient;

/// What to restore: metrics matching `metric` (OpenTSDB's wildcard filter: `*` matches any
/// text, case-insensitive; None is every metric), samples in `[start_ms, end_ms]`.
#[derive(Debug, Clone, Default)]
pub struct RestoreFilter {
    pub metric: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

impl RestoreFilter {
    /// Refuses a range that ends before it starts.
    pub(crate) fn check(&self) -> Result<()> {
        match (self.start_ms, self.end_ms) {
            (Some(s), Some(e)) if s > e => Err(Error::Invalid(format!(
                "--start ({s} ms) is after --end ({e} ms)"
            ))),
            _ => Ok(()),
        }
    }
}

/// What a selective restore wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SelectiveReport {
    pub metrics: Vec<String>,
    pub series: u64,
    pub samples: u64,
}

/// Samples handed on per batch.
const WRITE_BATCH: usize = 100_000;

/// An engine error while restoring, with what was being done.
pub(crate) fn engine_err(what: &str) -> impl Fn(tsvault_storage::Error) -> Error {
    let what = what.to_string();
    move |e| Error::Invalid(format!("{what}: {e}"))
}

/// Hands the samples of `source` that `filter` selects to `sink` in batches of at most
/// `WRITE_BATCH`, a metric and a partition at a time (memory stays bounded by one
/// partition of one metric). Flushes `source` first, so that partitions bound every read.
pub(crate) fn for_each_selected(
    source: &Engine,
    filter: &RestoreFilter,
    mut sink: impl FnMut(Vec<Point>) -> Result<()>,
) -> Result<SelectiveReport> {
    source
        .flush()
        .map_err(engine_err("reading the restored backup"))?;
    let mut windows: Vec<(i64, i64)> = source
        .segments()
        .iter()
        .map(|s| (s.partition_start_ms, s.partition_end_ms))
        .collect();
    windows.sort_unstable();
    windows.dedup();
    let lo = filter.start_ms.unwrap_or(i64::MIN);
    let hi = filter.end_ms.unwrap_or(i64::MAX);
    let mut report = SelectiveReport {
        metrics: Vec::new(),
        series: 0,
        samples: 0,
    };
    for metric in source.metric_names() {
        if filter
            .metric
            .as_deref()
            .is_some_and(|p| !tsvault_query::iwildcard_matches(p, &metric))
        {
            continue;
        }
        let mut series = std::collections::HashSet::new();
        let mut batch: Vec<Point> = Vec::new();
        for &(w_start, w_end) in &windows {
            let (from, to) = (w_start.max(lo), (w_end - 1).min(hi));
            if from > to {
                continue;
            }
            let selected = source
                .select(&metric, &|_| true, (from, to), ReadCap::NONE)
                .map_err(engine_err("reading the restored backup"))?;
            for (key, samples) in selected {
                series.insert(key.clone());
                for s in samples {
                    batch.push(Point {
                        key: key.clone(),
                        ts_ms: s.ts_ms,
                        value: s.value,
                    });
                    if batch.len() >= WRITE_BATCH {
                        report.samples += batch.len() as u64;
                        sink(std::mem::take(&mut batch))?;
                    }
                }
            }
        }
        if !batch.is_empty() {
            report.samples += batch.len() as u64;
            sink(batch)?;
        }
        if !series.is_empty() {
            report.series += series.len() as u64;
            report.metrics.push(metric);
        }
    }
    Ok(report)
}

/// Restores the part of backup `id` that `filter` selects into `target` (absent or empty).
pub async fn restore_selected(
    repo: &Repository,
    id: Option<&str>,
    target: &Path,
    filter: &RestoreFilter,
    progress: &dyn Progress,
) -> Result<(BackupManifest, SelectiveReport)> {
    filter.check()?;
    if target.exists()
        && std::fs::read_dir(target)
            .map_err(Error::io("list", target))?
            .next()
            .is_some()
    {
        return Err(Error::Invalid(format!(
            "{} is not empty; restore into an empty or new directory",
            target.display()
        )));
    }
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
    // Both beside the target, so the final rename stays on one file system; removed on drop.
    let scratch = tempfile::Builder::new()
        .prefix(".tsvault-restore-scratch-")
        .tempdir_in(&parent)
        .map_err(Error::io("create a scratch directory in", &parent))?;
    let building = tempfile::Builder::new()
        .prefix(".tsvault-restore-building-")
        .tempdir_in(&parent)
        .map_err(Error::io("create a directory in", &parent))?;
    let whole = scratch.path().join("data");
    let manifest = restore_data_dir(repo, id, &whole, progress).await?;

    let source = Engine::open(EngineConfig::new(&whole))
        .map_err(engine_err("opening the restored backup"))?;
    let dest_dir = building.path().join("data");
    let dest = Engine::open(EngineConfig::new(&dest_dir))
        .map_err(engine_err("creating the new data directory"))?;
    let report = for_each_selected(&source, filter, |batch| {
        dest.write(&batch)
            .map(|_| ())
            .map_err(engine_err("writing the new data directory"))
    })?;
    source.close_without_flush();
    dest.close()
        .map_err(engine_err("finishing the new data directory"))?;
    if report.samples == 0 {
        return Err(Error::Invalid(format!(
            "nothing in backup {} matches the metric and time range given",
            manifest.id
        )));
    }
    if target.exists() {
        std::fs::remove_dir(target).map_err(Error::io("replace the empty directory", target))?;
    }
    std::fs::rename(&dest_dir, target).map_err(Error::io("rename into place", target))?;
    crate::data_dir::sync_dir(&parent)?;
    Ok((manifest, report))
}

/// One import body: newline-delimited JSON, one line per run of samples of one series.
fn import_body(points: &[Point]) -> Vec<u8> {
    let mut out = Vec::with_capacity(points.len() * 32);
    let mut rest = points;
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|p| p.key == first.key).count();
        let samples: Vec<(i64, f64)> = rest[..n].iter().map(|p| (p.ts_ms, p.value)).collect();
        let line = serde_json::json!({ "series": first.key.as_str(), "samples": samples });
        serde_json::to_writer(&mut out, &line).expect("import lines serialize");
        out.push(b'\n');
        rest = &rest[n..];
    }
    out
}

/// Restores the part of backup `id` that `filter` selects into the running server at `url`:
/// the backup is restored into a scratch directory (under the system's temporary directory,
/// `TMPDIR`), read through the engine a metric and a partition at a time, and sent to the
/// server's import API, which merges it and never overwrites a sample it already has.
pub async fn restore_into_server(
    repo: &Repository,
    id: Option<&str>,
    url: &str,
    filter: &RestoreFilter,
    progress: &dyn Progress,
) -> Result<(BackupManifest, SelectiveReport, ImportOutcome)> {
    filter.check()?;
    let client = ServerClient::new(url)?;
    let scratch = tempfile::Builder::new()
        .prefix("tsvault-restore-")
        .tempdir()
        .map_err(Error::io(
            "create a scratch directory in",
            std::env::temp_dir(),
        ))?;
    let whole = scratch.path().join("data");
    let manifest = restore_data_dir(repo, id, &whole, progress).await?;
    // The engine is read on a blocking thread; bodies come over a short queue (bounded
    // memory) to be sent in order.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let filter = filter.clone();
    let reader = tokio::task::spawn_blocking(move || -> Result<SelectiveReport> {
        let source = Engine::open(EngineConfig::new(&whole))
            .map_err(engine_err("opening the restored backup"))?;
        let report = for_each_selected(&source, &filter, |batch| {
            tx.blocking_send(import_body(&batch))
                .map_err(|_| Error::Invalid("the import stopped".into()))
        });
        source.close_without_flush();
        report
    });
    let mut counts = ImportOutcome::default();
    let mut failed = None;
    while let Some(body) = rx.recv().await {
        match client.import(body).await {
            Ok(c) => {
                counts.imported += c.imported;
                counts.skipped_existing += c.skipped_existing;
                counts.dropped_beyond_retention += c.dropped_beyond_retention;
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    drop(rx);
    let report = reader.await;
    if let Some(e) = failed {
        return Err(e);
    }
    let report =
        report.map_err(|e| panicked(&format!("the restored backup {}", manifest.id), e))??;
    if report.samples == 0 {
        return Err(Error::Invalid(format!(
            "nothing in backup {} matches the metric and time range given",
            manifest.id
        )));
    }
    Ok((manifest, report, counts))
}
