//! The relay's HTTP routes, as derper serves them:
//!
//! | route | answer |
//! |---|---|
//! | `/derp` with `Upgrade: DERP` | `101 Switching Protocols` (with `Derp-Version` and `Derp-Public-Key`), then DERP |
//! | `/derp` without it | `426 Upgrade Required` |
//! | `/derp/probe`, `/derp/latency-check` | `200` to GET/HEAD (latency probes of clients without UDP) |
//! | `/generate_204` | `204`, echoing `X-Tailscale-Challenge` as `X-Tailscale-Response` (captive-portal check) |
//!
//! The client's address, for logs, comes from an
//! `axum::extract::ConnectInfo<SocketAddr>` request extension when the
//! server that mounts the router provides one.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use http::{HeaderValue, Method, StatusCode, header};

use super::RelayServer;
use crate::proto::{DERP_PATH, FAST_START_HEADER, PROTOCOL_VERSION};

const CHALLENGE_HEADER: &str = "X-Tailscale-Challenge";
const RESPONSE_HEADER: &str = "X-Tailscale-Response";

impl RelayServer {
    /// Returns the relay's routes (`/derp`, `/derp/probe`,
    /// `/derp/latency-check`, `/generate_204`), to serve alone or merge into
    /// another router. The server must serve HTTP/1.1 with upgrades (hyper's
    /// `serve_connection(..).with_upgrades()`, as `axum::serve` does), and
    /// should set `TCP_NODELAY` on its connections.
    pub fn router(&self) -> Router {
        Router::new()
            .route(DERP_PATH, any(derp))
            .route("/derp/probe", any(probe))
            .route("/derp/latency-check", any(probe))
            .route("/generate_204", any(no_content))
            .with_state(self.clone())
    }
}

async fn derp(State(server): State<RelayServer>, mut req: Request) -> Response {
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    if upgrade.as_deref() != Some("derp") {
        // derper also speaks DERP over WebSocket (browsers); we do not.
        return (
            StatusCode::UPGRADE_REQUIRED,
            "DERP requires connection upgrade\n",
        )
            .into_response();
    }
    if server.inner.closing.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "relay shutting down\n").into_response();
    }
    if req.headers().contains_key(FAST_START_HEADER) {
        // Clients send it only after finding our metadata certificate, which
        // we never present; answer normally (the 101 below) all the same.
        tracing::debug!("relay client asked for a fast start; answering with 101");
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let s = server.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => s.serve_upgraded(upgraded, remote).await,
            Err(e) => tracing::debug!(error = %e, "relay upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("DERP"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("Derp-Version", HeaderValue::from(PROTOCOL_VERSION));
    if let Ok(v) = HeaderValue::from_str(&server.public_key().to_hex()) {
        h.insert("Derp-Public-Key", v);
    }
    resp
}

async fn probe(method: Method) -> Response {
    match method {
        Method::GET | Method::HEAD => (
            [(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            )],
            "",
        )
            .into_response(),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "bogus probe method\n").into_response(),
    }
}

async fn no_content(req: Request) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let challenge = req
        .headers()
        .get(CHALLENGE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|c| {
            c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '-' | '_' | ':'))
        });
    if let Some(c) = challenge
        && let Ok(v) = HeaderValue::from_str(&format!("response {c}"))
    {
        resp.headers_mut().insert(RESPONSE_HEADER, v);
    }
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, no-transform, max-age=0"),
    );
    resp
}
