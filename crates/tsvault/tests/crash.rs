//! Crash test: concurrent writers record every acknowledged sample while the server is
//! SIGKILLed at random moments (some cycles flush and compact every few batches, some take
//! and release snapshots in a loop); after each kill the stopped directory must pass
//! `tsvault check` (a torn last WAL write is allowed: it was never acknowledged), and after
//! each restart every acknowledged sample must be there with its exact value, and nothing
//! must be there that was never written.
//!
//! Default: 10 kill cycles. `TSVAULT_TORTURE_CYCLES=N` runs more; `TSVAULT_CRASH_SEED`
//! replays a run.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::{Server, query_dps, try_post};
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

/// (series, ts_ms) -> value of every write attempted, and the subset acknowledged.
#[derive(Default)]
struct Ledger {
    attempted: BTreeMap<(String, i64), f64>,
    acked: BTreeMap<(String, i64), f64>,
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_write() {
    let cycles: usize = std::env::var("TSVAULT_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("TSVAULT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test: {cycles} cycles, seed {seed} (TSVAULT_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (mut total_acked, mut checks) = (0, 0);
    for cycle in 0..cycles {
        // Every other cycle flushes the head every few batches, so kills land during
        // segment writes, manifest swaps and compactions too.
        let extra: &[&str] = if cycle % 3 == 1 {
            &["--head-samples-max", "300"]
        } else {
            &[]
        };
        let server = Server::start(dir.path(), extra);
        verify(&server, &ledger, cycle);
        let progress = Arc::new((Mutex::new(Progress::default()), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let kill_after = rng.random_range(1..40usize);
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
                        let ts = 1_600_000_000_000 + (cycle as i64) * 1_000_000_000 + n;
                        let v: f64 =
                            (vrng.random_range(-1_000_000_000i64..1_000_000_000) as f64) / 1024.0;
                        let series = format!("w{w}s{s}");
                        body.push_str(&format!("crash,series={series} v={v:?} {ts}\n"));
                        batch.push(((series, ts), v));
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
                            break if stop.load(Ordering::Relaxed) {
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
        if cycle % 3 == 2 {
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
                !timeout.timed_out() && p.acked_batches >= kill_after,
                "cycle {cycle}: writers made no progress ({} of {kill_after} batches acknowledged) within {PROGRESS_TIMEOUT:?}\nserver log:\n{}",
                p.acked_batches,
                server.log()
            );
        }
        stop.store(true, Ordering::Relaxed);
        server.kill9();
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
            eprintln!("crash test: {} cycles done", cycle + 1);
        }
        total_acked = ledger.lock().unwrap().acked.len();
    }
    let server = Server::start(dir.path(), &[]);
    verify(&server, &ledger, cycles);
    eprintln!(
        "crash test: {cycles} kill cycles, {checks} directory checks clean, {total_acked} acknowledged samples checked, 0 lost"
    );
}

fn verify(server: &Server, ledger: &Mutex<Ledger>, cycle: usize) {
    let query = json!({"start": 0, "end": 4_000_000_000_000i64, "msResolution": true,
                       "queries": [{"metric": "crash_v", "aggregator": "none"}]});
    // Before the first write the metric does not exist yet: OpenTSDB's "no such metric".
    let probe = common::post_with(
        &server.url("/api/query"),
        &[("Content-Type", "application/json")],
        query.to_string().as_bytes(),
    );
    let results = if probe.status == 400 && probe.body.contains("no such metric") {
        Vec::new()
    } else {
        query_dps(&server.base, query)
    };
    let mut stored: BTreeMap<(String, i64), f64> = BTreeMap::new();
    for (tags, dps) in results {
        let series = tags["series"].as_str().expect("series tag").to_string();
        for (ts, v) in dps {
            stored.insert((series.clone(), ts), v);
        }
    }
    let l = ledger.lock().unwrap();
    for (k, v) in &l.acked {
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
}
