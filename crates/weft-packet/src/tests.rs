//! Unit tests: what each constructor check refuses, what the views read,
//! and that no input panics.

use std::vec;
use std::vec::Vec;

use proptest::prelude::*;

use super::*;

const A4: [u8; 4] = [100, 64, 0, 1];
const B4: [u8; 4] = [100, 64, 0, 2];
const A6: [u8; 16] = [
    0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
];
const B6: [u8; 16] = [
    0xfd, 0x7a, 0x11, 0x5c, 0xa1, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
];

/// An IPv4 packet; `frag` is (identification, offset in 8-byte units, more).
fn v4(protocol: u8, frag: (u16, u16, bool), payload: &[u8]) -> Vec<u8> {
    let total = 20 + payload.len();
    let mut p = vec![0u8; 20];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
    p[4..6].copy_from_slice(&frag.0.to_be_bytes());
    let ff = frag.1 | if frag.2 { 0x2000 } else { 0 };
    p[6..8].copy_from_slice(&ff.to_be_bytes());
    p[8] = 64;
    p[9] = protocol;
    p[12..16].copy_from_slice(&A4);
    p[16..20].copy_from_slice(&B4);
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet with extension headers `ext` (type, body after the
/// two-byte prefix, padded to 6 + 8k bytes).
fn v6(ext: &[(u8, Vec<u8>)], protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, data)) in ext.iter().enumerate() {
        body.push(ext.get(i + 1).map_or(protocol, |e| e.0));
        body.push(u8::try_from((data.len() + 2) / 8 - 1).unwrap());
        body.extend_from_slice(data);
    }
    body.extend_from_slice(payload);
    let mut p = vec![0u8; 40];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p[6] = ext.first().map_or(protocol, |e| e.0);
    p[7] = 64;
    p[8..24].copy_from_slice(&A6);
    p[24..40].copy_from_slice(&B6);
    p.extend_from_slice(&body);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
    let hl = 20 + options.len();
    let mut h = vec![0u8; 20];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..8].copy_from_slice(&1000u32.to_be_bytes());
    h[8..12].copy_from_slice(&2000u32.to_be_bytes());
    h[12] = u8::try_from(hl / 4).unwrap() << 4;
    h[13] = flags;
    h.extend_from_slice(options);
    h.extend_from_slice(payload);
    h
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 8];
    h[0..2].copy_from_slice(&sport.to_be_bytes());
    h[2..4].copy_from_slice(&dport.to_be_bytes());
    h[4..6].copy_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn icmp(ty: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, 0, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(body);
    m
}

fn opts() -> Vec<u8> {
    vec![1, 4, 0, 0, 0, 0] // PadN filling an 8-byte header
}

// --- the IP layer ---

#[test]
fn an_ipv4_tcp_segment_is_read_down_to_its_payload() {
    let p = v4(
        proto::TCP,
        (7, 0, false),
        &tcp(40000, 22, tcp::SYN, &[2, 4, 5, 0xb4], b"hi"),
    );
    let ip = IpPacket::new(&p).unwrap();
    assert_eq!(ip.version(), IpVersion::V4);
    assert_eq!(ip.src(), IpAddr::from(A4));
    assert_eq!(ip.dst(), IpAddr::from(B4));
    assert_eq!(
        (ip.protocol(), ip.header_len(), ip.total_len()),
        (6, 20, 46)
    );
    assert_eq!(ip.fragment(), Fragment::Whole);
    let Transport::Tcp(t) = ip.transport() else {
        panic!("{:?}", ip.transport())
    };
    assert_eq!((t.src_port(), t.dst_port()), (40000, 22));
    assert_eq!((t.seq(), t.ack(), t.flags()), (1000, 2000, tcp::SYN));
    assert_eq!(t.header_len(), 24);
    assert_eq!(t.options(), &[2, 4, 5, 0xb4]);
    assert_eq!(t.payload(), b"hi");
    assert_eq!(t.segment().len(), 26);
}

#[test]
fn an_ipv6_udp_datagram_behind_extension_headers_is_found() {
    let ext = [(0, opts()), (60, opts()), (43, vec![0, 0, 0, 0, 0, 0])];
    let p = v6(&ext, proto::UDP, &udp(53, 40000, b"abc"));
    let ip = IpPacket::new(&p).unwrap();
    assert_eq!(ip.version(), IpVersion::V6);
    assert_eq!((ip.src(), ip.dst()), (IpAddr::from(A6), IpAddr::from(B6)));
    assert_eq!((ip.protocol(), ip.header_len()), (proto::UDP, 64));
    let Transport::Udp(u) = ip.transport() else {
        panic!("{:?}", ip.transport())
    };
    assert_eq!((u.src_port(), u.dst_port(), u.length()), (53, 40000, 11));
    assert_eq!(u.datagram().len(), 11);
}

