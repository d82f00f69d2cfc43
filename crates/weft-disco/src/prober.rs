//! One peer's direct-path prober: which of its UDP endpoints answer, how
//! fast, and which one WireGuard should use.
//!
//! The timing follows Tailscale's magicsock constants (see
//! `research/tailscale.md` §1.6 and `docs/PATHS.md`):
//! * a path is **trusted** for [`TRUST_DURATION`] (6.5 s) after its last pong;
//! * while trusted, the best path gets a **heartbeat** ping every
//!   [`HEARTBEAT_INTERVAL`] (3 s), so one lost pong does not lose the path;
//! * a heartbeat that is not answered within [`HEARTBEAT_GRACE`] (or twice
//!   the path's round trip, if longer) is sent once more at once, and if that
//!   one is not answered either the path is **lost** at once, without waiting
//!   for the trust to run out: a path that dies is noticed at most
//!   `HEARTBEAT_INTERVAL + 2 × HEARTBEAT_GRACE` = 4.5 s after its last pong,
//!   which keeps the fall-back to the relay within 5 s;
//! * with no trusted path every candidate is pinged, at most once per
//!   [`DISCOVERY_INTERVAL`] (5 s) each;
//! * every [`UPGRADE_INTERVAL`] (60 s) all candidates are pinged again, to
//!   find a better path than the current one;
//! * a ping with no pong after [`PING_TIMEOUT`] (5 s) is lost.
//!
//! The first endpoint that answers becomes the best path; a later one
//! replaces it only if its round trip is clearly shorter (less than
//! [`BETTER_RATIO`] of the current one), so the choice does not flap.
//!
//! Candidates come from three places: the endpoints the peer reported
//! through control ([`PathProber::set_endpoints`]), the ones it listed in its
//! last CallMeMaybe ([`PathProber::set_call_me_maybe`]), and addresses it
//! pinged us from ([`PathProber::note_candidate`]). At most
//! [`MAX_CANDIDATES`] are kept; when full, a new address replaces the
//! stalest one that is neither reported nor the best path (so a peer that
//! roams many times is still found at its newest address).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a path stays trusted after its last pong.
pub const TRUST_DURATION: Duration = Duration::from_millis(6500);
/// How often the trusted best path is pinged.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3);
/// How long a heartbeat may go unanswered before it is sent again (and,
/// for the second one, before the path counts as lost). Twice the path's
/// round trip is used instead when that is longer.
pub const HEARTBEAT_GRACE: Duration = Duration::from_millis(750);
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
/// The shortest time between two pings to one address that an incoming
/// datagram asked for ([`PathProber::ping_now`]); bounds what a chatty
/// peer can make us send. Scheduled pings (discovery, bursts, heartbeats)
/// do not count against it: a peer that pings us a moment after our own
/// ping reached it before it knew us is answered with a ping at once, so
/// both sides confirm the path within one round trip of the later of them
/// learning of the other (not at the next discovery round, seconds later).
pub const REPING_INTERVAL: Duration = Duration::from_secs(1);

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
    /// only while reported).
    reported: bool,
    /// Listed in the peer's last CallMeMaybe (replaced by the next one).
    called: bool,
    last_ping: Option<Instant>,
    /// The last ping an incoming datagram asked for ([`PathProber::ping_now`]).
    last_asked_ping: Option<Instant>,
    last_pong: Option<Instant>,
    rtt: Option<Duration>,
    /// Pings sent since the last pong.
    unanswered: u32,
}

impl Candidate {
    fn new(now: Instant) -> Self {
        Self {
            added: now,
            reported: false,
            called: false,
            last_ping: None,
            last_asked_ping: None,
            last_pong: None,
            rtt: None,
            unanswered: 0,
        }
    }

    /// When it was last heard from (or added): what eviction compares.
    fn freshness(&self) -> Instant {
        self.last_pong.unwrap_or(self.added)
    }

