//! [`CompiledFilter`]: the node's matcher for a [`PacketFilter`]'s rules.
//!
//! The rules travel as plain data (`weft_types::filter`); the node compiles
//! them once per netmap into per-family lookup indices, so judging a new
//! flow neither allocates nor scans every rule. [`FilterRule::matches`] is
//! the reference semantics the index must agree with (see the proptest at
//! the bottom).
//!
//! [`PacketFilter`]: weft_types::filter::PacketFilter

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use weft_types::filter::{FilterRule, PortRange, proto};

/// Names the rule of a [`CompiledFilter`] that allowed a packet: its index
/// in [`CompiledFilter::rules`]. Use [`CompiledFilter::rule`] to look it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef(pub u32);

/// A packet filter's rules plus the lookup index built from them in
/// [`CompiledFilter::new`], so [`CompiledFilter::allows`] neither allocates
/// nor scans every rule.
///
/// The default filter has no rules and refuses every new inbound flow. Two
/// compiled filters are equal when their rules are (the index is derived
/// from them).
#[derive(Debug, Clone, Default)]
pub struct CompiledFilter {
    rules: Vec<FilterRule>,
    v4: FamilyIndex<u32>,
    v6: FamilyIndex<u128>,
}

impl PartialEq for CompiledFilter {
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}
impl Eq for CompiledFilter {}

impl CompiledFilter {
    /// Compiles `rules` (kept in order) into the lookup index.
    #[must_use]
    pub fn new(rules: &[FilterRule]) -> Self {
        let v4 = FamilyIndex::build(rules, Family::<u32>::from_addr);
        let v6 = FamilyIndex::build(rules, Family::<u128>::from_addr);
        CompiledFilter {
            rules: rules.to_vec(),
            v4,
            v6,
        }
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
    /// families never match. Allocation-free; agrees with the first rule
    /// whose [`FilterRule::matches`] holds.
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

/// Converts an index into the rule or entry tables to the `u32` they are
/// stored as.
///
/// # Panics
/// With more than `u32::MAX` rules or destination entries, which a netmap
/// (bounded by control's frame size) cannot carry.
fn to_u32(n: usize) -> u32 {
    u32::try_from(n).expect("rule and entry tables hold fewer than 2^32 items")
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};
    use weft_types::filter::DstPorts;

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
        let f = CompiledFilter::default();
        assert_eq!(
            f.allows(ip("100.64.0.1"), ip("100.64.0.2"), proto::TCP, 22),
            None
        );
        let f = CompiledFilter::new(&[]);
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
        let f = CompiledFilter::new(&[rule(
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
        let f = CompiledFilter::new(&[rule(
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
        let f = CompiledFilter::new(&[
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
        let f = CompiledFilter::new(&[
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
        let f = CompiledFilter::new(&[rule(
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
            let f = CompiledFilter::new(&rules);
            for (src, dst, p, port) in packets {
                let expected = rules.iter().position(|r| r.matches(src, dst, p, port)).map(|i| RuleRef(u32::try_from(i).unwrap()));
                prop_assert_eq!(f.allows(src, dst, p, port), expected, "packet {} -> {} proto {} port {}", src, dst, p, port);
            }
        }
    }
}
