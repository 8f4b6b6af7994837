//! Backups of a real data directory into a local repository: round trip, and verify
//! catching each kind of damage.

use std::path::{Path, PathBuf};

use tsvault_backup::{
    BackupManifest, CHUNK_BYTES, Cipher, Compression, KeepPolicy, NoProgress, RepoOptions,
    Repository, backup_data_dir, copy_backups, prune, restore_data_dir, verify_backup, verify_deep,
};
use tsvault_model::{Point, ReadCap, Sample, SeriesKey};
use tsvault_storage::{DigestBasis, Engine, EngineConfig, file_digests};

fn key(host: &str) -> SeriesKey {
    SeriesKey::new("cpu_usage", &[("host", host)]).unwrap()
}

/// A data directory with flushed segments and samples still in the WAL.
fn data_dir(dir: &Path) {
    let e = Engine::open(EngineConfig::new(dir)).unwrap();
    let points: Vec<Point> = (0..2000)
        .flat_map(|i| {
            ["a", "b"].map(|h| Point {
                key: key(h),
                ts_ms: 1_700_000_000_000 + i * 10_000,
                value: (i % 97) as f64 / 4.0,
            })
        })
        .collect();
    e.write(&points[..3000]).unwrap();
    e.flush().unwrap();
    e.write(&points[3000..]).unwrap();
    e.close_without_flush();
}

/// A full backup of stopped data directory `src` into `repo`.
async fn full_backup(repo: &Repository, src: &Path) -> tsvault_backup::BackupManifest {
    try_full_backup(repo, src).await.unwrap()
}

/// [`full_backup`], which may fail.
async fn try_full_backup(
    repo: &Repository,
    src: &Path,
) -> Result<tsvault_backup::BackupManifest, tsvault_backup::Error> {
    backup_data_dir(
        repo,
        src,
        Some(tsvault_backup::BackupType::Full),
        &NoProgress,
    )
    .await
}

fn all(dir: &Path) -> Vec<(SeriesKey, Vec<Sample>)> {
    let e = Engine::open(EngineConfig::new(dir)).unwrap();
    let out = e
        .select(
            "cpu_usage",
            &|_| true,
            (i64::MIN / 4, i64::MAX / 4),
            ReadCap::NONE,
        )
        .unwrap();
    e.close().unwrap();
    out
}

fn opts(repo: &Path, password: Option<&str>) -> RepoOptions {
    RepoOptions {
        url: repo.display().to_string(),
        password: password.map(|p| p.as_bytes().to_vec()),
        ..RepoOptions::default()
    }
}

#[tokio::test]
async fn full_backup_restores_every_sample_and_dedups_a_second_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dst = tmp.path().join("dst");
    let (src, repo_dir, repo, first) = backed_up(tmp.path(), Some("pw")).await;
    assert!(first.uploaded_bytes > 0);
    assert!(first.files.iter().any(|f| f.path.starts_with("segments/")));
    assert!(first.files.iter().any(|f| f.path.starts_with("wal/")));
    // Nothing changed: the second backup uploads nothing new.
    let second = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(second.uploaded_bytes, 0);
    // A full backup of the same files reads them all again, and packs them as the first
    // did: it finds every pack stored.
    assert!(first.files.iter().all(|f| f.packed.is_some()), "{first:?}");
    let third = full_backup(&repo, &src).await;
    assert_eq!(third.read_bytes, third.logical_bytes);
    assert_eq!(third.uploaded_bytes, 0);
    assert_eq!(third.files, first.files);
    assert_eq!(
        repo.backup_ids().await.unwrap(),
        vec![first.id.clone(), second.id.clone(), third.id.clone()]
    );

    let reopened = Repository::open(&opts(&repo_dir, Some("pw")))
        .await
        .unwrap();
    restore_data_dir(&reopened, Some(&first.id), &dst, &NoProgress)
        .await
        .unwrap();
    let want = all(&src);
    assert_eq!(want.len(), 2);
    assert_eq!(want[0].1.len(), 2000);
    assert_eq!(all(&dst), want);
    assert!(verify_backup(&reopened, &first.id, true).await.is_empty());

    // A non-empty target is refused, and so is an unknown backup.
    let err = restore_data_dir(&reopened, None, &dst, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is not empty"), "{err}");
    let err = restore_data_dir(
        &reopened,
        Some("20990101T000000.000Z-00000000"),
        &tmp.path().join("x"),
        &NoProgress,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("no backup 20990101T000000.000Z-00000000"),
        "{err}"
    );
}

/// Restore renames each file into place before fsyncing it (the files are fsynced together
/// at the end, before `RESTORING` goes): a power cut can leave a renamed file torn. A
/// restore run again over such a directory finds every file in place that is not whole and
/// right (same size with other bytes, shorter, empty) and writes it again.
#[tokio::test]
async fn a_resumed_restore_rewrites_files_a_power_cut_left_torn() {
    for pack_target in [None, Some(0)] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, _, repo, b) = backed_up_in_packs(tmp.path(), None, pack_target).await;
        let dst = tmp.path().join("dst");
        restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap();
        // As a power cut before the final fsyncs could leave it: the marker, and torn files.
        std::fs::write(dst.join(tsvault_storage::RESTORE_MARKER), &b.id).unwrap();
        let restored = files(&dst);
        let segs: Vec<&PathBuf> = restored
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        let wals: Vec<&PathBuf> = restored
            .iter()
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        assert!(!segs.is_empty() && !wals.is_empty(), "{restored:?}");
        let mut bytes = std::fs::read(segs[0]).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x01;
        std::fs::write(segs[0], &bytes).unwrap();
        let wal = std::fs::read(wals[0]).unwrap();
        std::fs::write(wals[0], &wal[..wal.len() / 2]).unwrap();
        std::fs::write(dst.join("MANIFEST"), b"").unwrap();
        // And what a run killed while writing leaves: a file under this version's
        // temporary name, and one under the name versions before 16f5c8f used.
        let leftovers = [
            segs[0].with_extension("seg.restoring"),
            wals[0].with_extension("restoring"),
        ];
        for l in &leftovers {
            std::fs::write(l, b"half a file").unwrap();
        }
        restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap();
        assert!(!dst.join(tsvault_storage::RESTORE_MARKER).exists());
        for l in &leftovers {
            assert!(!l.exists(), "{} was left", l.display());
        }
        // Nothing but the backup's files is there.
        let mut left: Vec<String> = files(&dst)
            .iter()
            .map(|p| p.strip_prefix(&dst).unwrap().display().to_string())
            .collect();
        left.sort();
        let mut backed_up: Vec<String> = b.files.iter().map(|f| f.path.clone()).collect();
        backed_up.sort();
        assert_eq!(left, backed_up);
        for f in &b.files {
            let got = std::fs::read(dst.join(&f.path)).unwrap();
            assert_eq!(
                blake3::hash(&got).to_hex().as_str(),
                f.blake3,
                "{} ({pack_target:?})",
                f.path
            );
        }
        assert_eq!(all(&dst), all(&src));
    }
}

