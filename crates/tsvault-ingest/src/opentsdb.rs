//! OpenTSDB `/api/put` bodies: one data point object or an array of them.
//!
//! `{"metric": "sys.cpu.nice", "timestamp": 1346846400, "value": 18, "tags": {"host": "web01"}}`
//! Timestamps are seconds, or milliseconds when larger than 2^32 - 1 (OpenTSDB's rule);
//! values are JSON numbers or strings holding one; at least one tag is required. Names may
//! hold `a-z A-Z 0-9 - _ . /` and Unicode letters, as in OpenTSDB.

use serde_json::Value;
use tsvault_model::{Point, TagSet};

/// The largest timestamp OpenTSDB reads as seconds.
const SECONDS_MAX: i64 = 0xFFFF_FFFF;
/// The largest millisecond timestamp (13 digits).
const MILLIS_MAX: i64 = 9_999_999_999_999;

/// The body as a whole is unusable (nothing was parsed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PutBodyError(pub String);

/// One rejected data point.
#[derive(Debug, Clone, PartialEq)]
pub struct PutError {
    /// Its position in the request (0 for a single object).
    pub index: usize,
    /// The data point as sent, echoed back as OpenTSDB does.
    pub datapoint: Value,
    /// What is wrong.
    pub error: String,
}

/// What a body parsed into.
#[derive(Debug, Default)]
pub struct PutOutcome {
    /// Valid points with their position in the request.
    pub points: Vec<(usize, Point)>,
    /// Rejected points, in request order.
    pub errors: Vec<PutError>,
}

/// Parses a `/api/put` body.
pub fn parse_opentsdb_put(body: &[u8]) -> Result<PutOutcome, PutBodyError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| PutBodyError(format!("Unable to parse the given JSON: {e}")))?;
    let items = match value {
        Value::Array(items) => items,
        obj @ Value::Object(_) => vec![obj],
        other => {
            return Err(PutBodyError(format!(
                "Unable to parse the given JSON: expected a data point object or an array of them, found {}",
                kind(&other)
            )));
        }
    };
    if items.is_empty() {
        return Err(PutBodyError("the request holds no data points".into()));
    }
    let mut out = PutOutcome::default();
    for (index, item) in items.into_iter().enumerate() {
        match parse_point(&item) {
            Ok(p) => out.points.push((index, p)),
            Err(error) => out.errors.push(PutError {
                index,
                datapoint: item,
                error,
            }),
        }
    }
    Ok(out)
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

