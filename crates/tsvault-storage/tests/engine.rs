//! Engine behaviour through its public API: durability across restarts, flush, compaction,
//! retention, out-of-order and duplicate samples, corruption handling, and a model-based test
//! against a BTreeMap reference.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

mod common;

use common::{HOUR, all, key, open, pt, s};
use proptest::prelude::*;
use tsvault_model::{Point, ReadCap, SeriesKey};
use tsvault_storage::{Engine, EngineConfig, Error};

#[test]
fn writes_survive_restart_with_and_without_flush() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("cpu", "a");
    {
        let e = open(dir.path());
        e.write(&[pt(&a, 1000, 1.5), pt(&a, 2000, 2.5)]).unwrap();
        assert_eq!(
            all(&e, "cpu"),
            vec![(a.clone(), vec![s(1000, 1.5), s(2000, 2.5)])]
        );
        e.close_without_flush();
    }
    {
        let e = open(dir.path());
        assert_eq!(
            all(&e, "cpu"),
            vec![(a.clone(), vec![s(1000, 1.5), s(2000, 2.5)])]
        );
        e.write(&[pt(&a, 3000, 3.5)]).unwrap();
        e.close().unwrap();
    }
    let e = open(dir.path());
    assert_eq!(all(&e, "cpu")[0].1.len(), 3);
    let st = e.stats();
    assert_eq!(st.head_samples, 0, "a clean close flushed the head");
    assert_eq!(st.segment_samples, 3);
}

#[test]
fn out_of_order_late_and_duplicate_samples_merge_last_write_wins() {
    let dir = tempfile::tempdir().unwrap();
    let a = key("m", "a");
    let e = open(dir.path());
    e.write(&[
        pt(&a, 5 * HOUR, 5.0),
        pt(&a, HOUR, 1.0),
        pt(&a, 3 * HOUR, 3.0),
    ])
    .unwrap();
    e.flush().unwrap();
    // Late sample into a flushed partition, and an overwrite of a flushed sample.
    e.write(&[pt(&a, 2 * HOUR, 2.0), pt(&a, HOUR, 10.0)])
        .unwrap();
    let want = vec![
        s(HOUR, 10.0),
        s(2 * HOUR, 2.0),
        s(3 * HOUR, 3.0),
        s(5 * HOUR, 5.0),
    ];
    assert_eq!(all(&e, "m")[0].1, want);
    e.flush().unwrap();
    assert_eq!(all(&e, "m")[0].1, want, "after the second flush");
    // Another overwrite in the head, then a full compaction.
    e.write(&[pt(&a, HOUR, 11.0), pt(&a, HOUR, 12.0)]).unwrap();
    e.flush().unwrap();
    e.compact().unwrap();
    let per_partition: BTreeMap<i64, usize> =
        e.segments().iter().fold(BTreeMap::new(), |mut m, s| {
            *m.entry(s.partition_start_ms).or_default() += 1;
            m
        });
    assert!(per_partition.values().all(|&n| n == 1), "{per_partition:?}");
    let want = vec![
        s(HOUR, 12.0),
        s(2 * HOUR, 2.0),
        s(3 * HOUR, 3.0),
        s(5 * HOUR, 5.0),
    ];
    assert_eq!(all(&e, "m")[0].1, want);
    e.close().unwrap();
    assert_eq!(all(&open(dir.path()), "m")[0].1, want, "after restart");
}

/// A data directory that is a file (or under one) is refused naming the file, not with
/// "create ...: File exists".
#[test]
fn a_data_directory_that_is_a_file_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data");
    std::fs::write(&file, "not a directory").unwrap();
    for data_dir in [file.clone(), file.join("below")] {
        let Err(err) = Engine::open(EngineConfig::new(&data_dir)) else {
            panic!("{} opened", data_dir.display());
        };
        assert_eq!(
            err.to_string(),
            format!(
                "invalid storage configuration: {} is a file, not a directory",
                file.display()
            )
        );
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[test]
fn select_filters_by_metric_tags_and_time() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let (a, b, c) = (key("m", "a"), key("m", "b"), key("other", "a"));
    e.write(&[
        pt(&a, 10, 1.0),
        pt(&a, 20, 2.0),
        pt(&b, 15, 3.0),
        pt(&c, 10, 4.0),
    ])
    .unwrap();
    let got = e
        .select(
            "m",
            &|k| k.tag("host") == Some("a"),
            (15, 25),
            ReadCap::NONE,
        )
        .unwrap();
    assert_eq!(got, vec![(a.clone(), vec![s(20, 2.0)])]);
    assert_eq!(e.metric_names(), vec!["m".to_string(), "other".to_string()]);
    assert_eq!(e.tag_values(), vec!["a".to_string(), "b".to_string()]);
}

