//! Backups of a stopped data directory, and restores into an empty one.
//!
//! Also the online backups of a server's snapshot (`backup_online`, over either `Snapshots`:
//! HTTP, or the engine in this process), the snapshot taken while the repository is locked and
//! released once its files are read. Small files are gathered into packs; a segment's digests,
//! totals and series-index keys are taken in one walk of its index
//! (`tsvault_storage::segment_index`) without allocating per series; a larger segment is read
//! once, whole, and its 8 MiB chunks cut from the bytes walked (files read whole at once held to
//! 256 MiB). Verify has three levels: structure, read-data and deep.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rand::RngCore;
use tokio::sync::{OnceCell, Semaphore};
use tsvault_storage::{DigestBasis, SNAPSHOTS_DIR, SeriesDigest};

use crate::crypto::Compression;
use crate::digest_blob;
use crate::direct_write::NewFile;
use crate::error::{Error, Result, off_thread, panicked};
use crate::locks::{Lock, LockKind, now_ms};
use crate::manifest::{BackupManifest, BackupType, DataSummary, FileEntry, Packed};
use crate::prune::civil;
use crate::repo::Repository;
use crate::selective::engine_err;
use crate::source::{ServerClient, Source, SourceFile, dir_name};
use tsvault_storage::RESTORE_MARKER;
use tsvault_storage::SnapshotInfo;

/// Files are cut into blobs of this size: big enough that per-object overhead is small,
/// small enough that an appended WAL file shares all but its last blob with its last backup.
pub const CHUNK_BYTES: usize = 8 << 20;

/// Progress of a long operation: bytes done of a total.
pub trait Progress: Sync {
    fn start(&self, total_bytes: u64);
    fn advance(&self, bytes: u64);
}

/// A progress sink that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// A new backup id: the UTC time to the millisecond, then random hex, so ids sort by time.
pub(crate) fn new_backup_id(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut rnd = [0u8; 4];
    rand::rng().fill_bytes(&mut rnd);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}.{:03}Z-{}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms.rem_euclid(1000),
        hex::encode(rnd)
    )
}

/// Backs up the stopped data directory `dir`. `kind` None: incremental when the repository
/// holds a full backup of this directory, else full. Incremental (against the newest backup
/// of the directory) and differential (against its newest full) backups list every file but
/// read only those whose size or modification time changed. Refuses a directory a running
/// server holds (its lock is taken). Blobs first, the manifest last.
pub async fn backup_data_dir(
    repo: &Repository,
    dir: &Path,
    kind: Option<BackupType>,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    if !dir.join("MANIFEST").is_file() && !dir.join("wal").is_dir() {
        return Err(Error::Invalid(format!(
            "{} is not a tsvault data directory (no MANIFEST, no wal/)",
            dir.display()
        )));
    }
    if dir.join(RESTORE_MARKER).exists() {
        return Err(Error::Invalid(format!(
            "{} holds an interrupted restore; finish it (run the restore again) before backing it up",
            dir.display()
        )));
    }
    // A running server holds the directory's lock; holding it here keeps one from starting
    // on the directory while it is read.
    let lock = match tsvault_storage::lock_data_dir(dir) {
        Ok(lock) => lock,
        Err(tsvault_storage::Error::Locked(_)) => {
            return Err(Error::Invalid(format!(
                "{} is in use by a running tsvault server; stop it, or back it up online with --server",
                dir.display()
            )));
        }
        Err(e) => return Err(engine_err("locking the data directory")(e)),
    };
    let repo_lock = Lock::acquire(repo, LockKind::Backup).await?;
    let source = Source::Dir(dir.to_path_buf());
    let result = backup_locked(repo, &source, kind, progress, repo_lock, None).await;
    drop(lock);
    result
}

/// Backs up a running server online: asks it for a snapshot (writes keep flowing; the
/// backup is the image at the snapshot), pulls the snapshot's files over HTTP into the
/// repository, and releases the snapshot (also when the backup fails). `kind` as for
/// [`backup_data_dir`]; backups of a server are known by its URL.
///
/// `server_dir`: the server's data directory, when this machine sees it (a backup run on
/// the server's machine): the snapshot's files are then read in its `snapshots/<id>/`
/// rather than through the server, and their digests computed here. Either way each file
/// is checked against the server's listing (size and BLAKE3), and the backup is the same.
pub async fn backup_server(
    repo: &Repository,
    url: &str,
    server_dir: Option<&Path>,
    kind: Option<BackupType>,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    let client = ServerClient::new(url)?;
    backup_online(
        repo,
        &ServerSnapshots { client, server_dir },
        kind,
        progress,
    )
    .await
}

/// Backs up the data of `engine`, open in this process (a backup the server runs itself):
/// the same as [`backup_server`] on its machine, without HTTP. Backups are known by the
/// data directory's canonical path, so they continue a chain of backups taken of the
/// stopped directory (`kind` as for [`backup_data_dir`]).
pub async fn backup_engine(
    repo: &Repository,
    engine: Arc<tsvault_storage::Engine>,
    kind: Option<BackupType>,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    let dir = engine.data_dir().to_path_buf();
    let name = dir_name(&dir)?;
    let snapshots = EngineSnapshots { engine, dir, name };
    backup_online(repo, &snapshots, kind, progress).await
}

/// Who takes and releases the snapshot an online backup reads.
trait Snapshots {
    async fn take(&self) -> Result<SnapshotInfo>;
    async fn release(&self, id: &str) -> Result<()>;
    /// The source that reads `snapshot`.
    fn source(&self, snapshot: SnapshotInfo) -> Result<Source>;
    /// The error for complete backup `backup`, whose snapshot `sid` was not released.
    fn unreleased(&self, backup: &str, sid: &str, e: Error) -> Error;
}

/// A running server's snapshots, through its admin API.
struct ServerSnapshots<'a> {
    client: ServerClient,
    server_dir: Option<&'a Path>,
}

impl Snapshots for ServerSnapshots<'_> {
    async fn take(&self) -> Result<SnapshotInfo> {
        self.client.take_snapshot().await
    }

    async fn release(&self, id: &str) -> Result<()> {
        self.client.release_snapshot(id).await
    }

    fn source(&self, snapshot: SnapshotInfo) -> Result<Source> {
        let local = self
            .server_dir
            .map(|d| d.join(SNAPSHOTS_DIR).join(&snapshot.id));
        if let Some(missing) = local.as_deref().filter(|l| !l.is_dir()) {
            return Err(Error::Invalid(format!(
                "--server-data-dir: the server at {} took snapshot {}, but {} does not exist here: give that server's data directory as this machine sees it, or leave the option out to pull the files over HTTP",
                self.client.base,
                snapshot.id,
                missing.display()
            )));
        }
        Ok(Source::Server {
            client: self.client.clone(),
            snapshot,
            local,
        })
    }

    fn unreleased(&self, backup: &str, sid: &str, e: Error) -> Error {
        let base = &self.client.base;
        Error::Server {
            url: base.clone(),
            detail: format!(
                "backup {backup} is complete, but snapshot {sid} was not released ({e}); release it with DELETE {base}/api/admin/snapshots/{sid}"
            ),
        }
    }
}

/// The snapshots of an engine open in this process.
struct EngineSnapshots {
    engine: Arc<tsvault_storage::Engine>,
    dir: PathBuf,
    name: String,
}

impl Snapshots for EngineSnapshots {
    async fn take(&self) -> Result<SnapshotInfo> {
        let engine = self.engine.clone();
        off_thread("taking a snapshot", move || engine.snapshot())
            .await?
            .map_err(|e| Error::Engine(format!("taking a snapshot: {e}")))
    }

    async fn release(&self, id: &str) -> Result<()> {
        let (engine, sid) = (self.engine.clone(), id.to_string());
        off_thread("releasing a snapshot", move || {
            engine.release_snapshot(&sid)
        })
        .await?
        .map_err(|e| Error::Engine(format!("releasing snapshot {id}: {e}")))
    }

    fn source(&self, snapshot: SnapshotInfo) -> Result<Source> {
        let dir = self.dir.join(SNAPSHOTS_DIR).join(&snapshot.id);
        Ok(Source::Snapshot {
            name: self.name.clone(),
            snapshot,
            dir,
        })
    }

    fn unreleased(&self, backup: &str, sid: &str, e: Error) -> Error {
        Error::Engine(format!(
            "backup {backup} is complete, but snapshot {sid} was not released ({e}); it is released when it expires"
        ))
    }
}

/// An online backup of the snapshot `snapshots` takes while the repository is locked; the
/// snapshot is released once every file is read, while the manifest is written (or when
/// the backup fails).
async fn backup_online(
    repo: &Repository,
    snapshots: &impl Snapshots,
    kind: Option<BackupType>,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    let (repo_lock, snapshot) =
        tokio::join!(Lock::acquire(repo, LockKind::Backup), snapshots.take());
    let (repo_lock, snapshot) = match (repo_lock, snapshot) {
        (Ok(lock), Ok(snapshot)) => (lock, snapshot),
        (Ok(lock), Err(e)) => {
            let _ = lock.release(repo).await;
            return Err(e);
        }
        (Err(e), snapshot) => {
            if let Ok(s) = snapshot {
                let _ = snapshots.release(&s.id).await;
            }
            return Err(e);
        }
    };
    let sid = snapshot.id.clone();
    let (read_tx, read_rx) = tokio::sync::oneshot::channel();
    let backup = async {
        match snapshots.source(snapshot) {
            Err(e) => {
                let _ = repo_lock.release(repo).await;
                Err(e)
            }
            Ok(source) => {
                backup_locked(repo, &source, kind, progress, repo_lock, Some(read_tx)).await
            }
        }
    };
    let release = async {
        // An error here is the backup's end without sending: released all the same.
        let _ = read_rx.await;
        snapshots.release(&sid).await
    };
    let (result, released) = tokio::join!(backup, release);
    match (result, released) {
        (Ok(m), Ok(())) => Ok(m),
        (Ok(m), Err(e)) => Err(snapshots.unreleased(&m.id, &sid, e)),
        // The backup's own error is the one to report; a snapshot that could not be
        // released either is released by the server when it expires (24 h).
        (Err(e), _) => Err(e),
    }
}

