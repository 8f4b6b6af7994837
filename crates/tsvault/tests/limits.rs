//! Resources with named bounds: the server works under the common soft limit of 1,024 open
//! files at any number of segments (segment files are opened on demand and the least
//! recently read closed first).

mod common;

use common::{Server, get, post, post_with};
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

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Waits (bounded) for the server to close `conn`: reads until EOF or an error.
fn closed_within(mut conn: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    conn.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return started.elapsed(),
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                panic!("the connection was still open after {limit:?}")
            }
            Err(_) => return started.elapsed(),
        }
    }
}

/// What the server answered on `conn` (status line and body), reading until it closes.
fn answer(mut conn: TcpStream) -> String {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut out = String::new();
    let _ = conn.read_to_string(&mut out);
    out
}

fn connect(s: &Server) -> TcpStream {
    TcpStream::connect(s.base.trim_start_matches("http://")).unwrap()
}

/// Idle connections, half-sent headers and stalled bodies are closed or refused within their
/// bounds (they were held for minutes); a declared length over the limit is refused before
/// any of the body is read.
#[test]
fn slow_and_idle_clients_are_bounded_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["--header-timeout", "1s", "--body-timeout", "2s"],
    );
    // Connected, nothing sent.
    assert!(closed_within(connect(&s), Duration::from_secs(20)) >= Duration::from_millis(900));
    // Half a header.
    let mut c = connect(&s);
    c.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Le")
        .unwrap();
    closed_within(c, Duration::from_secs(20));
    // Idle after a request on a keep-alive connection.
    let mut c = connect(&s);
    c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(c.try_clone().unwrap());
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains("200"), "{status}");
    closed_within(c, Duration::from_secs(20));
    // A body that stalls half-way: 408, in JSON.
    let mut c = connect(&s);
    c.write_all(
        b"POST /write?precision=ms HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nm v=1 1",
    )
    .unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 408"), "{a}");
    assert!(a.contains("stalled") || a.contains("did not arrive"), "{a}");
    // A declared length over the limit: 413 at once, the body never sent.
    let mut c = connect(&s);
    c.write_all(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
        .unwrap();
    let a = answer(c);
    assert!(a.starts_with("HTTP/1.1 413"), "{a}");
    assert!(a.contains("larger than the limit"), "{a}");
}

/// Clients that declare large bodies and stall cannot together hold more than the byte
/// budget: the request past it gets 503 at once, and the budget comes back when they end.
#[test]
fn bytes_held_across_requests_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--max-body-bytes",
            "10000000",
            "--max-buffered-bytes",
            "25000000",
            "--body-timeout",
            "60s",
        ],
    );
    let declare = |n: usize| {
        let mut c = connect(&s);
        c.write_all(
            format!("POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\nm v=1")
                .as_bytes(),
        )
        .unwrap();
        c
    };
    let holding = [declare(10_000_000), declare(10_000_000)];
    // Each waits for its body, its declared length claimed (20 MB of the 25).
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&s, "tsvault_request_body_bytes_held") < 20_000_000 {
        assert!(
            Instant::now() < deadline,
            "the two bodies were never claimed"
        );
    }
    // A third 10 MB one cannot fit.
    let a = answer(declare(10_000_000));
    assert!(a.starts_with("HTTP/1.1 503"), "{a}");
    assert!(a.contains("25000000 bytes of request bodies"), "{a}");
    drop(holding);
    // Their budget is released once their requests end (the server sees the close).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(&s.url("/write?precision=ms"), b"m v=1 1000\n");
        if r.status == 204 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the budget never came back: {} {}",
            r.status,
            r.body
        );
    }
}

/// Connections beyond the bound wait in the backlog and are served once one closes.
#[test]
fn connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["--max-connections", "2", "--header-timeout", "30s"],
    );
    let first = connect(&s);
    let second = connect(&s);
    // Both slots are held by silent connections: a third is accepted by the kernel but not
    // served.
    let mut third = connect(&s);
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        third.read(&mut buf).is_err(),
        "served beyond the connection bound"
    );
    drop(first);
    let a = answer(third);
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    drop(second);
}

