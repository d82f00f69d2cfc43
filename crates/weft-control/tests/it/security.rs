//! Hostile and broken clients: each is refused or dropped, with a logged
//! reason, and the server goes on serving everyone else.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::{TestNode, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use weft_client::{Channel, ClientError, ConnectOptions, Target};
use weft_control_proto::{ChannelConfig, ClientConnection, Connection};
use weft_types::control::{ClientMessage, ErrorCode, KeepAlive, MapRequest};
use weft_types::{CapabilityVersion, DiscoPrivate, HostInfo, MachinePrivate};

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Upgrades and completes the handshake by hand; returns the socket and
/// the client half, ready for records.
async fn raw_channel(t: &TestServer) -> (TcpStream, ClientConnection) {
    let (mut conn, req) = Connection::client(
        &MachinePrivate::generate(),
        &t.server.public_key(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        [7; 32],
        now(),
    )
    .unwrap();
    let (mut tcp, leftover) = weft_client::http::upgrade(&t.url(), &req, Duration::from_secs(5))
        .await
        .unwrap();
    let mut input = leftover.to_vec();
    let mut buf = [0u8; 1024];
    while !conn.is_established() {
        if input.is_empty() {
            let n = tcp.read(&mut buf).await.unwrap();
            assert!(n > 0, "server closed during the handshake");
            input.extend_from_slice(&buf[..n]);
        }
        conn.handle_input(&input, now()).unwrap();
        input.clear();
    }
    (tcp, conn)
}

/// Reads until the server closes the connection; returns how long it took.
async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> Duration {
    let start = now();
    let mut buf = vec![0u8; 65536];
    loop {
        match tokio::time::timeout(limit, tcp.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => {}
            Err(_) => panic!("the server kept the connection open for {limit:?}"),
        }
    }
}

/// A well-behaved node joins and gets its map: the server is still serving.
async fn still_serving(t: &TestServer, key: &str, name: &str) {
    let mut n = TestNode::new(t, name);
    n.join(key).await;
    n.close().await;
}

fn keep_alive_record(conn: &mut ClientConnection) -> Vec<u8> {
    conn.send(&ClientMessage::KeepAlive(KeepAlive {}), now())
        .unwrap();
    conn.poll_transmit().unwrap()
}

#[tokio::test]
async fn forged_and_replayed_records_close_the_connection() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;

    // Forged: a record with one ciphertext bit flipped.
    let (mut tcp, mut conn) = raw_channel(&t).await;
    let mut rec = keep_alive_record(&mut conn);
    let last = rec.len() - 1;
    rec[last] ^= 0x01;
    tcp.write_all(&rec).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    // Replayed: a valid record sent twice.
    let (mut tcp, mut conn) = raw_channel(&t).await;
    let rec = keep_alive_record(&mut conn);
    tcp.write_all(&rec).await.unwrap();
    tcp.write_all(&rec).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    // A record from another session.
    let (_, mut other) = raw_channel(&t).await;
    let (mut tcp, _conn) = raw_channel(&t).await;
    tcp.write_all(&keep_alive_record(&mut other)).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    still_serving(&t, &key, "after-forgery").await;
    let metrics = metrics(&t).await;
    assert!(
        metrics.contains("weft_control_connection_errors_total{reason=\"authentication\"}"),
        "{metrics}"
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_the_connection() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;

    // An unknown frame type.
    let (mut tcp, _conn) = raw_channel(&t).await;
    tcp.write_all(&[0x07, 0x00, 0x01, 0x00]).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    // A record too short to hold a tag.
    let (mut tcp, _conn) = raw_channel(&t).await;
    tcp.write_all(&[0x02, 0x00, 0x03, 1, 2, 3]).await.unwrap();
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    // A message over the server's 64 KiB bound (fragmented over records).
    let (mut tcp, mut conn) = raw_channel(&t).await;
    let huge = HostInfo {
        hostname: "x".repeat(2 << 20),
        ..HostInfo::default()
    };
    conn.send(&ClientMessage::HostInfo(huge), now()).unwrap();
    let bytes = conn.poll_transmit().unwrap();
    // The server stops reading once the limit is passed; ignore write errors.
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&bytes)).await;
    closed_within(&mut tcp, Duration::from_secs(5)).await;

    // A valid record carrying something that is not a client message.
    let target = Target {
        url: t.url(),
        machine_key: MachinePrivate::generate(),
        server_key: t.server.public_key(),
    };
    let mut ch = Channel::connect(&target, &ConnectOptions::default())
        .await
        .unwrap();
    ch.send(ClientMessage::Endpoints(
        weft_types::control::EndpointUpdate {
            endpoints: vec![],
            home_relay: None,
        },
    ))
    .unwrap();
    let err = ch.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(
        err.to_string()
            .contains("only accepted on an open map stream"),
        "{err}"
    );

    still_serving(&t, &key, "after-garbage").await;
    let metrics = metrics(&t).await;
    for reason in ["malformed_frame", "message_too_large"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn truncated_and_unfinished_handshakes_are_dropped() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;

    // Message 1 cut short: refused with the reason in the body.
    let (_, req) = Connection::client(
        &MachinePrivate::generate(),
        &t.server.public_key(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        [1; 32],
        now(),
    )
    .unwrap();
    let mut tcp = TcpStream::connect(t.server.local_addr()).await.unwrap();
    let cut = &req.handshake[..64];
    tcp.write_all(
        format!("POST /control HTTP/1.1\r\nHost: x\r\nUpgrade: weft-control\r\nConnection: Upgrade\r\nX-Weft-Capability: 1\r\nX-Weft-Handshake: {cut}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tcp.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Noise handshake failed"), "{answer}");

    // Upgraded, then gone before the first record.
    let (tcp, _conn) = raw_channel(&t).await;
    drop(tcp);

    // Upgraded, handshake answered, and then silence: dropped after the
    // handshake timeout (500 ms in the test configuration).
    let (mut tcp, _conn) = raw_channel(&t).await;
    let took = closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");

    // Request headers that never end: dropped after the header timeout.
    let mut tcp = TcpStream::connect(t.server.local_addr()).await.unwrap();
    tcp.write_all(b"POST /control HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let took = closed_within(&mut tcp, Duration::from_secs(8)).await;
    assert!(took >= Duration::from_secs(1), "closed after {took:?}");

    still_serving(&t, &key, "after-silence").await;
    let metrics = metrics(&t).await;
    for reason in ["handshake_timeout", "closed_during_handshake"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason}: {metrics}"
        );
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn another_machine_cannot_map_or_take_a_registered_node_key() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    let mut a = TestNode::new(&t, "a");
    a.join(&key).await;

    let mallory = Target {
        url: t.url(),
        machine_key: MachinePrivate::generate(),
        server_key: t.server.public_key(),
    };
    let mut ch = Channel::connect(&mallory, &ConnectOptions::default())
        .await
        .unwrap();
    ch.send(ClientMessage::Map(MapRequest {
        version: CapabilityVersion::CURRENT,
        node_key: a.node_key.public(),
        disco_key: DiscoPrivate::generate().public(),
        endpoints: vec![],
        home_relay: None,
        host_info: HostInfo::default(),
        stream: true,
    }))
    .unwrap();
    let err = ch.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotRegistered), "{err}");
    assert!(
        err.to_string().contains("registered to another machine"),
        "{err}"
    );

    // A client that pinned the wrong server key never gets a channel.
    let wrong = Target {
        server_key: MachinePrivate::generate().public(),
        ..mallory.clone()
    };
    let err = Channel::connect(&wrong, &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Upgrade { .. }), "{err}");

    // A stays connected and sees nothing of this.
    a.session
        .as_ref()
        .unwrap()
        .update_endpoints(vec![common::endpoint("198.18.9.9:41641")]);
    let m = a
        .wait_map(|m| m.self_node.endpoints == vec![common::endpoint("198.18.9.9:41641")])
        .await;
    assert!(m.peers.is_empty());
    t.server.shutdown().await;
}

