//! The data path does not allocate: once a session is up, encapsulating and
//! decapsulating a packet makes no heap allocation on the calling thread.
#![allow(clippy::unwrap_used, clippy::unwrap_in_result, dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

#[path = "device/harness.rs"]
mod harness;

use harness::*;
use weft_wg::{Decapsulated, Encapsulated};

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
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn the_data_path_makes_no_allocation() {
    let mut net = Net::pair();
    net.handshake();
    let (a, b) = (&net.nodes[0].dev, &net.nodes[1].dev);
    let from_a = net.nodes[0].addr;
    let v4 = ipv4_packet(overlay_v4(0), overlay_v4(1), 1, 1400);
    let v6 = ipv6_packet(overlay_v6(0), overlay_v6(1), 2);
    let mut out = vec![0u8; 2048];
    let mut rx = vec![0u8; 2048];
    let mut now = net.now;

    let probe = allocations();
    drop(std::hint::black_box(vec![0u8; 16]));
    assert_eq!(
        allocations() - probe,
        1,
        "the counter sees this thread's allocations"
    );

    let before = allocations();
    for i in 0..1000 {
        now += std::time::Duration::from_micros(10);
        let p = if i % 2 == 0 { &v4 } else { &v6 };
        let Encapsulated::Send { datagram, .. } =
            a.encapsulate(view(p), &mut out, now, &mut |_, _| {})
        else {
            panic!("not sent");
        };
        let Decapsulated::ToTunnel(got) =
            b.decapsulate(from_a, datagram, &mut rx, now, &mut |_, _| {})
        else {
            panic!("not delivered");
        };
        assert_eq!(got.as_bytes(), &p[..]);
    }
    assert_eq!(allocations() - before, 0);
}
