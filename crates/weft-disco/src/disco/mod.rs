//! [`Disco`]: every peer's path, the home relay and netcheck behind one
//! sans-IO object (see the crate docs for the driving loop).
//!
//! Composition: `Disco` owns the children (`PeerPath` per peer,
//! [`HomeRelay`], [`Netcheck`]) and drains their outputs itself inside each
//! input and [`Disco::handle_timeout`], the way snownet's `Node` does: a
//! child's output often becomes a transmit of the parent (a peer's due
//! pings must be sealed, a netcheck report changes our endpoints, which
//! makes every peer send a CallMeMaybe).

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weft_types::{DiscoPrivate, DiscoPublic, Endpoint, NodePublic};

use crate::home_relay::HomeRelay;
use crate::message::{Message, NONCE_LEN, SharedBox, TxId};
use crate::netcheck::{Netcheck, Report, StunTxId};
use crate::path::{Path, PathState, PeerPath, RegionId};
use crate::prober::PING_TIMEOUT;

mod internals;
mod types;

pub use types::{
    Destination, Event, PeerStatus, PingId, PingOutcome, RELAY_MAGIC_IP, RelayRegionInfo, Stats,
    Transmit,
};

struct PeerState {
    disco_key: DiscoPublic,
    shared: SharedBox,
    /// The home relay the netmap names (kept even while our relay map
    /// lacks the region).
    home_relay: Option<RegionId>,
    path: PeerPath,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Probe,
    Asked(PingId),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    peer: NodePublic,
    to: Destination,
    sent: Instant,
    purpose: Purpose,
}

#[derive(Debug, Clone, Copy)]
struct Asked {
    peer: NodePublic,
    /// When it was asked for (an unsent ping is due then).
    at: Instant,
    deadline: Instant,
    sent: bool,
}

/// Where a datagram came from.
#[derive(Debug, Clone, Copy)]
enum Source {
    Udp(SocketAddr),
    Relay(RegionId),
}

/// The disco core for one daemon run. See the crate docs for the driving
/// loop.
pub struct Disco {
    // --- set once in `new` ---
    private: DiscoPrivate,
    public: DiscoPublic,
    nonce_prefix: [u8; NONCE_LEN - 8],
    // --- configuration (inputs) ---
    node_key: NodePublic,
    /// The relay map: region → its STUN servers.
    regions: BTreeMap<RegionId, Vec<SocketAddr>>,
    local_port: u16,
    local_endpoints: Vec<Endpoint>,
    // --- children ---
    peers: BTreeMap<NodePublic, PeerState>,
    home: HomeRelay,
    netcheck: Netcheck,
    // --- state ---
    by_disco: BTreeMap<DiscoPublic, NodePublic>,
    /// Local plus STUN-learned: what was last reported.
    endpoints: Vec<Endpoint>,
    stun_endpoints: Vec<Endpoint>,
    /// Our local endpoints changed since `stun_endpoints` were learned.
    stun_stale: bool,
    /// The last round trip measured over each region's relay connection.
    relay_latency: BTreeMap<RegionId, Duration>,
    udp_blocked: bool,
    counter: u64,
    pending: BTreeMap<TxId, Pending>,
    asked: BTreeMap<PingId, Asked>,
    next_ping_id: PingId,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl std::fmt::Debug for Disco {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disco")
            .field("public", &self.public)
            .field("peers", &self.peers.len())
            .field("home", &self.home.home())
            .finish_non_exhaustive()
    }
}

