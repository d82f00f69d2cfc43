//! The server's in-memory view of the tailnet, and the task that keeps it.
//!
//! The database is the source of truth; this is the hot path. One
//! immutable [`Snapshot`] (nodes with their JSON fragments encoded once,
//! user profiles, the compiled policy) is published behind a lock that is
//! held only to clone an `Arc`, and swapped whole after every batch of
//! changes. Connection tasks build full maps from the latest snapshot by
//! splicing the fragments; they never query the database.
//!
//! Every change goes through the [`coordinator`] task: it collects changes
//! for a short batch window, applies them, recompiles the policy when
//! identities or the policy changed, computes the deltas each connected
//! node needs ([`delta`]), encodes each distinct delta once and puts the
//! bytes into the streams' bounded queues ([`queue`]). Writes of
//! high-frequency runtime state (online, endpoints, last seen) go to the
//! database in the background ([`persist`]).

pub(crate) mod coordinator;
pub(crate) mod delta;
pub(crate) mod persist;
pub(crate) mod queue;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use ipnet::IpNet;
use weft_control_proto::Encoded;
use weft_control_proto::encode::{EncodeError, FullMapParts, full_map_body};
use weft_control_store::{Node as StoreNode, Role, User};
use weft_policy::{CompiledTailnet, Policy, Tailnet};
use weft_types::netmap::{DnsConfig, PacketFilter, RelayMap, SshPolicy};
use weft_types::{DnsName, HostInfo, MapBody, Node, NodeId, UnixMillis, UserId, UserProfile};

/// A node as the server keeps it: the stored record (with runtime fields
/// kept current in memory) and its wire form, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct NodeEntry {
    /// The record; `online`, `last_seen`, `endpoints`, `disco_key` and
    /// `host_info` are the server's live view (the database follows).
    pub rec: StoreNode,
    /// Host info, parsed.
    pub host: HostInfo,
    /// What peers (and the node itself) see.
    pub wire: Node,
    /// `wire` as JSON.
    pub enc: Encoded<Node>,
}

impl NodeEntry {
    /// Builds the entry (encoding the wire form) as of wall time `now`.
    pub fn new(rec: StoreNode, domain: &DnsName, now: UnixMillis) -> Result<Self, EncodeError> {
        let host: HostInfo = serde_json::from_value(rec.host_info.clone()).unwrap_or_default();
        let wire = wire_node(&rec, &host, domain, now);
        let enc = Encoded::new(&wire)?;
        Ok(NodeEntry {
            rec,
            host,
            wire,
            enc,
        })
    }

    /// Rebuilds the wire form and its encoding from `rec` and `host`.
    pub fn reencode(&mut self, domain: &DnsName, now: UnixMillis) -> Result<(), EncodeError> {
        self.wire = wire_node(&self.rec, &self.host, domain, now);
        self.enc = Encoded::new(&self.wire)?;
        Ok(())
    }

}

/// Returns the wire form of a node as of `now`.
pub(crate) fn wire_node(rec: &StoreNode, host: &HostInfo, domain: &DnsName, now: UnixMillis) -> Node {
    let addresses: Vec<IpNet> = rec.addresses().iter().map(|a| IpNet::from(*a)).collect();
    Node {
        id: rec.id,
        stable_id: rec.stable_id.clone(),
        name: DnsName::with_label(&rec.given_name, domain).unwrap_or_else(|_| domain.clone()),
        owner: rec.owner(),
        node_key: rec.node_key,
        machine_key: rec.machine_key,
        disco_key: rec.disco_key,
        allowed_ips: addresses.clone(),
        addresses,
        endpoints: rec.endpoints.clone(),
        host_info: host.clone(),
        created: rec.created,
        last_seen: rec.last_seen,
        online: rec.online,
        key_expiry: rec.key_expiry,
        expired: rec.is_expired(now),
        machine_authorized: rec.authorized,
    }
}

/// A user and its profile, encoded once.
#[derive(Debug, Clone)]
pub(crate) struct UserEntry {
    pub user: User,
    pub profile: UserProfile,
    pub enc: Encoded<UserProfile>,
}

impl UserEntry {
    pub fn new(user: User) -> Result<Self, EncodeError> {
        let profile = UserProfile {
            id: user.id,
            login_name: user.login_name.clone(),
            display_name: user.display_name.clone(),
            profile_pic_url: None,
        };
        let enc = Encoded::new(&profile)?;
        Ok(Self { user, profile, enc })
    }
}

