//! Snapshots (the unit every online backup starts from) and per-series digests of files.
//!
//! `segment_index` walks a verified segment's index, its entries borrowing their keys, for the
//! backup's digests.
//!
//! A snapshot is a directory `snapshots/<id>/` inside the data directory holding the manifest
//! of the moment, hard links of its live segments and of the WAL files since the manifest's
//! `wal_start`, up to a WAL roll made for the snapshot, and `snapshot.json` naming each file
//! with its size and BLAKE3. It is itself a data directory: opening a copy of it replays the
//! WAL and serves exactly what was acknowledged before the snapshot. Hard links cost no
//! copying, and the linked files never change (segments are immutable, and the WAL files
//! were closed by the roll), so taking a snapshot costs milliseconds whatever the data size.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use crate::error::{Error, IoContext, Result};
use crate::fsutil::sync_dir;
use crate::segment::{IndexEntry, Segment};
use crate::wal::{WalEnd, read_wal_file};

/// The directory of snapshots inside a data directory.
pub const SNAPSHOTS_DIR: &str = "snapshots";
/// The file in a snapshot's directory that describes it.
pub(crate) const SNAPSHOT_FILE: &str = "snapshot.json";

/// One file of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Relative to the snapshot (and to a data directory restored from it), `/`-separated.
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
}

/// What a snapshot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// `<created_ms>-<n>`: digits and one dash.
    pub id: String,
    /// Milliseconds since the epoch when it was taken.
    pub created_ms: i64,
    /// The consistency point: the snapshot holds every WAL file numbered below this, so every
    /// write acknowledged before it was taken, and nothing acknowledged after.
    pub wal_position: u64,
    /// Files, sorted by path.
    pub files: Vec<SnapshotFile>,
}

/// Whether `id` has the shape of a snapshot id (so it is safe as a directory name).
pub fn is_snapshot_id(id: &str) -> bool {
    let mut parts = id.split('-');
    let ok = |p: Option<&str>| {
        p.is_some_and(|p| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    ok(parts.next()) && ok(parts.next()) && parts.next().is_none()
}

/// The snapshot directory of `id` under `data_dir`, if it is a complete snapshot.
pub(crate) fn snapshot_dir(data_dir: &Path, id: &str) -> Result<PathBuf> {
    let dir = data_dir.join(SNAPSHOTS_DIR).join(id);
    if !is_snapshot_id(id) || !dir.join(SNAPSHOT_FILE).is_file() {
        return Err(Error::NotFound(format!("no snapshot {id}")));
    }
    Ok(dir)
}

/// `snapshot.json`: the description and the BLAKE3 of its canonical JSON, so that damage to
/// any of it (an id, a time, a WAL position) is found, not only damage to the files it lists.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredInfo {
    info: SnapshotInfo,
    blake3: String,
}

fn info_hash(info: &SnapshotInfo) -> String {
    let canonical = serde_json::to_vec(info).expect("snapshot invariant: plain data serializes");
    blake3::hash(&canonical).to_hex().to_string()
}

/// The bytes of `snapshot.json` for `info`.
pub(crate) fn encode_info(info: &SnapshotInfo) -> Vec<u8> {
    serde_json::to_vec_pretty(&StoredInfo {
        blake3: info_hash(info),
        info: info.clone(),
    })
    .expect("snapshot invariant: plain data serializes")
}

/// Reads and verifies the description of the snapshot in `dir`: it parses, its hash holds,
/// and it names the directory it is in.
pub(crate) fn load_info(dir: &Path) -> Result<SnapshotInfo> {
    let path = dir.join(SNAPSHOT_FILE);
    let bytes = fs::read(&path).ctx("read", &path)?;
    let corrupt = |detail: String| Error::Corrupt {
        path: path.clone(),
        detail,
    };
    let stored: StoredInfo = serde_json::from_slice(&bytes)
        .map_err(|e| corrupt(format!("snapshot description does not parse: {e}")))?;
    if info_hash(&stored.info) != stored.blake3 {
        return Err(corrupt(
            "snapshot description fails its hash: some of it was changed".into(),
        ));
    }
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let id = &stored.info.id;
    if id != name || id.split('-').next() != Some(stored.info.created_ms.to_string().as_str()) {
        return Err(corrupt(format!(
            "snapshot description names snapshot {id} taken at {} ms, in directory {name}",
            stored.info.created_ms
        )));
    }
    Ok(stored.info)
}

/// The entries of `data_dir/snapshots/` (none when it does not exist).
fn entries(data_dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let root = data_dir.join(SNAPSHOTS_DIR);
    match fs::read_dir(&root) {
        Ok(list) => list.map(|e| e.ctx("list", &root)).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).ctx("list", &root),
    }
}

