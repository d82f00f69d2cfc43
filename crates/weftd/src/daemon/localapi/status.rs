//! Assembles `GET status` and `GET whois` from the netmap, the data plane's
//! live peer state and the profile.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use weft_localapi::{PeerStatus, Status, TailnetInfo, UdpStatus, WhoIs};
use weft_types::{NetMap, Node, NodeOwner};

use crate::daemon::backend::Backend;
use crate::daemon::dataplane::PeerLive;
use crate::daemon::tunnel::UdpDrops;

/// A peer counts as active while its last handshake is this recent (and
/// bytes have moved).
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(120);

/// Builds the status.
pub fn build(b: &Backend, now: SystemTime) -> Status {
    let profile = b.store().current();
    let nm = b.netmap();
    let live = b.data_plane().peers();
    let mut peers: Vec<PeerStatus> = nm
        .map(|nm| {
            nm.peers
                .values()
                .map(|n| peer_status(nm, n, live.get(&n.node_key), now))
                .collect()
        })
        .unwrap_or_default();
    peers.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    let rules = nm.map_or(0, |nm| nm.packet_filter.rules.len());
    let filtered = b.data_plane().filtered();
    let filter_stats = b.data_plane().filter_stats();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        backend_state: b.state(),
        auth_url: b.auth_url().map(str::to_owned),
        tun: b.info().tun.clone(),
        tailnet: profile.tailnet.as_ref().map(|domain| TailnetInfo {
            domain: domain.clone(),
            control_url: profile.prefs.control_url.clone(),
        }),
        self_node: nm
            .map(|nm| peer_status(nm, &nm.self_node, None, now))
            .or_else(|| {
                crate::daemon::profiles::self_before_netmap(profile, &b.info().os_hostname)
            }),
        user: profile.user.clone(),
        peers,
        health: b.health(),
        filter: crate::daemon::filter::status(
            filter_stats.as_ref(),
            profile.prefs.shields_up,
            rules,
            filtered,
        ),
        profile: Some(b.current_summary()),
        udp: udp_status(&b.data_plane().udp_drops()),
    }
}

/// The UDP socket's drop counters as the LocalAPI names them.
fn udp_status(d: &UdpDrops) -> UdpStatus {
    UdpStatus {
        dropped: d.total(),
        wireguard_dropped: d
            .wireguard
            .iter()
            .map(|(r, n)| (crate::wg::stats::reason_name(*r).to_owned(), *n))
            .collect(),
        disco_dropped: d.disco.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
    }
}

fn unix_ms(t: SystemTime) -> Option<i64> {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_millis()).ok())
}

/// Builds one node's status line.
pub fn peer_status(nm: &NetMap, n: &Node, live: Option<&PeerLive>, now: SystemTime) -> PeerStatus {
    let live = live.cloned().unwrap_or_default();
    let mut addresses: Vec<IpAddr> = n.addresses.iter().map(ipnet::IpNet::addr).collect();
    addresses.sort_by_key(|a| (a.is_ipv6(), *a));
    let user = match &n.owner {
        NodeOwner::User(id) => nm.user_profiles.get(id).map(|u| u.login_name.to_string()),
        NodeOwner::Tags(_) => None,
    };
    let recent = live
        .last_handshake
        .is_some_and(|t| now.duration_since(t).unwrap_or_default() < ACTIVE_WINDOW);
    PeerStatus {
        id: n.id,
        stable_id: n.stable_id.to_string(),
        name: n.name.first_label().to_string(),
        dns_name: n.name.to_string(),
        hostname: n.host_info.hostname.clone(),
        os: n.host_info.os.clone(),
        user,
        tags: n.tags().map(ToString::to_string).collect(),
        addresses,
        allowed_ips: n.allowed_ips.clone(),
        public_key: n.node_key,
        endpoints: n.endpoints.iter().map(|e| e.addr).collect(),
        cur_addr: live.cur_addr,
        relay: live
            .relay
            .and_then(|r| nm.relay_map.regions.get(&r))
            .map(|r| r.code.clone()),
        online: n.online,
        last_seen_ms: n.last_seen.map(|t| t.0),
        last_handshake_ms: live.last_handshake.and_then(unix_ms),
        active: recent && live.rx_bytes + live.tx_bytes > 0,
        rx_bytes: live.rx_bytes,
        tx_bytes: live.tx_bytes,
        expired: n.expired,
        key_expiry_ms: n.key_expiry.map(|t| t.0),
        ssh_host_keys: n
            .host_info
            .ssh_host_keys
            .iter()
            .map(ToString::to_string)
            .collect(),
    }
}

/// Builds the whois answer for `ip` (self or a peer).
pub fn whois(b: &Backend, ip: IpAddr, now: SystemTime) -> Option<WhoIs> {
    let nm = b.netmap()?;
    let live = b.data_plane().peers();
    let node = std::iter::once(&nm.self_node)
        .chain(nm.peers.values())
        .find(|n| n.addresses.iter().any(|a| a.addr() == ip))?;
    let user = match &node.owner {
        NodeOwner::User(id) => nm.user_profiles.get(id).map(|u| weft_localapi::UserInfo {
            id: u.id,
            login_name: u.login_name.to_string(),
            display_name: u.display_name.clone(),
        }),
        NodeOwner::Tags(_) => None,
    };
    Some(WhoIs {
        node: peer_status(nm, node, live.get(&node.node_key), now),
        user,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_types::netmap::{RelayNode, RelayRegion};

    /// A relayed peer shows its relay region's code (`weft status` prints
    /// `relay "lab"`), a direct one its address and no relay.
    #[test]
    fn a_relayed_peer_shows_its_region_code() {
        let mut nm = crate::daemon::tests::fake::map_for(
            weft_types::NodePrivate::from_bytes([1; 32]).public(),
            weft_types::NodeId(1),
        );
        nm.relay_map.regions.insert(
            900,
            RelayRegion {
                id: 900,
                code: "lab".into(),
                name: "Lab".into(),
                nodes: vec![RelayNode {
                    name: "900a".into(),
                    host: "198.18.0.1".into(),
                    relay_port: 443,
                    stun_port: 3478,
                    ipv4: None,
                    ipv6: None,
                    insecure_for_tests: false,
                }],
            },
        );
        let peer = nm.peers.values().next().unwrap().clone();
        #[allow(clippy::disallowed_methods)] // a wall-clock stamp for the status
        let now = SystemTime::now();
        let relayed = PeerLive {
            relay: Some(900),
            ..PeerLive::default()
        };
        let s = peer_status(&nm, &peer, Some(&relayed), now);
        assert_eq!((s.relay.as_deref(), s.cur_addr), (Some("lab"), None));
        let direct = PeerLive {
            cur_addr: Some("198.18.0.2:41641".parse().unwrap()),
            ..PeerLive::default()
        };
        let s = peer_status(&nm, &peer, Some(&direct), now);
        assert_eq!(s.relay, None);
        let unknown = PeerLive {
            relay: Some(7),
            ..PeerLive::default()
        };
        assert_eq!(peer_status(&nm, &peer, Some(&unknown), now).relay, None);
    }
}