async fn metrics(t: &TestServer) -> String {
    let mut s = TcpStream::connect(t.server.local_addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// Sends a raw `GET` and returns the status line with the headers, and
/// the body.
async fn get(t: &TestServer, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(t.server.local_addr()).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// Returns the value of header `name` (lowercase) in a response head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[tokio::test]
async fn every_page_carries_a_strict_content_security_policy() {
    let t = TestServer::start().await;
    let mut n = TestNode::new(&t, "laptop");
    n.start(n.params(weft_types::control::RegisterAuth::None))
        .await;
    let url = match n.next().await {
        weft_client::SessionEvent::NeedsAuth { auth_url } => auth_url,
        other => panic!("expected NeedsAuth, got {other:?}"),
    };
    let login = &url[url.find("/a/").unwrap()..];
    for path in [
        login,
        "/a/0123456789abcdef0123456789abcdef",
        "/a/not-a-login",
        "/health",
        "/key",
    ] {
        let (head, body) = get(&t, path).await;
        let csp = header(&head, "content-security-policy")
            .unwrap_or_else(|| panic!("{path}: no CSP in {head}"));
        for directive in [
            "default-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("script-src"),
            "{csp}"
        );
        assert_eq!(
            header(&head, "x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(header(&head, "x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            header(&head, "referrer-policy"),
            Some("no-referrer"),
            "{path}"
        );
        if header(&head, "content-type").is_some_and(|v| v.starts_with("text/html")) {
            assert_eq!(header(&head, "cache-control"), Some("no-store"), "{path}");
            // The inline style is exactly what the policy's hash admits.
            let style = body
                .split_once("<style>")
                .and_then(|(_, rest)| rest.split_once("</style>"))
                .map(|(s, _)| s)
                .unwrap_or_else(|| panic!("{path}: no style in {body}"));
            use base64::Engine as _;
            let digest = ring::digest::digest(&ring::digest::SHA256, style.as_bytes());
            let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
            assert!(
                csp.contains(&format!("style-src 'sha256-{hash}'")),
                "{path}: {csp} vs {hash}"
            );
            assert!(!body.contains("<script"), "{path}");
        }
    }
    n.close().await;
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_capability_version_far_beyond_the_servers_is_clamped_and_served() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    for (version, kind) in [
        (CapabilityVersion(u32::MAX), "implausible"),
        (CapabilityVersion(CapabilityVersion::CURRENT.0 + 1), "newer"),
    ] {
        let (mut tcp, mut conn) = common::raw_channel_from(
            t.server.local_addr(),
            &t.server.public_key(),
            "127.0.0.1".parse().unwrap(),
            &MachinePrivate::generate(),
            version,
        )
        .await
        .unwrap();
        let req = weft_types::control::RegisterRequest {
            version,
            node_key: weft_types::NodePrivate::generate().public(),
            old_node_key: None,
            auth: weft_types::control::RegisterAuth::AuthKey(weft_types::control::AuthKey(
                key.clone(),
            )),
            expiry: weft_types::control::ExpiryRequest::Default,
            ephemeral: false,
            host_info: common::host_info("future"),
        };
        let answer = common::exchange(&mut tcp, &mut conn, ClientMessage::Register(req))
            .await
            .unwrap();
        assert!(
            matches!(
                answer,
                weft_types::control::ServerMessage::Register(
                    weft_types::control::RegisterResponse::Registered(_)
                )
            ),
            "{answer:?}"
        );
        let clamped = common::metric(
            t.server.local_addr(),
            &format!("weft_control_capability_versions_clamped_total{{kind=\"{kind}\"}}"),
        )
        .await;
        assert!(clamped >= Some(1.0), "{kind}: {clamped:?}");
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn host_info_beyond_its_limits_is_refused_in_map_and_updates() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    let mut a = TestNode::new(&t, "a");
    a.join(&key).await;

    // An update with a 300-byte hostname ends the stream with the reason.
    a.session.as_ref().unwrap().update_host_info(HostInfo {
        hostname: "h".repeat(300),
        ..common::host_info("a")
    });
    let err = loop {
        match a.next_result().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(
        err.to_string()
            .contains("host info field hostname is 300 bytes long; at most 253"),
        "{err}"
    );

    // A map request with terminal escapes in `os` is refused the same way.
    let mut ch = Channel::connect(&a.target, &ConnectOptions::default())
        .await
        .unwrap();
    ch.send(ClientMessage::Map(MapRequest {
        version: CapabilityVersion::CURRENT,
        node_key: a.node_key.public(),
        disco_key: DiscoPrivate::generate().public(),
        endpoints: vec![],
        home_relay: None,
        host_info: HostInfo {
            os: "linux\u{1b}[2J".into(),
            ..common::host_info("a")
        },
        stream: true,
    }))
    .unwrap();
    let err = ch.recv().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(
        err.to_string()
            .contains("host info field os contains control characters"),
        "{err}"
    );
    // The node's record kept the valid host info.
    let nodes = t.server.admin().list_nodes().await.unwrap();
    assert_eq!(nodes[0].hostname, "a");
    t.server.shutdown().await;
}
