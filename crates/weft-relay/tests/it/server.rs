//! The server and client drivers together, on loopback.

use std::sync::Arc;
use std::time::Duration;

use weft_relay::proto::frame::PeerGoneReason;
use weft_relay::{
    AdmitAnyKeyInsecure, AllowedKeys, Event, RelayClient, RelayConfig, RelayNode, Restarting,
};

use super::*;

fn open_config() -> RelayConfig {
    RelayConfig::new(NodePrivate::generate(), Arc::new(AdmitAnyKeyInsecure))
}

#[tokio::test]
async fn two_clients_exchange_packets_both_ways() {
    let relay = start_relay(open_config(), None).await;
    let (ka, kb) = (node_key(), node_key());
    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    let (b, mut eb) = connected(client_config(&relay, &kb)).await;
    assert_eq!(a.server_key(), Some(relay.server.public_key()));

    for i in 0..100u32 {
        a.send(&kb.public(), &i.to_be_bytes()).unwrap();
    }
    for i in 0..100u32 {
        let (src, data) = next_packet(&mut eb).await;
        assert_eq!(src, ka.public());
        assert_eq!(&data[..], &i.to_be_bytes(), "in order");
    }
    b.send(&ka.public(), b"back").unwrap();
    assert_eq!(
        next_packet(&mut ea).await,
        (kb.public(), Bytes::from_static(b"back"))
    );
    let s = relay.server.stats();
    assert_eq!((s.packets_in, s.accepts), (101, 2));
    assert!(relay.server.is_connected(&ka.public()));
}

#[tokio::test]
async fn a_client_over_tls_trusts_a_private_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path(), "relay.test");
    let tls = weft_relay::tls::server_config(
        &dir.path().join("relay.test.crt"),
        &dir.path().join("relay.test.key"),
    )
    .unwrap();
    let relay = start_relay(open_config(), Some(tls)).await;
    let node = RelayNode {
        host_name: "relay.test".into(),
        port: relay.addr.port(),
        tls: true,
        addrs: vec![relay.addr],
    };
    let (ka, kb) = (node_key(), node_key());
    let mut ca = ClientConfig::new(ka.clone(), node.clone());
    ca.ca_file = Some(dir.path().join("ca.pem"));
    let (a, _ea) = connected(ca).await;
    let mut cb = ClientConfig::new(kb.clone(), node.clone());
    cb.ca_file = Some(dir.path().join("ca.pem"));
    let (_b, mut eb) = connected(cb).await;
    a.send(&kb.public(), b"over tls").unwrap();
    assert_eq!(
        next_packet(&mut eb).await.1,
        Bytes::from_static(b"over tls")
    );

    // Without the CA file the certificate is not trusted: no login.
    let (untrusting, mut eu) = RelayClient::start(ClientConfig::new(node_key(), node)).unwrap();
    let ev = wait_event(&mut eu, |e| matches!(e, Event::Disconnected { .. })).await;
    let Event::Disconnected { error, .. } = ev else {
        unreachable!()
    };
    assert!(error.contains("certificate"), "{error}");
    assert!(!untrusting.is_connected());
}

#[tokio::test]
async fn packets_sent_while_connecting_go_out_after_the_login() {
    let relay = start_relay(open_config(), None).await;
    let (ka, kb) = (node_key(), node_key());
    let (_b, mut eb) = connected(client_config(&relay, &kb)).await;
    // Not waiting for a's login.
    let (a, _ea) = RelayClient::start(client_config(&relay, &ka)).unwrap();
    a.send(&kb.public(), b"early").unwrap();
    assert_eq!(next_packet(&mut eb).await.1, Bytes::from_static(b"early"));
}

#[tokio::test]
async fn a_departed_peer_is_announced_to_who_heard_from_it() {
    let relay = start_relay(open_config(), None).await;
    let (ka, kb) = (node_key(), node_key());
    let (a, _ea) = connected(client_config(&relay, &ka)).await;
    let (_b, mut eb) = connected(client_config(&relay, &kb)).await;
    a.send(&kb.public(), b"hi").unwrap();
    next_packet(&mut eb).await;
    a.close().await;
    let ev = wait_event(&mut eb, |e| matches!(e, Event::PeerGone { .. })).await;
    assert_eq!(
        ev,
        Event::PeerGone {
            peer: ka.public(),
            reason: PeerGoneReason::Disconnected
        }
    );
}

