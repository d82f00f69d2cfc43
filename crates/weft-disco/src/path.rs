//! One peer's path: relay → probing → direct, with fall-back and roaming.
//!
//! `PeerPath` wraps the peer's [`PathProber`] (which endpoints answer)
//! and decides what the peer's traffic uses ([`Path`]) and when to probe:
//!
//! ```text
//!            new peer, our endpoints changed, peer's CallMeMaybe,
//!            a ping from the peer, traffic or `weft ping` while relayed
//!   ┌──────────────────────────────────────────────┐
//!   │                                              ▼
//! Relay { retry_at } ◄── PROBE_WINDOW ──── Probing { since } ──first pong──► Direct { addr }
//!   │      (no pong, relay exists)           ▲   ▲                            │
//!   └── retry_at (RELAY_RETRY_INTERVAL) ─────┘   └──── heartbeats lost ───────┘
//! ```
//!
//! * A peer starts in `Probing`. Its traffic goes over its home relay (if
//!   it has one) from the first packet: the path is
//!   `Path::Relay(region)` until a pong confirms a direct path, so nothing
//!   waits for hole punching.
//! * `Probing` pings every candidate (a burst at once, then each one every
//!   [`crate::prober::DISCOVERY_INTERVAL`]) and asks for a CallMeMaybe to be
//!   sent through the relay (at most one per [`CALL_ME_MAYBE_INTERVAL`]), so
//!   that the peer pings our endpoints at the same moment and both NATs
//!   open.
//! * The first pong makes it `Direct`; the prober's heartbeats keep it so.
//!   When they go unanswered (see [`crate::prober`]) it falls back to
//!   `Probing`, and the path is the relay again at once.
//! * With a relay, probing that finds nothing within [`PROBE_WINDOW`]
//!   settles on `Relay` and tries again every [`RELAY_RETRY_INTERVAL`] (or
//!   sooner, when something suggests a path may exist now). When UDP is
//!   blocked (netcheck says so), peers with a relay stay in `Relay` and
//!   probe nothing on their own: `Disco` retries UDP only on netcheck's
//!   backoff schedule, and anything that proves UDP works ends it.
//! * Without a relay (no relay map, or the peer has no home relay) there is
//!   nothing to fall back to: it stays in `Probing` with the prober's
//!   discovery pace until a pong, as a flat LAN always did.

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::prober::{PathProber, UPGRADE_INTERVAL};

/// How long probing goes on without a pong before a peer with a relay
/// settles on it (three discovery rounds).
pub const PROBE_WINDOW: Duration = Duration::from_secs(15);
/// How often a relayed peer is probed again for a direct path.
pub const RELAY_RETRY_INTERVAL: Duration = UPGRADE_INTERVAL;
/// The shortest time between two CallMeMaybes to one peer (Tailscale sends
/// one with each discovery round, every 5 s).
pub const CALL_ME_MAYBE_INTERVAL: Duration = Duration::from_secs(5);
/// The shortest time between two ping bursts that a peer's CallMeMaybes
/// cause. A CallMeMaybe that arrives sooner is not lost: its endpoints are
/// kept and the burst goes out when the interval has passed.
pub const CALL_ME_MAYBE_ANSWER_INTERVAL: Duration = Duration::from_secs(1);

/// A relay region id (the key of the netmap's relay map).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(pub u16);

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u16> for RegionId {
    fn from(id: u16) -> Self {
        Self(id)
    }
}

/// How a peer's traffic is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// Straight to this UDP address (confirmed by a pong).
    Direct(SocketAddr),
    /// Through the relay of this region, addressed to the peer's node key.
    Relay(RegionId),
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Direct(addr) => write!(f, "{addr}"),
            Path::Relay(region) => write!(f, "relay({region})"),
        }
    }
}

/// Where a peer's path stands (see the module docs for the transitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathState {
    /// Looking for a direct path; traffic goes via the relay meanwhile (if
    /// the peer has one).
    Probing {
        /// When this probing started (the [`PROBE_WINDOW`] runs from here).
        since: Instant,
    },
    /// Probing found nothing; traffic goes via the relay. Only peers with a
    /// relay are ever in this state.
    Relay {
        /// When probing starts again; `None` while UDP is blocked (it
        /// starts again when something changes).
        retry_at: Option<Instant>,
    },
    /// A direct path answers.
    Direct {
        /// The address WireGuard should send to.
        addr: SocketAddr,
    },
}

