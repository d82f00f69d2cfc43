use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use weft_control_store::{
    DnsLabel, Endpoint, EndpointKind, KeyLifetime, NewPreauthKey, NodeId, NodeOwner,
    NodeStatusUpdate, RegisterAuth, StoreError, Tag, UnixMillis,
};
use weft_types::DiscoPublic;

use crate::common::{
    DAY, HOUR, MINUTE, T0, TestDb, at, machine_key, node_key, register_as, register_req,
    reusable_key_for, user,
};

pub async fn nodes_are_found_by_id_key_and_address(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a = register_as(&store, &alice, 1, "a", T0).await.node;
    let b = register_as(&store, &bob, 2, "b", T0).await.node;
    let c = register_as(&store, &alice, 3, "c", T0).await.node;

    assert_eq!(store.node(b.id).await.unwrap(), b);
    assert_eq!(store.node_by_node_key(&b.node_key).await.unwrap(), b);
    assert_eq!(store.node_by_machine_key(&b.machine_key).await.unwrap(), b);
    assert_eq!(store.node_by_ip(IpAddr::V4(b.ipv4)).await.unwrap(), b);
    assert_eq!(store.node_by_ip(IpAddr::V6(b.ipv6)).await.unwrap(), b);
    let mapped = IpAddr::V6(b.ipv4.to_ipv6_mapped());
    assert_eq!(store.node_by_ip(mapped).await.unwrap(), b);
    assert_eq!(
        store.list_nodes().await.unwrap(),
        vec![a.clone(), b.clone(), c.clone()]
    );
    assert_eq!(
        store.list_nodes_of_user(alice.id).await.unwrap(),
        vec![a, c]
    );
    assert_eq!(store.list_nodes_of_user(bob.id).await.unwrap(), vec![b]);
}

pub async fn unknown_nodes_are_named_in_errors(db: &TestDb) {
    let store = db.store().await;
    let ghost = NodeId(4242);
    let expect_unknown = |err: StoreError| {
        assert!(
            matches!(err, StoreError::UnknownNode(id) if id == ghost),
            "{err}"
        );
        assert_eq!(err.to_string(), "unknown node id 4242");
    };
    expect_unknown(store.node(ghost).await.unwrap_err());
    expect_unknown(store.delete_node(ghost).await.unwrap_err());
    expect_unknown(
        store
            .rename_node(ghost, &"x".parse().unwrap())
            .await
            .unwrap_err(),
    );
    expect_unknown(
        store
            .set_node_tags(ghost, &BTreeSet::new())
            .await
            .unwrap_err(),
    );
    expect_unknown(store.set_node_authorized(ghost, true).await.unwrap_err());
    expect_unknown(store.expire_node(ghost, T0).await.unwrap_err());
    expect_unknown(store.set_node_expiry(ghost, None).await.unwrap_err());
    expect_unknown(store.set_online(ghost, true, T0).await.unwrap_err());
    expect_unknown(
        store
            .update_node_status(ghost, NodeStatusUpdate::default(), T0)
            .await
            .unwrap_err(),
    );

    let nk = node_key(9, 0);
    let err = store.node_by_node_key(&nk).await.unwrap_err();
    assert_eq!(err.to_string(), format!("unknown node key {nk}"));
    let err = store
        .rotate_node_key(&nk, &node_key(9, 1), T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownNodeKey(k) if k == nk),
        "{err}"
    );
    let mk = machine_key(9);
    let err = store.node_by_machine_key(&mk).await.unwrap_err();
    assert_eq!(err.to_string(), format!("unknown machine key {mk}"));
    let ip: IpAddr = "100.64.1.2".parse().unwrap();
    let err = store.node_by_ip(ip).await.unwrap_err();
    assert_eq!(err.to_string(), "no node has address 100.64.1.2");
}

