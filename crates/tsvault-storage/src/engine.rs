//! The storage engine: recovery, the write path, flush, compaction, retention and reads.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, RwLock};
use rayon::prelude::*;
use tsvault_model::{Point, ReadCap, Sample, SeriesKey};

use crate::commit::Wal;
use crate::commit::{self, CommitRequest};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, sync_dir};
use crate::head::{Head, SeriesHead, normalize};
use crate::index::{Registry, SeriesId};
use crate::live_segment::{LoadedSegment, index_segment, load_segments, remove_stray_files};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::segment::{Segment, SegmentInfo, segment_file_name, write_segment};
use crate::series_file::{self, SeriesFile, SeriesFileMark};
use crate::snapshot::{self, SNAPSHOTS_DIR, SnapshotFile, SnapshotInfo};
use crate::wal::{
    NextWal, WalEnd, check_predecessors, describe_missing, list_wal_files, missing_wal_files,
    newest_path, read_newest, read_wal_file, truncate_torn_tail, wal_file_name,
};

/// When a write is made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Fsync before every acknowledgement (group commit batches concurrent writers).
    Always,
    /// Fsync at most every `interval_ms`: acknowledged writes of the last interval may be lost
    /// on power failure. Only when the user asks for it.
    Interval {
        /// Longest time between fsyncs.
        interval_ms: u64,
    },
}

/// How the engine is set up. Every field has a working default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The data directory (created when missing).
    pub data_dir: PathBuf,
    /// When writes are made durable.
    pub fsync: FsyncMode,
    /// Width of a time partition (one segment file per partition and flush). `None`: the
    /// width the data directory already uses, or [`DEFAULT_SEGMENT_DURATION_MS`] for a new
    /// one. A width different from the directory's is refused.
    pub segment_duration_ms: Option<i64>,
    /// Samples older than this (relative to the clock) are dropped; None keeps everything.
    pub retention_ms: Option<i64>,
    /// A WAL file is closed and a new one started past this size.
    pub wal_segment_bytes_max: u64,
    /// The head is flushed to segments when it holds more samples than this...
    pub head_samples_max: usize,
    /// ...or its samples take more bytes than this (samples that compress badly:
    /// full-precision floats). Each series' own state in the head (about 130 bytes) is not
    /// counted: a flush does not free it while the series is written.
    pub head_bytes_max: usize,
    /// The head is flushed at least this often when it holds anything.
    pub flush_interval_ms: u64,
    /// A partition with this many segments has its newer, smaller ones merged even when
    /// they are small beside its largest (see [`compaction_pick`]).
    pub compaction_segments_min: usize,
    /// A partition no flush has written to for this long has the segments newer than its
    /// largest merged into one (see [`compaction_pick`]).
    pub compaction_cold_ms: i64,
    /// At start, move damaged files aside and serve the rest instead of refusing to start.
    pub quarantine_corrupt: bool,
    /// The clock, in milliseconds since the epoch (injected so retention can be tested).
    pub clock: fn() -> i64,
    /// Snapshots older than this are released by the maintenance thread: the snapshot of an
    /// online backup that was killed (and so never released it) holds disk space until then.
    pub snapshot_max_age_ms: i64,
    /// Most snapshots at once: each holds hard links (disk space once its files are
    /// replaced) and started a WAL file; one more is refused until one is released.
    pub snapshots_max: usize,
}

/// The system clock in milliseconds since the Unix epoch.
pub fn system_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl EngineConfig {
    /// The defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        EngineConfig {
            data_dir: data_dir.into(),
            fsync: FsyncMode::Always,
            segment_duration_ms: None,
            retention_ms: None,
            wal_segment_bytes_max: 64 << 20,
            head_samples_max: 16 << 20,
            head_bytes_max: 64 << 20,
            flush_interval_ms: 30 * 60 * 1000,
            compaction_segments_min: 4,
            compaction_cold_ms: 4 * 3600 * 1000,
            quarantine_corrupt: false,
            clock: system_clock_ms,
            snapshot_max_age_ms: 24 * 3600 * 1000,
            snapshots_max: 16,
        }
    }
}

/// A file moved aside at start because it failed its checks, and what it held.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantinedFile {
    /// Where the file was.
    pub file: PathBuf,
    /// Where it is now.
    pub moved_to: PathBuf,
    /// Which check failed.
    pub reason: String,
    /// What data is no longer served because of it.
    pub lost: String,
}

/// Counters and gauges for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub samples_written: AtomicU64,
    pub flushes: AtomicU64,
    pub compactions: AtomicU64,
    pub samples_dropped_retention: AtomicU64,
    pub wal_fsyncs: AtomicU64,
    /// Time writes waited for a flush, the head being full (milliseconds).
    pub write_stall_ms: AtomicU64,
}

/// A point-in-time view of the engine's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineStats {
    /// Samples acknowledged since start.
    pub samples_written: u64,
    /// Series known.
    pub series: u64,
    /// Samples in memory (head), including any being flushed.
    pub head_samples: u64,
    /// Bytes the head takes: those samples, compressed, and each series' state.
    pub head_bytes: u64,
    /// Time writes waited for a flush since start, the head being full (milliseconds).
    pub write_stall_ms: u64,
    /// Bytes in WAL files on disk.
    pub wal_bytes: u64,
    /// Live segments.
    pub segments: u64,
    /// Bytes of live segments.
    pub segment_bytes: u64,
    /// Samples in live segments.
    pub segment_samples: u64,
    /// Flushes since start.
    pub flushes: u64,
    /// Compactions since start.
    pub compactions: u64,
    /// Samples refused because they were older than the retention period.
    pub samples_dropped_retention: u64,
    /// Fsyncs of the WAL since start.
    pub wal_fsyncs: u64,
    /// Segment files open now (in the process), and the most that may be.
    pub open_segment_files: u64,
    pub open_segment_files_max: u64,
    /// Live segments not yet read and verified whole since start (checked from their
    /// footer only; see `Engine::wait_verified`).
    pub segments_unverified: u64,
}

/// What an import did (also the answer of the server's import API).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportOutcome {
    /// Samples written.
    pub imported: usize,
    /// Samples left out because the series already had a sample at that timestamp.
    pub skipped_existing: usize,
    /// Samples left out because the import itself held an earlier one of the same series at
    /// the same timestamp (the first is kept).
    #[serde(default)]
    pub duplicates_in_request: usize,
    /// Samples refused because they are older than the retention period.
    pub dropped_beyond_retention: usize,
}

/// What a write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Samples made durable.
    pub written: usize,
    /// Samples refused because they are older than the retention period.
    pub dropped_beyond_retention: usize,
}

pub(crate) struct State {
    pub live: Head,
    pub frozen: Option<Arc<Head>>,
    pub segments: Arc<Vec<Arc<LoadedSegment>>>,
}

pub(crate) struct Inner {
    pub config: EngineConfig,
    /// The partition width in use: the directory's, or the configured one for a new directory.
    pub segment_duration_ms: i64,
    pub wal_dir: PathBuf,
    seg_dir: PathBuf,
    pub registry: RwLock<Registry>,
    pub state: RwLock<State>,
    /// The durable manifest; holding this lock serializes flush, compaction and retention.
    manifest: Mutex<Manifest>,
    /// The series file, appended to under the manifest's lock before a manifest is stored.
    /// None until it could be written (a start on a full disk that had to rebuild it).
    series_file: Mutex<Option<SeriesFile>>,
    poisoned: Mutex<Option<String>>,
    poisoned_flag: AtomicBool,
    /// Why the last write or flush found the disk full, and the bytes free then; cleared by
    /// the next that succeeds, or once 64 MiB more are free.
    disk_full: Mutex<Option<(String, u64)>>,
    /// Damaged files a read found while serving (each named once, with what was found).
    corruption_found: Mutex<Vec<(PathBuf, String)>>,
    pub stats: Stats,
    quarantined: Vec<QuarantinedFile>,
    stop: Mutex<bool>,
    stop_cv: Condvar,
    /// Signalled when a flush ends (writes held back by a full head wait for it).
    flush_done: Mutex<()>,
    flush_done_cv: Condvar,
    /// Whether the verification after start is over, and its signal.
    verified: Mutex<bool>,
    verified_cv: Condvar,
    /// The data directory lock, held until shutdown completes.
    lock: Mutex<Option<File>>,
    /// When (clock ms) a flush last wrote into each partition, by partition start; a
    /// partition not in it counts as written when the engine opened.
    partition_written_ms: Mutex<HashMap<i64, i64>>,
    opened_ms: i64,
    /// Snapshot descriptions read and checked once, by id: a backup asks for a snapshot's
    /// files one after another, and reading and checking the description for each was a
    /// tenth of the server's work in a backup of 120 segments. Forgotten when the snapshot
    /// is released or expires.
    snapshot_infos: Mutex<HashMap<String, Arc<SnapshotInfo>>>,
    /// Held while a snapshot is taken (they are counted against `snapshots_max`).
    snapshot_taking: Mutex<()>,
}

impl Inner {
    pub(crate) fn poison(&self, e: &Error) {
        tracing::error!(error = %e, "write path failed; refusing further writes until restart");
        let mut p = self.poisoned.lock();
        if p.is_none() {
            *p = Some(e.to_string());
        }
        self.poisoned_flag.store(true, Ordering::Release);
    }

    /// Whether `head` is at its limit of samples or bytes (and is to be flushed).
    pub(crate) fn head_full(&self, head: &Head) -> bool {
        head.samples() >= self.config.head_samples_max || head.bytes() >= self.config.head_bytes_max
    }