/// The compiled filter and SSH policy of one node, typed and encoded.
#[derive(Debug)]
pub(crate) struct NodePolicy {
    pub filter: PacketFilter,
    pub ssh: SshPolicy,
    pub filter_enc: Encoded<PacketFilter>,
    pub ssh_enc: Encoded<SshPolicy>,
}

impl NodePolicy {
    fn new(filter: PacketFilter, ssh: SshPolicy) -> Result<Self, EncodeError> {
        Ok(Self {
            filter_enc: Encoded::new(&filter)?,
            ssh_enc: Encoded::new(&ssh)?,
            filter,
            ssh,
        })
    }

    /// Returns whether the two hold the same filter and SSH policy.
    pub fn same_filter(&self, other: &NodePolicy) -> bool {
        self.filter_enc.as_bytes() == other.filter_enc.as_bytes()
    }

    pub fn same_ssh(&self, other: &NodePolicy) -> bool {
        self.ssh_enc.as_bytes() == other.ssh_enc.as_bytes()
    }
}

/// The policy in force, compiled against the tailnet of one snapshot. Per
/// node filters are made on first use and kept.
#[derive(Debug)]
pub(crate) struct PolicyState {
    pub policy: Arc<Policy>,
    pub tailnet: Tailnet,
    pub compiled: CompiledTailnet,
    index: BTreeMap<NodeId, usize>,
    cache: Vec<OnceLock<Arc<NodePolicy>>>,
}

impl PolicyState {
    /// Compiles `policy` for the given nodes and users.
    pub fn build(
        policy: Arc<Policy>,
        nodes: &BTreeMap<NodeId, Arc<NodeEntry>>,
        users: &BTreeMap<UserId, Arc<UserEntry>>,
    ) -> Self {
        let tailnet = match policy_tailnet(nodes, users) {
            Ok(t) => t,
            Err(e) => {
                // Cannot happen with the store's unique constraints; an empty
                // tailnet (no visibility, empty filters) is the safe fallback.
                tracing::error!(error = %e, "cannot build the policy's view of the tailnet");
                Tailnet::default()
            }
        };
        let compiled = weft_policy::compile_all(&policy, &tailnet);
        let index: BTreeMap<NodeId, usize> = compiled
            .node_ids()
            .iter()
            .enumerate()
            .filter_map(|(i, id)| Some((NodeId(i64::try_from(id.0).ok()?), i)))
            .collect();
        let cache = (0..index.len()).map(|_| OnceLock::new()).collect();
        Self {
            policy,
            tailnet,
            compiled,
            index,
            cache,
        }
    }

    /// Returns the filter and SSH policy of `node` (made on first use).
    pub fn node_policy(&self, node: NodeId) -> Arc<NodePolicy> {
        let make = || {
            let pid = policy_id(node);
            let filter = self.compiled.packet_filter(pid).unwrap_or_default();
            let ssh = self.compiled.ssh_policy(pid).unwrap_or_default();
            NodePolicy::new(filter, ssh)
                .map(Arc::new)
                .unwrap_or_else(|_| empty_node_policy())
        };
        match self.index.get(&node).and_then(|&i| self.cache.get(i)) {
            Some(slot) => slot.get_or_init(make).clone(),
            None => empty_node_policy(),
        }
    }
}

fn empty_node_policy() -> Arc<NodePolicy> {
    static EMPTY: OnceLock<Arc<NodePolicy>> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            let filter = PacketFilter::default();
            let ssh = SshPolicy::default();
            match (Encoded::new(&filter), Encoded::new(&ssh)) {
                (Ok(filter_enc), Ok(ssh_enc)) => Arc::new(NodePolicy {
                    filter,
                    ssh,
                    filter_enc,
                    ssh_enc,
                }),
                // Encoding empty lists cannot fail.
                _ => std::process::abort(),
            }
        })
        .clone()
}

/// Converts a node id to the policy crate's id type.
pub(crate) fn policy_id(id: NodeId) -> weft_policy::NodeId {
    weft_policy::NodeId(u64::try_from(id.0).unwrap_or(0))
}

/// Converts the policy crate's id back.
pub(crate) fn node_id(id: weft_policy::NodeId) -> Option<NodeId> {
    i64::try_from(id.0).ok().map(NodeId)
}

