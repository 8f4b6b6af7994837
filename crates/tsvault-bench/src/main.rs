//! `tsvault-bench`: loads a TSBS cpu-only shaped workload into a real `tsvault serve` process
//! over HTTP line protocol and prints ingest rate, bytes on disk per sample after flush, peak
//! memory and query latencies. It measures; it asserts only that answers are correct.
//!
//! Build both binaries first: `cargo build --release -p tsvault -p tsvault-bench`, then run
//! `target/release/tsvault-bench` (see BENCHMARKS.md).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Parser;
use rand::{Rng, SeedableRng};
use serde_json::json;

const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];
const REGIONS: [(&str, [&str; 3]); 3] = [
    ("us-east-1", ["us-east-1a", "us-east-1b", "us-east-1c"]),
    ("eu-west-1", ["eu-west-1a", "eu-west-1b", "eu-west-1c"]),
    (
        "ap-southeast-2",
        ["ap-southeast-2a", "ap-southeast-2b", "ap-southeast-2c"],
    ),
];
/// 2016-01-01T00:00:00Z, TSBS's default start.
const START_MS: i64 = 1_451_606_400_000;

#[derive(Parser)]
#[command(about = "Ingest, disk and query benchmark of tsvault on a TSBS cpu-only workload")]
struct Args {
    /// Number of hosts (each writes 10 fields every interval).
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Hours of data.
    #[arg(long, default_value_t = 12)]
    hours: i64,
    /// Seconds between samples of a host.
    #[arg(long, default_value_t = 10)]
    interval_s: i64,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Lines per HTTP request.
    #[arg(long, default_value_t = 5000)]
    batch_lines: usize,
    /// Values as floats with two decimals instead of TSBS's integers.
    #[arg(long)]
    float_values: bool,
    /// Runs per query type.
    #[arg(long, default_value_t = 50)]
    query_runs: usize,
    /// The tsvault binary (default: next to this one).
    #[arg(long)]
    tsvault_bin: Option<PathBuf>,
    /// Extra flags for `tsvault serve`, e.g. "--fsync interval".
    #[arg(long, allow_hyphen_values = true)]
    serve_args: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.tsvault_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("tsvault"),
    };
    ensure!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p tsvault`",
        bin.display()
    );
    let dir = tempfile::tempdir()?;
    let extra: Vec<String> = args
        .serve_args
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let server = Server::start(&bin, dir.path(), &extra)?;

    let t_gen = Instant::now();
    let batches = generate(&args);
    let n_lines: usize = batches.iter().map(|b| b.lines).sum();
    let n_samples = n_lines * FIELDS.len();
    let n_bytes: usize = batches.iter().map(|b| b.body.len()).sum();
    println!(
        "workload: {} hosts x {} h at {} s, {} values: {} lines, {} samples, {:.1} MiB of line protocol (generated in {:.1} s)",
        args.hosts,
        args.hours,
        args.interval_s,
        if args.float_values {
            "float (2 decimals)"
        } else {
            "integer (TSBS)"
        },
        n_lines,
        n_samples,
        n_bytes as f64 / 1048576.0,
        t_gen.elapsed().as_secs_f64()
    );

    // Ingest.
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let url = format!("{}/write?precision=ms", server.base);
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..args.clients {
        let (batches, next, url) = (batches.clone(), next.clone(), url.clone());
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let agent = agent();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else {
                    return Ok(());
                };
                let mut r = agent.post(&url).send(&b.body[..])?;
                let status = r.status().as_u16();
                if status != 204 {
                    bail!(
                        "write answered {status}: {}",
                        r.body_mut().read_to_string()?
                    );
                }
            }
        }));
    }
    for h in handles {
        h.join().expect("client thread")?;
    }
    let ingest_s = t0.elapsed().as_secs_f64();
    let rss_ingest = server.peak_rss_kib();
    println!(
        "ingest: {:.0} samples/s ({:.0} lines/s, {:.2} s, {} clients, fsync {})",
        n_samples as f64 / ingest_s,
        n_lines as f64 / ingest_s,
        ingest_s,
        args.clients,
        if extra.iter().any(|a| a == "interval") {
            "interval"
        } else {
            "always"
        }
    );
    println!(
        "peak resident memory during ingest: {:.1} MiB",
        rss_ingest as f64 / 1024.0
    );

    // Settle: flush the head and compact.
    let t1 = Instant::now();
    post_json(&format!("{}/api/admin/flush", server.base), "")?;
    post_json(&format!("{}/api/admin/compact", server.base), "")?;
    let settle_s = t1.elapsed().as_secs_f64();
    let segs = dir_bytes(&dir.path().join("segments"))?;
    let total = dir_bytes(dir.path())?;
    println!(
        "disk after flush + compaction ({settle_s:.2} s): segments {segs} bytes = {:.3} bytes/sample; whole data dir {total} bytes = {:.3} bytes/sample",
        segs as f64 / n_samples as f64,
        total as f64 / n_samples as f64
    );

    // Queries.
    let end_ms = START_MS + args.hours * 3_600_000;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let n_hosts = args.hosts;
    let host = move |rng: &mut rand::rngs::StdRng| format!("host_{}", rng.random_range(0..n_hosts));
    type QueryGen = Box<dyn Fn(&mut rand::rngs::StdRng) -> serde_json::Value>;
    let hours = args.hours;
    let queries: Vec<(&str, QueryGen)> = vec![
        (
            "single-groupby-1-1-1",
            Box::new(move |rng| {
                let s = START_MS + rng.random_range(0..hours.max(2) - 1) * 3_600_000;
                json!({"start": s, "end": s + 3_600_000 - 1, "queries": [
                {"metric": "cpu_usage_user", "aggregator": "max", "downsample": "1m-max",
                 "filters": [{"type": "literal_or", "tagk": "hostname", "filter": host(rng), "groupBy": false}]}]})
            }),
        ),
        (
            "single-groupby-5-1-12",
            Box::new(move |rng| {
                let s = START_MS;
                let h = host(rng);
                json!({"start": s, "end": s + 12 * 3_600_000 - 1, "queries": FIELDS[..5].iter().map(|f| json!(
                {"metric": format!("cpu_{f}"), "aggregator": "max", "downsample": "1m-max",
                 "filters": [{"type": "literal_or", "tagk": "hostname", "filter": h, "groupBy": false}]})).collect::<Vec<_>>()})
            }),
        ),
        (
            "cpu-max-all-8",
            Box::new(move |rng| {
                let hs: Vec<String> = (0..8).map(|_| host(rng)).collect();
                let s = START_MS + rng.random_range(0..(hours - 8).max(1)) * 3_600_000;
                json!({"start": s, "end": s + 8 * 3_600_000 - 1, "queries": FIELDS.iter().map(|f| json!(
                {"metric": format!("cpu_{f}"), "aggregator": "max", "downsample": "1h-max",
                 "filters": [{"type": "literal_or", "tagk": "hostname", "filter": hs.join("|"), "groupBy": false}]})).collect::<Vec<_>>()})
            }),
        ),
        (
            "double-groupby-1",
            Box::new(move |_| {
                json!({"start": START_MS, "end": end_ms - 1, "queries": [
                {"metric": "cpu_usage_user", "aggregator": "avg", "downsample": "1h-avg",
                 "filters": [{"type": "wildcard", "tagk": "hostname", "filter": "*", "groupBy": true}]}]})
            }),
        ),
        (
            "lastpoint",
            Box::new(move |_| {
                json!({"start": end_ms - 60_000, "end": end_ms, "queries": FIELDS.iter().map(|f| json!(
                {"metric": format!("cpu_{f}"), "aggregator": "none", "downsample": "0all-last"})).collect::<Vec<_>>()})
            }),
        ),
    ];
    println!(
        "queries ({} runs each, /api/query, 1 client):",
        args.query_runs
    );
    for (name, make) in &queries {
        let mut lat = Vec::with_capacity(args.query_runs);
        for _ in 0..args.query_runs {
            let body = make(&mut rng).to_string();
            let t = Instant::now();
            let out = post_json(&format!("{}/api/query", server.base), &body)?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            ensure!(out.is_array(), "{name}: not an array: {out}");
            ensure!(
                !out.as_array().unwrap().is_empty(),
                "{name}: no result for {body}"
            );
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "  {name:<22} p50 {:>8.2} ms   p99 {:>8.2} ms",
            pct(0.5),
            pct(0.99)
        );
    }
    check_answer(&server, &args)?;
    println!(
        "peak resident memory overall: {:.1} MiB",
        server.peak_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// One request body.
struct Batch {
    body: Vec<u8>,
    lines: usize,
}

fn host_tags(i: usize) -> String {
    let (region, dcs) = REGIONS[i % REGIONS.len()];
    format!(
        "hostname=host_{i},region={region},datacenter={},rack={},os=Ubuntu16.04LTS,arch=x64,team=SF,service={},service_version={},service_environment=production",
        dcs[i % 3],
        i % 100,
        i % 20,
        i % 2
    )
}

/// TSBS cpu-only: per host, each field a random walk clamped to [0, 100].
fn generate(a: &Args) -> Vec<Batch> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let tags: Vec<String> = (0..a.hosts).map(host_tags).collect();
    let mut state: Vec<[f64; 10]> = (0..a.hosts)
        .map(|_| std::array::from_fn(|_| rng.random_range(0.0..100.0)))
        .collect();
    let steps = a.hours * 3600 / a.interval_s;
    let mut out = Vec::new();
    let mut body = Vec::new();
    let mut lines = 0;
    for step in 0..steps {
        let ts = START_MS + step * a.interval_s * 1000;
        for (h, vals) in state.iter_mut().enumerate() {
            body.extend_from_slice(b"cpu,");
            body.extend_from_slice(tags[h].as_bytes());
            for (f, v) in vals.iter_mut().enumerate() {
                *v = (*v + rng.random_range(-1.0..1.0) + rng.random_range(-1.0..1.0))
                    .clamp(0.0, 100.0);
                body.push(if f == 0 { b' ' } else { b',' });
                let text = if a.float_values {
                    format!("{}={:.2}", FIELDS[f], v)
                } else {
                    format!("{}={}i", FIELDS[f], *v as i64)
                };
                body.extend_from_slice(text.as_bytes());
            }
            body.extend_from_slice(format!(" {ts}\n").as_bytes());
            lines += 1;
            if lines == a.batch_lines {
                out.push(Batch {
                    body: std::mem::take(&mut body),
                    lines,
                });
                lines = 0;
            }
        }
    }
    if lines > 0 {
        out.push(Batch { body, lines });
    }
    out
}

/// Correctness of one known answer: the count of samples of one series over the whole run.
fn check_answer(server: &Server, a: &Args) -> anyhow::Result<()> {
    let end_ms = START_MS + a.hours * 3_600_000;
    let out = post_json(&format!("{}/api/query", server.base), &json!({"start": START_MS, "end": end_ms, "queries": [
        {"metric": "cpu_usage_idle", "aggregator": "sum", "downsample": "0all-count",
         "filters": [{"type": "literal_or", "tagk": "hostname", "filter": "host_0", "groupBy": false}]}]}).to_string())?;
    let got = out[0]["dps"]
        .as_object()
        .and_then(|m| m.values().next())
        .and_then(|v| v.as_f64());
    let want = (a.hours * 3600 / a.interval_s) as f64;
    ensure!(
        got == Some(want),
        "host_0 holds {got:?} samples of cpu_usage_idle, expected {want}: {out}"
    );
    println!("check: host_0 cpu_usage_idle holds all {want} samples");
    Ok(())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into()
}

fn post_json(url: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let mut r = agent()
        .post(url)
        .header("Content-Type", "application/json")
        .send(body)?;
    let status = r.status().as_u16();
    let text = r.body_mut().with_config().limit(1 << 30).read_to_string()?;
    ensure!(status == 200, "POST {url} answered {status}: {text}");
    Ok(serde_json::from_str(&text)?)
}

fn dir_bytes(p: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
        let e = e?;
        let md = e.metadata()?;
        total += if md.is_dir() {
            dir_bytes(&e.path())?
        } else {
            md.len()
        };
    }
    Ok(total)
}

struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(bin: &Path, dir: &Path, extra: &[String]) -> anyhow::Result<Server> {
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(
                        rest.split([',', ' '])
                            .next()
                            .unwrap_or_default()
                            .to_string(),
                    );
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .context("tsvault did not start")?;
        Ok(Server {
            child,
            base: format!("http://{addr}"),
        })
    }

    fn peak_rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
