//! The compiled access policy as it travels to a node: packet filter rules and
//! SSH rules, plus the matchers a node runs on them.
//!
//! `weft-control` compiles the tailnet policy (HuJSON, see `docs/POLICY.md`)
//! once per *destination* node and ships the result in the netmap. The node
//! enforces it on what it receives; senders never filter. Everything here is
//! already resolved: no groups, tags or user names, only addresses, ports and
//! protocol numbers (packet filter) or addresses and local user names (SSH).
//!
//! # Packet filter
//!
//! A [`PacketFilter`] is an ordered list of [`FilterRule`]s. A packet is
//! allowed when *some* rule matches it; the filter is default-deny, so an
//! empty filter refuses every new inbound flow (this is also what "shields
//! up" installs). A rule matches when
//! - the packet's protocol is one of the rule's [`FilterRule::protos`] (an
//!   **empty list means TCP, UDP, ICMPv4 and ICMPv6**, see [`proto::DEFAULT`]),
//! - its source address lies in one of [`FilterRule::src`], and
//! - its destination address lies in the prefix of one [`DstPorts`] entry
//!   whose [`PortRange`] admits the packet, where "admits" depends on the
//!   protocol: TCP, UDP and SCTP compare the destination port; ICMPv4 and
//!   ICMPv6 have no ports and are admitted by any entry; every other protocol
//!   is admitted only by an entry that covers all ports (`0-65535`).
//!
//! Stateful parts (replies to this node's own flows, TCP non-SYN segments,
//! ICMP errors) are the engine's business: the filter only judges packets
//! that would open a new flow.
//!
//! # SSH policy
//!
//! An [`SshPolicy`] is an ordered list of [`SshRule`]s evaluated first match
//! wins by the node's SSH server (the evaluator lives in `weft-policy`, which
//! is given a snapshot of the local user database). A rule matches when one
//! of its principals covers the connection's source address and the requested
//! login maps to a local user through [`SshRule::users`].
#![allow(clippy::module_name_repetitions)]

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// IANA protocol numbers the filter treats specially.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMPV6: u8 = 58;
    /// SCTP.
    pub const SCTP: u8 = 132;
    /// The protocols a rule with an empty [`protos`](super::FilterRule::protos)
    /// list admits: TCP, UDP, ICMPv4 and ICMPv6 (Tailscale's default too).
    pub const DEFAULT: [u8; 4] = [TCP, UDP, ICMP, ICMPV6];

    /// Returns whether packets of `proto` carry a destination port the filter
    /// compares (TCP, UDP, SCTP).
    #[must_use]
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | SCTP)
    }

    /// Returns whether `proto` is ICMP of either family (ports ignored).
    #[must_use]
    pub const fn is_icmp(proto: u8) -> bool {
        matches!(proto, ICMP | ICMPV6)
    }
}

/// An inclusive range of destination ports, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive, `>= first`).
    pub last: u16,
}

impl PortRange {
    /// Every port, `0-65535`.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// Returns the range holding exactly `port`.
    #[must_use]
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Returns whether `port` lies in the range.
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Returns whether the range covers every port.
    #[must_use]
    pub const fn is_all(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }

    /// Returns whether a packet of protocol `proto` to `port` is admitted by
    /// this range, following the per-protocol rule in the module docs.
    #[must_use]
    pub const fn admits(&self, proto: u8, port: u16) -> bool {
        if proto::has_ports(proto) {
            self.contains(port)
        } else if proto::is_icmp(proto) {
            true
        } else {
            self.is_all()
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One destination of a rule: addresses of the receiving node and the ports
/// open on them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DstPorts {
    /// Destination prefix; usually one of the node's own addresses as a /32 or /128.
    pub net: IpNet,
    /// Ports admitted on `net` (see [`PortRange::admits`] for non-port protocols).
    pub ports: PortRange,
}

/// Where a compiled rule came from in the policy file, so a node can log
/// which rule let a flow in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleOrigin {
    /// Index of the rule in the policy's `acls` (packet filter) or `ssh`
    /// (SSH policy) array, from 0.
    pub index: u32,
    /// 1-based line of the rule in the policy file.
    pub line: u32,
}

/// One packet filter rule: sources × destinations × protocols.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    /// Source prefixes. "Any source" is `0.0.0.0/0` and `::/0`.
    pub src: Vec<IpNet>,
    /// Destination prefixes with their ports.
    pub dst: Vec<DstPorts>,
    /// IP protocol numbers. **Empty means [`proto::DEFAULT`]** (TCP, UDP,
    /// ICMPv4, ICMPv6), not "every protocol".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protos: Vec<u8>,
    /// The policy rule this was compiled from; `None` for rules not made from
    /// a policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

impl FilterRule {
    /// Returns whether this rule admits protocol `proto`.
    #[must_use]
    pub fn admits_proto(&self, proto: u8) -> bool {
        if self.protos.is_empty() {
            proto::DEFAULT.contains(&proto)
        } else {
            self.protos.contains(&proto)
        }
    }

