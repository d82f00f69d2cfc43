//! The relay client weftd drives: one DERP server, kept connected.
//!
//! [`RelayClient::start`] spawns a task that connects (TCP, or TLS with the
//! usual roots plus an optional CA file), upgrades `GET /derp`, logs in with
//! the node key ([`crate::proto::ClientCore`]) and reconnects with backoff
//! whenever the connection dies (honouring the server's `Restarting`
//! advice). The caller:
//! * sends with [`RelayClient::send`] — synchronous, never blocks: the frame
//!   is encoded straight into a bounded outgoing buffer (no allocation per
//!   packet) that a writer task flushes in batches; when the buffer is full
//!   the packet is dropped and counted (the same [`crate::proto::FrameBuffer`]
//!   as a client's queue on the server). Packets sent while (re)connecting
//!   wait in that buffer and go out right after the login;
//! * receives [`Event`]s from the channel `start` returns: packets (the
//!   source node key and a `Bytes` slice of the read buffer, no copy),
//!   `PeerGone`, connection changes, health notices. The channel is bounded:
//!   a consumer that falls behind slows the reader, and TCP slows the relay;
//! * measures latency with [`RelayClient::ping`] (DERP `Ping`/`Pong`) and
//!   marks its home relay with [`RelayClient::set_preferred`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use weft_types::{NodePrivate, NodePublic};

use crate::clock::now;
use crate::net::{self, Stream, Target};
use crate::proto::client::{ClientCore, ClientEvent, ClientOptions, Received};
use crate::proto::frame::{self, Frame, PeerGoneReason, packet_frame_len};
use crate::proto::queue::{FrameBuffer, Push};
use crate::proto::{DERP_PATH, FRAME_HEADER_LEN, MAX_FRAME_FROM_SERVER, MAX_PACKET_SIZE};

/// A relay server to connect to (one node of a relay region).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayNode {
    /// Host name: for DNS, the `Host` header and the TLS server name.
    pub host_name: String,
    /// TCP port (443 for TLS, 80 for plain HTTP, unless configured).
    pub port: u16,
    /// Whether to speak TLS (DERP servers do; plain HTTP is for tests and
    /// relays behind a TLS-terminating proxy on a trusted network).
    pub tls: bool,
    /// Addresses to dial instead of resolving `host_name` (a relay map's
    /// `IPv4`/`IPv6` fields); empty: resolve.
    pub addrs: Vec<SocketAddr>,
}

impl RelayNode {
    /// Parses `https://HOST[:PORT]` or `http://HOST[:PORT]` (a `/derp` path
    /// may be given; it is the only one).
    ///
    /// # Errors
    /// [`ClientConfigError::BadUrl`].
    pub fn from_url(url: &str) -> Result<Self, ClientConfigError> {
        let bad = |why: &str| ClientConfigError::BadUrl(format!("{url}: {why}"));
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|_| bad("expected https://HOST[:PORT]"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(bad("the scheme must be https or http")),
        };
        if !matches!(uri.path(), "" | "/" | DERP_PATH) {
            return Err(bad("the only path a relay has is /derp"));
        }
        let host = uri.host().ok_or_else(|| bad("missing host"))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(RelayNode {
            host_name: host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            tls,
            addrs: Vec::new(),
        })
    }
}

/// How a [`RelayClient`] runs.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The node's key: the relay address of this client.
    pub node_key: NodePrivate,
    /// The relay.
    pub relay: RelayNode,
    /// A PEM file of CA certificates trusted in addition to the Mozilla
    /// roots (relays with private certificates).
    pub ca_file: Option<PathBuf>,
    /// Protocol options (preferred, keep-alive timing, ...).
    pub options: ClientOptions,
    /// Bytes of frames waiting to be written before new packets are
    /// dropped.
    pub send_buffer: usize,
    /// Events waiting for the consumer before the reader waits.
    pub event_queue: usize,
    /// Time for TCP, TLS and the upgrade.
    pub connect_timeout: Duration,
    /// Shortest and longest delay between reconnects.
    pub backoff: (Duration, Duration),
}