/// A read past its cap stops having read about the cap, not everything that matched (a
/// query of 200,000 series once held 625 MB before its limits were checked), from the head
/// and from segments alike.
#[test]
fn a_select_stops_at_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let points: Vec<Point> = (0..400)
        .flat_map(|i| {
            let k = key("m", &format!("h{i:03}"));
            (0..10).map(move |t| pt(&k, t * 1000, t as f64))
        })
        .collect();
    e.write(&points).unwrap();
    let cap = ReadCap {
        series_max: usize::MAX,
        budget: 3_000,
        series_weight: 20,
    };
    let mut stopped_at = Vec::new();
    for flushed in [false, true] {
        if flushed {
            e.flush().unwrap();
        }
        match e.select("m", &|_| true, (0, HOUR), cap) {
            Err(Error::Capped { series, samples }) => {
                assert!(
                    series * 20 + samples > 3_000,
                    "{series} series, {samples} samples"
                );
                // Each of the pool's threads may finish the series it holds: a few over.
                assert!(
                    series < 200 && samples < 2_000,
                    "{series} series, {samples} samples"
                );
                stopped_at.push(series);
            }
            other => panic!("flushed {flushed}: {other:?}"),
        }
        let by_series = ReadCap {
            series_max: 399,
            ..ReadCap::NONE
        };
        assert!(matches!(
            e.select("m", &|_| true, (0, HOUR), by_series),
            Err(Error::Capped { series: 400, .. })
        ));
        let all = ReadCap {
            budget: 400 * 30,
            ..cap
        };
        assert_eq!(e.select("m", &|_| true, (0, HOUR), all).unwrap().len(), 400);
    }
}

#[test]
fn retention_refuses_old_samples_and_drops_old_segments() {
    fn clock() -> i64 {
        100 * HOUR
    }
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.retention_ms = Some(10 * HOUR);
    cfg.clock = clock;
    let a = key("m", "a");
    {
        let e = Engine::open(cfg.clone()).unwrap();
        let out = e
            .write(&[pt(&a, 50 * HOUR, 1.0), pt(&a, 95 * HOUR, 2.0)])
            .unwrap();
        assert_eq!((out.written, out.dropped_beyond_retention), (1, 1));
        e.close().unwrap();
    }
    // A segment written when retention was longer is dropped once it expires.
    let mut long = cfg.clone();
    long.retention_ms = Some(80 * HOUR);
    {
        let e = Engine::open(long).unwrap();
        e.write(&[pt(&a, 30 * HOUR, 3.0)]).unwrap();
        e.close().unwrap();
    }
    let e = Engine::open(cfg).unwrap();
    assert_eq!(all(&e, "m")[0].1, vec![s(95 * HOUR, 2.0)]);
    assert_eq!(e.apply_retention().unwrap(), 1);
    assert_eq!(e.segments().len(), 1);
}

#[test]
fn timestamps_outside_the_supported_range_are_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    let a = key("m", "a");
    for ts in [i64::MAX, i64::MIN, tsvault_model::TS_MS_MAX + 1] {
        let err = e.write(&[pt(&a, 1, 1.0), pt(&a, ts, 2.0)]).unwrap_err();
        assert!(matches!(err, Error::OutOfRange(_)), "{err}");
    }
    e.write(&[
        pt(&a, tsvault_model::TS_MS_MAX, 3.0),
        pt(&a, tsvault_model::TS_MS_MIN, 4.0),
    ])
    .unwrap();
    e.flush().unwrap();
    e.compact().unwrap();
    assert_eq!(
        all(&e, "m")[0].1,
        vec![
            s(tsvault_model::TS_MS_MIN, 4.0),
            s(tsvault_model::TS_MS_MAX, 3.0)
        ]
    );
}

#[test]
fn second_process_on_same_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _e = open(dir.path());
    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("second open must fail");
    assert!(matches!(err, Error::Locked(_)), "{err}");
}

