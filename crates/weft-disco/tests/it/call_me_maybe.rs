//! CallMeMaybe: sent through the relay when probing starts (rate limited),
//! answered with pings to every listed endpoint, and refused when spoofed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_disco::{
    CallMeMaybe, Destination, Disco, Message, RegionId, RelayRegionInfo, Sealed, SharedBox,
    Transmit, path::CALL_ME_MAYBE_INTERVAL,
};
use weft_types::{DiscoPrivate, Endpoint, EndpointKind, NodePrivate, NodePublic};

use crate::sim::{addr, t0};

const REGION: RegionId = RegionId(7);

struct Node {
    disco: Disco,
    key: NodePublic,
    disco_private: DiscoPrivate,
}

fn node(n: u8, endpoints: &[&str], now: Instant) -> Node {
    let key = NodePrivate::from_bytes([n; 32]).public();
    let disco_private = DiscoPrivate::from_bytes([n + 100; 32]);
    let mut disco = Disco::new(DiscoPrivate::from_bytes([n + 100; 32]), key, [n; 32]);
    disco.set_relay_map(
        [RelayRegionInfo {
            id: REGION,
            stun: Vec::new(),
        }],
        now,
    );
    let eps = endpoints.iter().map(|e| Endpoint {
        addr: addr(e),
        kind: EndpointKind::Local,
    });
    disco.handle_local_endpoints_changed(41641, eps, now);
    while disco.poll_event().is_some() {}
    Node {
        disco,
        key,
        disco_private,
    }
}

fn introduce(a: &mut Node, b: &Node, b_endpoints: &[&str], now: Instant) {
    let eps: Vec<SocketAddr> = b_endpoints.iter().map(|e| addr(e)).collect();
    a.disco
        .upsert_peer(b.key, b.disco.public_key(), eps, Some(REGION), now);
}

fn transmits(d: &mut Disco) -> Vec<Transmit> {
    std::iter::from_fn(|| d.poll_transmit()).collect()
}

