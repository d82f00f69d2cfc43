use weft_control_store::{Backend, NewUser, Role, StoreError, UserId, UserPatch};

use crate::common::{T0, TestDb, register_as, reusable_key_for, user};

pub async fn migrations_run_once_and_data_survives_reopening(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(store.schema_version().await.unwrap(), 5);
    let alice = user(&store, "alice").await;
    store.close().await;

    // Opening again applies nothing twice and sees the same data.
    let again = db.store().await;
    assert_eq!(again.schema_version().await.unwrap(), 5);
    assert_eq!(again.user(alice.id).await.unwrap(), alice);
    let third = db.store().await;
    assert_eq!(third.list_users().await.unwrap(), vec![alice]);

    if db.backend == Backend::Sqlite {
        use std::os::unix::fs::PermissionsExt as _;
        let path = db.url.strip_prefix("sqlite://").unwrap();
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "database file mode");
        let dir = std::path::Path::new(path).parent().unwrap();
        let dir_mode = std::fs::metadata(dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700, "state directory mode");
    }
}

pub async fn users_are_created_read_updated_and_deleted(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob@example.com").await;
    assert_eq!(alice.login_name.as_str(), "alice");
    assert_eq!(alice.display_name, "ALICE");
    assert_eq!(alice.role, Role::Member);
    assert_eq!(alice.created, T0);
    assert_eq!(store.user_by_login("bob@example.com").await.unwrap(), bob);
    assert_eq!(
        store.list_users().await.unwrap(),
        vec![alice.clone(), bob.clone()]
    );

    let patch = UserPatch {
        role: Some(Role::Admin),
        display_name: Some("Alice A.".into()),
        ..Default::default()
    };
    let alice2 = store.update_user(alice.id, patch).await.unwrap();
    assert_eq!(
        (
            alice2.role,
            alice2.display_name.as_str(),
            alice2.login_name.as_str()
        ),
        (Role::Admin, "Alice A.", "alice")
    );
    let renamed = store
        .update_user(
            alice.id,
            UserPatch {
                login_name: Some("alice2".parse().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(renamed.login_name.as_str(), "alice2");
    assert!(
        matches!(store.user_by_login("alice").await, Err(StoreError::UnknownUser(n)) if n == "alice")
    );

    // A user who owns nodes cannot be deleted; their pre-auth keys go with them.
    let node = register_as(&store, &bob, 1, "bobs-box", T0).await.node;
    store
        .create_preauth_key(reusable_key_for(&bob), T0)
        .await
        .unwrap();
    let err = store.delete_user(bob.id).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UserHasNodes { count: 1, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("bob@example.com"), "{err}");
    store.delete_node(node.id).await.unwrap();
    assert_eq!(store.delete_user(bob.id).await.unwrap().id, bob.id);
    assert!(store.list_preauth_keys(None).await.unwrap().is_empty());
    assert_eq!(store.list_users().await.unwrap().len(), 1);
}

pub async fn bad_user_input_is_refused_with_the_offending_value(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let dup = NewUser {
        login_name: "alice".parse().unwrap(),
        display_name: String::new(),
        role: Role::Admin,
    };
    let err = store.create_user(dup, T0).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateUser(n) if n.as_str() == "alice"),
        "{err}"
    );

    let bob = user(&store, "bob").await;
    let err = store
        .update_user(
            bob.id,
            UserPatch {
                login_name: Some("alice".parse().unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::DuplicateUser(n) if n.as_str() == "alice"),
        "{err}"
    );

    let ghost = UserId(alice.id.0 + 1000);
    for err in [
        store.user(ghost).await.unwrap_err(),
        store.delete_user(ghost).await.unwrap_err(),
        store
            .update_user(ghost, UserPatch::default())
            .await
            .unwrap_err(),
        store.list_nodes_of_user(ghost).await.unwrap_err(),
    ] {
        assert!(
            matches!(err, StoreError::UnknownUserId(id) if id == ghost),
            "{err}"
        );
        assert_eq!(err.to_string(), format!("unknown user id {}", ghost.0));
    }
    assert_eq!(
        store.user_by_login("carol").await.unwrap_err().to_string(),
        "unknown user \"carol\""
    );
}
