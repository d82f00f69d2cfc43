//! Registration: pre-auth key semantics, refusals with clear messages,
//! interactive login approved by an administrator, key rotation.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{TestNode, TestServer};
use weft_client::SessionEvent;
use weft_control::admin::types::NewPreauthKey;
use weft_types::control::{AuthKey, RefusalReason, RegisterAuth};

fn auth(key: &str) -> RegisterAuth {
    RegisterAuth::AuthKey(AuthKey(key.into()))
}

async fn refusal(node: &mut TestNode, key: &str) -> weft_types::control::Refusal {
    node.start(node.params(auth(key))).await;
    match node.next().await {
        SessionEvent::Refused(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn a_one_off_key_registers_one_node_and_a_reusable_key_many() {
    let t = TestServer::start().await;
    t.user("alice").await;
    let once = t
        .key(NewPreauthKey {
            user: Some("alice".into()),
            ..NewPreauthKey::default()
        })
        .await
        .secret;
    let many = t.reusable_key("alice").await;

    let mut a = TestNode::new(&t, "a");
    a.join(&once).await;
    let mut b = TestNode::new(&t, "b");
    let r = refusal(&mut b, &once).await;
    assert_eq!(r.reason, RefusalReason::InvalidAuthKey);
    assert!(
        r.message.contains("single-use and was already used"),
        "{}",
        r.message
    );

    for name in ["c", "d", "e"] {
        TestNode::joined(&t, name, &many).await;
    }
    // The one-off key's node restarting with its own key needs no key at all.
    a.start(a.params(RegisterAuth::None)).await;
    assert!(matches!(a.next().await, SessionEvent::Registered(_)));
    let keys = t.server.admin().list_preauth_keys(None).await.unwrap();
    let once_view = keys.iter().find(|k| !k.reusable).unwrap();
    assert_eq!((once_view.used_count, once_view.usable), (1, false));
    let many_view = keys.iter().find(|k| k.reusable).unwrap();
    assert_eq!((many_view.used_count, many_view.usable), (3, true));
    t.server.shutdown().await;
}

#[tokio::test]
async fn expired_revoked_and_unknown_keys_are_refused_with_a_clear_message() {
    let t = TestServer::start().await;
    t.user("alice").await;
    let short = t
        .key(NewPreauthKey {
            user: Some("alice".into()),
            reusable: true,
            expiration_ms: Some(60_000),
            ..NewPreauthKey::default()
        })
        .await;
    let revoked = t
        .key(NewPreauthKey {
            user: Some("alice".into()),
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await;
    t.server
        .admin()
        .expire_preauth_key(revoked.key.id)
        .await
        .unwrap();
    t.clock.advance(Duration::from_secs(120));

    let mut n = TestNode::new(&t, "n");
    let r = refusal(&mut n, &short.secret).await;
    assert_eq!(r.reason, RefusalReason::InvalidAuthKey);
    assert!(r.message.contains("has expired"), "{}", r.message);
    assert!(
        r.message.contains(&short.key.prefix),
        "names the key: {}",
        r.message
    );
    assert!(
        !r.message.contains(&short.secret),
        "never echoes the secret"
    );

    let r = refusal(&mut n, &revoked.secret).await;
    assert!(r.message.contains("was revoked"), "{}", r.message);

    let unknown = format!("weftkey-auth-000000000000-{}", "0".repeat(48));
    let r = refusal(&mut n, &unknown).await;
    assert_eq!(r.reason, RefusalReason::InvalidAuthKey);
    assert!(
        r.message.contains("not valid on this server"),
        "{}",
        r.message
    );

    let r = refusal(&mut n, "hunter2").await;
    assert!(
        r.message.contains("not valid on this server"),
        "{}",
        r.message
    );
    assert!(t.server.admin().list_nodes().await.unwrap().is_empty());
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_interactive_login_completes_when_an_administrator_approves_it() {
    let t = TestServer::start().await;
    t.user("bob@example.com").await;
    let mut n = TestNode::new(&t, "bobs-laptop");
    n.start(n.params(RegisterAuth::None)).await;
    let url = match n.next().await {
        SessionEvent::NeedsAuth { auth_url } => auth_url,
        other => panic!("expected an auth URL, got {other:?}"),
    };
    assert!(url.starts_with(&format!("{}/a/", t.server.url())), "{url}");
    let auth_id = url.rsplit('/').next().unwrap().to_owned();

    // The login page says what to do, and who to ask.
    let page = t.http_get(&format!("/a/{auth_id}")).await;
    assert!(page.contains("weft-control nodes approve"), "{page}");
    assert!(page.contains(&auth_id));
    assert!(page.contains("bobs-laptop"));

    // Nothing happens until an administrator approves; the follow-up waits.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), n.next_result())
            .await
            .is_err(),
        "no answer before approval"
    );
    let node = t
        .server
        .admin()
        .approve_login(&auth_id, "bob@example.com")
        .await
        .unwrap();
    assert_eq!(node.user.as_deref(), Some("bob@example.com"));
    match n.next().await {
        SessionEvent::Registered(r) => {
            assert_eq!(r.node_id.0, node.id);
            assert_eq!(r.user.unwrap().login_name.to_string(), "bob@example.com");
        }
        other => panic!("expected Registered, got {other:?}"),
    }
    let m = n.wait_map(|_| true).await;
    assert_eq!(m.self_node.name.to_string(), "bobs-laptop.weft.internal");
    let page = t.http_get(&format!("/a/{auth_id}")).await;
    assert!(page.contains("Device approved"), "{page}");

    // Approving twice names the problem.
    let err = t
        .server
        .admin()
        .approve_login(&auth_id, "bob@example.com")
        .await
        .unwrap_err();
    assert!(err.message.contains("already approved"), "{err}");
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_declined_login_is_refused_and_an_unknown_user_is_named() {
    let t = TestServer::start().await;
    let mut n = TestNode::new(&t, "x");
    n.start(n.params(RegisterAuth::None)).await;
    let SessionEvent::NeedsAuth { auth_url } = n.next().await else {
        panic!("expected an auth URL")
    };
    let auth_id = auth_url.rsplit('/').next().unwrap().to_owned();
    let err = t
        .server
        .admin()
        .approve_login(&auth_id, "nobody")
        .await
        .unwrap_err();
    assert_eq!(err.message, "unknown user \"nobody\"");
    t.server.admin().reject_login(&auth_id).await.unwrap();
    match n.next().await {
        SessionEvent::Refused(r) => assert_eq!(r.reason, RefusalReason::AccessDenied),
        other => panic!("expected a refusal, got {other:?}"),
    }
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_node_key_is_rotated_with_the_old_key_and_peers_see_the_new_one() {
    let (t, key) = TestServer::with_user("alice").await;
    let mut a = TestNode::joined(&t, "a", &key).await;
    let mut b = TestNode::joined(&t, "b", &key).await;
    let old = b.node_key.public();
    let m = a.wait_map(|m| TestNode::peer(m, "b").is_some()).await;
    let id = TestNode::peer(&m, "b").unwrap().id;

    b.node_key = weft_types::NodePrivate::generate();
    let mut params = b.params(RegisterAuth::None);
    params.old_node_key = Some(old);
    b.start(params).await;
    match b.next().await {
        SessionEvent::Registered(r) => assert_eq!(r.node_id, id, "same node"),
        other => panic!("expected Registered, got {other:?}"),
    }
    let new = b.node_key.public();
    a.wait_map(|m| TestNode::peer(m, "b").is_some_and(|p| p.node_key == new))
        .await;

    // The old key is gone; a machine that is not B cannot claim B's key.
    let mut mallory = TestNode::new(&t, "mallory");
    mallory.node_key = b.node_key.clone();
    let r = refusal(&mut mallory, &key).await;
    assert_eq!(r.reason, RefusalReason::NodeKeyInUse);
    assert!(
        r.message.contains("already registered to another machine"),
        "{}",
        r.message
    );
    t.server.shutdown().await;
}

#[tokio::test]
async fn hostnames_become_unique_dns_labels() {
    let (t, key) = TestServer::with_user("alice").await;
    let mut names = Vec::new();
    for host in ["Alice's Laptop", "alice's laptop.local", "___", "web"] {
        let n = TestNode::joined(&t, host, &key).await;
        names.push(n.netmap.as_ref().unwrap().self_node.name.to_string());
    }
    assert_eq!(
        names,
        [
            "alices-laptop.weft.internal",
            "alices-laptop-1.weft.internal",
            "node.weft.internal",
            "web.weft.internal",
        ]
    );
    t.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_storm_beyond_capacity_is_shed_with_a_retry_delay_and_then_served() {
    use std::collections::BTreeSet;
    use weft_client::{ConnectOptions, Target};
    use weft_types::control::{ExpiryRequest, RegisterRequest, RegisterResponse};
    use weft_types::{CapabilityVersion, MachinePrivate, NodePrivate};

    const NODES: usize = 100;
    let t = TestServer::start_with(|c| {
        c.max_registrations_in_flight = 1;
        c.max_unregistered_per_source = 4 * NODES;
    })
    .await;
    t.user("alice").await;
    let key = t.reusable_key("alice").await;
    let machine = |i: usize| MachinePrivate::from_bytes([i as u8 + 1; 32]);
    let req = |i: usize| RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: NodePrivate::from_bytes([i as u8 + 1; 32]).public(),
        old_node_key: None,
        auth: auth(&key),
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: common::host_info(&format!("storm-{i}")),
    };
    let target = |i: usize| Target {
        url: t.url(),
        machine_key: machine(i),
        server_key: t.server.public_key(),
    };
    let once = |i: usize| {
        let (target, req) = (target(i), req(i));
        async move {
            weft_client::register(&target, req, &ConnectOptions::default())
                .await
                .map_err(|e| format!("node {i}: {e}"))
        }
    };

    // All at once: one is worked on at a time, the others that arrive
    // meanwhile are told to come back later. Every request gets an answer.
    let answers = futures::future::join_all((0..NODES).map(once)).await;
    let mut shed = Vec::new();
    for (i, a) in answers.into_iter().enumerate() {
        match a.unwrap() {
            RegisterResponse::Registered(_) => {}
            RegisterResponse::Refused(r) => {
                assert_eq!(r.reason, RefusalReason::ServerBusy, "{}", r.message);
                let after = r.retry_after_ms.expect("a busy refusal names its delay");
                assert!((2_000..=4_000).contains(&after), "{after} ms");
                assert!(
                    r.message.contains("busy") && r.message.contains("try again in"),
                    "{}",
                    r.message
                );
                shed.push((i, after));
            }
            other => panic!("node {i}: {other:?}"),
        }
    }
    assert!(
        !shed.is_empty(),
        "{NODES} registrations at once with room for one: none was shed"
    );
    assert!(shed.len() < NODES, "every registration was shed");
    // The admin API still answers in the storm's wake.
    let nodes = t.server.admin().list_nodes().await.unwrap();
    assert_eq!(nodes.len(), NODES - shed.len());

    // The shed ones come back, each after the delay it was told (as weftd
    // does), spread out by the server, and get in.
    let delays: BTreeSet<u64> = shed.iter().map(|(_, d)| *d).collect();
    assert!(
        delays.len() > 1 || shed.len() == 1,
        "every shed node was told the same delay"
    );
    let comebacks = shed.iter().map(|&(i, first)| {
        let once = &once;
        async move {
            let mut delay = first;
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                match once(i).await {
                    Ok(RegisterResponse::Registered(_)) => return 1usize,
                    Ok(RegisterResponse::Refused(r)) if r.reason == RefusalReason::ServerBusy => {
                        delay = r.retry_after_ms.unwrap_or(2_000);
                    }
                    other => panic!("node {i}: {other:?}"),
                }
            }
            0
        }
    });
    let got_in: usize = futures::future::join_all(comebacks).await.into_iter().sum();
    assert_eq!(got_in, shed.len(), "some shed nodes never got in");
    let nodes = t.server.admin().list_nodes().await.unwrap();
    assert_eq!(nodes.len(), NODES);
    let addrs: BTreeSet<_> = nodes.iter().map(|n| &n.ipv4).collect();
    assert_eq!(addrs.len(), NODES, "an address was handed out twice");
}

#[tokio::test]
async fn logins_waiting_for_a_person_do_not_take_the_registration_capacity() {
    let t = TestServer::start_with(|c| c.max_registrations_in_flight = 1).await;
    t.user("alice").await;
    let key = t.reusable_key("alice").await;
    // Two interactive logins sit at their URLs; their follow-ups long-poll.
    let mut waiting = Vec::new();
    for name in ["w1", "w2"] {
        let mut n = TestNode::new(&t, name);
        n.start(n.params(RegisterAuth::None)).await;
        assert!(matches!(n.next().await, SessionEvent::NeedsAuth { .. }));
        waiting.push(n);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A node with a pre-auth key still gets in (not `server_busy`).
    let mut b = TestNode::new(&t, "b");
    b.start(b.params(auth(&key))).await;
    match b.next().await {
        SessionEvent::Registered(_) => {}
        other => panic!("expected registered, got {other:?}"),
    }
    for mut n in waiting {
        n.close().await;
    }
    b.close().await;
}
