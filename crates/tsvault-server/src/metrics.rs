//! The `/metrics` endpoint's figures, in the Prometheus text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tsvault_storage::EngineStats;

type Label = Vec<(&'static str, &'static str)>;

/// Counters the server itself keeps; engine figures are read at scrape time.
pub(crate) struct Metrics {
    registry: Registry,
    pub samples_ingested: Family<Label, Counter>,
    pub lines_rejected: Counter,
    pub string_fields_skipped: Counter,
    pub not_stored_as_sent: Family<Label, Counter>,
    pub query_duration: Family<Label, Histogram>,
    engine: EngineGauges,
    backups: BackupGauges,
}

/// The server's own backups (`--backup-repo`).
#[derive(Default)]
struct BackupGauges {
    taken: Family<Label, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    last_duration: Gauge<f64, AtomicU64>,
}

#[derive(Default)]
struct EngineGauges {
    series: Gauge,
    head_samples: Gauge,
    head_bytes: Gauge,
    wal_bytes: Gauge,
    segments: Gauge,
    segment_bytes: Gauge,
    segment_samples: Gauge,
    flushes: Gauge<u64, AtomicU64>,
    compactions: Gauge<u64, AtomicU64>,
    dropped_retention: Gauge<u64, AtomicU64>,
    wal_fsyncs: Gauge<u64, AtomicU64>,
    write_stall_ms: Gauge<u64, AtomicU64>,
    body_bytes_held: Gauge<u64, AtomicU64>,
    open_segment_files: Gauge<u64, AtomicU64>,
    open_segment_files_max: Gauge<u64, AtomicU64>,
    segments_unverified: Gauge<u64, AtomicU64>,
    poisoned: Gauge,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::with_prefix("tsvault");
        let samples_ingested = Family::<Label, Counter>::default();
        registry.register(
            "samples_ingested",
            "Samples made durable, by protocol",
            samples_ingested.clone(),
        );
        let lines_rejected = Counter::default();
        registry.register(
            "lines_rejected",
            "Input lines or data points rejected as malformed",
            lines_rejected.clone(),
        );
        let string_fields_skipped = Counter::default();
        registry.register(
            "string_fields_skipped",
            "Line protocol string fields skipped (not stored)",
            string_fields_skipped.clone(),
        );
        let not_stored_as_sent = Family::<Label, Counter>::default();
        registry.register(
            "points_not_stored_as_sent",
            "Points accepted but stored changed, by reason: timestamp_truncated (digits finer than a millisecond cut), collapsed (overwritten by another point of its series in the same millisecond of one request), integer_rounded (an integer beyond 2^53 rounded to the nearest float)",
            not_stored_as_sent.clone(),
        );
        let query_duration = Family::<Label, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "query_duration_seconds",
            "Query latency, by endpoint",
            query_duration.clone(),
        );
        let engine = EngineGauges::default();
        registry.register("series", "Series known", engine.series.clone());
        registry.register(
            "head_samples",
            "Samples in memory not yet in segments",
            engine.head_samples.clone(),
        );
        registry.register(
            "head_bytes",
            "Bytes the head takes in memory: those samples, compressed, and each series' state (the head is flushed at --head-samples-max samples or 64 MiB of samples)",
            engine.head_bytes.clone(),
        );
        registry.register(
            "wal_bytes",
            "Bytes of write-ahead log on disk",
            engine.wal_bytes.clone(),
        );
        registry.register("segments", "Live segment files", engine.segments.clone());
        registry.register(
            "segment_bytes",
            "Bytes of live segment files",
            engine.segment_bytes.clone(),
        );
        registry.register(
            "segment_samples",
            "Samples in live segment files",
            engine.segment_samples.clone(),
        );
        registry.register(
            "flushes",
            "Head flushes since start",
            engine.flushes.clone(),
        );
        registry.register(
            "compactions",
            "Compactions since start",
            engine.compactions.clone(),
        );
        registry.register(
            "samples_dropped_retention",
            "Samples refused as older than the retention period",
            engine.dropped_retention.clone(),
        );
        registry.register(
            "write_stall_ms",
            "Milliseconds writes waited for a flush since start: the head was at twice its limit while a flush ran",
            engine.write_stall_ms.clone(),
        );
        registry.register(
            "wal_fsyncs",
            "Fsyncs of the write-ahead log since start",
            engine.wal_fsyncs.clone(),
        );
        registry.register(
            "request_body_bytes_held",
            "Bytes of request bodies held in memory now, across all requests (bounded by --max-buffered-bytes)",
            engine.body_bytes_held.clone(),
        );
        registry.register(
            "open_segment_files",
            "Segment files open now (opened on demand, the least recently read closed first)",
            engine.open_segment_files.clone(),
        );
        registry.register(
            "open_segment_files_max",
            "The most segment files kept open (a quarter of the open-files soft limit)",
            engine.open_segment_files_max.clone(),
        );
        registry.register(
            "segments_unverified",
            "Segments not yet read and verified whole since start (the start checks their footers; a background pass, or the first read, checks the rest)",
            engine.segments_unverified.clone(),
        );
        registry.register(
            "write_refused",
            "1 when writes are refused after a failed fsync or write",
            engine.poisoned.clone(),
        );
        let backups = BackupGauges::default();
        registry.register(
            "backups",
            "Backups the server took itself (--backup-repo), by result (ok, error)",
            backups.taken.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "When the newest backup the server took itself finished (0: none yet)",
            backups.last_success.clone(),
        );
        registry.register(
            "backup_last_duration_seconds",
            "How long the newest backup the server took itself took",
            backups.last_duration.clone(),
        );
        Metrics {
            registry,
            samples_ingested,
            lines_rejected,
            string_fields_skipped,
            not_stored_as_sent,
            query_duration,
            engine,
            backups,
        }
    }

    /// A backup finished at `finished_ms` (since the epoch), after `took`.
    pub(crate) fn backup_succeeded(&self, finished_ms: i64, took: std::time::Duration) {
        let b = &self.backups;
        b.taken.get_or_create(&vec![("result", "ok")]).inc();
        b.last_success.set(finished_ms as f64 / 1000.0);
        b.last_duration.set(took.as_secs_f64());
    }

    /// A backup failed.
    pub(crate) fn backup_failed(&self) {
        self.backups
            .taken
            .get_or_create(&vec![("result", "error")])
            .inc();
    }

    /// The text exposition, with engine figures as of now.
    pub(crate) fn render(
        &self,
        stats: &EngineStats,
        poisoned: bool,
        body_bytes_held: u64,
    ) -> String {
        let g = &self.engine;
        g.series.set(stats.series as i64);
        g.head_samples.set(stats.head_samples as i64);
        g.head_bytes.set(stats.head_bytes as i64);
        g.wal_bytes.set(stats.wal_bytes as i64);
        g.segments.set(stats.segments as i64);
        g.segment_bytes.set(stats.segment_bytes as i64);
        g.segment_samples.set(stats.segment_samples as i64);
        g.flushes.set(stats.flushes);
        g.compactions.set(stats.compactions);
        g.dropped_retention.set(stats.samples_dropped_retention);
        g.wal_fsyncs.set(stats.wal_fsyncs);
        g.write_stall_ms.set(stats.write_stall_ms);
        g.body_bytes_held.set(body_bytes_held);
        g.open_segment_files.set(stats.open_segment_files);
        g.open_segment_files_max.set(stats.open_segment_files_max);
        g.segments_unverified.set(stats.segments_unverified);
        g.poisoned.set(i64::from(poisoned));
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}
