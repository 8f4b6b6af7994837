//! Synthetic full backups: an incremental or differential backup folded with its chain into
//! one full backup, without reading the source.
//!
//! Every manifest lists every file of its image (incremental and differential backups reuse
//! the entries of the files unchanged since their reference), so the fold is that list,
//! checked whole in the repository, under a new manifest of type full that no longer
//! depends on any other: prune may then forget the chain and keep the synthetic full.

use crate::data_dir::new_backup_id;
use crate::error::{Error, Result};
use crate::locks::{Lock, LockKind};
use crate::manifest::{BackupManifest, BackupType};
use crate::repo::Repository;

/// Writes a synthetic full backup of the image of backup `id`. Its id carries the time of
/// `id` (it is the image of that moment) and `consolidated_from` names `id`. Holds a backup
/// lock, so a concurrent prune keeps every blob it names.
pub async fn consolidate(repo: &Repository, id: &str) -> Result<BackupManifest> {
    let lock = Lock::acquire(repo, LockKind::Backup).await?;
    let folded = fold(repo, id, &lock).await;
    let released = lock.release(repo).await;
    let manifest = folded?;
    released?;
    Ok(manifest)
}

async fn fold(repo: &Repository, id: &str, lock: &Lock) -> Result<BackupManifest> {
    let m = repo.manifest(id).await?;
    if m.kind == BackupType::Full {
        return Err(Error::Invalid(format!(
            "backup {id} is already a full backup; nothing to consolidate"
        )));
    }
    // Each blob once (files share them), the lock kept fresh while a large backup is
    // checked: a prune ignores a stale lock and could delete what the new manifest names.
    let mut checked = std::collections::HashSet::new();
    for (blob, what) in m.blobs() {
        if !checked.insert(blob) {
            continue;
        }
        lock.refresh_if_due(repo).await?;
        if !repo.has_blob(blob).await? {
            return Err(Error::Missing {
                what: format!("blob {blob} ({what} of backup {id})"),
            });
        }
    }
    let full = BackupManifest {
        id: new_backup_id(m.started_ms),
        kind: BackupType::Full,
        parent: None,
        base: None,
        started_ms: m.started_ms,
        finished_ms: m.finished_ms,
        source: m.source,
        logical_bytes: m.logical_bytes,
        uploaded_bytes: 0,
        read_bytes: 0,
        deduplicated_bytes: m.logical_bytes,
        consistency: m.consistency,
        summary: m.summary,
        consolidated_from: Some(id.to_string()),
        series_index: m.series_index,
        files: m.files,
    };
    repo.put_manifest(&full).await?;
    Ok(full)
}
