//! SSH check approvals: stored per (user, source node), found only before
//! they expire, swept, revoked by filter, and gone with their user or node,
//! when an admin expires the node, or when the node changes owner.

use std::collections::BTreeSet;

use weft_control_store::{
    KeyLifetime, NodeId, RegisterAuth, SshApproval, SshApprovalFilter, Store, StoreError, Tag,
    UnixMillis, UserId,
};

use crate::common::{HOUR, MINUTE, T0, TestDb, at, node_key, register_as, register_req, user};

/// An approval by `user` for logins from `node` to `dst`, given at
/// `approved` for `period_ms`.
fn approval(
    user: UserId,
    node: NodeId,
    dst: Option<NodeId>,
    approved: UnixMillis,
    period_ms: i64,
) -> SshApproval {
    SshApproval {
        user,
        node,
        approved,
        expires: UnixMillis(approved.0 + period_ms),
        approved_by: "alice".into(),
        check_id: "3f0c9a1e5b7d2c4f8a6e0b1d9c7f5a3e".into(),
        dst_node: dst,
        local_user: "alice".into(),
    }
}

fn all() -> SshApprovalFilter {
    SshApprovalFilter::default()
}

async fn count_rows(store: &Store) -> usize {
    // Far in the past: expired rows count too.
    store
        .list_ssh_approvals(all(), UnixMillis(0))
        .await
        .unwrap()
        .len()
}

pub async fn ssh_approvals_are_found_within_their_period_replaced_and_swept(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let laptop = register_as(&store, &alice, 1, "laptop", T0).await.node;
    let server = register_as(&store, &alice, 2, "server", T0).await.node;

    let a = approval(alice.id, laptop.id, Some(server.id), T0, HOUR);
    assert_eq!(store.put_ssh_approval(&a).await.unwrap(), a);
    assert_eq!(
        store.ssh_approval(alice.id, laptop.id, T0).await.unwrap(),
        Some(a.clone())
    );
    assert_eq!(
        store
            .ssh_approval(alice.id, laptop.id, at(HOUR - 1))
            .await
            .unwrap(),
        Some(a.clone()),
        "one millisecond before it expires"
    );
    assert_eq!(
        store
            .ssh_approval(alice.id, laptop.id, at(HOUR))
            .await
            .unwrap(),
        None,
        "not at its expiry"
    );
    assert_eq!(
        store.ssh_approval(alice.id, server.id, T0).await.unwrap(),
        None,
        "only for its source node"
    );

    // Survives reopening (a server restart).
    store.close().await;
    let store = db.store().await;
    assert_eq!(
        store
            .ssh_approval(alice.id, laptop.id, at(MINUTE))
            .await
            .unwrap(),
        Some(a.clone())
    );

    // A later approval replaces the earlier one.
    let b = SshApproval {
        approved_by: "alice@example.com".into(),
        local_user: "root".into(),
        ..approval(alice.id, laptop.id, None, at(30 * MINUTE), 2 * HOUR)
    };
    assert_eq!(store.put_ssh_approval(&b).await.unwrap(), b);
    assert_eq!(
        store.list_ssh_approvals(all(), at(HOUR)).await.unwrap(),
        vec![b.clone()]
    );

    // Listing skips and the sweep deletes only what expired.
    let c = approval(alice.id, server.id, Some(laptop.id), T0, 10 * MINUTE);
    store.put_ssh_approval(&c).await.unwrap();
    assert_eq!(
        store
            .list_ssh_approvals(all(), at(5 * MINUTE))
            .await
            .unwrap(),
        vec![b.clone(), c.clone()]
    );
    assert_eq!(
        store
            .list_ssh_approvals(all(), at(10 * MINUTE))
            .await
            .unwrap(),
        vec![b.clone()]
    );
    assert_eq!(
        store
            .delete_expired_ssh_approvals(at(10 * MINUTE))
            .await
            .unwrap(),
        1
    );
    assert_eq!(count_rows(&store).await, 1);
    assert_eq!(
        store
            .delete_expired_ssh_approvals(at(30 * MINUTE + 2 * HOUR))
            .await
            .unwrap(),
        1
    );
    assert_eq!(count_rows(&store).await, 0);
}

