//! Which deltas each connected node needs after a batch, encoded as few
//! times as possible.
//!
//! Visibility is symmetric and depends only on the two nodes (their
//! identities and addresses) and the policy. So when the policy is the
//! same, a batch can only change what a recipient sees *about the nodes
//! that changed*, plus, for a recipient whose own identity changed, which
//! peers it sees. For every changed node `c` the engine walks the nodes
//! that see `c` before or after the batch (one row of the visibility
//! matrix) and decides one operation per (recipient, `c`):
//!
//! | before | after | operation |
//! |---|---|---|
//! | no | yes | `added` |
//! | yes | no | `removed` |
//! | yes | yes | `changed`, or the narrow `endpoints` / `online` |
//!
//! The per-recipient lists are cut into chunks of [`CHUNK`] changed nodes.
//! Recipients with the same operations in a chunk (with an allow-all policy:
//! everyone except the changed nodes themselves) share one encoded body, so
//! a batch costs O(changes × visible peers) decisions, O(distinct chunks)
//! encodings, and per recipient only queue pushes. What is personal (the
//! node's own record, its packet filter and SSH policy, peers that appear
//! or vanish because *its* identity changed) goes in one extra body.
//!
//! A policy change (or a user change, which can move `autogroup:admin`)
//! recomputes every recipient's peer set; a recipient whose delta would be
//! longer than [`FULL_THRESHOLD`] operations gets a fresh full map instead.
//! A recipient gets a packet filter or SSH policy only if its content
//! changed (compared by digest, see [`super::PolicyState::node_policy_reusing`]);
//! the policy is spliced into the body already encoded, and recipients whose
//! body is only the same policy share one encoded body.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use weft_control_proto::Encoded;
use weft_control_proto::encode::{delta_body, delta_body_with_policy};
use weft_types::netmap::{Delta, PeerDelta};
use weft_types::{MapBody, NodeId, UserId};

use super::{ContentKey, NodePolicy, Snapshot};

/// How a node changed in a batch (bits).
pub(crate) mod kind {
    /// New node.
    pub const ADDED: u8 = 1;
    /// Deleted node.
    pub const REMOVED: u8 = 2;
    /// Any field that the narrow deltas do not cover.
    pub const FULL: u8 = 4;
    /// Endpoints.
    pub const ENDPOINTS: u8 = 8;
    /// Online state and last seen.
    pub const ONLINE: u8 = 16;
    /// Something visibility or filters depend on: owner, tags, addresses,
    /// authorization (set with ADDED and REMOVED too).
    pub const IDENTITY: u8 = 32;
}

mod op {
    pub const ADDED: u8 = 1;
    pub const REMOVED: u8 = 2;
    pub const CHANGED: u8 = 4;
    pub const ENDPOINTS: u8 = 8;
    pub const ONLINE: u8 = 16;
}

/// A chunk's index and its operations: what one shared body holds.
type ChunkKey<'a> = (usize, &'a [(u32, u8)]);

/// A node policy's content and which of its parts a body carries.
type PolicyBodyKey = ((ContentKey, ContentKey), bool, bool);

/// Changed nodes per shared body.
pub(crate) const CHUNK: usize = 64;
/// Operations beyond which a recipient gets a full map instead of a delta.
pub(crate) const FULL_THRESHOLD: usize = 1024;

/// A connected node, as the delta engine sees it.
#[derive(Debug)]
pub(crate) struct Recipient {
    pub node: NodeId,
    /// The filter and SSH policy it has (updated here).
    pub sent: Arc<NodePolicy>,
}

/// What one recipient gets.
#[derive(Debug)]
pub(crate) enum Output {
    /// Nothing changed for it.
    Nothing,
    /// These bodies, in order.
    Bodies(Vec<Encoded<MapBody>>),
    /// A fresh full map.
    Full,
}

/// The batch to turn into deltas.
#[derive(Debug)]
pub(crate) struct Batch<'a> {
    pub old: &'a Snapshot,
    pub new: &'a Snapshot,
    /// Changed nodes and how ([`kind`] bits).
    pub changes: &'a BTreeMap<NodeId, u8>,
    /// Recompute every recipient's peer set (policy or users changed).
    pub recompute_all: bool,
}

/// Decides the operation for a (recipient, peer) pair.
fn decide(before: bool, after: bool, k: u8) -> u8 {
    match (before, after) {
        (false, true) => op::ADDED,
        (true, false) => op::REMOVED,
        (true, true) if k & (kind::FULL | kind::IDENTITY | kind::ADDED) != 0 => op::CHANGED,
        (true, true) => {
            (if k & kind::ENDPOINTS != 0 {
                op::ENDPOINTS
            } else {
                0
            }) | (if k & kind::ONLINE != 0 { op::ONLINE } else { 0 })
        }
        (false, false) => 0,
    }
}

