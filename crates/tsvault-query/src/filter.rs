//! Tag value filters (OpenTSDB 2.2+ "Query Filters") and the old `tags` map conversions.
//!
//! A series matches a filter only when it has the filter's tag key: OpenTSDB builds its row-key
//! scan so that every filtered tag key must be present, even for `not_literal_or`.

use regex::{Regex, RegexBuilder};
use tsvault_model::SeriesKey;

/// The largest compiled regex a filter may build, so a request cannot exhaust memory.
const REGEX_SIZE_BYTES_MAX: usize = 1 << 20;

/// The built-in filter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterKind {
    /// Any of `a|b|c`, case-sensitive.
    LiteralOr,
    /// Any of `a|b|c`, case-insensitive.
    ILiteralOr,
    /// None of `a|b|c`, case-sensitive.
    NotLiteralOr,
    /// None of `a|b|c`, case-insensitive.
    NotILiteralOr,
    /// A glob where `*` matches any run of characters, case-sensitive.
    Wildcard,
    /// A glob where `*` matches any run of characters, case-insensitive.
    IWildcard,
    /// A regular expression that must match somewhere in the value (Java's `find`).
    Regexp,
}

const KINDS: &[(&str, FilterKind)] = &[
    ("literal_or", FilterKind::LiteralOr),
    ("iliteral_or", FilterKind::ILiteralOr),
    ("not_literal_or", FilterKind::NotLiteralOr),
    ("not_iliteral_or", FilterKind::NotILiteralOr),
    ("wildcard", FilterKind::Wildcard),
    ("iwildcard", FilterKind::IWildcard),
    ("regexp", FilterKind::Regexp),
];

impl FilterKind {
    /// The kind called `name`, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<Self> {
        KINDS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| *k)
    }

    /// The kind's OpenTSDB name.
    pub fn name(self) -> &'static str {
        KINDS
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("unknown", |(n, _)| n)
    }
}

/// The names of [`FilterKind`]s, for messages.
pub(crate) const FILTER_TYPE_NAMES: &str =
    "literal_or, iliteral_or, not_literal_or, not_iliteral_or, wildcard, iwildcard, regexp";

/// Why a filter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FilterError {
    /// The type name is not one of [`FilterKind`]'s.
    #[error("unknown filter type '{0}'; known types: {FILTER_TYPE_NAMES}")]
    UnknownType(String),
    /// The expression is invalid for its type.
    #[error("{0}")]
    Bad(String),
}

#[derive(Debug, Clone)]
enum Matcher {
    Literals {
        values: Vec<String>,
        case_insensitive: bool,
        negate: bool,
    },
    Glob {
        parts: Vec<String>,
        case_insensitive: bool,
    },
    Regex(Regex),
}

/// One filter on the values of one tag key.
#[derive(Debug, Clone)]
pub struct Filter {
    tagk: String,
    kind: FilterKind,
    expr: String,
    group_by: bool,
    matcher: Matcher,
}

impl Filter {
    /// Builds a filter of `kind` on `tagk`; `group_by` splits results by the matched values.
    pub(crate) fn new(
        kind: FilterKind,
        tagk: &str,
        expr: &str,
        group_by: bool,
    ) -> Result<Self, FilterError> {
        if tagk.is_empty() {
            return Err(FilterError::Bad("the tag key is empty".into()));
        }
        if expr.is_empty() {
            return Err(FilterError::Bad(format!(
                "the {} expression is empty",
                kind.name()
            )));
        }
        let matcher = match kind {
            FilterKind::LiteralOr
            | FilterKind::ILiteralOr
            | FilterKind::NotLiteralOr
            | FilterKind::NotILiteralOr => {
                if expr == "|" {
                    return Err(FilterError::Bad(
                        "the filter must hold more than a pipe".into(),
                    ));
                }
                let case_insensitive =
                    matches!(kind, FilterKind::ILiteralOr | FilterKind::NotILiteralOr);
                let values = expr
                    .split('|')
                    .map(|v| {
                        if case_insensitive {
                            v.to_lowercase()
                        } else {
                            v.to_owned()
                        }
                    })
                    .collect();
                let negate = matches!(kind, FilterKind::NotLiteralOr | FilterKind::NotILiteralOr);
                Matcher::Literals {
                    values,
                    case_insensitive,
                    negate,
                }
            }
            FilterKind::Wildcard | FilterKind::IWildcard => {
                if !expr.contains('*') {
                    return Err(FilterError::Bad(format!(
                        "wildcard '{expr}' must contain an asterisk; use literal_or for exact values"
                    )));
                }
                let case_insensitive = kind == FilterKind::IWildcard;
                let pattern = if case_insensitive {
                    expr.to_lowercase()
                } else {
                    expr.to_owned()
                };
                Matcher::Glob {
                    parts: pattern.split('*').map(str::to_owned).collect(),
                    case_insensitive,
                }
            }
            FilterKind::Regexp => {
                let re = RegexBuilder::new(expr)
                    .size_limit(REGEX_SIZE_BYTES_MAX)
                    .build()
                    .map_err(|e| FilterError::Bad(format!("invalid regexp '{expr}': {e}")))?;
                Matcher::Regex(re)
            }
        };
        Ok(Filter {
            tagk: tagk.to_owned(),
            kind,
            expr: expr.to_owned(),
            group_by,
            matcher,
        })
    }

