//! `RestAdmission` against a small axum stand-in for control's
//! `POST /api/v1/relay/verify` (the endpoint does not exist in weft-control
//! yet; docs/RELAY.md has the contract this stub follows).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use weft_relay::{
    Admission, AdmissionError, Event, RelayClient, RelayConfig, RestAdmission, VerifyRequest,
    VerifyResponse,
};

use super::*;

pub(crate) const API_KEY: &str = "wk_test_0123456789";

#[derive(Clone, Default)]
pub(crate) struct Stub {
    pub allowed: Arc<Mutex<BTreeSet<NodePublic>>>,
    pub requests: Arc<Mutex<Vec<VerifyRequest>>>,
    pub down: Arc<std::sync::atomic::AtomicBool>,
}

async fn verify(State(stub): State<Stub>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    if stub.down.load(std::sync::atomic::Ordering::Relaxed) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "down for maintenance".to_owned(),
        );
    }
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if auth != format!("Bearer {API_KEY}") {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"code":"unauthorized"}"#.to_owned(),
        );
    }
    let Ok(req) = serde_json::from_slice::<VerifyRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad body".to_owned());
    };
    let allowed = stub.allowed.lock().unwrap().clone();
    let answer = VerifyResponse {
        allowed: req
            .node_keys
            .iter()
            .filter(|k| allowed.contains(k))
            .copied()
            .collect(),
    };
    stub.requests.lock().unwrap().push(req);
    (StatusCode::OK, serde_json::to_string(&answer).unwrap())
}

/// Serves the stub under a path prefix, like a control server behind a proxy.
pub(crate) async fn start_stub() -> (Stub, String) {
    let stub = Stub::default();
    let app = axum::Router::new()
        .route("/weft/api/v1/relay/verify", post(verify))
        .with_state(stub.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/weft", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (stub, url)
}

fn rest(url: &str, key: &str) -> RestAdmission {
    RestAdmission::new(url, zeroize::Zeroizing::new(key.to_owned()), None).unwrap()
}

#[tokio::test]
async fn the_verify_contract_is_spoken_as_documented() {
    let (stub, url) = start_stub().await;
    let (a, b) = (node_key().public(), node_key().public());
    stub.allowed.lock().unwrap().insert(a);
    let admission = rest(&url, API_KEY);
    let allowed = admission.verify(&[a, b]).await.unwrap();
    assert_eq!(allowed, BTreeSet::from([a]));
    let reqs = stub.requests.lock().unwrap();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].node_keys, vec![a, b]);
    // The wire form is {"node_keys":["nodekey:<hex>", ...]}.
    let json = serde_json::to_string(&reqs[0]).unwrap();
    assert_eq!(json, format!(r#"{{"node_keys":["{a}","{b}"]}}"#));
}

#[tokio::test]
async fn a_wrong_api_key_or_a_sick_control_is_an_error_not_a_refusal() {
    let (stub, url) = start_stub().await;
    let k = node_key().public();
    let e = rest(&url, "wrong").verify(&[k]).await.unwrap_err();
    assert!(
        matches!(&e, AdmissionError::Unavailable(m) if m.contains("HTTP 401")),
        "{e}"
    );
    stub.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let e = rest(&url, API_KEY).verify(&[k]).await.unwrap_err();
    assert!(
        matches!(&e, AdmissionError::Unavailable(m) if m.contains("503") && m.contains("maintenance")),
        "{e}"
    );
    // Nobody listening.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    assert!(rest(&dead, API_KEY).verify(&[k]).await.is_err());
    assert!(RestAdmission::new("ftp://x", zeroize::Zeroizing::new(String::new()), None).is_err());
}

#[tokio::test]
async fn the_relay_admits_by_control_and_drops_keys_control_no_longer_allows() {
    let (stub, url) = start_stub().await;
    let (ka, kb, stranger) = (node_key(), node_key(), node_key());
    stub.allowed
        .lock()
        .unwrap()
        .extend([ka.public(), kb.public()]);
    let mut config = RelayConfig::new(NodePrivate::generate(), Arc::new(rest(&url, API_KEY)));
    config.reverify_every = Some(Duration::from_millis(200));
    let relay = start_relay(config, None).await;

    let (a, mut ea) = connected(client_config(&relay, &ka)).await;
    let (_b, mut eb) = connected(client_config(&relay, &kb)).await;
    a.send(&kb.public(), b"admitted").unwrap();
    assert_eq!(
        next_packet(&mut eb).await.1,
        Bytes::from_static(b"admitted")
    );

    // A key control does not know: refused at login.
    let (_s, mut es) = RelayClient::start(client_config(&relay, &stranger)).unwrap();
    wait_event(&mut es, |e| matches!(e, Event::Health { .. })).await;
    assert!(!relay.server.is_connected(&stranger.public()));

    // Control deletes a: within a re-verification period it is cut off.
    stub.allowed.lock().unwrap().remove(&ka.public());
    let started = tokio::time::Instant::now();
    wait_event(&mut ea, |e| matches!(e, Event::Disconnected { .. })).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!relay.server.is_connected(&ka.public()));
    assert!(relay.server.is_connected(&kb.public()));

    // Control goes down: b stays, new logins are refused.
    stub.down.store(true, std::sync::atomic::Ordering::Relaxed);
    let errors = relay.server.stats().admission_errors;
    tokio::time::timeout(WAIT, async {
        while relay.server.stats().admission_errors < errors + 2 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(relay.server.is_connected(&kb.public()));
    let (_c, mut ec) = RelayClient::start(client_config(&relay, &kb)).unwrap();
    let ev = wait_event(&mut ec, |e| matches!(e, Event::Health { .. })).await;
    assert_eq!(
        ev,
        Event::Health {
            problem: Some("the relay cannot check this node key right now".into())
        }
    );
    assert!(relay.server.stats().refused_admission_error >= 1);
}
