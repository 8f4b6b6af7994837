//! Resources with named bounds: the server works under the common soft limit of 1,024 open
//! files at any number of segments (segment files are opened on demand and the least
//! recently read closed first).

mod common;

use common::{Server, get, post};
use serde_json::json;

/// Hours of one series, one point each, from 2020-01-01: `days` days make `days * 4`
/// partitions of 6 h.
fn hourly(days: i64) -> String {
    let start = 1_577_836_800_000i64;
    (0..days * 24)
        .map(|h| format!("year,h=a v={h} {}\n", start + h * 3_600_000))
        .collect()
}

fn count(s: &Server, days: i64) -> usize {
    let start = 1_577_836_800_000i64;
    let got = common::query_dps(
        &s.base,
        json!({"start": start, "end": start + days * 86_400_000, "msResolution": true,
               "queries": [{"metric": "year_v", "aggregator": "none"}]}),
    );
    got.iter().map(|(_, dps)| dps.len()).sum()
}

fn metric(s: &Server, name: &str) -> u64 {
    let m = get(&s.url("/metrics")).body;
    m.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{m}"))
        .parse()
        .unwrap()
}

/// One write of 1,400 partitions, flushed into 1,400 segments, under a limit of 1,024 open
/// files: the flush succeeded (it used to fail with EMFILE and poison the store, and a
/// restart failed the same way), every point reads back, and a restart opens them all.
#[test]
fn more_segments_than_the_open_files_limit_flush_start_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let days = 350;
    let s = Server::start_with_open_files_limit(dir.path(), &[], 1024);
    assert_eq!(
        post(&s.url("/write?precision=ms"), hourly(days).as_bytes()).status,
        204
    );
    let r = post(&s.url("/api/admin/flush"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(metric(&s, "tsvault_segments"), days as u64 * 4);
    assert_eq!(count(&s, days), days as usize * 24);
    assert!(
        metric(&s, "tsvault_open_segment_files") <= metric(&s, "tsvault_open_segment_files_max")
    );
    assert_eq!(metric(&s, "tsvault_open_segment_files_max"), 256);
    // Another write after the flush is taken: the store is not poisoned.
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            b"year,h=b v=1 1577836800000\n"
        )
        .status,
        204
    );
    drop(s);
    let s = Server::start_with_open_files_limit(dir.path(), &[], 1024);
    assert_eq!(count(&s, days), days as usize * 24 + 1);
    assert_eq!(get(&s.url("/health")).json()["status"], json!("ok"));
}