impl Disco {
    /// Creates the core for our disco key and node key. `seed` (random, from
    /// the driver) makes our nonces (kept apart from the peer's, which share
    /// the box key), STUN transaction ids and timer jitter; the same seed
    /// replays a run exactly.
    pub fn new(private: DiscoPrivate, node_key: NodePublic, seed: [u8; 32]) -> Self {
        let public = private.public();
        let mut rng = StdRng::from_seed(seed);
        let mut nonce_prefix = [0u8; NONCE_LEN - 8];
        rng.fill_bytes(&mut nonce_prefix);
        let mut netcheck_seed = [0u8; 32];
        rng.fill_bytes(&mut netcheck_seed);
        Self {
            private,
            public,
            nonce_prefix,
            node_key,
            regions: BTreeMap::new(),
            local_port: 0,
            local_endpoints: Vec::new(),
            peers: BTreeMap::new(),
            home: HomeRelay::new(),
            netcheck: Netcheck::new(netcheck_seed),
            by_disco: BTreeMap::new(),
            endpoints: Vec::new(),
            stun_endpoints: Vec::new(),
            stun_stale: false,
            relay_latency: BTreeMap::new(),
            udp_blocked: false,
            counter: 0,
            pending: BTreeMap::new(),
            asked: BTreeMap::new(),
            next_ping_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    // ------------------------------------------------------------------
    // Configuration inputs
    // ------------------------------------------------------------------

    /// Returns our disco public key (published in `MapRequest.disco_key`).
    pub fn public_key(&self) -> DiscoPublic {
        self.public
    }

    /// Changes the node key our pings carry (after a re-key or a profile
    /// switch).
    pub fn set_node_key(&mut self, node_key: NodePublic) {
        self.node_key = node_key;
    }

    /// Adds a peer or updates its disco key, reported endpoints and home
    /// relay region (all from the netmap). A new disco key (the peer's
    /// daemon restarted) starts its paths afresh. A new peer's traffic goes
    /// through its home relay at once ([`Event::PathChanged`]) while its
    /// endpoints are probed and a CallMeMaybe goes through the relay.
    pub fn upsert_peer(
        &mut self,
        peer: NodePublic,
        disco_key: DiscoPublic,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        home_relay: Option<RegionId>,
        now: Instant,
    ) {
        let relay = home_relay.filter(|r| self.regions.contains_key(r));
        let fresh = match self.peers.get(&peer) {
            Some(p) => p.disco_key != disco_key,
            None => true,
        };
        if fresh {
            let before = self.path(&peer);
            self.forget_peer(&peer);
            let shared = SharedBox::new(&self.private, &disco_key);
            self.peers.insert(
                peer,
                PeerState {
                    disco_key,
                    shared,
                    home_relay,
                    path: PeerPath::new(relay, now),
                },
            );
            self.by_disco.insert(disco_key, peer);
            tracing::debug!(peer = %peer.short(), ?relay, "Disco peer added");
            self.note_path(peer, before);
        }
        self.with_peer(&peer, |p| {
            p.home_relay = home_relay;
            p.path.set_relay(relay, now);
            p.path.set_endpoints(endpoints, now);
        });
    }

    /// Forgets a peer; its pending asked-for pings end as timeouts.
    pub fn remove_peer(&mut self, peer: &NodePublic) {
        self.forget_peer(peer);
    }

    /// Replaces the relay map. Peers whose home region is gone lose their
    /// relay path; netcheck probes the new STUN servers at once.
    pub fn set_relay_map(
        &mut self,
        regions: impl IntoIterator<Item = RelayRegionInfo>,
        now: Instant,
    ) {
        self.regions = regions.into_iter().map(|r| (r.id, r.stun)).collect();
        self.relay_latency
            .retain(|r, _| self.regions.contains_key(r));
        let change = self.home.set_regions(self.regions.keys().copied(), now);
        self.note_home(change);
        let servers: Vec<(RegionId, SocketAddr)> = self
            .regions
            .iter()
            .flat_map(|(id, s)| s.iter().map(move |a| (*id, *a)))
            .collect();
        self.netcheck.set_servers(servers, now);
        if self.regions.is_empty() {
            self.set_udp_blocked(false, now);
            self.set_stun_endpoints(Vec::new(), now);
        }
        if self.regions.values().all(|s| s.is_empty()) {
            // No netcheck will ever measure these regions: take one now;
            // relay latency samples refine the choice.
            let change = self.home.fall_back();
            self.note_home(change);
        }
        let relays: Vec<(NodePublic, Option<RegionId>)> = self
            .peers
            .iter()
            .map(|(k, p)| (*k, p.home_relay.filter(|r| self.regions.contains_key(r))))
            .collect();
        for (peer, relay) in relays {
            self.with_peer(&peer, |p| p.path.set_relay(relay, now));
        }
    }

    /// Our own endpoints changed (interface addresses, port mappings; the
    /// driver finds them): `port` is the UDP port of the socket disco and
    /// WireGuard share. Every peer is probed again and told (CallMeMaybe),
    /// and netcheck runs at once: a node that moved re-establishes its
    /// paths without waiting for a timer.
    pub fn handle_local_endpoints_changed(
        &mut self,
        port: u16,
        endpoints: impl IntoIterator<Item = Endpoint>,
        now: Instant,
    ) {
        let mut endpoints: Vec<Endpoint> = endpoints.into_iter().collect();
        endpoints.sort();
        endpoints.dedup();
        if port == self.local_port && endpoints == self.local_endpoints {
            return;
        }
        self.local_port = port;
        self.local_endpoints = endpoints;
        // What STUN saw was seen from where we were: netcheck runs again,
        // and if it gets no answer the old public addresses go.
        self.stun_stale = true;
        self.netcheck.start(now);
        self.publish_endpoints(now);
    }

    /// The driver is sending `peer` traffic without a direct path (through
    /// the relay). A peer that settled on the relay is probed again (with a
    /// CallMeMaybe). Cheap; may be called for every such packet.
    pub fn handle_relayed_traffic(&mut self, peer: &NodePublic, now: Instant) {
        let Some(p) = self.peers.get(peer) else {
            return;
        };
        if let PathState::Relay { .. } = p.path.state() {
            self.with_peer(peer, |p| p.path.wake(now));
        }
    }

    /// A latency sample for `region`'s relay, measured over our connection
    /// to it (DERP Ping/Pong, or an HTTPS latency check when UDP is
    /// blocked); feeds the home relay choice.
    pub fn handle_relay_latency(&mut self, region: RegionId, rtt: Duration, now: Instant) {
        if !self.regions.contains_key(&region) {
            return;
        }
        self.relay_latency.insert(region, rtt);
        let change = self.home.handle_latency(region, rtt, now);
        self.note_home(change);
    }

    /// Our connection to `region`'s relay came up or went down.
    pub fn handle_relay_connection(&mut self, region: RegionId, up: bool, now: Instant) {
        let change = self.home.handle_connection(region, up, now);
        self.note_home(change);
    }

    /// Asks for a netcheck run now (`weft netcheck`); the report comes as
    /// [`Event::Netcheck`]. `false` when there are no STUN servers.
    pub fn netcheck_now(&mut self, now: Instant) -> bool {
        self.netcheck.start(now)
    }

    /// Asks for one ping to `peer`: to its direct path if it has one, else
    /// through its relay and to every candidate. Sent at the next
    /// [`Disco::handle_timeout`]; the result comes as [`Event::Ping`] with
    /// the returned id. `None` if the peer is unknown.
    pub fn ping(&mut self, peer: &NodePublic, timeout: Duration, now: Instant) -> Option<PingId> {
        if !self.peers.contains_key(peer) {
            return None;
        }
        self.with_peer(peer, |p| p.path.wake(now));
        let id = self.next_ping_id;
        self.next_ping_id += 1;
        self.asked.insert(
            id,
            Asked {
                peer: *peer,
                at: now,
                deadline: now + timeout,
                sent: false,
            },
        );
        Some(id)
    }

    // ------------------------------------------------------------------
    // Network inputs
    // ------------------------------------------------------------------

    /// Handles one datagram that [`crate::is_disco`] recognised, received on
    /// the UDP socket from `from`. Garbage, unknown senders and failed boxes
    /// are dropped and counted ([`Disco::stats`]).
    pub fn handle_udp(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let Some((peer, msg)) = self.open(datagram) else {
            return;
        };
        if self.udp_blocked {
            // A peer reached us over UDP: it is not blocked after all.
            tracing::info!("UDP works again (a peer reached us directly)");
            self.set_udp_blocked(false, now);
            self.netcheck.start(now);
        }
        match msg {
            Message::Ping(ping) => {
                if ping.node_key != peer {
                    self.stats.wrong_node_key += 1;
                    tracing::trace!(%from, "Disco ping names another node key; dropped");
                    return;
                }
                self.send_pong(peer, ping.tx_id, Destination::Udp(from), from);
                if self.with_peer(&peer, |p| p.path.handle_ping_from(from, now)) == Some(true) {
                    self.send_ping(peer, Destination::Udp(from), Purpose::Probe, now);
                }
            }
            Message::Pong(pong) => self.handle_pong(peer, pong, Source::Udp(from), now),
            Message::CallMeMaybe(_) => {
                // Only the relay vouches for who sent it (the relay
                // authenticates node keys); a direct one could be replayed.
                self.stats.call_me_maybe_rejected += 1;
                tracing::trace!(%from, "CallMeMaybe not through the relay; ignored");
            }
        }
    }

    /// Handles one disco datagram that the relay of `region` delivered from
    /// node `from` (a DERP `RecvPacket` whose payload [`crate::is_disco`]
    /// recognised). Answers go back through the same relay.
    pub fn handle_relay(
        &mut self,
        region: RegionId,
        from: NodePublic,
        datagram: &[u8],
        now: Instant,
    ) {
        let Some((peer, msg)) = self.open(datagram) else {
            return;
        };
        if peer != from {
            self.stats.wrong_node_key += 1;
            tracing::trace!(%region, "Relayed disco datagram from another node than its disco key's; dropped");
            return;
        }
        let back = Destination::Relay { region, node: peer };
        match msg {
            Message::Ping(ping) => {
                if ping.node_key != peer {
                    self.stats.wrong_node_key += 1;
                    return;
                }
                let magic = SocketAddr::new(IpAddr::V4(RELAY_MAGIC_IP), region.0);
                self.send_pong(peer, ping.tx_id, back, magic);
            }
            Message::Pong(pong) => self.handle_pong(peer, pong, Source::Relay(region), now),
            Message::CallMeMaybe(c) => {
                tracing::debug!(peer = %peer.short(), endpoints = c.endpoints.len(), "CallMeMaybe");
                self.with_peer(&peer, |p| p.path.handle_call_me_maybe(c.endpoints, now));
            }
        }
    }

    /// Takes a STUN Binding success response that the driver decoded:
    /// transaction `tx_id`, the reflexive address it carries, the address it
    /// came `from`. Answers we did not ask for are ignored and counted.
    pub fn handle_stun_response(
        &mut self,
        tx_id: StunTxId,
        mapped: SocketAddr,
        from: SocketAddr,
        now: Instant,
    ) {
        if let Some(report) = self.netcheck.handle_response(tx_id, mapped, from, now) {
            self.handle_report(report, now);
        }
        self.stats.stun_unexpected = self.netcheck.unexpected();
    }

    // ------------------------------------------------------------------
    // Timers and outputs
    // ------------------------------------------------------------------

    /// Runs timers: probes, heartbeats and path loss, CallMeMaybes, asked
    /// pings and their timeouts, netcheck, expiry of relay latency samples.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.pending.retain(|_, p| now < p.sent + PING_TIMEOUT);
        let expired: Vec<PingId> = self
            .asked
            .iter()
            .filter(|(_, a)| now >= a.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(a) = self.asked.remove(&id) {
                self.events.push_back(Event::Ping {
                    id,
                    peer: a.peer,
                    outcome: PingOutcome::Timeout,
                });
            }
        }
        self.send_asked_pings(now);

        if let Some(report) = self.netcheck.handle_timeout(now) {
            self.handle_report(report, now);
        }
        while let Some(p) = self.netcheck.poll_probe() {
            self.transmits.push_back(Transmit::Stun {
                server: p.server,
                tx_id: p.tx_id,
            });
        }
        let change = self.home.handle_timeout(now);
        self.note_home(change);

        let ctx = self.ctx();
        // Only peers with something due: a wake-up for one peer does not
        // cost a pass over every peer's timers.
        let due: Vec<NodePublic> = self
            .peers
            .iter()
            .filter(|(_, p)| p.path.poll_timeout(ctx).is_some_and(|(t, _)| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for peer in due {
            let Some(actions) = self.with_peer(&peer, |p| p.path.handle_timeout(now, ctx)) else {
                continue;
            };
            for to in actions.pings {
                self.send_ping(peer, Destination::Udp(to), Purpose::Probe, now);
            }
            if actions.call_me_maybe {
                self.send_call_me_maybe(peer);
            }
        }
    }

    /// Returns the next datagram or STUN request to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Returns when [`Disco::handle_timeout`] next has work, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let ctx = self.ctx();
        let peers = self
            .peers
            .values()
            .filter_map(|p| p.path.poll_timeout(ctx))
            .min_by_key(|(t, _)| *t);
        let asked = self
            .asked
            .values()
            .map(|a| if a.sent { a.deadline } else { a.at })
            .min()
            .map(|t| (t, "asked ping"));
        let pending = self
            .pending
            .values()
            .map(|p| p.sent + PING_TIMEOUT)
            .min()
            .map(|t| (t, "ping timeout"));
        let home = self
            .home
            .poll_timeout()
            .map(|t| (t, "relay latency expiry"));
        [peers, asked, pending, self.netcheck.poll_timeout(), home]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    // ------------------------------------------------------------------
    // Queries
    // ------------------------------------------------------------------

    /// Returns the peers we know, sorted.
    pub fn peers(&self) -> impl Iterator<Item = &NodePublic> {
        self.peers.keys()
    }

    /// Returns the path `peer`'s traffic should take now.
    pub fn path(&self, peer: &NodePublic) -> Option<Path> {
        self.peers.get(peer)?.path.path()
    }

    /// Returns `peer`'s direct path, if it has one.
    pub fn best_addr(&self, peer: &NodePublic, now: Instant) -> Option<SocketAddr> {
        let p = self.peers.get(peer)?;
        p.path
            .direct()
            .filter(|a| p.path.prober().best_addr(now) == Some(*a))
    }

    /// Returns what `weft status` shows of `peer`.
    pub fn peer_status(&self, peer: &NodePublic) -> Option<PeerStatus> {
        let p = self.peers.get(peer)?;
        Some(PeerStatus {
            path: p.path.path(),
            state: p.path.state(),
            direct_rtt: p.path.direct().and(p.path.prober().best_rtt()),
            relay: p.path.relay(),
        })
    }

    /// Returns our home relay region.
    pub fn home_relay(&self) -> Option<RegionId> {
        self.home.home()
    }

    /// Returns our endpoints (local plus STUN-learned), as last reported
    /// with [`Event::EndpointsChanged`].
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Returns the last netcheck report.
    pub fn last_report(&self) -> Option<&Report> {
        self.netcheck.last_report()
    }

    /// Returns whether netcheck found UDP blocked (the node is relay-only).
    pub fn udp_blocked(&self) -> bool {
        self.udp_blocked
    }

    /// Returns the drop counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }
}
