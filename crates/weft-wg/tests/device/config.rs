//! Typed configuration: peers, routes, keys and what `apply` reports.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use weft_types::NodePublic;
use weft_wg::{Applied, Device, DeviceUpdate, DropReason, Encapsulated, PeerUpdate};

use crate::harness::*;

fn device() -> (Device, std::time::Instant) {
    let now = base_instant();
    let dev = Device::new(now, unix_epoch_of_tests());
    dev.apply(
        DeviceUpdate {
            private_key: Some(Some(key(1))),
            ..Default::default()
        },
        now,
    );
    (dev, now)
}

fn peer(seed: u8, nets: &[&str]) -> PeerUpdate {
    let mut u = PeerUpdate::new(key(seed).public());
    u.endpoint = Some(underlay(usize::from(seed)));
    u.allowed_ips = nets.iter().map(|n| n.parse().unwrap()).collect();
    u
}

fn keys(dev: &Device, now: std::time::Instant) -> Vec<NodePublic> {
    dev.peers(now).into_iter().map(|p| p.public_key).collect()
}

/// Which peer a packet to `dst` would be encrypted for (by its endpoint), or
/// the drop. Probe each peer once: the first packet starts a handshake whose
/// initiation names the peer; later ones queue silently behind it.
fn route(dev: &Device, now: std::time::Instant, dst: &str) -> Result<SocketAddr, DropReason> {
    let dst: IpAddr = dst.parse().unwrap();
    let p = match dst {
        IpAddr::V4(d) => ipv4_packet(overlay_v4(0), d, 1, 8),
        IpAddr::V6(d) => ipv6_packet(overlay_v6(0), d, 1),
    };
    let mut out = vec![0u8; 2048];
    let mut to = None;
    match dev.encapsulate(view(&p), &mut out, now, &mut |addr, _| to = Some(addr)) {
        Encapsulated::Dropped(r) => Err(r),
        Encapsulated::Send { to, .. } => Ok(to),
        Encapsulated::Queued => Ok(to.unwrap()),
    }
}

#[test]
fn the_longest_prefix_picks_the_peer() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![
                peer(2, &["0.0.0.0/0"]),
                peer(3, &["100.64.0.0/10"]),
                peer(4, &["100.64.0.4/32"]),
                peer(5, &["::/0"]),
            ],
            ..Default::default()
        },
        now,
    );
    assert_eq!(route(&dev, now, "100.64.0.4"), Ok(underlay(4)));
    assert_eq!(route(&dev, now, "100.64.9.9"), Ok(underlay(3)));
    assert_eq!(route(&dev, now, "198.18.5.5"), Ok(underlay(2)));
    assert_eq!(route(&dev, now, "fd7a:115c:a1e0::9"), Ok(underlay(5)));
}

#[test]
fn a_prefix_moves_to_the_peer_that_claims_it_last() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &["100.64.0.0/24"]), peer(3, &[])],
            ..Default::default()
        },
        now,
    );
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(3, &["100.64.0.7/24"])],
            ..Default::default()
        },
        now,
    );
    let peers = dev.peers(now);
    assert!(peers[0].allowed_ips.is_empty() || peers[1].allowed_ips.is_empty());
    assert_eq!(route(&dev, now, "100.64.0.1"), Ok(underlay(3)));
    let owner = peers
        .iter()
        .find(|p| p.public_key == key(3).public())
        .unwrap();
    assert_eq!(
        owner.allowed_ips,
        vec!["100.64.0.0/24".parse::<IpNet>().unwrap()],
        "host bits masked"
    );
}

#[test]
fn replace_peers_keeps_only_the_peers_listed() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &["100.64.0.2/32"]), peer(3, &["100.64.0.3/32"])],
            ..Default::default()
        },
        now,
    );
    dev.apply(
        DeviceUpdate {
            replace_peers: true,
            peers: vec![peer(4, &["100.64.0.4/32"])],
            ..Default::default()
        },
        now,
    );
    assert_eq!(keys(&dev, now), vec![key(4).public()]);
    assert_eq!(route(&dev, now, "100.64.0.2"), Err(DropReason::NoRoute));
}

