//! `check_data_dir`: a clean directory has no problems; a byte flipped anywhere in a WAL file,
//! a segment (blocks, index, footer), the manifest or a snapshot's files is found and named.

mod common;

use std::path::{Path, PathBuf};

use common::{HOUR, key, open, pt};
use rand::{Rng, SeedableRng};
use tsvault_storage::{CheckReport, check_data_dir};

/// Random byte positions tried per file (`TSVAULT_CHECK_FLIPS` for long runs).
fn flips_per_file() -> usize {
    std::env::var("TSVAULT_CHECK_FLIPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
}

/// A directory with compacted segments in two partitions, a flushed but uncompacted
/// segment, samples in two WAL files and a snapshot.
fn build(dir: &Path) {
    let e = open(dir);
    let (a, b) = (key("cpu", "a"), key("cpu", "b"));
    let t0 = 1_700_000_000_000 - 1_700_000_000_000 % (6 * HOUR);
    for round in 0..3 {
        let pts: Vec<_> = (0..400)
            .flat_map(|i| {
                let ts = t0 + round * 7 * HOUR + i * 10_000;
                [pt(&a, ts, i as f64 * 0.5), pt(&b, ts, -(i as f64))]
            })
            .collect();
        e.write(&pts).unwrap();
        e.flush().unwrap();
        if round == 1 {
            e.compact().unwrap();
        }
    }
    e.write(&[pt(&a, t0 + 30 * HOUR, 1.0)]).unwrap();
    e.snapshot().unwrap();
    e.write(&[pt(&b, t0 + 30 * HOUR, 2.0), pt(&a, t0 + 30 * HOUR + 1, 3.0)])
        .unwrap();
    e.close_without_flush();
}

fn check(dir: &Path) -> CheckReport {
    check_data_dir(dir, &mut |_| {}).unwrap()
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else if p.file_name().unwrap() != "LOCK" {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// The byte range of the length field of the last record of a WAL file: a flip there can
/// make the record look cut short, which no reader can tell from a torn write.
fn last_wal_length_field(bytes: &[u8]) -> std::ops::Range<usize> {
    let mut off = 8;
    let mut last = off;
    while off + 8 <= bytes.len() {
        last = off;
        let len = u32::from_le_bytes(bytes[off..off + 4].try_into().unwrap()) as usize;
        off += 8 + len;
    }
    last..last + 4
}

fn json(bytes: &[u8]) -> Option<serde_json::Value> {
    serde_json::from_slice(bytes).ok()
}

#[test]
fn a_clean_directory_has_no_problems() {
    let tmp = tempfile::tempdir().unwrap();
    build(tmp.path());
    let r = check(tmp.path());
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert!(
        r.segments >= 3 && r.wal_files >= 2 && r.snapshots == 1,
        "{r:?}"
    );
    assert_eq!(r.wal_samples, 3);
    // The check changed nothing: the engine opens the directory and holds every sample.
    let e = open(tmp.path());
    let st = e.stats();
    assert_eq!(st.segment_samples + st.head_samples, 2403);
    e.close().unwrap();
}

#[test]
fn every_flipped_byte_is_found_and_its_file_named() {
    let seed: u64 = std::env::var("TSVAULT_CHECK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    build(&clean);
    let targets = files(&clean);
    let newest_wal = targets
        .iter()
        .filter(|p| p.starts_with(clean.join("wal")) && p.extension().is_some_and(|e| e == "wal"))
        .max()
        .unwrap()
        .clone();
    let (mut tried, mut as_problem, mut as_torn_note, mut neutral) = (0, 0, 0, 0);
    for target in &targets {
        let rel = target.strip_prefix(&clean).unwrap();
        let len = std::fs::metadata(target).unwrap().len() as usize;
        for _ in 0..flips_per_file() {
            let pos = rng.random_range(0..len);
            let mask: u8 = rng.random_range(1..=255);
            let work = tmp.path().join(format!("case{tried}"));
            copy_dir(&clean, &work);
            let victim = work.join(rel);
            let mut bytes = std::fs::read(&victim).unwrap();
            let ambiguous = *target == newest_wal && last_wal_length_field(&bytes).contains(&pos);
            let original = bytes.clone();
            bytes[pos] ^= mask;
            std::fs::write(&victim, &bytes).unwrap();
            // A snapshot's description has no checksum of its own: a flip in it is found
            // as a mismatch with the file it describes, or as JSON that does not parse;
            // one that turns whitespace into other whitespace changes nothing.
            let description = victim.ends_with("snapshot.json");
            if description && json(&original) == json(&bytes) {
                neutral += 1;
                tried += 1;
                std::fs::remove_dir_all(&work).unwrap();
                continue;
            }
            let scope = if description {
                victim.parent().unwrap().to_path_buf()
            } else {
                victim.clone()
            };
            let r = check(&work);
            let named =
                |f: &[tsvault_storage::Finding]| f.iter().any(|p| p.file.starts_with(&scope));
            let what = format!(
                "{} byte {pos} ^ {mask:#04x} (seed {seed}): problems {:?}, notes {:?}",
                rel.display(),
                r.problems,
                r.notes
            );
            if named(&r.problems) {
                as_problem += 1;
            } else {
                // Only a flip in the length of the newest WAL file's last record may pass
                // for a torn write; it is still named.
                assert!(ambiguous && named(&r.notes), "not found: {what}");
                as_torn_note += 1;
            }
            tried += 1;
            std::fs::remove_dir_all(&work).unwrap();
        }
    }
    eprintln!(
        "check: {tried} flipped bytes in {} files: {as_problem} found as problems, {as_torn_note} as a torn last WAL write, {neutral} whitespace in a snapshot description (seed {seed})",
        targets.len()
    );
    assert_eq!(as_problem + as_torn_note + neutral, tried);
}