impl ClientConfig {
    /// Returns the defaults for `node_key` and `relay`: 1 MiB send buffer,
    /// 4,096 events, 10 s to connect, reconnects after 0.25 s growing to
    /// 15 s.
    pub fn new(node_key: NodePrivate, relay: RelayNode) -> Self {
        ClientConfig {
            node_key,
            relay,
            ca_file: None,
            options: ClientOptions::default(),
            send_buffer: 1 << 20,
            event_queue: 4096,
            connect_timeout: Duration::from_secs(10),
            backoff: (Duration::from_millis(250), Duration::from_secs(15)),
        }
    }
}

/// Why a client could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ClientConfigError {
    /// The relay URL is not one.
    #[error("bad relay URL {0}")]
    BadUrl(String),
    /// The TLS configuration (CA file) is unusable.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// [`RelayClient::start`] was called outside a Tokio runtime.
    #[error("the relay client must be started inside a Tokio runtime")]
    NoRuntime,
}

/// Why [`RelayClient::send`] did not queue a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The outgoing buffer is full (the relay or the path is slower than the
    /// sender); the packet was dropped and counted.
    #[error("relay send buffer full; packet dropped")]
    BufferFull,
    /// Larger than DERP's 64 KiB.
    #[error("packet larger than 64 KiB")]
    TooLarge,
    /// The client was closed.
    #[error("relay client closed")]
    Closed,
}

/// Why [`RelayClient::ping`] has no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PingError {
    /// Not connected to the relay.
    #[error("not connected to the relay")]
    NotConnected,
    /// No pong in time.
    #[error("no pong from the relay in time")]
    Timeout,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A packet from `src` through the relay.
    Packet {
        /// The sender's node key.
        src: NodePublic,
        /// The packet.
        data: Bytes,
    },
    /// Logged in (again).
    Connected {
        /// The relay's key.
        server_key: NodePublic,
    },
    /// The connection ended; the client reconnects after `retry_in`.
    Disconnected {
        /// Why, for people.
        error: String,
        /// When the next attempt is made.
        retry_in: Duration,
    },
    /// `peer` left the relay, or is not on it (a packet to it was dropped).
    PeerGone {
        /// The peer.
        peer: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// The relay reports a problem with this connection (`None`: healthy).
    Health {
        /// The problem.
        problem: Option<String>,
    },
}

/// Counters of a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Packets queued for sending.
    pub packets_sent: u64,
    /// Their bytes.
    pub bytes_sent: u64,
    /// Packets dropped because the send buffer was full.
    pub dropped_buffer_full: u64,
    /// Packets dropped because the connection broke with them buffered.
    pub dropped_disconnected: u64,
    /// Packets received.
    pub packets_received: u64,
    /// Logins completed.
    pub connects: u64,
}

#[derive(Default)]
struct Counters {
    packets_sent: AtomicU64,
    bytes_sent: AtomicU64,
    dropped_buffer_full: AtomicU64,
    dropped_disconnected: AtomicU64,
    packets_received: AtomicU64,
    connects: AtomicU64,
}