    /// Builds a filter from a JSON `filters` entry's type name.
    pub(crate) fn from_type_name(
        type_name: &str,
        tagk: &str,
        expr: &str,
        group_by: bool,
    ) -> Result<Self, FilterError> {
        let kind = FilterKind::from_name(type_name)
            .ok_or_else(|| FilterError::UnknownType(type_name.to_owned()))?;
        Self::new(kind, tagk, expr, group_by)
    }

    /// Converts an old-style `tagk=value` (a `tags` map entry, or one item in `m=` braces):
    /// `type(expr)` names a filter, `*` is a wildcard, other values holding `*` are
    /// case-insensitive wildcards, and anything else is a `literal_or` of `a|b|c`.
    pub(crate) fn from_tag_value(
        tagk: &str,
        value: &str,
        group_by: bool,
    ) -> Result<Self, FilterError> {
        if value.is_empty() {
            return Err(FilterError::Bad("the filter value is empty".into()));
        }
        if value == "*" {
            return Self::new(FilterKind::Wildcard, tagk, value, group_by);
        }
        if let Some(paren) = value.find('(') {
            let Some(inner) = value[paren + 1..].strip_suffix(')') else {
                return Err(FilterError::Bad(format!(
                    "filter '{value}' must end with ')'"
                )));
            };
            return Self::from_type_name(&value[..paren], tagk, inner, group_by);
        }
        if value.contains('*') {
            return Self::new(FilterKind::IWildcard, tagk, value, group_by);
        }
        Self::new(FilterKind::LiteralOr, tagk, value, group_by)
    }

    /// The tag key filtered on.
    pub fn tagk(&self) -> &str {
        &self.tagk
    }

    /// The filter's type.
    pub fn kind(&self) -> FilterKind {
        self.kind
    }

    /// The filter expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// True when results are split by this tag's values.
    pub fn group_by(&self) -> bool {
        self.group_by
    }

    /// True when `key` has the tag and its value passes the filter.
    pub fn matches(&self, key: &SeriesKey) -> bool {
        key.tag(&self.tagk)
            .is_some_and(|value| self.matches_value(value))
    }

    fn matches_value(&self, value: &str) -> bool {
        match &self.matcher {
            Matcher::Literals {
                values,
                case_insensitive,
                negate,
            } => {
                let found = if *case_insensitive {
                    let lower = value.to_lowercase();
                    values.contains(&lower)
                } else {
                    values.iter().any(|v| v == value)
                };
                found != *negate
            }
            Matcher::Glob {
                parts,
                case_insensitive,
            } => {
                if *case_insensitive {
                    glob_match(parts, &value.to_lowercase())
                } else {
                    glob_match(parts, value)
                }
            }
            Matcher::Regex(re) => re.is_match(value),
        }
    }
}

/// Whether `value` matches the wildcard `pattern` (`*` = any text), ignoring case, as
/// OpenTSDB's `iwildcard` filter does (without requiring an asterisk).
pub fn iwildcard_matches(pattern: &str, value: &str) -> bool {
    let parts: Vec<String> = pattern
        .to_lowercase()
        .split('*')
        .map(str::to_owned)
        .collect();
    glob_match(&parts, &value.to_lowercase())
}