/// The body of [`backup_data_dir`], holding the repository's shared lock, which it releases
/// (on success and on failure) after the manifest is written. `files_read` is told when every
/// file of `source` has been read.
async fn backup_locked(
    repo: &Repository,
    source: &Source,
    kind: Option<BackupType>,
    progress: &dyn Progress,
    repo_lock: Lock,
    files_read: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<BackupManifest> {
    let written = write_backup(repo, source, kind, progress, &repo_lock, files_read).await;
    let released = repo_lock.release(repo).await;
    let manifest = written?;
    released?;
    Ok(manifest)
}

/// What a backup of `source` of type `kind` (`None`: the default) is taken against, and
/// whether the source has a full backup, from a scan of the manifests from the newest: an
/// incremental backup's reference is the newest backup of the source, a differential's its
/// newest full. The scan stops at the newest full, or, for an incremental, at the newest
/// backup when the full at the root of its chain (its `base`) is still listed: a chain of
/// daily incrementals does not read one more manifest each day.
async fn find_reference(
    repo: &Repository,
    source: &str,
    kind: Option<BackupType>,
) -> Result<(Option<BackupManifest>, bool)> {
    let differential = kind == Some(BackupType::Differential);
    let ids = repo.backup_ids().await?;
    let mut newest = None;
    for id in ids.iter().rev() {
        let m = repo.manifest(id).await?;
        if m.source != source {
            continue;
        }
        if m.kind == BackupType::Full {
            return Ok((
                Some(if differential { m } else { newest.unwrap_or(m) }),
                true,
            ));
        }
        if newest.is_none()
            && !differential
            && m.base
                .as_ref()
                .is_some_and(|b| ids.binary_search(b).is_ok())
        {
            return Ok((Some(m), true));
        }
        newest.get_or_insert(m);
    }
    Ok((if differential { None } else { newest }, false))
}

async fn write_backup(
    repo: &Repository,
    source: &Source,
    kind: Option<BackupType>,
    progress: &dyn Progress,
    repo_lock: &Lock,
    files_read: Option<tokio::sync::oneshot::Sender<()>>,
) -> Result<BackupManifest> {
    let started_ms = now_ms();
    let source_name = source.name()?;
    let (reference, has_full) = match kind {
        Some(BackupType::Full) => (None, false),
        _ => find_reference(repo, &source_name, kind).await?,
    };
    // Default: incremental when a full backup of this source exists, else full.
    let kind = kind.unwrap_or(if has_full {
        BackupType::Incremental
    } else {
        BackupType::Full
    });
    let reference = if kind == BackupType::Full {
        None
    } else {
        reference
    };
    if kind != BackupType::Full && reference.is_none() {
        return Err(Error::Invalid(format!(
            "no full backup of {source_name} in repository {} to take a {} backup against; take a full one first",
            repo.url,
            if kind == BackupType::Incremental {
                "incremental"
            } else {
                "differential"
            }
        )));
    }
    let known: HashMap<&str, &FileEntry> = reference
        .iter()
        .flat_map(|m| m.files.iter().map(|f| (f.path.as_str(), f)))
        .collect();
    // The series count of an incremental or differential backup starts from its
    // reference's series index; files it reuses are then counted from their entries' stats
    // without reading their digests. Backups written before indexes existed are counted
    // from every file's digests.
    let mut summary = SummaryAcc::default();
    let start_from = match &reference {
        Some(r)
            if r.files
                .iter()
                .all(|f| f.stats.is_some() && f.digests.is_some()) =>
        {
            r.series_index.as_deref()
        }
        _ => None,
    };
    if let Some(id) = start_from {
        summary.index = SeriesIndex::load(repo, id).await?;
    }
    let reuse_index = start_from.is_some();
    let consistency = source.consistency()?;
    let files = source.files()?;
    progress.start(files.iter().map(|f| f.size).sum());
    let blob_slots = Semaphore::new(BLOBS_IN_FLIGHT);
    // In a local repository every blob of the reference is checked at once.
    let mut present = HashMap::new();
    if let Some(r) = &reference {
        let referenced: HashSet<&String> = r.files.iter().flat_map(|f| f.all_blobs()).collect();
        let ids = referenced.into_iter().cloned().collect();
        if let Some(held) = repo.local_blobs_held(ids).await? {
            present.extend(
                held.into_iter()
                    .map(|(id, h)| (id, Arc::new(OnceCell::new_with(Some(h))))),
            );
        }
    }
    let ctx = FileCtx {
        repo,
        source,
        source_name: &source_name,
        progress,
        repo_lock,
        blob_slots: &blob_slots,
        whole_reads: Semaphore::new(WHOLE_READS_MIB as usize),
        present: Mutex::new(present),
        key_hash: summary.index.hash,
    };
    // Several files at once (in order): a snapshot of small files, or a server digesting
    // one file per core, would otherwise wait on one round trip after another.
    let mut done = futures::stream::iter(files)
        .map(|file| ctx.backup_file(known.get(file.path.as_str()).copied(), file, reuse_index))
        .buffered(FILES_IN_FLIGHT);
    let mut entries: Vec<FileEntry> = Vec::new();
    let mut reused = HashSet::new();
    let (mut logical, mut uploaded, mut read, mut deduplicated) = (0u64, 0u64, 0u64, 0u64);
    // Small files go into packs, in file order; a pack is uploaded while the next files are
    // read, and its files' entries name it once it is stored.
    let mut packer = Packer::new(
        repo.pack_target.unwrap_or(PACK_TARGET),
        repo.compress_segments,
    );
    let mut uploads = FuturesOrdered::new();
    let mut all_read = false;
    loop {
        tokio::select! {
            next = done.next(), if !all_read && uploads.len() < PACKS_IN_FLIGHT => {
                let Some(file) = next else {
                    all_read = true;
                    if let Some(pack) = packer.take() {
                        uploads.push_back(store_pack(repo, pack));
                    }
                    continue;
                };
                let mut file = file?;
                match &file.series {
                    Some(keys) => summary.index.add_keys(keys),
                    None => {
                        reused.insert(file.entry.path.clone());
                    }
                }
                summary.add_file(file.entry.stats.as_ref());
                logical += file.entry.size;
                read += file.read;
                uploaded += file.uploaded;
                deduplicated += file.deduplicated;
                if let Some(part) = file.part.take() {
                    for pack in packer.add(entries.len(), &file.entry, part) {
                        uploads.push_back(store_pack(repo, pack));
                    }
                }
                entries.push(file.entry);
            }
            stored = uploads.next(), if !uploads.is_empty() => {
                let stored = stored.expect("not empty")?;
                #[cfg(feature = "failpoints")]
                fail::fail_point!("backup-blob-stored", |_| std::process::abort());
                repo_lock.refresh_if_due(repo).await?;
                uploaded += stored.uploaded;
                if stored.uploaded == 0 {
                    deduplicated += stored.file_bytes;
                }
                for (i, packed) in stored.members {
                    let e = &mut entries[i];
                    e.blobs = vec![stored.id.clone()];
                    e.digests = Some(stored.digests_id.clone());
                    e.packed = Some(packed);
                }
            }
            else => break,
        }
    }
    drop(done);
    // The source is not read again: a server's snapshot can go.
    if let Some(tx) = files_read {
        let _ = tx.send(());
    }
    // The reference's files this backup does not hold as they were leave the index.
    if reuse_index && let Some(r) = &reference {
        let mut cache = BlobCache::default();
        // A file without series (`MANIFEST`) has nothing to take out.
        let named_series = |f: &&FileEntry| f.stats.as_ref().is_none_or(|s| s.series > 0);
        for f in r
            .files
            .iter()
            .filter(|f| !reused.contains(&f.path))
            .filter(named_series)
        {
            let id = f.digests.as_deref().expect("checked above");
            repo_lock.refresh_if_due(repo).await?;
            let (_, digests) = load_file_digests(repo, f, Some(&mut cache))
                .await?
                .expect("checked above");
            summary.index.remove(&digests, id)?;
        }
    }
    let (series_index, up_index) = repo
        .put_blob(summary.index.encode(), Compression::Default)
        .await?;
    uploaded += up_index;
    let (parent, base) = match (&reference, kind) {
        (Some(r), BackupType::Incremental) => (
            Some(r.id.clone()),
            if r.kind == BackupType::Full {
                Some(r.id.clone())
            } else {
                r.base.clone()
            },
        ),
        (Some(r), BackupType::Differential) => (Some(r.id.clone()), Some(r.id.clone())),
        _ => (None, None),
    };
    let manifest = BackupManifest {
        id: new_backup_id(started_ms),
        kind,
        parent,
        base,
        started_ms,
        finished_ms: now_ms(),
        source: source_name,
        logical_bytes: logical,
        uploaded_bytes: uploaded,
        read_bytes: read,
        deduplicated_bytes: deduplicated,
        consistency: Some(consistency),
        summary: Some(summary.finish()),
        consolidated_from: None,
        series_index: Some(series_index),
        files: entries,
    };
    repo.put_manifest(&manifest).await?;
    Ok(manifest)
}

/// Blobs in flight at once in a backup, across its files: their hashing, compression and
/// encryption use several cores, and their uploads overlap. Memory: this many chunks.
const BLOBS_IN_FLIGHT: usize = 4;

/// Files a backup works on at once. Each waits on the source (a request to the server) and
/// then on the blocking pool (its digests), so more than there are cores: with 4, a backup
/// of 120 segments (50 hosts x a month, 37 MB) took 9% longer than with 8.
const FILES_IN_FLIGHT: usize = 8;

/// Megabytes of segments read whole at once (see [`FileCtx::store_segment`]).
const WHOLE_READS_MIB: u32 = 256;

/// Packed files a restore writes at once.
const RESTORE_FILES_IN_FLIGHT: usize = 4;

/// Files smaller than this are stored in packs (FORMAT.md): one object for many small files
/// and one for their digests, instead of two per file. Larger files are cut into blobs of
/// their own.
const PACK_FILE_MAX: u64 = 4 << 20;

/// A pack is cut before its plaintext would pass this size.
const PACK_BYTES_MAX: usize = 8 << 20;

/// The pack size the content-defined cut aims at by default: after each file, with a
/// probability of its size over this, decided by its hash (see [`Packer::add`]).
const PACK_TARGET: u64 = 4 << 20;

/// What a pack's plaintext starts with.
const PACK_MAGIC: &[u8; 8] = b"TSVPACK1";

/// What the plaintext of a pack's digests starts with.
const DIGEST_PACK_MAGIC: &[u8; 8] = b"TSVDIGP1";

/// Packs being stored at once while the next files are read (memory: this many packs, of
/// at most [`PACK_BYTES_MAX`]). Reading stops while this many are being stored.
const PACKS_IN_FLIGHT: usize = 4;

/// The small files of a backup, gathered into packs in file order.
struct Packer {
    /// See [`PACK_TARGET`].
    target: u64,
    /// See [`RepoOptions::compress_segments`](crate::RepoOptions::compress_segments).
    compress_segments: bool,
    /// The directory of the files in the pack.
    dir: String,
    /// How the files' bytes are compressed (by the first file's kind: a directory holds
    /// one kind).
    compression: Compression,
    /// The pack's plaintext: its magic, then each file's bytes as they were read (the
    /// blob is sealed from these, not from a copy of them in one buffer).
    parts: Vec<Vec<u8>>,
    /// The plaintext's length.
    len: usize,
    /// Their digests, a blob of their own: a restore reads only the bytes, deep verification
    /// and the series count of an incremental backup only the digests.
    digests: Vec<u8>,
    /// Each file in the pack: its index among the backup's entries, and where it lies.
    members: Vec<(usize, Packed)>,
    file_bytes: u64,
}

/// A pack ready to be stored.
struct Pack {
    /// How its bytes are compressed (its digests as [`Compression::Digests`]).
    compression: Compression,
    /// Its plaintext, in parts (see [`Packer::parts`]).
    parts: Vec<Vec<u8>>,
    digests: Vec<u8>,
    members: Vec<(usize, Packed)>,
    file_bytes: u64,
}

/// A stored pack: its blob id and its digests', and what the upload cost.
struct StoredPack {
    id: String,
    digests_id: String,
    members: Vec<(usize, Packed)>,
    uploaded: u64,
    file_bytes: u64,
}

impl Packer {
    /// An empty packer cutting packs of about `target` bytes.
    fn new(target: u64, compress_segments: bool) -> Self {
        Packer {
            target,
            compress_segments,
            dir: String::new(),
            compression: Compression::Default,
            parts: Vec::new(),
            len: 0,
            digests: Vec::new(),
            members: Vec::new(),
            file_bytes: 0,
        }
    }

    /// Adds the file of entry `index` (its bytes and digests); returns the packs this cut
    /// off. A pack holds files of one directory (segments are not packed with the WAL files
    /// and the `MANIFEST` that change with every backup). It is cut before a file of another
    /// directory or one that would take it past [`PACK_BYTES_MAX`], and after
    /// a file whose BLAKE3, read as a fraction of 2^64, is below its size over
    /// [`PACK_TARGET`]. The cuts depend on the files alone, so the same files make the same
    /// packs: a backup of unchanged files finds its packs stored (also those a killed run
    /// stored), and a changed file changes only the pack it is in.
    fn add(&mut self, index: usize, entry: &FileEntry, part: PackPart) -> Vec<Pack> {
        let mut cut = Vec::new();
        let dir = entry.path.rsplit_once('/').map_or("", |(d, _)| d);
        if !self.members.is_empty()
            && (self.len + part.bytes.len() > PACK_BYTES_MAX
                || self.digests.len() + part.digests.len() > PACK_BYTES_MAX
                || self.dir != dir)
        {
            cut.extend(self.take());
        }
        if self.members.is_empty() {
            self.dir = dir.to_string();
            self.compression = Compression::for_file(&entry.path, self.compress_segments);
            self.parts.push(PACK_MAGIC.to_vec());
            self.len = PACK_MAGIC.len();
            self.digests.extend_from_slice(DIGEST_PACK_MAGIC);
        }
        let offset = self.len as u64;
        self.len += part.bytes.len();
        self.parts.push(part.bytes);
        let digests_at = self.digests.len() as u64;
        self.digests.extend_from_slice(&part.digests);
        self.members.push((
            index,
            Packed {
                offset,
                digests: Some((digests_at, part.digests.len() as u64)),
            },
        ));
        self.file_bytes += entry.size;
        let h = u64::from_str_radix(entry.blake3.get(..16).unwrap_or("0"), 16).unwrap_or(0);
        if u128::from(h) * u128::from(self.target) < u128::from(entry.size) << 64 {
            cut.extend(self.take());
        }
        cut
    }

    /// The pack gathered so far, if it holds any file.
    fn take(&mut self) -> Option<Pack> {
        if self.members.is_empty() {
            return None;
        }
        self.len = 0;
        Some(Pack {
            compression: self.compression,
            parts: std::mem::take(&mut self.parts),
            digests: std::mem::take(&mut self.digests),
            members: std::mem::take(&mut self.members),
            file_bytes: std::mem::take(&mut self.file_bytes),
        })
    }
}

/// Stores `pack` and its digests as two blobs (each not uploaded when the repository holds
/// it already).
async fn store_pack(repo: &Repository, pack: Pack) -> Result<StoredPack> {
    let ((id, up_bytes), (digests_id, up_digests)) = tokio::try_join!(
        repo.put_blob_of_parts(pack.parts, pack.compression),
        repo.put_blob(pack.digests, Compression::Digests)
    )?;
    Ok(StoredPack {
        id,
        digests_id,
        members: pack.members,
        uploaded: up_bytes + up_digests,
        file_bytes: pack.file_bytes,
    })
}

/// A small file's bytes and its digest blob's JSON, on their way into a pack.
struct PackPart {
    bytes: Vec<u8>,
    digests: Vec<u8>,
}

/// What the files of one backup share.
struct FileCtx<'a> {
    repo: &'a Repository,
    source: &'a Source,
    source_name: &'a str,
    progress: &'a dyn Progress,
    repo_lock: &'a Lock,
    /// One permit per chunk in memory.
    blob_slots: &'a Semaphore,
    /// One permit per megabyte of the files read whole (see [`WHOLE_READS_MIB`]).
    whole_reads: Semaphore,
    /// Whether each blob a reused entry names is in the repository, checked once per run
    /// (a pack is named by many files, several of them in flight at once: the first asks,
    /// the others wait for its answer).
    present: Mutex<HashMap<String, Arc<OnceCell<bool>>>>,
    /// How the backup's series index hashes keys.
    key_hash: KeyHash,
}

