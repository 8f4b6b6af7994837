//! Repository locks (`locks/<kind>-<id>`): a backup holds a shared lock while it writes, prune
//! an exclusive one while it deletes, so prune never deletes a blob a running backup has
//! found already stored and is about to reference. Each side creates its lock, then looks for
//! the other's: of two that start together at least one sees the other and backs off.

use std::sync::atomic::{AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::repo::Repository;

/// A lock not refreshed for this long is stale (its process died): ignored and removable.
pub const LOCK_STALE_MS: i64 = 30 * 60 * 1000;
/// How often a long operation rewrites its lock.
pub const LOCK_REFRESH_MS: i64 = 5 * 60 * 1000;

/// What holds a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    Backup,
    Prune,
}

/// The content of a lock object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockInfo {
    pub kind: LockKind,
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// When it was last written, ms since the epoch.
    pub refreshed_ms: i64,
}

/// Now, in ms since the epoch (the engine's clock).
pub(crate) use tsvault_storage::system_clock_ms as now_ms;

/// Whether a lock was taken on this host by a process that no longer exists (killed before
/// it could release it): such a lock is stale at once rather than after 30 minutes.
fn holder_is_gone(info: &LockInfo, this_host: &str) -> bool {
    let proc_fs = std::path::Path::new("/proc/self").exists();
    proc_fs
        && !this_host.is_empty()
        && info.host == this_host
        && info.pid != 0
        && !std::path::Path::new(&format!("/proc/{}", info.pid)).exists()
}

/// A held lock; [`Lock::release`] removes it (a lock dropped without release goes stale).
pub struct Lock {
    info: LockInfo,
    name: String,
    /// When the lock object was last written: the tasks of one operation share the lock and
    /// whichever finds it due rewrites it.
    refreshed_ms: AtomicI64,
}

impl Lock {
    /// Takes a lock of `kind`, refusing when a conflicting live lock exists: a backup
    /// conflicts with a prune; a prune with anything.
    pub async fn acquire(repo: &Repository, kind: LockKind) -> Result<Lock> {
        let mut rnd = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut rnd);
        let id = hex::encode(rnd);
        let info = LockInfo {
            kind,
            id: id.clone(),
            host: std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            pid: std::process::id(),
            refreshed_ms: now_ms(),
        };
        let name = format!(
            "{}-{id}",
            if kind == LockKind::Backup {
                "backup"
            } else {
                "prune"
            }
        );
        repo.put_lock(&name, &info).await?;
        let lock = Lock {
            refreshed_ms: AtomicI64::new(info.refreshed_ms),
            info,
            name,
        };
        let now = now_ms();
        for (other_name, other) in repo.locks().await? {
            if other_name == lock.name
                || now - other.refreshed_ms > LOCK_STALE_MS
                || holder_is_gone(&other, &lock.info.host)
            {
                continue;
            }
            let conflict = kind == LockKind::Prune || other.kind == LockKind::Prune;
            if conflict {
                lock.release(repo).await?;
                let what = if other.kind == LockKind::Prune {
                    "a prune"
                } else {
                    "a backup"
                };
                return Err(Error::Invalid(format!(
                    "{what} is running on repository {} (lock {other_name}, host {:?}, pid {}); try again when it ends",
                    repo.url, other.host, other.pid
                )));
            }
        }
        Ok(lock)
    }

    /// Rewrites the lock if it is due, so it does not go stale during a long operation.
    pub async fn refresh_if_due(&self, repo: &Repository) -> Result<()> {
        let now = now_ms();
        let last = self.refreshed_ms.load(Ordering::Relaxed);
        // Of several tasks that find it due at once, the one that moves the time writes.
        if now - last >= LOCK_REFRESH_MS
            && self
                .refreshed_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let info = LockInfo {
                refreshed_ms: now,
                ..self.info.clone()
            };
            repo.put_lock(&self.name, &info).await?;
        }
        Ok(())
    }

    /// Makes the lock look written `by_ms` ago, here and in the repository (tests of long
    /// operations).
    #[cfg(test)]
    pub(crate) async fn backdate(&self, repo: &Repository, by_ms: i64) {
        let old = now_ms() - by_ms;
        self.refreshed_ms.store(old, Ordering::Relaxed);
        let info = LockInfo {
            refreshed_ms: old,
            ..self.info.clone()
        };
        repo.put_lock(&self.name, &info).await.unwrap();
    }

    #[cfg(test)]
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub async fn release(self, repo: &Repository) -> Result<()> {
        repo.delete_lock(&self.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tasks of one backup share its lock: when it is due, it is rewritten once with the
    /// new time, and not again until it is due again.
    #[tokio::test]
    async fn a_shared_lock_is_refreshed_once_when_due() {
        let dir = tempfile::tempdir().unwrap();
        let repo = Repository::unencrypted_for_test(dir.path()).await;
        let lock = Lock::acquire(&repo, LockKind::Backup).await.unwrap();
        async fn stored(repo: &Repository, name: &str) -> LockInfo {
            let locks = repo.locks().await.unwrap();
            locks.into_iter().find(|(n, _)| n == name).unwrap().1
        }
        let taken = stored(&repo, &lock.name).await.refreshed_ms;
        // Not yet due: nothing is written.
        lock.refresh_if_due(&repo).await.unwrap();
        assert_eq!(stored(&repo, &lock.name).await.refreshed_ms, taken);
        // Due (as if written a refresh interval ago): two tasks at once, one write.
        let old = taken - LOCK_REFRESH_MS;
        lock.refreshed_ms.store(old, Ordering::Relaxed);
        repo.put_lock(
            &lock.name,
            &LockInfo {
                refreshed_ms: old,
                ..lock.info.clone()
            },
        )
        .await
        .unwrap();
        let (a, b) = tokio::join!(lock.refresh_if_due(&repo), lock.refresh_if_due(&repo));
        a.unwrap();
        b.unwrap();
        let now = stored(&repo, &lock.name).await.refreshed_ms;
        assert!(now >= taken, "refreshed at {now}, taken at {taken}");
        assert_eq!(lock.refreshed_ms.load(Ordering::Relaxed), now);
        lock.release(&repo).await.unwrap();
        assert!(repo.locks().await.unwrap().is_empty());
    }
}
