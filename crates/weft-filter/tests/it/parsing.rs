//! ICMP errors, fragments, IPv6 extension headers and bad input.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use proptest::prelude::*;
use weft_filter::{Accept, CompiledFilter, DropReason, Verdict};

const FLOW: Verdict = Verdict::Accept(Accept::Flow);
const RELATED: Verdict = Verdict::Accept(Accept::Related);
const NO_FLOW: Verdict = Verdict::Drop(DropReason::NoFlow);
const MALFORMED: Verdict = Verdict::Drop(DropReason::Malformed);
const UNSUPPORTED: Verdict = Verdict::Drop(DropReason::Unsupported);

// --- ICMP errors ---

#[test]
fn an_icmp_error_about_a_known_flow_passes_and_about_an_unknown_one_is_dropped() {
    let f = node(CompiledFilter::default());
    let now = t0();
    for (me, alice, router) in [(ME4, ALICE4, OTHER4), (ME6, ALICE6, BOB6)] {
        let syn = tcp(me, alice, 40000, 22, SYN);
        let datagram = udp(me, alice, 40001, 53);
        let ping = echo_request(me, alice, 77);
        for p in [&syn, &datagram, &ping] {
            assert_eq!(
                f.inbound(&unreachable(alice, me, p), now),
                NO_FLOW,
                "before the flow exists"
            );
            f.outbound(p, now);
            assert_eq!(f.inbound(&unreachable(alice, me, p), now), RELATED);
            assert_eq!(
                f.inbound(&too_big(router, me, p), now),
                RELATED,
                "from a router on the path"
            );
        }
        let unknown = udp(me, alice, 40009, 53);
        assert_eq!(f.inbound(&unreachable(alice, me, &unknown), now), NO_FLOW);
    }
}

#[test]
fn an_icmp_error_about_a_flow_a_peer_opened_passes() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    f.inbound(&tcp(ALICE6, ME6, 50000, 22, SYN), now);
    let our_syn_ack = tcp(ME6, ALICE6, 22, 50000, SYN | ACK);
    f.outbound(&our_syn_ack, now);
    assert_eq!(f.inbound(&too_big(BOB6, ME6, &our_syn_ack), now), RELATED);
    // An echo reply of ours that bounced.
    f.inbound(&echo_request(ALICE4, ME4, 5), now);
    let our_reply = echo_reply(ME4, ALICE4, 5);
    assert_eq!(
        f.inbound(&unreachable(ALICE4, ME4, &our_reply), now),
        RELATED
    );
    assert_eq!(
        f.inbound(
            &unreachable(ALICE4, ME4, &echo_request(ME4, ALICE4, 5)),
            now
        ),
        NO_FLOW,
        "we never sent that request"
    );
}

#[test]
fn an_icmp_error_quoting_a_truncated_header_is_malformed() {
    let f = node(CompiledFilter::default());
    let now = t0();
    let syn = tcp(ME4, ALICE4, 40000, 22, SYN);
    f.outbound(&syn, now);
    let cut = ip_packet(
        ip(ALICE4),
        ip(ME4),
        ICMP,
        &icmp_message(3, 3, [0; 4], &syn[..22]),
    );
    assert_eq!(f.inbound(&cut, now), MALFORMED);
    let wrong_family = ip_packet(
        ip(ALICE4),
        ip(ME4),
        ICMP,
        &icmp_message(3, 3, [0; 4], &tcp(ME6, ALICE6, 40000, 22, SYN)[..48]),
    );
    assert_eq!(f.inbound(&wrong_family, now), MALFORMED);
}

#[test]
fn an_icmp_error_about_an_icmp_error_is_dropped() {
    let f = node(CompiledFilter::default());
    let now = t0();
    let inner = unreachable(ME4, ALICE4, &udp(ALICE4, ME4, 1, 2));
    assert_eq!(f.inbound(&unreachable(ALICE4, ME4, &inner), now), NO_FLOW);
}

// --- fragments ---

