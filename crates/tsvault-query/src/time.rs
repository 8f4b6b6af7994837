//! OpenTSDB's date and duration formats (user guide, "Dates and Times").
//!
//! Accepted: `now`; `<n><unit>-ago` with units ms, s, m, h, d (24 h), w (7 d), n (30 d), y (365 d);
//! `<n>ms` (absolute milliseconds); epoch integers, which are seconds when 10 digits or fewer and
//! milliseconds otherwise; `<10-digit seconds>.<1 to 3 digits of ms>`; and `yyyy/MM/dd`,
//! `yyyy/MM/dd-HH:mm`, `yyyy/MM/dd HH:mm`, `yyyy/MM/dd-HH:mm:ss`, `yyyy/MM/dd HH:mm:ss`, read
//! as UTC (the zone tsvault servers run in; OpenTSDB uses the server's zone).

use std::time::UNIX_EPOCH;

/// Resolves a start or end time to milliseconds since the epoch; `now_ms` anchors relative times.
pub(crate) fn parse_time(s: &str, now_ms: i64) -> Result<i64, String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let lower = s.to_ascii_lowercase();
    if lower == "now" {
        return Ok(now_ms);
    }
    if let Some(amount) = lower.strip_suffix("-ago") {
        let ago_ms = parse_duration_ms(amount)?;
        let at_ms = now_ms
            .checked_sub(ago_ms)
            .filter(|t| *t >= 0)
            .ok_or_else(|| "it lies before 1970-01-01".to_string())?;
        return Ok(at_ms);
    }
    if let Some(digits) = lower.strip_suffix("ms")
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
    {
        return digits
            .parse::<i64>()
            .map_err(|_| "the number is too large".into());
    }
    if s.contains('/') || s.contains(':') {
        return parse_calendar(s);
    }
    parse_epoch(s)
}

/// Parses `<n><unit>` (units ms, s, m, h, d, w, n, y) into milliseconds; `n` must be positive.
pub(crate) fn parse_duration_ms(s: &str) -> Result<i64, String> {
    let digits_len = s.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, unit) = s.split_at(digits_len);
    if digits.is_empty() || unit.is_empty() {
        return Err(format!(
            "duration '{s}' must be a whole number followed by a unit (ms, s, m, h, d, w, n, y)"
        ));
    }
    let amount: i64 = digits
        .parse()
        .map_err(|_| format!("duration '{s}' is too large"))?;
    if amount <= 0 {
        return Err(format!("duration '{s}' must be greater than zero"));
    }
    let unit_ms: i64 = match unit.to_ascii_lowercase().as_str() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 7 * 86_400_000,
        "n" => 30 * 86_400_000,
        "y" => 365 * 86_400_000,
        _ => {
            return Err(format!(
                "duration '{s}' has unknown unit '{unit}'; use ms, s, m, h, d, w, n or y"
            ));
        }
    };
    amount
        .checked_mul(unit_ms)
        .ok_or_else(|| format!("duration '{s}' is too large"))
}

fn parse_epoch(s: &str) -> Result<i64, String> {
    if s.starts_with('-') {
        return Err("negative timestamps are not supported".into());
    }
    if let Some((secs, frac)) = s.split_once('.') {
        let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if secs.len() != 10
            || !(1..=3).contains(&frac.len())
            || !all_digits(secs)
            || !all_digits(frac)
        {
            return Err("millisecond timestamps must be <10-digit seconds>.<1 to 3 digits>".into());
        }
        let secs: i64 = secs.parse().map_err(|_| "bad seconds".to_string())?;
        // "1364410924.25" means 250 ms: the fraction is a decimal fraction of a second.
        let frac_ms: i64 = format!("{frac:0<3}")
            .parse()
            .map_err(|_| "bad fraction".to_string())?;
        return Ok(secs * 1000 + frac_ms);
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, \
                    or a relative time such as 1h-ago"
                .into(),
        );
    }
    let n: i64 = s
        .parse()
        .map_err(|_| "the number is too large".to_string())?;
    if s.len() <= 10 { Ok(n * 1000) } else { Ok(n) }
}