    /// Backpressure, in the writing thread before its write is queued: once the live head
    /// holds twice its limits (of samples or bytes), a write waits until a flush has taken
    /// the head (a store of many series can flush, or compact, slower than it ingests, and
    /// the head would grow without bound). Clients see slower acknowledgements; a closing,
    /// poisoned or full store lets the write through to its own answer.
    pub(crate) fn wait_while_head_over(&self) {
        let over = || {
            let state = self.state.read();
            state.live.samples() >= self.config.head_samples_max.saturating_mul(2)
                || state.live.bytes() >= self.config.head_bytes_max.saturating_mul(2)
        };
        if !over() {
            return;
        }
        self.wake_maintenance();
        let started = Instant::now();
        let mut done = self.flush_done.lock();
        while over()
            && !*self.stop.lock()
            && self.poisoned().is_none()
            && self.disk_full.lock().is_none()
        {
            // Woken when a flush takes the head or ends; the timeout only re-checks.
            self.flush_done_cv
                .wait_for(&mut done, Duration::from_millis(100));
        }
        self.stats
            .write_stall_ms
            .fetch_add(started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Wakes writes waiting for a flush (see [`Inner::wait_while_head_over`]).
    pub(crate) fn flush_ended(&self) {
        let _done = self.flush_done.lock();
        self.flush_done_cv.notify_all();
    }

    /// Wakes the maintenance thread early (the head passed its limit).
    pub(crate) fn wake_maintenance(&self) {
        self.stop_cv.notify_all();
    }

    /// Records what a read found damaged, once per file (the list is bounded).
    pub(crate) fn note_corruption(&self, e: &Error) {
        if let Error::Corrupt { path, detail } = e {
            let mut found = self.corruption_found.lock();
            if found.len() < 100 && !found.iter().any(|(p, _)| p == path) {
                tracing::error!(file = %path.display(), %detail, "a read found a damaged file; it is not served");
                found.push((path.clone(), detail.clone()));
            }
        }
    }

    /// Records whether a write or flush found the disk full.
    pub(crate) fn note_disk_full<T>(&self, r: &Result<T>) {
        match r {
            Err(e) if e.is_disk_full() => {
                *self.disk_full.lock() = Some((e.to_string(), free_bytes(&self.config.data_dir)))
            }
            Ok(_) => {
                let mut d = self.disk_full.lock();
                if d.is_some() {
                    *d = None;
                }
            }
            Err(_) => {}
        }
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        if !self.poisoned_flag.load(Ordering::Acquire) {
            return None;
        }
        self.poisoned.lock().clone()
    }
}

/// The single-node storage engine.
pub struct Engine {
    inner: Arc<Inner>,
    commit_tx: SyncSender<CommitRequest>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

/// Most write requests waiting for the commit thread.
const COMMIT_QUEUE_MAX: usize = 1024;
/// The partition width of a new data directory: 6 hours. Wider partitions hold more samples
/// per block (2,160 at a 10 s interval), which compress better and decode faster per sample;
/// narrower ones rewrite less at each compaction and drop data at a finer grain under
/// retention. See BENCHMARKS.md for the measurements behind the choice.
pub const DEFAULT_SEGMENT_DURATION_MS: i64 = 6 * 3600 * 1000;

/// A sample with its series id, as the commit thread takes it.
type IdSample = (SeriesId, i64, f64);

/// One series a select returns, with its samples.
type SelectedSeries = (SeriesKey, Vec<Sample>);

/// A select reads series in parallel from this many on; below it, waking threads costs
/// more than it saves.
const PARALLEL_SERIES_MIN: usize = 16;

/// A file `tsvault restore` keeps in a data directory while it writes it (holding the backup
/// id); the engine refuses to open a directory that has one.
pub const RESTORE_MARKER: &str = "RESTORING";

/// How often the maintenance thread releases expired snapshots.
const SNAPSHOT_EXPIRY_EVERY: Duration = Duration::from_secs(60);

/// How often the maintenance thread looks for partitions gone cold (a flush looks too).
const COMPACTION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// How long the maintenance thread waits after a compaction found the disk full.
const COMPACTION_BACKOFF: Duration = Duration::from_secs(600);

/// Most missing WAL files `--quarantine-corrupt` stands empty files in for: more than a gap
/// this directory could have (a damaged record of the newest file, most likely).
const MISSING_WAL_FILES_FILLED_MAX: u64 = 10_000;

/// Space freed after a disk was found full from which it counts as having room again (a
/// 64th of a smaller file system: 16 MiB of a 1 GiB one, a quarter MiB of a 16 MiB one).
const DISK_ROOM_BYTES: u64 = 64 << 20;

/// Bytes free to an unprivileged writer on the file system of `path` (0 when unknown).
fn free_bytes(path: &Path) -> u64 {
    disk_space(path).0
}

/// The space freed after a full disk from which the file system of `path` has room again
/// (the whole [`DISK_ROOM_BYTES`] when its size is unknown).
fn disk_room_bytes(path: &Path) -> u64 {
    match disk_space(path).1 {
        0 => DISK_ROOM_BYTES,
        size => DISK_ROOM_BYTES.min(size / 64),
    }
}

/// Bytes free to an unprivileged writer on the file system of `path`, and its size (0 when
/// unknown).
fn disk_space(path: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let block = st.f_frsize as u64;
    (
        (st.f_bavail as u64).saturating_mul(block),
        (st.f_blocks as u64).saturating_mul(block),
    )
}

/// A series' samples in the frozen and the live head, compressed.
type HeadCopy = [Option<SeriesHead>; 2];

/// Lowers the calling thread's CPU priority (nice 10): background verification gives way
/// to writes and queries. Best effort.
fn lower_thread_priority() {
    // SAFETY: plain syscalls on the calling thread's id.
    unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10);
    }
}

/// How often the maintenance thread looks for work.
const MAINTENANCE_TICK_MS: u64 = 1000;

impl Engine {
    /// Opens (or creates) the data directory: verifies the manifest and every segment,
    /// replays the WAL (cutting a torn tail), and starts the commit and maintenance threads.
    pub fn open(config: EngineConfig) -> Result<Self> {
        // A slow start (a long WAL replay), for tests of what the server answers meanwhile.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("engine-open");
        if config.segment_duration_ms.is_some_and(|d| d <= 0) {
            return Err(Error::Config("segment duration must be positive".into()));
        }
        if config.retention_ms.is_some_and(|r| r <= 0) {
            return Err(Error::Config("retention must be positive".into()));
        }
        let dir = config.data_dir.clone();
        let marker = dir.join(RESTORE_MARKER);
        if marker.exists() {
            let backup = fs::read_to_string(&marker).unwrap_or_default();
            return Err(Error::Config(format!(
                "{} holds an interrupted restore of backup {}; run the same `tsvault restore` again to finish it before starting a server on it",
                dir.display(),
                backup.trim()
            )));
        }
        create_dir_durable(&dir)?;
        let lock = lock_data_dir(&dir)?;
        crate::powercut::start(&dir);
        let wal_dir = dir.join("wal");
        let seg_dir = dir.join("segments");
        for d in [&wal_dir, &seg_dir] {
            create_dir_durable(d)?;
        }
        let mut quarantined = Vec::new();
        let mut registry = Registry::default();

        let mut rebuilt = false;
        let (mut manifest, segments, series_file) = load_segments(
            &config,
            &dir,
            &seg_dir,
            &mut registry,
            &mut quarantined,
            &mut rebuilt,
        )?;
        if manifest.segment_duration_ms == 0 {
            // Not recorded (a rebuilt manifest): the segments' own width, if they agree.
            let mut widths = manifest
                .segments
                .iter()
                .map(|s| s.partition_end_ms - s.partition_start_ms);
            if let Some(w) = widths.next() {
                if widths.any(|x| x != w) {
                    return Err(Error::Config(format!(
                        "the segments in {} have different partition widths; this data directory cannot be opened safely",
                        dir.display()
                    )));
                }
                manifest.segment_duration_ms = w;
            }
        }
        match (manifest.segment_duration_ms, config.segment_duration_ms) {
            (0, asked) => {
                manifest.segment_duration_ms = asked.unwrap_or(DEFAULT_SEGMENT_DURATION_MS);
            }
            (d, Some(asked)) if d != asked => {
                return Err(Error::Config(format!(
                    "the data directory {} holds segments {d} ms wide; the configured segment duration is {asked} ms. Changing it is not supported: start with --segment-duration {d}ms, or without the flag",
                    dir.display(),
                )));
            }
            _ => {}
        }
        let segment_duration_ms = manifest.segment_duration_ms;
        remove_stray_files(&seg_dir, &manifest)?;
        // Snapshots interrupted while being taken are removed; complete ones stay.
        snapshot::remove_partial(&dir)?;

        // Every WAL file replay needs must be there (see `missing_wal_files`).
        let manifest_on_disk = !rebuilt && manifest.wal_start >= 1;
        let newest_recorded = match read_newest(&wal_dir) {
            Ok(n) => n,
            Err(e) if config.quarantine_corrupt => {
                let path = newest_path(&wal_dir);
                quarantined.push(quarantine(
                    &dir,
                    &path,
                    e.to_string(),
                    "nothing: the record only helps find a missing newest WAL file".into(),
                )?);
                None
            }
            Err(e) => return Err(e),
        };
        let stored_start = if manifest_on_disk {
            Some(manifest.wal_start)
        } else if !rebuilt {
            Some(1)
        } else {
            None
        };
        let numbers: Vec<u64> = list_wal_files(&wal_dir)?
            .into_iter()
            .map(|(n, _)| n)
            .filter(|&n| n >= manifest.wal_start)
            .collect();
        let missing = missing_wal_files(&numbers, stored_start, manifest_on_disk, newest_recorded);
        if !missing.is_empty() {
            let first = wal_dir.join(wal_file_name(missing[0].0));
            let detail = describe_missing(&missing);
            let count: u64 = missing.iter().map(|(a, b)| b - a + 1).sum();
            if !config.quarantine_corrupt || count > MISSING_WAL_FILES_FILLED_MAX {
                return Err(Error::Corrupt {
                    path: first,
                    detail: format!(
                        "{detail}; start with --quarantine-corrupt to serve the rest{}",
                        if count > MISSING_WAL_FILES_FILLED_MAX {
                            " (not offered here: too many files are missing for a gap this data directory could have)"
                        } else {
                            ""
                        }
                    ),
                });
            }
            // Served without them: each missing file is made an empty one, so the numbering
            // holds again and the next start does not report the same loss.
            for &(a, b) in &missing {
                for n in a..=b {
                    fsutil::write_synced(
                        &wal_dir.join(wal_file_name(n)),
                        &crate::wal::stand_in_file(),
                    )?;
                }
            }
            sync_dir(&wal_dir)?;
            quarantined.push(QuarantinedFile {
                file: first.clone(),
                moved_to: first,
                reason: detail,
                lost:
                    "the acknowledged writes those WAL files held; empty files stand in their place"
                        .into(),
            });
        }

        // Replay the WAL into the head.
        let mut head = Head::new(segment_duration_ms);
        let mut predecessors: HashMap<u64, (Option<(u64, u64)>, bool)> = HashMap::new();
        let wal_files = list_wal_files(&wal_dir)?;
        let last_number = wal_files.last().map_or(0, |(n, _)| *n);
        for (n, path) in &wal_files {
            if *n < manifest.wal_start {
                fsutil::remove_file(path)?;
                continue;
            }
            let mut ids: HashMap<u32, SeriesId> = HashMap::new();
            let mut bad_id = None;
            let mut predecessor = None;
            let mut stand_in = false;
            let end = read_wal_file(path, |batch| {
                if batch.predecessor.is_some() {
                    predecessor = batch.predecessor;
                }
                stand_in |= batch.stand_in;
                for (wal_id, key) in batch.defs {
                    ids.insert(wal_id, registry.get_or_insert(&key));
                }
                for (wal_id, ts, v) in batch.samples {
                    match ids.get(&wal_id) {
                        Some(&id) => head.append(id, ts, v),
                        None => bad_id = Some(wal_id),
                    }
                }
                Ok(())
            })?;
            // Only the newest file can end in a torn write: every older one was fsynced whole
            // before the next was created (and a cut tail is fsynced before the start goes
            // on). Damage at the end of an older file is corruption of fsynced data.
            // The newest file's header (and predecessor record) were fsynced when it was
            // created, before the record of the newest file named it: losing them is damage.
            let file_len = fs::metadata(path).ctx("stat", path)?.len();
            let durable = crate::wal::durable_prefix(
                *n,
                newest_recorded,
                wal_files.first().is_some_and(|(first, _)| first < n),
            );
            let end = match end {
                WalEnd::TornTail { valid_len } if *n != last_number => WalEnd::Corrupt {
                    offset: valid_len,
                    detail: format!(
                        "damaged record at byte {valid_len} at the end of a WAL file that is not the newest; it was fsynced whole, so this is corruption, not a torn write"
                    ),
                },
                // Shorter than what was fsynced at its creation: no crash does that.
                WalEnd::TornTail { valid_len } if valid_len < durable && !stand_in => {
                    WalEnd::Corrupt {
                        offset: valid_len,
                        detail: format!(
                            "the newest WAL file keeps {valid_len} whole bytes of the {durable} fsynced when it was created: it was cut, not torn by a crash"
                        ),
                    }
                }
                WalEnd::Clean if file_len < durable && !stand_in => WalEnd::Corrupt {
                    offset: file_len,
                    detail: format!(
                        "the newest WAL file is {file_len} bytes, shorter than the {durable} fsynced when it was created: it was cut, not torn by a crash"
                    ),
                },
                end => end,
            };
            let damage_in_newest = *n == last_number && matches!(end, WalEnd::Damaged { .. });
            if let Some(id) = bad_id {
                return Err(Error::Corrupt {
                    path: path.clone(),
                    detail: format!("sample refers to undefined series id {id}"),
                });
            }
            match end {
                WalEnd::Clean => {}
                WalEnd::TornTail { valid_len } => {
                    tracing::warn!(file = %path.display(), valid_len, "cutting torn WAL tail at the last valid record");
                    if valid_len < crate::wal::WAL_MAGIC.len() as u64 {
                        fsutil::remove_file(path)?;
                    } else {
                        truncate_torn_tail(path, valid_len)?;
                    }
                }
                WalEnd::Damaged { offset, detail } | WalEnd::Corrupt { offset, detail } => {
                    // In the newest file, a damaged record (followed by valid ones, or whole at
                    // the end) is what a power cut leaves when unsynced pages reach the disk out
                    // of order: fdatasync made everything before an acknowledged record
                    // durable, so nothing from the damage on was acknowledged (unless the disk
                    // itself rotted, which is why a copy is kept and the cut reported).
                    // Anything else, and any damage in an older file (fsynced whole), needs
                    // --quarantine-corrupt.
                    let newest = damage_in_newest;
                    if !newest && !config.quarantine_corrupt {
                        return Err(Error::Corrupt {
                            path: path.clone(),
                            detail,
                        });
                    }
                    let lost = if newest {
                        format!(
                            "WAL records from byte {offset} on of the newest WAL file, cut at start; earlier records were replayed and kept. After a power cut, what is cut was never acknowledged (unsynced pages reach the disk out of order); if the disk damaged records already written, acknowledged writes are among them: the whole file is kept in quarantine/"
                        )
                    } else {
                        format!(
                            "WAL records from byte {offset} on; earlier records of the file were replayed and kept"
                        )
                    };
                    // Keep the replayed prefix in place (it may hold acknowledged writes not
                    // yet in any segment); set a copy of the whole file aside.
                    quarantined.push(quarantine_copy(&dir, path, detail, lost)?);
                    if offset < crate::wal::WAL_MAGIC.len() as u64 {
                        fsutil::remove_file(path)?;
                    } else {
                        truncate_torn_tail(path, offset)?;
                        // An older file, cut: its successor's record of its length no longer
                        // holds, and the loss is reported now, once.
                        if !newest {
                            crate::wal::mark_stand_in(path)?;
                            stand_in = true;
                        }
                    }
                }
            }
            predecessors.insert(*n, (predecessor, stand_in));
            // What was just replayed is served and built on (a new WAL file follows it, a
            // snapshot may link it), so it must be durable first: a process killed between
            // a WAL write and its fsync leaves bytes in the page cache that a power cut
            // would still take, turning this file into a torn older one.
            if path.exists() {
                let f = File::open(path).ctx("open", path)?;
                fsutil::fsync(&f, path, true)?;
            }
        }
        sync_dir(&wal_dir)?;
        // Each file is as long as the file after it recorded when it was created: a file cut
        // (at a record boundary, where replay cannot see it) or swapped after it was
        // complete lost acknowledged records.
        let mut chain = Vec::new();
        for (n, path) in list_wal_files(&wal_dir)? {
            if n >= manifest.wal_start {
                let len = fs::metadata(&path).ctx("stat", &path)?.len();
                let (pred, stand_in) = predecessors.get(&n).copied().unwrap_or_default();
                chain.push((n, (!stand_in).then_some(len), pred));
            }
        }
        // Files with a predecessor record were written by a version that keeps WAL-NEWEST:
        // without it, a newest file deleted with it would go unseen.
        if newest_recorded.is_none() && chain.iter().any(|(_, _, pred)| pred.is_some()) {
            let path = newest_path(&wal_dir);
            let detail = "missing, while the WAL files were written by a server that keeps it: the newest WAL file may be missing too, and with it acknowledged writes".to_string();
            if !config.quarantine_corrupt {
                return Err(Error::Corrupt {
                    path,
                    detail: format!(
                        "{detail}; start with --quarantine-corrupt to serve what is there"
                    ),
                });
            }
            quarantined.push(QuarantinedFile {
                file: path.clone(),
                moved_to: path,
                reason: detail,
                lost: "any WAL file newer than the newest one there".into(),
            });
        }
        for (n, detail) in check_predecessors(&chain) {
            let path = wal_dir.join(wal_file_name(n));
            // Cut at start already (damage in it), and reported so.
            if quarantined.iter().any(|q| q.file == path) {
                continue;
            }
            if !config.quarantine_corrupt {
                return Err(Error::Corrupt {
                    path,
                    detail: format!("{detail}; start with --quarantine-corrupt to serve the rest"),
                });
            }
            crate::wal::mark_stand_in(&path)?;
            quarantined.push(QuarantinedFile {
                file: path.clone(),
                moved_to: path,
                reason: detail,
                lost: "the acknowledged writes past the recorded length of this WAL file".into(),
            });
        }
        // The new file follows the last one left (a newest file cut to nothing at start is
        // gone, and its number is used again, so no gap opens).
        let survivors = list_wal_files(&wal_dir)?;
        let last_left = survivors.last().map_or(0, |(n, _)| *n);
        let next_number = (last_left + 1)
            .max(manifest.wal_start)
            .max(newest_recorded.map_or(0, |n| n + 1));
        if manifest.wal_start == 0 || rebuilt {
            // A rebuilt manifest replays every WAL file there is: it starts at the first.
            manifest.wal_start = survivors.first().map_or(next_number, |(n, _)| *n);
        }
        let predecessor = match survivors.last() {
            Some((n, path)) if n + 1 == next_number => {
                Some((*n, fs::metadata(path).ctx("stat", path)?.len()))
            }
            _ => None,
        };
        let next_wal = NextWal {
            dir: wal_dir.clone(),
            number: next_number,
            predecessor,
            // A directory without the record (written by an earlier version).
            record_first: survivors
                .last()
                .filter(|_| newest_recorded.is_none())
                .map(|(n, _)| *n),
        };
        // A full disk does not keep the server from starting: everything acknowledged is
        // served, and writes are refused with the disk-full error until there is room for
        // what could not be written now (the WAL file first, see `commit::Wal`).
        let mut full_at_open = None;
        let mut full = |e: Error, what: &str| {
            tracing::warn!(error = %e, "the disk is full: {what}; reads are served, writes are refused until there is room");
            full_at_open.get_or_insert(e);
        };
        let wal = match next_wal.create() {
            Ok(file) => Wal::Open(file),
            Err(e) if e.is_disk_full() => {
                full(e, "no new WAL file");
                Wal::ToCreate(next_wal)
            }
            Err(e) => return Err(e),
        };
        let mut store_manifest = rebuilt || !quarantined.is_empty();
        let series_file = match series_file {
            Some(f) => Some(f),
            // Every series registered so far (the segments' and the WAL's) goes in.
            None => match series_file::create(&dir, registry.keys()) {
                Ok(f) => {
                    registry.take_unpersisted();
                    manifest.series_file = Some(f.mark());
                    store_manifest = true;
                    Some(f)
                }
                Err(e) if e.is_disk_full() => {
                    full(e, "the series file is written with the next manifest");
                    None
                }
                Err(e) => return Err(e),
            },
        };
        if store_manifest {
            match manifest.store(&dir) {
                Ok(()) => {}
                // A manifest rebuilt from the files there, or naming a new series file, is
                // stored by the next flush; until then a start rebuilds the same one. What a
                // start quarantined must be recorded now.
                Err(e) if e.is_disk_full() && quarantined.is_empty() => {
                    full(e, "the manifest is stored by the next flush");
                }
                Err(e) => return Err(e),
            }
        }
        if !quarantined.is_empty() {
            for q in &quarantined {
                tracing::error!(file = %q.file.display(), moved_to = %q.moved_to.display(), reason = %q.reason, lost = %q.lost, "quarantined a damaged file");
            }
        }

        let opened_ms = (config.clock)();
        let inner = Arc::new(Inner {
            segment_duration_ms,
            config,
            wal_dir,
            seg_dir,
            registry: RwLock::new(registry),
            state: RwLock::new(State {
                live: head,
                frozen: None,
                segments: Arc::new(segments),
            }),
            manifest: Mutex::new(manifest),
            series_file: Mutex::new(series_file),
            poisoned: Mutex::new(None),
            poisoned_flag: AtomicBool::new(false),
            disk_full: Mutex::new(None),
            corruption_found: Mutex::new(Vec::new()),
            stats: Stats::default(),
            quarantined,
            stop: Mutex::new(false),
            stop_cv: Condvar::new(),
            flush_done: Mutex::new(()),
            flush_done_cv: Condvar::new(),
            verified: Mutex::new(false),
            verified_cv: Condvar::new(),
            lock: Mutex::new(Some(lock)),
            partition_written_ms: Mutex::new(HashMap::new()),
            snapshot_infos: Mutex::new(HashMap::new()),
            snapshot_taking: Mutex::new(()),
            opened_ms,
        });
        if let Some(e) = full_at_open {
            inner.note_disk_full(&Err::<(), _>(e));
        }
        let (tx, rx) = sync_channel(COMMIT_QUEUE_MAX);
        let commit_inner = inner.clone();
        let commit = std::thread::Builder::new()
            .name("tsvault-commit".into())
            .spawn(move || commit::run(commit_inner, wal, rx))
            .ctx("spawn commit thread for", &inner.config.data_dir)?;
        let engine = Engine {
            inner,
            commit_tx: tx,
            threads: Mutex::new(vec![commit]),
            closed: AtomicBool::new(false),
        };
        let maint_engine = engine.handle();
        let maint = std::thread::Builder::new()
            .name("tsvault-maintenance".into())
            .spawn(move || maint_engine.maintenance_loop())
            .ctx(
                "spawn maintenance thread for",
                &engine.inner.config.data_dir,
            )?;
        engine.threads.lock().push(maint);
        let verify_engine = engine.handle();
        let verify = std::thread::Builder::new()
            .name("tsvault-verify".into())
            .spawn(move || verify_engine.verify_segments())
            .ctx(
                "spawn verification thread for",
                &engine.inner.config.data_dir,
            )?;
        engine.threads.lock().push(verify);
        crate::powercut::after_open();
        Ok(engine)
    }

