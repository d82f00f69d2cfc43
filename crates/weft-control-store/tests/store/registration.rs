use std::collections::BTreeSet;
use std::time::Duration;

use weft_control_store::alloc::{AddressPool, TAILNET_V4, TAILNET_V6};
use weft_control_store::{
    DEFAULT_NODE_KEY_EXPIRY, KeyLifetime, NewPreauthKey, RegisterAuth, StoreConfig, StoreError,
    Tag, UnixMillis, UserId,
};

use crate::common::{
    DAY, HOUR, T0, TestDb, at, config, node_key, register_as, register_req, reusable_key_for, user,
};

pub async fn a_one_off_key_registers_exactly_one_node(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let new = NewPreauthKey {
        reusable: false,
        ..reusable_key_for(&alice)
    };
    let (key, secret) = store.create_preauth_key(new, T0).await.unwrap();
    assert!(
        secret
            .expose()
            .starts_with(&format!("weftkey-auth-{}-", key.prefix))
    );

    let now = at(5);
    let reg = store
        .register_node(
            &register_req(1, "Alice's Laptop"),
            RegisterAuth::PreauthKey(secret.expose()),
            now,
        )
        .await
        .unwrap();
    assert!(reg.created);
    let node = reg.node;
    assert_eq!(node.user, Some(alice.id));
    assert_eq!(node.registered_by, Some(alice.id));
    assert_eq!(node.given_name.as_str(), "alices-laptop");
    assert_eq!(node.hostname, "Alice's Laptop");
    assert!(TAILNET_V4.contains(&node.ipv4) && TAILNET_V6.contains(&node.ipv6));
    assert_eq!(
        node.ipv6,
        AddressPool::tailnet_default().ipv6_for(node.ipv4)
    );
    assert_eq!(
        node.key_expiry,
        Some(now.saturating_add(DEFAULT_NODE_KEY_EXPIRY))
    );
    assert_eq!(node.created, now);
    assert_eq!(node.last_seen, Some(now));
    assert!(!node.online && !node.ephemeral);
    assert_eq!(node.preauth_key, Some(key.id));
    assert_eq!(node.endpoints, register_req(1, "").endpoints);
    assert_eq!(node.host_info["os"], "linux");
    assert!(node.stable_id.as_str().starts_with('n') && node.stable_id.as_str().len() == 21);
    assert_eq!(store.preauth_key(key.id).await.unwrap().used_count, 1);

    // A second machine with the same one-off key is refused, and nothing is created.
    let err = store
        .register_node(
            &register_req(2, "other"),
            RegisterAuth::PreauthKey(secret.expose()),
            now,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::PreauthKeyUsed(p) if *p == key.prefix),
        "{err}"
    );
    assert!(err.to_string().contains(&key.prefix));
    assert!(
        !err.to_string().contains(secret.expose()),
        "errors never echo the secret"
    );
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
    assert_eq!(store.preauth_key(key.id).await.unwrap().used_count, 1);
}

pub async fn bad_pre_auth_keys_are_refused_and_not_counted(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let (key, secret) = store
        .create_preauth_key(reusable_key_for(&alice), T0)
        .await
        .unwrap();
    let text = secret.expose().to_owned();
    let req = register_req(1, "box");
    let try_key = |text: String, now: UnixMillis| {
        let store = store.clone();
        let req = req.clone();
        async move {
            store
                .register_node(&req, RegisterAuth::PreauthKey(&text), now)
                .await
                .unwrap_err()
        }
    };

    // Wrong secret with a real prefix, and an unknown prefix: the same refusal.
    let mut wrong = text.clone();
    let last = wrong.pop().unwrap();
    wrong.push(if last == '0' { '1' } else { '0' });
    let err = try_key(wrong, T0).await;
    assert!(
        matches!(&err, StoreError::UnknownPreauthKey(p) if *p == key.prefix),
        "{err}"
    );
    let unknown = format!("weftkey-auth-{}-{}", "0".repeat(12), "0".repeat(48));
    let err = try_key(unknown, T0).await;
    assert!(
        matches!(&err, StoreError::UnknownPreauthKey(p) if p == "000000000000"),
        "{err}"
    );
    for malformed in [
        "",
        "tskey-auth-123",
        "weftkey-auth-xyz",
        &text[..text.len() - 2],
    ] {
        let err = try_key(malformed.to_owned(), T0).await;
        assert!(
            matches!(err, StoreError::MalformedKey { kind: "auth" }),
            "{malformed:?}: {err}"
        );
    }

    // Expired by time: at the expiry instant the key is refused.
    let err = try_key(text.clone(), key.expires).await;
    assert!(
        matches!(&err, StoreError::PreauthKeyExpired(p) if *p == key.prefix),
        "{err}"
    );

    // Revoked.
    store.expire_preauth_key(key.id, at(1)).await.unwrap();
    let err = try_key(text.clone(), at(2)).await;
    assert!(
        matches!(&err, StoreError::PreauthKeyRevoked(p) if *p == key.prefix),
        "{err}"
    );

    assert_eq!(store.preauth_key(key.id).await.unwrap().used_count, 0);
    assert!(store.list_nodes().await.unwrap().is_empty());

    // A key for a user who is gone: the key went with the user.
    let bob = user(&store, "bob").await;
    let (_, bob_secret) = store
        .create_preauth_key(reusable_key_for(&bob), T0)
        .await
        .unwrap();
    store.delete_user(bob.id).await.unwrap();
    let err = try_key(bob_secret.expose().to_owned(), T0).await;
    assert!(matches!(err, StoreError::UnknownPreauthKey(_)), "{err}");

    // Approval by a user who does not exist.
    let ghost = UserId(9999);
    let auth = RegisterAuth::User {
        user: ghost,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    let err = store.register_node(&req, auth, T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownUserId(id) if id == ghost),
        "{err}"
    );
}

