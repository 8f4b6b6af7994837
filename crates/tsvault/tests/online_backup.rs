//! Online backups of a running server (`backup create --server`) while writes keep flowing:
//! full, incremental, differential and a synthetic full, each restored into a fresh server
//! with the source's answers at its consistency point; deep verification; restores into a
//! running server that merge and never overwrite.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use common::{Server, get, ok, post, post_with, query_dps, try_post};
use serde_json::json;

const T0: i64 = 1_700_000_000_000;
/// Samples per host per batch, one second apart.
const PER_BATCH: i64 = 10;
const HOSTS: i64 = 3;

/// A repository as the CLI reaches it: the arguments and environment it needs.
struct Repo {
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// Runs tsvault with `args`, then the repository's arguments.
fn tsvault(repo: &Repo, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsvault"));
    cmd.args(args)
        .args(&repo.args)
        .env("TSVAULT_REPO_PASSWORD", "pw")
        .env_remove("TSVAULT_REPO")
        .env_remove("FAILPOINTS");
    for (k, v) in &repo.env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tsvault")
}

/// A new encrypted repository in `dir/repo` (passphrase "pw").
fn new_local_repo(dir: &std::path::Path) -> (std::path::PathBuf, Repo) {
    let repo_dir = dir.join("repo");
    let repo = Repo {
        args: vec!["--repo".into(), repo_dir.display().to_string()],
        env: Vec::new(),
    };
    ok(&tsvault(&repo, &["backup", "init"]));
    (repo_dir, repo)
}

/// Batch `k`: `PER_BATCH` samples per host, after those of batch `k - 1`.
fn batch(k: i64) -> String {
    let mut out = String::new();
    for h in 0..HOSTS {
        for i in 0..PER_BATCH {
            let n = k * PER_BATCH + i;
            let ms = T0 + n * 1000;
            out.push_str(&format!("cpu,host=h{h} usage={n}.{h} {}\n", ms * 1_000_000));
        }
    }
    out
}

/// The end (exclusive, ms) of the first `k` batches.
fn end_of(k: i64) -> i64 {
    T0 + k * PER_BATCH * 1000
}

fn answers_until(base: &str, end_ms: i64) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    query_dps(
        base,
        json!({"start": T0, "end": end_ms, "msResolution": true,
               "queries": [{"metric": "cpu_usage", "aggregator": "none"}]}),
    )
}

/// Writes batches in order until told to stop; reports each acknowledged batch's number.
fn start_writer(
    base: String,
) -> (
    Arc<AtomicBool>,
    mpsc::Receiver<i64>,
    std::thread::JoinHandle<()>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut k = 0;
        while !flag.load(Ordering::Relaxed) {
            let r = post(&format!("{base}/write"), batch(k).as_bytes());
            assert_eq!(r.status, 204, "{}", r.body);
            if tx.send(k + 1).is_err() {
                return;
            }
            k += 1;
        }
    });
    (stop, rx, t)
}

/// Waits until at least `n` batches are acknowledged; returns how many are.
fn acked_at_least(rx: &mpsc::Receiver<i64>, acked: &mut i64, n: i64) -> i64 {
    while *acked < n {
        *acked = rx.recv().expect("writer alive");
    }
    while let Ok(k) = rx.try_recv() {
        *acked = k;
    }
    *acked
}

/// Restores backup `id` into a new directory, starts a server on it, and checks its answers
/// are the source's over exactly the first K batches, K between `lo` and `hi`.
fn check_restore(
    repo: &Repo,
    id: &str,
    dir: &std::path::Path,
    source: &str,
    lo: i64,
    hi: i64,
) -> i64 {
    ok(&tsvault(
        repo,
        &[
            "restore",
            "--backup",
            id,
            "--data-dir",
            dir.to_str().unwrap(),
            "--json",
        ],
    ));
    let s = Server::start(dir, &[]);
    let got = answers_until(&s.base, end_of(hi + 1));
    assert_eq!(got.len(), HOSTS as usize, "backup {id}");
    let n = got[0].1.len() as i64;
    assert_eq!(n % PER_BATCH, 0, "backup {id}: a batch is whole or absent");
    let k = n / PER_BATCH;
    assert!(
        (lo..=hi).contains(&k),
        "backup {id} holds {k} batches; acknowledged before it: {lo}, after it: {hi}"
    );
    // The consistency point: every batch before it, exactly as the source has it.
    assert_eq!(got, answers_until(source, end_of(k) - 1), "backup {id}");
    k
}

