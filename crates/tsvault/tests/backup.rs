//! `tsvault backup` and `tsvault restore` on the real binary: a server's data backed up after
//! it stops, restored into a new directory, served again with the same answers; damage found
//! by `backup verify`, with a non-zero exit naming the blob.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::{Server, ok, post, query_dps};
use serde_json::json;

fn tsvault(args: &[&str], password: &str) -> Output {
    tsvault_with(args, password, None)
}

/// Runs tsvault, with fault points when `failpoints` is given (`FAILPOINTS`).
fn tsvault_with(args: &[&str], password: &str, failpoints: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsvault"));
    cmd.args(args)
        .env("TSVAULT_REPO_PASSWORD", password)
        .env_remove("TSVAULT_REPO")
        .env_remove("FAILPOINTS");
    if let Some(f) = failpoints {
        cmd.env("FAILPOINTS", f);
    }
    cmd.output().expect("run tsvault")
}

fn answers(base: &str) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    query_dps(
        base,
        json!({"start": 1_700_000_000_000i64, "end": 1_800_000_000_000i64, "msResolution": true,
               "queries": [{"metric": "cpu_usage", "aggregator": "none"}]}),
    )
}

#[test]
fn backup_restore_and_verify_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo, dst) = (
        tmp.path().join("src"),
        tmp.path().join("repo"),
        tmp.path().join("dst"),
    );
    let s = Server::start(&src, &[]);
    let body: String = (0..500)
        .map(|i| {
            format!(
                "cpu,host=h{} usage={}.5 {}\n",
                i % 3,
                i,
                1_700_000_000_000_000_000i64 + i * 10_000_000_000
            )
        })
        .collect();
    assert_eq!(post(&s.url("/write"), body.as_bytes()).status, 204);
    let want = answers(&s.base);
    assert_eq!(want.len(), 3);
    // A running server's directory is refused (online backups go through --server).
    let repo_s = repo.to_str().unwrap();
    let src_s = src.to_str().unwrap();
    let init = ok(&tsvault(
        &["backup", "init", "--repo", repo_s, "--json"],
        "pw",
    ));
    assert_eq!(init["encrypted"], true);
    assert_eq!(init["cipher"], "aes-256-gcm");
    let busy = tsvault(
        &["backup", "create", "--repo", repo_s, "--data-dir", src_s],
        "pw",
    );
    assert!(!busy.status.success());
    assert!(String::from_utf8_lossy(&busy.stderr).contains("in use by a running tsvault server"));
    let (status, log) = s.terminate();
    assert!(status.success(), "{log}");

    // Segments compressed too (the option; by default they are stored as they are): the
    // restore below is the same either way.
    let created = ok(&tsvault(
        &[
            "backup",
            "create",
            "--repo",
            repo_s,
            "--data-dir",
            src_s,
            "--compress-segments",
            "--json",
        ],
        "pw",
    ));
    let id = created["id"].as_str().unwrap().to_string();
    assert!(created["uploaded_bytes"].as_u64().unwrap() > 0);
    let listed = ok(&tsvault(
        &["backup", "list", "--repo", repo_s, "--json"],
        "pw",
    ));
    assert_eq!(listed[0]["id"], id.as_str());
    let verified = ok(&tsvault(
        &[
            "backup",
            "verify",
            "--repo",
            repo_s,
            "--all",
            "--read-data",
            "--json",
        ],
        "pw",
    ));
    assert_eq!(verified["ok"], true);

    // The wrong passphrase is a clear error, not a panic.
    let wrong = tsvault(&["backup", "list", "--repo", repo_s], "nope");
    assert_eq!(wrong.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));

    ok(&tsvault(
        &[
            "restore",
            "--repo",
            repo_s,
            "--data-dir",
            dst.to_str().unwrap(),
            "--json",
        ],
        "pw",
    ));
    let s = Server::start(&dst, &[]);
    assert_eq!(answers(&s.base), want);
    drop(s);

    // Selective restore: one metric pattern, a time range given as RFC 3339 and as ms.
    let part = tmp.path().join("part");
    let selected = ok(&tsvault(
        &[
            "restore",
            "--repo",
            repo_s,
            "--data-dir",
            part.to_str().unwrap(),
            "--metric",
            "CPU_*",
            "--start",
            "2023-11-14T22:30:00Z",
            "--end",
            "1700001990000",
            "--json",
        ],
        "pw",
    ));
    assert_eq!(selected["selected"]["samples"], 100);
    let s = Server::start(&part, &[]);
    let got = answers(&s.base);
    assert_eq!(got.len(), 3);
    for (_, dps) in &got {
        assert!(
            dps.iter()
                .all(|(t, _)| (1_700_001_000_000..=1_700_001_990_000).contains(t))
        );
    }
    // Each restored sample is the source's, at the same time.
    let source: std::collections::BTreeMap<i64, f64> =
        want.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    assert!(
        got.iter()
            .flat_map(|(_, d)| d)
            .all(|(t, v)| source.get(t) == Some(v))
    );
    drop(s);
    let bad = tsvault(
        &[
            "restore",
            "--repo",
            repo_s,
            "--data-dir",
            "x",
            "--start",
            "yesterday",
        ],
        "pw",
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--start"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    // Prune through the CLI: one backup, kept; no rule at all is refused.
    let pruned = ok(&tsvault(
        &[
            "backup",
            "prune",
            "--repo",
            repo_s,
            "--keep-last",
            "1",
            "--json",
        ],
        "pw",
    ));
    assert_eq!(pruned["removed"], json!([]));
    assert_eq!(pruned["kept"][id.as_str()], json!(["last"]));
    let none = tsvault(&["backup", "prune", "--repo", repo_s], "pw");
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no keep rule given"));

    // Copy to a second, unencrypted repository, then restore from it.
    let mirror = tmp.path().join("mirror");
    let mirror_s = mirror.to_str().unwrap();
    ok(&tsvault(
        &["backup", "init", "--repo", mirror_s, "--no-encryption"],
        "pw",
    ));
    let copied = ok(&tsvault(
        &[
            "backup", "copy", "--repo", repo_s, "--to", mirror_s, "--all", "--json",
        ],
        "pw",
    ));
    assert_eq!(copied["copied"], json!([id.as_str()]));
    let from_mirror = tmp.path().join("from-mirror");
    ok(&tsvault(
        &[
            "restore",
            "--repo",
            mirror_s,
            "--data-dir",
            from_mirror.to_str().unwrap(),
        ],
        "pw",
    ));
    let s = Server::start(&from_mirror, &[]);
    assert_eq!(answers(&s.base), want);
    drop(s);

    // Damage one blob: verify --read-data exits 1 and names it.
    let blob = first_file(&repo.join("data"));
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&blob, bytes).unwrap();
    let bad = tsvault(
        &["backup", "verify", "--repo", repo_s, &id, "--read-data"],
        "pw",
    );
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    let name = blob.file_name().unwrap().to_str().unwrap();
    assert!(
        stderr.contains(&format!("backup {id}")) && stderr.contains(name),
        "{stderr}"
    );
}

