//! netcheck and the home relay through `Disco`: STUN endpoints, hard NAT
//! detection, UDP blocked (relay only, quiet retries), relay latency.

use std::time::Duration;

use weft_disco::{
    Disco, Event, Path, PingOutcome, RegionId, RelayRegionInfo, Report, Transmit,
    netcheck::UDP_RETRY_MAX,
};
use weft_types::{DiscoPrivate, EndpointKind, NodePrivate};

use crate::sim::{Nat, REGION, Sim, addr, t0};

fn reports(sim: &Sim, i: usize) -> Vec<Report> {
    sim.nodes[i]
        .events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Netcheck(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn two_stun_servers() -> Sim {
    let mut sim = Sim::new(true);
    sim.stun = vec![
        (REGION, addr("198.19.100.1:3478")),
        (REGION, addr("198.19.100.2:3478")),
    ];
    sim
}

#[test]
fn an_easy_nat_advertises_its_public_address() {
    let mut sim = two_stun_servers();
    let i = sim.add(
        "198.18.0.1",
        Nat::Easy {
            public: "198.19.0.1".parse().unwrap(),
        },
    );
    sim.run_for(Duration::from_secs(1));
    let r = reports(&sim, i).remove(0);
    assert!(r.udp);
    assert_eq!(r.global_v4, Some(addr("198.19.0.1:41641")));
    assert_eq!(r.mapping_varies_by_dest_ip, Some(false));
    assert_eq!(r.preferred_region, Some(REGION));
    assert_eq!(r.region_latency[&REGION], Duration::from_millis(20));
    let eps: Vec<_> = sim.nodes[i]
        .disco
        .endpoints()
        .iter()
        .map(|e| (e.addr, e.kind))
        .collect();
    assert_eq!(
        eps,
        vec![
            (addr("198.18.0.1:41641"), EndpointKind::Local),
            (addr("198.19.0.1:41641"), EndpointKind::Stun),
        ]
    );
}

#[test]
fn a_hard_nat_is_detected_and_advertised_with_a_local_port_guess() {
    let mut sim = two_stun_servers();
    let i = sim.add(
        "198.18.0.1",
        Nat::Hard {
            public: "198.19.0.1".parse().unwrap(),
        },
    );
    sim.run_for(Duration::from_secs(1));
    let r = reports(&sim, i).remove(0);
    assert_eq!(r.mapping_varies_by_dest_ip, Some(true));
    let stun: Vec<_> = sim.nodes[i]
        .disco
        .endpoints()
        .iter()
        .filter(|e| e.kind != EndpointKind::Local)
        .map(|e| (e.addr, e.kind))
        .collect();
    assert_eq!(stun.len(), 2, "{stun:?}");
    assert_eq!(stun[0].1, EndpointKind::Stun);
    assert_eq!(
        stun[0].0.ip(),
        "198.19.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(
        stun[1],
        (addr("198.19.0.1:41641"), EndpointKind::Stun4LocalPort)
    );
}

#[test]
fn with_udp_blocked_a_node_goes_relay_only_quietly_and_retries_with_backoff() {
    let mut sim = Sim::new(true);
    let a = sim.add("198.18.0.1", Nat::None);
    let b = sim.add("198.18.1.1", Nat::None);
    // b's site drops all UDP.
    sim.nodes[b].udp_blocked = true;
    sim.run_for(Duration::from_secs(4));
    let r = reports(&sim, b).remove(0);
    assert!(!r.udp);
    assert_eq!(r.global_v4, None);
    assert_eq!(r.udp_retry_in, Some(Duration::from_secs(30)));
    assert!(sim.nodes[b].disco.udp_blocked());
    // Without any latency b still picks a home relay, so peers reach it.
    assert_eq!(sim.home_of(b), Some(REGION));
    assert_eq!(r.preferred_region, Some(REGION));

    let reported = sim.now;
    sim.link(a, b);
    sim.run_for(Duration::from_secs(600));
    // b: the relay from the first packet, and UDP (STUN, and one ping to
    // the peer's endpoints) only when netcheck retries on its backoff
    // schedule: at most once in 30 s, 1, 2, 4 then 5 minutes.
    let ka = sim.nodes[a].key;
    assert_eq!(
        sim.nodes[b].paths(&ka),
        vec![(reported, Some(Path::Relay(REGION)))]
    );
    let report_times: Vec<std::time::Instant> = sim.nodes[b]
        .events
        .iter()
        .filter(|(_, e)| matches!(e, Event::Netcheck(_)))
        .map(|(t, _)| *t)
        .collect();
    let pings = sim.nodes[b].udp_disco_sent();
    assert!(!pings.is_empty());
    assert!(
        pings.iter().all(|(t, _)| report_times.contains(t)),
        "{pings:?} {report_times:?}"
    );
    let stun_runs: Vec<Duration> = sim.nodes[b]
        .sent
        .iter()
        .filter(|(_, t)| matches!(t, Transmit::Stun { .. }))
        .map(|(t, _)| *t - sim.start)
        .collect();
    assert!(stun_runs.len() <= 3 * 7, "{stun_runs:?}");
    let waits: Vec<u64> = reports(&sim, b)
        .iter()
        .map(|r| r.udp_retry_in.unwrap().as_secs())
        .collect();
    assert_eq!(waits[..4], [30, 60, 120, 240]);
    // a reaches b through the relay.
    assert_eq!(sim.path(a, b), Some(Path::Relay(REGION)));
    let now = sim.now;
    let kb = sim.nodes[b].key;
    let id = sim.nodes[a]
        .disco
        .ping(&kb, Duration::from_secs(5), now)
        .unwrap();
    sim.run_for(Duration::from_secs(1));
    assert!(sim.nodes[a].events.iter().any(|(_, e)| matches!(
        e,
        Event::Ping { id: got, outcome: PingOutcome::Pong { path: Path::Relay(REGION), .. }, .. }
            if *got == id
    )));

    // The firewall opens: the next retry finds UDP and the path goes
    // direct.
    sim.nodes[b].udp_blocked = false;
    let took = sim
        .run_until_cond(UDP_RETRY_MAX + Duration::from_secs(10), |s| {
            matches!(s.path(b, a), Some(Path::Direct(_)))
        })
        .expect("direct once UDP works");
    assert!(took <= UDP_RETRY_MAX + Duration::from_secs(5));
    assert!(!sim.nodes[b].disco.udp_blocked());
}

#[test]
fn relay_latency_and_connection_state_choose_the_home_relay() {
    let now = t0();
    let key = NodePrivate::from_bytes([1; 32]).public();
    let mut d = Disco::new(DiscoPrivate::from_bytes([101; 32]), key, [1; 32]);
    let (r1, r2) = (RegionId(1), RegionId(2));
    d.set_relay_map(
        [
            RelayRegionInfo {
                id: r1,
                stun: Vec::new(),
            },
            RelayRegionInfo {
                id: r2,
                stun: Vec::new(),
            },
        ],
        now,
    );
    let homes = |d: &mut Disco| -> Vec<Option<RegionId>> {
        std::iter::from_fn(|| d.poll_event())
            .filter_map(|e| match e {
                Event::HomeRelayChanged { region } => Some(region),
                _ => None,
            })
            .collect()
    };
    assert!(!d.netcheck_now(now), "no STUN servers: no netcheck");
    // Nothing will measure the regions over UDP: one is taken at once, and
    // the first latency measured over a relay connection replaces it.
    assert_eq!(homes(&mut d), vec![Some(r1)]);
    d.handle_relay_latency(r2, Duration::from_millis(40), now);
    assert_eq!(homes(&mut d), vec![Some(r2)]);
    // r1 is measured faster, a little: no move.
    let mut t = now;
    for _ in 0..5 {
        t += Duration::from_secs(10);
        d.handle_relay_latency(r1, Duration::from_millis(35), t);
        d.handle_relay_latency(r2, Duration::from_millis(40), t);
    }
    assert_eq!(homes(&mut d), vec![]);
    // r2's connection drops: r1 at once.
    d.handle_relay_connection(r2, false, t);
    assert_eq!(homes(&mut d), vec![Some(r1)]);
    assert_eq!(d.home_relay(), Some(r1));
}

#[test]
fn a_stun_outage_neither_makes_a_node_with_direct_paths_relay_only_nor_drops_its_public_address() {
    let mut sim = Sim::new(true);
    let easy = |ip: &str| Nat::Easy {
        public: ip.parse().unwrap(),
    };
    let a = sim.add("198.18.0.1", easy("198.19.0.1"));
    let b = sim.add("198.18.1.1", easy("198.19.1.1"));
    sim.run_for(Duration::from_secs(1));
    sim.link(a, b);
    sim.run_for(Duration::from_secs(2));
    assert!(matches!(sim.path(a, b), Some(Path::Direct(_))));
    let endpoints = sim.nodes[a].disco.endpoints().to_vec();
    let seen = sim.nodes[a].events.len();
    // The STUN server stops answering (the packets go nowhere).
    sim.stun.clear();
    sim.run_for(Duration::from_secs(120));
    assert!(reports(&sim, a).iter().any(|r| !r.udp));
    assert!(
        !sim.nodes[a].disco.udp_blocked(),
        "direct paths prove UDP works"
    );
    assert!(matches!(sim.path(a, b), Some(Path::Direct(_))));
    assert_eq!(sim.nodes[a].disco.endpoints(), &endpoints[..]);
    assert!(
        !sim.nodes[a].events[seen..]
            .iter()
            .any(|(_, e)| matches!(e, Event::EndpointsChanged { .. })),
        "no endpoint churn"
    );
}

#[test]
fn moving_to_a_network_that_blocks_udp_drops_the_old_public_address() {
    let mut sim = Sim::new(true);
    let a = sim.add(
        "198.18.0.1",
        Nat::Easy {
            public: "198.19.0.1".parse().unwrap(),
        },
    );
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.nodes[a].disco.endpoints().len(), 2);
    sim.nodes[a].udp_blocked = true;
    sim.move_node(a, "198.18.0.21", Nat::None);
    sim.run_for(Duration::from_secs(5));
    let eps: Vec<_> = sim.nodes[a]
        .disco
        .endpoints()
        .iter()
        .map(|e| e.addr)
        .collect();
    assert_eq!(eps, vec![addr("198.18.0.21:41641")]);
    assert!(sim.nodes[a].disco.udp_blocked());
}
