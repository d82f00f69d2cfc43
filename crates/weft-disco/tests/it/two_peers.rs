//! Two disco cores talking in memory, on virtual time, with no relay (a
//! flat network: the paths are direct or none, as before relays existed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_disco::{Destination, Disco, Event, Path, PingOutcome, Transmit, is_disco};
use weft_types::{DiscoPrivate, NodePrivate, NodePublic};

struct Side {
    disco: Disco,
    node: NodePublic,
    addr: SocketAddr,
}

fn side(n: u8, addr: &str) -> Side {
    let node = NodePrivate::from_bytes([n; 32]).public();
    Side {
        disco: Disco::new(DiscoPrivate::from_bytes([n + 100; 32]), node, [n; 32]),
        node,
        addr: addr.parse().unwrap(),
    }
}

fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)] // the test's one base instant
    Instant::now()
}

/// Moves every queued datagram to its destination (or drops it if nobody
/// lives there), until both sides are quiet. Returns how many were delivered.
fn deliver(a: &mut Side, b: &mut Side, now: Instant, latency: Duration) -> usize {
    let mut n = 0;
    loop {
        let mut moved = false;
        while let Some((to, payload)) = a.disco.poll_transmit().map(udp) {
            assert!(is_disco(&payload));
            if to == b.addr {
                b.disco.handle_udp(a.addr, &payload, now + latency);
                n += 1;
            }
            moved = true;
        }
        while let Some((to, payload)) = b.disco.poll_transmit().map(udp) {
            if to == a.addr {
                a.disco.handle_udp(b.addr, &payload, now + latency);
                n += 1;
            }
            moved = true;
        }
        if !moved {
            return n;
        }
    }
}

/// Without a relay map every transmit is a disco datagram over UDP.
fn udp(t: Transmit) -> (SocketAddr, Vec<u8>) {
    match t {
        Transmit::Disco {
            to: Destination::Udp(to),
            payload,
        } => (to, payload),
        other => panic!("unexpected transmit without a relay: {other:?}"),
    }
}

fn events(d: &mut Disco) -> Vec<Event> {
    std::iter::from_fn(|| d.poll_event()).collect()
}

#[test]
fn two_peers_find_the_endpoint_that_answers() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let mut b = side(2, "198.18.0.2:41641");
    let dead: SocketAddr = "198.18.9.9:41641".parse().unwrap();
    let (ad, bd) = (a.disco.public_key(), b.disco.public_key());
    a.disco.upsert_peer(b.node, bd, [dead, b.addr], None, now);
    b.disco.upsert_peer(a.node, ad, [a.addr], None, now);

    a.disco.handle_timeout(now);
    b.disco.handle_timeout(now);
    assert!(deliver(&mut a, &mut b, now, Duration::from_millis(2)) >= 2);
    assert_eq!(
        a.disco.best_addr(&b.node, now + Duration::from_millis(4)),
        Some(b.addr)
    );
    assert!(events(&mut a.disco).contains(&Event::PathChanged {
        peer: b.node,
        path: Some(Path::Direct(b.addr))
    }));
    assert!(events(&mut b.disco).contains(&Event::PathChanged {
        peer: a.node,
        path: Some(Path::Direct(a.addr))
    }));
}

#[test]
fn an_asked_for_ping_reports_its_round_trip_time() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let mut b = side(2, "198.18.0.2:41641");
    let (ad, bd) = (a.disco.public_key(), b.disco.public_key());
    a.disco.upsert_peer(b.node, bd, [b.addr], None, now);
    b.disco.upsert_peer(a.node, ad, [a.addr], None, now);
    let id = a.disco.ping(&b.node, Duration::from_secs(5), now).unwrap();
    a.disco.handle_timeout(now);
    // The pong comes back 3 ms later (b answers at +3 ms, delivered at once).
    while let Some((_, payload)) = a.disco.poll_transmit().map(udp) {
        b.disco.handle_udp(a.addr, &payload, now);
    }
    while let Some((_, payload)) = b.disco.poll_transmit().map(udp) {
        a.disco
            .handle_udp(b.addr, &payload, now + Duration::from_millis(3));
    }
    let got: Vec<_> = events(&mut a.disco)
        .into_iter()
        .filter(|e| matches!(e, Event::Ping { .. }))
        .collect();
    assert_eq!(
        got,
        vec![Event::Ping {
            id,
            peer: b.node,
            outcome: PingOutcome::Pong {
                path: Path::Direct(b.addr),
                rtt: Duration::from_millis(3)
            }
        }]
    );
}

#[test]
fn a_ping_nobody_answers_times_out() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let b = side(2, "198.18.0.2:41641");
    a.disco
        .upsert_peer(b.node, b.disco.public_key(), [b.addr], None, now);
    let id = a.disco.ping(&b.node, Duration::from_secs(2), now).unwrap();
    a.disco.handle_timeout(now);
    a.disco.handle_timeout(now + Duration::from_secs(2));
    assert!(events(&mut a.disco).contains(&Event::Ping {
        id,
        peer: b.node,
        outcome: PingOutcome::Timeout
    }));
    assert_eq!(
        a.disco.ping(
            &NodePrivate::from_bytes([9; 32]).public(),
            Duration::from_secs(1),
            now
        ),
        None
    );
}