/// One file of a backup: its manifest entry and series (none when it was reused and its
/// series are counted in the reference's index), and what it cost. A small file read anew
/// comes with its bytes (`part`), and its entry names no blob until its pack is stored.
struct BackedUpFile {
    entry: FileEntry,
    series: Option<FileSeries>,
    read: u64,
    uploaded: u64,
    deduplicated: u64,
    part: Option<PackPart>,
}

impl FileCtx<'_> {
    /// Backs up `file`: reuses `old` (its entry in the reference backup) when the file is
    /// unchanged (same size, and same hash or modification time) and still whole in the
    /// repository, without reading it; else stores its bytes while its digests are computed
    /// (locally, or by the server).
    /// `counted`: the series of a reused entry are in the reference's index already (its
    /// digests are then not read).
    async fn backup_file(
        &self,
        old: Option<&FileEntry>,
        file: SourceFile,
        counted: bool,
    ) -> Result<BackedUpFile> {
        if let Some(old) = old
            && old.size == file.size
            && match &file.blake3 {
                Some(h) => h == &old.blake3,
                None => file.mtime_ns != 0 && old.mtime_ns == file.mtime_ns,
            }
        {
            // Listing an unchanged file's blobs can take long on a large repository: the
            // lock is kept fresh meanwhile (a prune ignores a stale one).
            let mut present = true;
            for blob in old.all_blobs() {
                let cell = Arc::clone(
                    self.present
                        .lock()
                        .expect("not poisoned")
                        .entry(blob.clone())
                        .or_default(),
                );
                let found = cell
                    .get_or_try_init(|| async {
                        self.repo_lock.refresh_if_due(self.repo).await?;
                        self.repo.has_blob(blob).await
                    })
                    .await?;
                if !*found {
                    present = false;
                    break;
                }
            }
            if present {
                let mut entry = old.clone();
                let series = match (&old.digests, counted) {
                    (Some(_), true) => None,
                    (Some(_), false) => {
                        let (_, digests) = load_file_digests(self.repo, old, None)
                            .await?
                            .expect("the entry names digests");
                        entry.stats = Some(DataSummary::of(&digests));
                        Some(self.key_hash.of_all(&digests))
                    }
                    (None, _) => Some(Vec::new()),
                };
                self.progress.advance(old.size);
                return Ok(BackedUpFile {
                    entry,
                    series,
                    read: 0,
                    uploaded: 0,
                    deduplicated: old.size,
                    part: None,
                });
            }
        }
        if file.size < PACK_FILE_MAX && self.repo.pack_target != Some(0) {
            return self.read_small(file).await;
        }
        let (stored, summary) = match self.source.local_path(&file.path) {
            Some(local) if DigestBasis::for_file(&file.path) == DigestBasis::BlocksCrc32c => {
                self.store_segment(&file, local).await?
            }
            _ => {
                let (stored, digests) =
                    tokio::join!(self.store_file(&file.path), self.source.digests(&file.path));
                let (stored, (basis, digests)) = (stored?, digests?);
                self.check_listed(&file, stored.size, &stored.blake3)?;
                let key_hash = self.key_hash;
                let summary = off_thread(&format!("digests of file {}", file.path), move || {
                    FileSummary::of_digests(basis, &digests, key_hash)
                })
                .await?
                .map_err(|detail| self.unstorable_digests(&file.path, detail))?;
                (stored, summary)
            }
        };
        let StoredFile {
            size,
            blake3,
            blobs,
            uploaded,
            deduplicated,
        } = stored;
        let (digests_id, up_digests) = self
            .repo
            .put_blob(summary.encoded, Compression::Digests)
            .await?;
        Ok(BackedUpFile {
            entry: FileEntry {
                path: file.path,
                size,
                blake3,
                blobs,
                mtime_ns: file.mtime_ns,
                digests: Some(digests_id),
                stats: Some(summary.stats),
                packed: None,
            },
            series: Some(summary.series),
            read: size,
            uploaded: uploaded + up_digests,
            deduplicated,
            part: None,
        })
    }

    /// Reads small file `file` whole, with its digests, for a pack. A segment's digests (of
    /// its blocks) are computed here from the bytes read, once they match the source's
    /// listing, instead of asking the source to read the file again.
    async fn read_small(&self, file: SourceFile) -> Result<BackedUpFile> {
        let read = || async {
            let mut reader = self.source.open(&file.path).await?;
            let mut bytes = Vec::with_capacity(file.size as usize);
            // One byte more than listed, so that a file longer than its listing is found.
            reader.fill(&mut bytes, file.size as usize + 1).await?;
            Ok::<_, Error>(bytes)
        };
        // A file's digests are computed (a segment's) and encoded on the blocking pool with
        // its hash, not on the thread that drives the backup.
        let basis = DigestBasis::for_file(&file.path);
        let key_hash = self.key_hash;
        let (bytes, blake3, summary) = if basis == DigestBasis::BlocksCrc32c {
            // A file on this machine is read on the blocking pool with its digests, in one
            // hand-off; one from a server arrives on this thread.
            let local = self.source.local_path(&file.path);
            let fetched = match local {
                Some(_) => Vec::new(),
                None => read().await?,
            };
            let what = format!("file {} from {}", file.path, self.source_name);
            let path = PathBuf::from(&file.path);
            let listed = file.size;
            let (bytes, digests) = off_thread(&what, move || {
                let bytes = match local {
                    Some(p) => read_whole(&p, listed)?,
                    None => fetched,
                };
                let d = FileSummary::of(&path, &bytes, key_hash);
                Ok::<_, Error>((bytes, d))
            })
            .await??;
            let (blake3, summary) = self.walked(&file, &bytes, what, digests)?;
            (bytes, blake3, Ok(summary))
        } else {
            let (bytes, digests) = tokio::join!(read(), self.source.digests(&file.path));
            let (bytes, (basis, digests)) = (bytes?, digests?);
            off_thread(&format!("file {}", file.path), move || {
                let h = blake3::hash(&bytes).to_hex().to_string();
                (bytes, h, FileSummary::of_digests(basis, &digests, key_hash))
            })
            .await?
        };
        let size = bytes.len() as u64;
        self.check_listed(&file, size, &blake3)?;
        let summary = summary.map_err(|detail| self.unstorable_digests(&file.path, detail))?;
        self.progress.advance(size);
        Ok(BackedUpFile {
            entry: FileEntry {
                path: file.path,
                size,
                blake3,
                blobs: Vec::new(),
                mtime_ns: file.mtime_ns,
                digests: None,
                stats: Some(summary.stats),
                packed: None,
            },
            part: Some(PackPart {
                bytes,
                digests: summary.encoded,
            }),
            series: Some(summary.series),
            read: size,
            uploaded: 0,
            deduplicated: 0,
        })
    }

    /// Stores segment `file`, too large for a pack, read whole from `local` (on this
    /// machine): its chunks are cut from the bytes that are walked for its digests, as
    /// [`FileCtx::read_small`] does for a pack, rather than read twice (once in chunks for
    /// the blobs, once whole for the digests). Its chunks are the ones
    /// [`FileCtx::store_file`] would cut, so they deduplicate against backups stored either
    /// way. Memory: files read whole at once share [`WHOLE_READS_MIB`], unless one alone
    /// is larger (the digests were always computed from the whole file). A full backup of
    /// 7 segments of 43 MB (2000 hosts x a week in daily partitions, warm cache, medians
    /// of 6): 0.58 -> 0.475 core-seconds, 0.48 -> 0.395 s.
    async fn store_segment(
        &self,
        file: &SourceFile,
        local: PathBuf,
    ) -> Result<(StoredFile, FileSummary)> {
        let mib = u32::try_from(file.size.div_ceil(1 << 20))
            .unwrap_or(u32::MAX)
            .min(WHOLE_READS_MIB);
        let _memory = self
            .whole_reads
            .acquire_many(mib)
            .await
            .expect("the semaphore is never closed");
        let what = format!("file {} from {}", file.path, self.source_name);
        let listed = file.size;
        let bytes =
            bytes::Bytes::from(off_thread(&what, move || read_whole(&local, listed)).await??);
        let key_hash = self.key_hash;
        let path = PathBuf::from(&file.path);
        let whole = bytes.clone();
        let summary = off_thread(&what, move || FileSummary::of(&path, &whole, key_hash));
        // The chunks are stored while the file is walked; a file that fails its checks
        // below leaves them unreferenced (a prune removes them).
        let compression = self.repo.file_compression(&file.path);
        let chunks = (0..bytes.len()).step_by(CHUNK_BYTES).map(|at| {
            let chunk = bytes.slice(at..bytes.len().min(at + CHUNK_BYTES));
            async move {
                let _slot = self
                    .blob_slots
                    .acquire()
                    .await
                    .expect("the semaphore is never closed");
                let n = chunk.len() as u64;
                let stored = self
                    .repo
                    .put_blob_of_parts(vec![chunk], compression)
                    .await?;
                #[cfg(feature = "failpoints")]
                fail::fail_point!("backup-blob-stored", |_| std::process::abort());
                self.repo_lock.refresh_if_due(self.repo).await?;
                self.progress.advance(n);
                Ok::<_, Error>((stored, n))
            }
        });
        let (summary, stored) = tokio::join!(summary, futures::future::try_join_all(chunks));
        let (blake3, summary) = self.walked(file, &bytes, what, summary?)?;
        let size = bytes.len() as u64;
        let mut stored_file = StoredFile {
            size,
            blake3,
            blobs: Vec::new(),
            uploaded: 0,
            deduplicated: 0,
        };
        for ((id, up), n) in stored? {
            stored_file.blobs.push(id);
            stored_file.uploaded += up;
            if up == 0 {
                stored_file.deduplicated += n;
            }
        }
        Ok((stored_file, summary))
    }

    /// The BLAKE3 and summary of segment `file` from the walk of its `bytes` (`walk`, see
    /// [`FileSummary::of`]), checked against the source's listing. Bytes that are not the
    /// listed file fail here: not a whole segment (after their size and hash are compared
    /// with the listing, so a file that changed is named as such), or not the listed size
    /// and hash. `what` names the file in the error.
    fn walked(
        &self,
        file: &SourceFile,
        bytes: &[u8],
        what: String,
        walk: tsvault_storage::Result<(String, FileSummary)>,
    ) -> Result<(String, FileSummary)> {
        match walk {
            Ok((blake3, summary)) => {
                self.check_listed(file, bytes.len() as u64, &blake3)?;
                Ok((blake3, summary))
            }
            Err(e) => {
                let blake3 = blake3::hash(bytes).to_hex().to_string();
                self.check_listed(file, bytes.len() as u64, &blake3)?;
                Err(Error::Corrupt {
                    what,
                    detail: e.to_string(),
                })
            }
        }
    }

    /// The error for file `path`'s digests that cannot be stored (a hash a server sent that
    /// is not what its basis says).
    fn unstorable_digests(&self, path: &str, detail: String) -> Error {
        Error::Corrupt {
            what: format!("digests of file {path} from {}", self.source_name),
            detail,
        }
    }

    /// Refuses a file read with another size or hash than the source listed.
    fn check_listed(&self, file: &SourceFile, size: u64, blake3: &str) -> Result<()> {
        if size != file.size || file.blake3.as_ref().is_some_and(|h| h != blake3) {
            return Err(Error::Corrupt {
                what: format!("file {} from {}", file.path, self.source_name),
                detail: format!(
                    "{size} bytes with BLAKE3 {blake3} were read; the source listed {} bytes{}",
                    file.size,
                    file.blake3
                        .as_ref()
                        .map(|h| format!(" with BLAKE3 {h}"))
                        .unwrap_or_default()
                ),
            });
        }
        Ok(())
    }

    /// Reads file `path` of the source in chunks into blobs, a chunk in memory only while it
    /// holds one of the backup's blob slots.
    async fn store_file(&self, path: &str) -> Result<StoredFile> {
        let repo = self.repo;
        let mut reader = self.source.open(path).await?;
        let mut hasher = blake3::Hasher::new();
        let mut blobs = Vec::new();
        let (mut size, mut uploaded, mut deduplicated) = (0u64, 0u64, 0u64);
        let mut in_flight = FuturesOrdered::new();
        let mut finished = false;
        loop {
            if !finished {
                // With nothing of its own in flight a file waits for a slot; otherwise it
                // takes a free one or finishes a chunk first (so no file waits forever on
                // slots that others hold while holding its own).
                let slot = if in_flight.is_empty() {
                    Some(
                        self.blob_slots
                            .acquire()
                            .await
                            .expect("the semaphore is never closed"),
                    )
                } else {
                    self.blob_slots.try_acquire().ok()
                };
                if let Some(slot) = slot {
                    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
                    let n = reader.fill(&mut chunk, CHUNK_BYTES).await?;
                    if n == 0 {
                        finished = true;
                        continue;
                    }
                    hasher.update(&chunk);
                    size += n as u64;
                    in_flight.push_back(async move {
                        let stored = repo.put_blob(chunk, repo.file_compression(path)).await;
                        drop(slot);
                        stored.map(|r| (r, n))
                    });
                    continue;
                }
            }
            let Some(done) = in_flight.next().await else {
                break;
            };
            let ((id, up), n) = done?;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("backup-blob-stored", |_| std::process::abort());
            self.repo_lock.refresh_if_due(repo).await?;
            blobs.push(id);
            uploaded += up;
            if up == 0 {
                deduplicated += n as u64;
            }
            self.progress.advance(n as u64);
        }
        Ok(StoredFile {
            size,
            blake3: hasher.finalize().to_hex().to_string(),
            blobs,
            uploaded,
            deduplicated,
        })
    }
}