pub async fn tagged_ephemeral_keys_and_key_lifetimes_apply_to_nodes(db: &TestDb) {
    let store = db
        .store_with(StoreConfig {
            node_key_expiry: Some(Duration::from_secs(3600)),
            ..config()
        })
        .await;
    let alice = user(&store, "alice").await;
    let tags: BTreeSet<Tag> = ["tag:server".parse().unwrap(), "tag:ci".parse().unwrap()].into();

    // A tag-only key (no user): nodes are tag-owned, ephemeral, and never expire.
    let new = NewPreauthKey {
        user: None,
        reusable: true,
        ephemeral: true,
        tags: tags.clone(),
        expires: at(DAY),
        node_key_lifetime: KeyLifetime::Never,
    };
    let (key, secret) = store.create_preauth_key(new, T0).await.unwrap();
    assert_eq!(key.tags, tags);
    let node = store
        .register_node(
            &register_req(1, "runner"),
            RegisterAuth::PreauthKey(secret.expose()),
            T0,
        )
        .await
        .unwrap()
        .node;
    assert_eq!((node.user, node.registered_by), (None, None));
    assert_eq!(node.tags, tags);
    assert!(node.ephemeral);
    assert_eq!(node.key_expiry, None);

    // A user key with tags: tag-owned, but the registering user is recorded.
    let new = NewPreauthKey {
        tags: ["tag:db".parse().unwrap()].into(),
        node_key_lifetime: KeyLifetime::After(Duration::from_secs(2 * 3600)),
        ..reusable_key_for(&alice)
    };
    let (_, secret) = store.create_preauth_key(new, T0).await.unwrap();
    let node = store
        .register_node(
            &register_req(2, "db"),
            RegisterAuth::PreauthKey(secret.expose()),
            T0,
        )
        .await
        .unwrap()
        .node;
    assert_eq!((node.user, node.registered_by), (None, Some(alice.id)));
    assert_eq!(node.key_expiry, Some(at(2 * HOUR)));

    // The server default (1 h here) applies otherwise.
    let node = register_as(&store, &alice, 3, "laptop", T0).await.node;
    assert_eq!(node.key_expiry, Some(at(HOUR)));

    // A key must have an owner; tags must be well-formed.
    let ownerless = NewPreauthKey {
        user: None,
        ..reusable_key_for(&alice)
    };
    assert!(matches!(
        store.create_preauth_key(ownerless, T0).await,
        Err(StoreError::KeyWithoutOwner)
    ));
    let ghost = NewPreauthKey {
        user: Some(UserId(777)),
        ..reusable_key_for(&alice)
    };
    let err = store.create_preauth_key(ghost, T0).await.unwrap_err();
    assert_eq!(err.to_string(), "unknown user id 777");
}

pub async fn a_duplicate_node_key_is_refused(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let a = register_as(&store, &alice, 1, "a", T0).await.node;

    // Machine 2 presents machine 1's node key.
    let mut req = register_req(2, "b");
    req.node_key = a.node_key;
    let auth = RegisterAuth::User {
        user: alice.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    let err = store.register_node(&req, auth, T0).await.unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateNodeKey(k) if k == a.node_key),
        "{err}"
    );
    assert!(err.to_string().contains(&a.node_key.to_string()), "{err}");
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);

    // Rotating another node's key onto machine 1's key is refused too.
    let b = register_as(&store, &alice, 2, "b", T0).await.node;
    let err = store
        .rotate_node_key(&b.node_key, &a.node_key, T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::DuplicateNodeKey(k) if k == a.node_key),
        "{err}"
    );
    assert_eq!(store.node(b.id).await.unwrap().node_key, b.node_key);
}

