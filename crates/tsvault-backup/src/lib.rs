//! tsvault's backup repository (see FORMAT.md): content-addressed blobs, compressed with
//! zstd and sealed with AES-256-GCM (or ChaCha20-Poly1305) under a master key wrapped by an
//! Argon2id key from the passphrase, on any `object_store` target (a local directory or S3). Blobs are written
//! first and a backup's manifest last, so a manifest exists only for a complete backup.
//!
//! What exists: `init`; full, incremental and differential backups of a stopped data
//! directory or, online, of a running server's snapshot; `list`/`show`; restore into an
//! empty directory or into a running server, whole or selected; verify (structure,
//! read-data, deep); prune with locks; copy to a second repository; consolidate.

mod consolidate;
mod copy;
mod crypto;
mod data_dir;
mod digest_blob;
mod direct_write;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod locks;
mod manifest;
mod prune;
mod repo;
mod selective;
mod source;

pub use consolidate::consolidate;
pub use copy::{CopyReport, copy_backups};
pub use crypto::{Cipher, Compression};
pub use data_dir::{
    CHUNK_BYTES, NoProgress, Problem, Progress, backup_data_dir, backup_engine, backup_server,
    restore_data_dir, verify_backup, verify_deep,
};
pub use error::{Error, Result};
pub use locks::{LOCK_STALE_MS, Lock, LockInfo, LockKind};
pub use manifest::{BackupManifest, BackupType, ConsistencyPoint, DataSummary, FileEntry};
pub use prune::{BackupTime, KeepPolicy, PruneReport, prune, select_kept};
pub use repo::{RepoConfig, RepoOptions, Repository};
pub use selective::{RestoreFilter, SelectiveReport, restore_into_server, restore_selected};
pub use source::ServerClient;

/// Reads fault points from the `FAILPOINTS` environment variable (builds with the
/// `failpoints` feature, used only by tests; otherwise it does nothing). Points:
/// `backup-blob-stored` (after each blob of a backup), `restore-blob-written` (after each
/// blob written by a restore); the action `return` aborts the process there, as a kill -9.
/// The storage engine's points (`wal-append`, `wal-fsync`, `segment-write`, `segment-read`,
/// ...) share the registry, so `tsvault serve` built with them reads them here too.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
