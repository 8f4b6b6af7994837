//! OpenTSDB `/api/put` bodies: one data point object or an array of them,
//! `{"metric": "sys.cpu.nice", "timestamp": 1346846400, "value": 18, "tags": {"host": "web01"}}`.
//!
//! The rules and messages follow OpenTSDB 2.4 (`IncomingDataPoint.validate`,
//! `PutDataPointRpc`, `TSDB.addPoint`, `Tags.validateString`): a timestamp is seconds, or
//! milliseconds when it does not fit in 32 bits, positive, with at most 13 digits; a value is a
//! JSON number or a string holding one, never NaN or infinite; at least one tag; names hold
//! only `a-z A-Z 0-9 - _ . /` and Unicode letters. Names are also held to the model's rules.
//! A bad data point is reported with its index and echoed as sent; the others are kept.

use std::borrow::Cow;

use serde_json::{Number, Value};
use tsvault_model::{Point, TagSet};

/// The largest timestamp read as seconds: OpenTSDB's `SECOND_MASK` rule reads any timestamp
/// with a bit set above the low 32 as milliseconds.
const SECONDS_MAX: i64 = 0xFFFF_FFFF;
/// The largest millisecond timestamp OpenTSDB accepts (13 digits, in the year 2286).
const MILLIS_MAX: i64 = 9_999_999_999_999;
/// Integers a JSON float timestamp may hold exactly (2^53).
const FLOAT_EXACT_MAX: f64 = 9_007_199_254_740_992.0;

/// Why a whole `/api/put` body was refused (nothing in it was parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PutBodyError {
    /// The body is empty or only white space.
    #[error("Missing request content")]
    Empty,
    /// The body is not JSON; holds serde_json's description with line and column.
    #[error("Unable to parse the given JSON: {0}")]
    Json(String),
    /// The JSON is neither an object nor an array; holds what it is instead.
    #[error("The JSON must start as an object or an array, not {0}")]
    NotObjectOrArray(&'static str),
    /// The array is empty.
    #[error("No datapoints found in content")]
    NoDatapoints,
}

/// What a `/api/put` body parsed into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PutOutcome {
    /// Valid data points with their index in the request, in request order.
    pub points: Vec<(usize, Point)>,
    /// Rejected data points, in request order.
    pub errors: Vec<PutError>,
    /// Integer values beyond 2^53 in magnitude, stored rounded to the nearest float.
    pub integers_rounded: u64,
}

/// One rejected data point.
#[derive(Debug, Clone, PartialEq)]
pub struct PutError {
    /// Its index in the request (0 for a body holding a single object).
    pub index: usize,
    /// The data point as sent, for the `details` answer (OpenTSDB echoes it too).
    pub datapoint: Value,
    /// What is wrong, in OpenTSDB's words where it has some.
    pub error: String,
}

/// Parses a `/api/put` body: per-point problems land in [`PutOutcome::errors`], problems with
/// the body as a whole are the `Err`.
pub fn parse_opentsdb_put(body: &[u8]) -> Result<PutOutcome, PutBodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(PutBodyError::Empty);
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| PutBodyError::Json(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        other => return Err(PutBodyError::NotObjectOrArray(kind(&other))),
    };
    if items.is_empty() {
        return Err(PutBodyError::NoDatapoints);
    }
    let mut out = PutOutcome {
        points: Vec::with_capacity(items.len()),
        errors: Vec::new(),
        integers_rounded: 0,
    };
    for (index, item) in items.into_iter().enumerate() {
        match parse_point(&item) {
            Ok((point, exact)) => {
                out.integers_rounded += u64::from(!exact);
                out.points.push((index, point));
            }
            Err(error) => out.errors.push(PutError {
                index,
                datapoint: item,
                error,
            }),
        }
    }
    Ok(out)
}

