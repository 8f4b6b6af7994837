//! InfluxDB line protocol, as documented for InfluxDB v2:
//! `measurement[,tag=value...] field=value[,field=value...] [timestamp]`, one point per line.
//!
//! Each numeric field becomes one [`Point`] with metric `<measurement>_<field key>` and the
//! line's tags. Booleans are stored as 1 and 0; string fields are counted and dropped. A line
//! is taken whole or refused whole, and a refused line never stops the lines around it.
//!
//! A string field value may hold a newline (InfluxDB takes it, and Telegraf does not escape
//! it): a line ends at the first newline outside a quoted field value. What is changed on
//! the way to storage is counted for the answer: string fields not stored, timestamps cut
//! to the millisecond (and points that then shared a millisecond with another of their
//! series in the body, one of which overwrites the other), integers beyond 2^53 rounded to
//! the nearest float.
//!
//! Escapes: a backslash escapes comma and space in the measurement; comma, equals sign and
//! space in tag keys, tag values and field keys; the double quote in string field values; and
//! a backslash everywhere (`\\` reads as one backslash, as the documentation's table says). A
//! backslash before any other character is kept literally.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::fmt;

use tsvault_model::{KeyError, Point, SeriesKey, TagSet, ts_in_range};

use crate::precision::Precision;

/// Longest line accepted, in bytes: the bound on the work one line may cause.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Most bytes of series keys one line may expand to (each numeric field is a key holding all
/// the line's tags).
pub const LINE_KEY_BYTES_MAX: usize = 16 << 20;

/// A whole body may expand to at most this many bytes of distinct series keys per body byte
/// (but at least `LINE_KEY_BYTES_MAX`): the bound on the memory one request can make the
/// parser use (samples of one series share its key). TSBS-shaped lines expand about 7 times
/// when every line is a new series.
pub const BODY_KEY_BYTES_PER_BYTE_MAX: usize = 16;

/// Field count up to which duplicate field keys are found by a linear scan (cheaper than
/// hashing for the usual handful of fields); longer lines use a hash map.
const FIELDS_LINEAR_MAX: usize = 32;

/// Longest piece of input quoted back in an error message, in bytes.
const QUOTE_BYTES_MAX: usize = 64;

// Byte classes for the scanners: which bytes end (or, for the backslash, interrupt) a token.
const MEASUREMENT_STOP: u8 = 1;
const KEY_STOP: u8 = 2;
const VALUE_STOP: u8 = 4;

/// `CLASS[b]` holds the token kinds that byte `b` stops. A name's stop bytes other than the
/// backslash are exactly the bytes a backslash escapes in it; the backslash escapes itself.
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    t[b',' as usize] = MEASUREMENT_STOP | KEY_STOP | VALUE_STOP;
    t[b' ' as usize] = MEASUREMENT_STOP | KEY_STOP | VALUE_STOP;
    t[b'=' as usize] = KEY_STOP;
    t[b'\\' as usize] = MEASUREMENT_STOP | KEY_STOP;
    t
};

/// What a line protocol body parsed into.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LineProtocolOutcome {
    /// Every numeric field of every valid line, in body order.
    pub points: Vec<Point>,
    /// One per rejected line, in line order.
    pub errors: Vec<LineError>,
    /// Valid lines: lines that produced at least one point or held only string fields.
    pub lines_written: usize,
    /// String fields of valid lines; they are not stored.
    pub string_fields_skipped: u64,
    /// Timestamps with digits finer than a millisecond, cut to the millisecond.
    pub timestamps_truncated: u64,
    /// Points that, cut to the millisecond, shared it with another point of their series
    /// whose timestamp the client sent differently: one value of each such millisecond is
    /// stored (the last in the body).
    pub points_collapsed: u64,
    /// Integer field values beyond 2^53 in magnitude, stored rounded to the nearest float.
    pub integers_rounded: u64,
    /// Fields named `time` (which InfluxDB reserves and drops): not stored.
    pub time_fields_dropped: u64,
    /// Each metric name the body made, with the length of the measurement in it: `a_b c=1`
    /// and `a b_c=1` both make `a_b_c` (splits 3 and 1), one series that each overwrites.
    /// The caller compares the splits with those of earlier bodies.
    pub metric_splits: HashMap<String, usize>,
    /// Metric names made by two measurement/field pairs within this body.
    pub metric_collisions: u64,
}

