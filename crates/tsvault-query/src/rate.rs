//! Per-second rate of change of one series, with OpenTSDB's counter options.
//!
//! As in OpenTSDB's `RateSpan`, the rate runs per series after downsampling and before series
//! are merged: the point at `t1` is `(v1 - v0) / ((t1 - t0) / 1000)`. In counter mode a drop
//! is a rollover: the delta becomes `counter_max - v0 + v1`, and a rollover rate above a
//! positive `reset_value` becomes 0. With `drop_resets` the rollover point is left out instead.

/// How rates treat counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOptions {
    /// The series is a monotonically increasing counter that may roll over.
    pub counter: bool,
    /// The counter's largest value (OpenTSDB's default is Java's `Long.MAX_VALUE`).
    pub counter_max: i64,
    /// A rollover rate above this becomes 0; 0 disables the check.
    pub reset_value: i64,
    /// Leave out rollover points instead of computing them.
    pub drop_resets: bool,
}

impl Default for RateOptions {
    fn default() -> Self {
        RateOptions {
            counter: false,
            counter_max: i64::MAX,
            reset_value: 0,
            drop_resets: false,
        }
    }
}

impl RateOptions {
    /// Parses the `rate[{counter[,<max>[,<reset>]]}]` part of an `m=` parameter;
    /// `dropcounter` in place of `counter` also drops resets.
    pub(crate) fn parse_uri(spec: &str) -> Result<Self, String> {
        let lower = spec.to_ascii_lowercase();
        if lower == "rate" {
            return Ok(RateOptions::default());
        }
        let Some(inner) = lower
            .strip_prefix("rate{")
            .and_then(|s| s.strip_suffix('}'))
        else {
            return Err("expected rate or rate{counter[,<max>[,<reset>]]}".into());
        };
        let parts: Vec<&str> = inner.split(',').collect();
        if parts.len() > 3 {
            return Err("expected at most counter, counter max and reset value".into());
        }
        let mut options = RateOptions::default();
        match parts[0] {
            "" => {}
            "counter" => options.counter = true,
            "dropcounter" => {
                options.counter = true;
                options.drop_resets = true;
            }
            other => {
                return Err(format!("'{other}' is not counter or dropcounter"));
            }
        }
        if let Some(max) = parts.get(1).filter(|p| !p.is_empty()) {
            options.counter_max = max
                .parse()
                .map_err(|_| format!("counter max '{max}' is not an integer"))?;
        }
        if let Some(reset) = parts.get(2).filter(|p| !p.is_empty()) {
            options.reset_value = reset
                .parse()
                .map_err(|_| format!("reset value '{reset}' is not an integer"))?;
        }
        options.validate()?;
        Ok(options)
    }

    /// Refuses a non-positive counter max or a negative reset value.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.counter_max <= 0 {
            return Err(format!(
                "counter max {} must be a positive integer",
                self.counter_max
            ));
        }
        if self.reset_value < 0 {
            return Err(format!(
                "reset value {} must not be negative",
                self.reset_value
            ));
        }
        Ok(())
    }
}

/// The rate series of `points` (sorted by time, strictly increasing). The first point has no
/// predecessor and yields no rate.
pub(crate) fn rate(points: &[(i64, f64)], options: &RateOptions) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(points.len().saturating_sub(1));
    for pair in points.windows(2) {
        let [(t0, v0), (t1, v1)] = [pair[0], pair[1]];
        let dt_secs = (t1 - t0) as f64 / 1000.0;
        let delta = v1 - v0;
        if options.counter && delta < 0.0 {
            if options.drop_resets {
                continue;
            }
            let rate = (options.counter_max as f64 - v0 + v1) / dt_secs;
            let reset_hit = options.reset_value > 0 && rate > options.reset_value as f64;
            out.push((t1, if reset_hit { 0.0 } else { rate }));
        } else {
            out.push((t1, delta / dt_secs));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    #[test]
    fn parses_uri_options() {
        let got: Vec<String> = [
            "rate",
            "RATE",
            "rate{counter}",
            "rate{counter,65535}",
            "rate{counter,,1000}",
            "rate{counter,65535,100}",
            "rate{dropcounter}",
            "rate{}",
            "rate{counter,x}",
            "rate{counter,1,2,3}",
            "rate{count}",
            "rate{counter,-1}",
            "rates",
        ]
        .into_iter()
        .map(|s| match RateOptions::parse_uri(s) {
            Ok(o) => format!(
                "{s}: counter={} max={} reset={} drop={}",
                o.counter, o.counter_max, o.reset_value, o.drop_resets
            ),
            Err(e) => format!("{s}: error: {e}"),
        })
        .collect();
        expect![[r#"
            [
                "rate: counter=false max=9223372036854775807 reset=0 drop=false",
                "RATE: counter=false max=9223372036854775807 reset=0 drop=false",
                "rate{counter}: counter=true max=9223372036854775807 reset=0 drop=false",
                "rate{counter,65535}: counter=true max=65535 reset=0 drop=false",
                "rate{counter,,1000}: counter=true max=9223372036854775807 reset=1000 drop=false",
                "rate{counter,65535,100}: counter=true max=65535 reset=100 drop=false",
                "rate{dropcounter}: counter=true max=9223372036854775807 reset=0 drop=true",
                "rate{}: counter=false max=9223372036854775807 reset=0 drop=false",
                "rate{counter,x}: error: counter max 'x' is not an integer",
                "rate{counter,1,2,3}: error: expected at most counter, counter max and reset value",
                "rate{count}: error: 'count' is not counter or dropcounter",
                "rate{counter,-1}: error: counter max -1 must be a positive integer",
                "rates: error: expected rate or rate{counter[,<max>[,<reset>]]}",
            ]
        "#]]
        .assert_debug_eq(&got);
    }

    /// The user guide's rollover example: 64000 then 1000 on a 65535 counter, 10 s apart.
    #[test]
    fn plain_counter_rollover_reset_and_drop() {
        let points = [
            (0, 63_000.0),
            (10_000, 64_000.0),
            (20_000, 1_000.0),
            (30_000, 1_500.0),
        ];
        let plain = rate(&points, &RateOptions::default());
        assert_eq!(
            plain,
            vec![(10_000, 100.0), (20_000, -6_300.0), (30_000, 50.0)]
        );

        let counter = RateOptions {
            counter: true,
            counter_max: 65_535,
            ..RateOptions::default()
        };
        // (65535 - 64000 + 1000) / 10 = 253.5
        assert_eq!(
            rate(&points, &counter),
            vec![(10_000, 100.0), (20_000, 253.5), (30_000, 50.0)]
        );

        let reset = RateOptions {
            reset_value: 200,
            ..counter
        };
        assert_eq!(
            rate(&points, &reset),
            vec![(10_000, 100.0), (20_000, 0.0), (30_000, 50.0)]
        );

        let drop = RateOptions {
            drop_resets: true,
            ..counter
        };
        // The dropped point still anchors the next rate: (1500 - 1000) / 10.
        assert_eq!(rate(&points, &drop), vec![(10_000, 100.0), (30_000, 50.0)]);

        // Without a counter max, a drop wraps around Long.MAX_VALUE as in OpenTSDB.
        let default_max = RateOptions {
            counter: true,
            ..RateOptions::default()
        };
        let wrapped = rate(&points, &default_max)[1].1;
        assert_eq!(wrapped, (i64::MAX as f64 - 64_000.0 + 1_000.0) / 10.0);
    }
}
