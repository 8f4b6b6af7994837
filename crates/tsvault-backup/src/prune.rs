//! Retention: which backups a keep policy keeps (restic's rules), then garbage collection of
//! the blobs no kept backup references, under an exclusive lock.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::error::Result;
use crate::locks::{Lock, LockKind, now_ms};
use crate::repo::Repository;

/// How many backups to keep: the newest `last`, and the newest of each of the `hourly` most
/// recent hours that have a backup (likewise days, weeks, months; all UTC). A backup kept by
/// any rule is kept. Every manifest lists all of its files (an incremental or differential
/// backup only skipped reading the unchanged ones), so a backup never needs its parent or
/// base to be restored, and each is kept or removed on its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeepPolicy {
    pub last: usize,
    pub hourly: usize,
    pub daily: usize,
    pub weekly: usize,
    pub monthly: usize,
}

impl KeepPolicy {
    pub fn is_empty(&self) -> bool {
        *self == KeepPolicy::default()
    }
}

/// What the policy needs to know of a backup.
#[derive(Debug, Clone)]
pub struct BackupTime {
    pub id: String,
    pub started_ms: i64,
}

/// The UTC (year, month, day) of a count of days since 1970-01-01 (Howard Hinnant's
/// algorithm).
pub(crate) fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The bucket keys of a time: hour, day, ISO-week-ish (Monday-based weeks since the epoch),
/// month.
fn buckets(ms: i64) -> [i64; 4] {
    let hours = ms.div_euclid(3_600_000);
    let days = ms.div_euclid(86_400_000);
    // 1970-01-01 was a Thursday; shift so weeks start on Monday.
    let weeks = (days + 3).div_euclid(7);
    let (y, m, _) = civil(days);
    [hours, days, weeks, y * 12 + i64::from(m)]
}

/// The ids kept, each with why, and the ids removed (newest first).
pub fn select_kept(
    backups: &[BackupTime],
    policy: &KeepPolicy,
) -> (BTreeMap<String, Vec<String>>, Vec<String>) {
    let mut newest_first: Vec<&BackupTime> = backups.iter().collect();
    newest_first.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(b.id.cmp(&a.id)));
    let mut kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, b) in newest_first.iter().enumerate() {
        if i < policy.last {
            kept.entry(b.id.clone()).or_default().push("last".into());
        }
    }
    let rules = [
        ("hourly", policy.hourly),
        ("daily", policy.daily),
        ("weekly", policy.weekly),
        ("monthly", policy.monthly),
    ];
    for (r, (name, n)) in rules.iter().enumerate() {
        let mut seen = HashSet::new();
        for b in &newest_first {
            if seen.len() >= *n {
                break;
            }
            // The newest backup of each bucket, for the n most recent buckets.
            if seen.insert(buckets(b.started_ms)[r]) {
                kept.entry(b.id.clone()).or_default().push((*name).into());
            }
        }
    }
    let removed = newest_first
        .iter()
        .filter(|b| !kept.contains_key(&b.id))
        .map(|b| b.id.clone())
        .collect();
    (kept, removed)
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub kept: BTreeMap<String, Vec<String>>,
    pub removed: Vec<String>,
    pub blobs_deleted: u64,
    pub bytes_deleted: u64,
    pub blobs_kept: u64,
}

/// Applies `policy`: removes the manifests of backups it does not keep, then deletes every
/// blob no remaining backup references. Holds the repository's exclusive lock throughout,
/// so no backup runs meanwhile; blobs written after the prune started are never deleted.
/// An empty policy is refused (it would remove every backup).
pub async fn prune(repo: &Repository, policy: &KeepPolicy, dry_run: bool) -> Result<PruneReport> {
    if policy.is_empty() {
        return Err(crate::Error::Invalid(
            "no keep rule given: pass at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-monthly".into(),
        ));
    }
    let started = now_ms();
    let lock = Lock::acquire(repo, LockKind::Prune).await?;
    let result = prune_locked(repo, &lock, policy, dry_run, started).await;
    lock.release(repo).await?;
    result
}

/// A staging file of a local repository this old is left over from a killed writer.
const STAGING_MAX_AGE_MS: u64 = 3600 * 1000;