pub async fn ssh_approvals_that_do_not_add_up_are_refused(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let laptop = register_as(&store, &alice, 1, "laptop", T0).await.node;

    let err = store
        .put_ssh_approval(&approval(alice.id, laptop.id, None, T0, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::EmptySshApproval { .. }), "{err}");
    let err = store
        .put_ssh_approval(&approval(bob.id, laptop.id, None, T0, HOUR))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotNodeOwner { node, user } if node == laptop.id && user == bob.id),
        "{err}"
    );
    assert!(err.to_string().contains("only its owner"), "{err}");
    let err = store
        .put_ssh_approval(&approval(alice.id, NodeId(4242), None, T0, HOUR))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::UnknownNode(NodeId(4242))),
        "{err}"
    );
    // A destination that is gone is not an error: the approval is for the source.
    let a = approval(alice.id, laptop.id, Some(NodeId(4242)), T0, HOUR);
    assert_eq!(store.put_ssh_approval(&a).await.unwrap().dst_node, None);
    assert_eq!(count_rows(&store).await, 1);
}

pub async fn ssh_approvals_are_revoked_by_user_node_or_all(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let a1 = register_as(&store, &alice, 1, "a1", T0).await.node;
    let a2 = register_as(&store, &alice, 2, "a2", T0).await.node;
    let b1 = register_as(&store, &bob, 3, "b1", T0).await.node;
    let put = |u: UserId, n: NodeId| approval(u, n, None, T0, HOUR);
    let (x, y, z) = (
        put(alice.id, a1.id),
        put(alice.id, a2.id),
        put(bob.id, b1.id),
    );
    for a in [&x, &y, &z] {
        store.put_ssh_approval(a).await.unwrap();
    }
    let by_user = SshApprovalFilter {
        user: Some(alice.id),
        node: None,
    };
    assert_eq!(
        store.list_ssh_approvals(by_user, T0).await.unwrap(),
        vec![x.clone(), y.clone()]
    );
    let by_node = SshApprovalFilter {
        user: None,
        node: Some(a2.id),
    };
    assert_eq!(
        store.revoke_ssh_approvals(by_node, T0).await.unwrap(),
        vec![y.clone()]
    );
    assert_eq!(store.ssh_approval(alice.id, a2.id, T0).await.unwrap(), None);
    let pair = SshApprovalFilter {
        user: Some(bob.id),
        node: Some(a1.id),
    };
    assert_eq!(
        store.revoke_ssh_approvals(pair, T0).await.unwrap(),
        vec![],
        "bob has no approval for alice's node"
    );
    assert_eq!(
        store.revoke_ssh_approvals(all(), T0).await.unwrap(),
        vec![x, z]
    );
    assert_eq!(count_rows(&store).await, 0);
    // Expired rows are deleted by a revoke but not reported.
    store.put_ssh_approval(&put(alice.id, a1.id)).await.unwrap();
    assert_eq!(
        store.revoke_ssh_approvals(all(), at(HOUR)).await.unwrap(),
        vec![]
    );
    assert_eq!(count_rows(&store).await, 0);
}