    /// Returns whether this rule allows the packet, by a plain scan (the
    /// reference semantics that [`PacketFilter::allows`] indexes). A source
    /// and destination of different families never match.
    #[must_use]
    pub fn matches(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> bool {
        src.is_ipv4() == dst.is_ipv4()
            && self.admits_proto(proto)
            && self.src.iter().any(|n| n.contains(&src))
            && self
                .dst
                .iter()
                .any(|d| d.net.contains(&dst) && d.ports.admits(proto, dst_port))
    }
}

/// Names the rule of a [`PacketFilter`] that allowed a packet: its index in
/// [`PacketFilter::rules`]. Use [`PacketFilter::rule`] to look it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef(pub u32);

/// A packet filter: the wire list of rules plus a lookup index built once in
/// [`PacketFilter::new`], so [`PacketFilter::allows`] neither allocates nor
/// scans every rule.
///
/// Serializes as `{"rules": [...]}`; deserializing rebuilds the index. The
/// default filter has no rules and refuses every new inbound flow.
#[derive(Debug, Clone, Default)]
pub struct PacketFilter {
    rules: Vec<FilterRule>,
    v4: FamilyIndex<u32>,
    v6: FamilyIndex<u128>,
}

impl PartialEq for PacketFilter {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}
impl Eq for PacketFilter {}

#[derive(Serialize, Deserialize)]
struct PacketFilterWire<R> {
    rules: R,
}

impl Serialize for PacketFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        PacketFilterWire { rules: &self.rules }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PacketFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = PacketFilterWire::<Vec<FilterRule>>::deserialize(d)?;
        Ok(PacketFilter::new(wire.rules))
    }
}

impl PacketFilter {
    /// Builds a filter and its lookup index from `rules` (kept in order).
    #[must_use]
    pub fn new(rules: Vec<FilterRule>) -> Self {
        let v4 = FamilyIndex::build(&rules, Family::<u32>::from_addr);
        let v6 = FamilyIndex::build(&rules, Family::<u128>::from_addr);
        PacketFilter { rules, v4, v6 }
    }

    /// Returns the rules, in the order they were given.
    #[must_use]
    pub fn rules(&self) -> &[FilterRule] {
        &self.rules
    }

    /// Returns the rule a [`RuleRef`] names, if it belongs to this filter.
    #[must_use]
    pub fn rule(&self, r: RuleRef) -> Option<&FilterRule> {
        self.rules.get(r.0 as usize)
    }

    /// Returns whether the filter has no rules (refuses everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Returns the first rule (in rule order) that allows a new flow from
    /// `src` to `dst` with protocol `proto` and destination port `dst_port`,
    /// or `None` when the filter refuses it. `dst_port` is ignored for
    /// protocols without ports. Source and destination of different address
    /// families never match. Allocation-free.
    #[must_use]
    pub fn allows(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> Option<RuleRef> {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                self.v4.lookup(u32::from(s), u32::from(d), proto, dst_port)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                self.v6
                    .lookup(u128::from(s), u128::from(d), proto, dst_port)
            }
            _ => None,
        }
    }
}

/// Address arithmetic shared by the two families.
trait Addr: Copy + Ord + Default + std::fmt::Debug {
    fn succ(self) -> Option<Self>;
}
impl Addr for u32 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}
impl Addr for u128 {
    fn succ(self) -> Option<Self> {
        self.checked_add(1)
    }
}

