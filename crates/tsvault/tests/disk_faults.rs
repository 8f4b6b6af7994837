//! Disk faults on the real server (storage fault points through `FAILPOINTS`): a full disk
//! refuses writes with 507 and a message that says so, without poisoning, and writes resume
//! on their own once there is room; nothing acknowledged is lost across a SIGKILL. A failed
//! fsync poisons: 503 until a restart, which recovers everything acknowledged. A read error
//! is a 500 naming the file, never data.

mod common;

use common::{Server, get, post, query_dps};
use serde_json::json;

fn query(s: &Server) -> Vec<(i64, f64)> {
    query_dps(
        &s.base,
        json!({"start": 0, "end": 4_000_000_000_000i64, "msResolution": true,
               "queries": [{"metric": "disk_v", "aggregator": "none"}]}),
    )
    .into_iter()
    .flat_map(|(_, dps)| dps)
    .collect()
}

#[test]
fn a_full_disk_answers_507_and_writes_resume_when_space_returns() {
    let tmp = tempfile::tempdir().unwrap();
    // The first two WAL appends find the disk full, after writing part of their bytes.
    let s = Server::start_with_failpoints(tmp.path(), &[], "wal-append=2*return(enospc-partial)");
    let write = |ts: i64, v: f64| {
        post(
            &s.url("/write?precision=ms"),
            format!("disk v={v} {ts}").as_bytes(),
        )
    };
    for ts in [1_000, 2_000] {
        let r = write(ts, ts as f64);
        assert_eq!(r.status, 507, "{}", r.body);
        assert!(r.body.contains("disk is full"), "{}", r.body);
    }
    // Failing while the disk is full, but not poisoned: writes are not refused for good.
    let health = get(&s.url("/health"));
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(health.json()["writes_refused"], serde_json::Value::Null);
    assert_eq!(write(3_000, 3.0).status, 204);
    assert_eq!(get(&s.url("/health")).status, 200);
    assert_eq!(write(4_000, 4.0).status, 204);
    assert_eq!(query(&s), vec![(3_000, 3.0), (4_000, 4.0)]);
    s.kill9();
    let s = Server::start(tmp.path(), &[]);
    assert_eq!(query(&s), vec![(3_000, 3.0), (4_000, 4.0)]);
}

/// A start that finds no room for its new WAL file serves what the store holds and refuses
/// writes with 507 until there is room, then takes them, without a restart.
#[test]
fn a_start_on_a_full_disk_serves_reads_and_takes_writes_once_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"disk v=1 1000").status,
        204
    );
    s.kill9();
    // The start's WAL file, and the first write's try at it, find the disk full.
    let s = Server::start_with_failpoints(tmp.path(), &[], "wal-create=2*return(enospc)");
    assert!(
        s.log().contains("the disk is full: no new WAL file"),
        "{}",
        s.log()
    );
    assert_eq!(query(&s), vec![(1_000, 1.0)], "what the WAL held is served");
    let health = get(&s.url("/health"));
    assert_eq!(health.status, 503, "{}", health.body);
    assert!(health.body.contains("No space left"), "{}", health.body);
    assert_eq!(get(&s.url("/ready")).status, 503);
    let refused = post(&s.url("/write?precision=ms"), b"disk v=2 2000");
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(refused.body.contains("disk is full"), "{}", refused.body);
    // Room again: the next write creates the WAL file and is taken.
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"disk v=3 3000").status,
        204
    );
    assert_eq!(get(&s.url("/health")).status, 200);
    s.kill9();
    let s = Server::start(tmp.path(), &[]);
    assert_eq!(query(&s), vec![(1_000, 1.0), (3_000, 3.0)]);
}

#[test]
fn a_read_error_is_a_500_naming_the_file_never_data() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    let r = post(&s.url("/write?precision=ms"), b"disk v=1 1000");
    assert_eq!(r.status, 204);
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    s.kill9();
    // Every read of a segment file fails from the start on (the start itself reads none:
    // it opens segments from their size and footer).
    let s = Server::start_with_failpoints(tmp.path(), &[], "segment-read=return(eio)");
    let query = common::post_with(
        &s.url("/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": 0, "end": 4_000_000_000_000i64,
               "queries": [{"metric": "disk_v", "aggregator": "none"}]})
        .to_string()
        .as_bytes(),
    );
    // The last data point query reads through the same path and fails the same way.
    let last = get(&s.url("/api/query/last?timeseries=disk_v&end=2000ms&back_scan=1"));
    for (r, data) in [(query, "\"dps\""), (last, "\"timestamp\"")] {
        assert_eq!(r.status, 500, "{}", r.body);
        assert!(
            r.body.contains("Input/output error") && r.body.contains(".seg"),
            "{}",
            r.body
        );
        assert!(!r.body.contains(data), "{}", r.body);
    }
}

#[test]
fn a_failed_fsync_poisons_with_503_until_a_restart_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    // The second WAL fsync fails (the first is the acknowledged write below).
    let s = Server::start_with_failpoints(tmp.path(), &[], "wal-fsync=1*off->1*return(eio)");
    let write = |ts: i64| {
        post(
            &s.url("/write?precision=ms"),
            format!("disk v={ts} {ts}").as_bytes(),
        )
    };
    assert_eq!(write(1_000).status, 204);
    for ts in [2_000, 3_000] {
        let r = write(ts);
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.body
                .contains("refuses writes after a failed write or fsync")
                && r.body.contains("Input/output error"),
            "{}",
            r.body
        );
    }
    let health = get(&s.url("/health"));
    assert_eq!(health.status, 503, "{}", health.body);
    assert_eq!(query(&s), vec![(1_000, 1_000.0)], "reads go on");
    s.kill9();
    let s = Server::start(tmp.path(), &[]);
    // The acknowledged write is there. The write whose fsync failed has an unknown outcome
    // (its record may have reached the disk: it was answered 503, not refused before being
    // written); the one after it was refused before anything was written.
    let after = query(&s);
    assert!(
        after == vec![(1_000, 1_000.0)] || after == vec![(1_000, 1_000.0), (2_000, 2_000.0)],
        "{after:?}"
    );
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"disk v=4 4000").status,
        204
    );
}

/// A snapshot file whose size is not the one the snapshot lists is refused with a 500 naming
/// it, not streamed short under a Content-Length it cannot fill.
#[test]
fn a_snapshot_file_of_the_wrong_size_is_not_served() {
    let tmp = tempfile::tempdir().unwrap();
    let s = Server::start(tmp.path(), &[]);
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"disk v=1 1000").status,
        204
    );
    let snap = post(&s.url("/api/admin/snapshots"), b"").json();
    let id = snap["id"].as_str().unwrap();
    let file = snap["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"].as_str().unwrap().starts_with("wal/") && f["size"].as_u64() > Some(8))
        .unwrap();
    let path = file["path"].as_str().unwrap();
    let on_disk = tmp.path().join("snapshots").join(id).join(path);
    let len = std::fs::metadata(&on_disk).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&on_disk)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    let r = get(&s.url(&format!("/api/admin/snapshots/{id}/file?path={path}")));
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body
            .contains(&format!("{} bytes; the snapshot lists {len}", len - 1)),
        "{}",
        r.body
    );
}
