//! A 2xx write answer and what is stored agree: every sample given is readable, or the
//! answer says what was not stored as sent (and why). Each case here was once answered 2xx
//! while data went missing, changed or unreadable.

mod common;

use std::io::Write;

use common::{Server, get, post, post_with, query_dps};
use serde_json::json;

fn gzip(text: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text).unwrap();
    e.finish().unwrap()
}

/// Every (tags, [(ms, value)]) of `metric`, tags as `k=v` pairs sorted.
fn series(base: &str, metric: &str) -> Vec<(String, Vec<(i64, f64)>)> {
    let mut out: Vec<(String, Vec<(i64, f64)>)> = query_dps(
        base,
        json!({"start": 0, "end": 4_000_000_000_000i64, "msResolution": true,
               "queries": [{"metric": metric, "aggregator": "none"}]}),
    )
    .into_iter()
    .map(|(tags, dps)| {
        let mut t: Vec<String> = tags
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .collect();
        t.sort();
        (t.join(","), dps)
    })
    .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Two concatenated gzip members are one gzip stream: both are stored (only the first was).
/// Bytes after the last member are refused (they were ignored).
#[test]
fn every_gzip_member_is_stored_and_trailing_bytes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let mut body = gzip(b"a v=1 1700000000000\n");
    body.extend(gzip(b"b v=2 1700000000000\n"));
    let gz = [("Content-Encoding", "gzip")];
    for path in ["/write?precision=ms", "/api/v2/write?precision=ms"] {
        assert_eq!(post_with(&s.url(path), &gz, &body).status, 204, "{path}");
    }
    assert_eq!(
        series(&s.base, "b_v").len(),
        1,
        "the second member was stored"
    );
    let put = |m: &str| {
        gzip(
            format!(r#"{{"metric":"{m}","timestamp":1700000000000,"value":1,"tags":{{"h":"a"}}}}"#)
                .as_bytes(),
        )
    };
    let mut body = put("p1");
    body.extend(put("p2"));
    // Two JSON objects one after the other are not one JSON document: refused whole.
    assert_eq!(post_with(&s.url("/api/put"), &gz, &body).status, 400);
    let mut body = gzip(b"c v=3 1700000000000\n");
    body.extend_from_slice(b"trailing garbage");
    for path in [
        "/write?precision=ms",
        "/api/v2/write?precision=ms",
        "/api/put",
    ] {
        let r = post_with(&s.url(path), &gz, &body);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        assert!(r.body.contains("gzip"), "{path}: {}", r.body);
    }
    assert_never_written(&s.base, "c_v");
}

/// The metric was never written (a query names it as unknown).
fn assert_never_written(base: &str, metric: &str) {
    let r = post_with(
        &format!("{base}/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": 0, "queries": [{"metric": metric, "aggregator": "none"}]})
            .to_string()
            .as_bytes(),
    );
    assert!(
        r.status == 400 && r.body.contains("no such metric"),
        "{metric}: {} {}",
        r.status,
        r.body
    );
}

/// A string field value holding a newline keeps its line whole: the numeric field of that
/// point is stored, and text after the newline never becomes a point of its own.
#[test]
fn a_newline_in_a_string_field_neither_loses_nor_invents_points() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = post(
        &s.url("/write?precision=ms"),
        b"b s=\"a\nb\",v=1 1700000000000\nm s=\"A\nevil,t=x v=9\",v=2 1700000000000\n",
    );
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(
        r.header("tsvault-warning").as_deref(),
        Some("2 string field(s) not stored (tsvault stores numbers and booleans)")
    );
    assert_eq!(
        series(&s.base, "b_v"),
        vec![(String::new(), vec![(1_700_000_000_000, 1.0)])]
    );
    assert_eq!(
        series(&s.base, "m_v"),
        vec![(String::new(), vec![(1_700_000_000_000, 2.0)])]
    );
    // No point named evil was invented.
    assert_never_written(&s.base, "evil_v");
}

