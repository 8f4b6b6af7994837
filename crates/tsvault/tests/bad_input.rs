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

/// The table of RELIABILITY.md, HTTP part: each malformed, oversized or hostile request gets
/// the status and the message listed there, and the server goes on serving.
#[test]
fn every_http_input_in_the_table_gets_its_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    assert_eq!(
        post(
            &s.url("/write?precision=ms"),
            b"cpu,host=a v=1 1700000000000"
        )
        .status,
        204
    );
    let snap = post(&s.url("/api/admin/snapshots"), b"").json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // (method, path, content encoding, body, status, text the message must hold)
    type Row<'a> = (&'a str, String, &'a str, &'a [u8], u16, &'a str);
    let table: Vec<Row> = vec![
        (
            "GET",
            "/api/query?start=abc&m=sum:cpu_v".into(),
            "",
            b"",
            400,
            "start time 'abc' is invalid",
        ),
        (
            "GET",
            "/api/query?start=1h-ago&m=nosuch:cpu_v".into(),
            "",
            b"",
            400,
            "unknown aggregator 'nosuch'",
        ),
        (
            "GET",
            "/api/query?start=1h-ago".into(),
            "",
            b"",
            400,
            "no sub-queries",
        ),
        (
            "GET",
            "/api/query?start=1700000000&end=1600000000&m=sum:cpu_v".into(),
            "",
            b"",
            400,
            "must be after start time",
        ),
        (
            "GET",
            "/api/query?start=1h-ago&m=sum:1x-avg:cpu_v".into(),
            "",
            b"",
            400,
            "unknown unit 'x'",
        ),
        (
            "GET",
            "/api/query?start=1h-ago&m=sum:cpu_v{host=a".into(),
            "",
            b"",
            400,
            "missing '}'",
        ),
        (
            "GET",
            "/api/query?start=1h-ago&end=99999999999999999999&m=sum:cpu_v".into(),
            "",
            b"",
            400,
            "the number is too large",
        ),
        (
            "POST",
            "/api/query".into(),
            "",
            b"{\"start\":",
            400,
            "not a valid JSON query",
        ),
        (
            "GET",
            "/api/suggest?type=bogus&q=c".into(),
            "",
            b"",
            400,
            "suggest type 'bogus' is unknown",
        ),
        (
            "GET",
            "/api/suggest?type=metrics&max=-1".into(),
            "",
            b"",
            400,
            "max must be a whole number",
        ),
        (
            "POST",
            "/write".into(),
            "br",
            b"x v=1 1",
            400,
            "Content-Encoding 'br' is not supported",
        ),
        (
            "POST",
            "/api/put".into(),
            "",
            b"{\"metric\":\"m\",\"timestamp\":1,\"value\":1,\"tags\":{}}",
            400,
            "at least one tag",
        ),
        (
            "GET",
            "/api/admin/snapshots/..%2F..%2Fetc".into(),
            "",
            b"",
            404,
            "no snapshot ../../etc",
        ),
        (
            "DELETE",
            "/api/admin/snapshots/abc".into(),
            "",
            b"",
            404,
            "no snapshot abc",
        ),
        (
            "GET",
            format!("/api/admin/snapshots/{snap}/file?path=../../MANIFEST"),
            "",
            b"",
            404,
            "has no file \\\"../../MANIFEST",
        ),
        (
            "GET",
            format!("/api/admin/snapshots/{snap}/file?path=/etc/passwd"),
            "",
            b"",
            404,
            "has no file \\\"/etc/passwd",
        ),
        (
            "GET",
            format!("/api/admin/snapshots/{snap}/digests?path=segments/../MANIFEST"),
            "",
            b"",
            404,
            "has no file",
        ),
        (
            "GET",
            format!("/api/admin/snapshots/{snap}/digests?path=MANIFEST&basis=bogus"),
            "",
            b"",
            400,
            "basis: 'bogus' is none of 'samples', 'blocks', 'blocks-xxh3' and 'blocks-crc32c'",
        ),
        (
            "GET",
            format!("/api/admin/snapshots/{snap}/digests?path=MANIFEST&basis=blocks"),
            "",
            b"",
            400,
            "digests of blocks are for segment files only",
        ),
        (
            "POST",
            "/api/admin/import".into(),
            "",
            b"{\"series\":\"x\",\"samples\":[[1,\"a\"]]}",
            400,
            "line 1: not an import record",
        ),
        (
            "POST",
            "/api/admin/import".into(),
            "",
            b"{\"series\":\"cpu\\u001fhost\\u001ea\",\"samples\":[[1,1.0]]}\nnot json",
            400,
            "line 2",
        ),
    ];
    for (method, path, encoding, body, status, needle) in &table {
        let url = s.url(path);
        let r = match *method {
            "GET" => common::get(&url),
            "DELETE" => common::delete(&url),
            _ if encoding.is_empty() => post(&url, body),
            _ => post_with(&url, &[("Content-Encoding", encoding)], body),
        };
        assert_eq!(r.status, *status, "{method} {path}: {}", r.body);
        assert!(
            r.body.contains(needle),
            "{method} {path}: {} (wanted {needle:?})",
            r.body
        );
    }
    // Nothing of it disturbed the data.
    assert_eq!(values(&s.base, "cpu_v"), vec![(1_700_000_000_000, 1.0)]);
}

