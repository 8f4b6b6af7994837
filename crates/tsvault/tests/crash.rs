//! Crash and power-cut tests: concurrent writers record every acknowledged sample while the
//! server dies at random moments (some cycles flush and compact every few batches, some also
//! drop old partitions by retention, some take and release snapshots in a loop, some run
//! online backups into a repository one after another); after each death the stopped directory must pass
//! `tsvault check` (a torn last WAL write is allowed: it was never acknowledged), and after
//! each restart every acknowledged sample must be there with its exact value, and nothing
//! must be there that was never written.
//!
//! - SIGKILL: the process dies; what it wrote stays in the page cache and reaches the disk.
//!   Default 10 cycles; `TSVAULT_TORTURE_CYCLES=N` runs more.
//! - Power cut: the server (a test build) records what is durable and, when the `powercut`
//!   fault point fires at a random step (before or after an fsync, a rename, a removal, a
//!   WAL append), drops every byte and directory entry not yet fsynced (keeping, at random, a
//!   torn prefix of unsynced bytes) and aborts (`src/powercut.rs` in the storage crate).
//!   Default 10 cycles; `TSVAULT_POWERCUT_CYCLES=N` runs more.
//!
//! At the end every backup the repository lists must verify (`--read-data`): those cut short
//! left nothing visible. `TSVAULT_CRASH_SEED` replays a run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Server, try_post};
use rand::{Rng, SeedableRng};
use serde_json::json;

const WRITERS: usize = 3;
const SERIES_PER_WRITER: usize = 4;
const POINTS_PER_BATCH: usize = 50;
/// Longest wait for the writers' next acknowledgement before the test fails with the log.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// What the writers report to the thread that kills the server.
#[derive(Default)]
struct Progress {
    acked_batches: usize,
    writers_done: usize,
    failure: Option<String>,
}

/// (ts_ms, series) -> value of every write attempted, and the subset acknowledged.
#[derive(Default)]
struct Ledger {
    attempted: BTreeMap<(i64, String), f64>,
    acked: BTreeMap<(i64, String), f64>,
}

/// The first timestamp written in `cycle` (each cycle writes its own partitions).
fn cycle_start_ms(cycle: usize) -> i64 {
    1_600_000_000_000 + (cycle as i64) * 1_000_000_000
}

/// How the server dies in a cycle.
#[derive(Clone, Copy, PartialEq)]
enum Death {
    Sigkill,
    PowerCut,
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    torture(Death::Sigkill, env_usize("TSVAULT_TORTURE_CYCLES", 10));
}

#[test]
fn power_cuts_at_random_moments_lose_no_acknowledged_write() {
    torture(Death::PowerCut, env_usize("TSVAULT_POWERCUT_CYCLES", 10));
}