/// Checks one data point in OpenTSDB's order: metric, timestamp, value present, tags present,
/// value a finite number; then the names. The flag is false for an integer value beyond
/// 2^53 in magnitude that the float rounds.
fn parse_point(item: &Value) -> Result<(Point, bool), String> {
    let object = match item {
        Value::Object(o) => o,
        Value::Null => return Err("Unexpected null datapoint encountered in set.".into()),
        other => return Err(format!("data point is {}, not a JSON object", kind(other))),
    };
    let metric = match object.get("metric") {
        None | Some(Value::Null) => return Err("Metric name was empty".into()),
        Some(Value::String(m)) if m.is_empty() => return Err("Metric name was empty".into()),
        Some(Value::String(m)) => m.as_str(),
        Some(other) => {
            return Err(format!(
                "Invalid metric name: expected a string, found {}",
                kind(other)
            ));
        }
    };
    let raw_ts = object.get("timestamp");
    let ts_ms = timestamp_ms(raw_ts)?;
    let raw_value = match object.get("value") {
        None | Some(Value::Null) => return Err("Empty value".into()),
        Some(Value::String(s)) if s.trim().is_empty() => return Err("Empty value".into()),
        Some(v) => v,
    };
    let tags = match object.get("tags") {
        Some(Value::Object(t)) if !t.is_empty() => t,
        None | Some(Value::Null) | Some(Value::Object(_)) => {
            return Err("Missing tags: a data point needs at least one tag".into());
        }
        Some(other) => {
            return Err(format!(
                "Invalid tags: expected an object of tag names to values, found {}",
                kind(other)
            ));
        }
    };
    let value = match raw_value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("Unable to parse value to a number: {raw_value}"))?;
    // An integer (a JSON integer, or a string of one) the float does not hold exactly.
    let integer = match raw_value {
        Value::Number(n) => n.as_i64().map(i128::from).or(n.as_u64().map(i128::from)),
        Value::String(s) => s.trim().parse::<i128>().ok(),
        _ => None,
    };
    let exact = integer.is_none_or(|i| value as i128 == i);
    if !value.is_finite() {
        let text = match raw_value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let ts = raw_ts.map_or_else(String::new, Value::to_string);
        return Err(format!(
            "value is NaN or Infinite: {text} for metric={metric} timestamp={ts}"
        ));
    }
    let mut pairs: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(tags.len());
    for (k, v) in tags {
        // OpenTSDB reads tag values as strings, accepting any JSON scalar.
        let v = match v {
            Value::String(s) => Cow::Borrowed(s.as_str()),
            Value::Number(n) => Cow::Owned(n.to_string()),
            Value::Bool(b) => Cow::Owned(b.to_string()),
            Value::Null => return Err(format!("Invalid tag value for '{k}': null")),
            other => {
                return Err(format!(
                    "Invalid tag value for '{k}': expected a string, found {}",
                    kind(other)
                ));
            }
        };
        pairs.push((k.as_str(), v));
    }
    let key = TagSet::new(&pairs)
        .and_then(|t| t.key_for(metric))
        .map_err(|e| e.to_string())?;
    check_chars("metric name", metric)?;
    for (k, v) in &pairs {
        check_chars("tag name", k)?;
        check_chars("tag value", v)?;
    }
    Ok((Point { key, ts_ms, value }, exact))
}

/// Reads a timestamp (a JSON integer, an integral float, or a string holding an integer) and
/// converts it to milliseconds by OpenTSDB's rules.
fn timestamp_ms(raw: Option<&Value>) -> Result<i64, String> {
    let ts = match raw {
        None | Some(Value::Null) => return Err("Invalid timestamp: missing".into()),
        Some(Value::Number(n)) => number_as_i64(n)?,
        Some(Value::String(s)) => {
            let t = s.trim();
            match t.parse::<i64>() {
                Ok(ts) => ts,
                Err(_) if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) => {
                    return Err(format!(
                        "Invalid timestamp: {t} has more than 13 digits of milliseconds"
                    ));
                }
                Err(_) => return Err(format!("Invalid timestamp: {s:?} is not an integer")),
            }
        }
        Some(other) => {
            return Err(format!(
                "Invalid timestamp: expected an integer, found {}",
                kind(other)
            ));
        }
    };
    if ts <= 0 {
        return Err(format!("Invalid timestamp: {ts} must be greater than zero"));
    }
    if ts <= SECONDS_MAX {
        // Cannot overflow: SECONDS_MAX * 1000 is far below i64::MAX.
        return Ok(ts * 1_000);
    }
    if ts <= MILLIS_MAX {
        return Ok(ts);
    }
    Err(format!(
        "Invalid timestamp: {ts} has more than 13 digits of milliseconds"
    ))
}

