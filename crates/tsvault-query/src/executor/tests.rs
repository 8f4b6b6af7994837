//! End-to-end tests of the engine over a [`MemorySource`]: request text in, results out.

use expect_test::{Expect, expect};
use tsvault_model::{Sample, SeriesKey};

use super::*;
use crate::aggregator::aggregator_names;
use crate::request::test_params;
use crate::result::results_to_json;
use crate::source::{MemorySource, RecordingSource, Selection, SourceError};

/// 2013-01-01T00:00:00Z, an hour boundary.
const T0_S: i64 = 1_356_998_400;
const T0_MS: i64 = T0_S * 1000;
/// "Now" for relative times: two hours after T0.
const NOW_MS: i64 = T0_MS + 7_200_000;

fn key(metric: &str, tags: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(metric, tags).expect("test keys are valid")
}

/// Inserts `(offset seconds from T0, value)` points for one series.
fn put(src: &mut MemorySource, metric: &str, tags: &[(&str, &str)], points: &[(i64, f64)]) {
    let k = key(metric, tags);
    for &(offset_s, value) in points {
        src.insert(&k, T0_MS + offset_s * 1000, value);
    }
}

fn offset(ts_ms: i64) -> String {
    let off = ts_ms - T0_MS;
    let sign = if off < 0 { "-" } else { "+" };
    let off = off.abs();
    if off % 1000 == 0 {
        format!("{sign}{}s", off / 1000)
    } else {
        format!("{sign}{off}ms")
    }
}

fn render(results: &[QueryResult]) -> String {
    let mut out = String::new();
    for r in results {
        let tags: Vec<String> = r.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out.push_str(&format!(
            "q{} {} {{{}}} aggregateTags={:?}\n",
            r.query_index,
            r.metric,
            tags.join(","),
            r.aggregate_tags
        ));
        for (ts, v) in &r.dps {
            out.push_str(&format!("  {} {v:?}\n", offset(*ts)));
        }
    }
    out
}

/// Runs a GET query string (times relative to T0 unless absolute) and renders the results.
fn run_get(src: &dyn Source, query: &str) -> String {
    match QueryRequest::from_params(&test_params(query), NOW_MS).and_then(|req| execute(src, &req))
    {
        Ok(results) => render(&results),
        Err(e) => format!("error: {e}\n"),
    }
}

fn check_get(src: &dyn Source, query: &str, expect: Expect) {
    expect.assert_eq(&run_get(src, query));
}

/// The user guide's filter data set: one point per series at T0+60s.
fn filter_doc_source() -> MemorySource {
    let mut src = MemorySource::new();
    let series: [(&[(&str, &str)], f64); 7] = [
        (&[("dc", "dal"), ("host", "web01")], 3.0),
        (&[("dc", "dal"), ("host", "web02")], 2.0),
        (&[("dc", "dal"), ("host", "web03")], 10.0),
        (&[("host", "web01")], 1.0),
        (&[("host", "web01"), ("owner", "jdoe")], 4.0),
        (&[("dc", "lax"), ("host", "web01")], 8.0),
        (&[("dc", "lax"), ("host", "web02")], 4.0),
    ];
    for (tags, value) in series {
        put(&mut src, "sys.cpu.system", tags, &[(60, value)]);
    }
    src
}