impl LineProtocolOutcome {
    /// What was accepted but not stored as sent, in words for the answer; None when
    /// everything was stored as sent.
    pub fn not_stored_as_sent(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.string_fields_skipped > 0 {
            parts.push(format!(
                "{} string field(s) not stored (tsvault stores numbers and booleans)",
                self.string_fields_skipped
            ));
        }
        if self.timestamps_truncated > 0 {
            parts.push(format!(
                "{} timestamp(s) cut to the millisecond (tsvault stores milliseconds)",
                self.timestamps_truncated
            ));
        }
        if self.points_collapsed > 0 {
            parts.push(format!(
                "{} point(s) overwritten by another point of their series in the same millisecond",
                self.points_collapsed
            ));
        }
        if self.integers_rounded > 0 {
            parts.push(format!(
                "{} integer(s) beyond 2^53 stored rounded to the nearest float",
                self.integers_rounded
            ));
        }
        if self.time_fields_dropped > 0 {
            parts.push(format!(
                "{} field(s) named 'time' not stored (the name is reserved, as in InfluxDB)",
                self.time_fields_dropped
            ));
        }
        if self.metric_collisions > 0 {
            parts.push(format!(
                "{} metric name(s) made by two measurement/field pairs (as a_b c and a b_c both make a_b_c): they are one series",
                self.metric_collisions
            ));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// What one valid line held that is not stored as sent.
#[derive(Default)]
struct LineCounts {
    strings: u64,
    rounded: u64,
    time_fields: u64,
    /// The timestamp as sent, when it had digits finer than a millisecond.
    truncated_from: Option<i64>,
}

/// One rejected line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based line number in the body (blank and comment lines count).
    pub line: usize,
    /// What is wrong and where, for a person.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// Parses a whole body; lines without a timestamp get `now_ms`.
pub fn parse_line_protocol(body: &[u8], precision: Precision, now_ms: i64) -> LineProtocolOutcome {
    parse_line_protocol_tagged(body, precision, now_ms, &[])
}

/// [`parse_line_protocol`], adding `default_tags` to every line that does not have a tag of
/// that name itself (how the database of a `/write?db=` is kept apart, as VictoriaMetrics
/// does).
pub fn parse_line_protocol_tagged(
    body: &[u8],
    precision: Precision,
    now_ms: i64,
    default_tags: &[(String, String)],
) -> LineProtocolOutcome {
    let mut out = LineProtocolOutcome {
        // A numeric field typically costs 30 to 40 bytes of body; half that many points is a
        // first guess that string-heavy bodies do not overshoot much.
        points: Vec::with_capacity(body.len() / 64),
        ..LineProtocolOutcome::default()
    };
    let mut scratch = Scratch {
        key_budget_left: LINE_KEY_BYTES_MAX
            .max(BODY_KEY_BYTES_PER_BYTE_MAX.saturating_mul(body.len())),
        ..Scratch::default()
    };
    let mut rest = body;
    let mut index = 0;
    // Points whose timestamp had digits finer than a millisecond, with that timestamp.
    let mut sent_ts: HashMap<usize, i64> = HashMap::new();
    while !rest.is_empty() {
        let len = record_len(rest);
        let raw = &rest[..len];
        rest = rest.get(len + 1..).unwrap_or_default();
        index += 1;
        let first_line = index;
        index += memchr::memchr_iter(b'\n', raw).count();
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let start = line
            .iter()
            .position(|&b| b != b' ' && b != b'\t')
            .unwrap_or(line.len());
        if start == line.len() || line[start] == b'#' {
            continue;
        }
        let mark = out.points.len();
        match parse_line(
            line,
            start,
            precision,
            now_ms,
            default_tags,
            &mut scratch,
            &mut out.points,
        ) {
            Ok(counts) => {
                out.lines_written += 1;
                out.string_fields_skipped += counts.strings;
                out.integers_rounded += counts.rounded;
                out.time_fields_dropped += counts.time_fields;
                if let Some(ts) = counts.truncated_from {
                    out.timestamps_truncated += 1;
                    sent_ts.extend((mark..out.points.len()).map(|i| (i, ts)));
                }
            }
            Err(mut message) => {
                // A line is all or nothing: drop the points it produced before failing.
                out.points.truncate(mark);
                if index > first_line {
                    message.push_str(&format!(
                        " (refused with lines {} to {index}: a newline inside a quoted string value does not end a line, and one left open runs to the end of the body)",
                        first_line + 1
                    ));
                }
                out.errors.push(LineError {
                    line: first_line,
                    message,
                });
            }
        }
    }
    if !sent_ts.is_empty() {
        out.points_collapsed = collapsed(&out.points, &sent_ts, precision);
    }
    out.metric_collisions = scratch.collided.len() as u64;
    out.metric_splits = std::mem::take(&mut scratch.metric_splits);
    out
}

/// How many points share a (series, millisecond) with another point whose timestamp was sent
/// differently: of each such group only one value is kept. `sent_ts` holds the timestamp as
/// sent of every point cut to the millisecond; any other point's was its millisecond exactly.
fn collapsed(points: &[Point], sent_ts: &HashMap<usize, i64>, precision: Precision) -> u64 {
    let per_ms = i128::from(precision.units_per_ms());
    let mut groups: HashMap<(&SeriesKey, i64), HashSet<i128>> = sent_ts
        .keys()
        .map(|&i| ((&points[i].key, points[i].ts_ms), HashSet::new()))
        .collect();
    for (i, p) in points.iter().enumerate() {
        if let Some(sent) = groups.get_mut(&(&p.key, p.ts_ms)) {
            let ts = sent_ts
                .get(&i)
                .map_or(i128::from(p.ts_ms) * per_ms, |&t| i128::from(t));
            sent.insert(ts);
        }
    }
    groups.values().map(|s| s.len() as u64 - 1).sum()
}

/// The length of the line at the start of `b`, up to (not including) its newline: the first
/// newline outside a quoted string field value (a string may hold newlines). A string left
/// open runs to the end of the body, as in InfluxDB: the line is then refused whole, and no
/// text inside it is ever read as a line of its own.
fn record_len(b: &[u8]) -> usize {
    let Some(nl) = memchr::memchr(b'\n', b) else {
        return b.len();
    };
    // Only a line with a double quote before its first newline can hold a string value.
    if memchr::memchr(b'"', &b[..nl]).is_none() {
        return nl;
    }
    let start = b
        .iter()
        .position(|&c| c != b' ' && c != b'\t')
        .unwrap_or(b.len());
    if b.get(start) == Some(&b'#') {
        return nl;
    }
    // The measurement and tags end at the first unescaped space; quotes mean nothing there.
    let mut i = start;
    while i < b.len() {
        match b[i] {
            b'\n' => return i,
            b'\\' if b.get(i + 1).is_some_and(|&n| n != b'\n') => i += 2,
            b' ' => break,
            _ => i += 1,
        }
    }
    // Fields (and the timestamp): a value that starts with a quote (right after an unescaped
    // '=') runs to its closing one.
    let mut after_equals = false;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' => return i,
            b'"' if after_equals => match find_closing_quote(b, i + 1) {
                Some(close) => i = close + 1,
                None => return b.len(),
            },
            b'\\' if b.get(i + 1).is_some_and(|&n| n != b'\n') => i += 2,
            _ => i += 1,
        }
        after_equals = c == b'=';
    }
    b.len()
}

/// A numeric field's value, and whether the float holds it exactly.
type NumericValue = (f64, bool);

/// Buffers reused from line to line, so a line costs no allocation beyond its tag set and
/// one series key per numeric field (and unescaped copies of names that hold escapes).
#[derive(Default)]
struct Scratch<'a> {
    tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Field keys with their value and whether the float holds it exactly; `None` for a
    /// string field.
    fields: Vec<(Cow<'a, str>, Option<NumericValue>)>,
    metric: String,
    /// The canonical key of the field being parsed, to find it in `keys`.
    lookup: String,
    /// Every series key the body has produced so far.
    keys: HashMap<SeriesKey, usize>,
    /// Bytes of new series keys the rest of the body may still produce.
    key_budget_left: usize,
    /// The measurement's length in each metric name the body made (see
    /// [`LineProtocolOutcome::metric_splits`]).
    metric_splits: HashMap<String, usize>,
    /// Metric names made by a second measurement/field pair.
    collided: HashSet<String>,
}

/// Parses one non-blank, non-comment line starting at byte `start`; appends its points and
/// returns what of it is not stored as sent. Columns in messages are 1-based byte offsets.
fn parse_line<'a>(
    line: &'a [u8],
    start: usize,
    precision: Precision,
    now_ms: i64,
    default_tags: &'a [(String, String)],
    scratch: &mut Scratch<'a>,
    points: &mut Vec<Point>,
) -> Result<LineCounts, String> {
    if line.len() > LINE_BYTES_MAX {
        return Err(format!(
            "line is {} bytes long; the limit is {LINE_BYTES_MAX} bytes",
            line.len()
        ));
    }
    let line = std::str::from_utf8(line)
        .map_err(|e| format!("invalid UTF-8 at column {}", e.valid_up_to() + 1))?;
    let b = line.as_bytes();
    scratch.tags.clear();
    scratch.fields.clear();
    let mut rounded = 0u64;

    // Measurement and tags.
    let (measurement, mut pos) = scan_name(line, start, MEASUREMENT_STOP);
    if measurement.is_empty() {
        return Err(format!("missing measurement name at column {}", start + 1));
    }
    while b.get(pos) == Some(&b',') {
        let key_at = pos + 1;
        let (key, p) = scan_name(line, key_at, KEY_STOP);
        if key.is_empty() {
            return Err(format!("empty tag key at column {}", key_at + 1));
        }
        if b.get(p) != Some(&b'=') {
            return Err(format!(
                "tag key {} is not followed by '=value' (column {})",
                named(&key),
                p + 1
            ));
        }
        let (value, p) = scan_name(line, p + 1, KEY_STOP);
        if b.get(p) == Some(&b'=') {
            return Err(format!(
                "tag {} has an unescaped '=' in its value at column {} (write it as \\=)",
                named(&key),
                p + 1
            ));
        }
        scratch.tags.push((key, value));
        pos = p;
    }

    // Fields.
    pos = skip_spaces(b, pos);
    if pos == b.len() {
        return Err(
            "no fields: expected a space and field=value after the measurement and tags".into(),
        );
    }
    loop {
        let key_at = pos;
        let (key, p) = scan_name(line, key_at, KEY_STOP);
        if key.is_empty() {
            return Err(format!("empty field key at column {}", key_at + 1));
        }
        if b.get(p) != Some(&b'=') {
            if scratch.fields.is_empty() && parse_i64(key.as_bytes()).is_ok() {
                return Err(format!(
                    "no fields: {} after the measurement and tags looks like a timestamp; a line needs at least one field=value",
                    quote(&key)
                ));
            }
            return Err(format!(
                "field key {} is not followed by '=value' (column {})",
                named(&key),
                p + 1
            ));
        }
        let value_at = p + 1;
        let (value, end) = if b.get(value_at) == Some(&b'"') {
            let Some(close) = find_closing_quote(b, value_at + 1) else {
                return Err(format!(
                    "string value of field {} has no closing double quote (opened at column {})",
                    named(&key),
                    value_at + 1
                ));
            };
            (None, close + 1)
        } else {
            let end = scan_value(b, value_at);
            if end == value_at {
                return Err(format!(
                    "field {} has no value (column {})",
                    named(&key),
                    value_at + 1
                ));
            }
            (Some(parse_value(&key, &line[value_at..end])?), end)
        };
        scratch.fields.push((key, value));
        match b.get(end) {
            Some(b',') => pos = end + 1,
            Some(b' ') | None => {
                pos = end;
                break;
            }
            Some(_) => {
                // Only a closing quote can be followed by anything else.
                let c = line[end..].chars().next().unwrap_or_default();
                return Err(format!(
                    "unexpected {c:?} after the string value of field {} at column {}",
                    named(scratch.fields.last().map_or("", |(k, _)| k)),
                    end + 1
                ));
            }
        }
    }

    // Timestamp.
    let ts_at = skip_spaces(b, pos);
    let mut truncated_from = None;
    let ts_ms = if ts_at == b.len() {
        now_ms
    } else {
        let ts_end = b[ts_at..]
            .iter()
            .position(|&c| c == b' ')
            .map_or(b.len(), |i| ts_at + i);
        let rest = skip_spaces(b, ts_end);
        if rest < b.len() {
            return Err(format!(
                "unexpected text after the timestamp at column {}: {}",
                rest + 1,
                quote(&line[rest..])
            ));
        }
        let (ms, sent) = parse_timestamp(&line[ts_at..ts_end], precision)?;
        truncated_from = sent;
        ms
    };

    // Semantics: names against the model's rules, then one point per numeric field.
    if scratch.tags.iter().any(|(k, _)| k == "time") {
        return Err("tag key 'time' is reserved (InfluxDB refuses it too)".into());
    }
    for (k, v) in default_tags {
        if !scratch.tags.iter().any(|(t, _)| t == k) {
            scratch.tags.push((Cow::Borrowed(k), Cow::Borrowed(v)));
        }
    }
    let tagset = TagSet::new(&scratch.tags).map_err(|e| e.to_string())?;
    if has_control(&measurement) {
        return Err(format!(
            "measurement {} contains a control character",
            named(&measurement)
        ));
    }
    let fields = &scratch.fields;
    let last_index: HashMap<&str, usize> = if fields.len() > FIELDS_LINEAR_MAX {
        fields
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (&**k, i))
            .collect()
    } else {
        HashMap::new()
    };
    let mut strings = 0;
    let mut time_fields = 0;
    let mut key_bytes = 0usize;
    // InfluxDB reserves the field name `time`: it drops such a field, and refuses a line
    // that has no other.
    if fields.iter().all(|(k, _)| k == "time") {
        return Err(
            "the only field is named 'time', which is reserved (InfluxDB refuses it too)".into(),
        );
    }
    for (i, (key, value)) in fields.iter().enumerate() {
        // InfluxDB keeps the last of duplicate field keys.
        let superseded = if fields.len() > FIELDS_LINEAR_MAX {
            last_index.get(&**key) != Some(&i)
        } else {
            fields[i + 1..].iter().any(|(k, _)| k == key)
        };
        if superseded {
            continue;
        }
        if key == "time" {
            time_fields += 1;
            continue;
        }
        let Some((value, exact)) = *value else {
            if has_control(key) {
                return Err(format!(
                    "field key {} contains a control character",
                    named(key)
                ));
            }
            strings += 1;
            continue;
        };
        rounded += u64::from(!exact);
        let metric = &mut scratch.metric;
        metric.clear();
        metric.push_str(&measurement);
        metric.push('_');
        metric.push_str(key);
        // A series seen earlier in the body shares its key: a body holds each key once, not
        // once per sample. The lookup string is the canonical key a new one would have.
        let lookup = &mut scratch.lookup;
        lookup.clear();
        lookup.push_str(metric);
        lookup.push_str(tagset.canonical());
        let split = measurement.len();
        let series = match scratch.keys.get_key_value(lookup.as_str()) {
            Some((known, &known_split)) => {
                if known_split != split {
                    scratch.collided.insert(metric.clone());
                }
                known.clone()
            }
            None => {
                let series = tagset.key_for(metric).map_err(|e| match e {
                    KeyError::ControlChar { .. } => {
                        format!("field key {} contains a control character", named(key))
                    }
                    e => format!("field {}: {e}", named(key)),
                })?;
                scratch.key_budget_left = scratch.key_budget_left.checked_sub(series.as_str().len()).ok_or_else(|| {
                    format!(
                        "the request expands to more than {BODY_KEY_BYTES_PER_BYTE_MAX} times its size in distinct series keys (every numeric field is a series with all of its line's tags); send fewer tags or fields per request"
                    )
                })?;
                scratch.keys.insert(series.clone(), split);
                match scratch.metric_splits.get(metric.as_str()) {
                    Some(&other) if other != split => {
                        scratch.collided.insert(metric.clone());
                    }
                    Some(_) => {}
                    None => {
                        scratch.metric_splits.insert(metric.clone(), split);
                    }
                }
                series
            }
        };
        key_bytes += series.as_str().len();
        if key_bytes > LINE_KEY_BYTES_MAX {
            return Err(format!(
                "the line expands to more than {LINE_KEY_BYTES_MAX} bytes of series keys ({} fields, each a series with all of the line's tags); split the fields across lines or use fewer or shorter tags",
                fields.len()
            ));
        }
        points.push(Point {
            key: series,
            ts_ms,
            value,
        });
    }
    Ok(LineCounts {
        strings,
        rounded,
        time_fields,
        truncated_from,
    })
}

