//! InfluxDB line protocol:
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`.
//!
//! Escapes: in the measurement a backslash escapes comma and space; in tag keys, tag values
//! and field keys it escapes comma, equals sign and space; in string field values it escapes
//! the double quote and the backslash. A backslash before any other character is kept.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use tsvault_model::{Point, TagSet};

/// Longest line accepted.
const LINE_BYTES_MAX: usize = 1 << 20;

/// The unit of line protocol timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Nanoseconds (the default).
    Ns,
    /// Microseconds.
    Us,
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
    /// Minutes.
    M,
    /// Hours.
    H,
}

/// An unknown precision name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid precision '{0}'; use one of ns, u, us, ms, s, m, h")]
pub struct PrecisionError(pub String);

impl FromStr for Precision {
    type Err = PrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ns" | "n" => Precision::Ns,
            "u" | "us" | "µ" | "µs" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            "m" => Precision::M,
            "h" => Precision::H,
            other => return Err(PrecisionError(other.to_owned())),
        })
    }
}

impl Precision {
    /// Converts a timestamp in this precision to milliseconds (floor for finer units).
    fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(ts.div_euclid(1_000_000)),
            Precision::Us => Some(ts.div_euclid(1_000)),
            Precision::Ms => Some(ts),
            Precision::S => ts.checked_mul(1_000),
            Precision::M => ts.checked_mul(60_000),
            Precision::H => ts.checked_mul(3_600_000),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
            Precision::M => "m",
            Precision::H => "h",
        }
    }
}

/// One rejected line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the body.
    pub line: usize,
    /// What is wrong, for a person.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

/// What a body parsed into.
#[derive(Debug, Default)]
pub struct LineProtocolOutcome {
    /// Every numeric field of every valid line.
    pub points: Vec<Point>,
    /// One per rejected line, in line order.
    pub errors: Vec<LineError>,
    /// Valid lines.
    pub lines_written: usize,
    /// String fields seen in valid lines; they are not stored.
    pub string_fields_skipped: u64,
}

/// Parses a whole body. `now_ms` stamps lines without a timestamp.
pub fn parse_line_protocol(body: &[u8], precision: Precision, now_ms: i64) -> LineProtocolOutcome {
    let mut out = LineProtocolOutcome::default();
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let start = raw
            .iter()
            .position(|b| !b.is_ascii_whitespace())
            .unwrap_or(raw.len());
        let raw = &raw[start..];
        if raw.is_empty() || raw[0] == b'#' {
            continue;
        }
        let line_no = i + 1;
        let result = if raw.len() > LINE_BYTES_MAX {
            Err(format!(
                "line is {} bytes long; the limit is {LINE_BYTES_MAX}",
                raw.len()
            ))
        } else {
            match std::str::from_utf8(raw) {
                Ok(text) => parse_line(text, precision, now_ms, &mut out),
                Err(e) => Err(format!(
                    "invalid UTF-8 at byte {} of the line",
                    e.valid_up_to() + start
                )),
            }
        };
        match result {
            Ok(()) => out.lines_written += 1,
            Err(message) => out.errors.push(LineError {
                line: line_no,
                message,
            }),
        }
    }
    out
}

/// Reads up to the first unescaped byte of `stops`; `escapable` are the bytes a backslash
/// escapes here. Returns the unescaped text and the rest starting at the stop byte.
fn scan<'a>(s: &'a str, stops: &[u8], escapable: &[u8]) -> (Cow<'a, str>, &'a str) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    let mut copied_to = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' && i + 1 < b.len() && escapable.contains(&b[i + 1]) {
            let o = owned.get_or_insert_with(String::new);
            o.push_str(&s[copied_to..i]);
            copied_to = i + 1;
            i += 2;
            continue;
        }
        if stops.contains(&c) {
            break;
        }
        i += 1;
    }
    let text = match owned {
        None => Cow::Borrowed(&s[..i]),
        Some(mut o) => {
            o.push_str(&s[copied_to..i]);
            Cow::Owned(o)
        }
    };
    (text, &s[i..])
}

const MEASUREMENT_ESC: &[u8] = b", ";
const KEY_ESC: &[u8] = b",= ";

enum FieldValue {
    Number(f64),
    Str,
}

fn parse_line(
    line: &str,
    precision: Precision,
    now_ms: i64,
    out: &mut LineProtocolOutcome,
) -> Result<(), String> {
    let (measurement, mut rest) = scan(line, b", ", MEASUREMENT_ESC);
    if measurement.is_empty() {
        return Err("missing measurement name".into());
    }
    let mut tags: Vec<(Cow<str>, Cow<str>)> = Vec::new();
    while let Some(r) = rest.strip_prefix(',') {
        let (key, r) = scan(r, b",= ", KEY_ESC);
        let Some(r) = r.strip_prefix('=') else {
            return Err(if key.is_empty() {
                "empty tag (a comma not followed by key=value)".into()
            } else {
                format!("tag '{key}' has no value (expected '{key}=value')")
            });
        };
        let (value, r) = scan(r, b", =", KEY_ESC);
        if r.starts_with('=') {
            return Err(format!(
                "tag '{key}' has an unescaped '=' in its value (escape it as '\\=')"
            ));
        }
        tags.push((key, value));
        rest = r;
    }
    let tagset = TagSet::new(&tags).map_err(|e| e.to_string())?;
    let rest = rest.trim_start_matches(' ');
    if rest.is_empty() {
        return Err(
            "missing fields (expected 'field=value' after the measurement and tags)".into(),
        );
    }
    // Fields.
    let mut fields: Vec<(Cow<str>, FieldValue)> = Vec::new();
    let mut r = rest;
    loop {
        let (key, after) = scan(r, b",= ", KEY_ESC);
        if key.is_empty() {
            return Err("missing field key (expected 'field=value')".into());
        }
        let Some(after) = after.strip_prefix('=') else {
            return Err(format!(
                "field '{key}' has no value (expected '{key}=value')"
            ));
        };
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let (_, tail) = scan(quoted, b"\"", b"\"\\");
            let Some(tail) = tail.strip_prefix('"') else {
                return Err(format!(
                    "string value of field '{key}' has no closing double quote"
                ));
            };
            (FieldValue::Str, tail)
        } else {
            let end = after.find([',', ' ']).unwrap_or(after.len());
            (parse_value(&key, &after[..end])?, &after[end..])
        };
        if let Some(i) = fields.iter().position(|(k, _)| *k == key) {
            fields.remove(i);
        }
        fields.push((key, value));
        match after.strip_prefix(',') {
            Some(next) => r = next,
            None => {
                r = after;
                break;
            }
        }
    }
    // Timestamp.
    let ts_text = r.trim_matches(' ');
    let ts_ms = if ts_text.is_empty() {
        now_ms
    } else {
        let ts: i64 = ts_text.parse().map_err(|_| {
            if ts_text.bytes().all(|b| b.is_ascii_digit() || b == b'-') && !ts_text.is_empty() {
                format!("timestamp '{ts_text}' does not fit in a signed 64-bit integer")
            } else {
                format!("invalid timestamp '{ts_text}': expected an integer (or unescaped space in a field)")
            }
        })?;
        precision.to_ms(ts).filter(|&ms| tsvault_model::ts_in_range(ms)).ok_or_else(|| {
            format!(
                "timestamp {ts} at precision {} is out of range (supported: ±2^60 ms, about ±36 million years around 1970)",
                precision.name()
            )
        })?
    };
    let prefix_len = measurement.len() + 1;
    let mut metric = String::with_capacity(prefix_len + 16);
    for (key, value) in fields {
        match value {
            FieldValue::Str => out.string_fields_skipped += 1,
            FieldValue::Number(v) => {
                metric.clear();
                metric.push_str(&measurement);
                metric.push('_');
                metric.push_str(&key);
                let key = tagset
                    .key_for(&metric)
                    .map_err(|e| format!("field '{}': {e}", &metric[prefix_len..]))?;
                out.points.push(Point {
                    key,
                    ts_ms,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

fn parse_value(key: &str, text: &str) -> Result<FieldValue, String> {
    let bad = || {
        format!(
            "invalid value for field '{key}': \"{text}\" is not a float, an integer (123i), an unsigned integer (123u), a boolean or a double-quoted string"
        )
    };
    if text.is_empty() {
        return Err(format!("field '{key}' has an empty value"));
    }
    let v = match text {
        "t" | "T" | "true" | "True" | "TRUE" => 1.0,
        "f" | "F" | "false" | "False" | "FALSE" => 0.0,
        _ => {
            if let Some(int) = text.strip_suffix('i') {
                let n: i64 = int.parse().map_err(|_| {
                    if is_integer(int) {
                        format!("integer value of field '{key}' is out of range: {text}")
                    } else {
                        bad()
                    }
                })?;
                n as f64
            } else if let Some(uint) = text.strip_suffix('u') {
                let n: u64 = uint.parse().map_err(|_| {
                    if is_integer(uint) {
                        format!("unsigned value of field '{key}' is out of range: {text}")
                    } else {
                        bad()
                    }
                })?;
                n as f64
            } else {
                // Only digits, sign, point and exponent: Rust would also accept "inf" and
                // "NaN", which line protocol does not.
                if !text
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
                {
                    return Err(
                        if text.eq_ignore_ascii_case("nan")
                            || text.to_ascii_lowercase().contains("inf")
                        {
                            format!(
                                "field '{key}' is {text}: NaN and infinite values are not accepted"
                            )
                        } else {
                            bad()
                        },
                    );
                }
                let v: f64 = text.parse().map_err(|_| bad())?;
                if !v.is_finite() {
                    return Err(format!(
                        "float value of field '{key}' is out of range: {text}"
                    ));
                }
                v
            }
        }
    };
    Ok(FieldValue::Number(v))
}

fn is_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tsvault_model::SeriesKey;

    fn parse(body: &str) -> LineProtocolOutcome {
        parse_line_protocol(body.as_bytes(), Precision::Ns, 777)
    }

    fn one_error(body: &str) -> String {
        let out = parse(body);
        assert_eq!(out.errors.len(), 1, "{body:?} -> {:?}", out.errors);
        out.errors[0].to_string()
    }

    #[test]
    fn tsbs_line() {
        let line = "cpu,hostname=host_0,region=eu-west-1,datacenter=eu-west-1a,rack=87,os=Ubuntu16.10,arch=x86,team=NYC,service=18,service_version=1,service_environment=production usage_user=58i,usage_system=2i,usage_idle=24i,usage_nice=61i,usage_iowait=22i,usage_irq=63i,usage_softirq=6i,usage_steal=44i,usage_guest=80i,usage_guest_nice=38i 1451606400000000000";
        let out = parse(line);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(out.points.len(), 10);
        assert_eq!(out.points[0].key.metric(), "cpu_usage_user");
        assert_eq!(out.points[0].key.tag("rack"), Some("87"));
        assert_eq!(out.points[9].value, 38.0);
        assert_eq!(out.points[9].ts_ms, 1_451_606_400_000);
    }

    #[test]
    fn field_types() {
        let out =
            parse("m f=1.5,i=-3i,u=18446744073709551615u,b=true,B=F,e=-1.5e3,s=\"x\" 5000000");
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let vals: Vec<(&str, f64)> = out
            .points
            .iter()
            .map(|p| (p.key.metric(), p.value))
            .collect();
        assert_eq!(
            vals,
            vec![
                ("m_f", 1.5),
                ("m_i", -3.0),
                ("m_u", 18446744073709551615.0),
                ("m_b", 1.0),
                ("m_B", 0.0),
                ("m_e", -1500.0)
            ]
        );
        assert_eq!(out.string_fields_skipped, 1);
        assert_eq!(out.points[0].ts_ms, 5);
    }

    #[test]
    fn escapes() {
        let out =
            parse(r#"my\ meas\,x,tag\ k\=1=v\,a\ l\=ue fie\ ld\=\,=1,s="a \"q\" \\ b",c=2 1"#);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        let k = &out.points[0].key;
        assert_eq!(k.metric(), "my meas,x_fie ld=,");
        assert_eq!(k.tags().collect::<Vec<_>>(), vec![("tag k=1", "v,a l=ue")]);
        assert_eq!(out.points[1].key.metric(), "my meas,x_c");
        // A backslash before other characters is literal.
        let out = parse(r"m,t=a\b v=1 1");
        assert_eq!(out.points[0].key.tag("t"), Some(r"a\b"));
    }

    #[test]
    fn precision_and_default_time() {
        let p = |prec, ts: &str| {
            parse_line_protocol(format!("m v=1 {ts}").as_bytes(), prec, 0).points[0].ts_ms
        };
        assert_eq!(p(Precision::Ns, "-1"), -1, "floor, not truncation");
        assert_eq!(p(Precision::Us, "1999"), 1);
        assert_eq!(p(Precision::Ms, "42"), 42);
        assert_eq!(p(Precision::S, "2"), 2000);
        assert_eq!(p(Precision::M, "2"), 120_000);
        assert_eq!(p(Precision::H, "1"), 3_600_000);
        assert_eq!(parse("m v=1").points[0].ts_ms, 777);
        assert_eq!("u".parse::<Precision>(), Ok(Precision::Us));
        assert!(
            "x".parse::<Precision>()
                .unwrap_err()
                .to_string()
                .contains("'x'")
        );
    }

    #[test]
    fn comments_blank_lines_crlf_and_partial_writes() {
        let body = "# header\r\n\r\nm v=1 1\r\nm v=oops 2\r\n  \nm v=3 3\n";
        let out = parse(body);
        assert_eq!(out.lines_written, 2);
        assert_eq!(
            out.points.iter().map(|p| p.value).collect::<Vec<_>>(),
            vec![1.0, 3.0]
        );
        assert_eq!(out.errors.len(), 1);
        assert_eq!(out.errors[0].line, 4);
        assert!(
            out.errors[0]
                .to_string()
                .starts_with("line 4: invalid value for field 'v'"),
            "{}",
            out.errors[0]
        );
    }

    #[test]
    fn duplicate_fields_keep_last() {
        let out = parse("m v=1,v=2 1");
        assert_eq!(out.points.len(), 1);
        assert_eq!(out.points[0].value, 2.0);
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            ("", "missing"),
            (",t=a v=1", "missing measurement"),
            ("m,t=a", "missing fields"),
            ("m,t=a ", "missing fields"),
            ("m,t v=1", "tag 't' has no value"),
            ("m,t= v=1", "tag 't' has an empty value"),
            ("m,=a v=1", "tag key is empty"),
            ("m,t=a,t=b v=1", "tag 't' appears more than once"),
            ("m v", "field 'v' has no value"),
            ("m v=", "field 'v' has an empty value"),
            ("m =1", "missing field key"),
            ("m v=NaN", "NaN and infinite"),
            ("m v=inf", "NaN and infinite"),
            ("m v=-Infinity", "NaN and infinite"),
            ("m v=1e999", "out of range"),
            ("m v=99999999999999999999i", "out of range"),
            ("m v=-1u", "out of range"),
            ("m v=1.5i", "is not a float"),
            ("m v=\"open", "no closing double quote"),
            ("m v=1 12x", "invalid timestamp"),
            ("m v=1 99999999999999999999", "does not fit"),
            ("m v=1 1 2", "invalid timestamp"),
            ("m,t=a=b v=1", "unescaped '='"),
        ];
        for (line, needle) in cases {
            if line.is_empty() {
                assert!(
                    parse(line).errors.is_empty(),
                    "an empty body is not an error"
                );
                continue;
            }
            let e = one_error(line);
            assert!(e.contains(needle), "{line:?}: {e}");
        }
        let e = parse_line_protocol(b"m v=1 9223372036854775807", Precision::H, 0).errors[0]
            .to_string();
        assert!(
            e.contains("out of range") && e.contains("precision h"),
            "{e}"
        );
        for ts in [
            "9223372036854775807",
            "-9223372036854775808",
            "1152921504606846977",
        ] {
            let e = parse_line_protocol(format!("m v=1 {ts}").as_bytes(), Precision::Ms, 0).errors
                [0]
            .to_string();
            assert!(e.contains("out of range"), "{ts}: {e}");
        }
        assert!(
            parse_line_protocol(b"m v=1 1152921504606846976", Precision::Ms, 0)
                .errors
                .is_empty()
        );
        let e = parse_line_protocol(b"m,t=\xff v=1", Precision::Ns, 0).errors[0].to_string();
        assert!(e.contains("invalid UTF-8"), "{e}");
        let e = one_error("m,t=a\u{1}b v=1");
        assert!(e.contains("control character"), "{e}");
        let long = format!("m v=1,{}=1", "x".repeat(LINE_BYTES_MAX));
        assert!(one_error(&long).contains("limit"));
    }

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 ,=\"_.é-]{1,12}"
    }

    fn escape(s: &str, special: &[char]) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    proptest! {
        /// Any names, correctly escaped, parse back to exactly those names and values.
        #[test]
        fn escaped_names_round_trip(
            m in name(), tk in name(), tv in name(), fk in name(),
            v in any::<i32>(), s in "[a-z \"\\\\]{0,8}", ts in tsvault_model::TS_MS_MIN..=tsvault_model::TS_MS_MAX,
        ) {
            prop_assume!(fk != "str");
            let line = format!(
                "{},{}={} {}={}i,str=\"{}\" {}",
                escape(&m, &[',', ' ']),
                escape(&tk, &[',', '=', ' ']),
                escape(&tv, &[',', '=', ' ']),
                escape(&fk, &[',', '=', ' ']),
                v,
                escape(&s, &['"', '\\']),
                ts
            );
            let out = parse_line_protocol(line.as_bytes(), Precision::Ms, 0);
            prop_assert!(out.errors.is_empty(), "{} -> {:?}", line, out.errors);
            let want = SeriesKey::new(&format!("{m}_{fk}"), &[(tk.as_str(), tv.as_str())]).unwrap();
            prop_assert_eq!(out.points.len(), 1);
            prop_assert_eq!(&out.points[0].key, &want);
            prop_assert_eq!(out.points[0].value, f64::from(v));
            prop_assert_eq!(out.points[0].ts_ms, ts);
            prop_assert_eq!(out.string_fields_skipped, 1);
        }
    }
}
