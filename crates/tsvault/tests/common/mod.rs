//! Test harness: starts the real `tsvault` binary on a free port, talks HTTP to it, and
//! stops it gently (SIGTERM) or kills it (SIGKILL).

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest wait for the server to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A running server process.
pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    /// Everything logged so far, and a signal at each new line.
    log: Arc<(Mutex<String>, Condvar)>,
    log_done: mpsc::Receiver<()>,
}

impl Server {
    /// Starts `tsvault serve --data-dir DIR --listen 127.0.0.1:0 EXTRA...` and waits for its
    /// "listening on" line.
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::try_start(data_dir, extra)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Like `start`, with storage fault points (`FAILPOINTS`, e.g.
    /// `wal-append=2*return(enospc)`).
    pub fn start_with_failpoints(data_dir: &Path, extra: &[&str], failpoints: &str) -> Server {
        Self::start_with_env(data_dir, extra, &[("FAILPOINTS", failpoints)])
    }

    /// Like `start`, with these environment variables.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        Self::try_start_with(data_dir, extra, env)
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    /// Like `start`, but returns the server's log when it exits before listening.
    pub fn try_start(data_dir: &Path, extra: &[&str]) -> Result<Server, String> {
        Self::try_start_with(data_dir, extra, &[])
    }

    /// Like `start_with_env`, but returns the server's log when it exits before listening.
    pub fn try_start_with(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Server, String> {
        Self::try_start_limited(data_dir, extra, env, None)
    }

    /// Like `start`, in a process that may open at most `open_files` files (soft and hard
    /// limit alike, so the server cannot raise it).
    pub fn start_with_open_files_limit(data_dir: &Path, extra: &[&str], open_files: u64) -> Server {
        Self::try_start_limited(data_dir, extra, &[], Some(open_files))
            .unwrap_or_else(|log| panic!("server did not start:\n{log}"))
    }

    fn try_start_limited(
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Result<Server, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tsvault"));
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe, as pre_exec requires.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n as libc::rlim_t,
                        rlim_max: n as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        cmd.env_remove("FAILPOINTS").env_remove("TSVAULT_POWERCUT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("TSVAULT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tsvault binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let (done_tx, done_rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                {
                    let mut l = log2.0.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
                log2.1.notify_all();
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split([',', ' '])
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = addr_tx.send(addr);
                }
            }
            let _ = done_tx.send(());
        });
        match addr_rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => Ok(Server {
                child,
                base: format!("http://{addr}"),
                data_dir: data_dir.to_owned(),
                log,
                log_done: done_rx,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let _ = done_rx.recv_timeout(START_TIMEOUT);
                Err(log.0.lock().unwrap().clone())
            }
        }
    }

    /// Everything the server has logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until the log holds `n` lines containing `text` (each line is signalled as it
    /// arrives); panics with the log after `timeout`.
    pub fn wait_for_log(&self, text: &str, n: usize, timeout: Duration) {
        let count = |log: &String| log.lines().filter(|l| l.contains(text)).count();
        let (log, arrived) = &*self.log;
        let (log, waited) = arrived
            .wait_timeout_while(log.lock().unwrap(), timeout, |log| count(log) < n)
            .unwrap();
        assert!(
            !waited.timed_out(),
            "no {n} lines with {text:?} logged in {timeout:?}:\n{log}"
        );
    }

    /// SIGKILL: no flush, no goodbye.
    /// Waits for the server to exit on its own; returns the status and the full log.
    pub fn wait_exit(mut self) -> (ExitStatus, String) {
        let status = self.child.wait().expect("reap");
        let _ = self.log_done.recv_timeout(START_TIMEOUT);
        (status, self.log())
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM without waiting.
    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
    }

    /// SIGTERM, then waits for the exit; returns the status and the full log.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM)");
        let status = self.child.wait().expect("wait");
        let _ = self.log_done.recv_timeout(START_TIMEOUT);
        (status, self.log())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP client that returns every status as a response, never as an error.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .into()
}

/// A response: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The value of header `name` (lower case), if the answer has it.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn reply(r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Result<Reply, ureq::Error> {
    let mut r = r?;
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = r.body_mut().with_config().limit(1 << 30).read_to_string()?;
    Ok(Reply {
        status,
        body,
        headers,
    })
}

pub fn try_post(url: &str, content_type: &str, body: &[u8]) -> Result<Reply, ureq::Error> {
    reply(
        agent()
            .post(url)
            .header("Content-Type", content_type)
            .send(body),
    )
}

pub fn post(url: &str, body: &[u8]) -> Reply {
    try_post(url, "text/plain", body).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn post_with(url: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut req = agent().post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    reply(req.send(body)).unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

pub fn delete(url: &str) -> Reply {
    reply(agent().delete(url).call()).unwrap_or_else(|e| panic!("DELETE {url}: {e}"))
}

pub fn get(url: &str) -> Reply {
    reply(agent().get(url).call()).unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

/// Runs an OpenTSDB query with msResolution and returns each result's (tags, dps) where
/// dps are (ms, value) sorted.
pub fn query_dps(base: &str, body: serde_json::Value) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    let r = post_with(
        &format!("{base}/api/query"),
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "query failed: {}", r.body);
    let v = r.json();
    v.as_array()
        .expect("query result is an array")
        .iter()
        .map(|res| {
            let mut dps: Vec<(i64, f64)> = res["dps"]
                .as_object()
                .expect("dps is an object")
                .iter()
                .map(|(k, v)| {
                    (
                        k.parse().expect("ts key"),
                        v.as_f64().expect("numeric value"),
                    )
                })
                .collect();
            dps.sort_by_key(|d| d.0);
            (res["tags"].clone(), dps)
        })
        .collect()
}

/// Asserts a CLI run succeeded (showing its output if not) and parses its stdout as JSON
/// (null when it is not JSON).
pub fn ok(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}
