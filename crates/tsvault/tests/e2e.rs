//! End to end: the real binary on a real socket, written through each protocol and read back
//! exactly through `/api/query`.

mod common;

use std::io::Write;

use common::{Server, get, post, post_with, query_dps};
use serde_json::json;

fn query_none(base: &str, metric: &str) -> Vec<(serde_json::Value, Vec<(i64, f64)>)> {
    let mut r = query_dps(
        base,
        json!({"start": 0, "end": 4_000_000_000_000i64, "msResolution": true,
               "queries": [{"metric": metric, "aggregator": "none"}]}),
    );
    r.sort_by_key(|(tags, _)| tags.to_string());
    r
}

#[test]
fn influx_v1_write_reads_back_exact_values() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let body = "cpu,host=web\\ 01,dc=eu usage_user=12.5,usage_idle=80i,up=true 1700000000000000000\n\
                cpu,host=web\\ 01,dc=eu usage_user=13.25,usage_idle=79i,up=false 1700000010000000000\n\
                # a comment line\n\
                cpu,host=db,dc=us usage_user=-0.125 1700000000123456789\n";
    let r = post(&s.url("/write?db=mydb"), body.as_bytes());
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("tsvault-warning").as_deref(),
        Some("1 timestamp(s) cut to the millisecond (tsvault stores milliseconds)")
    );
    let user = query_none(&s.base, "cpu_usage_user");
    assert_eq!(user.len(), 2);
    assert_eq!(
        user[0].0,
        json!({"dc": "eu", "host": "web 01", "db": "mydb"}),
        "the database is a tag"
    );
    assert_eq!(
        user[0].1,
        vec![(1_700_000_000_000, 12.5), (1_700_000_010_000, 13.25)]
    );
    assert_eq!(user[1].0, json!({"dc": "us", "host": "db", "db": "mydb"}));
    assert_eq!(
        user[1].1,
        vec![(1_700_000_000_123, -0.125)],
        "ns are floored to ms"
    );
    assert_eq!(
        query_none(&s.base, "cpu_usage_idle")[0].1,
        vec![(1_700_000_000_000, 80.0), (1_700_000_010_000, 79.0)]
    );
    assert_eq!(
        query_none(&s.base, "cpu_up")[0].1,
        vec![(1_700_000_000_000, 1.0), (1_700_000_010_000, 0.0)]
    );
    // precision=s
    let r = post(
        &s.url("/write?precision=s"),
        b"mem,host=a used=1.5 1700000100\n",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        query_none(&s.base, "mem_used")[0].1,
        vec![(1_700_000_100_000, 1.5)]
    );
}

#[test]
fn influx_v2_write_accepts_gzip_and_string_fields_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let body = b"disk,host=a free=42.75,label=\"ssd \\\"fast\\\"\" 1700000000000\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body).unwrap();
    let gz = gz.finish().unwrap();
    let r = post_with(
        &s.url("/api/v2/write?bucket=b&org=o&precision=ms"),
        &[("Content-Encoding", "gzip"), ("Content-Type", "text/plain")],
        &gz,
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        query_none(&s.base, "disk_free")[0].1,
        vec![(1_700_000_000_000, 42.75)]
    );
    let r = get(&s.url("/api/query?start=1699999999&m=sum:disk_label"));
    assert_eq!(r.status, 400, "string fields are not stored: {}", r.body);
    assert!(r.body.contains("disk_label"), "{}", r.body);
    let metrics = get(&s.url("/metrics")).body;
    assert!(
        metrics.contains("tsvault_string_fields_skipped_total 1"),
        "{metrics}"
    );
}