#[tokio::test]
async fn wrong_or_missing_passphrase_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    Repository::init(&opts(&repo_dir, Some("right")), Some(Cipher::Aes256Gcm))
        .await
        .unwrap();
    let err = Repository::open(&opts(&repo_dir, Some("wrong")))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().starts_with("wrong passphrase"), "{err}");
    let err = Repository::open(&opts(&repo_dir, None))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("TSVAULT_REPO_PASSWORD"), "{err}");
    let err = Repository::init(&opts(&repo_dir, Some("right")), Some(Cipher::Aes256Gcm))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("already holds a repository"),
        "{err}"
    );
    let err = Repository::open(&opts(&tmp.path().join("none"), None))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("holds no repository"), "{err}");
    // A config asking for an absurd key-derivation cost is refused, not obeyed.
    let config_path = repo_dir.join("config");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).unwrap()).unwrap();
    config["encryption"]["m_cost_kib"] = serde_json::json!(u32::MAX);
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let err = Repository::open(&opts(&repo_dir, Some("right")))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("Argon2id cost"), "{err}");
}

/// A repository of format 1 (ChaCha20-Poly1305, its config naming no cipher, as tsvault wrote
/// them before format 2) is still read, written and verified; a config whose format and
/// cipher disagree, or of a later format, is refused by name.
#[tokio::test]
async fn a_format_1_chacha20_repository_is_still_read_and_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    data_dir(&src);
    let repo = Repository::init(&opts(&repo_dir, Some("pw")), Some(Cipher::ChaCha20Poly1305))
        .await
        .unwrap();
    let first = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    // Made into the config format 1 had: no cipher named.
    let config_path = repo_dir.join("config");
    let original = std::fs::read(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert_eq!(config["format"], 2);
    assert_eq!(config["encryption"]["cipher"], "chacha20-poly1305");
    config["format"] = serde_json::json!(1);
    config["encryption"]
        .as_object_mut()
        .unwrap()
        .remove("cipher");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();

    let reopened = Repository::open(&opts(&repo_dir, Some("pw")))
        .await
        .unwrap();
    assert!(verify_backup(&reopened, &first.id, true).await.is_empty());
    // Written to as well: a full backup of more data, sealed with the same cipher.
    let e = Engine::open(EngineConfig::new(&src)).unwrap();
    e.write(&[Point {
        key: key("c"),
        ts_ms: 1_700_000_000_000,
        value: 1.0,
    }])
    .unwrap();
    e.close().unwrap();
    let second = full_backup(&reopened, &src).await;
    assert!(second.uploaded_bytes > 0);
    for id in [&first.id, &second.id] {
        assert!(verify_backup(&reopened, id, true).await.is_empty(), "{id}");
    }
    let dst = tmp.path().join("dst");
    restore_data_dir(&reopened, Some(&second.id), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(all(&dst), all(&src));

    // Format 1 naming a cipher, format 2 naming none, format 3: each refused.
    let mut with_cipher = config.clone();
    with_cipher["encryption"]["cipher"] = serde_json::json!("aes-256-gcm");
    let mut without = config.clone();
    without["format"] = serde_json::json!(2);
    let mut later = config.clone();
    later["format"] = serde_json::json!(3);
    for (bad, says) in [
        (with_cipher, "format 1 has no field for a cipher"),
        (without, "format 2 must name a cipher"),
        (later, "has format 3; this tsvault reads formats 1 to 2"),
    ] {
        std::fs::write(&config_path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let err = Repository::open(&opts(&repo_dir, Some("pw")))
            .await
            .err()
            .unwrap();
        assert!(err.to_string().contains(says), "{err}");
    }
}

/// Under `tmp`: a data directory `src`, a repository `repo` (encrypted with `password` when
/// one is given) and one backup of `src` in it.
async fn backed_up(
    tmp: &Path,
    password: Option<&str>,
) -> (PathBuf, PathBuf, Repository, BackupManifest) {
    backed_up_in_packs(tmp, password, None).await
}

/// [`backed_up`], with packs of `pack_target` bytes (`RepoOptions::pack_target`): Some(0)
/// stores every file in blobs of its own, Some(1) every small file in a pack of its own.
async fn backed_up_in_packs(
    tmp: &Path,
    password: Option<&str>,
    pack_target: Option<u64>,
) -> (PathBuf, PathBuf, Repository, BackupManifest) {
    let (src, repo_dir) = (tmp.join("src"), tmp.join("repo"));
    data_dir(&src);
    let options = RepoOptions {
        pack_target,
        ..opts(&repo_dir, password)
    };
    let repo = Repository::init(&options, password.map(|_| Cipher::Aes256Gcm))
        .await
        .unwrap();
    let backup = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    (src, repo_dir, repo, backup)
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn verify_names_each_kind_of_damage() {
    // Files in blobs of their own, and each in a pack of its own (a pack holds its file's
    // bytes and digests).
    for (encrypted, pack_target) in [(true, 0), (false, 0), (true, 1), (false, 1)] {
        let tmp = tempfile::tempdir().unwrap();
        let (_, repo_dir, repo, b) =
            backed_up_in_packs(tmp.path(), encrypted.then_some("pw"), Some(pack_target)).await;
        assert_eq!(
            b.files.iter().all(|f| f.packed.is_some()),
            pack_target == 1,
            "{b:?}"
        );
        assert!(verify_backup(&repo, &b.id, true).await.is_empty());
        // The data blobs (not the digest blobs, which only deep verification reads).
        let ids: std::collections::BTreeSet<&String> =
            b.files.iter().flat_map(|f| &f.blobs).collect();
        let blobs: Vec<std::path::PathBuf> = ids
            .iter()
            .map(|id| repo_dir.join("data").join(&id[..2]).join(id))
            .collect();
        assert!(blobs.len() >= 3, "{blobs:?}");

        // A flipped byte in a blob: found by read-data, not by the structure check.
        let mut bytes = std::fs::read(&blobs[0]).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x40;
        std::fs::write(&blobs[0], &bytes).unwrap();
        let flipped = blobs[0].file_name().unwrap().to_str().unwrap().to_string();
        assert!(verify_backup(&repo, &b.id, false).await.is_empty());
        let problems = verify_backup(&repo, &b.id, true).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].detail.contains(&format!("blob {flipped}")),
            "{problems:?}"
        );
        assert_eq!(problems[0].backup, b.id);

        // A missing blob: found by both.
        std::fs::remove_file(&blobs[1]).unwrap();
        let missing = blobs[1].file_name().unwrap().to_str().unwrap().to_string();
        let problems = verify_backup(&repo, &b.id, false).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0]
                .detail
                .contains(&format!("blob {missing} is missing")),
            "{problems:?}"
        );
        // A restore stops at the damage, naming it, and leaves no half-written file in place.
        let dst = tmp.path().join("dst");
        let err = restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap_err();
        // Whichever damaged blob comes first in file order is named.
        let err = err.to_string();
        assert!(
            err.contains(&format!("blob {missing}")) || err.contains(&format!("blob {flipped}")),
            "{err}"
        );
        assert!(
            err.to_string().contains(&format!("of backup {}", b.id)),
            "{err}"
        );
        assert!(
            files(&dst)
                .iter()
                .all(|f| f.extension().is_none_or(|x| x != "restoring")),
            "a partial file was left: {:?}",
            files(&dst)
        );

        // A truncated manifest.
        let mpath = repo_dir.join("backups").join(&b.id);
        let m = std::fs::read(&mpath).unwrap();
        std::fs::write(&mpath, &m[..m.len() / 2]).unwrap();
        let problems = verify_backup(&repo, &b.id, false).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].detail.contains(&format!("backup {}", b.id)),
            "{problems:?}"
        );
        assert!(problems[0].detail.contains("damaged"), "{problems:?}");
    }
}

