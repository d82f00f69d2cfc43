//! Admission control for new TCP connections: a token bucket per source
//! address plus concurrent-connection caps. Sans-IO: the caller passes `now`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The source opened connections faster than its rate allows.
    #[error("connection rate limit exceeded for this source")]
    RateLimited,
    /// The source already holds its maximum of open connections.
    #[error("too many open connections from this source")]
    TooManyFromSource,
    /// The server holds its maximum of open connections.
    #[error("too many open connections")]
    TooManyTotal,
}

#[derive(Debug, Clone)]
struct Source {
    tokens: f64,
    refilled_at: Instant,
    open: u32,
}

/// Decides whether a new connection may proceed.
#[derive(Debug)]
pub struct Admission {
    burst: f64,
    rate_per_sec: f64,
    max_per_source: u32,
    max_total: u32,
    open_total: u32,
    sources: BTreeMap<IpAddr, Source>,
}

impl Admission {
    /// Returns an empty admission table with the given limits.
    pub fn new(burst: u32, rate_per_sec: f64, max_per_source: u32, max_total: u32) -> Self {
        Admission {
            burst: f64::from(burst.max(1)),
            rate_per_sec: rate_per_sec.max(0.0),
            max_per_source,
            max_total,
            open_total: 0,
            sources: BTreeMap::new(),
        }
    }

    /// Admits a connection from `src` at `now`, counting it as open until
    /// [`Admission::release`] is called for it.
    ///
    /// # Errors
    /// Returns the [`Refusal`] when a limit is exceeded; nothing is counted then.
    pub fn try_admit(&mut self, src: IpAddr, now: Instant) -> Result<(), Refusal> {
        if self.open_total >= self.max_total {
            return Err(Refusal::TooManyTotal);
        }
        let burst = self.burst;
        let rate = self.rate_per_sec;
        let s = self.sources.entry(src).or_insert(Source {
            tokens: burst,
            refilled_at: now,
            open: 0,
        });
        let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
        s.tokens = (s.tokens + elapsed * rate).min(burst);
        s.refilled_at = now;
        if s.open >= self.max_per_source {
            return Err(Refusal::TooManyFromSource);
        }
        if s.tokens < 1.0 {
            return Err(Refusal::RateLimited);
        }
        s.tokens -= 1.0;
        s.open += 1;
        self.open_total += 1;
        self.gc(now);
        Ok(())
    }

    /// Marks one admitted connection from `src` as closed.
    pub fn release(&mut self, src: IpAddr) {
        if let Some(s) = self.sources.get_mut(&src) {
            s.open = s.open.saturating_sub(1);
            self.open_total = self.open_total.saturating_sub(1);
        }
    }

    /// Returns the number of connections currently counted as open.
    #[cfg(test)]
    pub fn open_total(&self) -> u32 {
        self.open_total
    }

    /// Forgets idle sources whose bucket has refilled, so the table stays
    /// proportional to recent activity rather than to every address ever seen.
    fn gc(&mut self, now: Instant) {
        if self.sources.len() < 1024 {
            return;
        }
        let (burst, rate) = (self.burst, self.rate_per_sec);
        self.sources.retain(|_, s| {
            let elapsed = now.saturating_duration_since(s.refilled_at).as_secs_f64();
            s.open > 0 || s.tokens + elapsed * rate < burst
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[allow(clippy::disallowed_methods)] // tests take their base instant here
    fn t0() -> Instant {
        Instant::now()
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(100, 64, 0, 2));

    #[test]
    fn a_burst_is_admitted_then_the_source_is_rate_limited_until_tokens_refill() {
        let mut a = Admission::new(3, 1.0, 100, 100);
        let now = t0();
        for _ in 0..3 {
            a.try_admit(A, now).unwrap();
        }
        assert_eq!(a.try_admit(A, now), Err(Refusal::RateLimited));
        assert_eq!(
            a.try_admit(A, now + Duration::from_millis(500)),
            Err(Refusal::RateLimited)
        );
        a.try_admit(A, now + Duration::from_millis(1000)).unwrap();
        // Another source has its own bucket.
        a.try_admit(B, now).unwrap();
    }

    #[test]
    fn concurrent_connections_are_capped_per_source_and_released_on_close() {
        let mut a = Admission::new(100, 100.0, 2, 100);
        let now = t0();
        a.try_admit(A, now).unwrap();
        a.try_admit(A, now).unwrap();
        assert_eq!(a.try_admit(A, now), Err(Refusal::TooManyFromSource));
        a.release(A);
        a.try_admit(A, now).unwrap();
        assert_eq!(a.open_total(), 2);
    }

    #[test]
    fn the_total_cap_applies_across_sources() {
        let mut a = Admission::new(100, 100.0, 100, 2);
        let now = t0();
        a.try_admit(A, now).unwrap();
        a.try_admit(B, now).unwrap();
        assert_eq!(a.try_admit(B, now), Err(Refusal::TooManyTotal));
        a.release(A);
        a.try_admit(B, now).unwrap();
    }

    #[test]
    fn releasing_an_unknown_source_changes_nothing() {
        let mut a = Admission::new(1, 1.0, 1, 1);
        a.release(A);
        assert_eq!(a.open_total(), 0);
    }
}