#[test]
fn online_backups_to_a_local_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Repo {
        args: vec![
            "--repo".into(),
            tmp.path().join("repo").display().to_string(),
        ],
        env: Vec::new(),
    };
    round_trip(&repo, tmp.path(), true);
}

/// The same on S3, served in-process over real HTTP by s3s + s3s-fs (SigV4), reached by the
/// CLI through the standard AWS_* variables and --s3-endpoint / --s3-allow-http.
/// An S3 server in this process over real HTTP (s3s + s3s-fs, SigV4), its bucket under
/// `tmp/s3/bucket`, and the repository `s3://bucket/tsvault` on it as the CLI reaches it
/// (AWS_* variables, --s3-endpoint, --s3-allow-http). The runtime serves while it lives.
fn s3_repo(tmp: &std::path::Path) -> (tokio::runtime::Runtime, String, Repo) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder as ConnBuilder;
    let root = tmp.join("s3");
    std::fs::create_dir_all(root.join("bucket")).unwrap();
    let (key, secret) = ("tsvault-test-key", "tsvault-test-secret");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let endpoint = rt.block_on(async {
        let mut b = s3s::service::S3ServiceBuilder::new(s3s_fs::FileSystem::new(&root).unwrap());
        b.set_auth(s3s::auth::SimpleAuth::from_single(key, secret));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            while let Ok((socket, _)) = listener.accept().await {
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(conn);
            }
        });
        format!("http://{addr}")
    });
    let repo = Repo {
        args: vec![
            "--repo".into(),
            "s3://bucket/tsvault".into(),
            "--s3-endpoint".into(),
            endpoint.clone(),
            "--s3-allow-http".into(),
        ],
        env: vec![
            ("AWS_ACCESS_KEY_ID", key.into()),
            ("AWS_SECRET_ACCESS_KEY", secret.into()),
            ("AWS_REGION", "us-east-1".into()),
        ],
    };
    (rt, endpoint, repo)
}

/// The same on S3, served in-process over real HTTP by s3s + s3s-fs (SigV4), reached by the
/// CLI through the standard AWS_* variables and --s3-endpoint / --s3-allow-http.
#[test]
fn online_backups_to_an_s3_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let (rt, _, repo) = s3_repo(tmp.path());
    let root = tmp.path().join("s3");
    round_trip(&repo, tmp.path(), false);
    // The repository's objects are in the bucket.
    assert!(root.join("bucket/tsvault/config").is_file());
    drop(rt);
}

