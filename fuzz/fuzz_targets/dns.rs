//! MagicDNS (weft-dns): arbitrary bytes as a client's query, over UDP and
//! over TCP, into a resolver that knows a small tailnet, an extra record and
//! a split route; then the same bytes as the upstream's reply to a forwarded
//! query. Every reply must parse, carry the client's id where the query's
//! header was readable, and fit the UDP limit on UDP.
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use weft_dns::{MAX_UDP_ANSWER, Resolver, Transmit, Transport};
use weft_fuzz::{base_instant, overlay_v4, overlay_v6, wg_key};
use weft_types::netmap::{DnsConfig, DnsRecord, RelayMap};
use weft_types::{
    DiscoPrivate, HostInfo, MachinePrivate, NetMap, Node, NodeId, NodeOwner, UnixMillis, UserId,
};

fn node(i: u8, label: &str) -> Node {
    Node {
        id: NodeId(i64::from(i)),
        stable_id: format!("n{i:020x}").parse().expect("id"),
        name: format!("{label}.tail.weft.internal").parse().expect("name"),
        owner: NodeOwner::User(UserId(1)),
        node_key: wg_key(i).public(),
        machine_key: MachinePrivate::from_bytes([i ^ 0x80; 32]).public(),
        disco_key: Some(DiscoPrivate::from_bytes([i ^ 0x40; 32]).public()),
        addresses: vec![
            IpAddr::V4(overlay_v4(i)).into(),
            IpAddr::V6(overlay_v6(i)).into(),
        ],
        allowed_ips: vec![],
        endpoints: vec![],
        home_relay: None,
        host_info: HostInfo {
            hostname: label.into(),
            os: "linux".into(),
            os_version: String::new(),
            weft_version: String::new(),
            ssh_host_keys: vec![],
            requested_tags: BTreeSet::new(),
            shields_up: false,
        },
        created: UnixMillis(0),
        last_seen: None,
        online: true,
        key_expiry: None,
        expired: false,
        machine_authorized: true,
    }
}

fn resolver() -> Resolver<u8> {
    let mut routes = BTreeMap::new();
    routes.insert(
        "corp.example".parse().expect("domain"),
        vec!["198.18.5.53".parse().expect("ip")],
    );
    let nm = NetMap {
        self_node: node(1, "alpha"),
        peers: [(NodeId(2), node(2, "beta"))].into_iter().collect(),
        user_profiles: BTreeMap::new(),
        domain: "tail.weft.internal".parse().expect("domain"),
        dns: DnsConfig {
            magic_dns: true,
            nameservers: vec![],
            search_domains: vec![],
            routes,
            extra_records: vec![DnsRecord {
                name: "grafana.ops.example".parse().expect("name"),
                addr: "100.64.9.9".parse().expect("ip"),
            }],
        },
        relay_map: RelayMap::default(),
        packet_filter: Default::default(),
        ssh_policy: Default::default(),
    };
    let mut r = Resolver::new([5; 32]);
    r.set_netmap(&nm);
    r.set_host_nameservers(&["198.18.0.53".parse().expect("ip")]);
    r
}

fn check(r: &mut Resolver<u8>, query: &[u8], reply_bytes: &[u8]) {
    let now = base_instant();
    while let Some(t) = r.poll_transmit() {
        match t {
            Transmit::Reply(a) => {
                let m = hickory_proto::op::Message::from_vec(&a.bytes)
                    .expect("every reply the resolver builds parses");
                if query.len() >= 2 {
                    assert_eq!(m.metadata.id, u16::from_be_bytes([query[0], query[1]]));
                }
                if a.transport == Transport::Udp {
                    assert!(a.bytes.len() <= MAX_UDP_ANSWER.max(query.len()));
                }
            }
            Transmit::Forward { id, bytes, .. } => {
                assert_eq!(bytes.len(), query.len());
                r.handle_upstream(id, reply_bytes, now);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let now = base_instant();
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut r = resolver();
        r.handle_query(1, transport, data, now);
        check(&mut r, data, data);
    }
    // The bytes as an upstream's reply to a well-formed forwarded query.
    let q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03www\x07example\x03org\x00\x00\x01\x00\x01";
    let mut r = resolver();
    r.handle_query(2, Transport::Udp, q, now);
    check(&mut r, q, data);
});
