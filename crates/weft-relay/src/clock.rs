//! Where the drivers of this crate read the clock: once, here.

use std::time::Instant;

/// Returns the current instant (the cores take it as `now`).
#[allow(clippy::disallowed_methods)] // drivers read the clock; cores do not
pub(crate) fn now() -> Instant {
    Instant::now()
}
