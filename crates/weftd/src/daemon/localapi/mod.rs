//! The LocalAPI server: the route table of `weft_localapi` served with axum
//! over the daemon's unix socket.
//!
//! Authorization is per request, from the caller's peer credentials
//! (SO_PEERCRED): `GET` is open to everyone who can open the socket (it is
//! 0666); any other method needs the [`Authorizer`]'s yes (root, or the
//! `--operator` user), else 403 with a message naming what was refused.
//! Every error is an [`ApiError`], sent as a JSON
//! [`weft_localapi::ErrorBody`]; the coordinator's domain errors get their
//! status there. A body that is not valid JSON for the route is a 400 and
//! changes nothing.
//!
//! Connections are held to limits ([`conn`]): at most a few per non-root
//! uid, request heads and bodies within a deadline, and a graceful answer
//! when the daemon runs short of file descriptors.

pub mod conn;
mod error;
pub mod status;

use std::convert::Infallible;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path as UrlPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use weft_localapi::{
    NetcheckRegion, NetcheckReport, Notify, PREFIX, PingPath, PingRequest, PingResult, PrefsPatch,
    StartRequest,
};

pub use error::ApiError;

use super::backend::Handle;

/// Decides whether a caller (by uid; `None` if unknown) may change things.
pub type Authorizer = Arc<dyn Fn(Option<u32>) -> bool + Send + Sync>;

/// The default policy: root, or the operator uid.
pub fn root_or(operator: Option<u32>) -> Authorizer {
    Arc::new(move |uid| uid == Some(0) || (uid.is_some() && uid == operator))
}

/// How long a shutdown waits for open connections (a client that stopped
/// reading would otherwise hold it forever).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The largest request body read (prefs are a few hundred bytes; this
/// leaves room for an oversized value to be refused with a message).
const MAX_BODY: usize = 2 << 20;

/// The longest ping timeout accepted.
const MAX_PING_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct AppState {
    handle: Handle,
    authorize: Authorizer,
    /// Becomes `true` at shutdown: open `watch` streams end then, so a
    /// graceful shutdown never waits for a watcher that stays connected.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// How long a request body may take to arrive.
    body_read_timeout: Duration,
}

/// The caller's credentials (`SO_PEERCRED` at connect time).
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: Option<u32>,
}

/// Binds the socket: creates its directory (0755), removes a stale socket,
/// and makes the socket 0666 so everyone may read.
///
/// # Errors
/// What failed, naming the path.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    use anyhow::Context as _;
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another weftd is already listening on {}; stop it or pass --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

/// Returns the route table. Setting `stopping` to `true` ends every open
/// `watch` stream; request bodies must arrive within `limits`' deadline.
pub fn router(
    handle: Handle,
    authorize: Authorizer,
    stopping: tokio::sync::watch::Receiver<bool>,
    limits: &conn::Limits,
) -> Router {
    let state = AppState {
        handle,
        authorize,
        stopping,
        body_read_timeout: limits.body_read_timeout,
    };
    let api = Router::new()
        .route("/status", get(status_h))
        .route("/prefs", get(prefs_get).patch(prefs_patch))
        .route("/start", post(start_h))
        .route("/login-interactive", post(login_interactive_h))
        .route("/logout", post(logout_h))
        .route("/profiles", get(profiles_get).put(profiles_put))
        .route(
            "/profiles/{id}",
            post(profile_switch).delete(profile_delete),
        )
        .route("/ping", post(ping_h))
        .route("/netcheck", get(netcheck_h))
        .route("/whois", get(whois_h))
        .route("/dns/status", get(dns_status_h))
        .route("/dns/query", get(dns_query_h))
        .route("/watch", get(watch_h))
        .route("/debug/prefs", get(debug_prefs_h))
        .route("/metrics", get(metrics_h))
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "no such LocalAPI route: {} {}",
                req.method(),
                req.uri().path()
            ))
        })
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), authorize_mw))
        .with_state(state);
    Router::new()
        .nest(PREFIX.trim_end_matches('/'), api)
        .fallback(|req: Request| async move {
            ApiError::not_found(format!(
                "not a LocalAPI path: {} (expected {PREFIX}…)",
                req.uri().path()
            ))
        })
}

/// Serves `router` on `listener` until `shutdown` resolves, holding
/// connections to `limits` (see [`conn`]).
///
/// # Errors
/// The server's I/O error.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    limits: conn::Limits,
) -> std::io::Result<()> {
    conn::serve(listener, router, shutdown, limits).await
}

