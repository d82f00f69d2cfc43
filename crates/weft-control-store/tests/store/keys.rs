use sqlx::Row as _;
use weft_control_store::{
    ApiKeyId, Backend, NewPreauthKey, PreauthKeyId, RegisterAuth, Store, StoreError,
};

use crate::common::{DAY, HOUR, MINUTE, T0, TestDb, at, register_req, reusable_key_for, user};

pub async fn pre_auth_keys_are_listed_validated_and_revoked(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let bob = user(&store, "bob").await;
    let (ka, sa) = store
        .create_preauth_key(reusable_key_for(&alice), T0)
        .await
        .unwrap();
    let one_off = NewPreauthKey {
        reusable: false,
        ephemeral: true,
        ..reusable_key_for(&bob)
    };
    let (kb, sb) = store.create_preauth_key(one_off, at(1)).await.unwrap();
    assert_eq!(
        (kb.reusable, kb.ephemeral, kb.used_count, kb.created),
        (false, true, 0, at(1))
    );
    assert!(ka.is_usable(T0) && !ka.is_usable(ka.expires));

    assert_eq!(
        store.list_preauth_keys(None).await.unwrap(),
        vec![ka.clone(), kb.clone()]
    );
    assert_eq!(
        store.list_preauth_keys(Some(bob.id)).await.unwrap(),
        vec![kb.clone()]
    );
    assert_eq!(store.preauth_key(ka.id).await.unwrap(), ka);

    // Validation does not use the key up.
    assert_eq!(
        store.validate_preauth_key(sb.expose(), T0).await.unwrap(),
        kb
    );
    assert_eq!(
        store
            .validate_preauth_key(sb.expose(), T0)
            .await
            .unwrap()
            .used_count,
        0
    );
    store
        .register_node(
            &register_req(1, "x"),
            RegisterAuth::PreauthKey(sb.expose()),
            T0,
        )
        .await
        .unwrap();
    let err = store
        .validate_preauth_key(sb.expose(), T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreauthKeyUsed(_)), "{err}");
    let err = store
        .validate_preauth_key(sa.expose(), ka.expires)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreauthKeyExpired(_)), "{err}");
    let err = store
        .validate_preauth_key("weftkey-api-0-0", T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::MalformedKey { kind: "auth" }),
        "{err}"
    );

    // Revoking is idempotent and keeps the first time.
    let revoked = store.expire_preauth_key(ka.id, at(HOUR)).await.unwrap();
    assert_eq!(revoked.revoked, Some(at(HOUR)));
    assert_eq!(
        store
            .expire_preauth_key(ka.id, at(DAY))
            .await
            .unwrap()
            .revoked,
        Some(at(HOUR))
    );
    assert!(!revoked.is_usable(at(HOUR)));
    let err = store
        .validate_preauth_key(sa.expose(), at(HOUR))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::PreauthKeyRevoked(_)), "{err}");

    let ghost = PreauthKeyId(5555);
    assert_eq!(
        store.preauth_key(ghost).await.unwrap_err().to_string(),
        "unknown pre-auth key id 5555"
    );
    assert!(
        matches!(store.expire_preauth_key(ghost, T0).await, Err(StoreError::UnknownPreauthKeyId(id)) if id == ghost)
    );

    assert_secrets_not_stored(db, &store, &[sa.expose(), sb.expose()], "preauth_keys").await;
}

pub async fn api_keys_verify_expire_and_store_only_a_hash(db: &TestDb) {
    let store = db.store().await;
    let (forever, s1) = store.create_api_key("ci deploy", None, T0).await.unwrap();
    let (short, s2) = store
        .create_api_key("temp", Some(at(HOUR)), T0)
        .await
        .unwrap();
    assert!(
        s1.expose()
            .starts_with(&format!("weftkey-api-{}-", forever.prefix))
    );
    assert_eq!(
        (
            forever.description.as_str(),
            forever.expires,
            forever.last_used
        ),
        ("ci deploy", None, None)
    );
    assert!(
        !format!("{s1:?}").contains(&s1.expose()[25..]),
        "Debug redacts the secret"
    );

    let v = store.verify_api_key(s1.expose(), at(MINUTE)).await.unwrap();
    assert_eq!((v.id, v.last_used), (forever.id, Some(at(MINUTE))));
    // last_used is refreshed at most once a minute.
    store
        .verify_api_key(s1.expose(), at(MINUTE + 10))
        .await
        .unwrap();
    let listed = store.list_api_keys().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].last_used, Some(at(MINUTE)));
    store
        .verify_api_key(s1.expose(), at(3 * MINUTE))
        .await
        .unwrap();
    assert_eq!(
        store.list_api_keys().await.unwrap()[0].last_used,
        Some(at(3 * MINUTE))
    );

    // Wrong secret, unknown prefix, wrong kind.
    let mut wrong = s1.expose().to_owned();
    let last = wrong.pop().unwrap();
    wrong.push(if last == 'a' { 'b' } else { 'a' });
    let err = store.verify_api_key(&wrong, T0).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::UnknownApiKey(p) if *p == forever.prefix),
        "{err}"
    );
    let err = store
        .verify_api_key(
            &format!("weftkey-api-{}-{}", "f".repeat(12), "0".repeat(48)),
            T0,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnknownApiKey(_)), "{err}");
    let err = store
        .verify_api_key(&s1.expose().replace("-api-", "-auth-"), T0)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::MalformedKey { kind: "api" }),
        "{err}"
    );

    // Expiry by time and by revocation.
    store
        .verify_api_key(s2.expose(), at(HOUR - 1))
        .await
        .unwrap();
    let err = store
        .verify_api_key(s2.expose(), at(HOUR))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::ApiKeyExpired(p) if *p == short.prefix),
        "{err}"
    );
    let revoked = store.expire_api_key(forever.id, at(DAY)).await.unwrap();
    assert_eq!(revoked.revoked, Some(at(DAY)));
    let err = store
        .verify_api_key(s1.expose(), at(DAY))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ApiKeyExpired(_)), "{err}");
    let ghost = ApiKeyId(31337);
    assert_eq!(
        store
            .expire_api_key(ghost, T0)
            .await
            .unwrap_err()
            .to_string(),
        "unknown API key id 31337"
    );

    assert_secrets_not_stored(db, &store, &[s1.expose(), s2.expose()], "api_keys").await;
}

/// Checks that the table holds the SHA-256 of each secret and nothing else of
/// it, and (SQLite) that the secret appears nowhere in the database files.
async fn assert_secrets_not_stored(db: &TestDb, store: &Store, keys: &[&str], table: &str) {
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    let sql = format!("SELECT prefix, secret_sha256 FROM {table}");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .fetch_all(&pool)
        .await
        .unwrap();
    for key in keys {
        let (head, secret) = key.rsplit_once('-').unwrap();
        let prefix = head.rsplit('-').next().unwrap();
        let want = hex(ring::digest::digest(&ring::digest::SHA256, secret.as_bytes()).as_ref());
        let row = rows
            .iter()
            .find(|r| r.get::<String, _>("prefix") == prefix)
            .unwrap();
        assert_eq!(row.get::<String, _>("secret_sha256"), want);
        for r in &rows {
            assert!(!r.get::<String, _>("secret_sha256").contains(secret));
        }
        if db.backend == Backend::Sqlite {
            let path = db.url.strip_prefix("sqlite://").unwrap();
            for file in [path.to_owned(), format!("{path}-wal")] {
                let bytes = std::fs::read(&file).unwrap_or_default();
                let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
                assert!(!found, "the secret is written in {file}");
            }
        }
    }
    pool.close().await;
    let _ = store;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