#[tokio::test]
async fn prune_removes_what_the_policy_drops_and_waits_for_running_backups() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir, repo, first) = backed_up(tmp.path(), None).await;
    // More data, flushed into a new segment: the second backup has blobs the first lacks,
    // and shares the first's segment.
    {
        let e = Engine::open(EngineConfig::new(&src)).unwrap();
        let p: Vec<Point> = (0..500)
            .map(|i| Point {
                key: key("c"),
                ts_ms: 1_800_000_000_000 + i,
                value: i as f64,
            })
            .collect();
        e.write(&p).unwrap();
        e.close().unwrap();
    }
    let second = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert!(second.uploaded_bytes > 0);
    // An incremental, taken against the first; its manifest still lists every file.
    assert_eq!(second.kind, tsvault_backup::BackupType::Incremental);
    assert_eq!(second.parent.as_deref(), Some(first.id.as_str()));
    let blobs_before = files(&repo_dir.join("data")).len();

    // A backup in progress holds its lock: prune refuses, naming it, and deletes nothing.
    let running = tsvault_backup::LockKind::Backup;
    let lock = tsvault_backup::Lock::acquire(&repo, running).await.unwrap();
    let keep_last_1 = KeepPolicy {
        last: 1,
        ..KeepPolicy::default()
    };
    let err = prune(&repo, &keep_last_1, false).await.unwrap_err();
    assert!(err.to_string().contains("a backup is running"), "{err}");
    assert_eq!(files(&repo_dir.join("data")).len(), blobs_before);
    lock.release(&repo).await.unwrap();

    // An empty policy is refused rather than removing everything.
    let err = prune(&repo, &KeepPolicy::default(), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--keep-last"), "{err}");

    // Dry run: reports, changes nothing.
    let dry = prune(&repo, &keep_last_1, true).await.unwrap();
    assert_eq!(dry.removed, vec![first.id.clone()]);
    assert_eq!(repo.backup_ids().await.unwrap().len(), 2);
    assert_eq!(files(&repo_dir.join("data")).len(), blobs_before);

    let done = prune(&repo, &keep_last_1, false).await.unwrap();
    assert_eq!(done.removed, vec![first.id.clone()]);
    assert_eq!(repo.backup_ids().await.unwrap(), vec![second.id.clone()]);
    // Exactly the blobs only the first backup used are gone; the second is whole.
    let referenced: std::collections::HashSet<&String> = second.blobs().map(|(b, _)| b).collect();
    let only_first: std::collections::HashSet<&String> = first
        .blobs()
        .map(|(b, _)| b)
        .filter(|b| !referenced.contains(b))
        .collect();
    assert!(!only_first.is_empty());
    assert_eq!(done.blobs_deleted as usize, only_first.len());
    assert_eq!(
        files(&repo_dir.join("data")).len(),
        blobs_before - only_first.len()
    );
    assert!(verify_backup(&repo, &second.id, true).await.is_empty());
    // Its parent is gone; it restores alone.
    let dst = tmp.path().join("dst");
    restore_data_dir(&repo, Some(&second.id), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(all(&dst), all(&src));
    assert!(
        files(&repo_dir)
            .iter()
            .all(|f| !f.starts_with(repo_dir.join("locks"))),
        "locks left behind"
    );
}

#[tokio::test]
async fn copy_mirrors_backups_into_a_second_repository_uploading_only_what_it_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, a_dir, b_dir, dst) = (
        tmp.path().join("src"),
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("dst"),
    );
    data_dir(&src);
    let a = Repository::init(&opts(&a_dir, Some("pw-a")), Some(Cipher::Aes256Gcm))
        .await
        .unwrap();
    let b = Repository::init(&opts(&b_dir, None), None).await.unwrap();
    let first = backup_data_dir(&a, &src, None, &NoProgress).await.unwrap();
    let second = backup_data_dir(&a, &src, None, &NoProgress).await.unwrap();
    let ids = a.backup_ids().await.unwrap();
    let report = copy_backups(&a, &b, &ids).await.unwrap();
    assert_eq!(report.copied, ids);
    // The second backup shares every blob with the first: uploaded once.
    let distinct: std::collections::HashSet<&String> = first.blobs().map(|(b, _)| b).collect();
    assert_eq!(report.blobs_uploaded as usize, distinct.len());
    assert_eq!(b.manifest(&second.id).await.unwrap().uploaded_bytes, 0);
    // Compressed as a backup compresses: the copy into an unencrypted repository is the
    // size of a backup of the same files into another.
    let c = Repository::init(&opts(&tmp.path().join("c"), None), None)
        .await
        .unwrap();
    let direct = backup_data_dir(&c, &src, None, &NoProgress).await.unwrap();
    assert_eq!(report.bytes_uploaded, direct.uploaded_bytes);
    // Again: nothing to do.
    let again = copy_backups(&a, &b, &ids).await.unwrap();
    assert_eq!(again.already_there, ids);
    assert_eq!(again.blobs_uploaded, 0);
    // The copy restores on its own, under the target's keys.
    assert!(verify_backup(&b, &first.id, true).await.is_empty());
    restore_data_dir(&b, Some(&first.id), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(all(&dst), all(&src));
}