/// Removes what snapshots interrupted while being taken or released left (`*.tmp`, and a
/// snapshot directory without its description, which only a release cut short by an older
/// version could leave: a snapshot gets its description before its name). Complete
/// snapshots are not read: a damaged description must not keep the store from starting.
pub(crate) fn remove_partial(data_dir: &Path) -> Result<()> {
    for e in entries(data_dir)? {
        let name = e.file_name().to_string_lossy().into_owned();
        let p = e.path();
        if name.ends_with(".tmp") || (is_snapshot_id(&name) && !p.join(SNAPSHOT_FILE).exists()) {
            fs::remove_dir_all(&p).ctx("remove", &p)?;
        }
    }
    Ok(())
}

/// Every complete snapshot under `data_dir`, oldest first; a description that does not
/// parse is an error naming it.
pub(crate) fn list(data_dir: &Path) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for e in entries(data_dir)? {
        let name = e.file_name().to_string_lossy().into_owned();
        if is_snapshot_id(&name) && e.path().join(SNAPSHOT_FILE).is_file() {
            out.push(load_info(&e.path())?);
        }
    }
    out.sort_by_key(|s| (s.created_ms, s.id.clone()));
    Ok(out)
}

/// The description of snapshot `id`.
pub(crate) fn info(data_dir: &Path, id: &str) -> Result<SnapshotInfo> {
    load_info(&snapshot_dir(data_dir, id)?)
}

/// Deletes snapshot `id` (its links; the store's own files stay). The directory is first
/// renamed out of the snapshots' names, so a release cut short leaves a `.tmp` directory
/// that the next start removes, never a snapshot with part of its files.
pub(crate) fn release(data_dir: &Path, id: &str) -> Result<()> {
    let dir = snapshot_dir(data_dir, id)?;
    let root = data_dir.join(SNAPSHOTS_DIR);
    let doomed = root.join(format!("{id}.released.tmp"));
    fs::rename(&dir, &doomed).ctx("rename", &dir)?;
    sync_dir(&root)?;
    fs::remove_dir_all(&doomed).ctx("remove", &doomed)?;
    sync_dir(&root)
}

/// Releases the snapshots taken `max_age_ms` ago or earlier; returns their ids. The time is
/// read from the id (`<created_ms>-<n>`), so a snapshot whose description is damaged expires
/// too.
pub(crate) fn expire(data_dir: &Path, max_age_ms: i64) -> Result<Vec<String>> {
    let cutoff = crate::engine::system_clock_ms().saturating_sub(max_age_ms);
    let mut expired = Vec::new();
    for e in entries(data_dir)? {
        let id = e.file_name().to_string_lossy().into_owned();
        let created_ms = is_snapshot_id(&id)
            .then(|| id.split('-').next().and_then(|ms| ms.parse::<i64>().ok()))
            .flatten();
        if created_ms.is_some_and(|ms| ms <= cutoff) && e.path().join(SNAPSHOT_FILE).is_file() {
            release(data_dir, &id)?;
            tracing::warn!(%id, "released a snapshot older than the snapshot age limit (an online backup that never finished?)");
            expired.push(id);
        }
    }
    expired.sort();
    Ok(expired)
}

/// The bytes of a snapshot's file, open at `file`, which its snapshot lists as `listed`
/// bytes long: one byte more is read at most, so that a file that grew is found (its length
/// is then not the listed one) without reading all of it. For the server sending a file
/// and for a backup reading it in the server's directory.
pub fn read_listed(file: &mut fs::File, listed: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(listed as usize + 1);
    file.take(listed + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// BLAKE3 of a file, hex, read in pieces.
pub(crate) fn hash_file(path: &Path) -> Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = fs::File::open(path).ctx("open", path)?;
    std::io::copy(&mut file, &mut hasher).ctx("read", path)?;
    Ok(hasher.finalize().to_hex().to_string())
}

/// Makes `dir` durable: its files were written or linked, then its name.
pub(crate) fn sync_tree(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).ctx("list", dir)? {
        let e = e.ctx("list", dir)?;
        if e.file_type().ctx("stat", e.path())?.is_dir() {
            sync_tree(&e.path())?;
        }
    }
    sync_dir(dir)
}