/// Walks two ascending id lists together: `(id, in_a, in_b)`.
fn merge<'a>(a: &'a [NodeId], b: &'a [NodeId]) -> impl Iterator<Item = (NodeId, bool, bool)> + 'a {
    let (mut i, mut j) = (0, 0);
    std::iter::from_fn(move || match (a.get(i), b.get(j)) {
        (Some(&x), Some(&y)) if x == y => {
            i += 1;
            j += 1;
            Some((x, true, true))
        }
        (Some(&x), Some(&y)) if x < y => {
            i += 1;
            Some((x, true, false))
        }
        (Some(_), Some(&y)) => {
            j += 1;
            Some((y, false, true))
        }
        (Some(&x), None) => {
            i += 1;
            Some((x, true, false))
        }
        (None, Some(&y)) => {
            j += 1;
            Some((y, false, true))
        }
        (None, None) => None,
    })
}

/// Computes every recipient's output. Updates each recipient's `sent`
/// policy. Returns outputs in recipient order.
pub(crate) fn compute(batch: &Batch<'_>, recipients: &mut [Recipient]) -> Vec<Output> {
    let Batch {
        old,
        new,
        changes,
        recompute_all,
    } = *batch;
    let slot: HashMap<NodeId, usize> = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| (r.node, i))
        .collect();
    let changed: Vec<(NodeId, u8)> = changes.iter().map(|(id, k)| (*id, *k)).collect();

    // 1. Shared operations: (recipient, changed node) pairs.
    let mut ops: Vec<Vec<(u32, u8)>> = vec![Vec::new(); recipients.len()];
    for (ci, &(c, k)) in changed.iter().enumerate() {
        let after = if k & kind::REMOVED != 0 {
            Vec::new()
        } else {
            new.peers_of(c)
        };
        let same_visibility =
            !recompute_all && k & (kind::IDENTITY | kind::ADDED | kind::REMOVED) == 0;
        let before = if same_visibility {
            None
        } else {
            Some(old.peers_of(c))
        };
        let ci = u32::try_from(ci).unwrap_or(u32::MAX);
        let mut visit = |r: NodeId, b: bool, a: bool| {
            if let Some(&s) = slot.get(&r) {
                let o = decide(b, a, k);
                if o != 0
                    && let Some(list) = ops.get_mut(s)
                {
                    list.push((ci, o));
                }
            }
        };
        match &before {
            None => after.iter().for_each(|&r| visit(r, true, true)),
            Some(before) => merge(before, &after).for_each(|(r, b, a)| visit(r, b, a)),
        }
    }

    // 2. Encode shared chunks once per distinct content.
    let mut cache: HashMap<ChunkKey<'_>, Encoded<MapBody>> = HashMap::new();
    let mut policy_bodies: HashMap<PolicyBodyKey, Encoded<MapBody>> = HashMap::new();
    let mut outputs = Vec::with_capacity(recipients.len());
    let policy_changed = !Arc::ptr_eq(&old.policy, &new.policy);
    // A new relay map goes to everyone in one body, encoded once.
    let relay_body = (old.relay_map.as_bytes() != new.relay_map.as_bytes())
        .then(|| serde_json::from_slice(new.relay_map.as_bytes()).ok())
        .flatten()
        .and_then(|map| delta_body(&[Delta::RelayMap(map)]).ok());
    // New DNS settings likewise.
    let dns_body = (old.dns.as_bytes() != new.dns.as_bytes())
        .then(|| serde_json::from_slice(new.dns.as_bytes()).ok())
        .flatten()
        .and_then(|dns| delta_body(&[Delta::Dns(dns)]).ok());
    for (s, r) in recipients.iter_mut().enumerate() {
        let own = changes.get(&r.node).copied().unwrap_or(0);
        let shared = ops.get(s).map(Vec::as_slice).unwrap_or_default();

        // Personal: peers that appear or vanish because this recipient's
        // identity (or the policy) changed; changed peers are in `shared`.
        let mut personal_peers: Vec<(NodeId, u8)> = Vec::new();
        if recompute_all || own & kind::IDENTITY != 0 {
            let before = old.peers_of(r.node);
            let after = new.peers_of(r.node);
            for (p, b, a) in merge(&before, &after) {
                if !changes.contains_key(&p) {
                    let o = decide(b, a, 0);
                    if o != 0 {
                        personal_peers.push((p, o));
                    }
                }
            }
        }
        // Reusing what the node has when the content is the same: an
        // unchanged node costs a digest of its rules, not an encoding.
        let np = if policy_changed {
            new.policy.node_policy_reusing(r.node, Some(&r.sent))
        } else {
            r.sent.clone()
        };
        if shared.len() + personal_peers.len() > FULL_THRESHOLD {
            r.sent = np;
            outputs.push(Output::Full);
            continue;
        }

        let mut bodies = Vec::new();
        bodies.extend(relay_body.clone());
        bodies.extend(dns_body.clone());
        for chunk in shared.chunk_by(|a, b| a.0 as usize / CHUNK == b.0 as usize / CHUNK) {
            let Some(first) = chunk.first() else { continue };
            let key = (first.0 as usize / CHUNK, chunk);
            if let Some(body) = cache.get(&key) {
                bodies.push(body.clone());
                continue;
            }
            let ops: Vec<(NodeId, u8)> = chunk
                .iter()
                .filter_map(|(ci, o)| Some((changed.get(*ci as usize)?.0, *o)))
                .collect();
            let mut deltas = Vec::new();
            peer_deltas(new, &ops, &mut deltas);
            if let Ok(body) = delta_body(&deltas) {
                cache.insert(key, body.clone());
                bodies.push(body);
            }
        }

        let mut deltas = Vec::new();
        peer_deltas(new, &personal_peers, &mut deltas);
        if own & kind::REMOVED == 0
            && own & (kind::FULL | kind::IDENTITY | kind::ENDPOINTS | kind::ONLINE) != 0
            && let Some(me) = new.nodes.get(&r.node)
        {
            deltas.push(Delta::SelfNode(Box::new(me.wire.clone())));
        }
        let send_filter = policy_changed && !np.same_filter(&r.sent);
        let send_ssh = policy_changed && !np.same_ssh(&r.sent);
        let filter = send_filter.then_some(&np.filter_enc);
        let ssh = send_ssh.then_some(&np.ssh_enc);
        if deltas.is_empty() && (send_filter || send_ssh) {
            // Only the policy: nodes with the same one share the body.
            let key = (np.key(), send_filter, send_ssh);
            if let Some(body) = policy_bodies.get(&key) {
                bodies.push(body.clone());
            } else if let Ok(body) = delta_body_with_policy(&[], filter, ssh) {
                policy_bodies.insert(key, body.clone());
                bodies.push(body);
            }
        } else if (!deltas.is_empty() || send_filter || send_ssh)
            && let Ok(body) = delta_body_with_policy(&deltas, filter, ssh)
        {
            bodies.push(body);
        }
        if policy_changed {
            r.sent = np;
        }
        outputs.push(if bodies.is_empty() {
            Output::Nothing
        } else {
            Output::Bodies(bodies)
        });
    }
    outputs
}