#[test]
fn later_fragments_pass_only_after_their_first_fragment_was_accepted() {
    let f = node(udp_service());
    let now = t0();
    let head = udp_datagram(40000, 5000, &[0; 8]);
    // IPv4: identification 9 accepted, 10 never had an accepted first fragment.
    let first = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (9, 0, true), &head);
    let rest = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (9, 2, false), &[0; 16]);
    let stray = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (10, 2, false), &[0; 16]);
    assert_eq!(
        f.inbound(&rest, now),
        NO_FLOW,
        "overtook its first fragment"
    );
    assert!(f.inbound(&first, now).is_accept());
    assert_eq!(f.inbound(&rest, now), RELATED);
    assert_eq!(f.inbound(&stray, now), NO_FLOW);
    assert_eq!(
        f.inbound(&rest, now + secs(61)),
        NO_FLOW,
        "the datagram is long gone"
    );
    // IPv6, through a fragment header.
    let first = ipv6_frag(ip(ALICE6), ip(ME6), UDP, (0xdead_beef, 0, true), &head);
    let rest = ipv6_frag(ip(ALICE6), ip(ME6), UDP, (0xdead_beef, 2, false), &[0; 16]);
    assert!(f.inbound(&first, now).is_accept());
    assert_eq!(f.inbound(&rest, now), RELATED);
    // A refused first fragment admits nothing after it.
    let first = ipv6_frag(
        ip(ALICE6),
        ip(ME6),
        UDP,
        (7, 0, true),
        &udp_datagram(40000, 6000, &[]),
    );
    let rest = ipv6_frag(ip(ALICE6), ip(ME6), UDP, (7, 1, false), &[0; 16]);
    assert_eq!(
        f.inbound(&first, now),
        Verdict::Drop(DropReason::NotAllowed)
    );
    assert_eq!(f.inbound(&rest, now), NO_FLOW);
}

#[test]
fn later_fragments_stop_when_their_flow_is_cut() {
    let f = node(udp_service());
    let now = t0();
    let first = ipv4_frag(
        ip(ALICE4),
        ip(ME4),
        UDP,
        (9, 0, true),
        &udp_datagram(40000, 5000, &[0; 8]),
    );
    let rest = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (9, 2, false), &[0; 16]);
    assert!(f.inbound(&first, now).is_accept());
    f.set_filter(CompiledFilter::default());
    assert_eq!(f.inbound(&rest, now), NO_FLOW);
}

#[test]
fn a_first_fragment_too_short_for_its_transport_header_is_malformed() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let tiny = ipv4_frag(
        ip(ALICE4),
        ip(ME4),
        TCP,
        (1, 0, true),
        &tcp_header(5, 22, SYN)[..16],
    );
    assert_eq!(f.inbound(&tiny, now), MALFORMED);
}

#[test]
fn a_tcp_fragment_at_offset_8_is_the_overlap_attack_and_malformed() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let overlap = ipv4_frag(ip(ALICE4), ip(ME4), TCP, (1, 1, false), &[0; 16]);
    assert_eq!(f.inbound(&overlap, now), MALFORMED);
}

#[test]
fn replies_to_our_flows_may_come_fragmented() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&udp(ME4, ALICE4, 40000, 53), now);
    let first = ipv4_frag(
        ip(ALICE4),
        ip(ME4),
        UDP,
        (3, 0, true),
        &udp_datagram(53, 40000, &[0; 8]),
    );
    let rest = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (3, 2, false), &[0; 16]);
    assert_eq!(f.inbound(&first, now), FLOW);
    assert_eq!(f.inbound(&rest, now), RELATED);
}

// --- IPv6 extension headers ---

fn opts() -> Vec<u8> {
    vec![1, 4, 0, 0, 0, 0] // a PadN option filling the 8-byte header
}

#[test]
fn a_syn_behind_extension_headers_is_judged_on_its_ports() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let ext = [(0, opts()), (60, opts()), (43, vec![0, 0, 0, 0, 0, 0])];
    let allowed = ipv6_ext(ip(ALICE6), ip(ME6), &ext, TCP, &tcp_header(50000, 22, SYN));
    let refused = ipv6_ext(ip(ALICE6), ip(ME6), &ext, TCP, &tcp_header(50000, 23, SYN));
    assert!(matches!(
        f.inbound(&allowed, now),
        Verdict::Accept(Accept::NewFlow { .. })
    ));
    assert_eq!(
        f.inbound(&refused, now),
        Verdict::Drop(DropReason::NotAllowed)
    );
    let follow_up = ipv6_ext(
        ip(ALICE6),
        ip(ME6),
        &[(60, opts())],
        TCP,
        &tcp_header(50000, 22, ACK),
    );
    assert_eq!(f.inbound(&follow_up, now), FLOW);
}

#[test]
fn more_than_eight_extension_headers_are_unsupported() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let eight: Vec<_> = (0..8).map(|_| (60, opts())).collect();
    let nine: Vec<_> = (0..9).map(|_| (60, opts())).collect();
    let ok = ipv6_ext(
        ip(ALICE6),
        ip(ME6),
        &eight,
        TCP,
        &tcp_header(50000, 22, SYN),
    );
    let too_many = ipv6_ext(ip(ALICE6), ip(ME6), &nine, TCP, &tcp_header(50000, 80, SYN));
    assert_eq!(weft_filter::MAX_EXTENSION_HEADERS, 8);
    assert!(f.inbound(&ok, now).is_accept());
    assert_eq!(f.inbound(&too_many, now), UNSUPPORTED);
    assert_eq!(f.stats().dropped_for(DropReason::Unsupported), 1);
}

