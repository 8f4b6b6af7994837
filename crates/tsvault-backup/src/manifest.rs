//! A backup's manifest: what it holds and where each byte of it is.

use serde::{Deserialize, Serialize};

/// The kind of backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    Full,
    Incremental,
    Differential,
}

/// One file of the data directory, as a list of blobs in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory, `/`-separated, normal components only.
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the whole file, hex.
    pub blake3: String,
    pub blobs: Vec<String>,
    /// The file's modification time (ns since the epoch) when it was read: with the size, how
    /// a later incremental or differential backup knows it is unchanged without reading it.
    #[serde(default)]
    pub mtime_ns: i128,
    /// The blob holding the file's per-series digests (JSON, see FORMAT.md), which
    /// `verify --deep` compares a restore against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<String>,
    /// Totals of the file's digests: what a later backup that reuses the entry adds to its
    /// summary without reading them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<DataSummary>,
    /// Set for a small file stored in a pack: `blobs` then names the one blob of the pack's
    /// bytes and `digests` the blob of its digests (the same blob in backups written before
    /// they were split); the file's bytes (`size` of them) and its digests are slices of
    /// their plaintexts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed: Option<Packed>,
}

/// Where a packed file lies in its pack's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    /// The offset of the file's bytes in the plaintext of its `blobs`' one blob.
    pub offset: u64,
    /// The offset and length of its digests (what a digest blob holds) in the plaintext
    /// of its `digests` blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digests: Option<(u64, u64)>,
}

impl FileEntry {
    /// Every blob the entry needs: its data, then its digests.
    pub fn all_blobs(&self) -> impl Iterator<Item = &String> {
        self.blobs.iter().chain(&self.digests)
    }
}

/// The moment a backup is the image of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyPoint {
    /// The server's snapshot (online backups), absent for a stopped data directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// WAL files numbered below this are in the backup: every write acknowledged before.
    pub wal_position: u64,
    /// Milliseconds since the epoch when the image was taken.
    pub at_ms: i64,
}

/// What backed-up data (a backup, or one file of it) holds, from per-series digests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSummary {
    pub series: u64,
    /// Samples stored in the files (a timestamp written twice and not yet compacted, or in
    /// the WAL as well as a segment, counts twice).
    pub samples: u64,
    pub min_ts_ms: Option<i64>,
    pub max_ts_ms: Option<i64>,
}

/// A backup (`backups/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupManifest {
    /// Sortable by time: `YYYYMMDDTHHMMSS.mmmZ-<8 hex>`.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: BackupType,
    pub parent: Option<String>,
    pub base: Option<String>,
    /// Milliseconds since the epoch when the backup started.
    pub started_ms: i64,
    pub finished_ms: i64,
    /// Where it came from (a data directory path, or a server URL).
    pub source: String,
    /// Bytes of all files (logical size).
    pub logical_bytes: u64,
    /// Bytes uploaded for this backup (after deduplication, compression, encryption).
    pub uploaded_bytes: u64,
    /// Bytes read from the source: files unchanged since the parent (or base) are not read.
    #[serde(default)]
    pub read_bytes: u64,
    /// Bytes not uploaded because the repository already held them (unchanged files and
    /// chunks already stored).
    #[serde(default)]
    pub deduplicated_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<ConsistencyPoint>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<DataSummary>,
    /// For a synthetic full backup (`consolidate`): the backup whose image it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consolidated_from: Option<String>,
    /// The blob of the backup's series index (every series of its files, with the number of
    /// files that hold it; FORMAT.md): how the next incremental backup counts series without
    /// reading the digests of the files it reuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series_index: Option<String>,
    pub files: Vec<FileEntry>,
}

impl BackupManifest {
    /// What `backup create --json` prints of it: everything but the file list (counted).
    pub fn summary_json(&self) -> serde_json::Value {
        serde_json::json!({"id": self.id, "type": self.kind, "parent": self.parent,
            "base": self.base, "consolidated_from": self.consolidated_from,
            "started_ms": self.started_ms, "finished_ms": self.finished_ms,
            "source": self.source, "consistency": self.consistency, "data": self.summary,
            "files": self.files.len(), "logical_bytes": self.logical_bytes,
            "read_bytes": self.read_bytes, "uploaded_bytes": self.uploaded_bytes,
            "deduplicated_bytes": self.deduplicated_bytes})
    }

    /// Every blob the backup needs, each with what it is for (for messages).
    pub fn blobs(&self) -> impl Iterator<Item = (&String, String)> {
        self.files
            .iter()
            .flat_map(|f| f.all_blobs().map(|b| (b, format!("file {}", f.path))))
            .chain(
                self.series_index
                    .iter()
                    .map(|b| (b, "series index".to_string())),
            )
    }
}