/// The state the caller's handle and the connection task share.
struct Shared {
    // --- set once
    key: NodePublic,
    send_limit: usize,
    stop: CancellationToken,
    // --- behind their own locks, each held briefly
    /// Encoded `SendPacket` frames waiting for the writer.
    out: Mutex<FrameBuffer>,
    /// The current connection's core (`None` between connections).
    core: Mutex<Option<ClientCore>>,
    /// Pings waiting for their pong.
    pings: Mutex<BTreeMap<[u8; 8], oneshot::Sender<Duration>>>,
    server_key: Mutex<Option<NodePublic>>,
    // --- atomics
    /// Wakes the writer: data in `out`, or control frames in the core.
    wake: Notify,
    /// Wakes senders waiting in [`RelayClient::writable`]: the writer took
    /// the buffer.
    drained: Notify,
    connected: AtomicBool,
    preferred: AtomicBool,
    counters: Counters,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A handle on a running relay client. Dropping it stops the client.
pub struct RelayClient {
    shared: Arc<Shared>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("key", &self.shared.key)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl RelayClient {
    /// Starts the client and returns its handle and its event channel.
    ///
    /// # Errors
    /// [`ClientConfigError`] for an unusable CA file, or outside a runtime.
    pub fn start(
        config: ClientConfig,
    ) -> Result<(RelayClient, mpsc::Receiver<Event>), ClientConfigError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| ClientConfigError::NoRuntime)?;
        let tls = if config.relay.tls {
            Some(crate::tls::client_config(config.ca_file.as_deref())?)
        } else {
            None
        };
        let target = Target {
            host: config.relay.host_name.clone(),
            port: config.relay.port,
            addrs: config.relay.addrs.clone(),
            tls,
        };
        let send_limit = config.send_buffer.max(packet_frame_len(MAX_PACKET_SIZE));
        let shared = Arc::new(Shared {
            key: config.node_key.public(),
            send_limit,
            stop: CancellationToken::new(),
            out: Mutex::new(FrameBuffer::new(send_limit)),
            core: Mutex::new(None),
            pings: Mutex::new(BTreeMap::new()),
            server_key: Mutex::new(None),
            wake: Notify::new(),
            drained: Notify::new(),
            connected: AtomicBool::new(false),
            preferred: AtomicBool::new(config.options.preferred),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(config.event_queue.max(1));
        let task = handle.spawn(run(shared.clone(), config, target, tx));
        Ok((
            RelayClient {
                shared,
                task: Some(task),
            },
            rx,
        ))
    }

    /// Returns our node key.
    pub fn public_key(&self) -> NodePublic {
        self.shared.key
    }

    /// Queues `packet` for `dst`. Never blocks; while (re)connecting the
    /// packet waits in the buffer.
    ///
    /// # Errors
    /// [`SendError::BufferFull`] (dropped, counted), [`SendError::TooLarge`],
    /// [`SendError::Closed`].
    pub fn send(&self, dst: &NodePublic, packet: &[u8]) -> Result<(), SendError> {
        if self.shared.stop.is_cancelled() {
            return Err(SendError::Closed);
        }
        if packet.len() > MAX_PACKET_SIZE {
            return Err(SendError::TooLarge);
        }
        let c = &self.shared.counters;
        let pushed = lock(&self.shared.out).push_packet(&Frame::SendPacket { dst: *dst, packet });
        if let Push::Dropped { .. } = pushed {
            c.dropped_buffer_full.fetch_add(1, Ordering::Relaxed);
            return Err(SendError::BufferFull);
        }
        c.packets_sent.fetch_add(1, Ordering::Relaxed);
        c.bytes_sent
            .fetch_add(packet.len() as u64, Ordering::Relaxed);
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Waits until the send buffer is less than half full: for senders that
    /// would rather wait than drop (bulk transfers, benchmarks). WireGuard
    /// traffic should just [`RelayClient::send`] and let drops happen.
    pub async fn writable(&self) {
        loop {
            let drained = self.shared.drained.notified();
            if lock(&self.shared.out).len() < self.shared.send_limit / 2
                || self.shared.stop.is_cancelled()
            {
                return;
            }
            drained.await;
        }
    }

    /// Sets whether this relay is our home relay (sent at once if
    /// connected, else at the next login).
    pub fn set_preferred(&self, preferred: bool) {
        self.shared.preferred.store(preferred, Ordering::Relaxed);
        if let Some(core) = lock(&self.shared.core).as_mut() {
            core.set_preferred(preferred);
        }
        self.shared.wake.notify_one();
    }

    /// Measures the round trip to the relay (DERP `Ping`/`Pong`).
    ///
    /// # Errors
    /// [`PingError::NotConnected`], [`PingError::Timeout`].
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, PingError> {
        let (tx, rx) = oneshot::channel();
        let data = {
            let mut core = lock(&self.shared.core);
            let data = core
                .as_mut()
                .and_then(|c| c.ping(now()))
                .ok_or(PingError::NotConnected)?;
            lock(&self.shared.pings).insert(data, tx);
            data
        };
        self.shared.wake.notify_one();
        let r = tokio::time::timeout(timeout, rx).await;
        lock(&self.shared.pings).remove(&data);
        match r {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(PingError::NotConnected),
            Err(_) => Err(PingError::Timeout),
        }
    }

    /// Returns whether the client is logged in to the relay now.
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// Returns the relay's key once known.
    pub fn server_key(&self) -> Option<NodePublic> {
        *lock(&self.shared.server_key)
    }

    /// Returns the client's counters.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClientStats {
            packets_sent: l(&c.packets_sent),
            bytes_sent: l(&c.bytes_sent),
            dropped_buffer_full: l(&c.dropped_buffer_full),
            dropped_disconnected: l(&c.dropped_disconnected),
            packets_received: l(&c.packets_received),
            connects: l(&c.connects),
        }
    }