#[test]
fn bytes_after_the_declared_length_are_not_part_of_the_packet() {
    let mut p = v4(proto::UDP, (0, 0, false), &udp(1, 2, &[]));
    p.extend_from_slice(&[0xee; 10]);
    let ip = IpPacket::new(&p).unwrap();
    assert_eq!(ip.as_bytes().len(), 28);
    assert_eq!(ip.total_len(), 28);
}

#[test]
fn lengths_that_contradict_the_buffer_are_refused() {
    assert_eq!(IpPacket::new(&[]), Err(PacketError::Truncated));
    assert_eq!(IpPacket::new(&[0x45; 19]), Err(PacketError::Truncated));
    assert_eq!(IpPacket::new(&[0x15; 40]), Err(PacketError::BadVersion(1)));
    let mut p = v4(proto::UDP, (0, 0, false), &udp(1, 2, &[0; 4]));
    p[0] = 0x44;
    assert_eq!(IpPacket::new(&p), Err(PacketError::BadHeaderLength));
    p[0] = 0x4f; // 60 bytes of header in a 32-byte packet
    assert_eq!(IpPacket::new(&p), Err(PacketError::BadHeaderLength));
    p[0] = 0x45;
    p[2..4].copy_from_slice(&33u16.to_be_bytes());
    assert_eq!(IpPacket::new(&p), Err(PacketError::Truncated));
    let mut p6 = v6(&[], proto::UDP, &udp(1, 2, &[]));
    p6[5] += 1;
    assert_eq!(IpPacket::new(&p6), Err(PacketError::Truncated));
}

// --- fragments ---

#[test]
fn fragments_carry_their_identification_and_only_the_first_a_transport_header() {
    let first = v4(proto::UDP, (9, 0, true), &udp(1, 53, &[0; 8])[..8]);
    let ip = IpPacket::new(&first).unwrap();
    assert_eq!(ip.fragment(), Fragment::First { id: 9 });
    assert!(matches!(ip.transport(), Transport::Udp(_)));

    let later = v4(proto::TCP, (9, 3, false), &[0xaa; 5]);
    let ip = IpPacket::new(&later).unwrap();
    assert_eq!(ip.fragment(), Fragment::Later { id: 9, offset: 3 });
    assert_eq!(ip.transport(), Transport::Fragment(&[0xaa; 5]));

    // IPv6: through a fragment header (offset 2, more = 0).
    let frag = vec![0, 2 << 3, 0xde, 0xad, 0xbe, 0xef];
    let later6 = v6(&[(44, frag)], proto::TCP, &[0; 16]);
    let ip = IpPacket::new(&later6).unwrap();
    assert_eq!(
        ip.fragment(),
        Fragment::Later {
            id: 0xdead_beef,
            offset: 2
        }
    );
    assert_eq!((ip.protocol(), ip.header_len()), (proto::TCP, 48));
}

#[test]
fn a_first_fragment_needs_the_fixed_transport_header_but_not_its_payload() {
    // A data offset of 6 words in a fragment that ends after 20 bytes.
    let mut seg = tcp(5, 22, tcp::SYN, &[], &[]);
    seg[12] = 6 << 4;
    let first = v4(proto::TCP, (1, 0, true), &seg);
    let Transport::Tcp(t) = IpPacket::new(&first).unwrap().transport() else {
        panic!()
    };
    assert_eq!(
        (t.header_len(), t.options(), t.payload()),
        (24, &[][..], &[][..])
    );
    let tiny = v4(proto::TCP, (1, 0, true), &seg[..16]);
    assert_eq!(IpPacket::new(&tiny), Err(PacketError::Truncated));
    let whole = v4(proto::TCP, (1, 0, false), &seg);
    assert_eq!(IpPacket::new(&whole), Err(PacketError::BadTransportLength));
}

#[test]
fn a_second_fragment_header_is_refused() {
    let frag = vec![0, 1, 0, 0, 0, 7]; // offset 0, more fragments
    let p = v6(
        &[(44, frag.clone()), (44, frag)],
        proto::UDP,
        &udp(1, 2, &[]),
    );
    assert_eq!(IpPacket::new(&p), Err(PacketError::DuplicateFragmentHeader));
}

// --- IPv6 extension headers ---

