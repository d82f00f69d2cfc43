//! The client against a minimal hand-written server (raw HTTP over a
//! loopback socket plus the protocol crate's `ServerConnection`), so these
//! tests pin the client's HTTP and framing behaviour independently of
//! weft-control. The full conversation with the real server is tested in
//! `crates/weft-control/tests/`.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use weft_client::{
    Channel, ClientError, ClientParams, ConnectOptions, ControlUrl, Session, SessionEvent, Target,
    fetch_key, register,
};
use weft_control_proto::{ChannelConfig, Connection, Event, UpgradeHeaders};
use weft_types::control::{
    ClientMessage, ExpiryRequest, KeyResponse, RegisterAuth, RegisterRequest, RegisterResponse,
    Registered, ServerMessage,
};
use weft_types::netmap::{Delta, MapBody, MapResponse};
use weft_types::{
    CapabilityVersion, DiscoPrivate, HostInfo, MachinePrivate, NetMap, Node, NodeId, NodeOwner,
    NodePrivate, UnixMillis, UserId,
};

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// Reads an HTTP request head; returns (request line, headers).
async fn read_head(s: &mut TcpStream) -> (String, Vec<(String, String)>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.unwrap();
        buf.push(byte[0]);
    }
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap().to_owned();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (first, headers)
}

/// Serves one connection: `GET /key`, or the upgrade followed by a tiny
/// scripted conversation (register → registered; map → full map + delta).
async fn serve_one(mut s: TcpStream, server_key: MachinePrivate) {
    let (line, headers) = read_head(&mut s).await;
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    if line.starts_with(&format!(
        "GET /key?v={} ",
        weft_types::CapabilityVersion::CURRENT
    )) {
        let body = serde_json::to_string(&KeyResponse {
            public_key: server_key.public(),
            capability_version: CapabilityVersion::CURRENT,
            min_capability_version: CapabilityVersion::MIN_SUPPORTED,
        })
        .unwrap();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(resp.as_bytes()).await.unwrap();
        return;
    }
    assert!(line.starts_with("POST /control "), "{line}");
    let upgrade = UpgradeHeaders {
        upgrade: h("upgrade"),
        capability: h("x-weft-capability"),
        handshake: h("x-weft-handshake"),
    };
    let accepted = match Connection::accept(
        &server_key,
        &upgrade,
        ChannelConfig::for_server(),
        [9; 32],
        now(),
    ) {
        Ok(a) => a,
        Err(e) => {
            let body = e.to_string();
            let resp = format!(
                "HTTP/1.1 {} Refused\r\ncontent-length: {}\r\n\r\n{body}",
                e.status(),
                body.len()
            );
            s.write_all(resp.as_bytes()).await.unwrap();
            return;
        }
    };
    let mut conn = accepted.connection;
    let mut out =
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: weft-control\r\nconnection: upgrade\r\n\r\n"
            .to_vec();
    out.extend(conn.poll_transmit().unwrap());
    s.write_all(&out).await.unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            return;
        }
        conn.handle_input(&buf[..n], now()).unwrap();
        while let Some(ev) = conn.poll_event() {
            let Event::Message(msg) = ev else { continue };
            match msg {
                ClientMessage::Register(r) => {
                    let resp = match r.auth {
                        RegisterAuth::AuthKey(_) => RegisterResponse::Registered(Registered {
                            node_id: NodeId(7),
                            user: None,
                            tags: [("tag:ci".parse().unwrap())].into(),
                            machine_authorized: true,
                            key_expiry: None,
                        }),
                        _ => RegisterResponse::NeedsAuth {
                            auth_url: "http://127.0.0.1/a/x".into(),
                        },
                    };
                    conn.send(&ServerMessage::Register(resp), now()).unwrap();
                }
                ClientMessage::Map(_) => {
                    let full = MapResponse {
                        seq: 1,
                        body: MapBody::Full(Box::new(netmap(&[2, 3]))),
                    };
                    conn.send(&ServerMessage::Map(full), now()).unwrap();
                }
                ClientMessage::Endpoints(_) => {
                    // Answered with something the client reports: a delta.
                    let delta = MapResponse {
                        seq: 2,
                        body: MapBody::Delta(vec![Delta::Peer(weft_types::PeerDelta::Removed(
                            NodeId(3),
                        ))]),
                    };
                    conn.send(&ServerMessage::Map(delta), now()).unwrap();
                }
                _ => {}
            }
        }
        if let Some(bytes) = conn.poll_transmit() {
            s.write_all(&bytes).await.unwrap();
        }
    }
}

/// A node for the fake's maps.
fn node(id: i64) -> Node {
    let v4 = format!("100.64.0.{id}/32").parse().unwrap();
    Node {
        id: NodeId(id),
        stable_id: format!("n{id:020x}").parse().unwrap(),
        name: format!("host-{id}.example.weft").parse().unwrap(),
        owner: NodeOwner::User(UserId(1)),
        node_key: NodePrivate::from_bytes([id as u8; 32]).public(),
        machine_key: MachinePrivate::from_bytes([id as u8 ^ 0x80; 32]).public(),
        disco_key: None,
        addresses: vec![v4],
        allowed_ips: vec![v4],
        endpoints: vec![],
        home_relay: None,
        host_info: HostInfo::default(),
        created: UnixMillis(0),
        last_seen: None,
        online: true,
        key_expiry: None,
        expired: false,
        machine_authorized: true,
    }
}