#[test]
fn update_only_never_creates_a_peer() {
    let (dev, now) = device();
    let mut u = peer(2, &["100.64.0.2/32"]);
    u.update_only = true;
    dev.apply(
        DeviceUpdate {
            peers: vec![u.clone()],
            ..Default::default()
        },
        now,
    );
    assert!(dev.peers(now).is_empty());

    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &[])],
            ..Default::default()
        },
        now,
    );
    dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        now,
    );
    assert_eq!(
        dev.peers(now)[0].allowed_ips.len(),
        1,
        "an existing peer is updated"
    );
}

#[test]
fn remove_deletes_a_peer_and_its_routes() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &["100.64.0.2/32"]), peer(3, &["100.64.0.3/32"])],
            ..Default::default()
        },
        now,
    );
    let mut u = peer(2, &["100.64.0.9/32"]);
    u.remove = true;
    dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        now,
    );
    assert_eq!(keys(&dev, now), vec![key(3).public()]);
    assert_eq!(route(&dev, now, "100.64.0.2"), Err(DropReason::NoRoute));
    assert_eq!(
        route(&dev, now, "100.64.0.9"),
        Err(DropReason::NoRoute),
        "the other fields were ignored"
    );
}

#[test]
fn replace_allowed_ips_clears_the_peers_prefixes_first() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &["100.64.0.2/32", "100.64.1.0/24"])],
            ..Default::default()
        },
        now,
    );
    let mut u = peer(2, &["100.64.0.22/32"]);
    u.replace_allowed_ips = true;
    dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        now,
    );
    assert_eq!(
        dev.peers(now)[0].allowed_ips,
        vec!["100.64.0.22/32".parse::<IpNet>().unwrap()]
    );
}

#[test]
fn removing_an_allowed_ip_only_touches_the_peers_own_prefix() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(2, &["100.64.0.2/32"]), peer(3, &["100.64.0.3/32"])],
            ..Default::default()
        },
        now,
    );
    let mut u = peer(2, &[]);
    u.remove_allowed_ips = vec![
        "100.64.0.2/32".parse().unwrap(),
        "100.64.0.3/32".parse().unwrap(),
    ];
    dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        now,
    );
    assert_eq!(route(&dev, now, "100.64.0.2"), Err(DropReason::NoRoute));
    assert_eq!(route(&dev, now, "100.64.0.3"), Ok(underlay(3)));
}

#[test]
fn apply_reports_port_and_mark_only_when_they_change() {
    let (dev, now) = device();
    let set = |port, mark| {
        dev.apply(
            DeviceUpdate {
                listen_port: Some(port),
                fwmark: Some(mark),
                ..Default::default()
            },
            now,
        )
    };
    assert_eq!(
        set(51820, 7),
        Applied {
            listen_port: Some(51820),
            fwmark: Some(7)
        }
    );
    assert_eq!(set(51820, 7), Applied::default());
    assert_eq!(
        set(51821, 0),
        Applied {
            listen_port: Some(51821),
            fwmark: Some(0)
        }
    );
    assert_eq!((dev.listen_port(), dev.fwmark()), (51821, 0));

    dev.apply(
        DeviceUpdate {
            listen_port: Some(0),
            ..Default::default()
        },
        now,
    );
    dev.set_bound_port(40001);
    assert_eq!(dev.listen_port(), 40001);
}

#[test]
fn a_peer_with_our_own_public_key_is_ignored() {
    let (dev, now) = device();
    dev.apply(
        DeviceUpdate {
            peers: vec![peer(1, &["100.64.0.1/32"])],
            ..Default::default()
        },
        now,
    );
    assert!(dev.peers(now).is_empty());
}

#[test]
fn reapplying_the_same_private_key_keeps_sessions() {
    let mut net = Net::pair();
    net.handshake();
    let same = net.nodes[0].key.clone();
    net.nodes[0].dev.apply(
        DeviceUpdate {
            private_key: Some(Some(same)),
            ..Default::default()
        },
        net.now,
    );
    assert_eq!(
        net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8)),
        Outcome::Sent
    );
}

#[test]
fn changing_the_keepalive_keeps_the_session() {
    let mut net = Net::pair();
    net.handshake();
    let mut u = PeerUpdate::new(net.nodes[1].public());
    u.persistent_keepalive = Some(10);
    net.nodes[0].dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        net.now,
    );
    assert_eq!(
        net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8)),
        Outcome::Sent
    );
}
