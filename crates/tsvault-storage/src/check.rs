//! `tsvault check`: every checksum and invariant of a stopped data directory, read without
//! changing a byte. The engine verifies as much at start (and repairs what a crash leaves);
//! the check reads more (every block of every segment, every snapshot's files) and names
//! every problem instead of stopping at the first.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tsvault_model::SeriesKey;

use crate::engine::{LOCK_FILE, RESTORE_MARKER, lock_data_dir};
use crate::error::{Error, IoContext, Result};
use crate::manifest::{MANIFEST_FILE, Manifest};
use crate::segment::{Segment, segment_file_name};
use crate::series_file::{self, SERIES_FILE};
use crate::snapshot::{self, SNAPSHOTS_DIR};
use crate::wal::{
    WalEnd, check_predecessors, describe_missing, durable_prefix, list_wal_files,
    missing_wal_files, newest_path, read_newest, read_wal_file, wal_file_name,
};

/// One finding of a check, naming the file it is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub file: PathBuf,
    pub detail: String,
}

/// What a check read and found.
#[derive(Debug, Default, Serialize)]
pub struct CheckReport {
    /// Damage or a broken invariant: data that would be lost, refused or served wrong.
    pub problems: Vec<Finding>,
    /// What a crash or an interrupted operation leaves and the server tidies at its next
    /// start (a torn last WAL write, a segment no manifest names), and quarantined files.
    pub notes: Vec<Finding>,
    pub segments: u64,
    pub blocks: u64,
    pub segment_samples: u64,
    pub wal_files: u64,
    pub wal_samples: u64,
    pub snapshots: u64,
    pub bytes_read: u64,
}

impl CheckReport {
    fn problem(&mut self, file: &Path, detail: impl Into<String>) {
        self.problems.push(Finding {
            file: file.to_owned(),
            detail: detail.into(),
        });
    }

    fn note(&mut self, file: &Path, detail: impl Into<String>) {
        self.notes.push(Finding {
            file: file.to_owned(),
            detail: detail.into(),
        });
    }

    /// Records `e` (an error reading `file`) as a problem, in the words the engine uses.
    fn error(&mut self, file: &Path, e: Error) {
        match e {
            Error::Corrupt { path, detail } => self.problem(&path, detail),
            other => self.problem(file, other.to_string()),
        }
    }
}

/// Checks the stopped data directory `dir`. `progress` is told the bytes of each file once it
/// has been read. Errors only when the directory cannot be checked at all (not a data
/// directory, or held by a running server); everything else is a finding in the report.
pub fn check_data_dir(dir: &Path, progress: &mut dyn FnMut(u64)) -> Result<CheckReport> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let wal_dir = dir.join("wal");
    // Anything a server leaves makes it a data directory whose losses are reported (a
    // directory that lost its manifest and its WAL still has its segments or its record
    // of the newest WAL file).
    let known = [
        manifest_path.clone(),
        wal_dir.clone(),
        dir.join("segments"),
        newest_path(&wal_dir),
    ];
    if !known.iter().any(|p| p.exists()) {
        return Err(Error::NotFound(format!(
            "{} is not a tsvault data directory (no MANIFEST, wal/, segments/ or WAL-NEWEST)",
            dir.display()
        )));
    }
    // A running server holds the lock; holding it here keeps one from starting mid-check.
    // (A directory without a lock file, such as a restored one, is left without one.)
    let _lock = if dir.join(LOCK_FILE).exists() {
        Some(lock_data_dir(dir)?)
    } else {
        None
    };
    let mut r = CheckReport::default();
    if dir.join(RESTORE_MARKER).exists() {
        r.problem(
            &dir.join(RESTORE_MARKER),
            "an interrupted restore: the directory is incomplete until the same `tsvault restore` is run again",
        );
    }
    let manifest = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => {
            r.error(&manifest_path, e);
            None
        }
    };
    let seg_dir = dir.join("segments");
    check_segments(&seg_dir, manifest.as_ref(), &mut r, progress)?;
    let wal_start = manifest.as_ref().map_or(0, |m| m.wal_start);
    let segments_without_manifest = manifest.is_none() && has_segment_files(&seg_dir);
    check_wal(
        &wal_dir,
        wal_start,
        segments_without_manifest,
        &mut r,
        progress,
    )?;
    check_snapshots(dir, &mut r, progress)?;
    let qdir = dir.join("quarantine");
    if qdir.is_dir() {
        for e in fs::read_dir(&qdir).ctx("list", &qdir)? {
            let e = e.ctx("list", &qdir)?;
            r.note(
                &e.path(),
                "quarantined by the server (damaged when it started); kept for inspection, never read",
            );
        }
    }
    Ok(r)
}