fn torture(death: Death, cycles: usize) {
    let name = match death {
        Death::Sigkill => "crash test",
        Death::PowerCut => "power-cut test",
    };
    let seed: u64 = std::env::var("TSVAULT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{name}: {cycles} cycles, seed {seed} (TSVAULT_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = tempfile::tempdir().unwrap();
    let repo = repo_dir.path().join("repo").display().to_string();
    common::ok(&backup_cli(&repo, &["backup", "init", "--no-encryption"]));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (mut total_acked, mut checks, mut cuts, mut retention_drops) = (0, 0, 0, 0);
    for cycle in 0..cycles {
        // Some cycles flush the head every few batches, so deaths land during segment
        // writes, manifest swaps and compactions too; every fourth also keeps only ten
        // years, so the retention that each flush runs drops the partitions of the `old`
        // metric the other cycles write (25 years back; never verified, as it may go).
        let retention = cycle % 4 == 3;
        let extra: &[&str] = if retention {
            &["--head-samples-max", "300", "--retention", "3650d"]
        } else if cycle % 3 == 1 {
            &["--head-samples-max", "300"]
        } else {
            &[]
        };
        // A power cut falls at the K-th step that can lose power (about three per
        // acknowledged batch, more during a flush).
        let server = match death {
            Death::Sigkill => Server::start(dir.path(), extra),
            Death::PowerCut => {
                let started = Server::try_start_with(
                    dir.path(),
                    extra,
                    &[
                        (
                            "FAILPOINTS",
                            &format!("powercut={}*off->return", rng.random_range(0..240u32)),
                        ),
                        ("TSVAULT_POWERCUT", "1"),
                        ("TSVAULT_POWERCUT_SEED", &rng.random::<u64>().to_string()),
                    ],
                );
                match started {
                    Ok(s) => s,
                    // The power went while the server was starting (recovering, creating
                    // its WAL file): that directory must be as good as any other.
                    Err(log) if log.contains("power cut simulated") => {
                        cuts += 1;
                        let report = match tsvault_storage::check_data_dir(dir.path(), &mut |_| {})
                        {
                            Ok(r) => r,
                            // The first start, cut before its WAL directory was durable:
                            // nothing of a data directory is there yet (nothing was written).
                            Err(tsvault_storage::Error::NotFound(why)) if total_acked == 0 => {
                                eprintln!("cycle {cycle}: cut before the directory existed: {why}");
                                continue;
                            }
                            Err(e) => panic!("cycle {cycle}: check: {e}"),
                        };
                        assert!(
                            report.problems.is_empty(),
                            "cycle {cycle}: the directory fails its check after a power cut during start: {:?}",
                            report.problems
                        );
                        checks += 1;
                        continue;
                    }
                    Err(log) => panic!("cycle {cycle}: the server did not start:\n{log}"),
                }
            }
        };
        // The last cycles' samples every cycle, everything every hundredth: a cycle writes
        // only its own partitions, and a full check each time would grow with the run.
        let from = if cycle % 100 == 0 {
            0
        } else {
            cycle_start_ms(cycle.saturating_sub(2))
        };
        if let Err(e) = verify(&server, &ledger, cycle, from) {
            // The power may go before any writer starts (a flush at start): the cycle ends
            // there, the directory is checked, and the next start verifies these samples.
            assert!(death == Death::PowerCut, "cycle {cycle}: query: {e}");
            let (status, log) = server.wait_exit();
            assert!(
                log.contains("power cut simulated") && !status.success(),
                "cycle {cycle}: the query failed ({e}) and the server died without a simulated power cut ({status}):\n{log}"
            );
            cuts += 1;
            let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
            assert!(
                report.problems.is_empty(),
                "cycle {cycle}: the directory fails its check: {:?}",
                report.problems
            );
            checks += 1;
            continue;
        }
        if !retention {
            let old_ts = 820_000_000_000 + cycle as i64 * 21_600_000;
            let r = try_post(
                &server.url("/write?precision=ms"),
                "text/plain",
                format!("old,series=x v={cycle} {old_ts}\n").as_bytes(),
            );
            assert!(
                r.as_ref().is_ok_and(|r| r.status == 204) || death == Death::PowerCut,
                "cycle {cycle}: {r:?}"
            );
        }
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        // A power cut ends the cycle by itself; this many batches is the backstop.
        let kill_after = match death {
            // Backup cycles run longer, so that some backups finish and some are cut.
            Death::Sigkill if cycle % 6 == 5 => rng.random_range(20..150usize),
            Death::Sigkill => rng.random_range(1..40usize),
            Death::PowerCut => 2000,
        };
        let next_ts = Arc::new(AtomicUsize::new(0));
        let mut handles = Vec::new();
        for w in 0..WRITERS {
            let (url, ledger, progress, stop, next_ts) = (
                server.url("/write?precision=ms"),
                ledger.clone(),
                progress.clone(),
                stop.clone(),
                next_ts.clone(),
            );
            let value_seed: u64 = rng.random();
            handles.push(std::thread::spawn(move || {
                let mut vrng = rand::rngs::StdRng::seed_from_u64(value_seed);
                let outcome = loop {
                    if stop.load(Ordering::Relaxed) {
                        break None;
                    }
                    let mut body = String::new();
                    let mut batch = Vec::new();
                    for _ in 0..POINTS_PER_BATCH {
                        let s = vrng.random_range(0..SERIES_PER_WRITER);
                        let n = next_ts.fetch_add(1, Ordering::Relaxed) as i64;
                        let ts = cycle_start_ms(cycle) + n;
                        let v: f64 =
                            (vrng.random_range(-1_000_000_000i64..1_000_000_000) as f64) / 1024.0;
                        let series = format!("w{w}s{s}");
                        body.push_str(&format!("crash,series={series} v={v:?} {ts}\n"));
                        batch.push(((ts, series), v));
                    }
                    ledger
                        .lock()
                        .unwrap()
                        .attempted
                        .extend(batch.iter().cloned());
                    match try_post(&url, "text/plain", body.as_bytes()) {
                        Ok(r) if r.status == 204 => {
                            ledger.lock().unwrap().acked.extend(batch);
                            let (m, cv) = &*progress;
                            m.lock().unwrap().acked_batches += 1;
                            cv.notify_all();
                        }
                        Ok(r) => break Some(format!("write answered {}: {}", r.status, r.body)),
                        // The server died mid-request: not acknowledged.
                        Err(e) => {
                            break if stop.load(Ordering::Relaxed) || death == Death::PowerCut {
                                None
                            } else {
                                Some(format!("write failed before the kill: {e}"))
                            };
                        }
                    }
                };
                let (m, cv) = &*progress;
                let mut p = m.lock().unwrap();
                p.writers_done += 1;
                if p.failure.is_none() {
                    p.failure = outcome;
                }
                cv.notify_all();
            }));
        }
        // Every third cycle takes and releases snapshots until the kill, so kills land
        // while one is being built (hard links, the manifest copy, the rename).
        // Every sixth cycle backs the server up online into a repository, over and over,
        // until the death, so it lands while files are pulled and blobs uploaded.
        if cycle % 6 == 5 {
            let (base, stop, repo) = (server.base.clone(), stop.clone(), repo.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = backup_cli(&repo, &["backup", "create", "--server", &base]);
                    if !out.status.success() {
                        break;
                    }
                }
            }));
        } else if cycle % 3 == 2 {
            let (url, stop) = (server.url("/api/admin/snapshots"), stop.clone());
            handles.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(r) = try_post(&url, "application/json", b"") else {
                        break;
                    };
                    let id = r.json()["id"].as_str().map(str::to_string);
                    if let Some(id) = id {
                        let _ = common::agent().delete(&format!("{url}/{id}")).call();
                    }
                }
            }));
        }
        {
            let (m, cv) = &*progress;
            let (p, timeout) = cv
                .wait_timeout_while(m.lock().unwrap(), PROGRESS_TIMEOUT, |p| {
                    p.acked_batches < kill_after && p.failure.is_none() && p.writers_done < WRITERS
                })
                .unwrap();
            if let Some(f) = &p.failure {
                panic!("cycle {cycle}: {f}\nserver log:\n{}", server.log());
            }
            assert!(
                !timeout.timed_out() && (p.acked_batches >= kill_after || death == Death::PowerCut),
                "cycle {cycle}: writers made no progress ({} of {kill_after} batches acknowledged) within {PROGRESS_TIMEOUT:?}\nserver log:\n{}",
                p.acked_batches,
                server.log()
            );
        }
        stop.store(true, Ordering::Relaxed);
        let drops = |log: &str| log.matches("retention dropped expired segments").count();
        match death {
            Death::Sigkill => {
                retention_drops += drops(&server.log());
                server.kill9();
            }
            Death::PowerCut => {
                // Every writer has stopped: the server cut its own power, or the backstop
                // was reached (then it is killed, and the cycle is a plain crash).
                let cut = progress.0.lock().unwrap().writers_done == WRITERS;
                if cut {
                    let (status, log) = server.wait_exit();
                    retention_drops += drops(&log);
                    assert!(
                        log.contains("power cut simulated") && !status.success(),
                        "cycle {cycle}: the server died without a simulated power cut ({status}):\n{log}"
                    );
                    cuts += 1;
                } else {
                    retention_drops += drops(&server.log());
                    server.kill9();
                }
            }
        }
        for h in handles {
            h.join().expect("writer thread");
        }
        let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        assert!(
            report.problems.is_empty(),
            "cycle {cycle}: the killed server's directory fails its check: {:?}",
            report.problems
        );
        checks += 1;
        if cycle % 50 == 49 {
            eprintln!("{name}: {} cycles done", cycle + 1);
        }
        total_acked = ledger.lock().unwrap().acked.len();
    }
    let server = Server::start(dir.path(), &[]);
    verify(&server, &ledger, cycles, 0).expect("the last start answers");
    // Backups cut short by the deaths left nothing visible: every backup the repository
    // lists is whole.
    let verified = common::ok(&backup_cli(
        &repo,
        &["backup", "verify", "--all", "--read-data", "--json"],
    ));
    assert_eq!(verified["ok"], true, "{verified}");
    let backups = verified["backups"].as_array().map_or(0, Vec::len);
    eprintln!("{name}: {backups} online backups finished between deaths, every one verified");
    eprintln!("{name}: retention dropped expired segments {retention_drops} times");
    match death {
        Death::Sigkill => eprintln!(
            "{name}: {cycles} kill cycles, {checks} directory checks clean, {total_acked} acknowledged samples checked, 0 lost"
        ),
        Death::PowerCut => eprintln!(
            "{name}: {cycles} cycles, {cuts} simulated power cuts ({} plain kills), {checks} directory checks clean, {total_acked} acknowledged samples checked, 0 lost",
            cycles - cuts
        ),
    }
}

