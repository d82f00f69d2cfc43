use std::collections::BTreeSet;

use weft_control_store::{
    AuthRequestState, KeyLifetime, NewAuthRequest, NewPreauthKey, PolicyVersionId, RegisterAuth,
    StoreError, Tag, UnixMillis,
};

use crate::common::{
    HOUR, MINUTE, T0, TestDb, at, machine_key, register_req, reusable_key_for, user,
};

pub async fn an_approved_login_registers_its_node(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let new = NewAuthRequest {
        register: register_req(1, "Desk Top"),
        expires: at(10 * MINUTE),
    };
    let req = store.create_auth_request(new, T0).await.unwrap();
    assert_eq!(req.state, AuthRequestState::Pending);
    assert_eq!(req.auth_id.len(), 32);
    assert!(req.auth_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!((req.user, req.node, req.completed), (None, None, None));
    assert_eq!(store.auth_request(&req.auth_id).await.unwrap(), req);
    assert_eq!(
        store
            .pending_auth_request_for(&machine_key(1), at(MINUTE))
            .await
            .unwrap(),
        Some(req.clone())
    );
    assert_eq!(
        store
            .pending_auth_request_for(&machine_key(2), T0)
            .await
            .unwrap(),
        None
    );
    assert!(
        store.list_nodes().await.unwrap().is_empty(),
        "nothing is registered before approval"
    );

    let tags: BTreeSet<Tag> = ["tag:desk".parse().unwrap()].into();
    let approval = RegisterAuth::User {
        user: alice.id,
        tags: &tags,
        ephemeral: false,
        key_lifetime: KeyLifetime::Never,
    };
    let (done, registered) = store
        .complete_auth_request(&req.auth_id, approval, at(2 * MINUTE))
        .await
        .unwrap();
    assert!(registered.created);
    let node = registered.node;
    assert_eq!(
        (node.hostname.as_str(), node.given_name.as_str()),
        ("Desk Top", "desk-top")
    );
    assert_eq!(node.node_key, req.node_key);
    assert_eq!(node.endpoints, register_req(1, "").endpoints);
    assert_eq!(
        (node.user, node.registered_by, node.key_expiry),
        (None, Some(alice.id), None)
    );
    assert_eq!(done.state, AuthRequestState::Approved);
    assert_eq!(
        (done.user, done.node, done.completed),
        (Some(alice.id), Some(node.id), Some(at(2 * MINUTE)))
    );
    assert_eq!(
        store
            .pending_auth_request_for(&machine_key(1), at(3 * MINUTE))
            .await
            .unwrap(),
        None
    );

    // Approving twice is refused and registers nothing more.
    let err = store
        .complete_auth_request(&req.auth_id, approval, at(3 * MINUTE))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AuthRequestCompleted(id, "approved") if *id == req.auth_id),
        "{err}"
    );
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);

    // A login can also be completed with a pre-auth key; a failed registration
    // leaves the request pending.
    let new = NewAuthRequest {
        register: register_req(2, "b"),
        expires: at(HOUR),
    };
    let second = store.create_auth_request(new, T0).await.unwrap();
    let one_off = NewPreauthKey {
        reusable: false,
        ..reusable_key_for(&alice)
    };
    let (_, secret) = store.create_preauth_key(one_off, T0).await.unwrap();
    store
        .register_node(
            &register_req(3, "c"),
            RegisterAuth::PreauthKey(secret.expose()),
            T0,
        )
        .await
        .unwrap();
    let err = store
        .complete_auth_request(
            &second.auth_id,
            RegisterAuth::PreauthKey(secret.expose()),
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreauthKeyUsed(_)), "{err}");
    assert_eq!(
        store.auth_request(&second.auth_id).await.unwrap().state,
        AuthRequestState::Pending
    );
}

