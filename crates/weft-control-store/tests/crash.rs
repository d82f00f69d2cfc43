//! Durability under `kill -9`: a child process registers nodes as fast as it
//! can and prints each registration the store acknowledged; the parent kills
//! it with SIGKILL in the middle of the burst, reopens the database and
//! checks that every acknowledged node is there and no two nodes share an
//! address or a name.
//!
//! The child is this same test binary, running the ignored test
//! `crash_child` with `WEFT_CRASH_URL` set.
#![allow(clippy::unwrap_used)]

#[path = "store/common.rs"]
#[allow(dead_code)]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{T0, TestDb, config, machine_key, register_req};
use weft_control_store::{KeyLifetime, NewUser, RegisterAuth, Role, Store};

/// How many acknowledged registrations to wait for before the kill.
const KILL_AFTER: usize = 150;
/// The child gives up (and the test fails) if it is not killed in time.
const CHILD_MAX_NODES: u64 = 20_000;
const TIME_LIMIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_every_acknowledged_registration_across_kill_9() {
    let db = TestDb::sqlite();
    crash_and_check(&db).await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_every_acknowledged_registration_across_kill_9() {
    let Some(db) = TestDb::postgres("kill_9").await else {
        return;
    };
    crash_and_check(&db).await;
    db.finish().await;
}

async fn crash_and_check(db: &TestDb) {
    // The schema and the user exist before the burst.
    let store = db.store().await;
    let new = NewUser {
        login_name: "ci".parse().unwrap(),
        display_name: String::new(),
        role: Role::Member,
    };
    store.create_user(new, T0).await.unwrap();
    store.close().await;

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_CRASH_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<u64>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("ack ")
                && tx.send(n.trim().parse().unwrap()).is_err()
            {
                break;
            }
        }
    });

    let mut acked = BTreeSet::new();
    while acked.len() < KILL_AFTER {
        match rx.recv_timeout(TIME_LIMIT) {
            Ok(n) => {
                acked.insert(n);
            }
            Err(e) => {
                let _ = child.kill();
                panic!(
                    "the child stopped acknowledging after {} nodes: {e}",
                    acked.len()
                );
            }
        }
    }
    // SIGKILL, mid-burst: the child has registrations in flight right now.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "the child was killed, not finished: {status}"
    );
    reader.join().unwrap();
    // Acks that were already on their way in the pipe count too.
    acked.extend(rx.try_iter());

    let store = db.store().await;
    let nodes = store.list_nodes().await.unwrap();
    let stored: BTreeSet<_> = nodes.iter().map(|n| n.machine_key).collect();
    for n in &acked {
        assert!(
            stored.contains(&machine_key(*n)),
            "acknowledged node {n} is missing after kill -9"
        );
    }
    let distinct = |f: &dyn Fn(&weft_control_store::Node) -> String| {
        nodes.iter().map(f).collect::<BTreeSet<_>>().len()
    };
    assert_eq!(
        distinct(&|n| n.ipv4.to_string()),
        nodes.len(),
        "IPv4 shared"
    );
    assert_eq!(
        distinct(&|n| n.ipv6.to_string()),
        nodes.len(),
        "IPv6 shared"
    );
    assert_eq!(
        distinct(&|n| n.given_name.to_string()),
        nodes.len(),
        "name shared"
    );
    eprintln!(
        "{:?}: {} acknowledged before kill -9, {} stored after restart",
        db.backend,
        acked.len(),
        nodes.len()
    );
    // The store is usable after the crash.
    let alice = store.user_by_login("ci").await.unwrap();
    let auth = RegisterAuth::User {
        user: alice.id,
        tags: &BTreeSet::new(),
        ephemeral: false,
        key_lifetime: KeyLifetime::ServerDefault,
    };
    let after = store
        .register_node(&register_req(CHILD_MAX_NODES + 1, "after"), auth, T0)
        .await;
    assert!(after.unwrap().created);
}

/// The child half: registers nodes from 4 tasks until killed, printing
/// `ack <n>` only after `register_node` returned, i.e. after COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by the kill -9 tests as their child process"]
#[allow(clippy::print_stdout)]
async fn crash_child() {
    let url = std::env::var("WEFT_CRASH_URL").expect("run by crash_and_check");
    let store = Store::open(&url, config()).await.unwrap();
    let user = store.user_by_login("ci").await.unwrap().id;
    let tasks: Vec<_> = (0..4u64)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let none = BTreeSet::new();
                let mut n = t;
                while n < CHILD_MAX_NODES {
                    let auth = RegisterAuth::User {
                        user,
                        tags: &none,
                        ephemeral: false,
                        key_lifetime: KeyLifetime::ServerDefault,
                    };
                    match store
                        .register_node(&register_req(n, "burst"), auth, T0)
                        .await
                    {
                        Ok(_) => println!("ack {n}"),
                        Err(e) => panic!("registering {n}: {e}"),
                    }
                    n += 4;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    panic!("the child was not killed before registering {CHILD_MAX_NODES} nodes");
}