/// Every acknowledged sample from `from_ms` on is stored with its exact value, and every
/// stored one was written.
/// Fails (without checking anything) only when the server cannot be reached.
fn verify(
    server: &Server,
    ledger: &Mutex<Ledger>,
    cycle: usize,
    from_ms: i64,
) -> Result<(), String> {
    let query = json!({"start": from_ms.max(1), "end": 4_000_000_000_000i64, "msResolution": true,
                       "queries": [{"metric": "crash_v", "aggregator": "none"}]});
    let r = try_post(
        &server.url("/api/query"),
        "application/json",
        query.to_string().as_bytes(),
    )
    .map_err(|e| e.to_string())?;
    // Before the first write the metric does not exist yet: OpenTSDB's "no such metric".
    let results: Vec<serde_json::Value> = if r.status == 400 && r.body.contains("no such metric") {
        Vec::new()
    } else {
        assert_eq!(r.status, 200, "cycle {cycle}: query: {}", r.body);
        serde_json::from_str(&r.body).expect("query answer is JSON")
    };
    let mut stored: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for res in results {
        let series = res["tags"]["series"]
            .as_str()
            .expect("series tag")
            .to_string();
        for (ts, v) in res["dps"].as_object().expect("dps") {
            let ts: i64 = ts.parse().expect("timestamp");
            stored.insert((ts, series.clone()), v.as_f64().expect("value"));
        }
    }
    let l = ledger.lock().unwrap();
    for (k, v) in l.acked.range((from_ms, String::new())..) {
        match stored.get(k) {
            Some(s) => assert_eq!(
                s.to_bits(),
                v.to_bits(),
                "cycle {cycle}: {k:?} has {s}, acknowledged {v}"
            ),
            None => panic!("cycle {cycle}: acknowledged sample {k:?} = {v} is lost"),
        }
    }
    for (k, v) in &stored {
        let attempted = l.attempted.get(k);
        assert_eq!(
            attempted.map(|a| a.to_bits()),
            Some(v.to_bits()),
            "cycle {cycle}: {k:?} = {v} was never written"
        );
    }
    Ok(())
}

