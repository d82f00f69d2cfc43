//! Two data threads hammer the filter (inbound and outbound) while a third
//! swaps policies. Afterwards the final policy must hold for every flow —
//! including flows admitted under an old policy while the new one was being
//! installed — and the counters must match what the threads saw.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use common::*;
use weft_filter::{Accept, Config, DropReason, Verdict};

const ROUNDS: u16 = 20_000;
const ALICE_PORTS: u16 = 1000;
const BOB_PORTS: u16 = 500;
/// The control thread swaps until the decrypting thread is done, at most this often.
const MAX_SWAPS: usize = 100_000;

#[test]
fn data_threads_and_a_policy_thread_agree_on_the_final_policy() {
    let config = Config {
        max_flows: 1 << 16,
        ..Config::default()
    };
    let f = Arc::new(node_with(config, alice_ssh_and_web()));
    let base = t0();
    let start = Arc::new(Barrier::new(3));
    let rx_done = Arc::new(AtomicBool::new(false));

    // Decrypting thread: alice opens web connections and sends on them;
    // bob answers this node's UDP flows.
    let rx = {
        let (f, start, done) = (Arc::clone(&f), Arc::clone(&start), Arc::clone(&rx_done));
        thread::spawn(move || {
            start.wait();
            let (mut accepted_new, mut dropped) = (0u64, 0u64);
            for i in 0..ROUNDS {
                let now = base + Duration::from_micros(u64::from(i));
                let sport = 10_000 + i % ALICE_PORTS;
                let packets = [
                    tcp(ALICE4, ME4, sport, 80, SYN),
                    tcp(ALICE4, ME4, sport, 80, ACK | PSH),
                    udp(BOB4, ME4, 53, 20_000 + i % BOB_PORTS),
                ];
                for p in packets {
                    match f.inbound(&p, now) {
                        Verdict::Accept(Accept::NewFlow { .. }) => accepted_new += 1,
                        Verdict::Accept(_) => {}
                        Verdict::Drop(_) => dropped += 1,
                    }
                }
            }
            done.store(true, Ordering::Release);
            (accepted_new, dropped)
        })
    };

    // TUN thread: this node's own UDP flows to bob, and answers to alice.
    let tx = {
        let (f, start) = (Arc::clone(&f), Arc::clone(&start));
        thread::spawn(move || {
            start.wait();
            for i in 0..ROUNDS {
                let now = base + Duration::from_micros(u64::from(i));
                f.outbound(&udp(ME4, BOB4, 20_000 + i % BOB_PORTS, 53), now);
                f.outbound(
                    &tcp(ME4, ALICE4, 80, 10_000 + i % ALICE_PORTS, SYN | ACK),
                    now,
                );
            }
        })
    };

    // Control thread: web allowed, web cut, …, ending with web cut.
    let control = {
        let (f, start, done) = (Arc::clone(&f), Arc::clone(&start), Arc::clone(&rx_done));
        thread::spawn(move || {
            start.wait();
            let mut swaps = 0;
            while !done.load(Ordering::Acquire) && swaps < MAX_SWAPS {
                if swaps % 2 == 0 {
                    f.set_filter(alice_ssh_only());
                } else {
                    f.set_filter(alice_ssh_and_web());
                }
                swaps += 1;
            }
            f.set_filter(alice_ssh_only());
            swaps
        })
    };

    let (accepted_new, dropped) = rx.join().unwrap();
    tx.join().unwrap();
    let swaps = control.join().unwrap();

    let end = base + Duration::from_micros(u64::from(ROUNDS));
    let s = f.stats();
    assert_eq!(s.flows_evicted, 0, "the checks below assume no eviction");
    assert_eq!(s.accepted_new_flows, accepted_new);
    assert_eq!(s.dropped_total(), dropped);
    eprintln!(
        "{swaps} policy swaps; {accepted_new} flows admitted, {} refused, {} revoked",
        s.dropped_for(DropReason::NotAllowed),
        s.flows_revoked
    );

    // Every web connection is cut, however it raced with the swaps…
    for sport in 10_000..10_000 + ALICE_PORTS {
        assert_eq!(
            f.inbound(&tcp(ALICE4, ME4, sport, 80, ACK), end),
            Verdict::Drop(DropReason::NoFlow),
            "web connection from port {sport} survived a policy that cuts it"
        );
    }
    // …and every flow this node opened survived all of them.
    for dport in 20_000..20_000 + BOB_PORTS {
        assert_eq!(
            f.inbound(&udp(BOB4, ME4, 53, dport), end),
            Verdict::Accept(Accept::Flow)
        );
    }
}
