use std::collections::BTreeSet;
use std::time::Duration;

use weft_control_store::alloc::{AddressPool, TAILNET_V6};
use weft_control_store::{
    Backend, NewPreauthKey, Node, RegisterAuth, Store, StoreConfig, StoreError,
};

use crate::common::{T0, TestDb, at, config, register_req, reusable_key_for, user};

/// Every load test here finishes well within this, or fails.
const LIMIT: Duration = Duration::from_secs(120);

/// Asserts that no two nodes share a node key, address or name.
fn assert_all_distinct(nodes: &[Node]) {
    let distinct = |f: &dyn Fn(&Node) -> String| nodes.iter().map(f).collect::<BTreeSet<_>>().len();
    assert_eq!(
        distinct(&|n| n.node_key.to_string()),
        nodes.len(),
        "node keys"
    );
    assert_eq!(
        distinct(&|n| n.machine_key.to_string()),
        nodes.len(),
        "machine keys"
    );
    assert_eq!(
        distinct(&|n| n.ipv4.to_string()),
        nodes.len(),
        "IPv4 addresses"
    );
    assert_eq!(
        distinct(&|n| n.ipv6.to_string()),
        nodes.len(),
        "IPv6 addresses"
    );
    assert_eq!(
        distinct(&|n| n.given_name.to_string()),
        nodes.len(),
        "DNS names"
    );
    assert_eq!(
        distinct(&|n| n.stable_id.to_string()),
        nodes.len(),
        "stable ids"
    );
}

/// Registers nodes `ids` one after another with `key`, all named `hostname`.
async fn register_many(
    store: Store,
    key: String,
    ids: Vec<u64>,
    hostname: &'static str,
) -> Vec<Node> {
    let mut out = Vec::new();
    for n in ids {
        let reg = store
            .register_node(
                &register_req(n, hostname),
                RegisterAuth::PreauthKey(&key),
                at(n as i64),
            )
            .await
            .unwrap_or_else(|e| panic!("registering node {n}: {e}"));
        out.push(reg.node);
    }
    out
}

pub async fn concurrent_registrations_never_share_an_address_or_name(db: &TestDb) {
    const TASKS: u64 = 16;
    const NODES: u64 = 200;
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let (key, secret) = store
        .create_preauth_key(reusable_key_for(&alice), T0)
        .await
        .unwrap();

    // Every node reports the same hostname: the worst case for name choice.
    #[allow(clippy::disallowed_methods)] // wall time, only to report throughput
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let ids: Vec<u64> = (0..NODES).filter(|n| n % TASKS == t).collect();
            tokio::spawn(register_many(
                store.clone(),
                secret.expose().to_owned(),
                ids,
                "runner",
            ))
        })
        .collect();
    let results = tokio::time::timeout(LIMIT, futures::future::join_all(tasks))
        .await
        .unwrap();
    let elapsed = started.elapsed();
    let acknowledged: Vec<Node> = results.into_iter().flat_map(Result::unwrap).collect();
    eprintln!(
        "{:?}: {NODES} registrations from {TASKS} tasks in {elapsed:?}",
        db.backend
    );

    assert_eq!(acknowledged.len(), NODES as usize);
    assert_all_distinct(&acknowledged);
    // What was acknowledged is what is stored.
    let stored = store.list_nodes().await.unwrap();
    let ids = |v: &[Node]| v.iter().map(|n| n.id).collect::<BTreeSet<_>>();
    assert_eq!(ids(&stored), ids(&acknowledged));
    assert_all_distinct(&stored);
    assert!(
        stored
            .iter()
            .all(|n| n.given_name.as_str() == "runner"
                || n.given_name.as_str().starts_with("runner-"))
    );
    assert_eq!(
        store.preauth_key(key.id).await.unwrap().used_count,
        NODES as i64
    );
    eprintln!(
        "{:?}: {} retried transactions",
        db.backend,
        store.write_retries()
    );
}

pub async fn a_one_off_key_wins_only_one_race(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let new = NewPreauthKey {
        reusable: false,
        ..reusable_key_for(&alice)
    };
    let (key, secret) = store.create_preauth_key(new, T0).await.unwrap();
    let tasks: Vec<_> = (0..8u64)
        .map(|n| {
            let store = store.clone();
            let text = secret.expose().to_owned();
            tokio::spawn(async move {
                store
                    .register_node(
                        &register_req(n, "racer"),
                        RegisterAuth::PreauthKey(&text),
                        T0,
                    )
                    .await
            })
        })
        .collect();
    let results = tokio::time::timeout(LIMIT, futures::future::join_all(tasks))
        .await
        .unwrap();
    let (won, lost): (Vec<_>, Vec<_>) = results
        .into_iter()
        .map(Result::unwrap)
        .partition(Result::is_ok);
    assert_eq!(
        won.len(),
        1,
        "exactly one registration may use a one-off key"
    );
    for err in lost.into_iter().map(Result::unwrap_err) {
        assert!(
            matches!(&err, StoreError::PreauthKeyUsed(p) if *p == key.prefix),
            "{err}"
        );
    }
    assert_eq!(store.list_nodes().await.unwrap().len(), 1);
    assert_eq!(store.preauth_key(key.id).await.unwrap().used_count, 1);
}

/// Two store handles (as two server processes would have) draw the same
/// "random" addresses and names because they share a seed: on PostgreSQL they
/// collide on the unique constraints and must retry; on SQLite the file lock
/// serializes them. Either way every node ends up distinct.
pub async fn two_servers_with_the_same_seed_still_allocate_uniquely(db: &TestDb) {
    let pool = AddressPool::new("100.64.7.0/24".parse().unwrap(), TAILNET_V6).unwrap();
    let cfg = StoreConfig {
        pool,
        seed: Some(7),
        ..config()
    };
    let one = db.store_with(cfg.clone()).await;
    let two = db.store_with(cfg).await;
    let alice = user(&one, "alice").await;
    // Approved logins: no shared pre-auth key, whose row lock would queue them.
    let mut tasks = Vec::new();
    for (s, store) in [one.clone(), two.clone()].into_iter().enumerate() {
        for t in 0..4u64 {
            let store = store.clone();
            let user = alice.id;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..15 {
                    let n = 1000 * (s as u64 + 1) + 100 * t + i;
                    let auth = RegisterAuth::User {
                        user,
                        tags: &BTreeSet::new(),
                        ephemeral: false,
                        key_lifetime: Default::default(),
                    };
                    let reg = store
                        .register_node(&register_req(n, "twin"), auth, T0)
                        .await;
                    out.push(
                        reg.unwrap_or_else(|e| panic!("registering node {n}: {e}"))
                            .node,
                    );
                }
                out
            }));
        }
    }
    let results = tokio::time::timeout(LIMIT, futures::future::join_all(tasks))
        .await
        .unwrap();
    let acknowledged: Vec<Node> = results.into_iter().flat_map(Result::unwrap).collect();
    assert_eq!(acknowledged.len(), 120);
    assert_all_distinct(&acknowledged);
    assert_all_distinct(&two.list_nodes().await.unwrap());
    assert_eq!(one.list_nodes().await.unwrap().len(), 120);
    let retries = one.write_retries() + two.write_retries();
    eprintln!(
        "{:?}: two same-seed stores, 120 registrations, {retries} retried",
        db.backend
    );
    if db.backend == Backend::Postgres {
        // Identical seeds make concurrent writers pick identical names and
        // addresses; on PostgreSQL that must have gone through the retry path.
        assert!(
            retries > 0,
            "no write was retried, so the race was not exercised"
        );
    }
}
