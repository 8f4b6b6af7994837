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
    pub files: Vec<FileEntry>,
}
