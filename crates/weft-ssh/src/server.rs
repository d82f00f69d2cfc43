//! The server: admission, the connection lifecycle, live re-authorization on
//! policy changes, and shutdown.
//!
//! Logging. Tailnet user names and logins are logged at `debug` elsewhere in
//! Weft (STYLE), but session start/end and login accept/refuse lines here are
//! `info`: they are the node's SSH audit trail, which the issue requires
//! ("every session start and end is logged with the tailnet user and node,
//! local user, and outcome"), the same role sshd's auth log plays.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use russh::server::Handle;
use russh::{ChannelId, Disconnect, MethodKind, MethodSet, SshId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tokio_util::task::TaskTracker;

use crate::authz::{Authorizer, CheckHook, Decision, Grant, PeerIdentity, Unidentified};
use crate::config::SshConfig;
use crate::handler::ConnHandler;
use crate::hostkeys::HostKeys;
use crate::limits::{Admission, Refusal};

/// How long a policy-closed or shut-down client gets to go away on its own
/// after the disconnect message, before its socket is closed under it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bound on any single message sent while closing a connection.
const SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a connection ended without a session.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Refused by admission control before any SSH traffic.
    #[error("connection refused: {0}")]
    Refused(#[from] Refusal),
    /// The client did not complete the identification exchange in time.
    #[error("SSH handshake timed out")]
    HandshakeTimeout,
    /// The client did not authenticate in time.
    #[error("SSH authentication timed out")]
    AuthTimeout,
    /// The client spoke something other than valid SSH, or the session failed.
    #[error("SSH protocol error: {0}")]
    Protocol(String),
}

/// The outcome of [`SshServer::update_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PolicyUpdate {
    /// Authenticated connections the new policy still allows.
    pub kept: usize,
    /// Authenticated connections being closed because it no longer does.
    pub closed: usize,
}

/// One authenticated connection, for status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Server-local connection number (also in the log lines).
    pub id: u64,
    /// Who connected.
    pub peer: PeerIdentity,
    /// The login name requested.
    pub ssh_user: String,
    /// The local account sessions run as.
    pub local_user: String,
}

/// Where a connection is in its life, as the auth watchdog sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    PreAuth,
    /// A `check` rule holds the login; the auth timeout is suspended.
    Checking,
    Authenticated,
}

/// Returns the monotonic and wall-clock time. The server is a driver: this is
/// where time enters the crate.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> (Instant, i64) {
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    (Instant::now(), unix_ms)
}

/// A registered, authenticated connection.
pub(crate) struct ConnEntry {
    pub(crate) peer: PeerIdentity,
    /// (client, server) socket addresses, to identify it again on a policy change.
    pub(crate) addrs: (SocketAddr, SocketAddr),
    pub(crate) ssh_user: String,
    pub(crate) local_user: String,
    pub(crate) local_uid: u32,
    pub(crate) handle: Handle,
    pub(crate) closed: CancellationToken,
    pub(crate) grant: Arc<Mutex<Grant>>,
    pub(crate) sessions: Arc<Mutex<BTreeSet<ChannelId>>>,
}

/// The most checks kept running after their clients left (each holds one
/// request to control open for up to `check_timeout`).
const MAX_DETACHED_CHECKS: usize = 64;

/// State shared by the server and every connection.
pub(crate) struct Shared {
    // --- set once in `new` ---
    pub(crate) config: SshConfig,
    russh_config: Arc<russh::server::Config>,
    pub(crate) check_hook: Arc<dyn CheckHook>,
    /// Cancelled by `shutdown`: stop accepting.
    stop_accepting: CancellationToken,
    /// Parent of every connection's `closed` token: cancelling it drops all.
    kill_all: CancellationToken,
    pub(crate) tracker: TaskTracker,
    next_id: AtomicU64,
    /// Room for checks that keep running after their client left
    /// ([`Shared::detach_check`]).
    detached_checks: Arc<tokio::sync::Semaphore>,
    /// `ssh -X` is served (the node's `--ssh-x11` pref).
    pub(crate) x11_forwarding: AtomicBool,
    // --- behind locks (never held across an await) ---
    authorizer: RwLock<Arc<dyn Authorizer>>,
    admission: Mutex<Admission>,
    conns: Mutex<BTreeMap<u64, ConnEntry>>,
}

