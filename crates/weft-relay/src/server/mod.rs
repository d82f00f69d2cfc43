//! The relay server: a [`RelayServer`] serves DERP on connections it is
//! handed — by its axum [`RelayServer::router`] (mount it into any axum or
//! hyper server; weft-control serves it at `/derp` on its HTTP listener), by
//! the standalone listener ([`crate::listen`]), or already upgraded
//! ([`RelayServer::serve_stream`]).
//!
//! Per connection: one task reads (login, then frames; a packet goes
//! straight into its destination's bounded queue), one task writes (that
//! connection's queue, in batches). Routing uses a sharded map of active
//! connections; the one lock of the whole server ([`crate::proto::Routes`])
//! is taken only on login, logout, revocation and by clients whose key is
//! connected more than once.

mod active;
pub(crate) mod conn;
mod http;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_types::{NodePrivate, NodePublic};

use crate::admission::{Admission, AdmissionError};
use crate::metrics::{Stats, StatsSnapshot};
use crate::proto::frame::{Frame, PeerGoneReason};
use crate::proto::routes::{ConnId, Lookup, RouteChanges, Routes};

use self::active::ActiveMap;
use self::conn::Conn;

/// How a [`RelayServer`] runs.
pub struct RelayConfig {
    /// The relay's own key (see [`crate::load_or_create_key`]).
    pub private_key: NodePrivate,
    /// Who may log in.
    pub admission: Arc<dyn Admission>,
    /// Re-ask admission about every connected key this often, closing the
    /// connections of refused keys (`None`: only at login; an owner that
    /// calls [`RelayServer::revoke`] on changes needs no polling).
    pub reverify_every: Option<Duration>,
    /// Bytes of frames queued per client before its packets are dropped
    /// (the queue owns its bytes: a slow client holds at most this much).
    pub queue_bytes: usize,
    /// Time from the upgrade to a `ClientInfo`.
    pub login_timeout: Duration,
    /// Time an admission check may take.
    pub admission_timeout: Duration,
    /// A client that does not take a write within this time is
    /// disconnected (derp: 2 s).
    pub write_timeout: Duration,
    /// Keep-alive period (plus up to 5 s of jitter per client).
    pub keepalive: Duration,
}

impl RelayConfig {
    /// Returns the defaults around a key and an admission: 256 KiB queue per
    /// client (about 200 packets of 1,280 bytes), 10 s login, 5 s
    /// admission, 2 s write timeout, 60 s keep-alive, no periodic
    /// re-verification.
    pub fn new(private_key: NodePrivate, admission: Arc<dyn Admission>) -> Self {
        RelayConfig {
            private_key,
            admission,
            reverify_every: None,
            queue_bytes: 256 << 10,
            login_timeout: Duration::from_secs(10),
            admission_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(2),
            keepalive: crate::proto::KEEP_ALIVE,
        }
    }
}

impl std::fmt::Debug for RelayConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConfig")
            .field("public_key", &self.private_key.public())
            .field("reverify_every", &self.reverify_every)
            .field("queue_bytes", &self.queue_bytes)
            .finish_non_exhaustive()
    }
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// [`RelayServer::new`] was called outside a Tokio runtime.
    #[error("the relay server must be created inside a Tokio runtime")]
    NoRuntime,
}

/// A DERP relay server. Cheap to clone (the clones are the same server).
#[derive(Clone)]
pub struct RelayServer {
    inner: Arc<Inner>,
}

/// The server's shared state.
pub(crate) struct Inner {
    // --- set once in `new`
    pub key: NodePrivate,
    pub public: NodePublic,
    pub config: RelayConfig,
    // --- lock-free or sharded
    pub active: ActiveMap,
    pub stats: Stats,
    next_conn: AtomicU64,
    revocations: AtomicU64,
    pub closing: CancellationToken,
    pub tasks: TaskTracker,
    // --- behind the one lock; taken on login/logout/revocation/duplicates
    routes: Mutex<Routes<Arc<Conn>>>,
}

impl std::fmt::Debug for RelayServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayServer")
            .field("public_key", &self.inner.public)
            .finish_non_exhaustive()
    }
}