pub async fn logins_can_be_rejected_expire_and_are_cleaned_up(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let mk = |n: u64, expires: UnixMillis| NewAuthRequest {
        register: register_req(n, "x"),
        expires,
    };
    let rejected = store
        .create_auth_request(mk(1, at(HOUR)), T0)
        .await
        .unwrap();
    let stale = store
        .create_auth_request(mk(2, at(MINUTE)), T0)
        .await
        .unwrap();

    let r = store
        .reject_auth_request(&rejected.auth_id, at(1))
        .await
        .unwrap();
    assert_eq!(
        (r.state, r.completed),
        (AuthRequestState::Rejected, Some(at(1)))
    );
    let err = store
        .reject_auth_request(&rejected.auth_id, at(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AuthRequestCompleted(_, "rejected")),
        "{err}"
    );
    let approval = RegisterAuth::User {
        user: alice.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    let err = store
        .complete_auth_request(&rejected.auth_id, approval, at(2))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::AuthRequestCompleted(_, "rejected")),
        "{err}"
    );

    let err = store
        .complete_auth_request(&stale.auth_id, approval, at(MINUTE))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::AuthRequestExpired(id) if *id == stale.auth_id),
        "{err}"
    );
    let err = store
        .reject_auth_request(&stale.auth_id, at(MINUTE))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::AuthRequestExpired(_)), "{err}");
    assert_eq!(
        store
            .pending_auth_request_for(&machine_key(2), at(MINUTE))
            .await
            .unwrap(),
        None
    );

    let err = store.auth_request("nope").await.unwrap_err();
    assert_eq!(err.to_string(), "unknown auth request \"nope\"");
    let err = store
        .complete_auth_request("nope", approval, T0)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownAuthRequest(id) if id == "nope"),
        "{err}"
    );

    assert_eq!(
        store
            .delete_expired_auth_requests(at(MINUTE))
            .await
            .unwrap(),
        1
    );
    assert!(store.auth_request(&stale.auth_id).await.is_err());
    assert!(store.auth_request(&rejected.auth_id).await.is_ok());
    assert_eq!(
        store.delete_expired_auth_requests(at(HOUR)).await.unwrap(),
        1
    );
    assert!(store.list_nodes().await.unwrap().is_empty());
}

pub async fn pending_logins_are_counted_and_only_pending_ones_deleted(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let mk = |n: u64, expires: UnixMillis| NewAuthRequest {
        register: register_req(n, "x"),
        expires,
    };
    assert_eq!(store.count_pending_auth_requests(T0).await.unwrap(), 0);
    let long = store
        .create_auth_request(mk(1, at(HOUR)), T0)
        .await
        .unwrap();
    let short = store
        .create_auth_request(mk(2, at(MINUTE)), T0)
        .await
        .unwrap();
    let approved = store
        .create_auth_request(mk(3, at(HOUR)), T0)
        .await
        .unwrap();
    let approval = RegisterAuth::User {
        user: alice.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    store
        .complete_auth_request(&approved.auth_id, approval, at(1))
        .await
        .unwrap();
    assert_eq!(store.count_pending_auth_requests(at(1)).await.unwrap(), 2);
    assert_eq!(
        store.count_pending_auth_requests(at(MINUTE)).await.unwrap(),
        1,
        "an expired login no longer counts"
    );

    assert!(
        !store
            .delete_pending_auth_request(&approved.auth_id)
            .await
            .unwrap(),
        "an approved login stays"
    );
    assert!(store.auth_request(&approved.auth_id).await.is_ok());
    assert!(
        store
            .delete_pending_auth_request(&long.auth_id)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_pending_auth_request(&long.auth_id)
            .await
            .unwrap()
    );
    assert!(store.auth_request(&long.auth_id).await.is_err());
    assert_eq!(store.count_pending_auth_requests(at(1)).await.unwrap(), 1);
    assert!(store.auth_request(&short.auth_id).await.is_ok());
}

pub async fn policies_are_versioned(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(store.current_policy().await.unwrap(), None);
    assert!(store.list_policies().await.unwrap().is_empty());

    let text1 = "// first\n{ \"acls\": [] }\n";
    let text2 = "{\n  \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}], // trailing\n}\n";
    let v1 = store.put_policy(text1, "alice", T0).await.unwrap();
    let v2 = store
        .put_policy(text2, "api key 0123456789ab", at(1))
        .await
        .unwrap();
    assert!(v2.id > v1.id);
    assert_eq!(
        (v1.text.as_str(), v1.author.as_str(), v1.created),
        (text1, "alice", T0)
    );
    assert_eq!(store.current_policy().await.unwrap(), Some(v2.clone()));
    assert_eq!(
        store.list_policies().await.unwrap(),
        vec![v2.clone(), v1.clone()]
    );
    assert_eq!(store.policy_version(v1.id).await.unwrap(), v1);
    let ghost = PolicyVersionId(v2.id.0 + 10);
    let err = store.policy_version(ghost).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("unknown policy version {}", ghost.0)
    );
}
