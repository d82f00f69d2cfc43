//! One peer's path state: which of its UDP endpoints answer, how fast, and
//! which one WireGuard should use.
//!
//! The timing follows Tailscale's magicsock constants (see
//! `research/tailscale.md` §1.6):
//! * a path is **trusted** for [`TRUST_DURATION`] (6.5 s) after its last pong;
//! * while trusted, the best path gets a **heartbeat** ping every
//!   [`HEARTBEAT_INTERVAL`] (3 s), so one lost pong does not lose the path;
//! * with no trusted path every candidate is pinged, at most once per
//!   [`DISCOVERY_INTERVAL`] (5 s) each;
//! * every [`UPGRADE_INTERVAL`] (60 s) all candidates are pinged again, to
//!   find a better path than the current one;
//! * a ping with no pong after [`PING_TIMEOUT`] (5 s) is lost.
//!
//! The first endpoint that answers becomes the best path; a later one
//! replaces it only if its round trip is clearly shorter (less than
//! [`BETTER_RATIO`] of the current one), so the choice does not flap.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a path stays trusted after its last pong.
pub const TRUST_DURATION: Duration = Duration::from_millis(6500);
/// How often the trusted best path is pinged.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// The shortest time between two discovery pings to one endpoint.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// How often all endpoints are pinged while a path is trusted.
pub const UPGRADE_INTERVAL: Duration = Duration::from_secs(60);
/// How long to wait for a pong.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// A new path replaces the best one only if its RTT is below this fraction.
pub const BETTER_RATIO: f64 = 0.8;
/// The most candidates kept per peer (reported plus learned).
pub const MAX_CANDIDATES: usize = 32;

/// The best path changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BestChange {
    /// The new best path; `None` when no path is trusted any more.
    pub addr: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
struct Candidate {
    /// When it became a candidate (a never-pinged candidate is due then).
    added: Instant,
    /// Reported by the peer through control (kept across endpoint updates
    /// only while reported); otherwise learned from an incoming ping.
    reported: bool,
    last_ping: Option<Instant>,
    last_pong: Option<Instant>,
    rtt: Option<Duration>,
}

