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
//! database in the background ([`persist`]). Host-info changes are rate
//! limited per node ([`budget`]).

pub(crate) mod budget;
pub(crate) mod coordinator;
pub(crate) mod delta;
pub(crate) mod persist;
pub(crate) mod queue;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use ipnet::IpNet;
use weft_control_proto::Encoded;
use weft_control_proto::encode::{EncodeError, FullMapParts, full_map_body};
use weft_control_store::{Node as StoreNode, User};
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
    /// The home relay region the node reported on its current (or last)
    /// stream; runtime only, not stored.
    pub home_relay: Option<u16>,
    /// What peers (and the node itself) see.
    pub wire: Node,
    /// `wire` as JSON.
    pub enc: Encoded<Node>,
}

impl NodeEntry {
    /// Builds the entry (encoding the wire form) as of wall time `now`.
    pub fn new(
        rec: StoreNode,
        home_relay: Option<u16>,
        domain: &DnsName,
        now: UnixMillis,
    ) -> Result<Self, EncodeError> {
        let host: HostInfo = match serde_json::from_value(rec.host_info.clone()) {
            Ok(h) => h,
            Err(e) => {
                // The row stays as stored (an admin can inspect it); the node
                // is served with empty host info until it reports new.
                metrics::counter!("weft_control_corrupt_rows_total", "column" => "host_info")
                    .increment(1);
                tracing::warn!(node = %rec.id, error = %e, "Stored host info does not parse; serving the node without it");
                HostInfo::default()
            }
        };
        let wire = wire_node(&rec, &host, home_relay, domain, now);
        let enc = Encoded::new(&wire)?;
        Ok(NodeEntry {
            rec,
            host,
            home_relay,
            wire,
            enc,
        })
    }

    /// Rebuilds the wire form and its encoding from `rec` and `host`.
    pub fn reencode(&mut self, domain: &DnsName, now: UnixMillis) -> Result<(), EncodeError> {
        self.wire = wire_node(&self.rec, &self.host, self.home_relay, domain, now);
        self.enc = Encoded::new(&self.wire)?;
        Ok(())
    }
}

