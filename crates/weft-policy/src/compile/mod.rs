//! Compiling the policy into what each node enforces.
//!
//! For every *destination* node we emit the ACL rules whose `dst` covers it,
//! with their sources resolved to address prefixes, and the SSH rules whose
//! `dst` covers it, with their sources resolved to principals.
//!
//! [`compile_all`] does this for the whole tailnet at once, which the control
//! server runs after every policy or node change. It works on bitsets over
//! *address slots* (two per node: its IPv4 and its IPv6 address): every
//! selector resolves to a slot set once, every rule's source prefix list is
//! built once and shared by all nodes it applies to, and visibility is the
//! union of two bit matrices. The cost is about
//! `rules × (nodes / 64 + selectors) + Σ (rule, node) incidences` plus the
//! visibility matrix (`nodes² / 64` words); nothing is `nodes² × rules`.
//!
//! The packet filter of a node is materialized on request
//! ([`CompiledTailnet::packet_filter`]), because with thousands of nodes the
//! filters of all nodes together would be large while their parts are shared.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use weft_types::filter::{
    DstPorts, FilterRule, LocalUser, PacketFilter, RuleOrigin, SshAction, SshPolicy, SshPrincipal,
    SshRule,
};

use crate::bits::Bits;

mod ssh;
use crate::policy::{Autogroup, Policy, Selector};
use crate::tailnet::{NodeId, Tailnet};

/// The compiled policy of a whole tailnet.
#[derive(Debug, Clone)]
pub struct CompiledTailnet {
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    /// Shared source prefix lists, referenced by [`AclPiece::src`].
    src_lists: Vec<Arc<Vec<IpNet>>>,
    /// Per node: the ACL rules that reach it.
    acl: Vec<Vec<AclPiece>>,
    acl_meta: Vec<(Vec<u8>, RuleOrigin)>,
    /// Shared principal lists, referenced by [`SshPiece::principals`].
    principal_lists: Vec<Arc<Vec<SshPrincipal>>>,
    /// Per node: the SSH rules that reach it.
    ssh: Vec<Vec<SshPiece>>,
    ssh_meta: Vec<SshMeta>,
    /// `visible[a]` has bit `b` when `a` may reach `b` or `b` may reach `a`.
    visible: Vec<Bits>,
}

/// Per `ssh` rule: its users map, action and origin.
type SshMeta = (Arc<BTreeMap<String, LocalUser>>, SshAction, RuleOrigin);

#[derive(Debug, Clone)]
struct AclPiece {
    rule: u32,
    src: u32,
    dst: Vec<DstPorts>,
}

#[derive(Debug, Clone)]
struct SshPiece {
    rule: u32,
    principals: u32,
    /// `None`: the rule's own users map; `Some(name)`: a `localpart:` rule for one user.
    localpart: Option<String>,
}

impl CompiledTailnet {
    /// Returns the ids of the compiled nodes, in id order.
    #[must_use]
    pub fn node_ids(&self) -> &[NodeId] {
        &self.ids
    }

    /// Returns the packet filter rules for `node`, in policy order.
    #[must_use]
    pub fn filter_rules(&self, node: NodeId) -> Option<Vec<FilterRule>> {
        let pieces = self.acl.get(*self.index.get(&node)?)?;
        Some(
            pieces
                .iter()
                .filter_map(|p| {
                    let (protos, origin) = self.acl_meta.get(p.rule as usize)?;
                    Some(FilterRule {
                        src: self.src_lists.get(p.src as usize)?.as_ref().clone(),
                        dst: p.dst.clone(),
                        protos: protos.clone(),
                        origin: Some(*origin),
                    })
                })
                .collect(),
        )
    }

    /// Returns the packet filter for `node`: its rules as the netmap
    /// carries them (the node compiles them into its matcher).
    #[must_use]
    pub fn packet_filter(&self, node: NodeId) -> Option<PacketFilter> {
        self.filter_rules(node).map(|rules| PacketFilter { rules })
    }

    /// Returns the SSH policy for `node`.
    #[must_use]
    pub fn ssh_policy(&self, node: NodeId) -> Option<SshPolicy> {
        let pieces = self.ssh.get(*self.index.get(&node)?)?;
        let rules = pieces
            .iter()
            .filter_map(|p| {
                let (users, action, origin) = self.ssh_meta.get(p.rule as usize)?;
                let users = match &p.localpart {
                    None => users.as_ref().clone(),
                    Some(name) => [(name.clone(), LocalUser::SameNameNonRoot)]
                        .into_iter()
                        .collect(),
                };
                Some(SshRule {
                    principals: self
                        .principal_lists
                        .get(p.principals as usize)?
                        .as_ref()
                        .clone(),
                    users,
                    action: *action,
                    origin: Some(*origin),
                })
            })
            .collect();
        Some(SshPolicy { rules })
    }

