//! `kill -9` of the real `weft-control` binary in the middle of a burst of
//! registrations: after a restart every registration the server had
//! acknowledged is there, and no two nodes share an address, also after a
//! second burst against the restarted server (whose in-memory used-address
//! set is rebuilt from the database).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{ServerProcess, free_port, host_info};
use weft_client::{ConnectOptions, Target, register};
use weft_control::admin::types::{NewPreauthKey, NewUser};
use weft_types::control::{
    AuthKey, ExpiryRequest, RegisterAuth, RegisterRequest, RegisterResponse,
};
use weft_types::{CapabilityVersion, MachinePrivate, NodePrivate};

/// One acknowledged registration.
#[derive(Debug, Clone)]
struct Acked {
    node_id: i64,
    node_key: String,
    machine: MachinePrivate,
    node: NodePrivate,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_registration_survives_a_kill_9_during_a_burst() {
    common::init_logs();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut server = ServerProcess::start(dir.path(), port).await;
    let admin = server.admin();
    admin
        .create_user(&NewUser {
            login_name: "ci@example.com".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let key = admin
        .create_preauth_key(&NewPreauthKey {
            user: Some("ci@example.com".into()),
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await
        .unwrap()
        .secret;
    let server_key = weft_client::fetch_key(&server.url().parse().unwrap(), Duration::from_secs(5))
        .await
        .unwrap()
        .public_key;

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let url: weft_client::ControlUrl = server.url().parse().unwrap();
    let mut workers = Vec::new();
    for w in 0..16 {
        let acked = acked.clone();
        let (url, key) = (url.clone(), key.clone());
        workers.push(tokio::spawn(async move {
            // Bounded: at most 200 attempts per worker, stops at the first failure.
            for i in 0..200 {
                let machine = MachinePrivate::generate();
                let node = NodePrivate::generate();
                let target = Target {
                    url: url.clone(),
                    machine_key: machine.clone(),
                    server_key,
                };
                let req = RegisterRequest {
                    version: CapabilityVersion::CURRENT,
                    node_key: node.public(),
                    old_node_key: None,
                    auth: RegisterAuth::AuthKey(AuthKey(key.clone())),
                    expiry: ExpiryRequest::Default,
                    ephemeral: false,
                    host_info: host_info(&format!("burst-{w}-{i}")),
                };
                match register(&target, req, &ConnectOptions::default()).await {
                    Ok(RegisterResponse::Registered(r)) => acked.lock().unwrap().push(Acked {
                        node_id: r.node_id.0,
                        node_key: node.public().to_string(),
                        machine,
                        node,
                    }),
                    Ok(other) => panic!("unexpected answer {other:?}"),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill in the middle of the burst.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while acked.lock().unwrap().len() < 80 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst is too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill9();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = ServerProcess::start(dir.path(), port).await;
    let nodes = server.admin().list_nodes().await.unwrap();
    let by_key: std::collections::BTreeMap<&str, i64> =
        nodes.iter().map(|n| (n.node_key.as_str(), n.id)).collect();
    for a in &acked {
        assert_eq!(
            by_key.get(a.node_key.as_str()),
            Some(&a.node_id),
            "acknowledged node {} is missing",
            a.node_id
        );
    }
    let v4: BTreeSet<&str> = nodes.iter().map(|n| n.ipv4.as_str()).collect();
    let v6: BTreeSet<&str> = nodes.iter().map(|n| n.ipv6.as_str()).collect();
    let names: BTreeSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        (v4.len(), v6.len(), names.len()),
        (nodes.len(), nodes.len(), nodes.len())
    );
    assert!(
        nodes.iter().all(|n| !n.online),
        "nobody is online after a restart"
    );
    assert!(nodes.len() >= acked.len());

    // An acknowledged node comes back with its key alone.
    let a = &acked[acked.len() / 2];
    let target = Target {
        url: server.url().parse().unwrap(),
        machine_key: a.machine.clone(),
        server_key,
    };
    let req = RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: a.node.public(),
        old_node_key: None,
        auth: RegisterAuth::None,
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: host_info("back"),
    };
    let resp = register(&target, req, &ConnectOptions::default())
        .await
        .unwrap();
    assert!(matches!(resp, RegisterResponse::Registered(r) if r.node_id.0 == a.node_id));
    // The restarted server's in-memory address set starts from what the
    // database holds: a second concurrent burst gets new, distinct addresses.
    let url: weft_client::ControlUrl = server.url().parse().unwrap();
    let again = futures::future::join_all((0..40).map(|i| {
        let (url, key) = (url.clone(), key.clone());
        async move {
            let target = Target {
                url,
                machine_key: MachinePrivate::generate(),
                server_key,
            };
            let req = RegisterRequest {
                version: CapabilityVersion::CURRENT,
                node_key: NodePrivate::generate().public(),
                old_node_key: None,
                auth: RegisterAuth::AuthKey(AuthKey(key)),
                expiry: ExpiryRequest::Default,
                ephemeral: false,
                host_info: host_info(&format!("after-{i}")),
            };
            register(&target, req, &ConnectOptions::default()).await
        }
    }))
    .await;
    for r in again {
        assert!(matches!(r, Ok(RegisterResponse::Registered(_))), "{r:?}");
    }
    let after = server.admin().list_nodes().await.unwrap();
    assert_eq!(after.len(), nodes.len() + 40);
    let v4: BTreeSet<&str> = after.iter().map(|n| n.ipv4.as_str()).collect();
    assert_eq!(
        v4.len(),
        after.len(),
        "an address was handed out twice after the restart"
    );
    eprintln!(
        "acknowledged {} registrations before kill -9; {} nodes after restart, {} after a second burst",
        acked.len(),
        nodes.len(),
        after.len()
    );
    let mut server = server;
    assert!(server.stop().success());
}