#[test]
fn opentsdb_put_object_and_array_with_summary_and_details() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let one = json!({"metric": "sys.cpu.nice", "timestamp": 1_700_000_000, "value": 18, "tags": {"host": "web01"}});
    let r = post(&s.url("/api/put"), one.to_string().as_bytes());
    assert_eq!(r.status, 204, "{}", r.body);
    let many = json!([
        {"metric": "sys.cpu.nice", "timestamp": 1_700_000_010_500i64, "value": "19.5", "tags": {"host": "web01"}},
        {"metric": "sys.cpu.nice", "timestamp": 1_700_000_000, "value": 7, "tags": {"host": "web02"}},
    ]);
    let r = post(&s.url("/api/put?summary"), many.to_string().as_bytes());
    assert_eq!(
        (r.status, r.json()),
        (200, json!({"success": 2, "failed": 0}))
    );
    let got = query_none(&s.base, "sys.cpu.nice");
    assert_eq!(
        got[0].1,
        vec![(1_700_000_000_000, 18.0), (1_700_000_010_500, 19.5)]
    );
    assert_eq!(got[1].1, vec![(1_700_000_000_000, 7.0)]);

    let mixed = json!([
        {"metric": "sys.cpu.nice", "timestamp": 1_700_000_020, "value": 20, "tags": {"host": "web01"}},
        {"metric": "sys.cpu.nice", "timestamp": 1_700_000_030, "value": 21},
    ]);
    let r = post(&s.url("/api/put?details"), mixed.to_string().as_bytes());
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["success"].clone(), v["failed"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(
        v["errors"][0]["datapoint"]["timestamp"],
        json!(1_700_000_030)
    );
    assert!(
        v["errors"][0]["error"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("tag"),
        "{v}"
    );
    assert_eq!(
        query_none(&s.base, "sys.cpu.nice")[0].1.len(),
        3,
        "the valid point was written"
    );
}

#[test]
fn opentsdb_get_query_with_filters_aggregation_and_downsampling() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let mut lines = String::new();
    for i in 0..6i64 {
        lines.push_str(&format!(
            "req,host=a,dc=eu count={} {}\n",
            i,
            1_700_000_000 + i * 10
        ));
        lines.push_str(&format!(
            "req,host=b,dc=eu count={} {}\n",
            10 * i,
            1_700_000_000 + i * 10
        ));
        lines.push_str(&format!(
            "req,host=c,dc=us count=1000 {}\n",
            1_700_000_000 + i * 10
        ));
    }
    let r = post(&s.url("/write?precision=s"), lines.as_bytes());
    assert_eq!(r.status, 204, "{}", r.body);
    let r = get(&s.url(
        "/api/query?start=1699999990&end=1700000100&m=sum:req_count{dc=eu}&msResolution=true",
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v[0]["tags"], json!({"dc": "eu"}));
    assert_eq!(v[0]["dps"]["1700000050000"], json!(55.0));
    let r =
        get(&s.url("/api/query?start=1699999990&end=1700000100&m=max:30s-avg:req_count{host=*}"));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 3, "{v}");
    let r = get(&s.url("/api/query?start=1699999990&m=summ:req_count"));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("summ"),
        "{}",
        r.body
    );
    let r = get(&s.url("/api/suggest?type=metrics&q=re"));
    assert_eq!(r.json(), json!(["req_count"]));
    let r = get(&s.url("/api/suggest?type=tagv&q=e"));
    assert_eq!(r.json(), json!(["eu"]));
    let aggs = get(&s.url("/api/aggregators")).json();
    for a in [
        "sum", "avg", "min", "max", "count", "dev", "zimsum", "last", "first", "p50", "p99",
    ] {
        assert!(
            aggs.as_array().unwrap().contains(&json!(a)),
            "missing aggregator {a}"
        );
    }
    assert_eq!(
        get(&s.url("/api/version")).json()["version"],
        json!(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn health_ready_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let h = get(&s.url("/health"));
    assert_eq!((h.status, h.json()["status"].clone()), (200, json!("ok")));
    assert_eq!(get(&s.url("/ready")).status, 200);
    assert_eq!(
        post(&s.url("/write"), b"m,host=a v=1 1700000000000000000\n").status,
        204
    );
    let m = get(&s.url("/metrics")).body;
    for name in [
        "tsvault_samples_ingested_total{protocol=\"influx\"} 1",
        "tsvault_series 1",
        "tsvault_wal_bytes",
        "tsvault_segments",
        "tsvault_query_duration_seconds",
    ] {
        assert!(m.contains(name), "metrics lack {name}:\n{m}");
    }
}

#[test]
fn sigterm_flushes_and_exits_zero_and_data_survives() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert!(
        s.log()
            .contains(&format!("data in {}", dir.path().display())),
        "{}",
        s.log()
    );
    assert_eq!(
        post(&s.url("/write"), b"m,host=a v=1.25 1700000000000000000\n").status,
        204
    );
    let (status, log) = s.terminate();
    assert!(status.success(), "exit status {status:?}\n{log}");
    let segs = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(segs, 1, "the head was flushed into a segment at shutdown");
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        query_none(&s.base, "m_v")[0].1,
        vec![(1_700_000_000_000, 1.25)]
    );
}