/// Full, incremental, differential and synthetic full backups of a server taken while
/// writes flow, each restored into a fresh server and compared with the source at its
/// consistency point; deep verification; restores into a running server. `in_place`: the
/// incremental and the differential read the snapshot's files in the server's data
/// directory (`--server-data-dir`) where the full pulled them over HTTP: one chain,
/// whichever way its files were read.
fn round_trip(repo: &Repo, tmp: &std::path::Path, in_place: bool) {
    let src = tmp.join("src");
    let src_arg = src.display().to_string();
    let s = Server::start(&src, &[]);
    ok(&tsvault(repo, &["backup", "init"]));
    let (stop, rx, writer) = start_writer(s.base.clone());
    let mut acked = 0;

    let mut backups = Vec::new();
    for (step, kind) in [(20, None), (40, None), (60, Some("differential"))] {
        let before = acked_at_least(&rx, &mut acked, step);
        if step == 20 {
            // Some data in a segment (unchanged by later backups), some in the WAL only.
            assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
        }
        let mut args = vec!["backup", "create", "--server", &s.base, "--json"];
        if let Some(k) = kind {
            args.extend(["--type", k]);
        }
        if in_place && step > 20 {
            args.extend(["--server-data-dir", &src_arg]);
        }
        let b = ok(&tsvault(repo, &args));
        // A batch sent but not yet acknowledged may be in the snapshot too.
        let after = acked_at_least(&rx, &mut acked, 0) + 1;
        backups.push((b, before, after));
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    writer.join().unwrap();

    let (full, incr, diff) = (&backups[0].0, &backups[1].0, &backups[2].0);
    assert_eq!(full["type"], "full");
    assert_eq!(incr["type"], "incremental");
    assert_eq!(incr["parent"], full["id"]);
    assert_eq!(diff["type"], "differential");
    assert_eq!(diff["base"], full["id"]);
    assert_eq!(full["source"], s.base.as_str());
    for (b, _, _) in &backups {
        assert!(b["consistency"]["snapshot"].is_string(), "{b}");
        assert_eq!(b["data"]["series"], HOSTS, "{b}");
    }
    // Files unchanged since the reference are not pulled again.
    assert!(
        incr["read_bytes"].as_u64().unwrap() < incr["logical_bytes"].as_u64().unwrap(),
        "{incr}"
    );
    assert!(incr["deduplicated_bytes"].as_u64().unwrap() > 0, "{incr}");
    // Every snapshot was released.
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));

    let mut held = Vec::new();
    for (i, (b, lo, hi)) in backups.iter().enumerate() {
        let dir = tmp.join(format!("restored-{i}"));
        held.push(check_restore(
            repo,
            b["id"].as_str().unwrap(),
            &dir,
            &s.base,
            *lo,
            *hi,
        ));
    }

    // Deep verification of every backup.
    let v = ok(&tsvault(
        repo,
        &["backup", "verify", "--all", "--deep", "--json"],
    ));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["level"], "deep");

    // A synthetic full of the differential: the same image, no parent.
    let diff_id = diff["id"].as_str().unwrap();
    let syn = ok(&tsvault(
        repo,
        &["backup", "consolidate", diff_id, "--json"],
    ));
    assert_eq!(syn["type"], "full");
    assert_eq!(syn["parent"], serde_json::Value::Null);
    assert_eq!(syn["consolidated_from"], diff_id);
    let k = check_restore(
        repo,
        syn["id"].as_str().unwrap(),
        &tmp.join("restored-synthetic"),
        &s.base,
        held[2],
        held[2],
    );
    assert_eq!(k, held[2]);
    let shown = ok(&tsvault(
        repo,
        &["backup", "show", syn["id"].as_str().unwrap(), "--json"],
    ));
    assert_eq!(shown["consolidated_from"], diff_id);
    let refused = tsvault(
        repo,
        &["backup", "consolidate", syn["id"].as_str().unwrap()],
    );
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already a full backup"));

    // Restore into a running server: it merges, and what the server already has wins.
    let other = Server::start(&tmp.join("other"), &[]);
    let mine = format!("cpu,host=h0 usage=-1 {}\n", T0 * 1_000_000);
    assert_eq!(post(&other.url("/write"), mine.as_bytes()).status, 204);
    let full_id = full["id"].as_str().unwrap();
    let restore_full = || {
        ok(&tsvault(
            repo,
            &[
                "restore",
                "--backup",
                full_id,
                "--server",
                &other.base,
                "--json",
            ],
        ))
    };
    let r = restore_full();
    let total = held[0] * PER_BATCH * HOSTS;
    assert_eq!(r["import"]["imported"], total - 1, "{r}");
    assert_eq!(r["import"]["skipped_existing"], 1, "{r}");
    let mut want = answers_until(&s.base, end_of(held[0]) - 1);
    want[0].1[0].1 = -1.0;
    assert_eq!(answers_until(&other.base, end_of(held[0]) - 1), want);
    // Again: nothing new, nothing overwritten.
    let again = restore_full();
    assert_eq!(again["import"]["imported"], 0, "{again}");
    assert_eq!(again["import"]["skipped_existing"], total, "{again}");
    assert_eq!(answers_until(&other.base, end_of(held[0]) - 1), want);

    // A --server-data-dir that is not the server's: a clear error naming the snapshot and
    // the directory looked in; no backup, the snapshot released.
    let elsewhere = tmp.join("not-the-server");
    let before = ok(&tsvault(repo, &["backup", "list", "--json"]));
    let wrong = tsvault(
        repo,
        &[
            "backup",
            "create",
            "--server",
            &s.base,
            "--server-data-dir",
            &elsewhere.display().to_string(),
        ],
    );
    assert_eq!(wrong.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("--server-data-dir") && stderr.contains("not-the-server/snapshots/"),
        "{stderr}"
    );
    assert_eq!(ok(&tsvault(repo, &["backup", "list", "--json"])), before);
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));

    // A server that is not there: a clear error naming it.
    let down = tsvault(
        repo,
        &["backup", "create", "--server", "http://127.0.0.1:9"],
    );
    assert_eq!(down.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("server http://127.0.0.1:9"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    // Import bodies that are wrong are refused naming the line; nothing is written.
    let bad = post_with(
        &other.url("/api/admin/import"),
        &[("Content-Type", "application/x-ndjson")],
        b"{\"series\":\"cpu_usage{host=h9}\",\"samples\":[[1700000000000,1]]}\n{\"series\":\"cpu_usage\"}\n",
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("line 2"), "{}", bad.body);
    assert_eq!(
        answers_until(&other.base, end_of(held[0]) - 1).len(),
        HOSTS as usize
    );
}

#[test]
fn an_online_backup_killed_midway_leaves_no_backup_and_the_next_run_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(&tmp.path().join("src"), &[]);
    for k in 0..30 {
        assert_eq!(post(&s.url("/write"), batch(k).as_bytes()).status, 204);
        if k % 10 == 9 {
            // Several segment files and WAL files: several blobs.
            assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
        }
    }
    let repo_dir = tmp.path().join("repo").display().to_string();
    let repo = Repo {
        args: vec!["--repo".into(), repo_dir.clone()],
        env: Vec::new(),
    };
    ok(&tsvault(&repo, &["backup", "init"]));
    let doomed = Repo {
        args: repo.args.clone(),
        env: vec![("FAILPOINTS", "backup-blob-stored=1*off->return".into())],
    };
    // Each file in a pack of its own (`--pack-size 1`), so that the kill comes after the
    // second of several.
    let create = [
        "backup",
        "create",
        "--server",
        &s.base,
        "--json",
        "--pack-size",
        "1",
    ];
    let out = tsvault(&doomed, &create);
    assert!(
        std::os::unix::process::ExitStatusExt::signal(&out.status).is_some(),
        "the backup was not killed: {out:?}"
    );
    assert_eq!(
        ok(&tsvault(&repo, &["backup", "list", "--json"])),
        json!([])
    );
    // Its snapshot is still on the server (released after 24 h, or by hand).
    assert_eq!(
        get(&s.url("/api/admin/snapshots"))
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let done = ok(&tsvault(&repo, &create));
    assert_eq!(done["type"], "full");
    // What the killed run uploaded was reused.
    assert!(done["deduplicated_bytes"].as_u64().unwrap() > 0, "{done}");
    check_verified_and_whole(&repo, &done, tmp.path(), &s.base, 30);
}

/// Backup `b` verifies (with every blob read) and restores exactly the first `batches`
/// batches, as the source at `base` answers them.
fn check_verified_and_whole(
    repo: &Repo,
    b: &serde_json::Value,
    tmp: &std::path::Path,
    base: &str,
    batches: i64,
) {
    ok(&tsvault(
        repo,
        &["backup", "verify", "--all", "--read-data"],
    ));
    let id = b["id"].as_str().unwrap();
    let k = check_restore(repo, id, &tmp.join("restored"), base, batches, batches);
    assert_eq!(k, batches);
}

/// The digests of a segment are asked for on blocks (no decoding on the server), hashed
/// with BLAKE3, XXH3-128 or named by their CRC32C; a client that names no basis (one from
/// before bases existed) gets them on samples, and the answer says which it is.
#[test]
fn segment_digests_are_on_blocks_when_asked_and_on_samples_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        post(&s.url("/write?precision=ns"), batch(0).as_bytes()).status,
        204
    );
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    let snap = post(&s.url("/api/admin/snapshots"), b"").json();
    let id = snap["id"].as_str().unwrap();
    let seg = snap["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .find(|p| p.ends_with(".seg"))
        .expect("the snapshot holds a segment");
    let ask = |query: &str| {
        let url = s.url(&format!(
            "/api/admin/snapshots/{id}/digests?path={seg}{query}"
        ));
        let mut r = common::agent().get(&url).call().unwrap();
        assert_eq!(r.status(), 200);
        let basis = r.headers()["x-tsvault-digest-basis"]
            .to_str()
            .unwrap()
            .to_string();
        let body: serde_json::Value =
            serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        (basis, body)
    };
    let (b0, by_default) = ask("");
    let (b1, by_samples) = ask("&basis=samples");
    let (b2, by_blocks) = ask("&basis=blocks");
    let (b3, by_xxh3) = ask("&basis=blocks-xxh3");
    let (b4, by_crc) = ask("&basis=blocks-crc32c");
    assert_eq!(
        (
            b0.as_str(),
            b1.as_str(),
            b2.as_str(),
            b3.as_str(),
            b4.as_str()
        ),
        (
            "samples",
            "samples",
            "blocks",
            "blocks-xxh3",
            "blocks-crc32c"
        )
    );
    assert_eq!(by_default, by_samples);
    let series = |v: &serde_json::Value| -> Vec<(String, u64, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["series"].as_str().unwrap().to_string(),
                    d["samples"].as_u64().unwrap(),
                    d["blake3"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (a, b, c, e) = (
        series(&by_samples),
        series(&by_blocks),
        series(&by_xxh3),
        series(&by_crc),
    );
    let n = HOSTS as usize;
    assert_eq!((a.len(), b.len(), c.len(), e.len()), (n, n, n, n));
    for (((x, y), z), w) in a.iter().zip(&b).zip(&c).zip(&e) {
        for other in [y, z, w] {
            assert_eq!((&x.0, x.1), (&other.0, other.1), "same series and counts");
        }
        assert_ne!(x.2, y.2, "different hashes");
        assert_ne!(y.2, z.2, "different hashes");
        assert_eq!(
            (y.2.len(), z.2.len(), w.2.len()),
            (64, 32, 8),
            "BLAKE3, XXH3-128 and CRC32C in hex"
        );
    }
    assert!(a.iter().all(|x| x.1 == PER_BATCH as u64));
}

/// The server takes its snapshot while the CLI locks the repository: when the lock is
/// refused (a prune holds the repository), the snapshot is released and no backup is made;
/// once the prune's lock is gone the backup runs, and releases its snapshot too.
#[test]
fn an_online_backup_refused_by_a_running_prune_releases_its_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let repo_dir = tmp.path().join("repo");
    let repo = Repo {
        args: vec!["--repo".into(), repo_dir.display().to_string()],
        env: Vec::new(),
    };
    let s = Server::start(&tmp.path().join("src"), &[]);
    let write = post(&s.url("/write"), batch(0).as_bytes());
    assert_eq!(write.status, 204, "{}", write.body);
    ok(&tsvault(&repo, &["backup", "init"]));
    // A live prune's lock: this host, this (running) test process, fresh.
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let lock = repo_dir.join("locks/prune-0123456789abcdef");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    std::fs::write(
        &lock,
        json!({"kind": "prune", "id": "0123456789abcdef", "host": host,
               "pid": std::process::id(), "refreshed_ms": now_ms})
        .to_string(),
    )
    .unwrap();
    let refused = tsvault(&repo, &["backup", "create", "--server", &s.base]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("a prune is running"), "{stderr}");
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));
    assert_eq!(
        ok(&tsvault(&repo, &["backup", "list", "--json"])),
        json!([])
    );

    std::fs::remove_file(&lock).unwrap();
    let b = ok(&tsvault(
        &repo,
        &["backup", "create", "--server", &s.base, "--json"],
    ));
    assert_eq!(b["type"], "full");
    assert_eq!(b["data"]["samples"], PER_BATCH * HOSTS, "{b}");
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));
}