/// Converts a prefix to an inclusive address interval if it has family `A`.
struct Family<A>(std::marker::PhantomData<A>);
impl Family<u32> {
    fn from_addr(net: &IpNet) -> Option<(u32, u32)> {
        match net {
            IpNet::V4(n) => Some((u32::from(n.network()), u32::from(n.broadcast()))),
            IpNet::V6(_) => None,
        }
    }
}
impl Family<u128> {
    fn from_addr(net: &IpNet) -> Option<(u128, u128)> {
        match net {
            IpNet::V6(n) => Some((u128::from(n.network()), u128::from(n.broadcast()))),
            IpNet::V4(_) => None,
        }
    }
}

/// One destination entry of one rule in one family.
#[derive(Debug, Clone, Copy)]
struct DstEntry<A> {
    lo: A,
    hi: A,
    ports: PortRange,
}

/// The index for one address family.
///
/// The source address space is cut into disjoint intervals at every rule's
/// source prefix boundary; each interval lists (ascending) the rules whose
/// sources cover it. A lookup binary-searches the interval of the source
/// address and checks only those rules' protocols and destinations. Identical
/// rule lists are stored once.
#[derive(Debug, Clone, Default)]
struct FamilyIndex<A> {
    /// Start address of each interval; `starts[0]` is 0 when non-empty.
    starts: Vec<A>,
    /// For each interval, the `(offset, len)` of its rule list in `rule_ids`.
    lists: Vec<(u32, u32)>,
    rule_ids: Vec<u32>,
    /// For each rule, the `(offset, len)` of its entries in `dsts`.
    rule_dsts: Vec<(u32, u32)>,
    dsts: Vec<DstEntry<A>>,
    /// For each rule, the bitmask of admitted protocols.
    protos: Vec<[u64; 4]>,
}

fn proto_mask(rule: &FilterRule) -> [u64; 4] {
    let mut mask = [0u64; 4];
    let list: &[u8] = if rule.protos.is_empty() {
        &proto::DEFAULT
    } else {
        &rule.protos
    };
    for &p in list {
        if let Some(word) = mask.get_mut(usize::from(p / 64)) {
            *word |= 1u64 << (p % 64);
        }
    }
    mask
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl<A: Addr> FamilyIndex<A> {
    fn build(rules: &[FilterRule], interval: fn(&IpNet) -> Option<(A, A)>) -> Self {
        let mut idx = FamilyIndex::<A>::default();
        // Per-rule destinations and protocols.
        for rule in rules {
            let start = idx.dsts.len();
            for d in &rule.dst {
                if let Some((lo, hi)) = interval(&d.net) {
                    idx.dsts.push(DstEntry {
                        lo,
                        hi,
                        ports: d.ports,
                    });
                }
            }
            idx.rule_dsts
                .push((to_u32(start), to_u32(idx.dsts.len() - start)));
            idx.protos.push(proto_mask(rule));
        }
        // Sweep over source interval boundaries: +rule at lo, -rule after hi.
        let mut events: Vec<(A, bool, u32)> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let Ok(i) = u32::try_from(i) else { break };
            if idx.rule_dsts.get(i as usize).is_some_and(|&(_, n)| n == 0) {
                continue; // no destination in this family: can never match
            }
            let mut spans: Vec<(A, A)> = rule.src.iter().filter_map(interval).collect();
            spans.sort_unstable();
            let mut merged: Vec<(A, A)> = Vec::with_capacity(spans.len());
            for (lo, hi) in spans {
                match merged.last_mut() {
                    Some(last) if last.1 >= lo || last.1.succ() == Some(lo) => {
                        last.1 = last.1.max(hi);
                    }
                    _ => merged.push((lo, hi)),
                }
            }
            for (lo, hi) in merged {
                events.push((lo, true, i));
                if let Some(end) = hi.succ() {
                    events.push((end, false, i));
                }
            }
        }
        events.sort_unstable();
        let mut active: BTreeSet<u32> = BTreeSet::new();
        let mut seen: BTreeMap<Vec<u32>, (u32, u32)> = BTreeMap::new();
        seen.insert(Vec::new(), (0, 0));
        idx.starts.push(A::default());
        idx.lists.push((0, 0));
        let mut k = 0;
        while let Some(&(pos, _, _)) = events.get(k) {
            while let Some(&(p, add, rule)) = events.get(k) {
                if p != pos {
                    break;
                }
                if add {
                    active.insert(rule);
                } else {
                    active.remove(&rule);
                }
                k += 1;
            }
            let list: Vec<u32> = active.iter().copied().collect();
            let span = match seen.get(&list) {
                Some(span) => *span,
                None => {
                    let span = (to_u32(idx.rule_ids.len()), to_u32(list.len()));
                    idx.rule_ids.extend_from_slice(&list);
                    seen.insert(list, span);
                    span
                }
            };
            if pos == A::default() {
                if let Some(first) = idx.lists.first_mut() {
                    *first = span;
                }
            } else if idx.lists.last() != Some(&span) {
                idx.starts.push(pos);
                idx.lists.push(span);
            }
        }
        idx
    }

    fn lookup(&self, src: A, dst: A, proto: u8, port: u16) -> Option<RuleRef> {
        let pos = self.starts.partition_point(|s| *s <= src);
        let &(off, len) = self.lists.get(pos.checked_sub(1)?)?;
        let ids = self.rule_ids.get(off as usize..(off + len) as usize)?;
        let word = usize::from(proto / 64);
        let bit = 1u64 << (proto % 64);
        for &rule in ids {
            let r = rule as usize;
            if self.protos.get(r).is_none_or(|m| m[word] & bit == 0) {
                continue;
            }
            let Some(&(doff, dlen)) = self.rule_dsts.get(r) else {
                continue;
            };
            let Some(entries) = self.dsts.get(doff as usize..(doff + dlen) as usize) else {
                continue;
            };
            if entries
                .iter()
                .any(|e| e.lo <= dst && dst <= e.hi && e.ports.admits(proto, port))
            {
                return Some(RuleRef(rule));
            }
        }
        None
    }
}

