//! Where each relay region's STUN servers are: the relay map names relays
//! by host, and a host may be a name rather than an address.
//!
//! Sans-IO: [`StunHosts`] keeps the map and the addresses looked up for its
//! host names, says which names are due for a lookup (never looked up, or
//! the last answer is old), and turns both into disco's region list. The
//! tunnel asks the relay side to do the lookups and feeds the answers back.
//! A relay whose map entry carries `ipv4`/`ipv6` or an IP literal needs no
//! lookup ([`weft_types::netmap::RelayNode::known_addrs`], the relay
//! client's rule too).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use weft_disco::{RegionId, RelayRegionInfo};
use weft_types::netmap::RelayMap;

/// How long a host name's addresses are used before they are looked up
/// again.
pub const REFRESH: Duration = Duration::from_secs(300);
/// How long after a failed lookup the name is tried again.
pub const RETRY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Lookup {
    /// The last good answer (kept through failed refreshes).
    addrs: Vec<IpAddr>,
    /// When to look the name up next; `None` while a lookup is out.
    due: Option<Instant>,
}

/// The relay map's STUN servers, with looked-up host names.
#[derive(Debug, Default)]
pub struct StunHosts {
    map: RelayMap,
    names: BTreeMap<String, Lookup>,
}

impl StunHosts {
    /// Takes a relay map; returns whether it differs from the last one.
    /// Host names that left the map are forgotten; new ones are due now.
    pub fn set_map(&mut self, map: &RelayMap, now: Instant) -> bool {
        if self.map == *map {
            return false;
        }
        self.map = map.clone();
        let wanted: Vec<String> = self
            .map
            .regions
            .values()
            .flat_map(|r| &r.nodes)
            .filter(|n| n.stun_port != 0 && n.known_addrs().is_empty())
            .map(|n| n.host.clone())
            .collect();
        self.names.retain(|h, _| wanted.contains(h));
        for h in wanted {
            self.names.entry(h).or_insert(Lookup {
                addrs: Vec::new(),
                due: Some(now),
            });
        }
        true
    }