/// The manifest's invariants, then every segment it lists read whole (file hash, index,
/// every block's checksum, decode, order and range); with no readable manifest, every
/// segment file on disk on its own.
fn check_segments(
    seg_dir: &Path,
    manifest: Option<&Manifest>,
    r: &mut CheckReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    let on_disk: BTreeSet<u64> = if seg_dir.is_dir() {
        let mut seqs = BTreeSet::new();
        for e in fs::read_dir(seg_dir).ctx("list", seg_dir)? {
            let e = e.ctx("list", seg_dir)?;
            let name = e.file_name();
            match name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                Some(seq) => {
                    seqs.insert(seq);
                }
                None => r.note(
                    &e.path(),
                    "not a segment (left by an interrupted flush or compaction; the server removes .tmp files at start)",
                ),
            }
        }
        seqs
    } else {
        BTreeSet::new()
    };
    let Some(m) = manifest else {
        if !on_disk.is_empty()
            && !seg_dir
                .parent()
                .is_some_and(|d| d.join(MANIFEST_FILE).exists())
        {
            let lowest_wal = seg_dir
                .parent()
                .and_then(|d| list_wal_files(&d.join("wal")).ok())
                .and_then(|f| f.first().map(|(n, _)| *n));
            match lowest_wal.filter(|&n| n > 1) {
                Some(n) => r.problem(
                    &seg_dir.with_file_name(MANIFEST_FILE),
                    format!(
                        "missing while {} segment file(s) exist, and a manifest existed (the WAL starts at file {n}: earlier files were removed after flushes): segments it listed may be missing too; the server refuses to start (--quarantine-corrupt rebuilds it from the segment files)",
                        on_disk.len()
                    ),
                ),
                None => r.note(
                    &seg_dir.with_file_name(MANIFEST_FILE),
                    format!(
                        "missing while {} segment file(s) exist (a first flush cut short before its manifest was written); the server rebuilds it from them and replays the whole WAL",
                        on_disk.len()
                    ),
                ),
            }
        }
        for &seq in &on_disk {
            check_segment(
                &seg_dir.join(segment_file_name(seq)),
                seq,
                None,
                r,
                progress,
                &mut HashSet::new(),
            );
        }
        return Ok(());
    };
    let mut seen = HashMap::new();
    let mut keys = HashSet::new();
    let width = m.segment_duration_ms;
    for info in &m.segments {
        let path = seg_dir.join(segment_file_name(info.seq));
        if seen.insert(info.seq, ()).is_some() {
            r.problem(&path, "listed twice in the manifest");
            continue;
        }
        if info.seq >= m.next_segment_seq {
            r.problem(
                &path,
                format!(
                    "the manifest lists sequence {} but hands out {} next",
                    info.seq, m.next_segment_seq
                ),
            );
        }
        if info.partition_end_ms <= info.partition_start_ms
            || (width > 0
                && (info.partition_end_ms - info.partition_start_ms != width
                    || info.partition_start_ms.rem_euclid(width) != 0))
        {
            r.problem(
                &path,
                format!(
                    "partition {}..{} ms is not one of the directory's {width} ms partitions",
                    info.partition_start_ms, info.partition_end_ms
                ),
            );
        }
        if !on_disk.contains(&info.seq) {
            r.problem(&path, "listed in the manifest but missing");
            continue;
        }
        check_segment(&path, info.seq, Some(info), r, progress, &mut keys);
    }
    check_series_file(seg_dir, m, &keys, r)?;
    for &seq in &on_disk {
        if !seen.contains_key(&seq) {
            r.note(
                &seg_dir.join(segment_file_name(seq)),
                "not in the manifest (left by an interrupted flush or compaction); the server removes it at start",
            );
        }
    }
    Ok(())
}