/// Backups the server takes itself (`serve --backup-repo`), asked for over HTTP while
/// writes flow: full, then the default (incremental), then differential; each restores to
/// the source's answers at its consistency point, and the chain verifies deeply through
/// the CLI. The status and the metrics count them; every snapshot is released.
#[test]
fn a_server_backs_itself_up_into_its_repository_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, repo) = new_local_repo(tmp.path());
    let repo_arg = repo_dir.display().to_string();
    server_round_trip(&repo, &["--backup-repo", &repo_arg], tmp.path());
}

/// The same into an S3 repository (in-process s3s over real HTTP), which the server reaches
/// with `--backup-s3-endpoint`, `--backup-s3-allow-http` and the AWS_* variables.
#[test]
fn a_server_backs_itself_up_into_an_s3_repository() {
    let tmp = tempfile::tempdir().unwrap();
    let (rt, endpoint, repo) = s3_repo(tmp.path());
    ok(&tsvault(&repo, &["backup", "init"]));
    server_round_trip(
        &repo,
        &[
            "--backup-repo",
            "s3://bucket/tsvault",
            "--backup-s3-endpoint",
            &endpoint,
            "--backup-s3-allow-http",
        ],
        tmp.path(),
    );
    // The server's three backups are in the bucket.
    let manifests = std::fs::read_dir(tmp.path().join("s3/bucket/tsvault/backups")).unwrap();
    assert_eq!(manifests.count(), 3);
    drop(rt);
}