/// A segment's bytes are stored in the repository as the engine wrote them, unless the
/// repository is opened to compress them: then its many alike blocks (the pco headers of 300
/// series) make the backup smaller. Both restore the same samples, and a copy follows its
/// target's choice.
#[tokio::test]
async fn segments_are_stored_as_they_are_unless_asked_to_compress_them() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let e = Engine::open(EngineConfig::new(&src)).unwrap();
    let points: Vec<Point> = (0..300)
        .flat_map(|h| {
            (0..40).map(move |i| Point {
                key: key(&format!("host-{h:03}")),
                ts_ms: 1_700_000_000_000 + i * 10_000,
                value: ((h * 7 + i * 3) % 1000) as f64,
            })
        })
        .collect();
    e.write(&points).unwrap();
    e.close().unwrap();
    // Read once, before the backups: opening the engine again changes its files.
    let want = all(&src);
    let segments: Vec<Vec<u8>> = std::fs::read_dir(src.join("segments"))
        .unwrap()
        .map(|f| std::fs::read(f.unwrap().path()).unwrap())
        .collect();
    assert_eq!(segments.len(), 1);
    let segment = &segments[0];
    // Every object under `data/`, as stored (unencrypted: a format byte, a zstd frame and
    // a check).
    let objects = |repo: &Path| -> Vec<Vec<u8>> {
        files(&repo.join("data"))
            .into_iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect()
    };
    let holds = |objects: &[Vec<u8>], bytes: &[u8]| {
        // Raw zstd blocks are at most 128 KiB: look for the segment's first 100 KB.
        let probe = &bytes[..bytes.len().min(100_000)];
        objects
            .iter()
            .any(|o| o.windows(probe.len()).any(|w| w == probe))
    };
    let mut uploaded = Vec::new();
    for compress_segments in [false, true] {
        let dir = tmp.path().join(format!("repo-{compress_segments}"));
        Repository::init(&opts(&dir, None), None).await.unwrap();
        let repo = Repository::open(&RepoOptions {
            compress_segments,
            ..opts(&dir, None)
        })
        .await
        .unwrap();
        let b = full_backup(&repo, &src).await;
        assert_eq!(
            holds(&objects(&dir), segment),
            !compress_segments,
            "compress_segments {compress_segments}"
        );
        let dst = tmp.path().join(format!("dst-{compress_segments}"));
        restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap();
        assert_eq!(all(&dst), want);
        assert!(verify_backup(&repo, &b.id, true).await.is_empty());
        uploaded.push(b.uploaded_bytes);
    }
    assert!(uploaded[1] < uploaded[0], "{uploaded:?}");
    // A copy from the compressed repository into a default one stores the segment as it is.
    let from = Repository::open(&opts(&tmp.path().join("repo-true"), None))
        .await
        .unwrap();
    let to_dir = tmp.path().join("copy");
    let to = Repository::init(&opts(&to_dir, None), None).await.unwrap();
    let report = copy_backups(&from, &to, &from.backup_ids().await.unwrap())
        .await
        .unwrap();
    let stored = |repo: &Path| objects(repo).iter().map(Vec::len).sum::<usize>() as u64;
    assert_eq!(report.bytes_uploaded, stored(&to_dir));
    assert_eq!(stored(&to_dir), stored(&tmp.path().join("repo-false")));
    assert!(holds(&objects(&to_dir), segment));
}

/// Writes 300 more samples of series `host` and flushes them into a new segment.
fn add_segment(dir: &Path, host: &str, t0: i64) {
    let e = Engine::open(EngineConfig::new(dir)).unwrap();
    let p: Vec<Point> = (0..300)
        .map(|i| Point {
            key: key(host),
            ts_ms: t0 + i * 1000,
            value: i as f64,
        })
        .collect();
    e.write(&p).unwrap();
    e.close().unwrap();
}

