//! Where time enters weftd: the one place the daemon (both modes) reads the
//! monotonic clock or wall time. Everything below takes `now` from here, so
//! the cores stay on the time they are given (clippy's `disallowed-methods`
//! refuses `Instant::now` and `SystemTime::now` everywhere else; tests take
//! their base instant in their own modules).

use std::time::{Instant, SystemTime};

use weft_types::UnixMillis;

/// Returns the monotonic clock's now.
#[allow(clippy::disallowed_methods)] // the daemon's one clock
pub fn now() -> Instant {
    Instant::now()
}

/// Returns wall time (handshake stamps, ages shown to the user).
#[allow(clippy::disallowed_methods)] // the daemon's one wall clock
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// Returns wall time in Unix milliseconds (expiry checks, state stamps).
pub fn unix_now() -> UnixMillis {
    let ms = wall()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}