impl Shared {
    pub(crate) fn authorizer(&self) -> Arc<dyn Authorizer> {
        self.authorizer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn register(&self, id: u64, entry: ConnEntry) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry);
    }

    /// Keeps a check whose URL a client was shown running after the client
    /// left, for at most `check_timeout`, so that control records the
    /// approval the user gives there (a BatchMode client ends at the URL and
    /// connects again). At most [`MAX_DETACHED_CHECKS`] at a time; beyond
    /// that, or when the runtime is gone, the check is dropped (control
    /// forgets it) and the user sees "not found" at the URL.
    pub(crate) fn detach_check(
        &self,
        outcome: std::pin::Pin<Box<dyn std::future::Future<Output = crate::CheckOutcome> + Send>>,
    ) {
        let Ok(permit) = self.detached_checks.clone().try_acquire_owned() else {
            tracing::debug!("too many checks waiting for approval without a client; one dropped");
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (timeout, stop) = (self.config.check_timeout, self.kill_all.clone());
        self.tracker.spawn_on(
            async move {
                let _permit = permit;
                tokio::select! {
                    _ = outcome => {}
                    () = tokio::time::sleep(timeout) => {}
                    () = stop.cancelled() => {}
                }
            },
            &runtime,
        );
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
}

/// The built-in SSH server. Cheap to clone (one shared state).
///
/// weftd creates one per node, binds TCP 22 on each of the node's tailnet
/// addresses and calls [`SshServer::serve`] for each listener; it calls
/// [`SshServer::update_policy`] with a new [`Authorizer`] for every netmap and
/// [`SshServer::shutdown`] when the node goes down.
#[derive(Clone)]
pub struct SshServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SshServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshServer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl SshServer {
    /// Returns a server with `config`, serving `host_keys`, authorizing with
    /// `authorizer` and holding `check` logins through `check_hook`.
    pub fn new(
        config: SshConfig,
        host_keys: &HostKeys,
        authorizer: Arc<dyn Authorizer>,
        check_hook: Arc<dyn CheckHook>,
    ) -> Self {
        let russh_config = russh::server::Config {
            server_id: SshId::Standard(format!("SSH-2.0-{}", config.server_id).into()),
            methods: MethodSet::from(&[MethodKind::None, MethodKind::KeyboardInteractive][..]),
            // Nothing secret is checked, so there is no timing to hide.
            auth_rejection_time: Duration::from_millis(10),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: host_keys.private_keys(),
            max_auth_attempts: 6,
            inactivity_timeout: Some(config.inactivity_timeout),
            keepalive_interval: Some(config.keepalive_interval),
            keepalive_max: 3,
            nodelay: true,
            ..Default::default()
        };
        let admission = Admission::new(
            config.conn_burst,
            config.conn_rate_per_sec,
            config.max_conns_per_source,
            config.max_conns_total,
        );
        SshServer {
            shared: Arc::new(Shared {
                russh_config: Arc::new(russh_config),
                check_hook,
                stop_accepting: CancellationToken::new(),
                kill_all: CancellationToken::new(),
                tracker: TaskTracker::new(),
                next_id: AtomicU64::new(1),
                detached_checks: Arc::new(tokio::sync::Semaphore::new(MAX_DETACHED_CHECKS)),
                x11_forwarding: AtomicBool::new(config.x11_forwarding),
                authorizer: RwLock::new(authorizer),
                admission: Mutex::new(admission),
                conns: Mutex::default(),
                config,
            }),
        }
    }

    /// Accepts connections on `listener` until [`SshServer::shutdown`], each
    /// served in its own task.
    ///
    /// # Errors
    /// Never returns an error today; accept failures are logged and retried.
    pub async fn serve(&self, listener: TcpListener) -> io::Result<()> {
        loop {
            let accepted = tokio::select! {
                r = listener.accept() => r,
                () = self.shared.stop_accepting.cancelled() => return Ok(()),
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh accept failed");
                    // Out of descriptors and the like: back off briefly
                    // instead of spinning on the same error.
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => {}
                        () = self.shared.stop_accepting.cancelled() => return Ok(()),
                    }
                    continue;
                }
            };
            let local = stream.local_addr().ok();
            let this = self.clone();
            self.shared.tracker.spawn(async move {
                if let Err(e) = this.serve_conn(stream, peer, local).await {
                    tracing::debug!(%peer, error = %e, "ssh connection ended");
                }
            });
        }
    }

    /// Serves one already-accepted connection from `peer_addr` to completion
    /// (for listeners weftd runs itself, or userspace-network streams).
    ///
    /// # Errors
    /// Returns why the connection ended without a normal SSH close.
    pub async fn serve_stream<S>(&self, stream: S, peer_addr: SocketAddr) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        self.serve_conn(stream, peer_addr, None).await
    }

    /// Turns X11 forwarding (`ssh -X`/`-Y`) on or off for new requests;
    /// displays already given to sessions stay until those sessions end.
    pub fn set_x11_forwarding(&self, on: bool) {
        self.shared.x11_forwarding.store(on, Ordering::Relaxed);
    }

    /// Installs `authorizer` (a new netmap / policy) and re-evaluates every
    /// authenticated connection: the ones the policy no longer allows (or now
    /// maps to another local user) get a message on each session and are
    /// disconnected; the others pick up the new forwarding permissions.
    pub async fn update_policy(&self, authorizer: Arc<dyn Authorizer>) -> PolicyUpdate {
        *self
            .shared
            .authorizer
            .write()
            .unwrap_or_else(PoisonError::into_inner) = authorizer.clone();
        let (_, unix_ms) = now();
        // Snapshot the logins, evaluate off the runtime (passwd lookups, and
        // the socket owner of connections from the node itself), apply.
        type Snapshot = (u64, (SocketAddr, SocketAddr), String, String, u32);
        let logins: Vec<Snapshot> = {
            let conns = self
                .shared
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            conns
                .iter()
                .map(|(id, e)| {
                    (
                        *id,
                        e.addrs,
                        e.ssh_user.clone(),
                        e.local_user.clone(),
                        e.local_uid,
                    )
                })
                .collect()
        };
        let evaluated = tokio::task::spawn_blocking(move || {
            let uid_of = |name: &str| crate::user::LocalUser::lookup(name).ok().map(|u| u.uid);
            logins
                .into_iter()
                .map(|(id, (peer_addr, local_addr), ssh_user, local_user, local_uid)| {
                    let verdict = match authorizer.identify(peer_addr, local_addr) {
                        Err(Unidentified::UnknownAddress(_)) => {
                            Err("your node is no longer part of this tailnet".to_owned())
                        }
                        Err(why) => Err(why.to_string()),
                        Ok(peer) => match authorizer.authorize(&peer, &ssh_user, unix_ms, &uid_of) {
                            Decision::Reject { message } => Err(message),
                            Decision::Accept(g) | Decision::Check { grant: g, .. }
                                if g.local_user != local_user
                                    || (g.refuse_root && local_uid == 0)
                                    || peer.may_log_in_as(&ssh_user, local_uid).is_err() =>
                            {
                                Err(format!(
                                    "tailnet policy no longer permits you to SSH to this node as {ssh_user}"
                                ))
                            }
                            Decision::Accept(g) | Decision::Check { grant: g, .. } => Ok(g),
                        },
                    };
                    (id, verdict)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        let mut result = PolicyUpdate::default();
        let mut to_close = Vec::new();
        {
            let mut conns = self
                .shared
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (id, verdict) in evaluated {
                match verdict {
                    Ok(g) => {
                        if let Some(entry) = conns.get(&id) {
                            *entry.grant.lock().unwrap_or_else(PoisonError::into_inner) = g;
                            result.kept += 1;
                        }
                    }
                    Err(message) => {
                        if let Some(entry) = conns.remove(&id) {
                            to_close.push((id, entry, message));
                            result.closed += 1;
                        }
                    }
                }
            }
        }
        for (id, entry, message) in to_close {
            // Audit line (info on purpose; see module docs).
            tracing::info!(
                conn = id,
                peer_user = %entry.peer.principal(),
                peer_node = %entry.peer.node_name,
                client_uid = ?entry.peer.client_uid(),
                local_user = %entry.local_user,
                reason = %message,
                "ssh connection closed by policy"
            );
            self.shared.tracker.spawn(close_connection(entry, message));
        }
        result
    }

    /// Returns the authenticated connections.
    pub fn connections(&self) -> Vec<ConnectionInfo> {
        let conns = self
            .shared
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        conns
            .iter()
            .map(|(id, e)| ConnectionInfo {
                id: *id,
                peer: e.peer.clone(),
                ssh_user: e.ssh_user.clone(),
                local_user: e.local_user.clone(),
            })
            .collect()
    }

    /// Stops accepting, tells every client the node is shutting down, waits up
    /// to `grace` for connections and sessions to end, then closes the rest.
    pub async fn shutdown(&self, grace: Duration) {
        self.shared.stop_accepting.cancel();
        let entries: Vec<ConnEntry> = {
            let mut conns = self
                .shared
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::take(&mut *conns).into_values().collect()
        };
        for entry in entries {
            self.shared.tracker.spawn(close_connection(
                entry,
                "the node is shutting down".to_owned(),
            ));
        }
        self.shared.tracker.close();
        if tokio::time::timeout(grace, self.shared.tracker.wait())
            .await
            .is_err()
        {
            self.shared.kill_all.cancel();
            let _ = tokio::time::timeout(grace, self.shared.tracker.wait()).await;
        }
        self.shared.kill_all.cancel();
    }

    async fn serve_conn<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        local: Option<SocketAddr>,
    ) -> Result<(), ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let shared = &self.shared;
        let ip = peer.ip();
        let admitted = shared
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_admit(ip, now().0);
        if let Err(refusal) = admitted {
            tracing::debug!(%peer, %refusal, "ssh connection not admitted");
            return Err(refusal.into());
        }
        let _admitted = AdmissionGuard {
            shared: shared.clone(),
            ip,
        };
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let closed = shared.kill_all.child_token();
        let (phase_tx, phase_rx) = watch::channel(Phase::PreAuth);
        let local = local.unwrap_or_else(|| {
            let ip = shared
                .config
                .tailnet_addrs
                .first()
                .copied()
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
            SocketAddr::new(ip, 22)
        });
        // Who is it? May ask the kernel who owns a local socket: off the runtime.
        let authz = shared.authorizer();
        let identity = tokio::task::spawn_blocking(move || authz.identify(peer, local))
            .await
            .unwrap_or_else(|_| {
                Err(Unidentified::LocalOwnerUnknown {
                    reason: "the lookup failed".to_owned(),
                })
            });
        if let Ok(who) = &identity
            && let Some(uid) = who.client_uid()
        {
            // Audit line (info on purpose; see module docs).
            tracing::info!(
                conn = id,
                client_uid = uid,
                "ssh connection from a program on this node"
            );
        }
        let handler = ConnHandler::new(
            shared.clone(),
            id,
            (peer, local),
            identity,
            phase_tx,
            closed.clone(),
        );
        let stream = Killable::new(stream, closed.clone());
        let start = russh::server::run_stream(shared.russh_config.clone(), stream, handler);
        let mut session = match tokio::time::timeout(shared.config.handshake_timeout, start).await {
            Err(_) => {
                closed.cancel();
                return Err(ServeError::HandshakeTimeout);
            }
            Ok(Err(e)) => {
                closed.cancel();
                return Err(ServeError::Protocol(e.to_string()));
            }
            Ok(Ok(s)) => s,
        };
        let mut finished = false;
        let outcome = tokio::select! {
            r = &mut session => {
                finished = true;
                r.map_err(|e| ServeError::Protocol(e.to_string()))
            }
            () = auth_watchdog(phase_rx, shared.config.auth_timeout) => Err(ServeError::AuthTimeout),
            () = closed.cancelled() => Ok(()),
        };
        // A finished session must not be polled again.
        if !finished {
            closed.cancel();
            // The killed stream makes the session task fail promptly.
            let _ = tokio::time::timeout(CLOSE_GRACE, &mut session).await;
        }
        closed.cancel();
        outcome
    }
}

/// Releases an admission slot when the connection ends.
struct AdmissionGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        self.shared
            .admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.ip);
    }
}

