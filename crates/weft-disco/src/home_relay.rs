//! Choosing our home relay region: the one peers reach us through.
//!
//! Inputs are latency samples per region (STUN round trips from netcheck,
//! relay Ping/Pong or HTTPS latency checks the driver runs) and the state of
//! our connection to each region's relay. The output is one region, which
//! changes only for a clear reason, because every change makes every peer
//! send to us somewhere else (Tailscale: `addReportHistoryAndSetPreferredDERP`
//! in `net/netcheck`):
//!
//! * A region's **score** is the median of its last [`SAMPLES_KEPT`] samples
//!   no older than [`HISTORY`] (5 min): one slow or fast sample moves nothing.
//! * With no home yet, the best-scored region that is not down becomes home.
//! * The home is **replaced at once** when its connection is down, it left
//!   the relay map, or it has no recent samples while another region has
//!   (if nothing else qualifies it stays: the driver keeps reconnecting).
//! * Otherwise a challenger needs [`MIN_CHALLENGER_SAMPLES`] samples and a
//!   score at most [`SWITCH_RATIO`] (2/3) of the home's *and* at least
//!   [`SWITCH_MIN_GAIN`] (10 ms) lower — Tailscale's one-third rule plus
//!   an absolute margin, so that 1 ms against 2 ms on a LAN is not a reason
//!   to move.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::path::RegionId;

/// How long a latency sample counts.
pub const HISTORY: Duration = Duration::from_secs(5 * 60);
/// How many recent samples per region the score is the median of.
pub const SAMPLES_KEPT: usize = 5;
/// How many samples a region needs before it can take over from a home
/// that still works.
pub const MIN_CHALLENGER_SAMPLES: usize = 3;
/// A challenger's score must be at most this fraction of the home's
/// (numerator, denominator).
pub const SWITCH_RATIO: (u32, u32) = (2, 3);
/// ...and at least this much lower.
pub const SWITCH_MIN_GAIN: Duration = Duration::from_millis(10);

/// What we know about our connection to a region's relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayHealth {
    /// Not connected, or not tried.
    #[default]
    Unknown,
    /// Connected.
    Up,
    /// The connection failed or was lost.
    Down,
}

/// The home region changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HomeChange {
    /// The new home; `None` when no region is left.
    pub region: Option<RegionId>,
}

#[derive(Debug, Clone, Default)]
struct Region {
    samples: VecDeque<(Instant, Duration)>,
    health: RelayHealth,
}

impl Region {
    fn score(&self) -> Option<Duration> {
        let mut s: Vec<Duration> = self.samples.iter().map(|(_, d)| *d).collect();
        if s.is_empty() {
            return None;
        }
        s.sort();
        Some(s[(s.len() - 1) / 2])
    }

    fn eligible(&self) -> bool {
        self.health != RelayHealth::Down && !self.samples.is_empty()
    }
}

/// Home relay selection with hysteresis (see the module docs). Every input
/// returns the change it caused, if any.
#[derive(Debug, Clone, Default)]
pub struct HomeRelay {
    regions: BTreeMap<RegionId, Region>,
    home: Option<RegionId>,
}

impl HomeRelay {
    /// Creates a selector with no regions.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the home region.
    pub fn home(&self) -> Option<RegionId> {
        self.home
    }

    /// Returns a region's score: the median of its recent samples.
    pub fn latency(&self, region: RegionId) -> Option<Duration> {
        self.regions.get(&region)?.score()
    }

    /// Returns what we know about our connection to a region.
    pub fn health(&self, region: RegionId) -> Option<RelayHealth> {
        self.regions.get(&region).map(|r| r.health)
    }

    /// Replaces the set of regions (the relay map changed). Samples of
    /// regions that stay are kept.
    pub fn set_regions(
        &mut self,
        regions: impl IntoIterator<Item = RegionId>,
        now: Instant,
    ) -> Option<HomeChange> {
        let mut next: BTreeMap<RegionId, Region> = BTreeMap::new();
        for id in regions {
            let r = self.regions.remove(&id).unwrap_or_default();
            next.insert(id, r);
        }
        self.regions = next;
        self.decide(now)
    }

    /// Records one latency sample for `region`.
    pub fn handle_latency(
        &mut self,
        region: RegionId,
        rtt: Duration,
        now: Instant,
    ) -> Option<HomeChange> {
        self.handle_latencies([(region, rtt)], now)
    }

