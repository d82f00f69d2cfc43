//! The embedded relay: the real `weft_relay::RelayClient` against the
//! server in process. Only nodes of the tailnet get in; deleting or
//! expiring a node closes its relay connection at once.

use std::time::Duration;

use tokio::sync::mpsc::Receiver;
use weft_relay::{ClientConfig, Event, RelayClient, RelayNode};
use weft_types::NodePrivate;

use crate::common::{self, TestNode, TestServer, WAIT};

/// Starts a relay client of `key` against the server's embedded relay.
fn client(t: &TestServer, key: &NodePrivate) -> (RelayClient, Receiver<Event>) {
    let relay = RelayNode::from_url(t.server.url()).unwrap();
    RelayClient::start(ClientConfig::new(key.clone(), relay)).unwrap()
}

/// Returns the next event that is not a health report.
async fn next(events: &mut Receiver<Event>) -> Event {
    loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("a relay event in time")
            .expect("the client is running");
        if !matches!(ev, Event::Health { .. }) {
            return ev;
        }
    }
}

async fn connected(events: &mut Receiver<Event>) {
    match next(events).await {
        Event::Connected { .. } => {}
        other => panic!("expected Connected, got {other:?}"),
    }
}

async fn refused(events: &mut Receiver<Event>) -> String {
    match next(events).await {
        Event::Disconnected { error, .. } => error,
        other => panic!("expected a refused login, got {other:?}"),
    }
}

/// Two registered nodes, connected to the relay.
async fn two_nodes(t: &TestServer) -> (TestNode, TestNode) {
    t.user("alice").await;
    let key = t.reusable_key("alice").await;
    let mut a = TestNode::new(t, "a");
    let mut b = TestNode::new(t, "b");
    a.join(&key).await;
    b.join(&key).await;
    (a, b)
}

async fn node_id(t: &TestServer, hostname: &str) -> i64 {
    t.server
        .admin()
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .find(|n| n.hostname == hostname)
        .unwrap()
        .id
}

#[tokio::test]
async fn tailnet_nodes_relay_a_packet_and_strangers_are_refused() {
    let t = TestServer::start().await;
    let (a, b) = two_nodes(&t).await;
    let (ca, mut ea) = client(&t, &a.node_key);
    let (_cb, mut eb) = client(&t, &b.node_key);
    connected(&mut ea).await;
    connected(&mut eb).await;
    ca.send(&b.node_key.public(), b"a wireguard datagram")
        .unwrap();
    match next(&mut eb).await {
        Event::Packet { src, data } => {
            assert_eq!(src, a.node_key.public());
            assert_eq!(&data[..], b"a wireguard datagram");
        }
        other => panic!("expected the packet, got {other:?}"),
    }

    let stranger = NodePrivate::generate();
    let (_cs, mut es) = client(&t, &stranger);
    let why = refused(&mut es).await;
    assert!(!why.is_empty());
    let stats = t.server.relay_stats().unwrap();
    assert!(stats.refused_not_admitted >= 1, "{stats:?}");
    let m = common::metric(
        t.server.metrics_addr().unwrap(),
        "weft_relay_logins_refused_total{reason=\"not_admitted\"}",
    )
    .await;
    assert!(
        m.is_some_and(|v| v >= 1.0),
        "relay metrics on /metrics: {m:?}"
    );
}

#[tokio::test]
async fn deleting_a_node_disconnects_its_relay_connection_at_once() {
    let t = TestServer::start().await;
    let (a, _b) = two_nodes(&t).await;
    let (ca, mut ea) = client(&t, &a.node_key);
    connected(&mut ea).await;
    let id = node_id(&t, "a").await;

    #[allow(clippy::disallowed_methods)] // measuring only
    let started = std::time::Instant::now();
    t.server.admin().delete_node(id).await.unwrap();
    let why = refused(&mut ea).await;
    let took = started.elapsed();
    eprintln!("relay connection closed {took:?} after the delete call started ({why})");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert!(!ca.is_connected());
    // It cannot log in again.
    let (_again, mut e2) = client(&t, &a.node_key);
    refused(&mut e2).await;
}

#[tokio::test]
async fn an_expired_node_is_disconnected_and_refused() {
    let t = TestServer::start().await;
    let (_a, b) = two_nodes(&t).await;
    let (_cb, mut eb) = client(&t, &b.node_key);
    connected(&mut eb).await;
    let id = node_id(&t, "b").await;
    t.server.admin().expire_node(id).await.unwrap();
    refused(&mut eb).await;
    let (_again, mut e2) = client(&t, &b.node_key);
    refused(&mut e2).await;
}