pub async fn ssh_approvals_go_with_their_user_and_node(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let laptop = register_as(&store, &alice, 1, "laptop", T0).await.node;
    let server = register_as(&store, &alice, 2, "server", T0).await.node;
    let bobs = register_as(&store, &bob, 3, "bobs", T0).await.node;
    store
        .put_ssh_approval(&approval(alice.id, laptop.id, Some(server.id), T0, HOUR))
        .await
        .unwrap();
    store
        .put_ssh_approval(&approval(alice.id, server.id, Some(laptop.id), T0, HOUR))
        .await
        .unwrap();
    store
        .put_ssh_approval(&approval(bob.id, bobs.id, Some(server.id), T0, HOUR))
        .await
        .unwrap();

    // Deleting the destination keeps the approvals that named it (for the source).
    store.delete_node(server.id).await.unwrap();
    let left = store.list_ssh_approvals(all(), T0).await.unwrap();
    assert_eq!(
        left.iter()
            .map(|a| (a.user, a.node, a.dst_node))
            .collect::<Vec<_>>(),
        vec![(alice.id, laptop.id, None), (bob.id, bobs.id, None)]
    );

    // Deleting the source node deletes its approvals.
    store.delete_node(laptop.id).await.unwrap();
    assert_eq!(
        store.ssh_approval(alice.id, laptop.id, T0).await.unwrap(),
        None
    );
    assert_eq!(count_rows(&store).await, 1);

    // Deleting the user deletes theirs. The store never leaves an approval
    // of a user for a node they do not own, and a user who owns nodes
    // cannot be deleted, so move bob's node to alice behind the store's
    // back to see the foreign key's cascade.
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE nodes SET user_id = $1 WHERE id = $2")
        .bind(alice.id.0)
        .bind(bobs.id.0)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    store.delete_user(bob.id).await.unwrap();
    assert_eq!(count_rows(&store).await, 0);
}

pub async fn ssh_approvals_end_when_the_node_is_expired_or_changes_owner(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let laptop = register_as(&store, &alice, 1, "laptop", T0).await.node;
    let desk = register_as(&store, &alice, 2, "desk", T0).await.node;
    let put = |n: NodeId| approval(alice.id, n, None, T0, HOUR);
    store.put_ssh_approval(&put(laptop.id)).await.unwrap();
    store.put_ssh_approval(&put(desk.id)).await.unwrap();

    // A key rotation is the same device with the same owner: kept.
    store
        .rotate_node_key(&laptop.node_key, &node_key(1, 1), at(MINUTE))
        .await
        .unwrap();
    assert!(
        store
            .ssh_approval(alice.id, laptop.id, T0)
            .await
            .unwrap()
            .is_some()
    );

    // An admin expiring the node: gone (the other node's stays).
    store.expire_node(laptop.id, at(MINUTE)).await.unwrap();
    assert_eq!(
        store.ssh_approval(alice.id, laptop.id, T0).await.unwrap(),
        None
    );
    assert!(
        store
            .ssh_approval(alice.id, desk.id, T0)
            .await
            .unwrap()
            .is_some()
    );

    // Re-registered by alice herself: the new approval stays...
    let auth = |u: UserId| RegisterAuth::User {
        user: u,
        tags: &EMPTY,
        ephemeral: false,
        key_lifetime: KeyLifetime::Never,
    };
    let mut req = register_req(1, "laptop");
    req.node_key = node_key(1, 2);
    store
        .register_node(&req, auth(alice.id), at(2 * MINUTE))
        .await
        .unwrap();
    store.put_ssh_approval(&put(laptop.id)).await.unwrap();
    req.node_key = node_key(1, 3);
    store
        .register_node(&req, auth(alice.id), at(3 * MINUTE))
        .await
        .unwrap();
    assert!(
        store
            .ssh_approval(alice.id, laptop.id, T0)
            .await
            .unwrap()
            .is_some()
    );
    // ...but not once bob registers the machine.
    req.node_key = node_key(1, 4);
    store
        .register_node(&req, auth(bob.id), at(4 * MINUTE))
        .await
        .unwrap();
    assert_eq!(
        store.ssh_approval(alice.id, laptop.id, T0).await.unwrap(),
        None
    );

    // Tagging a node makes it tag-owned: its approvals go.
    let tags: BTreeSet<Tag> = BTreeSet::from(["tag:server".parse().unwrap()]);
    store.set_node_tags(desk.id, &tags).await.unwrap();
    assert_eq!(count_rows(&store).await, 0);
}

static EMPTY: BTreeSet<Tag> = BTreeSet::new();