/// Timestamps finer than a millisecond are cut to it and said so; two points of a series
/// that land in one millisecond are reported as one overwritten (one was silently gone).
#[test]
fn sub_millisecond_timestamps_are_reported_when_cut_or_collapsed() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = post(
        &s.url("/write"),
        b"m v=1 1700000000000000001\nm v=2 1700000000000000002\n",
    );
    assert_eq!(r.status, 204);
    let w = r.header("tsvault-warning").expect("a warning header");
    assert!(w.contains("2 timestamp(s) cut to the millisecond"), "{w}");
    assert!(w.contains("1 point(s) overwritten"), "{w}");
    assert_eq!(series(&s.base, "m_v")[0].1, vec![(1_700_000_000_000, 2.0)]);
    let m = get(&s.url("/metrics")).body;
    assert!(
        m.contains("tsvault_points_not_stored_as_sent_total{reason=\"collapsed\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("tsvault_points_not_stored_as_sent_total{reason=\"timestamp_truncated\"} 2"),
        "{m}"
    );
    // Whole milliseconds in nanoseconds: nothing to say.
    let r = post(&s.url("/write"), b"m v=3 1700000001000000000\n");
    assert_eq!((r.status, r.header("tsvault-warning")), (204, None));
}

/// What no query can read is refused at write time, on every path (it was answered 204
/// and then every query that could read it was refused).
#[test]
fn timestamps_no_query_can_read_are_refused_on_every_write_path() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    for ts in ["-1", "1152921504606846976", "253402300800000"] {
        let r = post(
            &s.url("/write?precision=ms"),
            format!("m v=1 {ts}\nok v=1 1000\n").as_bytes(),
        );
        assert_eq!(r.status, 400, "{ts}: {}", r.body);
        assert!(
            r.body.contains("line 1") && r.body.contains("9999-12-31"),
            "{ts}: {}",
            r.body
        );
    }
    assert_eq!(series(&s.base, "ok_v")[0].1, vec![(1000, 1.0)]);
    let last = 253_402_300_799_999i64;
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            format!("edge v=1 {last}\n").as_bytes()
        )
        .status,
        204
    );
    let r = post_with(
        &s.url("/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": last - 1, "end": last, "msResolution": true, "queries": [{"metric": "edge_v", "aggregator": "none"}]}).to_string().as_bytes(),
    );
    assert_eq!(
        r.status, 200,
        "the latest storable time is queryable: {}",
        r.body
    );
    assert!(r.body.contains(&last.to_string()), "{}", r.body);
    let import =
        json!({"points": [{"metric": "m", "tags": {"h": "a"}, "timestamp": -5, "value": 1.0}]});
    let r = post_with(
        &s.url("/api/admin/import"),
        &[("Content-Type", "application/json")],
        import.to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

/// The same series and timestamp written to two databases stay two series (they overwrote
/// each other); the database is the tag `db`, as VictoriaMetrics keeps it.
#[test]
fn databases_are_kept_apart_as_a_db_tag() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let line = b"m,h=a v=1 1000\n";
    assert_eq!(post(&s.url("/write?db=one&precision=ms"), line).status, 204);
    assert_eq!(
        post(&s.url("/write?db=two&precision=ms"), b"m,h=a v=2 1000\n").status,
        204
    );
    assert_eq!(
        post(
            &s.url("/api/v2/write?bucket=three&org=o&precision=ms"),
            b"m,h=a v=3 1000\n"
        )
        .status,
        204
    );
    assert_eq!(
        post(
            &s.url("/write?db=one&rp=week&precision=ms"),
            b"m,h=a v=4 1000\n"
        )
        .status,
        204
    );
    assert_eq!(
        post(
            &s.url("/write?db=one&rp=autogen&precision=ms"),
            b"m,h=a,db=own v=5 1000\n"
        )
        .status,
        204
    );
    let got: Vec<(String, f64)> = series(&s.base, "m_v")
        .into_iter()
        .map(|(t, d)| (t, d[0].1))
        .collect();
    assert_eq!(
        got,
        vec![
            ("db=one,h=a".into(), 1.0),
            ("db=one,h=a,rp=week".into(), 4.0),
            ("db=own,h=a".into(), 5.0),
            ("db=three,h=a".into(), 3.0),
            ("db=two,h=a".into(), 2.0),
        ]
    );
}