fn number_as_i64(n: &Number) -> Result<i64, String> {
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    if n.is_u64() {
        return Err(format!(
            "Invalid timestamp: {n} has more than 13 digits of milliseconds"
        ));
    }
    match n.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() <= FLOAT_EXACT_MAX => Ok(f as i64),
        _ => Err(format!("Invalid timestamp: {n} is not an integer")),
    }
}

/// OpenTSDB's name rule (`Tags.validateString`): ASCII letters and digits, `-`, `_`, `.`,
/// `/`, and Unicode letters.
fn check_chars(what: &str, s: &str) -> Result<(), String> {
    let bad = s.chars().find(|&c| {
        !(c.is_ascii_alphanumeric()
            || matches!(c, '-' | '_' | '.' | '/')
            || (!c.is_ascii() && c.is_alphabetic()))
    });
    match bad {
        None => Ok(()),
        Some(c) => Err(format!(
            "Invalid {what} ({s:?}): illegal character {c:?}; allowed are ASCII letters and digits, '-', '_', '.', '/' and Unicode letters"
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use serde_json::json;
    use std::fmt::Write as _;
    use tsvault_model::SeriesKey;

    fn point(metric: &str, tags: &[(&str, &str)], ts_ms: i64, value: f64) -> Point {
        Point {
            key: SeriesKey::new(metric, tags).unwrap(),
            ts_ms,
            value,
        }
    }

    #[test]
    fn single_object() {
        let body = br#"{"metric": "sys.cpu.nice", "timestamp": 1346846400, "value": 18, "tags": {"host": "web01", "dc": "lga"}}"#;
        let out = parse_opentsdb_put(body).unwrap();
        assert_eq!(out.errors, []);
        assert_eq!(
            out.points,
            [(
                0,
                point(
                    "sys.cpu.nice",
                    &[("host", "web01"), ("dc", "lga")],
                    1_346_846_400_000,
                    18.0
                )
            )]
        );
    }

    #[test]
    fn array_with_every_accepted_form() {
        let body = json!([
            {"metric": "a", "timestamp": 1346846400123i64, "value": "1.5", "tags": {"h": "x"}},
            {"metric": "a", "timestamp": "1346846401", "value": -2, "tags": {"h": "x"}},
            {"metric": "a", "timestamp": 4294967295i64, "value": " 7 ", "tags": {"h": "x"}},
            {"metric": "a", "timestamp": 4294967296i64, "value": 1e300, "tags": {"h": "x"}},
            {"metric": "a", "timestamp": 9999999999999i64, "value": "-3e2", "tags": {"h": "x"}},
            {"metric": "a", "timestamp": 1.0, "value": 0, "tags": {"rack": 87, "up": true}},
            {"metric": "Ünïcödé/x-y_z.0", "timestamp": 1, "value": 1, "tags": {"ключ": "值"}, "extra": [1]},
        ]);
        let out = parse_opentsdb_put(body.to_string().as_bytes()).unwrap();
        assert_eq!(out.errors, []);
        assert_eq!(
            out.points,
            [
                (0, point("a", &[("h", "x")], 1_346_846_400_123, 1.5)),
                (1, point("a", &[("h", "x")], 1_346_846_401_000, -2.0)),
                (2, point("a", &[("h", "x")], 4_294_967_295_000, 7.0)),
                (3, point("a", &[("h", "x")], 4_294_967_296, 1e300)),
                (4, point("a", &[("h", "x")], 9_999_999_999_999, -300.0)),
                (5, point("a", &[("rack", "87"), ("up", "true")], 1_000, 0.0)),
                (6, point("Ünïcödé/x-y_z.0", &[("ключ", "值")], 1_000, 1.0)),
            ]
        );
    }

    #[test]
    fn values_parse_exactly() {
        for text in [
            "944047.0966796875",
            "0.1",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "9007199254740993",
        ] {
            let want: f64 = text.parse().unwrap();
            for value in [text.to_owned(), format!("\"{text}\"")] {
                let body =
                    format!(r#"{{"metric":"m","timestamp":1,"value":{value},"tags":{{"h":"x"}}}}"#);
                let out = parse_opentsdb_put(body.as_bytes()).unwrap();
                assert_eq!(out.points[0].1.value.to_bits(), want.to_bits(), "{body}");
            }
        }
    }

    #[test]
    fn per_point_errors() {
        let base = json!({"metric": "m", "timestamp": 1346846400, "value": 1, "tags": {"h": "x"}});
        let with = |k: &str, v: Option<Value>| {
            let mut p = base.clone();
            match v {
                None => {
                    p.as_object_mut().unwrap().remove(k);
                }
                Some(v) => p[k] = v,
            }
            p
        };
        let points = vec![
            base.clone(),
            Value::Null,
            json!("text"),
            json!([1]),
            with("metric", None),
            with("metric", Some(json!(""))),
            with("metric", Some(json!(5))),
            with("metric", Some(json!("sys cpu"))),
            with("metric", Some(json!("a\u{1}b"))),
            with("metric", Some(json!("a²"))),
            with("timestamp", None),
            with("timestamp", Some(json!("soon"))),
            with("timestamp", Some(json!("1346846400.5"))),
            with("timestamp", Some(json!(1.5))),
            with("timestamp", Some(json!(0))),
            with("timestamp", Some(json!(-5))),
            with("timestamp", Some(json!(10_000_000_000_000i64))),
            with("timestamp", Some(json!(u64::MAX))),
            with("timestamp", Some(json!("99999999999999999999"))),
            with("timestamp", Some(json!(true))),
            with("value", None),
            with("value", Some(json!(""))),
            with("value", Some(json!("  "))),
            with("value", Some(json!("abc"))),
            with("value", Some(json!(true))),
            with("value", Some(json!({"v": 1}))),
            with("value", Some(json!("NaN"))),
            with("value", Some(json!("-Infinity"))),
            with("value", Some(json!("inf"))),
            with("value", Some(json!("1e999"))),
            with("tags", None),
            with("tags", Some(json!({}))),
            with("tags", Some(json!("host=a"))),
            with("tags", Some(json!({"h": ""}))),
            with("tags", Some(json!({"": "x"}))),
            with("tags", Some(json!({"h": null}))),
            with("tags", Some(json!({"h": [1]}))),
            with("tags", Some(json!({"h": "a b"}))),
            with("tags", Some(json!({"h o": "a"}))),
            with("tags", Some(json!({"h": "a\nb"}))),
            json!({"metric": "", "timestamp": -1}),
            base.clone(),
        ];
        let out = parse_opentsdb_put(json!(points).to_string().as_bytes()).unwrap();
        assert_eq!(
            out.points.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [0, points.len() - 1]
        );
        let mut got = String::new();
        for e in &out.errors {
            assert_eq!(
                e.datapoint, points[e.index],
                "the data point is echoed as sent"
            );
            writeln!(got, "{}: {}\n    {}", e.index, e.datapoint, e.error).unwrap();
        }
        expect![[r#"
            1: null
                Unexpected null datapoint encountered in set.
            2: "text"
                data point is a string, not a JSON object
            3: [1]
                data point is an array, not a JSON object
            4: {"tags":{"h":"x"},"timestamp":1346846400,"value":1}
                Metric name was empty
            5: {"metric":"","tags":{"h":"x"},"timestamp":1346846400,"value":1}
                Metric name was empty
            6: {"metric":5,"tags":{"h":"x"},"timestamp":1346846400,"value":1}
                Invalid metric name: expected a string, found a number
            7: {"metric":"sys cpu","tags":{"h":"x"},"timestamp":1346846400,"value":1}
                Invalid metric name ("sys cpu"): illegal character ' '; allowed are ASCII letters and digits, '-', '_', '.', '/' and Unicode letters
            8: {"metric":"a\u0001b","tags":{"h":"x"},"timestamp":1346846400,"value":1}
                metric name 'a\u{1}b' contains a control character
            9: {"metric":"a²","tags":{"h":"x"},"timestamp":1346846400,"value":1}
                Invalid metric name ("a²"): illegal character '²'; allowed are ASCII letters and digits, '-', '_', '.', '/' and Unicode letters
            10: {"metric":"m","tags":{"h":"x"},"value":1}
                Invalid timestamp: missing
            11: {"metric":"m","tags":{"h":"x"},"timestamp":"soon","value":1}
                Invalid timestamp: "soon" is not an integer
            12: {"metric":"m","tags":{"h":"x"},"timestamp":"1346846400.5","value":1}
                Invalid timestamp: "1346846400.5" is not an integer
            13: {"metric":"m","tags":{"h":"x"},"timestamp":1.5,"value":1}
                Invalid timestamp: 1.5 is not an integer
            14: {"metric":"m","tags":{"h":"x"},"timestamp":0,"value":1}
                Invalid timestamp: 0 must be greater than zero
            15: {"metric":"m","tags":{"h":"x"},"timestamp":-5,"value":1}
                Invalid timestamp: -5 must be greater than zero
            16: {"metric":"m","tags":{"h":"x"},"timestamp":10000000000000,"value":1}
                Invalid timestamp: 10000000000000 has more than 13 digits of milliseconds
            17: {"metric":"m","tags":{"h":"x"},"timestamp":18446744073709551615,"value":1}
                Invalid timestamp: 18446744073709551615 has more than 13 digits of milliseconds
            18: {"metric":"m","tags":{"h":"x"},"timestamp":"99999999999999999999","value":1}
                Invalid timestamp: 99999999999999999999 has more than 13 digits of milliseconds
            19: {"metric":"m","tags":{"h":"x"},"timestamp":true,"value":1}
                Invalid timestamp: expected an integer, found a boolean
            20: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400}
                Empty value
            21: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":""}
                Empty value
            22: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"  "}
                Empty value
            23: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"abc"}
                Unable to parse value to a number: "abc"
            24: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":true}
                Unable to parse value to a number: true
            25: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":{"v":1}}
                Unable to parse value to a number: {"v":1}
            26: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"NaN"}
                value is NaN or Infinite: NaN for metric=m timestamp=1346846400
            27: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"-Infinity"}
                value is NaN or Infinite: -Infinity for metric=m timestamp=1346846400
            28: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"inf"}
                value is NaN or Infinite: inf for metric=m timestamp=1346846400
            29: {"metric":"m","tags":{"h":"x"},"timestamp":1346846400,"value":"1e999"}
                value is NaN or Infinite: 1e999 for metric=m timestamp=1346846400
            30: {"metric":"m","timestamp":1346846400,"value":1}
                Missing tags: a data point needs at least one tag
            31: {"metric":"m","tags":{},"timestamp":1346846400,"value":1}
                Missing tags: a data point needs at least one tag
            32: {"metric":"m","tags":"host=a","timestamp":1346846400,"value":1}
                Invalid tags: expected an object of tag names to values, found a string
            33: {"metric":"m","tags":{"h":""},"timestamp":1346846400,"value":1}
                tag 'h' has an empty value
            34: {"metric":"m","tags":{"":"x"},"timestamp":1346846400,"value":1}
                tag key is empty
            35: {"metric":"m","tags":{"h":null},"timestamp":1346846400,"value":1}
                Invalid tag value for 'h': null
            36: {"metric":"m","tags":{"h":[1]},"timestamp":1346846400,"value":1}
                Invalid tag value for 'h': expected a string, found an array
            37: {"metric":"m","tags":{"h":"a b"},"timestamp":1346846400,"value":1}
                Invalid tag value ("a b"): illegal character ' '; allowed are ASCII letters and digits, '-', '_', '.', '/' and Unicode letters
            38: {"metric":"m","tags":{"h o":"a"},"timestamp":1346846400,"value":1}
                Invalid tag name ("h o"): illegal character ' '; allowed are ASCII letters and digits, '-', '_', '.', '/' and Unicode letters
            39: {"metric":"m","tags":{"h":"a\nb"},"timestamp":1346846400,"value":1}
                tag value 'a\nb' contains a control character
            40: {"metric":"","timestamp":-1}
                Metric name was empty
        "#]]
        .assert_eq(&got);
    }

    /// Candidate values for each member of a data point, good and bad.
    fn member() -> impl proptest::strategy::Strategy<Value = Option<Value>> {
        proptest::sample::select(vec![
            None,
            Some(Value::Null),
            Some(json!("")),
            Some(json!("m.x")),
            Some(json!("a b")),
            Some(json!("1346846400")),
            Some(json!("NaN")),
            Some(json!("1.5")),
            Some(json!(0)),
            Some(json!(-1)),
            Some(json!(1346846400)),
            Some(json!(1346846400123i64)),
            Some(json!(i64::MAX)),
            Some(json!(u64::MAX)),
            Some(json!(2.5)),
            Some(json!(true)),
            Some(json!([1])),
            Some(json!({})),
            Some(json!({"h": "x"})),
            Some(json!({"h": ""})),
            Some(json!({"h": 1, "d": "é"})),
        ])
    }

    proptest::proptest! {
        /// Any mix of good and bad members gives an outcome that accounts for every data point
        /// exactly once, with finite values and positive times.
        #[test]
        fn every_point_is_accounted_for(points in proptest::collection::vec(
            (member(), member(), member(), member()), 1..20,
        )) {
            let items: Vec<Value> = points.iter().map(|(m, t, v, g)| {
                let mut o = serde_json::Map::new();
                for (k, x) in [("metric", m), ("timestamp", t), ("value", v), ("tags", g)] {
                    if let Some(x) = x {
                        o.insert(k.into(), x.clone());
                    }
                }
                Value::Object(o)
            }).collect();
            let out = parse_opentsdb_put(Value::Array(items.clone()).to_string().as_bytes()).unwrap();
            let mut seen: Vec<usize> = out.points.iter().map(|(i, _)| *i).collect();
            seen.extend(out.errors.iter().map(|e| e.index));
            seen.sort_unstable();
            proptest::prop_assert_eq!(seen, (0..items.len()).collect::<Vec<_>>());
            for (_, p) in &out.points {
                proptest::prop_assert!(p.value.is_finite() && p.ts_ms > 0);
            }
            for e in &out.errors {
                proptest::prop_assert_eq!(&e.datapoint, &items[e.index]);
            }
        }
    }

    #[test]
    fn body_errors() {
        let mut got = String::new();
        for body in [
            &b""[..],
            b" \n\t",
            b"{oops",
            b"\xff\xfe",
            b"42",
            b"\"text\"",
            b"null",
            b"[]",
            b"[1] [2]",
            br#"{"value": 1e999}"#,
        ] {
            let e = parse_opentsdb_put(body).unwrap_err();
            writeln!(got, "{:?}: {e}", String::from_utf8_lossy(body)).unwrap();
        }
        expect![[r#"
            "": Missing request content
            " \n\t": Missing request content
            "{oops": Unable to parse the given JSON: key must be a string at line 1 column 2
            "��": Unable to parse the given JSON: expected value at line 1 column 1
            "42": The JSON must start as an object or an array, not a number
            "\"text\"": The JSON must start as an object or an array, not a string
            "null": The JSON must start as an object or an array, not null
            "[]": No datapoints found in content
            "[1] [2]": Unable to parse the given JSON: trailing characters at line 1 column 5
            "{\"value\": 1e999}": Unable to parse the given JSON: number out of range at line 1 column 15
        "#]]
        .assert_eq(&got);
    }
}