/// What one file holds of one series: how a restore is checked sample by sample.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesDigest {
    /// The series key (canonical `metric{tag=value,...}`).
    pub series: String,
    /// Samples of the series in the file (a WAL file counts each write, overwrites included).
    pub samples: u64,
    pub min_ts_ms: i64,
    pub max_ts_ms: i64,
    /// The hash of what the [`DigestBasis`] says (BLAKE3, XXH3-128 for
    /// [`DigestBasis::BlocksXxh3`], CRC32C for [`DigestBasis::BlocksCrc32c`]). Named
    /// `blake3` in JSON, where it began.
    #[serde(rename = "blake3")]
    pub hash: DigestHash,
}

/// The hash of a [`SeriesDigest`]: 32 bytes (BLAKE3), 16 (XXH3-128, big-endian) or 4
/// (CRC32C, big-endian). Kept as bytes, as the repository stores it; hex in JSON and
/// wherever it is shown. (Kept as hex text, a month of segments' digests cost a formatted
/// string per series per file and its parsing back, 4% of a backup's time.)
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DigestHash {
    len: u8,
    bytes: [u8; 32],
}

impl DigestHash {
    /// The hash of [`DigestBasis::Samples`] and [`DigestBasis::Blocks`].
    pub fn blake3(hash: blake3::Hash) -> Self {
        DigestHash {
            len: 32,
            bytes: *hash.as_bytes(),
        }
    }

    /// The hash of [`DigestBasis::BlocksXxh3`], in the canonical (big-endian) byte order.
    pub fn xxh3_128(hash: u128) -> Self {
        let mut bytes = [0; 32];
        bytes[..16].copy_from_slice(&hash.to_be_bytes());
        DigestHash { len: 16, bytes }
    }

    /// The hash of [`DigestBasis::BlocksCrc32c`], big-endian.
    pub fn crc32c(crc: u32) -> Self {
        let mut bytes = [0; 32];
        bytes[..4].copy_from_slice(&crc.to_be_bytes());
        DigestHash { len: 4, bytes }
    }

    /// The hash whose bytes are `bytes`, if they are 4, 16 or 32.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if ![4, 16, 32].contains(&bytes.len()) {
            return None;
        }
        let mut out = [0; 32];
        out[..bytes.len()].copy_from_slice(bytes);
        Some(DigestHash {
            len: bytes.len() as u8,
            bytes: out,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Display for DigestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_bytes()
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for DigestHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl Serialize for DigestHash {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for DigestHash {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        hex::decode(text.as_bytes())
            .ok()
            .and_then(|bytes| DigestHash::from_bytes(&bytes))
            .ok_or_else(|| {
                serde::de::Error::custom(format!("hash {text:?} is not 8, 32 or 64 hex digits"))
            })
    }
}

/// What the per-series digests of a file hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestBasis {
    /// Every sample of the series in file order (timestamp and value bits, little-endian):
    /// the file is decoded. The hash is BLAKE3 (64 hex digits).
    #[default]
    Samples,
    /// The series' block of a segment (one per series and segment) as stored, hashed with
    /// BLAKE3 (64 hex digits); its count and time range come from the segment's index.
    /// Nothing is decoded (a digest costs a hash of the compressed bytes), so whoever
    /// compares such digests decodes the blocks separately (`verify --deep` checks the
    /// restored directory with `check_data_dir`). Written before `blocks-xxh3`; still read.
    Blocks,
    /// As [`DigestBasis::Blocks`], hashed with XXH3-128 (32 hex digits, the canonical
    /// big-endian form): a block is a few hundred bytes, where BLAKE3 cannot use its SIMD
    /// lanes and costs several times more. The digest checks that a restore wrote what was
    /// backed up; the blob that holds it is itself checked (a checksum or AEAD), so the
    /// hash needs no resistance to forgery. Written before `blocks-crc32c`; still read.
    BlocksXxh3,
    /// The series' block of a segment, its hash the CRC32C (8 hex digits) the segment's
    /// index records for it: nothing of the block is read. Whoever computes these digests
    /// verifies the whole segment against its own BLAKE3 first (see [`segment_digests`]),
    /// so the recorded CRC is that of the block's bytes as they are, and equal digests of
    /// two such files mean equal blocks but for a CRC collision, which a restore's check of
    /// each file's BLAKE3 against its backup rules out. Against XXH3-128 it saves a pass
    /// over every block and 12 bytes per series per segment of the repository, which at
    /// 500 hosts for a month were incompressible digest bytes of 2.5% of a full backup.
    BlocksCrc32c,
}

impl DigestBasis {
    /// The cheapest basis for the data-directory file `path`: blocks for a segment, samples
    /// for anything else.
    pub fn for_file(path: &str) -> Self {
        if is_segment_file(path) {
            DigestBasis::BlocksCrc32c
        } else {
            DigestBasis::Samples
        }
    }

    /// Whether the digests hash a segment's blocks (segment files only).
    pub fn is_blocks(&self) -> bool {
        matches!(
            self,
            DigestBasis::Blocks | DigestBasis::BlocksXxh3 | DigestBasis::BlocksCrc32c
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            DigestBasis::Samples => "samples",
            DigestBasis::Blocks => "blocks",
            DigestBasis::BlocksXxh3 => "blocks-xxh3",
            DigestBasis::BlocksCrc32c => "blocks-crc32c",
        }
    }

    /// The basis named `name` (as [`DigestBasis::as_str`] writes it).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "samples" => Some(DigestBasis::Samples),
            "blocks" => Some(DigestBasis::Blocks),
            "blocks-xxh3" => Some(DigestBasis::BlocksXxh3),
            "blocks-crc32c" => Some(DigestBasis::BlocksCrc32c),
            _ => None,
        }
    }
}