pub async fn a_known_machine_reregisters_in_place(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let first = register_as(&store, &alice, 1, "laptop", T0).await.node;
    // An admin's rename is what the node keeps from now on.
    store
        .rename_node(first.id, &"build-box".parse().unwrap())
        .await
        .unwrap();
    store.expire_node(first.id, at(DAY)).await.unwrap();

    // Same machine, new node key, approved by bob this time.
    let mut req = register_req(1, "laptop-renamed-by-os");
    req.node_key = node_key(1, 1);
    let auth = RegisterAuth::User {
        user: bob.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::Never,
    };
    let now = at(2 * DAY);
    let again = store.register_node(&req, auth, now).await.unwrap();
    assert!(!again.created);
    let node = again.node;
    assert_eq!(
        (node.id, &node.stable_id, node.ipv4, node.ipv6),
        (first.id, &first.stable_id, first.ipv4, first.ipv6)
    );
    assert_eq!(
        node.given_name.as_str(),
        "build-box",
        "the DNS name (the admin's rename) does not follow the reported hostname"
    );
    assert_eq!(node.hostname, "laptop-renamed-by-os");
    assert_eq!(node.node_key, node_key(1, 1));
    assert_eq!(node.user, Some(bob.id));
    assert_eq!(node.key_expiry, None);
    assert!(!node.is_expired(now));
    assert!(matches!(
        store.node_by_node_key(&first.node_key).await,
        Err(StoreError::UnknownNodeKey(_))
    ));
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
}

pub async fn hostnames_become_unique_dns_labels(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let mut names = Vec::new();
    for (n, host) in ["Web Server.local", "web-server", "WEB SERVER", "", "日本"]
        .iter()
        .enumerate()
    {
        names.push(
            register_as(&store, &alice, n as u64, host, T0)
                .await
                .node
                .given_name
                .as_str()
                .to_owned(),
        );
    }
    assert_eq!(
        names,
        [
            "web-server",
            "web-server-1",
            "web-server-2",
            "node",
            "node-1"
        ]
    );

    // Long names keep their suffix within 63 bytes.
    let long = "x".repeat(80);
    let a = register_as(&store, &alice, 10, &long, T0).await.node;
    let b = register_as(&store, &alice, 11, &long, T0).await.node;
    assert_eq!(a.given_name.as_str(), "x".repeat(63));
    assert_eq!(b.given_name.as_str(), format!("{}-1", "x".repeat(61)));

    // A deleted node's name is free again.
    let first = store
        .node_by_machine_key(&crate::common::machine_key(0))
        .await
        .unwrap();
    store.delete_node(first.id).await.unwrap();
    let again = register_as(&store, &alice, 20, "web server", T0).await.node;
    assert_eq!(again.given_name.as_str(), "web-server");
    let unique: BTreeSet<String> = store
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.given_name.as_str().to_owned())
        .collect();
    assert_eq!(unique.len(), 7);
}

pub async fn a_full_pool_is_reported_and_released_addresses_are_reused(db: &TestDb) {
    let pool = AddressPool::new("100.64.0.0/29".parse().unwrap(), TAILNET_V6).unwrap();
    let store = db
        .store_with(StoreConfig {
            pool: pool.clone(),
            ..config()
        })
        .await;
    let alice = user(&store, "alice").await;
    let mut nodes = Vec::new();
    for n in 0..6 {
        nodes.push(register_as(&store, &alice, n, "n", T0).await.node);
    }
    let v4: BTreeSet<_> = nodes.iter().map(|n| n.ipv4).collect();
    assert_eq!(v4.len(), 6);
    assert!(v4.iter().all(|ip| !pool.is_reserved(*ip)));

    let auth = RegisterAuth::User {
        user: alice.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    let err = store
        .register_node(&register_req(6, "n"), auth, T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AddressPoolExhausted(p) if p == pool.v4()),
        "{err}"
    );
    assert_eq!(err.to_string(), "address pool 100.64.0.0/29 is exhausted");

    // Deleting a node releases its pair; the next node gets exactly that pair.
    let gone = store.delete_node(nodes[3].id).await.unwrap();
    let next = store
        .register_node(&register_req(6, "n"), auth, T0)
        .await
        .unwrap()
        .node;
    assert_eq!((next.ipv4, next.ipv6), (gone.ipv4, gone.ipv6));
}
