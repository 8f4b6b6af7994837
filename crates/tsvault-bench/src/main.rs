//! `tsvault-bench`: tsvault side by side with VictoriaMetrics and InfluxDB (and restic for
//! backups) on a TSBS cpu-only workload, in one run on one machine. It starts each system on
//! loopback with a temporary directory, loads the same line-protocol bytes with the same
//! client, settles each, measures disk and memory, runs the TSBS query types in each system's
//! own language and checks that the answers agree, backs up and restores with each system's
//! tools, and prints one table with tsvault's ratio to the best peer. It asserts correctness
//! (answers agree, every sample arrives, restores hold every sample); it never asserts speed.
//!
//! Entry point: `bench/run` (installs the peers, builds, runs this); see BENCHMARKS.md.

mod backup;
mod http;
mod null_sink;
mod queries;
mod report;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use serde_json::json;

use queries::{Params, QueryType};
use report::{Better, Row};
use systems::{Kind, Running, dir_bytes, load};
use workload::{Shape, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// TSBS-faithful integer values.
    Int,
    /// Realistic gauges: floats with two decimals.
    Float,
    /// Both, one after the other.
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    VictoriaMetrics,
    Influxdb,
}

#[derive(Parser)]
#[command(
    about = "tsvault vs VictoriaMetrics, InfluxDB and restic on a TSBS cpu-only workload",
    long_about = "Starts tsvault, VictoriaMetrics and InfluxDB on loopback (each with a temporary \
directory), loads the same TSBS cpu-only line protocol into each with the same client, settles \
them, measures bytes on disk, peak memory and the TSBS query types (checking that all answer \
the same numbers), backs up and restores with vmbackup/vmrestore and restic, and prints one \
table with tsvault's ratio to the best peer. The peers come from Debian's packages \
victoria-metrics, influxdb and restic (bench/run installs them)."
)]
struct Args {
    /// Number of hosts (each writes 10 fields every interval).
    #[arg(long, default_value_t = 100)]
    hosts: usize,
    /// Hours of data.
    #[arg(long, default_value_t = 12)]
    hours: i64,
    /// 1000 hosts x 24 h (overrides --hosts and --hours).
    #[arg(long, conflicts_with = "smoke")]
    large: bool,
    /// A run of seconds that checks the harness and the answers: 8 hosts x 2 h, 3 runs per
    /// query type, 2 backup rounds.
    #[arg(long)]
    smoke: bool,
    /// Which values to generate.
    #[arg(long, value_enum, default_value_t = Variant::Both)]
    variant: Variant,
    /// Seconds between samples of a host.
    #[arg(long, default_value_t = 10)]
    interval_s: i64,
    /// Concurrent HTTP clients, the same for every system.
    #[arg(long, default_value_t = 2)]
    clients: usize,
    /// Lines per HTTP request.
    #[arg(long, default_value_t = 5000)]
    batch_lines: usize,
    /// Runs per query type and system.
    #[arg(long, default_value_t = 50)]
    query_runs: usize,
    /// Skip the backup and restore figures.
    #[arg(long)]
    no_backup: bool,
    /// Only the backup and restore figures, for stores larger than the full run can hold
    /// in memory (e.g. `--hosts 500 --hours 720`): the line protocol is generated while it is
    /// sent (the same bytes to each system), into tsvault and VictoriaMetrics only, and no
    /// query is timed.
    #[arg(long, conflicts_with = "no_backup")]
    backups_only: bool,
    /// Rounds of full backups and of restores, each round's commands started from the next
    /// one in turn, each into a new destination; the figure is the median (the machine is
    /// shared and noisy, and a command run right after another's heavy work pays for it).
    #[arg(long, default_value_t = 3)]
    backup_rounds: usize,
    /// Which peers to run beside tsvault (for profiling one comparison; the published table
    /// runs both).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "victoria-metrics,influxdb"
    )]
    peers: Vec<Peer>,
    /// The tsvault binary (default: `tsvault` next to this binary).
    #[arg(long)]
    tsvault_bin: Option<PathBuf>,
    /// Extra flags for `tsvault serve`, e.g. "--fsync interval".
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    serve_args: String,
    /// Where the markdown table is written.
    #[arg(long, default_value = "target/bench/results.md")]
    out: PathBuf,
    /// Print the results as JSON on stdout (progress and tables go to stderr).
    #[arg(long)]
    json: bool,
    /// Parent of the temporary directories (default: the system's temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