    fn handle(&self) -> EngineHandle {
        EngineHandle {
            inner: self.inner.clone(),
            commit_tx: self.commit_tx.clone(),
        }
    }

    /// Makes `points` durable and visible; returns once they are (per the fsync mode).
    /// Samples older than the retention period are refused and counted.
    pub fn write(&self, points: &[Point]) -> Result<WriteOutcome> {
        let r = self.handle().write(points, false);
        self.inner.note_disk_full(&r);
        r
    }

    /// Like [`Engine::write`], and fsynced before it returns whatever the fsync mode: for a
    /// client that asked for durability (`/api/put?sync`) on a server started with
    /// `--fsync interval`.
    pub fn write_synced(&self, points: &[Point]) -> Result<WriteOutcome> {
        let r = self.handle().write(points, true);
        self.inner.note_disk_full(&r);
        r
    }

    /// Writes those of `points` whose series holds no sample at their timestamp yet, so that
    /// restored data merges and never overwrites what the store already has (a later write
    /// of the same timestamp still wins, as always). For `tsvault restore --server`.
    pub fn import(&self, points: &[Point]) -> Result<ImportOutcome> {
        let r = self.handle().import(points);
        self.inner.note_disk_full(&r);
        if let Err(e) = &r {
            self.inner.note_corruption(e);
        }
        r
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.config.data_dir
    }

