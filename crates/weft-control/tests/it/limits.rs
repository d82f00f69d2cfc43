//! What a stranger can make the server keep, and what it cannot: bounded
//! registration fields (the database does not grow), capped pending
//! logins, a deadline for unregistered connections, per-source and total
//! connection limits with eviction, and a per-node budget of host-info
//! changes. The connection floods run against the real binary.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    ServerProcess, TestNode, TestServer, exchange, free_port, metric, next_message, raise_nofile,
    raw_channel_from,
};
use weft_control::admin::types::{NewPreauthKey, NewUser};
use weft_types::control::{
    AuthKey, ClientMessage, ErrorCode, ExpiryRequest, RefusalReason, RegisterAuth, RegisterRequest,
    RegisterResponse, ServerMessage,
};
use weft_types::{CapabilityVersion, HostInfo, MachinePrivate, NodePrivate};

#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn register_req(
    node_key: &NodePrivate,
    auth: RegisterAuth,
    host_info: HostInfo,
) -> RegisterRequest {
    RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: node_key.public(),
        old_node_key: None,
        auth,
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info,
    }
}

/// Registers on a fresh channel from `src` as `machine`; returns the answer.
async fn register_from(
    t: &TestServer,
    src: IpAddr,
    machine: &MachinePrivate,
    req: RegisterRequest,
) -> RegisterResponse {
    let (mut tcp, mut conn) = raw_channel_from(
        t.server.local_addr(),
        &t.server.public_key(),
        src,
        machine,
        CapabilityVersion::CURRENT,
    )
    .await
    .unwrap();
    match exchange(&mut tcp, &mut conn, ClientMessage::Register(req)).await {
        Ok(ServerMessage::Register(r)) => r,
        other => panic!("expected a register answer, got {other:?}"),
    }
}