fn flushed_store(dir: &Path) {
    let e = open(dir);
    let (a, b) = (key("m", "a"), key("m", "b"));
    // Two partitions (the default width is 6 h), so two segment files.
    e.write(&[pt(&a, 1000, 1.0), pt(&b, 7 * HOUR, 2.0)])
        .unwrap();
    e.close().unwrap();
}

/// The segment files of `dir`, in sequence order.
fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn corrupt_segment_footer_refuses_start_naming_file_or_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    flushed_store(dir.path());
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 2);
    let victim = &files[0];
    let mut bytes = fs::read(victim).unwrap();
    // In the footer: found by the start, which reads only the footers.
    let n = bytes.len();
    bytes[n - 20] ^= 0x01;
    fs::write(victim, &bytes).unwrap();

    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("must refuse to start");
    let msg = err.to_string();
    assert!(msg.contains(&victim.display().to_string()), "{msg}");
    assert!(matches!(err, Error::Corrupt { .. }));

    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(e.quarantined()[0].file, *victim);
    assert!(e.quarantined()[0].moved_to.exists());
    // The other partition is still served; the damaged one is not.
    assert_eq!(all(&e, "m"), vec![(key("m", "b"), vec![s(7 * HOUR, 2.0)])]);
    e.close().unwrap();
    // The manifest no longer lists it: a normal start works again.
    assert_eq!(all(&open(dir.path()), "m").len(), 1);
}

#[test]
fn corrupt_segment_body_is_found_after_start_never_served_and_quarantined_on_request() {
    let dir = tempfile::tempdir().unwrap();
    flushed_store(dir.path());
    let files = segment_files(dir.path());
    let victim = &files[0];
    let mut bytes = fs::read(victim).unwrap();
    // In the data: the start reads only the footer, the verification after it the rest.
    bytes[20] ^= 0x01;
    fs::write(victim, &bytes).unwrap();

    let e = open(dir.path());
    e.wait_verified();
    let found = e.corruption_found();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, *victim);
    assert!(found[0].1.contains("hash mismatch"), "{found:?}");
    assert_eq!(e.stats().segments_unverified, 1);
    // A read that needs it is refused, naming it; the other partition is served.
    let err = e
        .select("m", &|_| true, (0, HOUR), ReadCap::NONE)
        .expect_err("damaged data must not be served");
    assert!(
        err.to_string().contains(&victim.display().to_string()),
        "{err}"
    );
    assert_eq!(
        e.select("m", &|_| true, (7 * HOUR, 8 * HOUR), ReadCap::NONE)
            .unwrap(),
        vec![(key("m", "b"), vec![s(7 * HOUR, 2.0)])]
    );
    e.close().unwrap();

    // --quarantine-corrupt verifies every segment at start and sets the damaged one aside.
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(e.quarantined()[0].file, *victim);
    assert_eq!(all(&e, "m"), vec![(key("m", "b"), vec![s(7 * HOUR, 2.0)])]);
    e.close().unwrap();
    let r = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let e = open(dir.path());
    e.wait_verified();
    assert!(e.corruption_found().is_empty());
    assert_eq!(e.stats().segments_unverified, 0);
}