/// The body of the two tests above: a server started with `backup_args` (its repository
/// made already, the repository's environment and passphrase given to it).
fn server_round_trip(repo: &Repo, backup_args: &[&str], tmp: &std::path::Path) {
    let src = tmp.join("src");
    let repo_arg = backup_args[1];
    let mut env: Vec<(&str, &str)> = repo.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("TSVAULT_REPO_PASSWORD", "pw"));
    let s = Server::start_with_env(&src, backup_args, &env);
    let (stop, rx, writer) = start_writer(s.base.clone());
    let mut acked = 0;
    let mut backups = Vec::new();
    for (step, query) in [(20, "?type=full"), (40, ""), (60, "?type=differential")] {
        let before = acked_at_least(&rx, &mut acked, step);
        if step == 20 {
            assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
        }
        let r = post(&s.url(&format!("/api/admin/backups{query}")), b"");
        assert_eq!(r.status, 201, "{}", r.body);
        let after = acked_at_least(&rx, &mut acked, 0) + 1;
        backups.push((r.json(), before, after));
    }
    stop.store(true, Ordering::Relaxed);
    drop(rx);
    writer.join().unwrap();

    let (full, incr, diff) = (&backups[0].0, &backups[1].0, &backups[2].0);
    assert_eq!(full["type"], "full");
    assert_eq!(incr["type"], "incremental");
    assert_eq!(incr["parent"], full["id"]);
    assert_eq!(diff["type"], "differential");
    assert_eq!(diff["base"], full["id"]);
    // Known by the data directory, as backups of the stopped directory are.
    let canonical = std::fs::canonicalize(&src).unwrap();
    assert_eq!(full["source"], canonical.display().to_string().as_str());
    assert!(
        incr["read_bytes"].as_u64().unwrap() < incr["logical_bytes"].as_u64().unwrap(),
        "{incr}"
    );
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));

    let status = get(&s.url("/api/admin/backups")).json();
    assert_eq!(status["repository"], repo_arg, "{status}");
    assert_eq!(status["open"], true, "{status}");
    assert_eq!(status["status"]["succeeded"], 3, "{status}");
    assert_eq!(status["status"]["failed"], 0, "{status}");
    assert_eq!(
        status["status"]["last_success"]["id"], diff["id"],
        "{status}"
    );
    assert_eq!(
        status["status"]["running_since_ms"],
        serde_json::Value::Null
    );
    let metrics = get(&s.url("/metrics")).body;
    assert!(
        metrics.contains("tsvault_backups_total{result=\"ok\"} 3"),
        "{metrics}"
    );

    for (i, (b, lo, hi)) in backups.iter().enumerate() {
        let dir = tmp.join(format!("restored-{i}"));
        check_restore(repo, b["id"].as_str().unwrap(), &dir, &s.base, *lo, *hi);
    }
    let v = ok(&tsvault(
        repo,
        &["backup", "verify", "--all", "--deep", "--json"],
    ));
    assert_eq!(v["ok"], true, "{v}");
}