/// What [`RelayServer::shutdown`] tells clients.
#[derive(Clone, Copy, Debug)]
pub struct Restarting {
    /// Reconnect after this long.
    pub reconnect_in: Duration,
    /// Keep retrying quickly for this long.
    pub try_for: Duration,
}

impl RelayServer {
    /// Creates a server (and, if configured, its re-verification task).
    ///
    /// # Errors
    /// [`RelayError::NoRuntime`] outside a Tokio runtime.
    pub fn new(config: RelayConfig) -> Result<Self, RelayError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| RelayError::NoRuntime)?;
        let inner = Arc::new(Inner {
            public: config.private_key.public(),
            key: config.private_key.clone(),
            config,
            active: ActiveMap::new(),
            stats: Stats::default(),
            next_conn: AtomicU64::new(1),
            revocations: AtomicU64::new(0),
            closing: CancellationToken::new(),
            tasks: TaskTracker::new(),
            routes: Mutex::new(Routes::new()),
        });
        if let Some(every) = inner.config.reverify_every {
            handle.spawn(reverify_loop(Arc::downgrade(&inner), every));
        }
        Ok(RelayServer { inner })
    }

    /// Returns the relay's public key (what clients see in `ServerKey`).
    pub fn public_key(&self) -> NodePublic {
        self.inner.public
    }

    /// Serves DERP on a stream that is already past the HTTP upgrade, until
    /// the connection ends. `preread` holds bytes read past the upgrade.
    pub async fn serve_stream<S>(&self, stream: S, preread: &[u8], remote: Option<SocketAddr>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(stream);
        self.serve_split(rd, wr, preread, remote).await;
    }

    /// Serves a hyper upgrade: plain TCP connections are split without a
    /// lock; anything else (TLS) through a split.
    pub(crate) async fn serve_upgraded(
        &self,
        upgraded: hyper::upgrade::Upgraded,
        remote: Option<SocketAddr>,
    ) {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                let (rd, wr) = parts.io.into_inner().into_split();
                self.serve_split(rd, wr, &parts.read_buf, remote).await;
            }
            Err(upgraded) => {
                match upgraded.downcast::<TokioIo<tokio_rustls::server::TlsStream<TcpStream>>>() {
                    Ok(parts) => {
                        self.serve_stream(parts.io.into_inner(), &parts.read_buf, remote)
                            .await;
                    }
                    Err(upgraded) => {
                        self.serve_stream(TokioIo::new(upgraded), &[], remote).await;
                    }
                }
            }
        }
    }

    async fn serve_split<R, W>(&self, rd: R, wr: W, preread: &[u8], remote: Option<SocketAddr>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let mut buf = BytesMut::with_capacity(64 << 10);
        buf.extend_from_slice(preread);
        let inner = self.inner.clone();
        // Tracked, so shutdown can wait for every connection.
        let _ = self
            .inner
            .tasks
            .track_future(conn::serve(inner, rd, wr, buf, remote))
            .await;
    }

    /// Closes every connection of `key` at once and returns how many there
    /// were. Admission decides whether it may come back: to keep a key out,
    /// make [`Admission::verify`] refuse it first.
    pub fn revoke(&self, key: &NodePublic) -> usize {
        self.inner.revoke(key)
    }

    /// Returns the keys connected now.
    pub fn connected_keys(&self) -> Vec<NodePublic> {
        self.inner.lock_routes().keys()
    }

    /// Returns whether `key` is connected.
    pub fn is_connected(&self, key: &NodePublic) -> bool {
        !matches!(self.inner.lock_routes().lookup(key), Lookup::Absent)
    }

    /// Returns the server's counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Stops taking logins, tells every client (with `Restarting` if given,
    /// so clients come back quickly to the next instance), closes every
    /// connection and waits up to `grace` for them to end.
    pub async fn shutdown(&self, restarting: Option<Restarting>, grace: Duration) {
        self.inner.closing.cancel();
        let conns = self.inner.lock_routes().all_connections();
        for c in conns {
            if let Some(r) = restarting {
                c.control(&Frame::Restarting {
                    reconnect_in: r.reconnect_in,
                    try_for: r.try_for,
                });
            }
            c.close();
        }
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
    }
}

