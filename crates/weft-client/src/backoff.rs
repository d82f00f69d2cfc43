//! Reconnect pacing: [`Backoff`].

use std::time::Duration;

/// Exponential backoff with jitter for reconnects: 0.5 s doubling up to
/// 30 s, each delay drawn from ±25 % around the nominal value, so a
/// thousand nodes that lost the server at once do not return at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    rng: u64,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// The first delay of [`Backoff::new`].
    pub const MIN: Duration = Duration::from_millis(500);
    /// The longest delay of [`Backoff::new`].
    pub const MAX: Duration = Duration::from_secs(30);

    /// Creates a backoff (0.5 s … 30 s) whose jitter comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_bounds(seed, Self::MIN, Self::MAX)
    }

    /// Creates a backoff between `min` and `max`.
    pub fn with_bounds(seed: u64, min: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            rng: seed | 1,
            min,
            max,
        }
    }

    /// Returns the next delay.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .min
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: cheap and reproducible from the seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 1001) as f64 / 1000.0;
        nominal.mul_f64(0.75 + 0.5 * frac).min(self.max)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_with_jitter_and_resets() {
        let mut b = Backoff::new(7);
        let first = b.next_delay();
        assert!(first >= Backoff::MIN.mul_f64(0.75) && first <= Backoff::MIN.mul_f64(1.25));
        let later: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Backoff::MAX));
        assert!(
            later
                .iter()
                .rev()
                .take(5)
                .all(|d| *d >= Backoff::MAX.mul_f64(0.75))
        );
        let distinct: std::collections::BTreeSet<_> = later.iter().collect();
        assert!(distinct.len() > 5, "jitter spreads the delays");
        b.reset();
        assert!(b.next_delay() <= Backoff::MIN.mul_f64(1.25));
    }
}
