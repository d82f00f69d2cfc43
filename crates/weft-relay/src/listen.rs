//! The standalone HTTP(S) listener: accepts TCP, completes TLS when
//! configured, and serves a router with hyper (HTTP/1.1 with upgrades, a
//! deadline for the request headers, a cap on connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Limits of the standalone listener.
#[derive(Clone, Debug)]
pub struct ListenLimits {
    /// Time for the TLS handshake and the request headers together.
    pub header_timeout: Duration,
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
}

impl Default for ListenLimits {
    fn default() -> Self {
        ListenLimits {
            header_timeout: Duration::from_secs(10),
            max_connections: 20_000,
        }
    }
}

/// Serves `router` on `listener` (TLS with `tls`, else plain HTTP) until
/// `stop` is cancelled; connections in progress are then shut down
/// gracefully (upgraded relay connections end with the relay's
/// [`crate::RelayServer::shutdown`]).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: ListenLimits,
    stop: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tasks = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("connection limit reached; closing a new connection");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let stop = stop.clone();
        let header_timeout = limits.header_timeout;
        tasks.spawn(async move {
            let _slot = slot;
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => serve_http(tls, peer, router, header_timeout, stop).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                }
                None => serve_http(tcp, peer, router, header_timeout, stop).await,
            }
        });
    }
    tasks.close();
    tasks.wait().await;
}

async fn serve_http<IO>(
    io: IO,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, req).await }
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
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
        () = stop.cancelled() => conn.as_mut().graceful_shutdown(),
    }
}