/// What a [`PeerPath`] needs to know about the node as a whole.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Ctx {
    /// Netcheck found no UDP at all.
    pub udp_blocked: bool,
    /// We have endpoints to put in a CallMeMaybe.
    pub have_endpoints: bool,
}

/// What [`PeerPath::handle_timeout`] wants sent.
#[derive(Debug, Default)]
pub(crate) struct Actions {
    /// Disco pings to these UDP addresses.
    pub pings: Vec<SocketAddr>,
    /// A CallMeMaybe with our endpoints, through the peer's relay.
    pub call_me_maybe: bool,
}

/// A rate limit that remembers what it held back: `want` asks, `take`
/// grants once the interval since the last grant has passed.
#[derive(Debug, Clone, Copy)]
struct Limiter {
    interval: Duration,
    last: Option<Instant>,
    wanted: Option<Instant>,
}

impl Limiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            wanted: None,
        }
    }

    fn want(&mut self, now: Instant) {
        self.wanted.get_or_insert(now);
    }

    fn due_at(&self) -> Option<Instant> {
        let wanted = self.wanted?;
        Some(self.last.map_or(wanted, |l| wanted.max(l + self.interval)))
    }

    /// Grants the wish if due, and notes the grant.
    fn take(&mut self, now: Instant) -> bool {
        if self.due_at().is_some_and(|t| t <= now) {
            self.wanted = None;
            self.last = Some(now);
            return true;
        }
        false
    }

    /// Returns when the next grant may be (`None`: at once).
    fn next_allowed(&self) -> Option<Instant> {
        self.last.map(|l| l + self.interval)
    }

    fn drop_wish(&mut self) {
        self.wanted = None;
    }
}

/// One peer's path state machine (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct PeerPath {
    prober: PathProber,
    /// The peer's home relay region, if we can reach it.
    relay: Option<RegionId>,
    state: PathState,
    /// Our CallMeMaybes to the peer.
    call_me_maybe: Limiter,
    /// Ping bursts in answer to the peer's CallMeMaybes.
    answer: Limiter,
}

impl PeerPath {
    /// Starts probing a new peer; `relay` is its home region (if we have
    /// that region in our relay map).
    pub fn new(relay: Option<RegionId>, now: Instant) -> Self {
        let mut p = Self {
            prober: PathProber::new(),
            relay,
            state: PathState::Probing { since: now },
            call_me_maybe: Limiter::new(CALL_ME_MAYBE_INTERVAL),
            answer: Limiter::new(CALL_ME_MAYBE_ANSWER_INTERVAL),
        };
        p.call_me_maybe.want(now);
        p
    }

    /// Returns the path the peer's traffic should take.
    pub fn path(&self) -> Option<Path> {
        match self.state {
            PathState::Direct { addr } => Some(Path::Direct(addr)),
            PathState::Probing { .. } | PathState::Relay { .. } => self.relay.map(Path::Relay),
        }
    }

    pub fn state(&self) -> PathState {
        self.state
    }

    pub fn relay(&self) -> Option<RegionId> {
        self.relay
    }

    pub fn prober(&self) -> &PathProber {
        &self.prober
    }

    /// Returns the direct address, if the path is direct.
    pub fn direct(&self) -> Option<SocketAddr> {
        match self.state {
            PathState::Direct { addr } => Some(addr),
            _ => None,
        }
    }

    /// Changes the peer's home relay (netmap or relay map changed).
    pub fn set_relay(&mut self, relay: Option<RegionId>, now: Instant) {
        self.relay = relay;
        if relay.is_none() && matches!(self.state, PathState::Relay { .. }) {
            self.state = PathState::Probing { since: now };
            self.prober.request_burst();
        }
    }

    /// Replaces the endpoints the peer reported; new ones are pinged at
    /// once, and a relayed peer is probed again.
    pub fn set_endpoints(&mut self, endpoints: impl IntoIterator<Item = SocketAddr>, now: Instant) {
        if self.prober.set_endpoints(endpoints, now) {
            self.wake(now);
        }
    }

