//! The unit of line protocol timestamps (the `precision` query parameter) and its conversion to
//! tsvault's milliseconds.

use std::fmt;
use std::str::FromStr;

/// The unit of line protocol timestamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Precision {
    /// Nanoseconds (InfluxDB's default).
    #[default]
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

/// A `precision` value that names no unit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid precision '{value}'; use one of ns, u, us, ms, s, m, h")]
pub struct PrecisionError {
    /// The value as given.
    pub value: String,
}

impl FromStr for Precision {
    type Err = PrecisionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            // "n" is what InfluxDB 1.x clients such as influxdb-python send for nanoseconds.
            "ns" | "n" => Precision::Ns,
            "us" | "u" => Precision::Us,
            "ms" => Precision::Ms,
            "s" => Precision::S,
            "m" => Precision::M,
            "h" => Precision::H,
            other => {
                return Err(PrecisionError {
                    value: other.to_owned(),
                });
            }
        })
    }
}

impl Precision {
    /// The canonical name, as accepted by [`FromStr`].
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Ns => "ns",
            Precision::Us => "us",
            Precision::Ms => "ms",
            Precision::S => "s",
            Precision::M => "m",
            Precision::H => "h",
        }
    }

    /// How many of this unit make a millisecond (1 for milliseconds and coarser units).
    pub fn units_per_ms(self) -> i64 {
        match self {
            Precision::Ns => 1_000_000,
            Precision::Us => 1_000,
            _ => 1,
        }
    }

    /// Converts a timestamp in this unit to milliseconds: floor division for finer units (so
    /// -1 ns is -1 ms, as the instant lies in that millisecond), checked multiplication for
    /// coarser ones (`None` on i64 overflow).
    pub fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(ts.div_euclid(1_000_000)),
            Precision::Us => Some(ts.div_euclid(1_000)),
            Precision::Ms => Some(ts),
            Precision::S => ts.checked_mul(1_000),
            Precision::M => ts.checked_mul(60_000),
            Precision::H => ts.checked_mul(3_600_000),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_names_the_bad_one() {
        let names = ["ns", "n", "us", "u", "ms", "s", "m", "h"];
        let parsed: Vec<Precision> = names.iter().map(|n| n.parse().unwrap()).collect();
        use Precision::*;
        assert_eq!(parsed, [Ns, Ns, Us, Us, Ms, S, M, H]);
        for p in [Ns, Us, Ms, S, M, H] {
            assert_eq!(p.as_str().parse::<Precision>(), Ok(p));
        }
        for bad in ["", "NS", "sec", "fortnight", "µs"] {
            let e = bad.parse::<Precision>().unwrap_err();
            assert_eq!(
                e.to_string(),
                format!("invalid precision '{bad}'; use one of ns, u, us, ms, s, m, h")
            );
        }
    }

    #[test]
    fn converts_with_floor_and_checked_multiplication() {
        use Precision::*;
        assert_eq!(Ns.to_ms(1_999_999), Some(1));
        assert_eq!(Ns.to_ms(-1), Some(-1));
        assert_eq!(Ns.to_ms(-1_000_000), Some(-1));
        assert_eq!(Ns.to_ms(-1_000_001), Some(-2));
        assert_eq!(Us.to_ms(-1), Some(-1));
        assert_eq!(Us.to_ms(1_999), Some(1));
        assert_eq!(Ns.to_ms(i64::MIN), Some(i64::MIN.div_euclid(1_000_000)));
        assert_eq!(Ms.to_ms(i64::MAX), Some(i64::MAX));
        assert_eq!(S.to_ms(-3), Some(-3_000));
        assert_eq!(S.to_ms(i64::MAX / 1_000 + 1), None);
        assert_eq!(M.to_ms(i64::MIN / 60_000 - 1), None);
        assert_eq!(H.to_ms(2), Some(7_200_000));
        assert_eq!(H.to_ms(i64::MAX / 3_600_000 + 1), None);
    }
}
