//! Shields-up, policy replacement and address changes: what survives and
//! what is cut.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use weft_filter::{Accept, CompiledFilter, DropReason, Outbound, Policy, Verdict};

const FLOW: Verdict = Verdict::Accept(Accept::Flow);
const NO_FLOW: Verdict = Verdict::Drop(DropReason::NoFlow);
const SHIELDS: Verdict = Verdict::Drop(DropReason::ShieldsUp);

/// Alice opens `port` on this node and completes the handshake.
fn alice_connects(f: &weft_filter::Filter, me: &str, alice: &str, sport: u16, port: u16) {
    let now = t0();
    assert!(
        f.inbound(&tcp(alice, me, sport, port, SYN), now)
            .is_accept()
    );
    f.outbound(&tcp(me, alice, port, sport, SYN | ACK), now);
    assert_eq!(f.inbound(&tcp(alice, me, sport, port, ACK), now), FLOW);
}

#[test]
fn shields_up_refuses_every_new_inbound_flow_but_our_own_flows_still_work() {
    let f = node(alice_ssh_and_web());
    f.set_shields_up(true);
    let now = t0();
    assert_eq!(f.inbound(&tcp(ALICE4, ME4, 50000, 22, SYN), now), SHIELDS);
    assert_eq!(f.inbound(&udp(ALICE6, ME6, 50000, 22), now), SHIELDS);
    assert_eq!(f.inbound(&echo_request(ALICE4, ME4, 1), now), SHIELDS);
    assert_eq!(f.inbound(&tcp(ALICE4, ME4, 50000, 22, ACK), now), NO_FLOW);

    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now),
        FLOW
    );
    f.outbound(&udp(ME6, BOB6, 40000, 53), now);
    assert_eq!(f.inbound(&udp(BOB6, ME6, 53, 40000), now), FLOW);
    f.outbound(&echo_request(ME4, BOB4, 9), now);
    assert_eq!(f.inbound(&echo_reply(BOB4, ME4, 9), now), FLOW);

    f.set_shields_up(false);
    assert!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 22, SYN), now)
            .is_accept()
    );
}

#[test]
fn raising_shields_cuts_connections_that_peers_opened() {
    let f = node(alice_ssh_and_web());
    alice_connects(&f, ME4, ALICE4, 50000, 22);
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), t0());
    assert_eq!(f.set_shields_up(true), 1);
    assert_eq!(f.inbound(&tcp(ALICE4, ME4, 50000, 22, ACK), t0()), NO_FLOW);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), t0()),
        FLOW
    );
}

#[test]
fn a_new_policy_keeps_the_flows_it_allows_and_cuts_the_others() {
    let f = node(alice_ssh_and_web());
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        alice_connects(&f, me, alice, 50000, 22);
        alice_connects(&f, me, alice, 50001, 80);
    }
    assert_eq!(
        f.set_filter(alice_ssh_only()),
        2,
        "the two web connections are cut"
    );
    let now = t0();
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        assert_eq!(f.inbound(&tcp(alice, me, 50000, 22, ACK | PSH), now), FLOW);
        assert_eq!(
            f.inbound(&tcp(alice, me, 50001, 80, ACK | PSH), now),
            NO_FLOW
        );
        assert_eq!(
            f.inbound(&tcp(alice, me, 50002, 80, SYN), now),
            Verdict::Drop(DropReason::NotAllowed)
        );
    }
    let s = f.stats();
    assert_eq!(s.flows_revoked, 2);
    assert_eq!(s.flows, 2);
}

#[test]
fn a_policy_that_still_allows_a_flow_leaves_its_state_untouched() {
    let f = node(alice_ssh_and_web());
    alice_connects(&f, ME4, ALICE4, 50000, 22);
    f.inbound(&tcp(ALICE4, ME4, 50000, 22, FIN | ACK), t0());
    assert_eq!(f.set_filter(alice_ssh_only()), 0);
    // Still half-closed: our FIN closes it, and it expires as a closing flow.
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 22, 50000, FIN | ACK), now);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 22, ACK), now + secs(29)),
        FLOW
    );
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 22, ACK), now + secs(60)),
        NO_FLOW
    );
}

#[test]
fn flows_this_node_opened_survive_any_policy() {
    let f = node(alice_ssh_and_web());
    let now = t0();
    f.outbound(&tcp(ME4, BOB4, 40000, 443, SYN), now);
    f.outbound(&udp(ME6, BOB6, 40000, 53), now);
    f.outbound(&echo_request(ME4, BOB4, 5), now);
    assert_eq!(f.set_filter(CompiledFilter::default()), 0);
    f.set_shields_up(true);
    assert_eq!(f.inbound(&tcp(BOB4, ME4, 443, 40000, SYN | ACK), now), FLOW);
    assert_eq!(f.inbound(&udp(BOB6, ME6, 53, 40000), now), FLOW);
    assert_eq!(f.inbound(&echo_reply(BOB4, ME4, 5), now), FLOW);
}

#[test]
fn the_local_side_retransmitting_does_not_revive_a_cut_connection() {
    let f = node(alice_ssh_and_web());
    alice_connects(&f, ME4, ALICE4, 50001, 80);
    f.set_filter(alice_ssh_only());
    let now = t0();
    assert_eq!(
        f.outbound(&tcp(ME4, ALICE4, 80, 50001, ACK | PSH), now),
        Outbound::Untracked
    );
    assert_eq!(f.inbound(&tcp(ALICE4, ME4, 50001, 80, ACK), now), NO_FLOW);
}

#[test]
fn a_cut_udp_flow_comes_back_only_if_this_node_sends_first() {
    let f = node(udp_service());
    let now = t0();
    assert!(f.inbound(&udp(BOB4, ME4, 40000, 5000), now).is_accept());
    f.set_filter(CompiledFilter::default());
    assert_eq!(
        f.inbound(&udp(BOB4, ME4, 40000, 5000), now),
        Verdict::Drop(DropReason::NotAllowed)
    );
    // The local service sending to bob is an outbound flow of its own.
    assert_eq!(
        f.outbound(&udp(ME4, BOB4, 5000, 40000), now),
        Outbound::NewFlow
    );
    assert_eq!(f.inbound(&udp(BOB4, ME4, 40000, 5000), now), FLOW);
}

#[test]
fn changing_local_addresses_drops_the_flows_of_the_old_address() {
    let f = node(alice_ssh_and_web());
    alice_connects(&f, ME4, ALICE4, 50000, 22);
    alice_connects(&f, ME6, ALICE6, 50000, 22);
    f.outbound(&udp(ME4, BOB4, 40000, 53), t0());
    assert_eq!(f.set_local_addrs(vec![ip(ME6)]), 2);
    let now = t0();
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 50000, 22, ACK), now),
        Verdict::Drop(DropReason::NotForUs)
    );
    assert_eq!(f.inbound(&tcp(ALICE6, ME6, 50000, 22, ACK), now), FLOW);
}

#[test]
fn set_policy_installs_everything_at_once() {
    let f = node(alice_ssh_and_web());
    alice_connects(&f, ME4, ALICE4, 50000, 22);
    let revoked = f.set_policy(Policy {
        filter: alice_ssh_only(),
        local_addrs: vec![ip(ME4)],
        shields_up: true,
    });
    assert_eq!(revoked, 1);
    let p = f.policy();
    assert!(p.shields_up);
    assert_eq!(p.filter, alice_ssh_only());
    assert_eq!(p.local_addrs, vec![ip(ME4)]);
}
