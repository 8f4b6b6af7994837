//! `/api/suggest`: names that start with a prefix, for auto-completion.

use crate::error::{Error, Result};
use crate::source::Source;

/// How many suggestions OpenTSDB returns when `max` is not given (or not positive).
pub const SUGGEST_DEFAULT_MAX: usize = 25;

/// Up to `max` (0 means [`SUGGEST_DEFAULT_MAX`]) names of `kind` — "metrics", "tagk" or "tagv" —
/// that start with `prefix` (case-sensitive), sorted.
pub fn suggest(source: &dyn Source, kind: &str, prefix: &str, max: usize) -> Result<Vec<String>> {
    let names = match kind {
        "metrics" => source.metric_names(),
        "tagk" => source.tag_keys(),
        "tagv" => source.tag_values(),
        other => return Err(Error::BadSuggestType(other.to_owned())),
    };
    let max = if max == 0 { SUGGEST_DEFAULT_MAX } else { max };
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect();
    // The source promises sorted names; sorting again costs little and keeps the promise here.
    out.sort_unstable();
    out.dedup();
    out.truncate(max);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemorySource;
    use tsvault_model::SeriesKey;

    #[test]
    fn suggests_by_prefix() {
        let mut src = MemorySource::new();
        for (m, host) in [
            ("sys.cpu.user", "web01"),
            ("sys.cpu.nice", "web02"),
            ("disk.used", "db01"),
        ] {
            src.insert(
                &SeriesKey::new(m, &[("host", host), ("dc", "lax")]).unwrap(),
                1,
                1.0,
            );
        }
        assert_eq!(
            suggest(&src, "metrics", "sys", 0).unwrap(),
            ["sys.cpu.nice", "sys.cpu.user"]
        );
        assert_eq!(
            suggest(&src, "metrics", "sys", 1).unwrap(),
            ["sys.cpu.nice"]
        );
        assert_eq!(
            suggest(&src, "metrics", "Sys", 0).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(suggest(&src, "metrics", "", 0).unwrap().len(), 3);
        assert_eq!(suggest(&src, "tagk", "", 0).unwrap(), ["dc", "host"]);
        assert_eq!(suggest(&src, "tagv", "web", 0).unwrap(), ["web01", "web02"]);
        let err = suggest(&src, "metric", "", 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "suggest type 'metric' is unknown; use metrics, tagk or tagv"
        );
    }
}