#[tokio::test]
async fn a_rotated_key_loses_the_relay_and_the_new_key_gets_in() {
    let t = TestServer::start().await;
    let (_a, mut b) = two_nodes(&t).await;
    let old = b.node_key.clone();
    let (_co, mut eo) = client(&t, &old);
    connected(&mut eo).await;
    b.node_key = NodePrivate::generate();
    let mut params = b.params(weft_types::control::RegisterAuth::None);
    params.old_node_key = Some(old.public());
    b.start(params).await;
    assert!(matches!(
        b.next().await,
        weft_client::SessionEvent::Registered(_)
    ));
    let new = b.node_key.public();
    b.wait_map(|m| m.self_node.node_key == new).await;
    refused(&mut eo).await;
    let (_cn, mut en) = client(&t, &b.node_key);
    connected(&mut en).await;
}

#[tokio::test]
async fn no_relay_turns_the_relay_off() {
    let t = TestServer::start_with(|c| c.relay = false).await;
    assert!(t.server.relay_public_key().is_none());
    let (a, _b) = two_nodes(&t).await;
    let (_ca, mut ea) = client(&t, &a.node_key);
    refused(&mut ea).await;
}

/// `POST /api/v1/relay/verify` with `weft_relay::RestAdmission`, the client
/// of the standalone `weft-relay --control`.
#[tokio::test]
async fn the_verify_endpoint_answers_a_standalone_relay() {
    use weft_relay::{Admission as _, RestAdmission};
    let t = TestServer::start().await;
    let (a, b) = two_nodes(&t).await;
    let stranger = NodePrivate::generate().public();
    let api = t
        .server
        .admin()
        .create_api_key(weft_control::admin::types::NewApiKey::default())
        .await
        .unwrap();
    let rest =
        RestAdmission::new(t.server.url(), zeroize::Zeroizing::new(api.secret), None).unwrap();
    let asked = [a.node_key.public(), b.node_key.public(), stranger];
    let allowed = rest.verify(&asked).await.unwrap();
    assert_eq!(
        allowed,
        [a.node_key.public(), b.node_key.public()]
            .into_iter()
            .collect()
    );
    t.server
        .admin()
        .delete_node(node_id(&t, "a").await)
        .await
        .unwrap();
    let allowed = rest.verify(&asked).await.unwrap();
    assert_eq!(allowed, [b.node_key.public()].into_iter().collect());

    // Strangers get nothing: no key, a wrong key.
    let wrong = RestAdmission::new(
        t.server.url(),
        zeroize::Zeroizing::new("weftapi_not-a-key".into()),
        None,
    )
    .unwrap();
    let e = wrong.verify(&asked).await.unwrap_err();
    assert!(e.to_string().contains("401"), "{e}");
}

#[tokio::test]
async fn nodes_get_the_default_relay_map_and_stun_answers() {
    let t = TestServer::start().await;
    let (mut a, _b) = two_nodes(&t).await;
    let stun = t.server.stun_addrs()[0];
    let map = a.wait_map(|m| !m.relay_map.regions.is_empty()).await;
    let region = &map.relay_map.regions[&900];
    assert_eq!((region.id, region.code.as_str()), (900, "weft"));
    let node = &region.nodes[0];
    assert_eq!(node.host, "127.0.0.1");
    assert_eq!(node.relay_port, t.server.local_addr().port());
    assert_eq!(node.stun_port, stun.port());
    assert!(node.insecure_for_tests, "the control URL is http://");
    // The map's relay is the one that admits a (it connects at host:port).
    let url = format!("http://{}:{}", node.host, node.relay_port);
    let (_c, mut e) = RelayClient::start(ClientConfig::new(
        a.node_key.clone(),
        RelayNode::from_url(&url).unwrap(),
    ))
    .unwrap();
    connected(&mut e).await;

    // STUN: a Binding request gets our own address back.
    use weft_disco::stun::{TxId, parse_binding_response, write_binding_request};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = [0u8; 128];
    let n = write_binding_request(TxId([7; 12]), &mut buf).unwrap();
    sock.send_to(&buf[..n], stun).await.unwrap();
    let mut resp = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, sock.recv_from(&mut resp))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(from, stun);
    let (tx, mapped) = parse_binding_response(&resp[..n]).unwrap();
    assert_eq!(tx, TxId([7; 12]));
    assert_eq!(mapped, sock.local_addr().unwrap());
    let answered = common::metric(
        t.server.metrics_addr().unwrap(),
        "weft_relay_stun_requests_total",
    )
    .await;
    assert!(answered.is_some_and(|v| v >= 1.0), "{answered:?}");
}

