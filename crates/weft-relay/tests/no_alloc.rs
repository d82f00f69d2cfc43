//! The packet path does not allocate per packet: a relay server and two
//! clients in this process exchange packets, and the heap allocations of the
//! whole process (server, both clients, the runtime) during a measured run
//! stay far below one per packet. The server reuses its read buffers in
//! place and swaps each connection's queue storage with its writer's; what
//! remains is the client's read chunk: its packets are handed out as `Bytes`
//! slices of it, so a new 256 KiB chunk is allocated each time one is used
//! up (about one per 200 packets of 1,280 bytes).
//!
//! A test binary of its own, not a module of `tests/it`: the counting
//! allocator is process-wide, and the other tests running in parallel in
//! that binary would allocate into its count.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_relay::listen::{self, ListenLimits};
use weft_relay::{
    AdmitAnyKeyInsecure, ClientConfig, Event, RelayClient, RelayConfig, RelayNode, RelayServer,
};
use weft_types::NodePrivate;

/// Counts every allocation of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator; the counter is a static atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const WINDOW: u64 = 64;

/// Sends `n` packets a → b, at most `WINDOW` in flight, and waits for all.
async fn run(
    a: &RelayClient,
    eb: &mut tokio::sync::mpsc::Receiver<Event>,
    dst: &weft_types::NodePublic,
    payload: &[u8],
    n: u64,
) {
    let (mut sent, mut got) = (0u64, 0u64);
    while got < n {
        while sent < n && sent - got < WINDOW {
            a.send(dst, payload).unwrap();
            sent += 1;
        }
        match tokio::time::timeout(Duration::from_secs(10), eb.recv()).await {
            Ok(Some(Event::Packet { data, .. })) => {
                assert_eq!(data.len(), payload.len());
                got += 1;
            }
            Ok(Some(_)) => {}
            other => panic!("packet {got} of {n} did not arrive: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_packets_allocates_per_read_chunk_not_per_packet() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = RelayServer::new(RelayConfig::new(
        NodePrivate::generate(),
        Arc::new(AdmitAnyKeyInsecure),
    ))
    .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(listen::serve(
        listener,
        server.router(),
        None,
        ListenLimits::default(),
        stop.clone(),
    ));
    let node = RelayNode {
        host_name: "127.0.0.1".into(),
        port: addr.port(),
        tls: false,
        addrs: vec![addr],
    };
    let (ka, kb) = (NodePrivate::generate(), NodePrivate::generate());
    let (a, mut ea) = RelayClient::start(ClientConfig::new(ka.clone(), node.clone())).unwrap();
    let (_b, mut eb) = RelayClient::start(ClientConfig::new(kb.clone(), node)).unwrap();
    for ev in [&mut ea, &mut eb] {
        while !matches!(ev.recv().await, Some(Event::Connected { .. })) {}
    }
    let payload = vec![0x42u8; 1280];
    // Warm up: buffers, the routing table, queues and channels reach their
    // steady sizes.
    run(&a, &mut eb, &kb.public(), &payload, 20_000).await;

    const N: u64 = 100_000;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    run(&a, &mut eb, &kb.public(), &payload, N).await;
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - before;
    let per_packet = allocs as f64 / N as f64;
    eprintln!("{allocs} allocations for {N} packets relayed: {per_packet:.4} per packet");
    assert!(
        per_packet < 0.05,
        "{allocs} allocations for {N} packets ({per_packet:.4} per packet)"
    );
    assert_eq!(server.stats().dropped_queue_full, 0);
    stop.cancel();
}