/// Appends the deltas for `(peer, op)` pairs: the owners' profiles first
/// (a profile delta adds or replaces), then the peer operations in order.
fn peer_deltas(snap: &Snapshot, ops: &[(NodeId, u8)], out: &mut Vec<Delta>) {
    let mut profiles: BTreeSet<UserId> = BTreeSet::new();
    for (p, o) in ops {
        if o & (op::ADDED | op::CHANGED) != 0
            && let Some(u) = snap.nodes.get(p).and_then(|n| n.rec.user)
            && profiles.insert(u)
            && let Some(user) = snap.users.get(&u)
        {
            out.push(Delta::UserProfile(user.profile.clone()));
        }
    }
    for &(p, o) in ops {
        if o & op::REMOVED != 0 {
            out.push(Delta::Peer(PeerDelta::Removed(p)));
            continue;
        }
        let Some(n) = snap.nodes.get(&p) else {
            continue;
        };
        if o & op::ADDED != 0 {
            out.push(Delta::Peer(PeerDelta::Added(Box::new(n.wire.clone()))));
        } else if o & op::CHANGED != 0 {
            out.push(Delta::Peer(PeerDelta::Changed(Box::new(n.wire.clone()))));
        } else {
            if o & op::ENDPOINTS != 0 {
                out.push(Delta::Peer(PeerDelta::Endpoints {
                    id: p,
                    endpoints: n.rec.endpoints.clone(),
                    home_relay: n.home_relay,
                }));
            }
            if o & op::ONLINE != 0 {
                out.push(Delta::Peer(PeerDelta::Online {
                    id: p,
                    online: n.rec.online,
                    last_seen: n.rec.last_seen.unwrap_or(n.rec.created),
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::state::PolicyState;
    use crate::state::tests::{domain, nodes, policy_state, users};
    use weft_types::netmap::{PacketFilter, RelayMap, SshPolicy};

    fn snapshot(version: u64, policy: PolicyState) -> Snapshot {
        Snapshot {
            version,
            nodes: nodes(),
            users: users(),
            policy: Arc::new(policy),
            unauthorized: BTreeSet::new(),
            domain: domain(),
            dns: Encoded::new(&crate::state::default_dns_config()).unwrap(),
            relay_map: Encoded::new(&RelayMap::default()).unwrap(),
        }
    }

    #[test]
    fn a_policy_change_sends_a_filter_only_to_the_nodes_whose_filter_changed() {
        let old = snapshot(1, policy_state(false));
        let new = snapshot(2, policy_state(true));
        let mut recipients: Vec<Recipient> = [1, 2, 3]
            .into_iter()
            .map(|id| Recipient {
                node: NodeId(id),
                sent: old.policy.node_policy(NodeId(id)),
            })
            .collect();
        let changes = BTreeMap::new();
        let batch = Batch {
            old: &old,
            new: &new,
            changes: &changes,
            recompute_all: true,
        };
        let out = compute(&batch, &mut recipients);
        assert!(matches!(out[0], Output::Nothing), "{:?}", out[0]);
        assert!(matches!(out[1], Output::Nothing), "{:?}", out[1]);
        let Output::Bodies(bodies) = &out[2] else {
            panic!("{:?}", out[2])
        };
        assert_eq!(bodies.len(), 1);
        let body: MapBody = serde_json::from_str(bodies[0].as_str()).unwrap();
        let MapBody::Delta(deltas) = body else {
            panic!("not a delta")
        };
        let [Delta::PacketFilter(f)] = deltas.as_slice() else {
            panic!("{deltas:?}")
        };
        let (bob, alice) = ("100.64.0.1".parse().unwrap(), "100.64.0.3".parse().unwrap());
        assert!(f.rules.iter().any(|r| r.matches(bob, alice, 6, 80)));
        // Every recipient now holds the new snapshot's policy.
        for r in &recipients {
            assert!(Arc::ptr_eq(&r.sent, &new.policy.node_policy(r.node)));
        }
    }

    #[test]
    fn a_delta_with_a_pre_encoded_policy_is_byte_for_byte_the_typed_delta() {
        let p = policy_state(true);
        let np = p.node_policy(NodeId(3));
        let filter: PacketFilter = serde_json::from_str(np.filter_enc.as_str()).unwrap();
        let ssh: SshPolicy = serde_json::from_str(np.ssh_enc.as_str()).unwrap();
        let online = Delta::Peer(PeerDelta::Online {
            id: NodeId(1),
            online: true,
            last_seen: weft_types::UnixMillis(5),
        });
        let typed = delta_body(&[
            online.clone(),
            Delta::PacketFilter(Box::new(filter.clone())),
            Delta::SshPolicy(ssh),
        ])
        .unwrap();
        let spliced = delta_body_with_policy(
            std::slice::from_ref(&online),
            Some(&np.filter_enc),
            Some(&np.ssh_enc),
        )
        .unwrap();
        assert_eq!(spliced.as_str(), typed.as_str());
        let typed = delta_body(&[Delta::PacketFilter(Box::new(filter))]).unwrap();
        let spliced = delta_body_with_policy(&[], Some(&np.filter_enc), None).unwrap();
        assert_eq!(spliced.as_str(), typed.as_str());
    }

    #[test]
    fn merge_walks_both_lists_in_order() {
        let a = [NodeId(1), NodeId(3), NodeId(5)];
        let b = [NodeId(2), NodeId(3), NodeId(6)];
        let got: Vec<_> = merge(&a, &b).collect();
        assert_eq!(
            got,
            vec![
                (NodeId(1), true, false),
                (NodeId(2), false, true),
                (NodeId(3), true, true),
                (NodeId(5), true, false),
                (NodeId(6), false, true),
            ]
        );
    }

    #[test]
    fn the_narrow_deltas_are_used_when_only_endpoints_or_presence_changed() {
        assert_eq!(decide(true, true, kind::ENDPOINTS), op::ENDPOINTS);
        assert_eq!(
            decide(true, true, kind::ONLINE | kind::ENDPOINTS),
            op::ENDPOINTS | op::ONLINE
        );
        assert_eq!(decide(true, true, kind::FULL | kind::ONLINE), op::CHANGED);
        assert_eq!(decide(false, true, kind::ONLINE), op::ADDED);
        assert_eq!(decide(true, false, kind::FULL), op::REMOVED);
        assert_eq!(decide(false, false, kind::FULL), 0);
    }
}