/// Whether data-directory file `path` (or a file name) is a segment.
pub fn is_segment_file(path: &str) -> bool {
    path.ends_with(".seg")
}

/// The per-series digests of a data-directory file, sorted by series: every block of a
/// segment (`.seg`), every record of a WAL file (`.wal`) before a torn tail; other files hold
/// no samples. The file is verified as it is read (checksums, hashes); damage is an error
/// naming it. [`DigestBasis::Blocks`] is for segments only.
pub fn file_digests(path: &Path, basis: DigestBasis) -> Result<Vec<SeriesDigest>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if basis.is_blocks() {
        if !is_segment_file(name) {
            return Err(Error::Config(format!(
                "{}: digests of blocks are for segment files only",
                path.display()
            )));
        }
        let bytes = fs::read(path).ctx("read", path)?;
        return segment_digests(path, &bytes, basis).map(|(d, _)| d);
    }
    sample_digests(path, name)
}

/// [`file_digests`] on `basis` (one of blocks) of a segment file's bytes, already read
/// (`path` names it in errors), and the BLAKE3 of the whole file (hex; hashed once, to
/// verify the segment's own hash, which covers all but its footer): the file is verified as
/// a whole (header, footer, hash, index). The blocks' checksums are not checked again: the
/// hash covers every block, so bytes that pass it are the bytes whose checksums the writer
/// computed (checking them cost a pass over the file, 2% of a backup's CPU).
pub fn segment_digests(
    path: &Path,
    bytes: &[u8],
    basis: DigestBasis,
) -> Result<(Vec<SeriesDigest>, String)> {
    let hash: fn(&[u8], u32) -> DigestHash = match basis {
        DigestBasis::Blocks => |block, _| DigestHash::blake3(blake3::hash(block)),
        DigestBasis::BlocksXxh3 => |block, _| DigestHash::xxh3_128(xxh3_128(block)),
        DigestBasis::BlocksCrc32c => |_, crc| DigestHash::crc32c(crc),
        DigestBasis::Samples => {
            return Err(Error::Config(format!(
                "{}: digests of a segment's bytes are on blocks",
                path.display()
            )));
        }
    };
    let mut digests = Vec::new();
    let blake3 = segment_index(path, bytes, |e| {
        // The index was checked to point inside the file when the segment opened.
        let block = &bytes[e.offset as usize..][..e.len as usize];
        digests.push(SeriesDigest {
            series: e.key.to_string(),
            samples: u64::from(e.count),
            min_ts_ms: e.min_ts,
            max_ts_ms: e.max_ts,
            hash: hash(block, e.crc),
        });
    })?;
    Ok((digests, blake3))
}