    /// Takes a snapshot of everything acknowledged so far (see [`SnapshotInfo`]); writes
    /// keep flowing. It stays on disk, across restarts, until released.
    pub fn snapshot(&self) -> Result<SnapshotInfo> {
        self.handle().snapshot()
    }

    /// The snapshots on disk, oldest first.
    pub fn snapshots(&self) -> Result<Vec<SnapshotInfo>> {
        snapshot::list(&self.inner.config.data_dir)
    }

    /// The description of snapshot `id`.
    pub fn snapshot_info(&self, id: &str) -> Result<SnapshotInfo> {
        snapshot::info(&self.inner.config.data_dir, id)
    }

    /// Where file `path` of snapshot `id` is, and what it should hold.
    pub fn snapshot_file(&self, id: &str, path: &str) -> Result<(PathBuf, SnapshotFile)> {
        let dir = snapshot::snapshot_dir(&self.inner.config.data_dir, id)?;
        let cached = self.inner.snapshot_infos.lock().get(id).cloned();
        let info = match cached {
            Some(info) => info,
            None => {
                let info = Arc::new(snapshot::load_info(&dir)?);
                let mut infos = self.inner.snapshot_infos.lock();
                // Released meanwhile (its directory renamed away): not remembered.
                if dir.exists() {
                    infos.insert(id.to_string(), info.clone());
                }
                info
            }
        };
        let file = info
            .files
            .iter()
            .find(|f| f.path == path)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("snapshot {id} has no file {path:?}")))?;
        Ok((dir.join(&file.path), file))
    }

    /// Deletes snapshot `id` (its links; the store's own files stay).
    pub fn release_snapshot(&self, id: &str) -> Result<()> {
        let released = snapshot::release(&self.inner.config.data_dir, id);
        // After the directory's rename: a description read meanwhile is not remembered
        // (see snapshot_file), or is forgotten here.
        self.inner.snapshot_infos.lock().remove(id);
        released
    }

    /// Releases the snapshots older than `snapshot_max_age_ms`; returns their ids. The
    /// maintenance thread does this every minute.
    pub fn expire_snapshots(&self) -> Result<Vec<String>> {
        self.handle().expire_snapshots()
    }

    /// Samples before this time are refused (None when retention is unlimited).
    pub fn retention_cutoff_ms(&self) -> Option<i64> {
        self.handle().retention_cutoff()
    }

    /// Flushes the head into segment files and truncates the WAL.
    pub fn flush(&self) -> Result<()> {
        let h = self.handle();
        h.guarded("flush", || h.flush())
    }

    /// Compacts every partition that has more than one segment.
    pub fn compact(&self) -> Result<usize> {
        let h = self.handle();
        h.guarded("compaction", || h.compact(true))
    }

    /// Drops segments wholly older than the retention period.
    pub fn apply_retention(&self) -> Result<usize> {
        let h = self.handle();
        h.guarded("retention", || h.apply_retention())
    }

    /// Every series of `metric` accepted by `filter`, with its samples in
    /// `[start_ms, end_ms]`, sorted and deduplicated (the last written value wins). Stops with
    /// [`Error::Capped`] as soon as what it has read is more than `cap` allows.
    pub fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        (start_ms, end_ms): (i64, i64),
        cap: ReadCap,
    ) -> Result<Vec<(SeriesKey, Vec<Sample>)>> {
        self.handle()
            .select(metric, filter, start_ms, end_ms, cap)
            .inspect_err(|e| self.inner.note_corruption(e))
    }

    /// Records damage found outside the engine's own reads (a snapshot file whose bytes no
    /// longer match their listed hash), for `/health`.
    pub fn report_corruption(&self, path: PathBuf, detail: String) {
        self.inner.note_corruption(&Error::Corrupt { path, detail });
    }

    /// Why writes fail for lack of space, while they do (the last write or flush found the
    /// disk full, and none has succeeded since).
    pub fn disk_full(&self) -> Option<String> {
        let mut full = self.inner.disk_full.lock();
        // Space may have come back with no write since to show it (a load balancer routing
        // by /ready would never send that write): the file system is asked.
        if let Some((_, free_then)) = &*full
            && free_bytes(&self.inner.config.data_dir)
                >= free_then.saturating_add(disk_room_bytes(&self.inner.config.data_dir))
        {
            *full = None;
        }
        full.as_ref().map(|(why, _)| why.clone())
    }

    /// Damaged files reads found while serving, with what was found (their data is never
    /// served; `tsvault check` on the stopped directory tells the whole extent).
    pub fn corruption_found(&self) -> Vec<(PathBuf, String)> {
        self.inner.corruption_found.lock().clone()
    }

    /// All metric names, sorted.
    pub fn metric_names(&self) -> Vec<String> {
        self.inner.registry.read().metric_names()
    }

    /// All tag keys, sorted.
    pub fn tag_keys(&self) -> Vec<String> {
        self.inner.registry.read().tag_keys()
    }

    /// All tag values, sorted.
    pub fn tag_values(&self) -> Vec<String> {
        self.inner.registry.read().tag_values()
    }

    /// Why writes are refused, when they are.
    pub fn poisoned(&self) -> Option<String> {
        self.inner.poisoned()
    }

    /// Files moved aside at start.
    pub fn quarantined(&self) -> &[QuarantinedFile] {
        &self.inner.quarantined
    }

    /// Files earlier starts set aside in `quarantine/` and still there, sorted: what was
    /// lost stays visible (`/health` degraded) until an operator, having looked, deletes
    /// them.
    pub fn quarantine_kept(&self) -> Vec<PathBuf> {
        let Ok(entries) = fs::read_dir(self.inner.config.data_dir.join("quarantine")) else {
            return Vec::new();
        };
        let mut kept: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| !self.inner.quarantined.iter().any(|q| q.moved_to == *p))
            .collect();
        kept.sort();
        kept
    }

    /// Current figures.
    pub fn stats(&self) -> EngineStats {
        let s = &self.inner.stats;
        let (head_samples, head_bytes, segments) = {
            let st = self.inner.state.read();
            (
                st.live.samples() + st.frozen.as_ref().map_or(0, |f| f.samples()),
                st.live.memory() + st.frozen.as_ref().map_or(0, |f| f.memory()),
                st.segments.clone(),
            )
        };
        let wal_bytes = list_wal_files(&self.inner.wal_dir)
            .map(|files| {
                files
                    .iter()
                    .filter_map(|(_, p)| fs::metadata(p).ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        EngineStats {
            samples_written: s.samples_written.load(Ordering::Relaxed),
            series: self.inner.registry.read().len() as u64,
            head_samples: head_samples as u64,
            head_bytes: head_bytes as u64,
            write_stall_ms: s.write_stall_ms.load(Ordering::Relaxed),
            wal_bytes,
            segments: segments.len() as u64,
            segment_bytes: segments.iter().map(|s| s.seg.info.size_bytes).sum(),
            segment_samples: segments.iter().map(|s| s.seg.info.samples).sum(),
            flushes: s.flushes.load(Ordering::Relaxed),
            compactions: s.compactions.load(Ordering::Relaxed),
            samples_dropped_retention: s.samples_dropped_retention.load(Ordering::Relaxed),
            wal_fsyncs: s.wal_fsyncs.load(Ordering::Relaxed),
            open_segment_files: crate::open_files::open_files() as u64,
            open_segment_files_max: crate::open_files::open_files_max() as u64,
            segments_unverified: segments.iter().filter(|s| !s.seg.is_verified()).count() as u64,
        }
    }

    /// Waits until the verification that follows the start has read every segment the
    /// start checked from its footer only (or the engine is closing). What it found damaged
    /// is reported like any damage a read finds.
    pub fn wait_verified(&self) {
        let mut done = self.inner.verified.lock();
        while !*done {
            self.inner.verified_cv.wait(&mut done);
        }
    }

    /// The live segments as the manifest lists them.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.inner.manifest.lock().segments.clone()
    }

    /// Stops the background threads, flushes the head (unless the store is poisoned) and
    /// syncs the WAL. Also done on drop; calling it reports the flush's error.
    pub fn close(&self) -> Result<()> {
        self.shut_down(true)
    }

    /// Stops without flushing: the head is dropped and the next open replays the WAL, as
    /// after a crash. For fast shutdowns and for tests of recovery.
    pub fn close_without_flush(&self) {
        let _ = self.shut_down(false);
    }

    fn shut_down(&self, flush: bool) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        *self.inner.stop.lock() = true;
        self.inner.stop_cv.notify_all();
        // The background threads (all but the commit thread, the first) end before the last
        // flush: a maintenance flush must not run beside it.
        let background: Vec<JoinHandle<()>> = {
            let mut threads = self.threads.lock();
            let from = threads.len().min(1);
            threads.drain(from..).collect()
        };
        for t in background {
            let _ = t.join();
        }
        let flushed = if flush && self.inner.poisoned().is_none() {
            let h = self.handle();
            match h.guarded("flush at shutdown", || h.flush()) {
                // Nothing is lost: the WAL holds the head, and the next start replays it.
                Err(e) if e.is_disk_full() => {
                    tracing::warn!(error = %e, "the flush at shutdown found the disk full; the WAL holds the data and the next start replays it");
                    Ok(())
                }
                Ok(()) => {
                    tracing::info!("the head is flushed");
                    Ok(())
                }
                r => r,
            }
        } else {
            if let Some(why) = self.inner.poisoned().filter(|_| flush) {
                tracing::warn!(%why, "no flush at shutdown in a store that refuses writes; the WAL holds the data and the next start replays it");
            }
            Ok(())
        };
        let _ = self.commit_tx.send(CommitRequest::Shutdown);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        self.inner.lock.lock().take();
        flushed
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!(error = %e, "flush at shutdown failed; the WAL still holds the data");
        }
    }
}

