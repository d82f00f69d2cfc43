//! The node's hot path on a policy-compiled filter:
//! `weft_filter::CompiledFilter::allows` must not allocate.
#![allow(clippy::unwrap_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use weft_policy::compile_all;
use weft_types::filter::proto;

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn matching_a_packet_allocates_nothing() {
    let t = common::tailnet();
    let p = common::policy(include_str!("corpus/valid/full_example.hujson"));
    let compiled = compile_all(&p, &t);
    let filter = common::matcher(&compiled, common::id(&t, "server"));
    assert!(!filter.is_empty());
    let packets: Vec<_> = ["100.64.0.1", "100.64.0.3", "100.64.0.11", "10.9.9.9"]
        .iter()
        .flat_map(|s| [22u16, 443, 5432, 9].map(|port| (common::ip(s), port)))
        .collect();
    let dst = common::ip("100.64.0.10");
    let before = ALLOCATIONS.with(Cell::get);
    let mut allowed = 0;
    for (src, port) in &packets {
        for p in [proto::TCP, proto::UDP, proto::ICMP, 47] {
            allowed += usize::from(filter.allows(*src, dst, p, *port).is_some());
        }
    }
    let after = ALLOCATIONS.with(Cell::get);
    assert_eq!(after - before, 0, "allows() allocated");
    assert!(allowed > 0, "the probe set exercises matches too");
}
