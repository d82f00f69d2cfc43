//! Every peer's disco state behind one sans-IO object.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_types::{DiscoPrivate, DiscoPublic, NodePublic};

use crate::message::{
    DecodeError, Message, NONCE_LEN, Ping, Pong, Sealed, SharedBox, TX_ID_LEN, TxId,
};
use crate::prober::{PING_TIMEOUT, PathProber};

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub to: SocketAddr,
    /// The sealed disco datagram.
    pub payload: Vec<u8>,
}

/// Identifies a ping asked for with [`Disco::ping`].
pub type PingId = u64;

/// How an asked-for ping ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// A pong came back.
    Pong {
        /// The address the answered ping was sent to.
        addr: SocketAddr,
        /// Round-trip time.
        rtt: Duration,
    },
    /// No pong within the ping's timeout (or the peer went away).
    Timeout,
}

/// Something the driver should act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The path WireGuard should use for `peer` changed (`None`: no trusted
    /// direct path any more).
    BestPath {
        /// The peer's node key.
        peer: NodePublic,
        /// The new path.
        addr: Option<SocketAddr>,
    },
    /// A ping asked for with [`Disco::ping`] finished.
    Ping {
        /// The id [`Disco::ping`] returned.
        id: PingId,
        /// Which peer.
        peer: NodePublic,
        /// What happened.
        outcome: PingOutcome,
    },
}

struct PeerState {
    disco_key: DiscoPublic,
    shared: SharedBox,
    prober: PathProber,
}

#[derive(Debug, Clone, Copy)]
enum Purpose {
    Probe,
    Asked(PingId),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    peer: NodePublic,
    to: SocketAddr,
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

/// Why [`Disco::handle_udp`] dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Too short for a sealed message, or it opened into no known message.
    Malformed,
    /// Sealed by a disco key that belongs to no peer we know.
    UnknownSender,
    /// The box did not open (forged, corrupted or for another key).
    Unauthenticated,
    /// A ping that names a node key other than its sender's.
    WrongNodeKey,
}

impl DropReason {
    /// Every reason, in order (the counters' index).
    pub const ALL: [DropReason; 4] = [
        Self::Malformed,
        Self::UnknownSender,
        Self::Unauthenticated,
        Self::WrongNodeKey,
    ];

    /// Returns the snake_case name used in metrics and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::UnknownSender => "unknown_sender",
            Self::Unauthenticated => "unauthenticated",
            Self::WrongNodeKey => "wrong_node_key",
        }
    }
}

/// The disco core for one daemon run. See the crate docs for the driving
/// loop.
pub struct Disco {
    // --- counters (monotonic) ---
    drops: [u64; DropReason::ALL.len()],
    // --- set once in `new` ---
    private: DiscoPrivate,
    public: DiscoPublic,
    node_key: NodePublic,
    nonce_prefix: [u8; NONCE_LEN - 8],
    // --- state ---
    counter: u64,
    peers: BTreeMap<NodePublic, PeerState>,
    by_disco: BTreeMap<DiscoPublic, NodePublic>,
    pending: BTreeMap<TxId, Pending>,
    asked: BTreeMap<PingId, Asked>,
    next_ping_id: PingId,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
}

