#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;
use weft_types::netmap::{DnsConfig, DnsRecord, RelayMap};
use weft_types::{
    DiscoPrivate, HostInfo, MachinePrivate, NetMap, Node, NodeId, NodeOwner, NodePrivate,
    UnixMillis, UserId,
};

use super::*;

fn base() -> Instant {
    Instant::now()
}

fn node(id: u8, label: &str) -> Node {
    let k = |x: u8| std::array::from_fn(|i| x.wrapping_add(i as u8));
    Node {
        id: NodeId(i64::from(id)),
        stable_id: format!("n{id:020x}").parse().unwrap(),
        name: format!("{label}.tail.weft.internal").parse().unwrap(),
        owner: NodeOwner::User(UserId(1)),
        node_key: NodePrivate::from_bytes(k(id)).public(),
        machine_key: MachinePrivate::from_bytes(k(id ^ 0x80)).public(),
        disco_key: Some(DiscoPrivate::from_bytes(k(id ^ 0x40)).public()),
        addresses: vec![
            format!("100.64.0.{id}/32").parse().unwrap(),
            format!("fd7a:115c:a1e0::{id:x}/128").parse().unwrap(),
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

fn netmap() -> NetMap {
    let mut routes = BTreeMap::new();
    routes.insert(
        "corp.example".parse().unwrap(),
        vec!["198.18.5.53".parse().unwrap()],
    );
    routes.insert("internal.corp.example".parse().unwrap(), vec![]);
    NetMap {
        self_node: node(1, "alpha"),
        peers: [
            (NodeId(2), node(2, "build-box")),
            (NodeId(3), node(3, "gamma")),
        ]
        .into_iter()
        .collect(),
        user_profiles: BTreeMap::new(),
        domain: "tail.weft.internal".parse().unwrap(),
        dns: DnsConfig {
            magic_dns: true,
            nameservers: vec![],
            search_domains: vec![],
            routes,
            extra_records: vec![DnsRecord {
                name: "grafana.ops.example".parse().unwrap(),
                addr: "100.64.9.9".parse().unwrap(),
            }],
        },
        relay_map: RelayMap::default(),
        packet_filter: Default::default(),
        ssh_policy: Default::default(),
    }
}

fn resolver() -> Resolver<u32> {
    let mut r = Resolver::new([7; 32]);
    r.set_netmap(&netmap());
    r.set_host_nameservers(&[
        "198.18.0.53".parse().unwrap(),
        "100.100.100.100".parse().unwrap(),
    ]);
    r
}

fn query(name: &str, t: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn ask(r: &mut Resolver<u32>, m: &Message, t: Transport) -> Transmit<u32> {
    r.handle_query(9, t, &m.to_vec().unwrap(), base());
    let out = r.poll_transmit().expect("an output");
    assert!(r.poll_transmit().is_none());
    out
}

fn answer(out: Transmit<u32>) -> (Message, Origin) {
    match out {
        Transmit::Reply(a) => {
            assert_eq!(a.client, 9);
            (Message::from_vec(&a.bytes).unwrap(), a.origin)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

// --- local answers -----------------------------------------------------

#[test]
fn a_and_aaaa_for_a_peer_fqdn_round_trip_through_hickory() {
    let mut r = resolver();
    let (m, origin) = answer(ask(
        &mut r,
        &query("build-box.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(origin, Origin::MagicDns);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative);
    assert_eq!(ips(&m), vec!["100.64.0.2".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.answers[0].ttl, TTL);
    assert_eq!(
        m.queries,
        query("build-box.tail.weft.internal.", RecordType::A).queries
    );
    let (m, _) = answer(ask(
        &mut r,
        &query("BUILD-box.tail.weft.internal.", RecordType::AAAA),
        Transport::Udp,
    ));
    assert_eq!(
        ips(&m),
        vec!["fd7a:115c:a1e0::2".parse::<IpAddr>().unwrap()]
    );
}

#[test]
fn a_short_name_is_a_node_label() {
    let mut r = resolver();
    let (m, origin) = answer(ask(&mut r, &query("gamma.", RecordType::A), Transport::Udp));
    assert_eq!(origin, Origin::MagicDns);
    assert_eq!(ips(&m), vec!["100.64.0.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(m.answers[0].name.to_ascii(), "gamma.");
}

#[test]
fn the_node_itself_resolves() {
    let mut r = resolver();
    let (m, _) = answer(ask(
        &mut r,
        &query("alpha.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(ips(&m), vec!["100.64.0.1".parse::<IpAddr>().unwrap()]);
}

#[test]
fn an_unknown_name_under_the_tailnet_domain_is_nxdomain_and_never_forwarded() {
    let mut r = resolver();
    let (m, origin) = answer(ask(
        &mut r,
        &query("nope.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(origin, Origin::MagicDns);
    assert_eq!(r.stats().nxdomain, 1);
    assert_eq!(r.stats().forwarded, 0);
}

#[test]
fn wildcard_names_are_not_answered() {
    let mut r = resolver();
    let (m, _) = answer(ask(
        &mut r,
        &query("*.build-box.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert!(m.answers.is_empty());
}

#[test]
fn a_known_name_without_that_type_is_nodata() {
    let mut r = resolver();
    let (m, _) = answer(ask(
        &mut r,
        &query("gamma.tail.weft.internal.", RecordType::MX),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    let (m, _) = answer(ask(
        &mut r,
        &query("grafana.ops.example.", RecordType::AAAA),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
}

#[test]
fn ptr_for_tailnet_v4_and_v6_addresses() {
    let mut r = resolver();
    let (m, _) = answer(ask(
        &mut r,
        &query("2.0.64.100.in-addr.arpa.", RecordType::PTR),
        Transport::Udp,
    ));
    let RData::PTR(p) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(p.0.to_ascii(), "build-box.tail.weft.internal.");
    let v6: IpAddr = "fd7a:115c:a1e0::3".parse().unwrap();
    let (m, _) = answer(ask(
        &mut r,
        &query(&Name::from(v6).to_ascii(), RecordType::PTR),
        Transport::Udp,
    ));
    let RData::PTR(p) = &m.answers[0].data else {
        panic!()
    };
    assert_eq!(p.0.to_ascii(), "gamma.tail.weft.internal.");
    let (m, _) = answer(ask(
        &mut r,
        &query("77.0.64.100.in-addr.arpa.", RecordType::PTR),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn extra_records_answer_with_their_origin() {
    let mut r = resolver();
    let (m, origin) = answer(ask(
        &mut r,
        &query("grafana.ops.example.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(origin, Origin::ExtraRecord);
    assert_eq!(ips(&m), vec!["100.64.9.9".parse::<IpAddr>().unwrap()]);
}

#[test]
fn magic_dns_off_stops_node_names_but_still_forwards() {
    let mut r = resolver();
    let mut nm = netmap();
    nm.dns.magic_dns = false;
    r.set_netmap(&nm);
    let out = ask(
        &mut r,
        &query("gamma.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    );
    assert!(
        matches!(out, Transmit::Forward { upstream, .. } if upstream.ip() == "198.18.0.53".parse::<IpAddr>().unwrap())
    );
}

#[test]
fn a_peer_that_left_the_netmap_is_nxdomain() {
    let mut r = resolver();
    let mut nm = netmap();
    nm.peers.remove(&NodeId(3));
    r.set_netmap(&nm);
    let (m, _) = answer(ask(
        &mut r,
        &query("gamma.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
}

#[test]
fn a_renamed_peer_answers_under_its_new_name_only() {
    let mut r = resolver();
    let mut nm = netmap();
    nm.peers.get_mut(&NodeId(3)).unwrap().name = "delta.tail.weft.internal".parse().unwrap();
    r.set_netmap(&nm);
    let (m, _) = answer(ask(
        &mut r,
        &query("gamma.tail.weft.internal.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    let (m, _) = answer(ask(&mut r, &query("delta.", RecordType::A), Transport::Udp));
    assert_eq!(ips(&m), vec!["100.64.0.3".parse::<IpAddr>().unwrap()]);
}

// --- EDNS, truncation --------------------------------------------------

fn many_records() -> Resolver<u32> {
    let mut nm = netmap();
    for i in 0..60u8 {
        nm.dns.extra_records.push(DnsRecord {
            name: "big.ops.example".parse().unwrap(),
            addr: IpAddr::V4(Ipv4Addr::new(100, 64, 1, i)),
        });
    }
    let mut r = Resolver::new([1; 32]);
    r.set_netmap(&nm);
    r
}

#[test]
fn a_udp_answer_larger_than_512_without_edns_is_truncated() {
    let mut r = many_records();
    let (m, _) = answer(ask(
        &mut r,
        &query("big.ops.example.", RecordType::A),
        Transport::Udp,
    ));
    assert!(m.metadata.truncation);
    assert!(m.answers.is_empty());
    assert_eq!(m.queries.len(), 1);
}

#[test]
fn edns_raises_the_udp_size_and_tcp_has_no_limit() {
    let mut r = many_records();
    let mut q = query("big.ops.example.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    q.set_edns(e);
    let out = ask(&mut r, &q, Transport::Udp);
    let Transmit::Reply(a) = &out else { panic!() };
    assert!(a.bytes.len() > 512 && a.bytes.len() <= MAX_UDP_ANSWER);
    let (m, _) = answer(out);
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
    assert!(m.edns.is_some());
    let (m, _) = answer(ask(
        &mut r,
        &query("big.ops.example.", RecordType::A),
        Transport::Tcp,
    ));
    assert!(!m.metadata.truncation);
    assert_eq!(ips(&m).len(), 60);
}

// --- forwarding --------------------------------------------------------

fn forward(out: Transmit<u32>) -> (ForwardId, SocketAddr, Transport, Message) {
    match out {
        Transmit::Forward {
            id,
            upstream,
            transport,
            dns_id,
            bytes,
        } => {
            let m = Message::from_vec(&bytes).unwrap();
            assert_eq!(m.metadata.id, dns_id, "dns_id is the query's message id");
            (id, upstream, transport, m)
        }
        other => panic!("expected a forward, got {other:?}"),
    }
}

fn upstream_reply(q: &Message, ip: &str) -> Vec<u8> {
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.add_queries(q.queries.iter().cloned());
    m.add_answer(Record::from_rdata(
        q.queries[0].name().clone(),
        300,
        RData::A(hickory_proto::rr::rdata::A(ip.parse().unwrap())),
    ));
    m.to_vec().unwrap()
}

#[test]
fn other_names_go_to_the_host_nameservers_skipping_the_service_address() {
    let mut r = resolver();
    let (id, up, t, fq) = forward(ask(
        &mut r,
        &query("example.org.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(up, "198.18.0.53:53".parse().unwrap());
    assert_eq!(t, Transport::Udp);
    r.handle_upstream(id, &upstream_reply(&fq, "198.18.9.9"), base());
    let (m, origin) = answer(r.poll_transmit().unwrap());
    assert_eq!(m.metadata.id, 0x1234, "the client's id is restored");
    assert_eq!(ips(&m), vec!["198.18.9.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        origin,
        Origin::Forwarded {
            upstream: up,
            route: Route::Host
        }
    );
    assert_eq!(r.pending(), 0);
}

#[test]
fn split_routes_win_by_longest_suffix_and_empty_routes_stay_local() {
    let mut r = resolver();
    let (_, up, _, _) = forward(ask(
        &mut r,
        &query("db.corp.example.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(up, "198.18.5.53:53".parse().unwrap());
    let (m, origin) = answer(ask(
        &mut r,
        &query("x.internal.corp.example.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(origin, Origin::SplitLocal("internal.corp.example".into()));
}

#[test]
fn global_nameservers_beat_the_hosts() {
    let mut r = resolver();
    let mut nm = netmap();
    nm.dns.nameservers = vec![
        "100.100.100.100".parse().unwrap(),
        "198.18.7.7".parse().unwrap(),
    ];
    r.set_netmap(&nm);
    let (_, up, _, _) = forward(ask(
        &mut r,
        &query("example.org.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(up, "198.18.7.7:53".parse().unwrap());
}

#[test]
fn no_upstream_at_all_is_servfail_at_once() {
    let mut r: Resolver<u32> = Resolver::new([3; 32]);
    r.set_netmap(&netmap());
    r.set_host_nameservers(&["100.100.100.100".parse().unwrap()]);
    let (m, origin) = answer(ask(
        &mut r,
        &query("example.org.", RecordType::A),
        Transport::Udp,
    ));
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(origin, Origin::Resolver);
}

#[test]
fn a_silent_upstream_is_replaced_then_servfail_within_the_tries() {
    let mut r = resolver();
    r.set_host_nameservers(&[
        "198.18.0.53".parse().unwrap(),
        "198.18.0.54".parse().unwrap(),
    ]);
    let t0 = base();
    r.handle_query(
        9,
        Transport::Udp,
        &query("example.org.", RecordType::A).to_vec().unwrap(),
        t0,
    );
    let (id1, up1, _, _) = forward(r.poll_transmit().unwrap());
    assert_eq!(r.poll_timeout().unwrap().0, t0 + UPSTREAM_TRY);
    r.handle_timeout(t0 + UPSTREAM_TRY - Duration::from_millis(1));
    assert!(r.poll_transmit().is_none());
    r.handle_timeout(t0 + UPSTREAM_TRY);
    let (id2, up2, _, fq2) = forward(r.poll_transmit().unwrap());
    assert_ne!(up1, up2);
    // A late reply to the first attempt is ignored.
    r.handle_upstream(id1, &upstream_reply(&fq2, "198.18.1.1"), t0 + UPSTREAM_TRY);
    assert!(r.poll_transmit().is_none());
    r.handle_timeout(t0 + UPSTREAM_TRY * 2);
    let (m, _) = answer(r.poll_transmit().unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(r.stats().upstream_timeouts, 2);
    assert!(r.poll_timeout().is_none());
    r.handle_upstream(
        id2,
        &upstream_reply(&fq2, "198.18.1.1"),
        t0 + UPSTREAM_TRY * 2,
    );
    assert!(r.poll_transmit().is_none());
}

#[test]
fn garbage_or_a_mismatched_reply_from_upstream_is_servfail() {
    for bad in [
        vec![0u8; 3],
        b"\x00\x00\x81\x80garbage".to_vec(),
        upstream_reply(&query("other.org.", RecordType::A), "198.18.1.1"),
    ] {
        let mut r = resolver();
        let (id, _, _, _) = forward(ask(
            &mut r,
            &query("example.org.", RecordType::A),
            Transport::Udp,
        ));
        r.handle_upstream(id, &bad, base());
        let (m, _) = answer(r.poll_transmit().unwrap());
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.stats().upstream_bad, 1);
    }
}

#[test]
fn a_truncated_upstream_answer_for_a_tcp_client_is_asked_again_over_tcp() {
    let mut r = resolver();
    let (id, up, t, fq) = forward(ask(
        &mut r,
        &query("example.org.", RecordType::A),
        Transport::Tcp,
    ));
    assert_eq!(t, Transport::Tcp);
    // Even if the driver had used UDP (it does not), TC triggers a TCP retry.
    let _ = (id, up, fq);
    let mut r = resolver();
    r.handle_query(
        9,
        Transport::Tcp,
        &query("example.org.", RecordType::A).to_vec().unwrap(),
        base(),
    );
    let Some(Transmit::Forward { id, bytes, .. }) = r.poll_transmit() else {
        panic!()
    };
    let fq = Message::from_vec(&bytes).unwrap();
    let p = r.pending.get_mut(&id).unwrap();
    p.transport = Transport::Udp;
    let mut tc = Message::response(fq.metadata.id, OpCode::Query);
    tc.add_queries(fq.queries.iter().cloned());
    tc.metadata.truncation = true;
    r.handle_upstream(id, &tc.to_vec().unwrap(), base());
    let (_, _, t, _) = forward(r.poll_transmit().unwrap());
    assert_eq!(t, Transport::Tcp);
}

#[test]
fn a_large_forwarded_answer_is_truncated_for_a_udp_client() {
    let mut r = resolver();
    let (id, _, _, fq) = forward(ask(
        &mut r,
        &query("example.org.", RecordType::A),
        Transport::Udp,
    ));
    let mut m = Message::response(fq.metadata.id, OpCode::Query);
    m.add_queries(fq.queries.iter().cloned());
    for i in 0..60u8 {
        m.add_answer(Record::from_rdata(
            fq.queries[0].name().clone(),
            300,
            RData::A(hickory_proto::rr::rdata::A(Ipv4Addr::new(198, 18, 2, i))),
        ));
    }
    r.handle_upstream(id, &m.to_vec().unwrap(), base());
    let (m, _) = answer(r.poll_transmit().unwrap());
    assert!(m.metadata.truncation);
    assert_eq!(m.metadata.id, 0x1234);
}

#[test]
fn the_pending_table_is_bounded() {
    let mut r = resolver();
    let q = query("example.org.", RecordType::A).to_vec().unwrap();
    for _ in 0..MAX_PENDING {
        r.handle_query(1, Transport::Udp, &q, base());
    }
    while r.poll_transmit().is_some() {}
    r.handle_query(2, Transport::Udp, &q, base());
    let (m, _) = match r.poll_transmit().unwrap() {
        Transmit::Reply(a) => (Message::from_vec(&a.bytes).unwrap(), a.origin),
        other => panic!("{other:?}"),
    };
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(r.pending(), MAX_PENDING);
}

// --- bad input ---------------------------------------------------------

#[test]
fn a_readable_header_with_a_broken_body_gets_formerr() {
    let mut r = resolver();
    let mut q = query("gamma.tail.weft.internal.", RecordType::A)
        .to_vec()
        .unwrap();
    q.truncate(q.len() - 3);
    r.handle_query(9, Transport::Udp, &q, base());
    let (m, origin) = answer(r.poll_transmit().unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert_eq!(m.metadata.id, 0x1234);
    assert_eq!(origin, Origin::Resolver);
    assert_eq!(r.stats().malformed, 1);
}

#[test]
fn short_packets_and_responses_are_dropped_and_counted() {
    let mut r = resolver();
    r.handle_query(9, Transport::Udp, &[0x12, 0x34, 0x01], base());
    let mut resp = query("gamma.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    r.handle_query(9, Transport::Udp, &resp.to_vec().unwrap(), base());
    assert!(r.poll_transmit().is_none());
    assert_eq!(r.stats().malformed, 2);
}

#[test]
fn a_compression_pointer_loop_is_formerr_not_a_hang() {
    let mut r = resolver();
    // Header (1 question), then a name that is a pointer to itself (offset 12).
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    r.handle_query(9, Transport::Udp, &q, base());
    let (m, _) = answer(r.poll_transmit().unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Two pointers to each other.
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend_from_slice(&[0xc0, 14, 0xc0, 12, 0, 1, 0, 1]);
    r.handle_query(9, Transport::Udp, &q, base());
    let (m, _) = answer(r.poll_transmit().unwrap());
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn two_questions_are_formerr() {
    let mut r = resolver();
    let mut q = query("gamma.", RecordType::A);
    q.add_query(Query::query(
        Name::from_ascii("alpha.").unwrap(),
        RecordType::A,
    ));
    let (m, _) = answer(ask(&mut r, &q, Transport::Udp));
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
}

#[test]
fn an_oversized_query_is_handled_without_panic() {
    let mut r = resolver();
    let mut q = query("gamma.", RecordType::A).to_vec().unwrap();
    q.resize(70_000, 0xff);
    r.handle_query(9, Transport::Tcp, &q, base());
    // Trailing bytes after the message: either answered or FORMERR, never a panic.
    assert!(r.poll_transmit().is_some());
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_every_output_parses(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut r = resolver();
        r.handle_query(1, Transport::Udp, &bytes, base());
        while let Some(t) = r.poll_transmit() {
            match t {
                Transmit::Reply(a) => {
                    prop_assert!(a.bytes.len() <= MAX_UDP_ANSWER);
                    prop_assert!(Message::from_vec(&a.bytes).is_ok());
                }
                Transmit::Forward { id, bytes: fwd, .. } => {
                    r.handle_upstream(id, &bytes, base());
                    prop_assert!(fwd.len() == bytes.len());
                }
            }
        }
    }

    #[test]
    fn mutated_valid_queries_never_panic(flip in 0usize..64, val in any::<u8>()) {
        let mut r = resolver();
        let mut q = query("build-box.tail.weft.internal.", RecordType::AAAA).to_vec().unwrap();
        let i = flip % q.len();
        q[i] = val;
        r.handle_query(1, Transport::Udp, &q, base());
        while r.poll_transmit().is_some() {}
    }
}