    /// Returns the peers `node` may reach or that may reach it (any port or
    /// protocol), in id order: the peers its netmap lists.
    #[must_use]
    pub fn visible_peers(&self, node: NodeId) -> Option<Vec<NodeId>> {
        let row = self.visible.get(*self.index.get(&node)?)?;
        Some(
            row.ones()
                .filter_map(|i| self.ids.get(i).copied())
                .collect(),
        )
    }

    /// Returns whether `a` and `b` see each other.
    #[must_use]
    pub fn can_see(&self, a: NodeId, b: NodeId) -> bool {
        match (self.index.get(&a), self.index.get(&b)) {
            (Some(&a), Some(&b)) => self.visible.get(a).is_some_and(|row| row.get(b)),
            _ => false,
        }
    }
}

/// Compiles the policy for every node of the tailnet.
#[must_use]
pub fn compile_all(policy: &Policy, tailnet: &Tailnet) -> CompiledTailnet {
    Compiler::new(policy, tailnet).run(None)
}

/// Compiles the packet filter and SSH policy of one destination node, or
/// `None` if the tailnet has no such node.
#[must_use]
pub fn compile(
    policy: &Policy,
    tailnet: &Tailnet,
    node: NodeId,
) -> Option<(PacketFilter, SshPolicy)> {
    let index = tailnet.index_of(node)?;
    let c = Compiler::new(policy, tailnet).run(Some(index));
    Some((c.packet_filter(node)?, c.ssh_policy(node)?))
}

/// A rule's sources, resolved.
struct Src {
    slots: Bits,
    /// Prefixes named by address (hosts, IPs, CIDRs, and `/0`s for `*`).
    raw: Vec<IpNet>,
    any: bool,
}

struct Compiler<'a> {
    policy: &'a Policy,
    tailnet: &'a Tailnet,
    n: usize,
    members: Bits,
    tagged: Bits,
    admins: Bits,
    /// Every node's addresses sorted, with their slot: lets a slot set
    /// become a sorted prefix list without sorting.
    sorted_v4: Vec<(u32, usize)>,
    sorted_v6: Vec<(u128, usize)>,
}

fn slot(node: usize, v4: bool) -> usize {
    2 * node + usize::from(!v4)
}

impl<'a> Compiler<'a> {
    fn new(policy: &'a Policy, tailnet: &'a Tailnet) -> Self {
        let n = tailnet.nodes().len();
        let mut c = Compiler {
            policy,
            tailnet,
            n,
            members: Bits::new(n),
            tagged: Bits::new(n),
            admins: Bits::new(n),
            sorted_v4: Vec::new(),
            sorted_v6: Vec::new(),
        };
        for (i, node) in tailnet.nodes().iter().enumerate() {
            match node.owner_name() {
                Some(u) => {
                    c.members.set(i);
                    if tailnet.is_admin(u) {
                        c.admins.set(i);
                    }
                }
                None if !node.tags.is_empty() => c.tagged.set(i),
                None => {}
            }
            if let Some(a) = node.ipv4 {
                c.sorted_v4.push((u32::from(a), slot(i, true)));
            }
            if let Some(a) = node.ipv6 {
                c.sorted_v6.push((u128::from(a), slot(i, false)));
            }
        }
        c.sorted_v4.sort_unstable();
        c.sorted_v6.sort_unstable();
        c
    }

    fn add_node(&self, slots: &mut Bits, i: usize) {
        if let Some(node) = self.tailnet.nodes().get(i) {
            if node.ipv4.is_some() {
                slots.set(slot(i, true));
            }
            if node.ipv6.is_some() {
                slots.set(slot(i, false));
            }
        }
    }

    fn add_nodes(&self, slots: &mut Bits, nodes: &Bits) {
        for i in nodes.ones() {
            self.add_node(slots, i);
        }
    }