/// Bytes of the SQLite database with its write-ahead log.
fn db_bytes(state_dir: &Path) -> u64 {
    ["weft.db", "weft.db-wal", "weft.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(state_dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn ssh_key(i: usize, len: usize) -> weft_types::node::SshHostKey {
    format!("ssh-ed25519 {} k{i}", "A".repeat(len))
        .parse()
        .unwrap()
}

/// A host info that breaks one limit, in four ways, each within the
/// channel's 64 KiB message bound (so the server must look inside).
fn oversized(i: usize) -> (HostInfo, &'static str) {
    let base = common::host_info("big");
    match i % 4 {
        0 => (
            HostInfo {
                hostname: "a".repeat(60_000),
                ..base
            },
            "hostname is 60000 bytes long; at most 253",
        ),
        1 => (
            HostInfo {
                os: "o".repeat(30_000),
                os_version: "v".repeat(30_000),
                ..base
            },
            "os is 30000 bytes long; at most 128",
        ),
        2 => (
            HostInfo {
                ssh_host_keys: (0..9).map(|k| ssh_key(k, 6_000)).collect(),
                ..base
            },
            "ssh_host_keys has 9 entries; at most 8",
        ),
        _ => (
            HostInfo {
                hostname: "evil\u{1b}[2J".into(),
                requested_tags: (0..65)
                    .map(|t| format!("tag:t{t}").parse().unwrap())
                    .collect(),
                ..base
            },
            "hostname contains control characters",
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_registration_fields_are_refused_and_the_database_does_not_grow() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    t.server.admin().flush().await;
    let before = db_bytes(t.dir.path());

    let mut answers = Vec::new();
    for i in 0..100 {
        let (host_info, why) = oversized(i);
        // Interactive logins are what a stranger can start; a few with a
        // valid pre-auth key must be refused just the same.
        let auth = if i % 25 == 0 {
            RegisterAuth::AuthKey(AuthKey(key.clone()))
        } else {
            RegisterAuth::None
        };
        let req = register_req(&NodePrivate::generate(), auth, host_info);
        let machine = MachinePrivate::generate();
        answers.push((why, register_from(&t, loopback(1), &machine, req).await));
    }
    t.server.admin().flush().await;
    let after = db_bytes(t.dir.path());
    eprintln!("database: {before} bytes before, {after} bytes after 100 oversized registrations");

    for (why, answer) in &answers {
        match answer {
            RegisterResponse::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::Other, "{r:?}");
                assert!(
                    r.message
                        .starts_with("the control server refused this registration: ")
                        && r.message.contains(why),
                    "{why}: {}",
                    r.message
                );
            }
            other => panic!("{why}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(after, before, "the database grew");
    assert!(t.server.admin().list_nodes().await.unwrap().is_empty());

    // The same fields within the limits register.
    let ok = register_req(
        &NodePrivate::generate(),
        RegisterAuth::AuthKey(AuthKey(key)),
        common::host_info("fine"),
    );
    let answer = register_from(&t, loopback(1), &MachinePrivate::generate(), ok).await;
    assert!(
        matches!(answer, RegisterResponse::Registered(_)),
        "{answer:?}"
    );
    t.server.shutdown().await;
}

/// Starts an interactive login for `machine` with `node_key` from `src`.
async fn login(
    t: &TestServer,
    src: IpAddr,
    machine: &MachinePrivate,
    node_key: &NodePrivate,
) -> RegisterResponse {
    let req = register_req(node_key, RegisterAuth::None, common::host_info("n"));
    register_from(t, src, machine, req).await
}

fn expect_needs_auth(r: &RegisterResponse) -> String {
    match r {
        RegisterResponse::NeedsAuth { auth_url } => auth_url.clone(),
        other => panic!("expected needs_auth, got {other:?}"),
    }
}

fn expect_refused(r: &RegisterResponse, needle: &str) {
    match r {
        RegisterResponse::Refused(f) => assert!(f.message.contains(needle), "{}", f.message),
        other => panic!("expected a refusal ({needle}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_logins_are_capped_per_source_and_in_total_and_expire() {
    let t = TestServer::start_with(|c| c.max_pending_logins = 15).await;
    let (a, b) = (loopback(1), loopback(2));

    let first = (MachinePrivate::generate(), NodePrivate::generate());
    let first_url = expect_needs_auth(&login(&t, a, &first.0, &first.1).await);
    for _ in 1..10 {
        let r = login(&t, a, &MachinePrivate::generate(), &NodePrivate::generate()).await;
        expect_needs_auth(&r);
    }
    // The 11th from the same address.
    let r = login(&t, a, &MachinePrivate::generate(), &NodePrivate::generate()).await;
    expect_refused(
        &r,
        "10 logins from your address are already waiting for approval",
    );
    expect_refused(&r, "weft up --auth-key");
    // Asking again with the same keys gives the same login, not a new one.
    let again = expect_needs_auth(&login(&t, a, &first.0, &first.1).await);
    assert_eq!(again, first_url);

    // Another address may start its own, up to the total of 15.
    for _ in 0..5 {
        let r = login(&t, b, &MachinePrivate::generate(), &NodePrivate::generate()).await;
        expect_needs_auth(&r);
    }
    let r = login(&t, b, &MachinePrivate::generate(), &NodePrivate::generate()).await;
    expect_refused(
        &r,
        "15 logins are already waiting for approval on this server",
    );

    // A machine that starts over with a new node key replaces its login.
    let restarted = expect_needs_auth(&login(&t, a, &first.0, &NodePrivate::generate()).await);
    assert_ne!(restarted, first_url);
    let followup = register_req(
        &first.1,
        RegisterAuth::Followup {
            auth_url: first_url,
        },
        common::host_info("n"),
    );
    let r = register_from(&t, a, &first.0, followup).await;
    match r {
        RegisterResponse::Refused(f) => assert_eq!(f.reason, RefusalReason::AuthUrlExpired),
        other => panic!("the replaced login is gone: {other:?}"),
    }

    // Expired logins free their places.
    t.clock.advance(Duration::from_secs(3601));
    let r = login(&t, a, &MachinePrivate::generate(), &NodePrivate::generate()).await;
    expect_needs_auth(&r);
    let r = login(&t, b, &MachinePrivate::generate(), &NodePrivate::generate()).await;
    expect_needs_auth(&r);
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unregistered_connection_must_register_in_time_but_a_login_may_wait() {
    let t = TestServer::start_with(|c| c.register_timeout = Duration::from_millis(500)).await;
    t.user("alice@example.com").await;

    let (mut tcp, mut conn) = raw_channel_from(
        t.server.local_addr(),
        &t.server.public_key(),
        loopback(1),
        &MachinePrivate::generate(),
        CapabilityVersion::CURRENT,
    )
    .await
    .unwrap();
    let start = now();
    let msg = next_message(&mut tcp, &mut conn).await.unwrap();
    let took = start.elapsed();
    match msg {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::NotRegistered);
            assert!(
                e.message.contains("did not register within 500ms"),
                "{}",
                e.message
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
    assert!(next_message(&mut tcp, &mut conn).await.is_err(), "closed");

    // An interactive login waits far longer than the deadline: its
    // follow-up is being answered.
    let mut n = TestNode::new(&t, "laptop");
    n.start(n.params(RegisterAuth::None)).await;
    let url = match n.next().await {
        weft_client::SessionEvent::NeedsAuth { auth_url } => auth_url,
        other => panic!("expected NeedsAuth, got {other:?}"),
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let id = url.rsplit('/').next().unwrap();
    t.server
        .admin()
        .approve_login(id, "alice@example.com")
        .await
        .unwrap();
    match n.next().await {
        weft_client::SessionEvent::Registered(_) => {}
        other => panic!("expected Registered, got {other:?}"),
    }
    n.wait_map(|_| true).await;
    assert!(
        metric(
            t.server.metrics_addr().unwrap(),
            "weft_control_connection_errors_total{reason=\"register_timeout\"}"
        )
        .await
        .unwrap_or(0.0)
            >= 1.0
    );
    n.close().await;
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_at_its_limit_displaces_its_oldest_unregistered_connection() {
    let t = TestServer::start_with(|c| c.max_unregistered_per_source = 3).await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    let src = loopback(3);
    let connect = || async {
        raw_channel_from(
            t.server.local_addr(),
            &t.server.public_key(),
            src,
            &MachinePrivate::generate(),
            CapabilityVersion::CURRENT,
        )
        .await
        .unwrap()
    };
    let (mut oldest_tcp, mut oldest) = connect().await;
    let _second = connect().await;
    let _third = connect().await;
    let _fourth = connect().await;
    match next_message(&mut oldest_tcp, &mut oldest).await {
        Ok(ServerMessage::Error(e)) => {
            assert!(e.message.contains("connection limit"), "{}", e.message)
        }
        other => panic!("the oldest is evicted: {other:?}"),
    }

    // Registered connections do not count: five nodes from one address.
    let mut nodes = Vec::new();
    for i in 0..5 {
        let mut n = TestNode::new(&t, &format!("n{i}"));
        n.join(&key).await;
        nodes.push(n);
    }
    nodes[0].wait_map(|m| m.peers.len() == 4).await;
    for mut n in nodes {
        n.close().await;
    }
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_sheds_new_connections_with_503_and_keeps_its_nodes() {
    let t = TestServer::start_with(|c| c.max_connections = Some(3)).await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut n = TestNode::new(&t, &format!("n{i}"));
        n.join(&key).await;
        nodes.push(n);
    }
    let refused = raw_channel_from(
        t.server.local_addr(),
        &t.server.public_key(),
        loopback(4),
        &MachinePrivate::generate(),
        CapabilityVersion::CURRENT,
    )
    .await
    .unwrap_err();
    assert!(
        refused.starts_with("HTTP/1.1 503") && refused.contains("at its connection limit"),
        "{refused}"
    );
    // The nodes are still served.
    nodes[0]
        .session
        .as_ref()
        .unwrap()
        .update_endpoints(vec![common::endpoint("198.18.7.7:41641")]);
    nodes[1]
        .wait_map(|m| {
            m.peers
                .values()
                .any(|p| p.endpoints == vec![common::endpoint("198.18.7.7:41641")])
        })
        .await;
    // A place that frees up is taken again.
    let mut gone = nodes.pop().unwrap();
    gone.close().await;
    let deadline = now() + common::WAIT;
    loop {
        let r = raw_channel_from(
            t.server.local_addr(),
            &t.server.public_key(),
            loopback(4),
            &MachinePrivate::generate(),
            CapabilityVersion::CURRENT,
        )
        .await;
        if r.is_ok() {
            break;
        }
        assert!(now() < deadline, "no place freed: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for mut n in nodes {
        n.close().await;
    }
    t.server.shutdown().await;
}

/// Opens `count` unregistered control connections (handshake done, one
/// keep-alive, then silence) from `sources` in turn, 64 at a time; an
/// attempt still waiting at `limit` counts as not answered. Returns the
/// connections that were answered `101`, and how many were not.
async fn flood(
    server: std::net::SocketAddr,
    key: &weft_types::MachinePublic,
    count: usize,
    sources: &[IpAddr],
    limit: Duration,
) -> (
    Vec<(tokio::net::TcpStream, weft_control_proto::ClientConnection)>,
    usize,
) {
    use futures::StreamExt as _;
    let deadline = tokio::time::Instant::now() + limit;
    let results = futures::stream::iter(0..count)
        .map(|i| {
            let src = sources[i % sources.len()];
            async move {
                let machine = MachinePrivate::generate();
                let attempt =
                    raw_channel_from(server, key, src, &machine, CapabilityVersion::CURRENT);
                tokio::time::timeout_at(deadline, attempt)
                    .await
                    .unwrap_or_else(|_| Err("no answer in time".into()))
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let mut held = Vec::new();
    let mut refused = 0;
    for r in results {
        match r {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    (held, refused)
}

/// A normal node registers with a pre-auth key and gets its first map;
/// returns how long that took.
async fn normal_node_joins(p: &ServerProcess) -> Duration {
    let admin = p.admin();
    let _ = admin
        .create_user(&NewUser {
            login_name: "alice@example.com".into(),
            ..NewUser::default()
        })
        .await;
    let key = admin
        .create_preauth_key(&NewPreauthKey {
            user: Some("alice@example.com".into()),
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await
        .unwrap()
        .secret;
    let url: weft_client::ControlUrl = p.url().parse().unwrap();
    let server_key = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap()
        .public_key;
    let mut n = TestNode::for_server(url, server_key, "normal");
    let start = now();
    n.join(&key).await;
    let took = start.elapsed();
    n.close().await;
    took
}

/// Twenty loopback addresses, 127.0.0.2 to 127.0.0.21.
fn flood_sources() -> Vec<IpAddr> {
    (2..22).map(loopback).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_within_2s_while_1100_unregistered_connections_are_held() {
    if !raise_nofile(2500) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The flood must outlive the measurement: a long registration deadline.
    let p = ServerProcess::start_with(
        dir.path(),
        free_port(),
        &["--register-timeout", "60s"],
        None,
    )
    .await;
    let url: weft_client::ControlUrl = p.url().parse().unwrap();
    let key = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap()
        .public_key;
    let started = now();
    let (held, refused) = flood(
        p.addr,
        &key,
        1100,
        &flood_sources(),
        Duration::from_secs(60),
    )
    .await;
    let flood_took = started.elapsed();
    assert_eq!(
        (held.len(), refused),
        (1100, 0),
        "55 from each of 20 sources fit the limit"
    );
    let on_server = metric(p.metrics, "weft_control_connections").await.unwrap();
    assert!(on_server >= 1100.0, "the server holds {on_server}");

    let took = normal_node_joins(&p).await;
    eprintln!(
        "flood: 1100 unregistered connections from 20 sources in {flood_took:?}, {on_server} held by the server; \
         a normal node registered and got its map in {took:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    drop(held);
    let log = p.log();
    assert!(!log.contains("accept failed"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_1024_descriptors_a_flood_of_1100_sheds_and_a_node_still_registers_within_2s() {
    if !raise_nofile(2500) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The open-file limit the probe's server had; no flags, so the same
    // test runs against older builds.
    let p = ServerProcess::start_with(dir.path(), free_port(), &[], Some((1024, 1024))).await;
    let url: weft_client::ControlUrl = p.url().parse().unwrap();
    let key = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap()
        .public_key;
    let started = now();
    let (held, refused) = flood(
        p.addr,
        &key,
        1100,
        &flood_sources(),
        Duration::from_secs(20),
    )
    .await;
    let flood_took = started.elapsed();
    let on_server = tokio::time::timeout(
        Duration::from_secs(5),
        metric(p.metrics, "weft_control_connections"),
    )
    .await
    .ok()
    .flatten();

    let took = tokio::time::timeout(Duration::from_secs(30), normal_node_joins(&p))
        .await
        .ok();
    let log = p.log();
    let accept_failures = log.matches("accept failed").count();
    let shed_lines = log.matches("shedding new connections").count();
    eprintln!(
        "flood at 1024 descriptors: {} of 1100 connections answered, {refused} not, in {flood_took:?}; \
         server holds {on_server:?}; a normal node registered and got its map in {took:?} \
         (None: not within 30 s); log: {accept_failures} accept failures, {shed_lines} shedding lines",
        held.len()
    );
    assert!(
        took.is_some_and(|t| t < Duration::from_secs(2)),
        "took {took:?}"
    );
    let evicted = metric(p.metrics, "weft_control_connections_evicted_total")
        .await
        .unwrap_or(0.0);
    eprintln!("evicted to make room: {evicted}");
    assert!(evicted >= 100.0, "the flood displaced itself: {evicted}");
    assert!(
        accept_failures <= 3 && shed_lines <= 3,
        "logged {accept_failures} accept failures and {shed_lines} shedding lines"
    );
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_file_limit_is_raised_at_start_and_the_connection_limit_follows_it() {
    use nix::sys::resource::{Resource, getrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let target = hard.min(4096);
    let dir = tempfile::tempdir().unwrap();
    let p = ServerProcess::start_with(dir.path(), free_port(), &[], Some((256, target))).await;
    let log = p.log();
    assert!(
        log.contains("raised the open-file limit") && log.contains(&format!("to={target}")),
        "{log}"
    );
    let limit = target - weft_control::config::RESERVED_DESCRIPTORS;
    assert!(log.contains(&format!("max_connections={limit}")), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_info_changes_beyond_the_budget_are_held_and_only_the_latest_is_sent() {
    let t = TestServer::start().await;
    t.user("u").await;
    let key = t.reusable_key("u").await;
    let mut a = TestNode::new(&t, "a");
    let mut b = TestNode::new(&t, "b");
    a.join(&key).await;
    b.join(&key).await;
    b.wait_map(|m| TestNode::peer(m, "a").is_some()).await;
    b.events.clear();

    let version = |i: usize| HostInfo {
        os_version: format!("v{i}"),
        ..common::host_info("a")
    };
    for i in 0..50 {
        a.session.as_ref().unwrap().update_host_info(version(i));
    }
    // The first six go out at once.
    let seen_by =
        |m: &weft_types::NetMap| TestNode::peer(m, "a").map(|p| p.host_info.os_version.clone());
    b.wait_map(|m| seen_by(m).as_deref() == Some("v5")).await;
    // The rest wait for the budget; the test clock's jump releases the
    // latest only.
    t.clock.advance(Duration::from_secs(10));
    b.wait_map(|m| seen_by(m).as_deref() == Some("v49")).await;
    let seen: Vec<String> = b
        .events
        .iter()
        .filter_map(|e| match e {
            weft_client::SessionEvent::NetMap { netmap, .. } => seen_by(netmap),
            _ => None,
        })
        .collect();
    let allowed: Vec<String> = (0..6)
        .map(|i| format!("v{i}"))
        .chain(["v49".into()])
        .collect();
    assert!(
        seen.iter().all(|v| allowed.contains(v)),
        "peers saw only the budget and the latest: {seen:?}"
    );
    let held = metric(
        t.server.metrics_addr().unwrap(),
        "weft_host_info_updates_held_total",
    )
    .await
    .unwrap();
    assert!(held >= 44.0, "held {held}");
    a.close().await;
    b.close().await;
    t.server.shutdown().await;
}