/// What a server's own backup refuses, and how it says so: no repository configured, an
/// unknown type, an incremental with no full to take it against, a wrong passphrase. None
/// leaves a backup or a snapshot behind, and writes go on.
#[test]
fn a_server_backup_that_cannot_be_taken_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = Server::start(&tmp.path().join("plain"), &[]);
    let r = post(&plain.url("/api/admin/backups"), b"");
    assert_eq!(r.status, 404, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("--backup-repo"),
        "{}",
        r.body
    );
    assert_eq!(get(&plain.url("/api/admin/backups")).status, 404);

    let (repo_dir, repo) = new_local_repo(tmp.path());
    let repo_arg = repo_dir.display().to_string();
    let pw_file = tmp.path().join("pw");
    std::fs::write(&pw_file, "pw\n").unwrap();
    let s = Server::start(
        &tmp.path().join("src"),
        &[
            "--backup-repo",
            &repo_arg,
            "--backup-password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    assert_eq!(post(&s.url("/write"), batch(0).as_bytes()).status, 204);
    let r = post(&s.url("/api/admin/backups?type=weekly"), b"");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.contains("weekly") && r.body.contains("differential"),
        "{}",
        r.body
    );
    let r = post(&s.url("/api/admin/backups?type=incremental"), b"");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("no full backup"), "{}", r.body);
    let status = get(&s.url("/api/admin/backups")).json();
    assert_eq!(status["status"]["failed"], 1, "{status}");
    assert!(
        status["status"]["last_failure"]["error"]
            .as_str()
            .unwrap()
            .contains("no full backup"),
        "{status}"
    );
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));
    assert_eq!(
        ok(&tsvault(&repo, &["backup", "list", "--json"])),
        json!([])
    );
    // The password file is read; the default type here is full.
    let r = post(&s.url("/api/admin/backups"), b"");
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["type"], "full");
    drop(s);

    let wrong = Server::start_with_env(
        &tmp.path().join("other"),
        &["--backup-repo", &repo_arg],
        &[("TSVAULT_REPO_PASSWORD", "not-the-passphrase")],
    );
    assert_eq!(post(&wrong.url("/write"), batch(0).as_bytes()).status, 204);
    let r = post(&wrong.url("/api/admin/backups"), b"");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("wrong passphrase"), "{}", r.body);
    assert_eq!(get(&wrong.url("/api/admin/backups")).json()["open"], false);
    let metrics = get(&wrong.url("/metrics")).body;
    assert!(
        metrics.contains("tsvault_backups_total{result=\"error\"} 1"),
        "{metrics}"
    );
    assert_eq!(get(&wrong.url("/api/admin/snapshots")).json(), json!([]));
    assert_eq!(post(&wrong.url("/write"), batch(1).as_bytes()).status, 204);
    let listed = ok(&tsvault(&repo, &["backup", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// `--backup-every`: the server backs itself up on its own, the first a full and the next
/// incrementals against it; a stop (SIGTERM) lets a backup under way end and leaves no
/// snapshot.
#[test]
fn a_server_backs_itself_up_on_a_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, repo) = new_local_repo(tmp.path());
    let src = tmp.path().join("src");
    let s = Server::start_with_env(
        &src,
        &[
            "--backup-repo",
            &repo_dir.display().to_string(),
            "--backup-every",
            "200ms",
        ],
        &[("TSVAULT_REPO_PASSWORD", "pw")],
    );
    assert_eq!(post(&s.url("/write"), batch(0).as_bytes()).status, 204);
    // Two scheduled backups, each logged as it ends.
    s.wait_for_log("backup taken", 2, std::time::Duration::from_secs(60));
    let status = get(&s.url("/api/admin/backups")).json();
    assert_eq!(status["status"]["failed"], 0, "{status}");
    assert!(
        status["status"]["succeeded"].as_u64().unwrap() >= 2,
        "{status}"
    );
    let (status, log) = s.terminate();
    assert!(status.success(), "{log}");
    assert_eq!(
        std::fs::read_dir(src.join("snapshots")).unwrap().count(),
        0,
        "{log}"
    );
    let listed = ok(&tsvault(&repo, &["backup", "list", "--json"]));
    let listed = listed.as_array().unwrap();
    assert!(listed.len() >= 2, "{listed:?}");
    assert_eq!(listed[0]["type"], "full");
    assert_eq!(listed[1]["type"], "incremental");
    assert_eq!(listed[1]["parent"], listed[0]["id"]);
    let v = ok(&tsvault(
        &repo,
        &["backup", "verify", "--all", "--read-data", "--json"],
    ));
    assert_eq!(v["ok"], true, "{v}");
}

/// A server killed in the middle of a backup it was taking (a fault point that ends the
/// process after the first blob is stored, as a kill -9 would) leaves no backup; restarted,
/// it takes the backup whole, and the backup restores every write.
#[test]
fn a_server_killed_during_its_own_backup_leaves_none_and_takes_it_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, repo) = new_local_repo(tmp.path());
    let src = tmp.path().join("src");
    let repo_arg = repo_dir.display().to_string();
    let args = ["--backup-repo", repo_arg.as_str()];
    let s = Server::start_with_env(
        &src,
        &args,
        &[
            ("TSVAULT_REPO_PASSWORD", "pw"),
            ("FAILPOINTS", "backup-blob-stored=return"),
        ],
    );
    for k in 0..20 {
        assert_eq!(post(&s.url("/write"), batch(k).as_bytes()).status, 204);
        if k == 9 {
            assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
        }
    }
    let answer = try_post(&s.url("/api/admin/backups"), "text/plain", b"");
    assert!(answer.is_err(), "the server answered: {answer:?}");
    let (status, log) = s.wait_exit();
    assert!(!status.success(), "{log}");
    assert_eq!(
        ok(&tsvault(&repo, &["backup", "list", "--json"])),
        json!([])
    );

    let s = Server::start_with_env(&src, &args, &[("TSVAULT_REPO_PASSWORD", "pw")]);
    let r = post(&s.url("/api/admin/backups"), b"");
    assert_eq!(r.status, 201, "{}", r.body);
    let b = r.json();
    assert_eq!(b["type"], "full");
    check_verified_and_whole(&repo, &b, tmp.path(), &s.base, 20);
}