    /// Adds the slots of identity selector `sel` (not address selectors).
    fn add_identity(&self, slots: &mut Bits, sel: &Selector) {
        match sel {
            Selector::Any => {
                for i in 0..self.n {
                    self.add_node(slots, i);
                }
            }
            Selector::User(u) => self
                .tailnet
                .user_nodes(u)
                .iter()
                .for_each(|&i| self.add_node(slots, i)),
            Selector::Group(g) => {
                let idp = self.tailnet.idp_group_members(g);
                for u in self.policy.groups.get(g).into_iter().flatten().chain(idp) {
                    self.tailnet
                        .user_nodes(u)
                        .iter()
                        .for_each(|&i| self.add_node(slots, i));
                }
            }
            Selector::Tag(t) => self
                .tailnet
                .tag_nodes(t)
                .iter()
                .for_each(|&i| self.add_node(slots, i)),
            Selector::Autogroup(Autogroup::Member) => self.add_nodes(slots, &self.members),
            Selector::Autogroup(Autogroup::Tagged) => self.add_nodes(slots, &self.tagged),
            Selector::Autogroup(Autogroup::Admin) => self.add_nodes(slots, &self.admins),
            Selector::Autogroup(Autogroup::SelfDevices) => {}
            Selector::Host(_, net) | Selector::Prefix(net) => {
                for (a, i) in self.tailnet.nodes_in(net) {
                    slots.set(slot(i, a.is_ipv4()));
                }
            }
        }
    }