    fn note_ping(&mut self, now: Instant) {
        self.last_ping = Some(now);
        self.unanswered = self.unanswered.saturating_add(1);
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
    /// Ping every candidate at the next [`PathProber::due_pings`],
    /// whatever their last ping.
    burst: bool,
}

impl PathProber {
    /// Creates a prober with no candidates.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces the endpoints the peer reported. New ones are pinged at the
    /// next [`PathProber::due_pings`] (also while a path is trusted); the
    /// best path stays if still trusted. Returns whether the set changed.
    pub fn set_endpoints(
        &mut self,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) -> bool {
        let new: BTreeSet<SocketAddr> = endpoints.into_iter().collect();
        let old: BTreeSet<SocketAddr> = self.endpoints().collect();
        if new == old {
            return false;
        }
        for (addr, c) in &mut self.candidates {
            if !new.contains(addr) {
                c.reported = false;
            }
        }
        // Drop what was only reported; learned and called ones stay.
        let best = self.best.map(|b| b.addr);
        self.candidates
            .retain(|a, c| c.reported || c.called || Some(*a) == best || !old.contains(a));
        for addr in new {
            if let Some(c) = self.admit(addr, now) {
                c.reported = true;
            }
        }
        true
    }

    /// Replaces the endpoints of the peer's last CallMeMaybe. New ones are
    /// pinged at the next [`PathProber::due_pings`]; to ping every candidate
    /// at once, also [`PathProber::request_burst`].
    pub fn set_call_me_maybe(
        &mut self,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) {
        let new: BTreeSet<SocketAddr> = endpoints.into_iter().collect();
        let best = self.best.map(|b| b.addr);
        // Endpoints the previous CallMeMaybe listed and this one does not
        // are forgotten, unless reported, answering, or the best path.
        self.candidates.retain(|a, c| {
            if new.contains(a) {
                return true;
            }
            let was_called = std::mem::replace(&mut c.called, false);
            !was_called || c.reported || c.last_pong.is_some() || Some(*a) == best
        });
        for addr in new {
            if let Some(c) = self.admit(addr, now) {
                c.called = true;
            }
        }
    }

    /// Adds an address the peer pinged us from (it may be reachable there
    /// even if it did not report it).
    pub fn note_candidate(&mut self, addr: SocketAddr, now: Instant) {
        self.admit(addr, now);
    }

    /// Asks for every candidate to be pinged at the next
    /// [`PathProber::due_pings`], whatever their last ping (our endpoints
    /// changed, or the peer asked with a CallMeMaybe).
    pub fn request_burst(&mut self) {
        self.burst = true;
    }

    /// Returns whether a burst is waiting for [`PathProber::due_pings`].
    pub fn burst_pending(&self) -> bool {
        self.burst && !self.candidates.is_empty()
    }

    /// Returns whether `addr` should be pinged right now because a datagram
    /// from it suggests a path (at most once per [`REPING_INTERVAL`]); if so
    /// the ping is noted as sent. Unknown addresses are added first.
    pub fn ping_now(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let Some(c) = self.admit(addr, now) else {
            return false;
        };
        if c.last_asked_ping.is_some_and(|t| now < t + REPING_INTERVAL) {
            return false;
        }
        c.last_asked_ping = Some(now);
        c.note_ping(now);
        true
    }

    /// Returns the endpoints the peer reported (sorted).
    pub fn endpoints(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates
            .iter()
            .filter(|(_, c)| c.reported)
            .map(|(a, _)| *a)
    }

    /// Returns every candidate (reported, called or learned), sorted.
    pub fn candidates(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.candidates.keys().copied()
    }

    /// Returns the best path if it is trusted at `now`.
    pub fn best_addr(&self, now: Instant) -> Option<SocketAddr> {
        self.best.filter(|b| now < b.trusted_until).map(|b| b.addr)
    }

    /// Returns when every candidate was last pinged in one round
    /// (discovery, upgrade or burst).
    pub fn last_full_probe(&self) -> Option<Instant> {
        self.last_full_probe
    }