fn first_file(dir: &Path) -> std::path::PathBuf {
    let mut all: Vec<_> = walk(dir);
    all.sort();
    all.remove(0)
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The process died at the fault point (SIGABRT, as abruptly as a kill -9).
fn killed(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(libc::SIGABRT)
}

#[test]
fn a_backup_or_restore_killed_at_any_blob_resumes_to_the_full_result() {
    // Every file in blobs of its own, then every file in a pack of its own.
    for pack_size in ["0", "1"] {
        killed_and_resumed(pack_size);
    }
}

fn killed_and_resumed(pack_size: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (src, repo) = (tmp.path().join("src"), tmp.path().join("repo"));
    let s = Server::start(&src, &[]);
    // Four 6-hour partitions: several segment files, so several blobs.
    let body: String = (0..2000)
        .map(|i| {
            format!(
                "cpu,host=h{} usage={i} {}\n",
                i % 4,
                1_700_000_000_000_000_000i64 + i * 43_200_000_000
            )
        })
        .collect();
    assert_eq!(post(&s.url("/write"), body.as_bytes()).status, 204);
    let want = answers(&s.base);
    let (status, log) = s.terminate();
    assert!(status.success(), "{log}");
    let (repo_s, src_s) = (repo.to_str().unwrap(), src.to_str().unwrap());
    ok(&tsvault(&["backup", "init", "--repo", repo_s], "pw"));

    let create = [
        "backup",
        "create",
        "--repo",
        repo_s,
        "--data-dir",
        src_s,
        "--json",
        "--pack-size",
        pack_size,
    ];
    for skip in [0, 2, 4] {
        let out = tsvault_with(
            &create,
            "pw",
            Some(&format!("backup-blob-stored={skip}*off->return")),
        );
        assert!(
            killed(&out),
            "backup was not killed after {skip} blobs: {out:?}"
        );
        // No backup is visible after a kill.
        let listed = ok(&tsvault(
            &["backup", "list", "--repo", repo_s, "--json"],
            "pw",
        ));
        assert_eq!(listed, json!([]), "after a kill at blob {skip}");
    }
    let done = ok(&tsvault(&create, "pw"));
    let id = done["id"].as_str().unwrap().to_string();
    // The killed runs' blobs (or packs) were reused, not uploaded again: at least those of
    // the 5 they stored.
    let files: Vec<u64> = std::fs::read_dir(src.join("segments"))
        .unwrap()
        .chain(std::fs::read_dir(src.join("wal")).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .collect();
    assert!(files.len() >= 6, "{files:?}");
    let smallest_five: u64 = {
        let mut f = files.clone();
        f.sort();
        f[..5].iter().sum()
    };
    assert!(
        done["deduplicated_bytes"].as_u64().unwrap() >= smallest_five,
        "{done} {files:?}"
    );
    assert_eq!(done["type"], "full", "{done}");
    ok(&tsvault(
        &["backup", "verify", "--repo", repo_s, &id, "--read-data"],
        "pw",
    ));

    let dst = tmp.path().join("dst");
    let dst_s = dst.to_str().unwrap();
    let restore = ["restore", "--repo", repo_s, "--data-dir", dst_s];
    for skip in [0, 3] {
        let out = tsvault_with(
            &restore,
            "pw",
            Some(&format!("restore-blob-written={skip}*off->return")),
        );
        assert!(
            killed(&out),
            "restore was not killed after {skip} blobs: {out:?}"
        );
        // A half-restored directory is never served.
        let refused = Server::try_start(&dst, &[])
            .err()
            .expect("a server started on a half-restored directory");
        assert!(refused.contains("interrupted restore"), "{refused}");
    }
    // The same restore, run again, resumes and finishes.
    ok(&tsvault(&restore, "pw"));
    assert!(!dst.join("RESTORING").exists());
    let s = Server::start(&dst, &[]);
    assert_eq!(answers(&s.base), want);
}

/// `tsvault check` on the real binary: a clean stopped directory passes (exit 0); a byte
/// flipped in a segment is named (exit 1, in text and JSON); a running server's directory is
/// refused; and a restore from a backup taken before the damage repairs it: the restored
/// directory checks clean and answers as the original did.
#[test]
fn check_names_damage_and_a_restore_repairs_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, repo) = (tmp.path().join("data"), tmp.path().join("repo"));
    let s = Server::start(&data, &[]);
    let body: String = (0..600)
        .map(|i| {
            format!(
                "cpu,host=h{} usage={}.25 {}\n",
                i % 4,
                i,
                1_700_000_000_000_000_000i64 + i * 60_000_000_000
            )
        })
        .collect();
    assert_eq!(post(&s.url("/write"), body.as_bytes()).status, 204);
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    let want = answers(&s.base);
    let d = data.to_str().unwrap();
    let refused = tsvault(&["check", "--data-dir", d], "");
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let (status, log) = s.terminate();
    assert!(status.success(), "{log}");

    let clean = ok(&tsvault(&["check", "--data-dir", d, "--json"], ""));
    assert_eq!(clean["ok"], true, "{clean}");
    assert!(clean["report"]["segment_samples"].as_u64().unwrap() >= 600);
    let r = repo.to_str().unwrap();
    ok(&tsvault(
        &["backup", "init", "--repo", r, "--no-encryption"],
        "",
    ));
    ok(&tsvault(
        &["backup", "create", "--repo", r, "--data-dir", d],
        "",
    ));

    let segment = std::fs::read_dir(data.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "seg"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let damaged = tsvault(&["check", "--data-dir", d], "");
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    let text = String::from_utf8_lossy(&damaged.stdout);
    assert!(
        text.contains(&format!("problem: {}: ", segment.display())),
        "{text}"
    );
    let json_out = tsvault(&["check", "--data-dir", d, "--json"], "");
    assert_eq!(json_out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["report"]["problems"][0]["file"],
        segment.display().to_string()
    );

    // Repair: the damaged directory is moved aside and the backup restored in its place.
    std::fs::rename(&data, tmp.path().join("damaged")).unwrap();
    ok(&tsvault(&["restore", "--repo", r, "--data-dir", d], ""));
    assert_eq!(
        ok(&tsvault(&["check", "--data-dir", d, "--json"], ""))["ok"],
        true
    );
    let s = Server::start(&data, &[]);
    assert_eq!(answers(&s.base), want);
}