/// The series of one file, by their keys' hashes on the backup's series index's hash
/// ([`FileCtx::key_hash`]).
type FileSeries = Vec<[u8; 16]>;

/// What a backup keeps of a file's digests: their binary form, their totals and the file's
/// series.
struct FileSummary {
    encoded: Vec<u8>,
    stats: DataSummary,
    series: FileSeries,
}

impl FileSummary {
    /// Of `digests` on `basis` (a hash not of its basis's length is an error).
    fn of_digests(
        basis: DigestBasis,
        digests: &[SeriesDigest],
        hash: KeyHash,
    ) -> std::result::Result<FileSummary, String> {
        Ok(FileSummary {
            encoded: digest_blob::encode(basis, digests)?,
            stats: DataSummary::of(digests),
            series: hash.of_all(digests),
        })
    }

    /// The digests of the segment in `bytes` (file `path`) on [`DigestBasis::BlocksCrc32c`],
    /// from its index as it is walked (see [`tsvault_storage::segment_index`]), nothing
    /// allocated per series; and the BLAKE3 of the file.
    fn of(
        path: &Path,
        bytes: &[u8],
        hash: KeyHash,
    ) -> tsvault_storage::Result<(String, FileSummary)> {
        let mut encoder = digest_blob::Encoder::new(DigestBasis::BlocksCrc32c);
        let mut keys = Vec::new();
        let mut stats = DataSummary::default();
        let blake3 = tsvault_storage::segment_index(path, bytes, |e| {
            let crc = tsvault_storage::DigestHash::crc32c(e.crc);
            encoder
                .push(e.key, e.count.into(), e.min_ts, e.max_ts, crc.as_bytes())
                .expect("a CRC32C is the length of its basis's hash");
            keys.push(hash.of(e.key));
            stats.add_series(e.count.into(), e.min_ts, e.max_ts);
        })?;
        let summary = FileSummary {
            encoded: encoder.finish(),
            stats,
            series: keys,
        };
        Ok((blake3, summary))
    }
}

/// What [`store_file`] stored.
struct StoredFile {
    size: u64,
    blake3: String,
    blobs: Vec<String>,
    /// Bytes uploaded (compressed, encrypted).
    uploaded: u64,
    /// Bytes of chunks the repository already held.
    deduplicated: u64,
}

/// The bytes of local file `path`, listed as `listed` bytes long (at most one byte more:
/// see [`tsvault_storage::read_listed`]).
fn read_whole(path: &Path, listed: u64) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(Error::io("open", path))?;
    tsvault_storage::read_listed(&mut file, listed).map_err(Error::io("read", path))
}

/// The per-series digests of file `entry` and their basis (None when it has none): its
/// digest blob, or its slice of its pack. `cache` keeps packs read for files that share
/// them.
pub(crate) async fn load_file_digests(
    repo: &Repository,
    entry: &FileEntry,
    cache: Option<&mut BlobCache>,
) -> Result<Option<(DigestBasis, Vec<SeriesDigest>)>> {
    let Some(id) = &entry.digests else {
        return Ok(None);
    };
    let what = || format!("digests of file {} (blob {id})", entry.path);
    let parse = |bytes: &[u8]| {
        digest_blob::decode(bytes).map_err(|e| Error::Corrupt {
            what: what(),
            detail: format!("they do not parse: {e}"),
        })
    };
    match entry.packed {
        None => Ok(Some(parse(&repo.get_blob(id).await?)?)),
        Some(Packed {
            digests: Some((offset, len)),
            ..
        }) => {
            let mut own = BlobCache::default();
            let pack = cache.unwrap_or(&mut own).get(repo, id).await?;
            Ok(Some(parse(slice_of(&pack, offset, len, &what)?)?))
        }
        Some(Packed { digests: None, .. }) => Err(Error::Corrupt {
            what: what(),
            detail: "the manifest names a pack but no place in it".into(),
        }),
    }
}

/// Bytes `offset..offset + len` of a pack's plaintext, or an error naming `what` when the
/// manifest points outside it.
fn slice_of<'a>(
    plaintext: &'a [u8],
    offset: u64,
    len: u64,
    what: &dyn Fn() -> String,
) -> Result<&'a [u8]> {
    offset
        .checked_add(len)
        .filter(|end| *end <= plaintext.len() as u64)
        .map(|end| &plaintext[offset as usize..end as usize])
        .ok_or_else(|| Error::Corrupt {
            what: what(),
            detail: format!(
                "the manifest places them at bytes {offset}..+{len} of a pack of {} bytes",
                plaintext.len()
            ),
        })
}