fn parse_calendar(s: &str) -> Result<i64, String> {
    let shape_err = || {
        "dates must be yyyy/MM/dd, yyyy/MM/dd-HH:mm, yyyy/MM/dd HH:mm, \
         yyyy/MM/dd-HH:mm:ss or yyyy/MM/dd HH:mm:ss"
            .to_string()
    };
    let b = s.as_bytes();
    let digit_at = |i: usize| b.get(i).is_some_and(u8::is_ascii_digit);
    let digits = |range: std::ops::Range<usize>| range.clone().all(digit_at);
    let date_ok = digits(0..4)
        && b.get(4) == Some(&b'/')
        && digits(5..7)
        && b.get(7) == Some(&b'/')
        && digits(8..10);
    if !date_ok {
        return Err(shape_err());
    }
    let date = format!("{}-{}-{}", &s[0..4], &s[5..7], &s[8..10]);
    let time = match b.len() {
        10 => "00:00:00".to_string(),
        16 | 19 => {
            let sep_ok = b[10] == b'-' || b[10] == b' ';
            let hm_ok = digits(11..13) && b[13] == b':' && digits(14..16);
            let s_ok = b.len() == 16 || (b[16] == b':' && digits(17..19));
            if !(sep_ok && hm_ok && s_ok) {
                return Err(shape_err());
            }
            if b.len() == 16 {
                format!("{}:00", &s[11..16])
            } else {
                s[11..19].to_string()
            }
        }
        _ => return Err(shape_err()),
    };
    let rfc3339 = format!("{date}T{time}Z");
    let at = humantime::parse_rfc3339(&rfc3339).map_err(|e| format!("not a valid date: {e}"))?;
    let since = at
        .duration_since(UNIX_EPOCH)
        .map_err(|_| "dates before 1970 are not supported")?;
    i64::try_from(since.as_millis()).map_err(|_| "the date is too far in the future".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const NOW_MS: i64 = 1_700_000_000_123;

    fn show(inputs: &[&str]) -> String {
        inputs
            .iter()
            .map(|s| match parse_time(s, NOW_MS) {
                Ok(ms) => format!("{s:<22} => {ms}\n"),
                Err(e) => format!("{s:<22} => error: {e}\n"),
            })
            .collect()
    }

    #[test]
    fn relative_times() {
        let got = show(&[
            "now",
            "NOW",
            "1ms-ago",
            "1s-ago",
            "2m-ago",
            "1h-ago",
            "1d-ago",
            "1w-ago",
            "1n-ago",
            "1y-ago",
            "5H-ago",
            "0s-ago",
            "h-ago",
            "1x-ago",
            "99999999y-ago",
        ]);
        expect![[r#"
            now                    => 1700000000123
            NOW                    => 1700000000123
            1ms-ago                => 1700000000122
            1s-ago                 => 1699999999123
            2m-ago                 => 1699999880123
            1h-ago                 => 1699996400123
            1d-ago                 => 1699913600123
            1w-ago                 => 1699395200123
            1n-ago                 => 1697408000123
            1y-ago                 => 1668464000123
            5H-ago                 => 1699982000123
            0s-ago                 => error: duration '0s' must be greater than zero
            h-ago                  => error: duration 'h' must be a whole number followed by a unit (ms, s, m, h, d, w, n, y)
            1x-ago                 => error: duration '1x' has unknown unit 'x'; use ms, s, m, h, d, w, n or y
            99999999y-ago          => error: it lies before 1970-01-01
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn absolute_times() {
        let got = show(&[
            "1356998400",
            "1356998400000",
            "1356998400.25",
            "1356998400.250",
            "1356998400.2500",
            "135699840.2",
            "42",
            "1500ms",
            "-5",
            "12ab",
            "2013/01/23",
            "2013/01/23-12:50",
            "2013/01/23 12:50",
            "2013/01/23-12:50:42",
            "2013/01/23 12:50:42",
            "2013/02/30",
            "2013/1/23",
            "2013/01/23T12:50",
        ]);
        expect![[r#"
            1356998400             => 1356998400000
            1356998400000          => 1356998400000
            1356998400.25          => 1356998400250
            1356998400.250         => 1356998400250
            1356998400.2500        => error: millisecond timestamps must be <10-digit seconds>.<1 to 3 digits>
            135699840.2            => error: millisecond timestamps must be <10-digit seconds>.<1 to 3 digits>
            42                     => 42000
            1500ms                 => 1500
            -5                     => error: negative timestamps are not supported
            12ab                   => error: expected epoch seconds or ms, a date such as 2013/01/23-12:50:42, or a relative time such as 1h-ago
            2013/01/23             => 1358899200000
            2013/01/23-12:50       => 1358945400000
            2013/01/23 12:50       => 1358945400000
            2013/01/23-12:50:42    => 1358945442000
            2013/01/23 12:50:42    => 1358945442000
            2013/02/30             => error: not a valid date: numeric component is out of range
            2013/1/23              => error: dates must be yyyy/MM/dd, yyyy/MM/dd-HH:mm, yyyy/MM/dd HH:mm, yyyy/MM/dd-HH:mm:ss or yyyy/MM/dd HH:mm:ss
            2013/01/23T12:50       => error: dates must be yyyy/MM/dd, yyyy/MM/dd-HH:mm, yyyy/MM/dd HH:mm, yyyy/MM/dd-HH:mm:ss or yyyy/MM/dd HH:mm:ss
        "#]]
        .assert_eq(&got);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1M"), Ok(60_000));
        assert!(parse_duration_ms("1.5h").is_err());
        assert!(parse_duration_ms("99999999999999999999s").is_err());
    }
}