#[test]
fn a_restart_reads_series_from_the_series_file_and_rebuilds_one_it_cannot_use() {
    let dir = tempfile::tempdir().unwrap();
    let series_path = dir.path().join("SERIES");
    let e = open(dir.path());
    let keys: Vec<SeriesKey> = (0..50).map(|i| key("m", &format!("h{i}"))).collect();
    for (i, k) in keys.iter().enumerate() {
        e.write(&[pt(k, 1000 + i as i64, i as f64)]).unwrap();
    }
    e.flush().unwrap();
    // A series only in the WAL at close... flushed at close too.
    e.write(&[pt(&key("w", "x"), 5000, 1.0)]).unwrap();
    e.close().unwrap();
    let expected = |e: &Engine| {
        let mut got = all(e, "m");
        got.extend(all(e, "w"));
        // In the order the series were registered, which the series file keeps.
        got.sort_by(|a, b| a.0.cmp(&b.0));
        got
    };
    let e = open(dir.path());
    let want = expected(&e);
    assert_eq!(want.len(), 51);
    // Started from the series file: nothing verified yet is needed to know every series.
    assert_eq!(e.metric_names(), vec!["m".to_string(), "w".to_string()]);
    e.close().unwrap();

    // Missing, damaged, cut or longer than recorded: the next start reads the segments,
    // writes the file anew, and serves the same.
    for what in ["missing", "flipped", "cut", "longer", "empty"] {
        // The file as the last start wrote it, changed.
        let good = fs::read(&series_path).unwrap();
        let bytes = match what {
            "missing" => None,
            "flipped" => {
                let mut b = good.clone();
                b[good.len() / 2] ^= 0x40;
                Some(b)
            }
            "cut" => Some(good[..good.len() - 3].to_vec()),
            "longer" => Some([&good[..], b"\x05\x00\x00\x00junkjunk"].concat()),
            _ => Some(Vec::new()),
        };
        match &bytes {
            None => fs::remove_file(&series_path).unwrap(),
            Some(b) => fs::write(&series_path, b).unwrap(),
        }
        // Bytes past the manifest's record are what a crash between an append and its
        // manifest leaves: a note, not a problem; anything else that changed is a problem.
        let r = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
        let named = |f: &[tsvault_storage::Finding]| f.iter().any(|p| p.file.ends_with("SERIES"));
        if what == "longer" {
            assert!(named(&r.notes) && r.problems.is_empty(), "{what}: {r:?}");
        } else {
            assert!(named(&r.problems), "{what}: {r:?}");
        }
        let e = open(dir.path());
        assert_eq!(expected(&e), want, "{what}");
        e.close().unwrap();
        assert!(
            tsvault_storage::check_data_dir(dir.path(), &mut |_| {})
                .unwrap()
                .problems
                .is_empty(),
            "{what}: the file was written anew"
        );
    }
}

#[test]
fn series_the_series_file_lacks_are_found_when_their_segment_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let e = open(dir.path());
    e.write(&[pt(&key("m", "a"), 1000, 1.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(&key("m", "b"), 2000, 2.0)]).unwrap();
    e.close().unwrap();
    // A series file that agrees with the manifest but lacks a series (the file is written
    // by the server; this is what a bug in it would leave): `check` names it, and the
    // verification after start registers the series.
    let mpath = dir.path().join("MANIFEST");
    let mut m = tsvault_storage::Manifest::decode(&fs::read(&mpath).unwrap()).unwrap();
    // The format of FORMAT.md: a magic, then per key its length, its CRC32C and the key.
    let mut series = b"TSVSER\x00\x01".to_vec();
    let k = key("m", "a");
    let k = k.as_str().as_bytes();
    series.extend_from_slice(&(k.len() as u32).to_le_bytes());
    series.extend_from_slice(&crc32c::crc32c(k).to_le_bytes());
    series.extend_from_slice(k);
    fs::write(dir.path().join("SERIES"), &series).unwrap();
    m.series_file = Some(tsvault_storage::SeriesFileMark {
        len: series.len() as u64,
        crc32c: crc32c::crc32c(&series),
    });
    fs::write(&mpath, m.encode()).unwrap();
    let r = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        r.problems
            .iter()
            .any(|p| p.file.ends_with("SERIES") && p.detail.contains("lacks 1 series")),
        "{:?}",
        r.problems
    );
    let e = open(dir.path());
    e.wait_verified();
    assert_eq!(
        all(&e, "m"),
        vec![
            (key("m", "a"), vec![s(1000, 1.0)]),
            (key("m", "b"), vec![s(2000, 2.0)])
        ]
    );
    e.close().unwrap();
    // Written to the file since: a check finds nothing missing.
    let r = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
}

#[test]
fn corrupt_manifest_refuses_start_or_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    flushed_store(dir.path());
    let mpath = dir.path().join("MANIFEST");
    let mut bytes = fs::read(&mpath).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x20;
    fs::write(&mpath, &bytes).unwrap();
    let msg = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("MANIFEST") && msg.contains("checksum"),
        "{msg}"
    );
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(all(&e, "m").len(), 2, "both segments were found again");
}

#[test]
fn changing_the_segment_duration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.segment_duration_ms = Some(HOUR);
    {
        let e = Engine::open(cfg.clone()).unwrap();
        e.write(&[pt(&key("m", "a"), 90 * 60_000, 1.0)]).unwrap();
        e.close().unwrap();
    }
    cfg.segment_duration_ms = Some(2 * HOUR);
    let msg = Engine::open(cfg.clone())
        .err()
        .expect("must refuse")
        .to_string();
    assert!(msg.contains("--segment-duration 3600000ms"), "{msg}");
    cfg.segment_duration_ms = Some(HOUR);
    assert_eq!(all(&Engine::open(cfg).unwrap(), "m").len(), 1);
}

