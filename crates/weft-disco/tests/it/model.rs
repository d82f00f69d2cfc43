//! Model-style property test: random sequences of network events never
//! panic, never make a core spin, and never leave a peer without a path
//! while a relay exists for it; the path events a driver saw always add up
//! to the path the core reports.

use std::time::Duration;

use proptest::prelude::*;
use weft_disco::{Path, PathState, RegionId};

use crate::sim::{Nat, Sim};

#[derive(Debug, Clone, Copy)]
enum NatKind {
    None,
    Easy,
    Hard,
}

#[derive(Debug, Clone)]
enum Op {
    Advance(u32),
    BlockUdp(usize, bool),
    Move(usize, u8, NatKind),
    Rebind(usize, u8, NatKind),
    RelayUp(bool),
    Unlink(usize, usize),
    Link(usize, usize),
    Ping(usize, usize),
    RelayConnection(usize, u16, bool),
    RelayLatency(usize, u16, u16),
    Netcheck(usize),
    RelayedTraffic(usize, usize),
    Garbage(usize, Vec<u8>, bool),
}

const NODES: usize = 3;

fn nat(kind: NatKind, n: u8) -> Nat {
    let public = format!("198.19.{}.{}", n / 16, n % 16 + 1).parse().unwrap();
    match kind {
        NatKind::None => Nat::None,
        NatKind::Easy => Nat::Easy { public },
        NatKind::Hard => Nat::Hard { public },
    }
}

fn nat_kind() -> impl Strategy<Value = NatKind> {
    prop_oneof![
        Just(NatKind::None),
        Just(NatKind::Easy),
        Just(NatKind::Hard)
    ]
}

fn node() -> impl Strategy<Value = usize> {
    0..NODES
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u32..20_000).prop_map(Op::Advance),
        2 => (node(), any::<bool>()).prop_map(|(i, b)| Op::BlockUdp(i, b)),
        1 => (node(), any::<u8>(), nat_kind()).prop_map(|(i, n, k)| Op::Move(i, n, k)),
        1 => (node(), any::<u8>(), nat_kind()).prop_map(|(i, n, k)| Op::Rebind(i, n, k)),
        1 => any::<bool>().prop_map(Op::RelayUp),
        1 => (node(), node()).prop_map(|(a, b)| Op::Unlink(a, b)),
        1 => (node(), node()).prop_map(|(a, b)| Op::Link(a, b)),
        2 => (node(), node()).prop_map(|(a, b)| Op::Ping(a, b)),
        1 => (node(), 1u16..=2, any::<bool>()).prop_map(|(i, r, up)| Op::RelayConnection(i, r, up)),
        1 => (node(), 1u16..=2, 1u16..500).prop_map(|(i, r, ms)| Op::RelayLatency(i, r, ms)),
        1 => node().prop_map(Op::Netcheck),
        1 => (node(), node()).prop_map(|(a, b)| Op::RelayedTraffic(a, b)),
        1 => (node(), proptest::collection::vec(any::<u8>(), 0..120), any::<bool>())
            .prop_map(|(i, d, relay)| Op::Garbage(i, d, relay)),
    ]
}

