//! Two or three devices in memory: handshakes, data, timers and the checks
//! the receiver enforces. Time is virtual.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use weft_wg::session::{KEEPALIVE_TIMEOUT, REKEY_AFTER_TIME, REKEY_ATTEMPT_TIME, REKEY_TIMEOUT};
use weft_wg::{DeviceUpdate, DropReason, TIMER_TICK};

use crate::harness::*;

// --- handshake and data ---

#[test]
fn two_devices_complete_a_handshake_and_exchange_data_both_ways() {
    let mut net = Net::pair();
    net.handshake();

    let there = ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 100);
    assert_eq!(net.send_ip(0, &there), Outcome::Sent);
    let back = ipv6_packet(overlay_v6(1), overlay_v6(0), 2);
    assert_eq!(net.send_ip(1, &back), Outcome::Sent);
    net.pump();

    assert_eq!(net.delivered[1].last(), Some(&there));
    assert_eq!(net.delivered[0].last(), Some(&back));
    assert!(
        net.rx_drops.iter().all(Vec::is_empty),
        "drops: {:?}",
        net.rx_drops
    );
    let peers = net.nodes[0].dev.peers(net.now);
    assert_eq!(peers.len(), 1);
    assert!(peers[0].last_handshake.is_some());
}

#[test]
fn a_packet_queued_during_the_handshake_is_delivered() {
    let mut net = Net::pair();
    let first = ipv4_packet(overlay_v4(0), overlay_v4(1), 10, 40);
    let second = ipv4_packet(overlay_v4(0), overlay_v4(1), 11, 1200);
    assert_eq!(net.send_ip(0, &first), Outcome::Queued);
    assert_eq!(net.send_ip(0, &second), Outcome::Queued);
    // Only one initiation went out for both packets.
    assert_eq!(net.wire.len(), 1);
    assert_eq!(message_type(&net.wire[0].bytes), 1);

    net.pump();

    assert_eq!(net.delivered[1], vec![first, second]);
}

#[test]
fn the_responder_sends_its_queued_packets_once_the_first_transport_message_arrives() {
    let mut net = Net::pair();
    let init = {
        net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
        net.wire.pop_front().unwrap()
    };
    // Node 1 has traffic for node 0 too while the initiation is in flight.
    let reply = ipv4_packet(overlay_v4(1), overlay_v4(0), 2, 8);
    assert_eq!(net.send_ip(1, &reply), Outcome::Queued);
    net.wire.clear(); // node 1's own initiation is lost
    net.deliver(init);
    net.pump();

    assert_eq!(net.delivered[0], vec![reply]);
    assert_eq!(net.delivered[1].len(), 1);
}

// --- timers ---

#[test]
fn rekeys_after_120_seconds() {
    let mut net = Net::pair();
    net.handshake();
    let start = net.now;
    let mut receivers = Vec::new();
    let mut initiation_at = None;
    for second in 1..=130u32 {
        let mark = net.sent.len();
        net.run_for(Duration::from_secs(1), TIMER_TICK);
        if initiation_at.is_none()
            && net
                .sent_by(0, mark)
                .iter()
                .any(|d| message_type(&d.bytes) == 1)
        {
            initiation_at = Some(net.now - start);
        }
        let p = ipv4_packet(overlay_v4(0), overlay_v4(1), second, 64);
        assert_eq!(net.send_ip(0, &p), Outcome::Sent, "second {second}");
        receivers.push(receiver_index(&net.wire.back().unwrap().bytes));
        net.pump();
        assert_eq!(net.delivered[1].last(), Some(&p), "second {second}");
    }
    let at = initiation_at.expect("a new handshake started");
    assert!(
        at >= REKEY_AFTER_TIME && at <= REKEY_AFTER_TIME + Duration::from_secs(2),
        "rekeyed at {at:?}"
    );
    let (first, last) = (receivers[0], *receivers.last().unwrap());
    assert_ne!(first, last, "traffic moved to the new session");
    assert!(
        net.rx_drops.iter().all(Vec::is_empty),
        "drops: {:?}",
        net.rx_drops
    );
}