#[test]
fn eight_extension_headers_are_walked_and_nine_are_too_many() {
    let eight: Vec<_> = (0..8).map(|_| (60, opts())).collect();
    let nine: Vec<_> = (0..9).map(|_| (60, opts())).collect();
    let seg = tcp(1, 2, tcp::ACK, &[], &[]);
    assert_eq!(MAX_EXTENSION_HEADERS, 8);
    let p = v6(&eight, proto::TCP, &seg);
    assert_eq!(IpPacket::new(&p).unwrap().header_len(), 40 + 8 * 8);
    assert_eq!(
        IpPacket::new(&v6(&nine, proto::TCP, &seg)),
        Err(PacketError::TooManyExtensionHeaders)
    );
}

#[test]
fn a_routing_header_with_segments_left_is_refused() {
    let rh = (43, vec![0, 1, 0, 0, 0, 0]);
    let p = v6(&[rh], proto::TCP, &tcp(1, 2, tcp::SYN, &[], &[]));
    assert_eq!(IpPacket::new(&p), Err(PacketError::RoutingHeader));
}

// --- transport headers ---

#[test]
fn transport_lengths_that_contradict_the_packet_are_refused() {
    let mut seg = tcp(1, 2, tcp::ACK, &[], &[]);
    seg[12] = 4 << 4;
    assert_eq!(
        IpPacket::new(&v4(proto::TCP, (0, 0, false), &seg)),
        Err(PacketError::BadTransportLength)
    );
    let mut dgram = udp(1, 2, &[0; 4]);
    dgram[5] = 200;
    assert_eq!(
        IpPacket::new(&v4(proto::UDP, (0, 0, false), &dgram)),
        Err(PacketError::BadTransportLength)
    );
    dgram[5] = 7;
    assert_eq!(
        IpPacket::new(&v4(proto::UDP, (0, 0, false), &dgram)),
        Err(PacketError::BadTransportLength)
    );
    assert_eq!(
        IpPacket::new(&v4(proto::UDP, (0, 0, false), &[0; 7])),
        Err(PacketError::Truncated)
    );
    assert_eq!(
        IpPacket::new(&v4(proto::SCTP, (0, 0, false), &[0; 11])),
        Err(PacketError::Truncated)
    );
    assert_eq!(
        IpPacket::new(&v4(proto::ICMP, (0, 0, false), &[8, 0, 0, 0, 0, 0, 0])),
        Err(PacketError::Truncated)
    );
}

#[test]
fn sctp_ports_and_unknown_protocols_are_read_as_far_as_they_go() {
    let mut sctp = vec![0u8; 12];
    sctp[0..2].copy_from_slice(&5000u16.to_be_bytes());
    sctp[2..4].copy_from_slice(&6000u16.to_be_bytes());
    let p = v4(proto::SCTP, (0, 0, false), &sctp);
    let Transport::Sctp(s) = IpPacket::new(&p).unwrap().transport() else {
        panic!()
    };
    assert_eq!((s.src_port(), s.dst_port()), (5000, 6000));
    let gre = v4(47, (0, 0, false), &[1, 2, 3]);
    assert_eq!(
        IpPacket::new(&gre).unwrap().transport(),
        Transport::Other(&[1, 2, 3])
    );
    // ICMPv6 inside IPv4 is not ICMP of this family.
    let odd = v4(proto::ICMPV6, (0, 0, false), &[128, 0]);
    assert_eq!(
        IpPacket::new(&odd).unwrap().transport(),
        Transport::Other(&[128, 0])
    );
}

// --- ICMP ---

