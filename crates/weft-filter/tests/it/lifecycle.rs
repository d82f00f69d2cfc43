//! Timeouts on virtual time, the table bound and eviction.
#![allow(clippy::unwrap_used)]

use crate::common;

use common::*;
use weft_filter::{Accept, CompiledFilter, Config, DropReason, Outbound, Timeouts, Verdict};

const FLOW: Verdict = Verdict::Accept(Accept::Flow);
const NO_FLOW: Verdict = Verdict::Drop(DropReason::NoFlow);
const NOT_ALLOWED: Verdict = Verdict::Drop(DropReason::NotAllowed);

// --- timeouts ---

#[test]
fn an_idle_udp_flow_expires_after_60_seconds_and_traffic_keeps_it_alive() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&udp(ME4, ALICE4, 40000, 53), now);
    assert_eq!(
        f.inbound(&udp(ALICE4, ME4, 53, 40000), now + secs(59)),
        FLOW
    );
    assert_eq!(
        f.inbound(&udp(ALICE4, ME4, 53, 40000), now + secs(118)),
        FLOW
    );
    assert_eq!(
        f.inbound(&udp(ALICE4, ME4, 53, 40000), now + secs(178)),
        NOT_ALLOWED
    );
    assert_eq!(f.stats().flows_expired, 1);
}

#[test]
fn an_unanswered_syn_expires_after_30_seconds() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now + secs(30)),
        NO_FLOW
    );
}

#[test]
fn an_established_connection_survives_hours_of_silence() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    let later = now + secs(3 * 3600);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK | PSH), later),
        FLOW
    );
    let much_later = later + Timeouts::default().tcp_established;
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), much_later),
        NO_FLOW
    );
}

#[test]
fn a_closed_connection_lingers_30_seconds_for_the_last_segments() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, FIN | ACK), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, FIN | ACK), now);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), now + secs(20)),
        FLOW
    );
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), now + secs(50)),
        NO_FLOW
    );
}

#[test]
fn a_reset_leaves_the_flow_closing() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    let rst = tcp(ALICE4, ME4, 22, 40000, RST | ACK);
    assert_eq!(f.inbound(&rst, now), FLOW);
    assert_eq!(f.inbound(&rst, now + secs(29)), FLOW);
    assert_eq!(f.inbound(&rst, now + secs(60)), NO_FLOW);
}

#[test]
fn a_half_closed_connection_stays_established() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, FIN | ACK), now);
    let later = now + secs(3600);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK | PSH), later),
        FLOW
    );
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, FIN | ACK), later),
        FLOW
    );
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), later + secs(31)),
        NO_FLOW
    );
}

#[test]
fn echo_flows_expire_after_30_seconds() {
    let f = node(CompiledFilter::default());
    let now = t0();
    f.outbound(&echo_request(ME6, ALICE6, 1), now);
    assert_eq!(f.inbound(&echo_reply(ALICE6, ME6, 1), now + secs(29)), FLOW);
    assert_eq!(
        f.inbound(&echo_reply(ALICE6, ME6, 1), now + secs(60)),
        NO_FLOW
    );
}

#[test]
fn handle_timeout_frees_expired_flows_and_keeps_live_ones() {
    let f = node(CompiledFilter::default());
    let now = t0();
    for port in 0..100 {
        f.outbound(&udp(ME4, ALICE4, 40000 + port, 53), now);
    }
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    f.handle_timeout(now + secs(59));
    assert_eq!(f.stats().flows, 101);
    f.handle_timeout(now + secs(61));
    let s = f.stats();
    assert_eq!(s.flows, 1, "only the established connection remains");
    assert_eq!(s.flows_expired, 100);
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), now + secs(61)),
        FLOW
    );
}

#[test]
fn timeouts_are_configurable() {
    let config = Config {
        timeouts: Timeouts {
            udp: secs(5),
            ..Timeouts::default()
        },
        ..Config::default()
    };
    let f = node_with(config, CompiledFilter::default());
    let now = t0();
    f.outbound(&udp(ME4, ALICE4, 40000, 53), now);
    assert_eq!(
        f.inbound(&udp(ALICE4, ME4, 53, 40000), now + secs(5)),
        NOT_ALLOWED
    );
}

