//! Helpers shared by the integration tests: fixed keys, a base instant,
//! sample nodes and an in-memory pipe between two connections.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Instant;

use weft_control_proto::{
    Accepted, ChannelConfig, ClientConnection, Connection, Event, Role, ServerConnection,
    UpgradeHeaders, UpgradeRequest,
};
use weft_types::netmap::{DnsConfig, RelayMap};
use weft_types::{
    CapabilityVersion, DiscoPrivate, Endpoint, EndpointKind, HostInfo, MachinePrivate, NetMap,
    Node, NodeId, NodeOwner, NodePrivate, UnixMillis, UserId, UserProfile,
};

/// The one place tests read the clock: the base of virtual time.
#[allow(clippy::disallowed_methods)]
pub fn t0() -> Instant {
    Instant::now()
}

/// Returns 32 bytes counting up from `start`.
pub fn counting(start: u8) -> [u8; 32] {
    std::array::from_fn(|i| start.wrapping_add(i as u8))
}

pub fn machine_key() -> MachinePrivate {
    MachinePrivate::from_bytes(counting(0x00))
}

pub fn server_key() -> MachinePrivate {
    MachinePrivate::from_bytes(counting(0x20))
}

pub const CLIENT_SEED: u8 = 0x40;
pub const SERVER_SEED: u8 = 0x60;

/// Turns an upgrade request into the headers a server would see.
pub fn headers(req: &UpgradeRequest) -> (String, String) {
    (req.capability.to_string(), req.handshake.clone())
}

pub fn accept(req: &UpgradeRequest, config: ChannelConfig, now: Instant) -> Accepted {
    let (cap, hs) = headers(req);
    let h = UpgradeHeaders {
        upgrade: Some("weft-control"),
        capability: Some(&cap),
        handshake: Some(&hs),
    };
    Connection::accept(&server_key(), &h, config, counting(SERVER_SEED), now).unwrap()
}

/// Opens a client and server connection with the fixed keys and seeds; the
/// handshake response is still in the server's transmit queue.
pub fn open(config: ChannelConfig, now: Instant) -> (ClientConnection, ServerConnection) {
    let (client, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        config.clone(),
        counting(CLIENT_SEED),
        now,
    )
    .unwrap();
    let accepted = accept(&req, config, now);
    (client, accepted.connection)
}

/// Moves everything `from` wants to send into `to`.
pub fn pump<A: Role, B: Role>(
    from: &mut Connection<A>,
    to: &mut Connection<B>,
    now: Instant,
) -> Result<(), weft_control_proto::ChannelError> {
    while let Some(bytes) = from.poll_transmit() {
        to.handle_input(&bytes, now)?;
    }
    Ok(())
}

/// Drains the events of a connection.
pub fn events<R: Role>(c: &mut Connection<R>) -> Vec<Event<R::Recv>> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

/// Opens a pair and completes the handshake on both sides (the client sends
/// a keep-alive so the server sees the confirming record).
pub fn established(config: ChannelConfig, now: Instant) -> (ClientConnection, ServerConnection) {
    let (mut client, mut server) = open(config, now);
    pump(&mut server, &mut client, now).unwrap();
    client
        .send(
            &weft_types::control::ClientMessage::KeepAlive(Default::default()),
            now,
        )
        .unwrap();
    pump(&mut client, &mut server, now).unwrap();
    assert!(client.is_established() && server.is_established());
    events(&mut client);
    events(&mut server);
    (client, server)
}

pub fn node(id: i64) -> Node {
    let key = NodePrivate::from_bytes(counting(id as u8)).public();
    Node {
        id: NodeId(id),
        stable_id: format!("n{id:020x}").parse().unwrap(),
        name: format!("host-{id}.example.weft").parse().unwrap(),
        owner: NodeOwner::User(UserId(1 + id % 3)),
        node_key: key,
        machine_key: MachinePrivate::from_bytes(counting(id as u8 ^ 0x80)).public(),
        disco_key: Some(DiscoPrivate::from_bytes(counting(id as u8 ^ 0x40)).public()),
        addresses: vec![
            format!("100.64.{}.{}/32", id / 250, id % 250 + 1)
                .parse()
                .unwrap(),
            format!("fd7a:115c:a1e0::{:x}/128", id + 1).parse().unwrap(),
        ],
        allowed_ips: vec![
            format!("100.64.{}.{}/32", id / 250, id % 250 + 1)
                .parse()
                .unwrap(),
            format!("fd7a:115c:a1e0::{:x}/128", id + 1).parse().unwrap(),
        ],
        endpoints: vec![endpoint(id, 41641)],
        home_relay: None,
        host_info: HostInfo {
            hostname: format!("host-{id}"),
            os: "linux".into(),
            os_version: "Debian 13".into(),
            weft_version: "0.1.0".into(),
            ssh_host_keys: vec![
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHh0ZXN0a2V5 root@host"
                    .parse()
                    .unwrap(),
            ],
            requested_tags: BTreeSet::new(),
            shields_up: false,
        },
        created: UnixMillis(1_700_000_000_000 + id),
        last_seen: Some(UnixMillis(1_700_000_100_000)),
        online: true,
        key_expiry: Some(UnixMillis(1_715_552_000_000)),
        expired: false,
        machine_authorized: true,
    }
}

pub fn endpoint(id: i64, port: u16) -> Endpoint {
    let addr: SocketAddr = format!("198.18.{}.{}:{port}", (id / 250) % 256, id % 250 + 1)
        .parse()
        .unwrap();
    Endpoint {
        addr,
        kind: EndpointKind::Local,
    }
}

pub fn profile(id: i64) -> UserProfile {
    UserProfile {
        id: UserId(id),
        login_name: format!("user{id}@example.com").parse().unwrap(),
        display_name: format!("User {id}"),
        profile_pic_url: None,
    }
}

/// A netmap for node `self_id` with the given peers.
pub fn netmap(self_id: i64, peers: impl IntoIterator<Item = i64>) -> NetMap {
    NetMap {
        self_node: node(self_id),
        peers: peers
            .into_iter()
            .map(|i| (NodeId(i), node(i)))
            .collect::<BTreeMap<_, _>>(),
        user_profiles: (1..=3).map(|i| (UserId(i), profile(i))).collect(),
        domain: "example.weft".parse().unwrap(),
        dns: DnsConfig {
            magic_dns: true,
            nameservers: vec![],
            search_domains: vec![],
            ..Default::default()
        },
        relay_map: RelayMap::default(),
        packet_filter: Default::default(),
        ssh_policy: Default::default(),
    }
}