/// The series file against the manifest's record of it, and holding every series of the
/// segments (`keys`). The server rebuilds one it cannot use from the segments at its next
/// start, so nothing is lost, but one recorded and then missing or damaged is a problem
/// (the disk or someone changed it); one never written is a note. One that can be used but
/// misses series is a problem: the server would not know them until it reads their
/// segments.
fn check_series_file(
    seg_dir: &Path,
    m: &Manifest,
    keys: &HashSet<SeriesKey>,
    r: &mut CheckReport,
) -> Result<()> {
    let Some(dir) = seg_dir.parent() else {
        return Ok(());
    };
    let path = dir.join(SERIES_FILE);
    match series_file::read(dir, m.series_file)? {
        Err(u) => {
            let detail = format!(
                "{}; the server reads every segment at its next start and writes the file anew (nothing is lost: the file is derived from the segments)",
                u.why
            );
            // Damage at rest says something of the disk, even in a file that is rebuilt.
            if u.damaged {
                r.problem(&path, detail);
            } else {
                r.note(&path, detail);
            }
        }
        Ok(read) => {
            if read.file_len > read.mark.len {
                r.note(
                    &path,
                    format!(
                        "{} bytes past the {} the manifest records (series appended by a flush whose manifest was never stored: they are in the WAL); cut at the next start",
                        read.file_len - read.mark.len,
                        read.mark.len
                    ),
                );
            }
            let listed: HashSet<&SeriesKey> = read.keys.iter().collect();
            let mut missing: Vec<&SeriesKey> =
                keys.iter().filter(|k| !listed.contains(k)).collect();
            if !missing.is_empty() {
                missing.sort_unstable();
                r.problem(
                    &path,
                    format!(
                        "lacks {} series the segments hold (the first: {}); the server would not know them until it reads their segments. Remove the file: the next start writes it anew",
                        missing.len(),
                        missing[0]
                    ),
                );
            }
        }
    }
    Ok(())
}

/// One segment: opened against its manifest entry (footer, index and whole-file hash), then
/// every block read and decoded, its samples in strictly increasing time order inside the
/// partition, and the totals equal to the footer's.
fn check_segment(
    path: &Path,
    seq: u64,
    expected: Option<&crate::segment::SegmentInfo>,
    r: &mut CheckReport,
    progress: &mut dyn FnMut(u64),
    keys: &mut HashSet<SeriesKey>,
) {
    let seg = match Segment::open(path, seq, expected) {
        Ok(s) => s,
        Err(e) => {
            r.error(path, e);
            return;
        }
    };
    r.segments += 1;
    let info = &seg.info;
    let blocks = match seg.keyed_blocks() {
        Ok(b) => b,
        Err(e) => {
            r.error(path, e);
            return;
        }
    };
    let mut samples = Vec::new();
    let (mut total, mut series) = (0u64, 0u64);
    let mut prev_key: Option<&tsvault_model::SeriesKey> = None;
    for (i, b) in blocks.iter().enumerate() {
        samples.clear();
        if let Err(e) = seg.read_block_into(i, i64::MIN, i64::MAX, &mut samples) {
            r.error(path, e);
            continue;
        }
        r.blocks += 1;
        total += samples.len() as u64;
        if prev_key != Some(&b.key) {
            series += 1;
        }
        if prev_key.is_some_and(|p| p > &b.key) {
            r.problem(
                path,
                format!("block of series {} is out of key order", b.key),
            );
        }
        prev_key = Some(&b.key);
        if !keys.contains(&b.key) {
            keys.insert(b.key.clone());
        }
        if samples.len() != b.count as usize {
            r.problem(
                path,
                format!(
                    "block of series {} holds {} samples; the index says {}",
                    b.key,
                    samples.len(),
                    b.count
                ),
            );
        }
        if samples.windows(2).any(|w| w[0].ts_ms >= w[1].ts_ms) {
            r.problem(
                path,
                format!(
                    "block of series {}: timestamps are not strictly increasing",
                    b.key
                ),
            );
        }
        if samples
            .iter()
            .any(|s| s.ts_ms < info.partition_start_ms || s.ts_ms >= info.partition_end_ms)
        {
            r.problem(
                path,
                format!(
                    "block of series {}: samples outside the partition {}..{} ms",
                    b.key, info.partition_start_ms, info.partition_end_ms
                ),
            );
        }
        if samples.iter().any(|s| !s.value.is_finite()) {
            r.problem(
                path,
                format!("block of series {}: a value is NaN or infinite", b.key),
            );
        }
    }
    if total != info.samples || series != info.series {
        r.problem(
            path,
            format!(
                "its blocks hold {total} samples of {series} series; its footer says {} of {}",
                info.samples, info.series
            ),
        );
    }
    r.segment_samples += total;
    r.bytes_read += info.size_bytes;
    progress(info.size_bytes);
}