/// Reads a name from `start` up to its first unescaped stop byte of class `stop`; returns it
/// unescaped (borrowed when it holds no escape) and the index of the stop byte or the end.
fn scan_name(line: &str, start: usize, stop: u8) -> (Cow<'_, str>, usize) {
    let b = line.as_bytes();
    let mut i = start;
    let mut escaped = false;
    loop {
        while i < b.len() && CLASS[usize::from(b[i])] & stop == 0 {
            i += 1;
        }
        if i < b.len() && b[i] == b'\\' {
            if b.get(i + 1)
                .is_some_and(|&n| CLASS[usize::from(n)] & stop != 0)
            {
                escaped = true;
                i += 2;
            } else {
                i += 1;
            }
            continue;
        }
        break;
    }
    let raw = &line[start..i];
    if !escaped {
        return (Cow::Borrowed(raw), i);
    }
    let rb = raw.as_bytes();
    let mut name = String::with_capacity(raw.len());
    let mut copied = 0;
    let mut j = 0;
    while j < rb.len() {
        if rb[j] == b'\\'
            && rb
                .get(j + 1)
                .is_some_and(|&n| CLASS[usize::from(n)] & stop != 0)
        {
            // Splitting at ASCII bytes keeps both slices valid UTF-8.
            name.push_str(&raw[copied..j]);
            copied = j + 1;
            j += 2;
        } else {
            j += 1;
        }
    }
    name.push_str(&raw[copied..]);
    (Cow::Owned(name), i)
}

/// The index of the quote closing a string value whose content starts at `from`.
fn find_closing_quote(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if matches!(b.get(i + 1), Some(b'"' | b'\\')) => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// The end of an unquoted field value: the next comma, space or the end of the line.
fn scan_value(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| CLASS[usize::from(c)] & VALUE_STOP != 0)
        .map_or(b.len(), |i| from + i)
}

fn skip_spaces(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c != b' ')
        .map_or(b.len(), |i| from + i)
}

fn has_control(s: &str) -> bool {
    s.bytes().any(|c| c.is_ascii_control())
}

/// A piece of input in double quotes with Rust escapes, cut to [`QUOTE_BYTES_MAX`].
fn quote(s: &str) -> String {
    let (head, cut) = cut(s);
    format!("{head:?}{cut}")
}

