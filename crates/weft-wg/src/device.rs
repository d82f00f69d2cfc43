//! The WireGuard interface: configuration, peers, routing and the data path.
//!
//! # Concurrency
//! A [`Device`] is shared (`&self`) by a TUN thread, a UDP thread and a
//! timer/config caller. Fields are grouped by who guards them:
//! * set once in [`Device::new`]: the clock mapping;
//! * `state: RwLock<State>`: key, ports and the peer tables. The data path
//!   takes it for reading once per packet; configuration takes it for writing;
//! * each peer's `Mutex<PeerInner>`: its session, endpoint and counters,
//!   taken by whichever thread handles that peer's packet;
//! * `gate: Mutex<…>`: the device-wide handshake rate limiter;
//! * `unclaimed: Mutex<…>`: recent initiations from keys that were no peer;
//! * `counters`: atomics.
//!
//! Lock order: `state` → `gate`, `state` → `unclaimed`, and `state` → one peer. No thread holds two
//! peer locks or a peer lock and `gate` at once. The `send` callbacks run
//! with `state` (read) and a peer lock held: they must not call back into
//! the same device.

mod config;
mod peer;
mod unclaimed;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_packet::IpPacket;
use weft_types::{NodePrivate, NodePublic};

use crate::session::{
    self, Clock, GateDecision, HandshakeGate, SessionError, SessionOutput, WgSession,
};
use crate::wire::{self, INITIATION_LEN, MessageKind, TRANSPORT_OVERHEAD};
use peer::{Peer, PeerInner, State};
use unclaimed::Unclaimed;

/// How often drivers should call [`Device::handle_timeout`].
pub const TIMER_TICK: Duration = Duration::from_millis(100);

/// The most bytes [`Device::encapsulate`] adds to an IP packet: the
/// transport header and the AEAD tag (whitepaper §5.4.6).
pub const OVERHEAD: usize = TRANSPORT_OVERHEAD;

/// The smallest output buffer the data path accepts: a handshake initiation
/// (whitepaper §5.4.2).
pub const MIN_OUT: usize = INITIATION_LEN;

/// Why the device dropped a packet. Every drop is counted in [`DeviceStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A datagram that is not a well-formed WireGuard message (type, length).
    Malformed,
    /// A handshake, cookie or data message for no peer we know.
    UnknownPeer,
    /// A message that failed authentication (MAC or AEAD).
    Unauthenticated,
    /// A data message whose counter was already seen or is too old, or a
    /// handshake initiation whose timestamp is not newer than the last one.
    Replayed,
    /// A decrypted packet whose source address is outside the sender's AllowedIPs.
    SpoofedSource,
    /// A decrypted payload that is not a well-formed IPv4/IPv6 packet down
    /// to its transport header (`weft_packet::IpPacket::new` refused it).
    BadInnerPacket,
    /// A packet from TUN whose destination matches no peer's AllowedIPs.
    NoRoute,
    /// A packet for a peer with no known endpoint.
    NoEndpoint,
    /// The device has no private key (it is down).
    NoPrivateKey,
    /// A handshake refused by the rate limiter (a cookie reply was sent instead).
    RateLimited,
    /// A message for an expired session or a connection that gave up.
    Expired,
    /// The caller's output buffer was too small.
    BufferTooSmall,
}

impl DropReason {
    /// Every reason, in order.
    pub const ALL: [DropReason; 12] = [
        Self::Malformed,
        Self::UnknownPeer,
        Self::Unauthenticated,
        Self::Replayed,
        Self::SpoofedSource,
        Self::BadInnerPacket,
        Self::NoRoute,
        Self::NoEndpoint,
        Self::NoPrivateKey,
        Self::RateLimited,
        Self::Expired,
        Self::BufferTooSmall,
    ];
}

impl From<SessionError> for DropReason {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::BufferTooSmall => Self::BufferTooSmall,
            SessionError::Malformed => Self::Malformed,
            SessionError::Unauthenticated => Self::Unauthenticated,
            SessionError::Replayed => Self::Replayed,
            SessionError::NoSession | SessionError::ConnectionExpired => Self::Expired,
            SessionError::UnderLoad => Self::RateLimited,
            SessionError::BadInnerPacket => Self::BadInnerPacket,
        }
    }
}