/// A message on stderr, so that stdout stays clean for `--json`.
macro_rules! say {
    ($($t:tt)*) => { eprintln!($($t)*) };
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.large {
        (args.hosts, args.hours) = (1000, 24);
    }
    if args.smoke {
        (args.hosts, args.hours, args.query_runs, args.batch_lines) = (8, 2, 3, 1000);
        args.backup_rounds = 2;
    }
    ensure!(
        args.hosts >= 1 && args.hours >= 1,
        "--hosts and --hours must be at least 1"
    );
    ensure!(
        args.clients >= 1 && args.batch_lines >= 1 && args.query_runs >= 1,
        "--clients, --batch-lines and --query-runs must be at least 1"
    );
    ensure!(
        args.backup_rounds >= 1,
        "--backup-rounds must be at least 1"
    );
    ensure!(
        !args.backups_only || args.peers.contains(&Peer::VictoriaMetrics),
        "--backups-only compares with vmbackup: --peers must name victoria-metrics"
    );
    let tsvault_bin = match &args.tsvault_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("tsvault"),
    };
    ensure!(
        tsvault_bin.exists(),
        "{} not found: build it with `cargo build --release -p tsvault` (bench/run does)",
        tsvault_bin.display()
    );
    check_peers()?;
    let versions = versions(&tsvault_bin);
    for (name, v) in &versions {
        say!("{name}: {v}");
    }

    let variants: &[bool] = match args.variant {
        Variant::Int => &[false],
        Variant::Float => &[true],
        Variant::Both => &[false, true],
    };
    let mut md = format!(
        "Command: `{}`\n\nVersions: {}\n\n",
        std::env::args().collect::<Vec<_>>().join(" "),
        versions
            .iter()
            .map(|(n, v)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut json_out = Vec::new();
    for &float_values in variants {
        let shape = Shape {
            hosts: args.hosts,
            hours: args.hours,
            interval_s: args.interval_s,
            float_values,
            batch_lines: args.batch_lines,
        };
        let (title, rows, notes) = run_variant(&args, shape, &tsvault_bin)?;
        let table = report::markdown(&rows);
        say!("\n## {title}\n\n{table}\n{}", notes.join("\n"));
        md.push_str(&format!(
            "## {title}\n\n{table}\n{}\n\n",
            notes.join("\n\n")
        ));
        json_out.push(
            json!({"variant": if float_values { "float" } else { "int" }, "title": title,
            "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(), "notes": notes}),
        );
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    say!("table written to {}", args.out.display());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"versions": versions.iter().map(|(n, v)| json!({"system": n, "version": v})).collect::<Vec<_>>(), "variants": json_out})
            )?
        );
    }
    Ok(())
}

/// Refuses to run without the peers, naming the package that provides each.
fn check_peers() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (bin, pkg) in [
        ("victoria-metrics", "victoria-metrics"),
        ("vmbackup", "victoria-metrics"),
        ("vmrestore", "victoria-metrics"),
        ("influxd", "influxdb"),
        ("restic", "restic"),
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
            .unwrap_or(false);
        if !found {
            missing.push(format!("{bin} (Debian package {pkg})"));
        }
    }
    if !missing.is_empty() {
        bail!(
            "missing peers: {}; run bench/run, which installs them, or `apt-get install victoria-metrics influxdb restic`",
            missing.join(", ")
        );
    }
    Ok(())
}

/// The version of each system: tsvault's own, the peers' Debian package versions (their
/// binaries in Debian do not report a version).
fn versions(tsvault_bin: &Path) -> Vec<(String, String)> {
    let run = |cmd: &mut std::process::Command| {
        cmd.output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    };
    let own = run(std::process::Command::new(tsvault_bin).arg("--version"));
    let mut out = vec![(
        "tsvault".to_string(),
        own.strip_prefix("tsvault ").unwrap_or(&own).to_string(),
    )];
    for pkg in ["victoria-metrics", "influxdb", "restic"] {
        out.push((
            pkg.to_string(),
            run(std::process::Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg])),
        ));
    }
    out
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{msg:>28} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