/// A name in single quotes, control characters escaped as the model does, cut to
/// [`QUOTE_BYTES_MAX`].
fn named(s: &str) -> String {
    let (head, cut) = cut(s);
    format!("'{}'{cut}", head.escape_debug())
}

fn cut(s: &str) -> (&str, &'static str) {
    if s.len() <= QUOTE_BYTES_MAX {
        return (s, "");
    }
    let mut end = QUOTE_BYTES_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], "...")
}

/// Integers up to this magnitude are exactly representable as f64.
const F64_EXACT_INT_MAX: u64 = 1 << 53;

/// Parses an unquoted field value: float, `i` integer, `u` unsigned or boolean. The flag is
/// false for an integer beyond 2^53 in magnitude that the float rounds.
fn parse_value(key: &str, text: &str) -> Result<(f64, bool), String> {
    // Only error paths format the key.
    let key = || named(key);
    let b = text.as_bytes();
    let not_a_value = || {
        format!(
            "invalid field value for {}: {} is not a number, integer (i), unsigned (u), boolean or string",
            key(),
            quote(text)
        )
    };
    match b.first() {
        Some(b't' | b'T' | b'f' | b'F') => {
            return match text {
                "t" | "T" | "true" | "True" | "TRUE" => Ok((1.0, true)),
                "f" | "F" | "false" | "False" | "FALSE" => Ok((0.0, true)),
                _ => Err(not_a_value()),
            };
        }
        None => return Err(not_a_value()),
        _ => {}
    }
    if is_nan_or_inf(b) {
        return Err(format!(
            "invalid field value for {}: {} is not a finite number (NaN and infinity are not accepted)",
            key(),
            quote(text)
        ));
    }
    let (body, last) = b.split_at(b.len() - 1);
    match last[0] {
        b'i' => match parse_i64(body) {
            Ok(v) => Ok((
                v as f64,
                v.unsigned_abs() <= F64_EXACT_INT_MAX || (v as f64) as i128 == i128::from(v),
            )),
            Err(IntError::Overflow) => Err(format!(
                "invalid field value for {}: {text} is out of range for an integer (i64)",
                key()
            )),
            Err(IntError::Invalid) => Err(not_a_value()),
        },
        b'u' => {
            if let Some(digits) = body.strip_prefix(b"-")
                && parse_u64(digits).is_ok()
            {
                return Err(format!(
                    "invalid field value for {}: {text} is out of range for an unsigned integer (u64): it is negative",
                    key()
                ));
            }
            match parse_u64(body) {
                Ok(v) => Ok((
                    v as f64,
                    v <= F64_EXACT_INT_MAX || (v as f64) as u128 == u128::from(v),
                )),
                Err(IntError::Overflow) => Err(format!(
                    "invalid field value for {}: {text} is out of range for an unsigned integer (u64)",
                    key()
                )),
                Err(IntError::Invalid) => Err(not_a_value()),
            }
        }
        _ => {
            if !is_float_syntax(b) {
                return Err(not_a_value());
            }
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok((v, true)),
                Ok(_) => Err(format!(
                    "invalid field value for {}: {text} is out of range for a float (f64)",
                    key()
                )),
                Err(_) => Err(not_a_value()),
            }
        }
    }
}

/// True for `nan`, `inf` and `infinity` in any case, with an optional sign.
fn is_nan_or_inf(b: &[u8]) -> bool {
    let b = match b.first() {
        Some(b'+' | b'-') => &b[1..],
        _ => b,
    };
    matches!(b.first(), Some(b'n' | b'N' | b'i' | b'I'))
        && (b.eq_ignore_ascii_case(b"nan")
            || b.eq_ignore_ascii_case(b"inf")
            || b.eq_ignore_ascii_case(b"infinity"))
}

/// Line protocol floats: `-?(digits[.digits?] | .digits)([eE][+-]?digits)?`. Stricter than
/// `f64::from_str`, which also takes `+1`, `inf` and `NaN`.
fn is_float_syntax(b: &[u8]) -> bool {
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let from = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - from
    };
    let mut mantissa = digits(&mut i);
    if b.get(i) == Some(&b'.') {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

enum IntError {
    Invalid,
    Overflow,
}

/// Parses `-?digits` exactly (no `+`, no spaces), telling bad syntax from overflow.
fn parse_i64(b: &[u8]) -> Result<i64, IntError> {
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(IntError::Invalid);
    }
    let mut v: i64 = 0;
    for &d in digits {
        let d = i64::from(d - b'0');
        // Accumulating negative numbers downwards reaches i64::MIN without overflow.
        v = v
            .checked_mul(10)
            .and_then(|v| {
                if negative {
                    v.checked_sub(d)
                } else {
                    v.checked_add(d)
                }
            })
            .ok_or(IntError::Overflow)?;
    }
    Ok(v)
}

/// Parses `digits` exactly, telling bad syntax from overflow.
fn parse_u64(digits: &[u8]) -> Result<u64, IntError> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(IntError::Invalid);
    }
    let mut v: u64 = 0;
    for &d in digits {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(d - b'0')))
            .ok_or(IntError::Overflow)?;
    }
    Ok(v)
}