// ---------------------------------------------------------------------------
// SSH
// ---------------------------------------------------------------------------

/// The key of [`SshRule::users`] that applies to any requested login without
/// an entry of its own.
pub const SSH_ANY_USER: &str = "*";

/// The compiled SSH policy for one node: rules in order, first match wins.
/// The default policy has no rules and refuses every login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshPolicy {
    /// The rules, in policy order.
    pub rules: Vec<SshRule>,
}

/// One SSH rule: who (principals), as whom (users), and how (action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRule {
    /// Sources allowed by this rule; a connection matches if its source
    /// address matches any principal.
    pub principals: Vec<SshPrincipal>,
    /// Requested login → local user. A login without its own key uses the
    /// [`SSH_ANY_USER`] (`"*"`) entry; no entry at all means no mapping.
    pub users: BTreeMap<String, LocalUser>,
    /// What to do when this rule matches.
    pub action: SshAction,
    /// The `ssh` rule of the policy file this came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

impl SshRule {
    /// Returns the mapping for `requested`: its own entry, else the `"*"`
    /// entry, else `None` (the rule does not apply to that login).
    #[must_use]
    pub fn local_user_for(&self, requested: &str) -> Option<&LocalUser> {
        self.users
            .get(requested)
            .or_else(|| self.users.get(SSH_ANY_USER))
    }

    /// Returns whether a connection from `src` is covered by a principal.
    #[must_use]
    pub fn matches_source(&self, src: IpAddr) -> bool {
        self.principals.iter().any(|p| p.matches(src))
    }
}

/// Who a rule lets in, by source address (identities are resolved to node
/// addresses by control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshPrincipal {
    /// Any source address.
    Any,
    /// Sources within this prefix (a node address is a /32 or /128).
    Prefix(IpNet),
}

impl SshPrincipal {
    /// Returns whether `src` is covered.
    #[must_use]
    pub fn matches(&self, src: IpAddr) -> bool {
        match self {
            SshPrincipal::Any => true,
            SshPrincipal::Prefix(n) => n.contains(&src),
        }
    }
}