impl Candidate {
    fn new(now: Instant) -> Self {
        Self {
            added: now,
            reported: false,
            last_ping: None,
            last_pong: None,
            rtt: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Best {
    addr: SocketAddr,
    rtt: Duration,
    trusted_until: Instant,
}

/// One peer's path prober. Driving loop: [`PathProber::due_pings`] at
/// [`PathProber::poll_timeout`], [`PathProber::handle_pong`] for each pong,
/// [`PathProber::handle_timeout`] to expire trust.
#[derive(Debug, Clone, Default)]
pub struct PathProber {
    candidates: BTreeMap<SocketAddr, Candidate>,
    best: Option<Best>,
    last_full_probe: Option<Instant>,
}

impl PathProber {
    /// Creates a prober with no candidates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the endpoints the peer reported. New ones are pinged at the
    /// next [`PathProber::due_pings`]; the best path stays if still trusted.
    /// Returns whether the set changed.
    pub fn set_endpoints(
        &mut self,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) -> bool {
        let new: std::collections::BTreeSet<SocketAddr> = endpoints.into_iter().collect();
        let old: std::collections::BTreeSet<SocketAddr> = self
            .candidates
            .iter()
            .filter(|(_, c)| c.reported)
            .map(|(a, _)| *a)
            .collect();
        if new == old {
            return false;
        }
        let best = self.best.map(|b| b.addr);
        self.candidates
            .retain(|a, c| new.contains(a) || (!c.reported) || Some(*a) == best);
        for addr in new {
            if self.candidates.len() >= MAX_CANDIDATES {
                break;
            }
            self.candidates
                .entry(addr)
                .or_insert_with(|| Candidate::new(now))
                .reported = true;
        }
        true
    }

    /// Adds an address the peer pinged us from (it may be reachable there
    /// even if it did not report it).
    pub fn note_candidate(&mut self, addr: SocketAddr, now: Instant) {
        if self.candidates.len() < MAX_CANDIDATES || self.candidates.contains_key(&addr) {
            self.candidates
                .entry(addr)
                .or_insert_with(|| Candidate::new(now));
        }
    }

    /// Returns the endpoints the peer reported (sorted).
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates
            .iter()
            .filter(|(_, c)| c.reported)
            .map(|(a, _)| *a)
    }

    /// Returns every candidate (reported or learned), sorted.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates.keys().copied()
    }

    /// Returns the best path if it is trusted at `now`.
    pub fn best_addr(&self, now: Instant) -> Option<SocketAddr> {
        self.best.filter(|b| now < b.trusted_until).map(|b| b.addr)
    }

    /// Returns the best path's last round-trip time.
    pub fn best_rtt(&self) -> Option<Duration> {
        self.best.map(|b| b.rtt)
    }

    /// Returns the addresses to ping now, and notes them as pinged.
    pub fn due_pings(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        match self.best.filter(|b| now < b.trusted_until) {
            Some(best) => {
                let full_due = self
                    .last_full_probe
                    .is_none_or(|t| now >= t + UPGRADE_INTERVAL);
                if full_due {
                    self.last_full_probe = Some(now);
                    for (addr, c) in &mut self.candidates {
                        c.last_ping = Some(now);
                        out.push(*addr);
                    }
                } else if let Some(c) = self.candidates.get_mut(&best.addr)
                    && c.last_ping.is_none_or(|t| now >= t + HEARTBEAT_INTERVAL)
                {
                    c.last_ping = Some(now);
                    out.push(best.addr);
                }
            }
            None => {
                for (addr, c) in &mut self.candidates {
                    if c.last_ping.is_none_or(|t| now >= t + DISCOVERY_INTERVAL) {
                        c.last_ping = Some(now);
                        out.push(*addr);
                    }
                }
                if !out.is_empty() {
                    self.last_full_probe = Some(now);
                }
            }
        }
        out
    }

    /// Records a pong that arrived for a ping sent to `addr` `rtt` ago.
    /// Returns the change of best path, if any.
    pub fn handle_pong(
        &mut self,
        addr: SocketAddr,
        rtt: Duration,
        now: Instant,
    ) -> Option<BestChange> {
        let c = self
            .candidates
            .entry(addr)
            .or_insert_with(|| Candidate::new(now));
        c.last_pong = Some(now);
        c.rtt = Some(rtt);
        let trusted_until = now + TRUST_DURATION;
        match &mut self.best {
            Some(b) if b.addr == addr => {
                let was_trusted = now < b.trusted_until;
                b.rtt = rtt;
                b.trusted_until = trusted_until;
                (!was_trusted).then_some(BestChange { addr: Some(addr) })
            }
            Some(b)
                if now < b.trusted_until
                    && rtt.as_secs_f64() >= b.rtt.as_secs_f64() * BETTER_RATIO =>
            {
                None
            }
            _ => {
                self.best = Some(Best {
                    addr,
                    rtt,
                    trusted_until,
                });
                Some(BestChange { addr: Some(addr) })
            }
        }
    }

    /// Expires the best path once its trust runs out. Returns the change.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<BestChange> {
        let b = self.best?;
        if now < b.trusted_until {
            return None;
        }
        // Prefer another candidate that is still trusted.
        let next = self
            .candidates
            .iter()
            .filter_map(|(a, c)| {
                let pong = c.last_pong?;
                (now < pong + TRUST_DURATION).then_some((*a, c.rtt.unwrap_or(Duration::MAX), pong))
            })
            .min_by_key(|(_, rtt, _)| *rtt);
        match next {
            Some((addr, rtt, pong)) => {
                self.best = Some(Best {
                    addr,
                    rtt,
                    trusted_until: pong + TRUST_DURATION,
                });
                Some(BestChange { addr: Some(addr) })
            }
            None => {
                self.best = None;
                Some(BestChange { addr: None })
            }
        }
    }

