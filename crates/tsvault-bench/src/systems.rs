//! Starting, loading, settling and measuring each system: tsvault, VictoriaMetrics, InfluxDB.
//! Each starts with `PATH` alone in its environment; tsvault's `--fsync always` is checked in
//! its start-up line. A system is settled at its last change; memory is polled `RssAnon`
//! beside `VmHWM`, disk the allocated blocks.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

use crate::http;
use crate::workload::{Batch, FIELDS};

/// The systems compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Tsvault,
    Victoria,
    Influx,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Tsvault, Kind::Victoria, Kind::Influx];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Tsvault => "tsvault",
            Kind::Victoria => "VictoriaMetrics",
            Kind::Influx => "InfluxDB",
        }
    }
}

/// A running system with its own data directory.
pub struct Running {
    pub kind: Kind,
    child: Child,
    pub base: String,
    /// Everything the system stores lives under this directory.
    pub data_dir: PathBuf,
    agent: ureq::Agent,
    /// The process's anonymous memory, polled from its start.
    memory: MemoryWatch,
    /// How the system was started: its command line, and for tsvault its start-up line.
    pub started_as: String,
}

/// Polls a process's `RssAnon` (its resident anonymous memory: heap and stacks, not the
/// pages of files it maps or reads) every [`MEMORY_POLL`], keeping the largest value seen.
/// `VmHWM`, the kernel's own peak, also counts mapped file pages, which flatters a system that
/// reads its files over one that maps them; both are reported.
struct MemoryWatch {
    peak_anon_kib: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// How often [`MemoryWatch`] reads `/proc/<pid>/status`.
const MEMORY_POLL: Duration = Duration::from_millis(20);

impl MemoryWatch {
    fn start(pid: u32) -> MemoryWatch {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let peak_anon_kib = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (peak, stopped) = (peak_anon_kib.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match status_kib(pid, "RssAnon:") {
                    Some(kib) => {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                    None => return, // the process is gone
                }
                std::thread::sleep(MEMORY_POLL);
            }
        });
        MemoryWatch {
            peak_anon_kib,
            stop,
        }
    }
}

impl Drop for MemoryWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Peak memory of a system, in MiB.
#[derive(Debug, Clone, Copy)]
pub struct PeakMemory {
    /// The largest `RssAnon` polled.
    pub anon_mib: f64,
    /// `VmHWM`: the kernel's peak resident set, mapped file pages included.
    pub hwm_mib: f64,
}

/// `program` with an environment of `PATH` alone: nothing from the shell (`TSVAULT_*`,
/// `INFLUXDB_*` overrides, `GOGC`, `GOMAXPROCS`, failpoints) changes what a system does; only
/// the flags and configuration recorded with the results.
fn clean_command(program: &std::ffi::OsStr) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