/// Every WAL file from the manifest's start: whole records with valid checksums that
/// decode and refer only to series they define; a torn last write is allowed only at the
/// end of the newest file.
fn check_wal(
    wal_dir: &Path,
    wal_start: u64,
    segments_without_manifest: bool,
    r: &mut CheckReport,
    progress: &mut dyn FnMut(u64),
) -> Result<()> {
    if !wal_dir.is_dir() {
        // A server always has it; without it, acknowledged writes no segment holds are lost.
        if wal_start >= 1 || newest_path(wal_dir).exists() {
            r.problem(
                wal_dir,
                "missing: the WAL directory is gone, and with it every acknowledged write not yet in a segment",
            );
        }
        return Ok(());
    }
    let files = list_wal_files(wal_dir)?;
    for e in fs::read_dir(wal_dir).ctx("list", wal_dir)? {
        let e = e.ctx("list", wal_dir)?;
        if !files.iter().any(|(_, p)| *p == e.path()) {
            r.note(
                &e.path(),
                "not a WAL file (not named <number>.wal): the server ignores it",
            );
        }
    }
    // Every file replay needs is there, as the engine checks at start.
    let newest_recorded = match read_newest(wal_dir) {
        Ok(n) => n,
        Err(e) => {
            r.error(&newest_path(wal_dir), e);
            None
        }
    };
    let numbers: Vec<u64> = files
        .iter()
        .map(|(n, _)| *n)
        .filter(|&n| n >= wal_start)
        .collect();
    let (stored_start, start_required) = if wal_start >= 1 {
        (Some(wal_start), true)
    } else if segments_without_manifest {
        (None, false)
    } else {
        (Some(1), false)
    };
    let missing = missing_wal_files(&numbers, stored_start, start_required, newest_recorded);
    if let Some(&(first, _)) = missing.first() {
        r.problem(
            &wal_dir.join(wal_file_name(first)),
            describe_missing(&missing),
        );
    }
    let mut chain = Vec::new();
    let newest = files.last().map_or(0, |(n, _)| *n);
    for (n, path) in &files {
        let size = fs::metadata(path).map_or(0, |m| m.len());
        if *n < wal_start {
            r.note(
                path,
                format!("older than the manifest's WAL start ({wal_start}): its data is in segments; the server removes it at start"),
            );
            continue;
        }
        r.wal_files += 1;
        let durable = durable_prefix(
            *n,
            newest_recorded,
            files.first().is_some_and(|(first, _)| first < n),
        );
        let mut defined = std::collections::HashSet::new();
        let (mut undefined, mut non_finite) = (None, false);
        let mut samples = 0u64;
        let (mut predecessor, mut stand_in) = (None, false);
        let end = read_wal_file(path, |batch| {
            if batch.predecessor.is_some() {
                predecessor = batch.predecessor;
            }
            stand_in |= batch.stand_in;
            defined.extend(batch.defs.iter().map(|(id, _)| *id));
            for (id, _, v) in &batch.samples {
                if !defined.contains(id) {
                    undefined = Some(*id);
                }
                non_finite |= !v.is_finite();
            }
            samples += batch.samples.len() as u64;
            Ok(())
        });
        chain.push((*n, (!stand_in).then_some(size), predecessor));
        r.wal_samples += samples;
        r.bytes_read += size;
        progress(size);
        match end {
            Err(e) => r.error(path, e),
            Ok(WalEnd::Clean) if size < durable && !stand_in => r.problem(
                path,
                format!("the newest WAL file is {size} bytes, shorter than the {durable} fsynced when it was created: it was cut, not torn by a crash"),
            ),
            Ok(WalEnd::Clean) => {}
            Ok(WalEnd::TornTail { valid_len }) if *n == newest && valid_len < durable && !stand_in => r.problem(
                path,
                format!("the newest WAL file keeps {valid_len} whole bytes of the {durable} fsynced when it was created: it was cut, not torn by a crash"),
            ),
            Ok(WalEnd::TornTail { valid_len }) if *n == newest => r.note(
                path,
                format!("ends in a torn write after byte {valid_len} (a crash during a write that was never acknowledged); the server cuts it at start"),
            ),
            Ok(WalEnd::TornTail { valid_len }) => r.problem(
                path,
                format!("damaged record at byte {valid_len} at the end of a WAL file that is not the newest; it was fsynced whole, so this is corruption, not a torn write"),
            ),
            Ok(WalEnd::Damaged { detail, .. }) | Ok(WalEnd::Corrupt { detail, .. }) => {
                r.problem(path, detail)
            }
        }
        if let Some(id) = undefined {
            r.problem(path, format!("a sample refers to undefined series id {id}"));
        }
        if non_finite {
            r.problem(path, "a record holds a NaN or infinite value");
        }
    }
    if newest_recorded.is_none() && chain.iter().any(|(_, _, pred)| pred.is_some()) {
        r.problem(
            &newest_path(wal_dir),
            "missing, while the WAL files were written by a server that keeps it: the newest WAL file may be missing too, and with it acknowledged writes",
        );
    }
    for (n, detail) in check_predecessors(&chain) {
        let path = wal_dir.join(wal_file_name(n));
        // A file damaged at its end is named already.
        if !r.problems.iter().any(|p| p.file == path) {
            r.problem(&path, detail);
        }
    }
    Ok(())
}