#[test]
fn filters_and_grouping_match_the_user_guide() {
    let src = filter_doc_source();
    let q = |m: &str| format!("start={T0_S}&end={}&m={m}", T0_S + 120);
    // Example 1: series 1, 4, 5, 6; dc is not on every series so it is in neither list.
    check_get(
        &src,
        &q("sum:sys.cpu.system{host=web01}"),
        expect![[r#"
        q0 sys.cpu.system {host=web01} aggregateTags=[]
          +60s 16.0
    "#]],
    );
    // Example 2.
    check_get(
        &src,
        &q("sum:sys.cpu.system{host=web01,dc=dal}"),
        expect![[r#"
        q0 sys.cpu.system {dc=dal,host=web01} aggregateTags=[]
          +60s 3.0
    "#]],
    );
    // Example 3: group by host within dc=dal.
    check_get(
        &src,
        &q("sum:sys.cpu.system{host=*,dc=dal}"),
        expect![[r#"
        q0 sys.cpu.system {dc=dal,host=web01} aggregateTags=[]
          +60s 3.0
        q0 sys.cpu.system {dc=dal,host=web02} aggregateTags=[]
          +60s 2.0
        q0 sys.cpu.system {dc=dal,host=web03} aggregateTags=[]
          +60s 10.0
    "#]],
    );
    // Example 4: a pipe groups by each listed value.
    check_get(
        &src,
        &q("sum:sys.cpu.system{dc=dal|lax}"),
        expect![[r#"
        q0 sys.cpu.system {dc=dal} aggregateTags=["host"]
          +60s 15.0
        q0 sys.cpu.system {dc=lax} aggregateTags=["host"]
          +60s 12.0
    "#]],
    );
    // Explicit tags example 1: only the series whose sole tag is host.
    check_get(
        &src,
        &q("sum:explicit_tags:sys.cpu.system{host=web01}"),
        expect![[r#"
        q0 sys.cpu.system {host=web01} aggregateTags=[]
          +60s 1.0
    "#]],
    );
    // Explicit tags example 2: group by host, require dc without grouping on it.
    check_get(
        &src,
        &q("sum:explicit_tags:sys.cpu.system{host=*}{dc=*}"),
        expect![[r#"
        q0 sys.cpu.system {host=web01} aggregateTags=["dc"]
          +60s 11.0
        q0 sys.cpu.system {host=web02} aggregateTags=["dc"]
          +60s 6.0
        q0 sys.cpu.system {dc=dal,host=web03} aggregateTags=[]
          +60s 10.0
    "#]],
    );
    // Non-group-by filters aggregate everything they match into one series.
    check_get(
        &src,
        &q("sum:sys.cpu.system{}{host=wildcard(web0*),dc=not_literal_or(dal)}"),
        expect![[r#"
        q0 sys.cpu.system {dc=lax} aggregateTags=["host"]
          +60s 12.0
    "#]],
    );
    // Two filters on one key are ANDed; group-by on either groups the key.
    check_get(
        &src,
        &q("max:sys.cpu.system{host=regexp(web0[12])}{host=iliteral_or(WEB02|web03)}"),
        expect![[r#"
        q0 sys.cpu.system {host=web02} aggregateTags=["dc"]
          +60s 4.0
    "#]],
    );
    // No filters: everything in one group.
    check_get(
        &src,
        &q("count:sys.cpu.system"),
        expect![[r#"
        q0 sys.cpu.system {} aggregateTags=["host"]
          +60s 7.0
    "#]],
    );
    // none: every series on its own, with all its tags.
    check_get(
        &src,
        &q("none:sys.cpu.system{dc=lax}"),
        expect![[r#"
        q0 sys.cpu.system {dc=lax,host=web01} aggregateTags=[]
          +60s 8.0
        q0 sys.cpu.system {dc=lax,host=web02} aggregateTags=[]
          +60s 4.0
    "#]],
    );
    // A filter no series passes yields no result.
    check_get(&src, &q("sum:sys.cpu.system{host=web09}"), expect![""]);
}

#[test]
fn post_filters_with_group_by_flags() {
    let src = filter_doc_source();
    let body = format!(
        r#"{{"start": {T0_S}, "end": {}, "queries": [
            {{"aggregator": "sum", "metric": "sys.cpu.system", "filters": [
                {{"type": "wildcard", "tagk": "host", "filter": "web0*", "groupBy": false}},
                {{"type": "literal_or", "tagk": "dc", "filter": "dal|lax", "groupBy": true}}]}},
            {{"aggregator": "avg", "metric": "sys.cpu.system", "tags": {{"host": "web01|web02"}}}}]}}"#,
        T0_S + 120
    );
    let req = QueryRequest::from_json(body.as_bytes(), NOW_MS).unwrap();
    let got = render(&execute(&src, &req).unwrap());
    expect![[r#"
        q0 sys.cpu.system {dc=dal} aggregateTags=["host"]
          +60s 15.0
        q0 sys.cpu.system {dc=lax} aggregateTags=["host"]
          +60s 12.0
        q1 sys.cpu.system {host=web01} aggregateTags=[]
          +60s 4.0
        q1 sys.cpu.system {host=web02} aggregateTags=["dc"]
          +60s 3.0
    "#]]
    .assert_eq(&got);
}

/// Three aligned series at two timestamps; every aggregator across them.
#[test]
fn every_aggregator_across_a_group() {
    let mut src = MemorySource::new();
    put(&mut src, "m", &[("host", "a")], &[(0, 1.0), (10, 4.0)]);
    put(&mut src, "m", &[("host", "b")], &[(0, 2.0), (10, 6.0)]);
    put(&mut src, "m", &[("host", "c")], &[(0, 6.0), (10, 20.0)]);
    let mut got = String::new();
    for name in aggregator_names() {
        if name == "none" {
            continue;
        }
        let out = run_get(&src, &format!("start={T0_S}&end={}&m={name}:m", T0_S + 60));
        let values: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
        got.push_str(&format!("{name:<10} {}\n", values.join("  ")));
    }
    // Values at +0s are 1, 2, 6 and at +10s 4, 6, 20. By hand: sum 9 | 30; avg 3 | 10;
    // dev sqrt(14/3)=2.160 | sqrt(152/3)=7.118; median 2 | 6; diff 5 | 16; mult 12 | 480;
    // squareSum 41 | 452; p50 legacy pos 2 -> 2 | 6; p75 pos 3 -> 6 | 20; R-3 p50 rint(1.5)=2
    // -> 2 | 6; R-7 p50 pos 2 -> 2 | 6, p75 pos 2.5 -> 4 | 13, p90 pos 2.8 -> 5.2 | 17.2.
    expect![[r#"
        avg        +0s 3.0  +10s 10.0
        count      +0s 3.0  +10s 3.0
        dev        +0s 2.160246899469287  +10s 7.118052168020874
        diff       +0s 5.0  +10s 16.0
        ep50r3     +0s 2.0  +10s 6.0
        ep50r7     +0s 2.0  +10s 6.0
        ep75r3     +0s 2.0  +10s 6.0
        ep75r7     +0s 4.0  +10s 13.0
        ep90r3     +0s 6.0  +10s 20.0
        ep90r7     +0s 5.199999999999999  +10s 17.199999999999996
        ep95r3     +0s 6.0  +10s 20.0
        ep95r7     +0s 5.6  +10s 18.599999999999998
        ep999r3    +0s 6.0  +10s 20.0
        ep999r7    +0s 5.992000000000001  +10s 19.972
        ep99r3     +0s 6.0  +10s 20.0
        ep99r7     +0s 5.92  +10s 19.72
        first      +0s 1.0  +10s 4.0
        last       +0s 6.0  +10s 20.0
        max        +0s 6.0  +10s 20.0
        median     +0s 2.0  +10s 6.0
        mimmax     +0s 6.0  +10s 20.0
        mimmin     +0s 1.0  +10s 4.0
        min        +0s 1.0  +10s 4.0
        mult       +0s 12.0  +10s 480.0
        p50        +0s 2.0  +10s 6.0
        p75        +0s 6.0  +10s 20.0
        p90        +0s 6.0  +10s 20.0
        p95        +0s 6.0  +10s 20.0
        p99        +0s 6.0  +10s 20.0
        p999       +0s 6.0  +10s 20.0
        pfsum      +0s 9.0  +10s 30.0
        squareSum  +0s 41.0  +10s 452.0
        sum        +0s 9.0  +10s 30.0
        zimsum     +0s 9.0  +10s 30.0
    "#]]
    .assert_eq(&got);
}

/// The user guide's interpolation example, then the substituting aggregators on the same data.
#[test]
fn interpolation_between_misaligned_series() {
    let mut src = MemorySource::new();
    put(
        &mut src,
        "m",
        &[("host", "a")],
        &[(10, 5.0), (30, 15.0), (50, 5.0)],
    );
    put(
        &mut src,
        "m",
        &[("host", "b")],
        &[(0, 10.0), (20, 20.0), (40, 10.0), (60, 20.0)],
    );
    let mut got = String::new();
    for agg in [
        "sum", "avg", "min", "max", "dev", "zimsum", "mimmin", "mimmax", "count", "pfsum",
    ] {
        let out = run_get(&src, &format!("start={T0_S}&end={}&m={agg}:m", T0_S + 60));
        let values: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
        got.push_str(&format!("{agg:<7} {}\n", values.join("  ")));
    }
    // Interpolated A: 10 at +20s and +40s; interpolated B: 15 at +10s, +30s, +50s.
    // A is absent before +10s and after +50s, so +0s and +60s hold B alone.
    expect![[r#"
        sum     +0s 10.0  +10s 20.0  +20s 30.0  +30s 30.0  +40s 20.0  +50s 20.0  +60s 20.0
        avg     +0s 10.0  +10s 10.0  +20s 15.0  +30s 15.0  +40s 10.0  +50s 10.0  +60s 20.0
        min     +0s 10.0  +10s 5.0  +20s 10.0  +30s 15.0  +40s 10.0  +50s 5.0  +60s 20.0
        max     +0s 10.0  +10s 15.0  +20s 20.0  +30s 15.0  +40s 10.0  +50s 15.0  +60s 20.0
        dev     +0s 0.0  +10s 5.0  +20s 5.0  +30s 0.0  +40s 0.0  +50s 5.0  +60s 0.0
        zimsum  +0s 10.0  +10s 5.0  +20s 20.0  +30s 15.0  +40s 10.0  +50s 5.0  +60s 20.0
        mimmin  +0s 10.0  +10s 5.0  +20s 20.0  +30s 15.0  +40s 10.0  +50s 5.0  +60s 20.0
        mimmax  +0s 10.0  +10s 5.0  +20s 20.0  +30s 15.0  +40s 10.0  +50s 5.0  +60s 20.0
        count   +0s 1.0  +10s 2.0  +20s 2.0  +30s 2.0  +40s 2.0  +50s 2.0  +60s 1.0
        pfsum   +0s 10.0  +10s 15.0  +20s 25.0  +30s 35.0  +40s 25.0  +50s 15.0  +60s 20.0
    "#]]
    .assert_eq(&got);
}

/// The user guide's fill policy example (10s-sum over A and B), with each policy.
#[test]
fn downsampling_with_each_fill_policy() {
    let mut src = MemorySource::new();
    put(&mut src, "m", &[("host", "a")], &[(30, 15.0), (50, 5.0)]);
    put(
        &mut src,
        "m",
        &[("host", "b")],
        &[(0, 10.0), (20, 20.0), (60, 20.0)],
    );
    let mut got = String::new();
    for fill in ["", "-none", "-nan", "-null", "-zero"] {
        let query = format!("start={T0_S}&end={}&m=sum:10s-sum{fill}:m", T0_S + 60);
        let req = QueryRequest::from_params(&test_params(&query), NOW_MS).unwrap();
        let results = execute(&src, &req).unwrap();
        let json = results_to_json(&results, &req);
        got.push_str(&format!("10s-sum{fill}: {}\n", json[0]["dps"]));
    }
    // Without a fill policy B is interpolated at +30s (20) and +50s (20); with nan or null the
    // empty buckets stay empty in the sum; with zero A's empty buckets count as 0.
    expect![[r#"
        10s-sum: {"1356998400":10.0,"1356998420":20.0,"1356998430":35.0,"1356998450":25.0,"1356998460":20.0}
        10s-sum-none: {"1356998400":10.0,"1356998420":20.0,"1356998430":35.0,"1356998450":25.0,"1356998460":20.0}
        10s-sum-nan: {"1356998400":10.0,"1356998410":"NaN","1356998420":20.0,"1356998430":15.0,"1356998440":"NaN","1356998450":5.0,"1356998460":20.0}
        10s-sum-null: {"1356998400":10.0,"1356998410":null,"1356998420":20.0,"1356998430":15.0,"1356998440":null,"1356998450":5.0,"1356998460":20.0}
        10s-sum-zero: {"1356998400":10.0,"1356998410":0.0,"1356998420":20.0,"1356998430":15.0,"1356998440":0.0,"1356998450":5.0,"1356998460":20.0}
    "#]]
    .assert_eq(&got);
}

#[test]
fn downsampling_buckets_and_edges() {
    let mut src = MemorySource::new();
    // One point a minute from +0s to +9m, value = minute index.
    let points: Vec<(i64, f64)> = (0..10).map(|i| (i * 60, i as f64)).collect();
    put(&mut src, "m", &[("host", "a")], &points);
    // A start inside a bucket drops that bucket (its timestamp is before the start),
    // as OpenTSDB does; the bucket holding the end is complete.
    check_get(
        &src,
        &format!("start={}&end={}&m=sum:5m-avg:m", T0_S + 30, T0_S + 330),
        expect![[r#"
        q0 m {host=a} aggregateTags=[]
          +300s 7.0
    "#]],
    );
    check_get(
        &src,
        &format!("start={T0_S}&end={}&m=sum:3m-max:m", T0_S + 600),
        expect![[r#"
        q0 m {host=a} aggregateTags=[]
          +0s 2.0
          +180s 5.0
          +360s 8.0
          +540s 9.0
    "#]],
    );
    // 0all folds [start, end) into one point at the start.
    check_get(
        &src,
        &format!("start={}&end={}&m=sum:0all-sum:m", T0_S + 60, T0_S + 240),
        expect![[r#"
        q0 m {host=a} aggregateTags=[]
          +60s 6.0
    "#]],
    );
    // A fill policy also covers buckets before the first and after the last sample.
    check_get(
        &src,
        &format!(
            "start={}&end={}&m=sum:5m-count-zero:m",
            T0_S - 600,
            T0_S + 1200
        ),
        expect![[r#"
        q0 m {host=a} aggregateTags=[]
          -600s 0.0
          -300s 0.0
          +0s 5.0
          +300s 5.0
          +600s 0.0
          +900s 0.0
          +1200s 0.0
    "#]],
    );
}

#[test]
fn rates_plain_counter_and_downsampled() {
    let mut src = MemorySource::new();
    // A 16-bit counter sampled every 10 s that rolls over, then is reset to 0 by a restart.
    put(
        &mut src,
        "c",
        &[("host", "a")],
        &[
            (0, 60_000.0),
            (10, 62_000.0),
            (20, 64_000.0),
            (30, 1_000.0),
            (40, 2_000.0),
            (50, 0.0),
            (60, 500.0),
        ],
    );
    let q = |m: &str| format!("start={T0_S}&end={}&m={m}", T0_S + 60);
    // The first point has no predecessor and so no rate.
    check_get(
        &src,
        &q("sum:rate:c"),
        expect![[r#"
        q0 c {host=a} aggregateTags=[]
          +10s 200.0
          +20s 200.0
          +30s -6300.0
          +40s 100.0
          +50s -200.0
          +60s 50.0
    "#]],
    );
    // (65535 - 64000 + 1000) / 10 = 253.5 and (65535 - 2000 + 0) / 10 = 6353.5.
    check_get(
        &src,
        &q("sum:rate{counter,65535}:c"),
        expect![[r#"
        q0 c {host=a} aggregateTags=[]
          +10s 200.0
          +20s 200.0
          +30s 253.5
          +40s 100.0
          +50s 6353.5
          +60s 50.0
    "#]],
    );
    // A reset value of 1000 turns the restart's spike into 0 and keeps the true rollover.
    check_get(
        &src,
        &q("sum:rate{counter,65535,1000}:c"),
        expect![[r#"
        q0 c {host=a} aggregateTags=[]
          +10s 200.0
          +20s 200.0
          +30s 253.5
          +40s 100.0
          +50s 0.0
          +60s 50.0
    "#]],
    );
    check_get(
        &src,
        &q("sum:rate{dropcounter,65535}:c"),
        expect![[r#"
        q0 c {host=a} aggregateTags=[]
          +10s 200.0
          +20s 200.0
          +40s 100.0
          +60s 50.0
    "#]],
    );
    // Rate runs after downsampling: 20s-max buckets are 62000, 64000, 2000, 500, so the rates
    // are 2000 / 20, (65535 - 64000 + 2000) / 20 and (65535 - 2000 + 500) / 20.
    check_get(
        &src,
        &q("sum:20s-max:rate{counter,65535}:c"),
        expect![[r#"
        q0 c {host=a} aggregateTags=[]
          +20s 100.0
          +40s 176.75
          +60s 3201.75
    "#]],
    );
}

#[test]
fn rate_before_aggregation_and_margin_samples() {
    let mut src = MemorySource::new();
    // The start is not on an hour, so the scan reaches back to T0 like OpenTSDB's row scan:
    // the samples at +0s feed the first rates in range.
    put(
        &mut src,
        "c",
        &[("host", "a")],
        &[(0, 0.0), (30, 300.0), (50, 500.0)],
    );
    put(
        &mut src,
        "c",
        &[("host", "b")],
        &[(0, 0.0), (40, 80.0), (60, 120.0)],
    );
    // Rates: a = 10 at +30s and +50s; b = 2 at +40s and +60s. Summed rates hold each series'
    // previous rate rather than interpolating; b has no rate yet at +30s, a none after +50s.
    check_get(
        &src,
        &format!("start={}&end={}&m=sum:rate:c", T0_S + 30, T0_S + 60),
        expect![[r#"
        q0 c {} aggregateTags=["host"]
          +30s 10.0
          +40s 12.0
          +50s 12.0
          +60s 2.0
    "#]],
    );
}

#[test]
fn ms_and_seconds_output() {
    let mut src = MemorySource::new();
    let k = key("m", &[("host", "a")]);
    for (off_ms, v) in [(0, 1.0), (500, 2.0), (1_500, 3.0), (1_700, 4.0)] {
        src.insert(&k, T0_MS + off_ms, v);
    }
    let show = |query: &str| {
        let req = QueryRequest::from_params(&test_params(query), NOW_MS).unwrap();
        results_to_json(&execute(&src, &req).unwrap(), &req).to_string()
    };
    let base = format!("start={T0_S}&end={}&m=sum:m", T0_S + 10);
    let got = [
        show(&base),
        show(&format!("{base}&ms")),
        show(&format!("{base}&show_query")),
    ]
    .join("\n");
    // Seconds output keeps the last point of each second, as JSON readers of OpenTSDB do.
    expect![[r#"
        [{"aggregateTags":[],"dps":{"1356998400":2.0,"1356998401":4.0},"metric":"m","tags":{"host":"a"}}]
        [{"aggregateTags":[],"dps":{"1356998400000":1.0,"1356998400500":2.0,"1356998401500":3.0,"1356998401700":4.0},"metric":"m","tags":{"host":"a"}}]
        [{"aggregateTags":[],"dps":{"1356998400":2.0,"1356998401":4.0},"metric":"m","query":{"aggregator":"sum","downsample":null,"explicitTags":false,"filters":[],"metric":"m","rate":false,"rateOptions":null,"tags":{},"tsuids":null},"tags":{"host":"a"}}]"#]]
    .assert_eq(&got);
}

#[test]
fn only_points_in_range_are_returned() {
    let mut src = MemorySource::new();
    put(
        &mut src,
        "m",
        &[("host", "a")],
        &[(540, 1.0), (600, 2.0), (660, 3.0), (720, 4.0)],
    );
    put(&mut src, "m", &[("host", "b")], &[(540, 10.0), (720, 40.0)]);
    // b is interpolated from its samples outside the range: 20 at +600s, 30 at +660s.
    check_get(
        &src,
        &format!("start={}&end={}&m=sum:m", T0_S + 600, T0_S + 660),
        expect![[r#"
        q0 m {} aggregateTags=["host"]
          +600s 22.0
          +660s 33.0
    "#]],
    );
    // A group whose samples all fall in the margin is returned with no points, as OpenTSDB does.
    check_get(
        &src,
        &format!("start={}&end={}&m=sum:m{{host=b}}", T0_S + 600, T0_S + 660),
        expect![[r#"
        q0 m {host=b} aggregateTags=[]
    "#]],
    );
}

/// A source that fails, or breaks its contract.
struct BadSource {
    unsorted: bool,
}

impl Source for BadSource {
    fn select(
        &self,
        metric: &str,
        _filter: &dyn Fn(&SeriesKey) -> bool,
        _start_ms: i64,
        _end_ms: i64,
        _cap: ReadCap,
    ) -> Result<Selection, SourceError> {
        if !self.unsorted {
            return Err(SourceError::Failed(
                "block 7 of segment 3 fails its checksum".into(),
            ));
        }
        let samples = vec![
            Sample {
                ts_ms: T0_MS + 10,
                value: 1.0,
            },
            Sample {
                ts_ms: T0_MS,
                value: 2.0,
            },
        ];
        Ok(vec![(key(metric, &[("host", "a")]), samples)])
    }
    fn metric_names(&self) -> Vec<String> {
        vec!["m".into()]
    }
    fn tag_keys(&self) -> Vec<String> {
        Vec::new()
    }
    fn tag_values(&self) -> Vec<String> {
        Vec::new()
    }
}

#[test]
fn execution_errors() {
    let mut src = MemorySource::new();
    put(&mut src, "m", &[("host", "a")], &[(0, 1e308), (10, 1.0)]);
    put(&mut src, "m", &[("host", "b")], &[(0, 1e308), (10, 2.0)]);
    put(&mut src, "quiet", &[("host", "a")], &[(-86_400, 1.0)]);
    let range = format!("start={T0_S}&end={}", T0_S + 60);
    let mut got = String::new();
    // Sub-queries are read two at a time, as on a machine of two cores: a read stops at the
    // budget left when its batch starts, so what a refusal counts depends on the batches.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut run = |src: &dyn Source, query: String, limits: &Limits| {
        let req = QueryRequest::from_params(&test_params(&query), NOW_MS).unwrap();
        let line = match pool.install(|| execute_with_limits(src, &req, limits)) {
            Ok(r) => format!("ok: {} results\n", r.len()),
            Err(e) => format!("{e}\n"),
        };
        got.push_str(&line);
    };
    let defaults = Limits::default();
    run(
        &src,
        format!("{range}&m=sum:m{{host=a}}&m=sum:nosuch"),
        &defaults,
    );
    run(&src, format!("{range}&m=sum:quiet"), &defaults);
    run(
        &src,
        format!("{range}&m=sum:m{{host=a}}&m=sum:m"),
        &defaults,
    );
    run(
        &BadSource { unsorted: false },
        format!("{range}&m=sum:m"),
        &defaults,
    );
    run(
        &BadSource { unsorted: true },
        format!("{range}&m=sum:m"),
        &defaults,
    );
    run(
        &src,
        format!("{range}&m=sum:m"),
        &Limits {
            series_max: 1,
            ..Limits::default()
        },
    );
    run(
        &src,
        format!("{range}&m=none:m"),
        &Limits {
            datapoints_max: 3,
            ..Limits::default()
        },
    );
    run(
        &src,
        format!("{range}&m=sum:m"),
        &Limits {
            samples_max: 3 + 2 * SERIES_WEIGHT,
            ..Limits::default()
        },
    );
    run(
        &src,
        format!("{range}&m=sum:10ms-sum-zero:m"),
        &Limits {
            samples_max: 500_000,
            ..Limits::default()
        },
    );
    run(
        &src,
        format!("{range}&m=sum:m&m=sum:m{{host=a}}"),
        &Limits {
            sub_queries_max: 1,
            ..Limits::default()
        },
    );
    // Sub-queries run in parallel batches, but the budget is charged and errors reported in
    // request order, as in a sequential run: 2 + 2 samples and a series each fit, the third's
    // 4 and two series more do not.
    let five = Limits {
        samples_max: 5 + 2 * SERIES_WEIGHT,
        ..Limits::default()
    };
    run(
        &src,
        format!("{range}&m=sum:m{{host=a}}&m=sum:m{{host=b}}&m=sum:m"),
        &five,
    );
    // The first failure in request order wins: an unknown metric before a budget excess,
    run(
        &src,
        format!("{range}&m=sum:nosuch&m=sum:m"),
        &Limits {
            samples_max: 1,
            ..Limits::default()
        },
    );
    // and a budget excess before a later unknown metric.
    run(
        &src,
        format!("{range}&m=sum:m&m=sum:nosuch"),
        &Limits {
            samples_max: 3 + 2 * SERIES_WEIGHT,
            ..Limits::default()
        },
    );
    expect![[r#"
        query 2: no such metric 'nosuch'
        ok: 0 results
        query 2: the result is infinite at 1356998400000 ms (values too large to aggregate)
        storage error: query 1, metric 'm': block 7 of segment 3 fails its checksum
        storage error: query 1, metric 'm': samples of m{host="a"} are not sorted by time
        query 1: the number of matching series (more than 1) exceeds the limit of 1 (series_max); narrow the time range, add filters or downsample
        query 1: the number of data points returned (4 so far) exceeds the limit of 3 (datapoints_max); narrow the time range, add filters or downsample
        query 1: the number of samples read, each series counted as 20 more (at least 44 so far) exceeds the limit of 43 (samples_max); narrow the time range, add filters or downsample
        query 1: the number of filled downsample buckets (720044 so far) exceeds the limit of 500000 (samples_max); narrow the time range, add filters or downsample
        the request has 2 sub-queries; the limit is 1 (sub_queries_max)
        query 3: the number of samples read, each series counted as 20 more (at least 66 so far) exceeds the limit of 45 (samples_max); narrow the time range, add filters or downsample
        query 1: no such metric 'nosuch'
        query 1: the number of samples read, each series counted as 20 more (at least 44 so far) exceeds the limit of 43 (samples_max); narrow the time range, add filters or downsample
    "#]]
    .assert_eq(&got);
}

/// TSBS's `cpu` rows as line protocol stores them: one metric per field, each with the row's
/// tags and timestamp.
fn cpu_rows_source() -> MemorySource {
    let mut src = MemorySource::new();
    /// (offset s, usage_user, usage_system)
    type Row = (i64, f64, f64);
    let rows: [(&str, &[Row]); 2] = [
        (
            "host_1",
            &[
                (0, 95.0, 1.0),
                (10, 50.0, 2.0),
                (20, 91.0, 3.0),
                (30, 90.0, 4.0),
                (60, 99.0, 5.0),
                (70, 10.0, 6.0),
            ],
        ),
        (
            "host_2",
            &[
                (0, 10.0, 11.0),
                (10, 99.0, 12.0),
                (20, 20.0, 13.0),
                (30, 100.0, 14.0),
                (60, 5.0, 15.0),
                (70, 92.0, 16.0),
            ],
        ),
    ];
    for (host, rows) in rows {
        let tags = [("hostname", host)];
        for &(offset_s, user, system) in rows {
            put(&mut src, "cpu_usage_user", &tags, &[(offset_s, user)]);
            put(&mut src, "cpu_usage_system", &tags, &[(offset_s, system)]);
        }
    }
    // A row of host_1 without usage_user: no condition sample, so never kept.
    put(
        &mut src,
        "cpu_usage_system",
        &[("hostname", "host_1")],
        &[(40, 7.0)],
    );
    // host_3 never reported usage_user: its condition series does not exist.
    put(
        &mut src,
        "cpu_usage_system",
        &[("hostname", "host_3")],
        &[(0, 21.0), (60, 22.0)],
    );
    // A superset of host_1's tags, always over 90: it must not stand in for host_1's own rows.
    let rack: Vec<(i64, f64)> = (0..8).map(|i| (i * 10, 99.0)).collect();
    put(
        &mut src,
        "cpu_usage_user",
        &[("hostname", "host_1"), ("rack", "r1")],
        &rack,
    );
    src
}

/// A POST body over `[T0, T0 + 90s]` with one sub-query, given as the inside of its object.
fn where_body(sub_query: &str) -> String {
    format!(
        r#"{{"start": {T0_S}, "end": {}, "queries": [{{{sub_query}}}]}}"#,
        T0_S + 90
    )
}

fn run_post(src: &dyn Source, body: &str) -> String {
    match QueryRequest::from_json(body.as_bytes(), NOW_MS).and_then(|req| execute(src, &req)) {
        Ok(results) => render(&results),
        Err(e) => format!("error: {e}\n"),
    }
}

const USER_OVER_90: &str = r#""where": {"metric": "cpu_usage_user", "op": "gt", "value": 90}"#;

#[test]
fn where_keeps_rows_whose_condition_holds_per_tag_set() {
    let src = cpu_rows_source();
    // TSBS high-cpu-1: every field of host_1's rows where usage_user > 90.
    let high_cpu = |metric: &str| {
        where_body(&format!(
            r#""metric": "{metric}", "aggregator": "none",
               "filters": [{{"type": "literal_or", "tagk": "hostname", "filter": "host_1", "groupBy": false}}],
               {USER_OVER_90}"#
        ))
    };
    let got = [
        run_post(&src, &high_cpu("cpu_usage_system")),
        run_post(&src, &high_cpu("cpu_usage_user")),
    ]
    .concat();
    // usage_user is 95, 91 and 99 at +0s, +20s and +60s; 90 at +30s is not over 90. The
    // usage_system row at +40s has no usage_user. The rack=r1 series is a different tag set:
    // it is selected for usage_user (its own value passes) but never joins host_1's rows.
    expect![[r#"
        q0 cpu_usage_system {hostname=host_1} aggregateTags=[]
          +0s 1.0
          +20s 3.0
          +60s 5.0
        q0 cpu_usage_user {hostname=host_1} aggregateTags=[]
          +0s 95.0
          +20s 91.0
          +60s 99.0
        q0 cpu_usage_user {hostname=host_1,rack=r1} aggregateTags=[]
          +0s 99.0
          +10s 99.0
          +20s 99.0
          +30s 99.0
          +40s 99.0
          +50s 99.0
          +60s 99.0
          +70s 99.0
    "#]]
    .assert_eq(&got);

    // Two hosts with different usage_user at the same timestamps: each is joined with its
    // own condition series, not with any series that passes at that time. host_3 has no
    // usage_user series and keeps nothing, so it has no result.
    check_post(
        &src,
        &where_body(&format!(
            r#""metric": "cpu_usage_system", "aggregator": "none", {USER_OVER_90}"#
        )),
        expect![[r#"
            q0 cpu_usage_system {hostname=host_1} aggregateTags=[]
              +0s 1.0
              +20s 3.0
              +60s 5.0
            q0 cpu_usage_system {hostname=host_2} aggregateTags=[]
              +10s 12.0
              +30s 14.0
              +70s 16.0
        "#]],
    );
}

fn check_post(src: &dyn Source, body: &str, expect: Expect) {
    expect.assert_eq(&run_post(src, body));
}

#[test]
fn where_on_the_metric_itself_is_a_value_filter() {
    let src = cpu_rows_source();
    check_post(
        &src,
        &where_body(
            r#""metric": "cpu_usage_user", "aggregator": "none",
               "filters": [{"type": "wildcard", "tagk": "hostname", "filter": "host_*", "groupBy": false}],
               "explicitTags": true,
               "where": {"metric": "cpu_usage_user", "op": ">=", "value": 91}"#,
        ),
        expect![[r#"
            q0 cpu_usage_user {hostname=host_1} aggregateTags=[]
              +0s 95.0
              +20s 91.0
              +60s 99.0
            q0 cpu_usage_user {hostname=host_2} aggregateTags=[]
              +10s 99.0
              +30s 100.0
              +70s 92.0
        "#]],
    );
}

#[test]
fn where_with_a_missing_condition_series_keeps_nothing_and_an_unknown_metric_is_an_error() {
    let src = cpu_rows_source();
    let host_3 = r#""metric": "cpu_usage_system", "aggregator": "sum",
        "filters": [{"type": "literal_or", "tagk": "hostname", "filter": "host_3", "groupBy": false}]"#;
    let got = [
        // host_3 has no usage_user series.
        run_post(&src, &where_body(&format!("{host_3}, {USER_OVER_90}"))),
        // A condition metric never written: an error naming it, as for a sub-query's metric.
        run_post(
            &src,
            &where_body(
                r#""metric": "cpu_usage_system", "aggregator": "sum",
                   "where": {"metric": "cpu_usage_idle", "op": "gt", "value": 0}"#,
            ),
        ),
        // Without the condition host_3 has data.
        run_post(&src, &where_body(host_3)),
    ]
    .concat();
    expect![[r#"
        error: query 1: no such metric 'cpu_usage_idle'
        q0 cpu_usage_system {hostname=host_3} aggregateTags=[]
          +0s 21.0
          +60s 22.0
    "#]]
    .assert_eq(&got);
}

#[test]
fn where_applies_to_raw_samples_before_downsample_rate_and_aggregation() {
    let src = cpu_rows_source();
    let got = [
        // Kept usage_system: host_1 1 (+0s), 3 (+20s), 5 (+60s); host_2 12 (+10s), 14 (+30s),
        // 16 (+70s). 1m-max: host_1 3 and 5, host_2 14 and 16; summed 17 and 21.
        run_post(
            &src,
            &where_body(&format!(
                r#""metric": "cpu_usage_system", "aggregator": "sum", "downsample": "1m-max",
                   {USER_OVER_90}"#
            )),
        ),
        // Without the condition, host_1's +40s row (7) and host_3 (21, 22) count: 42 and 44.
        run_post(
            &src,
            &where_body(
                r#""metric": "cpu_usage_system", "aggregator": "sum", "downsample": "1m-max""#,
            ),
        ),
        // Rate runs over the kept samples: (3 - 1) / 20 s, then (5 - 3) / 40 s.
        run_post(
            &src,
            &where_body(&format!(
                r#""metric": "cpu_usage_system", "aggregator": "sum", "rate": true,
                   "filters": [{{"type": "literal_or", "tagk": "hostname", "filter": "host_1", "groupBy": true}}],
                   {USER_OVER_90}"#
            )),
        ),
    ]
    .concat();
    expect![[r#"
        q0 cpu_usage_system {} aggregateTags=["hostname"]
          +0s 17.0
          +60s 21.0
        q0 cpu_usage_system {} aggregateTags=["hostname"]
          +0s 42.0
          +60s 44.0
        q0 cpu_usage_system {hostname=host_1} aggregateTags=[]
          +20s 0.1
          +60s 0.05
    "#]]
    .assert_eq(&got);
}

#[test]
fn where_with_every_op() {
    let src = cpu_rows_source();
    let mut got = String::new();
    // host_1's usage_user: 95, 50, 91, 90, 99, 10 at +0s, +10s, +20s, +30s, +60s, +70s.
    for (word, symbol) in [
        ("gt", ">"),
        ("ge", ">="),
        ("lt", "<"),
        ("le", "<="),
        ("eq", "=="),
        ("ne", "!="),
    ] {
        let run = |op: &str| {
            run_post(
                &src,
                &where_body(&format!(
                    r#""metric": "cpu_usage_system", "aggregator": "none",
                       "filters": [{{"type": "literal_or", "tagk": "hostname", "filter": "host_1", "groupBy": false}}],
                       "where": {{"metric": "cpu_usage_user", "op": "{op}", "value": 90}}"#
                )),
            )
        };
        let by_word = run(word);
        assert_eq!(by_word, run(symbol), "{word} and {symbol} differ");
        let kept: Vec<&str> = by_word.lines().skip(1).map(str::trim).collect();
        got.push_str(&format!("{word:<2} {symbol:<2} 90: {}\n", kept.join("  ")));
    }
    expect![[r#"
        gt >  90: +0s 1.0  +20s 3.0  +60s 5.0
        ge >= 90: +0s 1.0  +20s 3.0  +30s 4.0  +60s 5.0
        lt <  90: +10s 2.0  +70s 6.0
        le <= 90: +10s 2.0  +30s 4.0  +70s 6.0
        eq == 90: +30s 4.0
        ne != 90: +0s 1.0  +10s 2.0  +20s 3.0  +60s 5.0  +70s 6.0
    "#]]
    .assert_eq(&got);
}

#[test]
fn where_reads_the_condition_once_for_the_selected_tag_sets() {
    let src = RecordingSource::new(cpu_rows_source());
    let body = where_body(&format!(
        r#""metric": "cpu_usage_system", "aggregator": "none",
           "filters": [{{"type": "literal_or", "tagk": "hostname", "filter": "host_1|host_3", "groupBy": false}}],
           {USER_OVER_90}"#
    ));
    run_post(&src, &body);
    // One read of the condition metric, for host_1 and host_3's tag sets only: neither host_2
    // nor host_1 with rack=r1.
    expect![[r#"
        cpu_usage_system: cpu_usage_system{hostname="host_1"} cpu_usage_system{hostname="host_3"}
        cpu_usage_user: cpu_usage_user{hostname="host_1"}"#]]
    .assert_eq(
        &src.calls
            .lock()
            .unwrap()
            .iter()
            .map(|call| format!("{}: {}", call.metric, call.keys.join(" ")))
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

#[test]
fn where_execution_errors() {
    let body = where_body(&format!(
        r#""metric": "cpu_usage_system", "aggregator": "none",
           "filters": [{{"type": "literal_or", "tagk": "hostname", "filter": "host_1", "groupBy": false}}],
           {USER_OVER_90}"#
    ));
    let req = QueryRequest::from_json(body.as_bytes(), NOW_MS).unwrap();
    let failing = RecordingSource {
        fail_metric: Some("cpu_usage_user"),
        ..RecordingSource::new(cpu_rows_source())
    };
    // host_1's usage_system has 7 samples and its usage_user 6: the condition's count too,
    // each series counted as SERIES_WEIGHT more.
    let limits = |samples_max| Limits {
        samples_max,
        ..Limits::default()
    };
    let got: String = [
        execute(&failing, &req),
        execute_with_limits(&cpu_rows_source(), &req, &limits(12 + 2 * SERIES_WEIGHT)),
        execute_with_limits(&cpu_rows_source(), &req, &limits(13 + 2 * SERIES_WEIGHT)),
    ]
    .into_iter()
    .map(|r| match r {
        Ok(results) => format!("ok: {} results\n", results.len()),
        Err(e) => format!("{e}\n"),
    })
    .collect();
    expect![[r#"
        storage error: query 1, where metric 'cpu_usage_user': block 2 fails its checksum
        query 1: the number of samples read, with the 'where' metric's, each series counted as 20 more (at least 53 so far) exceeds the limit of 52 (samples_max); narrow the time range, add filters or downsample
        ok: 1 results
    "#]]
    .assert_eq(&got);
}
