//! The path state machine end to end: relay from the first packet, direct
//! after the first pong, back to the relay when the direct path dies,
//! roaming, NATs, and no relay at all.

use std::time::Duration;

use weft_disco::{Event, Path, PathState, PingOutcome};

use crate::sim::{Nat, PORT, REGION, Sim, addr};

const A_IP: &str = "198.18.0.1";
const B_IP: &str = "198.18.1.1";

fn easy(ip: &str) -> Nat {
    Nat::Easy {
        public: ip.parse().unwrap(),
    }
}

fn hard(ip: &str) -> Nat {
    Nat::Hard {
        public: ip.parse().unwrap(),
    }
}

/// Two nodes that have run netcheck (so they have a home relay and their
/// STUN endpoints) but do not know each other yet.
fn two(a: Nat, b: Nat, with_relay: bool) -> Sim {
    let mut sim = Sim::new(with_relay);
    sim.add(A_IP, a);
    sim.add(B_IP, b);
    sim.run_for(Duration::from_secs(1));
    if with_relay {
        assert_eq!(sim.home_of(0), Some(REGION));
        assert_eq!(sim.home_of(1), Some(REGION));
    }
    sim
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Asks node `from` to ping node `to` and returns the outcome.
fn ping(sim: &mut Sim, from: usize, to: usize) -> PingOutcome {
    let now = sim.now;
    let key = sim.nodes[to].key;
    let id = sim.nodes[from]
        .disco
        .ping(&key, Duration::from_secs(5), now)
        .unwrap();
    let seen = sim.nodes[from].events.len();
    sim.run_for(secs(5));
    sim.nodes[from].events[seen..]
        .iter()
        .find_map(|(_, e)| match e {
            Event::Ping {
                id: got, outcome, ..
            } if *got == id => Some(*outcome),
            _ => None,
        })
        .unwrap()
}

#[test]
fn a_new_peer_goes_through_the_relay_at_once_and_direct_after_the_first_pong() {
    let mut sim = two(Nat::None, Nat::None, true);
    let linked = sim.now;
    sim.link(0, 1);
    // The first packet does not wait for anything: the relay is the path.
    assert_eq!(sim.path(0, 1), Some(Path::Relay(REGION)));
    assert_eq!(sim.path(1, 0), Some(Path::Relay(REGION)));
    sim.run_for(secs(2));
    let kb = sim.nodes[1].key;
    let paths = sim.nodes[0].paths(&kb);
    assert_eq!(paths[0], (linked, Some(Path::Relay(REGION))));
    assert_eq!(paths[1].1, Some(Path::Direct(addr("198.18.1.1:41641"))));
    // One round trip (2 × 10 ms) after the peer appeared.
    assert_eq!(paths[1].0 - linked, Duration::from_millis(20));
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert_eq!(sim.path(1, 0), Some(Path::Direct(addr("198.18.0.1:41641"))));
    // Heartbeats keep it direct.
    sim.run_for(secs(120));
    assert_eq!(sim.nodes[0].paths(&kb).len(), 2);
}

#[test]
fn a_direct_path_that_dies_falls_back_to_the_relay_within_five_seconds() {
    let mut worst = Duration::ZERO;
    // Cut the path at every phase of the heartbeat cycle (100 ms apart).
    for offset in (0..3000).step_by(100) {
        let mut sim = two(Nat::None, Nat::None, true);
        sim.link(0, 1);
        sim.run_for(secs(10) + Duration::from_millis(offset));
        assert!(matches!(sim.path(0, 1), Some(Path::Direct(_))));
        // b's network goes away: no UDP in or out.
        sim.nodes[1].udp_blocked = true;
        let took = sim
            .run_until_cond(secs(10), |s| s.path(0, 1) == Some(Path::Relay(REGION)))
            .expect("fell back to the relay");
        assert!(took <= secs(5), "cut at +{offset} ms: relay after {took:?}");
        worst = worst.max(took);
        if offset == 0 {
            // Traffic flows through the relay at once.
            let PingOutcome::Pong { path, .. } = ping(&mut sim, 0, 1) else {
                panic!("no pong through the relay")
            };
            assert_eq!(path, Path::Relay(REGION));
        }
    }
    // The bound is real: the worst phase takes more than one heartbeat.
    assert!(worst > secs(3), "worst {worst:?}");
}

#[test]
fn when_our_address_changes_the_direct_path_comes_back_within_five_seconds() {
    let mut sim = two(Nat::None, Nat::None, true);
    sim.link(0, 1);
    sim.run_for(secs(7));
    assert_eq!(sim.path(1, 0), Some(Path::Direct(addr("198.18.0.1:41641"))));
    // a moves (new DHCP lease, another network) mid-transfer.
    let moved = sim.now;
    sim.move_node(0, "198.18.0.11", Nat::None);
    let new_a = addr("198.18.0.11:41641");
    let took = sim
        .run_until_cond(secs(10), |s| {
            s.path(1, 0) == Some(Path::Direct(new_a))
                && s.path(0, 1) == Some(Path::Direct(addr("198.18.1.1:41641")))
        })
        .expect("path re-established");
    assert!(took <= secs(5), "took {took:?}");
    // b never had no path at all.
    let ka = sim.nodes[0].key;
    assert!(
        sim.nodes[1]
            .paths(&ka)
            .iter()
            .filter(|(t, _)| *t >= moved)
            .all(|(_, p)| p.is_some())
    );
}

#[test]
fn when_the_peers_nat_rebinds_the_path_follows_it_within_five_seconds() {
    let mut sim = two(Nat::None, easy("198.19.1.1"), true);
    sim.link(0, 1);
    sim.run_for(secs(8));
    assert_eq!(sim.path(0, 1), Some(Path::Direct(addr("198.19.1.1:41641"))));
    // b's router gets a new public address; b does not notice.
    sim.rebind_nat(1, easy("198.19.1.2"));
    let took = sim
        .run_until_cond(secs(10), |s| {
            s.path(0, 1) == Some(Path::Direct(addr("198.19.1.2:41641")))
        })
        .expect("path follows the peer");
    assert!(took <= secs(5), "took {took:?}");
}

#[test]
fn with_no_relay_map_peers_are_probed_directly_as_before() {
    let mut sim = two(Nat::None, Nat::None, false);
    sim.link(0, 1);
    let kb = sim.nodes[1].key;
    assert_eq!(sim.path(0, 1), None, "nothing to send through yet");
    sim.run_for(secs(1));
    assert_eq!(sim.path(0, 1), Some(Path::Direct(addr("198.18.1.1:41641"))));
    // b goes away: no path (there is nothing to fall back to)...
    sim.nodes[1].udp_blocked = true;
    let took = sim
        .run_until_cond(secs(10), |s| s.path(0, 1).is_none())
        .unwrap();
    assert!(took <= secs(5));
    // ...probing goes on at the discovery pace, and finds b again.
    assert!(matches!(
        sim.nodes[0].disco.peer_status(&kb).unwrap().state,
        PathState::Probing { .. }
    ));
    sim.run_for(secs(60));
    sim.nodes[1].udp_blocked = false;
    let took = sim
        .run_until_cond(secs(10), |s| s.path(0, 1).is_some())
        .unwrap();
    assert!(took <= secs(5), "took {took:?}");
    // Only direct UDP, never a relay or a CallMeMaybe.
    for n in &sim.nodes {
        for (_, t) in &n.sent {
            assert!(
                matches!(
                    t,
                    weft_disco::Transmit::Disco {
                        to: weft_disco::Destination::Udp(_),
                        ..
                    }
                ),
                "{t:?}"
            );
        }
    }
    assert_eq!(
        sim.nodes[0]
            .paths(&kb)
            .iter()
            .map(|(_, p)| p.is_some())
            .collect::<Vec<_>>(),
        vec![true, false, true]
    );
}

#[test]
fn a_peer_that_learns_of_us_a_moment_later_confirms_the_path_within_a_round_trip() {
    // A new node learns of its peer before the peer learns of it: its first
    // pings arrive while it is a stranger and are dropped. The peer's own
    // ping a moment later must get a ping back at once, not at the next
    // discovery round seconds later (that cost a new node's first packet 3 s).
    let mut sim = two(Nat::None, Nat::None, false);
    sim.introduce(0, 1);
    sim.run_for(Duration::from_millis(250));
    assert_eq!(sim.path(0, 1), None, "b dropped a's pings");
    sim.link(0, 1);
    let took = sim
        .run_until_cond(secs(5), |s| {
            s.path(0, 1).is_some() && s.path(1, 0).is_some()
        })
        .unwrap();
    assert!(took < Duration::from_millis(100), "took {took:?}");
}

#[test]
fn a_peer_without_a_home_relay_is_probed_directly() {
    let mut sim = two(Nat::None, Nat::None, true);
    // Control does not know b's home relay (an old client, say).
    let (kb, db) = (sim.nodes[1].key, sim.nodes[1].disco.public_key());
    let now = sim.now;
    sim.nodes[0]
        .disco
        .upsert_peer(kb, db, [addr("198.18.1.1:41641")], None, now);
    assert_eq!(sim.path(0, 1), None);
    // A home relay outside our relay map is no relay either.
    sim.nodes[0].disco.upsert_peer(
        kb,
        db,
        [addr("198.18.1.1:41641")],
        Some(weft_disco::RegionId(9)),
        now,
    );
    assert_eq!(sim.path(0, 1), None);
    sim.link(0, 1);
    sim.run_for(secs(1));
    assert!(matches!(sim.path(0, 1), Some(Path::Direct(_))));
}

#[test]
fn two_easy_nats_punch_through_to_each_others_public_address() {
    let mut sim = two(easy("198.19.0.1"), easy("198.19.1.1"), true);
    sim.link(0, 1);
    let took = sim
        .run_until_cond(secs(5), |s| {
            s.path(0, 1) == Some(Path::Direct(addr("198.19.1.1:41641")))
                && s.path(1, 0) == Some(Path::Direct(addr("198.19.0.1:41641")))
        })
        .expect("direct across two easy NATs");
    assert!(took <= secs(1), "took {took:?}");
}

#[test]
fn a_hard_nat_is_reached_directly_from_a_node_without_nat() {
    let mut sim = two(Nat::None, hard("198.19.1.1"), true);
    sim.link(0, 1);
    sim.run_until_cond(secs(5), |s| {
        matches!(s.path(0, 1), Some(Path::Direct(_)))
            && matches!(s.path(1, 0), Some(Path::Direct(_)))
    })
    .expect("direct within 5 s");
    // a reaches b at the port b's NAT opened towards a.
    let Some(Path::Direct(to_b)) = sim.path(0, 1) else {
        unreachable!()
    };
    assert_eq!(to_b.ip(), "198.19.1.1".parse::<std::net::IpAddr>().unwrap());
    assert_ne!(to_b.port(), PORT);
}

#[test]
fn two_hard_nats_stay_on_the_relay_from_the_first_packet_and_probe_quietly() {
    let mut sim = two(hard("198.19.0.1"), hard("198.19.1.1"), true);
    let linked = sim.now;
    sim.link(0, 1);
    let ka = sim.nodes[0].key;
    let kb = sim.nodes[1].key;
    sim.run_for(secs(300));
    // The path was the relay from the start and never changed.
    assert_eq!(
        sim.nodes[0].paths(&kb),
        vec![(linked, Some(Path::Relay(REGION)))]
    );
    assert_eq!(
        sim.nodes[1].paths(&ka),
        vec![(linked, Some(Path::Relay(REGION)))]
    );
    // Pings go through the relay (`weft ping` says via relay(1)).
    let PingOutcome::Pong { path, rtt } = ping(&mut sim, 0, 1) else {
        panic!("no pong")
    };
    assert_eq!(path, Path::Relay(REGION));
    assert_eq!(rtt, Duration::from_millis(50));
    // Probing pauses between windows: after the first window, minutes
    // pass with silence, not a ping every few seconds.
    let sent: Vec<Duration> = sim.nodes[0]
        .udp_disco_sent()
        .iter()
        .map(|(t, _)| *t - linked)
        .collect();
    let longest_gap = sent.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(longest_gap >= secs(45), "gaps too short: {sent:?}");
    assert!(sent.len() <= 60, "{} UDP pings in 5 min", sent.len());
}

#[test]
fn an_asked_ping_reports_the_relay_until_the_path_is_direct() {
    let mut sim = two(Nat::None, Nat::None, true);
    // b does not answer UDP at first (its firewall), so the first ping is
    // answered through the relay.
    sim.nodes[1].udp_blocked = true;
    sim.link(0, 1);
    let PingOutcome::Pong { path, .. } = ping(&mut sim, 0, 1) else {
        panic!("no pong")
    };
    assert_eq!(path, Path::Relay(REGION));
    sim.nodes[1].udp_blocked = false;
    // The next ping wakes probing if it settled; a few later it is direct.
    let mut last = path;
    for _ in 0..6 {
        let PingOutcome::Pong { path, .. } = ping(&mut sim, 0, 1) else {
            panic!("no pong")
        };
        last = path;
        if matches!(path, Path::Direct(_)) {
            break;
        }
    }
    assert_eq!(last, Path::Direct(addr("198.18.1.1:41641")));
}