#[test]
fn rebuilt_manifest_quarantines_damaged_segments_instead_of_deleting_them() {
    let dir = tempfile::tempdir().unwrap();
    flushed_store(dir.path());
    let mpath = dir.path().join("MANIFEST");
    let mut bytes = fs::read(&mpath).unwrap();
    bytes[10] ^= 0x01;
    fs::write(&mpath, &bytes).unwrap();
    let mut segs: Vec<_> = fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let mut seg = fs::read(&segs[1]).unwrap();
    seg[12] ^= 0x01;
    fs::write(&segs[1], &seg).unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    let files: Vec<_> = e.quarantined().iter().map(|q| q.file.clone()).collect();
    assert!(files.contains(&segs[1]), "{files:?}");
    assert!(
        e.quarantined().iter().all(|q| q.moved_to.exists()),
        "nothing was deleted"
    );
    assert_eq!(all(&e, "m").len(), 1, "the intact segment is served");
}

#[derive(Debug, Clone)]
enum Op {
    Write(Vec<(u8, i64, i32)>),
    Flush,
    Compact,
    Restart,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec((0u8..6, 0i64..43, any::<i32>()), 1..20).prop_map(Op::Write),
        1 => Just(Op::Flush),
        1 => Just(Op::Compact),
        1 => Just(Op::Restart),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Random writes (with overwrites, out of order, across partitions), flushes,
    /// compactions, clean restarts and crashes: the engine always answers like a BTreeMap.
    #[test]
    fn engine_matches_btreemap_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = EngineConfig::new(dir.path());
        cfg.segment_duration_ms = Some(10 * 1000);
        let keys: Vec<SeriesKey> = (0..6).map(|i| key(if i % 2 == 0 { "m" } else { "n" }, &format!("h{i}"))).collect();
        let mut model: BTreeMap<(SeriesKey, i64), f64> = BTreeMap::new();
        let mut e = Engine::open(cfg.clone()).unwrap();
        for op in ops {
            match op {
                Op::Write(points) => {
                    let pts: Vec<Point> = points.iter().map(|&(k, t, v)| pt(&keys[k as usize], t * 1000, f64::from(v))).collect();
                    e.write(&pts).unwrap();
                    for p in pts {
                        model.insert((p.key, p.ts_ms), p.value);
                    }
                }
                Op::Flush => e.flush().unwrap(),
                Op::Compact => { e.compact().unwrap(); }
                Op::Restart => { e.close().unwrap(); drop(e); e = Engine::open(cfg.clone()).unwrap(); }
                Op::Crash => { e.close_without_flush(); drop(e); e = Engine::open(cfg.clone()).unwrap(); }
            }
            for metric in ["m", "n"] {
                let got: BTreeMap<(SeriesKey, i64), f64> = all(&e, metric).into_iter()
                    .flat_map(|(k, ss)| ss.into_iter().map(move |x| ((k.clone(), x.ts_ms), x.value))).collect();
                let want: BTreeMap<(SeriesKey, i64), f64> = model.iter().filter(|((k, _), _)| k.metric() == metric).map(|(k, v)| (k.clone(), *v)).collect();
                prop_assert_eq!(got, want);
            }
        }
    }
}