/// The netmap of node 1 with `peers`.
fn netmap(peers: &[i64]) -> NetMap {
    NetMap {
        self_node: node(1),
        peers: peers.iter().map(|i| (NodeId(*i), node(*i))).collect(),
        user_profiles: Default::default(),
        domain: "example.weft".parse().unwrap(),
        dns: weft_types::netmap::DnsConfig {
            magic_dns: true,
            nameservers: vec![],
            search_domains: vec![],
            ..Default::default()
        },
        relay_map: Default::default(),
        packet_filter: Default::default(),
        ssh_policy: Default::default(),
    }
}

async fn fake_server() -> (ControlUrl, MachinePrivate) {
    let key = MachinePrivate::from_bytes([5; 32]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url: ControlUrl = format!("http://{}", listener.local_addr().unwrap())
        .parse()
        .unwrap();
    let k = key.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(serve_one(s, k.clone()));
        }
    });
    (url, key)
}

fn request(auth: RegisterAuth) -> RegisterRequest {
    RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: NodePrivate::from_bytes([1; 32]).public(),
        old_node_key: None,
        auth,
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: HostInfo::default(),
    }
}

#[tokio::test]
async fn the_key_is_fetched_and_a_register_exchange_completes() {
    let (url, server_key) = fake_server().await;
    let key = fetch_key(&url, Duration::from_secs(5)).await.unwrap();
    assert_eq!(key.public_key, server_key.public());
    let target = Target {
        url,
        machine_key: MachinePrivate::from_bytes([2; 32]),
        server_key: key.public_key,
    };
    let opts = ConnectOptions::default();
    let auth = RegisterAuth::AuthKey(weft_types::control::AuthKey("k".into()));
    let resp = register(&target, request(auth), &opts).await.unwrap();
    assert!(matches!(resp, RegisterResponse::Registered(r) if r.node_id == NodeId(7)));
    let resp = register(&target, request(RegisterAuth::None), &opts)
        .await
        .unwrap();
    assert!(matches!(resp, RegisterResponse::NeedsAuth { .. }));
}

#[tokio::test]
async fn a_map_stream_yields_responses_and_carries_updates() {
    let (url, server_key) = fake_server().await;
    let target = Target {
        url,
        machine_key: MachinePrivate::from_bytes([2; 32]),
        server_key: server_key.public(),
    };
    let params = ClientParams {
        node_key: NodePrivate::from_bytes([1; 32]).public(),
        old_node_key: None,
        auth: RegisterAuth::None,
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: HostInfo::default(),
        disco_key: DiscoPrivate::from_bytes([3; 32]).public(),
        endpoints: vec![],
        map: true,
        interactive: false,
    };
    let mut session = Session::resume(&target, params, None, &ConnectOptions::default())
        .await
        .unwrap();
    let first = session.next_event().await.unwrap();
    assert!(
        matches!(&first, SessionEvent::NetMap { netmap, .. } if netmap.peers.len() == 2),
        "{first:?}"
    );
    session.update_endpoints(vec![]);
    let second = session.next_event().await.unwrap();
    assert!(
        matches!(&second, SessionEvent::NetMap { netmap, .. } if netmap.peers.len() == 1),
        "the fake answers an update with a delta: {second:?}"
    );
}

#[tokio::test]
async fn a_wrong_pinned_key_is_refused_with_the_servers_reason() {
    let (url, _server_key) = fake_server().await;
    let target = Target {
        url: url.clone(),
        machine_key: MachinePrivate::from_bytes([2; 32]),
        server_key: MachinePrivate::from_bytes([6; 32]).public(),
    };
    let err = Channel::connect(&target, &ConnectOptions::default())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::Upgrade { .. }), "{err:?}");
    assert!(
        text.contains(url.as_str()) && text.contains("HTTP 400"),
        "{text}"
    );
    assert!(text.contains("pinned a different server key"), "{text}");
    assert!(!err.is_transient());
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_the_cause() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url: ControlUrl = format!("http://127.0.0.1:{port}").parse().unwrap();
    let err = fetch_key(&url, Duration::from_secs(5)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("cannot reach control server http://127.0.0.1:{port}: connection refused")
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn an_unreadable_ca_file_is_named_before_any_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let url: ControlUrl = format!("https://127.0.0.1:{port}").parse().unwrap();
    let url = url.with_ca_file(Some("/nonexistent/ca.pem".into()));
    let err = fetch_key(&url, Duration::from_secs(5)).await.unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    assert!(
        err.to_string().contains("CA file /nonexistent/ca.pem"),
        "{err}"
    );
    assert!(!err.is_transient());
}