/// An incremental backup counts series from its reference's index, the stats of the files it
/// reuses and the digests of those that changed or went away: its summary must equal that of
/// a full backup of the same directory, when series arrive and when retention drops them.
#[tokio::test]
async fn an_incremental_summarises_its_data_like_a_full_backup_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    data_dir(&src);
    let chain = Repository::init(&opts(&tmp.path().join("chain"), None), None)
        .await
        .unwrap();
    let fulls = Repository::init(&opts(&tmp.path().join("fulls"), None), None)
        .await
        .unwrap();
    let now = tsvault_storage::system_clock_ms();
    let mut seen = Vec::new();
    for step in 0..4 {
        match step {
            0 => {}
            // A new series in a new partition, and one more in the WAL.
            1 => add_segment(&src, "x", 1_750_000_000_000),
            2 => {
                let e = Engine::open(EngineConfig::new(&src)).unwrap();
                e.write(&[Point {
                    key: key("recent"),
                    ts_ms: now,
                    value: 1.0,
                }])
                .unwrap();
                e.close_without_flush();
            }
            // Retention drops every partition but the recent one: series leave the index.
            _ => {
                let mut config = EngineConfig::new(&src);
                config.retention_ms = Some(86_400_000);
                let e = Engine::open(config).unwrap();
                assert!(e.apply_retention().unwrap() > 0);
                e.close().unwrap();
            }
        }
        let inc = backup_data_dir(&chain, &src, None, &NoProgress)
            .await
            .unwrap();
        let full = full_backup(&fulls, &src).await;
        assert_eq!(inc.summary, full.summary, "step {step}");
        assert_eq!(
            inc.kind,
            if step == 0 {
                tsvault_backup::BackupType::Full
            } else {
                tsvault_backup::BackupType::Incremental
            }
        );
        seen.push(inc.summary.unwrap().series);
        let problems = verify_deep(&chain, &inc.id).await;
        assert!(problems.is_empty(), "step {step}: {problems:?}");
    }
    assert_eq!(seen, [2, 3, 4, 1]);
}

#[tokio::test]
async fn incremental_and_differential_read_only_changed_files_and_each_restores_its_point() {
    use tsvault_backup::BackupType::{Differential, Full, Incremental};
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    data_dir(&src);
    // Reopened and closed: everything is in compacted segments, which later writes to other
    // partitions leave alone.
    Engine::open(EngineConfig::new(&src))
        .unwrap()
        .close()
        .unwrap();
    let repo = Repository::init(&opts(&repo_dir, Some("pw")), Some(Cipher::Aes256Gcm))
        .await
        .unwrap();
    // No full backup yet: an incremental is refused, naming the way out.
    let err = backup_data_dir(&repo, &src, Some(Incremental), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("take a full one first"), "{err}");

    let full = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(full.kind, Full);
    assert_eq!(full.read_bytes, full.logical_bytes);
    let at_full = all(&src);

    add_segment(&src, "x", 1_750_000_000_000);
    let inc = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (inc.kind, inc.parent.as_deref(), inc.base.as_deref()),
        (Incremental, Some(full.id.as_str()), Some(full.id.as_str()))
    );
    // The full backup's segments were not read again.
    let full_segments: u64 = full
        .files
        .iter()
        .filter(|f| f.path.starts_with("segments/"))
        .map(|f| f.size)
        .sum();
    assert!(full_segments > 0);
    assert!(
        inc.read_bytes <= inc.logical_bytes - full_segments,
        "{} read of {}",
        inc.read_bytes,
        inc.logical_bytes
    );
    let at_inc = all(&src);

    add_segment(&src, "y", 1_760_000_000_000);
    let inc2 = backup_data_dir(&repo, &src, Some(Incremental), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (inc2.parent.as_deref(), inc2.base.as_deref()),
        (Some(inc.id.as_str()), Some(full.id.as_str()))
    );
    let diff = backup_data_dir(&repo, &src, Some(Differential), &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (diff.kind, diff.parent.as_deref(), diff.base.as_deref()),
        (Differential, Some(full.id.as_str()), Some(full.id.as_str()))
    );
    // Against the full, the differential reads everything changed since then, which is more
    // than the incremental (against the previous backup) read.
    assert!(
        diff.read_bytes > inc2.read_bytes,
        "{} vs {}",
        diff.read_bytes,
        inc2.read_bytes
    );
    let at_diff = all(&src);
    assert_ne!(at_full, at_inc);
    assert_ne!(at_inc, at_diff);

    for (b, want) in [
        (&full, &at_full),
        (&inc, &at_inc),
        (&inc2, &at_diff),
        (&diff, &at_diff),
    ] {
        let dst = tmp.path().join(format!("restore-{}", b.id));
        restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap();
        assert_eq!(&all(&dst), want, "backup {} ({:?})", b.id, b.kind);
        assert!(verify_backup(&repo, &b.id, true).await.is_empty());
    }

    // The next incremental reads the newest backup's manifest and no older one (its base,
    // the full, is listed): a chain of daily incrementals does not read one more manifest
    // each day. Shown by damaging an older manifest of the chain, which it then never sees.
    std::fs::write(repo_dir.join("backups").join(&inc.id), b"damaged").unwrap();
    add_segment(&src, "z", 1_770_000_000_000);
    let inc3 = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(
        (inc3.kind, inc3.parent.as_deref(), inc3.base.as_deref()),
        (Incremental, Some(diff.id.as_str()), Some(full.id.as_str()))
    );
    let dst = tmp.path().join("restore-inc3");
    restore_data_dir(&repo, Some(&inc3.id), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(all(&dst), all(&src));
    // A differential still looks for the newest full, reading every manifest back to it:
    // the damaged one is named.
    let err = backup_data_dir(&repo, &src, Some(Differential), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains(&inc.id), "{err}");
}

