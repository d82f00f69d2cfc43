//! Packet builders and fixtures shared by the tests and the bench.
//! Checksums are left zero: the filter does not read them.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_filter::{CompiledFilter, Config, Filter, Policy};
use weft_types::filter::{DstPorts, FilterRule, PortRange, RuleOrigin};

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

/// This node.
pub const ME4: &str = "100.64.0.1";
pub const ME6: &str = "fd7a:115c:a1e0::1";
/// Peers.
pub const ALICE4: &str = "100.64.0.2";
pub const ALICE6: &str = "fd7a:115c:a1e0::2";
pub const BOB4: &str = "100.64.0.3";
pub const BOB6: &str = "fd7a:115c:a1e0::3";
/// Another tailnet address that is not this node's.
pub const OTHER4: &str = "100.64.0.9";

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

/// The tests' base instant (the only clock read).
pub fn t0() -> Instant {
    Instant::now()
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ----- IP layer -----

/// An IPv4 packet around `payload`; `frag` is (identification, offset in
/// 8-byte units, more-fragments).
pub fn ipv4_frag(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    frag: (u16, u16, bool),
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("ipv4 needs v4 addresses")
    };
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[4..6].copy_from_slice(&frag.0.to_be_bytes());
    let ff = frag.1 | if frag.2 { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&ff.to_be_bytes());
    p[8] = 64;
    p[9] = proto;
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet with the extension headers `ext` (each: its type and its
/// body after the two-byte next-header/length prefix, padded by the caller
/// to 6 + 8k bytes) before `payload` of protocol `proto`.
pub fn ipv6_ext(
    src: IpAddr,
    dst: IpAddr,
    ext: &[(u8, Vec<u8>)],
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("ipv6 needs v6 addresses")
    };
    let mut body = Vec::new();
    for (i, (_, data)) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |e| e.0);
        body.push(next);
        body.push(u8::try_from((data.len() + 2) / 8 - 1).unwrap());
        body.extend_from_slice(data);
    }
    body.extend_from_slice(payload);
    let first = ext.first().map_or(proto, |e| e.0);
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p[6] = first;
    p[7] = 64;
    p[8..24].copy_from_slice(&s.octets());
    p[24..40].copy_from_slice(&d.octets());
    p.extend_from_slice(&body);
    p
}

/// An IPv6 fragment: a fragment header (id, offset in 8-byte units, more).
pub fn ipv6_frag(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    frag: (u32, u16, bool),
    payload: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("ipv6 needs v6 addresses")
    };
    let mut p = vec![0u8; 48];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    p[6] = 44;
    p[7] = 64;
    p[8..24].copy_from_slice(&s.octets());
    p[24..40].copy_from_slice(&d.octets());
    p[40] = proto;
    let field = (frag.1 << 3) | u16::from(frag.2);
    p[42..44].copy_from_slice(&field.to_be_bytes());
    p[44..48].copy_from_slice(&frag.0.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// An unfragmented IPv4 or IPv6 packet (by the addresses' family).
pub fn ip_packet(src: IpAddr, dst: IpAddr, proto: u8, payload: &[u8]) -> Vec<u8> {
    if src.is_ipv4() {
        ipv4_frag(src, dst, proto, (0, 0, false), payload)
    } else {
        ipv6_ext(src, dst, &[], proto, payload)
    }
}

// ----- transport layer -----

pub fn tcp_header(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

pub fn udp_datagram(sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&u16::try_from(8 + data.len()).unwrap().to_be_bytes());
    u.extend_from_slice(data);
    u
}

/// An ICMP message with type, code and the 4-byte rest-of-header word.
pub fn icmp_message(ty: u8, code: u8, rest: [u8; 4], data: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(data);
    m
}

fn icmp_proto(v4: bool) -> u8 {
    if v4 { ICMP } else { ICMPV6 }
}

// ----- whole packets -----

pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ip_packet(ip(src), ip(dst), TCP, &tcp_header(sport, dport, flags))
}

pub fn udp(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    ip_packet(ip(src), ip(dst), UDP, &udp_datagram(sport, dport, b"hello"))
}

