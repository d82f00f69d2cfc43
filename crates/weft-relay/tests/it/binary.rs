//! The `weft-relay` binary on loopback: admission through control's REST
//! API (against the stub of `admission`), refusal to start without an
//! admission source, and a restart that sends clients straight back.

use std::time::Duration;

use weft_lab::Lab;
use weft_relay::Event;

use super::admission::{API_KEY, start_stub};
use super::*;

const RELAY_BIN: &str = env!("CARGO_BIN_EXE_weft-relay");

/// Returns a loopback port that was free a moment ago.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(addr: SocketAddr) {
    tokio::time::timeout(WAIT, async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("weft-relay did not start listening");
}

#[test]
fn the_binary_will_not_start_open_by_accident() {
    let lab = Lab::new("weft-relay-flags").unwrap();
    let out = lab
        .host_command(RELAY_BIN)
        .args(["--no-stun"])
        .run_unchecked()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("--control"), "{}", out.stderr);
    let out = lab
        .host_command(RELAY_BIN)
        .args(["--no-stun", "--control", "http://127.0.0.1:9"])
        .run_unchecked()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("--api-key-file"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_admits_by_control_and_restarts_cleanly() {
    let lab = Lab::new("weft-relay-binary").unwrap();
    let (stub, url) = start_stub().await;
    let key_file = lab.dir().join("api.key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).unwrap();
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let start = || {
        lab.host_command(RELAY_BIN)
            .args([
                "--listen",
                &addr.to_string(),
                "--no-stun",
                "--key-file",
                &lab.dir().join("relay.key").to_string_lossy(),
                "--control",
                &url,
                "--api-key-file",
                &key_file.to_string_lossy(),
                "--reverify-every",
                "0.2",
            ])
            .spawn("weft-relay")
            .unwrap()
    };
    let relay = start();
    wait_listening(addr).await;
    let node = |k: &NodePrivate| {
        ClientConfig::new(
            k.clone(),
            RelayNode {
                host_name: "127.0.0.1".into(),
                port,
                tls: false,
                addrs: vec![addr],
            },
        )
    };
    let (ka, kb, stranger) = (node_key(), node_key(), node_key());
    stub.allowed
        .lock()
        .unwrap()
        .extend([ka.public(), kb.public()]);
    let (a, mut ea) = connected(node(&ka)).await;
    let (_b, mut eb) = connected(node(&kb)).await;
    a.send(&kb.public(), b"via the binary").unwrap();
    assert_eq!(
        next_packet(&mut eb).await.1,
        Bytes::from_static(b"via the binary")
    );

    let (_s, mut es) = RelayClient::start(node(&stranger)).unwrap();
    wait_event(
        &mut es,
        |e| matches!(e, Event::Health { problem: Some(p) } if p.contains("not admitted")),
    )
    .await;

    // Stopping (SIGTERM) tells clients to come back soon; the next
    // instance, with the same key file, takes them.
    let server_key = a.server_key().unwrap();
    relay.stop().unwrap();
    let ev = wait_event(&mut ea, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        matches!(ev, Event::Disconnected { retry_in, .. } if retry_in == Duration::from_millis(500)),
        "{ev:?}"
    );
    let _again = start();
    let ev = wait_event(&mut ea, |e| matches!(e, Event::Connected { .. })).await;
    assert_eq!(ev, Event::Connected { server_key });

    // Control drops b: the binary's re-verification cuts it off.
    stub.allowed.lock().unwrap().remove(&kb.public());
    wait_event(&mut eb, |e| matches!(e, Event::Disconnected { .. })).await;
}