#[test]
fn retries_the_handshake_after_rekey_timeout_when_the_responder_is_silent() {
    let mut net = Net::pair();
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    assert_eq!(net.wire.drain(..).count(), 1);

    let initiations_until = |net: &mut Net, t: Duration| {
        let mut n = 0;
        let end = net.now + t;
        while net.now < end {
            net.now += TIMER_TICK;
            net.tick();
            n += net
                .wire
                .drain(..)
                .filter(|d| message_type(&d.bytes) == 1)
                .count();
        }
        n
    };
    assert_eq!(
        initiations_until(&mut net, REKEY_TIMEOUT - TIMER_TICK),
        0,
        "no retry before REKEY_TIMEOUT"
    );
    assert_eq!(
        initiations_until(&mut net, TIMER_TICK * 2),
        1,
        "a retry at REKEY_TIMEOUT"
    );
    assert_eq!(
        initiations_until(&mut net, REKEY_TIMEOUT),
        1,
        "and again REKEY_TIMEOUT later"
    );
}

#[test]
fn gives_up_after_rekey_attempt_time_and_starts_again_on_new_traffic() {
    let mut net = Net::pair();
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    let mut initiations = 0;
    let end = net.now + REKEY_ATTEMPT_TIME + Duration::from_secs(30);
    while net.now < end {
        net.now += TIMER_TICK;
        net.tick();
        initiations += net
            .wire
            .drain(..)
            .filter(|d| message_type(&d.bytes) == 1)
            .count();
    }
    // One every REKEY_TIMEOUT until REKEY_ATTEMPT_TIME: 18 retries at most.
    assert!((15..=18).contains(&initiations), "{initiations} retries");
    assert_eq!(net.wire.len(), 0);

    let p = ipv4_packet(overlay_v4(0), overlay_v4(1), 2, 8);
    assert_eq!(net.send_ip(0, &p), Outcome::Queued);
    assert_eq!(net.wire.len(), 1, "a fresh initiation");
    net.pump();
    assert_eq!(
        net.delivered[1],
        vec![p],
        "only the new packet: the old queue was dropped"
    );
}

#[test]
fn traffic_resumes_after_ten_idle_minutes() {
    let mut net = Net::pair();
    net.handshake();
    net.run_for(Duration::from_secs(600), TIMER_TICK);
    for (from, to) in [(0, 1), (1, 0)] {
        let p = ipv4_packet(overlay_v4(from), overlay_v4(to), 3, 8);
        net.send_ip(from, &p);
        net.pump();
        assert_eq!(net.delivered[to].last(), Some(&p));
    }
}

#[test]
fn an_idle_receiver_answers_with_a_keepalive_after_10_seconds() {
    let mut net = Net::pair();
    net.handshake();
    net.run_for(Duration::from_secs(1), TIMER_TICK);
    let mark = net.sent.len();
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    net.pump();
    net.run_for(KEEPALIVE_TIMEOUT + Duration::from_secs(1), TIMER_TICK);
    let keepalives: Vec<_> = net
        .sent_by(1, mark)
        .into_iter()
        .filter(|d| d.bytes.len() == 32)
        .collect();
    assert_eq!(
        keepalives.len(),
        1,
        "one empty transport message from the idle side"
    );
}

#[test]
fn persistent_keepalive_sends_an_empty_packet_every_interval() {
    let mut net = Net::pair();
    net.handshake();
    let mut u = weft_wg::PeerUpdate::new(net.nodes[1].public());
    u.persistent_keepalive = Some(25);
    net.nodes[0].dev.apply(
        DeviceUpdate {
            peers: vec![u],
            ..Default::default()
        },
        net.now,
    );
    let mark = net.sent.len();
    net.run_for(Duration::from_secs(60), TIMER_TICK);
    let sent: Vec<_> = net
        .sent_by(0, mark)
        .into_iter()
        .filter(|d| d.bytes.len() == 32)
        .collect();
    // Turning it on sends one at once, then one every 25 s of quiet: t≈0, 25, 50.
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert_eq!(
        net.nodes[0].dev.peers(net.now)[0].persistent_keepalive,
        Some(25)
    );
}

// --- what the receiver enforces ---

#[test]
fn a_replayed_transport_packet_is_dropped_and_delivered_once() {
    let mut net = Net::pair();
    net.handshake();
    let p = ipv4_packet(overlay_v4(0), overlay_v4(1), 7, 32);
    net.send_ip(0, &p);
    let datagram = net.wire.pop_front().unwrap();
    assert_eq!(net.deliver(datagram.clone()), Outcome::Delivered);
    assert_eq!(
        net.deliver(datagram),
        Outcome::Dropped(DropReason::Replayed)
    );
    assert_eq!(net.delivered[1].iter().filter(|d| **d == p).count(), 1);
    assert_eq!(net.nodes[1].dev.stats().dropped(DropReason::Replayed), 1);
}