fn message(p: &[u8]) -> IcmpMessage<'_> {
    match IpPacket::new(p).unwrap().transport() {
        Transport::Icmp(i) => i.message(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn echo_requests_and_replies_carry_id_and_sequence() {
    let req = v4(proto::ICMP, (0, 0, false), &icmp(8, [0, 5, 0, 9], &[]));
    assert_eq!(message(&req), IcmpMessage::EchoRequest { id: 5, seq: 9 });
    let rep = v6(&[], proto::ICMPV6, &icmp(129, [0, 5, 0, 9], b"x"));
    assert_eq!(message(&rep), IcmpMessage::EchoReply { id: 5, seq: 9 });
    let ns = v6(&[], proto::ICMPV6, &icmp(135, [0; 4], &[0; 16]));
    assert_eq!(message(&ns), IcmpMessage::Other);
}

#[test]
fn an_icmp_error_names_the_flow_of_the_packet_it_quotes() {
    let ours = v4(
        proto::TCP,
        (0, 0, false),
        &tcp(40000, 22, tcp::SYN, &[], &[]),
    );
    let err = v4(proto::ICMP, (0, 0, false), &icmp(3, [0; 4], &ours[..28]));
    let IcmpMessage::Error { quote: Some(q) } = message(&err) else {
        panic!("{:?}", message(&err))
    };
    assert_eq!(
        (q.src(), q.dst(), q.protocol()),
        (IpAddr::from(A4), IpAddr::from(B4), 6)
    );
    assert_eq!(
        q.transport(),
        QuotedTransport::Ports {
            src: 40000,
            dst: 22
        }
    );
    // A quoted echo reply, through ICMPv6 "packet too big".
    let reply = v6(&[], proto::ICMPV6, &icmp(129, [0, 77, 0, 1], &[]));
    let too_big = v6(&[], proto::ICMPV6, &icmp(2, [0, 0, 5, 0], &reply));
    let IcmpMessage::Error { quote: Some(q) } = message(&too_big) else {
        panic!()
    };
    assert_eq!(q.transport(), QuotedTransport::EchoReply { id: 77 });
    // An error about an error names no flow.
    let about_error = v4(proto::ICMP, (0, 0, false), &icmp(11, [0; 4], &err));
    assert_eq!(message(&about_error), IcmpMessage::Error { quote: None });
}

#[test]
fn an_icmp_error_quoting_a_cut_header_or_another_family_is_refused() {
    let ours = v4(
        proto::TCP,
        (0, 0, false),
        &tcp(40000, 22, tcp::SYN, &[], &[]),
    );
    let cut = v4(proto::ICMP, (0, 0, false), &icmp(3, [0; 4], &ours[..22]));
    assert_eq!(IpPacket::new(&cut), Err(PacketError::Truncated));
    let v6_inside = v6(&[], proto::TCP, &tcp(1, 2, tcp::SYN, &[], &[]));
    let wrong = v4(
        proto::ICMP,
        (0, 0, false),
        &icmp(3, [0; 4], &v6_inside[..48]),
    );
    assert_eq!(IpPacket::new(&wrong), Err(PacketError::BadIcmpQuote));
}

// --- any input ---

/// Valid packets of every kind, then bytes flipped and cut: they reach
/// deep into the checks, unlike uniform noise.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    let ours = v4(
        proto::TCP,
        (0, 0, false),
        &tcp(40000, 22, tcp::SYN, &[], &[]),
    );
    let base = prop_oneof![
        Just(ours.clone()),
        Just(v6(
            &[(0, opts()), (44, vec![0, 1, 0, 0, 0, 1])],
            proto::UDP,
            &udp(1, 2, &[3; 9])
        )),
        Just(v4(proto::ICMP, (0, 0, false), &icmp(3, [0; 4], &ours))),
        Just(v6(
            &[],
            proto::ICMPV6,
            &icmp(1, [0; 4], &v6(&[(60, opts())], proto::UDP, &udp(1, 2, &[])))
        )),
        Just(v4(proto::SCTP, (3, 0, true), &[1; 12])),
        Just(v6(&[], proto::ICMPV6, &icmp(128, [0; 4], &[]))),
    ];
    (
        base,
        proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
        any::<usize>(),
    )
        .prop_map(|(mut p, flips, cut)| {
            for (at, byte) in flips {
                let i = at % p.len();
                p[i] = byte;
            }
            p.truncate(cut % (p.len() + 1));
            p
        })
}

/// Checks what a view promises about its bytes.
fn check_view(buf: &[u8]) -> Result<(), TestCaseError> {
    let Ok(ip) = IpPacket::new(buf) else {
        return Ok(());
    };
    prop_assert!(ip.total_len() <= buf.len());
    prop_assert!(ip.header_len() <= ip.total_len());
    let rest = ip.total_len() - ip.header_len();
    match ip.transport() {
        Transport::Tcp(t) => {
            prop_assert!(t.segment().len() == rest && rest >= 20);
            prop_assert!(t.header_len() >= 20);
            if ip.fragment() == Fragment::Whole {
                prop_assert_eq!(t.options().len() + 20 + t.payload().len(), rest);
            }
        }
        Transport::Udp(u) => {
            prop_assert!(u.datagram().len() == rest && rest >= 8);
            if ip.fragment() == Fragment::Whole {
                prop_assert!((8..=rest).contains(&u.length()));
            }
        }
        Transport::Sctp(_) => prop_assert!(rest >= 12),
        Transport::Icmp(i) => {
            prop_assert!(rest >= 8);
            let _ = (i.icmp_type(), i.code(), i.message());
        }
        Transport::Other(b) | Transport::Fragment(b) => prop_assert_eq!(b.len(), rest),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn arbitrary_bytes_never_panic_and_views_stay_inside_their_buffer(
        buf in proptest::collection::vec(any::<u8>(), 0..160)
    ) {
        check_view(&buf)?;
    }

    #[test]
    fn mangled_packets_never_panic_and_views_stay_inside_their_buffer(p in mangled()) {
        check_view(&p)?;
    }
}
