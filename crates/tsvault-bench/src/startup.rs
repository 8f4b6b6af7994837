//! Start-up against data size (`--startup`): each system loaded once per size, then
//! restarted in rounds on its own data with the page cache dropped (as after a reboot, or a
//! failover to a machine that has not read the data), timing the start until the system
//! answers (tsvault: its `listening on` line, logged once the WAL is replayed and writes and
//! queries are served; VictoriaMetrics: `/health`) and until a first query (every series'
//! last hour) is answered. tsvault is timed twice: as it starts (footers and the series file;
//! segments verified in the background, whose end is timed too), and verifying every segment
//! at start (`--quarantine-corrupt`, which is what every start did before).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

use crate::report::{Better, Row};
use crate::systems::{Kind, Running, dir_size};
use crate::workload::{self, Shape, Workload};
use crate::{bar, http, rounds};

/// One size: `hosts` TSBS hosts (ten series each) for `hours`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Size {
    pub hosts: usize,
    pub hours: i64,
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Size, String> {
        let (h, t) = s
            .split_once('x')
            .ok_or_else(|| format!("`{s}`: expected HOSTSxHOURS, e.g. 1000x40"))?;
        let hosts = h
            .parse::<usize>()
            .map_err(|e| format!("`{s}`: hosts: {e}"))?;
        let hours = t.parse::<i64>().map_err(|e| format!("`{s}`: hours: {e}"))?;
        if hosts == 0 || hours <= 0 {
            return Err(format!("`{s}`: hosts and hours must be at least 1"));
        }
        Ok(Size { hosts, hours })
    }
}

/// The ways a system is started and timed, in the table's columns: tsvault, VictoriaMetrics,
/// and tsvault verifying every segment at start (in the notes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    Tsvault,
    Victoria,
    TsvaultVerifyAll,
}

/// What one timed start measured.
struct Timed {
    ready_s: f64,
    first_query_s: f64,
    /// tsvault: until the background verification has read every segment.
    verified_s: Option<f64>,
}

/// Runs the start-up figures for `sizes`; returns the table's rows and notes.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    sizes: &[Size],
    rounds_n: usize,
    interval_s: i64,
    batch_lines: usize,
    clients: usize,
    root: &Path,
    tsvault_bin: &Path,
    serve_args: &[String],
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    // The first query reads every series' last hour (36 M samples a field at a million
    // series): tsvault may read as many samples per query as VictoriaMetrics does by default
    // (its -search.maxSamplesPerQuery, 1 G).
    let mut serve_args = serve_args.to_vec();
    serve_args.extend(["--query-samples-max".to_string(), "1000000000".to_string()]);
    let serve_args = &serve_args[..];
    let cold = drop_caches();
    let mut rows = Vec::new();
    let mut notes = vec![format!(
        "Start-up: each system loaded once per size with the same line protocol (TSBS cpu-only hosts, ten fields each, every {interval_s} s, values at full float precision so that the stores reach gigabytes from a load this machine sends in minutes), merged, stopped; then started {rounds_n} times on its data, {}, the starts' order rotating; medians. Ready: from spawning the process to tsvault's `listening on` line (logged once its WAL is replayed) or VictoriaMetrics' first answer to `/health` (polled every 5 ms). First query: until the sum of every series' samples in the last hour is answered.",
        if cold {
            "the page cache dropped before each start (`echo 3 > /proc/sys/vm/drop_caches`), as after a reboot"
        } else {
            "with a warm page cache (dropping it was not permitted here)"
        }
    )];
    for &size in sizes {
        let shape = Shape {
            hosts: size.hosts,
            hours: size.hours,
            interval_s,
            float_values: true,
            noise: true,
            batch_lines,
        };
        let wl = Workload::streamed(shape);
        let series = size.hosts * workload::FIELDS.len();
        let dir_of = |kind: Kind| {
            root.join(format!(
                "startup-{}-{}x{}",
                kind.name(),
                size.hosts,
                size.hours
            ))
        };
        let mut stored = Vec::new();
        for kind in [Kind::Tsvault, Kind::Victoria] {
            let dir = dir_of(kind);
            load(kind, &dir, &wl, clients, tsvault_bin, serve_args)?;
            let bytes = dir_size(&dir)?.allocated;
            say!(
                "{}: {} hosts x {} h ({series} series, {} samples) in {:.2} GiB",
                kind.name(),
                size.hosts,
                size.hours,
                wl.samples(),
                bytes as f64 / (1u64 << 30) as f64
            );
            stored.push(bytes);
        }
        let starts = [Start::Tsvault, Start::Victoria, Start::TsvaultVerifyAll];
        let mut timed: Vec<Vec<Timed>> = starts.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds_n {
            for i in rounds::balanced_order(starts.len(), round) {
                let start = starts[i];
                let kind = match start {
                    Start::Victoria => Kind::Victoria,
                    _ => Kind::Tsvault,
                };
                let mut args = serve_args.to_vec();
                if start == Start::TsvaultVerifyAll {
                    args.push("--quarantine-corrupt".into());
                }
                let t = time_start(kind, &dir_of(kind), &wl, tsvault_bin, &args, cold)?;
                say!(
                    "{:?} start (round {} of {rounds_n}): ready {:.3} s, first query {:.3} s{}",
                    start,
                    round + 1,
                    t.ready_s,
                    t.first_query_s,
                    t.verified_s
                        .map(|v| format!(", every segment verified {v:.3} s"))
                        .unwrap_or_default()
                );
                timed[i].push(t);
            }
        }
        let med =
            |i: usize, f: &dyn Fn(&Timed) -> f64| rounds::median(timed[i].iter().map(f).collect());
        let what = format!(
            "{series} series, {:.2} GB (tsvault) / {:.2} GB (VictoriaMetrics) on disk",
            stored[0] as f64 / 1e9,
            stored[1] as f64 / 1e9
        );
        rows.push(
            Row::new(format!("start-up until ready: {what}"), "s", Better::Lower)
                .with_resolution(0.005)
                .set(0, med(0, &|t| t.ready_s))
                .set(1, med(1, &|t| t.ready_s)),
        );
        rows.push(
            Row::new(
                format!("start-up until a first query is answered: {what}"),
                "s",
                Better::Lower,
            )
            .with_resolution(0.005)
            .set(0, med(0, &|t| t.first_query_s))
            .set(1, med(1, &|t| t.first_query_s)),
        );
        notes.push(format!(
            "{what}: tsvault's background verification of every segment ended {:.2} s after the spawn (median); started verifying every segment before it serves (`--quarantine-corrupt`, as every start did before), tsvault was ready after {:.2} s and answered the first query after {:.2} s.",
            med(0, &|t| t.verified_s.unwrap_or(f64::NAN)),
            med(2, &|t| t.ready_s),
            med(2, &|t| t.first_query_s)
        ));
        for kind in [Kind::Tsvault, Kind::Victoria] {
            std::fs::remove_dir_all(dir_of(kind))?;
        }
    }
    Ok((rows, notes))
}