#[test]
fn a_stopped_peer_loses_its_path_and_a_restarted_one_is_found_again() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let mut b = side(2, "198.18.0.2:41641");
    a.disco
        .upsert_peer(b.node, b.disco.public_key(), [b.addr], None, now);
    b.disco
        .upsert_peer(a.node, a.disco.public_key(), [a.addr], None, now);
    a.disco.handle_timeout(now);
    deliver(&mut a, &mut b, now, Duration::ZERO);
    assert_eq!(a.disco.best_addr(&b.node, now), Some(b.addr));
    events(&mut a.disco);

    // b goes silent: a's heartbeats go unanswered and the path expires.
    let mut t = now;
    let mut lost = false;
    for _ in 0..100 {
        t += Duration::from_millis(100);
        a.disco.handle_timeout(t);
        while a.disco.poll_transmit().is_some() {}
        if events(&mut a.disco).contains(&Event::PathChanged {
            peer: b.node,
            path: None,
        }) {
            lost = true;
            break;
        }
    }
    assert!(lost, "path should be lost within 10 s");
    assert!(
        t - now <= Duration::from_millis(6600),
        "lost after {:?}",
        t - now
    );

    // b restarts with a new disco key; a learns it from the netmap.
    let mut b2 = side(2, "198.18.0.2:41641");
    b2.disco = Disco::new(DiscoPrivate::from_bytes([77; 32]), b.node, [3; 32]);
    a.disco
        .upsert_peer(b.node, b2.disco.public_key(), [b2.addr], None, t);
    b2.disco
        .upsert_peer(a.node, a.disco.public_key(), [a.addr], None, t);
    a.disco.handle_timeout(t);
    deliver(&mut a, &mut b2, t, Duration::ZERO);
    assert_eq!(a.disco.best_addr(&b.node, t), Some(b2.addr));
}

#[test]
fn a_ping_with_a_forged_node_key_is_not_answered() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let mut b = side(2, "198.18.0.2:41641");
    // a's disco core claims a node key b does not associate with a's disco key.
    a.disco
        .set_node_key(NodePrivate::from_bytes([42; 32]).public());
    a.disco
        .upsert_peer(b.node, b.disco.public_key(), [b.addr], None, now);
    b.disco
        .upsert_peer(a.node, a.disco.public_key(), [a.addr], None, now);
    a.disco.handle_timeout(now);
    let mut sent = 0;
    while let Some((_, payload)) = a.disco.poll_transmit().map(udp) {
        b.disco.handle_udp(a.addr, &payload, now);
        sent += 1;
    }
    assert!(sent > 0);
    assert!(b.disco.poll_transmit().is_none());
    assert_eq!(b.disco.stats().wrong_node_key, sent);
}

#[test]
fn garbage_strangers_and_forged_boxes_are_dropped_and_counted_by_reason() {
    let now = t0();
    let mut a = side(1, "198.18.0.1:41641");
    let mut b = side(2, "198.18.0.2:41641");
    let mut stranger = side(3, "198.18.0.3:41641");
    a.disco
        .upsert_peer(b.node, b.disco.public_key(), [b.addr], None, now);
    stranger
        .disco
        .upsert_peer(b.node, b.disco.public_key(), [b.addr], None, now);
    b.disco
        .upsert_peer(a.node, a.disco.public_key(), [a.addr], None, now);
    a.disco.handle_timeout(now);
    stranger.disco.handle_timeout(now);
    let (_, from_a) = udp(a.disco.poll_transmit().unwrap());
    let (_, from_stranger) = udp(stranger.disco.poll_transmit().unwrap());

    // Magic and nothing else; a stranger's well-sealed ping; a's ping with
    // one byte of the box flipped.
    b.disco.handle_udp(a.addr, &weft_disco::MAGIC, now);
    b.disco.handle_udp(stranger.addr, &from_stranger, now);
    let mut forged = from_a.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    b.disco.handle_udp(a.addr, &forged, now);
    assert!(b.disco.poll_transmit().is_none(), "nothing is answered");
    let counts = |d: &Disco| d.stats().by_reason().map(|(_, n)| n);
    assert_eq!(counts(&b.disco), [1, 1, 1, 0, 0, 0]);
    // The genuine ping still gets its pong and counts nothing.
    b.disco.handle_udp(a.addr, &from_a, now);
    assert!(b.disco.poll_transmit().is_some());
    assert_eq!(counts(&b.disco), [1, 1, 1, 0, 0, 0]);
    assert_eq!(b.disco.stats().by_reason()[2].0, "unauthenticated");
}
