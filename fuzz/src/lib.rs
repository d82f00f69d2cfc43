//! Fixtures shared by Weft's fuzz targets (see docs/FUZZING.md).
//!
//! Everything here is deterministic except where a crate draws its own
//! randomness (boringtun's and snow's ephemeral keys): a crash reproduces
//! from its input alone.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_types::NodePrivate;
use weft_wg::{Decapsulated, Device, DeviceUpdate, PeerUpdate};

/// The one clock read of the fuzz crate: a base `Instant` that every target
/// adds virtual time to.
pub fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    #[allow(clippy::disallowed_methods)]
    *BASE.get_or_init(Instant::now)
}

/// A fixed wall clock for device epochs.
pub fn unix_epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

/// A WireGuard key from one repeated byte (the weft-wg tests' keys).
pub fn wg_key(seed: u8) -> NodePrivate {
    NodePrivate::from_bytes([seed; 32])
}

/// Node `i`'s underlay endpoint (198.18.0.0/15, the tests' range).
pub fn underlay(i: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + i)), 51820)
}

/// Node `i`'s overlay IPv4 address.
pub fn overlay_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1 + i)
}

/// Node `i`'s overlay IPv6 address.
pub fn overlay_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 1 + u16::from(i))
}

/// A device with key `wg_key(me + 1)` and, if `peer` is given, that node as
/// its peer (endpoint and overlay addresses as AllowedIPs).
pub fn wg_device(me: u8, peer: Option<u8>) -> Device {
    let now = base_instant();
    let dev = Device::new(now, unix_epoch());
    let mut update = DeviceUpdate {
        private_key: Some(Some(wg_key(me + 1))),
        listen_port: Some(51820),
        ..Default::default()
    };
    if let Some(p) = peer {
        let mut u = PeerUpdate::new(wg_key(p + 1).public());
        u.endpoint = Some(underlay(p));
        u.allowed_ips = vec![
            IpNet::new(IpAddr::V4(overlay_v4(p)), 32).expect("valid prefix"),
            IpNet::new(IpAddr::V6(overlay_v6(p)), 128).expect("valid prefix"),
        ];
        update.peers.push(u);
    }
    dev.apply(update, now);
    dev
}

/// Delivers datagrams between devices `a` (node 0) and `b` (node 1) until
/// neither has anything more to say (bounded).
pub fn wg_pump(a: &Device, b: &Device, mut wire: Vec<(usize, Vec<u8>)>) {
    let now = base_instant();
    let mut out = vec![0u8; 65_536];
    for _ in 0..64 {
        let Some((to, bytes)) = wire.pop() else {
            return;
        };
        let (dev, from) = if to == 0 {
            (a, underlay(1))
        } else {
            (b, underlay(0))
        };
        let mut replies = Vec::new();
        let _: Decapsulated<'_> = dev.decapsulate(from, &bytes, &mut out, now, &mut |_, d| {
            replies.push((1 - to, d.to_vec()))
        });
        wire.extend(replies);
    }
}

/// A minimal IPv4/UDP packet from node `src` to node `dst`.
pub fn ipv4_udp(src: u8, dst: u8, payload: &[u8]) -> Vec<u8> {
    let total = 28 + payload.len();
    let mut p = vec![0u8; 28];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap_or(u16::MAX).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&overlay_v4(src).octets());
    p[16..20].copy_from_slice(&overlay_v4(dst).octets());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(
        &u16::try_from(8 + payload.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes(),
    );
    p.extend_from_slice(payload);
    p
}

/// The small tailnet of weft-policy's tests: alice (admin), bob, carol; a
/// tagged server and db.
pub const NODES_JSON: &str = r#"{
  "users": [
    {"login": "alice@example.com", "role": "admin"},
    {"login": "bob@example.com"},
    {"login": "carol@example.com"}
  ],
  "nodes": [
    {"name": "alice-laptop", "user": "alice@example.com", "ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1"},
    {"name": "alice-phone", "user": "alice@example.com", "ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2"},
    {"name": "bob-laptop", "user": "bob@example.com", "ipv4": "100.64.0.3", "ipv6": "fd7a:115c:a1e0::3"},
    {"name": "server", "user": "alice@example.com", "tags": ["tag:server"], "ipv4": "100.64.0.10", "ipv6": "fd7a:115c:a1e0::10"},
    {"name": "db", "user": null, "tags": ["tag:db"], "ipv4": "100.64.0.11", "ipv6": "fd7a:115c:a1e0::11"}
  ]
}"#;