    /// Records a batch of samples (one netcheck report), then decides once.
    pub fn handle_latencies(
        &mut self,
        samples: impl IntoIterator<Item = (RegionId, Duration)>,
        now: Instant,
    ) -> Option<HomeChange> {
        for (region, rtt) in samples {
            let Some(r) = self.regions.get_mut(&region) else {
                continue;
            };
            r.samples.push_back((now, rtt));
            while r.samples.len() > SAMPLES_KEPT {
                r.samples.pop_front();
            }
        }
        self.decide(now)
    }

    /// Records that our connection to `region`'s relay came up or went down.
    pub fn handle_connection(
        &mut self,
        region: RegionId,
        up: bool,
        now: Instant,
    ) -> Option<HomeChange> {
        let r = self.regions.get_mut(&region)?;
        r.health = if up {
            RelayHealth::Up
        } else {
            RelayHealth::Down
        };
        self.decide(now)
    }

    /// Picks a home when there is none and no region has samples (UDP is
    /// blocked and nothing was measured over a relay yet): the connected
    /// region with the lowest id, else the lowest id not down. Latency
    /// samples measured over that connection refine the choice later.
    pub fn fall_back(&mut self) -> Option<HomeChange> {
        if self.home.is_some() {
            return None;
        }
        let pick = self
            .regions
            .iter()
            .find(|(_, r)| r.health == RelayHealth::Up)
            .or_else(|| {
                self.regions
                    .iter()
                    .find(|(_, r)| r.health != RelayHealth::Down)
            })
            .map(|(id, _)| *id)?;
        self.home = Some(pick);
        Some(HomeChange { region: Some(pick) })
    }

    /// Forgets samples older than [`HISTORY`] and decides again.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<HomeChange> {
        self.decide(now)
    }

    /// Returns when the oldest sample expires.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.regions
            .values()
            .filter_map(|r| r.samples.front().map(|(t, _)| *t + HISTORY))
            .min()
    }

    fn expire(&mut self, now: Instant) {
        for r in self.regions.values_mut() {
            while r.samples.front().is_some_and(|(t, _)| now >= *t + HISTORY) {
                r.samples.pop_front();
            }
        }
    }

    fn decide(&mut self, now: Instant) -> Option<HomeChange> {
        self.expire(now);
        let best_of = |min_samples: usize, except: Option<RegionId>| {
            self.regions
                .iter()
                .filter(|(id, r)| {
                    Some(**id) != except && r.eligible() && r.samples.len() >= min_samples
                })
                .filter_map(|(id, r)| Some((r.score()?, *id)))
                .min()
                .map(|(score, id)| (id, score))
        };
        let next = match self.home {
            None => best_of(1, None).map(|(id, _)| id),
            Some(h) => match self.regions.get(&h) {
                None => best_of(1, None).map(|(id, _)| id),
                Some(home) if home.health == RelayHealth::Down || home.samples.is_empty() => {
                    best_of(1, Some(h)).map(|(id, _)| id).or(Some(h))
                }
                Some(home) => {
                    let home_score = home.score().unwrap_or(Duration::MAX);
                    match best_of(MIN_CHALLENGER_SAMPLES, Some(h)) {
                        Some((c, score)) if clearly_better(score, home_score) => Some(c),
                        _ => Some(h),
                    }
                }
            },
        };
        if next == self.home {
            return None;
        }
        self.home = next;
        Some(HomeChange { region: next })
    }
}