/// Runs the `tsvault` CLI against repository `repo` (unencrypted, no password needed).
fn backup_cli(repo: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tsvault"))
        .args(args)
        .env("TSVAULT_REPO", repo)
        .env_remove("FAILPOINTS")
        .env_remove("TSVAULT_POWERCUT")
        .output()
        .expect("run tsvault")
}

/// A process killed between a WAL write and its fsync leaves the records in the page cache.
/// The next start replays and serves them, and creates a new WAL file after them: it must
/// make them durable first, or a power cut turns the file into a torn older one (the start
/// after it refused, reporting corruption) and takes back what was served. The power-cut
/// simulation remembers across processes what was really fsynced, so it sees this.
#[test]
fn records_a_killed_process_never_fsynced_are_made_durable_before_the_next_start_builds_on_them() {
    let dir = tempfile::tempdir().unwrap();
    let env = |fp: &'static str| [("FAILPOINTS", fp), ("TSVAULT_POWERCUT", "1")];
    let server = Server::start_with_env(
        dir.path(),
        &[],
        &env("abort-after-wal-append=1*off->return"),
    );
    let r = try_post(
        &server.url("/write?precision=ms"),
        "text/plain",
        b"m,h=a v=1 1000\n",
    )
    .unwrap();
    assert_eq!(r.status, 204);
    assert!(
        try_post(
            &server.url("/write?precision=ms"),
            "text/plain",
            b"m,h=a v=2 2000\n"
        )
        .is_err(),
        "the process dies after the second write's WAL append"
    );
    let (status, _) = server.wait_exit();
    assert!(!status.success());
    // The next start replays both records, then the power goes.
    let log = match Server::try_start_with(dir.path(), &[], &env("powercut-after-open=return")) {
        Err(log) => log,
        Ok(_) => panic!("the start was to end in a simulated power cut"),
    };
    assert!(log.contains("power cut simulated"), "{log}");
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let server = Server::start(dir.path(), &[]);
    let got = common::query_dps(
        &server.base,
        json!({"start": 0, "end": 10_000, "msResolution": true, "queries": [{"metric": "m_v", "aggregator": "none"}]}),
    );
    assert_eq!(
        got[0].1,
        vec![(1000, 1.0), (2000, 2.0)],
        "what the earlier start replayed and served is still there"
    );
}
