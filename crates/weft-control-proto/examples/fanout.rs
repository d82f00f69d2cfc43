//! Measures the server-side costs that decide map fan-out at scale:
//! encoding 10,000 node fragments, splicing and encrypting one full map of
//! 10,000 peers, and sending one delta to 10,000 connections (encoded once,
//! then an envelope and encryption per recipient), plus the client's cost to
//! parse and apply that full map.
//!
//! `cargo run -p weft-control-proto --example fanout [nodes]`
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use weft_control_proto::encode::{FullMapParts, delta_body, full_map_body};
use weft_control_proto::{
    ChannelConfig, Connection, Encoded, Event, MapSession, MapStream, ServerConnection,
    UpgradeHeaders,
};
use weft_types::control::{ClientMessage, KeepAlive, ServerMessage};
use weft_types::netmap::{Delta, DnsConfig, PeerDelta, RelayMap};
use weft_types::{
    CapabilityVersion, DiscoPrivate, Endpoint, EndpointKind, HostInfo, MachinePrivate, Node,
    NodeId, NodeOwner, NodePrivate, UnixMillis, UserId,
};

fn bytes32(i: u64, tag: u8) -> [u8; 32] {
    let mut b = [tag; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    b
}

fn node(i: i64) -> Node {
    let n = i as u64;
    let v4 = format!("100.{}.{}.{}/32", 64 + (i >> 16), (i >> 8) & 255, i & 255)
        .parse()
        .unwrap();
    let v6 = format!("fd7a:115c:a1e0::{i:x}/128").parse().unwrap();
    Node {
        id: NodeId(i),
        stable_id: format!("n{i:020x}").parse().unwrap(),
        name: format!("host-{i}.example.weft").parse().unwrap(),
        owner: NodeOwner::User(UserId(i % 50)),
        node_key: NodePrivate::from_bytes(bytes32(n, 1)).public(),
        machine_key: MachinePrivate::from_bytes(bytes32(n, 2)).public(),
        disco_key: Some(DiscoPrivate::from_bytes(bytes32(n, 3)).public()),
        addresses: vec![v4, v6],
        allowed_ips: vec![v4, v6],
        endpoints: vec![
            Endpoint { addr: format!("198.18.{}.{}:41641", (i >> 8) & 255, i & 255).parse().unwrap(), kind: EndpointKind::Local },
            Endpoint { addr: format!("198.19.{}.{}:41641", (i >> 8) & 255, i & 255).parse().unwrap(), kind: EndpointKind::Stun },
        ],
        home_relay: None,
        host_info: HostInfo {
            hostname: format!("host-{i}"),
            os: "linux".into(),
            os_version: "Debian 13".into(),
            weft_version: "0.1.0".into(),
            ssh_host_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@host".parse().unwrap(),
            ],
            requested_tags: BTreeSet::new(),
            shields_up: false,
        },
        created: UnixMillis(1_790_000_000_000),
        last_seen: Some(UnixMillis(1_790_000_100_000)),
        online: true,
        key_expiry: Some(UnixMillis(1_805_000_000_000)),
        expired: false,
        machine_authorized: true,
    }
}