/// The prune itself. It keeps `lock` fresh as it goes (a prune of a large repository can
/// outlast the time after which a lock counts as stale, and a backup may start once it is).
async fn prune_locked(
    repo: &Repository,
    lock: &Lock,
    policy: &KeepPolicy,
    dry_run: bool,
    started: i64,
) -> Result<PruneReport> {
    let mut times = Vec::new();
    for id in repo.backup_ids().await? {
        lock.refresh_if_due(repo).await?;
        let m = repo.manifest(&id).await?;
        times.push(BackupTime {
            id,
            started_ms: m.started_ms,
        });
    }
    let (kept, removed) = select_kept(&times, policy);
    // The blobs every kept backup references; a HashSet of ids (bounded by the blob count).
    let mut referenced = HashSet::new();
    for id in kept.keys() {
        lock.refresh_if_due(repo).await?;
        let m = repo.manifest(id).await?;
        referenced.extend(m.blobs().map(|(b, _)| b.clone()));
    }
    if !dry_run {
        for id in &removed {
            lock.refresh_if_due(repo).await?;
            repo.delete_manifest(id).await?;
        }
        if !removed.is_empty() {
            repo.sync_deletions("backups").await?;
        }
        repo.clean_staging(STAGING_MAX_AGE_MS).await?;
    }
    let (mut blobs_deleted, mut bytes_deleted, mut blobs_kept) = (0, 0, 0);
    lock.refresh_if_due(repo).await?;
    let blobs = repo.blobs().await?;
    lock.refresh_if_due(repo).await?;
    for (id, size, written_ms) in blobs {
        if referenced.contains(&id) || written_ms >= started {
            blobs_kept += 1;
            continue;
        }
        if !dry_run {
            lock.refresh_if_due(repo).await?;
            repo.delete_blob(&id).await?;
        }
        blobs_deleted += 1;
        bytes_deleted += size;
    }
    Ok(PruneReport {
        dry_run,
        kept,
        removed,
        blobs_deleted,
        bytes_deleted,
        blobs_kept,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A prune that outlasts the refresh interval rewrites its lock, so that it never looks
    /// stale to a backup that would then start beside it.
    #[tokio::test]
    async fn a_long_prune_keeps_its_lock_fresh() {
        let data = tempfile::tempdir().unwrap();
        let e =
            tsvault_storage::Engine::open(tsvault_storage::EngineConfig::new(data.path())).unwrap();
        let key = tsvault_model::SeriesKey::new("m", &[("host", "a")]).unwrap();
        e.write(&[tsvault_model::Point {
            key,
            ts_ms: 1000,
            value: 1.0,
        }])
        .unwrap();
        e.close().unwrap();
        drop(e);
        let dir = tempfile::tempdir().unwrap();
        let opts = crate::repo::RepoOptions {
            url: dir.path().display().to_string(),
            ..Default::default()
        };
        let repo = Repository::init(&opts, None).await.unwrap();
        for _ in 0..2 {
            crate::backup_data_dir(&repo, data.path(), None, &crate::NoProgress)
                .await
                .unwrap();
        }
        let lock = Lock::acquire(&repo, LockKind::Prune).await.unwrap();
        lock.backdate(&repo, crate::locks::LOCK_REFRESH_MS).await;
        let before = now_ms();
        let policy = KeepPolicy {
            last: 1,
            ..Default::default()
        };
        let report = prune_locked(&repo, &lock, &policy, false, before)
            .await
            .unwrap();
        assert_eq!(report.removed.len(), 1);
        let (_, stored) = repo
            .locks()
            .await
            .unwrap()
            .into_iter()
            .find(|(n, _)| n == lock.name())
            .unwrap();
        assert!(
            stored.refreshed_ms >= before,
            "the lock was rewritten during the prune"
        );
        lock.release(&repo).await.unwrap();
    }

    const H: i64 = 3_600_000;
    const D: i64 = 24 * H;

    fn at(id: &str, ms: i64) -> BackupTime {
        BackupTime {
            id: id.into(),
            started_ms: ms,
        }
    }

    fn kept(backups: &[BackupTime], policy: KeepPolicy) -> Vec<String> {
        select_kept(backups, &policy).0.into_keys().collect()
    }

    #[test]
    fn calendar_buckets() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(11_016), (2000, 2, 29));
        // 2026-11-21 is a Saturday; the Monday before is 2026-11-16, the Sunday after ends it.
        let sat = 20_778 * D;
        assert_eq!(civil(20_778), (2026, 11, 21));
        assert_eq!(buckets(sat)[2], buckets(sat - 5 * D)[2]);
        assert_ne!(buckets(sat)[2], buckets(sat - 6 * D)[2]);
        assert_eq!(buckets(sat + D)[2], buckets(sat)[2]);
        assert_ne!(buckets(sat + 2 * D)[2], buckets(sat)[2]);
    }

    #[test]
    fn each_rule_keeps_the_newest_of_its_buckets() {
        // Every 6 hours for 40 days, starting 2026-01-01.
        let t0 = 20_454 * D;
        let backups: Vec<BackupTime> = (0..160)
            .map(|i| at(&format!("b{i:03}"), t0 + i * 6 * H))
            .collect();
        let last = |n| {
            kept(
                &backups,
                KeepPolicy {
                    last: n,
                    ..KeepPolicy::default()
                },
            )
        };
        assert_eq!(last(2), vec!["b158", "b159"]);
        // Daily 3: the last backup (18:00) of each of the 3 newest days.
        let daily = kept(
            &backups,
            KeepPolicy {
                daily: 3,
                ..KeepPolicy::default()
            },
        );
        assert_eq!(daily, vec!["b151", "b155", "b159"]);
        // Hourly 5: each backup is in its own hour.
        let hourly = kept(
            &backups,
            KeepPolicy {
                hourly: 5,
                ..KeepPolicy::default()
            },
        );
        assert_eq!(hourly, vec!["b155", "b156", "b157", "b158", "b159"]);
        // Monthly 2: the newest of February (b159) and of January (31 days x 4 - 1 = b123).
        let monthly = kept(
            &backups,
            KeepPolicy {
                monthly: 2,
                ..KeepPolicy::default()
            },
        );
        assert_eq!(monthly, vec!["b123", "b159"]);
        // Rules combine; the rest are removed.
        let (k, removed) = select_kept(
            &backups,
            &KeepPolicy {
                last: 1,
                daily: 2,
                monthly: 2,
                ..KeepPolicy::default()
            },
        );
        assert_eq!(
            k.keys().cloned().collect::<Vec<_>>(),
            vec!["b123", "b155", "b159"]
        );
        assert_eq!(k["b159"], vec!["last", "daily", "monthly"]);
        assert_eq!(removed.len(), 157);
        // Weekly 1: the newest backup.
        assert_eq!(
            kept(
                &backups,
                KeepPolicy {
                    weekly: 1,
                    ..KeepPolicy::default()
                }
            ),
            vec!["b159"]
        );
        // More buckets than backups keeps every bucket's newest.
        assert_eq!(
            kept(
                &backups,
                KeepPolicy {
                    daily: 1000,
                    ..KeepPolicy::default()
                }
            )
            .len(),
            40
        );
    }
}
