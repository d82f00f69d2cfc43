//! The engine configurator: turns each new netmap into the smallest set of
//! changes to WireGuard, disco and the TUN addresses, by diffing it against
//! what is programmed now (not against the previous netmap, so a peer that
//! expired by time or a reconnect with an identical map both come out right).
//!
//! Pure: the data plane applies the [`Plan`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use ipnet::IpNet;
use weft_types::{DiscoPublic, NetMap, Node, NodePublic, UnixMillis};
use weft_wg::PeerUpdate;

/// What is programmed for one WireGuard peer.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Programmed {
    allowed_ips: Vec<IpNet>,
    disco_key: Option<DiscoPublic>,
    endpoints: Vec<SocketAddr>,
    home_relay: Option<u16>,
}

/// A disco peer to add or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoPeer {
    pub node_key: NodePublic,
    pub disco_key: DiscoPublic,
    pub endpoints: Vec<SocketAddr>,
    /// The peer's home relay region (from the netmap).
    pub home_relay: Option<u16>,
}

/// The changes one netmap needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// WireGuard peer changes, one per changed peer.
    pub wg: Vec<PeerUpdate>,
    /// Disco peers to add or update.
    pub disco_upsert: Vec<DiscoPeer>,
    /// Disco peers to forget.
    pub disco_remove: Vec<NodePublic>,
    /// TUN addresses to add.
    pub add_addresses: Vec<IpNet>,
    /// TUN addresses to remove.
    pub remove_addresses: Vec<IpNet>,
}

impl Plan {
    /// Returns whether nothing changes.
    pub fn is_empty(&self) -> bool {
        *self == Plan::default()
    }
}

/// Remembers what is programmed and plans the next change.
#[derive(Debug, Clone, Default)]
pub struct Configurator {
    peers: BTreeMap<NodePublic, Programmed>,
    addresses: BTreeSet<IpNet>,
}

impl Configurator {
    /// Creates a configurator for an empty data plane.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the changes that bring the data plane to `nm` at wall time
    /// `now` (peers not usable then are removed), and records them as done.
    pub fn plan(&mut self, nm: &NetMap, now: UnixMillis) -> Plan {
        let mut plan = Plan::default();
        let wanted: BTreeMap<NodePublic, Programmed> = nm
            .usable_peers(now)
            .filter(|n| n.node_key != nm.self_node.node_key)
            .map(|n| (n.node_key, programmed(n)))
            .collect();
        for (key, old) in &self.peers {
            if !wanted.contains_key(key) {
                plan.wg.push(PeerUpdate {
                    remove: true,
                    ..PeerUpdate::new(*key)
                });
                if old.disco_key.is_some() {
                    plan.disco_remove.push(*key);
                }
            }
        }
        for (key, new) in &wanted {
            let old = self.peers.get(key);
            if old.is_none_or(|o| o.allowed_ips != new.allowed_ips) {
                plan.wg.push(PeerUpdate {
                    replace_allowed_ips: true,
                    allowed_ips: new.allowed_ips.clone(),
                    ..PeerUpdate::new(*key)
                });
            }
            let disco_changed = old.is_none_or(|o| {
                o.disco_key != new.disco_key
                    || o.endpoints != new.endpoints
                    || o.home_relay != new.home_relay
            });
            match (new.disco_key, disco_changed) {
                (Some(disco_key), true) => plan.disco_upsert.push(DiscoPeer {
                    node_key: *key,
                    disco_key,
                    endpoints: new.endpoints.clone(),
                    home_relay: new.home_relay,
                }),
                (None, true) if old.is_some_and(|o| o.disco_key.is_some()) => {
                    plan.disco_remove.push(*key)
                }
                _ => {}
            }
        }
        self.peers = wanted;

        let addrs: BTreeSet<IpNet> = nm.self_node.addresses.iter().map(IpNet::trunc).collect();
        plan.add_addresses = addrs.difference(&self.addresses).copied().collect();
        plan.remove_addresses = self.addresses.difference(&addrs).copied().collect();
        self.addresses = addrs;
        plan
    }