    /// Returns the best path's last round-trip time.
    pub fn best_rtt(&self) -> Option<Duration> {
        self.best.map(|b| b.rtt)
    }

    /// Returns the addresses to ping now, and notes them as pinged.
    pub fn due_pings(&mut self, now: Instant) -> Vec<SocketAddr> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.burst) {
            self.last_full_probe = Some(now);
            for (addr, c) in &mut self.candidates {
                c.note_ping(now);
                out.push(*addr);
            }
            return out;
        }
        match self.best.filter(|b| now < b.trusted_until) {
            Some(best) => {
                let full_due = self
                    .last_full_probe
                    .is_none_or(|t| now >= t + UPGRADE_INTERVAL);
                if full_due {
                    self.last_full_probe = Some(now);
                    for (addr, c) in &mut self.candidates {
                        c.note_ping(now);
                        out.push(*addr);
                    }
                    return out;
                }
                let grace = pong_grace(best.rtt);
                for (addr, c) in &mut self.candidates {
                    let due = if *addr == best.addr {
                        match c.last_ping {
                            None => true,
                            // A heartbeat went unanswered: send it again.
                            Some(t) if c.unanswered == 1 && now >= t + grace => true,
                            Some(t) => c.unanswered == 0 && now >= t + HEARTBEAT_INTERVAL,
                        }
                    } else {
                        // New candidates are tried at once, also while a
                        // path is trusted.
                        c.last_ping.is_none()
                    };
                    if due {
                        c.note_ping(now);
                        out.push(*addr);
                    }
                }
            }
            None => {
                for (addr, c) in &mut self.candidates {
                    if c.last_ping.is_none_or(|t| now >= t + DISCOVERY_INTERVAL) {
                        c.note_ping(now);
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
        let c = self.admit(addr, now)?;
        c.last_pong = Some(now);
        c.rtt = Some(rtt);
        c.unanswered = 0;
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

    /// Expires the best path once its trust runs out or its heartbeats go
    /// unanswered (see the module docs). Returns the change.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<BestChange> {
        let b = self.best?;
        if now < b.trusted_until && !self.silent(&b, now) {
            return None;
        }
        // Prefer another candidate that is still trusted and not silent.
        let next = self
            .candidates
            .iter()
            .filter(|(a, _)| **a != b.addr)
            .filter_map(|(a, c)| {
                let pong = c.last_pong?;
                (now < pong + TRUST_DURATION && c.unanswered < 2).then_some((
                    *a,
                    c.rtt.unwrap_or(Duration::MAX),
                    pong,
                ))
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

    /// Returns when [`PathProber::due_pings`] next has pings to send (a
    /// deadline in the past is due at once).
    pub fn next_ping_at(&self) -> Option<Instant> {
        if self.burst_pending() {
            return self.candidates.values().map(|c| c.added).min();
        }
        match self.best {
            Some(b) => {
                let grace = pong_grace(b.rtt);
                let per_candidate = self.candidates.iter().filter_map(|(a, c)| {
                    if *a == b.addr {
                        match (c.last_ping, c.unanswered) {
                            (None, _) => Some(c.added),
                            (Some(t), 1) => Some(t + grace),
                            (Some(t), 0) => Some(t + HEARTBEAT_INTERVAL),
                            // Retried already: handle_timeout decides.
                            (Some(_), _) => None,
                        }
                    } else {
                        c.last_ping.is_none().then_some(c.added)
                    }
                });
                let full = self.last_full_probe.map(|t| t + UPGRADE_INTERVAL);
                per_candidate.chain(full).min()
            }
            None => self
                .candidates
                .values()
                .map(|c| c.last_ping.map_or(c.added, |t| t + DISCOVERY_INTERVAL))
                .min(),
        }
    }

    /// Returns when [`PathProber::handle_timeout`] next may change the best
    /// path.
    pub fn next_expiry_at(&self) -> Option<Instant> {
        let b = self.best?;
        let silence = self
            .candidates
            .get(&b.addr)
            .and_then(|c| match c.last_ping {
                Some(t) if c.unanswered >= 2 => Some(t + pong_grace(b.rtt)),
                _ => None,
            });
        Some(silence.map_or(b.trusted_until, |s| s.min(b.trusted_until)))
    }

    /// Returns when [`PathProber::due_pings`] or
    /// [`PathProber::handle_timeout`] next has something to do (a deadline
    /// in the past is due at once).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_expiry_at()
            .into_iter()
            .chain(self.next_ping_at())
            .min()
    }

    /// Whether the best path's heartbeat and its retry both went unanswered.
    fn silent(&self, b: &Best, now: Instant) -> bool {
        self.candidates.get(&b.addr).is_some_and(|c| {
            c.unanswered >= 2 && c.last_ping.is_some_and(|t| now >= t + pong_grace(b.rtt))
        })
    }

    /// Returns the candidate for `addr`, adding it if there is room (or a
    /// stale candidate to make room from: the one heard from longest ago
    /// that is neither reported nor the best path). `None` if the address
    /// cannot be kept.
    fn admit(&mut self, addr: SocketAddr, now: Instant) -> Option<&mut Candidate> {
        if !self.candidates.contains_key(&addr) && self.candidates.len() >= MAX_CANDIDATES {
            let best = self.best.map(|b| b.addr);
            let victim = self
                .candidates
                .iter()
                .filter(|(a, c)| !c.reported && Some(**a) != best)
                .min_by_key(|(a, c)| (c.freshness(), **a))
                .map(|(a, _)| *a)?;
            self.candidates.remove(&victim);
        }
        Some(
            self.candidates
                .entry(addr)
                .or_insert_with(|| Candidate::new(now)),
        )
    }
}

/// How long a ping to a path with round trip `rtt` may go unanswered.
fn pong_grace(rtt: Duration) -> Duration {
    HEARTBEAT_GRACE.max(rtt.saturating_mul(2))
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

    #[test]
    fn a_lost_heartbeat_is_sent_again_and_two_in_a_row_lose_the_path_in_four_and_a_half_seconds() {
        let now = t0();
        let ms = Duration::from_millis;
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e, a("198.18.0.2:41641")], now);
        p.due_pings(now);
        p.handle_pong(e, ms(1), now);
        // The path dies right after this pong. The heartbeat goes out...
        let hb = now + HEARTBEAT_INTERVAL;
        assert_eq!(p.poll_timeout(), Some(hb));
        assert_eq!(p.due_pings(hb), vec![e]);
        // ...is not answered within the grace, so it is sent once more...
        assert_eq!(p.poll_timeout(), Some(hb + HEARTBEAT_GRACE));
        assert_eq!(p.handle_timeout(hb + HEARTBEAT_GRACE), None);
        assert_eq!(p.due_pings(hb + HEARTBEAT_GRACE), vec![e]);
        // ...and when that one is lost too, the path is gone at once, long
        // before its 6.5 s of trust run out.
        let lost = hb + HEARTBEAT_GRACE * 2;
        assert_eq!(p.poll_timeout(), Some(lost));
        assert_eq!(p.handle_timeout(lost), Some(BestChange { addr: None }));
        assert_eq!(lost - now, ms(4500));
    }

    #[test]
    fn one_lost_heartbeat_does_not_lose_the_path() {
        let now = t0();
        let ms = Duration::from_millis;
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e], now);
        p.due_pings(now);
        p.handle_pong(e, ms(1), now);
        let hb = now + HEARTBEAT_INTERVAL;
        p.due_pings(hb);
        let retry = hb + HEARTBEAT_GRACE;
        assert_eq!(p.due_pings(retry), vec![e]);
        // The retry is answered.
        assert_eq!(p.handle_pong(e, ms(1), retry + ms(1)), None);
        assert_eq!(p.handle_timeout(retry + HEARTBEAT_GRACE), None);
        assert_eq!(p.best_addr(retry + HEARTBEAT_GRACE), Some(e));
        // A slow path gets a longer grace: twice its round trip.
        let mut slow = PathProber::new();
        slow.set_endpoints([e], now);
        slow.due_pings(now);
        slow.handle_pong(e, ms(900), now);
        slow.due_pings(hb);
        assert_eq!(slow.poll_timeout(), Some(hb + ms(1800)));
    }

    #[test]
    fn a_burst_pings_every_candidate_at_once_even_while_direct() {
        let now = t0();
        let mut p = PathProber::new();
        let e = a("198.18.0.1:41641");
        p.set_endpoints([e, a("198.18.0.2:41641"), a("198.18.0.3:41641")], now);
        p.due_pings(now);
        p.handle_pong(e, Duration::from_millis(1), now);
        let t = now + Duration::from_millis(100);
        assert!(p.due_pings(t).is_empty());
        p.request_burst();
        assert!(p.burst_pending());
        assert!(p.poll_timeout().is_some_and(|d| d <= t));
        assert_eq!(p.due_pings(t).len(), 3);
        assert!(!p.burst_pending());
    }

    #[test]
    fn pings_asked_for_by_incoming_datagrams_are_limited_per_address() {
        let now = t0();
        let mut p = PathProber::new();
        let x = a("198.19.0.9:1024");
        assert!(p.ping_now(x, now), "an unknown address is added and pinged");
        assert!(!p.ping_now(x, now + Duration::from_millis(500)));
        assert!(p.ping_now(x, now + REPING_INTERVAL));
        assert_eq!(p.candidates().collect::<Vec<_>>(), vec![x]);
    }

    #[test]
    fn a_scheduled_ping_does_not_stop_an_incoming_one_from_asking_for_another() {
        // Our discovery ping reached the peer before it knew us and was
        // dropped; its own ping a moment later must be answered with ours.
        let now = t0();
        let mut p = PathProber::new();
        let e = a("198.18.0.2:41641");
        p.set_endpoints([e], now);
        assert_eq!(p.due_pings(now), vec![e]);
        assert!(p.ping_now(e, now + Duration::from_millis(250)));
        assert!(!p.ping_now(e, now + Duration::from_millis(500)));
    }

    #[test]
    fn a_full_candidate_list_makes_room_by_forgetting_the_stalest_learned_address() {
        let now = t0();
        let mut p = PathProber::new();
        let reported = a("198.18.0.1:41641");
        p.set_endpoints([reported], now);
        // A peer that roamed through many NAT mappings.
        for port in 0..(MAX_CANDIDATES as u16 + 10) {
            let t = now + Duration::from_secs(port.into());
            p.note_candidate(SocketAddr::from(([198, 19, 0, 1], 1000 + port)), t);
        }
        let all: Vec<SocketAddr> = p.candidates().collect();
        assert_eq!(all.len(), MAX_CANDIDATES);
        assert!(
            all.contains(&reported),
            "reported endpoints are never evicted"
        );
        let newest = SocketAddr::from(([198, 19, 0, 1], 1000 + MAX_CANDIDATES as u16 + 9));
        assert!(all.contains(&newest), "the newest address is kept");
        assert!(!all.contains(&SocketAddr::from(([198, 19, 0, 1], 1000))));
    }

    #[test]
    fn call_me_maybe_endpoints_replace_the_previous_ones_unless_they_answered() {
        let now = t0();
        let mut p = PathProber::new();
        let (x, y, z) = (a("198.19.0.1:1"), a("198.19.0.1:2"), a("198.19.0.1:3"));
        p.set_call_me_maybe([x, y], now);
        assert_eq!(p.due_pings(now), vec![x, y]);
        p.handle_pong(y, Duration::from_millis(3), now);
        p.set_call_me_maybe([z], now);
        // x never answered and is not listed any more; y answered (it is the
        // path) and stays.
        assert_eq!(p.candidates().collect::<Vec<_>>(), vec![y, z]);
    }
}
