//! Wall-clock times on the wire: integer unix milliseconds.
//!
//! The project stores and sends every point in time as milliseconds since the
//! unix epoch in an `i64` (negative values are before 1970 and never occur in
//! practice). [`UnixMillis`] gives that integer a type so it is not confused
//! with a duration or a count.
//!
//! Durations typed by people (both CLIs' flags) are read by one function,
//! [`parse_duration`].

use std::fmt;
use std::time::Duration;

/// A point in wall-clock time: milliseconds since 1970-01-01T00:00:00Z.
///
/// Serializes as a bare JSON integer.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The epoch itself.
    pub const EPOCH: UnixMillis = UnixMillis(0);

    /// Returns the time `d` later, saturating at `i64::MAX`.
    pub fn saturating_add(self, d: Duration) -> UnixMillis {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Returns how long after `earlier` this time is (zero if it is not later).
    pub fn saturating_since(self, earlier: UnixMillis) -> Duration {
        Duration::from_millis(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// Why a duration did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {text:?}: {reason}")]
pub struct DurationError {
    text: String,
    reason: &'static str,
}

/// Parses a duration as people type it on a command line: one or more
/// number-and-unit pairs with nothing between them, the units `ms`, `s`,
/// `m`, `h` and `d` (24 hours), e.g. `500ms`, `90s`, `15m`, `24h`, `7d`,
/// `1h30m`; a bare `0` means zero. Go's `time.ParseDuration` reads the
/// same text, except `d`, which Go lacks. Surrounding whitespace is
/// ignored; signs, fractions and spaces between pairs are not accepted.
///
/// # Errors
/// [`DurationError`] naming the text and what a duration looks like, or
/// that it is too long to represent.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let bad = |reason| DurationError {
        text: text.to_owned(),
        reason,
    };
    let shape = "write a number and a unit (ms, s, m, h, d), e.g. 500ms, 90s, 15m, 24h, 7d or 1h30m; 0 alone means zero";
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(bad(shape));
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad(shape));
        }
        let (number, tail) = rest.split_at(digits);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        rest = tail;
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad(shape)),
        };
        let too_long = || bad("it is too long");
        let n: u64 = number.parse().map_err(|_| too_long())?;
        let ms = n.checked_mul(unit_ms).ok_or_else(too_long)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_the_usual_units_and_sums_of_them() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(
            parse_duration("180d"),
            Ok(Duration::from_secs(180 * 86_400))
        );
        assert_eq!(
            parse_duration("1d2h3m4s5ms"),
            Ok(Duration::from_millis(93_784_005))
        );
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
    }

    #[test]
    fn anything_else_is_refused_with_what_a_duration_looks_like() {
        for bad in [
            "", " ", "h", "s", "10", "1m3", "ten", "5x", "10x", "-5s", "-5m", "+5s", "1.5h",
            "1h 30m", "5M", "5 s", "0.5s", "ms",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.to_string().contains("invalid duration"), "{bad:?}: {e}");
            assert!(e.to_string().contains("e.g. 500ms, 90s"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_duration_too_long_to_represent_is_refused_not_wrapped() {
        for text in ["99999999999999999999s", "300000000000d", "213503982335d"] {
            let e = parse_duration(text).unwrap_err();
            assert!(e.to_string().contains("too long"), "{text}: {e}");
        }
    }

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        let t = UnixMillis(i64::MAX - 1);
        assert_eq!(
            t.saturating_add(Duration::from_secs(10)),
            UnixMillis(i64::MAX)
        );
        assert_eq!(
            UnixMillis(5).saturating_since(UnixMillis(10)),
            Duration::ZERO
        );
        assert_eq!(
            UnixMillis(1500).saturating_since(UnixMillis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            serde_json::to_string(&UnixMillis(1_700_000_000_000)).unwrap(),
            "1700000000000"
        );
    }
}