#[test]
fn flipped_byte_in_segment_is_reported_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        post(
            &s.url("/write"),
            b"m,host=a v=1 1700000000000000000\nm,host=a v=2 1800000000000000000\n"
        )
        .status,
        204
    );
    assert!(s.terminate().0.success());
    let mut segs: Vec<_> = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let victim = segs[0].clone();
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 3;
    bytes[mid] ^= 0x08;
    std::fs::write(&victim, &bytes).unwrap();

    // The start reads footers only; the damage is found by the first read of the segment
    // (or the verification after start), never served, and reported.
    let name = victim.file_name().unwrap().to_str().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r =
        get(&s.url("/api/query?start=1699999999000&end=1700000001000&m=sum:m_v&msResolution=true"));
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains(name), "{}", r.body);
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
    assert!(
        h["corruption_found"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with(name),
        "{h}"
    );
    assert!(s.terminate().0.success());

    let s = Server::start(dir.path(), &["--quarantine-corrupt"]);
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
    assert!(
        h["quarantined"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with(name),
        "{h}"
    );
    assert!(
        h["quarantined"][0]["lost"]
            .as_str()
            .unwrap()
            .contains("1 samples"),
        "{h}"
    );
    assert!(s.log().contains(name));
    assert_eq!(
        query_none(&s.base, "m_v")[0].1,
        vec![(1_800_000_000_000, 2.0)],
        "the intact partition is served"
    );
    assert!(s.terminate().0.success());

    // The next start quarantines nothing, but the file set aside is still there: the loss
    // stays visible until an operator deletes it.
    let s = Server::start(dir.path(), &[]);
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
    assert_eq!(h["quarantined"], json!([]), "{h}");
    assert!(
        h["quarantine_kept"][0].as_str().unwrap().ends_with(name),
        "{h}"
    );
    std::fs::remove_dir_all(dir.path().join("quarantine")).unwrap();
    assert_eq!(get(&s.url("/health")).json()["status"], json!("ok"));
}

#[test]
fn torn_wal_tail_after_kill_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    for i in 0..5 {
        let line = format!(
            "m,host=a v={i} {}\n",
            1_700_000_000_000_000_000i64 + i * 1_000_000_000
        );
        assert_eq!(post(&s.url("/write"), line.as_bytes()).status, 204);
    }
    s.kill9();
    let mut wals: Vec<_> = std::fs::read_dir(dir.path().join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    wals.sort();
    // A torn write: half a record's worth of garbage at the end of the newest file.
    let last = wals.last().unwrap();
    let mut f = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    f.write_all(&[0x20, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3])
        .unwrap();
    drop(f);
    let s = Server::start(dir.path(), &[]);
    assert!(s.log().contains("torn WAL tail"), "{}", s.log());
    let got = query_none(&s.base, "m_v");
    assert_eq!(got[0].1.len(), 5, "{got:?}");
}

/// `/api/query/last` answers each series' last sample in `(end - back_scan, end]` with its own
/// timestamp, whether that sample lies in a segment or in the head, and names the parameter of
/// each bad request.
#[test]
fn opentsdb_query_last_reads_segments_and_head_with_exact_timestamps() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    // A partition boundary (6 h) and an hour boundary: the window [T - 1h, T) ends at it.
    const T: i64 = 1_700_006_400_000;
    const MIN: i64 = 60_000;
    let put = |points: serde_json::Value| {
        let r = post(&s.url("/api/put"), points.to_string().as_bytes());
        assert_eq!(r.status, 204, "{}", r.body);
    };
    let point = |metric: &str, tags: serde_json::Value, ts: i64, value: f64| json!({"metric": metric, "tags": tags, "timestamp": ts, "value": value});
    let (a, b) = (
        json!({"host": "a", "dc": "eu"}),
        json!({"host": "b", "dc": "eu"}),
    );
    let (c, d) = (
        json!({"host": "c", "dc": "us"}),
        json!({"host": "d", "dc": "us"}),
    );
    let e = json!({"host": "e", "dc": "us"});
    let mem = json!({"host": "a"});
    // Flushed into segments: the partition before T and the one from T.
    put(json!([
        point("cpu", a.clone(), T - 60 * MIN - 1, 0.5),
        point("cpu", a.clone(), T - 60 * MIN, 1.0),
        point("cpu", a.clone(), T - 30 * MIN, 2.0),
        point("cpu", b.clone(), T - 50 * MIN, 42.0),
        point("cpu", b.clone(), T - 1, 4.25),
        point("cpu", c.clone(), T - 120 * MIN, 7.0),
        point("cpu", d.clone(), T, 8.0),
        point("mem", mem.clone(), T - 10 * MIN, 3.0),
    ]));
    let r = post(&s.url("/api/admin/flush"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
    let segments = std::fs::read_dir(dir.path().join("segments"))
        .unwrap()
        .count();
    assert_eq!(segments, 2, "one segment per partition");
    // In the head: a later sample for a, an earlier one for b (its last stays in the segment),
    // a new value for mem's timestamp (the last written wins), a series only in the head at
    // the window's first millisecond, and a sample of a after the window.
    put(json!([
        point("cpu", a.clone(), T - 20 * MIN, 2.5),
        point("cpu", b.clone(), T - 40 * MIN, 5.0),
        point("mem", mem.clone(), T - 10 * MIN, 3.75),
        point("cpu", e.clone(), T - 60 * MIN, 9.0),
        point("cpu", a.clone(), T, 100.0),
    ]));

    let last = |metric: &str, tags: &serde_json::Value, ts: i64, value: &str| json!({"metric": metric, "tags": tags, "timestamp": ts, "value": value});
    let get_last = |query: &str| {
        let r = get(&s.url(&format!("/api/query/last?{query}")));
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()
    };
    let window = format!("end={}&back_scan=1", T - 1);
    assert_eq!(
        get_last(&format!("timeseries=cpu&{window}")),
        json!([
            last("cpu", &a, T - 20 * MIN, "2.5"),
            last("cpu", &b, T - 1, "4.25"),
            last("cpu", &e, T - 60 * MIN, "9"),
        ])
    );
    assert_eq!(
        get_last(&format!(
            "timeseries=cpu{{host=a|c}}&timeseries=mem&{window}&resolve=true"
        )),
        json!([
            last("cpu", &a, T - 20 * MIN, "2.5"),
            last("mem", &mem, T - 10 * MIN, "3.75"),
        ])
    );
    // Two hours back: [T - 2h, T), c's only sample (in a segment) at its first millisecond.
    assert_eq!(
        get_last(&format!(
            "timeseries=cpu{{dc=us,host=*}}&end={}&back_scan=2",
            T - 1
        )),
        json!([
            last("cpu", &c, T - 120 * MIN, "7"),
            last("cpu", &e, T - 60 * MIN, "9"),
        ])
    );
    // No end: now, and ten years back reach T, where a (head) and d (segment) have samples.
    assert_eq!(
        get_last("timeseries=cpu{host=a|d}&back_scan=87600"),
        json!([last("cpu", &a, T, "100"), last("cpu", &d, T, "8")])
    );
    assert_eq!(
        get_last(&format!("timeseries=cpu{{host=c}}&{window}")),
        json!([])
    );

    let post_last = |body: &str| {
        post_with(
            &s.url("/api/query/last"),
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
    };
    let r = post_last(
        &json!({"queries": [{"metric": "cpu", "tags": {"host": "*"}}, {"metric": "mem", "tags": {}}],
                "backScan": 1, "end": T - 1, "resolveNames": true})
        .to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!([
            last("cpu", &a, T - 20 * MIN, "2.5"),
            last("cpu", &b, T - 1, "4.25"),
            last("cpu", &e, T - 60 * MIN, "9"),
            last("mem", &mem, T - 10 * MIN, "3.75"),
        ])
    );

    let bad = |r: common::Reply| {
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], json!(400), "{}", r.body);
        r.json()["error"]["message"].as_str().unwrap().to_owned()
    };
    let bad_get = |query: &str| bad(get(&s.url(&format!("/api/query/last?{query}"))));
    assert_eq!(
        bad_get("back_scan=1"),
        "parameter 'timeseries': missing; give at least one, such as timeseries=cpu_usage_user{hostname=*}"
    );
    assert_eq!(
        bad_get("timeseries=cpu{host}"),
        "query 1: bad timeseries parameter 'cpu{host}': invalid tag 'host'; expected tagk=value or tagk=type(expr)"
    );
    assert_eq!(
        bad_get("timeseries=cpu&back_scan=0"),
        "parameter 'back_scan': '0' is not a whole number of hours from 1 to 87600"
    );
    // A typo is not a quiet metric; a zone, a repeated or a misspelt parameter is not
    // guessed at (each once accepted and answered from a default window).
    assert_eq!(
        bad_get(&format!("timeseries=nosuch&{window}")),
        "query 1: no such metric 'nosuch'"
    );
    assert_eq!(
        bad_get("timeseries=cpu&tz=Asia/Tokyo"),
        "timezone 'Asia/Tokyo' (tsvault reads dates as UTC) is not supported by tsvault"
    );
    assert_eq!(
        bad_get("timeseries=cpu&back_scan=3&back_scan=1"),
        "parameter 'back_scan': given 2 times (3, 1); give it once"
    );
    assert_eq!(
        bad(post_last(
            r#"{"queries": [{"metric": "cpu"}], "back_scan": 1}"#
        )),
        "field 'back_scan': unknown field; /api/query/last reads 'queries', 'backScan', 'end', 'resolveNames', 'timezone'"
    );
    assert_eq!(
        bad_get("timeseries=cpu&end=tomorrow"),
        "end time 'tomorrow' is invalid: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago"
    );
    assert_eq!(
        bad(post_last("not json")),
        "request body is not a valid JSON query: expected ident at line 1 column 2"
    );
    assert_eq!(
        bad(post_last(
            r#"{"queries": [{"metric": "cpu"}], "backScan": 87601}"#
        )),
        "field 'backScan': '87601' is not a whole number of hours from 1 to 87600"
    );
    assert_eq!(
        bad(post_last(
            r#"{"queries": [{"metric": "cpu"}], "end": "tomorrow"}"#
        )),
        "end time 'tomorrow' is invalid: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago"
    );
}

/// `/api/put?sync` under `--fsync interval` is fsynced before its answer (it was ignored);
/// a put without it is not (the interval is an hour here).
#[test]
fn opentsdb_put_sync_is_honoured_under_interval_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["--fsync", "interval", "--fsync-interval", "1h"],
    );
    let fsyncs = || -> u64 {
        let m = get(&s.url("/metrics")).body;
        m.lines()
            .find_map(|l| l.strip_prefix("tsvault_wal_fsyncs "))
            .unwrap_or_else(|| panic!("no tsvault_wal_fsyncs in:\n{m}"))
            .parse()
            .unwrap()
    };
    let put = |q: &str, ts: i64| {
        let body = format!(r#"{{"metric":"m","timestamp":{ts},"value":1,"tags":{{"h":"a"}}}}"#);
        assert_eq!(
            post(&s.url(&format!("/api/put{q}")), body.as_bytes()).status,
            204
        );
    };
    let before = fsyncs();
    put("", 1_700_000_000_000);
    assert_eq!(fsyncs(), before, "an interval write is not fsynced at once");
    put("?sync", 1_700_000_001_000);
    assert_eq!(fsyncs(), before + 1, "?sync is");
}