    /// Something suggests a direct path may exist now (traffic or a ping
    /// asked for while relayed, a ping from the peer): a relayed peer goes
    /// back to probing. Cheap when there is nothing to do.
    pub fn wake(&mut self, now: Instant) {
        if let PathState::Relay { .. } = self.state {
            self.state = PathState::Probing { since: now };
            self.prober.request_burst();
            self.call_me_maybe.want(now);
        }
    }

    /// Our own endpoints changed (or UDP works again): every candidate is
    /// pinged at once, the peer gets our new endpoints in a CallMeMaybe, and
    /// a non-direct peer probes for a full window from now.
    pub fn reprobe(&mut self, now: Instant) {
        self.prober.request_burst();
        self.call_me_maybe.want(now);
        match self.state {
            PathState::Relay { .. } | PathState::Probing { .. } => {
                self.state = PathState::Probing { since: now };
            }
            PathState::Direct { .. } => {}
        }
    }

    /// The peer's CallMeMaybe arrived (through the relay): its endpoints
    /// become candidates and all candidates are pinged at once (rate
    /// limited, see [`CALL_ME_MAYBE_ANSWER_INTERVAL`]).
    pub fn handle_call_me_maybe(
        &mut self,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) {
        self.prober.set_call_me_maybe(endpoints, now);
        self.answer.want(now);
        if let PathState::Relay { .. } = self.state {
            self.state = PathState::Probing { since: now };
        }
    }

    /// The peer pinged us directly from `from`. Returns whether to ping
    /// `from` right back (it may be a path we did not know, e.g. the peer's
    /// NAT mapping towards us); a relayed peer is probed again.
    pub fn handle_ping_from(&mut self, from: SocketAddr, now: Instant) -> bool {
        self.wake(now);
        if self.direct() == Some(from) {
            // Its heartbeat on our direct path: nothing new.
            self.prober.note_candidate(from, now);
            return false;
        }
        self.prober.ping_now(from, now)
    }

    /// A datagram of the peer arrived from `from` where we did not expect
    /// it (a pong from another address than the ping went to). Returns
    /// whether to ping `from` now.
    pub fn handle_unexpected_source(&mut self, from: SocketAddr, now: Instant) -> bool {
        self.wake(now);
        self.prober.ping_now(from, now)
    }

    /// A pong confirmed `addr` with round trip `rtt`.
    pub fn handle_pong(&mut self, addr: SocketAddr, rtt: std::time::Duration, now: Instant) {
        if let Some(change) = self.prober.handle_pong(addr, rtt, now) {
            self.apply_best(change.addr, now);
        }
    }

    /// Runs the peer's timers: path loss, the probing window, relay retries,
    /// CallMeMaybe answers; returns what to send.
    pub fn handle_timeout(&mut self, now: Instant, ctx: Ctx) -> Actions {
        let mut out = Actions::default();
        if let Some(change) = self.prober.handle_timeout(now) {
            self.apply_best(change.addr, now);
        }
        match self.state {
            PathState::Probing { since } if self.relay.is_some() => {
                if ctx.udp_blocked {
                    self.state = PathState::Relay { retry_at: None };
                } else if now >= since + PROBE_WINDOW {
                    self.state = PathState::Relay {
                        retry_at: Some(now + RELAY_RETRY_INTERVAL),
                    };
                } else {
                    // One CallMeMaybe per discovery round while probing.
                    self.call_me_maybe.want(now);
                }
            }
            // `None` (UDP was blocked) normally ends with `reprobe` when
            // UDP comes back; if not, retry now.
            PathState::Relay { retry_at }
                if !ctx.udp_blocked && retry_at.is_none_or(|t| now >= t) =>
            {
                self.state = PathState::Probing { since: now };
                self.prober.request_burst();
                self.call_me_maybe.want(now);
            }
            _ => {}
        }
        let may_ping = self.may_ping(ctx);
        if self.answer.take(now) && may_ping {
            self.prober.request_burst();
        }
        if may_ping {
            let burst = self.prober.burst_pending();
            out.pings = self.prober.due_pings(now);
            let upgrade_round = !burst
                && !out.pings.is_empty()
                && self.prober.last_full_probe() == Some(now)
                && matches!(self.state, PathState::Direct { .. });
            if upgrade_round {
                // Let the peer look for a better path from its side too.
                // (Bursts that answer a CallMeMaybe send none back, or two
                // direct peers would trade them forever.)
                self.call_me_maybe.want(now);
            }
        }
        if self.relay.is_some() && ctx.have_endpoints && !ctx.udp_blocked {
            out.call_me_maybe = self.call_me_maybe.take(now);
        } else {
            self.call_me_maybe.drop_wish();
        }
        out
    }