/// One variant, end to end. Returns its title, rows and notes.
fn run_variant(
    args: &Args,
    shape: Shape,
    tsvault_bin: &Path,
) -> anyhow::Result<(String, Vec<Row>, Vec<String>)> {
    let t_gen = Instant::now();
    let wl = if args.backups_only {
        Workload::streamed(shape)
    } else {
        Workload::generate(shape)
    };
    let n = wl.samples();
    let title = format!(
        "{} values: {} hosts x {} h at {} s = {} samples{}",
        if shape.float_values {
            "Float (two decimals)"
        } else {
            "Integer (TSBS)"
        },
        shape.hosts,
        shape.hours,
        shape.interval_s,
        n,
        match wl.bytes() {
            Some(b) => format!(" ({:.1} MiB of line protocol)", b as f64 / 1048576.0),
            None => ", backups only".into(),
        }
    );
    say!(
        "\n{title}: generated in {:.1} s",
        t_gen.elapsed().as_secs_f64()
    );
    let root = match &args.work_dir {
        Some(d) => tempfile::tempdir_in(d)?,
        None => tempfile::tempdir()?,
    };
    let serve_args: Vec<String> = args
        .serve_args
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let mut notes = Vec::new();

    // The client's own ceiling (not measured for a streamed load: it would generate the
    // data once more).
    let null_rate = if args.backups_only {
        None
    } else {
        let sink = null_sink::NullSink::start()?;
        let (null_time, _) = wl.load_main(&sink.url, args.clients, &ProgressBar::hidden())?;
        drop(sink);
        let rate = n as f64 / null_time.as_secs_f64();
        say!("client into a null endpoint: {rate:.0} samples/s");
        Some(rate)
    };

    // Load, settle and measure each system in turn (the others idle and settled).
    let mut ingest_ack = Row::new(
        "ingest, every write acknowledged",
        "samples/s",
        Better::Higher,
    );
    let mut ingest_vis = Row::new(
        "ingest, every write acknowledged and queryable",
        "samples/s",
        Better::Higher,
    );
    let mut rss = Row::new("peak resident memory during ingest", "MiB", Better::Lower);
    let mut settle = Row::new(
        "time to settle after ingest (flush, compaction)",
        "s",
        Better::Lower,
    );
    let mut disk = Row::new(
        "bytes on disk per sample, settled",
        "bytes/sample",
        Better::Lower,
    );
    let mut running = Vec::new();
    let kinds = Kind::ALL.into_iter().enumerate().filter(|(_, k)| match k {
        Kind::Tsvault => true,
        Kind::Victoria => args.peers.contains(&Peer::VictoriaMetrics),
        Kind::Influx => !args.backups_only && args.peers.contains(&Peer::Influxdb),
    });
    for (col, kind) in kinds {
        let sys = Running::start(
            kind,
            &root.path().join(kind.name()),
            tsvault_bin,
            &serve_args,
        )?;
        let pb = bar(wl.lines(), &format!("loading {}", kind.name()));
        let t0 = Instant::now();
        let (_, sent) = wl.load_main(&sys.write_url(), args.clients, &pb)?;
        let acked = t0.elapsed();
        pb.finish_and_clear();
        // Queryable: once the system says so, checked by counting every sample; should the
        // count fall short, the start of the first count query that sees every sample.
        sys.wait_searchable()?;
        let visible = loop {
            let t = t0.elapsed();
            let got = sys.count_samples(workload::START_MS, wl.end_ms())?;
            if got == n {
                break t;
            }
            ensure!(
                got < n,
                "{} holds {got} samples, more than the {n} written",
                kind.name()
            );
            ensure!(
                t0.elapsed() < acked + Duration::from_secs(300),
                "{} shows {got} of {n} samples 5 minutes after the last acknowledgement",
                kind.name()
            );
            std::thread::sleep(Duration::from_millis(10));
        };
        let peak = sys.peak_rss_kib() as f64 / 1024.0;
        let settle_time = sys.settle()?;
        let bytes = dir_bytes(&sys.data_dir)?;
        ensure!(
            sys.count_samples(workload::START_MS, wl.end_ms())? == n,
            "{} lost samples while settling",
            kind.name()
        );
        say!(
            "{}: {:.1} MiB of line protocol acked in {:.2} s, queryable at {:.2} s ({:.0} samples/s), peak RSS {peak:.1} MiB, settled in {:.1} s, {bytes} bytes on disk ({:.3} bytes/sample)",
            kind.name(),
            sent as f64 / 1048576.0,
            acked.as_secs_f64(),
            visible.as_secs_f64(),
            n as f64 / visible.as_secs_f64(),
            settle_time.as_secs_f64(),
            bytes as f64 / n as f64
        );
        ingest_ack = ingest_ack.set(col, n as f64 / acked.as_secs_f64());
        ingest_vis = ingest_vis.set(col, n as f64 / visible.as_secs_f64());
        rss = rss.set(col, peak);
        settle = settle.set(col, settle_time.as_secs_f64());
        disk = disk.set(col, bytes as f64 / n as f64);
        running.push(sys);
    }
    let fastest = [&ingest_vis, &ingest_ack]
        .iter()
        .flat_map(|r| r.cells.iter())
        .filter_map(|c| match c {
            report::Cell::Num(v) => Some(*v),
            _ => None,
        })
        .fold(0.0, f64::max);
    let mut rows = match null_rate {
        Some(null_rate) => {
            notes.push(format!(
                "Client ceiling: the same client pushes {} samples/s into a null endpoint, {:.1}x the fastest system's rate{}.",
                null_rate.round(),
                null_rate / fastest,
                if null_rate >= 2.0 * fastest { "" } else { " (less than 2x: the client may limit these figures)" }
            ));
            vec![ingest_ack, ingest_vis, rss, settle, disk]
        }
        // A streamed load is generated by a thread of the same machine while it is sent:
        // its rates are not comparable with the full run's (they are printed above).
        None => vec![rss, settle, disk],
    };
    if !args.backups_only {
        queries(args, &wl, &running, &mut rows, &mut notes)?;
    }
    // Backups compare with vmbackup and with restic (over tsvault's files): VictoriaMetrics
    // must run; InfluxDB need not.
    if !args.no_backup && running.iter().any(|s| s.kind == Kind::Victoria) {
        // Before the CLI's backups, which add 1% more data to the running servers.
        rows.extend(server_backups(
            &wl,
            &running,
            root.path(),
            args.clients,
            args.backup_rounds,
            tsvault_bin,
            &mut notes,
        )?);
        rows.extend(backups(
            &wl,
            &running,
            root.path(),
            args.clients,
            args.backup_rounds,
            tsvault_bin,
            &mut notes,
        )?);
    }
    for sys in running {
        sys.stop();
    }
    Ok((title, rows, notes))
}

