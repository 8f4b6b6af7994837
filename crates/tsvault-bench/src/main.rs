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
use systems::{Kind, Running, dir_size, load};
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
    /// Hours of data (the default week, 60 M samples at 100 hosts, is more than tsvault's
    /// in-memory head holds, so its flushes and segment encoding are measured).
    #[arg(long, default_value_t = 168)]
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
    /// Runs per query type and system (at least 1,000 for a p99; below, the tail figure is
    /// the maximum and called so).
    #[arg(long, default_value_t = 1000)]
    query_runs: usize,
    /// Rounds of loading each system (each into a new directory, the systems' order
    /// rotating; the ingest, memory and disk figures are the medians). Default: 3, or 1 with
    /// --smoke or --backups-only (whose loads take minutes each).
    #[arg(long)]
    load_rounds: Option<usize>,
    /// Skip the backup and restore figures.
    #[arg(long)]
    no_backup: bool,
    /// Only the backup and restore figures, for stores larger than the full run can hold
    /// in memory (e.g. `--hosts 500 --hours 720`): the line protocol is generated while it is
    /// sent (the same bytes to each system), into tsvault and VictoriaMetrics only, and no
    /// query is timed.
    #[arg(long, conflicts_with = "no_backup")]
    backups_only: bool,
    /// Rounds of full backups and of restores, each into new destinations; the figure is
    /// the median (the machine is shared and noisy). The commands' order in each round comes
    /// from a balanced Latin square, so that over its rounds every command takes every
    /// position and follows every other command equally often (a command run right after
    /// another's heavy work pays for it). Default: one whole square per phase (twice the
    /// commands' count when it is odd, else the count).
    #[arg(long)]
    backup_rounds: Option<usize>,
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
        args.backup_rounds = Some(2);
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
        args.backup_rounds != Some(0) && args.load_rounds != Some(0),
        "--backup-rounds and --load-rounds must be at least 1"
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
        "Command: `{}`\n\nVersions: {} (the peers are Debian's packages, the newest these machines can install: no newer VictoriaMetrics, InfluxDB or restic is packaged in Debian, PyPI or npm)\n\n",
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
        let table = report::markdown(
            &rows,
            &std::array::from_fn(|i| versions.get(i).map(|(_, v)| v.clone()).unwrap_or_default()),
        );
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
    let commit = run(std::process::Command::new("git").args(["rev-parse", "--short", "HEAD"]));
    let dirty = std::process::Command::new("git")
        .args(["diff", "--quiet", "HEAD"])
        .status()
        .is_ok_and(|s| !s.success());
    let mut out = vec![(
        "tsvault".to_string(),
        format!(
            "{} (commit {commit}{})",
            own.strip_prefix("tsvault ").unwrap_or(&own),
            if dirty {
                ", with uncommitted changes"
            } else {
                ""
            }
        ),
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
    let mut notes = vec![format!(
        "Data directories and repositories under {}, on {} (an fsync on tmpfs would cost nothing).",
        root.path().display(),
        systems::file_system_of(root.path())?
    )];

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

    // Load, settle and measure each system alone: the others stopped, the page cache's
    // dirty pages written back before it starts, so none pays for another's write-back or
    // shares the CPU with another's merges; in rounds, each into a new directory, the
    // systems' order rotating, every figure the median of the rounds.
    let kinds: Vec<(usize, Kind)> = Kind::ALL
        .into_iter()
        .enumerate()
        .filter(|(_, k)| match k {
            Kind::Tsvault => true,
            Kind::Victoria => args.peers.contains(&Peer::VictoriaMetrics),
            Kind::Influx => !args.backups_only && args.peers.contains(&Peer::Influxdb),
        })
        .collect();
    let load_rounds = args
        .load_rounds
        .unwrap_or(if args.backups_only || args.smoke {
            1
        } else {
            3
        });
    let dir_of = |kind: Kind, round: usize| root.path().join(format!("{}-{round}", kind.name()));
    let last_dir = |kind: Kind| dir_of(kind, load_rounds - 1);
    // Per system (in `kinds`' order), one measure per round.
    let mut loads: Vec<Vec<LoadMeasure>> = vec![Vec::new(); kinds.len()];
    let mut started_as = Vec::new();
    for round in 0..load_rounds {
        for ki in balanced_order(kinds.len(), round) {
            let kind = kinds[ki].1;
            write_back()?;
            let sys = Running::start(kind, &dir_of(kind, round), tsvault_bin, &serve_args)?;
            if round == 0 {
                started_as.push(format!("{}: `{}`", kind.name(), sys.started_as));
            }
            let m = load_one(&sys, &wl, args.clients)?;
            say!(
                "{} (load round {} of {load_rounds}): {:.1} MiB of line protocol acked in {:.2} s ({:.0} samples/s), the last hour queryable {:.3} s later, settled {:.2} s after the last acknowledgement ({:.0} samples/s from first write to settled), peak RssAnon {:.1} MiB, VmHWM {:.1} MiB, {} bytes allocated on disk after a forced merge ({:.3} bytes/sample; {} apparent)",
                kind.name(),
                round + 1,
                m.sent_bytes as f64 / 1048576.0,
                m.acked_s,
                n as f64 / m.acked_s,
                m.lag_s,
                m.settle_s,
                n as f64 / (m.acked_s + m.settle_s),
                m.memory.anon_mib,
                m.memory.hwm_mib,
                m.size.allocated,
                m.size.allocated as f64 / n as f64,
                m.size.apparent
            );
            sys.stop_gracefully()?;
            if round + 1 < load_rounds {
                std::fs::remove_dir_all(dir_of(kind, round))?;
            }
            loads[ki].push(m);
        }
    }
    notes.push(format!(
        "Systems as run, each with an environment of PATH alone: {}.",
        started_as.join("; ")
    ));
    let mut ingest_settled = Row::new(
        "ingest, from the first write to settled on disk",
        "samples/s",
        Better::Higher,
    );
    let mut ingest_ack = Row::new(
        "ingest, every write acknowledged",
        "samples/s",
        Better::Higher,
    );
    // Counted every 10 ms at best: no finer lag is told apart.
    let mut lag = Row::new(
        "visibility lag: last acknowledgement to the last hour queryable",
        "s",
        Better::Lower,
    )
    .with_resolution(0.01);
    // Polled every 100 ms.
    let mut settle = Row::new(
        "time to settle: last acknowledgement to the last change on disk",
        "s",
        Better::Lower,
    )
    .with_resolution(0.1);
    let mut anon = Row::new(
        "peak anonymous memory, ingest and settle (RssAnon)",
        "MiB",
        Better::Lower,
    );
    // Not a comparison: it counts the pages of files a system maps, and only the peers map.
    let mut hwm = Row::new(
        "peak resident memory, ingest and settle (VmHWM, mapped files included)",
        "MiB",
        Better::Lower,
    )
    .informational();
    let mut disk = Row::new(
        "bytes on disk per sample, merged (allocated blocks)",
        "bytes/sample",
        Better::Lower,
    );
    for ((col, _), ms) in kinds.iter().zip(&loads) {
        let col = *col;
        let med = |f: &dyn Fn(&LoadMeasure) -> f64| median(ms.iter().map(f).collect());
        ingest_settled = ingest_settled.set(col, med(&|m| n as f64 / (m.acked_s + m.settle_s)));
        ingest_ack = ingest_ack.set(col, med(&|m| n as f64 / m.acked_s));
        lag = lag.set(col, med(&|m| m.lag_s));
        settle = settle.set(col, med(&|m| m.settle_s));
        anon = anon.set(col, med(&|m| m.memory.anon_mib));
        hwm = hwm.set(col, med(&|m| m.memory.hwm_mib));
        disk = disk.set(col, med(&|m| m.size.allocated as f64 / n as f64));
    }
    // Every system started again on its last round's data, each must hold every sample:
    // what the queries and backups run against.
    write_back()?;
    let mut running = Vec::new();
    for &(_, kind) in &kinds {
        let sys = Running::start(kind, &last_dir(kind), tsvault_bin, &serve_args)?;
        sys.wait_searchable()?;
        let got = sys.count_samples(workload::START_MS, wl.end_ms())?;
        ensure!(
            got == n,
            "{} holds {got} of {n} samples after a restart",
            kind.name()
        );
        running.push(sys);
    }
    let fastest = ingest_ack
        .cells
        .iter()
        .filter_map(|c| match c {
            report::Cell::Num(v) => Some(*v),
            _ => None,
        })
        .fold(0.0, f64::max);
    notes.push(format!(
        "Ingest: each system loaded alone, the others stopped; {load_rounds} round(s), each into a new directory, the systems' order rotating; medians. tsvault acknowledges a write once it is in its fsynced WAL and holds it in its in-memory head until the head reaches 32 M samples: the acknowledged rate defers that encoding, the rate to settled counts it."
    ));
    let mut rows = vec![ingest_settled, ingest_ack, lag, settle, anon, hwm, disk];
    match null_rate {
        Some(null_rate) => notes.push(format!(
            "Client ceiling: the same client pushes {} samples/s into a null endpoint, {:.1}x the fastest system's rate{}.",
            null_rate.round(),
            null_rate / fastest,
            if null_rate >= 2.0 * fastest { "" } else { " (less than 2x: the client may limit these figures)" }
        )),
        // A streamed load is generated by a thread of the same machine while it is sent.
        None => notes.push(
            "The load was generated while it was sent (--backups-only), by a thread of the same machine: its rates compare the systems with each other, not with a run whose load is held in memory.".into(),
        ),
    }
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
            rounds_of(args.backup_rounds, 2),
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

/// How many times each incremental is timed: into as many copies of the repository its
/// full went into (median).
const INCREMENTAL_COPIES: usize = 5;

/// A copy of repository `from` at `to` whose files are hard links (`cp -al`): backup
/// repositories (tsvault's, restic's) only ever add files and remove their own locks, so a
/// copy costs no space and each incremental into one leaves the others as they were.
fn link_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    backup::timed(
        std::process::Command::new("cp")
            .arg("-al")
            .arg(from)
            .arg(to),
    )
    .map(|_| ())
}

/// A copy of `from` at `to` with files of its own (`cp -a`), for a destination whose files
/// its tool may rewrite in place (vmbackup's).
fn full_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    backup::timed(std::process::Command::new("cp").arg("-a").arg(from).arg(to)).map(|_| ())
}