/// A data directory whose MANIFEST is gone keeps its segments: they are rebuilt into a new
/// manifest and the WAL replayed on top (before, every segment was deleted as a stray at
/// start); when a manifest had existed, only with --quarantine-corrupt.
#[test]
fn a_missing_manifest_is_rebuilt_from_the_segments_never_taken_for_strays() {
    let dir = tempfile::tempdir().unwrap();
    let k = key("m", "a");
    {
        let e = open(dir.path());
        e.write(&[pt(&k, HOUR, 1.0), pt(&k, 2 * HOUR, 2.0)])
            .unwrap();
        e.flush().unwrap(); // in segments; the WAL files before the flush are removed
        e.write(&[pt(&k, 3 * HOUR, 3.0)]).unwrap();
        e.close_without_flush();
    }
    std::fs::remove_file(dir.path().join("MANIFEST")).unwrap();
    // A manifest existed (the WAL no longer starts at file 1): a lost one may have listed
    // segments that are gone too, so check and the start say so, and only
    // --quarantine-corrupt rebuilds it (the segments there are all kept).
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|n| n.detail.starts_with("missing while")),
        "{:?}",
        report
    );
    let err = Engine::open(EngineConfig::new(dir.path()))
        .err()
        .expect("refused");
    assert!(err.to_string().contains("MANIFEST is missing"), "{err}");
    let mut cfg = EngineConfig::new(dir.path());
    cfg.quarantine_corrupt = true;
    let e = Engine::open(cfg).unwrap();
    assert_eq!(e.quarantined().len(), 1);
    assert_eq!(
        all(&e, "m"),
        vec![(
            k.clone(),
            vec![s(HOUR, 1.0), s(2 * HOUR, 2.0), s(3 * HOUR, 3.0)]
        )]
    );
    assert!(
        dir.path().join("MANIFEST").exists(),
        "the rebuilt manifest is stored"
    );
    e.close().unwrap();
    let report = tsvault_storage::check_data_dir(dir.path(), &mut |_| {}).unwrap();
    assert!(
        report.problems.is_empty() && report.notes.is_empty(),
        "{report:?}"
    );
}

/// The clock of `compaction_waits_for_a_partition_to_go_cold`.
static COLD_TEST_CLOCK: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

#[test]
fn compaction_waits_for_a_partition_to_go_cold() {
    use std::sync::atomic::Ordering;
    fn clock() -> i64 {
        COLD_TEST_CLOCK.load(Ordering::SeqCst)
    }
    COLD_TEST_CLOCK.store(1000 * HOUR, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = EngineConfig::new(dir.path());
    cfg.clock = clock;
    let e = Engine::open(cfg).unwrap();
    let keys: Vec<SeriesKey> = (0..20).map(|h| key("m", &format!("h{h}"))).collect();
    // A large flush into an old partition (hour 0 to 6), then a small one into it with an
    // overwrite of a sample of the large one.
    let big: Vec<Point> = (0..2000)
        .flat_map(|i| keys.iter().map(move |k| pt(k, i * 10_000, i as f64)))
        .collect();
    e.write(&big).unwrap();
    e.flush().unwrap();
    let large = e.segments();
    assert_eq!(large.len(), 1);
    e.write(&[pt(&keys[0], 5, 0.5), pt(&keys[0], 10_000, -1.0)])
        .unwrap();
    e.flush().unwrap();
    let segs = e.segments();
    assert_eq!(
        segs.len(),
        2,
        "the small flush is not merged into the large segment"
    );
    assert!(
        segs.contains(&large[0]),
        "the large segment is not rewritten"
    );
    let first = &all(&e, "m")[0];
    assert_eq!(first.0, keys[0]);
    assert_eq!(first.1[..3], [s(0, 0.0), s(5, 0.5), s(10_000, -1.0)]);
    // Two more small flushes: four segments, the three newer ones merge among themselves
    // and the newest write of a timestamp still wins.
    e.write(&[pt(&keys[0], 10_000, -2.0)]).unwrap();
    e.flush().unwrap();
    e.write(&[pt(&keys[1], 10_000, -3.0)]).unwrap();
    e.flush().unwrap();
    let segs = e.segments();
    assert_eq!(segs.len(), 2, "{segs:?}");
    assert!(segs.contains(&large[0]));
    let got = all(&e, "m");
    assert_eq!(got[0].1[..3], [s(0, 0.0), s(5, 0.5), s(10_000, -2.0)]);
    assert_eq!(got[1].1[1], s(10_000, -3.0));
    // One more small flush (three segments, below the four that merge on their own), then
    // four hours without a flush into the partition: at the next compaction (here the one
    // after a flush into another partition) the small ones merge, the large one stays.
    e.write(&[pt(&keys[2], 10_000, -4.0)]).unwrap();
    e.flush().unwrap();
    assert_eq!(e.segments().len(), 3);
    COLD_TEST_CLOCK.store(1004 * HOUR, Ordering::SeqCst);
    e.write(&[pt(&keys[0], 100 * HOUR, 1.0)]).unwrap();
    e.flush().unwrap();
    let cold: Vec<_> = e
        .segments()
        .into_iter()
        .filter(|s| s.partition_start_ms == 0)
        .collect();
    assert_eq!(cold.len(), 2, "{cold:?}");
    assert!(
        cold.contains(&large[0]),
        "the large segment is not rewritten"
    );
    let mut want = got_with(&got, &keys[0], s(100 * HOUR, 1.0));
    want[2].1[1] = s(10_000, -4.0);
    assert_eq!(all(&e, "m"), want);
    // An explicit compaction merges everything.
    e.compact().unwrap();
    assert_eq!(
        e.segments()
            .iter()
            .filter(|s| s.partition_start_ms == 0)
            .count(),
        1
    );
    assert_eq!(all(&e, "m"), want);
    e.close().unwrap();

    fn got_with(
        got: &[(SeriesKey, Vec<tsvault_model::Sample>)],
        k: &SeriesKey,
        extra: tsvault_model::Sample,
    ) -> Vec<(SeriesKey, Vec<tsvault_model::Sample>)> {
        let mut out = got.to_vec();
        out.iter_mut()
            .find(|(key, _)| key == k)
            .unwrap()
            .1
            .push(extra);
        out
    }
}

/// Under `--fsync interval`, writers that keep the commit queue busy still get an fsync about
/// every interval (the sync once ran only when the queue fell empty once an interval had
/// passed, which eight writers at once rarely let happen).
#[test]
fn interval_fsync_keeps_its_interval_under_sustained_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.fsync = tsvault_storage::FsyncMode::Interval { interval_ms: 10 };
    let e = Engine::open(config).unwrap();
    let started = std::time::Instant::now();
    let run_for = std::time::Duration::from_millis(1500);
    std::thread::scope(|scope| {
        for w in 0..8 {
            let e = &e;
            scope.spawn(move || {
                let a = key("cpu", &format!("w{w}"));
                let batch: Vec<Point> = (0..200).map(|i| pt(&a, i, 1.0)).collect();
                while started.elapsed() < run_for {
                    e.write(&batch).unwrap();
                }
            });
        }
    });
    let intervals = started.elapsed().as_millis() as u64 / 10;
    let fsyncs = e.stats().wal_fsyncs;
    // At least one fsync per 4 intervals, however the machine schedules the writers.
    assert!(
        fsyncs >= intervals / 4,
        "{fsyncs} fsyncs in {intervals} intervals of 10 ms of writes from 8 threads"
    );
}