pub async fn status_online_and_last_seen_are_recorded(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let a = register_as(&store, &alice, 1, "a", T0).await.node;
    let b = register_as(&store, &alice, 2, "b", T0).await.node;

    let disco = DiscoPublic::from_bytes([5; 32]);
    let eps = vec![
        Endpoint {
            addr: "198.18.0.7:41641".parse().unwrap(),
            kind: EndpointKind::Local,
        },
        Endpoint {
            addr: "[2001:db8::1]:41641".parse().unwrap(),
            kind: EndpointKind::Stun,
        },
    ];
    let update = NodeStatusUpdate {
        disco_key: Some(disco),
        endpoints: Some(eps.clone()),
        host_info: Some(
            serde_json::json!({ "os": "linux", "ssh_host_keys": ["ssh-ed25519 AAAA"] }),
        ),
        hostname: Some("a-new".into()),
    };
    let a1 = store
        .update_node_status(a.id, update, at(MINUTE))
        .await
        .unwrap();
    assert_eq!(a1.disco_key, Some(disco));
    assert_eq!(a1.endpoints, eps);
    assert_eq!(a1.host_info["ssh_host_keys"][0], "ssh-ed25519 AAAA");
    assert_eq!(a1.hostname, "a-new");
    assert_eq!(a1.given_name.as_str(), "a");
    assert_eq!(a1.last_seen, Some(at(MINUTE)));
    // An empty update changes nothing but last_seen.
    let a2 = store
        .update_node_status(a.id, NodeStatusUpdate::default(), at(2 * MINUTE))
        .await
        .unwrap();
    assert_eq!(a2.last_seen, Some(at(2 * MINUTE)));
    let mut same = a2.clone();
    same.last_seen = a1.last_seen;
    assert_eq!(same, a1);

    store.set_online(a.id, true, at(3 * MINUTE)).await.unwrap();
    store.set_online(b.id, true, at(3 * MINUTE)).await.unwrap();
    let a3 = store.node(a.id).await.unwrap();
    assert!(a3.online);
    assert_eq!(a3.last_seen, Some(at(3 * MINUTE)));
    assert_eq!(
        store
            .touch_last_seen(&[a.id, NodeId(999)], at(4 * MINUTE))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store.node(a.id).await.unwrap().last_seen,
        Some(at(4 * MINUTE))
    );
    store.set_online(b.id, false, at(5 * MINUTE)).await.unwrap();

    // Restart: whatever was online is now offline and seen at restart time.
    assert_eq!(store.mark_all_offline(at(HOUR)).await.unwrap(), 1);
    let (a4, b4) = (
        store.node(a.id).await.unwrap(),
        store.node(b.id).await.unwrap(),
    );
    assert!(!a4.online && !b4.online);
    assert_eq!(a4.last_seen, Some(at(HOUR)));
    assert_eq!(b4.last_seen, Some(at(5 * MINUTE)));
}

pub async fn node_keys_rotate_and_expire(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let a = register_as(&store, &alice, 1, "a", T0).await.node;
    assert!(!a.is_expired(T0));

    let new_key = node_key(1, 7);
    let rotated = store
        .rotate_node_key(&a.node_key, &new_key, at(HOUR))
        .await
        .unwrap();
    assert_eq!(rotated.node_key, new_key);
    assert_eq!(
        (rotated.id, rotated.ipv4, rotated.key_expiry),
        (a.id, a.ipv4, a.key_expiry)
    );
    assert_eq!(store.node_by_node_key(&new_key).await.unwrap().id, a.id);
    assert!(matches!(
        store.node_by_node_key(&a.node_key).await,
        Err(StoreError::UnknownNodeKey(_))
    ));
    // Rotating to the key it already has is a no-op.
    assert_eq!(
        store
            .rotate_node_key(&new_key, &new_key, T0)
            .await
            .unwrap()
            .node_key,
        new_key
    );

    let expired = store.expire_node(a.id, at(DAY)).await.unwrap();
    assert_eq!(expired.key_expiry, Some(at(DAY)));
    assert!(expired.is_expired(at(DAY)) && !expired.is_expired(at(DAY - 1)));
    let forever = store.set_node_expiry(a.id, None).await.unwrap();
    assert_eq!(forever.key_expiry, None);
    assert!(!forever.is_expired(UnixMillis(i64::MAX)));
}