/// `cmd`'s program and arguments, as a shell would show them (its environment is `PATH`
/// alone, see [`clean_command`]).
fn command_line(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A port on loopback that was free a moment ago.
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How long a system may take to start (a start that reads every segment of a large store
/// takes minutes).
const START_TIMEOUT: Duration = Duration::from_secs(900);

/// Polls `ready` every 5 ms until it is true, the child exits, or [`START_TIMEOUT`] passes.
fn wait_ready(child: &mut Child, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let t = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before it was ready");
        }
        ensure!(
            t.elapsed() < START_TIMEOUT,
            "{what} not ready after {} s",
            START_TIMEOUT.as_secs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

impl Running {
    /// Starts `kind` on loopback with its data under `data_dir` (created if missing).
    /// `tsvault_bin` is the tsvault binary; `tsvault_args` extra flags for `tsvault serve`.
    pub fn start(
        kind: Kind,
        data_dir: &Path,
        tsvault_bin: &Path,
        tsvault_args: &[String],
    ) -> anyhow::Result<Running> {
        std::fs::create_dir_all(data_dir)?;
        let agent = http::agent();
        let started_as;
        let (mut child, base) = match kind {
            Kind::Tsvault => {
                let mut cmd = clean_command(tsvault_bin.as_os_str());
                cmd.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                    .arg(data_dir);
                // Durable acknowledgements, said explicitly, unless the caller chose otherwise.
                let fsync_wanted = match tsvault_args.iter().position(|a| a == "--fsync") {
                    Some(i) => tsvault_args.get(i + 1).cloned().unwrap_or_default(),
                    None => {
                        cmd.args(["--fsync", "always"]);
                        "always".to_string()
                    }
                };
                let cmdline = format!("{} {}", command_line(&cmd), tsvault_args.join(" "));
                let mut child = cmd
                    .args(tsvault_args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .with_context(|| format!("starting {}", tsvault_bin.display()))?;
                let stderr = child.stderr.take().context("stderr")?;
                let (tx, rx) = mpsc::channel();
                std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        if line.contains("listening on http://") {
                            let _ = tx.send(line);
                        }
                    }
                });
                let line = rx.recv_timeout(START_TIMEOUT).with_context(|| {
                    format!(
                        "tsvault did not log its address within {} s",
                        START_TIMEOUT.as_secs()
                    )
                })?;
                let addr = line
                    .split("listening on http://")
                    .nth(1)
                    .and_then(|rest| rest.split([',', ' ']).next())
                    .context("tsvault's start-up line without an address")?
                    .to_string();
                ensure!(
                    line.contains(&format!("fsync {fsync_wanted}")),
                    "tsvault was asked for --fsync {fsync_wanted} but its start-up line says otherwise: {line}"
                );
                started_as = format!("{cmdline}; it logged: {}", line.trim());
                (child, format!("http://{addr}"))
            }
            Kind::Victoria => {
                let port = free_port()?;
                let mut cmd = clean_command("victoria-metrics".as_ref());
                cmd.arg(format!("-storageDataPath={}", data_dir.display()))
                    .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                    // The data is from 2016; the default retention (1 month) would drop it.
                    .arg("-retentionPeriod=100y")
                    // A query may match a million series (the start-up runs count every
                    // series' last hour), as tsvault's may there; the default is 300,000.
                    .arg("-search.maxUniqueTimeseries=10000000")
                    // Counting a million series' last hour (360 M samples) took over the
                    // default 30 s once on this shared machine; tsvault's queries have no
                    // time limit.
                    .arg("-search.maxQueryDuration=10m")
                    .arg("-loggerLevel=ERROR");
                started_as = command_line(&cmd);
                let mut child = cmd
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting victoria-metrics (Debian package victoria-metrics)")?;
                let base = format!("http://127.0.0.1:{port}");
                let health = format!("{base}/health");
                wait_ready(&mut child, "victoria-metrics", || {
                    http::get(&agent, &health, &[]).is_ok()
                })?;
                (child, base)
            }
            Kind::Influx => {
                let port = free_port()?;
                let rpc = free_port()?;
                let conf = data_dir.with_extension("conf");
                let config = influx_config(data_dir, port, rpc);
                std::fs::write(&conf, &config)?;
                started_as = format!(
                    "influxd -config {}, which holds: {}",
                    conf.display(),
                    config
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                );
                let mut child = clean_command("influxd".as_ref())
                    .arg("-config")
                    .arg(&conf)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting influxd (Debian package influxdb)")?;
                let base = format!("http://127.0.0.1:{port}");
                let ping = format!("{base}/ping");
                wait_ready(&mut child, "influxd", || {
                    http::get(&agent, &ping, &[]).is_ok()
                })?;
                http::post(
                    &agent,
                    &format!("{base}/query"),
                    "application/x-www-form-urlencoded",
                    b"q=CREATE+DATABASE+bench",
                )?;
                (child, base)
            }
        };
        if let Some(status) = child.try_wait()? {
            bail!("{} exited at start with {status}", kind.name());
        }
        let memory = MemoryWatch::start(child.id());
        Ok(Running {
            kind,
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            agent,
            memory,
            started_as,
        })
    }

    /// Where line protocol with ms timestamps is posted.
    pub fn write_url(&self) -> String {
        match self.kind {
            Kind::Tsvault | Kind::Victoria => format!("{}/write?precision=ms", self.base),
            Kind::Influx => format!("{}/write?db=bench&precision=ms", self.base),
        }
    }

    /// The process's peak memory since it started.
    pub fn peak_memory(&self) -> PeakMemory {
        let now_anon = status_kib(self.child.id(), "RssAnon:").unwrap_or(0);
        let anon = self
            .memory
            .peak_anon_kib
            .fetch_max(now_anon, Ordering::Relaxed)
            .max(now_anon);
        PeakMemory {
            anon_mib: anon as f64 / 1024.0,
            hwm_mib: status_kib(self.child.id(), "VmHWM:").unwrap_or(0) as f64 / 1024.0,
        }
    }

    /// Samples stored with timestamps in `[start_ms, end_ms)`, through each system's query
    /// language.
    pub fn count_samples(&self, start_ms: i64, end_ms: i64) -> anyhow::Result<u64> {
        // A week at a time: a tsvault request may read at most 20 M samples by default (its
        // --query-samples-max), a VictoriaMetrics query 1 G (its -search.maxSamplesPerQuery).
        const WINDOW_MS: i64 = 7 * 86_400_000;
        let mut n = 0;
        let mut from = start_ms;
        while from < end_ms {
            let to = (from + WINDOW_MS).min(end_ms);
            n += self.count_window(from, to)?;
            from = to;
        }
        Ok(n)
    }

    /// [`Running::count_samples`] for at most a week.
    fn count_window(&self, from: i64, to: i64) -> anyhow::Result<u64> {
        match self.kind {
            Kind::Tsvault => {
                // One field per request.
                let mut n = 0.0;
                for f in FIELDS {
                    let body = json!({"start": from, "end": to - 1, "queries": [
                        {"metric": format!("cpu_{f}"), "aggregator": "sum", "downsample": "0all-count"}]});
                    let out: Value = serde_json::from_str(&http::post(
                        &self.agent,
                        &format!("{}/api/query", self.base),
                        "application/json",
                        body.to_string().as_bytes(),
                    )?)?;
                    for r in out.as_array().context("tsvault count: not an array")? {
                        for v in r["dps"]
                            .as_object()
                            .context("tsvault count: no dps")?
                            .values()
                        {
                            n += v.as_f64().context("tsvault count: not a number")?;
                        }
                    }
                }
                Ok(n as u64)
            }
            Kind::Victoria => {
                // The window (time - d, time] is [from, to) in milliseconds.
                let q = format!(
                    "sum(count_over_time({{__name__=~\"cpu_usage_.*\"}}[{}ms]))",
                    to - from
                );
                let out: Value = serde_json::from_str(&http::get(
                    &self.agent,
                    &format!("{}/api/v1/query", self.base),
                    &[
                        ("query", q),
                        ("time", prom_time(to - 1)),
                        ("nocache", "1".into()),
                    ],
                )?)?;
                let result = out["data"]["result"]
                    .as_array()
                    .context("VictoriaMetrics count: no result")?;
                Ok(match result.first() {
                    None => 0,
                    Some(r) => r["value"][1]
                        .as_str()
                        .context("VictoriaMetrics count: no value")?
                        .parse::<f64>()? as u64,
                })
            }
            Kind::Influx => self.count_influx(from, to),
        }
    }

    /// [`Running::count_samples`] of InfluxDB.
    fn count_influx(&self, start_ms: i64, end_ms: i64) -> anyhow::Result<u64> {
        let q =
            format!("SELECT count(*) FROM cpu WHERE time >= {start_ms}ms AND time < {end_ms}ms");
        let out: Value = serde_json::from_str(&self.influxql(&q)?)?;
        let mut n = 0;
        if let Some(series) = out["results"][0]["series"].as_array() {
            for s in series {
                for row in s["values"]
                    .as_array()
                    .context("InfluxDB count: no values")?
                {
                    for v in row
                        .as_array()
                        .context("InfluxDB count: bad row")?
                        .iter()
                        .skip(1)
                    {
                        n += v.as_u64().unwrap_or(0);
                    }
                }
            }
        }
        Ok(n)
    }

    /// Runs one InfluxQL statement against the `bench` database, timestamps in ms.
    pub fn influxql(&self, q: &str) -> anyhow::Result<String> {
        http::get(
            &self.agent,
            &format!("{}/query", self.base),
            &[
                ("db", "bench".into()),
                ("epoch", "ms".into()),
                ("q", q.into()),
            ],
        )
    }

    /// Returns once the system says every acknowledged write is searchable, without querying
    /// (a VictoriaMetrics query that runs before its buffers are flushed makes it cache the
    /// absence of the data for several seconds, so probing with queries would slow it down):
    /// tsvault and InfluxDB make a write searchable before acknowledging it; VictoriaMetrics
    /// is polled every 10 ms until `vm_pending_rows` is 0 for both storage and index.
    pub fn wait_searchable(&self) -> anyhow::Result<()> {
        if self.kind != Kind::Victoria {
            return Ok(());
        }
        let t = Instant::now();
        loop {
            let m = http::get(&self.agent, &format!("{}/metrics", self.base), &[])?;
            let pending = m.lines().any(|l| {
                l.starts_with("vm_pending_rows") && l.split_whitespace().last() != Some("0")
            });
            if !pending {
                return Ok(());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(300),
                "VictoriaMetrics still has pending rows after 5 minutes"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Makes the system write everything to its final on-disk form and waits until it is
    /// quiet, so that the directory size is the settled size; returns the time from the start
    /// to the last change seen (in the directory's size or the system's own busy counters),
    /// not the quiet period held after it to be sure:
    /// - tsvault: `POST /api/admin/flush` then `POST /api/admin/compact`, then its directory
    ///   must hold still for 2 s;
    /// - VictoriaMetrics: `/internal/force_flush` then `/internal/force_merge`, then no merge
    ///   active, no row pending, and the directory held still for 2 s;
    /// - InfluxDB (configured with 5 s cold durations, see [`influx_config`]): the WAL empty,
    ///   no compaction active, and the directory held still for 8 s (its cold-duration timers
    ///   can start work after 5 quiet seconds).
    pub fn settle(&self) -> anyhow::Result<Duration> {
        self.settle_with(true)
    }

    /// Like [`Running::settle`], but `merge: false` only asks for the data to be written to
    /// disk and leaves merging to the system's own policy (tsvault: `/api/admin/flush`, whose
    /// compaction leaves a large segment alone beside a small flush; VictoriaMetrics:
    /// `force_flush` without `force_merge`; InfluxDB: its cold-duration compaction as
    /// before). What a backup finds after more data arrived in normal running.
    pub fn settle_with(&self, merge: bool) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let last_change = match self.kind {
            Kind::Tsvault => {
                let paths: &[&str] = if merge {
                    &["/api/admin/flush", "/api/admin/compact"]
                } else {
                    &["/api/admin/flush"]
                };
                for path in paths {
                    http::post(
                        &self.agent,
                        &format!("{}{path}", self.base),
                        "application/json",
                        b"",
                    )?;
                }
                self.wait_quiet(Duration::from_secs(2), |_| Ok(true))?
            }
            Kind::Victoria => {
                http::get(
                    &self.agent,
                    &format!("{}/internal/force_flush", self.base),
                    &[],
                )?;
                if merge {
                    http::get(
                        &self.agent,
                        &format!("{}/internal/force_merge", self.base),
                        &[("partition_prefix", "".into())],
                    )?;
                }
                self.wait_quiet(Duration::from_secs(2), |me| {
                    let m = http::get(&me.agent, &format!("{}/metrics", me.base), &[])?;
                    let busy = m.lines().any(|l| {
                        (l.starts_with("vm_active_merges")
                            || l.starts_with("vm_active_force_merges")
                            || l.starts_with("vm_pending_rows"))
                            && l.split_whitespace().last() != Some("0")
                    });
                    Ok(!busy)
                })?
            }
            Kind::Influx => self.wait_quiet(Duration::from_secs(8), |me| {
                let wal = dir_size(&me.data_dir.join("wal"))?.apparent;
                let vars: Value = serde_json::from_str(&http::get(
                    &me.agent,
                    &format!("{}/debug/vars", me.base),
                    &[],
                )?)?;
                let mut active = 0;
                for v in vars.as_object().into_iter().flat_map(|o| o.values()) {
                    if v["name"] == "tsm1_engine" {
                        for (k, n) in v["values"].as_object().into_iter().flatten() {
                            if k.ends_with("Active") {
                                active += n.as_u64().unwrap_or(0);
                            }
                        }
                    }
                }
                Ok(wal == 0 && active == 0)
            })?,
        };
        Ok(last_change.saturating_duration_since(t))
    }

    /// Polls every [`QUIET_POLL`] until `quiet` holds and the directory (allocated and
    /// apparent bytes) has not changed for `hold`; returns the last moment anything changed
    /// (the size, or `quiet` not holding), at the earliest the call itself. Gives up after 10
    /// minutes.
    fn wait_quiet(
        &self,
        hold: Duration,
        quiet: impl Fn(&Running) -> anyhow::Result<bool>,
    ) -> anyhow::Result<Instant> {
        let t = Instant::now();
        let mut size = dir_size(&self.data_dir)?;
        let mut last_change = t;
        loop {
            std::thread::sleep(QUIET_POLL);
            // A change seen by this poll is stamped with its start, before the poll's own
            // work (walking the directory, asking for counters), which differs by system.
            let polled_at = Instant::now();
            let now_size = dir_size(&self.data_dir)?;
            let is_quiet = quiet(self)?;
            if now_size != size || !is_quiet {
                size = now_size;
                last_change = polled_at;
            } else if last_change.elapsed() >= hold {
                return Ok(last_change);
            }
            ensure!(
                t.elapsed() < Duration::from_secs(600),
                "{} did not settle within 10 minutes",
                self.kind.name()
            );
        }
    }

    /// Stops the process as its operator would (SIGTERM: each system flushes what it holds
    /// and exits) and waits for it to exit, at most 5 minutes.
    pub fn stop_gracefully(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(status.success(), "kill -TERM {pid} failed");
        // Waits for the exit itself; a watchdog kills a process that has not exited after
        // 5 minutes, which then ends the wait.
        let (exited, watch) = mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let timed_out = matches!(
                watch.recv_timeout(Duration::from_secs(300)),
                Err(mpsc::RecvTimeoutError::Timeout)
            );
            if timed_out {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
            timed_out
        });
        let status = self.child.wait()?;
        let _ = exited.send(());
        let timed_out = watchdog.join().expect("the watchdog does not panic");
        ensure!(
            !timed_out,
            "{} still running 5 minutes after SIGTERM; killed",
            self.kind.name()
        );
        ensure!(
            status.success() || self.kind != Kind::Tsvault,
            "tsvault exited with {status} after SIGTERM"
        );
        Ok(())
    }

    /// Stops the process (SIGKILL; the benchmark never reuses a directory it killed).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often [`Running::wait_quiet`] looks: the resolution of the settle figures.
const QUIET_POLL: Duration = Duration::from_millis(100);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// InfluxDB 1.x configuration: loopback only, no reporting, quiet logs, cold durations of 5 s
/// so that the cache is snapshotted to TSM and shards are fully compacted soon after the load
/// (the defaults, 10 min and 4 h, would leave data in the WAL for the whole run), and its
/// compactions not held to 48 MB/s (as an operator on SSDs would set it).
fn influx_config(dir: &Path, port: u16, rpc: u16) -> String {
    let d = dir.display();
    format!(
        r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{d}/meta"
[data]
  dir = "{d}/data"
  wal-dir = "{d}/wal"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "5s"
  compact-full-write-cold-duration = "5s"
  compact-throughput = "1g"
  compact-throughput-burst = "1g"
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
[logging]
  level = "error"
[monitor]
  store-enabled = false
"#
    )
}

/// A time for the Prometheus API: seconds with millisecond decimals.
pub fn prom_time(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// A `KiB` line of `/proc/<pid>/status` (`VmHWM:`, `RssAnon:`), or `None` if the process
/// is gone.
fn status_kib(pid: u32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The size of a directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirSize {
    /// Bytes of the blocks allocated to its files (`st_blocks`): what the disk holds. A
    /// sparse or preallocated file counts only what is written.
    pub allocated: u64,
    /// Bytes of its files' lengths.
    pub apparent: u64,
}

/// The size of all files under `p` (zero if it does not exist).
pub fn dir_size(p: &Path) -> anyhow::Result<DirSize> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(p) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirSize::default()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", p.display())),
    };
    let mut total = DirSize::default();
    for e in entries {
        let e = e?;
        let md = match e.metadata() {
            Ok(md) => md,
            // Files come and go under a running system.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        if md.is_dir() {
            let sub = dir_size(&e.path())?;
            total.allocated += sub.allocated;
            total.apparent += sub.apparent;
        } else {
            total.allocated += md.blocks() * 512;
            total.apparent += md.len();
        }
    }
    Ok(total)
}

/// The file system that holds `p`: its type and device, from `/proc/self/mounts` (the
/// mount point that is the longest prefix of `p`'s canonical path). An fsync on tmpfs costs
/// nothing, so the results say where the data lived.
pub fn file_system_of(p: &Path) -> anyhow::Result<String> {
    let p = std::fs::canonicalize(p).with_context(|| format!("resolving {}", p.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [dev, point, fstype, ..] = f[..] else {
            continue;
        };
        let point_path = Path::new(point);
        if p.starts_with(point_path) {
            let depth = point_path.components().count();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, format!("{fstype} on {dev} (mounted at {point})")));
            }
        }
    }
    best.map(|(_, s)| s)
        .with_context(|| format!("no mount holds {}", p.display()))
}

/// Posts every batch to `url` from `clients` threads sharing one queue; returns when every
/// request has been answered 2xx (an error names the first failed request). `progress`
/// advances by the lines of each answered batch.
pub fn load(
    url: &str,
    batches: &[Batch],
    clients: usize,
    progress: &indicatif::ProgressBar,
) -> anyhow::Result<Duration> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    let agent = http::agent();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(b) = batches.get(i) else {
                            return Ok(());
                        };
                        http::post(&agent, url, "text/plain", &b.body)
                            .with_context(|| format!("batch {i}"))?;
                        progress.inc(b.lines);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("client thread")?;
        }
        Ok(())
    })?;
    Ok(t0.elapsed())
}