/// Tells the client why, then closes it: the reason on each session's stderr,
/// the sessions closed (so the client prints what it has and exits), then a
/// disconnect carrying the reason for whatever is left (forwards-only
/// clients), and finally the socket if the client lingers.
async fn close_connection(entry: ConnEntry, message: String) {
    let text = format!("\r\nweft-ssh: {message}; closing this session.\r\n");
    let channels: Vec<ChannelId> = entry
        .sessions
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .copied()
        .collect();
    let h = &entry.handle;
    for ch in &channels {
        let _ = tokio::time::timeout(
            SEND_TIMEOUT,
            h.extended_data(*ch, 1, text.clone().into_bytes()),
        )
        .await;
        let _ = tokio::time::timeout(SEND_TIMEOUT, h.eof(*ch)).await;
        let _ = tokio::time::timeout(SEND_TIMEOUT, h.close(*ch)).await;
    }
    if !channels.is_empty() {
        // A client whose sessions are all closed exits on its own.
        let _ = tokio::time::timeout(CLOSE_GRACE, entry.closed.cancelled()).await;
    }
    if !entry.closed.is_cancelled() {
        let _ = tokio::time::timeout(
            SEND_TIMEOUT,
            h.disconnect(Disconnect::ByApplication, message, String::new()),
        )
        .await;
        let _ = tokio::time::timeout(CLOSE_GRACE, entry.closed.cancelled()).await;
    }
    entry.closed.cancel();
}