pub async fn renames_and_tags_change_names_and_ownership(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let a = register_as(&store, &alice, 1, "a", T0).await.node;
    let b = register_as(&store, &alice, 2, "b", T0).await.node;
    let name = |s: &str| -> DnsLabel { s.parse().unwrap() };

    let renamed = store.rename_node(a.id, &name("db-primary")).await.unwrap();
    assert_eq!(renamed.given_name, name("db-primary"));
    let again = store.rename_node(a.id, &name("db-primary")).await.unwrap();
    assert_eq!(again.given_name, name("db-primary"));
    let err = store
        .rename_node(b.id, &name("db-primary"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::NameTaken(n) if *n == name("db-primary")),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "the name \"db-primary\" is already taken by another node"
    );
    assert_eq!(store.node(b.id).await.unwrap().given_name, name("b"));
    // The old name is free again.
    assert_eq!(
        store
            .rename_node(b.id, &name("a"))
            .await
            .unwrap()
            .given_name,
        name("a")
    );

    let tags: BTreeSet<Tag> = ["tag:web", "tag:prod", "tag:web"]
        .iter()
        .map(|t| t.parse().unwrap())
        .collect();
    let tagged = store.set_node_tags(a.id, &tags).await.unwrap();
    assert_eq!(tagged.user, None);
    assert_eq!(tagged.registered_by, Some(alice.id));
    let names: Vec<&str> = tagged.tags.iter().map(Tag::as_str).collect();
    assert_eq!(names, ["tag:prod", "tag:web"], "sorted, without duplicates");
    assert_eq!(tagged.owner(), NodeOwner::Tags(tags.clone()));
    assert!(
        store
            .list_nodes_of_user(alice.id)
            .await
            .unwrap()
            .iter()
            .all(|n| n.id != a.id)
    );
    let untagged = store.set_node_tags(a.id, &BTreeSet::new()).await.unwrap();
    assert_eq!((untagged.user, untagged.tags.len()), (Some(alice.id), 0));
    assert_eq!(untagged.owner(), NodeOwner::User(alice.id));

    // Device approval.
    assert!(untagged.authorized, "authorized by default");
    let held = store.set_node_authorized(a.id, false).await.unwrap();
    assert!(!held.authorized);
    assert!(
        store
            .set_node_authorized(a.id, true)
            .await
            .unwrap()
            .authorized
    );

    // A node registered by a tag-only key has nobody to fall back to.
    let key = NewPreauthKey {
        user: None,
        tags: [tag("tag:ci")].into(),
        ..reusable_key_for(&alice)
    };
    let (_, secret) = store.create_preauth_key(key, T0).await.unwrap();
    let ci = store
        .register_node(
            &register_req(3, "ci"),
            RegisterAuth::PreauthKey(secret.expose()),
            T0,
        )
        .await
        .unwrap()
        .node;
    let err = store
        .set_node_tags(ci.id, &BTreeSet::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NodeWithoutOwner(id) if id == ci.id),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        format!(
            "node id {} would have neither tags nor a user to own it",
            ci.id
        )
    );
}

fn tag(s: &str) -> Tag {
    s.parse().unwrap()
}

pub async fn ephemeral_gc_selects_only_offline_ephemeral_nodes_past_grace(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let eph = |n: u64, host: &'static str, created: UnixMillis| {
        let store = store.clone();
        let user = alice.id;
        async move {
            let auth = RegisterAuth::User {
                user,
                tags: &BTreeSet::new(),
                ephemeral: true,
                key_lifetime: KeyLifetime::ServerDefault,
            };
            store
                .register_node(&register_req(n, host), auth, created)
                .await
                .unwrap()
                .node
        }
    };
    let grace = Duration::from_secs(30 * 60);
    let now = at(DAY);
    // Offline, last seen long ago: collected.
    let stale = eph(1, "stale", T0).await;
    store
        .set_online(stale.id, false, at(DAY - HOUR))
        .await
        .unwrap();
    // Offline exactly at the grace boundary: collected.
    let boundary = eph(2, "boundary", T0).await;
    store
        .set_online(boundary.id, false, at(DAY - 30 * MINUTE))
        .await
        .unwrap();
    // Offline but seen recently: kept.
    let recent = eph(3, "recent", T0).await;
    store
        .set_online(recent.id, false, at(DAY - 30 * MINUTE + 1))
        .await
        .unwrap();
    // Online, even with an old last_seen: kept.
    let online = eph(4, "online", T0).await;
    store.set_online(online.id, true, T0).await.unwrap();
    // Not ephemeral: kept.
    let regular = register_as(&store, &alice, 5, "regular", T0).await.node;
    store.set_online(regular.id, false, T0).await.unwrap();

    let ids =
        |nodes: Vec<weft_control_store::Node>| nodes.into_iter().map(|n| n.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.ephemeral_gc_candidates(grace, now).await.unwrap()),
        vec![stale.id, boundary.id]
    );
    assert_eq!(
        ids(store.delete_ephemeral_offline(grace, now).await.unwrap()),
        vec![stale.id, boundary.id]
    );
    assert_eq!(
        ids(store.list_nodes().await.unwrap()),
        vec![recent.id, online.id, regular.id]
    );
    assert!(
        store
            .ephemeral_gc_candidates(grace, now)
            .await
            .unwrap()
            .is_empty()
    );
    // Nothing holds their addresses any more.
    assert!(store.node_by_ip(IpAddr::V4(stale.ipv4)).await.is_err());
    assert!(store.node_by_ip(IpAddr::V6(boundary.ipv6)).await.is_err());
}