/// Counters of one device; all monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Datagrams received from the network, of any kind.
    pub rx_datagrams: u64,
    /// Packets taken from TUN.
    pub tx_packets: u64,
    /// Drops by reason, sorted; reasons that never happened are absent.
    pub drops: BTreeMap<DropReason, u64>,
}

impl DeviceStats {
    /// Returns how many packets were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// Returns the number of drops of every reason together.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// What one peer looks like from outside (for `wg show`, status, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    /// The peer's static public key.
    pub public_key: NodePublic,
    /// Where its packets go: configured, or learned from its last authenticated packet.
    pub endpoint: Option<SocketAddr>,
    /// Its prefixes in the routing table, masked and sorted.
    pub allowed_ips: Vec<IpNet>,
    /// Persistent keepalive interval in seconds, if on.
    pub persistent_keepalive: Option<u16>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    /// WireGuard datagram bytes received (authenticated) from this peer.
    pub rx_bytes: u64,
    /// WireGuard datagram bytes sent to this peer.
    pub tx_bytes: u64,
}

/// A typed configuration change, as UAPI `set=1` describes it.
/// `None` means "leave unchanged".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the private key (device down).
    pub private_key: Option<Option<NodePrivate>>,
    /// The UDP port to listen on; 0 lets the driver pick.
    pub listen_port: Option<u16>,
    /// `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    /// Remove every peer before applying `peers`.
    pub replace_peers: bool,
    /// Peer changes, applied in order.
    pub peers: Vec<PeerUpdate>,
}

/// A typed change to one peer. `None` means "leave unchanged".
///
/// Allowed IPs change in this order: `replace_allowed_ips` clears the peer's
/// prefixes, `remove_allowed_ips` removes those it owns, `allowed_ips` adds
/// (taking each prefix from whichever peer had it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    /// Which peer; a peer with our own public key is ignored.
    pub public_key: NodePublic,
    /// Remove the peer; every other field is then ignored.
    pub remove: bool,
    /// Only change an existing peer; never create one.
    pub update_only: bool,
    /// `Some(None)` removes the preshared key.
    pub preshared_key: Option<Option<[u8; 32]>>,
    /// The peer's UDP endpoint (it roams on every authenticated packet).
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` disables persistent keepalive.
    pub persistent_keepalive: Option<u16>,
    /// Remove all of the peer's prefixes first.
    pub replace_allowed_ips: bool,
    /// Prefixes to add (UAPI `allowed_ip=<prefix>`).
    pub allowed_ips: Vec<IpNet>,
    /// Prefixes to remove if the peer owns them (UAPI `allowed_ip=-<prefix>`).
    pub remove_allowed_ips: Vec<IpNet>,
}

impl PeerUpdate {
    /// Returns an update for `public_key` that changes nothing (and creates
    /// the peer if it does not exist).
    pub fn new(public_key: NodePublic) -> Self {
        Self {
            public_key,
            remove: false,
            update_only: false,
            preshared_key: None,
            endpoint: None,
            persistent_keepalive: None,
            replace_allowed_ips: false,
            allowed_ips: Vec::new(),
            remove_allowed_ips: Vec::new(),
        }
    }
}

/// What changed that a driver must act on after [`Device::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The listen port changed to this value: rebind the UDP socket (0 =
    /// pick a port, then report it with [`Device::set_bound_port`]).
    pub listen_port: Option<u16>,
    /// The fwmark changed to this value: set SO_MARK on the socket.
    pub fwmark: Option<u32>,
}

/// Result of [`Device::encapsulate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Encapsulated<'o> {
    /// Send this datagram to `to`.
    Send {
        /// The peer's endpoint.
        to: SocketAddr,
        /// The transport message, in the caller's buffer.
        datagram: &'o [u8],
    },
    /// The packet is queued until a handshake completes; any handshake
    /// message was already handed to the `send` callback.
    Queued,
    /// The packet was dropped and counted.
    Dropped(DropReason),
}

/// Result of [`Device::decapsulate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decapsulated<'o> {
    /// Write this IP packet to TUN. Its source was checked against the
    /// sending peer's AllowedIPs; the view is the one the filter and GRO
    /// read (no second parse).
    ToTunnel(IpPacket<'o>),
    /// Nothing for TUN (a handshake message, cookie or keepalive); any
    /// replies were already handed to the `send` callback.
    Done,
    /// The datagram was dropped and counted.
    Dropped(DropReason),
}