#[test]
fn a_packet_with_a_spoofed_inner_source_is_dropped() {
    // Node 2 knows nodes 0 and 1; node 0 sends with node 1's address as source.
    let mut net = Net::new(3);
    for (a, b) in [(0, 2), (2, 0), (1, 2), (2, 1)] {
        net.peer(a, b);
    }
    let honest = ipv4_packet(overlay_v4(0), overlay_v4(2), 1, 8);
    net.send_ip(0, &honest);
    net.pump();
    assert_eq!(net.delivered[2], vec![honest]);

    let spoofed = ipv4_packet(overlay_v4(1), overlay_v4(2), 2, 8);
    assert_eq!(net.send_ip(0, &spoofed), Outcome::Sent);
    let d = net.wire.pop_front().unwrap();
    assert_eq!(net.deliver(d), Outcome::Dropped(DropReason::SpoofedSource));
    assert_eq!(net.delivered[2].len(), 1);
    assert_eq!(
        net.nodes[2].dev.stats().dropped(DropReason::SpoofedSource),
        1
    );
}

#[test]
fn an_initiation_from_an_unknown_key_gets_no_answer() {
    let mut net = Net::new(2);
    net.peer(0, 1); // node 1 does not know node 0
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    let init = net.wire.pop_front().unwrap();
    assert_eq!(net.deliver(init), Outcome::Dropped(DropReason::UnknownPeer));
    assert!(net.wire.is_empty(), "no reply of any kind");
    assert_eq!(net.nodes[1].dev.stats().dropped(DropReason::UnknownPeer), 1);
}

#[test]
fn an_initiation_that_arrives_before_its_sender_is_a_peer_is_answered_once_it_is() {
    // A new node learns of its peer before the peer learns of it.
    let mut net = Net::new(2);
    net.peer(0, 1);
    let first = ipv4_packet(overlay_v4(0), overlay_v4(1), 7, 8);
    assert_eq!(net.send_ip(0, &first), Outcome::Queued);
    net.pump();
    assert_eq!(net.rx_drops[1], vec![DropReason::UnknownPeer]);
    // Timers run on with no answer while the key is unknown.
    net.run_for(TIMER_TICK * 5, TIMER_TICK);
    assert!(net.delivered[1].is_empty());

    let t0 = net.now;
    net.peer(1, 0);
    net.run_for(TIMER_TICK, TIMER_TICK);

    assert_eq!(
        net.delivered[1],
        vec![first],
        "the queued packet arrives at the next tick, not after a {REKEY_TIMEOUT:?} retry"
    );
    assert!(net.now - t0 <= TIMER_TICK);
    // One answer: the replay is not kept for another round.
    net.run_for(TIMER_TICK * 3, TIMER_TICK);
    assert_eq!(net.delivered[1].len(), 1);
}

#[test]
fn a_remembered_initiation_expires_after_rekey_timeout() {
    let mut net = Net::new(2);
    net.peer(0, 1);
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 7, 8));
    let init = net.wire.pop_front().unwrap();
    assert_eq!(net.deliver(init), Outcome::Dropped(DropReason::UnknownPeer));
    // Time passes without node 0's timers (its retry is not what is tested).
    net.now += REKEY_TIMEOUT;
    let mut replies = Vec::new();
    net.nodes[1]
        .dev
        .handle_timeout(net.now, &mut |_, d| replies.push(d.to_vec()));
    net.peer(1, 0);
    net.now += TIMER_TICK;
    net.nodes[1]
        .dev
        .handle_timeout(net.now, &mut |_, d| replies.push(d.to_vec()));
    assert!(replies.is_empty(), "a stale initiation is not answered");
}