/// The table of RELIABILITY.md, command-line part: bad flags, config files, repositories and
/// directories each end the command with a non-zero exit and a message naming the problem.
#[test]
fn every_cli_input_in_the_table_gets_its_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |name: &str| tmp.path().join(name).display().to_string();
    std::fs::write(p("type.toml"), "data-dir = 5\n").unwrap();
    std::fs::write(p("key.toml"), "nonsense = \"x\"\n").unwrap();
    std::fs::create_dir_all(p("nonempty")).unwrap();
    std::fs::write(p("nonempty") + "/f", "x").unwrap();
    let run = |args: &[&str], password: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tsvault"))
            .args(args)
            .env("TSVAULT_REPO_PASSWORD", password)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .env_remove("TSVAULT_REPO")
            .env_remove("TSVAULT_CONFIG")
            .output()
            .unwrap()
    };
    let repo = p("repo");
    common::ok(&run(&["backup", "init", "--repo", &repo], "pw"));
    let pack_size = |size: &str| -> Vec<String> {
        [
            "backup",
            "create",
            "--repo",
            &repo,
            "--data-dir",
            &p("nothing"),
            "--pack-size",
            size,
        ]
        .map(String::from)
        .to_vec()
    };
    let table: Vec<(Vec<String>, &str, &str)> = vec![
        (
            ["backup", "init", "--repo", &p("r-rc4"), "--cipher", "rc4"]
                .map(String::from)
                .to_vec(),
            "pw",
            "unknown cipher \"rc4\": aes-256-gcm or chacha20-poly1305",
        ),
        (
            [
                "backup",
                "init",
                "--repo",
                &p("r-plain"),
                "--no-encryption",
                "--cipher",
                "chacha20-poly1305",
            ]
            .map(String::from)
            .to_vec(),
            "pw",
            "cannot be used with",
        ),
        (
            vec![
                "serve".into(),
                "--retention".into(),
                "10x".into(),
                "--data-dir".into(),
                p("d1"),
            ],
            "pw",
            "--retention '10x' is not a duration",
        ),
        (
            vec![
                "serve".into(),
                "--segment-duration".into(),
                "0s".into(),
                "--data-dir".into(),
                p("d2"),
            ],
            "pw",
            "must be longer than zero",
        ),
        (
            vec!["serve".into(), "--config".into(), p("type.toml")],
            "pw",
            "TOML parse error at line 1",
        ),
        (
            vec!["serve".into(), "--config".into(), p("key.toml")],
            "pw",
            "TOML parse error at line 1",
        ),
        (
            vec!["serve".into(), "--config".into(), p("missing.toml")],
            "pw",
            "reading config file",
        ),
        (
            vec![
                "serve".into(),
                "--listen".into(),
                "999.1.1.1:80".into(),
                "--data-dir".into(),
                p("d3"),
            ],
            "pw",
            "cannot listen on 999.1.1.1:80",
        ),
        (
            vec![
                "backup".into(),
                "init".into(),
                "--repo".into(),
                "ftp://x/y".into(),
            ],
            "pw",
            "only file:// paths, plain paths and s3:// are supported",
        ),
        (
            vec![
                "backup".into(),
                "init".into(),
                "--repo".into(),
                repo.clone(),
            ],
            "pw",
            "already holds a repository",
        ),
        (
            vec![
                "backup".into(),
                "list".into(),
                "--repo".into(),
                repo.clone(),
            ],
            "wrong",
            "wrong passphrase",
        ),
        (
            vec!["backup".into(), "list".into(), "--repo".into(), p("norepo")],
            "pw",
            "holds no repository",
        ),
        (
            vec![
                "backup".into(),
                "show".into(),
                "--repo".into(),
                repo.clone(),
                "20990101T000000.000Z-00000000".into(),
            ],
            "pw",
            "no backup 20990101T000000.000Z-00000000",
        ),
        (
            vec![
                "backup".into(),
                "show".into(),
                "--repo".into(),
                repo.clone(),
                "../../etc".into(),
            ],
            "pw",
            "is not a backup id",
        ),
        (
            vec![
                "backup".into(),
                "create".into(),
                "--repo".into(),
                repo.clone(),
                "--server".into(),
                "localhost:4242".into(),
            ],
            "pw",
            "give the server's URL",
        ),
        (
            vec![
                "backup".into(),
                "create".into(),
                "--repo".into(),
                repo.clone(),
                "--type".into(),
                "weekly".into(),
                "--data-dir".into(),
                p("d4"),
            ],
            "pw",
            "invalid value 'weekly'",
        ),
        (
            vec![
                "backup".into(),
                "prune".into(),
                "--repo".into(),
                repo.clone(),
                "--keep-last".into(),
                "many".into(),
            ],
            "pw",
            "invalid value 'many' for '--keep-last",
        ),
        (
            pack_size("9MiB"),
            "pw",
            "'9MiB' is larger than the largest pack, 8MiB",
        ),
        (
            pack_size("4GB"),
            "pw",
            "'4GB': the unit is not one of B, KiB, MiB",
        ),
        (
            vec![
                "restore".into(),
                "--repo".into(),
                repo.clone(),
                "--data-dir".into(),
                p("out"),
                "--start".into(),
                "yesterday".into(),
            ],
            "pw",
            "neither milliseconds since the epoch nor an RFC 3339 time",
        ),
        (
            vec![
                "restore".into(),
                "--repo".into(),
                repo.clone(),
                "--data-dir".into(),
                p("nonempty"),
            ],
            "pw",
            "holds no backup",
        ),
        (
            vec!["check".into(), "--data-dir".into(), p("nothing")],
            "pw",
            "is not a tsvault data directory",
        ),
    ];
    for (args, password, needle) in &table {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, password);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr} (wanted {needle:?})"
        );
        assert!(!stderr.contains("stack backtrace"), "{args:?}: {stderr}");
    }
}