/// Whether `challenger` beats `home` by the switching margins.
fn clearly_better(challenger: Duration, home: Duration) -> bool {
    let (num, den) = SWITCH_RATIO;
    challenger.saturating_mul(den) <= home.saturating_mul(num)
        && home.saturating_sub(challenger) >= SWITCH_MIN_GAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the tests' one base instant
        Instant::now()
    }
    const A: RegionId = RegionId(1);
    const B: RegionId = RegionId(2);
    const C: RegionId = RegionId(3);
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn selector(now: Instant) -> HomeRelay {
        let mut h = HomeRelay::new();
        assert_eq!(h.set_regions([A, B, C], now), None);
        h
    }

    #[test]
    fn the_first_report_picks_the_fastest_region() {
        let now = t0();
        let mut h = selector(now);
        let change = h.handle_latencies([(A, ms(40)), (B, ms(12)), (C, ms(90))], now);
        assert_eq!(change, Some(HomeChange { region: Some(B) }));
        assert_eq!(h.home(), Some(B));
    }

    #[test]
    fn noisy_samples_never_move_the_home() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(30)), (B, ms(32))], now);
        assert_eq!(h.home(), Some(A));
        // Each region has a spike now and then; the other region's single
        // fast sample is no reason to move, and neither is a close race.
        let a = [30, 31, 150, 29, 30, 33, 30, 200, 31, 30, 29, 32];
        let b = [32, 5, 31, 33, 4, 30, 31, 32, 6, 33, 31, 30];
        let mut t = now;
        for (x, y) in a.iter().zip(b.iter()) {
            t += Duration::from_secs(20);
            assert_eq!(
                h.handle_latencies([(A, ms(*x)), (B, ms(*y))], t),
                None,
                "flapped at {:?}",
                t - now
            );
        }
        assert_eq!(h.home(), Some(A));
    }

    #[test]
    fn a_clearly_better_region_takes_over_after_three_samples() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(60))], now);
        assert_eq!(h.home(), Some(A));
        // B appears and is consistently much faster.
        let mut t = now;
        for i in 0..2 {
            t += Duration::from_secs(20);
            assert_eq!(
                h.handle_latencies([(A, ms(60)), (B, ms(20))], t),
                None,
                "sample {i}"
            );
        }
        t += Duration::from_secs(20);
        assert_eq!(
            h.handle_latencies([(A, ms(60)), (B, ms(20))], t),
            Some(HomeChange { region: Some(B) })
        );
    }

    #[test]
    fn a_better_region_by_less_than_a_third_or_ten_ms_does_not_take_over() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(30))], now);
        let mut t = now;
        for _ in 0..10 {
            t += Duration::from_secs(20);
            // 21 ms is 30 % better: not a third.
            assert_eq!(h.handle_latencies([(A, ms(30)), (B, ms(21))], t), None);
        }
        let mut h = selector(now);
        h.handle_latencies([(A, ms(3))], now);
        for _ in 0..10 {
            t += Duration::from_secs(20);
            // 1 ms against 3 ms: two thirds better, but only 2 ms.
            assert_eq!(h.handle_latencies([(A, ms(3)), (B, ms(1))], t), None);
        }
    }

    #[test]
    fn a_home_that_goes_down_is_replaced_at_once() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(10)), (B, ms(11)), (C, ms(50))], now);
        assert_eq!(h.home(), Some(A));
        assert_eq!(h.handle_connection(A, true, now), None);
        assert_eq!(
            h.handle_connection(A, false, now),
            Some(HomeChange { region: Some(B) })
        );
        // A comes back, faster than B but not clearly: B stays.
        assert_eq!(h.handle_connection(A, true, now), None);
        assert_eq!(h.home(), Some(B));
        h.handle_connection(B, false, now);
        assert_eq!(h.home(), Some(A));
        h.handle_connection(A, false, now);
        assert_eq!(h.home(), Some(C));
        // With everything down the home stays where it is.
        assert_eq!(h.handle_connection(C, false, now), None);
        assert_eq!(h.home(), Some(C));
    }

    #[test]
    fn samples_expire_after_five_minutes_and_a_silent_home_gives_way() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(10))], now);
        assert_eq!(h.poll_timeout(), Some(now + HISTORY));
        // Later only B is measured (A's STUN server stopped answering).
        let later = now + Duration::from_secs(200);
        assert_eq!(h.handle_latencies([(B, ms(40))], later), None);
        assert_eq!(
            h.handle_timeout(now + HISTORY),
            Some(HomeChange { region: Some(B) })
        );
        assert_eq!(h.latency(A), None);
    }

    #[test]
    fn a_home_that_leaves_the_relay_map_is_replaced() {
        let now = t0();
        let mut h = selector(now);
        h.handle_latencies([(A, ms(10)), (B, ms(20))], now);
        assert_eq!(
            h.set_regions([B, C], now),
            Some(HomeChange { region: Some(B) })
        );
        assert_eq!(h.set_regions([], now), Some(HomeChange { region: None }));
    }

    #[test]
    fn with_no_samples_at_all_the_fall_back_prefers_a_connected_region() {
        let now = t0();
        let mut h = selector(now);
        assert_eq!(h.fall_back(), Some(HomeChange { region: Some(A) }));
        let mut h = selector(now);
        h.handle_connection(A, false, now);
        h.handle_connection(C, true, now);
        assert_eq!(h.fall_back(), Some(HomeChange { region: Some(C) }));
        assert_eq!(h.fall_back(), None, "only when there is no home");
    }
}
