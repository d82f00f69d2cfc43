//! The client's view of a map stream: turns a full map and the deltas after
//! it into the current [`NetMap`], and tells the daemon exactly what changed
//! so it can reprogram WireGuard, DNS and the filter incrementally.
//!
//! [`MapSession`] is sans-IO, driven like every core:
//!
//! 1. Feed each [`MapResponse`] with [`MapSession::handle_response`] and each
//!    keep-alive with [`MapSession::handle_keep_alive`]; apply the returned
//!    [`NetMapDiff`] to the engine, reading the new state from
//!    [`MapSession::netmap`].
//! 2. Ask [`MapSession::poll_timeout`] when the stream counts as stalled.
//! 3. Call [`MapSession::handle_timeout`] then.
//!
//! A response out of sequence, a delta that does not fit the map, or a stall
//! is an error that needs a fresh full map: the session refuses further
//! deltas, keeps the last good netmap (it stays in force while control is
//! away), and the driver reconnects and calls [`MapSession::restart`].
//! The diff for the next full map is then relative to that last good map, so
//! the daemon only touches what really changed across the reconnect.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use weft_types::netmap::{Delta, MapBody, MapResponse, NetMap, PeerDelta};
use weft_types::{Node, NodeId};

/// The default stall timeout: no map message or keep-alive for this long
/// means the stream is dead (2.5 × the server's 60 s keep-alive interval).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(150);

/// Why a map response was refused. After any of these the session needs a
/// new stream ([`MapSession::restart`]) starting with a full map.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// A response with the wrong sequence number (lost, repeated or
    /// reordered message).
    #[error("map response out of sequence: expected seq {expected}, got {got}")]
    UnexpectedSeq {
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// A delta came before the stream's first full map.
    #[error("delta before the first full map")]
    DeltaBeforeFull,
    /// A delta adds a peer that is already in the map.
    #[error("delta adds peer {0}, which is already present")]
    PeerExists(NodeId),
    /// A delta refers to a peer that is not in the map.
    #[error("delta refers to peer {0}, which is not in the map")]
    UnknownPeer(NodeId),
    /// A full map or delta lists the node itself as a peer.
    #[error("node {0} is listed as its own peer")]
    SelfAsPeer(NodeId),
    /// A self-node delta for another node id.
    #[error("self-node delta for node {got}, but this node is {expected}")]
    SelfIdChanged {
        /// This node's id.
        expected: NodeId,
        /// The id in the delta.
        got: NodeId,
    },
    /// A delta removes a user profile that is not in the map.
    #[error("delta removes unknown user profile {0}")]
    UnknownUser(weft_types::UserId),
    /// No message or keep-alive for the stall timeout.
    #[error("map stream stalled: nothing for {0:?}")]
    Stalled(Duration),
    /// An earlier error broke the stream; restart it.
    #[error("map stream needs a restart after an earlier error")]
    NeedsRestart,
}

/// What changed about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerDiff {
    /// The peer is new; see the netmap for it.
    Added,
    /// The peer is gone; here is what it was (its node key, to remove the
    /// WireGuard peer).
    Removed(Box<Node>),
    /// The peer changed; here is what it was, and which parts changed.
    Changed {
        /// The peer before the change.
        previous: Box<Node>,
        /// Which parts changed.
        fields: ChangedFields,
    },
}

/// Which parts of a peer changed. At least one is set in a
/// [`PeerDiff::Changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChangedFields {
    /// The node key (the peer was re-keyed: replace the WireGuard peer).
    pub node_key: bool,
    /// The endpoints or the home relay (where the peer can be reached).
    pub endpoints: bool,
    /// `online` or `last_seen`.
    pub presence: bool,
    /// Anything else (addresses, allowed IPs, expiry, disco key, name…).
    pub other: bool,
}

/// What a map response changed, compared to the map before it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NetMapDiff {
    /// Changed peers by id; peers not listed are unchanged.
    pub peers: BTreeMap<NodeId, PeerDiff>,
    /// The self node changed.
    pub self_node: bool,
    /// Some user profile was added, changed or removed.
    pub user_profiles: bool,
    /// The tailnet domain changed.
    pub domain: bool,
    /// The DNS settings changed.
    pub dns: bool,
    /// The relay map changed.
    pub relay_map: bool,
    /// The packet filter changed.
    pub packet_filter: bool,
    /// The SSH policy changed.
    pub ssh_policy: bool,
}