/// The packs a restore reads, requested ahead of the files that need them (in the order they
/// first appear, two at a time), each read and opened by a task of its own while the files
/// of the packs before it are written. A pack not met in that order is read through a
/// [`BlobCache`].
pub(crate) struct Prefetch {
    ahead: futures::stream::BoxStream<'static, (String, Result<Arc<Vec<u8>>>)>,
    cache: BlobCache,
}

impl Prefetch {
    /// Packs ahead at once (memory: this many packs, and the cache's).
    const AHEAD: usize = 2;

    fn new(repo: &Repository, files: &[FileEntry]) -> Self {
        let mut order: Vec<String> = Vec::new();
        for f in files.iter().filter(|f| f.packed.is_some()) {
            if let Some(id) = f.blobs.first()
                && order.last() != Some(id)
            {
                order.push(id.clone());
            }
        }
        // Each read is a task of its own, so it goes on (read, then open on the blocking
        // pool) while the restore writes files on the thread that drives it.
        let repo = repo.clone();
        let ahead = futures::stream::iter(order)
            .map(move |id| {
                let repo = repo.clone();
                let read = tokio::spawn({
                    let id = id.clone();
                    async move { repo.get_blob(&id).await.map(Arc::new) }
                });
                async move {
                    let got = read
                        .await
                        .unwrap_or_else(|e| Err(panicked(&format!("blob {id}"), e)));
                    (id, got)
                }
            })
            .buffered(Self::AHEAD)
            .boxed();
        Prefetch {
            ahead,
            cache: BlobCache::default(),
        }
    }

    async fn get(&mut self, repo: &Repository, id: &str) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.cache.hit(id) {
            return Ok(hit);
        }
        // Packs fetched for files that were then kept (a resumed restore) are passed over.
        while let Some((got, bytes)) = self.ahead.next().await {
            if got == id {
                let bytes = bytes?;
                self.cache.keep(id, bytes.clone());
                return Ok(bytes);
            }
        }
        self.cache.get(repo, id).await
    }
}

/// The last few packs read: the files of a pack are consecutive in a manifest, so each pack
/// is read once when a backup's files are read in order. Memory: this many packs.
#[derive(Default)]
pub(crate) struct BlobCache {
    recent: Vec<(String, Arc<Vec<u8>>)>,
}

impl BlobCache {
    const KEPT: usize = 4;

    pub(crate) async fn get(&mut self, repo: &Repository, id: &str) -> Result<Arc<Vec<u8>>> {
        if let Some(hit) = self.hit(id) {
            return Ok(hit);
        }
        let bytes = Arc::new(repo.get_blob(id).await?);
        self.keep(id, bytes.clone());
        Ok(bytes)
    }

    /// Blob `id` if it is kept (then the most recent).
    fn hit(&mut self, id: &str) -> Option<Arc<Vec<u8>>> {
        let i = self.recent.iter().position(|(k, _)| k == id)?;
        let hit = self.recent.remove(i);
        let bytes = hit.1.clone();
        self.recent.push(hit);
        Some(bytes)
    }

    fn keep(&mut self, id: &str, bytes: Arc<Vec<u8>>) {
        if self.recent.len() == Self::KEPT {
            self.recent.remove(0);
        }
        self.recent.push((id.to_string(), bytes));
    }
}

impl DataSummary {
    /// The totals of one file's digests.
    fn of(digests: &[SeriesDigest]) -> DataSummary {
        let mut s = DataSummary::default();
        for d in digests {
            s.add_series(d.samples, d.min_ts_ms, d.max_ts_ms);
        }
        s
    }

    /// Counts one more series of `samples` samples in `min..=max`.
    fn add_series(&mut self, samples: u64, min: i64, max: i64) {
        self.series += 1;
        self.samples += samples;
        self.min_ts_ms = Some(self.min_ts_ms.map_or(min, |m| m.min(min)));
        self.max_ts_ms = Some(self.max_ts_ms.map_or(max, |m| m.max(max)));
    }
}

/// Totals of a backup's data: samples and time range from its files' stats, series from
/// its series index.
#[derive(Default)]
struct SummaryAcc {
    index: SeriesIndex,
    samples: u64,
    min: Option<i64>,
    max: Option<i64>,
}

impl SummaryAcc {
    fn add_file(&mut self, stats: Option<&DataSummary>) {
        let Some(s) = stats else { return };
        self.samples += s.samples;
        self.min = self.min.into_iter().chain(s.min_ts_ms).min();
        self.max = self.max.into_iter().chain(s.max_ts_ms).max();
    }

    fn finish(&self) -> DataSummary {
        DataSummary {
            series: self.index.files.len() as u64,
            samples: self.samples,
            min_ts_ms: self.min,
            max_ts_ms: self.max,
        }
    }
}

/// Every series of a backup's files, by a 16-byte hash of its key, with the number of files
/// whose digests name it. Stored as a blob (FORMAT.md): 8 bytes of magic that say the hash
/// (`TSVSIDX2`: XXH3-128; `TSVSIDX1`: the first 16 bytes of BLAKE3, written before), then
/// per series in key-hash order the hash and the count as a little-endian u32. An index
/// keeps its hash: an incremental backup that starts from an older index extends it in
/// kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SeriesIndex {
    hash: KeyHash,
    files: KeyMap,
}

/// A map keyed by key hashes. foldhash rather than the standard SipHash: SipHash of each
/// series of each file was a third of the index's time, on the thread that drives a
/// backup. Seeded per process like the standard one, so series names chosen to collide
/// in the map cannot be found in advance (the keys are unkeyed XXH3 of the names).
type KeyMap = HashMap<[u8; 16], u32, foldhash::fast::RandomState>;

/// The hash a [`SeriesIndex`] keys its series by.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum KeyHash {
    /// XXH3-128, big-endian: a key is a hundred-odd bytes, too short for BLAKE3's SIMD
    /// lanes; hashing each series of each file with BLAKE3 was 6% of a large backup's CPU,
    /// on the thread that drives it.
    #[default]
    Xxh3,
    Blake3,
}

impl KeyHash {
    /// The hash of series key `series`.
    fn of(self, series: &str) -> [u8; 16] {
        match self {
            KeyHash::Xxh3 => xxhash_rust::xxh3::xxh3_128(series.as_bytes()).to_be_bytes(),
            KeyHash::Blake3 => {
                let mut k = [0u8; 16];
                k.copy_from_slice(&blake3::hash(series.as_bytes()).as_bytes()[..16]);
                k
            }
        }
    }

    /// The hashes of the series of `digests`.
    fn of_all(self, digests: &[SeriesDigest]) -> Vec<[u8; 16]> {
        digests.iter().map(|d| self.of(&d.series)).collect()
    }

    fn magic(self) -> &'static [u8; 8] {
        match self {
            KeyHash::Xxh3 => b"TSVSIDX2",
            KeyHash::Blake3 => b"TSVSIDX1",
        }
    }
}

impl SeriesIndex {
    fn key(&self, series: &str) -> [u8; 16] {
        self.hash.of(series)
    }

    /// An empty index on the same hash as `other`.
    fn like(other: &SeriesIndex) -> SeriesIndex {
        SeriesIndex {
            hash: other.hash,
            files: KeyMap::default(),
        }
    }

    /// Counts one more file holding each series of `digests`.
    pub(crate) fn add(&mut self, digests: &[SeriesDigest]) {
        for d in digests {
            self.add_key(self.key(&d.series));
        }
    }

    /// Counts one more file holding each series of `keys`, hashed by [`SeriesIndex::hash`]
    /// (by whoever read the file, off the thread that drives the backup).
    fn add_keys(&mut self, keys: &FileSeries) {
        for k in keys {
            self.add_key(*k);
        }
    }

    fn add_key(&mut self, k: [u8; 16]) {
        *self.files.entry(k).or_default() += 1;
    }

