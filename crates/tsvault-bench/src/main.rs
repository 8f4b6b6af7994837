//! `tsvault-bench`: tsvault side by side with VictoriaMetrics and InfluxDB (and restic for
//! backups) on a TSBS cpu-only workload, in one run on one machine. It starts each system on
//! loopback with a temporary directory, loads the same line-protocol bytes with the same
//! client, settles each, measures disk and memory, runs the TSBS query types in each system's
//! own language and checks that the answers agree, backs up and restores with each system's
//! tools, and prints one table with tsvault's ratio to the best peer. It asserts correctness
//! (answers agree, every sample arrives, restores hold every sample); it never asserts speed.
//!
//! Entry point: `bench/run` (installs the peers, builds, runs this); see BENCHMARKS.md.

/// A message on stderr, so that stdout stays clean for `--json`.
macro_rules! say {
    ($($t:tt)*) => { eprintln!($($t)*) };
}

mod backup;
mod backup_run;
mod http;
mod ingest;
mod null_sink;
mod queries;
mod query_run;
mod report;
mod rounds;
mod startup;
mod systems;
mod workload;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use report::{Better, Row};
use systems::{Kind, Running};
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
    /// Only the start-up figures, for each size given as HOSTSxHOURS (comma-separated, e.g.
    /// `1000x4,1000x40,1000x400`): tsvault and VictoriaMetrics loaded once per size, then
    /// started in rounds on their data with the page cache dropped (see BENCHMARKS.md).
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["backups_only", "smoke", "large"])]
    startup: Vec<startup::Size>,
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
    if !args.startup.is_empty() {
        let root = match &args.work_dir {
            Some(d) => tempfile::tempdir_in(d)?,
            None => tempfile::tempdir()?,
        };
        let serve_args: Vec<String> = args
            .serve_args
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let (rows, mut notes) = startup::run(
            &args.startup,
            args.load_rounds.unwrap_or(3),
            args.interval_s,
            args.batch_lines,
            args.clients,
            root.path(),
            &tsvault_bin,
            &serve_args,
        )?;
        notes.push(format!(
            "Data directories under {}, on {}.",
            root.path().display(),
            systems::file_system_of(root.path())?
        ));
        let table = report::markdown(
            &rows,
            &std::array::from_fn(|i| versions.get(i).map(|(_, v)| v.clone()).unwrap_or_default()),
        );
        say!("\n## Start-up\n\n{table}\n{}", notes.join("\n"));
        md.push_str(&format!(
            "## Start-up\n\n{table}\n{}\n\n",
            notes.join("\n\n")
        ));
        return finish(
            &args,
            &md,
            json!({"versions": versions.iter().map(|(n, v)| json!({"system": n, "version": v})).collect::<Vec<_>>(), "startup": {"rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(), "notes": notes}}),
        );
    }
    let mut json_out = Vec::new();
    for &float_values in variants {
        let shape = Shape {
            hosts: args.hosts,
            hours: args.hours,
            interval_s: args.interval_s,
            float_values,
            noise: false,
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
    finish(
        &args,
        &md,
        json!({"versions": versions.iter().map(|(n, v)| json!({"system": n, "version": v})).collect::<Vec<_>>(), "variants": json_out}),
    )
}

/// Writes the markdown to `--out` and, with `--json`, the results to stdout.
fn finish(args: &Args, md: &str, results: serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    say!("table written to {}", args.out.display());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
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
    let mut loads: Vec<Vec<ingest::LoadMeasure>> = vec![Vec::new(); kinds.len()];
    let mut started_as = Vec::new();
    for round in 0..load_rounds {
        for ki in rounds::balanced_order(kinds.len(), round) {
            let kind = kinds[ki].1;
            rounds::write_back()?;
            let sys = Running::start(kind, &dir_of(kind, round), tsvault_bin, &serve_args)?;
            if round == 0 {
                started_as.push(format!("{}: `{}`", kind.name(), sys.started_as));
            }
            let m = ingest::load_one(&sys, &wl, args.clients)?;
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
        let med =
            |f: &dyn Fn(&ingest::LoadMeasure) -> f64| rounds::median(ms.iter().map(f).collect());
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
    rounds::write_back()?;
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
        "Ingest: each system loaded alone, the others stopped; {load_rounds} round(s), each into a new directory, the systems' order rotating; medians. tsvault acknowledges a write once it is in its fsynced WAL and holds it in its in-memory head until the head reaches 16 M samples (or 64 MiB, compressed): the acknowledged rate defers that encoding, the rate to settled counts it."
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
        query_run::queries(args, &wl, &running, &mut rows, &mut notes)?;
    }
    // Backups compare with vmbackup and with restic (over tsvault's files): VictoriaMetrics
    // must run; InfluxDB need not.
    if !args.no_backup && running.iter().any(|s| s.kind == Kind::Victoria) {
        // Before the CLI's backups, which add 1% more data to the running servers.
        rows.extend(backup_run::server_backups(
            &wl,
            &running,
            root.path(),
            args.clients,
            rounds::rounds_of(args.backup_rounds, 2),
            tsvault_bin,
            &mut notes,
        )?);
        rows.extend(backup_run::backups(
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
