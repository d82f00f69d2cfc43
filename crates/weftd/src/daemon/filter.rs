//! [`NodeFilter`]: the stateful inbound filter of `weft-filter` in weftd's
//! data path, and what reports on it (`weft status --json`'s `filter` field,
//! the series of `GET /localapi/v0/metrics` in [`FILTER_SERIES`]).
//!
//! Where it sits (see [`super::tunnel`]): every decrypted packet a peer sent
//! is judged by [`weft_filter::Filter::inbound_packet`] before it is written
//! to TUN, and every packet read from TUN is shown to
//! [`weft_filter::Filter::outbound_packet`] before it is sealed, so replies
//! to this node's own connections come back in. Both get the view WireGuard
//! or the engine already built. The engine's timer thread calls
//! [`PacketHooks::handle_timeout`] every tick; expired flows are swept every
//! [`weft_filter::SWEEP_INTERVAL`].
//!
//! What feeds it:
//! * every netmap (full or after a delta): the node's own tailnet addresses
//!   and the packet filter control compiled for it, turned into the
//!   filter's matcher once per change ([`NodeFilter::apply_netmap`]). A
//!   change re-judges the flows peers opened: those the new policy still
//!   allows continue, the others are cut at once. An unchanged netmap (a peer's endpoint moved) touches nothing;
//! * the `shields_up` preference ([`NodeFilter::set_shields_up`]): no new
//!   inbound flow at all, and the ones peers opened are cut; this node's own
//!   connections keep working;
//! * `down` / logout ([`NodeFilter::clear`]): no addresses, nothing passes.
//!
//! The per-packet path allocates nothing: the filter is allocation-free and
//! the hooks are reached through a `OnceLock` (one atomic load).

use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use weft_filter::{CompiledFilter, Config, Filter, FilterStats, Policy, SWEEP_INTERVAL};
use weft_localapi::FilterStatus;
use weft_packet::IpPacket;
use weft_types::NetMap;

use super::metrics::{Kind, Series};
use super::tunnel::PacketHooks;

/// The node's inbound filter, as the tunnel's [`PacketHooks`].
#[derive(Debug)]
pub struct NodeFilter {
    filter: Filter,
    /// When the timer path sweeps expired flows next (`None`: at its next tick).
    next_sweep: Mutex<Option<Instant>>,
}

impl NodeFilter {
    /// Returns a filter that drops every inbound packet until the first
    /// netmap. `seed` keys the flow hash (random bytes in the daemon).
    #[must_use]
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            filter: Filter::new(Config::default(), seed),
            next_sweep: Mutex::new(None),
        }
    }

    /// Installs what `nm` says about this node: its addresses and its packet
    /// filter. Does nothing when neither changed, so a netmap that only
    /// moves a peer costs no re-judging. Returns how many flows were cut.
    pub fn apply_netmap(&self, nm: &NetMap) -> usize {
        let mut addrs: Vec<IpAddr> = nm
            .self_node
            .addresses
            .iter()
            .map(ipnet::IpNet::addr)
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        let current = self.filter.policy();
        if current.local_addrs == addrs && current.filter.rules() == nm.packet_filter.rules {
            return 0;
        }
        let policy = Policy {
            filter: CompiledFilter::new(&nm.packet_filter.rules),
            local_addrs: addrs,
            shields_up: current.shields_up,
        };
        let cut = self.filter.set_policy(policy);
        tracing::info!(
            rules = nm.packet_filter.rules.len(),
            cut,
            "Packet filter installed"
        );
        cut
    }

    /// Raises or lowers shields; cheap when nothing changes. Returns how
    /// many flows were cut.
    pub fn set_shields_up(&self, up: bool) -> usize {
        if self.filter.policy().shields_up == up {
            return 0;
        }
        let cut = self.filter.set_shields_up(up);
        tracing::info!(shields_up = up, cut, "Shields changed");
        cut
    }

    /// Forgets the addresses and the rules (`down`, logout, profile switch);
    /// keeps shields as they are.
    pub fn clear(&self) {
        let current = self.filter.policy();
        if current.local_addrs.is_empty() && current.filter.is_empty() {
            return;
        }
        self.filter.set_policy(Policy {
            filter: CompiledFilter::default(),
            local_addrs: Vec::new(),
            shields_up: current.shields_up,
        });
    }

    /// Returns the filter's counters.
    #[must_use]
    pub fn stats(&self) -> FilterStats {
        self.filter.stats()
    }
}

impl PacketHooks for NodeFilter {
    fn inbound_allowed(&self, packet: &IpPacket<'_>, now: Instant) -> bool {
        self.filter.inbound_packet(packet, now).is_accept()
    }

    fn note_outbound(&self, packet: &IpPacket<'_>, now: Instant) {
        self.filter.outbound_packet(packet, now);
    }