/// A write that asks for durability is fsynced before it returns, whatever the fsync mode.
#[test]
fn write_synced_fsyncs_under_interval_mode() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.fsync = tsvault_storage::FsyncMode::Interval {
        interval_ms: 3_600_000,
    };
    let e = Engine::open(config).unwrap();
    let a = key("cpu", "a");
    e.write(&[pt(&a, 1, 1.0)]).unwrap();
    assert_eq!(e.stats().wal_fsyncs, 0, "an interval write is not synced");
    e.write_synced(&[pt(&a, 2, 1.0)]).unwrap();
    assert_eq!(e.stats().wal_fsyncs, 1, "a synced write is");
}

/// A load that keeps the head full (every flush finds it full again before its compaction)
/// cannot pile up segments in a partition: past twice `compaction_segments_min`, the
/// partition is compacted even while writes wait for the head. (Found by the start-up
/// benchmark at a million series: without the bound, each flush added a segment whose index
/// stayed in memory, and the server was killed for lack of memory.)
#[test]
fn a_head_kept_full_does_not_pile_up_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.head_samples_max = 200;
    config.compaction_segments_min = 2;
    // Writes as fast as a flush at least: each one fills the head.
    config.fsync = tsvault_storage::FsyncMode::Interval { interval_ms: 1000 };
    let e = Engine::open(config).unwrap();
    let keys: Vec<SeriesKey> = (0..50).map(|i| key("cpu", &format!("h{i}"))).collect();
    let mut most = 0;
    let mut ts = 0;
    while e.stats().flushes < 40 {
        let points: Vec<Point> = (0..4)
            .flat_map(|_| {
                ts += 1000;
                keys.iter().map(move |k| pt(k, ts, ts as f64))
            })
            .collect();
        e.write(&points).unwrap();
        most = most.max(e.segments().len());
        assert!(ts < 100_000_000, "40 flushes never happened");
    }
    assert!(e.stats().compactions > 0);
    assert!(most <= 5, "{most} segments in one partition");
    let got = all(&e, "cpu");
    assert_eq!(got.len(), 50);
    assert!(
        got.iter()
            .all(|(_, samples)| samples.len() == (ts / 1000) as usize)
    );
}