    /// Returns the host names whose lookup is due at `now`, marking them
    /// as looked up (until [`StunHosts::resolved`] reports back).
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        self.names
            .iter_mut()
            .filter(|(_, l)| l.due.is_some_and(|d| d <= now))
            .map(|(h, l)| {
                l.due = None;
                h.clone()
            })
            .collect()
    }

    /// Takes a lookup's answer; returns whether the STUN servers changed
    /// (then disco needs [`StunHosts::regions`] again). A failure keeps
    /// the last good addresses and retries after [`RETRY`].
    pub fn resolved(
        &mut self,
        host: &str,
        addrs: Result<Vec<IpAddr>, String>,
        now: Instant,
    ) -> bool {
        let Some(l) = self.names.get_mut(host) else {
            return false; // the host left the map meanwhile
        };
        match addrs {
            Ok(mut addrs) if !addrs.is_empty() => {
                addrs.sort();
                addrs.dedup();
                l.due = Some(now + REFRESH);
                let changed = l.addrs != addrs;
                l.addrs = addrs;
                changed
            }
            Ok(_) => {
                tracing::debug!("Relay host name has no addresses; STUN there waits");
                l.due = Some(now + RETRY);
                false
            }
            Err(error) => {
                tracing::debug!(%error, "Relay host name lookup failed; STUN there waits");
                l.due = Some(now + RETRY);
                false
            }
        }
    }

    /// Returns disco's view: each region with the STUN servers known now.
    pub fn regions(&self) -> Vec<RelayRegionInfo> {
        self.map
            .regions
            .values()
            .map(|r| RelayRegionInfo {
                id: RegionId(r.id),
                stun: r
                    .nodes
                    .iter()
                    .filter(|n| n.stun_port != 0)
                    .flat_map(|n| {
                        let known = n.known_addrs();
                        let ips = if known.is_empty() {
                            self.names
                                .get(&n.host)
                                .map(|l| l.addrs.clone())
                                .unwrap_or_default()
                        } else {
                            known
                        };
                        ips.into_iter()
                            .map(move |ip| SocketAddr::new(ip, n.stun_port))
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_types::netmap::{RelayNode, RelayRegion};

    fn node(host: &str, ipv4: Option<&str>) -> RelayNode {
        RelayNode {
            name: "1a".into(),
            host: host.into(),
            relay_port: 443,
            stun_port: 3478,
            ipv4: ipv4.map(|a| a.parse().unwrap()),
            ipv6: None,
            insecure_for_tests: false,
        }
    }

    fn map(nodes: Vec<(u16, RelayNode)>) -> RelayMap {
        let mut m = RelayMap::default();
        for (id, n) in nodes {
            m.regions
                .entry(id)
                .or_insert_with(|| RelayRegion {
                    id,
                    code: format!("r{id}"),
                    name: format!("Region {id}"),
                    nodes: Vec::new(),
                })
                .nodes
                .push(n);
        }
        m
    }

    fn stun(h: &StunHosts, region: u16) -> Vec<String> {
        h.regions()
            .into_iter()
            .find(|r| r.id == RegionId(region))
            .map(|r| r.stun.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }

    #[test]
    fn addresses_in_the_map_need_no_lookup_and_names_are_looked_up_once() {
        let t0 = crate::clock::now();
        let mut h = StunHosts::default();
        let m = map(vec![
            (1, node("198.18.0.1", None)),
            (2, node("relay.example", Some("198.18.0.2"))),
            (3, node("[2001:db8::3]", None)),
            (4, node("relay4.example", None)),
        ]);
        assert!(h.set_map(&m, t0));
        assert_eq!(stun(&h, 1), ["198.18.0.1:3478"]);
        assert_eq!(stun(&h, 2), ["198.18.0.2:3478"]);
        assert_eq!(stun(&h, 3), ["[2001:db8::3]:3478"]);
        assert!(stun(&h, 4).is_empty(), "not looked up yet");
        assert_eq!(h.due(t0), ["relay4.example"]);
        assert!(h.due(t0).is_empty(), "a lookup is out");
        assert!(!h.set_map(&m, t0), "the same map again changes nothing");
        assert!(h.due(t0).is_empty());

        let ips = vec![
            "198.18.0.5".parse().unwrap(),
            "2001:db8::5".parse().unwrap(),
        ];
        assert!(h.resolved("relay4.example", Ok(ips.clone()), t0));
        assert_eq!(stun(&h, 4), ["198.18.0.5:3478", "[2001:db8::5]:3478"]);
        assert!(!h.resolved("relay4.example", Ok(ips), t0), "same answer");
        assert!(h.due(t0 + REFRESH - Duration::from_secs(1)).is_empty());
        assert_eq!(h.due(t0 + REFRESH), ["relay4.example"]);
    }

    #[test]
    fn a_failed_lookup_keeps_the_last_answer_and_retries() {
        let t0 = crate::clock::now();
        let mut h = StunHosts::default();
        h.set_map(&map(vec![(1, node("relay.example", None))]), t0);
        assert_eq!(h.due(t0).len(), 1);
        assert!(!h.resolved("relay.example", Err("no answer".into()), t0));
        assert!(h.due(t0 + RETRY - Duration::from_millis(1)).is_empty());
        assert_eq!(h.due(t0 + RETRY).len(), 1);
        assert!(h.resolved(
            "relay.example",
            Ok(vec!["198.18.0.7".parse().unwrap()]),
            t0 + RETRY
        ));
        let later = t0 + RETRY + REFRESH;
        assert_eq!(h.due(later).len(), 1);
        assert!(!h.resolved("relay.example", Err("timed out".into()), later));
        assert_eq!(
            stun(&h, 1),
            ["198.18.0.7:3478"],
            "kept through a failed refresh"
        );
    }

    #[test]
    fn names_that_leave_the_map_are_forgotten_and_late_answers_ignored() {
        let t0 = crate::clock::now();
        let mut h = StunHosts::default();
        h.set_map(&map(vec![(1, node("old.example", None))]), t0);
        assert_eq!(h.due(t0), ["old.example"]);
        h.set_map(&map(vec![(1, node("new.example", None))]), t0);
        assert!(!h.resolved("old.example", Ok(vec!["198.18.0.9".parse().unwrap()]), t0));
        assert!(stun(&h, 1).is_empty());
        assert_eq!(h.due(t0), ["new.example"]);
    }

    #[test]
    fn a_relay_without_stun_is_never_looked_up() {
        let t0 = crate::clock::now();
        let mut h = StunHosts::default();
        let mut n = node("relay.example", None);
        n.stun_port = 0;
        h.set_map(&map(vec![(1, n)]), t0);
        assert!(h.due(t0).is_empty());
        assert!(stun(&h, 1).is_empty());
    }
}