    /// Returns when [`PeerPath::handle_timeout`] next has work, and why.
    pub fn poll_timeout(&self, ctx: Ctx) -> Option<(Instant, &'static str)> {
        let mut next: Option<(Instant, &'static str)> = None;
        let mut consider = |t: Option<Instant>, why: &'static str| {
            if let Some(t) = t
                && next.is_none_or(|(n, _)| t < n)
            {
                next = Some((t, why));
            }
        };
        consider(self.prober.next_expiry_at(), "direct path check");
        if self.may_ping(ctx) {
            consider(self.prober.next_ping_at(), "disco ping");
            consider(self.answer.due_at(), "call-me-maybe answer");
        }
        match self.state {
            PathState::Probing { since } if self.relay.is_some() => {
                consider(Some(since + PROBE_WINDOW), "probe window");
                if ctx.have_endpoints && !ctx.udp_blocked {
                    // The next discovery round's CallMeMaybe.
                    let next = self.call_me_maybe.next_allowed().unwrap_or(since);
                    consider(Some(next.max(since)), "call-me-maybe");
                }
            }
            PathState::Relay { retry_at } if !ctx.udp_blocked => {
                consider(retry_at, "relay retry");
            }
            _ => {}
        }
        if self.relay.is_some() && ctx.have_endpoints && !ctx.udp_blocked {
            consider(self.call_me_maybe.due_at(), "call-me-maybe");
        }
        next
    }

    fn may_ping(&self, ctx: Ctx) -> bool {
        match self.state {
            PathState::Direct { .. } => true,
            PathState::Probing { .. } => !ctx.udp_blocked || self.relay.is_none(),
            PathState::Relay { .. } => false,
        }
    }

