//! Which inbound packets pass: replies to this node's flows, new inbound
//! flows the policy admits, later packets of admitted flows — and nothing
//! else.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use weft_filter::{Accept, CompiledFilter, DropReason, Outbound, RuleOrigin, Verdict};

const NOT_ALLOWED: Verdict = Verdict::Drop(DropReason::NotAllowed);
const NO_FLOW: Verdict = Verdict::Drop(DropReason::NoFlow);
const FLOW: Verdict = Verdict::Accept(Accept::Flow);

#[test]
fn the_filter_can_be_shared_between_threads() {
    fn shared<T: Send + Sync + 'static>() {}
    shared::<weft_filter::Filter>();
    shared::<weft_filter::FilterStats>();
}

// --- replies to this node's own flows ---

#[test]
fn replies_to_our_outbound_tcp_connection_pass_in_both_families() {
    let f = node(CompiledFilter::default());
    let now = t0();
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        assert_eq!(
            f.outbound(&tcp(me, alice, 40000, 443, SYN), now),
            Outbound::NewFlow
        );
        assert_eq!(f.inbound(&tcp(alice, me, 443, 40000, SYN | ACK), now), FLOW);
        assert_eq!(
            f.outbound(&tcp(me, alice, 40000, 443, ACK), now),
            Outbound::Flow
        );
        assert_eq!(f.inbound(&tcp(alice, me, 443, 40000, ACK | PSH), now), FLOW);
        assert_eq!(f.inbound(&tcp(alice, me, 443, 40000, FIN | ACK), now), FLOW);
    }
}

#[test]
fn a_reply_from_another_port_or_host_is_not_a_reply() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 443, SYN), now);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 444, 40000, SYN | ACK), now),
        NO_FLOW
    );
    assert_eq!(
        f.inbound(&tcp(BOB4, ME4, 443, 40000, SYN | ACK), now),
        NO_FLOW
    );
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 443, 40001, SYN | ACK), now),
        NO_FLOW
    );
}

#[test]
fn replies_to_our_outbound_udp_pass_and_only_from_that_peer_and_port() {
    let f = node(CompiledFilter::default());
    let now = t0();
    for (me, alice, bob) in [(ME4, ALICE4, BOB4), (ME6, ALICE6, BOB6)] {
        assert_eq!(
            f.outbound(&udp(me, alice, 53000, 53), now),
            Outbound::NewFlow
        );
        assert_eq!(f.outbound(&udp(me, alice, 53000, 53), now), Outbound::Flow);
        assert_eq!(f.inbound(&udp(alice, me, 53, 53000), now), FLOW);
        assert_eq!(f.inbound(&udp(bob, me, 53, 53000), now), NOT_ALLOWED);
        assert_eq!(f.inbound(&udp(alice, me, 54, 53000), now), NOT_ALLOWED);
    }
}

#[test]
fn echo_replies_pass_only_for_our_echo_requests() {
    let f = node(CompiledFilter::default());
    let now = t0();
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        assert_eq!(
            f.inbound(&echo_reply(alice, me, 7), now),
            NO_FLOW,
            "unsolicited"
        );
        assert_eq!(
            f.outbound(&echo_request(me, alice, 7), now),
            Outbound::NewFlow
        );
        assert_eq!(f.inbound(&echo_reply(alice, me, 7), now), FLOW);
        assert_eq!(
            f.inbound(&echo_reply(alice, me, 8), now),
            NO_FLOW,
            "another id"
        );
        assert_eq!(
            f.inbound(&echo_request(alice, me, 7), now),
            NOT_ALLOWED,
            "our ping does not let the peer ping us with the same id"
        );
    }
}

// --- new inbound flows ---

#[test]
fn an_unsolicited_syn_to_a_disallowed_port_is_dropped() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 443, SYN), now),
        NOT_ALLOWED
    );
    assert_eq!(
        f.inbound(&tcp(ALICE6, ME6, 50000, 8080, SYN), now),
        NOT_ALLOWED
    );
    assert_eq!(f.stats().dropped_for(DropReason::NotAllowed), 2);
    assert_eq!(f.stats().flows, 0);
}

#[test]
fn a_syn_to_an_allowed_port_is_admitted_and_the_rest_of_that_connection_passes() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        let admitted = Verdict::Accept(Accept::NewFlow {
            rule: Some(RuleOrigin { index: 1, line: 1 }),
        });
        assert_eq!(f.inbound(&tcp(alice, me, 50000, 22, SYN), now), admitted);
        assert_eq!(
            f.inbound(&tcp(alice, me, 50000, 22, SYN), now),
            FLOW,
            "a SYN retransmit"
        );
        assert_eq!(
            f.outbound(&tcp(me, alice, 22, 50000, SYN | ACK), now),
            Outbound::Flow
        );
        for flags in [ACK, ACK | PSH, FIN | ACK, ACK] {
            assert_eq!(f.inbound(&tcp(alice, me, 50000, 22, flags), now), FLOW);
        }
        assert_eq!(f.inbound(&tcp(alice, me, 50001, 80, SYN), now), admitted);
    }
    assert_eq!(f.stats().accepted_new_flows, 4);
}