/// The local account a requested login maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalUser {
    /// Log in as exactly this local user (e.g. `"root"` → `root`).
    Named(String),
    /// Log in as the local user with the requested name, **provided its uid
    /// is not 0**; a uid-0 account (whatever its name) is refused. This is how
    /// `autogroup:nonroot` and `localpart:` entries compile.
    SameNameNonRoot,
    /// Explicitly no mapping: the rule does not apply to this login (used to
    /// keep `root` out of a `"*"` entry).
    NoMapping,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshAction {
    /// Accept now, or hold for a fresh check.
    pub mode: SshMode,
    /// Whether SSH agent forwarding is allowed.
    pub allow_agent_forwarding: bool,
    /// Whether local port forwarding (`ssh -L`, `direct-tcpip`) is allowed.
    pub allow_local_port_forwarding: bool,
    /// Whether remote port forwarding (`ssh -R`, `tcpip-forward`) is allowed.
    pub allow_remote_port_forwarding: bool,
}

/// How a matching SSH rule admits a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshMode {
    /// Let the session start.
    Accept,
    /// Admit only if the user has (re)authenticated with control within
    /// `period`; the node asks control for the decision.
    Check {
        /// How recent the authentication must be.
        period: CheckPeriod,
    },
}

/// The freshness a check-mode rule demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckPeriod {
    /// Re-authenticate for every session.
    Always,
    /// An authentication younger than this many milliseconds suffices.
    Millis(u64),
}

impl CheckPeriod {
    /// The default check period: 12 hours.
    pub const DEFAULT: CheckPeriod = CheckPeriod::Millis(12 * 60 * 60 * 1000);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn rule(src: &[&str], dst: &[(&str, u16, u16)], protos: &[u8]) -> FilterRule {
        FilterRule {
            src: src.iter().map(|s| net(s)).collect(),
            dst: dst
                .iter()
                .map(|(n, a, b)| DstPorts {
                    net: net(n),
                    ports: PortRange {
                        first: *a,
                        last: *b,
                    },
                })
                .collect(),
            protos: protos.to_vec(),
            origin: None,
        }
    }

    #[test]
    fn an_empty_filter_refuses_everything() {
        let f = PacketFilter::default();
        assert_eq!(
            f.allows(ip("100.64.0.1"), ip("100.64.0.2"), proto::TCP, 22),
            None
        );
        let f = PacketFilter::new(vec![]);
        assert_eq!(
            f.allows(
                ip("fd7a:115c:a1e0::1"),
                ip("fd7a:115c:a1e0::2"),
                proto::UDP,
                53
            ),
            None
        );
    }

    #[test]
    fn tcp_and_udp_are_matched_by_port_range() {
        let f = PacketFilter::new(vec![rule(
            &["100.64.0.0/24"],
            &[("100.64.1.1/32", 8000, 8099)],
            &[],
        )]);
        let (s, d) = (ip("100.64.0.9"), ip("100.64.1.1"));
        assert_eq!(f.allows(s, d, proto::TCP, 8000), Some(RuleRef(0)));
        assert_eq!(f.allows(s, d, proto::UDP, 8099), Some(RuleRef(0)));
        assert_eq!(f.allows(s, d, proto::TCP, 8100), None);
        assert_eq!(f.allows(s, d, proto::TCP, 7999), None);
        assert_eq!(
            f.allows(ip("100.64.1.9"), d, proto::TCP, 8000),
            None,
            "source outside the prefix"
        );
        assert_eq!(
            f.allows(s, ip("100.64.1.2"), proto::TCP, 8000),
            None,
            "another destination"
        );
    }

    #[test]
    fn an_empty_proto_list_means_tcp_udp_and_icmp_of_both_families() {
        let f = PacketFilter::new(vec![rule(
            &["0.0.0.0/0", "::/0"],
            &[
                ("100.64.1.1/32", 0, 65535),
                ("fd7a:115c:a1e0::1/128", 0, 65535),
            ],
            &[],
        )]);
        let (s, d) = (ip("100.64.0.9"), ip("100.64.1.1"));
        for p in [proto::TCP, proto::UDP, proto::ICMP] {
            assert!(f.allows(s, d, p, 1).is_some(), "proto {p}");
        }
        assert!(
            f.allows(
                ip("fd7a:115c:a1e0::9"),
                ip("fd7a:115c:a1e0::1"),
                proto::ICMPV6,
                0
            )
            .is_some()
        );
        assert_eq!(f.allows(s, d, 47, 0), None, "GRE is not in the default set");
        assert_eq!(
            f.allows(s, d, proto::SCTP, 1),
            None,
            "SCTP is not in the default set"
        );
    }

