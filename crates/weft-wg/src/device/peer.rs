//! One configured peer and the device's peer tables.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_types::{NodePrivate, NodePublic};
use zeroize::Zeroizing;

use crate::allowed_ips::AllowedIps;
use crate::session::{BoringSession, Clock, StaticIdentity, WgSession};

/// Local indexes are 24 bits: boringtun puts a session counter in the low
/// 8 bits of every 32-bit receiver index (whitepaper §5.4.2 leaves the
/// index's structure to the implementation).
pub(super) const MAX_INDEX: u32 = (1 << 24) - 1;

/// One peer. The key and index never change; everything else is behind
/// `inner`, taken by whichever thread is handling this peer's traffic.
pub(super) struct Peer {
    pub(super) public_key: NodePublic,
    /// This peer's 24-bit local index (never 0): receiver indexes it uses to
    /// address us are `index << 8 | n`.
    pub(super) index: u32,
    inner: Mutex<PeerInner>,
}

impl Peer {
    /// Takes the peer's lock. A poisoned lock is recovered: nothing in this
    /// crate panics while holding it, and a peer must never wedge the device.
    pub(super) fn lock(&self) -> MutexGuard<'_, PeerInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A peer's mutable state. Times are durations since the device epoch.
pub(super) struct PeerInner {
    /// The Noise session; `None` while the device has no private key.
    pub(super) session: Option<BoringSession>,
    pub(super) endpoint: Option<SocketAddr>,
    pub(super) preshared_key: Option<Zeroizing<[u8; 32]>>,
    /// Persistent keepalive interval in seconds; 0 = off. Run by the device,
    /// not by boringtun, so changing it does not reset the session.
    pub(super) persistent_keepalive: u16,
    /// Send a persistent keepalive at the next tick (it was just turned on).
    pub(super) keepalive_due: bool,
    /// Last authenticated packet sent to or received from this peer.
    pub(super) last_traversal: Option<Duration>,
    /// WireGuard datagram bytes, as wireguard-go counts them: everything we
    /// sent to the peer, and every authenticated datagram from it.
    pub(super) rx_bytes: u64,
    pub(super) tx_bytes: u64,
    /// When the last handshake completed.
    pub(super) last_handshake: Option<Duration>,
    /// As responder we answered an initiation; the handshake completes when
    /// the first transport message arrives (as wireguard-go counts it).
    pub(super) awaiting_first_transport: bool,
    /// Start a handshake at the next tick: our keys changed under a live session.
    pub(super) kick: bool,
    /// The connection gave up (already logged).
    pub(super) expired: bool,
}

impl PeerInner {
    /// Records a datagram sent to the peer.
    pub(super) fn sent(&mut self, len: usize, since: Duration) {
        self.tx_bytes = self.tx_bytes.saturating_add(len as u64);
        self.last_traversal = Some(since);
    }

    /// Records an authenticated datagram from the peer; it roams to `from`.
    pub(super) fn authenticated(&mut self, from: SocketAddr, len: usize, since: Duration) {
        self.rx_bytes = self.rx_bytes.saturating_add(len as u64);
        self.last_traversal = Some(since);
        self.endpoint = Some(from);
        self.expired = false;
    }

    /// (Re)creates the session with our key and this peer's settings.
    pub(super) fn new_session(
        &mut self,
        key: &NodePrivate,
        peer: &Peer,
        clock: Clock,
        now: Instant,
    ) {
        let psk = self.preshared_key.as_deref().copied();
        self.session = Some(BoringSession::new(
            key,
            &peer.public_key,
            psk,
            peer.index,
            clock,
            now,
        ));
    }

    /// Returns true when a session is current.
    pub(super) fn has_current_session(&mut self, now: Instant) -> bool {
        self.session
            .as_mut()
            .is_some_and(|s| s.has_current_session(now))
    }
}

/// Our static key, in every form the device needs.
pub(super) struct Identity {
    pub(super) private: NodePrivate,
    pub(super) public: NodePublic,
    pub(super) statics: StaticIdentity,
}

impl Identity {
    pub(super) fn new(private: NodePrivate) -> Self {
        let public = private.public();
        let statics = StaticIdentity::new(&private);
        Self {
            private,
            public,
            statics,
        }
    }
}

/// Configuration and peers: read-locked on the data path, write-locked by
/// configuration changes. The three peer tables always hold the same peers.
#[derive(Default)]
pub(super) struct State {
    pub(super) identity: Option<Identity>,
    pub(super) listen_port: u16,
    pub(super) fwmark: u32,
    /// Peers by public key; iterated (timers, `get`) in key order.
    pub(super) peers: BTreeMap<NodePublic, Arc<Peer>>,
    /// Peers by local index: `slots[index - 1]`.
    slots: Vec<Option<Arc<Peer>>>,
    /// Cryptokey routing: prefix → peer.
    pub(super) routes: AllowedIps<Arc<Peer>>,
}

impl State {
    /// Returns the peer that owns the receiver index of an incoming message.
    #[inline]
    pub(super) fn peer_by_receiver(&self, receiver: u32) -> Option<&Arc<Peer>> {
        let slot = usize::try_from((receiver >> 8).checked_sub(1)?).ok()?;
        self.slots.get(slot)?.as_ref()
    }

    /// Adds a peer with default settings, or returns `None` when all
    /// 2^24 − 1 local indexes are taken.
    pub(super) fn add_peer(
        &mut self,
        public_key: NodePublic,
        clock: Clock,
        now: Instant,
    ) -> Option<Arc<Peer>> {
        let slot = match self.slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if self.slots.len() < MAX_INDEX as usize => {
                self.slots.push(None);
                self.slots.len() - 1
            }
            None => return None,
        };
        let index = u32::try_from(slot + 1).ok()?;
        let inner = PeerInner {
            session: None,
            endpoint: None,
            preshared_key: None,
            persistent_keepalive: 0,
            keepalive_due: false,
            last_traversal: None,
            rx_bytes: 0,
            tx_bytes: 0,
            last_handshake: None,
            awaiting_first_transport: false,
            kick: false,
            expired: false,
        };
        let peer = Arc::new(Peer {
            public_key,
            index,
            inner: Mutex::new(inner),
        });
        if let Some(id) = &self.identity {
            peer.lock().new_session(&id.private, &peer, clock, now);
        }
        *self.slots.get_mut(slot)? = Some(Arc::clone(&peer));
        self.peers.insert(public_key, Arc::clone(&peer));
        Some(peer)
    }

    /// Removes a peer from every table.
    pub(super) fn remove_peer(&mut self, public_key: &NodePublic) {
        let Some(peer) = self.peers.remove(public_key) else {
            return;
        };
        if let Some(slot) = usize::try_from(peer.index.saturating_sub(1))
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        {
            *slot = None;
        }
        self.routes.remove_value(|p| Arc::ptr_eq(p, &peer));
        while self.slots.last().is_some_and(Option::is_none) {
            self.slots.pop();
        }
    }

    /// Removes every peer.
    pub(super) fn remove_all_peers(&mut self) {
        self.peers.clear();
        self.slots.clear();
        self.routes.clear();
    }

    /// Returns each peer's allowed IPs, sorted, keyed by local index.
    pub(super) fn allowed_ips_by_index(&self) -> BTreeMap<u32, Vec<IpNet>> {
        let mut out: BTreeMap<u32, Vec<IpNet>> = BTreeMap::new();
        for (net, peer) in self.routes.iter() {
            out.entry(peer.index).or_default().push(net);
        }
        for nets in out.values_mut() {
            nets.sort();
        }
        out
    }
}