/// Damage a read finds while serving (after the start verified every file) answers 500
/// naming the file, and `/health` says degraded, naming it too (it said ok).
#[test]
fn corruption_found_while_serving_shows_in_health() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let seg = flushed_segment_damaged_while_serving(&s, dir.path());
    let r = post_with(
        &s.url("/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": 1_699_999_999_000i64, "end": 1_700_001_000_000i64, "queries": [{"metric": "m_v", "aggregator": "sum"}]})
            .to_string()
            .as_bytes(),
    );
    let name = seg.file_name().unwrap().to_str().unwrap();
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains(name), "{}", r.body);
    let h = get(&s.url("/health"));
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
    assert!(
        h["corruption_found"][0]["file"]
            .as_str()
            .unwrap()
            .ends_with(name),
        "{h}"
    );
}

/// A compaction that reads a segment found damaged does not stop writes (it poisoned the
/// store with "a failed write or fsync"): the damage is reported, the partition left alone.
#[test]
fn a_compaction_meeting_a_damaged_segment_keeps_writes_going() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let seg = flushed_segment_damaged_while_serving(&s, dir.path());
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            b"m,host=a v=1 1700000000500\n"
        )
        .status,
        204
    );
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    let r = post(&s.url("/api/admin/compact"), b"");
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(
        r.body.contains(seg.file_name().unwrap().to_str().unwrap()),
        "{}",
        r.body
    );
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            b"m,host=b v=1 1700000000000\n"
        )
        .status,
        204,
        "writes go on"
    );
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
    // The partition is left alone from then on.
    let r = post(&s.url("/api/admin/compact"), b"");
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A snapshot's file whose bytes no longer match the hash it is listed with is not served
/// (it was, with 200 and the listed hash in its header): 500 naming it, and /health degraded.
#[test]
fn a_damaged_snapshot_file_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            b"m,host=a v=1 1700000000000\n"
        )
        .status,
        204
    );
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    let snap = post(&s.url("/api/admin/snapshots"), b"").json();
    let id = snap["id"].as_str().unwrap().to_owned();
    let seg = snap["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .find(|p| p.starts_with("segments/"))
        .unwrap();
    // The snapshot's link replaced by a damaged copy; the live segment stays whole.
    let link = dir.path().join("snapshots").join(&id).join(&seg);
    let mut bytes = std::fs::read(&link).unwrap();
    std::fs::remove_file(&link).unwrap();
    bytes[20] ^= 1;
    std::fs::write(&link, &bytes).unwrap();
    let r = get(&s.url(&format!("/api/admin/snapshots/{id}/file?path={seg}")));
    assert_eq!(r.status, 500, "{}", r.body);
    assert!(r.body.contains("BLAKE3"), "{}", r.body);
    let h = get(&s.url("/health")).json();
    assert_eq!(h["status"], json!("degraded"), "{h}");
}

/// Writes 500 samples of `m_v{host=a}`, flushes them into one segment, and flips a bit of
/// its first block while the server runs; returns the segment's path.
fn flushed_segment_damaged_while_serving(s: &Server, dir: &std::path::Path) -> std::path::PathBuf {
    let body: String = (0..500)
        .map(|i| format!("m,host=a v={i} {}\n", 1_700_000_000_000i64 + i * 1000))
        .collect();
    assert_eq!(
        post(&s.url("/write?precision=ms"), body.as_bytes()).status,
        204
    );
    assert_eq!(post(&s.url("/api/admin/flush"), b"").status, 200);
    let seg = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[20] ^= 0x10; // inside the first block
    std::fs::write(&seg, &bytes).unwrap();
    seg
}