/// Checks the segment in `bytes` (file `path`, named in errors) whole, its BLAKE3 first,
/// then calls `visit` with each entry of its index in series order; returns the BLAKE3 of
/// the file (hex). What [`segment_digests`] on [`DigestBasis::BlocksCrc32c`] says, without
/// allocating anything per series: the entry's CRC is that digest's hash.
pub fn segment_index(
    path: &Path,
    bytes: &[u8],
    mut visit: impl FnMut(IndexEntry<'_>),
) -> Result<String> {
    let (_, blake3, _) = Segment::parse_with(path, bytes, 0, None, |_, e| {
        visit(e);
        Ok(())
    })?;
    Ok(blake3)
}

fn sample_digests(path: &Path, name: &str) -> Result<Vec<SeriesDigest>> {
    struct Acc {
        samples: u64,
        min: i64,
        max: i64,
        hasher: blake3::Hasher,
        /// Sample bytes not yet hashed: BLAKE3 is fast on long inputs, slow on 16 bytes.
        pending: Vec<u8>,
    }
    const PENDING_MAX: usize = 64 << 10;
    fn acc_for<'a>(acc: &'a mut BTreeMap<String, Acc>, key: &str) -> &'a mut Acc {
        if !acc.contains_key(key) {
            acc.insert(
                key.to_string(),
                Acc {
                    samples: 0,
                    min: i64::MAX,
                    max: i64::MIN,
                    hasher: blake3::Hasher::new(),
                    pending: Vec::new(),
                },
            );
        }
        acc.get_mut(key).expect("inserted above")
    }
    let mut acc: BTreeMap<String, Acc> = BTreeMap::new();
    if is_segment_file(name) {
        // A block holds one series: its samples are hashed as one run, with no copy into
        // the series' pending bytes (the same bytes reach the hasher either way).
        let seg = Segment::open(path, 0, None)?;
        let mut samples = Vec::new();
        let mut run = Vec::new();
        for (i, b) in seg.keyed_blocks()?.iter().enumerate() {
            samples.clear();
            seg.read_block_into(i, i64::MIN, i64::MAX, &mut samples)?;
            let a = acc_for(&mut acc, b.key.as_str());
            run.clear();
            run.resize(samples.len() * 16, 0);
            for (out, s) in run.chunks_exact_mut(16).zip(&samples) {
                a.min = a.min.min(s.ts_ms);
                a.max = a.max.max(s.ts_ms);
                out[..8].copy_from_slice(&s.ts_ms.to_le_bytes());
                out[8..].copy_from_slice(&s.value.to_bits().to_le_bytes());
            }
            a.samples += samples.len() as u64;
            a.hasher.update(&run);
        }
    } else if name.ends_with(".wal") {
        let mut keys: std::collections::HashMap<u32, tsvault_model::SeriesKey> =
            std::collections::HashMap::new();
        let mut undefined = None;
        let end = read_wal_file(path, |batch| {
            keys.extend(batch.defs);
            for (id, ts, v) in batch.samples {
                let Some(k) = keys.get(&id) else {
                    undefined = Some(id);
                    continue;
                };
                let a = acc_for(&mut acc, k.as_str());
                a.samples += 1;
                a.min = a.min.min(ts);
                a.max = a.max.max(ts);
                a.pending.extend_from_slice(&ts.to_le_bytes());
                a.pending.extend_from_slice(&v.to_bits().to_le_bytes());
                if a.pending.len() >= PENDING_MAX {
                    a.hasher.update(&a.pending);
                    a.pending.clear();
                }
            }
            Ok(())
        })?;
        if let Some(id) = undefined {
            return Err(Error::Corrupt {
                path: path.to_owned(),
                detail: format!("sample refers to undefined series id {id}"),
            });
        }
        match end {
            // A torn tail (a stopped directory after a crash) is cut at the next start: the
            // digests cover the records before it, which are what a server replays.
            WalEnd::Clean | WalEnd::TornTail { .. } => {}
            WalEnd::Damaged { detail, .. } | WalEnd::Corrupt { detail, .. } => {
                return Err(Error::Corrupt {
                    path: path.to_owned(),
                    detail,
                });
            }
        }
    }
    Ok(acc
        .into_iter()
        .map(|(series, mut a)| SeriesDigest {
            series,
            samples: a.samples,
            min_ts_ms: a.min,
            max_ts_ms: a.max,
            hash: DigestHash::blake3(a.hasher.update(&a.pending).finalize()),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_ids_are_digits_and_one_dash() {
        for good in ["1763700000123-0", "0-12"] {
            assert!(is_snapshot_id(good), "{good}");
        }
        for bad in ["", "-", "1-", "-1", "1-2-3", "../x", "1-a", "1.2-3", "1 -2"] {
            assert!(!is_snapshot_id(bad), "{bad:?}");
        }
    }
}