    fn resolve_src<'s>(&self, sels: impl Iterator<Item = &'s Selector>) -> Src {
        let mut src = Src {
            slots: Bits::new(2 * self.n),
            raw: Vec::new(),
            any: false,
        };
        for sel in sels {
            self.add_identity(&mut src.slots, sel);
            match sel {
                Selector::Any => {
                    src.any = true;
                    src.raw
                        .push(IpNet::from(IpAddr::from([0u8; 4])).trunc_to(0));
                    src.raw
                        .push(IpNet::from(IpAddr::from([0u16; 8])).trunc_to(0));
                }
                Selector::Host(_, net) | Selector::Prefix(net) => src.raw.push(*net),
                _ => {}
            }
        }
        src
    }

    /// Returns the slots of node `b` that target `sel` covers (not self).
    fn target_slots_of(&self, sel: &Selector, b: usize) -> (bool, bool) {
        let Some(node) = self.tailnet.nodes().get(b) else {
            return (false, false);
        };
        let hit = match sel {
            Selector::Any => true,
            Selector::User(u) => node.owner_name() == Some(u.as_str()),
            Selector::Group(g) => node
                .owner_name()
                .is_some_and(|o| self.policy.is_group_member(self.tailnet, g, o)),
            Selector::Tag(t) => node.tags.contains(t.as_str()),
            Selector::Autogroup(Autogroup::Member) => self.members.get(b),
            Selector::Autogroup(Autogroup::Tagged) => self.tagged.get(b),
            Selector::Autogroup(Autogroup::Admin) => self.admins.get(b),
            Selector::Autogroup(Autogroup::SelfDevices) => false,
            Selector::Host(_, net) | Selector::Prefix(net) => {
                let v4 = node.ipv4.is_some_and(|a| net.contains(&IpAddr::V4(a)));
                let v6 = node.ipv6.is_some_and(|a| net.contains(&IpAddr::V6(a)));
                return (v4, v6);
            }
        };
        (hit && node.ipv4.is_some(), hit && node.ipv6.is_some())
    }

    /// Returns the slot set of everything target `sel` covers (not self).
    fn target_slots(&self, sel: &Selector) -> Bits {
        let mut slots = Bits::new(2 * self.n);
        self.add_identity(&mut slots, sel);
        slots
    }

    /// Returns the sorted, aggregated prefixes of `slots` plus `raw`.
    fn prefixes(&self, slots: &Bits, raw: &[IpNet]) -> Vec<IpNet> {
        let mut v4: Vec<(u32, u32)> = Vec::new();
        let mut v6: Vec<(u128, u128)> = Vec::new();
        for net in raw {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        v4.sort_unstable();
        v6.sort_unstable();
        let mut out = Vec::new();
        let members = slots.count();
        if members * 16 < self.sorted_v4.len() + self.sorted_v6.len() {
            // Sparse (a user's own devices): sort just the members.
            let (mut a4, mut a6) = (Vec::with_capacity(members), Vec::with_capacity(members));
            for s in slots.ones() {
                let Some(node) = self.tailnet.nodes().get(s / 2) else {
                    continue;
                };
                match (s % 2 == 0, node.ipv4, node.ipv6) {
                    (true, Some(a), _) => a4.push((u32::from(a), u32::from(a))),
                    (false, _, Some(a)) => a6.push((u128::from(a), u128::from(a))),
                    _ => {}
                }
            }
            a4.sort_unstable();
            a6.sort_unstable();
            crate::bits::cidrs_v4(merge_sorted(v4, a4.into_iter()), &mut out);
            crate::bits::cidrs_v6(merge_sorted(v6, a6.into_iter()), &mut out);
        } else {
            // Dense: walk every address in order, no sorting.
            let v4_slots = self
                .sorted_v4
                .iter()
                .filter(|(_, s)| slots.get(*s))
                .map(|(a, _)| (*a, *a));
            let v6_slots = self
                .sorted_v6
                .iter()
                .filter(|(_, s)| slots.get(*s))
                .map(|(a, _)| (*a, *a));
            crate::bits::cidrs_v4(merge_sorted(v4, v4_slots), &mut out);
            crate::bits::cidrs_v6(merge_sorted(v6, v6_slots), &mut out);
        }
        out
    }

    fn user_slots(&self, login: &str) -> Bits {
        let mut s = Bits::new(2 * self.n);
        self.tailnet
            .user_nodes(login)
            .iter()
            .for_each(|&i| self.add_node(&mut s, i));
        s
    }

    /// Compiles every node, or only `only`.
    fn run(&self, only: Option<usize>) -> CompiledTailnet {
        let n = self.n;
        let ids: Vec<NodeId> = self.tailnet.nodes().iter().map(|node| node.id).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let wanted = |b: usize| only.is_none_or(|o| o == b);
        let mut out = CompiledTailnet {
            ids,
            index,
            src_lists: Vec::new(),
            acl: vec![Vec::new(); n],
            acl_meta: Vec::new(),
            principal_lists: Vec::new(),
            ssh: vec![Vec::new(); n],
            ssh_meta: Vec::new(),
            visible: Vec::new(),
        };
        let mut inbound: Vec<Bits> = if only.is_none() {
            vec![Bits::new(n); n]
        } else {
            Vec::new()
        };
        let mut user_slot_cache: BTreeMap<&'a str, Bits> = BTreeMap::new();

        for (ri, rule) in self.policy.acls.iter().enumerate() {
            let r = u32::try_from(ri).unwrap_or(u32::MAX);
            out.acl_meta
                .push((rule.protos.clone(), origin(ri, rule.loc.line)));
            let src = self.resolve_src(rule.src.iter().map(|s| &s.value));
            // dst pieces per node: (normal entries, self entries)
            let mut per_node: BTreeMap<usize, (Vec<DstPorts>, Vec<DstPorts>)> = BTreeMap::new();
            for d in &rule.dst {
                let is_self = d.value.target == Selector::Autogroup(Autogroup::SelfDevices);
                let add = |b: usize, v4: bool, v6: bool, per_node: &mut BTreeMap<usize, (Vec<DstPorts>, Vec<DstPorts>)>| {
                    let Some(node) = self.tailnet.nodes().get(b) else { return };
                    let entry = per_node.entry(b).or_default();
                    let list = if is_self { &mut entry.1 } else { &mut entry.0 };
                    for addr in [node.ipv4.filter(|_| v4).map(IpAddr::V4), node.ipv6.filter(|_| v6).map(IpAddr::V6)].into_iter().flatten() {
                        for ports in &d.value.ports {
                            let dp = DstPorts { net: IpNet::from(addr), ports: *ports };
                            if !list.contains(&dp) {
                                list.push(dp);
                            }
                        }
                    }
                };
                match only {
                    Some(b) => {
                        let (v4, v6) = if is_self {
                            let owned = self.members.get(b);
                            (owned, owned)
                        } else {
                            self.target_slots_of(&d.value.target, b)
                        };
                        if v4 || v6 {
                            add(b, v4, v6, &mut per_node);
                        }
                    }
                    None => {
                        let targets = if is_self {
                            let mut s = Bits::new(2 * n);
                            self.add_nodes(&mut s, &self.members);
                            s
                        } else {
                            self.target_slots(&d.value.target)
                        };
                        let mut last: Option<(usize, bool, bool)> = None;
                        for s in targets.ones() {
                            let (b, v4) = (s / 2, s % 2 == 0);
                            last = match last {
                                Some((pb, p4, p6)) if pb == b => Some((pb, p4 || v4, p6 || !v4)),
                                Some((pb, p4, p6)) => {
                                    add(pb, p4, p6, &mut per_node);
                                    Some((b, v4, !v4))
                                }
                                None => Some((b, v4, !v4)),
                            };
                        }
                        if let Some((pb, p4, p6)) = last {
                            add(pb, p4, p6, &mut per_node);
                        }
                    }
                }
            }
            if per_node.is_empty() {
                continue;
            }
            // Visibility is per family: a source reaches B only over an
            // address family both have.
            let src_nodes = [
                src.slots.project_family(n, true),
                src.slots.project_family(n, false),
            ];
            let mut normal_list: Option<u32> = None;
            let mut self_lists: BTreeMap<&'a str, Option<(u32, [Bits; 2])>> = BTreeMap::new();
            for (b, (normal, selfs)) in per_node {
                if !wanted(b) {
                    continue;
                }
                if !normal.is_empty() && (src.any || !src.raw.is_empty() || !src.slots.is_empty()) {
                    let list = *normal_list.get_or_insert_with(|| {
                        push_list(&mut out.src_lists, self.prefixes(&src.slots, &src.raw))
                    });
                    if let Some(row) = inbound.get_mut(b) {
                        or_by_family(row, &src_nodes, &normal);
                    }
                    out.acl[b].push(AclPiece {
                        rule: r,
                        src: list,
                        dst: normal,
                    });
                }
                let owner = self
                    .tailnet
                    .nodes()
                    .get(b)
                    .and_then(|node| node.owner_name());
                if let (false, Some(owner)) = (selfs.is_empty(), owner) {
                    let entry = self_lists.entry(owner).or_insert_with(|| {
                        let us = user_slot_cache
                            .entry(owner)
                            .or_insert_with(|| self.user_slots(owner));
                        let slots = src.slots.and(us);
                        if slots.is_empty() {
                            None
                        } else {
                            let list = push_list(&mut out.src_lists, self.prefixes(&slots, &[]));
                            Some((
                                list,
                                [
                                    slots.project_family(n, true),
                                    slots.project_family(n, false),
                                ],
                            ))
                        }
                    });
                    if let Some((list, nodes)) = entry {
                        if let Some(row) = inbound.get_mut(b) {
                            or_by_family(row, nodes, &selfs);
                        }
                        out.acl[b].push(AclPiece {
                            rule: r,
                            src: *list,
                            dst: selfs,
                        });
                    }
                }
            }
        }

        self.compile_ssh(&mut out, only, &mut user_slot_cache);

        if only.is_none() {
            let mut visible = inbound.clone();
            for (b, row) in inbound.iter().enumerate() {
                for a in row.ones() {
                    if let Some(v) = visible.get_mut(a) {
                        v.set(b);
                    }
                }
            }
            for (i, row) in visible.iter_mut().enumerate() {
                row.clear(i);
            }
            out.visible = visible;
        }
        out
    }
}