#[tokio::test]
async fn an_admin_relay_map_is_validated_stored_and_reaches_streamed_nodes() {
    use weft_control::admin::types::RelayMapConfig;
    use weft_types::netmap::{RelayNode as MapNode, RelayRegion};
    let t = TestServer::start().await;
    let (mut a, _b) = two_nodes(&t).await;
    a.wait_map(|m| m.relay_map.regions.contains_key(&900)).await;
    let relay = |name: &str, port: u16| MapNode {
        name: name.into(),
        host: "relay-fra.example.com".into(),
        relay_port: port,
        stun_port: 3478,
        ipv4: None,
        ipv6: None,
        insecure_for_tests: false,
    };
    let region = |id: u16, nodes: Vec<MapNode>| RelayRegion {
        id,
        code: "fra".into(),
        name: "Frankfurt".into(),
        nodes,
    };
    let admin = t.server.admin();
    for (bad, why) in [
        (
            vec![
                region(1, vec![relay("1a", 443)]),
                region(1, vec![relay("1b", 443)]),
            ],
            "used twice",
        ),
        (vec![region(1, vec![relay("1a", 0)])], "relay_port 0"),
        (vec![region(1, vec![])], "at least one relay"),
        (
            vec![region(1, vec![relay("1a", 443), relay("1a", 443)])],
            "used twice",
        ),
    ] {
        let e = admin
            .set_relay_map(RelayMapConfig { regions: bad })
            .await
            .unwrap_err();
        assert_eq!(e.code, "invalid");
        assert!(e.message.contains(why), "{}", e.message);
    }
    // Nothing changed.
    assert_eq!(admin.relay_map().unwrap().regions[0].id, 900);

    let good = RelayMapConfig {
        regions: vec![region(1, vec![relay("1a", 443)])],
    };
    assert_eq!(admin.set_relay_map(good.clone()).await.unwrap(), good);
    let m = a.wait_map(|m| m.relay_map.regions.contains_key(&1)).await;
    assert_eq!(m.relay_map.regions.len(), 1);
    assert_eq!(
        m.relay_map.regions[&1].nodes[0].host,
        "relay-fra.example.com"
    );
    // It came on the open stream, marked as a relay map change.
    assert!(a.events.iter().any(|e| matches!(
        e,
        weft_client::SessionEvent::NetMap { diff, netmap }
            if diff.relay_map && netmap.relay_map.regions.contains_key(&1)
    )));
    assert!(t.dir.path().join("relay-map.json").exists());
    assert_eq!(admin.relay_map().unwrap(), good);
}

/// The `weft-relay` binary next to this test's directory (`cargo test
/// --workspace` builds it), or `$WEFT_RELAY_BIN`.
fn relay_binary() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("WEFT_RELAY_BIN") {
        return Some(p.into());
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.parent()?.join("weft-relay");
    p.exists().then_some(p)
}

/// A standalone `weft-relay --control <this server>` admits the tailnet's
/// nodes through `POST /api/v1/relay/verify`, refuses strangers, and drops
/// a deleted node at its next re-verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standalone_weft_relay_admits_through_control() {
    let Some(bin) = relay_binary() else {
        let why =
            "the weft-relay binary is not built (cargo build -p weft-relay, or set WEFT_RELAY_BIN)";
        assert!(std::env::var("WEFT_E2E").as_deref() != Ok("1"), "{why}");
        eprintln!("skipped: {why}");
        return;
    };
    let t = TestServer::start().await;
    let (a, b) = two_nodes(&t).await;
    let api = t
        .server
        .admin()
        .create_api_key(weft_control::admin::types::NewApiKey::default())
        .await
        .unwrap();
    let key_file = t.dir.path().join("relay-api-key");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(&key_file)
            .unwrap();
        f.write_all(api.secret.as_bytes()).unwrap();
    }
    let port = common::free_port();
    let log = std::fs::File::create(t.dir.path().join("weft-relay.log")).unwrap();
    let child = std::process::Command::new(&bin)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--no-stun"])
        .args(["--reverify-every", "0.2", "--control", t.server.url()])
        .arg("--api-key-file")
        .arg(&key_file)
        .arg("--key-file")
        .arg(t.dir.path().join("standalone-relay.key"))
        .stderr(log)
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _child = Kill(child);
    let url = format!("http://127.0.0.1:{port}");
    let start = |k: &NodePrivate| {
        RelayClient::start(ClientConfig::new(
            k.clone(),
            RelayNode::from_url(&url).unwrap(),
        ))
        .unwrap()
    };
    // The client retries with backoff until the relay listens.
    let (_ca, mut ea) = start(&a.node_key);
    let (_cb, mut eb) = start(&b.node_key);
    let deadline = tokio::time::Instant::now() + WAIT;
    for e in [&mut ea, &mut eb] {
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no login to weft-relay"
            );
            match next(e).await {
                Event::Connected { .. } => break,
                Event::Disconnected { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    let (_cs, mut es) = start(&NodePrivate::generate());
    refused(&mut es).await;
    t.server
        .admin()
        .delete_node(node_id(&t, "b").await)
        .await
        .unwrap();
    refused(&mut eb).await;
    let log = std::fs::read_to_string(t.dir.path().join("weft-relay.log")).unwrap();
    assert!(!log.contains("admission check failed"), "{log}");
}
