//! Wall-clock time for the server: node-key expiry, the ephemeral-node
//! grace period, `last_seen`, pre-auth key expiry. The server reads it only
//! through a [`Clock`], so tests can jump forward by days and watch expiry
//! happen at once instead of sleeping.
//!
//! Timers that wait for a wall-clock deadline use [`sleep_until`], which
//! also wakes when a test clock jumps.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use weft_types::UnixMillis;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the current time.
    fn now(&self) -> UnixMillis;

    /// Returns a receiver that changes whenever the clock jumps (test clocks
    /// only; the system clock returns `None`).
    fn jumps(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// The operating system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // where wall time enters the server
    fn now(&self) -> UnixMillis {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        UnixMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }
}

/// The system clock plus an offset that tests move forward with
/// [`TestClock::advance`]; timers waiting in [`sleep_until`] re-check at
/// once.
#[derive(Debug)]
pub struct TestClock {
    offset_ms: AtomicI64,
    jumps: watch::Sender<u64>,
}

impl TestClock {
    /// Creates a clock that starts at the system time.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            offset_ms: AtomicI64::new(0),
            jumps: watch::Sender::new(0),
        })
    }

    /// Moves the clock forward by `d` and wakes every timer.
    pub fn advance(&self, d: Duration) {
        let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        self.jumps.send_modify(|n| *n += 1);
    }
}

impl Clock for TestClock {
    fn now(&self) -> UnixMillis {
        UnixMillis(
            SystemClock
                .now()
                .0
                .saturating_add(self.offset_ms.load(Ordering::SeqCst)),
        )
    }

    fn jumps(&self) -> Option<watch::Receiver<u64>> {
        Some(self.jumps.subscribe())
    }
}

/// Sleeps until the clock shows `deadline` (or later). Real time is used
/// for the wait; a jumping clock wakes it early to re-check.
pub async fn sleep_until(clock: &dyn Clock, deadline: UnixMillis) {
    let mut jumps = clock.jumps();
    loop {
        let now = clock.now();
        if now >= deadline {
            return;
        }
        let wait = deadline.saturating_since(now);
        match jumps.as_mut() {
            Some(rx) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    r = rx.changed() => {
                        if r.is_err() {
                            jumps = None;
                        }
                    }
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

/// Formats a duration compactly (`3d4h`, `5m`, `12s`).
pub fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86_400 => {
            let (h, m) = (s / 3600, (s % 3600) / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, (s % 86_400) / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_jump_of_the_test_clock_wakes_a_sleeper_at_once() {
        let clock = TestClock::new();
        let deadline = clock.now().saturating_add(Duration::from_secs(3600));
        let c = clock.clone();
        let sleeper = tokio::spawn(async move { sleep_until(&*c, deadline).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3601));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .unwrap()
            .unwrap();
    }
}
