//! Bad input through every write protocol: each gets a clear error naming what is wrong, and
//! the valid data around it is neither lost nor corrupted.

mod common;

use common::{Server, post, post_with, query_dps};
use serde_json::json;

fn values(base: &str, metric: &str) -> Vec<(i64, f64)> {
    query_dps(
        base,
        json!({"start": 0, "end": 4_000_000_000_000i64, "msResolution": true,
               "queries": [{"metric": metric, "aggregator": "sum"}]}),
    )
    .into_iter()
    .flat_map(|(_, d)| d)
    .collect()
}

#[test]
fn line_protocol_bad_lines_are_named_and_good_lines_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let cases: &[(&[u8], &str)] = &[
        (b"m,host=a v=abc 1700000000000000000", "v"),
        (b"m,host=a v=NaN 1700000000000000000", "v"),
        (b"m,host=a v=Inf 1700000000000000000", "v"),
        (b"m,host= v=1 1700000000000000000", "host"),
        (b"m,host=a v=1 99999999999999999999999", "timestamp"),
        (b"m,host=a 1700000000000000000", "field"),
        (b"m,host=a v=1i2 1700000000000000000", "v"),
        (b"m,host=a,host=b v=1 1700000000000000000", "host"),
        (b"m,host=a\xff\xfe v=1 1700000000000000000", "UTF-8"),
        (b"m,host=a v=1 17000000000000000x0", "timestamp"),
        (b"m,host=a v=\"unterminated 1700000000000000000", "v"),
    ];
    for (i, (bad, needle)) in cases.iter().enumerate() {
        let mut body = Vec::new();
        body.extend_from_slice(format!("good,case={i} v={i} 1700000000000000000\n").as_bytes());
        body.extend_from_slice(bad);
        body.extend_from_slice(format!("\ngood,case={i} v={i} 1700000001000000000\n").as_bytes());
        let r = post(&s.url("/write"), &body);
        assert_eq!(r.status, 400, "case {i}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            msg.contains("line 2"),
            "case {i}: message does not name the line: {msg}"
        );
        assert!(
            msg.contains(needle),
            "case {i}: message does not name '{needle}': {msg}"
        );
        assert!(msg.contains("2 lines written"), "case {i}: {msg}");
    }
    // Every good line of every case was written; nothing else was.
    let got = values(&s.base, "good_v");
    assert_eq!(got.len(), 2);
    let total: f64 = (0..cases.len()).map(|i| i as f64).sum();
    assert_eq!(
        got,
        vec![(1_700_000_000_000, total), (1_700_000_001_000, total)]
    );
    // Timestamps that overflow i64 milliseconds at coarse precision.
    let r = post(
        &s.url("/write?precision=h"),
        b"m,host=a v=1 9223372036854775807\n",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("timestamp"),
        "{}",
        r.body
    );
    // Unknown precision.
    let r = post(&s.url("/write?precision=fortnight"), b"m,host=a v=1 1\n");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("fortnight"));
    // v2 uses its own error shape.
    let r = post(&s.url("/api/v2/write?bucket=b"), b"m,host=a v=zzz 1\n");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], json!("invalid"));
    assert!(r.json()["message"].as_str().unwrap().contains("line 1"));
    // Broken gzip.
    let r = post_with(
        &s.url("/write"),
        &[("Content-Encoding", "gzip")],
        b"not gzip at all",
    );
    assert_eq!(r.status, 400);
    assert!(r.json()["error"].as_str().unwrap().contains("gzip"));
}

#[test]
fn oversized_bodies_get_413_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &["--max-body-bytes", "1000"]);
    let mut big = String::new();
    for i in 0..100 {
        big.push_str(&format!(
            "big,host=a v={i} {}\n",
            1_700_000_000_000_000_000i64 + i * 1_000_000_000
        ));
    }
    for path in ["/write", "/api/v2/write", "/api/put"] {
        let r = post(&s.url(path), big.as_bytes());
        assert_eq!(r.status, 413, "{path}: {}", r.body);
        assert!(r.body.contains("1000 bytes"), "{path}: {}", r.body);
    }
    // A small gzip body that inflates past the limit is refused too.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, big.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1000);
    let r = post_with(&s.url("/write"), &[("Content-Encoding", "gzip")], &gz);
    assert_eq!(r.status, 413, "{}", r.body);
    let r = common::get(&s.url("/api/query?start=1699999999&m=sum:big_v"));
    assert_eq!(
        r.status, 400,
        "nothing of the refused bodies was written: {}",
        r.body
    );
    let small = post(&s.url("/write"), b"big,host=a v=1 1700000000000000000\n");
    assert_eq!(small.status, 204);
}

#[test]
fn opentsdb_put_bad_points_are_named_and_good_points_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let good = |v: i64| json!({"metric": "ok.m", "timestamp": 1_700_000_000 + v, "value": v, "tags": {"h": "a"}});
    let bad = [
        json!({"metric": "", "timestamp": 1_700_000_000, "value": 1, "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": "soon", "value": 1, "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": 1_700_000_000, "value": "NaN", "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": 1_700_000_000, "value": "Infinity", "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": 1_700_000_000, "value": 1, "tags": {"h": ""}}),
        json!({"metric": "x y", "timestamp": 1_700_000_000, "value": 1, "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": 1_700_000_000, "tags": {"h": "a"}}),
        json!({"metric": "x", "timestamp": -5, "value": 1, "tags": {"h": "a"}}),
    ];
    let mut body = vec![good(0)];
    body.extend(bad.iter().cloned());
    body.push(good(1));
    let r = post(
        &s.url("/api/put?details"),
        json!(body).to_string().as_bytes(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let v = r.json();
    assert_eq!(v["success"], json!(2));
    assert_eq!(v["failed"], json!(bad.len()));
    for (i, e) in v["errors"].as_array().unwrap().iter().enumerate() {
        assert_eq!(e["datapoint"], bad[i], "errors echo the failed data point");
        assert!(!e["error"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        values(&s.base, "ok.m"),
        vec![(1_700_000_000_000, 0.0), (1_700_000_001_000, 1.0)]
    );
    // Without ?details: OpenTSDB's error shape.
    let r = post(&s.url("/api/put"), json!([bad[0]]).to_string().as_bytes());
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], json!(400));
    // Not JSON, invalid UTF-8, empty.
    for body in [&b"{not json"[..], &b"\xff\xfe"[..], &b""[..], &b"[]"[..]] {
        let r = post(&s.url("/api/put"), body);
        assert_eq!(r.status, 400, "{:?}: {}", body, r.body);
        assert!(r.json()["error"]["message"].as_str().is_some());
    }
}
