//! Group commit: one thread owns the WAL file. Writers hand it batches; it appends every
//! pending batch, fsyncs once, applies them to the head in WAL order, then acknowledges.
//!
//! Nothing is visible in the head before it is durable (under `FsyncMode::Always`), and a
//! failed write or fsync poisons the store: the failed fsync is never retried, because the
//! kernel may already have dropped the dirty pages.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use crate::engine::{FsyncMode, Inner};
use crate::error::{Error, Result};
use crate::head::Head;
use crate::index::SeriesId;
use crate::wal::{WalWriter, encode_batch};

/// Most samples gathered into one group commit.
const COMMIT_SAMPLES_MAX: usize = 4 << 20;

/// What the commit thread is asked to do.
pub(crate) enum CommitRequest {
    /// Make these samples durable, then visible; answer when done.
    Write {
        samples: Vec<(SeriesId, i64, f64)>,
        done: SyncSender<Result<()>>,
    },
    /// Start a new WAL file and move the head aside for flushing: everything in the returned
    /// head came from WAL files numbered below the returned number.
    Rotate {
        done: SyncSender<Result<(u64, Arc<Head>)>>,
    },
    /// Sync and stop.
    Shutdown,
}

pub(crate) fn run(inner: Arc<Inner>, mut wal: WalWriter, rx: Receiver<CommitRequest>) {
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
        while let Some(req) = pending.take() {
            match req {
                CommitRequest::Write { samples, done } => {
                    n_samples += samples.len();
                    writes.push((samples, done));
                    if n_samples < COMMIT_SAMPLES_MAX {
                        pending = rx.try_recv().ok();
                    }
                }
                CommitRequest::Rotate { done } => {
                    commit(
                        &inner,
                        &mut wal,
                        &mut defined,
                        &mut frames,
                        std::mem::take(&mut writes),
                        interval.is_none(),
                    );
                    let _ = done.send(rotate(&inner, &mut wal, &mut defined));
                }
                CommitRequest::Shutdown => {
                    commit(
                        &inner,
                        &mut wal,
                        &mut defined,
                        &mut frames,
                        std::mem::take(&mut writes),
                        true,
                    );
                    sync_or_poison(&inner, &mut wal);
                    return;
                }
            }
        }
        if !writes.is_empty() {
            commit(
                &inner,
                &mut wal,
                &mut defined,
                &mut frames,
                writes,
                interval.is_none(),
            );
            if interval.is_some() && dirty_since.is_none() {
                dirty_since = Some(Instant::now());
            }
        }
        if wal.size_bytes() >= inner.config.wal_segment_bytes_max && inner.poisoned().is_none() {
            // Rolling makes the old file's contents durable first, then opens the next one.
            match wal
                .sync()
                .and_then(|()| WalWriter::create(&inner.wal_dir, wal.number() + 1))
            {
                Ok(next) => {
                    wal = next;
                    defined.clear();
                    dirty_since = None;
                }
                Err(e) => inner.poison(&e),
            }
        }
    }
    sync_or_poison(&inner, &mut wal);
}

fn sync_or_poison(inner: &Inner, wal: &mut WalWriter) {
    if inner.poisoned().is_none()
        && let Err(e) = wal.sync()
    {
        inner.poison(&e);
    }
}

type Write = (Vec<(SeriesId, i64, f64)>, SyncSender<Result<()>>);

fn commit(
    inner: &Inner,
    wal: &mut WalWriter,
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
        frames.clear();
        {
            let registry = inner.registry.read();
            for (samples, _) in &writes {
                let mut defs = Vec::new();
                for &(id, _, _) in samples {
                    let i = id as usize;
                    if i >= defined.len() {
                        defined.resize(i + 1, false);
                    }
                    if !defined[i] {
                        defined[i] = true;
                        defs.push((id, registry.key(id)));
                    }
                }
                for chunk in samples.chunks(1 << 20) {
                    encode_batch(frames, &defs, chunk);
                    defs.clear();
                }
            }
        }
        let r = wal
            .append(frames)
            .and_then(|()| if fsync { wal.sync() } else { Ok(()) });
        if let Err(e) = &r {
            inner.poison(e);
        }
        r.map_err(|e| Error::Poisoned(e.to_string()))
    };
    if result.is_ok() {
        let mut state = inner.state.write();
        for (samples, _) in &writes {
            for &(id, ts, v) in samples {
                state.live.append(id, ts, v);
            }
        }
        let head_full = state.live.samples() >= inner.config.head_samples_max;
        drop(state);
        if head_full {
            inner.wake_maintenance();
        }
    }
    for (_, done) in writes {
        let _ = done.send(match &result {
            Ok(()) => Ok(()),
            Err(e) => Err(Error::Poisoned(e.to_string())),
        });
    }
}

fn rotate(inner: &Inner, wal: &mut WalWriter, defined: &mut Vec<bool>) -> Result<(u64, Arc<Head>)> {
    if let Some(msg) = inner.poisoned() {
        return Err(Error::Poisoned(msg));
    }
    let next = wal
        .sync()
        .and_then(|()| WalWriter::create(&inner.wal_dir, wal.number() + 1));
    let next = match next {
        Ok(n) => n,
        Err(e) => {
            inner.poison(&e);
            return Err(e);
        }
    };
    *wal = next;
    defined.clear();
    let mut state = inner.state.write();
    assert!(
        state.frozen.is_none(),
        "flush invariant: one flush at a time"
    );
    let frozen = Arc::new(std::mem::take(&mut state.live));
    state.frozen = Some(frozen.clone());
    Ok((wal.number(), frozen))
}