/// Integers beyond 2^53 are stored rounded, and the answer says so.
#[test]
fn integers_beyond_2_pow_53_are_reported_as_rounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let r = post(
        &s.url("/write?precision=ms"),
        b"m v=9007199254740993i 1000\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("tsvault-warning").as_deref(),
        Some("1 integer(s) beyond 2^53 stored rounded to the nearest float")
    );
    let r = post(
        &s.url("/api/put"),
        br#"{"metric":"p","timestamp":1000,"value":9007199254740993,"tags":{"h":"a"}}"#,
    );
    assert_eq!(r.status, 204);
    assert!(
        r.header("tsvault-warning")
            .is_some_and(|w| w.contains("2^53"))
    );
    let r = post(
        &s.url("/api/put?summary"),
        br#"{"metric":"p","timestamp":1001,"value":"9007199254740995","tags":{"h":"a"}}"#,
    );
    assert_eq!(
        r.json()["not_stored_as_sent"],
        json!("1 integer(s) beyond 2^53 stored rounded to the nearest float")
    );
    assert!(
        r.header("tsvault-warning").is_some(),
        "the header too: {:?}",
        r.headers
    );
    let r = post(
        &s.url("/api/put?summary"),
        br#"{"metric":"p","timestamp":1002,"value":9007199254740992,"tags":{"h":"a"}}"#,
    );
    assert_eq!(r.json(), json!({"success": 1, "failed": 0}));
}

/// Two measurement/field pairs that make one metric name (`a_b c`, `a b_c`) are one series:
/// said in the answer, counted and logged (one silently overwrote the other). A field named
/// `time` is dropped and said so; a tag named `time` refuses its line (as InfluxDB does).
#[test]
fn metric_name_collisions_and_reserved_names_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"a_b c=1 1000\n").status,
        204
    );
    let r = post(&s.url("/write?precision=ms"), b"a b_c=2 1000\n");
    assert_eq!(r.status, 204);
    assert!(
        r.header("tsvault-warning")
            .is_some_and(|w| w.contains("1 metric name(s) made by two measurement/field pairs")),
        "{:?}",
        r.headers
    );
    // Within one body too.
    let r = post(
        &s.url("/write?precision=ms"),
        b"x_y z=1 1000\nx y_z=2 2000\n",
    );
    assert!(
        r.header("tsvault-warning")
            .is_some_and(|w| w.contains("1 metric name(s)")),
        "{:?}",
        r.headers
    );
    assert!(
        get(&s.url("/metrics"))
            .body
            .contains("tsvault_points_not_stored_as_sent_total{reason=\"metric_collision\"} 2")
    );
    assert!(
        s.log()
            .contains("two measurement/field pairs make one metric name")
    );
    let r = post(&s.url("/write?precision=ms"), b"t time=1,v=2 1000\n");
    assert_eq!(r.status, 204);
    assert!(
        r.header("tsvault-warning")
            .is_some_and(|w| w.contains("named 'time' not stored")),
        "{:?}",
        r.headers
    );
    assert_never_written(&s.base, "t_time");
    let r = post(
        &s.url("/write?precision=ms"),
        b"t time=1 1000\nu,time=x v=1 1000\n",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("line 1") && r.body.contains("line 2") && r.body.contains("reserved"),
        "{}",
        r.body
    );
}

/// Two samples of one series at one timestamp in an import: the first is kept, and the
/// answer counts the other (it was resolved silently).
#[test]
fn import_duplicates_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    // The series in its canonical form: metric, then \x1f key \x1e value per tag.
    let body =
        b"{\"series\":\"m\\u001fh\\u001ea\",\"samples\":[[1000,1.0],[1000,2.0],[2000,3.0]]}\n";
    let r = post_with(
        &s.url("/api/admin/import"),
        &[("Content-Type", "application/x-ndjson")],
        body,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["imported"].clone(),
            v["duplicates_in_request"].clone(),
            v["skipped_existing"].clone()
        ),
        (json!(2), json!(1), json!(0)),
        "{v}"
    );
    assert_eq!(series(&s.base, "m")[0].1, vec![(1000, 1.0), (2000, 3.0)]);
}
