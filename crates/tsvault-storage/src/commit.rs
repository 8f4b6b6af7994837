//! Group commit: one thread owns the WAL file. Writers hand it batches; it appends every
//! pending batch, fsyncs once, applies them to the head in WAL order, then acknowledges.
//!
//! Nothing is visible in the head before it is durable (under `FsyncMode::Always`), and a
//! failed write or fsync poisons the store: the failed fsync is never retried, because the
//! kernel may already have dropped the dirty pages.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::engine::{FsyncMode, Inner};
use crate::error::{Error, Result};
use crate::head::Head;
use crate::index::SeriesId;
use crate::wal::{NextWal, WalWriter, encode_batch};
use tsvault_model::SeriesKey;

/// A frame is closed once its definitions and samples reach this size, so that no frame
/// comes near `WAL_RECORD_BYTES_MAX` (one series key adds at most about 2 MiB past it).
const WAL_FRAME_BUDGET_BYTES: usize = 16 << 20;
/// The most bytes one sample takes in a frame (id, timestamp and value).
const SAMPLE_FRAME_BYTES_MAX: usize = 5 + 10 + 8;

/// Most samples gathered into one group commit.
const COMMIT_SAMPLES_MAX: usize = 4 << 20;

/// What the commit thread is asked to do.
pub(crate) enum CommitRequest {
    /// Make these samples durable, then visible; answer when done. With `sync`, they are
    /// fsynced before the answer whatever the fsync mode (a client that asked for it).
    Write {
        samples: Vec<(SeriesId, i64, f64)>,
        done: SyncSender<Result<()>>,
        sync: bool,
    },
    /// Start a new WAL file and move the head aside for flushing: everything in the returned
    /// head came from WAL files numbered below the returned number.
    Rotate {
        done: SyncSender<Result<(u64, Arc<Head>)>>,
    },
    /// Sync the WAL file and start the next one (for a snapshot); answer with its number.
    Roll { done: SyncSender<Result<u64>> },
    /// Make durable and visible those of these samples whose series has no sample at that
    /// timestamp in the head (the caller checked the segments); answer with how many.
    Import {
        samples: Vec<(SeriesId, i64, f64)>,
        done: SyncSender<Result<usize>>,
    },
    /// Sync and stop.
    Shutdown,
}

/// The WAL file the commit thread writes, or the one it will create first: a start that
/// found the disk full serves reads, and each write tries to create the file until there
/// is room (until then it is refused with the disk-full error, as any write on a full disk).
pub(crate) enum Wal {
    Open(WalWriter),
    ToCreate(NextWal),
}