    #[test]
    fn icmp_ignores_ports_and_other_protocols_need_every_port() {
        let f = PacketFilter::new(vec![
            rule(
                &["100.64.0.0/10"],
                &[("100.64.1.1/32", 22, 22)],
                &[proto::ICMP, 47],
            ),
            rule(&["100.64.0.0/10"], &[("100.64.1.2/32", 0, 65535)], &[47]),
        ]);
        let s = ip("100.64.0.9");
        assert_eq!(
            f.allows(s, ip("100.64.1.1"), proto::ICMP, 0),
            Some(RuleRef(0))
        );
        assert_eq!(f.allows(s, ip("100.64.1.1"), 47, 0), None);
        assert_eq!(f.allows(s, ip("100.64.1.2"), 47, 0), Some(RuleRef(1)));
    }

    #[test]
    fn the_first_matching_rule_in_order_is_reported() {
        let f = PacketFilter::new(vec![
            rule(
                &["100.64.0.0/16"],
                &[("100.64.1.1/32", 443, 443)],
                &[proto::TCP],
            ),
            rule(&["100.64.0.5/32"], &[("100.64.1.1/32", 0, 65535)], &[]),
            rule(&["0.0.0.0/0"], &[("100.64.1.1/32", 0, 65535)], &[]),
        ]);
        let d = ip("100.64.1.1");
        assert_eq!(
            f.allows(ip("100.64.0.5"), d, proto::TCP, 443),
            Some(RuleRef(0))
        );
        assert_eq!(
            f.allows(ip("100.64.0.5"), d, proto::TCP, 22),
            Some(RuleRef(1))
        );
        assert_eq!(
            f.allows(ip("100.64.0.6"), d, proto::TCP, 22),
            Some(RuleRef(2))
        );
        assert_eq!(f.allows(ip("0.0.0.0"), d, proto::TCP, 22), Some(RuleRef(2)));
        assert_eq!(
            f.allows(ip("255.255.255.255"), d, proto::TCP, 22),
            Some(RuleRef(2))
        );
    }

    #[test]
    fn families_never_mix() {
        let f = PacketFilter::new(vec![rule(
            &["0.0.0.0/0", "::/0"],
            &[("100.64.1.1/32", 0, 65535)],
            &[],
        )]);
        assert_eq!(
            f.allows(ip("fd7a:115c:a1e0::9"), ip("100.64.1.1"), proto::TCP, 1),
            None
        );
        assert_eq!(
            f.allows(ip("100.64.0.1"), ip("fd7a:115c:a1e0::1"), proto::TCP, 1),
            None
        );
    }