/// Returns the wire form of a node as of `now`.
pub(crate) fn wire_node(
    rec: &StoreNode,
    host: &HostInfo,
    home_relay: Option<u16>,
    domain: &DnsName,
    now: UnixMillis,
) -> Node {
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
        home_relay,
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

/// A 128-bit digest of a compiled filter or SSH policy: what two node
/// policies are compared by. Two SipHash-1-3 digests with different
/// prefixes over the same content; an accidental collision (2^-128) is not
/// a concern, and the content comes from the administrator's policy and
/// server-assigned addresses, not from nodes.
pub(crate) type ContentKey = (u64, u64);

/// Feeds one traversal of a value into two hashers.
struct Tee(std::hash::DefaultHasher, std::hash::DefaultHasher);

impl Hasher for Tee {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
        self.1.write(bytes);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// Returns the [`ContentKey`] of `value`.
pub(crate) fn content_key<T: Hash + ?Sized>(value: &T) -> ContentKey {
    let mut t = Tee(
        std::hash::DefaultHasher::new(),
        std::hash::DefaultHasher::new(),
    );
    t.1.write_u64(0x7765_6674_2d6b_6579);
    value.hash(&mut t);
    (t.0.finish(), t.1.finish())
}

/// The compiled filter and SSH policy of one node, encoded. Nodes whose
/// compiled policies are equal share one `NodePolicy` (see
/// [`PolicyState::node_policy`]). Only the encodings are kept: the server
/// sends filters, it never matches packets against them.
#[derive(Debug)]
pub(crate) struct NodePolicy {
    /// Digest of the filter rules.
    pub filter_key: ContentKey,
    /// Digest of the SSH policy's encoding.
    pub ssh_key: ContentKey,
    pub filter_enc: Encoded<PacketFilter>,
    pub ssh_enc: Encoded<SshPolicy>,
}

impl NodePolicy {
    fn new(
        filter: &PacketFilter,
        filter_key: ContentKey,
        ssh_enc: Encoded<SshPolicy>,
    ) -> Result<Self, EncodeError> {
        Ok(Self {
            filter_key,
            ssh_key: content_key(ssh_enc.as_bytes()),
            filter_enc: Encoded::new(filter)?,
            ssh_enc,
        })
    }

    /// Returns whether the two hold the same packet filter.
    pub fn same_filter(&self, other: &NodePolicy) -> bool {
        self.filter_key == other.filter_key
    }

    /// Returns whether the two hold the same SSH policy.
    pub fn same_ssh(&self, other: &NodePolicy) -> bool {
        self.ssh_key == other.ssh_key
    }

    /// The key nodes with this policy are shared under.
    pub fn key(&self) -> (ContentKey, ContentKey) {
        (self.filter_key, self.ssh_key)
    }
}

/// The policy in force, compiled against the tailnet of one snapshot. Per
/// node filters are made on first use and kept; nodes with identical
/// compiled filters and SSH policies share one encoded [`NodePolicy`].
#[derive(Debug)]
pub(crate) struct PolicyState {
    pub policy: Arc<Policy>,
    pub tailnet: Tailnet,
    pub compiled: CompiledTailnet,
    index: BTreeMap<NodeId, usize>,
    cache: Vec<OnceLock<Arc<NodePolicy>>>,
    /// The distinct node policies made so far, by content.
    distinct: Mutex<HashMap<(ContentKey, ContentKey), Arc<NodePolicy>>>,
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
            .map(|(i, id)| (*id, i))
            .collect();
        let cache = (0..index.len()).map(|_| OnceLock::new()).collect();
        Self {
            policy,
            tailnet,
            compiled,
            index,
            cache,
            distinct: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the filter and SSH policy of `node` (made on first use).
    pub fn node_policy(&self, node: NodeId) -> Arc<NodePolicy> {
        self.node_policy_reusing(node, None)
    }

    /// As [`PolicyState::node_policy`], but if the node's compiled policy
    /// has the same content as `prev` (what the node has now), `prev`
    /// itself is used: nothing is encoded and the caller can tell the
    /// policy did not change by pointer.
    pub fn node_policy_reusing(
        &self,
        node: NodeId,
        prev: Option<&Arc<NodePolicy>>,
    ) -> Arc<NodePolicy> {
        let Some(slot) = self.index.get(&node).and_then(|&i| self.cache.get(i)) else {
            return empty_node_policy();
        };
        if let Some(np) = slot.get() {
            return np.clone();
        }
        slot.get_or_init(|| self.make(node, prev)).clone()
    }

    fn make(&self, node: NodeId, prev: Option<&Arc<NodePolicy>>) -> Arc<NodePolicy> {
        let filter = self.compiled.packet_filter(node).unwrap_or_default();
        let ssh = self.compiled.ssh_policy(node).unwrap_or_default();
        let Ok(ssh_enc) = Encoded::new(&ssh) else {
            return empty_node_policy();
        };
        let key = (content_key(&filter.rules), content_key(ssh_enc.as_bytes()));
        let distinct = || self.distinct.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(np) = distinct().get(&key) {
            return np.clone();
        }
        let np = match prev {
            Some(p) if p.key() == key => p.clone(),
            _ => match NodePolicy::new(&filter, key.0, ssh_enc) {
                Ok(np) => Arc::new(np),
                Err(_) => return empty_node_policy(),
            },
        };
        // Encoded outside the lock; if another thread made the same policy
        // meanwhile, use theirs so that the encoding stays shared.
        distinct().entry(key).or_insert(np).clone()
    }

    /// Returns how many distinct node policies were made so far.
    #[cfg(test)]
    pub fn distinct_policies(&self) -> usize {
        self.distinct
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn empty_node_policy() -> Arc<NodePolicy> {
    static EMPTY: OnceLock<Arc<NodePolicy>> = OnceLock::new();
    EMPTY
        .get_or_init(|| {
            match Encoded::new(&SshPolicy::default()).and_then(|ssh| {
                let empty = PacketFilter::default();
                NodePolicy::new(&empty, content_key(&empty.rules), ssh)
            }) {
                Ok(np) => Arc::new(np),
                // Encoding empty lists cannot fail.
                Err(_) => std::process::abort(),
            }
        })
        .clone()
}

/// Builds the policy crate's view of the tailnet.
pub(crate) fn policy_tailnet(
    nodes: &BTreeMap<NodeId, Arc<NodeEntry>>,
    users: &BTreeMap<UserId, Arc<UserEntry>>,
) -> Result<Tailnet, weft_policy::TailnetError> {
    let pusers = users
        .values()
        .map(|u| weft_policy::User {
            login: u.user.login_name.clone(),
            role: u.user.role,
            groups: u.user.idp_groups.clone(),
        })
        .collect();
    let pnodes = nodes
        .values()
        .map(|n| {
            let user = n
                .rec
                .user
                .and_then(|u| users.get(&u))
                .map(|u| u.user.login_name.clone());
            weft_policy::Node {
                id: n.rec.id,
                name: n.rec.given_name.clone(),
                user,
                tags: n.rec.tags.clone(),
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
        let Some(ids) = self.policy.compiled.visible_peers(node) else {
            return Vec::new();
        };
        ids.into_iter()
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
pub(crate) struct Published(RwLock<Arc<Snapshot>>, tokio::sync::watch::Sender<u64>);

impl Published {
    pub fn new(s: Arc<Snapshot>) -> Self {
        let version = s.version;
        Self(RwLock::new(s), tokio::sync::watch::Sender::new(version))
    }

    /// Returns a receiver that wakes on every publication (with its version).
    pub fn watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.1.subscribe()
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn store(&self, s: Arc<Snapshot>) {
        let version = s.version;
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = s;
        self.1.send_replace(version);
    }
}

/// The DNS settings a server starts with before an administrator changes
/// them: MagicDNS on, every other name resolved as the host did before.
pub(crate) fn default_dns_config() -> DnsConfig {
    DnsConfig {
        magic_dns: true,
        ..DnsConfig::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;

    use weft_types::{DnsLabel, MachinePublic, NodePublic};

    use super::*;

    pub fn domain() -> DnsName {
        "weft.test".parse().unwrap()
    }

    pub fn users() -> BTreeMap<UserId, Arc<UserEntry>> {
        [(1, "alice@weft.test"), (2, "bob@weft.test")]
            .into_iter()
            .map(|(id, login)| {
                let u = User {
                    id: UserId(id),
                    login_name: login.parse().unwrap(),
                    display_name: String::new(),
                    role: weft_types::Role::Member,
                    created: UnixMillis(0),
                    idp_groups: Default::default(),
                    idp_authenticated: None,
                };
                (UserId(id), Arc::new(UserEntry::new(u).unwrap()))
            })
            .collect()
    }

    /// Node 1 and 2 belong to bob, node 3 to alice.
    pub fn nodes() -> BTreeMap<NodeId, Arc<NodeEntry>> {
        [(1u8, 2), (2, 2), (3, 1)]
            .into_iter()
            .map(|(id, user)| {
                let rec = StoreNode {
                    id: NodeId(i64::from(id)),
                    stable_id: format!("n{id}").parse().unwrap(),
                    machine_key: MachinePublic::from_bytes([id; 32]),
                    node_key: NodePublic::from_bytes([id + 100; 32]),
                    disco_key: None,
                    hostname: format!("n{id}"),
                    given_name: DnsLabel::sanitize(&format!("n{id}")),
                    user: Some(UserId(user)),
                    registered_by: None,
                    tags: BTreeSet::new(),
                    ipv4: Ipv4Addr::new(100, 64, 0, id),
                    ipv6: format!("fd7a:115c:a1e0::{id}").parse().unwrap(),
                    endpoints: Vec::new(),
                    host_info: serde_json::Value::Null,
                    created: UnixMillis(0),
                    last_seen: None,
                    online: true,
                    key_expiry: None,
                    authorized: true,
                    ephemeral: false,
                    preauth_key: None,
                };
                (
                    NodeId(i64::from(id)),
                    Arc::new(NodeEntry::new(rec, None, &domain(), UnixMillis(0)).unwrap()),
                )
            })
            .collect()
    }

    /// Bob's nodes may reach alice's on port 22 (and 80 with `open_80`).
    pub fn policy_state(open_80: bool) -> PolicyState {
        let ports = if open_80 { "22,80" } else { "22" };
        let text = format!(
            r#"{{"acls": [{{"action": "accept", "src": ["bob@weft.test"], "dst": ["alice@weft.test:{ports}"]}}]}}"#
        );
        PolicyState::build(Arc::new(Policy::parse(&text).unwrap()), &nodes(), &users())
    }

    #[test]
    fn nodes_with_identical_compiled_policies_share_one_encoding() {
        let p = policy_state(false);
        let (n1, n2, n3) = (
            p.node_policy(NodeId(1)),
            p.node_policy(NodeId(2)),
            p.node_policy(NodeId(3)),
        );
        // Nothing may reach bob's two nodes: the same (empty) filter, made once.
        assert!(Arc::ptr_eq(&n1, &n2));
        assert!(!n3.same_filter(&n1));
        assert!(
            n3.filter_enc.as_str().contains("100.64.0.3"),
            "{}",
            n3.filter_enc.as_str()
        );
        assert_eq!(p.distinct_policies(), 2);
        // Asking again does not make anything new.
        assert!(Arc::ptr_eq(&p.node_policy(NodeId(3)), &n3));
        assert_eq!(p.distinct_policies(), 2);
    }

    #[test]
    fn a_node_whose_compiled_policy_did_not_change_keeps_the_one_it_has() {
        let (before, after) = (policy_state(false), policy_state(true));
        let old1 = before.node_policy(NodeId(1));
        let old3 = before.node_policy(NodeId(3));
        let new1 = after.node_policy_reusing(NodeId(1), Some(&old1));
        let new3 = after.node_policy_reusing(NodeId(3), Some(&old3));
        assert!(Arc::ptr_eq(&new1, &old1), "bob's filter did not change");
        assert!(!Arc::ptr_eq(&new3, &old3));
        assert!(!new3.same_filter(&old3), "port 80 opened on alice's node");
        assert!(new3.same_ssh(&old3));
        // Bob's other node shares the reused policy.
        assert!(Arc::ptr_eq(&after.node_policy(NodeId(2)), &old1));
    }

    #[test]
    fn a_node_policy_holds_the_node_s_packet_filter_encoded() {
        let p = policy_state(true);
        let filter = p.compiled.packet_filter(NodeId(3)).unwrap();
        assert!(!filter.is_empty());
        let enc = &p.node_policy(NodeId(3)).filter_enc;
        assert_eq!(enc.as_str(), Encoded::new(&filter).unwrap().as_str());
        let back: PacketFilter = serde_json::from_str(enc.as_str()).unwrap();
        assert_eq!(back, filter);
    }
}