/// What the background thread and the public methods share.
#[derive(Clone)]
struct EngineHandle {
    inner: Arc<Inner>,
    commit_tx: SyncSender<CommitRequest>,
}

impl EngineHandle {
    fn write(&self, points: &[Point], sync: bool) -> Result<WriteOutcome> {
        self.inner.wait_while_head_over();
        let (samples, dropped) = self.resolve(points)?;
        let written = samples.len();
        if written > 0 {
            let (done_tx, done_rx) = sync_channel(1);
            self.commit_tx
                .send(CommitRequest::Write {
                    samples,
                    done: done_tx,
                    sync,
                })
                .map_err(|_| Error::Closed)?;
            done_rx.recv().map_err(|_| Error::Closed)??;
            self.inner
                .stats
                .samples_written
                .fetch_add(written as u64, Ordering::Relaxed);
        }
        Ok(WriteOutcome {
            written,
            dropped_beyond_retention: dropped,
        })
    }

    /// Checks `points` and gives each its series id (registering new series), leaving out
    /// (and counting) those older than the retention period.
    fn resolve(&self, points: &[Point]) -> Result<(Vec<IdSample>, usize)> {
        if let Some(msg) = self.inner.poisoned() {
            return Err(Error::Poisoned(msg));
        }
        if let Some(p) = points.iter().find(|p| !tsvault_model::ts_in_range(p.ts_ms)) {
            return Err(Error::OutOfRange(format!(
                "timestamp {} ms of {} is outside the range tsvault stores and queries (1970-01-01 to 9999-12-31)",
                p.ts_ms, p.key
            )));
        }
        let cutoff = self.retention_cutoff();
        let mut samples = Vec::with_capacity(points.len());
        let mut misses = Vec::new();
        {
            let registry = self.inner.registry.read();
            for (i, p) in points.iter().enumerate() {
                if cutoff.is_some_and(|c| p.ts_ms < c) {
                    continue;
                }
                match registry.get(&p.key) {
                    Some(id) => samples.push((id, p.ts_ms, p.value)),
                    None => {
                        misses.push(i);
                        samples.push((SeriesId::MAX, p.ts_ms, p.value));
                    }
                }
            }
        }
        if !misses.is_empty() {
            let mut registry = self.inner.registry.write();
            let mut j = 0;
            // Walk the kept points again to fill in the ids of new series, in order.
            let mut k = 0;
            for (i, p) in points.iter().enumerate() {
                if cutoff.is_some_and(|c| p.ts_ms < c) {
                    continue;
                }
                if j < misses.len() && misses[j] == i {
                    samples[k].0 = registry.get_or_insert(&p.key);
                    j += 1;
                }
                k += 1;
            }
        }
        let dropped = points.len() - samples.len();
        if dropped > 0 {
            self.inner
                .stats
                .samples_dropped_retention
                .fetch_add(dropped as u64, Ordering::Relaxed);
        }
        Ok((samples, dropped))
    }

    /// Writes those of `points` whose series has no sample at their timestamp: existing data
    /// always wins. Flush and compaction wait while the segments are checked; the head is
    /// checked on the commit thread, in order with every other write.
    fn import(&self, points: &[Point]) -> Result<ImportOutcome> {
        self.inner.wait_while_head_over();
        let manifest = self.inner.manifest.lock();
        let (samples, dropped) = self.resolve(points)?;
        let segments = self.inner.state.read().segments.clone();
        let mut ranges: HashMap<SeriesId, (i64, i64)> = HashMap::new();
        for &(id, ts, _) in &samples {
            let r = ranges.entry(id).or_insert((ts, ts));
            *r = (r.0.min(ts), r.1.max(ts));
        }
        let mut in_segments: HashMap<SeriesId, HashSet<i64>> = HashMap::new();
        let mut buf = Vec::new();
        for (&id, &(start, end)) in &ranges {
            let set = in_segments.entry(id).or_default();
            for s in segments.iter() {
                let info = &s.seg.info;
                if info.partition_end_ms <= start || info.partition_start_ms > end {
                    continue;
                }
                let (blocks, by_series) = s.index(&self.inner)?;
                let Some(&b) = by_series.get(&id) else {
                    continue;
                };
                let meta = &blocks[b as usize];
                if meta.max_ts < start || meta.min_ts > end {
                    continue;
                }
                buf.clear();
                s.seg.read_block_into(b as usize, start, end, &mut buf)?;
                set.extend(buf.iter().map(|x| x.ts_ms));
            }
        }
        let offered = samples.len();
        // Of two samples of one series at one timestamp in the import, the first is kept
        // (as a restore keeps what it met first) and the other counted, not dropped silently.
        let mut seen: HashSet<(SeriesId, i64)> = HashSet::with_capacity(samples.len());
        let mut duplicates = 0;
        let candidates: Vec<IdSample> = samples
            .into_iter()
            .filter(|&(id, ts, _)| {
                let first = seen.insert((id, ts));
                duplicates += usize::from(!first);
                first
            })
            .filter(|(id, ts, _)| !in_segments.get(id).is_some_and(|set| set.contains(ts)))
            .collect();
        let imported = if candidates.is_empty() {
            0
        } else {
            let (done_tx, done_rx) = sync_channel(1);
            self.commit_tx
                .send(CommitRequest::Import {
                    samples: candidates,
                    done: done_tx,
                })
                .map_err(|_| Error::Closed)?;
            done_rx.recv().map_err(|_| Error::Closed)??
        };
        drop(manifest);
        self.inner
            .stats
            .samples_written
            .fetch_add(imported as u64, Ordering::Relaxed);
        Ok(ImportOutcome {
            imported,
            skipped_existing: offered - imported - duplicates,
            duplicates_in_request: duplicates,
            dropped_beyond_retention: dropped,
        })
    }