/// A client that goes away during `POST /api/admin/backups` does not cut the backup
/// short: it runs to its end, is counted, and releases its snapshot. The connection is
/// closed once the server has logged the backup's start; a fault point slows each blob
/// (storage slower than the test), so that a backup cancelled with its request would be
/// cut in the middle, and never logged as taken.
#[test]
fn a_server_backup_outlives_the_client_that_asked_for_it() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let (repo_dir, repo) = new_local_repo(tmp.path());
    let s = Server::start_with_env(
        &tmp.path().join("src"),
        &["--backup-repo", &repo_dir.display().to_string()],
        &[
            ("TSVAULT_REPO_PASSWORD", "pw"),
            ("FAILPOINTS", "backup-blob-stored=sleep(300)"),
        ],
    );
    assert_eq!(post(&s.url("/write"), batch(0).as_bytes()).status, 204);
    let addr = s.base.trim_start_matches("http://");
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    write!(
        client,
        "POST /api/admin/backups HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let minute = std::time::Duration::from_secs(60);
    s.wait_for_log("backup started", 1, minute);
    drop(client);
    s.wait_for_log("backup taken", 1, minute);
    let status = get(&s.url("/api/admin/backups")).json();
    assert_eq!(status["status"]["succeeded"], 1, "{status}");
    assert_eq!(status["status"]["failed"], 0, "{status}");
    assert_eq!(get(&s.url("/api/admin/snapshots")).json(), json!([]));
    let listed = ok(&tsvault(&repo, &["backup", "list", "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}