impl std::fmt::Debug for Disco {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disco")
            .field("public", &self.public)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Disco {
    /// Creates the core for our disco key and node key. `seed` (random, from
    /// the driver) keeps our nonces apart from the peer's, which share the
    /// box key.
    pub fn new(private: DiscoPrivate, node_key: NodePublic, seed: [u8; 16]) -> Self {
        let public = private.public();
        Self {
            drops: [0; DropReason::ALL.len()],
            private,
            public,
            node_key,
            nonce_prefix: seed,
            counter: 0,
            peers: BTreeMap::new(),
            by_disco: BTreeMap::new(),
            pending: BTreeMap::new(),
            asked: BTreeMap::new(),
            next_ping_id: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Returns our disco public key (published in `MapRequest.disco_key`).
    pub fn public_key(&self) -> DiscoPublic {
        self.public
    }

    /// Changes the node key our pings carry (after a re-key or a profile
    /// switch).
    pub fn set_node_key(&mut self, node_key: NodePublic) {
        self.node_key = node_key;
    }

    /// Adds a peer or updates its disco key and reported endpoints. A new
    /// disco key (the peer's daemon restarted) starts its paths afresh.
    pub fn upsert_peer(
        &mut self,
        peer: NodePublic,
        disco_key: DiscoPublic,
        endpoints: impl IntoIterator<Item = SocketAddr>,
        now: Instant,
    ) {
        let fresh = match self.peers.get(&peer) {
            Some(p) => p.disco_key != disco_key,
            None => true,
        };
        if fresh {
            self.remove_peer(&peer);
            let shared = SharedBox::new(&self.private, &disco_key);
            self.peers.insert(
                peer,
                PeerState {
                    disco_key,
                    shared,
                    prober: PathProber::new(),
                },
            );
            self.by_disco.insert(disco_key, peer);
        }
        if let Some(p) = self.peers.get_mut(&peer) {
            p.prober.set_endpoints(endpoints, now);
        }
    }

    /// Forgets a peer; its pending asked-for pings end as timeouts.
    pub fn remove_peer(&mut self, peer: &NodePublic) {
        let Some(old) = self.peers.remove(peer) else {
            return;
        };
        self.by_disco.remove(&old.disco_key);
        self.pending.retain(|_, p| p.peer != *peer);
        let gone: Vec<PingId> = self
            .asked
            .iter()
            .filter(|(_, a)| a.peer == *peer)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.asked.remove(&id);
            self.events.push_back(Event::Ping {
                id,
                peer: *peer,
                outcome: PingOutcome::Timeout,
            });
        }
    }

    /// Returns the peers we know, sorted.
    pub fn peers(&self) -> impl Iterator<Item = &NodePublic> {
        self.peers.keys()
    }

    /// Returns `peer`'s trusted best path at `now`.
    pub fn best_addr(&self, peer: &NodePublic, now: Instant) -> Option<SocketAddr> {
        self.peers.get(peer)?.prober.best_addr(now)
    }

    /// Asks for one ping to `peer` (to its best path, or else to every
    /// candidate), sent at the next [`Disco::handle_timeout`]; the result
    /// comes as [`Event::Ping`] with the returned id. `None` if the peer is
    /// unknown.
    pub fn ping(&mut self, peer: &NodePublic, timeout: Duration, now: Instant) -> Option<PingId> {
        if !self.peers.contains_key(peer) {
            return None;
        }
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

    /// Returns how many datagrams were dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    fn drop_datagram(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }

    /// Handles one datagram that [`crate::is_disco`] recognised. Garbage,
    /// unknown senders and failed boxes are dropped (logged at trace) and
    /// counted by reason ([`Disco::dropped`]).
    pub fn handle_udp(&mut self, from: SocketAddr, datagram: &[u8], now: Instant) {
        let sealed = match Sealed::parse(datagram) {
            Ok(s) => s,
            Err(e) => {
                tracing::trace!(%from, error = %e, "Dropping disco datagram");
                return self.drop_datagram(DropReason::Malformed);
            }
        };
        let Some(peer) = self.by_disco.get(&sealed.sender()).copied() else {
            tracing::trace!(%from, sender = %sealed.sender().short(), "Disco message from an unknown key");
            return self.drop_datagram(DropReason::UnknownSender);
        };
        let Some(state) = self.peers.get_mut(&peer) else {
            return self.drop_datagram(DropReason::UnknownSender);
        };
        let msg = match state.shared.open(&sealed) {
            Ok(m) => m,
            Err(e) => {
                tracing::trace!(%from, error = %e, "Dropping disco datagram");
                return self.drop_datagram(match e {
                    DecodeError::Unauthenticated => DropReason::Unauthenticated,
                    _ => DropReason::Malformed,
                });
            }
        };
        match msg {
            Message::Ping(ping) => {
                if ping.node_key != peer {
                    tracing::trace!(%from, "Disco ping names another node key; dropped");
                    return self.drop_datagram(DropReason::WrongNodeKey);
                }
                state.prober.note_candidate(from, now);
                let pong = Message::Pong(Pong {
                    tx_id: ping.tx_id,
                    observed_src: from,
                });
                let nonce = self.next_nonce();
                let Some(state) = self.peers.get(&peer) else {
                    return;
                };
                let payload = state.shared.seal(&self.public, nonce, &pong);
                self.transmits.push_back(Transmit { to: from, payload });
            }
            Message::Pong(pong) => self.handle_pong(peer, pong, now),
            Message::CallMeMaybe(c) => {
                tracing::trace!(%from, endpoints = c.endpoints.len(), "CallMeMaybe ignored (no relay yet)");
            }
        }
    }

    fn handle_pong(&mut self, peer: NodePublic, pong: Pong, now: Instant) {
        let Some(pending) = self.pending.get(&pong.tx_id).copied() else {
            return;
        };
        if pending.peer != peer {
            return;
        }
        self.pending.remove(&pong.tx_id);
        let rtt = now.saturating_duration_since(pending.sent);
        if let Some(state) = self.peers.get_mut(&peer)
            && let Some(change) = state.prober.handle_pong(pending.to, rtt, now)
        {
            self.events.push_back(Event::BestPath {
                peer,
                addr: change.addr,
            });
        }
        if let Purpose::Asked(id) = pending.purpose
            && self.asked.remove(&id).is_some()
        {
            self.events.push_back(Event::Ping {
                id,
                peer,
                outcome: PingOutcome::Pong {
                    addr: pending.to,
                    rtt,
                },
            });
        }
    }

    /// Runs timers: probes and heartbeats, asked-for pings, trust expiry,
    /// ping timeouts.
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
        let mut sends: Vec<(NodePublic, SocketAddr, Purpose)> = Vec::new();
        for (id, a) in &mut self.asked {
            if a.sent {
                continue;
            }
            a.sent = true;
            let Some(state) = self.peers.get(&a.peer) else {
                continue;
            };
            let targets: Vec<SocketAddr> = match state.prober.best_addr(now) {
                Some(best) => vec![best],
                None => state.prober.candidates().collect(),
            };
            sends.extend(
                targets
                    .into_iter()
                    .map(|t| (a.peer, t, Purpose::Asked(*id))),
            );
        }
        for (peer, state) in &mut self.peers {
            if let Some(change) = state.prober.handle_timeout(now) {
                self.events.push_back(Event::BestPath {
                    peer: *peer,
                    addr: change.addr,
                });
            }
            sends.extend(
                state
                    .prober
                    .due_pings(now)
                    .into_iter()
                    .map(|to| (*peer, to, Purpose::Probe)),
            );
        }
        for (peer, to, purpose) in sends {
            self.send_ping(peer, to, purpose, now);
        }
    }

    fn send_ping(&mut self, peer: NodePublic, to: SocketAddr, purpose: Purpose, now: Instant) {
        let tx_id = self.next_tx_id();
        let nonce = self.next_nonce();
        let ping = Message::Ping(Ping {
            tx_id,
            node_key: self.node_key,
            padding: 0,
        });
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let payload = state.shared.seal(&self.public, nonce, &ping);
        self.pending.insert(
            tx_id,
            Pending {
                peer,
                to,
                sent: now,
                purpose,
            },
        );
        self.transmits.push_back(Transmit { to, payload });
    }

    /// Returns the next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Returns when [`Disco::handle_timeout`] next has work, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let probes = self
            .peers
            .values()
            .filter_map(|p| p.prober.poll_timeout())
            .min()
            .map(|t| (t, "probe"));
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
        [probes, asked, pending]
            .into_iter()
            .flatten()
            .min_by_key(|(t, _)| *t)
    }

    fn next_nonce(&mut self) -> [u8; NONCE_LEN] {
        self.counter += 1;
        let mut n = [0u8; NONCE_LEN];
        n[..NONCE_LEN - 8].copy_from_slice(&self.nonce_prefix);
        n[NONCE_LEN - 8..].copy_from_slice(&self.counter.to_be_bytes());
        n
    }

    fn next_tx_id(&mut self) -> TxId {
        self.counter += 1;
        let mut t = [0u8; TX_ID_LEN];
        t[..4].copy_from_slice(&self.nonce_prefix[..4]);
        t[4..].copy_from_slice(&self.counter.to_be_bytes());
        t
    }
}
