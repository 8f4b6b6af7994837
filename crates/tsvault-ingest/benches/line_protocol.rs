//! Line protocol parsing speed on TSBS cpu-only lines, single thread. Prints lines/s and
//! samples/s; asserts nothing about speed (the target is >= 1 million lines/s per core).
//!
//! Run: `cargo bench -p tsvault-ingest --bench line_protocol`
//! (`LP_BENCH_LINES` sets the lines per batch, default 100000).

use std::hint::black_box;
use std::time::{Duration, Instant};

use tsvault_ingest::{Precision, parse_line_protocol};

/// Builds `lines` TSBS-shaped lines over 1000 hosts, one per host every 10 s.
fn tsbs_body(lines: usize) -> Vec<u8> {
    let mut body = String::with_capacity(lines * 620);
    for i in 0..lines {
        let host = i % 1000;
        let ts = 1_451_606_400_000_000_000i64 + (i / 1000) as i64 * 10_000_000_000;
        let v = |k: usize| (i * 7 + k * 13) % 100;
        body.push_str(&format!(
            "cpu,hostname=host_{host},region=eu-west-1,datacenter=eu-west-1a,rack={},os=Ubuntu16.10,arch=x86,team=NYC,service={},service_version=1,service_environment=production usage_user={}i,usage_system={}i,usage_idle={}i,usage_nice={}i,usage_iowait={}i,usage_irq={}i,usage_softirq={}i,usage_steal={}i,usage_guest={}i,usage_guest_nice={}i {ts}\n",
            host % 100,
            host % 20,
            v(0), v(1), v(2), v(3), v(4), v(5), v(6), v(7), v(8), v(9),
        ));
    }
    body.into_bytes()
}

fn main() {
    let lines: usize = std::env::var("LP_BENCH_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let body = tsbs_body(lines);
    let check = parse_line_protocol(&body, Precision::Ns, 0);
    assert!(check.errors.is_empty(), "{:?}", check.errors.first());
    assert_eq!(check.points.len(), lines * 10);

    let mut runs = Vec::new();
    let started = Instant::now();
    while runs.len() < 5 || started.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let out = parse_line_protocol(black_box(&body), Precision::Ns, 0);
        let elapsed = t.elapsed();
        black_box(out);
        runs.push(elapsed);
    }
    runs.sort();
    let best = runs[0].as_secs_f64();
    let median = runs[runs.len() / 2].as_secs_f64();
    println!(
        "line protocol, TSBS cpu-only, {lines} lines ({} bytes), {} runs:",
        body.len(),
        runs.len()
    );
    println!(
        "  median {:.0} lines/s ({:.0} samples/s, {:.0} MB/s); best {:.0} lines/s",
        lines as f64 / median,
        lines as f64 * 10.0 / median,
        body.len() as f64 / median / 1e6,
        lines as f64 / best
    );
}