#[tokio::test]
async fn disco_to_an_absent_peer_is_answered_not_here_and_counted() {
    let relay = start_relay(open_config(), None).await;
    let ka = node_key();
    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    let absent = node_key().public();
    let mut disco = weft_disco::MAGIC.to_vec();
    disco.extend_from_slice(&[0; 80]);
    a.send(&absent, &disco).unwrap();
    let ev = wait_event(&mut ea, |e| matches!(e, Event::PeerGone { .. })).await;
    assert_eq!(
        ev,
        Event::PeerGone {
            peer: absent,
            reason: PeerGoneReason::NotHere
        }
    );
    // A WireGuard packet to it is dropped silently (but counted).
    a.send(&absent, &[4, 0, 0, 0, 1, 2, 3]).unwrap();
    tokio::time::timeout(WAIT, async {
        while relay.server.stats().dropped_unknown_dest < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn ping_measures_the_round_trip_to_the_relay() {
    let relay = start_relay(open_config(), None).await;
    let (a, _ea) = connected(client_config(&relay, &node_key())).await;
    let rtt = a.ping(WAIT).await.unwrap();
    assert!(rtt < Duration::from_secs(1), "{rtt:?}");
}

#[tokio::test]
async fn a_key_the_admission_refuses_is_refused_at_login_with_a_reason() {
    let allowed = AllowedKeys::new();
    let (ka, stranger) = (node_key(), node_key());
    allowed.allow(ka.public());
    let relay = start_relay(
        RelayConfig::new(NodePrivate::generate(), Arc::new(allowed)),
        None,
    )
    .await;
    let (_a, _ea) = connected(client_config(&relay, &ka)).await;

    let (s, mut es) = RelayClient::start(client_config(&relay, &stranger)).unwrap();
    let ev = wait_event(&mut es, |e| matches!(e, Event::Health { .. })).await;
    assert_eq!(
        ev,
        Event::Health {
            problem: Some("this node key is not admitted to this relay".into())
        }
    );
    wait_event(&mut es, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(!s.is_connected());
    assert!(!relay.server.is_connected(&stranger.public()));
    assert!(relay.server.stats().refused_not_admitted >= 1);
}

#[tokio::test]
async fn revoking_a_key_closes_all_its_connections_at_once() {
    let allowed = AllowedKeys::new();
    let (ka, kb) = (node_key(), node_key());
    allowed.allow(ka.public());
    allowed.allow(kb.public());
    let relay = start_relay(
        RelayConfig::new(NodePrivate::generate(), Arc::new(allowed.clone())),
        None,
    )
    .await;
    // Two connections of a (a reconnecting laptop), and b.
    let mut a_raw = RawClient::login(relay.addr, &ka).await;
    assert_eq!(a_raw.frame().await.0, 3, "ServerInfo");
    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    let (b, mut eb) = connected(client_config(&relay, &kb)).await;
    a.send(&kb.public(), b"x").unwrap();
    next_packet(&mut eb).await;

    allowed.disallow(&ka.public());
    let started = tokio::time::Instant::now();
    assert_eq!(relay.server.revoke(&ka.public()), 2);
    // Both connections end at once, each told why.
    let frames = a_raw.frames_until_closed().await;
    assert!(
        frames
            .iter()
            .any(|(t, p)| *t == 0x14 && p.starts_with(b"this node key is no longer admitted")),
        "{frames:?}"
    );
    wait_event(&mut ea, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    // b hears that a is gone; a cannot come back.
    wait_event(&mut eb, |e| matches!(e, Event::PeerGone { .. })).await;
    wait_event(
        &mut ea,
        |e| matches!(e, Event::Health { problem: Some(p) } if p.contains("not admitted")),
    )
    .await;
    assert!(!relay.server.is_connected(&ka.public()));
    assert_eq!(relay.server.stats().revocations, 2);
    assert!(b.is_connected());
}

/// Answers its first check with what the set held when asked, but only once
/// the test lets it go (a slow control); later checks answer at once.
struct SlowFirstAnswer {
    allowed: AllowedKeys,
    asked: tokio::sync::Notify,
    release: tokio::sync::Notify,
    first: std::sync::atomic::AtomicBool,
}

impl weft_relay::Admission for SlowFirstAnswer {
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> weft_relay::admission::VerifyFuture<'a> {
        let answer: std::collections::BTreeSet<NodePublic> = keys
            .iter()
            .filter(|k| self.allowed.contains(k))
            .copied()
            .collect();
        let first = self.first.swap(false, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if first {
                self.asked.notify_one();
                self.release.notified().await;
            }
            Ok(answer)
        })
    }
}

#[tokio::test]
async fn a_key_revoked_while_admission_answers_does_not_get_in() {
    let allowed = AllowedKeys::new();
    let ka = node_key();
    allowed.allow(ka.public());
    let admission = Arc::new(SlowFirstAnswer {
        allowed: allowed.clone(),
        asked: tokio::sync::Notify::new(),
        release: tokio::sync::Notify::new(),
        first: std::sync::atomic::AtomicBool::new(true),
    });
    let relay = start_relay(
        RelayConfig::new(NodePrivate::generate(), admission.clone()),
        None,
    )
    .await;
    let mut raw = RawClient::login(relay.addr, &ka).await;
    tokio::time::timeout(WAIT, admission.asked.notified())
        .await
        .expect("admission asked");
    // The node is removed while admission is still answering "allowed".
    allowed.disallow(&ka.public());
    assert_eq!(relay.server.revoke(&ka.public()), 0, "not registered yet");
    admission.release.notify_one();
    // The stale "allowed" must not let it stay.
    raw.frames_until_closed().await;
    assert!(!relay.server.is_connected(&ka.public()));
    assert_eq!(relay.server.stats().revocations, 1);
}

#[tokio::test]
async fn a_second_connection_of_a_key_takes_over_its_packets() {
    let relay = start_relay(open_config(), None).await;
    let (ka, kb) = (node_key(), node_key());
    let (b, _eb) = connected(client_config(&relay, &kb)).await;
    let (_a1, mut ea1) = connected(client_config(&relay, &ka)).await;
    let (_a2, mut ea2) = connected(client_config(&relay, &ka)).await;
    b.send(&ka.public(), b"to the newest").unwrap();
    assert_eq!(
        next_packet(&mut ea2).await.1,
        Bytes::from_static(b"to the newest")
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), next_packet(&mut ea1))
            .await
            .is_err(),
        "the older connection gets nothing"
    );
}

#[tokio::test]
async fn a_restarting_relay_sends_clients_straight_to_its_successor() {
    // The relay listens on a fixed port; the successor takes it over.
    let relay = start_relay(open_config(), None).await;
    let addr = relay.addr;
    let ka = node_key();
    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    relay
        .server
        .shutdown(
            Some(Restarting {
                reconnect_in: Duration::from_millis(100),
                try_for: Duration::from_secs(5),
            }),
            WAIT,
        )
        .await;
    drop(relay);
    let ev = wait_event(&mut ea, |e| matches!(e, Event::Disconnected { .. })).await;
    let Event::Disconnected { retry_in, .. } = ev else {
        unreachable!()
    };
    assert_eq!(retry_in, Duration::from_millis(100), "the server's advice");
    // The successor on the same port.
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    let next = RelayServer::new(open_config()).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(listen::serve(
        listener,
        next.router(),
        None,
        ListenLimits::default(),
        stop.clone(),
    ));
    let ev = wait_event(&mut ea, |e| matches!(e, Event::Connected { .. })).await;
    assert_eq!(
        ev,
        Event::Connected {
            server_key: next.public_key()
        }
    );
    assert!(a.is_connected());
    stop.cancel();
}

#[tokio::test]
async fn http_routes_answer_like_derper() {
    let relay = start_relay(open_config(), None).await;
    let get = |path: &'static str, extra: &'static str| async move {
        let mut s = TcpStream::connect(relay.addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: r\r\n{extra}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(WAIT, s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&out).into_owned()
    };
    let r = get("/derp", "").await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    let r = get("/derp/probe", "").await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{r}"
    );
    let r = get("/generate_204", "X-Tailscale-Challenge: abc.123\r\n").await;
    assert!(r.starts_with("HTTP/1.1 204"), "{r}");
    assert!(
        r.to_ascii_lowercase()
            .contains("x-tailscale-response: response abc.123"),
        "{r}"
    );
}

#[tokio::test]
async fn the_upgrade_answer_carries_derps_headers() {
    let relay = start_relay(open_config(), None).await;
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /derp HTTP/1.1\r\nHost: r\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        got.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: derp"), "{head}");
    assert!(head.contains("derp-version: 2"), "{head}");
    assert!(
        head.contains(&format!(
            "derp-public-key: {}",
            relay.server.public_key().to_hex()
        )),
        "{head}"
    );
}

#[tokio::test]
async fn garbage_after_login_closes_only_that_connection() {
    let relay = start_relay(open_config(), None).await;
    let (ka, kb) = (node_key(), node_key());
    let (a, _ea) = connected(client_config(&relay, &ka)).await;
    let (_b, mut eb) = connected(client_config(&relay, &kb)).await;

    // A frame announcing 1 GiB.
    let mut bad = RawClient::login(relay.addr, &node_key()).await;
    assert_eq!(bad.frame().await.0, 3);
    bad.stream.write_all(&[0x04, 0x40, 0, 0, 0]).await.unwrap();
    bad.frames_until_closed().await;
    // A mesh frame from a non-mesh client.
    let mut mesh = RawClient::login(relay.addr, &node_key()).await;
    assert_eq!(mesh.frame().await.0, 3);
    mesh.stream.write_all(&[0x10, 0, 0, 0, 0]).await.unwrap();
    mesh.frames_until_closed().await;
    // A login whose box does not open (sealed by another key).
    let mut s = TcpStream::connect(relay.addr).await.unwrap();
    s.write_all(b"GET /derp HTTP/1.1\r\nHost: r\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let mut forged = Frame::ClientInfo {
        key: node_key().public(),
        sealed: &[7u8; 60],
    }
    .to_vec();
    forged.truncate(forged.len());
    s.write_all(&forged).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .unwrap()
        .unwrap();

    // The others never noticed.
    a.send(&kb.public(), b"still here").unwrap();
    assert_eq!(
        next_packet(&mut eb).await.1,
        Bytes::from_static(b"still here")
    );
    let st = relay.server.stats();
    assert!(st.refused_bad_login >= 1, "{st:?}");
}