/// Reads a request's whole body within the body deadline
/// ([`conn::Limits::body_read_timeout`]) before the handler runs (after
/// authorization, so a refused caller's body is never read): a half-sent
/// body is a 408, not a held connection.
async fn read_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() == Method::GET {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let limit = MAX_BODY;
    let deadline = st.body_read_timeout;
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(_)) => ApiError::new(
            413,
            format!("the request body is larger than {limit} bytes, or was cut off"),
        )
        .into_response(),
        Err(_) => ApiError::new(
            408,
            format!(
                "the request body did not arrive within {} ms",
                deadline.as_millis()
            ),
        )
        .into_response(),
    }
}

async fn authorize_mw(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<Peer>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::GET && !(st.authorize)(peer.uid) {
        let what = format!(
            "{} {}",
            req.method(),
            req.uri()
                .path()
                .trim_start_matches(PREFIX.trim_end_matches('/'))
        );
        let who = peer
            .uid
            .map_or_else(|| "an unknown user".to_owned(), |u| format!("uid {u}"));
        return ApiError::new(
            403,
            format!(
                "{what} needs root or the operator user (weftd --operator); {who} may only read"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

/// Parses a JSON body; an empty body counts as `{}`.
fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

/// Wall time, for handshake ages in status.
fn wall_now() -> SystemTime {
    crate::clock::wall()
}

async fn status_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let s = st.handle.call(|b| status::build(b, wall_now())).await?;
    Ok(Json(s).into_response())
}

async fn prefs_get(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.handle.call(|b| b.prefs()).await?).into_response())
}

async fn prefs_patch(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let patch: PrefsPatch = parse(&body)?;
    let prefs = st.handle.call(move |b| b.edit_prefs(&patch)).await??;
    Ok(Json(prefs).into_response())
}

async fn start_h(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: StartRequest = parse(&body)?;
    st.handle.call(move |b| b.start(req)).await??;
    Ok(Json(serde_json::json!({})).into_response())
}

async fn login_interactive_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    st.handle.call(|b| b.login_interactive()).await?;
    Ok(Json(serde_json::json!({})).into_response())
}

async fn logout_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let job = st.handle.call(|b| b.begin_logout()).await??;
    if let Some(job) = job {
        let id = job.profile_id.clone();
        let result = job.run().await;
        st.handle
            .call(move |b| b.finish_logout(&id, result))
            .await??;
    }
    Ok(Json(serde_json::json!({})).into_response())
}

async fn profiles_get(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.handle.call(|b| b.profiles()).await?).into_response())
}

async fn profiles_put(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.handle.call(|b| b.new_profile()).await??).into_response())
}

async fn profile_switch(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    Ok(Json(st.handle.call(move |b| b.switch_profile(&id)).await??).into_response())
}

async fn profile_delete(
    State(st): State<AppState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    st.handle.call(move |b| b.delete_profile(&id)).await??;
    Ok(Json(serde_json::json!({})).into_response())
}

async fn ping_h(State(st): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let req: PingRequest = parse(&body)?;
    if req.timeout_ms == 0 {
        return Err(ApiError::bad_request("timeout_ms must be positive"));
    }
    let timeout = Duration::from_millis(req.timeout_ms).min(MAX_PING_TIMEOUT);
    let ip = req.ip;
    let (name, rx) = st.handle.call(move |b| b.start_ping(ip, timeout)).await??;
    let timed_out = || {
        ApiError::new(
            504,
            format!(
                "ping {name} ({ip}) timed out after {} ms",
                timeout.as_millis()
            ),
        )
    };
    // The core times the ping out itself; the extra second only guards
    // against a core that never answers.
    match tokio::time::timeout(timeout + Duration::from_secs(1), rx).await {
        Ok(Ok(weft_disco::PingOutcome::Pong { path, rtt })) => {
            let via = match path {
                weft_disco::Path::Direct(addr) => PingPath::Direct(addr),
                weft_disco::Path::Relay(region) => PingPath::Relay(
                    st.handle
                        .call(move |b| b.relay_region_name(region.0))
                        .await?,
                ),
            };
            Ok(Json(PingResult {
                node_name: name,
                node_ip: ip,
                via,
                latency_ms: rtt.as_secs_f64() * 1000.0,
            })
            .into_response())
        }
        _ => Err(timed_out()),
    }
}

/// How long `GET netcheck` waits for the run it starts.
const NETCHECK_WAIT: Duration = Duration::from_secs(5);

