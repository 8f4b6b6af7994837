//! Series keys: validation and the canonical encoding.
//!
//! Canonical form: the metric, then for each tag in ascending byte order of its key,
//! `\x1f key \x1e value`. Names may hold any UTF-8 except ASCII control characters, so the two
//! separators can never appear inside a name and the encoding is unambiguous.

use std::fmt;
use std::sync::Arc;

const TAG_SEP: char = '\x1f';
const KV_SEP: char = '\x1e';

/// Bounds on what a series key may hold.
pub struct Limits {
    /// Longest metric name, tag key or tag value, in bytes.
    pub name_bytes_max: usize,
    /// Most tags on one series.
    pub tags_max: usize,
}

/// The bounds every ingest path enforces.
pub const LIMITS: Limits = Limits {
    name_bytes_max: 4096,
    tags_max: 256,
};

/// Why a metric name or tag set was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The metric name is empty.
    #[error("metric name is empty")]
    EmptyMetric,
    /// A tag key is empty.
    #[error("tag key is empty")]
    EmptyTagKey,
    /// A tag has an empty value.
    #[error("tag '{key}' has an empty value")]
    EmptyTagValue {
        /// The tag's key.
        key: String,
    },
    /// A name holds an ASCII control character.
    #[error("{what} '{name}' contains a control character")]
    ControlChar {
        /// Which part: "metric name", "tag key" or "tag value".
        what: &'static str,
        /// The offending name, with control characters escaped.
        name: String,
    },
    /// A name is longer than [`Limits::name_bytes_max`].
    #[error("{what} is {len} bytes long; the limit is {max}")]
    TooLong {
        /// Which part.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The same tag key appears twice.
    #[error("tag '{key}' appears more than once")]
    DuplicateTag {
        /// The repeated key.
        key: String,
    },
    /// More tags than [`Limits::tags_max`].
    #[error("{count} tags; the limit is {max}")]
    TooManyTags {
        /// How many tags were given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A stored canonical key does not parse (corrupt input to [`SeriesKey::from_canonical`]).
    #[error("malformed canonical series key")]
    Malformed,
}

fn check_name(what: &'static str, name: &str) -> Result<(), KeyError> {
    if name.len() > LIMITS.name_bytes_max {
        return Err(KeyError::TooLong {
            what,
            len: name.len(),
            max: LIMITS.name_bytes_max,
        });
    }
    if name.chars().any(|c| c.is_ascii_control()) {
        return Err(KeyError::ControlChar {
            what,
            name: name.escape_debug().to_string(),
        });
    }
    Ok(())
}

/// Whether `s` is a canonical key that passes every check of [`SeriesKey::from_canonical`],
/// in one pass over its bytes (a key is checked for each series of every segment opened or
/// backed up; splitting it into names and checking each cost several times more). Exact for
/// UTF-8: an ASCII control character is one byte, and the bytes of other characters are all
/// 0x80 or above.
fn is_canonical(s: &[u8]) -> bool {
    let (tag_sep, kv_sep) = (TAG_SEP as u8, KV_SEP as u8);
    let mut name_start = 0;
    let mut in_metric = true;
    let mut tags = 0;
    // The key of the tag being read (once its separator is seen), and the tag before's.
    let mut key: Option<&[u8]> = None;
    let mut prev_key: Option<&[u8]> = None;
    loop {
        // A name ends at a control byte (a separator, or a byte no name may hold), or where
        // the key ends, which ends its last name as a tag separator would.
        let (end, b) = match next_control(s, name_start) {
            Some(i) => (i, s[i]),
            None => (s.len(), tag_sep),
        };
        let name = &s[name_start..end];
        if name.is_empty() || name.len() > LIMITS.name_bytes_max {
            return false;
        }
        if b == tag_sep {
            if in_metric {
                in_metric = false;
            } else {
                // A tag ends: it had a key, after the tag before's in byte order.
                let Some(k) = key.take() else {
                    return false;
                };
                if prev_key.is_some_and(|p| p >= k) || tags == LIMITS.tags_max {
                    return false;
                }
                tags += 1;
                prev_key = Some(k);
            }
        } else if b == kv_sep && !in_metric && key.is_none() {
            key = Some(name);
        } else {
            return false;
        }
        if end == s.len() {
            return true;
        }
        name_start = end + 1;
    }
}

/// The position of the first ASCII control byte (below 0x20, or 0x7f) of `s` at or after
/// `from`, eight bytes at a time: names are a few bytes to a few dozen, and a byte at a time
/// this was most of the cost of checking a key.
fn next_control(s: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(word) = s.get(i..i + 8) {
        let x = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        // A byte's high bit is set where it is below 0x20 (subtracting 0x20 borrows, and
        // its own high bit is clear), or where it equals 0x7f (its xor with 0x7f is zero).
        // A borrow can mark bytes after a true one too, never one before: the lowest mark
        // (the first byte, little-endian) is exact.
        let below = x.wrapping_sub(ONES * 0x20) & !x & HIGHS;
        let y = x ^ (ONES * 0x7f);
        let del = y.wrapping_sub(ONES) & !y & HIGHS;
        let marks = below | del;
        if marks != 0 {
            return Some(i + (marks.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b < 0x20 || b == 0x7f)
        .map(|p| i + p)
}

/// A validated, sorted tag set in canonical encoding, built once and shared by every metric
/// of one input line (a line protocol line with ten fields yields ten series keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct TagSet(String);

impl TagSet {
    /// Validates and sorts `tags`. Empty keys or values, duplicates and control characters are
    /// refused.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(tags: &[(K, V)]) -> Result<Self, KeyError> {
        if tags.len() > LIMITS.tags_max {
            return Err(KeyError::TooManyTags {
                count: tags.len(),
                max: LIMITS.tags_max,
            });
        }
        let mut sorted: Vec<(&str, &str)> =
            tags.iter().map(|(k, v)| (k.as_ref(), v.as_ref())).collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut out = String::new();
        for (i, (k, v)) in sorted.iter().enumerate() {
            if k.is_empty() {
                return Err(KeyError::EmptyTagKey);
            }
            if v.is_empty() {
                return Err(KeyError::EmptyTagValue {
                    key: (*k).to_owned(),
                });
            }
            check_name("tag key", k)?;
            check_name("tag value", v)?;
            if i > 0 && sorted[i - 1].0 == *k {
                return Err(KeyError::DuplicateTag {
                    key: (*k).to_owned(),
                });
            }
            out.push(TAG_SEP);
            out.push_str(k);
            out.push(KV_SEP);
            out.push_str(v);
        }
        Ok(TagSet(out))
    }

    /// The series key of `metric` with these tags.
    pub fn key_for(&self, metric: &str) -> Result<SeriesKey, KeyError> {
        if metric.is_empty() {
            return Err(KeyError::EmptyMetric);
        }
        check_name("metric name", metric)?;
        let mut s = String::with_capacity(metric.len() + self.0.len());
        s.push_str(metric);
        s.push_str(&self.0);
        Ok(SeriesKey(s.into()))
    }

    /// The canonical encoding of the tags: a series key is its metric followed by this.
    pub fn canonical(&self) -> &str {
        &self.0
    }

    /// True when the set holds no tag.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The identity of a series: a metric name plus its sorted tags, in canonical encoding.
/// Shared (`Arc`), so that the many samples of one series in a request hold one copy.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey(Arc<str>);

/// A key is looked up by its canonical encoding (its hash and order are the string's).
impl std::borrow::Borrow<str> for SeriesKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl SeriesKey {
    /// Builds and validates a key from a metric and tags in any order.
    pub fn new<K: AsRef<str>, V: AsRef<str>>(
        metric: &str,
        tags: &[(K, V)],
    ) -> Result<Self, KeyError> {
        TagSet::new(tags)?.key_for(metric)
    }

    /// Rebuilds a key from its canonical encoding (as stored in the WAL or a segment),
    /// checking every rule again: stored bytes are input like any other.
    ///
    /// Checked in place (segment indexes and WAL records hold a key per series, and this is
    /// on the path of every segment open and backup): the rules of [`SeriesKey::new`], and tag
    /// keys strictly ascending, which is what `new`'s sort would leave unchanged.
    pub fn from_canonical(s: &str) -> Result<Self, KeyError> {
        if is_canonical(s.as_bytes()) {
            return Ok(SeriesKey(s.into()));
        }
        Self::canonical_error(s)
    }

    /// [`SeriesKey::from_canonical`] rule by rule, for the error that names what `s` breaks
    /// ([`is_canonical`] only says whether it breaks any).
    fn canonical_error(s: &str) -> Result<Self, KeyError> {
        let mut parts = s.split(TAG_SEP);
        let metric = parts.next().ok_or(KeyError::Malformed)?;
        if metric.is_empty() {
            return Err(KeyError::EmptyMetric);
        }
        check_name("metric name", metric)?;
        let mut prev: Option<&str> = None;
        for (count, part) in parts.enumerate() {
            if count == LIMITS.tags_max {
                return Err(KeyError::TooManyTags {
                    count: s.matches(TAG_SEP).count(),
                    max: LIMITS.tags_max,
                });
            }
            let (k, v) = part.split_once(KV_SEP).ok_or(KeyError::Malformed)?;
            if k.is_empty() {
                return Err(KeyError::EmptyTagKey);
            }
            if v.is_empty() {
                return Err(KeyError::EmptyTagValue { key: k.to_owned() });
            }
            check_name("tag key", k)?;
            check_name("tag value", v)?;
            match prev {
                Some(p) if p == k => {
                    return Err(KeyError::DuplicateTag { key: k.to_owned() });
                }
                // Tags out of order: not the canonical form.
                Some(p) if p > k => return Err(KeyError::Malformed),
                _ => {}
            }
            prev = Some(k);
        }
        Ok(SeriesKey(s.into()))
    }

    /// The canonical encoding.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The metric name.
    pub fn metric(&self) -> &str {
        match self.0.find(TAG_SEP) {
            Some(i) => &self.0[..i],
            None => &self.0,
        }
    }

    /// The tags in ascending key order.
    pub fn tags(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let rest = &self.0[self.metric().len()..];
        rest.split(TAG_SEP)
            .skip(1)
            .map(|p| p.split_once(KV_SEP).unwrap_or((p, "")))
    }

    /// The value of tag `key`, if the series has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl fmt::Display for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.metric())?;
        f.write_str("{")?;
        for (i, (k, v)) in self.tags().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

impl fmt::Debug for SeriesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_tags_and_round_trips() {
        let k = SeriesKey::new("cpu_usage", &[("host", "a"), ("dc", "eu")]).unwrap();
        assert_eq!(k.metric(), "cpu_usage");
        assert_eq!(
            k.tags().collect::<Vec<_>>(),
            vec![("dc", "eu"), ("host", "a")]
        );
        assert_eq!(k.tag("host"), Some("a"));
        assert_eq!(k.to_string(), r#"cpu_usage{dc="eu",host="a"}"#);
        assert_eq!(SeriesKey::from_canonical(k.as_str()).unwrap(), k);
        let bare = SeriesKey::new::<&str, &str>("m", &[]).unwrap();
        assert_eq!(bare.tags().count(), 0);
        assert_eq!(SeriesKey::from_canonical(bare.as_str()).unwrap(), bare);
    }

    #[test]
    fn refuses_bad_names() {
        let e = |m: &str, t: &[(&str, &str)]| SeriesKey::new(m, t).unwrap_err();
        assert_eq!(e("", &[]), KeyError::EmptyMetric);
        assert_eq!(e("m", &[("", "v")]), KeyError::EmptyTagKey);
        assert_eq!(
            e("m", &[("k", "")]),
            KeyError::EmptyTagValue { key: "k".into() }
        );
        assert_eq!(
            e("m", &[("k", "1"), ("k", "2")]),
            KeyError::DuplicateTag { key: "k".into() }
        );
        assert!(matches!(
            e("m\u{1f}x", &[]),
            KeyError::ControlChar {
                what: "metric name",
                ..
            }
        ));
        assert!(matches!(
            e("m", &[("k", "a\nb")]),
            KeyError::ControlChar { .. }
        ));
        let long = "x".repeat(LIMITS.name_bytes_max + 1);
        assert!(matches!(e(&long, &[]), KeyError::TooLong { .. }));
    }

    #[test]
    fn from_canonical_checks_what_new_checks() {
        // Every key `new` builds comes back; every string it refuses, it refuses alike.
        let long = "x".repeat(LIMITS.name_bytes_max + 1);
        let many: Vec<(String, String)> = (0..=LIMITS.tags_max)
            .map(|i| (format!("k{i:04}"), "v".to_string()))
            .collect();
        let cases: Vec<(&str, Vec<(String, String)>)> = vec![
            (
                "cpu",
                vec![("host".into(), "a".into()), ("dc".into(), "eu".into())],
            ),
            ("cpu", vec![]),
            ("", vec![]),
            ("m", vec![("".into(), "v".into())]),
            ("m", vec![("k".into(), "".into())]),
            (
                "m",
                vec![("k".into(), "a".into()), ("k".into(), "b".into())],
            ),
            ("m", vec![("k".into(), "a\u{7}".into())]),
            ("m\u{1}", vec![]),
            (long.as_str(), vec![]),
            ("m", vec![("k".into(), long.clone())]),
            ("m", many),
        ];
        for (metric, tags) in cases {
            // The canonical string `new` would make, built by hand for the refused ones.
            let mut sorted = tags.clone();
            sorted.sort();
            let mut canonical = metric.to_string();
            for (k, v) in &sorted {
                canonical.push(TAG_SEP);
                canonical.push_str(k);
                canonical.push(KV_SEP);
                canonical.push_str(v);
            }
            let built = SeriesKey::new(metric, &tags);
            assert_eq!(
                SeriesKey::from_canonical(&canonical),
                built,
                "{canonical:?}"
            );
        }
    }

    #[test]
    fn the_one_pass_check_agrees_with_the_rules_on_every_short_string() {
        // Every string up to a length from an alphabet: the one-pass check accepts exactly
        // what the rule-by-rule one accepts. Returns how many it accepted.
        fn agree_on_all(alphabet: &[char], max_len: u32) -> usize {
            let mut strings = vec![String::new()];
            let (mut accepted, mut checked) = (0, 0);
            for _ in 0..max_len {
                let mut longer = Vec::with_capacity(strings.len() * alphabet.len());
                for s in &strings {
                    for &c in alphabet {
                        let mut t = s.clone();
                        t.push(c);
                        let rules = SeriesKey::canonical_error(&t).is_ok();
                        assert_eq!(is_canonical(t.as_bytes()), rules, "{t:?}");
                        accepted += usize::from(rules);
                        checked += 1;
                        longer.push(t);
                    }
                }
                strings = longer;
            }
            let n = alphabet.len();
            assert_eq!(checked, (1..=max_len).map(|l| n.pow(l)).sum::<usize>());
            accepted
        }
        // Name characters (one of them two bytes long), both separators and two other
        // control characters, up to a metric and one tag of one character each and more.
        let rich = agree_on_all(&['a', 'b', 'é', TAG_SEP, KV_SEP, '\n', '\u{7f}'], 6);
        assert!(rich > 100, "{rich}");
        // Up to a metric and two tags, in order, out of order and repeated.
        let two_tags = agree_on_all(&['a', 'b', TAG_SEP, KV_SEP], 9);
        assert!(is_canonical("a\x1fa\x1eb\x1fb\x1ea".as_bytes()));
        assert!(!is_canonical("a\x1fb\x1eb\x1fa\x1ea".as_bytes()));
        assert!(!is_canonical("a\x1fa\x1eb\x1fa\x1ea".as_bytes()));
        assert!(two_tags > rich, "{two_tags}");
        // The limits, at and one past each.
        let at = "x".repeat(LIMITS.name_bytes_max);
        for (key, ok) in [
            (at.clone(), true),
            (format!("{at}x"), false),
            (format!("m\x1fk\x1e{at}"), true),
            (format!("m\x1fk\x1e{at}x"), false),
            (format!("m\x1f{at}x\x1ev"), false),
        ] {
            assert_eq!(is_canonical(key.as_bytes()), ok, "{}", key.len());
            assert_eq!(SeriesKey::canonical_error(&key).is_ok(), ok);
        }
        let tags = |n: usize| {
            (0..n)
                .map(|i| format!("\x1fk{i:04}\x1ev"))
                .collect::<String>()
        };
        for (n, ok) in [(LIMITS.tags_max, true), (LIMITS.tags_max + 1, false)] {
            let key = format!("m{}", tags(n));
            assert_eq!(is_canonical(key.as_bytes()), ok, "{n} tags");
            assert_eq!(SeriesKey::canonical_error(&key).is_ok(), ok);
        }
    }

    #[test]
    fn the_next_control_byte_is_found_at_every_position_of_every_word() {
        // One byte of each kind (controls, their neighbours, bytes of other characters) at
        // every position of strings up to five words long, searched from every position.
        let kinds = [0x00, 0x1e, 0x1f, 0x0a, 0x7f, 0x20, 0x21, 0x7e, 0x80, 0xff];
        for len in 0..41 {
            for at in 0..len {
                for kind in kinds {
                    let mut s = vec![b'a'; len];
                    s[at] = kind;
                    for from in 0..=len {
                        let naive = (from..len).find(|&i| s[i] < 0x20 || s[i] == 0x7f);
                        assert_eq!(next_control(&s, from), naive, "{len} {at} {kind:#x} {from}");
                    }
                }
            }
        }
        // Two controls in one word: the first is found.
        assert_eq!(next_control(b"ab\x7fc\x1fdefgh", 0), Some(2));
        assert_eq!(next_control(b"abcdefg\x01\x00", 0), Some(7));
    }

    #[test]
    fn from_canonical_refuses_non_canonical() {
        assert_eq!(
            SeriesKey::from_canonical("m\x1fb\x1e1\x1fa\x1e2"),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            SeriesKey::from_canonical("m\x1fnovalue"),
            Err(KeyError::Malformed)
        );
    }
}
