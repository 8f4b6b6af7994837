//! The class "a 2xx answer and the stored samples agree", as a property over random bodies
//! in every write protocol: points with random names, tags, field types (strings, integers
//! beyond 2^53), timestamps (every precision, digits finer than a millisecond, duplicates,
//! times no query can read), sent plain or as multi-member gzip. A reference model says what
//! each point should become; after each write, every metric of the case is queried back and
//! must hold exactly what the model says, and the answer must count exactly what was not
//! stored as sent (or refuse what was refused).
//! `TSVAULT_WRITE_PROPERTY_CASES=N` runs more cases (default 24).

mod common;

use std::collections::BTreeMap;
use std::io::Write;

use common::{Reply, Server, post_with, query_dps};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::json;

/// The latest storable millisecond (9999-12-31T23:59:59.999Z).
const TS_MS_MAX: i64 = 253_402_300_799_999;

#[derive(Debug, Clone)]
enum Field {
    Float(f64),
    Int(i64),
    Str,
}

#[derive(Debug, Clone)]
struct Line {
    measurement: usize,
    host: usize,
    fields: Vec<(usize, Field)>,
    /// In the case's precision.
    ts: i64,
}

#[derive(Debug, Clone)]
struct Case {
    precision: &'static str,
    lines: Vec<Line>,
    gzip_members: usize,
}

fn per_ms(precision: &str) -> i128 {
    match precision {
        "ns" => 1_000_000,
        "us" => 1_000,
        _ => 1,
    }
}

fn ms_per_unit(precision: &str) -> i128 {
    match precision {
        "s" => 1_000,
        _ => 1,
    }
}

fn case() -> impl Strategy<Value = Case> {
    let field = prop_oneof![
        4 => (-1e6f64..1e6).prop_map(Field::Float),
        2 => prop_oneof![any::<i64>(), -1000i64..1000].prop_map(Field::Int),
        1 => Just(Field::Str),
    ];
    let precision = prop::sample::select(vec!["ns", "us", "ms", "s"]);
    (precision, 1usize..4).prop_flat_map(move |(precision, gzip_members)| {
        // Timestamps in 2023 (some sharing a millisecond, some with finer digits), a few that
        // no query can read.
        let (base, step, past_the_end) = match precision {
            "ns" => (1_700_000_000_000_000_000i64, 250_000, i64::MIN),
            "us" => (1_700_000_000_000_000, 250, 253_402_300_800_000_000),
            "ms" => (1_700_000_000_000, 1, 253_402_300_800_000),
            _ => (1_700_000_000, 1, 253_402_300_800),
        };
        let ts = prop_oneof![
            8 => (0i64..40).prop_map(move |k| base + k * step + k % 3),
            1 => Just(-1i64),
            1 => Just(past_the_end),
        ];
        let line = (
            0usize..3,
            0usize..2,
            prop::collection::vec((0usize..3, field.clone()), 1..4),
            ts,
        )
            .prop_map(|(measurement, host, fields, ts)| Line {
                measurement,
                host,
                fields,
                ts,
            });
        prop::collection::vec(line, 1..30).prop_map(move |lines| Case {
            precision,
            lines,
            gzip_members,
        })
    })
}

/// (metric, host) -> ms -> value, what the model says a body stores (the last in the body
/// wins), and the counts the answer must give.
#[derive(Debug, Default, PartialEq)]
struct Expected {
    stored: BTreeMap<(String, String), BTreeMap<i64, f64>>,
    rejected_lines: usize,
    strings: u64,
    truncated: u64,
    collapsed: u64,
    rounded: u64,
}

