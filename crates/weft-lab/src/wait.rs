//! Waiting for conditions instead of sleeping.
//!
//! A probe is called until it reports success or the time limit passes. Between calls the harness
//! sleeps with exponential backoff (10 ms doubling to 250 ms), so a fast condition is seen fast and
//! a slow one does not burn a core. On timeout the error names what was awaited and what the probe
//! last said, which is usually the whole diagnosis ("timed out after 10s waiting for handshake
//! wfab-0 → wfab-1; last observation: latest-handshake = 0").

use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Polls `probe` until it returns `Ok(true)`, for at most `timeout`.
///
/// `Ok(false)` means "not yet"; `Err(e)` also means "not yet" but is remembered, so a timeout
/// reports the last error (for example the stderr of a `ping` that keeps failing).
///
/// # Errors
/// [`LabError::Timeout`] naming `what` and the last observation.
pub fn wait_until(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<bool>,
) -> Result<()> {
    wait_for(timeout, what, || Ok(probe()?.then_some(())))
}

/// Polls `probe` until it returns `Ok(Some(value))` and returns that value; like [`wait_until`]
/// otherwise.
///
/// # Errors
/// [`LabError::Timeout`] naming `what` and the last observation.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> Result<T> {
    let start = now();
    let mut backoff = FIRST_BACKOFF;
    loop {
        let last = match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("condition not met yet (probe returned false)"),
            Err(e) => format!("{e:#}"),
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                waited,
                last,
            });
        }
        std::thread::sleep(backoff.min(timeout - waited));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Wraps a probe's observation into an error, for probes that want the timeout message to say
/// what they saw rather than "returned false": `return Err(observed(format!("rx = {rx}")))`.
pub fn observed(what: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{what}")
}

/// The harness's single entry point for wall-clock time (tests time out in real time).
#[allow(clippy::disallowed_methods)] // the harness drives real processes: real time is the point
pub fn now() -> Instant {
    Instant::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_as_soon_as_the_probe_succeeds() {
        let mut calls = 0;
        wait_until(Duration::from_secs(5), "third call", || {
            calls += 1;
            Ok(calls == 3)
        })
        .unwrap();
        assert_eq!(calls, 3);
    }

    #[test]
    fn returns_the_value_the_probe_found() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "n > 1", || {
            n += 1;
            Ok((n > 1).then_some(n * 10))
        })
        .unwrap();
        assert_eq!(v, 20);
    }

    #[test]
    fn timeout_names_what_was_awaited_and_the_last_error() {
        let mut n = 0;
        let err = wait_until(Duration::from_millis(50), "the moon to turn blue", || {
            n += 1;
            anyhow::bail!("attempt {n}: still grey")
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("waiting for the moon to turn blue"), "{msg}");
        assert!(msg.contains(&format!("attempt {n}: still grey")), "{msg}");
    }

    #[test]
    fn timeout_after_false_says_so_after_polling_more_than_once() {
        let mut n = 0;
        let err = wait_until(Duration::from_millis(200), "never", || {
            n += 1;
            Ok(false)
        })
        .unwrap_err();
        assert!(err.to_string().contains("probe returned false"), "{err}");
        assert!(n >= 2, "probe ran {n} times");
    }
}