#[tokio::test]
async fn selective_restore_returns_only_the_chosen_metric_and_time_range() {
    use tsvault_backup::{RestoreFilter, restore_selected};
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir) = (tmp.path().join("src"), tmp.path().join("repo"));
    let t0 = 1_700_000_000_000i64;
    {
        let e = Engine::open(EngineConfig::new(&src)).unwrap();
        let mut points = Vec::new();
        for i in 0..3000 {
            for (metric, host) in [("cpu_usage", "a"), ("cpu_idle", "b"), ("mem_used", "a")] {
                points.push(Point {
                    key: SeriesKey::new(metric, &[("host", host)]).unwrap(),
                    ts_ms: t0 + i * 60_000,
                    value: i as f64 + 0.5,
                });
            }
        }
        e.write(&points).unwrap();
        e.close().unwrap();
    }
    let repo = Repository::init(&opts(&repo_dir, None), None)
        .await
        .unwrap();
    let b = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    let (start, end) = (t0 + 100 * 60_000, t0 + 2000 * 60_000);
    let filter = RestoreFilter {
        metric: Some("CPU_*".into()),
        start_ms: Some(start),
        end_ms: Some(end),
    };
    let dst = tmp.path().join("dst");
    let (_, report) = restore_selected(&repo, Some(&b.id), &dst, &filter, &NoProgress)
        .await
        .unwrap();
    assert_eq!(report.metrics, vec!["cpu_idle", "cpu_usage"]);
    assert_eq!((report.series, report.samples), (2, 2 * 1901));
    let e = Engine::open(EngineConfig::new(&dst)).unwrap();
    assert_eq!(e.metric_names(), vec!["cpu_idle", "cpu_usage"]);
    for metric in ["cpu_idle", "cpu_usage"] {
        let got = e
            .select(
                metric,
                &|_| true,
                (i64::MIN / 4, i64::MAX / 4),
                ReadCap::NONE,
            )
            .unwrap();
        assert_eq!(got.len(), 1);
        let samples = &got[0].1;
        assert_eq!(samples.len(), 1901);
        assert_eq!((samples[0].ts_ms, samples[0].value), (start, 100.5));
        assert_eq!(samples.last().unwrap().ts_ms, end);
    }
    e.close().unwrap();
    // Nothing left beside the target.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    // Nothing matching is an error, and creates nothing.
    let none = RestoreFilter {
        metric: Some("disk_*".into()),
        ..RestoreFilter::default()
    };
    let err = restore_selected(&repo, None, &tmp.path().join("none"), &none, &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing in backup"), "{err}");
    assert!(!tmp.path().join("none").exists());
}