    /// Counts one file fewer for each series of `digests` (those of blob `blob`); a series
    /// the index does not hold means the index does not match its backup.
    fn remove(&mut self, digests: &[SeriesDigest], blob: &str) -> Result<()> {
        for d in digests {
            let k = self.key(&d.series);
            match self.files.get_mut(&k) {
                Some(1) => {
                    self.files.remove(&k);
                }
                Some(n) => *n -= 1,
                None => {
                    return Err(Error::Corrupt {
                        what: "the series index of the reference backup".into(),
                        detail: format!(
                            "it does not hold series {}, which digest blob {blob} names; take a full backup (--type full)",
                            d.series
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut entries: Vec<_> = self.files.iter().collect();
        entries.sort_unstable();
        let mut out = Vec::with_capacity(8 + entries.len() * 20);
        out.extend_from_slice(self.hash.magic());
        for (k, n) in entries {
            out.extend_from_slice(k);
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// The index in blob `id`.
    pub(crate) async fn load(repo: &Repository, id: &str) -> Result<SeriesIndex> {
        Self::decode(&repo.get_blob(id).await?, id)
    }

    /// The index in `bytes`, the plaintext of blob `id`.
    pub(crate) fn decode(bytes: &[u8], id: &str) -> Result<SeriesIndex> {
        let corrupt = |detail: &str| Error::Corrupt {
            what: format!("series index blob {id}"),
            detail: detail.to_string(),
        };
        let (hash, body) = [KeyHash::Xxh3, KeyHash::Blake3]
            .into_iter()
            .find_map(|h| Some((h, bytes.strip_prefix(h.magic())?)))
            .ok_or_else(|| corrupt("it starts with neither TSVSIDX2 nor TSVSIDX1"))?;
        if body.len() % 20 != 0 {
            return Err(corrupt("its length is not a whole number of entries"));
        }
        let mut files = KeyMap::with_capacity_and_hasher(body.len() / 20, Default::default());
        for e in body.chunks_exact(20) {
            let k: [u8; 16] = e[..16].try_into().expect("16 bytes");
            let n = u32::from_le_bytes(e[16..].try_into().expect("4 bytes"));
            if n == 0 || files.insert(k, n).is_some() {
                return Err(corrupt("it holds a repeated series or a count of zero"));
            }
        }
        Ok(SeriesIndex { hash, files })
    }
}

/// `path` from a manifest as a safe relative path: normal components only, so that nothing
/// is written outside the target.
pub(crate) fn safe_relative(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    // Checked on the text as well as the parsed path: `Path` silently drops `.` and
    // repeated separators, and a manifest holds exactly what was written.
    let ok = !path.is_empty()
        && !path.contains('\0')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if !ok {
        return Err(Error::Invalid(format!(
            "the manifest names the file {path:?}, which would be written outside the target; refusing to restore it"
        )));
    }
    Ok(p.to_path_buf())
}

/// Restores backup `id` (or the newest) into `target`, which must be empty or absent, or hold
/// an interrupted restore of the same backup (which is resumed: files already in place and
/// right are kept). While it runs, `target` holds a `RESTORING` marker that keeps a server
/// from starting on it. Every file is checked against its hash before it is renamed into
/// place; files and directories are fsynced.
pub async fn restore_data_dir(
    repo: &Repository,
    id: Option<&str>,
    target: &Path,
    progress: &dyn Progress,
) -> Result<BackupManifest> {
    let id =
        match id {
            Some(id) if id != "latest" => id.to_string(),
            _ => repo.backup_ids().await?.pop().ok_or_else(|| {
                Error::Invalid(format!("repository {} holds no backup", repo.url))
            })?,
        };
    let manifest = repo.manifest(&id).await?;
    // Every path is checked before anything is written.
    let paths: Vec<PathBuf> = manifest
        .files
        .iter()
        .map(|f| safe_relative(&f.path))
        .collect::<Result<_>>()?;
    if manifest.files.iter().any(|f| f.path == RESTORE_MARKER) {
        return Err(Error::Invalid(format!(
            "backup {id} names a file {RESTORE_MARKER}, which restore reserves; refusing it"
        )));
    }
    // Files are written at once under temporary names: no two may share a name.
    let mut seen = std::collections::HashSet::new();
    for f in &manifest.files {
        let why = if f.path.ends_with(RESTORING_SUFFIX) {
            "with the suffix restore reserves for files it is writing"
        } else if !seen.insert(f.path.as_str()) {
            "twice"
        } else {
            continue;
        };
        return Err(Error::Invalid(format!(
            "backup {id} names the file {:?} {why}; refusing it",
            f.path
        )));
    }
    // The target is empty, or holds an interrupted restore of this same backup (resumed).
    let marker = target.join(RESTORE_MARKER);
    let resuming = match fs::read_to_string(&marker) {
        Ok(text) if text.trim() == id => true,
        Ok(text) => {
            return Err(Error::Invalid(format!(
                "{} holds an interrupted restore of backup {}; finish that one, or restore into an empty directory",
                target.display(),
                text.trim()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("read", &marker)(e)),
    };
    if !resuming && target.exists() {
        let mut entries = fs::read_dir(target).map_err(Error::io("list", target))?;
        if entries.next().is_some() {
            return Err(Error::Invalid(format!(
                "{} is not empty; restore into an empty or new directory",
                target.display()
            )));
        }
    }
    if !resuming {
        fs::create_dir_all(target).map_err(Error::io("create", target))?;
        let mut m = File::create(&marker).map_err(Error::io("create", &marker))?;
        m.write_all(id.as_bytes())
            .and_then(|()| m.sync_all())
            .map_err(Error::io("write", &marker))?;
        sync_dir(target)?;
    }
    progress.start(manifest.logical_bytes);
    let mut packs = Prefetch::new(repo, &manifest.files);
    // Packed files are written, checked and renamed on the blocking pool, a few at once:
    // their writes go to the device directly (`NewFile`) and each waits for it, which the
    // next files' work overlaps.
    let mut writing = std::collections::VecDeque::new();
    let restored = async {
        for (entry, rel) in manifest.files.iter().zip(paths) {
            let dst = target.join(&rel);
            let parent = dst.parent().unwrap_or(target).to_path_buf();
            fs::create_dir_all(&parent).map_err(Error::io("create", &parent))?;
            // Resuming: a file already in place is kept if it is whole and right.
            if resuming && file_matches(&dst, entry)? {
                progress.advance(entry.size);
                continue;
            }
            // Written under a temporary name, renamed into place only once whole and
            // checked.
            if let Some(packed) = entry.packed {
                let what = format!("file {} of backup {}", entry.path, manifest.id);
                let write = packed_file(repo, &manifest.id, entry, packed, dst, &mut packs).await?;
                writing.push_back((entry.size, off_thread(&what, write)));
                if writing.len() > RESTORE_FILES_IN_FLIGHT {
                    let (size, written) = writing.pop_front().expect("not empty");
                    written.await??;
                    progress.advance(size);
                }
                continue;
            }
            let tmp = restoring(&dst);
            let written = restore_file(repo, &manifest.id, entry, &tmp, progress).await;
            place(&tmp, &dst, written)?;
        }
        Ok(())
    }
    .await;
    // Every write started is waited for, even after an error, before anything else.
    let mut first_error = restored.err();
    for (size, written) in writing {
        match written.await.and_then(|w| w) {
            Ok(()) => progress.advance(size),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // Files are fsynced together at the end, not one by one as written: until the marker
    // goes, a crash leaves an interrupted restore, whose next run checks every file in
    // place against its hash. Kept files too: a killed run may have left them unsynced.
    let files: Vec<PathBuf> = manifest
        .files
        .iter()
        .map(|f| target.join(&f.path))
        .collect();
    off_thread("the restored files", move || {
        sync_at_once(&files)
            .into_iter()
            .next()
            .map_or(Ok(()), |(_, e)| Err(e))
    })
    .await??;
    sync_tree(target, resuming)?;
    // The record of the newest WAL file, as the server that wrote them keeps it (a backup
    // holds the WAL files, not the record, which names a file of the live directory).
    tsvault_storage::record_newest_wal(target).map_err(|e| Error::Engine(e.to_string()))?;
    // Done: without the marker, the directory is a data directory again.
    fs::remove_file(&marker).map_err(Error::io("remove", &marker))?;
    sync_dir(target)?;
    Ok(manifest)
}

/// Whether `path` exists with exactly `entry`'s size and BLAKE3.
fn file_matches(path: &Path, entry: &FileEntry) -> Result<bool> {
    match fs::metadata(path) {
        Ok(md) if md.len() == entry.size => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("stat", path)(e)),
    }
    let mut hasher = blake3::Hasher::new();
    let mut f = File::open(path).map_err(Error::io("open", path))?;
    std::io::copy(&mut f, &mut hasher).map_err(Error::io("read", path))?;
    Ok(hasher.finalize().to_hex().as_str() == entry.blake3)
}

/// Fsyncs `dir`, or a file: either is opened read-only, which is all `fsync` needs on
/// Linux ([`sync_at_once`] passes files too).
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io("fsync", dir))
}

/// What restore appends to a file's name while it writes the file.
const RESTORING_SUFFIX: &str = ".restoring";

/// The name `dst` is written under until it is whole and checked.
fn restoring(dst: &Path) -> PathBuf {
    let mut name = dst.as_os_str().to_owned();
    name.push(RESTORING_SUFFIX);
    name.into()
}

/// Renames restored file `tmp` into place at `dst` once `written` (whole and checked), or
/// removes it.
fn place(tmp: &Path, dst: &Path, written: Result<()>) -> Result<()> {
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e);
    }
    fs::rename(tmp, dst).map_err(Error::io("rename", dst))
}

/// How a file of `backup` is named in errors about what restoring it read.
fn named(backup: &str, path: &str) -> impl Fn(Error) -> Error {
    let whose = format!("(file {path} of backup {backup})");
    move |e| match e {
        Error::Missing { what } => Error::Missing {
            what: format!("{what} {whose}"),
        },
        Error::Corrupt { what, detail } => Error::Corrupt {
            what: format!("{what} {whose}"),
            detail,
        },
        e => e,
    }
}

/// Creates `tmp` for `entry`'s bytes, removing what an interrupted restore left there.
fn create_restored(tmp: &Path, entry: &FileEntry) -> Result<NewFile> {
    match fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("remove", tmp)(e)),
    }
    NewFile::create(tmp, entry.size).map_err(Error::io("create", tmp))
}

/// Checks what was restored of `entry` (`size` bytes hashing to `hash`), then starts its
/// writeback (the caller fsyncs the restored files together).
fn check_restored(
    backup: &str,
    entry: &FileEntry,
    out: NewFile,
    tmp: &Path,
    size: u64,
    hash: blake3::Hash,
) -> Result<()> {
    let out = out.finish().map_err(Error::io("write", tmp))?;
    if size != entry.size || hash.to_hex().as_str() != entry.blake3 {
        return Err(Error::Corrupt {
            what: format!("file {} of backup {backup}", entry.path),
            detail: "its restored bytes do not match the size and hash in the manifest".into(),
        });
    }
    start_writeback(&out);
    Ok(())
}

/// The work that restores packed file `entry` to `dst` from its pack (from `packs`): write
/// its slice to a temporary name, check its size and hash, rename it into place.
async fn packed_file(
    repo: &Repository,
    backup: &str,
    entry: &FileEntry,
    packed: Packed,
    dst: PathBuf,
    packs: &mut Prefetch,
) -> Result<impl FnOnce() -> Result<()> + Send + 'static + use<>> {
    let [id] = entry.blobs.as_slice() else {
        return Err(Error::Corrupt {
            what: format!("file {} of backup {backup}", entry.path),
            detail: format!(
                "it is packed but names {} blobs, not one",
                entry.blobs.len()
            ),
        });
    };
    let pack = packs
        .get(repo, id)
        .await
        .map_err(named(backup, &entry.path))?;
    let what = || format!("file {} of backup {backup} (pack {id})", entry.path);
    let start = packed.offset as usize;
    let end = start + slice_of(&pack, packed.offset, entry.size, &what)?.len();
    let (backup, entry) = (backup.to_string(), entry.clone());
    Ok(move || {
        let bytes = &pack[start..end];
        let tmp = restoring(&dst);
        let written = (|| {
            let mut out = create_restored(&tmp, &entry)?;
            out.write_all(bytes).map_err(Error::io("write", &tmp))?;
            #[cfg(feature = "failpoints")]
            fail::fail_point!("restore-blob-written", |_| std::process::abort());
            let hash = blake3::hash(bytes);
            check_restored(&backup, &entry, out, &tmp, bytes.len() as u64, hash)
        })();
        place(&tmp, &dst, written)
    })
}

/// Writes unpacked file `entry`'s blobs to `tmp` and checks its size and hash.
async fn restore_file(
    repo: &Repository,
    backup: &str,
    entry: &FileEntry,
    tmp: &Path,
    progress: &dyn Progress,
) -> Result<()> {
    let mut out = create_restored(tmp, entry)?;
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    // Several blobs are fetched and opened at once; they are written in order.
    let mut blobs = futures::stream::iter(&entry.blobs)
        .map(|blob| repo.get_blob(blob))
        .buffered(BLOBS_IN_FLIGHT);
    while let Some(got) = blobs.next().await {
        let bytes = got.map_err(named(backup, &entry.path))?;
        hasher.update(&bytes);
        size += bytes.len() as u64;
        out.write_all(&bytes).map_err(Error::io("write", tmp))?;
        #[cfg(feature = "failpoints")]
        fail::fail_point!("restore-blob-written", |_| std::process::abort());
        progress.advance(bytes.len() as u64);
    }
    check_restored(backup, entry, out, tmp, size, hasher.finalize())
}

/// Starts writing `file`'s dirty pages to the device without waiting, so that the fsyncs at
/// the end of a restore find little left to write: the device writes while the next packs
/// are read and opened. A hint: a write error it meets is reported by that fsync.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor is open for the whole call, and sync_file_range reads and
        // writes no memory of this process.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Fsyncs each of `paths` (files or directories), several at once, so that their
/// writebacks overlap; returns those whose fsync failed, with the error. A restore's files,
/// and the directories that received a backup's blobs, are fsynced this way.
pub(crate) fn sync_at_once(paths: &[PathBuf]) -> Vec<(PathBuf, Error)> {
    const AT_ONCE: usize = 4;
    let failed = |some: &[PathBuf]| -> Vec<(PathBuf, Error)> {
        some.iter()
            .filter_map(|p| sync_dir(p).err().map(|e| (p.clone(), e)))
            .collect()
    };
    if paths.len() <= 1 {
        return failed(paths);
    }
    std::thread::scope(|scope| {
        let threads: Vec<_> = paths
            .chunks(paths.len().div_ceil(AT_ONCE))
            .map(|some| scope.spawn(move || failed(some)))
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().expect("an fsync does not panic"))
            .collect()
    })
}

/// Fsyncs every directory under `dir` (and `dir`), so restored names survive power loss.
/// With `leftovers`, first removes in the same walk what an interrupted restore left of
/// files it was writing: every file whose name ends with [`RESTORING_SUFFIX`], which a
/// manifest may not name. This version appends it (`x.seg.restoring`); versions before
/// `16f5c8f` put it in place of the extension (`x.restoring`), names this one never writes
/// over, so a restore they started and this one finished would otherwise keep them. Each
/// directory is fsynced after its removals, which makes them durable too.
fn sync_tree(dir: &Path, leftovers: bool) -> Result<()> {
    for e in fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let e = e.map_err(Error::io("list", dir))?;
        let path = e.path();
        if e.file_type().map_err(Error::io("stat", &path))?.is_dir() {
            sync_tree(&path, leftovers)?;
        } else if leftovers && e.file_name().to_string_lossy().ends_with(RESTORING_SUFFIX) {
            fs::remove_file(&path).map_err(Error::io("remove", &path))?;
        }
    }
    sync_dir(dir)
}

/// One problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub backup: String,
    pub detail: String,
}

/// Checks backup `id`: its manifest decodes, and every blob it names exists; with
/// `read_data`, every blob is also read, decrypted and hashed. Returns every problem found.
pub async fn verify_backup(repo: &Repository, id: &str, read_data: bool) -> Vec<Problem> {
    let problem = |detail: String| Problem {
        backup: id.to_string(),
        detail,
    };
    let manifest = match repo.manifest(id).await {
        Ok(m) => m,
        Err(e) => return vec![problem(e.to_string())],
    };
    let mut problems = Vec::new();
    // A blob shared by several files (or repeated in one) is checked once.
    let mut checked = std::collections::HashSet::new();
    for f in &manifest.files {
        if let Err(e) = safe_relative(&f.path) {
            problems.push(problem(e.to_string()));
        }
        if f.packed.is_some() && (f.blobs.len() != 1 || f.digests.is_none()) {
            problems.push(problem(format!(
                "file {}: packed, but its entry does not name one pack and its digests",
                f.path
            )));
        }
    }
    if read_data {
        // Each packed file's bytes and digests are checked in their packs, each read (once,
        // when its files are consecutive) and hashed like any blob; a pack that cannot be
        // read is named once, not for each of its files.
        let mut cache = BlobCache::default();
        let mut unreadable = HashSet::new();
        for f in manifest.files.iter().filter(|f| f.packed.is_some()) {
            if let Some(id) = f.blobs.first()
                && !unreadable.contains(id.as_str())
            {
                checked.insert(id.as_str());
                match cache.get(repo, id).await {
                    Ok(pack) => {
                        let what = || format!("file {} (pack {id})", f.path);
                        let offset = f.packed.map(|p| p.offset).unwrap_or_default();
                        match slice_of(&pack, offset, f.size, &what) {
                            Ok(bytes) if blake3::hash(bytes).to_hex().as_str() == f.blake3 => {}
                            Ok(_) => problems.push(problem(format!(
                                "{}: its bytes in the pack do not hash to the file's BLAKE3",
                                what()
                            ))),
                            Err(e) => problems.push(problem(e.to_string())),
                        }
                    }
                    Err(e) => {
                        unreadable.insert(id.as_str());
                        problems.push(problem(format!("file {}: {e}", f.path)));
                    }
                }
            }
            let Some(id) = f.digests.as_deref() else {
                continue;
            };
            if unreadable.contains(id) {
                continue;
            }
            checked.insert(id);
            if let Err(e) = cache.get(repo, id).await {
                unreadable.insert(id);
                problems.push(problem(format!("digests of file {}: {e}", f.path)));
            } else if let Err(e) = load_file_digests(repo, f, Some(&mut cache)).await {
                problems.push(problem(e.to_string()));
            }
        }
    }
    for (blob, what) in manifest.blobs() {
        if !checked.insert(blob.as_str()) {
            continue;
        }
        let r = if read_data {
            repo.get_blob(blob).await.map(|_| ())
        } else {
            match repo.has_blob(blob).await {
                Ok(true) => Ok(()),
                Ok(false) => Err(Error::Missing {
                    what: format!("blob {blob}"),
                }),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = r {
            problems.push(problem(format!("{what}: {e}")));
        }
    }
    problems
}

/// Deep verification of backup `id`: a full restore into a scratch directory (every blob
/// read, decrypted and hashed, every file checked against its size and BLAKE3), every
/// file's per-series digests recomputed from the restored bytes and compared with those the
/// backup recorded from its source, the restored directory checked as `tsvault check` does
/// (every block of every segment decoded, every WAL record read: digests of blocks do not
/// decode them), and opened by the storage engine (manifest, segment hashes, WAL replay).
/// Returns every problem found.
pub async fn verify_deep(repo: &Repository, id: &str) -> Vec<Problem> {
    let problem = |detail: String| Problem {
        backup: id.to_string(),
        detail,
    };
    let scratch = match tempfile::Builder::new().prefix("tsvault-verify-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            return vec![problem(format!(
                "cannot create a scratch directory in {}: {e}",
                std::env::temp_dir().display()
            ))];
        }
    };
    let dir = scratch.path().join("data");
    let manifest = match restore_data_dir(repo, Some(id), &dir, &NoProgress).await {
        Ok(m) => m,
        Err(e) => return vec![problem(format!("restore into a scratch directory: {e}"))],
    };
    let mut problems = Vec::new();
    // The index the next incremental backup starts from must be the one the files' digests
    // make: rebuilt from them on the stored index's own hash.
    let stored_index = match &manifest.series_index {
        Some(id) => match SeriesIndex::load(repo, id).await {
            Ok(stored) => Some((id, stored)),
            Err(e) => {
                problems.push(problem(e.to_string()));
                None
            }
        },
        None => None,
    };
    let mut index = stored_index
        .as_ref()
        .map_or_else(SeriesIndex::default, |(_, stored)| {
            SeriesIndex::like(stored)
        });
    let mut cache = BlobCache::default();
    for f in &manifest.files {
        let (basis, recorded) = match load_file_digests(repo, f, Some(&mut cache)).await {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                problems.push(problem(format!("file {}: {e}", f.path)));
                continue;
            }
        };
        index.add(&recorded);
        if f.stats
            .as_ref()
            .is_some_and(|s| *s != DataSummary::of(&recorded))
        {
            problems.push(problem(format!(
                "file {}: the totals in the manifest do not match its digests",
                f.path
            )));
        }
        let path = dir.join(&f.path);
        let found = match off_thread(&format!("file {}", f.path), move || {
            tsvault_storage::file_digests(&path, basis)
        })
        .await
        {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => {
                problems.push(problem(format!("file {}: {e}", f.path)));
                continue;
            }
            Err(e) => {
                problems.push(problem(e.to_string()));
                continue;
            }
        };
        problems.extend(
            compare_digests(&recorded, &found)
                .into_iter()
                .map(|d| problem(format!("file {}: {d}", f.path))),
        );
    }
    // Compared only when every file's digests could be read.
    if let Some((id, stored)) = stored_index
        && problems.is_empty()
        && stored != index
    {
        problems.push(problem(format!(
            "series index {id} does not match the files' digests ({} series in it, {} in the digests)",
            stored.files.len(),
            index.files.len()
        )));
    }
    let checked = dir.clone();
    let report = off_thread("the restored data directory", move || {
        tsvault_storage::check_data_dir(&checked, &mut |_| {})
    })
    .await;
    match report {
        Ok(Ok(r)) => problems.extend(r.problems.into_iter().map(|f| {
            let file = f.file.strip_prefix(&dir).unwrap_or(&f.file).display();
            problem(format!("restored file {file}: {}", f.detail))
        })),
        Ok(Err(e)) => problems.push(problem(format!(
            "the restored data directory cannot be checked: {e}"
        ))),
        Err(e) => problems.push(problem(e.to_string())),
    }
    let opened = off_thread("the restored data directory", move || {
        tsvault_storage::Engine::open(tsvault_storage::EngineConfig::new(&dir))
            .map(|e| e.close_without_flush())
    })
    .await;
    match opened {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(problem(format!(
            "the restored data directory does not open: {e}"
        ))),
        Err(e) => problems.push(problem(e.to_string())),
    }
    problems
}