/// Loads the whole of `wl` into a new `kind` in `dir`, merges it into its final form, checks
/// the last hour, and stops it.
fn load(
    kind: Kind,
    dir: &Path,
    wl: &Workload,
    clients: usize,
    tsvault_bin: &Path,
    serve_args: &[String],
) -> anyhow::Result<()> {
    let sys = Running::start(kind, dir, tsvault_bin, serve_args)?;
    let pb = bar(wl.lines(), &format!("loading {}", kind.name()));
    wl.load_main(&sys.write_url(), clients, &pb)?;
    pb.finish_and_clear();
    sys.wait_searchable()?;
    sys.settle()?;
    check_last_hour(&sys, wl)?;
    sys.stop_gracefully()
}

/// The last hour's samples, all there.
fn check_last_hour(sys: &Running, wl: &Workload) -> anyhow::Result<()> {
    let from = (wl.end_ms() - 3_600_000).max(workload::START_MS);
    let want = wl.samples_in(from, wl.end_ms());
    let got = sys.count_samples(from, wl.end_ms())?;
    ensure!(
        got == want,
        "{} holds {got} of the {want} samples of the last hour",
        sys.kind.name()
    );
    Ok(())
}

/// Starts `kind` on `dir` (dropping the page cache first when `cold`), times it until ready
/// and until the first query is answered (tsvault: and until every segment is verified), and
/// stops it.
fn time_start(
    kind: Kind,
    dir: &Path,
    wl: &Workload,
    tsvault_bin: &Path,
    args: &[String],
    cold: bool,
) -> anyhow::Result<Timed> {
    rounds::write_back()?;
    if cold {
        ensure!(
            drop_caches(),
            "the page cache could not be dropped any more"
        );
    }
    let t0 = Instant::now();
    let sys = Running::start(kind, dir, tsvault_bin, args)?;
    let ready_s = t0.elapsed().as_secs_f64();
    check_last_hour(&sys, wl)?;
    let first_query_s = t0.elapsed().as_secs_f64();
    let verified_s = if kind == Kind::Tsvault {
        Some(wait_verified(&sys)?.duration_since(t0).as_secs_f64())
    } else {
        None
    };
    sys.stop_gracefully()?;
    Ok(Timed {
        ready_s,
        first_query_s,
        verified_s,
    })
}

/// Polls tsvault's `/metrics` every 10 ms until no segment is left unverified; returns when.
fn wait_verified(sys: &Running) -> anyhow::Result<Instant> {
    let agent = http::agent();
    let t = Instant::now();
    loop {
        let m = http::get(&agent, &format!("{}/metrics", sys.base), &[])?;
        let left = m
            .lines()
            .find(|l| l.starts_with("tsvault_segments_unverified"))
            .and_then(|l| l.split_whitespace().last())
            .context("tsvault's /metrics has no tsvault_segments_unverified")?;
        if left == "0" {
            return Ok(Instant::now());
        }
        ensure!(
            t.elapsed() < Duration::from_secs(1800),
            "tsvault still has {left} segments unverified after 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Drops the page cache (root only); whether it could.
fn drop_caches() -> bool {
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}