impl Inner {
    fn lock_routes(&self) -> std::sync::MutexGuard<'_, Routes<Arc<Conn>>> {
        self.routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::SeqCst)
    }

    /// Returns whether admission allows `key` now.
    pub async fn admit(&self, key: NodePublic) -> Result<bool, AdmissionError> {
        let keys = [key];
        match tokio::time::timeout(
            self.config.admission_timeout,
            self.config.admission.verify(&keys),
        )
        .await
        {
            Ok(Ok(allowed)) => Ok(allowed.contains(&key)),
            Ok(Err(e)) => {
                self.stats.admission_error();
                Err(e)
            }
            Err(_) => {
                self.stats.admission_error();
                Err(AdmissionError::Unavailable("timed out".into()))
            }
        }
    }

    /// Applies routing changes. Called with the routes lock held, so the
    /// sharded map follows the routing table in the same order.
    fn apply(&self, changes: RouteChanges<Arc<Conn>>) {
        for (key, conn) in changes.active {
            self.active.set(key, conn);
        }
        for (conn, dup) in changes.duplicate {
            conn.is_duplicate.store(dup, Ordering::Relaxed);
        }
        for (conn, peer) in changes.peer_gone {
            let gone = Frame::PeerGone {
                peer,
                reason: PeerGoneReason::Disconnected,
            };
            if conn.control(&gone) {
                self.stats.peer_gone_sent(false);
            }
        }
    }

    pub fn register(&self, conn: &Arc<Conn>) {
        let mut routes = self.lock_routes();
        let ch = routes.register(conn.id, conn.key, conn.clone());
        self.apply(ch);
        self.stats
            .set_clients(routes.connection_count(), routes.key_count());
    }

    pub fn unregister(&self, conn: &Conn) {
        let mut routes = self.lock_routes();
        let ch = routes.unregister(conn.id);
        self.apply(ch);
        self.stats
            .set_clients(routes.connection_count(), routes.key_count());
    }

    pub fn note_activity(&self, conn: &Conn) {
        let mut routes = self.lock_routes();
        let ch = routes.note_activity(conn.id);
        self.apply(ch);
    }

    /// Notes that connection `receiver` got a packet from `src`.
    pub fn note_heard_from(&self, receiver: ConnId, src: NodePublic) {
        self.lock_routes().note_heard_from(receiver, src);
    }

    /// Returns whether `key` is connected but has no active connection.
    pub fn is_duplicated(&self, key: &NodePublic) -> bool {
        matches!(self.lock_routes().lookup(key), Lookup::Inactive(_))
    }

    fn revoke(&self, key: &NodePublic) -> usize {
        self.revocations.fetch_add(1, Ordering::SeqCst);
        let conns = {
            let routes = self.lock_routes();
            let conns = routes.connections_of(key);
            // Stop routing to it now; the logout that follows keeps the
            // tables consistent.
            self.active.set(*key, None);
            conns
        };
        for c in &conns {
            c.control(&Frame::Health {
                problem: b"this node key is no longer admitted to this relay",
            });
            c.close();
        }
        if !conns.is_empty() {
            tracing::info!(node = %key.short(), connections = conns.len(), "relay access revoked");
            self.stats.revoked(conns.len() as u64);
        }
        conns.len()
    }
}

/// Re-asks admission about every connected key each `every`, revoking the
/// refused ones. Ends with the server.
async fn reverify_loop(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let closing = match inner.upgrade() {
            Some(i) => i.closing.clone(),
            None => return,
        };
        tokio::select! {
            _ = tick.tick() => {}
            () = closing.cancelled() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let keys = inner.lock_routes().keys();
        if keys.is_empty() {
            continue;
        }
        let verdict = tokio::time::timeout(
            inner.config.admission_timeout,
            inner.config.admission.verify(&keys),
        )
        .await;
        match verdict {
            Ok(Ok(allowed)) => {
                for k in keys.iter().filter(|k| !allowed.contains(k)) {
                    inner.revoke(k);
                }
            }
            Ok(Err(e)) => {
                inner.stats.admission_error();
                tracing::warn!(error = %e, "relay re-verification failed; connected clients stay");
            }
            Err(_) => {
                inner.stats.admission_error();
                tracing::warn!("relay re-verification timed out; connected clients stay");
            }
        }
    }
}