#[tokio::test]
async fn hostile_manifest_ids_and_stray_objects_are_errors_or_left_alone_never_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, repo_dir, repo, good) = backed_up(tmp.path(), None).await;
    // An unencrypted manifest is a format byte and zstd JSON: forge one whose blob id is not
    // hex (multi-byte characters where a path is cut) and whose path climbs out.
    let mut forged = serde_json::to_value(&good).unwrap();
    let id = "20990101T000000.000Z-00000000";
    forged["id"] = serde_json::json!(id);
    // 64 bytes; byte 2 falls inside a character, where the blob's directory name was cut.
    forged["files"][0]["blobs"][0] = serde_json::json!(format!("a{}b", "é".repeat(31)));
    let mut body = vec![1u8];
    body.extend(zstd::bulk::compress(&serde_json::to_vec(&forged).unwrap(), 3).unwrap());
    std::fs::write(repo_dir.join("backups").join(id), body).unwrap();
    let problems = verify_backup(&repo, id, false).await;
    assert!(
        problems
            .iter()
            .any(|p| p.detail.contains("not a 64-digit hex id")),
        "{problems:?}"
    );
    let err = restore_data_dir(&repo, Some(id), &tmp.path().join("dst"), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a 64-digit hex id"), "{err}");
    forged["files"][0]["path"] = serde_json::json!("../outside");
    let id2 = "20990101T000000.001Z-00000000";
    forged["id"] = serde_json::json!(id2);
    let mut body = vec![1u8];
    body.extend(zstd::bulk::compress(&serde_json::to_vec(&forged).unwrap(), 3).unwrap());
    std::fs::write(repo_dir.join("backups").join(id2), body).unwrap();
    let err = restore_data_dir(&repo, Some(id2), &tmp.path().join("dst2"), &NoProgress)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("outside the target"), "{err}");
    assert!(!tmp.path().join("outside").exists() && !tmp.path().join("dst2").exists());
    // A file named twice, or with the suffix restore writes files under: refused before
    // anything is written (files are written at once, under temporary names).
    let mut twice = serde_json::to_value(&good).unwrap();
    let files = twice["files"].as_array_mut().unwrap();
    files.push(files[0].clone());
    let mut reserved = serde_json::to_value(&good).unwrap();
    let first = reserved["files"][0]["path"].as_str().unwrap().to_string();
    reserved["files"][0]["path"] = serde_json::json!(format!("{first}.restoring"));
    for (n, (mut forged, says)) in [(twice, "twice"), (reserved, "the suffix restore reserves")]
        .into_iter()
        .enumerate()
    {
        let id = format!("20990101T000000.00{}Z-00000000", n + 2);
        forged["id"] = serde_json::json!(id);
        let mut body = vec![1u8];
        body.extend(zstd::bulk::compress(&serde_json::to_vec(&forged).unwrap(), 3).unwrap());
        std::fs::write(repo_dir.join("backups").join(&id), body).unwrap();
        let dst = tmp.path().join(format!("dst-{n}"));
        let err = restore_data_dir(&repo, Some(&id), &dst, &NoProgress)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(says), "{err}");
        assert!(!dst.exists());
    }

    // A stray object under data/ is never taken for a blob, so prune leaves it.
    let stray = repo_dir.join("data").join("zz").join("not-a-blob");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"x").unwrap();
    let keep = KeepPolicy {
        last: 1,
        ..KeepPolicy::default()
    };
    prune(&repo, &keep, false).await.unwrap();
    assert!(stray.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_verify_compares_every_series_with_what_was_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    // Digest blobs of their own here; packed digests below.
    let (src, _, repo, b) = backed_up_in_packs(tmp.path(), Some("pw"), Some(0)).await;
    assert!(verify_deep(&repo, &b.id).await.is_empty());
    let summary = b.summary.clone().unwrap();
    assert!(summary.series > 0 && summary.samples > 0, "{summary:?}");

    // Backups written before `blocks-crc32c` hold XXH3 digests of blocks, and before
    // `blocks-xxh3` BLAKE3 ones: still compared, by the hash their basis names (with
    // another hash under that basis, every series differs).
    for (i, (basis, hashed_as, agree)) in [
        ("blocks", DigestBasis::Blocks, true),
        ("blocks", DigestBasis::BlocksXxh3, false),
        ("blocks-xxh3", DigestBasis::BlocksXxh3, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = b.clone();
        let mut series = 0;
        for entry in m.files.iter_mut().filter(|f| f.path.ends_with(".seg")) {
            let digests = file_digests(&src.join(&entry.path), hashed_as).unwrap();
            series += digests.len();
            let blob = serde_json::json!({"basis": basis, "series": digests});
            let (id, _) = repo
                .put_blob(serde_json::to_vec(&blob).unwrap(), Compression::Default)
                .await
                .unwrap();
            entry.digests = Some(id);
        }
        assert!(series > 0);
        m.id = format!("{}0000000{}", &b.id[..b.id.len() - 8], i + 5);
        repo.put_manifest(&m).await.unwrap();
        let problems = verify_deep(&repo, &m.id).await;
        if agree {
            assert!(problems.is_empty(), "{problems:?}");
        } else {
            assert_eq!(problems.len(), series, "{problems:?}");
            assert!(
                problems.iter().all(|p| p.detail.contains("recorded")),
                "{problems:?}"
            );
        }
    }

    // A backup whose recorded digests disagree with its bytes (as if the source had been
    // misread): every blob is whole, so only deep verification can tell.
    let mut m = b.clone();
    let entry = m
        .files
        .iter_mut()
        .find(|f| f.path.starts_with("segments/"))
        .unwrap();
    let path = entry.path.clone();
    // The segment's digests (blocks, XXH3) with one count changed, stored in the JSON form
    // older backups hold.
    let mut digests = file_digests(&src.join(&path), DigestBasis::BlocksXxh3).unwrap();
    digests[0].samples += 1;
    let series = digests[0].series.clone();
    let blob = serde_json::json!({"basis": "blocks-xxh3", "series": digests});
    let (changed, _) = repo
        .put_blob(serde_json::to_vec(&blob).unwrap(), Compression::Default)
        .await
        .unwrap();
    entry.digests = Some(changed);
    entry.stats.as_mut().unwrap().samples += 1;
    m.id = format!("{}00000000", &b.id[..b.id.len() - 8]);
    repo.put_manifest(&m).await.unwrap();
    assert!(verify_backup(&repo, &m.id, true).await.is_empty());
    let problems = verify_deep(&repo, &m.id).await;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].backup, m.id);
    assert!(
        problems[0]
            .detail
            .starts_with(&format!("file {path}: series {series}: recorded")),
        "{problems:?}"
    );

    // A manifest whose file totals, or whose series index, disagree with the digests (what
    // the next incremental backup would count from) is named too.
    let mut totals = b.clone();
    totals.files[1].stats.as_mut().unwrap().series += 1;
    totals.id = format!("{}00000001", &b.id[..b.id.len() - 8]);
    let mut index = b.clone();
    let (empty_index, _) = repo
        .put_blob(b"TSVSIDX1".to_vec(), Compression::Default)
        .await
        .unwrap();
    index.series_index = Some(empty_index.clone());
    index.id = format!("{}00000002", &b.id[..b.id.len() - 8]);
    for (m, want) in [
        (
            &totals,
            format!(
                "file {}: the totals in the manifest do not match its digests",
                totals.files[1].path
            ),
        ),
        (
            &index,
            format!(
                "series index {empty_index} does not match the files' digests (0 series in it, {} in the digests)",
                summary.series
            ),
        ),
    ] {
        repo.put_manifest(m).await.unwrap();
        let problems = verify_deep(&repo, &m.id).await;
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].detail, want);
    }

    // Packed: two files whose entries point at each other's digests in their pack.
    let tmp = tempfile::tempdir().unwrap();
    let (_, _, repo, b) = backed_up(tmp.path(), Some("pw")).await;
    assert!(verify_deep(&repo, &b.id).await.is_empty());
    let mut m = b.clone();
    let segs: Vec<usize> = (0..m.files.len())
        .filter(|&i| m.files[i].path.starts_with("segments/"))
        .collect();
    let (a, z) = (segs[0], *segs.last().unwrap());
    assert_ne!(a, z, "{b:?}");
    assert_eq!(m.files[a].blobs, m.files[z].blobs, "one pack: {b:?}");
    let (pa, pz) = (m.files[a].packed.unwrap(), m.files[z].packed.unwrap());
    m.files[a].packed.as_mut().unwrap().digests = pz.digests;
    m.files[z].packed.as_mut().unwrap().digests = pa.digests;
    m.id = format!("{}00000003", &b.id[..b.id.len() - 8]);
    repo.put_manifest(&m).await.unwrap();
    let problems = verify_deep(&repo, &m.id).await;
    for i in [a, z] {
        let path = &m.files[i].path;
        assert!(
            problems
                .iter()
                .any(|p| p.detail.starts_with(&format!("file {path}: "))),
            "{path}: {problems:?}"
        );
    }
    // A place outside the pack is named, not a panic.
    m.files[a].packed.as_mut().unwrap().digests = Some((u64::MAX - 1, 8));
    m.files[z].packed.as_mut().unwrap().offset = u64::MAX / 2;
    m.id = format!("{}00000004", &b.id[..b.id.len() - 8]);
    repo.put_manifest(&m).await.unwrap();
    let problems = verify_backup(&repo, &m.id, true).await;
    let za = &m.files[z].path;
    assert!(
        problems.iter().any(
            |p| p.detail.contains(&format!("file {za} (")) && p.detail.contains("of a pack of")
        ),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p
            .detail
            .contains(&format!("digests of file {}", m.files[a].path))
            && p.detail.contains("of a pack of")),
        "{problems:?}"
    );
}

/// A byte flipped at random in any blob or manifest of a repository, encrypted or not, is
/// found by `verify --read-data`, naming the backup (and the blob, for a blob). One object
/// is damaged at a time, each flip undone before the next.
#[tokio::test]
async fn every_flipped_byte_in_a_repository_is_found_by_verify() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("TSVAULT_CHECK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Flips per object (`TSVAULT_CHECK_FLIPS` for long runs).
    let flips: usize = std::env::var("TSVAULT_CHECK_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for password in [Some("pw"), None] {
        let tmp = tempfile::tempdir().unwrap();
        let (_, repo_dir, repo, backup) = backed_up(tmp.path(), password).await;
        assert!(verify_backup(&repo, &backup.id, true).await.is_empty());
        let objects: Vec<PathBuf> = files(&repo_dir.join("data"))
            .into_iter()
            .chain(files(&repo_dir.join("backups")))
            .collect();
        let mut tried = 0;
        for object in &objects {
            let clean = std::fs::read(object).unwrap();
            for _ in 0..flips {
                let mut bytes = clean.clone();
                let pos = rng.random_range(0..bytes.len());
                bytes[pos] ^= rng.random_range(1..=255u8);
                std::fs::write(object, &bytes).unwrap();
                let problems = verify_backup(&repo, &backup.id, true).await;
                let name = object.file_name().unwrap().to_string_lossy().into_owned();
                assert!(
                    problems
                        .iter()
                        .any(|p| p.backup == backup.id && p.detail.contains(&name[..16])),
                    "encrypted {}: {} byte {pos} not found (seed {seed}): {problems:?}",
                    password.is_some(),
                    object.display()
                );
                tried += 1;
            }
            std::fs::write(object, &clean).unwrap();
        }
        assert!(verify_backup(&repo, &backup.id, true).await.is_empty());
        eprintln!(
            "repository (encrypted {}): {tried} flipped bytes in {} objects, all found (seed {seed})",
            password.is_some(),
            objects.len()
        );
    }
}