/// Parses a timestamp in `precision` and converts it to milliseconds within tsvault's range;
/// with the timestamp as sent when it had digits finer than a millisecond.
fn parse_timestamp(text: &str, precision: Precision) -> Result<(i64, Option<i64>), String> {
    let ts = parse_i64(text.as_bytes()).map_err(|e| match e {
        IntError::Overflow => format!("timestamp {text} does not fit in a 64-bit integer"),
        IntError::Invalid if text.contains('=') => format!(
            "invalid timestamp {}: expected an integer (is there an unescaped space in a field?)",
            quote(text)
        ),
        IntError::Invalid => format!("invalid timestamp {}: expected an integer", quote(text)),
    })?;
    let ms = precision
        .to_ms(ts)
        .filter(|&ms| ts_in_range(ms))
        .ok_or_else(|| {
            format!(
                "timestamp {ts} (precision {precision}) is out of range: tsvault stores and \
                 queries times from 1970-01-01 to 9999-12-31"
            )
        })?;
    let sent = (ts % precision.units_per_ms() != 0).then_some(ts);
    Ok((ms, sent))
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};
    use proptest::prelude::*;
    use std::fmt::Write as _;
    use tsvault_model::SeriesKey;

    const TSBS_LINE: &str = "cpu,hostname=host_0,region=eu-west-1,datacenter=eu-west-1a,rack=87,os=Ubuntu16.10,arch=x86,team=NYC,service=18,service_version=1,service_environment=production usage_user=58i,usage_system=2i,usage_idle=24i,usage_nice=61i,usage_iowait=22i,usage_irq=63i,usage_softirq=6i,usage_steal=44i,usage_guest=80i,usage_guest_nice=38i 1451606400000000000";

    /// Points, errors and counters of `body` parsed at `precision` with now = 777 ms.
    fn render_at(body: &[u8], precision: Precision) -> String {
        let out = parse_line_protocol(body, precision, 777);
        let mut s = String::new();
        for p in &out.points {
            writeln!(s, "{} {} {:?}", p.key, p.ts_ms, p.value).unwrap();
        }
        for e in &out.errors {
            writeln!(s, "{e}").unwrap();
        }
        write!(
            s,
            "lines_written={} string_fields_skipped={}",
            out.lines_written, out.string_fields_skipped
        )
        .unwrap();
        s
    }

    fn check(body: &str, expect: Expect) {
        expect.assert_eq(&render_at(body.as_bytes(), Precision::Ns));
    }

    #[test]
    fn a_newline_inside_a_string_value_belongs_to_its_line() {
        // The point survives whole; text after a newline in a string is never a line.
        check(
            "b s=\"a\nb\",v=1 1000000\nm s=\"A\nevil,t=x v=9\",v=2 2000000\nc v=3 3000000",
            expect![[r#"
                b_v{} 1 1.0
                m_v{} 2 2.0
                c_v{} 3 3.0
                lines_written=3 string_fields_skipped=2"#]],
        );
        // Line numbers count physical lines; an escaped quote does not close the string; a
        // quote in a measurement or tag, or in a key, opens nothing.
        check(
            "a s=\"x\\\"\ny\" z\nm\"q,t=\"u v=1 5000000\nk k\"k=2,s=\"\n\" 6000000",
            expect![[r#"
                m"q_v{t="\"u"} 5 1.0
                k_k"k{} 6 2.0
                line 1: invalid timestamp "z": expected an integer (refused with lines 2 to 2: a newline inside a quoted string value does not end a line, and one left open runs to the end of the body)
                lines_written=2 string_fields_skipped=1"#]],
        );
        // A string left open runs to the end of the body, which is refused as one line: no
        // text inside it is read as a point.
        check(
            "ok v=1 1000000\nm s=\"open\nevil v=1 1000000\n",
            expect![[r#"
                ok_v{} 1 1.0
                line 2: string value of field 's' has no closing double quote (opened at column 5) (refused with lines 3 to 4: a newline inside a quoted string value does not end a line, and one left open runs to the end of the body)
                lines_written=1 string_fields_skipped=0"#]],
        );
    }

    #[test]
    fn what_is_not_stored_as_sent_is_counted() {
        let out = parse_line_protocol(
            b"m v=1 1000000001\nm v=2 1000000002\nm v=3 1000000000\nn v=9007199254740993i,w=9007199254740992i,s=\"x\" 2000000000\n",
            Precision::Ns,
            0,
        );
        assert_eq!(out.errors, []);
        assert_eq!(out.timestamps_truncated, 2);
        // Three points of m in one millisecond, sent as three different timestamps.
        assert_eq!(out.points_collapsed, 2);
        assert_eq!(out.integers_rounded, 1, "2^53 + 1 rounds; 2^53 does not");
        assert_eq!(out.string_fields_skipped, 1);
        expect![[r#"1 string field(s) not stored (tsvault stores numbers and booleans); 2 timestamp(s) cut to the millisecond (tsvault stores milliseconds); 2 point(s) overwritten by another point of their series in the same millisecond; 1 integer(s) beyond 2^53 stored rounded to the nearest float"#]]
            .assert_eq(&out.not_stored_as_sent().unwrap());
        // The same timestamp twice is an overwrite the client asked for, not a collapse.
        let out = parse_line_protocol(b"m v=1 1000000001\nm v=2 1000000001\n", Precision::Ns, 0);
        assert_eq!((out.timestamps_truncated, out.points_collapsed), (2, 0));
        let out = parse_line_protocol(b"m v=1 1000000000\nm v=2 1000000000\n", Precision::Ns, 0);
        assert_eq!(out.not_stored_as_sent(), None);
    }

    #[test]
    fn tsbs_line() {
        let out = parse_line_protocol(TSBS_LINE.as_bytes(), Precision::Ns, 0);
        assert_eq!(out.errors, []);
        assert_eq!(out.lines_written, 1);
        let tags = [
            ("hostname", "host_0"),
            ("region", "eu-west-1"),
            ("datacenter", "eu-west-1a"),
            ("rack", "87"),
            ("os", "Ubuntu16.10"),
            ("arch", "x86"),
            ("team", "NYC"),
            ("service", "18"),
            ("service_version", "1"),
            ("service_environment", "production"),
        ];
        let fields = [
            ("usage_user", 58.0),
            ("usage_system", 2.0),
            ("usage_idle", 24.0),
            ("usage_nice", 61.0),
            ("usage_iowait", 22.0),
            ("usage_irq", 63.0),
            ("usage_softirq", 6.0),
            ("usage_steal", 44.0),
            ("usage_guest", 80.0),
            ("usage_guest_nice", 38.0),
        ];
        let want: Vec<Point> = fields
            .iter()
            .map(|(f, v)| Point {
                key: SeriesKey::new(&format!("cpu_{f}"), &tags).unwrap(),
                ts_ms: 1_451_606_400_000,
                value: *v,
            })
            .collect();
        assert_eq!(out.points, want);
    }

    #[test]
    fn field_types() {
        check(
            r#"m f=1.5,g=1,h=-1.5e3,j=1.,k=.5,l=2E+2,m=-0.0,i=-3i,imin=-9223372036854775808i,imax=9223372036854775807i,u=18446744073709551615u,u0=0u,s="x",b1=t,b2=T,b3=true,b4=True,b5=TRUE,b6=f,b7=F,b8=false,b9=False,b10=FALSE 5000000"#,
            expect![[r#"
                m_f{} 5 1.5
                m_g{} 5 1.0
                m_h{} 5 -1500.0
                m_j{} 5 1.0
                m_k{} 5 0.5
                m_l{} 5 200.0
                m_m{} 5 -0.0
                m_i{} 5 -3.0
                m_imin{} 5 -9.223372036854776e18
                m_imax{} 5 9.223372036854776e18
                m_u{} 5 1.8446744073709552e19
                m_u0{} 5 0.0
                m_b1{} 5 1.0
                m_b2{} 5 1.0
                m_b3{} 5 1.0
                m_b4{} 5 1.0
                m_b5{} 5 1.0
                m_b6{} 5 0.0
                m_b7{} 5 0.0
                m_b8{} 5 0.0
                m_b9{} 5 0.0
                m_b10{} 5 0.0
                lines_written=1 string_fields_skipped=1"#]],
        );
        // A line of string fields only is written and stores nothing.
        check(
            r#"m s="a",t="b""#,
            expect!["lines_written=1 string_fields_skipped=2"],
        );
    }

    #[test]
    fn escapes() {
        // Measurement: comma and space; `=` and quotes are literal.
        check(
            r#"my\ meas\,x=y"z v=1 1000000"#,
            expect![[r#"
                my meas,x=y"z_v{} 1 1.0
                lines_written=1 string_fields_skipped=0"#]],
        );
        // Tag keys, tag values and field keys: comma, equals sign and space.
        check(
            r#"m,tag\ k\=1=v\,a\ l\=ue fie\ ld\=\,=1 1000000"#,
            expect![[r#"
                m_fie ld=,{tag k=1="v,a l=ue"} 1 1.0
                lines_written=1 string_fields_skipped=0"#]],
        );
        // A backslash before another character is literal; `\\` is one backslash.
        check(
            r#"m\a\=,t=C:\path\\,t\\2=x\  v\\=1 1000000"#,
            expect![[r#"
                m\a\=_v\{t="C:\\path\\",t\2="x "} 1 1.0
                lines_written=1 string_fields_skipped=0"#]],
        );
        // A name ending in a backslash needs `\\`; a single one escapes the separator.
        check(
            r"m,t=a\\ v=1",
            expect![[r#"
                m_v{t="a\\"} 777 1.0
                lines_written=1 string_fields_skipped=0"#]],
        );
        check(
            r"m,t=a\ v=1",
            expect![[r#"
                line 1: tag 't' has an unescaped '=' in its value at column 9 (write it as \=)
                lines_written=0 string_fields_skipped=0"#]],
        );
        // String values: `\"` and `\\` do not end the string; separators inside are content.
        check(
            r#"m s="a \"q\" \\",t="x, y=z \n",u="\\",v=2 1000000"#,
            expect![[r#"
                m_v{} 1 2.0
                lines_written=1 string_fields_skipped=3"#]],
        );
        // Unicode names need no escaping.
        check(
            "mé,tag=🍭 fièld=1 1000000",
            expect![[r#"
                mé_fièld{tag="🍭"} 1 1.0
                lines_written=1 string_fields_skipped=0"#]],
        );
    }

    #[test]
    fn timestamps_in_every_precision() {
        let ts = |precision, ts: &str| {
            render_at(format!("m v=1 {ts}").as_bytes(), precision)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        use Precision::*;
        let got: Vec<String> = [
            (Ns, "1451606400123456789"),
            (Ns, "-1"),
            (Ns, "-1000001"),
            (Ns, "0"),
            (Us, "1999"),
            (Us, "-1"),
            (Ms, "42"),
            (Ms, "-42"),
            (S, "2"),
            (S, "-2"),
            (M, "2"),
            (H, "1"),
            (Ms, "1152921504606846976"),
            (Ms, "-1152921504606846976"),
        ]
        .iter()
        .map(|(p, t)| format!("{p} {t} -> {}", ts(*p, t)))
        .collect();
        expect![[r#"
            ns 1451606400123456789 -> m_v{} 1451606400123 1.0
            ns -1 -> line 1: timestamp -1 (precision ns) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ns -1000001 -> line 1: timestamp -1000001 (precision ns) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ns 0 -> m_v{} 0 1.0
            us 1999 -> m_v{} 1 1.0
            us -1 -> line 1: timestamp -1 (precision us) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ms 42 -> m_v{} 42 1.0
            ms -42 -> line 1: timestamp -42 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            s 2 -> m_v{} 2000 1.0
            s -2 -> line 1: timestamp -2 (precision s) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            m 2 -> m_v{} 120000 1.0
            h 1 -> m_v{} 3600000 1.0
            ms 1152921504606846976 -> line 1: timestamp 1152921504606846976 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ms -1152921504606846976 -> line 1: timestamp -1152921504606846976 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31"#]]
        .assert_eq(&got.join("\n"));
        // No timestamp: now; trailing spaces are fine.
        check(
            "m v=1\nm v=2   \nm v=3 5000000   ",
            expect![[r#"
                m_v{} 777 1.0
                m_v{} 777 2.0
                m_v{} 5 3.0
                lines_written=3 string_fields_skipped=0"#]],
        );
    }

    #[test]
    fn timestamps_out_of_range_for_each_precision() {
        use Precision::*;
        let mut got = String::new();
        for (p, t) in [
            (Ns, "9223372036854775808"),
            (Ns, "-9223372036854775809"),
            (Us, "99999999999999999999"),
            (Ms, "1152921504606846977"),
            (Ms, "-1152921504606846977"),
            (Ms, "9223372036854775807"),
            (S, "9223372036854775807"),
            (S, "1152921504606847"),
            (S, "-9223372036854775808"),
            (M, "153722867280913"),
            (H, "9223372036854775807"),
            (H, "-2562047788016"),
        ] {
            writeln!(
                got,
                "{p} {t} -> {}",
                render_at(format!("m v=1 {t}").as_bytes(), p)
                    .lines()
                    .next()
                    .unwrap_or_default()
            )
            .unwrap();
        }
        expect![[r#"
            ns 9223372036854775808 -> line 1: timestamp 9223372036854775808 does not fit in a 64-bit integer
            ns -9223372036854775809 -> line 1: timestamp -9223372036854775809 does not fit in a 64-bit integer
            us 99999999999999999999 -> line 1: timestamp 99999999999999999999 does not fit in a 64-bit integer
            ms 1152921504606846977 -> line 1: timestamp 1152921504606846977 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ms -1152921504606846977 -> line 1: timestamp -1152921504606846977 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            ms 9223372036854775807 -> line 1: timestamp 9223372036854775807 (precision ms) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            s 9223372036854775807 -> line 1: timestamp 9223372036854775807 (precision s) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            s 1152921504606847 -> line 1: timestamp 1152921504606847 (precision s) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            s -9223372036854775808 -> line 1: timestamp -9223372036854775808 (precision s) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            m 153722867280913 -> line 1: timestamp 153722867280913 (precision m) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            h 9223372036854775807 -> line 1: timestamp 9223372036854775807 (precision h) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
            h -2562047788016 -> line 1: timestamp -2562047788016 (precision h) is out of range: tsvault stores and queries times from 1970-01-01 to 9999-12-31
        "#]]
        .assert_eq(&got);
        // Every non-negative i64 of nanoseconds is in range (i64::MAX ns is in 2262); no
        // negative timestamp is; the last microsecond of 9999 is, the next is not.
        for (p, t, ok) in [
            (Ns, i64::MAX, true),
            (Ns, i64::MIN, false),
            (Us, 253_402_300_799_999_999, true),
            (Us, 253_402_300_800_000_000, false),
        ] {
            let out = parse_line_protocol(format!("m v=1 {t}").as_bytes(), p, 0);
            assert_eq!(out.errors.is_empty(), ok, "{p} {t}");
        }
    }

    #[test]
    fn comments_blank_lines_crlf_and_partial_writes() {
        check(
            "# header\r\n\r\nm v=1 1000000\r\nm v=oops 2\r\n  \n  # indented comment\nm,t=a v=3,s=\"x\" 3000000\r\n\t\nm v=4\n",
            expect![[r#"
                m_v{} 1 1.0
                m_v{t="a"} 3 3.0
                m_v{} 777 4.0
                line 4: invalid field value for 'v': "oops" is not a number, integer (i), unsigned (u), boolean or string
                lines_written=3 string_fields_skipped=1"#]],
        );
        // Strings of a rejected line are not counted; points before the bad field are dropped.
        check(
            "m a=1,s=\"x\",b=2,c=zz\nm a=5",
            expect![[r#"
                m_a{} 777 5.0
                line 1: invalid field value for 'c': "zz" is not a number, integer (i), unsigned (u), boolean or string
                lines_written=1 string_fields_skipped=0"#]],
        );
        // Invalid UTF-8 on one line leaves the others intact.
        expect![[r#"
            m_v{} 777 1.0
            m_v{} 777 3.0
            line 2: invalid UTF-8 at column 5
            lines_written=2 string_fields_skipped=0"#]]
        .assert_eq(&render_at(b"m v=1\nm,t=\xff\xfe v=2\nm v=3", Precision::Ns));
        check("", expect!["lines_written=0 string_fields_skipped=0"]);
        check(
            "\n\n# only comments\n",
            expect!["lines_written=0 string_fields_skipped=0"],
        );
    }

    #[test]
    fn duplicate_fields_keep_the_last() {
        check(
            r#"m v=1,w=5,v=2 1000000"#,
            expect![[r#"
                m_w{} 1 5.0
                m_v{} 1 2.0
                lines_written=1 string_fields_skipped=0"#]],
        );
        // The last value is a string: nothing stored for that key.
        check(
            r#"m v=1,v="s""#,
            expect!["lines_written=1 string_fields_skipped=1"],
        );
        // Past the linear-scan bound, the hash map path.
        let fields: Vec<String> = (0..40).map(|i| format!("f{}={i}", i % 20)).collect();
        let out = parse_line_protocol(
            format!("m {}", fields.join(",")).as_bytes(),
            Precision::Ns,
            0,
        );
        let got: Vec<(&str, f64)> = out
            .points
            .iter()
            .map(|p| (p.key.metric(), p.value))
            .collect();
        let want: Vec<(String, f64)> = (20..40)
            .map(|i| (format!("m_f{}", i % 20), f64::from(i)))
            .collect();
        assert_eq!(
            got,
            want.iter()
                .map(|(m, v)| (m.as_str(), *v))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn error_messages() {
        let cases: &[&str] = &[
            // Structure.
            ",t=a v=1",
            "m",
            "m,t=a",
            "m,t=a ",
            "m,host=a 1700000000000000000",
            "m,t v=1",
            "m,=a v=1",
            "m, v=1",
            "m,t=a, v=1",
            "m,t=a=b v=1",
            "m =1",
            r"m\ v=1",
            r"m v\=1",
            "m v=1,,w=2",
            "m v=1,",
            "m v",
            "m v=",
            "m v=,w=1",
            "m v=\"open",
            "m v=\"a\"x",
            "m v=1 1 2",
            "m v=1 12x",
            "m v=1 -",
            "m s=\"a\" w=2",
            // Field values.
            "m usage=abc",
            "m v=1i2",
            "m v=1.5i",
            "m v=i",
            "m v=+1",
            "m v=0x10",
            "m v=1e",
            "m v=1.2.3",
            "m v=tru",
            "m v='1'",
            "m v=NaN",
            "m v=nan",
            "m v=Inf",
            "m v=-inf",
            "m v=+Infinity",
            "m v=1e999",
            "m v=-1e999",
            "m v=9223372036854775808i",
            "m v=-9223372036854775809i",
            "m v=18446744073709551616u",
            "m v=-1u",
            "m v=1.5u",
            // Names against the model's rules.
            "m,host= v=1",
            "m,host=,dc=x v=1",
            "m,host=a,host=b v=1",
            "m,t=a\u{1}b v=1",
            "m,t\u{7f}=a v=1",
            "m\u{1b} v=1",
            "m f\u{1}=1",
            "m f\u{1}=\"s\"",
        ];
        let mut got = String::new();
        for line in cases {
            let out = parse_line_protocol(line.as_bytes(), Precision::Ns, 0);
            assert_eq!(out.points, [], "{line:?}");
            assert_eq!(out.lines_written, 0, "{line:?}");
            let msgs: Vec<String> = out.errors.iter().map(|e| e.to_string()).collect();
            writeln!(got, "{line:?}\n    {}", msgs.join(" | ")).unwrap();
        }
        expect![[r#"
            ",t=a v=1"
                line 1: missing measurement name at column 1
            "m"
                line 1: no fields: expected a space and field=value after the measurement and tags
            "m,t=a"
                line 1: no fields: expected a space and field=value after the measurement and tags
            "m,t=a "
                line 1: no fields: expected a space and field=value after the measurement and tags
            "m,host=a 1700000000000000000"
                line 1: no fields: "1700000000000000000" after the measurement and tags looks like a timestamp; a line needs at least one field=value
            "m,t v=1"
                line 1: tag key 't' is not followed by '=value' (column 4)
            "m,=a v=1"
                line 1: empty tag key at column 3
            "m, v=1"
                line 1: empty tag key at column 3
            "m,t=a, v=1"
                line 1: empty tag key at column 7
            "m,t=a=b v=1"
                line 1: tag 't' has an unescaped '=' in its value at column 6 (write it as \=)
            "m =1"
                line 1: empty field key at column 3
            "m\\ v=1"
                line 1: no fields: expected a space and field=value after the measurement and tags
            "m v\\=1"
                line 1: field key 'v=1' is not followed by '=value' (column 7)
            "m v=1,,w=2"
                line 1: empty field key at column 7
            "m v=1,"
                line 1: empty field key at column 7
            "m v"
                line 1: field key 'v' is not followed by '=value' (column 4)
            "m v="
                line 1: field 'v' has no value (column 5)
            "m v=,w=1"
                line 1: field 'v' has no value (column 5)
            "m v=\"open"
                line 1: string value of field 'v' has no closing double quote (opened at column 5)
            "m v=\"a\"x"
                line 1: unexpected 'x' after the string value of field 'v' at column 8
            "m v=1 1 2"
                line 1: unexpected text after the timestamp at column 9: "2"
            "m v=1 12x"
                line 1: invalid timestamp "12x": expected an integer
            "m v=1 -"
                line 1: invalid timestamp "-": expected an integer
            "m s=\"a\" w=2"
                line 1: invalid timestamp "w=2": expected an integer (is there an unescaped space in a field?)
            "m usage=abc"
                line 1: invalid field value for 'usage': "abc" is not a number, integer (i), unsigned (u), boolean or string
            "m v=1i2"
                line 1: invalid field value for 'v': "1i2" is not a number, integer (i), unsigned (u), boolean or string
            "m v=1.5i"
                line 1: invalid field value for 'v': "1.5i" is not a number, integer (i), unsigned (u), boolean or string
            "m v=i"
                line 1: invalid field value for 'v': "i" is not a number, integer (i), unsigned (u), boolean or string
            "m v=+1"
                line 1: invalid field value for 'v': "+1" is not a number, integer (i), unsigned (u), boolean or string
            "m v=0x10"
                line 1: invalid field value for 'v': "0x10" is not a number, integer (i), unsigned (u), boolean or string
            "m v=1e"
                line 1: invalid field value for 'v': "1e" is not a number, integer (i), unsigned (u), boolean or string
            "m v=1.2.3"
                line 1: invalid field value for 'v': "1.2.3" is not a number, integer (i), unsigned (u), boolean or string
            "m v=tru"
                line 1: invalid field value for 'v': "tru" is not a number, integer (i), unsigned (u), boolean or string
            "m v='1'"
                line 1: invalid field value for 'v': "'1'" is not a number, integer (i), unsigned (u), boolean or string
            "m v=NaN"
                line 1: invalid field value for 'v': "NaN" is not a finite number (NaN and infinity are not accepted)
            "m v=nan"
                line 1: invalid field value for 'v': "nan" is not a finite number (NaN and infinity are not accepted)
            "m v=Inf"
                line 1: invalid field value for 'v': "Inf" is not a finite number (NaN and infinity are not accepted)
            "m v=-inf"
                line 1: invalid field value for 'v': "-inf" is not a finite number (NaN and infinity are not accepted)
            "m v=+Infinity"
                line 1: invalid field value for 'v': "+Infinity" is not a finite number (NaN and infinity are not accepted)
            "m v=1e999"
                line 1: invalid field value for 'v': 1e999 is out of range for a float (f64)
            "m v=-1e999"
                line 1: invalid field value for 'v': -1e999 is out of range for a float (f64)
            "m v=9223372036854775808i"
                line 1: invalid field value for 'v': 9223372036854775808i is out of range for an integer (i64)
            "m v=-9223372036854775809i"
                line 1: invalid field value for 'v': -9223372036854775809i is out of range for an integer (i64)
            "m v=18446744073709551616u"
                line 1: invalid field value for 'v': 18446744073709551616u is out of range for an unsigned integer (u64)
            "m v=-1u"
                line 1: invalid field value for 'v': -1u is out of range for an unsigned integer (u64): it is negative
            "m v=1.5u"
                line 1: invalid field value for 'v': "1.5u" is not a number, integer (i), unsigned (u), boolean or string
            "m,host= v=1"
                line 1: tag 'host' has an empty value
            "m,host=,dc=x v=1"
                line 1: tag 'host' has an empty value
            "m,host=a,host=b v=1"
                line 1: tag 'host' appears more than once
            "m,t=a\u{1}b v=1"
                line 1: tag value 'a\u{1}b' contains a control character
            "m,t\u{7f}=a v=1"
                line 1: tag key 't\u{7f}' contains a control character
            "m\u{1b} v=1"
                line 1: measurement 'm\u{1b}' contains a control character
            "m f\u{1}=1"
                line 1: field key 'f\u{1}' contains a control character
            "m f\u{1}=\"s\""
                line 1: field key 'f\u{1}' contains a control character
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn long_lines_and_names() {
        // Many lines that each expand a lot into new series: the body as a whole is bounded.
        let tags: String = (0..16)
            .map(|t| format!(",t{t}={}", "v".repeat(500)))
            .collect();
        let fields: Vec<String> = (0..2000).map(|f| format!("f{f}=1")).collect();
        let body: String = (0..8)
            .map(|i| format!("m,line={i}{tags} {}\n", fields.join(",")))
            .collect();
        // The same series repeated share their keys, so the same lines repeated are fine.
        let same = format!("m,line=0{tags} {}\n", fields.join(",")).repeat(8);
        let repeated = parse_line_protocol(same.as_bytes(), Precision::Ns, 0);
        assert_eq!(repeated.lines_written, 8, "{:?}", repeated.errors);
        let out = parse_line_protocol(body.as_bytes(), Precision::Ns, 0);
        assert!(out.lines_written < 8, "{} lines written", out.lines_written);
        assert!(
            out.points
                .iter()
                .map(|p| p.key.as_str().len())
                .sum::<usize>()
                <= LINE_KEY_BYTES_MAX.max(16 * body.len())
        );
        assert!(
            out.errors
                .iter()
                .any(|e| e.message.contains("times its size")),
            "{:?}",
            out.errors.first()
        );
        // Many fields times a large tag set: refused before it takes the memory.
        let tags: String = (0..200)
            .map(|t| format!(",t{t}={}", "v".repeat(2000)))
            .collect();
        let fields: Vec<String> = (0..100).map(|f| format!("f{f}=1")).collect();
        let line = format!("m{tags} {}", fields.join(","));
        assert!(line.len() < LINE_BYTES_MAX);
        let out = parse_line_protocol(line.as_bytes(), Precision::Ns, 0);
        assert!(out.points.is_empty());
        assert!(
            out.errors[0].message.contains("series keys"),
            "{}",
            out.errors[0]
        );

        let long = format!("m v=1,{}=1", "x".repeat(LINE_BYTES_MAX));
        expect!["line 1: line is 1048584 bytes long; the limit is 1048576 bytes"].assert_eq(
            &parse_line_protocol(long.as_bytes(), Precision::Ns, 0).errors[0].to_string(),
        );
        // A line of exactly the limit is parsed.
        let exact = format!("m v=1,{}=\"\"", "x".repeat(LINE_BYTES_MAX - 9));
        assert_eq!(exact.len(), LINE_BYTES_MAX);
        let out = parse_line_protocol(exact.as_bytes(), Precision::Ns, 0);
        assert_eq!((out.errors.len(), out.points.len()), (0, 1));
        // A metric name past the model's limit names the field.
        let name = format!("m {}=1", "f".repeat(5000));
        expect!["line 1: field 'ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff'...: metric name is 5002 bytes long; the limit is 4096"]
            .assert_eq(&parse_line_protocol(name.as_bytes(), Precision::Ns, 0).errors[0].to_string());
    }

    /// The characters names are drawn from: plain, separators, escape, quotes, Unicode.
    fn name() -> impl Strategy<Value = String> {
        let chars = vec![
            'a', 'Z', '0', '_', '.', '-', ' ', ',', '=', '\\', '"', '\'', '#', 'é', '🍭',
        ];
        prop::collection::vec(prop::sample::select(chars), 1..10)
            .prop_map(|cs| cs.into_iter().collect())
    }

    #[derive(Debug, Clone)]
    enum Value {
        Float(f64),
        Int(i64),
        UInt(u64),
        Bool(&'static str, bool),
        Str(String),
    }

    fn value() -> impl Strategy<Value = Value> {
        let spellings = vec![
            ("t", true),
            ("T", true),
            ("true", true),
            ("True", true),
            ("TRUE", true),
            ("f", false),
            ("F", false),
            ("false", false),
            ("False", false),
            ("FALSE", false),
        ];
        prop_oneof![
            any::<f64>()
                .prop_filter("finite", |v| v.is_finite())
                .prop_map(Value::Float),
            any::<i64>().prop_map(Value::Int),
            any::<u64>().prop_map(Value::UInt),
            prop::sample::select(spellings).prop_map(|(s, b)| Value::Bool(s, b)),
            name().prop_map(Value::Str),
            // A string may hold a newline (and quotes, escaped).
            (name(), name()).prop_map(|(a, b)| Value::Str(format!("{a}\n{b}"))),
        ]
    }

    /// Escapes `s` for line protocol: a backslash before every byte of `special` and before
    /// every backslash.
    fn escape(s: &str, special: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if c == '\\' || special.contains(c) {
                out.push('\\');
            }
            out.push(c);
        }
        out
    }

    proptest! {
        /// Names and values written with correct escaping parse back to exactly themselves.
        #[test]
        fn escaped_lines_round_trip(
            measurement in name().prop_filter("a leading # makes a comment", |m| !m.starts_with('#')),
            tags in prop::collection::btree_map(name(), name(), 0..4),
            fields in prop::collection::btree_map(name(), value(), 1..5),
            ts in prop::option::of(0..i64::MAX),
        ) {
            let mut line = escape(&measurement, ", ");
            for (k, v) in &tags {
                write!(line, ",{}={}", escape(k, ",= "), escape(v, ",= ")).unwrap();
            }
            for (i, (k, v)) in fields.iter().enumerate() {
                line.push(if i == 0 { ' ' } else { ',' });
                line.push_str(&escape(k, ",= "));
                line.push('=');
                match v {
                    Value::Float(f) => write!(line, "{f:?}").unwrap(),
                    Value::Int(n) => write!(line, "{n}i").unwrap(),
                    Value::UInt(n) => write!(line, "{n}u").unwrap(),
                    Value::Bool(s, _) => line.push_str(s),
                    Value::Str(s) => write!(line, "\"{}\"", escape(s, "\"")).unwrap(),
                }
            }
            if let Some(ts) = ts {
                write!(line, " {ts}").unwrap();
            }
            let tag_list: Vec<(&String, &String)> = tags.iter().collect();
            let ts_ms = ts.map_or(-7, |t| t.div_euclid(1_000_000));
            let mut want = Vec::new();
            let mut strings = 0;
            let mut rounded = 0;
            for (k, v) in &fields {
                let value = match v {
                    Value::Float(f) => *f,
                    Value::Int(n) => {
                        rounded += u64::from((*n as f64) as i128 != i128::from(*n));
                        *n as f64
                    }
                    Value::UInt(n) => {
                        rounded += u64::from((*n as f64) as u128 != u128::from(*n));
                        *n as f64
                    }
                    Value::Bool(_, b) => f64::from(u8::from(*b)),
                    Value::Str(_) => {
                        strings += 1;
                        continue;
                    }
                };
                let key = SeriesKey::new(&format!("{measurement}_{k}"), &tag_list).unwrap();
                want.push(Point { key, ts_ms, value });
            }
            let out = parse_line_protocol(line.as_bytes(), Precision::Ns, -7);
            prop_assert_eq!(&out.errors, &[], "{}", line);
            prop_assert_eq!(out.points, want, "{}", line);
            prop_assert_eq!(out.string_fields_skipped, strings);
            prop_assert_eq!(out.integers_rounded, rounded);
            prop_assert_eq!(out.timestamps_truncated, u64::from(ts.is_some_and(|t| t % 1_000_000 != 0)));
            prop_assert_eq!(out.lines_written, 1);
        }
    }

    proptest! {
        /// Any bytes parse without panicking; every line is either written or reported once,
        /// in order, and a point never carries a non-finite value.
        #[test]
        fn arbitrary_bytes_never_panic(body in prop::collection::vec(
            prop::sample::select(b"mvt0129-.eEiuTfF\\\",= \n\r#\t\xff\x01\xc3\xa9".to_vec()),
            0..300,
        )) {
            let out = parse_line_protocol(&body, Precision::S, 0);
            prop_assert!(out.errors.windows(2).all(|w| w[0].line < w[1].line));
            prop_assert!(out.lines_written + out.errors.len() <= body.split(|&b| b == b'\n').count());
            prop_assert!(out.points.iter().all(|p| p.value.is_finite() && ts_in_range(p.ts_ms)));
        }
    }

    #[test]
    fn outcome_is_independent_of_line_order_tags() {
        // Tag order in the line does not change the series.
        let a = parse_line_protocol(b"m,b=2,a=1 v=1 0", Precision::Ns, 0);
        let b = parse_line_protocol(b"m,a=1,b=2 v=1 0", Precision::Ns, 0);
        assert_eq!(a, b);
    }
}