fn model(c: &Case, prefix: &str) -> Expected {
    let mut e = Expected::default();
    // (metric, host, ms) -> the timestamps as sent, to count collapses.
    let mut sent: BTreeMap<(String, String, i64), std::collections::BTreeSet<i128>> =
        BTreeMap::new();
    for l in &c.lines {
        let ms = i128::from(l.ts).div_euclid(per_ms(c.precision)) * ms_per_unit(c.precision);
        if ms < 0 || ms > i128::from(TS_MS_MAX) {
            e.rejected_lines += 1;
            continue;
        }
        let ms = ms as i64;
        if i128::from(l.ts) % per_ms(c.precision) != 0 {
            e.truncated += 1;
        }
        // Duplicate field keys in a line: the last wins.
        let mut fields: BTreeMap<usize, &Field> = BTreeMap::new();
        for (k, f) in &l.fields {
            fields.insert(*k, f);
        }
        for (k, f) in fields {
            let metric = format!("{prefix}m{}_f{k}", l.measurement);
            let host = format!("h{}", l.host);
            let v = match f {
                Field::Str => {
                    e.strings += 1;
                    continue;
                }
                Field::Float(v) => *v,
                Field::Int(i) => {
                    e.rounded += u64::from((*i as f64) as i128 != i128::from(*i));
                    *i as f64
                }
            };
            // One precision per body: distinct timestamps as sent are distinct instants.
            sent.entry((metric.clone(), host.clone(), ms))
                .or_default()
                .insert(i128::from(l.ts));
            e.stored.entry((metric, host)).or_default().insert(ms, v);
        }
    }
    e.collapsed = sent.values().map(|s| s.len() as u64 - 1).sum();
    e
}

fn render(c: &Case, prefix: &str) -> Vec<u8> {
    let mut text = String::new();
    for l in &c.lines {
        text.push_str(&format!("{prefix}m{},host=h{} ", l.measurement, l.host));
        let fields: Vec<String> = l
            .fields
            .iter()
            .map(|(k, f)| match f {
                Field::Float(v) => format!("f{k}={v:?}"),
                Field::Int(i) => format!("f{k}={i}i"),
                Field::Str => format!("f{k}=\"text, with \\\"quotes\\\"\nand a newline\""),
            })
            .collect();
        text.push_str(&fields.join(","));
        text.push_str(&format!(" {}\n", l.ts));
    }
    if c.gzip_members == 1 {
        return text.into_bytes();
    }
    // Split at line boundaries into gzip members, concatenated.
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let per = lines.len().div_ceil(c.gzip_members - 1).max(1);
    let mut out = Vec::new();
    for chunk in lines.chunks(per) {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(chunk.concat().as_bytes()).unwrap();
        out.extend(enc.finish().unwrap());
    }
    out
}

/// The count a `Tsvault-Warning` gives for `what`, 0 without it.
fn warned(r: &Reply, what: &str) -> u64 {
    let text = r
        .header("tsvault-warning")
        .or_else(|| {
            serde_json::from_str::<serde_json::Value>(&r.body)
                .ok()
                .and_then(|v| v["not_stored_as_sent"].as_str().map(str::to_owned))
        })
        .unwrap_or_default();
    text.split("; ")
        .find(|p| p.contains(what))
        .and_then(|p| p.split(' ').next())
        .map_or(0, |n| n.parse().unwrap())
}

fn stored(base: &str, metric: &str) -> BTreeMap<String, BTreeMap<i64, f64>> {
    let r = post_with(
        &format!("{base}/api/query"),
        &[("Content-Type", "application/json")],
        json!({"start": 0, "end": TS_MS_MAX, "msResolution": true,
               "queries": [{"metric": metric, "aggregator": "none"}]})
        .to_string()
        .as_bytes(),
    );
    if r.status == 400 && r.body.contains("no such metric") {
        return BTreeMap::new();
    }
    query_dps(
        base,
        json!({"start": 0, "end": TS_MS_MAX, "msResolution": true,
               "queries": [{"metric": metric, "aggregator": "none"}]}),
    )
    .into_iter()
    .map(|(tags, dps)| {
        (
            tags["host"].as_str().unwrap().to_owned(),
            dps.into_iter().collect(),
        )
    })
    .collect()
}