/// Resolves when a connection has spent `limit` unauthenticated, not counting
/// time a `check` rule held it. Never resolves once authenticated.
async fn auth_watchdog(mut rx: watch::Receiver<Phase>, limit: Duration) {
    let mut deadline = tokio::time::Instant::now() + limit;
    loop {
        let phase = *rx.borrow_and_update();
        match phase {
            Phase::Authenticated => return std::future::pending().await,
            Phase::Checking => {
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
                // Leave time to show the outcome and finish authenticating.
                deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(10));
                continue;
            }
            Phase::PreAuth => {}
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => {
                if *rx.borrow() == Phase::PreAuth {
                    return;
                }
            }
            r = rx.changed() => {
                if r.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

/// A byte stream that fails every operation once its token is cancelled, so
/// a connection can be torn down from outside the russh session task (which
/// owns the stream and cannot be aborted).
struct Killable<S> {
    inner: S,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    dead: bool,
}

impl<S> Killable<S> {
    fn new(inner: S, token: CancellationToken) -> Self {
        Killable {
            inner,
            kill: Box::pin(token.cancelled_owned()),
            dead: false,
        }
    }

    fn killed(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.dead && self.kill.as_mut().poll(cx).is_ready() {
            self.dead = true;
        }
        self.dead
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the server",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed(cx) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