#[test]
fn a_routing_header_with_segments_left_is_unsupported() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let rh = (43, vec![0, 1, 0, 0, 0, 0]); // type 0, one segment left
    let p = ipv6_ext(ip(ALICE6), ip(ME6), &[rh], TCP, &tcp_header(50000, 22, SYN));
    assert_eq!(f.inbound(&p, now), UNSUPPORTED);
}

// --- bad input ---

#[test]
fn self_contradictory_headers_are_malformed() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let cases = [
        tcp(ALICE4, ME4, 50000, 22, SYN | FIN),
        tcp(ALICE4, ME4, 50000, 22, SYN | RST),
        tcp(ALICE4, ME4, 0, 22, SYN),
        udp(ALICE4, ME4, 5000, 0),
        {
            let mut p = tcp(ALICE4, ME4, 50000, 22, SYN);
            p[20 + 12] = 4 << 4; // TCP data offset below 5 words
            p
        },
        {
            let mut p = udp(ALICE4, ME4, 50000, 5000);
            p[20 + 5] = 200; // UDP length beyond the packet
            p
        },
        {
            let mut p = tcp(ALICE6, ME6, 50000, 22, SYN);
            p[5] += 1; // IPv6 payload length beyond the buffer
            p
        },
        {
            let mut p = tcp(ALICE4, ME4, 50000, 22, SYN);
            p[0] = 0x44; // IHL 4
            p
        },
        vec![0x75, 0, 0, 20],
        Vec::new(),
    ];
    for (i, p) in cases.iter().enumerate() {
        assert_eq!(f.inbound(p, now), MALFORMED, "case {i}");
    }
    assert_eq!(
        f.stats().dropped_for(DropReason::Malformed),
        cases.len() as u64
    );
}

#[test]
fn bytes_after_the_ip_length_are_ignored() {
    let f = node(alice_ssh_and_web());
    let mut p = tcp(ALICE4, ME4, 50000, 22, SYN);
    p.extend_from_slice(&[0xff; 10]);
    assert!(f.inbound(&p, t0()).is_accept());
}

#[test]
fn malformed_outbound_packets_are_counted_and_untracked() {
    let f = node(CompiledFilter::default());
    assert_eq!(
        f.outbound(&[0x60; 7], t0()),
        weft_filter::Outbound::Untracked
    );
    assert_eq!(f.stats().outbound_malformed, 1);
}

/// Packets that start out valid, then get bytes flipped and are truncated:
/// they reach deep into the parser, unlike uniform noise.
fn mangled() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![
        Just(tcp(ALICE4, ME4, 50000, 22, SYN)),
        Just(tcp(ALICE6, ME6, 50000, 22, ACK)),
        Just(udp(ALICE4, ME4, 53, 40000)),
        Just(echo_request(ALICE6, ME6, 1)),
        Just(unreachable(ALICE4, ME4, &tcp(ME4, ALICE4, 40000, 22, SYN))),
        Just(too_big(ALICE6, ME6, &udp(ME6, ALICE6, 40000, 53))),
        Just(ipv6_frag(
            ip(ALICE6),
            ip(ME6),
            UDP,
            (1, 0, true),
            &udp_datagram(1, 5000, &[0; 8])
        )),
        Just(ipv6_ext(
            ip(ALICE6),
            ip(ME6),
            &[(0, opts()), (43, vec![0; 6])],
            TCP,
            &tcp_header(1, 22, SYN)
        )),
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn garbage_never_panics_and_unparsable_packets_are_counted(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let f = node(alice_ssh_and_web());
        let now = t0();
        let before = f.stats().dropped_total();
        let verdict = f.inbound(&bytes, now);
        let _ = f.outbound(&bytes, now);
        if let Verdict::Drop(_) = verdict {
            prop_assert_eq!(f.stats().dropped_total(), before + 1);
        }
    }

    #[test]
    fn mangled_packets_never_panic(p in mangled()) {
        let f = node(udp_service());
        let now = t0();
        let _ = f.outbound(&p, now);
        let _ = f.inbound(&p, now);
        let _ = f.inbound(&p, now);
        f.handle_timeout(now + secs(3600));
        prop_assert!(f.stats().flows <= 2);
    }
}