#[test]
fn a_peer_roams_to_the_address_of_its_last_authenticated_packet() {
    let mut net = Net::pair();
    net.handshake();
    let new_home = SocketAddr::new(IpAddr::from([198, 19, 7, 7]), 40000);
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    let mut d = net.wire.pop_front().unwrap();
    d.from = new_home;
    assert_eq!(net.deliver(d), Outcome::Delivered);
    assert_eq!(net.nodes[1].dev.peers(net.now)[0].endpoint, Some(new_home));

    // A forged datagram from elsewhere does not move it.
    let mut garbage = vec![4u8, 0, 0, 0];
    garbage.extend_from_slice(&[0u8; 60]);
    let forged = Datagram {
        from: underlay(9),
        to: net.nodes[1].addr,
        bytes: garbage,
    };
    assert!(matches!(net.deliver(forged), Outcome::Dropped(_)));
    assert_eq!(net.nodes[1].dev.peers(net.now)[0].endpoint, Some(new_home));
}

#[test]
fn byte_counters_count_wireguard_datagrams_like_wireguard_go() {
    let mut net = Net::pair();
    net.handshake();
    for i in 0..5 {
        net.send_ip(
            0,
            &ipv4_packet(overlay_v4(0), overlay_v4(1), i, 100 * i as usize),
        );
        net.send_ip(1, &ipv4_packet(overlay_v4(1), overlay_v4(0), i, 10));
    }
    net.pump();
    let sent_by = |i: usize| {
        net.sent
            .iter()
            .filter(|d| d.from == net.nodes[i].addr)
            .map(|d| d.bytes.len() as u64)
            .sum::<u64>()
    };
    let a = &net.nodes[0].dev.peers(net.now)[0];
    let b = &net.nodes[1].dev.peers(net.now)[0];
    assert_eq!(a.tx_bytes, sent_by(0));
    assert_eq!(b.tx_bytes, sent_by(1));
    // Everything either side sent was authenticated by the other.
    assert_eq!(b.rx_bytes, a.tx_bytes);
    assert_eq!(a.rx_bytes, b.tx_bytes);
}

#[test]
fn a_handshake_needs_matching_preshared_keys() {
    let mut net = Net::pair();
    let set_psk = |net: &mut Net, i: usize, psk: [u8; 32]| {
        let mut u = weft_wg::PeerUpdate::new(net.nodes[1 - i].public());
        u.preshared_key = Some(Some(psk));
        net.nodes[i].dev.apply(
            DeviceUpdate {
                peers: vec![u],
                ..Default::default()
            },
            net.now,
        );
    };
    set_psk(&mut net, 0, [1; 32]);
    set_psk(&mut net, 1, [2; 32]);
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    net.pump();
    assert!(net.delivered[1].is_empty());
    assert_eq!(
        net.nodes[0]
            .dev
            .stats()
            .dropped(DropReason::Unauthenticated),
        1,
        "the response fails to verify"
    );

    set_psk(&mut net, 1, [1; 32]);
    net.run_for(REKEY_TIMEOUT + Duration::from_secs(1), TIMER_TICK);
    assert_eq!(
        net.delivered[1].len(),
        1,
        "the retry succeeds and the queued packet follows"
    );
}

#[test]
fn under_a_handshake_flood_peers_get_cookies_and_still_get_through() {
    let mut net = Net::pair();
    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    let init = net.wire.pop_front().unwrap();
    // Replays of one initiation: the device counts each against its limit of
    // 100 handshake messages a second; past that it demands a cookie.
    let flood = |net: &mut Net| -> Vec<Datagram> {
        for _ in 0..101 {
            net.deliver(init.clone());
        }
        net.wire
            .drain(..)
            .filter(|d| message_type(&d.bytes) == 3)
            .collect()
    };
    let cookies = flood(&mut net);
    assert_eq!(cookies.len(), 1, "one cookie reply, for the 101st message");
    assert_eq!(cookies[0].to, net.nodes[0].addr);
    assert_eq!(net.nodes[1].dev.stats().dropped(DropReason::RateLimited), 1);
    assert_eq!(net.nodes[1].dev.stats().dropped(DropReason::Replayed), 99);
    assert_eq!(
        net.deliver(cookies[0].clone()),
        Outcome::Done,
        "node 0 takes the cookie"
    );

    // Node 0 retries with the cookie as MAC2 while node 1 is flooded again.
    let retry = loop {
        net.now += TIMER_TICK;
        net.tick();
        if let Some(d) = net.wire.drain(..).find(|d| message_type(&d.bytes) == 1) {
            break d;
        }
    };
    assert_eq!(flood(&mut net).len(), 1, "still under load");
    net.deliver(retry);
    net.pump();
    assert_eq!(net.delivered[1].len(), 1, "the real peer got through");
}

