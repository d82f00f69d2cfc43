//! The per-node budget of host-info changes that control fans out.
//!
//! A host-info change goes to every peer that sees the node (a full
//! `peer`/`changed`), so a node that reports a new one many times a second
//! would make control repeat it to the whole tailnet. Each node may make
//! [`HOST_INFO_BURST`] changes at once and one more per
//! [`HOST_INFO_REFILL`] (6 per minute sustained). A change beyond that is
//! held, not dropped: only the latest held one is kept (coalesced), and it
//! is applied as soon as the budget allows. Real nodes change host info a
//! few times a day (SSH turned on, shields up), far below the budget.
//!
//! A token bucket on the coordinator's wall clock; pure, tested on
//! virtual time.

use std::time::Duration;

use weft_types::UnixMillis;

/// Host-info changes a node may make at once.
pub(crate) const HOST_INFO_BURST: u32 = 6;
/// After a burst, one more change is allowed every this long.
pub(crate) const HOST_INFO_REFILL: Duration = Duration::from_secs(10);

/// One node's remaining changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Budget {
    tokens: u32,
    /// When the refill clock last started (a token is due one
    /// [`HOST_INFO_REFILL`] later).
    since: UnixMillis,
}

impl Budget {
    /// Returns a full budget.
    pub(crate) fn new(now: UnixMillis) -> Self {
        Self {
            tokens: HOST_INFO_BURST,
            since: now,
        }
    }

    /// Spends one change if there is one left at `now`.
    pub(crate) fn take(&mut self, now: UnixMillis) -> bool {
        self.refill(now);
        if self.tokens == 0 {
            return false;
        }
        if self.tokens == HOST_INFO_BURST {
            self.since = now;
        }
        self.tokens -= 1;
        true
    }

    /// Returns when the next change is allowed (`since` + one refill).
    pub(crate) fn next_at(&self) -> UnixMillis {
        self.since.saturating_add(HOST_INFO_REFILL)
    }

    fn refill(&mut self, now: UnixMillis) {
        if self.tokens >= HOST_INFO_BURST {
            return;
        }
        let step = i64::try_from(HOST_INFO_REFILL.as_millis()).unwrap_or(i64::MAX);
        let elapsed = now.0.saturating_sub(self.since.0).max(0);
        let due = elapsed / step;
        if due == 0 {
            return;
        }
        let added = u32::try_from(due).unwrap_or(u32::MAX);
        self.tokens = self.tokens.saturating_add(added).min(HOST_INFO_BURST);
        self.since = UnixMillis(self.since.0.saturating_add(due.saturating_mul(step)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: UnixMillis = UnixMillis(1_800_000_000_000);

    fn at(ms: i64) -> UnixMillis {
        UnixMillis(T0.0 + ms)
    }

    #[test]
    fn a_burst_is_allowed_then_one_change_per_refill() {
        let mut b = Budget::new(T0);
        for i in 0..HOST_INFO_BURST {
            assert!(b.take(at(i64::from(i))), "change {i} of the burst");
        }
        assert!(!b.take(at(10)));
        assert_eq!(b.next_at(), at(10_000));
        assert!(!b.take(at(9_999)));
        assert!(b.take(at(10_000)));
        assert!(!b.take(at(10_001)));
        assert_eq!(b.next_at(), at(20_000));
        assert!(b.take(at(20_000)));
    }

    #[test]
    fn the_sustained_rate_is_six_per_minute() {
        let mut b = Budget::new(T0);
        // One attempt every 100 ms for ten minutes.
        let taken = (0..6_000).filter(|i| b.take(at(i * 100))).count();
        assert_eq!(taken, HOST_INFO_BURST as usize + 10 * 6 - 1);
    }

    #[test]
    fn an_idle_node_gets_its_whole_burst_back_and_no_more() {
        let mut b = Budget::new(T0);
        for _ in 0..HOST_INFO_BURST {
            assert!(b.take(T0));
        }
        let later = at(3_600_000);
        let taken = (0..100).filter(|_| b.take(later)).count();
        assert_eq!(taken, HOST_INFO_BURST as usize);
    }

    #[test]
    fn a_clock_going_backwards_grants_nothing() {
        let mut b = Budget::new(T0);
        for _ in 0..HOST_INFO_BURST {
            assert!(b.take(T0));
        }
        assert!(!b.take(at(-60_000)));
        assert!(b.take(at(10_000)));
    }
}
