//! The HTTP listener: our own accept loop around hyper (so request headers
//! have a deadline and upgrades work), and the routes.
//!
//! | route | what |
//! |---|---|
//! | `GET /key` | the server's Noise key (docs/PROTOCOL.md §3) |
//! | `POST /control` | the control channel upgrade (§4) |
//! | `GET /a/{auth_id}` | the authenticator's page of a device login, or of an SSH check ([`crate::auth`]) |
//! | `/login/{authenticator}/…` | the authenticator's own routes, if any, deciding logins through [`crate::auth::CompleteLogin`] |
//! | `/api/v1/…` | the admin API with an API key ([`crate::admin`]) |
//! | `/admin…` | the web admin console ([`crate::console`]; its own, stricter CSP) |
//! | `GET /health` | `ok` |
//! | `GET /install.sh`, `GET /packages/{file}` | the node installer and its packages ([`crate::install`]) |
//! | `/derp`, `/derp/probe`, `/derp/latency-check`, `/generate_204` | the embedded relay ([`crate::relay`]), unless `--no-relay` |
//!
//! Prometheus metrics (`GET /metrics`) are not on this listener: they have
//! their own ([`serve_metrics`], `--metrics-listen`, loopback by default),
//! so the public address tells nobody the tailnet's size or load.
//!
//! Every response but the `101` of an upgrade carries the headers of
//! [`crate::pages::set_security_headers`]: a Content-Security-Policy that
//! lets nothing load or run but the pages' own inline style, no framing, no
//! MIME sniffing, no `Referer` (login URLs carry the login id), and
//! `Cache-Control: no-store` on HTML.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use weft_control_store::StoreError;

use crate::admin::{Admin, api};
use crate::admission::{LOG_EVERY, LogEvery, Refused, Standing};
use crate::ctx::Ctx;
use crate::login::Completer;
use crate::pages::{self, LoginContext, LoginPage};

/// The remote address of an HTTP connection (a request extension).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteAddr(pub SocketAddr);

/// Builds every route of the server.
pub(crate) fn router(ctx: Arc<Ctx>, admin: Admin) -> Router {
    let rest = api::routes(admin.clone()).layer(axum::middleware::from_fn_with_state(
        admin.clone(),
        api::require_api_key,
    ));
    let mut r = Router::new()
        .route("/key", get(crate::control::key))
        .route("/control", post(crate::control::upgrade))
        .route("/a/{auth_id}", get(login_page))
        .route("/health", get(|| async { "ok" }))
        .with_state(ctx.clone())
        .nest("/api/v1", rest)
        .merge(crate::console::routes(ctx.clone(), admin.clone()))
        .merge(crate::install::routes(
            &ctx.server_url,
            ctx.config.packages_dir.clone(),
        ));
    let completer = Arc::new(Completer::new(ctx.clone()));
    if let Some(relay) = &ctx.relay {
        // `/derp` (upgrade), `/derp/probe`, `/derp/latency-check`, `/generate_204`.
        r = r.merge(relay.router());
    }
    if let Some(oidc) = &ctx.oidc {
        r = r.nest(
            "/login/oidc",
            crate::oidc::routes(oidc.clone(), completer.clone()),
        );
    } else if let Some(extra) = ctx.config.authenticator.routes(completer) {
        r = r.nest(
            &format!("/login/{}", ctx.config.authenticator.name()),
            extra,
        );
    }
    r.layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn(track))
}

/// Adds the security headers described in the module docs.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return resp;
    }
    let html = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/html"));
    pages::set_security_headers(resp.headers_mut(), html);
    resp
}

/// Records the latency of every request by route.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |p| p.as_str().to_owned());
    let route = if route.starts_with("/api/v1") {
        "/api/v1".to_owned()
    } else {
        route
    };
    #[allow(clippy::disallowed_methods)] // measuring only
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!("weft_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// Serves `GET /metrics` (and `GET /health`) on `listener` until `stop`.
pub(crate) async fn serve_metrics(
    listener: TcpListener,
    stop: tokio_util::sync::CancellationToken,
) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { "ok" }));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::warn!(error = %e, "the metrics listener stopped");
    }
}

