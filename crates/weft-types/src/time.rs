//! Wall-clock times on the wire: integer unix milliseconds.
//!
//! The project stores and sends every point in time as milliseconds since the
//! unix epoch in an `i64` (negative values are before 1970 and never occur in
//! practice). [`UnixMillis`] gives that integer a type so it is not confused
//! with a duration or a count.

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

#[cfg(test)]
mod tests {
    use super::*;

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