    /// Stops the client and waits for its task.
    pub async fn close(mut self) {
        self.shared.stop.cancel();
        self.shared.wake.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.shared.stop.cancel();
        self.shared.wake.notify_one();
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

// ------------------------------------------------------------------ the task

/// Connects, serves, reconnects — until stopped.
async fn run(
    shared: Arc<Shared>,
    config: ClientConfig,
    target: Target,
    events: mpsc::Sender<Event>,
) {
    let mut backoff = weft_client::Backoff::with_bounds(
        weft_types::entropy::u64(),
        config.backoff.0,
        config.backoff.1,
    );
    // After a `Restarting` notice: reconnect quickly until this instant.
    let mut fast_until: Option<tokio::time::Instant> = None;
    let mut first_delay: Option<Duration> = None;
    loop {
        if shared.stop.is_cancelled() {
            return;
        }
        let outcome = tokio::select! {
            r = connect_and_serve(&shared, &config, &target, &events, &mut backoff) => r,
            () = shared.stop.cancelled() => return,
        };
        set_disconnected(&shared);
        if shared.stop.is_cancelled() {
            return;
        }
        let (error, restarting) = match outcome {
            Ok(restarting) => ("the relay closed the connection".to_owned(), restarting),
            Err(e) => (e.message, e.restarting),
        };
        if let Some((reconnect_in, try_for)) = restarting {
            first_delay = Some(reconnect_in);
            fast_until = Some(tokio::time::Instant::now() + reconnect_in + try_for);
        }
        let delay = match first_delay.take() {
            Some(d) => d,
            None if fast_until.is_some_and(|t| tokio::time::Instant::now() < t) => config.backoff.0,
            None => backoff.next_delay(),
        };
        tracing::debug!(error = %error, retry_in_ms = delay.as_millis() as u64, "relay connection down");
        tokio::select! {
            _ = events.send(Event::Disconnected { error, retry_in: delay }) => {}
            () = shared.stop.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.stop.cancelled() => return,
        }
    }
}

/// Why a connection ended, and the server's restart advice if it gave one.
struct SessionEnd {
    message: String,
    restarting: Option<(Duration, Duration)>,
}

impl<E: std::fmt::Display> From<E> for SessionEnd {
    fn from(e: E) -> Self {
        SessionEnd {
            message: e.to_string(),
            restarting: None,
        }
    }
}

fn set_disconnected(shared: &Shared) {
    shared.connected.store(false, Ordering::Relaxed);
    *lock(&shared.core) = None;
    // Pending pings will not be answered.
    lock(&shared.pings).clear();
}

async fn connect_and_serve(
    shared: &Arc<Shared>,
    config: &ClientConfig,
    target: &Target,
    events: &mpsc::Sender<Event>,
    backoff: &mut weft_client::Backoff,
) -> Result<Option<(Duration, Duration)>, SessionEnd> {
    let stream = net::connect(target, config.connect_timeout)
        .await
        .map_err(|e| format!("connecting to {}:{}: {e}", target.host, target.port))?;
    let (stream, preread) = tokio::time::timeout(config.connect_timeout, upgrade(stream, target))
        .await
        .map_err(|_| "the relay did not answer the upgrade in time".to_owned())??;
    let mut opts = config.options.clone();
    opts.preferred = shared.preferred.load(Ordering::Relaxed);
    *lock(&shared.core) = Some(ClientCore::new(
        config.node_key.clone(),
        opts,
        weft_types::entropy::seed(),
        now(),
    ));
    let session = Session {
        shared: shared.clone(),
        events: events.clone(),
        end: shared.stop.child_token(),
    };
    let r = match stream {
        Stream::Plain(tcp) => {
            let (rd, wr) = tcp.into_split();
            session.run(rd, wr, preread, backoff).await
        }
        Stream::Tls(tls) => {
            let (rd, wr) = tokio::io::split(*tls);
            session.run(rd, wr, preread, backoff).await
        }
    };
    // Frames still buffered were encoded for the old connection; the next
    // one starts from what callers send next.
    let lost = lock(&shared.out).clear();
    shared
        .counters
        .dropped_disconnected
        .fetch_add(lost, Ordering::Relaxed);
    r
}

/// `GET /derp` with `Upgrade: DERP`; returns the stream and any bytes read
/// past the `101`.
async fn upgrade(stream: Stream, target: &Target) -> Result<(Stream, Bytes), SessionEnd> {
    let req = http::Request::get(DERP_PATH)
        .header(http::header::HOST, target.host_header())
        .header(http::header::UPGRADE, "DERP")
        .header(http::header::CONNECTION, "Upgrade")
        .header(
            http::header::USER_AGENT,
            concat!("weft-relay/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    let conn = tokio::spawn(conn.with_upgrades());
    let resp = sender.send_request(req).await?;
    if resp.status() != http::StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let body = Limited::new(resp.into_body(), 4096)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        conn.abort();
        return Err(format!(
            "the relay refused the upgrade: HTTP {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )
        .into());
    }
    let upgraded = hyper::upgrade::on(resp).await?;
    let parts = upgraded
        .downcast::<TokioIo<Stream>>()
        .map_err(|_| "the upgraded connection is not ours".to_owned())?;
    Ok((parts.io.into_inner(), parts.read_buf))
}

/// One logged-in (or logging-in) connection.
struct Session {
    shared: Arc<Shared>,
    events: mpsc::Sender<Event>,
    /// Ends both halves.
    end: CancellationToken,
}

impl Session {
    async fn run<R, W>(
        self,
        rd: R,
        wr: W,
        preread: Bytes,
        backoff: &mut weft_client::Backoff,
    ) -> Result<Option<(Duration, Duration)>, SessionEnd>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let writer = tokio::spawn(write_loop(self.shared.clone(), wr, self.end.clone()));
        let r = self.read_loop(rd, preread, backoff).await;
        self.end.cancel();
        let w = writer.await.unwrap_or_else(|e| Err(e.to_string()));
        match (r, w) {
            (Err(e), _) => Err(e),
            (Ok(restarting), Err(e)) => Err(SessionEnd {
                message: e,
                restarting,
            }),
            (Ok(restarting), Ok(())) => Ok(restarting),
        }
    }

    async fn read_loop<R: AsyncRead + Unpin>(
        &self,
        mut rd: R,
        preread: Bytes,
        backoff: &mut weft_client::Backoff,
    ) -> Result<Option<(Duration, Duration)>, SessionEnd> {
        let mut buf = BytesMut::with_capacity(256 << 10);
        buf.extend_from_slice(&preread);
        let mut packets: Vec<Event> = Vec::with_capacity(256);
        let mut notices: Vec<ClientEvent> = Vec::new();
        let mut restarting = None;
        loop {
            self.handle_frames(&mut buf, &mut packets, &mut notices)
                .map_err(|e| SessionEnd {
                    message: e,
                    restarting,
                })?;
            let n = packets.len() as u64;
            self.shared
                .counters
                .packets_received
                .fetch_add(n, Ordering::Relaxed);
            for ev in notices.drain(..) {
                match ev {
                    ClientEvent::Connected { server_key, .. } => {
                        backoff.reset();
                        *lock(&self.shared.server_key) = Some(server_key);
                        self.shared.connected.store(true, Ordering::Relaxed);
                        self.shared
                            .counters
                            .connects
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(relay = %server_key.short(), "relay connected");
                        // Packets buffered while connecting can go now.
                        self.shared.wake.notify_one();
                        self.emit(Event::Connected { server_key }).await;
                    }
                    ClientEvent::Pong { data, rtt } => {
                        if let Some(tx) = lock(&self.shared.pings).remove(&data) {
                            let _ = tx.send(rtt);
                        }
                    }
                    ClientEvent::PeerGone { peer, reason } => {
                        self.emit(Event::PeerGone { peer, reason }).await;
                    }
                    ClientEvent::Health { problem } => {
                        tracing::debug!(problem = ?problem, "relay health notice");
                        self.emit(Event::Health { problem }).await;
                    }
                    ClientEvent::Restarting {
                        reconnect_in,
                        try_for,
                    } => restarting = Some((reconnect_in, try_for)),
                    ClientEvent::PeerPresent { .. } => {}
                }
            }
            for ev in packets.drain(..) {
                self.emit(ev).await;
            }
            if buf.capacity() - buf.len() < 64 << 10 {
                buf.reserve(256 << 10);
            }
            tokio::select! {
                r = rd.read_buf(&mut buf) => {
                    match r {
                        Ok(0) => return Ok(restarting),
                        Ok(_) => {}
                        Err(e) => return Err(SessionEnd { message: format!("reading from the relay: {e}"), restarting }),
                    }
                }
                () = self.end.cancelled() => return Ok(restarting),
            }
        }
    }

    /// Handles every whole frame in `buf` under one lock of the core.
    fn handle_frames(
        &self,
        buf: &mut BytesMut,
        packets: &mut Vec<Event>,
        notices: &mut Vec<ClientEvent>,
    ) -> Result<(), String> {
        let mut guard = lock(&self.shared.core);
        let Some(core) = guard.as_mut() else {
            return Err("connection closed".into());
        };
        let now = now();
        let mut wake = false;
        loop {
            let h = match frame::peek_header(buf, MAX_FRAME_FROM_SERVER) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => return Err(format!("bad frame from the relay: {e}")),
            };
            let bytes = buf.split_to(h.total_len()).freeze();
            let f = Frame::parse(h.frame_type, &bytes[FRAME_HEADER_LEN..])
                .map_err(|e| format!("bad frame from the relay: {e}"))?;
            match core.handle_frame(f, now) {
                Ok(Some(Received::Packet { src, packet })) => packets.push(Event::Packet {
                    src,
                    data: bytes.slice_ref(packet),
                }),
                Ok(None) => {}
                Err(e) => return Err(e.to_string()),
            }
            while let Some(ev) = core.poll_event() {
                notices.push(ev);
            }
            wake = true;
        }
        drop(guard);
        if wake {
            // Control frames (ClientInfo, Pong) may be waiting.
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    async fn emit(&self, ev: Event) {
        tokio::select! {
            r = self.events.send(ev) => {
                // A receiver that is gone does not want events; keep serving
                // sends.
                let _ = r;
            }
            () = self.end.cancelled() => {}
        }
    }
}

/// Writes the core's control frames, then (once logged in) the buffered
/// packets; runs the core's timers.
async fn write_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    mut wr: W,
    end: CancellationToken,
) -> Result<(), String> {
    let mut spare = BytesMut::with_capacity(64 << 10);
    let mut control: Vec<u8> = Vec::new();
    loop {
        let (deadline, connected) = {
            let mut guard = lock(&shared.core);
            let Some(core) = guard.as_mut() else {
                return Ok(());
            };
            if let Err(e) = core.handle_timeout(now()) {
                return Err(e.to_string());
            }
            while let Some(f) = core.poll_transmit() {
                control.extend_from_slice(&f);
            }
            (core.poll_timeout(), core.is_connected())
        };
        let mut packets = 0;
        if connected {
            packets = lock(&shared.out).take_into(&mut spare).packets;
            shared.drained.notify_waiters();
        }
        if !control.is_empty() || !spare.is_empty() {
            let r = async {
                if !control.is_empty() {
                    wr.write_all(&control).await?;
                }
                if !spare.is_empty() {
                    wr.write_all(&spare).await?;
                }
                wr.flush().await
            };
            let r = tokio::select! {
                r = r => r,
                () = end.cancelled() => return Ok(()),
            };
            control.clear();
            spare.clear();
            if let Err(e) = r {
                shared
                    .counters
                    .dropped_disconnected
                    .fetch_add(packets, Ordering::Relaxed);
                return Err(format!("writing to the relay: {e}"));
            }
            continue;
        }
        let sleep = async {
            match deadline {
                Some((at, _)) => {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = shared.wake.notified() => {}
            () = sleep => {}
            () = end.cancelled() => return Ok(()),
        }
    }
}
