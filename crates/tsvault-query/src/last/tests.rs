//! The last data point query over a [`MemorySource`]: request text in, points out, checked by
//! hand at the window's bounds and against a `BTreeMap` model.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use expect_test::{Expect, expect};
use proptest::prelude::*;
use tsvault_model::SeriesKey;

use super::*;
use crate::request::test_params;
use crate::source::{MemorySource, RecordingSource};

/// 2013-01-01T00:00:00Z, an hour boundary.
const T0_MS: i64 = 1_356_998_400_000;
/// "Now" for relative and missing times: two hours after T0.
const NOW_MS: i64 = T0_MS + 2 * HOUR_MS;
const MINUTE_MS: i64 = 60_000;

fn key(metric: &str, tags: &[(&str, &str)]) -> SeriesKey {
    SeriesKey::new(metric, tags).expect("test keys are valid")
}

/// A time as an offset from T0, e.g. `+59m59.999s`.
fn offset(ts_ms: i64) -> String {
    let off = ts_ms - T0_MS;
    let sign = if off < 0 { "-" } else { "+" };
    let (m, ms) = (off.abs() / MINUTE_MS, off.abs() % MINUTE_MS);
    match (m, ms) {
        (0, ms) => format!("{sign}{}s", ms as f64 / 1000.0),
        (m, 0) => format!("{sign}{m}m"),
        (m, ms) => format!("{sign}{m}m{}s", ms as f64 / 1000.0),
    }
}

fn describe(req: &LastRequest) -> String {
    let (start_ms, end_ms) = req.window_ms();
    let mut out = format!(
        "end {} back_scan {}h: [{}, {})\n",
        offset(req.end_ms),
        req.back_scan_hours,
        offset(start_ms),
        offset(end_ms)
    );
    for (i, q) in req.queries.iter().enumerate() {
        let filters: Vec<String> = q
            .filters
            .iter()
            .map(|f| format!("{}={}({})", f.tagk(), f.kind().name(), f.expr()))
            .collect();
        out.push_str(&format!(
            "  q{} {} [{}]\n",
            i + 1,
            q.metric,
            filters.join(" ")
        ));
    }
    out
}

/// Parses each case with `parse` and shows it, or its error, under it.
fn check_parse(cases: &[&str], parse: fn(&str) -> Result<LastRequest>, expect: Expect) {
    let got: String = cases
        .iter()
        .map(|case| match parse(case) {
            Ok(req) => format!("{case}\n{}", describe(&req)),
            Err(e) => format!("{case}\nerror: {e}\n"),
        })
        .collect();
    expect.assert_eq(&got);
}

fn check_params(cases: &[&str], expect: Expect) {
    check_parse(
        cases,
        |q| LastRequest::from_params(&test_params(q), NOW_MS),
        expect,
    );
}

fn check_json(cases: &[&str], expect: Expect) {
    check_parse(
        cases,
        |body| LastRequest::from_json(body.as_bytes(), NOW_MS),
        expect,
    );
}