impl NetMapDiff {
    /// Compares two maps field by field (`None` before the first map: all
    /// of `new` counts as changed).
    pub fn between(old: Option<&NetMap>, new: &NetMap) -> NetMapDiff {
        let Some(old) = old else {
            return NetMapDiff {
                peers: new.peers.keys().map(|id| (*id, PeerDiff::Added)).collect(),
                self_node: true,
                user_profiles: true,
                domain: true,
                dns: true,
                relay_map: true,
                packet_filter: true,
                ssh_policy: true,
            };
        };
        let ids: BTreeSet<NodeId> = old.peers.keys().chain(new.peers.keys()).copied().collect();
        NetMapDiff {
            peers: ids
                .into_iter()
                .filter_map(|id| Some((id, peer_diff(old.peers.get(&id), new.peers.get(&id))?)))
                .collect(),
            self_node: old.self_node != new.self_node,
            user_profiles: old.user_profiles != new.user_profiles,
            domain: old.domain != new.domain,
            dns: old.dns != new.dns,
            relay_map: old.relay_map != new.relay_map,
            packet_filter: old.packet_filter != new.packet_filter,
            ssh_policy: old.ssh_policy != new.ssh_policy,
        }
    }

    /// Returns whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == NetMapDiff::default()
    }
}

