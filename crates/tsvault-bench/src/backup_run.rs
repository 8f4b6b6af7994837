//! The backup phase: full, incremental and restore with each system's tool, the backups the
//! server takes itself, and each tool's fixed costs, in balanced rounds.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use indicatif::ProgressBar;

use crate::backup;
use crate::http;
use crate::report::{self, Better, Row};
use crate::rounds::{
    balanced_order, median, next_round, numbered, rounds_of, timed_round, write_back,
};
use crate::systems::{Kind, Running, dir_size, load};
use crate::workload::{self, Workload};

/// How many times each incremental is timed: into as many copies of the repository its
/// full went into (median).
pub(crate) const INCREMENTAL_COPIES: usize = 5;

/// A copy of repository `from` at `to` whose files are hard links (`cp -al`): backup
/// repositories (tsvault's, restic's) only ever add files and remove their own locks, so a
/// copy costs no space and each incremental into one leaves the others as they were.
pub(crate) fn link_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
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
pub(crate) fn full_copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    backup::timed(std::process::Command::new("cp").arg("-a").arg(from).arg(to)).map(|_| ())
}

/// The tools that back up into (or restore from) a round's destinations: tsvault encrypted,
/// tsvault unencrypted, tsvault unencrypted pulling over HTTP, restic (vmbackup's is a
/// plain path).
pub(crate) fn tools<'a>(
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

/// The running system of `kind`.
pub(crate) fn system(running: &[Running], kind: Kind) -> anyhow::Result<&Running> {
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
pub(crate) fn server_backups(
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
pub(crate) fn backups(
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
pub(crate) struct FixedCosts {
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
pub(crate) fn fixed_costs(
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