    /// Takes a snapshot (see `snapshot.rs`): under the manifest lock (no flush, compaction
    /// or retention meanwhile), rolls the WAL and links the live files; hashes the WAL files
    /// after releasing it. Built under a temporary name, renamed into place when complete.
    fn snapshot(&self) -> Result<SnapshotInfo> {
        self.refuse_if_poisoned()?;
        let data_dir = &self.inner.config.data_dir;
        let root = data_dir.join(SNAPSHOTS_DIR);
        create_dir_durable(&root)?;
        // Taken one at a time, so that the count below cannot be raced past.
        let _one_at_a_time = self.inner.snapshot_taking.lock();
        let existing = fs::read_dir(&root)
            .ctx("list", &root)?
            .filter_map(|e| e.ok())
            .filter(|e| snapshot::is_snapshot_id(&e.file_name().to_string_lossy()))
            .count();
        let max = self.inner.config.snapshots_max;
        if existing >= max {
            return Err(Error::Limit(format!(
                "{existing} snapshots exist, the most this server keeps (each holds disk space and started a WAL file); release one (DELETE /api/admin/snapshots/ID) or wait for the oldest to expire"
            )));
        }
        let created_ms = system_clock_ms();
        // The id is claimed by creating its directory: two snapshots taken in the same
        // millisecond get different ids, and each removes only what it created.
        let mut n = 0u64;
        let (id, tmp) = loop {
            let id = format!("{created_ms}-{n}");
            let tmp = root.join(format!("{id}.tmp"));
            if !root.join(&id).exists() {
                match fs::create_dir(&tmp) {
                    Ok(()) => break (id, tmp),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e).ctx("create", &tmp),
                }
            }
            n += 1;
        };
        let result = self.build_snapshot(&id, created_ms, &tmp);
        match result {
            Ok(info) => {
                let dst = root.join(&id);
                fs::rename(&tmp, &dst).ctx("rename", &tmp)?;
                sync_dir(&root)?;
                Ok(info)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn build_snapshot(&self, id: &str, created_ms: i64, tmp: &Path) -> Result<SnapshotInfo> {
        // A slow snapshot, for tests of a client that goes away meanwhile.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("snapshot-build");
        let (seg_tmp, wal_tmp) = (tmp.join("segments"), tmp.join("wal"));
        for d in [&seg_tmp, &wal_tmp] {
            fs::create_dir(d).ctx("create", d)?;
        }
        let mut files = Vec::new();
        let mut wal_links = Vec::new();
        // Segments not yet verified since the start are hashed now, before the manifest's
        // lock is taken (a flush waits for that lock, and writes for a flush); one written
        // meanwhile was hashed when it was written.
        let segments = self.inner.state.read().segments.clone();
        for s in segments.iter() {
            s.seg.verify_whole()?;
        }
        drop(segments);
        let position = {
            let manifest = self.inner.manifest.lock();
            let (done_tx, done_rx) = sync_channel(1);
            self.commit_tx
                .send(CommitRequest::Roll { done: done_tx })
                .map_err(|_| Error::Closed)?;
            let position = done_rx.recv().map_err(|_| Error::Closed)??;
            // Under the manifest lock the loaded segments are exactly the manifest's; each
            // one's whole-file hash was computed when it was verified (now, if not yet).
            let segments = self.inner.state.read().segments.clone();
            for s in segments.iter() {
                let name = segment_file_name(s.seg.info.seq);
                let src = self.inner.seg_dir.join(&name);
                fs::hard_link(&src, seg_tmp.join(&name)).ctx("link", &src)?;
                files.push(SnapshotFile {
                    path: format!("segments/{name}"),
                    size: s.seg.info.size_bytes,
                    blake3: s.seg.verify_whole()?.to_string(),
                });
            }
            let mut newest_linked = None;
            for (n, src) in list_wal_files(&self.inner.wal_dir)? {
                if n >= manifest.wal_start && n < position {
                    let name = wal_file_name(n);
                    fs::hard_link(&src, wal_tmp.join(&name)).ctx("link", &src)?;
                    wal_links.push(name);
                    newest_linked = Some(n);
                }
            }
            // The record of the newest WAL file, so that the snapshot directory opens as a
            // data directory of its own (not in its file list: a restore writes its own).
            if let Some(n) = newest_linked {
                crate::wal::write_newest(&wal_tmp, n)?;
            }
            // Without the series file's record: the snapshot holds no series file, and a
            // directory restored from it writes its own at its first start.
            let bytes = Manifest {
                series_file: None,
                ..manifest.clone()
            }
            .encode();
            fsutil::write_synced(&tmp.join(MANIFEST_FILE), &bytes)?;
            files.push(SnapshotFile {
                path: MANIFEST_FILE.into(),
                size: bytes.len() as u64,
                blake3: blake3::hash(&bytes).to_hex().to_string(),
            });
            position
        };
        for name in wal_links {
            let path = wal_tmp.join(&name);
            let size = fs::metadata(&path).ctx("stat", &path)?.len();
            files.push(SnapshotFile {
                path: format!("wal/{name}"),
                size,
                blake3: snapshot::hash_file(&path)?,
            });
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let info = SnapshotInfo {
            id: id.to_string(),
            created_ms,
            wal_position: position,
            files,
        };
        fsutil::write_synced(
            &tmp.join(snapshot::SNAPSHOT_FILE),
            &snapshot::encode_info(&info),
        )?;
        snapshot::sync_tree(tmp)?;
        Ok(info)
    }

    fn retention_cutoff(&self) -> Option<i64> {
        self.inner
            .config
            .retention_ms
            .map(|r| (self.inner.config.clock)().saturating_sub(r))
    }

    fn flush(&self) -> Result<()> {
        let r = self.flush_head();
        self.inner.flush_ended();
        r
    }

    fn flush_head(&self) -> Result<()> {
        let mut manifest = self.inner.manifest.lock();
        let (done_tx, done_rx) = sync_channel(1);
        self.commit_tx
            .send(CommitRequest::Rotate { done: done_tx })
            .map_err(|_| Error::Closed)?;
        let (wal_start, frozen) = done_rx.recv().map_err(|_| Error::Closed)??;
        let result = self.flush_frozen(&mut manifest, wal_start, &frozen);
        self.inner.note_disk_full(&result);
        drop(frozen);
        if let Err(e) = &result {
            if e.is_disk_full() {
                // The WAL still holds the frozen samples (its files go only after a manifest
                // that no longer needs them is installed): they go back in front of the live
                // head, writes go on while the WAL has room, and the next flush tries again
                // once space returns.
                let mut state = self.inner.state.write();
                if let Some(f) = state.frozen.take() {
                    let empty = state.live.empty_like();
                    let live = std::mem::replace(&mut state.live, empty);
                    let frozen = Arc::try_unwrap(f).unwrap_or_else(|f| (*f).clone());
                    state.live = Head::joined(frozen, live);
                }
                drop(state);
                tracing::warn!(error = %e, "flush failed: the disk is full; the samples stay in memory and in the WAL, and the flush is tried again later");
                return result;
            }
            // The frozen head stays queryable and the WAL still holds it; refuse writes so
            // that nothing newer is acknowledged on top of a failed flush.
            self.inner.poison(e);
            return result;
        }
        drop(manifest);
        // The flush is done: a compaction that finds the disk full leaves the segments as
        // they are and is tried again later; retention (which frees space) still runs.
        match self.compact(false) {
            Ok(_) => {}
            Err(e) if e.is_disk_full() => {
                tracing::warn!(error = %e, "compaction after a flush found the disk full; the segments stay as they are until a later one");
            }
            // A damaged segment in a partition it merged: reported, that partition left as
            // it is; the flush itself is done.
            Err(e @ Error::Corrupt { .. }) => self.inner.note_corruption(&e),
            Err(e) => return Err(e),
        }
        self.guarded("retention", || self.apply_retention())?;
        Ok(())
    }

    fn flush_frozen(&self, manifest: &mut Manifest, wal_start: u64, frozen: &Head) -> Result<()> {
        let cutoff = self.retention_cutoff();
        let dur = self.inner.segment_duration_ms;
        let mut new_segments = Vec::new();
        let mut next = manifest.clone();
        let listed = manifest.segments.len();
        let written = |next: &Manifest| -> Vec<PathBuf> {
            next.segments[listed..]
                .iter()
                .map(|s| self.inner.seg_dir.join(segment_file_name(s.seq)))
                .collect()
        };
        for (start, series) in frozen.partitions() {
            let end = start.saturating_add(dur);
            if cutoff.is_some_and(|c| end <= c) {
                continue;
            }
            let ids = self.in_key_order(series);
            let seq = allocate_seq(manifest, &mut next);
            // Each series decoded from the head as it is written: the flush holds one
            // series' samples at a time, not a copy of the head.
            let info = match write_segment(
                &self.inner.seg_dir,
                seq,
                (start, end),
                ids.into_iter()
                    .map(|id| Ok((self.key_of(id), frozen.series_in(id, start)))),
            )
            .and_then(|info| Ok((self.open_segment(&info)?, info)))
            {
                Ok((seg, info)) => {
                    new_segments.push(seg);
                    info
                }
                Err(e) => {
                    // Segments this flush wrote are in no manifest: removed now, so that a
                    // flush tried again starts clean (a start removes any left).
                    for path in written(&next) {
                        let _ = fsutil::remove_file(&path);
                    }
                    return Err(e);
                }
            };
            next.segments.push(info);
        }
        next.wal_start = wal_start;
        let partitions_written: Vec<i64> = next.segments[listed..]
            .iter()
            .map(|s| s.partition_start_ms)
            .collect();
        self.install(manifest, next, &[], new_segments, true)?;
        self.inner.stats.flushes.fetch_add(1, Ordering::Relaxed);
        let now = (self.inner.config.clock)();
        let mut when = self.inner.partition_written_ms.lock();
        for start in partitions_written {
            when.insert(start, now);
        }
        drop(when);
        for (n, path) in list_wal_files(&self.inner.wal_dir)? {
            if n < wal_start {
                fsutil::remove_file(&path)?;
            }
        }
        Ok(())
    }

    /// Makes `next` the durable manifest, then switches readers in one step to the segment
    /// list without `removed` and with `added` (dropping the frozen head too when
    /// `clear_frozen`: its data is now in `added`), then has the removed files deleted once no
    /// reader holds them. The order matters: a file is deleted only after no manifest and no
    /// reader refers to it (a read in flight may still have to open it: segment files are
    /// opened on demand, see `open_files.rs`).
    fn install(
        &self,
        manifest: &mut Manifest,
        next: Manifest,
        removed: &[u64],
        added: Vec<Arc<LoadedSegment>>,
        clear_frozen: bool,
    ) -> Result<()> {
        self.refuse_if_poisoned()?;
        let mut next = next;
        let stored = self.persist_new_series().and_then(|mark| {
            next.series_file = Some(mark);
            next.store(&self.inner.config.data_dir)
        });
        if let Err(e) = stored {
            // A full disk fails the store while it writes the new manifest's temporary file
            // (or renames it), so the old manifest is still the one in place: the segments
            // only the new one named, and the temporary file, go now, so that the next try
            // does not find the disk fuller. (Any other failure poisons; a start removes
            // what is left.)
            if e.is_disk_full() {
                for s in &added {
                    s.seg.remove_when_unused();
                }
                let tmp = self
                    .inner
                    .config
                    .data_dir
                    .join(MANIFEST_FILE)
                    .with_extension("tmp");
                if tmp.exists() {
                    let _ = fsutil::remove_file(&tmp);
                }
            }
            return Err(e);
        }
        *manifest = next;
        {
            let mut state = self.inner.state.write();
            let mut segs = Vec::with_capacity(state.segments.len() + added.len());
            for s in state.segments.iter() {
                if removed.contains(&s.seg.info.seq) {
                    s.seg.remove_when_unused();
                } else {
                    segs.push(s.clone());
                }
            }
            segs.extend(added);
            state.segments = Arc::new(segs);
            if clear_frozen {
                state.frozen = None;
            }
        }
        Ok(())
    }

    /// Appends the series registered since the last append to the series file (fsynced):
    /// every series of the segments a manifest is about to name is in the file first.
    fn persist_new_series(&self) -> Result<SeriesFileMark> {
        let mut file = self.inner.series_file.lock();
        let Some(file) = &mut *file else {
            // Not written at start (the disk was full): every series goes in now.
            let mut registry = self.inner.registry.write();
            let created = series_file::create(&self.inner.config.data_dir, registry.keys())?;
            registry.take_unpersisted();
            let mark = created.mark();
            *file = Some(created);
            return Ok(mark);
        };
        let (ids, keys): (Vec<SeriesId>, Vec<SeriesKey>) = {
            let mut registry = self.inner.registry.write();
            let ids = registry.take_unpersisted();
            let keys = ids.iter().map(|&id| registry.key(id).clone()).collect();
            (ids, keys)
        };
        file.append(&keys).inspect_err(|_| {
            self.inner.registry.write().unpersisted_again(ids);
        })
    }

    fn refuse_if_poisoned(&self) -> Result<()> {
        match self.inner.poisoned() {
            Some(msg) => Err(Error::Poisoned(msg)),
            None => Ok(()),
        }
    }

    /// Runs background or shutdown work; a panic (a broken invariant) or an error poisons
    /// the store instead of silently stopping maintenance.
    fn guarded<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|panic| {
            Err(Error::Internal(format!(
                "{what} panicked: {}",
                commit::panic_message(&*panic)
            )))
        });
        // A full disk is not a reason to distrust the store: flush, compaction and
        // retention change nothing before their new files are durable, so a failure for
        // lack of space leaves the old state whole, and they are tried again later.
        // Nor is a segment found damaged by a read (a compaction's): the write path is
        // whole; the damage is reported, and its partition no longer merged.
        if let Err(e @ Error::Corrupt { .. }) = &r {
            self.inner.note_corruption(e);
            return r;
        }
        if let Err(e) = &r
            && !matches!(e, Error::Poisoned(_) | Error::Closed)
            && !e.is_disk_full()
        {
            self.inner.poison(e);
        }
        r
    }

    /// Opens a segment just written, checking it against what was written (pair assertion).
    /// `ids` sorted by their series' keys, the order of a segment's blocks (the keys are
    /// taken one at a time as each block is written: see [`EngineHandle::key_of`]).
    fn in_key_order(&self, mut ids: Vec<SeriesId>) -> Vec<SeriesId> {
        let registry = self.inner.registry.read();
        ids.sort_unstable_by(|a, b| registry.key(*a).cmp(registry.key(*b)));
        ids
    }

    fn key_of(&self, id: SeriesId) -> SeriesKey {
        self.inner.registry.read().key(id).clone()
    }

    fn open_segment(&self, info: &SegmentInfo) -> Result<Arc<LoadedSegment>> {
        let path = self.inner.seg_dir.join(segment_file_name(info.seq));
        let (seg, keyed) = Segment::open_verified(&path, info)?;
        let mut registry = self.inner.registry.write();
        Ok(Arc::new(index_segment(seg, &keyed, &mut registry)?))
    }

    /// Merges segments of partitions that have several: with `all`, each such partition
    /// into one; otherwise what [`compaction_pick`] chooses.
    fn compact(&self, all: bool) -> Result<usize> {
        self.refuse_if_poisoned()?;
        let mut manifest = self.inner.manifest.lock();
        let now = (self.inner.config.clock)();
        let mut by_partition: BTreeMap<i64, Vec<SegmentInfo>> = BTreeMap::new();
        for s in &manifest.segments {
            by_partition
                .entry(s.partition_start_ms)
                .or_default()
                .push(s.clone());
        }
        let mut done = 0;
        for (start, mut group) in by_partition {
            let end = group[0].partition_end_ms;
            group.sort_by_key(|s| s.seq);
            let written = self
                .inner
                .partition_written_ms
                .lock()
                .get(&start)
                .copied()
                .unwrap_or(self.inner.opened_ms);
            let cold = now.saturating_sub(written) >= self.inner.config.compaction_cold_ms;
            // A full head is flushed first: a compaction of many partitions must not keep
            // writes waiting (see `Inner::wait_while_head_over`). Not a partition that has
            // piled up twice `compaction_segments_min`: under a load that keeps the head full,
            // each flush adds a segment, and every live segment costs memory (its index) and
            // reads.
            if !all
                && group.len() < self.inner.config.compaction_segments_min.max(2) * 2
                && self.inner.head_full(&self.inner.state.read().live)
            {
                continue;
            }
            let pick = if all {
                &group[..]
            } else {
                compaction_pick(&group, self.inner.config.compaction_segments_min, cold)
            };
            if pick.len() < 2 {
                continue;
            }
            // A partition with a segment found damaged is left as it is: merging it would
            // fail on the damage again (it is reported in /health; `check` tells the rest).
            let damaged = self.inner.corruption_found.lock().iter().any(|(path, _)| {
                pick.iter()
                    .any(|s| *path == self.inner.seg_dir.join(segment_file_name(s.seq)))
            });
            if damaged {
                continue;
            }
            // Callers run this guarded: an error poisons the store unless the disk was full
            // or a segment it read was damaged.
            self.compact_partition(&mut manifest, (start, end), pick)?;
            done += 1;
        }
        Ok(done)
    }

    fn compact_partition(
        &self,
        manifest: &mut Manifest,
        partition: (i64, i64),
        group: &[SegmentInfo],
    ) -> Result<()> {
        let seqs: Vec<u64> = group.iter().map(|s| s.seq).collect();
        let inputs: Vec<Arc<LoadedSegment>> = self
            .inner
            .state
            .read()
            .segments
            .iter()
            .filter(|s| seqs.contains(&s.seg.info.seq))
            .cloned()
            .collect();
        // Every series in any input, in key order; inputs are ascending by seq (oldest first).
        // Series are named by id (the inputs' cached indexes map ids to blocks) and their
        // keys are taken from the registry one at a time: no input's keys are held at once.
        let indexes = inputs
            .iter()
            .map(|s| s.index(&self.inner).map(|(_, by_series)| by_series))
            .collect::<Result<Vec<_>>>()?;
        let mut ids: Vec<SeriesId> = indexes.iter().flat_map(|m| m.keys().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let merged = self.in_key_order(ids).into_iter().map(|id| {
            let mut samples = Vec::new();
            for (input, by_series) in inputs.iter().zip(&indexes) {
                if let Some(&i) = by_series.get(&id) {
                    input
                        .seg
                        .read_block_into(i as usize, i64::MIN, i64::MAX, &mut samples)?;
                }
            }
            normalize(&mut samples);
            Ok((self.key_of(id), samples))
        });
        let mut next = manifest.clone();
        let seq = allocate_seq(manifest, &mut next);
        let info = write_segment(&self.inner.seg_dir, seq, partition, merged)?;
        let loaded = self.open_segment(&info)?;
        next.segments.retain(|s| !seqs.contains(&s.seq));
        next.segments.push(info);
        self.install(manifest, next, &seqs, vec![loaded], false)?;
        self.inner.stats.compactions.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn apply_retention(&self) -> Result<usize> {
        self.refuse_if_poisoned()?;
        let Some(cutoff) = self.retention_cutoff() else {
            return Ok(0);
        };
        let mut manifest = self.inner.manifest.lock();
        let expired: Vec<u64> = manifest
            .segments
            .iter()
            .filter(|s| s.partition_end_ms <= cutoff)
            .map(|s| s.seq)
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let mut next = manifest.clone();
        next.segments.retain(|s| !expired.contains(&s.seq));
        self.install(&mut manifest, next, &expired, Vec::new(), false)?;
        tracing::info!(
            segments = expired.len(),
            cutoff_ms = cutoff,
            "retention dropped expired segments"
        );
        Ok(expired.len())
    }

    fn select(
        &self,
        metric: &str,
        filter: &dyn Fn(&SeriesKey) -> bool,
        start_ms: i64,
        end_ms: i64,
        cap: ReadCap,
    ) -> Result<Vec<(SeriesKey, Vec<Sample>)>> {
        let start_ms = self
            .retention_cutoff()
            .map_or(start_ms, |c| start_ms.max(c));
        let ids: Vec<(SeriesId, SeriesKey)> = {
            let registry = self.inner.registry.read();
            registry
                .series_of(metric)
                .iter()
                .map(|&id| (id, registry.key(id)))
                .filter(|(_, k)| filter(k))
                .map(|(id, k)| (id, k.clone()))
                .collect()
        };
        // Head samples are copied under the lock, compressed (the frozen head's, then the
        // live one's: write order); they are decoded, and segment blocks read, after it.
        let (segments, head) = {
            let state = self.inner.state.read();
            let mut head: Vec<HeadCopy> = Vec::with_capacity(ids.len());
            for (id, _) in &ids {
                head.push([
                    state
                        .frozen
                        .as_ref()
                        .and_then(|f| f.series(*id))
                        .map(|s| s.copy_range(start_ms, end_ms)),
                    state
                        .live
                        .series(*id)
                        .map(|s| s.copy_range(start_ms, end_ms)),
                ]);
            }
            (state.segments.clone(), head)
        };
        // What has been read, across the threads, against `cap`: counted block by block, so
        // that a read past it stops holding about the cap, not everything that matched.
        let (series_read, samples_read) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let take = |series: usize, samples: usize| {
            let series = series_read.fetch_add(series, Ordering::Relaxed) + series;
            let samples = samples_read.fetch_add(samples, Ordering::Relaxed) + samples;
            if cap.exceeded_by(series, samples) {
                return Err(Error::Capped { series, samples });
            }
            Ok(())
        };
        // Series are read in parallel (rayon's pool, one thread per core): decoding blocks is
        // most of a large query's time.
        let read_one = |((id, key), head_copy): ((SeriesId, SeriesKey), HeadCopy)| {
            let mut head_samples = Vec::new();
            for h in head_copy.iter().flatten() {
                h.collect(start_ms, end_ms, &mut head_samples);
            }
            take(0, head_samples.len())?;
            let mut samples: Vec<Sample> = Vec::new();
            let mut unsorted = false;
            for s in segments.iter() {
                let info = &s.seg.info;
                if info.partition_end_ms <= start_ms || info.partition_start_ms > end_ms {
                    continue;
                }
                let (blocks, by_series) = s.index(&self.inner)?;
                let Some(&b) = by_series.get(&id) else {
                    continue;
                };
                let meta = &blocks[b as usize];
                if meta.max_ts < start_ms || meta.min_ts > end_ms {
                    continue;
                }
                // Blocks are sorted and unique (decoding checks it); their concatenation is
                // too unless one overlaps what came before (segments of a partition not yet
                // compacted, or late data in an older partition).
                let last_before = samples.last().map(|x| x.ts_ms);
                let appended_from = samples.len();
                s.seg
                    .read_block_into(b as usize, start_ms, end_ms, &mut samples)?;
                take(0, samples.len() - appended_from)?;
                if let (Some(last), Some(first)) = (last_before, samples.get(appended_from)) {
                    unsorted |= first.ts_ms <= last;
                }
            }
            if !head_samples.is_empty() {
                // The head keeps samples in write order (late and repeated ones included).
                unsorted = true;
                if samples.is_empty() {
                    samples = head_samples;
                } else {
                    samples.extend_from_slice(&head_samples);
                }
            }
            if unsorted {
                normalize(&mut samples);
            }
            if samples.is_empty() {
                return Ok(None);
            }
            take(1, 0)?;
            Ok(Some((key, samples)))
        };
        let read: Result<Vec<Option<SelectedSeries>>> = if ids.len() >= PARALLEL_SERIES_MIN {
            ids.into_par_iter()
                .zip(head.into_par_iter())
                .map(read_one)
                .collect()
        } else {
            ids.into_iter().zip(head).map(read_one).collect()
        };
        Ok(read?.into_iter().flatten().collect())
    }

    /// Reads and verifies (index, then the whole file's BLAKE3) every segment the start
    /// checked from its footer only, newest first (the likeliest to be read), at a low CPU
    /// priority: damage at rest is found soon after a start that did not read the data.
    /// Stops at close.
    fn verify_segments(&self) {
        lower_thread_priority();
        let mut pending: Vec<(u64, std::sync::Weak<LoadedSegment>)> = self
            .inner
            .state
            .read()
            .segments
            .iter()
            .filter(|s| !s.seg.is_verified())
            .map(|s| (s.seg.info.seq, Arc::downgrade(s)))
            .collect();
        pending.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let started = Instant::now();
        let (mut verified, mut bytes) = (0u64, 0u64);
        for (_, seg) in pending {
            if *self.inner.stop.lock() {
                break;
            }
            // Gone already: compacted or expired since the start.
            let Some(seg) = seg.upgrade() else { continue };
            match seg.index(&self.inner).and_then(|_| seg.seg.verify_whole()) {
                Ok(_) => {
                    verified += 1;
                    bytes += seg.seg.info.size_bytes;
                }
                Err(e @ Error::Corrupt { .. }) => self.inner.note_corruption(&e),
                Err(e) => {
                    tracing::warn!(error = %e, "could not verify a segment; it is verified when it is first read")
                }
            }
        }
        if verified > 0 {
            tracing::info!(
                segments = verified,
                bytes,
                secs = started.elapsed().as_secs_f64(),
                "verified the segments the start checked from their footers"
            );
        }
        *self.inner.verified.lock() = true;
        self.inner.verified_cv.notify_all();
    }

    fn maintenance_loop(&self) {
        let tick = Duration::from_millis(MAINTENANCE_TICK_MS);
        let mut last_flush = Instant::now();
        let mut last_expiry = Instant::now();
        let mut last_compaction = Instant::now();
        let mut compaction_wait = COMPACTION_CHECK_EVERY;
        loop {
            {
                let mut stop = self.inner.stop.lock();
                if !*stop {
                    self.inner.stop_cv.wait_for(&mut stop, tick);
                }
                if *stop {
                    return;
                }
            }
            // Snapshots expire whatever else happens (a poisoned store still holds them),
            // looked for every minute (more often when they live less than two).
            let expiry_every = SNAPSHOT_EXPIRY_EVERY.min(Duration::from_millis(
                (self.inner.config.snapshot_max_age_ms / 2).max(1) as u64,
            ));
            if last_expiry.elapsed() >= expiry_every {
                last_expiry = Instant::now();
                // Not part of the data path: a failure is reported and tried again later.
                if let Err(e) = self.expire_snapshots() {
                    tracing::error!(error = %e, "cannot release expired snapshots");
                }
            }
            if self.inner.poisoned().is_some() {
                continue;
            }
            let (head_samples, head_full) = {
                let state = self.inner.state.read();
                (state.live.samples(), self.inner.head_full(&state.live))
            };
            let interval_due =
                last_flush.elapsed() >= Duration::from_millis(self.inner.config.flush_interval_ms);
            let r = if head_full || (interval_due && head_samples > 0) {
                last_flush = Instant::now();
                self.guarded("flush", || self.flush())
            } else if last_compaction.elapsed() >= compaction_wait {
                // A partition that has gone cold is merged without waiting for a flush. A
                // merge the disk has no room for is not tried every minute (each try fills
                // the disk until it fails, refusing writes meanwhile).
                last_compaction = Instant::now();
                let c = self.guarded("compaction", || self.compact(false).map(|_| ()));
                compaction_wait = match &c {
                    Err(e) if e.is_disk_full() => COMPACTION_BACKOFF,
                    _ => COMPACTION_CHECK_EVERY,
                };
                if let Err(e) = c {
                    tracing::error!(error = %e, "background compaction failed");
                }
                self.guarded("retention", || self.apply_retention().map(|_| ()))
            } else {
                self.guarded("retention", || self.apply_retention().map(|_| ()))
            };
            if let Err(e) = r {
                tracing::error!(error = %e, "background maintenance failed");
            }
        }
    }

    /// Releases the snapshots past their age and forgets their descriptions.
    fn expire_snapshots(&self) -> Result<Vec<String>> {
        let expired = snapshot::expire(
            &self.inner.config.data_dir,
            self.inner.config.snapshot_max_age_ms,
        )?;
        let mut infos = self.inner.snapshot_infos.lock();
        for id in &expired {
            infos.remove(id);
        }
        Ok(expired)
    }
}

/// Which segments of a partition (ascending by seq, that is oldest first) a compaction merges,
/// so that small flushes are not each merged into one large segment (rewriting it, and making
/// the next incremental backup store it again):
/// - all of them when the others together hold at least half as many samples as the largest
///   (samples, not bytes: a merge's work is decoding and encoding them, and a small flush's
///   short blocks take more bytes per sample): each merge grows the largest by half at
///   least, so a sample is rewritten a logarithmic number of times;
/// - else, from `segments_min` segments on, those newer than the largest, when two or more
///   are (a run of the newest, so that the merged segment, which takes the next seq, still
///   wins over every older one where timestamps meet);
/// - else all, from `segments_min` on (the run after the largest is one segment or none:
///   only merging all bounds the count);
/// - else, when the partition is `cold` (no flush has written to it for
///   `compaction_cold_ms`), those newer than the largest when two or more are: a closed
///   partition ends as its large segment and at most one small one (late data), and the
///   large one is not rewritten for a little late data;
/// - else none.
pub(crate) fn compaction_pick(
    group: &[SegmentInfo],
    segments_min: usize,
    cold: bool,
) -> &[SegmentInfo] {
    if group.len() < 2 {
        return &[];
    }
    let (largest, big) = group
        .iter()
        .enumerate()
        .max_by_key(|(i, s)| (s.samples, std::cmp::Reverse(*i)))
        .expect("two or more segments");
    let others: u64 = group.iter().map(|s| s.samples).sum::<u64>() - big.samples;
    if others.saturating_mul(2) >= big.samples {
        return group;
    }
    let newer = &group[largest + 1..];
    if group.len() >= segments_min.max(2) {
        return if newer.len() >= 2 { newer } else { group };
    }
    if cold && newer.len() >= 2 {
        return newer;
    }
    &[]
}

/// The file of a data directory that a process working on it holds locked.
pub const LOCK_FILE: &str = "LOCK";

/// Takes the lock of data directory `dir` (creating its lock file): while the returned file
/// is open, no other tsvault process (a server, a check, a backup of the stopped directory)
/// works on it. `Error::Locked` when another one holds it.
pub fn lock_data_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let lock = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx("open", &path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Locked(dir.to_owned())),
        Err(fs::TryLockError::Error(e)) => Err(e).ctx("lock", path),
    }
}

/// Creates a directory (and missing parents) so that its entry survives power loss.
fn create_dir_durable(d: &Path) -> Result<()> {
    // The levels that do not exist yet, deepest last.
    let missing: Vec<&Path> = d
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.is_dir())
        .collect();
    // A file where a directory is wanted would otherwise be "create ...: File exists".
    if let Some(file) = d.ancestors().find(|a| a.is_file()) {
        return Err(Error::Config(format!(
            "{} is a file, not a directory",
            file.display()
        )));
    }
    fs::create_dir_all(d).ctx("create", d)?;
    // Each new entry is durable once its parent is fsynced. The immediate parent is synced
    // even when `d` already existed: an earlier run may have crashed before its fsync.
    let parent_of = |p: &Path| {
        p.parent()
            .filter(|q| !q.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned()
    };
    let mut parents: Vec<PathBuf> = missing.iter().map(|m| parent_of(m)).collect();
    parents.push(parent_of(d));
    parents.dedup();
    for p in parents {
        sync_dir(&p)?;
    }
    Ok(())
}

/// Allocates the next segment sequence number in both the in-memory manifest and the one
/// being prepared, so that a failed attempt never hands the same number out twice.
fn allocate_seq(current: &mut Manifest, next: &mut Manifest) -> u64 {
    let seq = current.next_segment_seq.max(next.next_segment_seq);
    current.next_segment_seq = seq + 1;
    next.next_segment_seq = seq + 1;
    seq
}

/// How a damaged file is set aside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SetAside {
    /// Move it: nothing of it is served any more.
    Move,
    /// Copy it: the caller cuts the original and keeps serving its valid prefix.
    Copy,
}

