//! Nodes register with the real server in-process and follow their map
//! streams: full maps, then deltas when peers join, change endpoints, go
//! offline, expire, log out and leave.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{TestNode, TestServer, endpoint};
use weft_client::{PeerDiff, SessionEvent};
use weft_control::admin::types::NewPreauthKey;
use weft_types::control::{ErrorCode, ExpiryRequest, RegisterAuth};

#[tokio::test]
async fn three_nodes_get_full_maps_and_deltas_as_peers_join_change_go_offline_and_leave() {
    let (t, key) = TestServer::with_user("alice@example.com").await;

    let mut a = TestNode::joined(&t, "alpha", &key).await;
    let mut b = TestNode::joined(&t, "bravo", &key).await;
    let mut c = TestNode::joined(&t, "charlie", &key).await;
    for n in [&mut a, &mut b, &mut c] {
        let m = n
            .wait_map(|m| m.peers.len() == 2 && m.peers.values().all(|p| p.online))
            .await;
        assert!(m.peers.values().all(|p| p.online && !p.expired), "{m:#?}");
        assert_eq!(m.domain.to_string(), "weft.internal");
        assert!(m.self_node.name.to_string().ends_with(".weft.internal"));
        assert_eq!(m.user_profiles.len(), 1);
        assert_eq!(m.packet_filter.rules.len(), 1, "allow-all: one rule");
    }
    // C's full map came after A and B joined: both are in it at once.
    let first_c_map = c
        .events
        .iter()
        .find_map(|e| match e {
            SessionEvent::NetMap { netmap, .. } => Some(netmap.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(first_c_map.peers.len(), 2);

    // A fourth node joins: everyone gets it as a delta.
    let mut d = TestNode::joined(&t, "delta", &key).await;
    for n in [&mut a, &mut b, &mut c] {
        n.wait_map(|m| TestNode::peer(m, "delta").is_some()).await;
        let added = n.events.iter().rev().any(|e| matches!(e,
            SessionEvent::NetMap { diff, .. } if diff.peers.values().any(|p| matches!(p, PeerDiff::Added))));
        assert!(added, "{}: the join came as an added peer", n.name);
    }

    // B reports new endpoints.
    b.session
        .as_ref()
        .unwrap()
        .update_endpoints(vec![endpoint("198.18.5.5:41641")]);
    for n in [&mut a, &mut c, &mut d] {
        n.wait_map(|m| {
            TestNode::peer(m, "bravo")
                .is_some_and(|p| p.endpoints == vec![endpoint("198.18.5.5:41641")])
        })
        .await;
    }

    // C goes offline.
    c.close().await;
    for n in [&mut a, &mut b, &mut d] {
        let m = n
            .wait_map(|m| TestNode::peer(m, "charlie").is_some_and(|p| !p.online))
            .await;
        assert!(TestNode::peer(&m, "charlie").unwrap().last_seen.is_some());
    }

    // D leaves (an administrator deletes it).
    let d_id = d.netmap.as_ref().unwrap().self_node.id;
    t.server.admin().delete_node(d_id.0).await.unwrap();
    for n in [&mut a, &mut b] {
        n.wait_map(|m| TestNode::peer(m, "delta").is_none()).await;
    }
    let err = loop {
        match d.next_result().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::NotRegistered), "{err}");
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_expired_node_key_shows_as_expired_everywhere_and_ends_its_stream() {
    let t = TestServer::start().await;
    t.user("alice").await;
    let long = t.reusable_key("alice").await;
    let short = t
        .key(NewPreauthKey {
            user: Some("alice".into()),
            node_key_expiry_ms: Some(60 * 60 * 1000),
            ..NewPreauthKey::default()
        })
        .await
        .secret;
    let mut a = TestNode::new(&t, "a");
    let mut b = TestNode::new(&t, "b");
    a.join(&long).await;
    b.join(&short).await;
    a.wait_map(|m| TestNode::peer(m, "b").is_some_and(|p| !p.expired))
        .await;

    t.clock.advance(Duration::from_secs(2 * 60 * 60));
    let m = a
        .wait_map(|m| TestNode::peer(m, "b").is_some_and(|p| p.expired))
        .await;
    let peer = TestNode::peer(&m, "b").unwrap();
    assert!(
        !peer.is_usable_at(weft_types::UnixMillis(0)),
        "an expired peer is not usable"
    );
    let err = loop {
        match b.next_result().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(err.code(), Some(ErrorCode::NodeKeyExpired), "{err}");
    let view = t.server.admin().node(peer.id.0).await.unwrap();
    assert!(view.expired);
    t.server.shutdown().await;
}

#[tokio::test]
async fn logout_expires_the_key_and_peers_see_it() {
    let (t, key) = TestServer::with_user("alice").await;
    let mut a = TestNode::joined(&t, "a", &key).await;
    let mut b = TestNode::joined(&t, "b", &key).await;
    a.wait_map(|m| TestNode::peer(m, "b").is_some()).await;

    let mut params = b.params(RegisterAuth::None);
    params.expiry = ExpiryRequest::Now;
    params.map = false;
    b.start(params).await;
    assert!(matches!(b.next().await, SessionEvent::LoggedOut));
    a.wait_map(|m| TestNode::peer(m, "b").is_some_and(|p| p.expired))
        .await;

    // Registering the logged-out key again needs a new login.
    b.start(b.params(RegisterAuth::None)).await;
    assert!(matches!(b.next().await, SessionEvent::NodeKeyExpired));
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_ephemeral_node_is_deleted_after_the_grace_period_offline() {
    let (t, key) = TestServer::with_user("ci").await;
    let eph = t
        .key(NewPreauthKey {
            user: Some("ci".into()),
            ephemeral: true,
            ..NewPreauthKey::default()
        })
        .await
        .secret;
    let mut a = TestNode::joined(&t, "a", &key).await;
    let mut e = TestNode::joined(&t, "runner", &eph).await;
    a.wait_map(|m| TestNode::peer(m, "runner").is_some_and(|p| p.online))
        .await;
    e.close().await;
    a.wait_map(|m| TestNode::peer(m, "runner").is_some_and(|p| !p.online))
        .await;

    // Just inside the grace period (5 minutes by default) it stays.
    t.clock.advance(Duration::from_secs(4 * 60));
    t.server.admin().flush().await;
    assert!(TestNode::peer(a.netmap.as_ref().unwrap(), "runner").is_some());
    t.clock.advance(Duration::from_secs(2 * 60));
    a.wait_map(|m| TestNode::peer(m, "runner").is_none()).await;
    let nodes = t.server.admin().list_nodes().await.unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    t.server.shutdown().await;
}