/// Every error answer is JSON, axum's own rejections included (they were plain text or
/// empty).
#[test]
fn every_error_answer_is_json() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    for (method, path, status) in [
        ("GET", "/no/such/route", 404),
        ("DELETE", "/api/query", 405),
        ("GET", "/write", 405),
        ("GET", "/api/admin/snapshots/1-0/file", 400),
        ("GET", "/api/admin/backups?type=x", 404),
    ] {
        let r = common::agent()
            .run(
                ureq::http::Request::builder()
                    .method(method)
                    .uri(s.url(path))
                    .body(())
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{method} {path}");
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.into_body().read_to_string().unwrap();
        assert_eq!(
            ct.as_deref(),
            Some("application/json"),
            "{method} {path}: {body}"
        );
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{method} {path}: {e}: {body}"));
        let message = v["error"]["message"]
            .as_str()
            .or(v["error"].as_str())
            .unwrap_or_default();
        assert!(!message.is_empty(), "{method} {path}: {body}");
    }
}

/// The port answers from the start: `/health` says `starting` (200, so a liveness probe
/// does not kill a long replay), `/ready` and writes get 503, until the engine is open.
#[test]
fn the_server_answers_while_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tsvault"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("FAILPOINTS", "engine-open=sleep(4000)")
        .env("TSVAULT_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("the server logs its address").unwrap();
        if let Some(rest) = line.split("accepting connections on http://").nth(1) {
            break rest.split(' ').next().unwrap().to_owned();
        }
    };
    let base = format!("http://{addr}");
    let h = get(&format!("{base}/health"));
    assert_eq!(
        (h.status, h.json()["status"].as_str()),
        (200, Some("starting")),
        "{}",
        h.body
    );
    assert_eq!(get(&format!("{base}/ready")).status, 503);
    let w = post(&format!("{base}/write"), b"m v=1\n");
    assert_eq!(w.status, 503);
    assert!(
        w.json()["error"].as_str().unwrap().contains("starting"),
        "{}",
        w.body
    );
    // Then it opens, and serves.
    for line in lines.by_ref() {
        if line.unwrap().contains("listening on http://") {
            break;
        }
    }
    assert_eq!(get(&format!("{base}/ready")).status, 200);
    let _ = child.kill();
    let _ = child.wait();
}

/// A stop waits for requests under way only so long (a stalled client held it for ever),
/// and a second signal stops the wait at once; the flush happens either way.
#[test]
fn shutdown_has_a_deadline_and_a_second_signal_ends_the_wait() {
    for (timeout, second_signal) in [("2s", false), ("1h", true)] {
        let dir = tempfile::tempdir().unwrap();
        let s = Server::start(
            dir.path(),
            &["--shutdown-timeout", timeout, "--body-timeout", "1h"],
        );
        assert_eq!(
            post(&s.url("/write?precision=ms"), b"m v=1 1000\n").status,
            204
        );
        let mut stalled = connect(&s);
        stalled
            .write_all(b"POST /write HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nm v")
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while metric(&s, "tsvault_request_body_bytes_held") < 100 {
            assert!(
                Instant::now() < deadline,
                "the stalled request never reached the server"
            );
        }
        s.sigterm();
        s.wait_for_log(
            "stop signal: no new connections",
            1,
            Duration::from_secs(20),
        );
        if second_signal {
            s.sigterm();
        }
        let started = Instant::now();
        let (status, log) = s.wait_exit();
        assert!(status.success(), "{log}");
        assert!(started.elapsed() < Duration::from_secs(30), "{log}");
        assert!(
            log.contains("cut off")
                && log.contains("the head is flushed")
                && log.contains("closed; bye"),
            "{log}"
        );
        drop(stalled);
        // The flush happened: the sample is in a segment.
        let s = Server::start(dir.path(), &[]);
        assert_eq!(metric(&s, "tsvault_segments"), 1);
    }
}