#[test]
fn bob_reaches_nothing_on_any_protocol() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    for (me, bob) in [(ME4, BOB4), (ME6, BOB6)] {
        assert_eq!(f.inbound(&tcp(bob, me, 50000, 22, SYN), now), NOT_ALLOWED);
        assert_eq!(f.inbound(&udp(bob, me, 50000, 22), now), NOT_ALLOWED);
        assert_eq!(f.inbound(&echo_request(bob, me, 1), now), NOT_ALLOWED);
    }
}

#[test]
fn tcp_segments_without_a_flow_are_dropped_even_on_an_allowed_port() {
    // Stricter than Tailscale, which passes every non-SYN segment.
    let f = node(alice_ssh_and_web());
    let now = t0();
    for flags in [ACK, ACK | PSH, SYN | ACK, FIN | ACK, RST, RST | ACK] {
        assert_eq!(
            f.inbound(&tcp(ALICE4, ME4, 50000, 22, flags), now),
            NO_FLOW,
            "flags {flags:#x}"
        );
    }
    assert_eq!(f.stats().dropped_for(DropReason::NoFlow), 6);
}

#[test]
fn inbound_udp_to_an_allowed_port_opens_a_flow_that_our_replies_keep() {
    let f = node(udp_service());
    let now = t0();
    let admitted = Verdict::Accept(Accept::NewFlow {
        rule: Some(RuleOrigin { index: 3, line: 3 }),
    });
    assert_eq!(f.inbound(&udp(BOB4, ME4, 40000, 5001), now), admitted);
    assert_eq!(
        f.outbound(&udp(ME4, BOB4, 5001, 40000), now),
        Outbound::Flow
    );
    assert_eq!(f.inbound(&udp(BOB4, ME4, 40000, 5001), now), FLOW);
    assert_eq!(f.inbound(&udp(BOB6, ME6, 40000, 5011), now), NOT_ALLOWED);
}

#[test]
fn inbound_echo_requests_are_judged_by_the_rules() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let admitted = Verdict::Accept(Accept::NewFlow {
        rule: Some(RuleOrigin { index: 2, line: 2 }),
    });
    assert_eq!(f.inbound(&echo_request(ALICE4, ME4, 3), now), admitted);
    assert_eq!(f.inbound(&echo_request(ALICE4, ME4, 3), now), FLOW);
    assert_eq!(f.inbound(&echo_request(ALICE6, ME6, 3), now), admitted);
    assert_eq!(
        f.inbound(&echo_reply(ALICE4, ME4, 3), now),
        NO_FLOW,
        "a reply to no request of ours"
    );
    let tcp_only = node(alice_ssh_only());
    assert_eq!(
        tcp_only.inbound(&echo_request(ALICE4, ME4, 3), now),
        NOT_ALLOWED
    );
}

#[test]
fn other_icmp_types_are_judged_one_by_one_and_never_tracked() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    let timestamp = ip_packet(
        ip(ALICE4),
        ip(ME4),
        ICMP,
        &icmp_message(13, 0, [0; 4], &[0; 12]),
    );
    let accepted = Verdict::Accept(Accept::Stateless {
        rule: Some(RuleOrigin { index: 2, line: 2 }),
    });
    assert_eq!(f.inbound(&timestamp, now), accepted);
    let from_bob = ip_packet(
        ip(BOB4),
        ip(ME4),
        ICMP,
        &icmp_message(13, 0, [0; 4], &[0; 12]),
    );
    assert_eq!(f.inbound(&from_bob, now), NOT_ALLOWED);
    assert_eq!(f.stats().flows, 0);
    assert_eq!(f.stats().accepted_stateless, 1);
}

#[test]
fn other_protocols_need_a_rule_for_every_port_and_our_own_flows_let_replies_in() {
    const GRE: u8 = 47;
    let now = t0();
    let some_ports = node(CompiledFilter::new(&[rule(
        &["0.0.0.0/0"],
        &[(1, 100)],
        &[GRE],
        1,
    )]));
    assert_eq!(
        some_ports.inbound(&ip_packet(ip(ALICE4), ip(ME4), GRE, &[0; 8]), now),
        NOT_ALLOWED
    );
    let all_ports = node(CompiledFilter::new(&[rule(
        &["0.0.0.0/0"],
        &[(0, 65535)],
        &[GRE],
        1,
    )]));
    assert!(
        all_ports
            .inbound(&ip_packet(ip(ALICE4), ip(ME4), GRE, &[0; 8]), now)
            .is_accept()
    );

    let none = node(CompiledFilter::default());
    assert_eq!(
        none.outbound(&ip_packet(ip(ME4), ip(BOB4), GRE, &[0; 8]), now),
        Outbound::NewFlow
    );
    assert_eq!(
        none.inbound(&ip_packet(ip(BOB4), ip(ME4), GRE, &[0; 8]), now),
        FLOW
    );
}

