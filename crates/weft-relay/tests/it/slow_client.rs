//! A client that never reads fills only its own queue: its drops are
//! counted and the other clients keep their pace.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use weft_relay::{AdmitAnyKeyInsecure, RelayConfig};

use super::*;

const PACKET: usize = 1280;
const ROUND_TRIPS: usize = 4000;
const WINDOW: usize = 32;

/// `a` sends `ROUND_TRIPS` packets to `b`, which echoes each back; at most
/// `WINDOW` in flight. Returns the time it took; panics on a lost packet
/// (the wait for it times out).
async fn echo_run(a: &RelayClient, ea: &mut mpsc::Receiver<Event>, b_key: NodePublic) -> Duration {
    let payload = vec![0x5au8; PACKET];
    let start = Instant::now();
    let mut sent = 0;
    while sent < WINDOW {
        a.send(&b_key, &payload).unwrap();
        sent += 1;
    }
    for _ in 0..ROUND_TRIPS {
        let (src, data) = next_packet(ea).await;
        assert_eq!((src, data.len()), (b_key, PACKET));
        if sent < ROUND_TRIPS {
            a.send(&b_key, &payload).unwrap();
            sent += 1;
        }
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_costs_only_itself() {
    let mut config = RelayConfig::new(NodePrivate::generate(), Arc::new(AdmitAnyKeyInsecure));
    config.queue_bytes = 64 * 1024;
    // Keep the stalled client connected for the whole test (by default a
    // client that takes no write for 2 s is disconnected).
    config.write_timeout = Duration::from_secs(60);
    let relay = start_relay(config, None).await;

    let (ka, kb, kc, ks) = (node_key(), node_key(), node_key(), node_key());
    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    let (b, mut eb) = connected(client_config(&relay, &kb)).await;
    let (c, _ec) = connected(client_config(&relay, &kc)).await;
    let mut stalled = RawClient::login(relay.addr, &ks).await;
    assert_eq!(stalled.frame().await.0, 3, "ServerInfo");
    // From here on `stalled` never reads.

    let echo = tokio::spawn(async move {
        loop {
            let (src, data) = next_packet(&mut eb).await;
            b.send(&src, &data).unwrap();
        }
    });

    let baseline = echo_run(&a, &mut ea, kb.public()).await;

    // c floods the stalled client (bounded: 20,000 packets within 10 s)
    // while a and b go again.
    let stalled_key = ks.public();
    let flood = tokio::spawn(async move {
        let payload = vec![0xc3u8; PACKET];
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut sent = 0u32;
        while sent < 20_000 && Instant::now() < deadline {
            if c.send(&stalled_key, &payload).is_ok() {
                sent += 1;
            } else {
                tokio::task::yield_now().await;
            }
        }
        sent
    });
    let under_flood = echo_run(&a, &mut ea, kb.public()).await;
    let flooded = flood.await.unwrap();
    echo.abort();

    let stats = relay.server.stats();
    eprintln!(
        "slow client: baseline {ROUND_TRIPS} round trips in {baseline:?}, with the flood {under_flood:?}; \
         {flooded} packets at the stalled client, relay stats {stats:?}"
    );
    // The stalled client's queue overflowed and its drops were counted...
    assert!(stats.dropped_queue_full > 0, "{stats:?}");
    assert!(stats.queue_overflows >= 1, "{stats:?}");
    // ...it is still connected (nobody was cut off)...
    assert!(relay.server.is_connected(&ks.public()));
    // ...and a and b lost nothing (echo_run waits for every packet) and kept
    // their pace (both runs share two cores with the flood).
    assert!(
        under_flood < baseline * 4 + Duration::from_secs(1),
        "baseline {baseline:?}, under flood {under_flood:?}"
    );
    drop(stalled.stream);
}