    fn apply_best(&mut self, best: Option<SocketAddr>, now: Instant) {
        match best {
            Some(addr) => self.state = PathState::Direct { addr },
            None => {
                self.state = PathState::Probing { since: now };
                self.prober.request_burst();
                self.call_me_maybe.want(now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prober::DISCOVERY_INTERVAL;

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the tests' one base instant
        Instant::now()
    }
    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const R: RegionId = RegionId(4);
    const CTX: Ctx = Ctx {
        udp_blocked: false,
        have_endpoints: true,
    };

    /// Runs the peer's timers until `until` with no pong ever; returns the
    /// times pings and CallMeMaybes went out.
    fn silence(
        p: &mut PeerPath,
        from: Instant,
        until: Instant,
        ctx: Ctx,
    ) -> (Vec<Instant>, Vec<Instant>) {
        let (mut pings, mut cmms) = (Vec::new(), Vec::new());
        let mut t = from;
        while let Some((next, why)) = p.poll_timeout(ctx) {
            if next > until {
                break;
            }
            assert!(next >= t, "{why} went back in time");
            t = next;
            let out = p.handle_timeout(t, ctx);
            if !out.pings.is_empty() {
                pings.push(t);
            }
            if out.call_me_maybe {
                cmms.push(t);
            }
            let after = p.poll_timeout(ctx);
            assert!(after.is_none_or(|(n, _)| n > t), "spins on {after:?}");
        }
        (pings, cmms)
    }

    #[test]
    fn a_peer_with_a_relay_settles_on_it_after_the_probe_window_and_retries_every_minute() {
        let now = t0();
        let mut p = PeerPath::new(Some(R), now);
        p.set_endpoints([a("198.19.1.1:41641")], now);
        assert_eq!(p.path(), Some(Path::Relay(R)));
        let (pings, cmms) = silence(&mut p, now, now + Duration::from_secs(200), CTX);
        let rel = |v: &[Instant]| v.iter().map(|t| (*t - now).as_secs()).collect::<Vec<_>>();
        // Discovery rounds at 0, 5, 10 s; then the relay; again a minute
        // after the window ended, and so on.
        assert_eq!(rel(&pings), vec![0, 5, 10, 75, 80, 85, 150, 155, 160]);
        assert_eq!(rel(&cmms), vec![0, 5, 10, 75, 80, 85, 150, 155, 160]);
        assert!(matches!(p.state(), PathState::Relay { .. }));
        assert_eq!(p.path(), Some(Path::Relay(R)));
    }

    #[test]
    fn a_peer_without_a_relay_keeps_probing_at_the_discovery_pace() {
        let now = t0();
        let mut p = PeerPath::new(None, now);
        p.set_endpoints([a("198.18.1.1:41641")], now);
        assert_eq!(p.path(), None);
        let (pings, cmms) = silence(&mut p, now, now + Duration::from_secs(60), CTX);
        assert_eq!(pings.len(), 13);
        assert!(pings.windows(2).all(|w| w[1] - w[0] == DISCOVERY_INTERVAL));
        assert!(cmms.is_empty(), "no relay to send one through");
        assert!(matches!(p.state(), PathState::Probing { .. }));
    }

    #[test]
    fn while_udp_is_blocked_a_relayed_peer_is_silent_until_probed_again() {
        let now = t0();
        let blocked = Ctx {
            udp_blocked: true,
            have_endpoints: true,
        };
        let mut p = PeerPath::new(Some(R), now);
        p.set_endpoints([a("198.19.1.1:41641")], now);
        let (pings, cmms) = silence(&mut p, now, now + Duration::from_secs(3600), blocked);
        assert!(pings.is_empty() && cmms.is_empty());
        assert_eq!(p.state(), PathState::Relay { retry_at: None });
        // UDP works again.
        let later = now + Duration::from_secs(3600);
        p.reprobe(later);
        let out = p.handle_timeout(later, CTX);
        assert_eq!(out.pings, vec![a("198.19.1.1:41641")]);
        assert!(out.call_me_maybe);
    }

    #[test]
    fn a_direct_peer_answers_a_call_me_maybe_with_pings_but_no_call_me_maybe_of_its_own() {
        let now = t0();
        let e = a("198.19.1.1:41641");
        let mut p = PeerPath::new(Some(R), now);
        p.set_endpoints([e], now);
        p.handle_timeout(now, CTX);
        p.handle_pong(e, Duration::from_millis(5), now);
        assert_eq!(p.path(), Some(Path::Direct(e)));
        let t = now + Duration::from_secs(1);
        p.handle_call_me_maybe([e, a("198.18.1.1:41641")], t);
        let out = p.handle_timeout(t, CTX);
        assert_eq!(out.pings.len(), 2, "every candidate at once");
        // Otherwise two direct peers would trade CallMeMaybes forever.
        assert!(!out.call_me_maybe);
        assert_eq!(p.path(), Some(Path::Direct(e)));
    }

    #[test]
    fn losing_the_direct_path_goes_back_to_the_relay_and_probes_at_once() {
        let now = t0();
        let e = a("198.19.1.1:41641");
        let mut p = PeerPath::new(Some(R), now);
        p.set_endpoints([e], now);
        p.handle_timeout(now, CTX);
        p.handle_pong(e, Duration::from_millis(5), now);
        let (_, _) = silence(&mut p, now, now + Duration::from_millis(4499), CTX);
        assert_eq!(p.path(), Some(Path::Direct(e)));
        let lost = now + Duration::from_millis(4500);
        let out = p.handle_timeout(lost, CTX);
        assert_eq!(p.path(), Some(Path::Relay(R)));
        assert_eq!(p.state(), PathState::Probing { since: lost });
        assert_eq!(out.pings, vec![e]);
        // The CallMeMaybe too, as soon as the rate limit allows (the last
        // one went out when the peer appeared).
        assert!(!out.call_me_maybe);
        let next = now + CALL_ME_MAYBE_INTERVAL;
        assert_eq!(p.poll_timeout(CTX), Some((next, "call-me-maybe")));
        assert!(p.handle_timeout(next, CTX).call_me_maybe);
    }
}