/// Every complete snapshot: its description parses and each file it lists is there with
/// the size and BLAKE3 it lists. Partial snapshots (an interrupted snapshot) are noted.
fn check_snapshots(dir: &Path, r: &mut CheckReport, progress: &mut dyn FnMut(u64)) -> Result<()> {
    let sdir = dir.join(SNAPSHOTS_DIR);
    if !sdir.is_dir() {
        return Ok(());
    }
    for e in fs::read_dir(&sdir).ctx("list", &sdir)? {
        let e = e.ctx("list", &sdir)?;
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if !snapshot::is_snapshot_id(&name) || !path.join(snapshot::SNAPSHOT_FILE).exists() {
            r.note(
                &path,
                "not a complete snapshot (one interrupted while being taken or released); the server removes it at start",
            );
            continue;
        }
        let info = match snapshot::load_info(&path) {
            Ok(i) => i,
            Err(e) => {
                r.error(&path, e);
                continue;
            }
        };
        r.snapshots += 1;
        // The snapshot's own record of its newest WAL file (not in its file list).
        if let Err(e) = read_newest(&path.join("wal")) {
            r.error(&newest_path(&path.join("wal")), e);
        }
        for f in &info.files {
            let p = path.join(&f.path);
            match fs::metadata(&p) {
                Ok(md) if md.len() != f.size => r.problem(
                    &p,
                    format!("{} bytes; snapshot {name} lists {}", md.len(), f.size),
                ),
                Ok(_) => match snapshot::hash_file(&p) {
                    Ok(h) if h == f.blake3 => {
                        r.bytes_read += f.size;
                        progress(f.size);
                    }
                    Ok(h) => r.problem(
                        &p,
                        format!("BLAKE3 {h}; snapshot {name} lists {}", f.blake3),
                    ),
                    Err(e) => r.error(&p, e),
                },
                Err(e) => r.problem(&p, format!("listed by snapshot {name} but unreadable: {e}")),
            }
        }
    }
    Ok(())
}

/// Whether `seg_dir` holds any segment file.
fn has_segment_files(seg_dir: &Path) -> bool {
    fs::read_dir(seg_dir).is_ok_and(|list| {
        list.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".seg"))
    })
}