impl Wal {
    /// The open file, created first if need be. A full disk leaves it to create (the error
    /// is returned); any other failure to create it poisons.
    fn file(&mut self, inner: &Inner) -> Result<&mut WalWriter> {
        if let Wal::ToCreate(next) = self {
            match next.create() {
                Ok(file) => {
                    tracing::info!(file = %file.path().display(), "there is room again: the WAL file is created and writes are taken");
                    *self = Wal::Open(file);
                }
                Err(e) => {
                    if !e.is_disk_full() {
                        inner.poison(&e);
                    }
                    return Err(e);
                }
            }
        }
        match self {
            Wal::Open(file) => Ok(file),
            Wal::ToCreate(_) => unreachable!("the WAL file was created above"),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        match self {
            Wal::Open(file) => file.path().to_owned(),
            Wal::ToCreate(next) => next.path(),
        }
    }
}

pub(crate) fn run(inner: Arc<Inner>, wal: Wal, rx: Receiver<CommitRequest>) {
    let watcher = inner.clone();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_loop(inner, wal, rx)));
    if let Err(panic) = outcome {
        // A broken invariant: refuse writes visibly instead of answering "shutting down".
        watcher.poison(&Error::Internal(format!(
            "the commit thread panicked: {}",
            panic_message(&*panic)
        )));
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

fn run_loop(inner: Arc<Inner>, mut wal: Wal, rx: Receiver<CommitRequest>) {
    let mut defined: Vec<bool> = Vec::new();
    let mut frames: Vec<u8> = Vec::new();
    let interval = match inner.config.fsync {
        FsyncMode::Always => None,
        FsyncMode::Interval { interval_ms } => Some(Duration::from_millis(interval_ms.max(1))),
    };
    let mut dirty_since: Option<Instant> = None;
    loop {
        let first = match (interval, dirty_since) {
            (Some(iv), Some(since)) => match rx.recv_timeout(iv.saturating_sub(since.elapsed())) {
                Ok(r) => r,
                Err(RecvTimeoutError::Timeout) => {
                    sync_or_poison(&inner, &mut wal);
                    dirty_since = None;
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            _ => match rx.recv() {
                Ok(r) => r,
                Err(_) => break,
            },
        };
        let mut writes = Vec::new();
        let mut pending = Some(first);
        let mut n_samples = 0;
        let mut sync_asked = false;
        while let Some(req) = pending.take() {
            match req {
                CommitRequest::Write {
                    samples,
                    done,
                    sync,
                } => {
                    sync_asked |= sync;
                    n_samples += samples.len();
                    writes.push((samples, done));
                    if n_samples < COMMIT_SAMPLES_MAX {
                        pending = rx.try_recv().ok();
                    }
                }
                control => {
                    // Writes received before a control request are committed first, so that
                    // it sees them; a shutdown syncs them whatever the fsync mode.
                    let fsync = interval.is_none()
                        || sync_asked
                        || matches!(control, CommitRequest::Shutdown);
                    let had_writes = !writes.is_empty();
                    commit(
                        &inner,
                        &mut wal,
                        &mut defined,
                        &mut frames,
                        std::mem::take(&mut writes),
                        fsync,
                    );
                    // Written without an fsync (interval mode): the interval starts now,
                    // whatever the control request does next.
                    if had_writes && !fsync && dirty_since.is_none() {
                        dirty_since = Some(Instant::now());
                    }
                    if had_writes && fsync {
                        dirty_since = None;
                    }
                    match control {
                        CommitRequest::Write { .. } => {
                            unreachable!("commit thread invariant: writes are matched above")
                        }
                        CommitRequest::Rotate { done } => {
                            let _ = done.send(rotate(&inner, &mut wal, &mut defined));
                        }
                        CommitRequest::Roll { done } => {
                            let rolled = roll(&inner, &mut wal, &mut defined);
                            if rolled.is_ok() {
                                dirty_since = None;
                            }
                            let _ = done.send(rolled);
                        }
                        CommitRequest::Import { samples, done } => {
                            let kept = absent_from_head(&inner, samples);
                            let n = kept.len();
                            if n == 0 {
                                let _ = done.send(Ok(0));
                                continue;
                            }
                            let (tx, rx) = std::sync::mpsc::sync_channel(1);
                            commit(
                                &inner,
                                &mut wal,
                                &mut defined,
                                &mut frames,
                                vec![(kept, tx)],
                                interval.is_none(),
                            );
                            if interval.is_some() && dirty_since.is_none() {
                                dirty_since = Some(Instant::now());
                            }
                            let _ = done.send(rx.recv().unwrap_or(Err(Error::Closed)).map(|()| n));
                        }
                        CommitRequest::Shutdown => {
                            sync_or_poison(&inner, &mut wal);
                            return;
                        }
                    }
                }
            }
        }
        if !writes.is_empty() {
            let fsync = interval.is_none() || sync_asked;
            commit(&inner, &mut wal, &mut defined, &mut frames, writes, fsync);
            if fsync {
                dirty_since = None;
            } else if dirty_since.is_none() {
                dirty_since = Some(Instant::now());
            }
        }
        // Under sustained load the receive above never times out: the interval is kept
        // here too, so that no acknowledged write stays unsynced much past it.
        if let (Some(iv), Some(since)) = (interval, dirty_since)
            && since.elapsed() >= iv
        {
            sync_or_poison(&inner, &mut wal);
            dirty_since = None;
        }
        if matches!(&wal, Wal::Open(file) if file.size_bytes() >= inner.config.wal_segment_bytes_max)
            && inner.poisoned().is_none()
            && roll(&inner, &mut wal, &mut defined).is_ok()
        {
            dirty_since = None;
        }
    }
    sync_or_poison(&inner, &mut wal);
}

/// Fsyncs the WAL file (there is nothing to sync before it is created).
fn sync_or_poison(inner: &Inner, wal: &mut Wal) {
    if let Wal::Open(file) = wal
        && inner.poisoned().is_none()
        && let Err(e) = sync_wal(inner, file)
    {
        inner.poison(&e);
    }
}

/// Fsyncs the WAL file, counting it.
fn sync_wal(inner: &Inner, wal: &mut WalWriter) -> Result<()> {
    wal.sync()?;
    inner
        .stats
        .wal_fsyncs
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

type Write = (Vec<(SeriesId, i64, f64)>, SyncSender<Result<()>>);

fn commit(
    inner: &Inner,
    wal: &mut Wal,
    defined: &mut Vec<bool>,
    frames: &mut Vec<u8>,
    writes: Vec<Write>,
    fsync: bool,
) {
    if writes.is_empty() {
        return;
    }
    let result = if let Some(msg) = inner.poisoned() {
        Err(Error::Poisoned(msg))
    } else {
        append_writes(inner, wal, defined, frames, &writes, fsync)
    };
    if result.is_ok() {
        let mut state = inner.state.write();
        for (samples, _) in &writes {
            for &(id, ts, v) in samples {
                state.live.append(id, ts, v);
            }
        }
        let head_full = inner.head_full(&state.live);
        drop(state);
        if head_full {
            inner.wake_maintenance();
        }
    }
    for (_, done) in writes {
        let _ = done.send(match &result {
            Ok(()) => Ok(()),
            Err(e) if e.is_disk_full() => Err(Error::Io {
                op: "write",
                path: wal.path(),
                source: std::io::Error::from_raw_os_error(28),
            }),
            Err(e) => Err(Error::Poisoned(e.to_string())),
        });
    }
}

/// Appends the writes to the WAL file (creating it first if need be) and fsyncs when asked.
/// A full disk refuses them and leaves the file as before; any other failure poisons.
fn append_writes(
    inner: &Inner,
    wal: &mut Wal,
    defined: &mut Vec<bool>,
    frames: &mut Vec<u8>,
    writes: &[Write],
    fsync: bool,
) -> Result<()> {
    let wal = wal.file(inner)?;
    frames.clear();
    let mut newly_defined = Vec::new();
    {
        let registry = inner.registry.read();
        for (samples, _) in writes {
            encode_write(
                frames,
                defined,
                &mut newly_defined,
                |id| registry.key(id),
                samples,
            );
        }
    }
    let before = wal.size_bytes();
    match wal.append(frames) {
        // A full disk refuses the write; whatever part of it reached the file is cut
        // off, so the WAL ends at its last whole record and later writes go on once
        // there is room. The series it defined are defined again by the next write
        // that uses them (found by the disk-fault test: without this, that write's
        // samples named a series the WAL never defined, and the file did not replay).
        // A failed fsync is another matter: below, it poisons.
        Err(e) if e.is_disk_full() => match wal.rewind(before) {
            Ok(()) => {
                for id in newly_defined {
                    defined[id as usize] = false;
                }
                Err(e)
            }
            Err(cut) => {
                inner.poison(&cut);
                Err(Error::Poisoned(cut.to_string()))
            }
        },
        r => {
            let r = r.and_then(|()| if fsync { sync_wal(inner, wal) } else { Ok(()) });
            if let Err(e) = &r {
                inner.poison(e);
            }
            r.map_err(|e| Error::Poisoned(e.to_string()))
        }
    }
}

/// Encodes one write as frames of bounded size. Each series id not yet defined in the current
/// WAL file is defined in the frame that first uses it, so every frame replays on its own;
/// the ids it defines are added to `newly_defined`.
fn encode_write<'k>(
    frames: &mut Vec<u8>,
    defined: &mut Vec<bool>,
    newly_defined: &mut Vec<SeriesId>,
    key_of: impl Fn(SeriesId) -> &'k SeriesKey,
    samples: &[(SeriesId, i64, f64)],
) {
    let mut defs: Vec<(SeriesId, &SeriesKey)> = Vec::new();
    let mut start = 0;
    let mut frame_bytes = 0;
    for (i, &(id, _, _)) in samples.iter().enumerate() {
        let idx = id as usize;
        if idx >= defined.len() {
            defined.resize(idx + 1, false);
        }
        if !defined[idx] {
            defined[idx] = true;
            newly_defined.push(id);
            let key = key_of(id);
            frame_bytes += key.as_str().len() + 16;
            defs.push((id, key));
        }
        frame_bytes += SAMPLE_FRAME_BYTES_MAX;
        if frame_bytes >= WAL_FRAME_BUDGET_BYTES {
            encode_batch(frames, &defs, &samples[start..=i]);
            defs.clear();
            start = i + 1;
            frame_bytes = 0;
        }
    }
    if start < samples.len() {
        encode_batch(frames, &defs, &samples[start..]);
    }
}

/// Makes the WAL file's contents durable, then starts the next file (a failure poisons);
/// returns the new file's number. A file still to create is created instead: everything
/// in the head came from the files before it.
fn roll(inner: &Inner, wal: &mut Wal, defined: &mut Vec<bool>) -> Result<u64> {
    if let Some(msg) = inner.poisoned() {
        return Err(Error::Poisoned(msg));
    }
    let file = match wal {
        Wal::ToCreate(_) => {
            let number = wal.file(inner)?.number();
            defined.clear();
            return Ok(number);
        }
        Wal::Open(file) => file,
    };
    if let Err(e) = sync_wal(inner, file) {
        inner.poison(&e);
        return Err(e);
    }
    match WalWriter::create(
        &inner.wal_dir,
        file.number() + 1,
        Some((file.number(), file.size_bytes())),
    ) {
        Ok(next) => {
            *file = next;
            defined.clear();
            Ok(file.number())
        }
        // A full disk: the current file, synced whole above, stays the WAL, and the roll (a
        // flush's, a snapshot's) fails and is tried again later; `create` left no file.
        Err(e) if e.is_disk_full() => Err(e),
        Err(e) => {
            inner.poison(&e);
            Err(e)
        }
    }
}

/// The samples of an import whose series has no sample at their timestamp in the head (live
/// or being flushed); of repeated timestamps in the import, the first.
fn absent_from_head(
    inner: &Inner,
    samples: Vec<(SeriesId, i64, f64)>,
) -> Vec<(SeriesId, i64, f64)> {
    // Each series' head samples are looked at only within the import's time range for it:
    // this runs on the commit thread, which every writer waits on.
    let mut range: HashMap<SeriesId, (i64, i64)> = HashMap::new();
    for &(id, ts, _) in &samples {
        let r = range.entry(id).or_insert((ts, ts));
        *r = (r.0.min(ts), r.1.max(ts));
    }
    let state = inner.state.read();
    let mut present: HashMap<SeriesId, HashSet<i64>> = HashMap::new();
    let mut buf = Vec::new();
    let mut out = Vec::with_capacity(samples.len());
    for (id, ts, v) in samples {
        let set = present.entry(id).or_insert_with(|| {
            let (start, end) = range[&id];
            buf.clear();
            if let Some(f) = &state.frozen {
                f.collect(id, start, end, &mut buf);
            }
            state.live.collect(id, start, end, &mut buf);
            buf.iter().map(|s| s.ts_ms).collect()
        });
        if set.insert(ts) {
            out.push((id, ts, v));
        }
    }
    out
}

fn rotate(inner: &Inner, wal: &mut Wal, defined: &mut Vec<bool>) -> Result<(u64, Arc<Head>)> {
    let number = roll(inner, wal, defined)?;
    let mut state = inner.state.write();
    if state.frozen.is_some() {
        return Err(Error::Internal(
            "a flush was asked for while another one's data is still being written".into(),
        ));
    }
    let empty = state.live.empty_like();
    let frozen = Arc::new(std::mem::replace(&mut state.live, empty));
    state.frozen = Some(frozen.clone());
    drop(state);
    // Writes held back by a full head go on.
    inner.flush_ended();
    Ok((number, frozen))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{WAL_RECORD_BYTES_MAX, read_wal_file};

    #[test]
    fn large_writes_become_bounded_self_contained_frames() {
        // 24 series with keys of about 1 MiB each: more than one frame budget of definitions.
        let tags: Vec<(String, String)> = (0..250)
            .map(|t| (format!("t{t:03}"), "v".repeat(4000)))
            .collect();
        let keys: Vec<SeriesKey> = (0..24)
            .map(|i| SeriesKey::new(&format!("m{i}"), &tags).unwrap())
            .collect();
        let samples: Vec<(SeriesId, i64, f64)> = (0..48u32)
            .map(|i| (i % 24, i64::from(i), f64::from(i)))
            .collect();
        let mut frames = Vec::new();
        let mut defined = Vec::new();
        encode_write(
            &mut frames,
            &mut defined,
            &mut Vec::new(),
            |id| &keys[id as usize],
            &samples,
        );

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("1.wal");
        let mut bytes = crate::wal::WAL_MAGIC.to_vec();
        bytes.extend_from_slice(&frames);
        std::fs::write(&path, &bytes).unwrap();
        let mut n_frames = 0;
        let mut got = Vec::new();
        let mut seen_defs = std::collections::HashSet::new();
        let end = read_wal_file(&path, |batch| {
            n_frames += 1;
            seen_defs.extend(batch.defs.iter().map(|(id, _)| *id));
            // Every sample's series is defined in this frame or an earlier one.
            assert!(
                batch
                    .samples
                    .iter()
                    .all(|(id, _, _)| seen_defs.contains(id))
            );
            got.extend(batch.samples);
            Ok(())
        })
        .unwrap();
        assert_eq!(end, crate::wal::WalEnd::Clean);
        assert!(n_frames >= 2, "{n_frames} frames");
        assert_eq!(got, samples);
        // Every frame closes near the budget: at most one key and one sample past it.
        let key_max = keys.iter().map(|k| k.as_str().len()).max().unwrap();
        let mut off = 0;
        while off < frames.len() {
            let len = u32::from_le_bytes(frames[off..off + 4].try_into().unwrap()) as usize;
            assert!(
                len <= WAL_FRAME_BUDGET_BYTES + key_max + 64,
                "a frame of {len} bytes"
            );
            assert!(len < WAL_RECORD_BYTES_MAX);
            off += 8 + len;
        }
    }
}