fn check_chars(what: &str, s: &str) -> Result<(), String> {
    match s
        .chars()
        .find(|&c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')))
    {
        None => Ok(()),
        Some(c) => Err(format!(
            "Invalid {what} (\"{s}\"): illegal character: {c:?}"
        )),
    }
}

fn parse_point(item: &Value) -> Result<Point, String> {
    let Value::Object(obj) = item else {
        return Err(format!("data point is {}, not an object", kind(item)));
    };
    let metric = match obj.get("metric") {
        Some(Value::String(m)) if !m.is_empty() => m.as_str(),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            return Err("Metric name was empty".into());
        }
        Some(other) => {
            return Err(format!(
                "Metric name must be a string, found {}",
                kind(other)
            ));
        }
    };
    check_chars("metric name", metric)?;
    let ts = match obj.get("timestamp") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        None | Some(Value::Null) => return Err("Missing timestamp".into()),
        Some(_) => None,
    };
    let ts_ms = match ts {
        Some(t) if t > 0 && t <= SECONDS_MAX => t * 1000,
        Some(t) if t > SECONDS_MAX && t <= MILLIS_MAX => t,
        Some(t) if t > MILLIS_MAX => {
            return Err(format!(
                "Invalid timestamp: {t} has more than 13 digits (milliseconds at most)"
            ));
        }
        Some(t) => return Err(format!("Invalid timestamp: {t} must be greater than zero")),
        None => {
            return Err(format!(
                "Invalid timestamp: {} is not an integer",
                obj["timestamp"]
            ));
        }
    };
    let value = match obj.get("value") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) if s.trim().is_empty() => return Err("Empty value".into()),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        None | Some(Value::Null) => return Err("Empty value".into()),
        Some(_) => None,
    };
    let value = match value {
        Some(v) if v.is_finite() => v,
        Some(v) => return Err(format!("value is NaN or Infinite: {v}")),
        None => return Err(format!("Invalid value: {} is not a number", obj["value"])),
    };
    let tags = match obj.get("tags") {
        Some(Value::Object(t)) if !t.is_empty() => t,
        Some(Value::Object(_)) | None | Some(Value::Null) => {
            return Err("Missing tags: at least one tag is required".into());
        }
        Some(other) => return Err(format!("tags must be an object, found {}", kind(other))),
    };
    let mut pairs = Vec::with_capacity(tags.len());
    for (k, v) in tags {
        let Value::String(v) = v else {
            return Err(format!(
                "tag '{k}' must have a string value, found {}",
                kind(v)
            ));
        };
        if !k.is_empty() {
            check_chars("tag key", k)?;
        }
        if !v.is_empty() {
            check_chars("tag value", v)?;
        }
        pairs.push((k.as_str(), v.as_str()));
    }
    let key = TagSet::new(&pairs)
        .and_then(|t| t.key_for(metric))
        .map_err(|e| e.to_string())?;
    Ok(Point { key, ts_ms, value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn errors(body: Value) -> Vec<String> {
        parse_opentsdb_put(body.to_string().as_bytes())
            .unwrap()
            .errors
            .into_iter()
            .map(|e| e.error)
            .collect()
    }

    #[test]
    fn object_and_array() {
        let one = json!({"metric": "sys.cpu.nice", "timestamp": 1346846400, "value": 18, "tags": {"host": "web01", "dc": "lga"}});
        let out = parse_opentsdb_put(one.to_string().as_bytes()).unwrap();
        assert!(out.errors.is_empty());
        let (i, p) = &out.points[0];
        assert_eq!(*i, 0);
        assert_eq!(p.key.metric(), "sys.cpu.nice");
        assert_eq!(
            p.key.tags().collect::<Vec<_>>(),
            vec![("dc", "lga"), ("host", "web01")]
        );
        assert_eq!((p.ts_ms, p.value), (1_346_846_400_000, 18.0));
        let many = json!([
            {"metric": "a", "timestamp": 1346846400123i64, "value": "1.5", "tags": {"h": "x"}},
            {"metric": "a", "timestamp": "1346846401", "value": -2, "tags": {"h": "x"}},
        ]);
        let out = parse_opentsdb_put(many.to_string().as_bytes()).unwrap();
        let got: Vec<(usize, i64, f64)> = out
            .points
            .iter()
            .map(|(i, p)| (*i, p.ts_ms, p.value))
            .collect();
        assert_eq!(
            got,
            vec![(0, 1_346_846_400_123, 1.5), (1, 1_346_846_401_000, -2.0)]
        );
    }

    #[test]
    fn values_parse_exactly() {
        // serde_json's default float parser can be one ulp off; the workspace enables
        // `float_roundtrip`, and this guards it.
        for text in [
            "944047.0966796875",
            "0.1",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "9007199254740993",
        ] {
            let want: f64 = text.parse().unwrap();
            for body in [
                format!(r#"{{"metric":"m","timestamp":1,"value":{text},"tags":{{"h":"x"}}}}"#),
                format!(r#"{{"metric":"m","timestamp":1,"value":"{text}","tags":{{"h":"x"}}}}"#),
            ] {
                let out = parse_opentsdb_put(body.as_bytes()).unwrap();
                assert_eq!(out.points[0].1.value.to_bits(), want.to_bits(), "{body}");
            }
        }
    }

    #[test]
    fn per_point_errors() {
        let base = json!({"metric": "m", "timestamp": 1346846400, "value": 1, "tags": {"h": "x"}});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            if v.is_null() {
                b.as_object_mut().unwrap().remove(k);
            } else {
                b[k] = v;
            }
            b
        };
        let cases = [
            (with("metric", json!("")), "Metric name was empty"),
            (with("metric", Value::Null), "Metric name was empty"),
            (with("metric", json!("a b")), "illegal character: ' '"),
            (with("timestamp", Value::Null), "Missing timestamp"),
            (with("timestamp", json!("soon")), "Invalid timestamp"),
            (with("timestamp", json!(-5)), "greater than zero"),
            (with("timestamp", json!(99999999999999i64)), "13 digits"),
            (with("timestamp", json!(1.5)), "Invalid timestamp"),
            (with("value", Value::Null), "Empty value"),
            (with("value", json!("")), "Empty value"),
            (with("value", json!("NaN")), "NaN or Infinite"),
            (with("value", json!("-Infinity")), "NaN or Infinite"),
            (with("value", json!("abc")), "Invalid value"),
            (with("value", json!(true)), "Invalid value"),
            (with("tags", Value::Null), "Missing tags"),
            (with("tags", json!({})), "Missing tags"),
            (with("tags", json!({"h": ""})), "tag 'h' has an empty value"),
            (with("tags", json!({"h": 3})), "string value"),
            (with("tags", json!({"h": "a b"})), "illegal character"),
            (json!("text"), "not an object"),
        ];
        for (point, needle) in cases {
            let errs = errors(json!([point.clone()]));
            assert_eq!(errs.len(), 1, "{point}");
            assert!(errs[0].contains(needle), "{point}: {}", errs[0]);
        }
    }

    #[test]
    fn body_errors_and_echo() {
        for body in [&b"{oops"[..], b"\xff", b"", b"42", b"[]"] {
            assert!(parse_opentsdb_put(body).is_err(), "{body:?}");
        }
        let bad = json!({"metric": "", "timestamp": 1, "value": 1, "tags": {"h": "x"}});
        let out = parse_opentsdb_put(json!([bad.clone()]).to_string().as_bytes()).unwrap();
        assert_eq!(out.errors[0].datapoint, bad);
        assert_eq!(out.errors[0].index, 0);
    }
}