/// While the disk is full, `/health` says failing and `/ready` 503 (both said ok while every
/// write got 507); once a write succeeds again, both recover.
#[test]
fn health_and_ready_follow_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_failpoints(dir.path(), &[], "wal-append=1*return(enospc)");
    let r = post(&s.url("/write?precision=ms"), b"m v=1 1000\n");
    assert_eq!(r.status, 507, "{}", r.body);
    let h = get(&s.url("/health"));
    assert_eq!(
        (h.status, h.json()["status"].as_str()),
        (503, Some("failing")),
        "{}",
        h.body
    );
    assert!(
        h.json()["disk_full"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{}",
        h.body
    );
    assert_eq!(get(&s.url("/ready")).status, 503);
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"m v=1 1000\n").status,
        204
    );
    assert_eq!(get(&s.url("/health")).json()["status"], json!("ok"));
    assert_eq!(get(&s.url("/ready")).status, 200);
}

/// A snapshot asked for by a client that went away before the answer is released at once
/// (it was orphaned for a day, holding disk space).
#[test]
fn a_snapshot_whose_client_went_away_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start_with_failpoints(dir.path(), &[], "snapshot-build=sleep(1500)");
    let mut c = connect(&s);
    c.write_all(b"POST /api/admin/snapshots HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap();
    // The snapshot is being built (its temporary directory is there) when the client goes.
    let building = || {
        std::fs::read_dir(dir.path().join("snapshots")).is_ok_and(|mut d| {
            d.any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp"))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !building() {
        assert!(Instant::now() < deadline, "the snapshot never started");
        std::thread::yield_now();
    }
    drop(c);
    s.wait_for_log("went away; released", 1, Duration::from_secs(30));
    let list = get(&s.url("/api/admin/snapshots")).json();
    assert_eq!(list, json!([]), "{list}");
}

/// The server's peak resident memory (VmHWM), in bytes.
fn peak_rss(s: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// Eight requests at once, each of 49 wildcard sub-queries over every series, cannot take
/// memory without bound (one such request took 1.8 GB, eight 5.4 GB): queries run two at a
/// time, each within its sample budget, and the server's peak stays bounded.
#[test]
fn concurrent_heavy_queries_stay_within_a_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &["--query-concurrency", "2", "--query-samples-max", "1000000"],
    );
    let start = 1_700_000_000_000i64;
    for batch in 0..4 {
        let body: String = (0..50)
            .flat_map(|h| {
                let h = batch * 50 + h;
                (0..1000).map(move |i| format!("q,host=h{h} v={i} {}\n", start + i * 1000))
            })
            .collect();
        assert_eq!(
            post(&s.url("/write?precision=ms"), body.as_bytes()).status,
            204
        );
    }
    let before = peak_rss(&s);
    let sub = json!({"metric": "q_v", "aggregator": "none", "tags": {"host": "*"}});
    let request =
        json!({"start": start, "end": start + 1_000_000, "queries": vec![sub; 49]}).to_string();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (url, request) = (s.url("/api/query"), request.clone());
                scope.spawn(move || {
                    post_with(
                        &url,
                        &[("Content-Type", "application/json")],
                        request.as_bytes(),
                    )
                    .status
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let peak = peak_rss(&s);
    eprintln!(
        "heavy queries: statuses {statuses:?}; peak RSS {} MiB (before {} MiB)",
        peak >> 20,
        before >> 20
    );
    // Each request asks for 9.8 M samples: past its budget of 1 M (400), or refused for want
    // of a turn (503).
    assert!(
        statuses.iter().all(|&st| st == 400 || st == 503),
        "{statuses:?}"
    );
    assert!(statuses.contains(&400), "{statuses:?}");
    assert!(peak < 600 << 20, "peak RSS {} MiB", peak >> 20);
    assert_eq!(get(&s.url("/ready")).status, 200, "the server still serves");
}

/// Once space comes back, `/ready` says so without waiting for a write that a load balancer
/// routing by `/ready` would never send (it stayed 503 until some write succeeded).
#[test]
fn ready_recovers_when_space_returns_without_a_write() {
    let dir = tempfile::tempdir().unwrap();
    // Space that will be freed: 128 MiB on the data directory's file system.
    let filler = dir.path().join("filler");
    std::fs::write(&filler, vec![1u8; 128 << 20]).unwrap();
    let data = dir.path().join("data");
    let s = Server::start_with_failpoints(&data, &[], "wal-append=1*return(enospc)");
    assert_eq!(
        post(&s.url("/write?precision=ms"), b"m v=1 1000\n").status,
        507
    );
    assert_eq!(get(&s.url("/ready")).status, 503);
    std::fs::remove_file(&filler).unwrap();
    // Freed blocks are counted once the file system has released them.
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(&s.url("/ready")).status != 200 {
        assert!(
            Instant::now() < deadline,
            "/ready stayed 503 after 128 MiB were freed"
        );
    }
    assert_eq!(get(&s.url("/health")).json()["status"], json!("ok"));
}

/// Answers that clients do not read hold memory until written: they count against the same
/// byte budget as bodies (twelve unread 60 MB answers held 2 GB), so the next past it gets
/// 503 at once.
#[test]
fn unread_answers_are_bounded_too() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--max-body-bytes",
            "1000000",
            "--max-buffered-bytes",
            "40000000",
        ],
    );
    let start = 1_700_000_000_000i64;
    // Answers of about 16 MB: more than the kernel's socket buffers take from an unread
    // connection.
    let body: String = (0..600_000)
        .map(|i| format!("a,host=h{} v={i} {}\n", i % 10, start + i))
        .collect();
    for part in body.lines().collect::<Vec<_>>().chunks(20_000) {
        assert_eq!(
            post(&s.url("/write?precision=ms"), part.join("\n").as_bytes()).status,
            204
        );
    }
    let request = json!({"start": start, "end": start + 600_000, "msResolution": true,
        "queries": [{"metric": "a_v", "aggregator": "none"}]})
    .to_string();
    let ask = || {
        let mut c = connect(&s);
        c.write_all(
            format!(
                "POST /api/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{request}",
                request.len()
            )
            .as_bytes(),
        )
        .unwrap();
        c
    };
    // Two answers, never read.
    let unread = [ask(), ask()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&s, "tsvault_request_body_bytes_held") < 25_000_000 {
        assert!(Instant::now() < deadline, "the answers were never held");
    }
    let held = metric(&s, "tsvault_request_body_bytes_held");
    assert!(held <= 40_000_000, "{held}");
    // A third cannot fit in 40 MB with them.
    let statuses: Vec<u16> = (0..2)
        .map(|_| {
            post_with(
                &s.url("/api/query"),
                &[("Content-Type", "application/json")],
                request.as_bytes(),
            )
            .status
        })
        .collect();
    assert!(
        statuses.contains(&503),
        "{statuses:?} with {held} bytes held"
    );
    drop(unread);
    let deadline = Instant::now() + Duration::from_secs(30);
    while post_with(
        &s.url("/api/query"),
        &[("Content-Type", "application/json")],
        request.as_bytes(),
    )
    .status
        != 200
    {
        assert!(Instant::now() < deadline, "the budget never came back");
    }
}

/// An answer larger than all the bytes the server may hold is refused as such (413, with
/// what to ask instead), not answered "retry shortly" for ever.
#[test]
fn an_answer_larger_than_the_whole_budget_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        dir.path(),
        &[
            "--max-body-bytes",
            "1000000",
            "--max-buffered-bytes",
            "1500000",
        ],
    );
    let start = 1_700_000_000_000i64;
    let lines: Vec<String> = (0..100_000)
        .map(|i| format!("b v={i} {}", start + i))
        .collect();
    for part in lines.chunks(20_000) {
        assert_eq!(
            post(&s.url("/write?precision=ms"), part.join("\n").as_bytes()).status,
            204
        );
    }
    let r = post_with(
        &s.url("/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": start, "end": start + 100_000, "msResolution": true,
               "queries": [{"metric": "b_v", "aggregator": "none"}]})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.body);
    assert!(
        r.body.contains("--max-buffered-bytes") && r.body.contains("downsample"),
        "{}",
        r.body
    );
}