    /// Returns the changes that remove everything (logout, key expiry,
    /// profile switch), and records them as done.
    pub fn clear(&mut self) -> Plan {
        let mut plan = Plan::default();
        for (key, old) in std::mem::take(&mut self.peers) {
            plan.wg.push(PeerUpdate {
                remove: true,
                ..PeerUpdate::new(key)
            });
            if old.disco_key.is_some() {
                plan.disco_remove.push(key);
            }
        }
        plan.remove_addresses = std::mem::take(&mut self.addresses).into_iter().collect();
        plan
    }

    /// Returns the programmed peers' node keys.
    #[cfg(test)]
    pub fn peers(&self) -> impl Iterator<Item = &NodePublic> {
        self.peers.keys()
    }
}

fn programmed(n: &Node) -> Programmed {
    let mut allowed_ips: Vec<IpNet> = n.allowed_ips.iter().map(IpNet::trunc).collect();
    allowed_ips.sort();
    allowed_ips.dedup();
    let mut endpoints: Vec<SocketAddr> = n.endpoints.iter().map(|e| e.addr).collect();
    endpoints.sort();
    endpoints.dedup();
    Programmed {
        allowed_ips,
        disco_key: n.disco_key,
        endpoints,
        home_relay: n.home_relay,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use weft_types::netmap::{DnsConfig, PacketFilter, RelayMap, SshPolicy};
    use weft_types::node::{Endpoint, EndpointKind, HostInfo, NodeOwner};
    use weft_types::{DiscoPrivate, NodeId, NodePrivate, UserId};

    pub(crate) fn node(n: u8) -> Node {
        Node {
            id: NodeId(i64::from(n)),
            stable_id: format!("n{n}").parse().unwrap(),
            name: format!("node{n}.example.weft.internal").parse().unwrap(),
            owner: NodeOwner::User(UserId(1)),
            node_key: NodePrivate::from_bytes([n; 32]).public(),
            machine_key: weft_types::MachinePrivate::from_bytes([n; 32]).public(),
            disco_key: Some(DiscoPrivate::from_bytes([n; 32]).public()),
            addresses: vec![
                format!("100.64.0.{n}/32").parse().unwrap(),
                format!("fd7a:115c:a1e0::{n}/128").parse().unwrap(),
            ],
            allowed_ips: vec![
                format!("100.64.0.{n}/32").parse().unwrap(),
                format!("fd7a:115c:a1e0::{n}/128").parse().unwrap(),
            ],
            home_relay: None,
            endpoints: vec![Endpoint {
                addr: format!("198.18.0.{n}:41641").parse().unwrap(),
                kind: EndpointKind::Local,
            }],
            host_info: HostInfo {
                hostname: format!("node{n}"),
                os: "linux".into(),
                ..HostInfo::default()
            },
            created: UnixMillis(1),
            last_seen: None,
            online: true,
            key_expiry: None,
            expired: false,
            machine_authorized: true,
        }
    }

    pub(crate) fn netmap(self_n: u8, peers: &[u8]) -> NetMap {
        NetMap {
            self_node: node(self_n),
            peers: peers
                .iter()
                .map(|n| (NodeId(i64::from(*n)), node(*n)))
                .collect(),
            user_profiles: BTreeMap::new(),
            domain: "example.weft.internal".parse().unwrap(),
            dns: DnsConfig::default(),
            relay_map: RelayMap::default(),
            packet_filter: PacketFilter::default(),
            ssh_policy: SshPolicy::default(),
        }
    }

    fn key(n: u8) -> NodePublic {
        NodePrivate::from_bytes([n; 32]).public()
    }

    #[test]
    fn the_first_netmap_programs_every_usable_peer_and_our_addresses() {
        let mut c = Configurator::new();
        let plan = c.plan(&netmap(1, &[2, 3]), UnixMillis(10));
        assert_eq!(plan.wg.len(), 2);
        assert!(
            plan.wg
                .iter()
                .all(|u| !u.remove && u.replace_allowed_ips && u.allowed_ips.len() == 2)
        );
        assert_eq!(plan.disco_upsert.len(), 2);
        assert_eq!(plan.add_addresses.len(), 2);
        assert!(
            c.plan(&netmap(1, &[2, 3]), UnixMillis(10)).is_empty(),
            "the same map again changes nothing"
        );
    }

    #[test]
    fn a_change_to_one_peer_touches_only_that_peer() {
        let mut c = Configurator::new();
        let mut nm = netmap(1, &[2, 3, 4]);
        c.plan(&nm, UnixMillis(10));
        // Peer 3 reports a new endpoint: only disco hears about it.
        nm.peers.get_mut(&NodeId(3)).unwrap().endpoints[0].addr =
            "198.18.5.5:41641".parse().unwrap();
        let plan = c.plan(&nm, UnixMillis(10));
        assert!(plan.wg.is_empty());
        assert_eq!(
            plan.disco_upsert
                .iter()
                .map(|d| d.node_key)
                .collect::<Vec<_>>(),
            vec![key(3)]
        );
        // Peer 4 gets a route: one WireGuard update, for peer 4.
        nm.peers
            .get_mut(&NodeId(4))
            .unwrap()
            .allowed_ips
            .push("198.18.100.0/24".parse().unwrap());
        let plan = c.plan(&nm, UnixMillis(10));
        assert_eq!(plan.wg.len(), 1);
        assert_eq!(plan.wg[0].public_key, key(4));
        assert!(plan.disco_upsert.is_empty());
        // Online/offline flaps change nothing in the data plane.
        nm.peers.get_mut(&NodeId(2)).unwrap().online = false;
        assert!(c.plan(&nm, UnixMillis(10)).is_empty());
    }

    #[test]
    fn removed_expired_and_unauthorized_peers_are_removed() {
        let mut c = Configurator::new();
        let mut nm = netmap(1, &[2, 3, 4, 5]);
        c.plan(&nm, UnixMillis(10));
        nm.peers.remove(&NodeId(2));
        nm.peers.get_mut(&NodeId(3)).unwrap().expired = true;
        nm.peers.get_mut(&NodeId(4)).unwrap().machine_authorized = false;
        nm.peers.get_mut(&NodeId(5)).unwrap().key_expiry = Some(UnixMillis(5));
        let plan = c.plan(&nm, UnixMillis(10));
        let removed: Vec<NodePublic> = plan
            .wg
            .iter()
            .filter(|u| u.remove)
            .map(|u| u.public_key)
            .collect();
        assert_eq!(removed.len(), 4);
        assert_eq!(plan.disco_remove.len(), 4);
        assert_eq!(c.peers().count(), 0);
    }

    #[test]
    fn a_rekeyed_peer_is_replaced() {
        let mut c = Configurator::new();
        let mut nm = netmap(1, &[2]);
        c.plan(&nm, UnixMillis(10));
        nm.peers.get_mut(&NodeId(2)).unwrap().node_key = key(22);
        let plan = c.plan(&nm, UnixMillis(10));
        assert!(plan.wg.iter().any(|u| u.remove && u.public_key == key(2)));
        assert!(plan.wg.iter().any(|u| !u.remove && u.public_key == key(22)));
    }

    #[test]
    fn clearing_removes_everything_that_was_programmed() {
        let mut c = Configurator::new();
        c.plan(&netmap(1, &[2, 3]), UnixMillis(10));
        let plan = c.clear();
        assert_eq!(plan.wg.iter().filter(|u| u.remove).count(), 2);
        assert_eq!(plan.remove_addresses.len(), 2);
        assert!(c.clear().is_empty());
    }
}