#[allow(clippy::disallowed_methods)] // the one place this driver reads the clock
fn clock() -> Instant {
    Instant::now()
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let n: i64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let now = clock();

    // 1. The server's snapshot: one fragment per node.
    let t = clock();
    let nodes: Vec<Node> = (1..=n).map(node).collect();
    let built = t.elapsed();
    let t = clock();
    let fragments: Vec<Encoded<Node>> = nodes.iter().map(|x| Encoded::new(x).unwrap()).collect();
    let encode_all = t.elapsed();
    let frag_bytes: usize = fragments.iter().map(Encoded::len).sum();
    println!(
        "nodes: {n}; build {}, encode all fragments once {} ({} bytes, {} B/node)",
        ms(built),
        ms(encode_all),
        frag_bytes,
        frag_bytes / n as usize
    );

    // 2. One recipient's full map: splice + encrypt.
    let dns = Encoded::new(&DnsConfig::default()).unwrap();
    let relay = Encoded::new(&RelayMap::default()).unwrap();
    let filter = Encoded::new(&weft_types::netmap::PacketFilter::default()).unwrap();
    let ssh = Encoded::new(&weft_types::netmap::SshPolicy::default()).unwrap();
    let domain = "example.weft".parse().unwrap();
    let t = clock();
    let peers: Vec<&Encoded<Node>> = fragments.iter().skip(1).collect();
    let body = full_map_body(&FullMapParts {
        self_node: &fragments[0],
        peers: &peers,
        user_profiles: &[],
        domain: &domain,
        dns: &dns,
        relay_map: &relay,
        packet_filter: &filter,
        ssh_policy: &ssh,
    })
    .unwrap();
    let mut stream = MapStream::new();
    let full_msg = stream.next(&body).unwrap();
    let splice = t.elapsed();

    // A real channel pair for the full map, to time encryption and the client.
    let server_key = MachinePrivate::from_bytes([9; 32]);
    let (mut client, req) = Connection::client(
        &MachinePrivate::from_bytes([8; 32]),
        &server_key.public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        [7; 32],
        now,
    )
    .unwrap();
    let cap = req.capability.to_string();
    let h = UpgradeHeaders {
        upgrade: Some("weft-control"),
        capability: Some(&cap),
        handshake: Some(&req.handshake),
    };
    let mut server = Connection::accept(&server_key, &h, ChannelConfig::default(), [6; 32], now)
        .unwrap()
        .connection;
    client
        .handle_input(&server.poll_transmit().unwrap(), now)
        .unwrap();
    let t = clock();
    server.send_encoded(&full_msg, now).unwrap();
    let wire = server.poll_transmit().unwrap();
    let encrypt = t.elapsed();
    println!(
        "full map for one node with {} peers: splice {}, encrypt {} ({} bytes on the wire)",
        n - 1,
        ms(splice),
        ms(encrypt),
        wire.len()
    );
    let t = clock();
    client.handle_input(&wire, now).unwrap();
    let decrypt_parse = t.elapsed();
    let mut session = MapSession::new(Duration::from_secs(150), now);
    let t = clock();
    while let Some(ev) = client.poll_event() {
        if let Event::Message(ServerMessage::Map(resp)) = ev {
            session.handle_response(resp, now).unwrap();
        }
    }
    let apply = t.elapsed();
    println!(
        "client: decrypt + reassemble + parse {}, apply full map {}",
        ms(decrypt_parse),
        ms(apply)
    );

    // 3. One delta to n connections: encode once, envelope + encrypt each.
    let empty_delta = delta_body(&[]).unwrap();
    let t = clock();
    let mut conns: Vec<(ServerConnection, MapStream)> = (0..n as u64)
        .map(|i| {
            let (mut c, req) = Connection::client(
                &MachinePrivate::from_bytes(bytes32(i, 4)),
                &server_key.public(),
                CapabilityVersion::CURRENT,
                ChannelConfig::default(),
                bytes32(i, 5),
                now,
            )
            .unwrap();
            let cap = req.capability.to_string();
            let h = UpgradeHeaders {
                upgrade: Some("weft-control"),
                capability: Some(&cap),
                handshake: Some(&req.handshake),
            };
            let mut s = Connection::accept(
                &server_key,
                &h,
                ChannelConfig::default(),
                bytes32(i, 6),
                now,
            )
            .unwrap()
            .connection;
            c.handle_input(&s.poll_transmit().unwrap(), now).unwrap();
            c.send(&ClientMessage::KeepAlive(KeepAlive {}), now)
                .unwrap();
            s.handle_input(&c.poll_transmit().unwrap(), now).unwrap();
            let mut st = MapStream::new();
            st.next(&empty_delta).unwrap(); // stands in for the full map that went out first
            (s, st)
        })
        .collect();
    println!(
        "{n} handshakes (both sides, in one thread): {}",
        ms(t.elapsed())
    );

    let mut changed = node(42);
    changed.endpoints.truncate(1);
    let deltas = [
        Delta::Peer(PeerDelta::Endpoints {
            id: NodeId(42),
            endpoints: changed.endpoints.clone(),
            home_relay: None,
        }),
        Delta::Peer(PeerDelta::Online {
            id: NodeId(43),
            online: false,
            last_seen: UnixMillis(1_790_000_200_000),
        }),
    ];
    let t = clock();
    let shared = delta_body(&deltas).unwrap();
    let mut total = 0usize;
    for (conn, st) in &mut conns {
        let msg = st.next(&shared).unwrap();
        conn.send_encoded(&msg, now).unwrap();
        total += conn.poll_transmit().map_or(0, |b| b.len());
    }
    let fan = t.elapsed();
    println!(
        "one delta ({} bytes) to {n} connections: {} total, {:.2} µs per recipient, {} bytes out",
        shared.len(),
        ms(fan),
        fan.as_secs_f64() * 1e6 / n as f64,
        total
    );
}