// --- keys ---

#[test]
fn removing_the_private_key_brings_the_device_down() {
    let mut net = Net::pair();
    net.handshake();
    net.nodes[1].dev.apply(
        DeviceUpdate {
            private_key: Some(None),
            ..Default::default()
        },
        net.now,
    );
    assert_eq!(net.nodes[1].dev.public_key(), None);

    net.send_ip(0, &ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 8));
    assert_eq!(
        net.deliver(net.wire[0].clone()),
        Outcome::Dropped(DropReason::NoPrivateKey)
    );
    assert_eq!(
        net.send_ip(1, &ipv4_packet(overlay_v4(1), overlay_v4(0), 1, 8)),
        Outcome::Dropped(DropReason::NoPrivateKey)
    );
    // Nothing goes out while down, not even timers.
    net.wire.clear();
    net.now += Duration::from_secs(30);
    let mark = net.sent.len();
    net.tick();
    assert!(net.sent_by(1, mark).is_empty());
}

#[test]
fn a_new_private_key_rekeys_sessions_and_drops_a_peer_with_our_own_key() {
    let mut net = Net::pair();
    net.handshake();
    let new_key = key(42);
    // Node 1 takes a new key; node 0 learns it and forgets the old one.
    let old_public = net.nodes[1].public();
    net.nodes[1].dev.apply(
        DeviceUpdate {
            private_key: Some(Some(new_key.clone())),
            ..Default::default()
        },
        net.now,
    );
    net.nodes[1].key = new_key.clone();
    let mut remove = weft_wg::PeerUpdate::new(old_public);
    remove.remove = true;
    net.nodes[0].dev.apply(
        DeviceUpdate {
            peers: vec![remove],
            ..Default::default()
        },
        net.now,
    );
    net.peer(0, 1);

    // Node 1 starts a handshake on its own (it had a live session).
    net.run_for(Duration::from_secs(1), TIMER_TICK);
    let p = ipv4_packet(overlay_v4(0), overlay_v4(1), 5, 8);
    assert_eq!(net.send_ip(0, &p), Outcome::Sent);
    net.pump();
    assert_eq!(net.delivered[1].last(), Some(&p));

    // Giving node 0 node 1's key as its own makes node 0 drop that peer.
    net.nodes[0].dev.apply(
        DeviceUpdate {
            private_key: Some(Some(new_key)),
            ..Default::default()
        },
        net.now,
    );
    assert!(net.nodes[0].dev.peers(net.now).is_empty());
}

// --- concurrency ---

#[test]
fn two_threads_can_drive_one_device_with_skewed_clocks() {
    let mut net = Net::pair();
    net.handshake();
    // Transport messages from node 1, made ahead of time.
    let mut inbound = Vec::new();
    for i in 0..2000u32 {
        net.send_ip(1, &ipv4_packet(overlay_v4(1), overlay_v4(0), i, 200));
        inbound.push(net.wire.pop_back().unwrap());
    }
    let a = &net.nodes[0].dev;
    let base = net.now;
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = vec![0u8; 2048];
            for i in 0..2000u32 {
                let now = base + Duration::from_micros(u64::from(i) * 50);
                let p = ipv4_packet(overlay_v4(0), overlay_v4(1), i, 200);
                let r = a.encapsulate(view(&p), &mut out, now, &mut |_, _| {});
                assert!(matches!(r, weft_wg::Encapsulated::Send { .. }));
            }
        });
        s.spawn(|| {
            let mut out = vec![0u8; 2048];
            let mut delivered = 0;
            for (i, d) in inbound.iter().enumerate() {
                // This thread's clock lags the other by up to 50 ms.
                let now = (base + Duration::from_micros(i as u64 * 50))
                    .checked_sub(Duration::from_millis(50))
                    .unwrap_or(base);
                if let weft_wg::Decapsulated::ToTunnel(_) =
                    a.decapsulate(d.from, &d.bytes, &mut out, now, &mut |_, _| {})
                {
                    delivered += 1;
                }
            }
            assert_eq!(delivered, 2000);
        });
        s.spawn(|| {
            for i in 0..100u64 {
                a.handle_timeout(base + Duration::from_millis(i), &mut |_, _| {});
            }
        });
    });
    assert_eq!(a.stats().total_drops(), 0, "{:?}", a.stats());
}