#[test]
fn packets_for_an_address_that_is_not_ours_are_dropped() {
    let allow_all = CompiledFilter::new(&[weft_types::filter::FilterRule {
        src: vec![net("0.0.0.0/0")],
        dst: vec![weft_types::filter::DstPorts {
            net: net("0.0.0.0/0"),
            ports: weft_types::filter::PortRange::ALL,
        }],
        protos: vec![],
        origin: None,
    }]);
    let f = node(allow_all);
    let now = t0();
    let not_for_us = Verdict::Drop(DropReason::NotForUs);
    assert_eq!(
        f.inbound(&tcp(ALICE4, OTHER4, 50000, 22, SYN), now),
        not_for_us
    );
    assert_eq!(
        f.inbound(&udp(ALICE4, "100.64.255.255", 50000, 22), now),
        not_for_us
    );
    assert!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 22, SYN), now)
            .is_accept()
    );
    assert_eq!(f.stats().dropped_for(DropReason::NotForUs), 2);
}

#[test]
fn outbound_packets_from_an_address_that_is_not_ours_open_no_flow() {
    let f = node(CompiledFilter::default());
    let now = t0();
    assert_eq!(
        f.outbound(&udp(OTHER4, ALICE4, 1000, 53), now),
        Outbound::Untracked
    );
    assert_eq!(f.stats().flows, 0);
}

#[test]
fn a_bare_syn_on_the_tuple_of_a_finished_connection_is_judged_again() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    // This node connected out from port 22 to alice's 40000 (odd but legal).
    f.outbound(&tcp(ME4, ALICE4, 22, 40000, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 40000, 22, SYN | ACK), now);
    f.outbound(&tcp(ME4, ALICE4, 22, 40000, RST), now);
    // Alice now opens a connection on the same tuple: a new flow, judged.
    let v = f.inbound(&tcp(ALICE4, ME4, 40000, 22, SYN), now);
    assert!(
        matches!(v, Verdict::Accept(Accept::NewFlow { .. })),
        "{v:?}"
    );
    // Bob reusing the tuple of our connection to him is refused.
    f.outbound(&tcp(ME4, BOB4, 22, 40000, SYN), now);
    f.inbound(&tcp(BOB4, ME4, 40000, 22, SYN | ACK), now);
    assert_eq!(f.inbound(&tcp(BOB4, ME4, 40000, 22, SYN), now), NOT_ALLOWED);
    assert_eq!(
        f.inbound(&tcp(BOB4, ME4, 40000, 22, ACK), now),
        FLOW,
        "the old connection continues"
    );
}

#[test]
fn an_empty_filter_and_a_fresh_filter_admit_nothing() {
    let now = t0();
    let fresh = weft_filter::Filter::new(weft_filter::Config::default(), [1; 32]);
    assert_eq!(
        fresh.inbound(&tcp(ALICE4, ME4, 5, 22, SYN), now),
        Verdict::Drop(DropReason::NotForUs),
        "no local addresses yet"
    );
    let empty = node(CompiledFilter::default());
    assert_eq!(
        empty.inbound(&tcp(ALICE4, ME4, 5, 22, SYN), now),
        NOT_ALLOWED
    );
}

#[test]
fn every_drop_reason_is_counted_under_its_name() {
    let f = node(alice_ssh_only());
    let now = t0();
    f.inbound(&[0x45, 0, 0], now);
    f.inbound(&tcp(ALICE4, OTHER4, 5, 22, SYN), now);
    f.inbound(&tcp(BOB4, ME4, 5, 22, SYN), now);
    f.inbound(&tcp(BOB4, ME4, 5, 22, ACK), now);
    f.set_shields_up(true);
    f.inbound(&tcp(ALICE4, ME4, 5, 22, SYN), now);
    let s = f.stats();
    let expected = [
        ("malformed", 1),
        ("no_flow", 1),
        ("not_allowed", 1),
        ("not_for_us", 1),
        ("shields_up", 1),
        ("unsupported", 0),
    ];
    assert_eq!(s.dropped.into_iter().collect::<Vec<_>>(), expected);
    assert!(f.stats().shields_up);
    assert_eq!(f.stats().rules, 1);
    assert_eq!(f.stats().dropped_total(), 5);
}
