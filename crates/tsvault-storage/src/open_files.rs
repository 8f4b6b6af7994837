//! The segment files held open, shared by every segment of the process and bounded (as
//! RocksDB's `max_open_files`): a data directory of any number of segments works under a
//! soft limit of 1,024 open files. A segment's file is opened when a read needs it and
//! closed when it has been the least recently read of more than [`open_files_max`].

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{IoContext, Result};

struct OpenFiles {
    files: HashMap<u64, (Arc<File>, u64)>,
    tick: u64,
    max: usize,
}

static OPEN_FILES: parking_lot::Mutex<Option<OpenFiles>> = parking_lot::Mutex::new(None);
static NEXT_SEGMENT_ID: AtomicU64 = AtomicU64::new(0);

/// The default bound on open segment files: well under a soft limit of 1,024, which also
/// has the connections, the WAL and the backups to serve.
pub const OPEN_SEGMENT_FILES_DEFAULT: usize = 256;

fn cache(g: &mut Option<OpenFiles>) -> &mut OpenFiles {
    g.get_or_insert_with(|| OpenFiles {
        files: HashMap::new(),
        tick: 0,
        max: OPEN_SEGMENT_FILES_DEFAULT,
    })
}

/// Sets how many segment files the process keeps open at most (at least 8).
pub fn set_open_files_max(max: usize) {
    let mut g = OPEN_FILES.lock();
    let c = cache(&mut g);
    c.max = max.max(8);
    while c.files.len() > c.max {
        evict_one(c);
    }
}

/// How many segment files the process keeps open at most.
pub fn open_files_max() -> usize {
    OPEN_FILES
        .lock()
        .as_ref()
        .map_or(OPEN_SEGMENT_FILES_DEFAULT, |c| c.max)
}

/// How many segment files are open now.
pub fn open_files() -> usize {
    OPEN_FILES.lock().as_ref().map_or(0, |c| c.files.len())
}

fn evict_one(c: &mut OpenFiles) {
    if let Some((&id, _)) = c.files.iter().min_by_key(|(_, (_, used))| *used) {
        c.files.remove(&id);
    }
}

/// A key for a new segment (unique in the process: a path can be used again).
pub(crate) fn next_id() -> u64 {
    NEXT_SEGMENT_ID.fetch_add(1, Ordering::Relaxed)
}

/// The open file of segment `id` at `path`, from the cache or opened now (evicting the
/// least recently read when the cache is at its bound).
pub(crate) fn get_or_open(id: u64, path: &Path) -> Result<Arc<File>> {
    {
        let mut g = OPEN_FILES.lock();
        let c = cache(&mut g);
        c.tick += 1;
        let tick = c.tick;
        if let Some((f, used)) = c.files.get_mut(&id) {
            *used = tick;
            return Ok(f.clone());
        }
    }
    // Opened outside the lock; a read in flight keeps its Arc even if evicted meanwhile.
    let file = Arc::new(File::open(path).ctx("open", path)?);
    let mut g = OPEN_FILES.lock();
    let c = cache(&mut g);
    while c.files.len() >= c.max {
        evict_one(c);
    }
    c.tick += 1;
    let tick = c.tick;
    c.files.insert(id, (file.clone(), tick));
    Ok(file)
}

/// Closes segment `id`'s file (the segment is gone).
pub(crate) fn forget(id: u64) {
    if let Some(c) = OPEN_FILES.lock().as_mut() {
        c.files.remove(&id);
    }
}
