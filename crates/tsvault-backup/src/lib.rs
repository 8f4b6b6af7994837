//! tsvault's backup repository (see FORMAT.md): content-addressed blobs, compressed with
//! zstd and sealed with ChaCha20-Poly1305 under a master key wrapped by an Argon2id key from
//! the passphrase, on any `object_store` target (a local directory or S3). Blobs are written
//! first and a backup's manifest last, so a manifest exists only for a complete backup.
//!
//! What exists so far: `init`, full backups of a stopped data directory, `list`/`show`,
//! restore into an empty directory, verify (structure, read-data), prune with locks, and copy to a second repository.

mod copy;
mod crypto;
mod data_dir;
mod error;
mod locks;
mod manifest;
mod prune;
mod repo;
mod selective;

pub use copy::{CopyReport, copy_backups};
pub use data_dir::{
    CHUNK_BYTES, NoProgress, Problem, Progress, backup_data_dir, restore_data_dir, verify_backup,
};
pub use error::{Error, Result};
pub use locks::{LOCK_STALE_MS, Lock, LockInfo, LockKind};
pub use manifest::{BackupManifest, BackupType, FileEntry};
pub use prune::{BackupTime, KeepPolicy, PruneReport, prune, select_kept};
pub use repo::{RepoConfig, RepoOptions, Repository};
pub use selective::{RestoreFilter, SelectiveReport, restore_selected, wildcard_matches};

/// Reads fault points from the `FAILPOINTS` environment variable (builds with the
/// `failpoints` feature, used only by tests; otherwise it does nothing). Points:
/// `backup-blob-stored` (after each blob of a backup), `restore-blob-written` (after each
/// blob written by a restore); the action `return` aborts the process there, as a kill -9.
pub fn failpoints_from_env() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}