async fn metrics() -> Response {
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

async fn login_page(State(ctx): State<Arc<Ctx>>, Path(auth_id): Path<String>) -> Response {
    let valid = auth_id.len() == 32 && auth_id.bytes().all(|b| b.is_ascii_hexdigit());
    let request = if valid {
        match ctx.store.auth_request(&auth_id).await {
            Ok(r) => Some(r),
            Err(StoreError::UnknownAuthRequest(_)) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot read a login");
                return (
                    http::StatusCode::INTERNAL_SERVER_ERROR,
                    "the server cannot read this login right now; try again",
                )
                    .into_response();
            }
        }
    } else {
        None
    };
    if request.is_none()
        && let Some(check) = ctx.checks.info(&auth_id)
    {
        let page = ctx
            .config
            .authenticator
            .check_page(&auth_id, &check, ctx.clock.now());
        return html(page);
    }
    html(ctx.config.authenticator.login_page(&LoginContext {
        auth_id: &auth_id,
        request: request.as_ref(),
        now: ctx.clock.now(),
        server_url: &ctx.server_url,
    }))
}

pub(crate) fn html(page: LoginPage) -> Response {
    let status = http::StatusCode::from_u16(page.status).unwrap_or(http::StatusCode::OK);
    match page.location {
        Some(to) => (status, [(http::header::LOCATION, to)], Html(page.html)).into_response(),
        None => (status, Html(page.html)).into_response(),
    }
}

/// The first pause after `accept` fails (out of descriptors and the like).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// The longest pause between failing `accept`s.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Accepts connections until `ctx.stop`, admits each ([`crate::admission`];
/// a refused one gets `503` and is closed), completes TLS when `tls` is
/// given, and serves it with hyper (HTTP/1.1 with upgrades, a deadline for
/// the TLS handshake and the request headers).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    ctx: Arc<Ctx>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let header_timeout = ctx.config.http_header_timeout;
    let mut accept_failures = LogEvery::new(LOG_EVERY);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let (tcp, peer) = tokio::select! {
            () = ctx.stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => {
                    backoff = ACCEPT_BACKOFF_MIN;
                    x
                }
                Err(e) => {
                    metrics::counter!("weft_control_accept_errors_total").increment(1);
                    if let Some(failures) = accept_failures.hit(crate::now()) {
                        tracing::warn!(error = %e, failures, "accept failed; backing off");
                    }
                    tokio::select! {
                        () = ctx.stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                    continue;
                }
            },
        };
        let ticket = match ctx.admission.admit(peer.ip(), crate::now()) {
            Ok(t) => Arc::new(t),
            Err(refused) => {
                shed(tcp, refused);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = ConnCtx {
            router: router.clone(),
            stop: ctx.stop.clone(),
            ticket,
            peer,
            header_timeout,
        };
        let acceptor = tls.clone();
        ctx.tasks.spawn(async move {
            let Some(acceptor) = acceptor else {
                return serve_conn(tcp, conn).await;
            };
            // The TLS handshake shares the deadline of the request headers.
            match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => serve_conn(tls, conn).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// What serving one accepted connection needs.
struct ConnCtx {
    router: Router,
    stop: tokio_util::sync::CancellationToken,
    ticket: Arc<crate::admission::Ticket>,
    peer: SocketAddr,
    header_timeout: Duration,
}

/// Serves one connection (plain TCP, or TLS) with hyper until it ends, the
/// server stops or admission evicts it.
async fn serve_conn<IO>(io: IO, c: ConnCtx)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ConnCtx {
        router,
        stop,
        ticket,
        peer,
        header_timeout,
    } = c;
    let evicted = ticket.evicted().clone();
    let svc_ticket = ticket.clone();
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        svc_ticket.set_if(Standing::Waiting, Standing::Busy);
        req.extensions_mut().insert(RemoteAddr(peer));
        // The relay's routes read the client address from here.
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        req.extensions_mut().insert(svc_ticket.clone());
        let router = router.clone();
        let ticket = svc_ticket.clone();
        async move {
            let resp = tower::ServiceExt::oneshot(router, req).await;
            ticket.set_if(Standing::Busy, Standing::Waiting);
            resp
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(header_timeout))
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
            }
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
        () = evicted.cancelled() => {
            tracing::debug!(%peer, "HTTP connection evicted to make room");
        }
    }
    drop(ticket);
}

/// Answers a refused connection with `503` and the reason, then closes it.
/// Best effort and without waiting: the socket is not kept a moment longer
/// (it may be refused for want of descriptors). What the client has sent
/// already is read first, so the close does not turn into a reset.
fn shed(tcp: tokio::net::TcpStream, refused: Refused) {
    use std::io::{Read as _, Write as _};
    let Ok(mut tcp) = tcp.into_std() else {
        return;
    };
    let mut scratch = [0u8; 4096];
    let _ = tcp.read(&mut scratch);
    let body = refused.message();
    let resp = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write(resp.as_bytes());
    let _ = tcp.shutdown(std::net::Shutdown::Write);
}