    #[test]
    fn a_filter_round_trips_through_json_and_keeps_matching() {
        let f = PacketFilter::new(vec![FilterRule {
            origin: Some(RuleOrigin { index: 3, line: 17 }),
            ..rule(
                &["100.64.0.0/10", "fd7a:115c:a1e0::/48"],
                &[("fd7a:115c:a1e0::1/128", 22, 22)],
                &[proto::TCP],
            )
        }]);
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"{"rules":[{"src":["100.64.0.0/10","fd7a:115c:a1e0::/48"],"dst":[{"net":"fd7a:115c:a1e0::1/128","ports":{"first":22,"last":22}}],"protos":[6],"origin":{"index":3,"line":17}}]}"#
        );
        let back: PacketFilter = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            back.allows(
                ip("fd7a:115c:a1e0::7"),
                ip("fd7a:115c:a1e0::1"),
                proto::TCP,
                22
            ),
            Some(RuleRef(0))
        );
    }

    #[test]
    fn ssh_types_have_a_stable_json_form() {
        let policy = SshPolicy {
            rules: vec![SshRule {
                principals: vec![
                    SshPrincipal::Any,
                    SshPrincipal::Prefix(net("100.64.0.7/32")),
                ],
                users: [
                    ("*".to_string(), LocalUser::SameNameNonRoot),
                    ("root".to_string(), LocalUser::NoMapping),
                    ("deploy".to_string(), LocalUser::Named("deploy".into())),
                ]
                .into_iter()
                .collect(),
                action: SshAction {
                    mode: SshMode::Check {
                        period: CheckPeriod::DEFAULT,
                    },
                    allow_agent_forwarding: true,
                    allow_local_port_forwarding: true,
                    allow_remote_port_forwarding: false,
                },
                origin: Some(RuleOrigin { index: 0, line: 4 }),
            }],
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"rules":[{"principals":["any",{"prefix":"100.64.0.7/32"}],"users":{"*":"same_name_non_root","deploy":{"named":"deploy"},"root":"no_mapping"},"action":{"mode":{"check":{"period":{"millis":43200000}}},"allow_agent_forwarding":true,"allow_local_port_forwarding":true,"allow_remote_port_forwarding":false},"origin":{"index":0,"line":4}}]}"#
        );
        let back: SshPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
        let r = &policy.rules[0];
        assert_eq!(r.local_user_for("root"), Some(&LocalUser::NoMapping));
        assert_eq!(r.local_user_for("bob"), Some(&LocalUser::SameNameNonRoot));
        assert!(r.matches_source(ip("fd7a:115c:a1e0::1")));
    }

    fn arb_v4_net() -> impl Strategy<Value = IpNet> {
        // A small address space so that prefixes overlap often.
        (
            0u32..64,
            prop_oneof![Just(32u8), Just(30u8), Just(28u8), Just(26u8), Just(0u8)],
        )
            .prop_map(|(host, len)| {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x6440_0000 | host)), len)
                    .unwrap()
                    .trunc()
            })
    }
    fn arb_v6_net() -> impl Strategy<Value = IpNet> {
        (
            0u128..64,
            prop_oneof![Just(128u8), Just(126u8), Just(124u8), Just(0u8)],
        )
            .prop_map(|(host, len)| {
                let base = u128::from("fd7a:115c:a1e0::".parse::<Ipv6Addr>().unwrap());
                IpNet::new(IpAddr::V6(Ipv6Addr::from(base | host)), len)
                    .unwrap()
                    .trunc()
            })
    }
    fn arb_net() -> impl Strategy<Value = IpNet> {
        prop_oneof![3 => arb_v4_net(), 1 => arb_v6_net()]
    }
    fn arb_rule() -> impl Strategy<Value = FilterRule> {
        (
            proptest::collection::vec(arb_net(), 0..5),
            proptest::collection::vec((arb_net(), 0u16..8, 0u16..8), 0..4),
            proptest::collection::vec(
                prop_oneof![Just(1u8), Just(6u8), Just(17u8), Just(47u8), Just(58u8)],
                0..3,
            ),
        )
            .prop_map(|(src, dst, protos)| FilterRule {
                src,
                dst: dst
                    .into_iter()
                    .map(|(net, a, b)| {
                        let ports = if a == 7 {
                            PortRange::ALL
                        } else {
                            PortRange {
                                first: a.min(b),
                                last: a.max(b),
                            }
                        };
                        DstPorts { net, ports }
                    })
                    .collect(),
                protos,
                origin: None,
            })
    }
    fn arb_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            3 => (0u32..70).prop_map(|h| IpAddr::V4(Ipv4Addr::from(0x6440_0000 | h))),
            1 => (0u128..70).prop_map(|h| {
                let base = u128::from("fd7a:115c:a1e0::".parse::<Ipv6Addr>().unwrap());
                IpAddr::V6(Ipv6Addr::from(base | h))
            }),
        ]
    }

    proptest! {
        #[test]
        fn the_index_agrees_with_a_linear_scan(
            rules in proptest::collection::vec(arb_rule(), 0..12),
            packets in proptest::collection::vec((arb_addr(), arb_addr(), prop_oneof![Just(1u8), Just(6u8), Just(17u8), Just(47u8), Just(58u8)], 0u16..9), 1..40),
        ) {
            let f = PacketFilter::new(rules.clone());
            for (src, dst, p, port) in packets {
                let expected = rules.iter().position(|r| r.matches(src, dst, p, port)).map(|i| RuleRef(u32::try_from(i).unwrap()));
                prop_assert_eq!(f.allows(src, dst, p, port), expected, "packet {} -> {} proto {} port {}", src, dst, p, port);
            }
        }
    }
}