fn apply(sim: &mut Sim, op: &Op) {
    let now = sim.now;
    match op.clone() {
        Op::Advance(ms) => sim.run_for(Duration::from_millis(ms.into())),
        Op::BlockUdp(i, b) => sim.nodes[i].udp_blocked = b,
        Op::Move(i, n, k) => {
            let ip = format!("198.18.{}.{}", n / 16 + 10, n % 16 + 1);
            sim.move_node(i, &ip, nat(k, n));
        }
        Op::Rebind(i, n, k) => sim.rebind_nat(i, nat(k, n)),
        Op::RelayUp(up) => sim.relay_up = up,
        Op::Unlink(a, b) if a != b && sim.linked(a, b) => sim.unlink(a, b),
        Op::Link(a, b) if a != b && !sim.linked(a, b) => sim.link(a, b),
        Op::Ping(a, b) if a != b => {
            let key = sim.nodes[b].key;
            let linked = sim.linked(a, b);
            let id = sim.nodes[a].disco.ping(&key, Duration::from_secs(3), now);
            assert_eq!(id.is_some(), linked, "ping works for known peers only");
            sim.pump(a);
        }
        Op::RelayConnection(i, r, up) => {
            sim.nodes[i]
                .disco
                .handle_relay_connection(RegionId(r), up, now);
            sim.pump(i);
        }
        Op::RelayLatency(i, r, ms) => {
            sim.nodes[i].disco.handle_relay_latency(
                RegionId(r),
                Duration::from_millis(ms.into()),
                now,
            );
            sim.pump(i);
        }
        Op::Netcheck(i) => {
            sim.nodes[i].disco.netcheck_now(now);
            sim.pump(i);
        }
        Op::RelayedTraffic(a, b) if a != b => {
            let key = sim.nodes[b].key;
            sim.nodes[a].disco.handle_relayed_traffic(&key, now);
            sim.pump(a);
        }
        Op::Garbage(i, mut d, relay) => {
            // Half of it with the magic, so it reaches the parser.
            if d.len() % 2 == 0 {
                d.splice(0..0, weft_disco::MAGIC);
            }
            let from = sim.nodes[(i + 1) % NODES].key;
            if relay {
                sim.nodes[i]
                    .disco
                    .handle_relay(crate::sim::REGION, from, &d, now);
            } else {
                sim.nodes[i]
                    .disco
                    .handle_udp(crate::sim::addr("198.18.66.6:1"), &d, now);
            }
            sim.pump(i);
        }
        _ => {}
    }
}

fn check(sim: &Sim) {
    for i in 0..NODES {
        for j in 0..NODES {
            if i == j || !sim.linked(i, j) {
                continue;
            }
            let peer = sim.nodes[j].key;
            let status = sim.nodes[i]
                .disco
                .peer_status(&peer)
                .expect("linked peer is known");
            // A relay exists for the peer (its home region, as control
            // told us, is in our relay map): there is always a path.
            if sim.with_relay && sim.home_of(j).is_some() {
                assert!(
                    status.path.is_some(),
                    "node {i} has no path to {j} though it has home relay {:?}: {status:?}",
                    sim.home_of(j)
                );
            }
            // A relayed peer is reached through its current home region.
            if let Some(Path::Relay(r)) = status.path {
                assert_eq!(
                    Some(r),
                    sim.home_of(j),
                    "node {i} relays to {j} via a stale region"
                );
            }
            if let PathState::Relay { retry_at } = status.state {
                assert!(status.relay.is_some(), "relay state without a relay");
                // Waiting for nothing is only right while UDP is blocked
                // (the end of that re-probes everyone).
                assert!(
                    retry_at.is_some() || sim.nodes[i].disco.udp_blocked(),
                    "node {i} waits for nothing to probe {j} again"
                );
            }
            if let PathState::Direct { addr } = status.state {
                assert_eq!(status.path, Some(Path::Direct(addr)));
            }
            // What the driver saw adds up to what the core says.
            let last = sim.nodes[i].paths(&peer).last().and_then(|(_, p)| *p);
            assert_eq!(
                last, status.path,
                "events of {i} for {j} disagree with its path"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_network_events_never_panic_and_never_strand_a_peer_with_a_relay(
        with_relay in any::<bool>(),
        two_regions in any::<bool>(),
        link_before_netcheck in any::<bool>(),
        nats in proptest::collection::vec(nat_kind(), NODES),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let mut sim = Sim::new(with_relay);
        if two_regions {
            sim.stun.push((RegionId(2), crate::sim::addr("198.19.200.1:3478")));
        }
        for (i, k) in nats.iter().enumerate() {
            sim.add(&format!("198.18.{i}.1"), nat(*k, i as u8));
        }
        if !link_before_netcheck {
            // Homes and public addresses are known when peers meet.
            sim.run_for(Duration::from_secs(1));
        }
        for a in 0..NODES {
            for b in a + 1..NODES {
                sim.link(a, b);
            }
        }
        check(&sim);
        for op in &ops {
            apply(&mut sim, op);
            check(&sim);
        }
        // Whatever happened, a quiet minute later nothing is pending that
        // a driver would spin on, and the invariants still hold.
        sim.run_for(Duration::from_secs(60));
        check(&sim);
    }
}
