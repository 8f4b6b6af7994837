//! The single-node storage engine of tsvault: write-ahead log with group commit, in-memory
//! head, immutable columnar segment files per time partition, an atomic manifest, the series
//! index, compaction and retention.
//!
//! It guarantees that a write it acknowledges (under `FsyncMode::Always`) survives a crash,
//! and that data failing a checksum is reported, never returned. It knows nothing of HTTP,
//! protocols or query languages: callers hand it `Point`s and read back samples per series.

pub mod bytes;
mod check;
mod commit;
mod engine;
mod error;
mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod index;
mod live_segment;
mod manifest;
mod open_files;
mod powercut;
mod segment;
mod series_file;
mod snapshot;
mod wal;

pub use bytes::zstd_decompress;
pub use check::{CheckReport, Finding, check_data_dir};
pub use engine::{
    DEFAULT_SEGMENT_DURATION_MS, Engine, EngineConfig, EngineStats, FsyncMode, ImportOutcome,
    LOCK_FILE, QuarantinedFile, RESTORE_MARKER, WriteOutcome, lock_data_dir, system_clock_ms,
};
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use open_files::{OPEN_SEGMENT_FILES_DEFAULT, open_files, open_files_max, set_open_files_max};
pub use segment::{IndexEntry, SegmentInfo};
pub use series_file::SeriesFileMark;
pub use snapshot::{
    DigestBasis, DigestHash, SNAPSHOTS_DIR, SeriesDigest, SnapshotFile, SnapshotInfo, file_digests,
    is_segment_file, is_snapshot_id, read_listed, segment_digests, segment_index,
};
pub use wal::{record_newest_wal, wal_files};