// --- the table bound ---

fn small(max_flows: usize) -> Config {
    Config {
        max_flows,
        shards: 1,
        ..Config::default()
    }
}

#[test]
fn a_full_table_evicts_the_least_recently_used_flow() {
    let f = node_with(small(4), CompiledFilter::default());
    let now = t0();
    for (i, port) in (40000..40004).enumerate() {
        f.outbound(&tcp(ME4, ALICE4, port, 22, SYN), now + secs(i as u64));
        f.inbound(&tcp(ALICE4, ME4, 22, port, SYN | ACK), now + secs(i as u64));
    }
    // Touch the oldest so that 40001 becomes the least recently used.
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), now + secs(5));
    assert_eq!(
        f.outbound(&tcp(ME4, ALICE4, 40004, 22, SYN), now + secs(6)),
        Outbound::NewFlow
    );
    let s = f.stats();
    assert_eq!((s.flows, s.flows_evicted), (4, 1));
    let at = now + secs(7);
    assert_eq!(f.inbound(&tcp(ALICE4, ME4, 22, 40001, ACK), at), NO_FLOW);
    for port in [40000, 40002, 40003, 40004] {
        assert_eq!(
            f.inbound(&tcp(ALICE4, ME4, 22, port, ACK), at),
            FLOW,
            "port {port}"
        );
    }
}

#[test]
fn eviction_spares_two_way_flows_for_ones_never_answered() {
    let f = node_with(small(4), CompiledFilter::default());
    let now = t0();
    f.outbound(&udp(ME4, ALICE4, 40000, 53), now);
    f.inbound(&udp(ALICE4, ME4, 53, 40000), now);
    f.outbound(&udp(ME4, ALICE4, 40001, 53), now + secs(1)); // never answered
    f.outbound(&udp(ME4, ALICE4, 40002, 53), now + secs(2));
    f.inbound(&udp(ALICE4, ME4, 53, 40002), now + secs(2));
    f.outbound(&udp(ME4, ALICE4, 40003, 53), now + secs(3));
    f.inbound(&udp(ALICE4, ME4, 53, 40003), now + secs(3));
    f.outbound(&udp(ME4, ALICE4, 40004, 53), now + secs(4));
    let at = now + secs(5);
    assert_eq!(f.inbound(&udp(ALICE4, ME4, 53, 40001), at), NOT_ALLOWED);
    assert_eq!(
        f.inbound(&udp(ALICE4, ME4, 53, 40000), at),
        FLOW,
        "the oldest, but answered"
    );
}

#[test]
fn eviction_takes_an_expired_flow_first() {
    let f = node_with(small(2), CompiledFilter::default());
    let now = t0();
    f.outbound(&tcp(ME4, ALICE4, 40000, 22, SYN), now);
    f.inbound(&tcp(ALICE4, ME4, 22, 40000, SYN | ACK), now);
    f.outbound(&udp(ME4, ALICE4, 40001, 53), now + secs(1));
    f.outbound(&udp(ME4, ALICE4, 40002, 53), now + secs(100));
    let s = f.stats();
    assert_eq!((s.flows_expired, s.flows_evicted), (1, 0));
    assert_eq!(
        f.inbound(&tcp(ALICE4, ME4, 22, 40000, ACK), now + secs(100)),
        FLOW
    );
}

#[test]
fn the_table_never_holds_more_than_its_bound() {
    let config = Config {
        max_flows: 64,
        shards: 4,
        ..Config::default()
    };
    let f = node_with(config, udp_service());
    let now = t0();
    for port in 0..5000u16 {
        f.outbound(&udp(ME4, ALICE4, 10000 + port, 53), now);
        f.inbound(&udp(BOB6, ME6, 10000 + port, 5000), now);
    }
    let s = f.stats();
    assert!(s.flows <= 64, "{} flows", s.flows);
    assert_eq!(s.flows + s.flows_evicted, 10_000);
}