    /// Returns when [`PathProber::due_pings`] or
    /// [`PathProber::handle_timeout`] next has something to do (a deadline
    /// in the past is due at once).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let trust = self.best.map(|b| b.trusted_until);
        let pings = match self.best {
            Some(b) => {
                let heartbeat = self
                    .candidates
                    .get(&b.addr)
                    .map(|c| c.last_ping.map_or(c.added, |t| t + HEARTBEAT_INTERVAL));
                let full = self.last_full_probe.map(|t| t + UPGRADE_INTERVAL);
                heartbeat.into_iter().chain(full).min()
            }
            None => self
                .candidates
                .values()
                .map(|c| c.last_ping.map_or(c.added, |t| t + DISCOVERY_INTERVAL))
                .min(),
        };
        trust.into_iter().chain(pings).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the tests' one base instant
        Instant::now()
    }
    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_reported_endpoint_is_pinged_at_once_and_the_first_pong_wins() {
        let now = t0();
        let mut p = PathProber::new();
        p.set_endpoints([a("198.18.0.1:41641"), a("198.18.1.1:41641")], now);
        assert_eq!(p.poll_timeout(), Some(now));
        assert_eq!(p.due_pings(now).len(), 2);
        assert!(
            p.due_pings(now).is_empty(),
            "no second ping within the discovery interval"
        );
        let ms = Duration::from_millis;
        let change = p.handle_pong(a("198.18.1.1:41641"), ms(4), now + ms(4));
        assert_eq!(
            change,
            Some(BestChange {
                addr: Some(a("198.18.1.1:41641"))
            })
        );
        // A slightly faster second answer does not replace it (hysteresis)...
        assert_eq!(
            p.handle_pong(a("198.18.0.1:41641"), ms(5), now + ms(5)),
            None
        );
        // ...a much faster one does.
        let change = p.handle_pong(a("198.18.0.1:41641"), ms(1), now + ms(6));
        assert_eq!(
            change,
            Some(BestChange {
                addr: Some(a("198.18.0.1:41641"))
            })
        );
    }

    #[test]
    fn a_path_without_pongs_loses_trust_after_six_and_a_half_seconds() {
        let now = t0();
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e], now);
        p.due_pings(now);
        p.handle_pong(e, Duration::from_millis(1), now);
        assert_eq!(p.best_addr(now + Duration::from_secs(6)), Some(e));
        assert_eq!(p.handle_timeout(now + Duration::from_secs(6)), None);
        let later = now + TRUST_DURATION;
        assert_eq!(p.best_addr(later), None);
        assert_eq!(p.handle_timeout(later), Some(BestChange { addr: None }));
        // Back to discovery: the endpoint is pinged again.
        assert_eq!(p.due_pings(later), vec![e]);
    }

    #[test]
    fn heartbeats_keep_a_path_trusted() {
        let now = t0();
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e, a("198.18.0.2:41641")], now);
        p.due_pings(now);
        p.handle_pong(e, Duration::from_millis(1), now);
        let mut t = now;
        for _ in 0..10 {
            t += HEARTBEAT_INTERVAL;
            assert!(p.poll_timeout().is_some_and(|d| d <= t));
            let pings = p.due_pings(t);
            assert_eq!(pings, vec![e], "only the best path gets heartbeats");
            assert_eq!(p.handle_pong(e, Duration::from_millis(1), t), None);
            assert_eq!(p.handle_timeout(t), None);
        }
        assert_eq!(p.best_addr(t), Some(e));
    }

    #[test]
    fn all_candidates_are_probed_again_after_the_upgrade_interval() {
        let now = t0();
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e, a("198.18.0.2:41641")], now);
        p.due_pings(now);
        p.handle_pong(e, Duration::from_millis(1), now);
        let mut t = now;
        while t + HEARTBEAT_INTERVAL < now + UPGRADE_INTERVAL {
            t += HEARTBEAT_INTERVAL;
            assert_eq!(p.due_pings(t).len(), 1);
            p.handle_pong(e, Duration::from_millis(1), t);
        }
        assert_eq!(p.due_pings(now + UPGRADE_INTERVAL).len(), 2);
    }

    #[test]
    fn new_endpoints_are_pinged_and_dropped_ones_forgotten() {
        let now = t0();
        let mut p = PathProber::new();
        assert!(p.set_endpoints([a("198.18.0.1:1")], now));
        assert!(!p.set_endpoints([a("198.18.0.1:1")], now));
        p.due_pings(now);
        assert!(p.set_endpoints([a("198.18.0.2:1")], now));
        assert_eq!(p.endpoints().collect::<Vec<_>>(), vec![a("198.18.0.2:1")]);
        assert_eq!(p.due_pings(now), vec![a("198.18.0.2:1")]);
    }
}