async fn netcheck_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let (mut rx, regions) = st.handle.call(|b| b.netcheck()).await??;
    if tokio::time::timeout(NETCHECK_WAIT, rx.changed())
        .await
        .is_err()
    {
        return Err(ApiError::new(
            504,
            format!(
                "netcheck did not finish within {} s",
                NETCHECK_WAIT.as_secs()
            ),
        ));
    }
    let report = rx
        .borrow()
        .clone()
        .ok_or_else(|| ApiError::new(503, "netcheck ended without a report; weftd is stopping"))?;
    let latency = |id: u16| {
        report
            .region_latency
            .get(&weft_disco::RegionId(id))
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    Ok(Json(NetcheckReport {
        udp: report.udp,
        global_v4: report.global_v4,
        global_v6: report.global_v6,
        mapping_varies_by_dest_ip: report.mapping_varies_by_dest_ip,
        port_mapping: None,
        regions: regions
            .into_iter()
            .map(|g| NetcheckRegion {
                latency_ms: latency(g.id),
                ..g
            })
            .collect(),
        preferred_region: report.preferred_region.map(|r| r.0),
        udp_retry_in_ms: report
            .udp_retry_in
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    })
    .into_response())
}

#[derive(serde::Deserialize)]
struct WhoisQuery {
    addr: Option<String>,
}

async fn whois_h(
    State(st): State<AppState>,
    Query(query): Query<WhoisQuery>,
) -> Result<Response, ApiError> {
    let addr = query
        .addr
        .ok_or_else(|| ApiError::bad_request("whois needs ?addr=IP"))?;
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| ApiError::bad_request(format!("{addr:?} is not an IP address")))?;
    let w = st
        .handle
        .call(move |b| status::whois(b, ip, wall_now()))
        .await?;
    let w = w.ok_or_else(|| {
        ApiError::not_found(format!("no node in the tailnet has the address {ip}"))
    })?;
    Ok(Json(w).into_response())
}

/// `GET dns/status`: MagicDNS and the OS's DNS configuration.
async fn dns_status_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let s = st.handle.call(|b| b.dns_status()).await?;
    Ok(Json(s).into_response())
}

#[derive(serde::Deserialize)]
struct DnsQueryParams {
    name: Option<String>,
    #[serde(rename = "type")]
    qtype: Option<String>,
}

/// `GET dns/query?name=NAME&type=TYPE` (type defaults to A): asks the
/// MagicDNS resolver as a client would, and says where the answer came from.
async fn dns_query_h(
    State(st): State<AppState>,
    Query(q): Query<DnsQueryParams>,
) -> Result<Response, ApiError> {
    let name = q
        .name
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::bad_request("dns/query needs ?name=NAME"))?;
    let qtype = q.qtype.unwrap_or_else(|| "A".to_owned());
    let dns = st
        .handle
        .call(|b| b.data_plane().dns())
        .await?
        .ok_or_else(|| ApiError::new(503, "the MagicDNS resolver is not running"))?;
    if qtype.parse::<hickory_proto::rr::RecordType>().is_err()
        && qtype
            .to_ascii_uppercase()
            .parse::<hickory_proto::rr::RecordType>()
            .is_err()
    {
        return Err(ApiError::bad_request(format!(
            "{qtype:?} is not a DNS record type"
        )));
    }
    let r = dns
        .query(&name, &qtype)
        .await
        .map_err(|e| ApiError::new(502, format!("{e:#}")))?;
    Ok(Json(r).into_response())
}

/// `GET metrics`: Prometheus text (filter drops, tunnel packets and bytes,
/// see [`crate::daemon::metrics`]), rendered outside the backend's lock.
async fn metrics_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let snapshot = st.handle.call(|b| b.data_plane().metrics()).await?;
    let headers = [(
        axum::http::header::CONTENT_TYPE,
        crate::daemon::metrics::CONTENT_TYPE,
    )];
    Ok((headers, crate::daemon::metrics::render(&snapshot)).into_response())
}

async fn debug_prefs_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(st.handle.call(|b| b.debug_prefs()).await?).into_response())
}

fn ndjson(n: &Notify) -> Bytes {
    let mut v = serde_json::to_vec(n).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

async fn watch_h(State(st): State<AppState>) -> Result<Response, ApiError> {
    let (snapshot, rx) = st.handle.call(|b| b.watch()).await?;
    let stopping = st.stopping.clone();
    let stream = futures::stream::unfold(
        (Some(snapshot), rx, stopping),
        |(first, mut rx, mut stopping)| async move {
            if let Some(n) = first {
                return Some((Ok::<_, Infallible>(ndjson(&n)), (None, rx, stopping)));
            }
            let next = tokio::select! {
                r = rx.recv() => r,
                _ = stopping.wait_for(|s| *s) => return None,
            };
            match next {
                Ok(n) => Some((Ok(ndjson(&n)), (None, rx, stopping))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "Closing a watcher that fell behind");
                    None
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => None,
            }
        },
    );
    Ok(Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}