/// Adds to `row` the sources of each family the destinations use.
fn or_by_family(row: &mut Bits, src_nodes: &[Bits; 2], dst: &[DstPorts]) {
    if dst.iter().any(|d| d.net.addr().is_ipv4()) {
        row.or_assign(&src_nodes[0]);
    }
    if dst.iter().any(|d| d.net.addr().is_ipv6()) {
        row.or_assign(&src_nodes[1]);
    }
}

fn origin(index: usize, line: u32) -> RuleOrigin {
    RuleOrigin {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        line,
    }
}

fn push_list<T>(lists: &mut Vec<Arc<Vec<T>>>, list: Vec<T>) -> u32 {
    lists.push(Arc::new(list));
    u32::try_from(lists.len() - 1).unwrap_or(u32::MAX)
}

/// Merges sorted intervals with a sorted stream of single addresses.
fn merge_sorted<A: Ord>(
    a: Vec<(A, A)>,
    b: impl Iterator<Item = (A, A)>,
) -> impl Iterator<Item = (A, A)> {
    let mut a = a.into_iter().peekable();
    let mut b = b.peekable();
    std::iter::from_fn(move || match (a.peek(), b.peek()) {
        (Some(x), Some(y)) if x <= y => a.next(),
        (Some(_), Some(_)) | (None, Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, None) => None,
    })
}

trait TruncTo {
    fn trunc_to(self, len: u8) -> IpNet;
}
impl TruncTo for IpNet {
    fn trunc_to(self, len: u8) -> IpNet {
        IpNet::new(self.addr(), len).map_or(self, |n| n.trunc())
    }
}
