//! `copy`: mirrors backups into a second repository (offsite), uploading only the blobs it
//! lacks. Blob ids are keyed per repository, so each blob of a copied backup is read from the
//! source (checked) and its id computed under the target's key.

use std::collections::HashMap;

use serde::Serialize;

use crate::crypto::Compression;
use crate::error::Result;
use crate::locks::{Lock, LockKind};
use crate::repo::Repository;

/// What one copy did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CopyReport {
    /// Backups written to the target.
    pub copied: Vec<String>,
    /// Backups the target already held.
    pub already_there: Vec<String>,
    /// Blobs uploaded to the target, and their stored bytes.
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
}

/// Copies backups `ids` (in order) from `from` to `to`, under a backup lock on the target.
/// A backup the target already holds is skipped; the manifest is written after its blobs,
/// with the same id, so an interrupted copy leaves no partial backup and resumes.
pub async fn copy_backups(
    from: &Repository,
    to: &Repository,
    ids: &[String],
) -> Result<CopyReport> {
    let lock = Lock::acquire(to, LockKind::Backup).await?;
    let result = copy_locked(from, to, &lock, ids).await;
    let released = lock.release(to).await;
    let report = result?;
    released?;
    Ok(report)
}

/// The copy itself; it keeps `lock` fresh, so that a long copy's lock never looks stale to
/// a prune of the target (which would then delete blobs the copy has uploaded).
async fn copy_locked(
    from: &Repository,
    to: &Repository,
    lock: &Lock,
    ids: &[String],
) -> Result<CopyReport> {
    let mut report = CopyReport::default();
    let existing: std::collections::HashSet<String> = to.backup_ids().await?.into_iter().collect();
    // Source id → target id, for blobs shared by the backups of this run.
    let mut mapped: HashMap<String, String> = HashMap::new();
    for id in ids {
        if existing.contains(id) {
            report.already_there.push(id.clone());
            continue;
        }
        let mut m = from.manifest(id).await?;
        let mut uploaded = 0;
        // Each blob compressed as a backup into the target compresses it (a segment's bytes
        // as they are unless the target was opened to compress them, digests as digests),
        // so a copy is the size of a backup of the same files.
        let mut blobs: Vec<(&mut String, Compression)> = Vec::new();
        for f in &mut m.files {
            let data = to.file_compression(&f.path);
            blobs.extend(f.blobs.iter_mut().map(|b| (b, data)));
            blobs.extend(f.digests.iter_mut().map(|b| (b, Compression::Digests)));
        }
        blobs.extend(m.series_index.iter_mut().map(|b| (b, Compression::Default)));
        for (blob, compression) in blobs {
            if let Some(t) = mapped.get(blob) {
                *blob = t.clone();
                continue;
            }
            lock.refresh_if_due(to).await?;
            let plaintext = from.get_blob(blob).await?;
            let (target_id, up) = to.put_blob(plaintext, compression).await?;
            if up > 0 {
                report.blobs_uploaded += 1;
                uploaded += up;
            }
            mapped.insert(blob.clone(), target_id.clone());
            *blob = target_id;
        }
        m.uploaded_bytes = uploaded;
        report.bytes_uploaded += uploaded;
        to.put_manifest(&m).await?;
        report.copied.push(id.clone());
    }
    Ok(report)
}