#[tokio::test]
async fn an_incremental_stores_again_the_files_whose_pack_went_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo_dir, repo, full) = backed_up(tmp.path(), None).await;
    // A pack several unchanged files are in, deleted from the repository.
    let mut packs: std::collections::HashMap<&str, Vec<&tsvault_backup::FileEntry>> =
        Default::default();
    for f in full.files.iter().filter(|f| f.packed.is_some()) {
        packs.entry(f.blobs[0].as_str()).or_default().push(f);
    }
    let (pack, members) = packs
        .iter()
        .max_by_key(|(_, m)| m.len())
        .expect("a packed file");
    assert!(
        members.len() >= 2,
        "{} files in the largest pack",
        members.len()
    );
    std::fs::remove_file(repo_dir.join("data").join(&pack[..2]).join(pack)).unwrap();

    // The next backup finds it missing (once, for all its files at once in flight) and reads
    // exactly those files again; every other file is reused unread.
    let inc = backup_data_dir(&repo, &src, None, &NoProgress)
        .await
        .unwrap();
    assert_eq!(inc.kind, tsvault_backup::BackupType::Incremental);
    assert_eq!(
        inc.read_bytes,
        members.iter().map(|f| f.size).sum::<u64>(),
        "read again: the files of pack {pack}"
    );
    // Packed again from the same files, the pack has the same id, and is back.
    assert!(
        repo_dir.join("data").join(&pack[..2]).join(pack).is_file(),
        "pack {pack} stored again"
    );
    assert!(verify_backup(&repo, &inc.id, true).await.is_empty());
    let dst = tmp.path().join("restored");
    restore_data_dir(&repo, Some(&inc.id), &dst, &NoProgress)
        .await
        .unwrap();
    assert_eq!(all(&dst), all(&src));
}

/// A segment larger than a chunk, in a data directory on this machine, is read once: its
/// blobs are cut from the bytes walked for its digests, each [`CHUNK_BYTES`] long but the
/// last, as a file read chunk by chunk (over HTTP) is cut, so backups stored either way
/// share them. The backup restores and verifies, encrypted or not; a damaged copy of the
/// segment is refused naming the file, and leaves no backup.
#[tokio::test]
async fn a_segment_larger_than_a_chunk_is_stored_in_chunks_of_one_read() {
    use rand::{Rng, SeedableRng};
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let e = Engine::open(EngineConfig::new(&src)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Random values (about 8 bytes a sample), in one 6-hour partition: one segment.
    let t0 = 1_699_984_800_000;
    let points: Vec<Point> = (0..100)
        .flat_map(|h| (0..14_000).map(move |i| (h, i)))
        .map(|(h, i)| Point {
            key: key(&format!("host-{h:03}")),
            ts_ms: t0 + i * 1000,
            value: rng.random::<f64>(),
        })
        .collect();
    for batch in points.chunks(100_000) {
        e.write(batch).unwrap();
    }
    e.close().unwrap();
    let want = all(&src);
    let seg_files = files(&src.join("segments"));
    assert_eq!(seg_files.len(), 1, "{seg_files:?}");
    let segment = std::fs::read(&seg_files[0]).unwrap();
    assert!(segment.len() > CHUNK_BYTES, "{} bytes", segment.len());
    let seg_path = format!(
        "segments/{}",
        seg_files[0].file_name().unwrap().to_str().unwrap()
    );

    for password in [None, Some("pw")] {
        let dir = tmp.path().join(format!("repo-{}", password.is_some()));
        let repo = Repository::init(&opts(&dir, password), password.map(|_| Cipher::Aes256Gcm))
            .await
            .unwrap();
        let b = full_backup(&repo, &src).await;
        let entry = b.files.iter().find(|f| f.path == seg_path).unwrap();
        assert!(entry.packed.is_none(), "{entry:?}");
        let chunks: Vec<&[u8]> = segment.chunks(CHUNK_BYTES).collect();
        assert_eq!(entry.blobs.len(), chunks.len(), "{entry:?}");
        for (id, chunk) in entry.blobs.iter().zip(&chunks) {
            assert!(repo.get_blob(id).await.unwrap() == *chunk, "blob {id}");
        }
        assert!(verify_backup(&repo, &b.id, true).await.is_empty());
        assert!(verify_deep(&repo, &b.id).await.is_empty());
        let dst = tmp.path().join(format!("dst-{}", password.is_some()));
        restore_data_dir(&repo, Some(&b.id), &dst, &NoProgress)
            .await
            .unwrap();
        assert_eq!(all(&dst), want);

        // A copy of the directory whose segment has a flipped byte.
        let bad = tmp.path().join(format!("bad-{}", password.is_some()));
        std::fs::create_dir_all(bad.join("segments")).unwrap();
        for f in files(&src) {
            let to = bad.join(f.strip_prefix(&src).unwrap());
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(&f, &to).unwrap();
        }
        let mut flipped = segment.clone();
        flipped[CHUNK_BYTES + 10] ^= 0x10;
        std::fs::write(bad.join(&seg_path), &flipped).unwrap();
        let err = try_full_backup(&repo, &bad).await.unwrap_err().to_string();
        assert!(err.contains(&seg_path), "{err}");
        assert_eq!(repo.backup_ids().await.unwrap(), vec![b.id.clone()]);
    }
}