/// Each TSBS query type on each running system, the same random instances for every
/// system, every answer compared with tsvault's: a p50 and a p99 row per type.
fn queries(
    args: &Args,
    wl: &Workload,
    running: &[Running],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut compared = 0;
    let mut points_compared = 0;
    for (qi, qt) in QueryType::ALL.into_iter().enumerate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + qi as u64);
        let params: Vec<Params> = (0..args.query_runs)
            .map(|_| Params::random(qt, &mut rng, wl))
            .collect();
        let mut p50 = Row::new(format!("{} p50", qt.name()), "ms", Better::Lower);
        let mut p99 = Row::new(format!("{} p99", qt.name()), "ms", Better::Lower);
        let mut answers: Vec<Vec<queries::Answer>> = Vec::new();
        for sys in running {
            let col = Kind::ALL
                .iter()
                .position(|k| *k == sys.kind)
                .expect("a known system");
            let agent = http::agent();
            let pb = bar(
                params.len() as u64,
                &format!("{} on {}", qt.name(), sys.kind.name()),
            );
            let mut lat = Vec::with_capacity(params.len());
            let mut texts = Vec::with_capacity(params.len());
            for p in &params {
                let req = queries::request(sys.kind, p);
                let t = Instant::now();
                let text = match &req {
                    queries::Request::Get { path, params } => {
                        http::get(&agent, &format!("{}{path}", sys.base), params)
                    }
                    queries::Request::Post { path, body } => http::post(
                        &agent,
                        &format!("{}{path}", sys.base),
                        "application/json",
                        body.as_bytes(),
                    ),
                }
                .with_context(|| format!("{} on {}", qt.name(), sys.kind.name()))?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                texts.push(text);
                pb.inc(1);
            }
            pb.finish_and_clear();
            let parsed = params
                .iter()
                .zip(&texts)
                .map(|(p, t)| {
                    queries::parse(sys.kind, p, t).with_context(|| {
                        format!(
                            "{} answer of {} to {p:?}: {}",
                            qt.name(),
                            sys.kind.name(),
                            t.chars().take(500).collect::<String>()
                        )
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            answers.push(parsed);
            lat.sort_by(f64::total_cmp);
            let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize];
            say!(
                "{:<22} {:<16} p50 {:>9.2} ms  p99 {:>9.2} ms",
                qt.name(),
                sys.kind.name(),
                pct(0.5),
                pct(0.99)
            );
            p50 = p50.set(col, pct(0.5));
            p99 = p99.set(col, pct(0.99));
        }
        let points: usize = answers[0].iter().map(|a| a.len()).sum();
        ensure!(
            points > 0,
            "{}: every answer is empty, nothing was compared",
            qt.name()
        );
        points_compared += points;
        for (i, p) in params.iter().enumerate() {
            for (col, other) in answers.iter().enumerate().skip(1) {
                queries::compare(&answers[0][i], &other[i]).map_err(|e| {
                    anyhow::anyhow!(
                        "{} answers differ between tsvault and {} for {p:?}: {e}",
                        qt.name(),
                        running[col].kind.name()
                    )
                })?;
            }
            compared += 1;
        }
        rows.push(p50);
        rows.push(p99);
    }
    notes.push(format!(
        "Answers: all {compared} query instances ({} per type) answered the same numbers on {} ({points_compared} data points compared with each peer).",
        args.query_runs,
        running
            .iter()
            .map(|s| s.kind.name())
            .collect::<Vec<_>>()
            .join(", ")
    ));

    Ok(())
}

/// The median of `times` (the mean of the middle two for an even count).
fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    let n = times.len();
    (times[(n - 1) / 2] + times[n / 2]) / 2.0
}