    fn handle_timeout(&self, now: Instant) {
        let mut next = self
            .next_sweep
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if next.is_some_and(|t| now < t) {
            return;
        }
        *next = Some(now + SWEEP_INTERVAL);
        drop(next);
        self.filter.handle_timeout(now);
    }
}

/// Builds the `filter` field of `weft status`: shields from the prefs, the
/// rest from the filter (or, for a data plane without one, the netmap's
/// rule count and the tunnel's drop count).
#[must_use]
pub fn status(
    stats: Option<&FilterStats>,
    shields_up: bool,
    netmap_rules: usize,
    filtered: u64,
) -> FilterStatus {
    match stats {
        Some(s) => FilterStatus {
            shields_up,
            rules: s.rules,
            dropped: s.dropped_total(),
            dropped_by_reason: s
                .dropped
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            flows: s.flows,
            flows_revoked: s.flows_revoked,
        },
        None => FilterStatus {
            shields_up,
            rules: netmap_rules,
            dropped: filtered,
            dropped_by_reason: if filtered > 0 {
                std::iter::once(("not_allowed".to_owned(), filtered)).collect()
            } else {
                Default::default()
            },
            ..FilterStatus::default()
        },
    }
}

/// The filter's unlabelled series in weftd's metrics (the drops by reason
/// are labelled; [`super::metrics`] renders them from
/// [`FilterStats::dropped`], as [`status`] does).
pub const FILTER_SERIES: &[Series<FilterStats>] = &[
    Series {
        name: "weftd_filter_accepted_new_flows_total",
        kind: Kind::Counter,
        help: "Inbound packets that opened a flow the policy allows.",
        value: |f| f.accepted_new_flows,
    },
    Series {
        name: "weftd_filter_accepted_stateless_total",
        kind: Kind::Counter,
        help: "Inbound one-off ICMP messages the policy allows.",
        value: |f| f.accepted_stateless,
    },
    Series {
        name: "weftd_filter_flows",
        kind: Kind::Gauge,
        help: "Flows tracked now.",
        value: |f| f.flows,
    },
    Series {
        name: "weftd_filter_flows_revoked_total",
        kind: Kind::Counter,
        help: "Inbound-opened flows cut by a policy change or shields-up.",
        value: |f| f.flows_revoked,
    },
    Series {
        name: "weftd_filter_flows_evicted_total",
        kind: Kind::Counter,
        help: "Flows evicted from a full table.",
        value: |f| f.flows_evicted,
    },
    Series {
        name: "weftd_filter_flows_expired_total",
        kind: Kind::Counter,
        help: "Flows removed after their idle timeout.",
        value: |f| f.flows_expired,
    },
    Series {
        name: "weftd_filter_outbound_malformed_total",
        kind: Kind::Counter,
        help: "Packets from TUN whose headers contradict each other, which the filter does not \
               track (sent anyway).",
        value: |f| f.outbound_malformed,
    },
    Series {
        name: "weftd_filter_rules",
        kind: Kind::Gauge,
        help: "Rules in the installed packet filter.",
        value: |f| f.rules as u64,
    },
    Series {
        name: "weftd_filter_shields_up",
        kind: Kind::Gauge,
        help: "1 while shields are up.",
        value: |f| u64::from(f.shields_up),
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weft_filter::DropReason;
    use weft_types::filter::{DstPorts, FilterRule, PortRange};

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the test's base instant
        Instant::now()
    }

    /// A netmap for a node at 100.64.0.1 whose filter lets 100.64.0.2 reach
    /// TCP `ports`.
    fn netmap(ports: &[u16]) -> NetMap {
        let mut nm = crate::daemon::config::tests::netmap(1, &[2]);
        let rules = ports
            .iter()
            .map(|&p| FilterRule {
                src: vec!["100.64.0.2/32".parse().unwrap()],
                dst: vec![DstPorts {
                    net: "100.64.0.1/32".parse().unwrap(),
                    ports: PortRange { first: p, last: p },
                }],
                protos: vec![6],
                origin: None,
            })
            .collect();
        nm.packet_filter = weft_types::filter::PacketFilter { rules };
        nm
    }

    fn view(bytes: &[u8]) -> IpPacket<'_> {
        IpPacket::new(bytes).unwrap()
    }

    fn tcp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p
    }
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const SYN_ACK: u8 = 0x12;
    const PEER: [u8; 4] = [100, 64, 0, 2];
    const ME: [u8; 4] = [100, 64, 0, 1];

    #[test]
    fn nothing_passes_before_the_first_netmap() {
        let f = NodeFilter::new([7; 32]);
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4000, 22, SYN)), t0()));
        assert_eq!(f.stats().dropped_total(), 1);
    }

    #[test]
    fn the_netmap_decides_new_inbound_flows_and_replies_to_our_own_pass() {
        let now = t0();
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22, 80]));
        assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 4000, 22, SYN)), now));
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4001, 8080, SYN)), now));
        // Our own connection to the peer's 8080: the SYN-ACK comes back in.
        f.note_outbound(&view(&tcp(ME, PEER, 5000, 8080, SYN)), now);
        assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 8080, 5000, SYN_ACK)), now));
        let s = f.stats();
        assert_eq!(s.dropped_for(DropReason::NotAllowed), 1);
        assert_eq!(s.rules, 2);
    }

    #[test]
    fn a_policy_change_keeps_flows_it_still_allows_and_cuts_the_others() {
        let now = t0();
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22, 80]));
        for port in [22, 80] {
            assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 4000 + port, port, SYN)), now));
            f.note_outbound(&view(&tcp(ME, PEER, port, 4000 + port, SYN_ACK)), now);
        }
        assert_eq!(f.apply_netmap(&netmap(&[22])), 1, "the port-80 flow is cut");
        assert!(
            f.inbound_allowed(&view(&tcp(PEER, ME, 4022, 22, ACK)), now),
            "ssh continues"
        );
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4080, 80, ACK)), now));
        assert_eq!(f.stats().dropped_for(DropReason::NoFlow), 1);
        assert_eq!(
            f.apply_netmap(&netmap(&[22])),
            0,
            "the same netmap changes nothing"
        );
    }

    #[test]
    fn shields_up_refuses_new_inbound_flows_but_not_our_own() {
        let now = t0();
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22]));
        assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 4000, 22, SYN)), now));
        assert_eq!(f.set_shields_up(true), 1);
        assert_eq!(f.set_shields_up(true), 0);
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4001, 22, SYN)), now));
        f.note_outbound(&view(&tcp(ME, PEER, 5000, 22, SYN)), now);
        assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 22, 5000, SYN_ACK)), now));
        assert_eq!(f.stats().dropped_for(DropReason::ShieldsUp), 1);
        f.set_shields_up(false);
        assert!(f.inbound_allowed(&view(&tcp(PEER, ME, 4002, 22, SYN)), now));
    }

    #[test]
    fn clear_forgets_addresses_and_rules_but_keeps_shields() {
        let now = t0();
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22]));
        f.set_shields_up(true);
        f.clear();
        let s = f.stats();
        assert_eq!((s.rules, s.shields_up), (0, true));
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4000, 22, SYN)), now));
        assert_eq!(f.stats().dropped_for(DropReason::NotForUs), 1);
    }

    #[test]
    fn the_timer_path_sweeps_expired_flows_once_per_interval() {
        let now = t0();
        let secs = |n| now + Duration::from_secs(n);
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22]));
        f.note_outbound(&view(&tcp(ME, PEER, 5000, 22, SYN)), now);
        f.note_outbound(&view(&tcp(ME, PEER, 5001, 22, SYN)), secs(20));
        // The first tick sweeps: the first flow is past the 30 s TCP opening timeout.
        f.handle_timeout(secs(31));
        assert_eq!(f.stats().flows, 1);
        // The sweep due at 41 s comes at 45 s, too early for the second flow
        // (idle 30 s at 50 s); the next is due at 55 s, not at once.
        f.handle_timeout(secs(45));
        f.handle_timeout(secs(51));
        assert_eq!(f.stats().flows, 1, "not swept again within the interval");
        f.handle_timeout(secs(55));
        assert_eq!(f.stats().flows, 0);
        assert_eq!(f.stats().flows_expired, 2);
    }

    #[test]
    fn status_and_metrics_report_drops_by_reason() {
        let f = NodeFilter::new([7; 32]);
        f.apply_netmap(&netmap(&[22]));
        assert!(!f.inbound_allowed(&view(&tcp(PEER, ME, 4000, 80, SYN)), t0()));
        assert!(!f.filter.inbound(&[0x45, 0, 0], t0()).is_accept());
        let s = f.stats();
        let st = status(Some(&s), false, 0, 0);
        assert_eq!((st.rules, st.dropped), (1, 2));
        assert_eq!(st.dropped_by_reason["not_allowed"], 1);
        assert_eq!(st.dropped_by_reason["malformed"], 1);

        let text = crate::daemon::metrics::render(&crate::daemon::metrics::Snapshot {
            filter: s,
            tunnel: crate::daemon::tunnel::TunnelCounters {
                tx_packets: 3,
                tx_bytes: 300,
                rx_packets: 2,
                rx_bytes: 200,
            },
            ..Default::default()
        });
        assert!(
            text.contains("weftd_filter_dropped_packets_total{reason=\"not_allowed\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("weftd_filter_dropped_packets_total{reason=\"shields_up\"} 0\n"));
        assert!(text.contains("weftd_tunnel_bytes_total{direction=\"rx\"} 200\n"));
        assert!(text.contains("# TYPE weftd_filter_flows gauge\n"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(name.starts_with("weftd_"), "{line}");
            value.parse::<u64>().unwrap();
        }
    }
}
