//! Backup and restore of each system with its own tools: `tsvault backup`/`tsvault restore`,
//! vmbackup/vmrestore for VictoriaMetrics, and restic over tsvault's data directory (the same
//! files tsvault's own backup reads).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// Runs `cmd` to completion and returns how long it took; a non-zero exit is an error with
/// the command's output.
pub fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    let what = format!("{cmd:?}");
    let t = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let elapsed = t.elapsed();
    ensure!(
        out.status.success(),
        "{what} failed with {}:\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(elapsed)
}

/// `vmbackup` of a running VictoriaMetrics into a local `fs://` destination. A second run to
/// the same destination uploads only the parts it does not hold (its incremental mode).
pub fn vmbackup(base: &str, data_dir: &Path, dst: &Path) -> anyhow::Result<Duration> {
    vm_tool(|port| {
        let mut c = Command::new("vmbackup");
        c.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-storageDataPath={}", data_dir.display()))
            .arg(format!("-snapshot.createURL={base}/snapshot/create"))
            .arg(format!("-dst=fs://{}", dst.display()))
            .arg("-loggerLevel=ERROR");
        c
    })
}

/// `vmrestore` from a local `fs://` backup into an empty directory.
pub fn vmrestore(src: &Path, data_dir: &Path) -> anyhow::Result<Duration> {
    vm_tool(|port| {
        let mut c = Command::new("vmrestore");
        c.arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg(format!("-src=fs://{}", src.display()))
            .arg(format!("-storageDataPath={}", data_dir.display()))
            .arg("-loggerLevel=ERROR");
        c
    })
}

/// Runs a VictoriaMetrics tool with its own metrics server on a free port (the default,
/// :8420, may be taken), timed. A run that panics with "there is no http server" is run
/// again (five times at most: on a loaded machine three failed in a row): the tool's
/// server was not up yet when a very short run (an empty store) stopped it, or its port was
/// taken between the harness choosing it and the tool binding it; such a run did no
/// measurable work.
fn vm_tool(cmd: impl Fn(u16) -> Command) -> anyhow::Result<Duration> {
    let mut tries = 0;
    loop {
        match timed(&mut cmd(crate::systems::free_port()?)) {
            Err(e) if tries < 5 && e.to_string().contains("there is no http server") => {
                tries += 1;
            }
            r => return r,
        }
    }
}

/// A restic repository with a fixed password and its cache beside it.
pub struct Restic<'a> {
    pub repo: &'a Path,
    pub cache: &'a Path,
}

impl Restic<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new("restic");
        c.env("RESTIC_PASSWORD", "tsvault-bench")
            .env("RESTIC_CACHE_DIR", self.cache)
            .arg("--repo")
            .arg(self.repo)
            .arg("--quiet");
        c
    }

    pub fn init(&self) -> anyhow::Result<()> {
        timed(self.cmd().arg("init")).map(|_| ())
    }

    /// A snapshot of `dir`; restic reads only changed files again and stores only new chunks.
    pub fn backup(&self, dir: &Path) -> anyhow::Result<Duration> {
        timed(self.cmd().arg("backup").arg(dir))
    }

    /// [`Restic::backup`] without compression (restic compresses with zstd by default, files
    /// that are compressed already included).
    pub fn backup_uncompressed(&self, dir: &Path) -> anyhow::Result<Duration> {
        timed(self.cmd().args(["backup", "--compression", "off"]).arg(dir))
    }

    /// Restores the latest snapshot under `target` (which then holds the absolute paths).
    pub fn restore(&self, target: &Path) -> anyhow::Result<Duration> {
        timed(
            self.cmd()
                .args(["restore", "latest", "--target"])
                .arg(target),
        )
    }
}

/// tsvault's own backup CLI with a repository in a local directory.
pub struct Tsvault<'a> {
    pub bin: &'a Path,
    pub repo: &'a Path,
}

impl Tsvault<'_> {
    fn cmd(&self) -> Command {
        let mut c = Command::new(self.bin);
        c.env("TSVAULT_REPO_PASSWORD", "tsvault-bench")
            .env("TSVAULT_REPO", self.repo)
            .env_remove("FAILPOINTS");
        c
    }

    pub fn init(&self, encrypted: bool) -> anyhow::Result<()> {
        let mut cmd = self.cmd();
        cmd.args(["backup", "init", "--json"]);
        if !encrypted {
            cmd.arg("--no-encryption");
        }
        timed(&mut cmd).map(|_| ())
    }

    /// An online backup of the server at `base` (full the first time, then incremental),
    /// the snapshot's files read in `data_dir` (the server's data directory) when given,
    /// else pulled over HTTP.
    pub fn backup(&self, base: &str, data_dir: Option<&Path>) -> anyhow::Result<Duration> {
        let mut cmd = self.cmd();
        cmd.args(["backup", "create", "--json", "--server", base]);
        if let Some(dir) = data_dir {
            cmd.arg("--server-data-dir").arg(dir);
        }
        timed(&mut cmd)
    }

    /// Restores the newest backup into the empty directory `target`.
    pub fn restore(&self, target: &Path) -> anyhow::Result<Duration> {
        timed(
            self.cmd()
                .args(["restore", "--json", "--data-dir"])
                .arg(target),
        )
    }
}