/// What one load of one system measured.
#[derive(Debug, Clone)]
struct LoadMeasure {
    sent_bytes: u64,
    /// From the first request to the last acknowledgement.
    acked_s: f64,
    /// From the last acknowledgement to the start of the first count that sees every sample
    /// of the last hour.
    lag_s: f64,
    /// From the last acknowledgement to the last change of the settle.
    settle_s: f64,
    /// Through ingest and settle.
    memory: systems::PeakMemory,
    /// After a forced merge.
    size: systems::DirSize,
}

/// Loads the main load into `sys` and measures it: acknowledged, the lag until the last
/// hour of data is queryable (a count of that hour), settled (the system's own flush and
/// background merges, timed to the last change), peak memory at that point; then, untimed, a
/// forced merge into the final form, its size, and a count of every sample.
fn load_one(sys: &Running, wl: &Workload, clients: usize) -> anyhow::Result<LoadMeasure> {
    let n = wl.samples();
    let name = sys.kind.name();
    let pb = bar(wl.lines(), &format!("loading {name}"));
    let t0 = Instant::now();
    let (_, sent_bytes) = wl.load_main(&sys.write_url(), clients, &pb)?;
    let acked = t0.elapsed();
    pb.finish_and_clear();
    // Queryable: once the system says so, checked by counting the last hour of samples;
    // should the count fall short, the start of the first count that sees all of them.
    let hour_from = (wl.end_ms() - 3_600_000).max(workload::START_MS);
    let hour_samples = wl.samples_in(hour_from, wl.end_ms());
    sys.wait_searchable()?;
    let visible = loop {
        let t = t0.elapsed();
        let got = sys.count_samples(hour_from, wl.end_ms())?;
        if got == hour_samples {
            break t;
        }
        ensure!(
            got < hour_samples,
            "{name} holds {got} samples in the last hour, more than the {hour_samples} written"
        );
        ensure!(
            t0.elapsed() < acked + Duration::from_secs(300),
            "{name} shows {got} of {hour_samples} samples of the last hour 5 minutes after the last acknowledgement"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let settle_from = t0.elapsed();
    let settled = settle_from + sys.settle_with(false)?;
    let memory = sys.peak_memory();
    sys.settle()?;
    let size = dir_size(&sys.data_dir)?;
    let got = sys.count_samples(workload::START_MS, wl.end_ms())?;
    ensure!(got == n, "{name} holds {got} of the {n} samples written");
    Ok(LoadMeasure {
        sent_bytes,
        acked_s: acked.as_secs_f64(),
        lag_s: (visible - acked).as_secs_f64(),
        settle_s: (settled - acked).as_secs_f64(),
        memory,
        size,
    })
}

/// Writes every dirty page back (`sync`), so that the next timed step does not pay for the
/// write-back of the one before.
fn write_back() -> anyhow::Result<()> {
    backup::timed(&mut std::process::Command::new("sync")).map(|_| ())
}

/// Each TSBS query type on each running system, the same random instances for every
/// system, every answer compared with tsvault's: a p50 and a p99 row per type (the largest
/// time, called so, when there are fewer than 1,000 runs per type). The instances of all
/// types are sent in one shuffled order, each to every system, the systems taking turns at
/// going first, so that no system or type always runs on a cache another warmed.
fn queries(
    args: &Args,
    wl: &Workload,
    running: &[Running],
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    use rand::seq::SliceRandom;
    let params: Vec<Vec<Params>> = QueryType::ALL
        .into_iter()
        .enumerate()
        .map(|(qi, qt)| {
            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + qi as u64);
            (0..args.query_runs)
                .map(|_| Params::random(qt, &mut rng, wl))
                .collect()
        })
        .collect();
    let mut order: Vec<(usize, usize)> = (0..params.len())
        .flat_map(|qi| (0..args.query_runs).map(move |i| (qi, i)))
        .collect();
    order.shuffle(&mut rand::rngs::StdRng::seed_from_u64(7));
    let agents: Vec<ureq::Agent> = running.iter().map(|_| http::agent()).collect();
    // Latencies per query type and system (in `running`'s order).
    let mut lat = vec![vec![Vec::with_capacity(args.query_runs); running.len()]; params.len()];
    let mut points = vec![0usize; params.len()];
    let mut distinct: Vec<std::collections::BTreeSet<(i64, i64, Vec<usize>)>> =
        vec![Default::default(); params.len()];
    let pb = bar(order.len() as u64, "queries");
    for (k, &(qi, i)) in order.iter().enumerate() {
        let p = &params[qi][i];
        let qt = p.qt;
        distinct[qi].insert((p.start_ms, p.end_ms, p.hosts.clone()));
        let mut answers: Vec<Option<queries::Answer>> = vec![None; running.len()];
        for si in balanced_order(running.len(), k) {
            let sys = &running[si];
            let send = |req: &queries::Request| match req {
                queries::Request::Get { path, params } => {
                    http::get(&agents[si], &format!("{}{path}", sys.base), params)
                }
                queries::Request::Post { path, body } => http::post(
                    &agents[si],
                    &format!("{}{path}", sys.base),
                    "application/json",
                    body.as_bytes(),
                ),
            };
            let req = queries::request(sys.kind, p);
            let t = Instant::now();
            let text =
                send(&req).with_context(|| format!("{} on {}", qt.name(), sys.kind.name()))?;
            lat[qi][si].push(t.elapsed().as_secs_f64() * 1000.0);
            let mut answer = queries::parse_answer(sys.kind, p, &text).with_context(|| {
                format!(
                    "{} answer of {} to {p:?}: {}",
                    qt.name(),
                    sys.kind.name(),
                    text.chars().take(500).collect::<String>()
                )
            })?;
            if let Some(times) = queries::times_request(sys.kind, p) {
                let text = send(&times)?;
                answer = queries::with_times(sys.kind, answer, &text).with_context(|| {
                    format!("{} times of {} to {p:?}", qt.name(), sys.kind.name())
                })?;
            }
            answers[si] = Some(answer);
        }
        let answers: Vec<queries::Answer> = answers
            .into_iter()
            .map(|a| a.expect("every system answered"))
            .collect();
        points[qi] += answers[0].len();
        for (si, other) in answers.iter().enumerate().skip(1) {
            queries::compare(&answers[0], other).map_err(|e| {
                anyhow::anyhow!(
                    "{} answers differ between tsvault and {} for {p:?}: {e}",
                    qt.name(),
                    running[si].kind.name()
                )
            })?;
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let tail = if args.query_runs >= 1000 {
        "p99"
    } else {
        "max"
    };
    for (qi, qt) in QueryType::ALL.into_iter().enumerate() {
        ensure!(
            points[qi] > 0,
            "{}: every answer is empty, nothing was compared",
            qt.name()
        );
        let mut p50 = Row::new(format!("{} p50", qt.name()), "ms", Better::Lower);
        let mut high = Row::new(format!("{} {tail}", qt.name()), "ms", Better::Lower);
        for (si, sys) in running.iter().enumerate() {
            let col = Kind::ALL
                .iter()
                .position(|k| *k == sys.kind)
                .expect("a known system");
            let l = &mut lat[qi][si];
            l.sort_by(f64::total_cmp);
            let pct = |q: f64| l[((l.len() as f64 - 1.0) * q).round() as usize];
            let top = if tail == "p99" { pct(0.99) } else { pct(1.0) };
            say!(
                "{:<22} {:<16} p50 {:>9.2} ms  {tail} {:>9.2} ms",
                qt.name(),
                sys.kind.name(),
                pct(0.5),
                top
            );
            p50 = p50.set(col, pct(0.5));
            high = high.set(col, top);
        }
        rows.push(p50);
        rows.push(high);
    }
    notes.push(format!(
        "Answers: all {} query instances ({} per type; distinct instances per type: {}) answered the same numbers on {} ({} data points compared with each peer; lastpoint compared on each series' last time and value). The instances of all types were sent in one shuffled order, each to every system, the systems' order through every permutation in turn (a balanced Latin square); {tail} is {}.",
        order.len(),
        args.query_runs,
        QueryType::ALL
            .iter()
            .zip(&distinct)
            .map(|(qt, d)| format!("{} {}", qt.name(), d.len()))
            .collect::<Vec<_>>()
            .join(", "),
        running
            .iter()
            .map(|s| s.kind.name())
            .collect::<Vec<_>>()
            .join(", "),
        points.iter().sum::<usize>(),
        if tail == "p99" {
            "the 99th percentile of each type's times"
        } else {
            "the largest of each type's times (fewer than 1,000 runs: no real 99th percentile)"
        }
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
    dirs: &'a [PathBuf],
    restic_cache: &'a Path,
) -> ([backup::Tsvault<'a>; 3], backup::Restic<'a>) {
    let [tsv_repo, tsv_plain_repo, tsv_http_repo, _, restic_repo, ..] = dirs else {
        panic!("a round has at least five destinations, not {}", dirs.len());
    };
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

/// The order of `n` commands in round `round` of a balanced Latin square (Williams' design):
/// over [`square_rounds`]`(n)` rounds every command takes every position equally often, and
/// every command directly follows every other equally often.
fn balanced_order(n: usize, round: usize) -> Vec<usize> {
    // The first row 0, 1, n-1, 2, n-2, ...; row r adds r to each (mod n); for odd n the
    // rows are followed by their reverses.
    let first: Vec<usize> = (0..n)
        .map(|i| {
            if i == 0 {
                0
            } else if i % 2 == 1 {
                i.div_ceil(2)
            } else {
                n - i / 2
            }
        })
        .collect();
    let r = round % square_rounds(n);
    let mut row: Vec<usize> = first.iter().map(|c| (c + r % n) % n).collect();
    if r >= n {
        row.reverse();
    }
    row
}

/// Rounds in one whole balanced Latin square of `n` commands.
fn square_rounds(n: usize) -> usize {
    if n.is_multiple_of(2) { n } else { 2 * n }
}

/// Rounds of a phase of `n` commands: `--backup-rounds`, or one whole square.
fn rounds_of(args_rounds: Option<usize>, n: usize) -> usize {
    args_rounds.unwrap_or_else(|| square_rounds(n))
}

/// Runs a round's timed commands in the order [`balanced_order`] gives round `round`, adds
/// each time to its list in `times`, and prints them.
fn timed_round<const N: usize>(
    round: usize,
    names: [&str; N],
    mut steps: [Timed<'_>; N],
    times: &mut [Vec<f64>; N],
) -> anyhow::Result<()> {
    let mut took = Vec::new();
    for i in balanced_order(N, round) {
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
        for mode in balanced_order(2, round) {
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
    say!(
        "backups taken by the server: 1% more data, written to disk, then incrementals into {INCREMENTAL_COPIES} copies of the last full's repository"
    );
    let copies: Vec<[PathBuf; 2]> = (0..INCREMENTAL_COPIES)
        .map(|c| [0, 1].map(|mode| root.join(format!("tsvault-self-{}-incr-{c}", modes[mode].0))))
        .collect::<Vec<_>>();
    for copy in &copies {
        for (mode, to) in copy.iter().enumerate() {
            link_copy(&repo_of(mode, rounds - 1), to)?;
        }
    }
    let mut incrs: [Vec<f64>; 2] = Default::default();
    for (c, copy) in copies.iter().enumerate() {
        for mode in balanced_order(2, c) {
            let sys = start(mode, &copy[mode])?;
            if c == 0 {
                load(&sys.write_url(), &wl.extra, clients, &ProgressBar::hidden())?;
                sys.settle_with(false)?;
            }
            write_back()?;
            incrs[mode].push(take(&sys.base, "", "incremental")?);
            sys.stop_gracefully()?;
        }
    }
    let incrs = incrs.map(median);
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
        "Backups taken by the server itself (issue 4's incremental target): `tsvault serve --backup-repo R` and `POST /api/admin/backups` (the repository opened, its key derived, when the server starts; the snapshot taken in the process, its files read in the data directory), on copies of tsvault's data, a server started on each with its repository; fulls in {rounds} rounds, each into a new repository (median), then 1% more data and the incremental, into {INCREMENTAL_COPIES} copies of the last full's repository (median). Incremental after 1% more data: {:.3} (encrypted) and {:.3} (unencrypted) of the full's time (target at most 1/20 = 0.05).",
        incrs[0] / full[0],
        incrs[1] / full[1],
    ));
    Ok(rows)
}

/// Full backup, incremental after 1% more data, and full restore, for each system's tool,
/// with each tool's throughput and its fixed cost (the same commands on an empty store).
/// Fulls and restores are timed in rounds (median; see [`balanced_order`]); the incremental
/// follows the last round's fulls. Restores are checked: each restored copy of the last round
/// is started and must hold every sample.
fn backups(
    wl: &Workload,
    running: &[Running],
    root: &Path,
    clients: usize,
    rounds: Option<usize>,
    tsvault_bin: &Path,
    notes: &mut Vec<String>,
) -> anyhow::Result<Vec<Row>> {
    let tsv_server = system(running, Kind::Tsvault)?;
    let vm = system(running, Kind::Victoria)?;
    // What each tool reads: tsvault and restic tsvault's data directory, vmbackup
    // VictoriaMetrics'.
    let tsv_source = dir_size(&tsv_server.data_dir)?.allocated as f64;
    // vmbackup reads a snapshot of `data` and `indexdb`, not the caches beside them.
    let vm_source = (dir_size(&vm.data_dir.join("data"))?.allocated
        + dir_size(&vm.data_dir.join("indexdb"))?.allocated) as f64;
    // The part of each command that does not depend on the data, first: the speeds are
    // net of it.
    let fixed = fixed_costs(root, tsvault_bin, rounds, &root.join("restic-cache"))?;
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
    let mut full_raw = Row::new(
        "full backup, encrypted (vs restic --compression off)",
        "s",
        Better::Lower,
    );
    let mut rate = Row::new(
        "full backup speed net of the fixed cost, encrypted (vs restic)",
        "MiB/s",
        Better::Higher,
    );
    let mut rate_plain = Row::new(
        "full backup speed net of the fixed cost, unencrypted (vs vmbackup)",
        "MiB/s",
        Better::Higher,
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
    let mut restore = Row::new(
        "full restore, encrypted (vs restic, which does not fsync)",
        "s",
        Better::Lower,
    );
    let mut restore_synced = Row::new(
        "full restore, encrypted (vs restic followed by sync)",
        "s",
        Better::Lower,
    );
    let mut restore_plain = Row::new(
        "full restore, unencrypted (vs vmrestore)",
        "s",
        Better::Lower,
    );
    let mut restore_rate = Row::new(
        "full restore speed net of the fixed cost, encrypted (vs restic followed by sync)",
        "MiB/s",
        Better::Higher,
    );
    let mut restore_rate_plain = Row::new(
        "full restore speed net of the fixed cost, unencrypted (vs vmrestore)",
        "MiB/s",
        Better::Higher,
    );
    let mut size = Row::new(
        "backup size per sample (allocated blocks)",
        "bytes/sample",
        Better::Lower,
    );

    let repos = [
        "tsvault-repo",
        "tsvault-plain",
        "tsvault-http",
        "vmbackup",
        "restic-repo",
        "restic-raw-repo",
    ];
    let restic_cache = root.join("restic-cache");
    // tsvault reads the snapshot's files in the server's data directory, as vmbackup reads
    // VictoriaMetrics' (both run on the server's machine); once more over HTTP.
    let (base, data_dir) = (
        tsv_server.base.as_str(),
        Some(tsv_server.data_dir.as_path()),
    );
    // Times of tsvault encrypted, unencrypted, unencrypted over HTTP, vmbackup, restic, and
    // restic without compression (tsvault stores segments as the engine compressed them;
    // restic compresses them again by default).
    let mut times: [Vec<f64>; 6] = Default::default();
    let full_rounds = rounds_of(rounds, 6);
    for round in 0..full_rounds {
        say!(
            "backups: full, round {} of {full_rounds}: tsvault encrypted and unencrypted (online, through the server's snapshot API; files read in its data directory, and unencrypted once more over HTTP), vmbackup, restic",
            round + 1
        );
        let dirs = next_round(root, repos, round)?;
        let ([tsv, tsv_plain, tsv_http], restic) = tools(tsvault_bin, &dirs, &restic_cache);
        let restic_raw = backup::Restic {
            repo: &dirs[5],
            cache: &restic_cache,
        };
        tsv.init(true)?;
        tsv_plain.init(false)?;
        tsv_http.init(false)?;
        restic.init()?;
        restic_raw.init()?;
        write_back()?;
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
                "restic --compression off",
            ],
            [
                Box::new(|| tsv.backup(base, data_dir)),
                Box::new(|| tsv_plain.backup(base, data_dir)),
                Box::new(|| tsv_http.backup(base, None)),
                Box::new(|| backup::vmbackup(&vm.base, &vm.data_dir, &dirs[3])),
                Box::new(|| restic.backup(&tsv_server.data_dir)),
                Box::new(|| restic_raw.backup_uncompressed(&tsv_server.data_dir)),
            ],
            &mut times,
        )?;
    }
    let [t_enc, t_plain, t_http, t_vm, t_restic, t_restic_raw] = times.map(median);
    full = full.set(0, t_enc).set(3, t_restic);
    full_raw = full_raw.set(0, t_enc).set(3, t_restic_raw);
    full_plain = full_plain.set(0, t_plain).set(1, t_vm);
    full_http = full_http.set(0, t_http).set(1, t_vm);
    rate = rate.set_net(0, tsv_source, t_enc, fixed.backup[0]).set_net(
        3,
        tsv_source,
        t_restic,
        fixed.backup[3],
    );
    rate_plain = rate_plain
        .set_net(0, tsv_source, t_plain, fixed.backup[1])
        .set_net(1, vm_source, t_vm, fixed.backup[2]);
    let last = numbered(root, repos, full_rounds - 1);

    say!(
        "backups: 1% more data, written to disk (no forced merge), then incrementals into {INCREMENTAL_COPIES} copies of the last fulls' destinations"
    );
    let copies: Vec<[PathBuf; 6]> = (0..INCREMENTAL_COPIES)
        .map(|c| last.clone().map(|d| d.with_extension(format!("incr-{c}"))))
        .collect();
    for copy in &copies {
        for (i, (from, to)) in last.iter().zip(copy).enumerate() {
            // vmbackup's destination is copied whole; the repositories by hard links.
            if i == 3 {
                full_copy(from, to)?
            } else {
                link_copy(from, to)?
            }
        }
    }
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
    let mut times: [Vec<f64>; 5] = Default::default();
    for (c, copy) in copies.iter().enumerate() {
        say!("incrementals, round {} of {INCREMENTAL_COPIES}", c + 1);
        let ([tsv, tsv_plain, tsv_http], restic) = tools(tsvault_bin, copy, &restic_cache);
        write_back()?;
        timed_round(
            c,
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
                Box::new(|| backup::vmbackup(&vm.base, &vm.data_dir, &copy[3])),
                Box::new(|| restic.backup(&tsv_server.data_dir)),
            ],
            &mut times,
        )?;
    }
    let [i_enc, i_plain, i_http, i_vm, i_restic] = times.map(median);
    incr = incr.set(0, i_enc).set(3, i_restic);
    incr_plain = incr_plain.set(0, i_plain).set(1, i_vm);
    incr_http = incr_http.set(0, i_http).set(1, i_vm);
    // The first copies hold a full and an incremental each: what is restored and measured.
    let dirs = &copies[0];
    let ([tsv, tsv_plain, _], restic) = tools(tsvault_bin, dirs, &restic_cache);
    let [tsv_repo, _, _, vm_dst, _, _] = dirs;
    let per_sample =
        |p: &Path| -> anyhow::Result<f64> { Ok(dir_size(p)?.allocated as f64 / total as f64) };
    size = size
        .set(0, per_sample(tsv_repo)?)
        .set(1, per_sample(vm_dst)?)
        .set(3, per_sample(restic.repo)?);

    let restored = [
        "tsvault-restored",
        "tsvault-plain-restored",
        "vm-restored",
        "restic-restored",
    ];
    let mut times: [Vec<f64>; 4] = Default::default();
    // restic's restore alone, without the sync that follows it in its timed step.
    let restic_alone = std::cell::RefCell::new(Vec::new());
    let restore_rounds = rounds_of(rounds, 4);
    for round in 0..restore_rounds {
        say!(
            "restores, round {} of {restore_rounds}: tsvault encrypted and unencrypted, vmrestore, restic (followed by sync: tsvault and vmrestore fsync what they write, restic does not)",
            round + 1
        );
        let [tsv_restored, tsv_plain_restored, vm_restored, restic_target] =
            next_round(root, restored, round)?;
        write_back()?;
        timed_round(
            round,
            [
                "tsvault encrypted",
                "tsvault unencrypted",
                "vmrestore",
                "restic + sync",
            ],
            [
                Box::new(|| tsv.restore(&tsv_restored)),
                Box::new(|| tsv_plain.restore(&tsv_plain_restored)),
                Box::new(|| backup::vmrestore(vm_dst, &vm_restored)),
                Box::new(|| {
                    let alone = restic.restore(&restic_target)?;
                    restic_alone.borrow_mut().push(alone.as_secs_f64());
                    let t = Instant::now();
                    write_back()?;
                    Ok(alone + t.elapsed())
                }),
            ],
            &mut times,
        )?;
    }
    let [t_enc, t_plain, t_vm, t_restic] = times.map(median);
    let t_restic_alone = median(restic_alone.into_inner());
    restore = restore.set(0, t_enc).set(3, t_restic_alone);
    restore_synced = restore_synced.set(0, t_enc).set(3, t_restic);
    restore_plain = restore_plain.set(0, t_plain).set(1, t_vm);

    say!("restores: each restored copy of the last round is started and counted");
    let [tsv_restored, tsv_plain_restored, vm_restored, restic_target] =
        numbered(root, restored, restore_rounds - 1);
    let written = |p: &Path| -> anyhow::Result<f64> { Ok(dir_size(p)?.allocated as f64) };
    restore_rate = restore_rate
        .set_net(0, written(&tsv_restored)?, t_enc, fixed.restore[0])
        .set_net(3, written(&restic_target)?, t_restic, fixed.restore[3]);
    restore_rate_plain = restore_rate_plain
        .set_net(0, written(&tsv_plain_restored)?, t_plain, fixed.restore[1])
        .set_net(1, written(&vm_restored)?, t_vm, fixed.restore[2]);
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
        "Backup targets (issue 4), as times for the same samples (each tool reads its own system's store) and as speeds net of the fixed cost (each tool's bytes): full backup {:.2}x restic's speed in time, {:.2}x in MiB/s ({:.2}x restic's time with --compression off; encrypted; target 2x), and {:.2}x vmbackup's in time, {:.2}x in MiB/s (unencrypted; target 1x; {:.2}x in time with the files over HTTP); tsvault's incremental after 1% more data took {:.3} (encrypted), {:.3} (unencrypted) and {:.3} (over HTTP) of its full backup's time (target at most 1/20 = 0.05); restore {:.2}x the time of restic followed by sync ({:.2}x restic's alone; target 2x), {:.2}x in MiB/s, and {:.2}x vmrestore's time, {:.2}x in MiB/s. Sources: tsvault's data directory {:.1} MiB (what tsvault and restic read), VictoriaMetrics' data and indexdb {:.1} MiB (what vmbackup reads), allocated. A ratio of NaN: a speed not shown (fixed cost over 80% of the time).",
        num(&full, 3) / num(&full, 0),
        num(&rate, 0) / num(&rate, 3),
        num(&full_raw, 3) / num(&full_raw, 0),
        num(&full_plain, 1) / num(&full_plain, 0),
        num(&rate_plain, 0) / num(&rate_plain, 1),
        num(&full_http, 1) / num(&full_http, 0),
        num(&incr, 0) / num(&full, 0),
        num(&incr_plain, 0) / num(&full_plain, 0),
        num(&incr_http, 0) / num(&full_http, 0),
        num(&restore_synced, 3) / num(&restore_synced, 0),
        num(&restore, 3) / num(&restore, 0),
        num(&restore_rate, 0) / num(&restore_rate, 3),
        num(&restore_plain, 1) / num(&restore_plain, 0),
        num(&restore_rate_plain, 0) / num(&restore_rate_plain, 1),
        tsv_source / 1048576.0,
        vm_source / 1048576.0,
    ));
    notes.push(format!(
        "Backups: fulls timed in {full_rounds} rounds and restores in {restore_rounds}, each into new destinations, the commands' order in each round from a balanced Latin square (every command in every position, after every other command, equally often{}; each round printed as it ends), dirty pages written back (sync) before each round, the median shown. The incrementals: 1% more data, then each command into {INCREMENTAL_COPIES} copies of its last full's destination (hard links; vmbackup's copied), each command in every position once, the median shown. tsvault online with `tsvault backup create --server URL --server-data-dir DIR` (snapshot through its admin API, its files read in the server's data directory, as vmbackup reads VictoriaMetrics', into a local directory repository, once encrypted and once not; the incremental is the default type of the second run), once more unencrypted without `--server-data-dir` (files pulled over HTTP), and `tsvault restore --data-dir` (which fsyncs every file and directory it writes); VictoriaMetrics with vmbackup/vmrestore (fs:// destination, snapshot through its API); restic over tsvault's own data directory, the same files (encrypted; its default compression, and once with `--compression off` since tsvault does not compress segments again; its second run is its incremental); restic's restore does not fsync, so it is shown alone and followed by `sync`. Every encrypted command derives its key: tsvault with Argon2id (64 MiB, 3 passes, 4 lanes, about 0.07 s here), restic with scrypt as calibrated by its `init` (about half a second): the fixed-cost rows hold that. Speeds: the bytes each tool reads (its source's allocated bytes: tsvault's data directory, VictoriaMetrics' data and indexdb) or writes (the restored directory), over its median time less its fixed cost; left empty where the fixed cost is more than 80% of the time. Each restored copy was started and holds all {total} samples.",
        if rounds.is_some_and(|r| r % 6 != 0 || r % 4 != 0) {
            " over a whole square only; --backup-rounds was not a multiple of every phase's square"
        } else {
            ""
        }
    ));
    let [
        fixed_full,
        fixed_full_plain,
        fixed_restore,
        fixed_restore_plain,
    ] = fixed.rows();
    Ok(vec![
        full,
        full_raw,
        full_plain,
        full_http,
        rate,
        rate_plain,
        fixed_full,
        fixed_full_plain,
        incr,
        incr_plain,
        incr_http,
        restore,
        restore_synced,
        restore_plain,
        restore_rate,
        restore_rate_plain,
        fixed_restore,
        fixed_restore_plain,
        size,
    ])
}

/// Each tool's fixed costs (a full backup of an empty store and its restore), in seconds,
/// in the order tsvault encrypted, tsvault unencrypted, VictoriaMetrics, restic.
struct FixedCosts {
    backup: [f64; 4],
    restore: [f64; 4],
}

impl FixedCosts {
    /// As rows of the table.
    fn rows(&self) -> [Row; 4] {
        let row = |what: &str| Row::new(format!("fixed cost: {what}"), "s", Better::Lower);
        let ([b_enc, b_plain, b_vm, b_restic], [r_enc, r_plain, r_vm, r_restic]) =
            (self.backup, self.restore);
        [
            row("full backup of an empty store, encrypted (vs restic)")
                .set(0, b_enc)
                .set(3, b_restic),
            row("full backup of an empty store, unencrypted (vs vmbackup)")
                .set(0, b_plain)
                .set(1, b_vm),
            row("restore of an empty backup, encrypted (vs restic followed by sync)")
                .set(0, r_enc)
                .set(3, r_restic),
            row("restore of an empty backup, unencrypted (vs vmrestore)")
                .set(0, r_plain)
                .set(1, r_vm),
        ]
    }
}

/// The cost of a backup and a restore that carry no data: an empty tsvault server backed up
/// by tsvault (encrypted, unencrypted), an empty VictoriaMetrics by vmbackup, an empty
/// directory by restic, and each restored; in rounds as the others (median). At a small
/// scale these are most of each tool's time; at a large one, the speed rows are what counts.
fn fixed_costs(
    root: &Path,
    tsvault_bin: &Path,
    rounds: Option<usize>,
    restic_cache: &Path,
) -> anyhow::Result<FixedCosts> {
    let tsv = Running::start(
        Kind::Tsvault,
        &root.join("empty-store-tsvault"),
        tsvault_bin,
        &[],
    )?;
    let vm = Running::start(
        Kind::Victoria,
        &root.join("empty-store-vm"),
        tsvault_bin,
        &[],
    )?;
    let empty_dir = root.join("empty-store-dir");
    std::fs::create_dir_all(&empty_dir)?;
    let repos = [
        "empty-backup-tsvault",
        "empty-backup-tsvault-plain",
        "empty-backup-vm",
        "empty-backup-restic",
    ];
    let restored = [
        "empty-restored-tsvault",
        "empty-restored-tsvault-plain",
        "empty-restored-vm",
        "empty-restored-restic",
    ];
    let names = [
        "tsvault encrypted",
        "tsvault unencrypted",
        "vmbackup",
        "restic",
    ];
    let n = rounds_of(rounds, 4);
    let mut backups: [Vec<f64>; 4] = Default::default();
    let mut restores: [Vec<f64>; 4] = Default::default();
    for round in 0..n {
        say!(
            "fixed costs, round {} of {n}: backup and restore of an empty store",
            round + 1
        );
        let dirs = next_round(root, repos, round)?;
        let targets = next_round(root, restored, round)?;
        let tsvault = |repo| backup::Tsvault {
            bin: tsvault_bin,
            repo,
        };
        let (enc, plain) = (tsvault(&dirs[0]), tsvault(&dirs[1]));
        let restic = backup::Restic {
            repo: &dirs[3],
            cache: restic_cache,
        };
        enc.init(true)?;
        plain.init(false)?;
        restic.init()?;
        write_back()?;
        timed_round(
            round,
            names,
            [
                Box::new(|| enc.backup(&tsv.base, Some(&tsv.data_dir))),
                Box::new(|| plain.backup(&tsv.base, Some(&tsv.data_dir))),
                Box::new(|| backup::vmbackup(&vm.base, &vm.data_dir, &dirs[2])),
                Box::new(|| restic.backup(&empty_dir)),
            ],
            &mut backups,
        )?;
        timed_round(
            round,
            names,
            [
                Box::new(|| enc.restore(&targets[0])),
                Box::new(|| plain.restore(&targets[1])),
                Box::new(|| backup::vmrestore(&dirs[2], &targets[2])),
                Box::new(|| {
                    let alone = restic.restore(&targets[3])?;
                    let t = Instant::now();
                    write_back()?;
                    Ok(alone + t.elapsed())
                }),
            ],
            &mut restores,
        )?;
    }
    tsv.stop();
    vm.stop();
    Ok(FixedCosts {
        backup: backups.map(median),
        restore: restores.map(median),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command in every position, and directly after every other command, equally
    /// often over one whole square; the count of commands odd and even.
    #[test]
    fn balanced_order_is_a_balanced_latin_square() {
        for n in 1..=7 {
            let rounds = square_rounds(n);
            let mut position = vec![vec![0; n]; n];
            let mut follows = vec![vec![0; n]; n];
            for r in 0..rounds {
                let row = balanced_order(n, r);
                let mut sorted = row.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "n {n} round {r}: {row:?}"
                );
                for (p, &c) in row.iter().enumerate() {
                    position[c][p] += 1;
                }
                for w in row.windows(2) {
                    follows[w[0]][w[1]] += 1;
                }
            }
            let per_position = rounds / n;
            assert!(
                position.iter().flatten().all(|&k| k == per_position),
                "n {n}: {position:?}"
            );
            if n > 1 {
                let per_pair = rounds / n;
                for (a, row) in follows.iter().enumerate() {
                    for (b, &k) in row.iter().enumerate() {
                        let want = if a == b { 0 } else { per_pair };
                        assert_eq!(k, want, "n {n}: {a} before {b} {k} times: {follows:?}");
                    }
                }
            }
            // The square repeats past its last round.
            assert_eq!(balanced_order(n, rounds), balanced_order(n, 0));
        }
    }
}