/// Round `round`'s destinations under `root`: `names`, numbered.
fn numbered<const N: usize>(root: &Path, names: [&str; N], round: usize) -> [PathBuf; N] {
    names.map(|name| root.join(format!("{name}-{round}")))
}

/// Round `round`'s destinations, the round before's removed (timed, no longer needed).
fn next_round<const N: usize>(
    root: &Path,
    names: [&str; N],
    round: usize,
) -> anyhow::Result<[PathBuf; N]> {
    if let Some(before) = round.checked_sub(1) {
        for d in numbered(root, names, before) {
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("removing {}", d.display()))?;
            }
        }
    }
    Ok(numbered(root, names, round))
}

/// The tools that back up into (or restore from) a round's destinations: tsvault encrypted,
/// tsvault unencrypted, tsvault unencrypted pulling over HTTP, restic (vmbackup's is a
/// plain path).
fn tools<'a>(
    tsvault_bin: &'a Path,
    [tsv_repo, tsv_plain_repo, tsv_http_repo, _, restic_repo]: &'a [PathBuf; 5],
    restic_cache: &'a Path,
) -> ([backup::Tsvault<'a>; 3], backup::Restic<'a>) {
    let tsvault = |repo| backup::Tsvault {
        bin: tsvault_bin,
        repo,
    };
    (
        [
            tsvault(tsv_repo),
            tsvault(tsv_plain_repo),
            tsvault(tsv_http_repo),
        ],
        backup::Restic {
            repo: restic_repo,
            cache: restic_cache,
        },
    )
}

/// A timed command of a round.
type Timed<'a> = Box<dyn FnMut() -> anyhow::Result<std::time::Duration> + 'a>;

/// Runs a round's timed commands, starting with the `round`-th (mod N) so that none is
/// always first or always after the same other (a command can pay for what the one before
/// it left behind, such as pages to write back), adds each time to its list in `times`,
/// and prints them.
fn timed_round<const N: usize>(
    round: usize,
    names: [&str; N],
    mut steps: [Timed<'_>; N],
    times: &mut [Vec<f64>; N],
) -> anyhow::Result<()> {
    let mut took = Vec::new();
    for k in 0..N {
        let i = (round + k) % N;
        let t = steps[i]()?.as_secs_f64();
        times[i].push(t);
        took.push(format!("{} {t:.3} s", names[i]));
    }
    say!("  in this order: {}", took.join(", "));
    Ok(())
}

/// The running system of `kind`.
fn system(running: &[Running], kind: Kind) -> anyhow::Result<&Running> {
    running
        .iter()
        .find(|s| s.kind == kind)
        .with_context(|| format!("{} is not running", kind.name()))
}

/// Backups tsvault takes itself (`serve --backup-repo`, `POST /api/admin/backups`), into an
/// encrypted and an unencrypted repository: on copies of the running tsvault's data (taken
/// through a snapshot), a server started on each with its repository, the full timed in
/// `rounds` rounds (each into a new repository, the server restarted), then 1% more data
/// written to it and the incremental timed. The request is timed, not the server's start
/// (the repository is opened, its key derived, when the server starts).
fn server_backups(
    wl: &Workload,
    running: &[Running],
    root: &Path,
    clients: usize,
    rounds: usize,
    tsvault_bin: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let tsv = system(running, Kind::Tsvault)?;
    say!("backups taken by the server: copying tsvault's data through a snapshot");
    let agent = http::agent();
    let snap: serde_json::Value = serde_json::from_str(&http::post(
        &agent,
        &format!("{}/api/admin/snapshots", tsv.base),
        "application/json",
        b"",
    )?)?;
    let sid = snap["id"].as_str().context("a snapshot id")?;
    let modes = [("encrypted", true), ("unencrypted", false)];
    let dirs = modes.map(|(name, _)| root.join(format!("tsvault-self-{name}")));
    for dir in &dirs {
        backup::timed(
            std::process::Command::new("cp")
                .arg("-r")
                .arg(tsv.data_dir.join("snapshots").join(sid))
                .arg(dir),
        )?;
    }
    let released = agent
        .delete(format!("{}/api/admin/snapshots/{sid}", tsv.base))
        .call()?;
    ensure!(
        released.status().is_success(),
        "releasing snapshot {sid}: {}",
        released.status()
    );
    let password = root.join("tsvault-self-password");
    std::fs::write(&password, "tsvault-bench\n")?;
    let repo_of = |mode: usize, round: usize| {
        root.join(format!("tsvault-self-{}-repo-{round}", modes[mode].0))
    };
    // Starts the server of `mode` backing up into `repo`, once its repository is open.
    let start = |mode: usize, repo: &Path| -> anyhow::Result<Running> {
        let args = [
            "--backup-repo".to_string(),
            repo.display().to_string(),
            "--backup-password-file".to_string(),
            password.display().to_string(),
        ];
        let sys = Running::start(Kind::Tsvault, &dirs[mode], tsvault_bin, &args)?;
        let t = Instant::now();
        loop {
            let status: serde_json::Value = serde_json::from_str(&http::get(
                &agent,
                &format!("{}/api/admin/backups", sys.base),
                &[],
            )?)?;
            if status["open"] == true {
                return Ok(sys);
            }
            ensure!(
                t.elapsed() < Duration::from_secs(60),
                "the tsvault server did not open repository {} in 60 s: {status}",
                repo.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // A backup the server at `base` takes on request, its type checked; how long it took.
    let take = |base: &str, query: &str, kind: &str| -> anyhow::Result<f64> {
        let t = Instant::now();
        let answer = http::post(
            &agent,
            &format!("{base}/api/admin/backups{query}"),
            "application/json",
            b"",
        )?;
        let took = t.elapsed().as_secs_f64();
        let m: serde_json::Value = serde_json::from_str(&answer)?;
        ensure!(m["type"] == kind, "asked for a {kind} backup, got {m}");
        Ok(took)
    };
    let mut fulls: [Vec<f64>; 2] = Default::default();
    for round in 0..rounds {
        let mut took = Vec::new();
        for i in 0..2 {
            // The mode that went first goes second in the next round.
            let mode = (i + round) % 2;
            if let Some(before) = round.checked_sub(1) {
                std::fs::remove_dir_all(repo_of(mode, before))?;
            }
            let repo = repo_of(mode, round);
            backup::Tsvault {
                bin: tsvault_bin,
                repo: &repo,
            }
            .init(modes[mode].1)?;
            let sys = start(mode, &repo)?;
            let t = take(&sys.base, "?type=full", "full")?;
            sys.stop();
            fulls[mode].push(t);
            took.push(format!("{} {t:.3} s", modes[mode].0));
        }
        say!(
            "  full backups taken by the server, round {} of {rounds}: {}",
            round + 1,
            took.join(", ")
        );
    }
    say!("backups taken by the server: 1% more data, written to disk, then incremental");
    let mut incrs = [0.0; 2];
    for (mode, incr) in incrs.iter_mut().enumerate() {
        let sys = start(mode, &repo_of(mode, rounds - 1))?;
        load(&sys.write_url(), &wl.extra, clients, &ProgressBar::hidden())?;
        sys.settle_with(false)?;
        *incr = take(&sys.base, "", "incremental")?;
        sys.stop();
    }
    let full = fulls.map(median);
    let mut rows = Vec::new();
    for (mode, (name, _)) in modes.iter().enumerate() {
        rows.push(
            Row::new(
                format!("full backup taken by the server, {name}"),
                "s",
                Better::Lower,
            )
            .set(0, full[mode]),
        );
    }
    for (mode, (name, _)) in modes.iter().enumerate() {
        rows.push(
            Row::new(
                format!("incremental after 1% more data, taken by the server, {name}"),
                "s",
                Better::Lower,
            )
            .set(0, incrs[mode]),
        );
    }
    notes.push(format!(
        "Backups taken by the server itself (issue 4's incremental target): `tsvault serve --backup-repo R` and `POST /api/admin/backups` (the repository opened, its key derived, when the server starts; the snapshot taken in the process, its files read in the data directory), on copies of tsvault's data, a server started on each with its repository; fulls in {rounds} rounds, each into a new repository (median), then 1% more data and the incremental. Incremental after 1% more data: {:.3} (encrypted) and {:.3} (unencrypted) of the full's time (target at most 1/20 = 0.05).",
        incrs[0] / full[0],
        incrs[1] / full[1],
    ));
    Ok(rows)
}

/// Full backup, incremental after 1% more data, and full restore, for each system's tool.
/// Fulls and restores are timed in `rounds` rounds (median); the incremental follows the
/// last round's fulls. Restores are checked: each restored copy of the last round is
/// started and must hold every sample.
fn backups(
    wl: &Workload,
    running: &[Running],
    root: &Path,
    clients: usize,
    rounds: usize,
    tsvault_bin: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let tsv_server = system(running, Kind::Tsvault)?;
    let vm = system(running, Kind::Victoria)?;
    // tsvault twice: into an encrypted repository (compared with restic, which always
    // encrypts) and an unencrypted one (compared with vmbackup, which does not).
    let mut full = Row::new("full backup, encrypted (vs restic)", "s", Better::Lower);
    let mut full_plain = Row::new("full backup, unencrypted (vs vmbackup)", "s", Better::Lower);
    // The same, with the files pulled over HTTP (the backup host need not be the server's).
    let mut full_http = Row::new(
        "full backup, unencrypted, files over HTTP",
        "s",
        Better::Lower,
    );
    let mut incr = Row::new(
        "incremental after 1% more data, encrypted",
        "s",
        Better::Lower,
    );
    let mut incr_plain = Row::new(
        "incremental after 1% more data, unencrypted",
        "s",
        Better::Lower,
    );
    let mut incr_http = Row::new(
        "incremental after 1% more data, unencrypted, files over HTTP",
        "s",
        Better::Lower,
    );
    let mut restore = Row::new("full restore, encrypted (vs restic)", "s", Better::Lower);
    let mut restore_plain = Row::new(
        "full restore, unencrypted (vs vmrestore)",
        "s",
        Better::Lower,
    );
    let mut size = Row::new("backup size per sample", "bytes/sample", Better::Lower);

    let repos = [
        "tsvault-repo",
        "tsvault-plain",
        "tsvault-http",
        "vmbackup",
        "restic-repo",
    ];
    let restic_cache = root.join("restic-cache");
    // tsvault reads the snapshot's files in the server's data directory, as vmbackup reads
    // VictoriaMetrics' (both run on the server's machine); once more over HTTP.
    let (base, data_dir) = (
        tsv_server.base.as_str(),
        Some(tsv_server.data_dir.as_path()),
    );
    // Times of tsvault encrypted, unencrypted, unencrypted over HTTP, vmbackup, restic.
    let mut times: [Vec<f64>; 5] = Default::default();
    for round in 0..rounds {
        say!(
            "backups: full, round {} of {rounds}: tsvault encrypted and unencrypted (online, through the server's snapshot API; files read in its data directory, and unencrypted once more over HTTP), vmbackup, restic",
            round + 1
        );
        let dirs = next_round(root, repos, round)?;
        let ([tsv, tsv_plain, tsv_http], restic) = tools(tsvault_bin, &dirs, &restic_cache);
        tsv.init(true)?;
        tsv_plain.init(false)?;
        tsv_http.init(false)?;
        restic.init()?;
        // restic backs up the same files: tsvault's data directory (the server is idle, its
        // segments immutable; restic's second run finds its first as parent and reads only
        // changed files).
        timed_round(
            round,
            [
                "tsvault encrypted",
                "tsvault unencrypted",
                "tsvault unencrypted over HTTP",
                "vmbackup",
                "restic",
            ],
            [
                Box::new(|| tsv.backup(base, data_dir)),
                Box::new(|| tsv_plain.backup(base, data_dir)),
                Box::new(|| tsv_http.backup(base, None)),
                Box::new(|| backup::vmbackup(&vm.base, &vm.data_dir, &dirs[3])),
                Box::new(|| restic.backup(&tsv_server.data_dir)),
            ],
            &mut times,
        )?;
    }
    let [t_enc, t_plain, t_http, t_vm, t_restic] = times;
    let vm_full = median(t_vm);
    full = full.set(0, median(t_enc)).set(3, median(t_restic));
    full_plain = full_plain.set(0, median(t_plain)).set(1, vm_full);
    full_http = full_http.set(0, median(t_http)).set(1, vm_full);
    let dirs = numbered(root, repos, rounds - 1);
    let ([tsv, tsv_plain, tsv_http], restic) = tools(tsvault_bin, &dirs, &restic_cache);
    let [tsv_repo, _, _, vm_dst, _] = &dirs;

    say!("backups: 1% more data, written to disk (no forced merge), then incremental");
    let total = wl.samples() + wl.extra_samples();
    for sys in running {
        load(&sys.write_url(), &wl.extra, clients, &ProgressBar::hidden())?;
        sys.settle_with(false)?;
        let got = sys.count_samples(workload::START_MS, wl.extra_end_ms())?;
        ensure!(
            got == total,
            "{} holds {got} of {total} samples after the extra load",
            sys.kind.name()
        );
    }
    incr = incr.set(0, tsv.backup(base, data_dir)?.as_secs_f64());
    incr_plain = incr_plain.set(0, tsv_plain.backup(base, data_dir)?.as_secs_f64());
    incr_http = incr_http.set(0, tsv_http.backup(base, None)?.as_secs_f64());
    let vm_incr = backup::vmbackup(&vm.base, &vm.data_dir, vm_dst)?.as_secs_f64();
    incr_plain = incr_plain.set(1, vm_incr);
    incr_http = incr_http.set(1, vm_incr);
    size = size.set(0, dir_bytes(tsv_repo)? as f64 / total as f64);
    incr = incr.set(3, restic.backup(&tsv_server.data_dir)?.as_secs_f64());
    size = size.set(1, dir_bytes(vm_dst)? as f64 / total as f64);
    size = size.set(3, dir_bytes(restic.repo)? as f64 / total as f64);

    let restored = [
        "tsvault-restored",
        "tsvault-plain-restored",
        "vm-restored",
        "restic-restored",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    for round in 0..rounds {
        say!(
            "restores, round {} of {rounds}: tsvault encrypted and unencrypted, vmrestore, restic",
            round + 1
        );
        let [tsv_restored, tsv_plain_restored, vm_restored, restic_target] =
            next_round(root, restored, round)?;
        timed_round(
            round,
            [
                "tsvault encrypted",
                "tsvault unencrypted",
                "vmrestore",
                "restic",
            ],
            [
                Box::new(|| tsv.restore(&tsv_restored)),
                Box::new(|| tsv_plain.restore(&tsv_plain_restored)),
                Box::new(|| backup::vmrestore(vm_dst, &vm_restored)),
                Box::new(|| restic.restore(&restic_target)),
            ],
            &mut times,
        )?;
    }
    let [t_enc, t_plain, t_vm, t_restic] = times;
    restore = restore.set(0, median(t_enc)).set(3, median(t_restic));
    restore_plain = restore_plain.set(0, median(t_plain)).set(1, median(t_vm));

    say!("restores: each restored copy of the last round is started and counted");
    let [tsv_restored, tsv_plain_restored, vm_restored, restic_target] =
        numbered(root, restored, rounds - 1);
    let restic_restored = restic_target.join(
        tsv_server
            .data_dir
            .strip_prefix("/")
            .unwrap_or(&tsv_server.data_dir),
    );
    for (kind, dir) in [
        (Kind::Tsvault, tsv_restored),
        (Kind::Tsvault, tsv_plain_restored),
        (Kind::Victoria, vm_restored),
        (Kind::Tsvault, restic_restored),
    ] {
        let sys = Running::start(kind, &dir, tsvault_bin, &[])?;
        let got = sys.count_samples(workload::START_MS, wl.extra_end_ms())?;
        ensure!(
            got == total,
            "the restored {} holds {got} of {total} samples",
            kind.name()
        );
        sys.stop();
    }
    let num = |r: &Row, c: usize| match r.cells[c] {
        report::Cell::Num(v) => v,
        report::Cell::Empty => f64::NAN,
    };
    notes.push(format!(
        "Backup targets (issue 4): full backup {:.2}x restic's speed (encrypted; target 2x) and {:.2}x vmbackup's (unencrypted; target 1x; {:.2}x with the files over HTTP); tsvault's incremental after 1% more data took {:.3} (encrypted), {:.3} (unencrypted) and {:.3} (over HTTP) of its full backup's time (target at most 1/20 = 0.05); restore {:.2}x restic's speed (target 2x) and {:.2}x vmrestore's.",
        num(&full, 3) / num(&full, 0),
        num(&full_plain, 1) / num(&full_plain, 0),
        num(&full_http, 1) / num(&full_http, 0),
        num(&incr, 0) / num(&full, 0),
        num(&incr_plain, 0) / num(&full_plain, 0),
        num(&incr_http, 0) / num(&full_http, 0),
        num(&restore, 3) / num(&restore, 0),
        num(&restore_plain, 1) / num(&restore_plain, 0),
    ));
    notes.push(format!(
        "Backups: fulls and restores timed in {rounds} rounds, the commands of each round started from the next one in turn (each round printed as it ends), each round into new destinations, the median shown; the incrementals follow the last round's fulls. tsvault online with `tsvault backup create --server URL --server-data-dir DIR` (snapshot through its admin API, its files read in the server's data directory, as vmbackup reads VictoriaMetrics', into a local directory repository, once encrypted (each run derives the key with Argon2id) and once not; the incremental is the default type of the second run), once more unencrypted without `--server-data-dir` (files pulled over HTTP), and `tsvault restore --data-dir`; VictoriaMetrics with vmbackup/vmrestore (fs:// destination, snapshot through its API); restic over tsvault's own data directory, the same files (encrypted, its default compression; its second run is its incremental). Each restored copy was started and holds all {total} samples."
    ));
    Ok(vec![
        full,
        full_plain,
        full_http,
        incr,
        incr_plain,
        incr_http,
        restore,
        restore_plain,
        size,
    ])
}
