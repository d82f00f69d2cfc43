//! The data path does not allocate: judging packets of known flows, opening
//! new flows into a full table (evicting), fragments, ICMP errors, drops and
//! sweeps make no heap allocation on the calling thread once the filter is
//! built.
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Duration;

use common::*;
use weft_filter::{CompiledFilter, Config};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; the counter is a const-initialised
// thread-local `Cell`, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn judging_packets_makes_no_allocation_once_the_filter_is_built() {
    let config = Config {
        max_flows: 256,
        shards: 4,
        max_fragments: 8,
        ..Config::default()
    };
    let rules: Vec<_> = alice_ssh_and_web()
        .rules()
        .iter()
        .chain(udp_service().rules())
        .cloned()
        .collect();
    let f = node_with(config, CompiledFilter::new(&rules));
    let mut now = t0();

    // Every packet is built before counting starts.
    let syn = tcp(ALICE4, ME4, 50000, 22, SYN);
    let syn_ack = tcp(ME4, ALICE4, 22, 50000, SYN | ACK);
    let data_in = tcp(ALICE4, ME4, 50000, 22, ACK | PSH);
    let data_out = tcp(ME4, ALICE4, 22, 50000, ACK | PSH);
    let churn: Vec<Vec<u8>> = (0..2000)
        .map(|i| udp(BOB6, ME6, 10_000 + i, 5000))
        .collect();
    let own: Vec<Vec<u8>> = (0..2000).map(|i| udp(ME4, BOB4, 30_000 + i, 53)).collect();
    let first = ipv4_frag(
        ip(ALICE4),
        ip(ME4),
        UDP,
        (9, 0, true),
        &udp_datagram(40000, 5000, &[0; 8]),
    );
    let rest = ipv4_frag(ip(ALICE4), ip(ME4), UDP, (9, 2, false), &[0; 16]);
    let error = too_big(BOB4, ME4, &data_out);
    let refused = tcp(BOB4, ME4, 50000, 22, SYN);
    let garbage = vec![0x45u8, 0, 0, 99];

    let probe = allocations();
    drop(std::hint::black_box(vec![0u8; 16]));
    assert_eq!(
        allocations() - probe,
        1,
        "the counter sees this thread's allocations"
    );

    let before = allocations();
    assert!(f.inbound(&syn, now).is_accept());
    f.outbound(&syn_ack, now);
    for i in 0..2000 {
        now += Duration::from_micros(50);
        assert!(f.inbound(&data_in, now).is_accept());
        f.outbound(&data_out, now);
        // New flows both ways into a full table: evictions every time.
        f.inbound(&churn[i], now);
        f.outbound(&own[i], now);
        if i % 100 == 0 {
            f.inbound(&first, now);
            f.inbound(&rest, now);
            f.inbound(&error, now);
            f.inbound(&refused, now);
            f.inbound(&garbage, now);
            f.handle_timeout(now + Duration::from_secs(61));
        }
    }
    assert_eq!(allocations() - before, 0, "allocations on the data path");
    let s = f.stats();
    assert!(s.flows_evicted > 1000, "the table really churned: {s:?}");
}