/// Compares one peer before and after.
fn peer_diff(before: Option<&Node>, after: Option<&Node>) -> Option<PeerDiff> {
    match (before, after) {
        (None, None) => None,
        (None, Some(_)) => Some(PeerDiff::Added),
        (Some(b), None) => Some(PeerDiff::Removed(Box::new(b.clone()))),
        (Some(b), Some(a)) if a == b => None,
        (Some(b), Some(a)) => {
            let mut rest_b = b.clone();
            rest_b.node_key = a.node_key;
            rest_b.endpoints.clone_from(&a.endpoints);
            rest_b.home_relay = a.home_relay;
            rest_b.online = a.online;
            rest_b.last_seen = a.last_seen;
            let fields = ChangedFields {
                node_key: a.node_key != b.node_key,
                endpoints: a.endpoints != b.endpoints || a.home_relay != b.home_relay,
                presence: a.online != b.online || a.last_seen != b.last_seen,
                other: rest_b != *a,
            };
            Some(PeerDiff::Changed {
                previous: Box::new(b.clone()),
                fields,
            })
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamState {
    /// Waiting for the stream's first response (a full map with seq 1).
    Starting,
    /// Following the stream; the last accepted response had this seq.
    Following { last_seq: u64 },
    /// An error broke the stream.
    Broken,
}

/// The client's map stream state machine. See the module docs.
#[derive(Debug, Clone)]
pub struct MapSession {
    netmap: Option<NetMap>,
    stream: StreamState,
    stall_timeout: Duration,
    last_activity: Instant,
}

impl MapSession {
    /// Starts a session for a new stream, with no netmap yet.
    pub fn new(stall_timeout: Duration, now: Instant) -> Self {
        Self {
            netmap: None,
            stream: StreamState::Starting,
            stall_timeout,
            last_activity: now,
        }
    }

    /// Starts a session for a new stream from a netmap kept from before
    /// (e.g. loaded from the state file), so the first full map's diff is
    /// relative to it.
    pub fn with_netmap(netmap: NetMap, stall_timeout: Duration, now: Instant) -> Self {
        Self {
            netmap: Some(netmap),
            ..Self::new(stall_timeout, now)
        }
    }

    /// Expects a new stream (after a reconnect): the next response must be
    /// a full map with seq 1. The current netmap stays.
    pub fn restart(&mut self, now: Instant) {
        self.stream = StreamState::Starting;
        self.last_activity = now;
    }

    /// Returns the current netmap (the last good one after an error).
    pub fn netmap(&self) -> Option<&NetMap> {
        self.netmap.as_ref()
    }

    /// Returns the seq of the last accepted response (`None` before the
    /// first of this stream or after an error).
    pub fn last_seq(&self) -> Option<u64> {
        match self.stream {
            StreamState::Following { last_seq } => Some(last_seq),
            StreamState::Starting | StreamState::Broken => None,
        }
    }

    /// Applies one map response and returns what changed.
    ///
    /// # Errors
    /// A [`MapError`]; the netmap is left as it was and the session needs a
    /// [`MapSession::restart`] on a new stream.
    pub fn handle_response(
        &mut self,
        resp: MapResponse,
        now: Instant,
    ) -> Result<NetMapDiff, MapError> {
        let expected = match self.stream {
            StreamState::Starting => 1,
            StreamState::Following { last_seq } => last_seq + 1,
            StreamState::Broken => return Err(MapError::NeedsRestart),
        };
        let result = if resp.seq != expected {
            Err(MapError::UnexpectedSeq {
                expected,
                got: resp.seq,
            })
        } else {
            match resp.body {
                MapBody::Full(map) => self.apply_full(*map),
                MapBody::Delta(_) if self.stream == StreamState::Starting => {
                    Err(MapError::DeltaBeforeFull)
                }
                MapBody::Delta(deltas) => self.apply_deltas(deltas),
            }
        };
        match result {
            Ok(diff) => {
                self.stream = StreamState::Following { last_seq: resp.seq };
                self.last_activity = now;
                Ok(diff)
            }
            Err(e) => {
                self.stream = StreamState::Broken;
                Err(e)
            }
        }
    }

    /// Notes a keep-alive from the server (pushes the stall deadline out).
    pub fn handle_keep_alive(&mut self, now: Instant) {
        self.last_activity = now;
    }

    /// Returns when the stream counts as stalled (`None` once broken).
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match self.stream {
            StreamState::Broken => None,
            StreamState::Starting | StreamState::Following { .. } => {
                Some((self.last_activity + self.stall_timeout, "map stream stall"))
            }
        }
    }

    /// Checks the stall deadline.
    ///
    /// # Errors
    /// [`MapError::Stalled`] once nothing arrived for the stall timeout; the
    /// session then needs a restart.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), MapError> {
        if self.stream != StreamState::Broken && now >= self.last_activity + self.stall_timeout {
            self.stream = StreamState::Broken;
            return Err(MapError::Stalled(self.stall_timeout));
        }
        Ok(())
    }

    fn apply_full(&mut self, map: NetMap) -> Result<NetMapDiff, MapError> {
        let self_id = map.self_node.id;
        if map.peers.contains_key(&self_id) {
            return Err(MapError::SelfAsPeer(self_id));
        }
        let diff = NetMapDiff::between(self.netmap.as_ref(), &map);
        self.netmap = Some(map);
        Ok(diff)
    }

    fn apply_deltas(&mut self, deltas: Vec<Delta>) -> Result<NetMapDiff, MapError> {
        let Some(map) = self.netmap.as_mut() else {
            return Err(MapError::DeltaBeforeFull);
        };
        validate(map, &deltas)?;

        // Remember each touched part as it was before the batch, apply the
        // batch, then compare: a batch that changes something and changes it
        // back reports nothing.
        let mut before = Before::default();
        for delta in deltas {
            match delta {
                Delta::Peer(pd) => {
                    let id = peer_delta_id(&pd);
                    before
                        .peers
                        .entry(id)
                        .or_insert_with(|| map.peers.get(&id).cloned());
                    apply_peer(map, pd);
                }
                Delta::SelfNode(node) => {
                    before
                        .self_node
                        .get_or_insert_with(|| map.self_node.clone());
                    map.self_node = *node;
                }
                Delta::UserProfile(p) => {
                    before
                        .user_profiles
                        .get_or_insert_with(|| map.user_profiles.clone());
                    map.user_profiles.insert(p.id, p);
                }
                Delta::UserProfileRemoved(id) => {
                    before
                        .user_profiles
                        .get_or_insert_with(|| map.user_profiles.clone());
                    map.user_profiles.remove(&id);
                }
                Delta::Dns(d) => {
                    before.dns.get_or_insert_with(|| map.dns.clone());
                    map.dns = d;
                }
                Delta::RelayMap(r) => {
                    before
                        .relay_map
                        .get_or_insert_with(|| map.relay_map.clone());
                    map.relay_map = r;
                }
                Delta::PacketFilter(f) => {
                    before
                        .packet_filter
                        .get_or_insert_with(|| map.packet_filter.clone());
                    map.packet_filter = *f;
                }
                Delta::SshPolicy(p) => {
                    before
                        .ssh_policy
                        .get_or_insert_with(|| map.ssh_policy.clone());
                    map.ssh_policy = p;
                }
            }
        }
        Ok(before.diff(map))
    }
}

/// The parts of a netmap a delta batch touched, as they were before it.
#[derive(Default)]
struct Before {
    peers: BTreeMap<NodeId, Option<Node>>,
    self_node: Option<Node>,
    user_profiles: Option<BTreeMap<weft_types::UserId, weft_types::UserProfile>>,
    dns: Option<weft_types::netmap::DnsConfig>,
    relay_map: Option<weft_types::netmap::RelayMap>,
    packet_filter: Option<weft_types::netmap::PacketFilter>,
    ssh_policy: Option<weft_types::netmap::SshPolicy>,
}

impl Before {
    fn diff(self, map: &NetMap) -> NetMapDiff {
        fn changed<T: PartialEq>(old: Option<T>, new: &T) -> bool {
            old.is_some_and(|o| o != *new)
        }
        NetMapDiff {
            peers: self
                .peers
                .into_iter()
                .filter_map(|(id, old)| Some((id, peer_diff(old.as_ref(), map.peers.get(&id))?)))
                .collect(),
            self_node: changed(self.self_node, &map.self_node),
            user_profiles: changed(self.user_profiles, &map.user_profiles),
            domain: false,
            dns: changed(self.dns, &map.dns),
            relay_map: changed(self.relay_map, &map.relay_map),
            packet_filter: changed(self.packet_filter, &map.packet_filter),
            ssh_policy: changed(self.ssh_policy, &map.ssh_policy),
        }
    }
}

fn peer_delta_id(pd: &PeerDelta) -> NodeId {
    match pd {
        PeerDelta::Added(n) | PeerDelta::Changed(n) => n.id,
        PeerDelta::Removed(id) | PeerDelta::Endpoints { id, .. } | PeerDelta::Online { id, .. } => {
            *id
        }
    }
}

/// Checks that every delta of a batch fits the map as the batch goes
/// along, without changing the map.
fn validate(map: &NetMap, deltas: &[Delta]) -> Result<(), MapError> {
    let self_id = map.self_node.id;
    // Presence of peers and profiles the batch has changed so far.
    let mut peers: BTreeMap<NodeId, bool> = BTreeMap::new();
    let mut users: BTreeMap<weft_types::UserId, bool> = BTreeMap::new();
    let peer_present = |peers: &BTreeMap<NodeId, bool>, id: NodeId| {
        peers
            .get(&id)
            .copied()
            .unwrap_or_else(|| map.peers.contains_key(&id))
    };
    for delta in deltas {
        match delta {
            Delta::Peer(pd) => {
                let id = peer_delta_id(pd);
                if id == self_id {
                    return Err(MapError::SelfAsPeer(id));
                }
                let present = peer_present(&peers, id);
                match pd {
                    PeerDelta::Added(_) if present => return Err(MapError::PeerExists(id)),
                    PeerDelta::Added(_) => {
                        peers.insert(id, true);
                    }
                    _ if !present => return Err(MapError::UnknownPeer(id)),
                    PeerDelta::Removed(_) => {
                        peers.insert(id, false);
                    }
                    PeerDelta::Changed(_)
                    | PeerDelta::Endpoints { .. }
                    | PeerDelta::Online { .. } => {}
                }
            }
            Delta::SelfNode(n) if n.id != self_id => {
                return Err(MapError::SelfIdChanged {
                    expected: self_id,
                    got: n.id,
                });
            }
            Delta::UserProfile(p) => {
                users.insert(p.id, true);
            }
            Delta::UserProfileRemoved(id) => {
                let present = users
                    .get(id)
                    .copied()
                    .unwrap_or_else(|| map.user_profiles.contains_key(id));
                if !present {
                    return Err(MapError::UnknownUser(*id));
                }
                users.insert(*id, false);
            }
            Delta::SelfNode(_)
            | Delta::Dns(_)
            | Delta::RelayMap(_)
            | Delta::PacketFilter(_)
            | Delta::SshPolicy(_) => {}
        }
    }
    Ok(())
}

/// Applies one validated peer delta.
fn apply_peer(map: &mut NetMap, pd: PeerDelta) {
    match pd {
        PeerDelta::Added(n) | PeerDelta::Changed(n) => {
            map.peers.insert(n.id, *n);
        }
        PeerDelta::Removed(id) => {
            map.peers.remove(&id);
        }
        PeerDelta::Endpoints {
            id,
            endpoints,
            home_relay,
        } => {
            if let Some(p) = map.peers.get_mut(&id) {
                p.endpoints = endpoints;
                p.home_relay = home_relay;
            }
        }
        PeerDelta::Online {
            id,
            online,
            last_seen,
        } => {
            if let Some(p) = map.peers.get_mut(&id) {
                p.online = online;
                p.last_seen = Some(last_seen);
            }
        }
    }
}