/// A cache line of its own, so the two data-path threads' counters do not
/// share one.
#[repr(align(64))]
#[derive(Default)]
struct Padded(AtomicU64);

#[derive(Default)]
struct Counters {
    rx_datagrams: Padded,
    tx_packets: Padded,
    drops: [AtomicU64; DropReason::ALL.len()],
}

/// A WireGuard interface. See the crate docs for the driving loop.
pub struct Device {
    // --- set once in `new` ---
    clock: Clock,
    // --- key, ports and peers (see the module docs) ---
    state: RwLock<State>,
    // --- the device-wide handshake rate limiter; `None` without a private key ---
    gate: Mutex<Option<HandshakeGate>>,
    // --- recent initiations from keys that were not (yet) peers ---
    unclaimed: Mutex<Unclaimed>,
    // --- lock-free ---
    counters: Counters,
}

/// A datagram being decapsulated, with what is known about it.
#[derive(Clone, Copy)]
struct Incoming<'d> {
    kind: MessageKind,
    from: SocketAddr,
    datagram: &'d [u8],
    now: Instant,
}

/// Packets queued during a handshake are sent in a burst of at most this
/// many (boringtun queues at most 256 per peer).
const MAX_FLUSH: usize = 260;

impl Device {
    /// Creates a device with no key and no peers. `now` and `unix_now` are
    /// the driver's monotonic and wall clocks at the same moment; wall time
    /// reported later (last handshake) is derived from them.
    pub fn new(now: Instant, unix_now: SystemTime) -> Self {
        Self {
            clock: Clock::new(now, unix_now),
            state: RwLock::new(State::default()),
            gate: Mutex::new(None),
            unclaimed: Mutex::new(Unclaimed::default()),
            counters: Counters::default(),
        }
    }

    /// Returns the listen port (0 = not set; the driver picks one).
    pub fn listen_port(&self) -> u16 {
        self.read().listen_port
    }

    /// Returns the fwmark (0 = none).
    pub fn fwmark(&self) -> u32 {
        self.read().fwmark
    }

    /// Returns our public key, or `None` while the device has no private key.
    pub fn public_key(&self) -> Option<NodePublic> {
        self.read().identity.as_ref().map(|id| id.public)
    }

    /// Encrypts one IP packet from TUN for the peer that owns its destination.
    /// `out` must be at least `packet.total_len() + 32` bytes and at least
    /// 148. The driver built the view when it read the packet; bytes that
    /// are no packet never reach the device.
    ///
    /// Without a session the packet is queued, a handshake initiation goes
    /// to `send`, and the packet follows once the handshake completes (from
    /// inside a later [`Device::decapsulate`] or [`Device::handle_timeout`]).
    pub fn encapsulate<'o>(
        &self,
        ip: IpPacket<'_>,
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o> {
        self.counters.tx_packets.0.fetch_add(1, Ordering::Relaxed);
        let state = self.read();
        if state.identity.is_none() {
            return Encapsulated::Dropped(self.count(DropReason::NoPrivateKey));
        }
        let Some(peer) = state.routes.lookup(ip.dst()) else {
            return Encapsulated::Dropped(self.count(DropReason::NoRoute));
        };
        let mut p = peer.lock();
        let Some(to) = p.endpoint else {
            return Encapsulated::Dropped(self.count(DropReason::NoEndpoint));
        };
        let Some(session) = p.session.as_mut() else {
            return Encapsulated::Dropped(self.count(DropReason::NoPrivateKey));
        };
        let since = self.clock.since_epoch(now);
        match session.encapsulate(ip.as_bytes(), out, now) {
            SessionOutput::Network(d) if wire::message_type(d) == wire::MESSAGE_TRANSPORT => {
                p.sent(d.len(), since);
                Encapsulated::Send { to, datagram: d }
            }
            SessionOutput::Network(initiation) => {
                send(to, initiation);
                p.sent(initiation.len(), since);
                Encapsulated::Queued
            }
            SessionOutput::Done => Encapsulated::Queued,
            SessionOutput::Tunnel(_) => Encapsulated::Dropped(self.count(DropReason::Malformed)),
            SessionOutput::Error(e) => Encapsulated::Dropped(self.count(e.into())),
        }
    }