#[test]
fn get_parameters() {
    check_params(
        &[
            "timeseries=cpu",
            "timeseries=cpu{host=web01,dc=eu|us}&timeseries=mem{host=*}&back_scan=2&end=1h-ago&resolve=true",
            "timeseries=cpu&timeseries=cpu&end=1356998400&back_scan=",
            "timeseries=cpu&end=1357002000123&back_scan=87600",
        ],
        expect![[r#"
            timeseries=cpu
            end +120m back_scan 24h: [-1319m59.999s, +120m0.001s)
              q1 cpu []
            timeseries=cpu{host=web01,dc=eu|us}&timeseries=mem{host=*}&back_scan=2&end=1h-ago&resolve=true
            end +60m back_scan 2h: [-59m59.999s, +60m0.001s)
              q1 cpu [host=literal_or(web01) dc=literal_or(eu|us)]
              q2 mem [host=wildcard(*)]
            timeseries=cpu&timeseries=cpu&end=1356998400&back_scan=
            error: parameter 'back_scan': empty; leave it out for its default
            timeseries=cpu&end=1357002000123&back_scan=87600
            end +60m0.123s back_scan 87600h: [-5255939m59.876s, +60m0.124s)
              q1 cpu []
        "#]],
    );
}

#[test]
fn get_errors_name_the_parameter() {
    check_params(
        &[
            "",
            "back_scan=2",
            "timeseries=",
            "timeseries={host=a}",
            "timeseries=cpu{host}",
            "timeseries=cpu{host=a",
            "timeseries=cpu{host=like(x)}",
            "timeseries=cpu&timeseries=mem{host=wildcard(x)}",
            "timeseries=cpu&back_scan=0",
            "timeseries=cpu&back_scan=87601",
            "timeseries=cpu&back_scan=1.5",
            "timeseries=cpu&back_scan=-1",
            "timeseries=cpu&back_scan=1h",
            "timeseries=cpu&end=tomorrow",
            "timeseries=cpu&end=99999999999999999",
            "timeseries=cpu&tsuids=000001",
        ],
        expect![[r#"

            error: parameter 'timeseries': missing; give at least one, such as timeseries=cpu_usage_user{hostname=*}
            back_scan=2
            error: parameter 'timeseries': missing; give at least one, such as timeseries=cpu_usage_user{hostname=*}
            timeseries=
            error: query 1: bad timeseries parameter '': the metric name is missing; expected <metric>{tagk=value,...}
            timeseries={host=a}
            error: query 1: bad timeseries parameter '{host=a}': the metric name is missing; expected <metric>{tagk=value,...}
            timeseries=cpu{host}
            error: query 1: bad timeseries parameter 'cpu{host}': invalid tag 'host'; expected tagk=value or tagk=type(expr)
            timeseries=cpu{host=a
            error: query 1: bad timeseries parameter 'cpu{host=a': missing '}' at the end of 'cpu{host=a'
            timeseries=cpu{host=like(x)}
            error: query 1: bad timeseries parameter 'cpu{host=like(x)}': bad filter on tag 'host': unknown filter type 'like'; known types: literal_or, iliteral_or, not_literal_or, not_iliteral_or, wildcard, iwildcard, regexp
            timeseries=cpu&timeseries=mem{host=wildcard(x)}
            error: query 2: bad timeseries parameter 'mem{host=wildcard(x)}': bad filter on tag 'host': wildcard 'x' must contain an asterisk; use literal_or for exact values
            timeseries=cpu&back_scan=0
            error: parameter 'back_scan': '0' is not a whole number of hours from 1 to 87600
            timeseries=cpu&back_scan=87601
            error: parameter 'back_scan': '87601' is not a whole number of hours from 1 to 87600
            timeseries=cpu&back_scan=1.5
            error: parameter 'back_scan': '1.5' is not a whole number of hours from 1 to 87600
            timeseries=cpu&back_scan=-1
            error: parameter 'back_scan': '-1' is not a whole number of hours from 1 to 87600
            timeseries=cpu&back_scan=1h
            error: parameter 'back_scan': '1h' is not a whole number of hours from 1 to 87600
            timeseries=cpu&end=tomorrow
            error: end time 'tomorrow' is invalid: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago
            timeseries=cpu&end=99999999999999999
            error: end time '99999999999999999' is invalid: it lies after the year 9999
            timeseries=cpu&tsuids=000001
            error: tsuids queries is not supported by tsvault
        "#]],
    );
}

#[test]
fn post_body() {
    check_json(
        &[
            r#"{"queries": [{"metric": "cpu", "tags": {"host": "a|b", "dc": "*"}}, {"metric": "mem"}], "backScan": 3, "end": 1357002000000, "resolveNames": true}"#,
            r#"{"queries": [{"metric": "cpu", "tags": {}}], "backScan": "2", "end": "1h-ago"}"#,
            r#"{"queries": [{"metric": "cpu", "tags": null}], "backScan": null, "end": null}"#,
        ],
        expect![[r#"
            {"queries": [{"metric": "cpu", "tags": {"host": "a|b", "dc": "*"}}, {"metric": "mem"}], "backScan": 3, "end": 1357002000000, "resolveNames": true}
            end +60m back_scan 3h: [-119m59.999s, +60m0.001s)
              q1 cpu [dc=wildcard(*) host=literal_or(a|b)]
              q2 mem []
            {"queries": [{"metric": "cpu", "tags": {}}], "backScan": "2", "end": "1h-ago"}
            end +60m back_scan 2h: [-59m59.999s, +60m0.001s)
              q1 cpu []
            {"queries": [{"metric": "cpu", "tags": null}], "backScan": null, "end": null}
            end +120m back_scan 24h: [-1319m59.999s, +120m0.001s)
              q1 cpu []
        "#]],
    );
}

#[test]
fn post_errors_name_the_field() {
    check_json(
        &[
            "not json",
            "[]",
            "{}",
            r#"{"queries": []}"#,
            r#"{"queries": {"metric": "cpu"}}"#,
            r#"{"queries": [5]}"#,
            r#"{"queries": [{"tags": {"host": "a"}}]}"#,
            r#"{"queries": [{"metric": 5}]}"#,
            r#"{"queries": [{"metric": "cpu"}, {"metric": "cpu", "tags": {"host": 1}}]}"#,
            r#"{"queries": [{"metric": "cpu", "tags": ["host"]}]}"#,
            r#"{"queries": [{"metric": "cpu", "tags": {"host": ""}}]}"#,
            r#"{"queries": [{"metric": "cpu", "tsuids": ["000001"]}]}"#,
            r#"{"queries": [{"metric": "cpu"}], "backScan": 0}"#,
            r#"{"queries": [{"metric": "cpu"}], "backScan": 1.5}"#,
            r#"{"queries": [{"metric": "cpu"}], "backScan": "x"}"#,
            r#"{"queries": [{"metric": "cpu"}], "backScan": true}"#,
            r#"{"queries": [{"metric": "cpu"}], "backScan": 87601}"#,
            r#"{"queries": [{"metric": "cpu"}], "end": "tomorrow"}"#,
            r#"{"queries": [{"metric": "cpu"}], "end": true}"#,
        ],
        expect![[r#"
            not json
            error: request body is not a valid JSON query: expected ident at line 1 column 2
            []
            error: request body is not a valid JSON query: expected a JSON object with 'queries'
            {}
            error: field 'queries': missing or empty; give at least one query such as {"metric": "cpu_usage_user", "tags": {"hostname": "*"}}
            {"queries": []}
            error: field 'queries': missing or empty; give at least one query such as {"metric": "cpu_usage_user", "tags": {"hostname": "*"}}
            {"queries": {"metric": "cpu"}}
            error: field 'queries': expected an array of queries such as [{"metric": "cpu_usage_user", "tags": {"hostname": "*"}}]
            {"queries": [5]}
            error: query 1: field 'queries': each query must be a JSON object, got 5
            {"queries": [{"tags": {"host": "a"}}]}
            error: query 1: missing metric
            {"queries": [{"metric": 5}]}
            error: query 1: field 'metric': expected a string, got 5
            {"queries": [{"metric": "cpu"}, {"metric": "cpu", "tags": {"host": 1}}]}
            error: query 2: field 'tags': value of 'host' must be a string
            {"queries": [{"metric": "cpu", "tags": ["host"]}]}
            error: query 1: field 'tags': expected an object, got ["host"]
            {"queries": [{"metric": "cpu", "tags": {"host": ""}}]}
            error: query 1: bad filter on tag 'host': the filter value is empty
            {"queries": [{"metric": "cpu", "tsuids": ["000001"]}]}
            error: query 1: tsuids sub-queries is not supported by tsvault
            {"queries": [{"metric": "cpu"}], "backScan": 0}
            error: field 'backScan': '0' is not a whole number of hours from 1 to 87600
            {"queries": [{"metric": "cpu"}], "backScan": 1.5}
            error: field 'backScan': '1.5' is not a whole number of hours from 1 to 87600
            {"queries": [{"metric": "cpu"}], "backScan": "x"}
            error: field 'backScan': 'x' is not a whole number of hours from 1 to 87600
            {"queries": [{"metric": "cpu"}], "backScan": true}
            error: field 'backScan': expected a whole number of hours, got true
            {"queries": [{"metric": "cpu"}], "backScan": 87601}
            error: field 'backScan': '87601' is not a whole number of hours from 1 to 87600
            {"queries": [{"metric": "cpu"}], "end": "tomorrow"}
            error: end time 'tomorrow' is invalid: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago
            {"queries": [{"metric": "cpu"}], "end": true}
            error: field 'end': expected a string or an integer time
        "#]],
    );
}

/// A series as a test writes it: metric, tags, `(offset ms from T0, value)`.
type TestSeries<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [(i64, f64)]);

/// Series around the window `[T0, T0 + 1h)` (end `T0 + 1h - 1ms`, back_scan 1), each given as
/// `(offset ms from T0, value)` in the order inserted (not time order).
fn bounds_source() -> MemorySource {
    let hour = HOUR_MS;
    let series: [TestSeries; 7] = [
        // Samples on both sides of both bounds, inserted out of order: the last in the
        // window is the one 1 ms before its end; T0 - 1 ms and T0 + 1h are outside.
        (
            "cpu",
            &[("host", "a"), ("dc", "eu")],
            &[
                (hour, 9.0),
                (30 * MINUTE_MS, 2.0),
                (hour - 1, 3.0),
                (0, 1.0),
                (-1, 0.5),
            ],
        ),
        // Out of order: the later sample is inserted first.
        (
            "cpu",
            &[("host", "b"), ("dc", "eu")],
            &[(20 * MINUTE_MS, 0.25), (10 * MINUTE_MS, 42.0)],
        ),
        // Last sample before the window (one at its start 1 h earlier): omitted.
        (
            "cpu",
            &[("host", "c"), ("dc", "us")],
            &[(-1, 7.0), (-hour, 6.0)],
        ),
        // Only a sample right after the window: omitted.
        ("cpu", &[("host", "d"), ("dc", "us")], &[(hour, 8.0)]),
        // No host tag: only a query without a host filter selects it.
        ("cpu", &[("dc", "us")], &[(5 * MINUTE_MS, -1.5)]),
        // Other metrics: never mixed in, and sorted by metric first ("cpu" < "cpu.idle").
        ("cpu.idle", &[("host", "a")], &[(15 * MINUTE_MS, 97.125)]),
        ("mem", &[("host", "a")], &[(0, 1e21), (-1, 2.0)]),
    ];
    let mut src = MemorySource::new();
    for (metric, tags, samples) in series {
        let k = key(metric, tags);
        for &(offset_ms, value) in samples {
            src.insert(&k, T0_MS + offset_ms, value);
        }
    }
    src
}

fn render(points: &[LastPoint]) -> String {
    points
        .iter()
        .map(|p| format!("{} {} {}\n", p.key, offset(p.ts_ms), p.value))
        .collect()
}

/// Runs each GET query string (the window `[T0, T0 + 1h)` unless it says otherwise).
fn run_get(src: &dyn Source, queries: &[&str], limits: &Limits) -> String {
    let window = format!("end={}&back_scan=1", T0_MS + HOUR_MS - 1);
    queries
        .iter()
        .map(|q| {
            let req = LastRequest::from_params(&test_params(&format!("{window}&{q}")), NOW_MS);
            let got = match req.and_then(|req| execute_last(src, &req, limits)) {
                Ok(points) if points.is_empty() => "(none)\n".to_owned(),
                Ok(points) => render(&points),
                Err(e) => format!("error: {e}\n"),
            };
            format!("{q}\n{got}")
        })
        .collect()
}

#[test]
fn the_last_sample_of_each_series_in_the_window_with_its_own_timestamp() {
    let got = run_get(
        &bounds_source(),
        &[
            "timeseries=cpu",
            "timeseries=cpu{host=a}",
            "timeseries=cpu{host=*}",
            "timeseries=cpu{host=a|c}",
            "timeseries=cpu{host=b|d,dc=eu}",
            "timeseries=cpu{host=c}",
            "timeseries=mem&timeseries=cpu{host=b}&timeseries=cpu.idle&timeseries=cpu{host=*}",
            "timeseries=nosuch",
        ],
        &Limits::default(),
    );
    expect![[r#"
        timeseries=cpu
        cpu{dc="eu",host="a"} +59m59.999s 3
        cpu{dc="eu",host="b"} +20m 0.25
        cpu{dc="us"} +5m -1.5
        timeseries=cpu{host=a}
        cpu{dc="eu",host="a"} +59m59.999s 3
        timeseries=cpu{host=*}
        cpu{dc="eu",host="a"} +59m59.999s 3
        cpu{dc="eu",host="b"} +20m 0.25
        timeseries=cpu{host=a|c}
        cpu{dc="eu",host="a"} +59m59.999s 3
        timeseries=cpu{host=b|d,dc=eu}
        cpu{dc="eu",host="b"} +20m 0.25
        timeseries=cpu{host=c}
        (none)
        timeseries=mem&timeseries=cpu{host=b}&timeseries=cpu.idle&timeseries=cpu{host=*}
        cpu{dc="eu",host="a"} +59m59.999s 3
        cpu{dc="eu",host="b"} +20m 0.25
        cpu.idle{host="a"} +15m 97.125
        mem{host="a"} +0s 1000000000000000000000
        timeseries=nosuch
        error: query 1: no such metric 'nosuch'
    "#]]
    .assert_eq(&got);
}

#[test]
fn end_and_back_scan_move_the_window() {
    let src = bounds_source();
    let run = |query: &str| {
        let req = LastRequest::from_params(&test_params(query), NOW_MS).unwrap();
        render(&execute_last(&src, &req, &Limits::default()).unwrap())
    };
    let got = [
        // Two hours back from T0 + 1h - 1 ms: [T0 - 1h, T0 + 1h), host c's sample 1 ms before
        // T0 is in.
        format!(
            "end={}&back_scan=2&timeseries=cpu{{host=c}}",
            T0_MS + HOUR_MS - 1
        ),
        // `end` is inclusive: at T0 + 1h host d's sample is the last, and host a's too.
        format!(
            "end={}&back_scan=1&timeseries=cpu{{host=a|d}}",
            T0_MS + HOUR_MS
        ),
        // A relative end: 1h-ago is T0 + 1h, the same window.
        "end=1h-ago&back_scan=1&timeseries=cpu{host=a|d}".into(),
        // No end: now (T0 + 2h); 24 hours back reaches everything.
        "timeseries=cpu{dc=us}".into(),
        // Back 1 h from T0 - 1 ms: [T0 - 1h, T0).
        format!("end={}&back_scan=1&timeseries=cpu{{dc=us}}", T0_MS - 1),
        // Back 1 h from T0 - 2 ms: [T0 - 1h - 1ms, T0 - 1ms), host c's sample at T0 - 1h is
        // the last.
        format!("end={}&back_scan=1&timeseries=cpu{{dc=us}}", T0_MS - 2),
    ]
    .iter()
    .map(|q| format!("{q}\n{}", run(q)))
    .collect::<String>();
    expect![[r#"
        end=1357001999999&back_scan=2&timeseries=cpu{host=c}
        cpu{dc="us",host="c"} -0.001s 7
        end=1357002000000&back_scan=1&timeseries=cpu{host=a|d}
        cpu{dc="eu",host="a"} +60m 9
        cpu{dc="us",host="d"} +60m 8
        end=1h-ago&back_scan=1&timeseries=cpu{host=a|d}
        cpu{dc="eu",host="a"} +60m 9
        cpu{dc="us",host="d"} +60m 8
        timeseries=cpu{dc=us}
        cpu{dc="us"} +5m -1.5
        cpu{dc="us",host="c"} -0.001s 7
        cpu{dc="us",host="d"} +60m 8
        end=1356998399999&back_scan=1&timeseries=cpu{dc=us}
        cpu{dc="us",host="c"} -0.001s 7
        end=1356998399998&back_scan=1&timeseries=cpu{dc=us}
        cpu{dc="us",host="c"} -60m 6
    "#]]
    .assert_eq(&got);
}

#[test]
fn json_shape_is_opentsdbs_with_the_value_as_a_string() {
    let src = bounds_source();
    let req = LastRequest::from_json(
        format!(
            r#"{{"queries": [{{"metric": "cpu", "tags": {{"host": "a|b"}}}}, {{"metric": "mem"}}],
                "backScan": 1, "end": {}}}"#,
            T0_MS + HOUR_MS - 1
        )
        .as_bytes(),
        NOW_MS,
    )
    .unwrap();
    let points = execute_last(&src, &req, &Limits::default()).unwrap();
    expect![[r#"[{"metric":"cpu","tags":{"dc":"eu","host":"a"},"timestamp":1357001999999,"value":"3"},{"metric":"cpu","tags":{"dc":"eu","host":"b"},"timestamp":1356999600000,"value":"0.25"},{"metric":"mem","tags":{"host":"a"},"timestamp":1356998400000,"value":"1000000000000000000000"}]"#]]
    .assert_eq(&last_points_to_json(&points).to_string());
    assert_eq!(last_points_to_json(&[]).to_string(), "[]");
}

#[test]
fn reads_exactly_the_window_once_per_query() {
    let src = RecordingSource::new(bounds_source());
    run_get(
        &src,
        &["timeseries=cpu{host=a}&timeseries=mem"],
        &Limits::default(),
    );
    // Inclusive bounds, as `Source::select` takes them: [T0, T0 + 1h).
    expect![[r#"
        cpu [+0s, +59m59.999s]
        mem [+0s, +59m59.999s]"#]]
    .assert_eq(
        &src.calls
            .lock()
            .unwrap()
            .iter()
            .map(|call| {
                let (start, end) = (offset(call.start_ms), offset(call.end_ms));
                format!("{} [{start}, {end}]", call.metric)
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
}

#[test]
fn storage_errors_and_limits_are_those_of_api_query() {
    let failing = RecordingSource {
        fail_metric: Some("cpu"),
        ..RecordingSource::new(bounds_source())
    };
    let unsorted = RecordingSource {
        reverse_samples: true,
        ..RecordingSource::new(bounds_source())
    };
    // "cpu" has 6 samples in the window over 3 series, "mem" 1 (each series counted as
    // SERIES_WEIGHT samples more).
    let cpu_then_mem = |edit: fn(&mut Limits)| {
        let mut limits = Limits::default();
        edit(&mut limits);
        run_get(
            &bounds_source(),
            &["timeseries=cpu&timeseries=mem"],
            &limits,
        )
    };
    let got = [
        run_get(&failing, &["timeseries=cpu"], &Limits::default()),
        run_get(&unsorted, &["timeseries=cpu{host=b}"], &Limits::default()),
        cpu_then_mem(|l| l.samples_max = 6 + 4 * SERIES_WEIGHT),
        cpu_then_mem(|l| l.samples_max = 7 + 4 * SERIES_WEIGHT),
        cpu_then_mem(|l| l.series_max = 2),
        cpu_then_mem(|l| l.sub_queries_max = 1),
    ]
    .concat();
    expect![[r#"
        timeseries=cpu
        error: storage error: query 1, metric 'cpu': block 2 fails its checksum
        timeseries=cpu{host=b}
        error: storage error: query 1, metric 'cpu': samples of cpu{dc="eu",host="b"} are not sorted by time
        timeseries=cpu&timeseries=mem
        error: query 2: the number of samples read, each series counted as 20 more (at least 87 so far) exceeds the limit of 86 (samples_max); narrow the time range, add filters or downsample
        timeseries=cpu&timeseries=mem
        cpu{dc="eu",host="a"} +59m59.999s 3
        cpu{dc="eu",host="b"} +20m 0.25
        cpu{dc="us"} +5m -1.5
        mem{host="a"} +0s 1000000000000000000000
        timeseries=cpu&timeseries=mem
        error: query 1: the number of matching series (more than 2) exceeds the limit of 2 (series_max); narrow the time range, add filters or downsample
        timeseries=cpu&timeseries=mem
        error: the request has 2 sub-queries; the limit is 1 (sub_queries_max)
    "#]]
    .assert_eq(&got);
}

/// The model: each series' samples by host (`None`: the series without a host tag).
type Model = BTreeMap<(&'static str, Option<&'static str>), BTreeMap<i64, f64>>;

const HOSTS: [Option<&str>; 4] = [Some("a"), Some("b"), Some("c"), None];

/// A tag filter on `host` as written in a `timeseries` parameter, and which hosts it passes.
type HostFilter = (&'static str, fn(Option<&str>) -> bool);

/// The tag filters the model test tries.
const HOST_FILTERS: [HostFilter; 5] = [
    ("", |_| true),
    ("{host=a}", |h| h == Some("a")),
    ("{host=*}", |h| h.is_some()),
    ("{host=a|b}", |h| matches!(h, Some("a" | "b"))),
    ("{host=c|x}", |h| h == Some("c")),
];

fn model_key(metric: &str, host: Option<&str>) -> SeriesKey {
    match host {
        Some(host) => key(metric, &[("host", host), ("dc", "eu")]),
        None => key(metric, &[("dc", "eu")]),
    }
}

proptest! {
    /// Sparse samples of two metrics, four series each, on a 10-minute grid around the window
    /// give or take a millisecond (so samples often fall on and beside both bounds), inserted
    /// in any order (a later write of a timestamp replaces the earlier one in both); the
    /// engine's answer is the model's last sample in `(end - back_scan, end]` of each selected
    /// series of `m0`.
    #[test]
    fn agrees_with_a_btreemap_model(
        writes in prop::collection::vec((0usize..2, 0usize..4, -15i64..15, -1i64..=1), 0..40),
        end_slot in -6i64..12,
        end_jitter_ms in -1i64..=1,
        back_scan_hours in 1i64..=2,
        filter in 0usize..HOST_FILTERS.len(),
    ) {
        let mut src = MemorySource::new();
        let mut model = Model::new();
        for (i, &(metric, host, slot, jitter_ms)) in writes.iter().enumerate() {
            let metric = ["m0", "m1"][metric];
            let ts_ms = T0_MS + slot * 10 * MINUTE_MS + jitter_ms;
            let value = i as f64;
            src.insert(&model_key(metric, HOSTS[host]), ts_ms, value);
            model.entry((metric, HOSTS[host])).or_default().insert(ts_ms, value);
        }
        let end_ms = T0_MS + end_slot * 10 * MINUTE_MS + end_jitter_ms;
        let (tags, passes) = HOST_FILTERS[filter];
        let req = LastRequest::from_params(
            &test_params(&format!("timeseries=m0{tags}&end={end_ms}&back_scan={back_scan_hours}")),
            NOW_MS,
        ).unwrap();
        let result = execute_last(&src, &req, &Limits::default());
        if !model.keys().any(|(metric, _)| *metric == "m0") {
            // Never written: a mistake, as in /api/query, not an empty answer.
            prop_assert!(matches!(result, Err(Error::UnknownMetric { .. })), "{:?}", result);
            return Ok(());
        }
        let got: Vec<(SeriesKey, i64, f64)> = result
            .unwrap()
            .into_iter()
            .map(|p| (p.key, p.ts_ms, p.value))
            .collect();
        let start_ms = end_ms - back_scan_hours * HOUR_MS;
        let mut want: Vec<(SeriesKey, i64, f64)> = model
            .iter()
            .filter(|((metric, host), _)| *metric == "m0" && passes(*host))
            .filter_map(|(&(metric, host), samples)| {
                let (&ts_ms, &value) = samples.range((Excluded(start_ms), Included(end_ms))).next_back()?;
                Some((model_key(metric, host), ts_ms, value))
            })
            .collect();
        want.sort_by(|a, b| metric_then_tags(&a.0, &b.0));
        prop_assert_eq!(got, want);
    }
}

/// What a hostile test found accepted and guessed at: each is refused, naming what to give.
#[test]
fn repeated_misspelt_empty_and_zoned_parameters_are_refused() {
    check_params(
        &[
            "timeseries=cpu&back_scan=3&back_scan=1",
            "timeseries=cpu&end=1356998400&end=1356998401",
            "timeseries=cpu&end=",
            "timeseries=cpu&back_scan=",
            "timeseries=cpu&backScan=1",
            "timeseries=cpu&start=1h-ago",
            "timeseries=cpu&tz=Asia/Tokyo",
            "timeseries=cpu&tz=UTC",
        ],
        expect![[r#"
            timeseries=cpu&back_scan=3&back_scan=1
            error: parameter 'back_scan': given 2 times (3, 1); give it once
            timeseries=cpu&end=1356998400&end=1356998401
            error: parameter 'end': given 2 times (1356998400, 1356998401); give it once
            timeseries=cpu&end=
            error: parameter 'end': empty; leave it out for its default
            timeseries=cpu&back_scan=
            error: parameter 'back_scan': empty; leave it out for its default
            timeseries=cpu&backScan=1
            error: parameter 'backScan': not a parameter of /api/query/last; the window is given by back_scan
            timeseries=cpu&start=1h-ago
            error: parameter 'start': not a parameter of /api/query/last; the window is given by end and back_scan
            timeseries=cpu&tz=Asia/Tokyo
            error: timezone 'Asia/Tokyo' (tsvault reads dates as UTC) is not supported by tsvault
            timeseries=cpu&tz=UTC
            end +120m back_scan 24h: [-1319m59.999s, +120m0.001s)
              q1 cpu []
        "#]],
    );
    check_json(
        &[
            r#"{"queries":[{"metric":"cpu"}],"back_scan":1}"#,
            r#"{"queries":[{"metric":"cpu","tag":{"host":"a"}}]}"#,
            r#"{"queries":[{"metric":"cpu"}],"end":""}"#,
            r#"{"queries":[{"metric":"cpu"}],"timezone":"Asia/Tokyo"}"#,
            r#"{"queries":[{"metric":"cpu"}],"timezone":"UTC","resolveNames":true}"#,
        ],
        expect![[r#"
            {"queries":[{"metric":"cpu"}],"back_scan":1}
            error: field 'back_scan': unknown field; /api/query/last reads 'queries', 'backScan', 'end', 'resolveNames', 'timezone'
            {"queries":[{"metric":"cpu","tag":{"host":"a"}}]}
            error: query 1: field 'tag': unknown field; /api/query/last reads 'metric', 'tags'
            {"queries":[{"metric":"cpu"}],"end":""}
            error: field 'end': empty; leave it out for now
            {"queries":[{"metric":"cpu"}],"timezone":"Asia/Tokyo"}
            error: timezone 'Asia/Tokyo' (tsvault reads dates as UTC) is not supported by tsvault
            {"queries":[{"metric":"cpu"}],"timezone":"UTC","resolveNames":true}
            end +120m back_scan 24h: [-1319m59.999s, +120m0.001s)
              q1 cpu []
        "#]],
    );
}

/// Many queries of the same series are bounded together (a hostile request of 1,000 copies
/// of one query over 20,000 series took 1 GB and 80 s), each series is listed once, and a
/// metric never written is an error as in `/api/query`, not an empty answer.
#[test]
fn queries_together_are_bounded_and_an_unknown_metric_is_an_error() {
    // "cpu" has 3 series with samples in the window.
    let limits = Limits {
        series_max: 8,
        ..Limits::default()
    };
    let got = run_get(
        &bounds_source(),
        &[
            "timeseries=cpu&timeseries=cpu{dc=*}",
            "timeseries=cpu&timeseries=cpu{dc=*}&timeseries=cpu{dc=eu|us}",
            "timeseries=cpu_typo",
            "timeseries=cpu&timeseries=cpu}",
        ],
        &limits,
    );
    expect![[r#"
        timeseries=cpu&timeseries=cpu{dc=*}
        cpu{dc="eu",host="a"} +59m59.999s 3
        cpu{dc="eu",host="b"} +20m 0.25
        cpu{dc="us"} +5m -1.5
        timeseries=cpu&timeseries=cpu{dc=*}&timeseries=cpu{dc=eu|us}
        error: query 3: the number of series read by this request's queries together (more than 8) exceeds the limit of 8 (series_max); narrow the time range, add filters or downsample
        timeseries=cpu_typo
        error: query 1: no such metric 'cpu_typo'
        timeseries=cpu&timeseries=cpu}
        error: query 2: no such metric 'cpu}'
    "#]].assert_eq(&got);
}
