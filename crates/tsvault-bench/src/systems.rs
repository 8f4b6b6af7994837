//! Starting, loading, settling and measuring each system: tsvault, VictoriaMetrics, InfluxDB.

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
}

/// A port on loopback that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `ready` every 20 ms until it is true, the child exits, or 60 s pass.
fn wait_ready(child: &mut Child, what: &str, ready: impl Fn() -> bool) -> anyhow::Result<()> {
    let t = Instant::now();
    while !ready() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status} before it was ready");
        }
        ensure!(
            t.elapsed() < Duration::from_secs(60),
            "{what} not ready after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
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
        let (mut child, base) = match kind {
            Kind::Tsvault => {
                let mut child = Command::new(tsvault_bin)
                    .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
                    .arg(data_dir)
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
                    .context("tsvault did not log its address within 60 s")?;
                (child, format!("http://{addr}"))
            }
            Kind::Victoria => {
                let port = free_port()?;
                let mut child = Command::new("victoria-metrics")
                    .arg(format!("-storageDataPath={}", data_dir.display()))
                    .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
                    // The data is from 2016; the default retention (1 month) would drop it.
                    .arg("-retentionPeriod=100y")
                    .arg("-loggerLevel=ERROR")
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
                std::fs::write(&conf, influx_config(data_dir, port, rpc))?;
                let mut child = Command::new("influxd")
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
        Ok(Running {
            kind,
            child,
            base,
            data_dir: data_dir.to_path_buf(),
            agent,
        })
    }

    /// Where line protocol with ms timestamps is posted.
    pub fn write_url(&self) -> String {
        match self.kind {
            Kind::Tsvault | Kind::Victoria => format!("{}/write?precision=ms", self.base),
            Kind::Influx => format!("{}/write?db=bench&precision=ms", self.base),
        }
    }

    /// The process's peak resident memory so far (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// Samples stored with timestamps in `[start_ms, end_ms)`, through each system's query
    /// language.
    pub fn count_samples(&self, start_ms: i64, end_ms: i64) -> anyhow::Result<u64> {
        // A week at a time: a tsvault request may read at most 100 M samples (the server's
        // query budget), a VictoriaMetrics query 1 G (its -search.maxSamplesPerQuery).
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
    /// quiet, so that the directory size is the settled size:
    /// - tsvault: `POST /api/admin/flush` then `POST /api/admin/compact`;
    /// - VictoriaMetrics: `/internal/force_flush` then `/internal/force_merge`, then waits until
    ///   no merge is active, no row is pending and the directory size held for 2 s;
    /// - InfluxDB (configured with 5 s cold durations, see [`influx_config`]): waits until the
    ///   WAL is empty, no compaction is active and the directory size held for 8 s.
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
        match self.kind {
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
                })?;
            }
            Kind::Influx => {
                self.wait_quiet(Duration::from_secs(8), |me| {
                    let wal = dir_bytes(&me.data_dir.join("wal"))?;
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
                })?;
            }
        }
        Ok(t.elapsed())
    }

    /// Polls every 250 ms until `quiet` holds and the directory size has not changed for
    /// `hold`; gives up after 10 minutes.
    fn wait_quiet(
        &self,
        hold: Duration,
        quiet: impl Fn(&Running) -> anyhow::Result<bool>,
    ) -> anyhow::Result<()> {
        let t = Instant::now();
        let mut last = (u64::MAX, Instant::now());
        loop {
            let size = dir_bytes(&self.data_dir)?;
            if size != last.0 {
                last = (size, Instant::now());
            }
            if quiet(self)? && last.1.elapsed() >= hold {
                return Ok(());
            }
            ensure!(
                t.elapsed() < Duration::from_secs(600),
                "{} did not settle within 10 minutes",
                self.kind.name()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Stops the process (SIGKILL; the benchmark never reuses a directory it killed).
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// InfluxDB 1.x configuration: loopback only, no reporting, quiet logs, and cold durations
/// of 5 s so that the cache is snapshotted to TSM and shards are fully compacted soon after
/// the load (the defaults, 10 min and 4 h, would leave data in the WAL for the whole run).
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

/// VmHWM of process `pid`, in KiB (0 if it cannot be read).
pub fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes of all files under `p` (0 if it does not exist).
pub fn dir_bytes(p: &Path) -> anyhow::Result<u64> {
    let entries = match std::fs::read_dir(p) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e).with_context(|| format!("listing {}", p.display())),
    };
    let mut total = 0;
    for e in entries {
        let e = e?;
        let md = match e.metadata() {
            Ok(md) => md,
            // Files come and go under a running system.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err.into()),
        };
        total += if md.is_dir() {
            dir_bytes(&e.path())?
        } else {
            md.len()
        };
    }
    Ok(total)
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