/// Sets a damaged file aside in `<data dir>/quarantine/` durably, and describes it.
fn quarantine_as(
    how: SetAside,
    dir: &Path,
    file: &Path,
    reason: String,
    lost: String,
) -> Result<QuarantinedFile> {
    let qdir = dir.join("quarantine");
    create_dir_durable(&qdir)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let moved_to = qdir.join(format!("{}-{name}", system_clock_ms()));
    match how {
        SetAside::Move => {
            fsutil::rename(file, &moved_to)?;
            if let Some(parent) = file.parent() {
                sync_dir(parent)?;
            }
        }
        SetAside::Copy => {
            fs::copy(file, &moved_to).ctx("copy aside", file)?;
            File::open(&moved_to)
                .ctx("open", &moved_to)?
                .sync_all()
                .ctx("fsync", &moved_to)?;
        }
    }
    sync_dir(&qdir)?;
    Ok(QuarantinedFile {
        file: file.to_owned(),
        moved_to,
        reason,
        lost,
    })
}

fn quarantine_copy(
    dir: &Path,
    file: &Path,
    reason: String,
    lost: String,
) -> Result<QuarantinedFile> {
    quarantine_as(SetAside::Copy, dir, file, reason, lost)
}

pub(crate) fn quarantine(
    dir: &Path,
    file: &Path,
    reason: String,
    lost: String,
) -> Result<QuarantinedFile> {
    quarantine_as(SetAside::Move, dir, file, reason, lost)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(seq: u64, samples: u64) -> SegmentInfo {
        SegmentInfo {
            seq,
            partition_start_ms: 0,
            partition_end_ms: 10,
            // Sizes do not decide: samples do.
            size_bytes: 1000 - samples,
            blake3: String::new(),
            series: 1,
            samples,
        }
    }

    fn picked_when(sizes: &[u64], min: usize, cold: bool) -> Vec<u64> {
        let group: Vec<SegmentInfo> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| seg(i as u64 + 1, n))
            .collect();
        compaction_pick(&group, min, cold)
            .iter()
            .map(|s| s.seq)
            .collect()
    }

    fn picked(sizes: &[u64], min: usize) -> Vec<u64> {
        picked_when(sizes, min, false)
    }

    #[test]
    fn compaction_leaves_a_large_segment_alone_until_the_rest_holds_half_its_samples() {
        assert_eq!(picked(&[100], 4), Vec::<u64>::new());
        // Flushes of about one size merge as they come.
        assert_eq!(picked(&[10, 10], 4), vec![1, 2]);
        assert_eq!(picked(&[20, 10], 4), vec![1, 2]);
        // A small flush beside a large segment waits.
        assert_eq!(picked(&[1000, 10], 4), Vec::<u64>::new());
        assert_eq!(picked(&[1000, 10, 10], 4), Vec::<u64>::new());
        assert_eq!(picked(&[1000, 300, 200], 4), vec![1, 2, 3]);
        // From four segments on, the newer ones merge among themselves...
        assert_eq!(picked(&[1000, 10, 10, 10], 4), vec![2, 3, 4]);
        assert_eq!(picked(&[5, 1000, 10, 10], 4), vec![3, 4]);
        // ...and when fewer than two are newer than the largest, everything merges: a
        // merge of older segments alone would take a seq above the largest's and win
        // where timestamps meet.
        assert_eq!(picked(&[10, 10, 10, 1000], 4), vec![1, 2, 3, 4]);
        assert_eq!(picked(&[10, 10, 1000, 10], 4), vec![1, 2, 3, 4]);
        // Equal sizes: the oldest counts as the largest.
        assert_eq!(picked(&[1000, 1000], 4), vec![1, 2]);
        // A cold partition: the small ones after the largest merge, the largest stays.
        assert_eq!(picked_when(&[1000, 10], 4, true), Vec::<u64>::new());
        assert_eq!(picked_when(&[1000, 10, 10], 4, true), vec![2, 3]);
        assert_eq!(picked_when(&[10, 1000, 10], 4, true), Vec::<u64>::new());
        assert_eq!(picked_when(&[1000, 300, 200], 4, true), vec![1, 2, 3]);
        assert_eq!(picked_when(&[1000, 10, 10, 10], 4, true), vec![2, 3, 4]);
    }
}