#[test]
fn line_protocol_answers_agree_with_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let cases = std::env::var("TSVAULT_WRITE_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&case(), |c| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let prefix = format!("c{n}");
            let want = model(&c, &prefix);
            let path = if n.is_multiple_of(2) {
                "/write"
            } else {
                "/api/v2/write"
            };
            let mut headers = vec![("Content-Type", "text/plain")];
            if c.gzip_members > 1 {
                headers.push(("Content-Encoding", "gzip"));
            }
            let r = post_with(
                &s.url(&format!("{path}?precision={}", c.precision)),
                &headers,
                &render(&c, &prefix),
            );
            if want.rejected_lines == 0 {
                prop_assert_eq!(r.status, 204, "{}", r.body);
            } else {
                prop_assert_eq!(r.status, 400, "{}", r.body);
                let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                prop_assert_eq!(
                    v["lines_rejected"].as_u64(),
                    Some(want.rejected_lines as u64),
                    "{}",
                    r.body
                );
            }
            prop_assert_eq!(
                warned(&r, "string field"),
                want.strings,
                "{:?} {}",
                r.headers,
                r.body
            );
            prop_assert_eq!(
                warned(&r, "cut to the millisecond"),
                want.truncated,
                "{:?} {}",
                r.headers,
                r.body
            );
            prop_assert_eq!(
                warned(&r, "overwritten"),
                want.collapsed,
                "{:?} {}",
                r.headers,
                r.body
            );
            prop_assert_eq!(
                warned(&r, "rounded"),
                want.rounded,
                "{:?} {}",
                r.headers,
                r.body
            );
            let mut got = BTreeMap::new();
            for m in 0..3 {
                for k in 0..3 {
                    let metric = format!("{prefix}m{m}_f{k}");
                    for (host, dps) in stored(&s.base, &metric) {
                        got.insert((metric.clone(), host), dps);
                    }
                }
            }
            prop_assert_eq!(got, want.stored);
            Ok(())
        })
        .unwrap();
}

#[derive(Debug, Clone)]
struct PutPoint {
    metric: usize,
    host: usize,
    /// Seconds (10 digits) or milliseconds (13), or out of range.
    ts: i64,
    value: PutValue,
}

#[derive(Debug, Clone)]
enum PutValue {
    Float(f64),
    Int(i64),
    Text(i64),
}

fn put_case() -> impl Strategy<Value = Vec<PutPoint>> {
    let ts = prop_oneof![
        4 => (0i64..20).prop_map(|k| 1_700_000_000 + k),
        4 => (0i64..20).prop_map(|k| 1_700_000_000_000 + k * 250),
        1 => Just(-5i64),
        1 => Just(0i64),
    ];
    let value = prop_oneof![
        (-1e9f64..1e9).prop_map(PutValue::Float),
        prop_oneof![any::<i64>(), -10i64..10].prop_map(PutValue::Int),
        any::<i64>().prop_map(PutValue::Text),
    ];
    prop::collection::vec(
        (0usize..2, 0usize..2, ts, value).prop_map(|(metric, host, ts, value)| PutPoint {
            metric,
            host,
            ts,
            value,
        }),
        1..25,
    )
}

/// `/api/put` the same way: every accepted data point is stored (the last of one series and
/// timestamp wins), refused ones are counted in `failed`, rounded integers said.
#[test]
fn opentsdb_put_answers_agree_with_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(dir.path(), &[]);
    let cases = std::env::var("TSVAULT_WRITE_PROPERTY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let n = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(&put_case(), |points| {
            let n = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let prefix = format!("p{n}");
            let mut want: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
            let (mut failed, mut rounded) = (0u64, 0u64);
            let body: Vec<serde_json::Value> = points
                .iter()
                .map(|p| {
                    let metric = format!("{prefix}.m{}", p.metric);
                    let host = format!("h{}", p.host);
                    let (value, v) = match p.value {
                        PutValue::Float(f) => (json!(f), f),
                        PutValue::Int(i) => (json!(i), i as f64),
                        PutValue::Text(i) => (json!(i.to_string()), i as f64),
                    };
                    if p.ts <= 0 {
                        failed += 1;
                    } else {
                        if let PutValue::Int(i) | PutValue::Text(i) = p.value {
                            rounded += u64::from((i as f64) as i128 != i128::from(i));
                        }
                        let ms = if p.ts < 1 << 32 { p.ts * 1000 } else { p.ts };
                        want.entry((metric.clone(), host.clone())).or_default().insert(ms, v);
                    }
                    json!({"metric": metric, "timestamp": p.ts, "value": value, "tags": {"host": host}})
                })
                .collect();
            let r = post_with(
                &s.url("/api/put?summary"),
                &[("Content-Type", "application/json")],
                serde_json::Value::Array(body).to_string().as_bytes(),
            );
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            prop_assert_eq!(v["failed"].as_u64(), Some(failed), "{}", r.body);
            prop_assert_eq!(warned(&r, "rounded"), rounded, "{}", r.body);
            let mut got = BTreeMap::new();
            for m in 0..2 {
                let metric = format!("{prefix}.m{m}");
                for (host, dps) in stored(&s.base, &metric) {
                    got.insert((metric.clone(), host), dps);
                }
            }
            prop_assert_eq!(got, want);
            Ok(())
        })
        .unwrap();
}