/// Anchored glob match: `parts` is the pattern split on `*`, so it has at least two parts.
fn glob_match(parts: &[String], value: &str) -> bool {
    let Some((first, rest)) = parts.split_first() else {
        return false;
    };
    let Some((last, middle)) = rest.split_last() else {
        return value == first;
    };
    let Some(mut remaining) = value.strip_prefix(first.as_str()) else {
        return false;
    };
    // Leftmost matches of the middle parts leave the most room for the rest.
    for part in middle {
        match remaining.find(part.as_str()) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn filter_type_names_lists_every_kind_in_order() {
        let names: Vec<&str> = KINDS.iter().map(|(name, _)| *name).collect();
        assert_eq!(FILTER_TYPE_NAMES, names.join(", "));
    }

    #[test]
    fn wildcards() {
        for (p, n, want) in [
            ("cpu_*", "cpu_usage_user", true),
            ("CPU_*", "cpu_usage_user", true),
            ("*user", "cpu_usage_user", true),
            ("cpu*user", "cpu_usage_user", true),
            ("cpu*sys*", "cpu_usage_user", false),
            ("*", "anything", true),
            ("mem", "mem", true),
            ("mem", "memory", false),
            ("a*a", "a", false),
            ("**", "", true),
        ] {
            assert_eq!(iwildcard_matches(p, n), want, "{p} vs {n}");
        }
    }

    fn key(tags: &[(&str, &str)]) -> SeriesKey {
        SeriesKey::new("m", tags).unwrap()
    }

    /// Each filter type against a fixed set of values; "-" is a series without the tag.
    #[test]
    fn each_filter_type() {
        let values = ["web01", "WEB02", "web03.lax", "db01", "-"];
        let cases = [
            ("literal_or", "web01|db01"),
            ("iliteral_or", "web02|DB01"),
            ("not_literal_or", "web01|db01"),
            ("not_iliteral_or", "WEB01|web02"),
            ("wildcard", "*"),
            ("wildcard", "web*"),
            ("wildcard", "*01"),
            ("wildcard", "w*b*.l*x"),
            ("iwildcard", "WEB*"),
            ("regexp", "^web0[13]"),
            ("regexp", "b0"),
        ];
        let mut got = format!("{:<28}", "");
        for v in values {
            got.push_str(&format!("{v:<10}"));
        }
        got.push('\n');
        for (kind, expr) in cases {
            let filter = Filter::from_type_name(kind, "host", expr, false).unwrap();
            got.push_str(&format!("{:<28}", format!("{kind}({expr})")));
            for v in values {
                let k = if v == "-" {
                    key(&[("dc", "lax")])
                } else {
                    key(&[("host", v)])
                };
                got.push_str(&format!(
                    "{:<10}",
                    if filter.matches(&k) { "yes" } else { "no" }
                ));
            }
            got.push('\n');
        }
        expect![[r#"
                                        web01     WEB02     web03.lax db01      -         
            literal_or(web01|db01)      yes       no        no        yes       no        
            iliteral_or(web02|DB01)     no        yes       no        yes       no        
            not_literal_or(web01|db01)  no        yes       yes       no        no        
            not_iliteral_or(WEB01|web02)no        no        yes       yes       no        
            wildcard(*)                 yes       yes       yes       yes       no        
            wildcard(web*)              yes       no        yes       no        no        
            wildcard(*01)               yes       no        no        yes       no        
            wildcard(w*b*.l*x)          no        no        yes       no        no        
            iwildcard(WEB*)             yes       yes       yes       no        no        
            regexp(^web0[13])           yes       no        yes       no        no        
            regexp(b0)                  yes       no        yes       yes       no        
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn old_style_conversions() {
        let show = |v: &str| match Filter::from_tag_value("host", v, true) {
            Ok(f) => format!(
                "{v} => {}({}) group_by={}",
                f.kind().name(),
                f.expr(),
                f.group_by()
            ),
            Err(e) => format!("{v} => {e:?}"),
        };
        let got: Vec<String> = [
            "*",
            "web01",
            "a|b",
            "web*",
            "regexp(web.*)",
            "Wildcard(x*)",
            "regexp(x",
            "bogus(x)",
            "",
        ]
        .into_iter()
        .map(show)
        .collect();
        expect![[r#"
            [
                "* => wildcard(*) group_by=true",
                "web01 => literal_or(web01) group_by=true",
                "a|b => literal_or(a|b) group_by=true",
                "web* => iwildcard(web*) group_by=true",
                "regexp(web.*) => regexp(web.*) group_by=true",
                "Wildcard(x*) => wildcard(x*) group_by=true",
                "regexp(x => Bad(\"filter 'regexp(x' must end with ')'\")",
                "bogus(x) => UnknownType(\"bogus\")",
                " => Bad(\"the filter value is empty\")",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    #[test]
    fn bad_filters() {
        let err = |k: &str, e: &str| Filter::from_type_name(k, "host", e, false).unwrap_err();
        assert!(matches!(err("wildcard", "web"), FilterError::Bad(m) if m.contains("asterisk")));
        assert!(
            matches!(err("regexp", "web("), FilterError::Bad(m) if m.contains("invalid regexp"))
        );
        assert!(matches!(err("literal_or", "|"), FilterError::Bad(_)));
        assert!(matches!(err("literal_or", ""), FilterError::Bad(_)));
        assert_eq!(err("like", "x"), FilterError::UnknownType("like".into()));
    }
}
