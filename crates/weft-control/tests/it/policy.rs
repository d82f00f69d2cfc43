//! The policy on the server: set (refused when invalid or a test fails),
//! visibility of peers, per-node filters as deltas to the affected nodes
//! only, explain against the live tailnet.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{TestNode, TestServer};
use weft_client::SessionEvent;
use weft_control::admin::types::{ExplainQuery, NewPreauthKey};
use weft_types::control::RefusalReason;

const POLICY: &str = r#"{
  "groups": {"group:eng": ["alice@example.com"]},
  "tagOwners": {"tag:server": ["group:eng"]},
  "acls": [
    {"action": "accept", "src": ["group:eng"], "dst": ["tag:server:22"]},
  ],
  "tests": [
    {"src": "alice@example.com", "accept": ["tag:server:22"]},
    {"src": "bob@example.com", "deny": ["tag:server:22"]},
  ],
}"#;

/// Waits briefly and returns how many netmap events arrived.
async fn netmap_events_within(n: &mut TestNode, d: Duration) -> usize {
    let mut count = 0;
    let deadline = tokio::time::Instant::now() + d;
    while let Ok(r) = tokio::time::timeout_at(deadline, n.next_result()).await {
        if let Ok(SessionEvent::NetMap { .. }) = r {
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn a_policy_limits_visibility_and_changes_go_to_the_affected_nodes_only() {
    let t = TestServer::start().await;
    t.user("alice@example.com").await;
    t.user("bob@example.com").await;
    let ka = t.reusable_key("alice@example.com").await;
    let kb = t.reusable_key("bob@example.com").await;
    let ks = t
        .key(NewPreauthKey {
            user: Some("alice@example.com".into()),
            tags: vec!["tag:server".into()],
            ..NewPreauthKey::default()
        })
        .await
        .secret;
    let mut a = TestNode::new(&t, "alice-laptop");
    let mut b = TestNode::new(&t, "bob-laptop");
    let mut s = TestNode::new(&t, "server");
    a.join(&ka).await;
    b.join(&kb).await;
    s.join(&ks).await;
    for n in [&mut a, &mut b, &mut s] {
        n.wait_map(|m| m.peers.len() == 2).await;
    }

    let admin = t.server.admin();
    let v = admin.set_policy(POLICY, None, "test").await.unwrap();
    assert_eq!(v.version, Some(1));
    // Alice's laptop and the server see each other; Bob sees nobody.
    let ma = a.wait_map(|m| m.peers.len() == 1).await;
    assert!(TestNode::peer(&ma, "server").is_some());
    assert!(
        ma.packet_filter.rules.is_empty(),
        "nothing may reach alice-laptop"
    );
    b.wait_map(|m| m.peers.is_empty()).await;
    let ms = s.wait_map(|m| m.peers.len() == 1).await;
    let a_ip = ma.self_node.addresses[0].addr();
    let s_ip = ms.self_node.addresses[0].addr();
    assert!(
        ms.packet_filter
            .rules
            .iter()
            .any(|r| r.matches(a_ip, s_ip, 6, 22))
    );
    assert!(
        !ms.packet_filter
            .rules
            .iter()
            .any(|r| r.matches(a_ip, s_ip, 6, 80))
    );

    // Opening port 443 too changes only the server's filter.
    admin.flush().await;
    for n in [&mut a, &mut b, &mut s] {
        netmap_events_within(n, Duration::from_millis(100)).await;
    }
    admin
        .set_policy(
            &POLICY.replace(
                "\"dst\": [\"tag:server:22\"]",
                "\"dst\": [\"tag:server:22,443\"]",
            ),
            None,
            "test",
        )
        .await
        .unwrap();
    let ms = s
        .wait_map(|m| {
            m.packet_filter
                .rules
                .iter()
                .any(|r| r.matches(a_ip, s_ip, 6, 443))
        })
        .await;
    assert_eq!(ms.peers.len(), 1);
    admin.flush().await;
    assert_eq!(
        netmap_events_within(&mut a, Duration::from_millis(300)).await,
        0,
        "alice-laptop is unaffected"
    );
    assert_eq!(
        netmap_events_within(&mut b, Duration::from_millis(50)).await,
        0,
        "bob-laptop is unaffected"
    );

    // Explain against the live tailnet names the deciding rule.
    let x = admin
        .explain(&ExplainQuery {
            src: "alice-laptop".into(),
            dst: "server:443".into(),
            proto: None,
        })
        .unwrap();
    assert_eq!(x.verdict, "allowed");
    assert!(
        x.text.contains("acls[0] at policy.hujson:5:5"),
        "{}",
        x.text
    );
    let x = admin
        .explain(&ExplainQuery {
            src: "bob@example.com".into(),
            dst: "server:22".into(),
            proto: Some("tcp".into()),
        })
        .unwrap();
    assert_eq!(x.verdict, "denied");
    let err = admin
        .explain(&ExplainQuery {
            src: "nosuch".into(),
            dst: "server:22".into(),
            proto: None,
        })
        .unwrap_err();
    assert!(err.message.contains("nosuch"), "{err}");
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_invalid_policy_or_a_failing_test_is_refused_and_the_old_policy_stays() {
    let t = TestServer::start().await;
    t.user("alice@example.com").await;
    t.user("bob@example.com").await;
    let admin = t.server.admin();
    let before = admin.policy().await.unwrap();
    assert_eq!(
        before.version, None,
        "a new tailnet has the built-in allow-all policy"
    );
    assert!(before.policy.contains("\"*:*\""));

    let err = admin
        .set_policy(
            "{\"acls\": [{\"action\": \"accept\", \"srcs\": []}]}",
            None,
            "t",
        )
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("policy refused, the old policy stays in force"),
        "{err}"
    );
    assert!(err.message.contains("policy:1:"), "names a position: {err}");
    assert!(
        !err.message.contains("policy.hujson"),
        "names no file the caller never sent: {err}"
    );
    let named = admin.check_policy(
        "{\"acls\": [{\"action\": \"accept\", \"srcs\": []}]}",
        Some("acl.hujson"),
    );
    assert!(
        named
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("acl.hujson:1:")),
        "{named:?}"
    );

    let failing = POLICY.replace(
        "\"bob@example.com\", \"deny\"",
        "\"bob@example.com\", \"accept\"",
    );
    let err = admin.set_policy(&failing, None, "t").await.unwrap_err();
    assert!(err.message.contains("tests[1]"), "{err}");
    assert!(err.message.contains("expected allowed"), "{err}");
    assert_eq!(admin.policy().await.unwrap().version, None);

    let check = admin.check_policy(&failing, None);
    assert!(!check.ok && check.error.is_none());
    assert!(check.report.unwrap().contains("1 of 2 test entries failed"));
    t.server.shutdown().await;
}

#[tokio::test]
async fn requested_tags_need_the_tag_owners_permission() {
    let t = TestServer::start().await;
    t.user("alice@example.com").await;
    t.user("bob@example.com").await;
    t.server
        .admin()
        .set_policy(POLICY, None, "t")
        .await
        .unwrap();
    let kb = t.reusable_key("bob@example.com").await;
    let ka = t.reusable_key("alice@example.com").await;

    let mut n = TestNode::new(&t, "sneaky");
    let mut p = n.params(weft_types::control::RegisterAuth::AuthKey(
        weft_types::control::AuthKey(kb),
    ));
    p.host_info.requested_tags = ["tag:server".parse().unwrap()].into();
    n.start(p).await;
    match n.next().await {
        SessionEvent::Refused(r) => {
            assert_eq!(r.reason, RefusalReason::TagsNotPermitted);
            assert!(
                r.message.contains("tag:server") && r.message.contains("bob@example.com"),
                "{}",
                r.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }

    let mut ok = TestNode::new(&t, "db");
    let mut p = ok.params(weft_types::control::RegisterAuth::AuthKey(
        weft_types::control::AuthKey(ka),
    ));
    p.host_info.requested_tags = ["tag:server".parse().unwrap()].into();
    ok.start(p).await;
    match ok.next().await {
        SessionEvent::Registered(r) => {
            assert!(r.user.is_none(), "a tagged node has no user");
            assert!(r.tags.contains("tag:server"));
        }
        other => panic!("expected Registered, got {other:?}"),
    }
    t.server.shutdown().await;
}