/// Builds the policy crate's view of the tailnet.
pub(crate) fn policy_tailnet(
    nodes: &BTreeMap<NodeId, Arc<NodeEntry>>,
    users: &BTreeMap<UserId, Arc<UserEntry>>,
) -> Result<Tailnet, weft_policy::TailnetError> {
    let pusers = users
        .values()
        .map(|u| weft_policy::User {
            login: u.user.login_name.to_string(),
            role: match u.user.role {
                Role::Admin => weft_policy::Role::Admin,
                Role::Member => weft_policy::Role::Member,
            },
        })
        .collect();
    let pnodes = nodes
        .values()
        .map(|n| {
            let user = n
                .rec
                .user
                .and_then(|u| users.get(&u))
                .map(|u| u.user.login_name.to_string());
            weft_policy::Node {
                id: policy_id(n.rec.id),
                name: n.rec.given_name.to_string(),
                user,
                tags: n.rec.tags.iter().map(ToString::to_string).collect(),
                ipv4: Some(n.rec.ipv4),
                ipv6: Some(n.rec.ipv6),
            }
        })
        .collect();
    Tailnet::new(pusers, pnodes)
}

/// Everything the hot path reads, immutable once published.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// Counts up by one per published batch.
    pub version: u64,
    pub nodes: BTreeMap<NodeId, Arc<NodeEntry>>,
    pub users: BTreeMap<UserId, Arc<UserEntry>>,
    pub policy: Arc<PolicyState>,
    /// Nodes waiting for device approval: never anyone's peer.
    pub unauthorized: BTreeSet<NodeId>,
    pub domain: DnsName,
    pub dns: Encoded<DnsConfig>,
    pub relay_map: Encoded<RelayMap>,
}

impl Snapshot {
    /// Returns the peers `node` sees, by id: nodes both may reach in one
    /// direction or the other, both authorized. Symmetric by construction.
    pub fn peers_of(&self, node: NodeId) -> Vec<NodeId> {
        if !self.nodes.contains_key(&node) || self.unauthorized.contains(&node) {
            return Vec::new();
        }
        let Some(ids) = self.policy.compiled.visible_peers(policy_id(node)) else {
            return Vec::new();
        };
        ids.into_iter()
            .filter_map(node_id)
            .filter(|p| *p != node && !self.unauthorized.contains(p))
            .collect()
    }

    /// Builds the full map of `node` by splicing the encoded fragments.
    /// `None` if the node is not in this snapshot.
    pub fn full_map(&self, node: NodeId) -> Option<Result<Encoded<MapBody>, EncodeError>> {
        let me = self.nodes.get(&node)?;
        let peer_ids = self.peers_of(node);
        let peers: Vec<&Encoded<Node>> = peer_ids
            .iter()
            .filter_map(|p| self.nodes.get(p).map(|e| &e.enc))
            .collect();
        let mut owners: BTreeSet<UserId> = BTreeSet::new();
        owners.extend(me.rec.user);
        owners.extend(peer_ids.iter().filter_map(|p| self.nodes.get(p)?.rec.user));
        let profiles: Vec<&Encoded<UserProfile>> = owners
            .iter()
            .filter_map(|u| self.users.get(u).map(|e| &e.enc))
            .collect();
        let np = self.policy.node_policy(node);
        Some(full_map_body(&FullMapParts {
            self_node: &me.enc,
            peers: &peers,
            user_profiles: &profiles,
            domain: &self.domain,
            dns: &self.dns,
            relay_map: &self.relay_map,
            packet_filter: &np.filter_enc,
            ssh_policy: &np.ssh_enc,
        }))
    }
}

/// The published snapshot: read by every connection, replaced by the
/// coordinator. The lock is held only to clone or swap the `Arc`.
#[derive(Debug)]
pub(crate) struct Published(RwLock<Arc<Snapshot>>);

impl Published {
    pub fn new(s: Arc<Snapshot>) -> Self {
        Self(RwLock::new(s))
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn store(&self, s: Arc<Snapshot>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = s;
    }
}

/// DNS settings for a tailnet domain.
pub(crate) fn dns_config(domain: &DnsName) -> DnsConfig {
    DnsConfig {
        magic_dns: true,
        nameservers: Vec::new(),
        search_domains: vec![domain.clone()],
    }
}

