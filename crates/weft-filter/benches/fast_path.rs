//! Measures ns/packet of the filter's hot paths and prints them. Prints
//! only; no assertions on timing.
//!
//! Run with `cargo bench -p weft-filter`.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::*;
use weft_filter::{CompiledFilter, Config, Filter};
use weft_packet::IpPacket;

const PACKETS: u32 = 2_000_000;

fn report(name: &str, n: u32, start: Instant) {
    let ns = start.elapsed().as_nanos() as f64 / f64::from(n);
    println!("{name:<58} {ns:>7.1} ns/packet");
}

/// A filter with `extra` unrelated rules in front of the real ones, so new
/// flows are judged against a realistic index.
fn filter_with(extra: usize) -> Filter {
    let mut rules = Vec::new();
    for i in 0..extra {
        let src = format!("100.65.{}.{}/32", i / 250, i % 250 + 1);
        rules.push(rule(
            &[src.as_str()],
            &[(1000 + i as u16, 1000 + i as u16)],
            &[TCP],
            10,
        ));
    }
    rules.extend(alice_ssh_and_web().rules().iter().cloned());
    let config = Config {
        max_flows: 65_536,
        ..Config::default()
    };
    node_with(config, CompiledFilter::new(&rules))
}

fn main() {
    let base = Instant::now();
    let f = filter_with(200);

    // One established connection alice → this node, both families.
    for (me, alice) in [(ME4, ALICE4), (ME6, ALICE6)] {
        f.inbound(&tcp(alice, me, 50000, 22, SYN), base);
        f.outbound(&tcp(me, alice, 22, 50000, SYN | ACK), base);
    }
    // 10,000 more flows this node opened, spread over peers and ports.
    let peers: Vec<String> = (0..100).map(|i| format!("100.64.1.{}", i + 1)).collect();
    let mut wide = Vec::new();
    for (i, peer) in peers.iter().enumerate() {
        for port in 0..100u16 {
            let sport = 20_000 + port + 100 * i as u16;
            f.outbound(&tcp(ME4, peer, sport, 443, SYN), base);
            f.inbound(&tcp(peer, ME4, 443, sport, SYN | ACK), base);
            wide.push(tcp(peer, ME4, 443, sport, ACK | PSH));
        }
    }
    println!("flows tracked: {}", f.stats().flows);

    let cases: [(&str, Vec<u8>, bool); 4] = [
        (
            "inbound, established TCP, IPv4 (one flow)",
            tcp(ALICE4, ME4, 50000, 22, ACK | PSH),
            true,
        ),
        (
            "inbound, established TCP, IPv6 (one flow)",
            tcp(ALICE6, ME6, 50000, 22, ACK | PSH),
            true,
        ),
        (
            "outbound, established TCP, IPv4 (one flow)",
            tcp(ME4, ALICE4, 22, 50000, ACK | PSH),
            false,
        ),
        (
            "inbound, new TCP SYN refused (202 rules)",
            tcp(BOB4, ME4, 50000, 22, SYN),
            true,
        ),
    ];
    for (name, packet, inbound) in &cases {
        let start = Instant::now();
        for i in 0..PACKETS {
            let now = base + Duration::from_nanos(u64::from(i));
            if *inbound {
                black_box(f.inbound(black_box(packet), now));
            } else {
                black_box(f.outbound(black_box(packet), now));
            }
        }
        report(name, PACKETS, start);
    }

    // The data path hands the filter the view WireGuard's decapsulation
    // built: judging alone, without checking the bytes. The clock goes on
    // from where the first case left the flow (a packet older than its
    // flow's last one takes a slower path).
    for (name, packet) in [
        (
            "inbound view, established TCP, IPv4 (one flow)",
            tcp(ALICE4, ME4, 50000, 22, ACK | PSH),
        ),
        (
            "inbound view, established TCP, IPv6 (one flow)",
            tcp(ALICE6, ME6, 50000, 22, ACK | PSH),
        ),
    ] {
        let view = IpPacket::new(&packet).unwrap();
        let start = Instant::now();
        for i in 0..PACKETS {
            let now = base + Duration::from_nanos(u64::from(PACKETS + i));
            black_box(f.inbound_packet(black_box(&view), now));
        }
        report(name, PACKETS, start);
    }

    let start = Instant::now();
    for i in 0..PACKETS {
        let now = base + Duration::from_nanos(u64::from(i));
        let p = &wide[i as usize % wide.len()];
        black_box(f.inbound(black_box(p), now));
    }
    report(
        "inbound, established TCP, IPv4 (10,000 flows round-robin)",
        PACKETS,
        start,
    );

    // Admit-and-track: each SYN opens a flow (evicting when full).
    let syns: Vec<Vec<u8>> = (0..65_000u16)
        .map(|p| tcp(ALICE4, ME4, p.max(1), 80, SYN))
        .collect();
    let start = Instant::now();
    for (i, p) in syns.iter().enumerate() {
        black_box(f.inbound(black_box(p), base + Duration::from_nanos(i as u64)));
    }
    report(
        "inbound, new TCP SYN admitted (flow inserted)",
        syns.len() as u32,
        start,
    );

    let s = f.stats();
    println!(
        "check: {} new flows admitted, {} dropped, {} evicted",
        s.accepted_new_flows,
        s.dropped_total(),
        s.flows_evicted
    );
}