fn udp_targets(ts: &[Transmit]) -> Vec<SocketAddr> {
    let mut v: Vec<SocketAddr> = ts
        .iter()
        .filter_map(|t| match t {
            Transmit::Disco {
                to: Destination::Udp(a),
                ..
            } => Some(*a),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The call-me-maybes among `ts` (opened with the receiver's key).
fn call_me_maybes(ts: &[Transmit], from: &Node, to: &Node) -> Vec<CallMeMaybe> {
    let bx = SharedBox::new(&to.disco_private, &from.disco.public_key());
    ts.iter()
        .filter_map(|t| match t {
            Transmit::Disco {
                to: Destination::Relay { region, node },
                payload,
            } if *region == REGION && *node == to.key => {
                match bx.open(&Sealed::parse(payload).ok()?).ok()? {
                    Message::CallMeMaybe(c) => Some(c),
                    _ => None,
                }
            }
            _ => None,
        })
        .collect()
}

/// Runs `d`'s timers from `from` to `until` with nobody answering;
/// returns every transmit with its time.
fn run_alone(d: &mut Disco, from: Instant, until: Instant) -> Vec<(Instant, Transmit)> {
    let mut out = Vec::new();
    let mut t = from;
    while let Some((next, _)) = d.poll_timeout() {
        if next > until {
            break;
        }
        t = t.max(next);
        d.handle_timeout(t);
        out.extend(transmits(d).into_iter().map(|x| (t, x)));
    }
    out
}

#[test]
fn a_call_me_maybe_goes_through_the_relay_the_moment_probing_starts_and_at_most_every_five_seconds()
{
    let now = t0();
    let mut a = node(1, &["198.18.0.1:41641", "198.19.0.1:41641"], now);
    let b = node(2, &["198.18.1.1:41641"], now);
    introduce(&mut a, &b, &["198.18.1.1:41641", "198.19.1.1:41641"], now);
    a.disco.handle_timeout(now);
    let first = transmits(&mut a.disco);
    // Pings to both of b's endpoints and a CallMeMaybe, all at once.
    assert_eq!(
        udp_targets(&first),
        vec![addr("198.18.1.1:41641"), addr("198.19.1.1:41641")]
    );
    let cmm = call_me_maybes(&first, &a, &b);
    assert_eq!(
        cmm,
        vec![CallMeMaybe {
            endpoints: vec![addr("198.18.0.1:41641"), addr("198.19.0.1:41641")]
        }]
    );
    // Nobody answers. a keeps probing for its window, with a CallMeMaybe per
    // discovery round, then settles on the relay; WireGuard traffic through
    // the relay (reported for every packet) does not make it chatty.
    let mut sent = vec![(now, first)];
    let mut t = now;
    while t < now + Duration::from_secs(120) {
        let next = t + Duration::from_millis(10);
        a.disco.handle_relayed_traffic(&b.key, next);
        for (at, x) in run_alone(&mut a.disco, t, next) {
            sent.push((at, vec![x]));
        }
        t = next;
    }
    let cmm_times: Vec<Duration> = sent
        .iter()
        .filter(|(_, ts)| !call_me_maybes(ts, &a, &b).is_empty())
        .map(|(at, _)| *at - now)
        .collect();
    for w in cmm_times.windows(2) {
        assert!(w[1] - w[0] >= CALL_ME_MAYBE_INTERVAL, "{cmm_times:?}");
    }
    assert!(cmm_times.len() >= 3, "{cmm_times:?}");
    assert!(cmm_times.len() <= 120 / 5 + 1, "{cmm_times:?}");
}

#[test]
fn a_received_call_me_maybe_makes_us_ping_every_listed_endpoint_at_once() {
    let now = t0();
    let mut a = node(1, &["198.18.0.1:41641"], now);
    let mut b = node(
        2,
        &[
            "198.18.1.1:41641",
            "198.19.1.1:41641",
            "198.19.1.1:50000",
            "[fd00::2]:41641",
        ],
        now,
    );
    // a knows b but has no endpoints for it (control has none yet), so it
    // settled on the relay and sends no UDP at all.
    introduce(&mut a, &b, &[], now);
    let quiet = now + Duration::from_secs(20);
    let before = run_alone(&mut a.disco, now, quiet);
    assert!(udp_targets(&before.into_iter().map(|(_, t)| t).collect::<Vec<_>>()).is_empty());

    // b starts probing a and sends a CallMeMaybe through the relay.
    introduce(&mut b, &a, &["198.18.0.1:41641"], quiet);
    b.disco.handle_timeout(quiet);
    let from_b = transmits(&mut b.disco);
    let payload = from_b
        .iter()
        .find_map(|t| match t {
            Transmit::Disco {
                to: Destination::Relay { .. },
                payload,
            } => Some(payload.clone()),
            _ => None,
        })
        .unwrap();
    let arrives = quiet + Duration::from_millis(30);
    a.disco.handle_relay(REGION, b.key, &payload, arrives);
    assert_eq!(a.disco.poll_timeout().unwrap().0, arrives, "due at once");
    a.disco.handle_timeout(arrives);
    assert_eq!(
        udp_targets(&transmits(&mut a.disco)),
        vec![
            addr("198.18.1.1:41641"),
            addr("198.19.1.1:41641"),
            addr("198.19.1.1:50000"),
            addr("[fd00::2]:41641"),
        ]
    );
    // The same CallMeMaybe again at once (a chatty or looping peer) is
    // held back for a second, then answered: rate limited, not lost.
    let again = arrives + Duration::from_millis(200);
    a.disco.handle_relay(REGION, b.key, &payload, again);
    a.disco.handle_timeout(again);
    let held = udp_targets(&transmits(&mut a.disco));
    assert!(held.is_empty(), "{held:?}");
    let (due, _) = a.disco.poll_timeout().unwrap();
    assert_eq!(
        due,
        arrives + weft_disco::path::CALL_ME_MAYBE_ANSWER_INTERVAL
    );
    a.disco.handle_timeout(due);
    assert_eq!(udp_targets(&transmits(&mut a.disco)).len(), 4);
}

#[test]
fn a_spoofed_call_me_maybe_is_ignored_and_counted() {
    let now = t0();
    let mut a = node(1, &["198.18.0.1:41641"], now);
    let b = node(2, &["198.18.1.1:41641"], now);
    introduce(&mut a, &b, &[], now);
    a.disco.handle_timeout(now);
    transmits(&mut a.disco);
    let evil = CallMeMaybe {
        endpoints: vec![addr("198.18.66.6:53")],
    };
    let at = now + Duration::from_secs(1);

    // Mallory seals it with her own key but claims to be b.
    let mallory = DiscoPrivate::from_bytes([66; 32]);
    let forged = SharedBox::new(&mallory, &a.disco.public_key()).seal(
        &b.disco.public_key(),
        [1; 24],
        &Message::CallMeMaybe(evil.clone()),
    );
    a.disco.handle_relay(REGION, b.key, &forged, at);
    assert_eq!(a.disco.stats().unauthenticated, 1);

    // b's real one, but straight over UDP instead of through the relay.
    let real = SharedBox::new(&b.disco_private, &a.disco.public_key()).seal(
        &b.disco.public_key(),
        [2; 24],
        &Message::CallMeMaybe(evil.clone()),
    );
    a.disco.handle_udp(addr("198.18.1.1:41641"), &real, at);
    assert_eq!(a.disco.stats().call_me_maybe_rejected, 1);

    // b's real one, relayed from another node key than b's.
    let c = NodePrivate::from_bytes([3; 32]).public();
    a.disco.handle_relay(REGION, c, &real, at);
    assert_eq!(a.disco.stats().wrong_node_key, 1);

    // Garbage through the relay.
    a.disco
        .handle_relay(REGION, b.key, b"TS\xf0\x9f\x92\xacshort", at);
    assert_eq!(a.disco.stats().malformed, 1);

    // None of it made a ping the listed address.
    a.disco.handle_timeout(at);
    let sent = run_alone(&mut a.disco, at, at + Duration::from_secs(30));
    assert!(
        sent.iter().all(|(_, t)| !matches!(
            t,
            Transmit::Disco { to: Destination::Udp(x), .. } if *x == addr("198.18.66.6:53")
        )),
        "{sent:?}"
    );
}