    /// Processes one datagram from the network. `out` must be at least as
    /// large as `datagram` and at least 148 bytes.
    ///
    /// Handshake replies, and packets that were queued waiting for the
    /// handshake this datagram completed, go to `send`.
    pub fn decapsulate<'o>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o> {
        self.counters.rx_datagrams.0.fetch_add(1, Ordering::Relaxed);
        let Some(kind) = MessageKind::classify(datagram) else {
            return Decapsulated::Dropped(self.count(DropReason::Malformed));
        };
        if out.len() < datagram.len().max(MIN_OUT) {
            return Decapsulated::Dropped(self.count(DropReason::BufferTooSmall));
        }
        let state = self.read();
        let peer = if state.identity.is_none() {
            Err(DropReason::NoPrivateKey)
        } else {
            let rx = Incoming {
                kind,
                from,
                datagram,
                now,
            };
            self.find_peer(&state, &rx, out, send)
        };
        let peer = match peer {
            Ok(peer) => peer,
            Err(reason) => return Decapsulated::Dropped(self.count(reason)),
        };
        let mut p = peer.lock();
        let Some(session) = p.session.as_mut() else {
            return Decapsulated::Dropped(self.count(DropReason::NoPrivateKey));
        };
        let since = self.clock.since_epoch(now);
        let out_addr = out.as_ptr().addr();
        match session.decapsulate(Some(from.ip()), datagram, &mut *out, now) {
            SessionOutput::Network(cookie)
                if wire::message_type(cookie) == wire::MESSAGE_COOKIE_REPLY =>
            {
                // The peer's own limiter is under load; the message was not authenticated.
                send(from, cookie);
                Decapsulated::Dropped(self.count(DropReason::RateLimited))
            }
            SessionOutput::Network(reply) => {
                // A response to an initiation, or the keepalive that confirms a response.
                p.authenticated(from, datagram.len(), since);
                if kind == MessageKind::Initiation {
                    p.awaiting_first_transport = true;
                } else {
                    p.last_handshake = Some(since);
                }
                send(from, reply);
                p.sent(reply.len(), since);
                self.flush_queued(&mut p, out, now, send);
                Decapsulated::Done
            }
            SessionOutput::Done => {
                if let MessageKind::Transport { .. } = kind {
                    // A keepalive.
                    self.transport_received(&mut p, from, datagram.len(), since);
                    self.flush_queued(&mut p, out, now, send);
                }
                Decapsulated::Done
            }
            SessionOutput::Tunnel(packet) => {
                self.transport_received(&mut p, from, datagram.len(), since);
                // Locate the packet in `out`, flush into the space after it,
                // and check it (once) where it stays.
                let start = packet.as_ptr().addr().saturating_sub(out_addr);
                let end = start + packet.len();
                let (head, tail) = out.split_at_mut(end.min(out.len()));
                self.flush_queued(&mut p, tail, now, send);
                let head: &'o [u8] = head;
                let verdict = match IpPacket::new(head.get(start..).unwrap_or_default()) {
                    Ok(ip) => match state.routes.lookup(ip.src()) {
                        Some(owner) if Arc::ptr_eq(owner, peer) => Ok(ip),
                        _ => Err(DropReason::SpoofedSource),
                    },
                    Err(_) => Err(DropReason::BadInnerPacket),
                };
                match verdict {
                    Ok(ip) => Decapsulated::ToTunnel(ip),
                    Err(reason) => Decapsulated::Dropped(self.count(reason)),
                }
            }
            SessionOutput::Error(e) => Decapsulated::Dropped(self.count(e.into())),
        }
    }

    /// Runs every peer's timers (handshake retries, rekey, keepalives, expiry)
    /// and sends packets still queued for a session that is now current.
    ///
    /// An initiation dropped because its sender was not a peer yet is
    /// answered here once a configuration change has added that peer (within
    /// [`session::REKEY_TIMEOUT`] of its arrival), instead of leaving the
    /// initiator to retry 5 s later: a new node's first packet to a peer that
    /// learns of it a moment after it learns of the peer gets through at once.
    pub fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        if let Some(gate) = self.gate().as_mut() {
            gate.tick(now);
        }
        self.answer_claimed_initiations(now, send);
        let state = self.read();
        if state.identity.is_none() {
            return;
        }
        let since = self.clock.since_epoch(now);
        let mut buf = [0u8; 2 * MIN_OUT];
        for peer in state.peers.values() {
            let mut p = peer.lock();
            self.peer_timers(&mut p, &mut buf, now, since, send);
        }
    }

    /// Returns device counters.
    pub fn stats(&self) -> DeviceStats {
        let drops = DropReason::ALL
            .iter()
            .zip(&self.counters.drops)
            .map(|(r, n)| (*r, n.load(Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        DeviceStats {
            rx_datagrams: self.counters.rx_datagrams.0.load(Ordering::Relaxed),
            tx_packets: self.counters.tx_packets.0.load(Ordering::Relaxed),
            drops,
        }
    }

    /// Returns every peer's state, sorted by public key.
    pub fn peers(&self, now: Instant) -> Vec<PeerStats> {
        let _ = now;
        let state = self.read();
        let mut ips = state.allowed_ips_by_index();
        state
            .peers
            .values()
            .map(|peer| {
                let p = peer.lock();
                self.peer_stats(peer, &p, ips.remove(&peer.index).unwrap_or_default())
            })
            .collect()
    }

    fn peer_stats(&self, peer: &Peer, p: &PeerInner, allowed_ips: Vec<IpNet>) -> PeerStats {
        PeerStats {
            public_key: peer.public_key,
            endpoint: p.endpoint,
            allowed_ips,
            persistent_keepalive: (p.persistent_keepalive > 0).then_some(p.persistent_keepalive),
            last_handshake: p.last_handshake.map(|t| self.clock.wall(t)),
            rx_bytes: p.rx_bytes,
            tx_bytes: p.tx_bytes,
        }
    }

    /// Finds the peer a datagram is for. Handshake messages first pass the
    /// device rate limiter (which may send a cookie reply instead); an
    /// initiation's sender is then found by decrypting its static key, every
    /// other message's by its receiver index.
    fn find_peer<'s>(
        &self,
        state: &'s State,
        rx: &Incoming<'_>,
        out: &mut [u8],
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<&'s Arc<Peer>, DropReason> {
        let Incoming {
            kind,
            from,
            datagram,
            now,
        } = *rx;
        let Some(identity) = &state.identity else {
            return Err(DropReason::NoPrivateKey);
        };
        let by_index = |receiver| {
            state
                .peer_by_receiver(receiver)
                .ok_or(DropReason::UnknownPeer)
        };
        let receiver = match kind {
            MessageKind::Initiation => None,
            MessageKind::Response { receiver } => Some(receiver),
            MessageKind::CookieReply { receiver } | MessageKind::Transport { receiver } => {
                return by_index(receiver);
            }
        };
        let decision = match self.gate().as_mut() {
            Some(gate) => gate.check(from.ip(), datagram, out, now),
            None => return Err(DropReason::NoPrivateKey),
        };
        match (decision, receiver) {
            (GateDecision::Initiation(init), None) => {
                let key = session::identify_initiator(&identity.statics, &init)?;
                state.peers.get(&key).ok_or_else(|| {
                    // Authenticated (MAC1 and the sender's static key decrypt
                    // under ours) but from no peer yet: kept briefly, in case
                    // the configuration naming that key is on its way.
                    self.unclaimed().remember(key, from, datagram, now);
                    DropReason::UnknownPeer
                })
            }
            (GateDecision::Response, Some(receiver)) => by_index(receiver),
            (GateDecision::Cookie(len), _) => {
                send(from, out.get(..len).unwrap_or_default());
                Err(DropReason::RateLimited)
            }
            (GateDecision::Refuse(e), _) => Err(e.into()),
            (GateDecision::Initiation(_) | GateDecision::Response, _) => Err(DropReason::Malformed),
        }
    }

    /// Book-keeping for an authenticated transport message (data or keepalive).
    fn transport_received(&self, p: &mut PeerInner, from: SocketAddr, len: usize, since: Duration) {
        p.authenticated(from, len, since);
        if p.awaiting_first_transport {
            p.awaiting_first_transport = false;
            p.last_handshake = Some(since);
        }
    }

    /// Sends the packets queued during a handshake, once a session is
    /// current. Uses `buf` when it is large enough, else a temporary buffer
    /// (this runs once per handshake, not per packet).
    fn flush_queued(
        &self,
        p: &mut PeerInner,
        buf: &mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        let PeerInner {
            session: Some(session),
            endpoint: Some(to),
            ..
        } = p
        else {
            return;
        };
        let to = *to;
        let Some(longest) = session.queued_len() else {
            return;
        };
        if !session.has_current_session(now) {
            return; // still waiting for the handshake
        }
        let need = (longest + TRANSPORT_OVERHEAD).max(MIN_OUT);
        let mut heap = Vec::new();
        let buf = if buf.len() >= need {
            buf
        } else {
            heap.resize(need, 0);
            heap.as_mut_slice()
        };
        let since = self.clock.since_epoch(now);
        for _ in 0..MAX_FLUSH {
            let Some(session) = p.session.as_mut() else {
                return;
            };
            match session.next_queued(&mut *buf, now) {
                SessionOutput::Network(d) => {
                    send(to, d);
                    p.sent(d.len(), since);
                }
                _ => return,
            }
        }
    }

    /// One peer's share of [`Device::handle_timeout`].
    fn peer_timers(
        &self,
        p: &mut PeerInner,
        buf: &mut [u8],
        now: Instant,
        since: Duration,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) {
        let mut sent: u64 = 0;
        {
            let PeerInner {
                session: Some(session),
                endpoint,
                persistent_keepalive,
                keepalive_due,
                last_traversal,
                kick,
                expired,
                ..
            } = &mut *p
            else {
                return;
            };
            let endpoint = *endpoint;
            let mut emit = |d: &[u8]| match endpoint {
                Some(to) => {
                    send(to, d);
                    sent += d.len() as u64;
                }
                None => {
                    self.count(DropReason::NoEndpoint);
                }
            };
            match session.update_timers(&mut *buf, now) {
                SessionOutput::Network(d) => emit(d),
                SessionOutput::Error(SessionError::ConnectionExpired) => {
                    if !*expired {
                        *expired = true;
                        tracing::debug!("Peer connection expired; retrying on the next packet");
                    }
                }
                SessionOutput::Error(e) => tracing::trace!(error = %e, "Timer error"),
                SessionOutput::Done | SessionOutput::Tunnel(_) => {}
            }
            if std::mem::take(kick)
                && endpoint.is_some()
                && let SessionOutput::Network(d) = session.initiate_handshake(&mut *buf, now)
            {
                emit(d);
            }
            // Persistent keepalive (wg(8) `PersistentKeepalive`): an empty
            // transport message once the link has been quiet this long; with
            // no session it starts a handshake, keeping NAT mappings open.
            let interval = Duration::from_secs(u64::from(*persistent_keepalive));
            let quiet = last_traversal.is_none_or(|t| since.saturating_sub(t) >= interval);
            if *persistent_keepalive > 0 && endpoint.is_some() && (*keepalive_due || quiet) {
                *keepalive_due = false;
                *last_traversal = Some(since);
                if let SessionOutput::Network(d) = session.encapsulate(&[], &mut *buf, now) {
                    emit(d);
                }
            }
        }
        if sent > 0 {
            p.tx_bytes = p.tx_bytes.saturating_add(sent);
            p.last_traversal = Some(since);
        }
        self.flush_queued(p, buf, now, send);
    }

    /// Replays the remembered initiations whose sender is a peer now.
    fn answer_claimed_initiations(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        let claimed = {
            let state = self.read();
            let mut unclaimed = self.unclaimed();
            if unclaimed.is_empty() {
                return;
            }
            unclaimed.take_claimed(now, |key| state.peers.contains_key(key))
        };
        let mut out = [0u8; 2 * MIN_OUT];
        for init in claimed {
            tracing::debug!(peer = %init.key.short(), "Answering an initiation that arrived before its peer was configured");
            // It passes the rate limiter and the replay check again, as any initiation does.
            let _ = self.decapsulate(init.from, &init.datagram, &mut out, now, send);
        }
    }

    fn unclaimed(&self) -> MutexGuard<'_, Unclaimed> {
        self.unclaimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn count(&self, reason: DropReason) -> DropReason {
        if let Some(n) = self.counters.drops.get(reason as usize) {
            n.fetch_add(1, Ordering::Relaxed);
        }
        tracing::trace!(?reason, "dropped");
        reason
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn gate(&self) -> MutexGuard<'_, Option<HandshakeGate>> {
        self.gate.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `Device` is shared between threads by design.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Device>();
};