pub fn echo_request(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let v4 = ip(src).is_ipv4();
    let ty = if v4 { 8 } else { 128 };
    let [a, b] = id.to_be_bytes();
    ip_packet(
        ip(src),
        ip(dst),
        icmp_proto(v4),
        &icmp_message(ty, 0, [a, b, 0, 1], b"ping"),
    )
}

pub fn echo_reply(src: &str, dst: &str, id: u16) -> Vec<u8> {
    let v4 = ip(src).is_ipv4();
    let ty = if v4 { 0 } else { 129 };
    let [a, b] = id.to_be_bytes();
    ip_packet(
        ip(src),
        ip(dst),
        icmp_proto(v4),
        &icmp_message(ty, 0, [a, b, 0, 1], b"ping"),
    )
}

/// A destination-unreachable (v4: port unreachable; v6: address
/// unreachable) from `src` to `dst`, quoting the first 28 (v4) or 48 (v6)
/// bytes of `quoted`.
pub fn unreachable(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let v4 = ip(src).is_ipv4();
    let (ty, code, keep) = if v4 { (3, 3, 28) } else { (1, 3, 48) };
    let q = &quoted[..quoted.len().min(keep)];
    ip_packet(
        ip(src),
        ip(dst),
        icmp_proto(v4),
        &icmp_message(ty, code, [0; 4], q),
    )
}

/// A packet-too-big (v6) or fragmentation-needed (v4) quoting `quoted`.
pub fn too_big(src: &str, dst: &str, quoted: &[u8]) -> Vec<u8> {
    let v4 = ip(src).is_ipv4();
    let (ty, code) = if v4 { (3, 4) } else { (2, 0) };
    let q = &quoted[..quoted.len().min(if v4 { 28 } else { 48 })];
    ip_packet(
        ip(src),
        ip(dst),
        icmp_proto(v4),
        &icmp_message(ty, code, [0, 0, 5, 0], q),
    )
}

// ----- policy -----

/// A rule from `src` prefixes to this node (both families) on `ports`
/// (inclusive ranges) for `protos` (empty = TCP, UDP, ICMP).
pub fn rule(src: &[&str], ports: &[(u16, u16)], protos: &[u8], line: u32) -> FilterRule {
    let mut dst = Vec::new();
    for &(first, last) in ports {
        for me in [ME4, ME6] {
            let host = if me.contains(':') { 128 } else { 32 };
            dst.push(DstPorts {
                net: IpNet::new(ip(me), host).unwrap(),
                ports: PortRange { first, last },
            });
        }
    }
    FilterRule {
        src: src.iter().map(|s| net(s)).collect(),
        dst,
        protos: protos.to_vec(),
        origin: Some(RuleOrigin { index: line, line }),
    }
}

/// The e2e policy: alice may reach this node on TCP 22 and 80 (and ping
/// it); bob nothing.
pub fn alice_ssh_and_web() -> CompiledFilter {
    CompiledFilter::new(&[
        rule(
            &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
            &[(22, 22), (80, 80)],
            &[TCP],
            1,
        ),
        rule(
            &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
            &[(0, 65535)],
            &[ICMP, ICMPV6],
            2,
        ),
    ])
}

/// Alice may reach TCP 22 only.
pub fn alice_ssh_only() -> CompiledFilter {
    CompiledFilter::new(&[rule(
        &["100.64.0.2/32", "fd7a:115c:a1e0::2/128"],
        &[(22, 22)],
        &[TCP],
        1,
    )])
}

/// Everyone may reach UDP 5000-5010.
pub fn udp_service() -> CompiledFilter {
    CompiledFilter::new(&[rule(&["0.0.0.0/0", "::/0"], &[(5000, 5010)], &[UDP], 3)])
}

pub fn policy(filter: CompiledFilter) -> Policy {
    Policy {
        filter,
        local_addrs: vec![ip(ME4), ip(ME6)],
        shields_up: false,
    }
}

/// A filter for this node with `filter` installed.
pub fn node(filter: CompiledFilter) -> Filter {
    node_with(Config::default(), filter)
}

pub fn node_with(config: Config, filter: CompiledFilter) -> Filter {
    let f = Filter::new(config, [42; 32]);
    f.set_policy(policy(filter));
    f
}