/// How the digests recomputed from restored bytes differ from those recorded, series by
/// series.
fn compare_digests(recorded: &[SeriesDigest], found: &[SeriesDigest]) -> Vec<String> {
    let found: HashMap<&str, &SeriesDigest> =
        found.iter().map(|d| (d.series.as_str(), d)).collect();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for r in recorded {
        seen.insert(r.series.as_str());
        match found.get(r.series.as_str()) {
            None => out.push(format!("series {} is missing from the restored file", r.series)),
            Some(f) if *f != r => out.push(format!(
                "series {}: recorded {} samples {}..{} ms (hash {}), restored {} samples {}..{} ms (hash {})",
                r.series, r.samples, r.min_ts_ms, r.max_ts_ms, r.hash, f.samples, f.min_ts_ms, f.max_ts_ms, f.hash
            )),
            Some(_) => {}
        }
    }
    for f in found.keys() {
        if !seen.contains(f) {
            out.push(format!(
                "series {f} is in the restored file but was not recorded"
            ));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tsvault_storage::{DigestHash, SnapshotInfo};

    /// A full backup of snapshot `info` read in `local` (as `--server-data-dir` reads it);
    /// the server is never asked (its address is closed).
    async fn back_up_local(
        repo: &Repository,
        info: SnapshotInfo,
        local: &Path,
    ) -> Result<BackupManifest> {
        let source = Source::Server {
            client: ServerClient::new("http://127.0.0.1:9").unwrap(),
            snapshot: info,
            local: Some(local.to_path_buf()),
        };
        let lock = Lock::acquire(repo, LockKind::Backup).await.unwrap();
        backup_locked(
            repo,
            &source,
            Some(BackupType::Full),
            &crate::NoProgress,
            lock,
            None,
        )
        .await
    }

    /// A segment's digests, totals and series as its index is walked are those of its
    /// digests computed as a server computes them, for either hash of the series index; a
    /// flipped byte of the segment is refused, naming the file.
    #[test]
    fn a_segments_summary_from_its_index_is_that_of_its_digests() {
        use tsvault_storage::{Engine, EngineConfig};
        let data = tempfile::tempdir().unwrap();
        let e = Engine::open(EngineConfig::new(data.path())).unwrap();
        let points: Vec<tsvault_model::Point> = (0..50)
            .flat_map(|h| {
                (0..20).map(move |i| tsvault_model::Point {
                    key: tsvault_model::SeriesKey::new("m", &[("host", format!("h{h}"))]).unwrap(),
                    ts_ms: 1_000_000 + i * 1000 + h,
                    value: (i * h) as f64,
                })
            })
            .collect();
        e.write(&points).unwrap();
        e.close().unwrap();
        let path = std::fs::read_dir(data.path().join("segments"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&path).unwrap();
        let (digests, blake3) =
            tsvault_storage::segment_digests(&path, &bytes, DigestBasis::BlocksCrc32c).unwrap();
        assert_eq!(digests.len(), 50);
        for hash in [KeyHash::Xxh3, KeyHash::Blake3] {
            let want = FileSummary::of_digests(DigestBasis::BlocksCrc32c, &digests, hash).unwrap();
            let (got_blake3, got) = FileSummary::of(&path, &bytes, hash).unwrap();
            assert_eq!(got_blake3, blake3);
            assert_eq!(got.encoded, want.encoded);
            assert_eq!(got.stats, want.stats);
            // The keys are hashed with the index's hash (the series carry no tag of it).
            assert_eq!(got.series, want.series);
            assert_eq!(got.series, hash.of_all(&digests));
        }
        let mut bad = bytes.clone();
        bad[bytes.len() / 2] ^= 1;
        let err = FileSummary::of(&path, &bad, KeyHash::Xxh3).err().unwrap();
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    /// A snapshot read in the server's data directory is backed up as listed, and checked
    /// against the server's listing as a pulled one is: a file whose size or hash is not
    /// the listed one (a segment, the WAL, the manifest) fails the backup, naming it, and
    /// leaves no backup.
    #[tokio::test]
    async fn a_snapshot_read_in_place_is_checked_against_its_listing() {
        use tsvault_storage::{Engine, EngineConfig};
        let data = tempfile::tempdir().unwrap();
        let e = Engine::open(EngineConfig::new(data.path())).unwrap();
        let point = |host: &str, ts_ms| tsvault_model::Point {
            key: tsvault_model::SeriesKey::new("m", &[("host", host)]).unwrap(),
            ts_ms,
            value: 1.5,
        };
        e.write(&[point("a", 1000), point("b", 1000)]).unwrap();
        e.flush().unwrap();
        e.write(&[point("a", 2000)]).unwrap();
        let info = e.snapshot().unwrap();
        let local = data.path().join(SNAPSHOTS_DIR).join(&info.id);
        let kinds = ["segments/", "wal/", "MANIFEST"];
        for kind in kinds {
            assert!(
                info.files.iter().any(|f| f.path.starts_with(kind)),
                "{info:?}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::unencrypted_for_test(dir.path()).await;

        let m = back_up_local(&repo, info.clone(), &local).await.unwrap();
        let entry = |path: &str, size, blake3: &str| (path.to_string(), size, blake3.to_string());
        let listed: Vec<_> = info
            .files
            .iter()
            .map(|f| entry(&f.path, f.size, &f.blake3))
            .collect();
        let stored: Vec<_> = m
            .files
            .iter()
            .map(|f| entry(&f.path, f.size, &f.blake3))
            .collect();
        assert_eq!(stored, listed);
        assert_eq!(m.summary.as_ref().unwrap().series, 2);

        for kind in kinds {
            let i = info
                .files
                .iter()
                .position(|f| f.path.starts_with(kind))
                .unwrap();
            let path = info.files[i].path.clone();
            let mut wrong_hash = info.clone();
            wrong_hash.files[i].blake3 = "0".repeat(64);
            let mut shorter = info.clone();
            shorter.files[i].size -= 1;
            for wrong in [wrong_hash, shorter] {
                let err = back_up_local(&repo, wrong, &local).await.unwrap_err();
                let text = err.to_string();
                assert!(
                    text.contains(&path) && text.contains("the source listed"),
                    "{text}"
                );
            }
        }
        assert_eq!(repo.backup_ids().await.unwrap(), vec![m.id]);
        e.close().unwrap();
    }

    #[test]
    fn backup_ids_sort_by_time_and_name_the_utc_date() {
        let a = new_backup_id(0);
        assert!(a.starts_with("19700101T000000.000Z-"), "{a}");
        let b = new_backup_id(1_763_700_000_123);
        assert!(b.starts_with("20251121T044000.123Z-"), "{b}");
        assert!(a < b);
        assert!(new_backup_id(951_782_400_000).starts_with("20000229T"));
    }

    /// The index counts files per series, survives its encoding, refuses to remove a series
    /// it does not hold, and a damaged index blob is an error naming it.
    #[tokio::test]
    async fn series_index_counts_files_per_series_and_names_damage() {
        let d = |series: &str| SeriesDigest {
            series: series.into(),
            samples: 1,
            min_ts_ms: 0,
            max_ts_ms: 0,
            hash: DigestHash::xxh3_128(0),
        };
        let mut index = SeriesIndex::default();
        index.add(&[d("a"), d("b")]);
        index.add(&[d("b")]);
        index.remove(&[d("a")], "blob-1").unwrap();
        assert_eq!(index.files.len(), 1);
        let err = index.remove(&[d("a")], "blob-2").unwrap_err().to_string();
        assert!(err.contains("series a") && err.contains("blob-2"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::unencrypted_for_test(dir.path()).await;
        let (id, _) = repo
            .put_blob(index.encode(), Compression::Default)
            .await
            .unwrap();
        assert_eq!(SeriesIndex::load(&repo, &id).await.unwrap(), index);
        let mut bytes = index.encode();
        bytes.push(0);
        let mut zero = SeriesIndex::default().encode();
        zero.extend_from_slice(&[7; 16]);
        zero.extend_from_slice(&0u32.to_le_bytes());
        for bad in [b"TSVSIDX9".to_vec(), bytes, zero] {
            let (id, _) = repo.put_blob(bad, Compression::Default).await.unwrap();
            let err = SeriesIndex::load(&repo, &id).await.unwrap_err().to_string();
            assert!(err.contains(&format!("series index blob {id}")), "{err}");
        }

        // New indexes hash with XXH3; one written before (BLAKE3, TSVSIDX1) is read, extended
        // and written again on its own hash, and deep verification rebuilds it on that hash.
        // The same files' digests (series a in two files, b in one), as deep verification
        // adds them to an index like the stored one.
        let rebuilt = |like: &SeriesIndex| {
            let mut index = SeriesIndex::like(like);
            index.add(&[d("a"), d("b")]);
            index.add(&[d("a")]);
            index
        };
        let mut old = SeriesIndex {
            hash: KeyHash::Blake3,
            files: KeyMap::default(),
        };
        old.add(&[d("a"), d("b")]);
        let bytes = old.encode();
        assert!(bytes.starts_with(b"TSVSIDX1"));
        assert!(index.encode().starts_with(b"TSVSIDX2"));
        let mut read = SeriesIndex::decode(&bytes, "old").unwrap();
        assert_eq!(read, old);
        assert!(
            read.files
                .contains_key(&blake3::hash(b"a").as_bytes()[..16])
        );
        read.add(&[d("a")]);
        assert!(read.encode().starts_with(b"TSVSIDX1"));
        assert_eq!(rebuilt(&read), read);
        let mut new = SeriesIndex::default();
        new.add(&[d("a"), d("a"), d("b")]);
        assert_eq!(rebuilt(&new), new);
        assert_ne!(rebuilt(&read).files, new.files);
    }

    #[test]
    fn packs_are_cut_by_the_files_hashes_and_never_pass_their_maximum() {
        let file = |blake3: &str, size: usize| {
            (
                FileEntry {
                    path: "segments/x.seg".into(),
                    size: size as u64,
                    blake3: blake3.repeat(64),
                    blobs: Vec::new(),
                    mtime_ns: 0,
                    digests: None,
                    stats: None,
                    packed: None,
                },
                PackPart {
                    bytes: vec![7; size],
                    digests: b"{}".to_vec(),
                },
            )
        };
        let mut p = Packer::new(PACK_TARGET, false);
        // A hash read as a fraction of 2^64 below size / target cuts after the file: 0x00..
        // always, 0xff.. only past the target, 0x8888.. (0.533..) past 0.533 of it.
        let (e, part) = file("f", 1000);
        assert!(p.add(0, &e, part).is_empty());
        let (e, part) = file("8", (PACK_TARGET / 2 - 1) as usize);
        assert!(p.add(1, &e, part).is_empty());
        let (e, part) = file("0", 10);
        let packs = p.add(2, &e, part);
        assert_eq!(packs.len(), 1);
        let pack = &packs[0];
        assert_eq!(pack.file_bytes, 1000 + PACK_TARGET / 2 - 1 + 10);
        let plaintext = pack.parts.concat();
        assert!(plaintext.starts_with(PACK_MAGIC));
        assert!(pack.digests.starts_with(DIGEST_PACK_MAGIC));
        let members: Vec<usize> = pack.members.iter().map(|m| m.0).collect();
        assert_eq!(members, [0, 1, 2]);
        // Each file and its digests where its entry says.
        let first = pack.members[0].1;
        assert_eq!(first.offset, PACK_MAGIC.len() as u64);
        assert_eq!(first.digests, Some((DIGEST_PACK_MAGIC.len() as u64, 2)));
        let second = pack.members[1].1;
        assert_eq!(second.offset, PACK_MAGIC.len() as u64 + 1000);
        assert_eq!(
            second.digests,
            Some((DIGEST_PACK_MAGIC.len() as u64 + 2, 2))
        );
        let (e, part) = file("8", PACK_TARGET as usize * 54 / 100);
        assert_eq!(
            p.add(3, &e, part).len(),
            1,
            "0.54 of the target at 0x8888..: cut"
        );
        assert!(p.take().is_none());
        // Never past the maximum: a pack is cut before a file that would take it there.
        let big = PACK_BYTES_MAX / 4;
        for i in 0..3 {
            let (e, part) = file("f", big);
            assert!(p.add(i, &e, part).is_empty());
        }
        let (e, part) = file("f", big);
        let packs = p.add(3, &e, part);
        assert_eq!(packs.len(), 1);
        assert!(packs[0].parts.iter().map(Vec::len).sum::<usize>() <= PACK_BYTES_MAX);
        assert_eq!(packs[0].members.len(), 3);
        // A file of another directory starts a pack of its own.
        let (mut e, part) = file("f", 10);
        e.path = "wal/00000000000000000001.wal".into();
        let packs = p.add(4, &e, part);
        assert_eq!(packs.len(), 1);
        assert_eq!(packs[0].members.len(), 1);
        assert_eq!(p.take().map(|p| p.members[0].0), Some(4));
    }

    #[test]
    fn digest_differences_are_named_by_series() {
        let d = |series: &str, samples, hash: u128| SeriesDigest {
            series: series.into(),
            samples,
            min_ts_ms: 0,
            max_ts_ms: 9,
            hash: DigestHash::xxh3_128(hash),
        };
        let recorded = vec![d("a", 3, 1), d("b", 2, 2), d("c", 1, 3)];
        assert!(compare_digests(&recorded, &recorded).is_empty());
        let found = vec![d("a", 3, 1), d("b", 2, 0xff), d("e", 1, 3)];
        let diff = compare_digests(&recorded, &found);
        assert_eq!(diff.len(), 3, "{diff:?}");
        assert!(
            diff[0].starts_with("series b: recorded 2 samples")
                && diff[0].ends_with(&format!("(hash {:032x})", 0xff)),
            "{diff:?}"
        );
        assert_eq!(diff[1], "series c is missing from the restored file");
        assert_eq!(
            diff[2],
            "series e is in the restored file but was not recorded"
        );
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "a\0b",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?}");
        }
        for good in ["MANIFEST", "segments/00000000000000000001.seg", "wal/x"] {
            assert!(safe_relative(good).is_ok(), "{good:?}");
        }
    }
}
