//! One client connection on the server: the login, then two tasks — the
//! reader (this connection's frames: packets routed straight into their
//! destination's queue) and the writer (this connection's queue, written in
//! batches).
//!
//! Buffers: the reader reads into one `BytesMut`; a packet is a `Bytes`
//! slice of it (no copy, no allocation per packet; a new chunk is allocated
//! only when all slices of the old one are still queued somewhere). The
//! writer encodes a batch into one reused buffer and writes it with one
//! call.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use weft_types::NodePublic;

use super::Inner;
use crate::clock::now;
use crate::metrics::{DropReason, RefuseReason};
use crate::proto::frame::{self, Frame, FrameType, PeerGoneReason};
use crate::proto::login::ClientInfo;
use crate::proto::queue::{BoundedQueue, Push};
use crate::proto::routes::ConnId;
use crate::proto::server::{Action, ServerLogin, classify};
use crate::proto::{FRAME_HEADER_LEN, KEY_LEN, MAX_FRAME_FROM_CLIENT, MAX_PACKET_SIZE};

/// The largest frame an admitted client may send: a `SendPacket` of the
/// largest packet.
const MAX_FRAME_AFTER_LOGIN: usize = KEY_LEN + MAX_PACKET_SIZE;
/// Bytes the reader asks the socket for at least per read.
const READ_CHUNK: usize = 256 << 10;
/// The writer flushes its buffer once it holds this much.
const WRITE_CHUNK: usize = 256 << 10;
/// At most this many control frames wait per connection; more are dropped.
const MAX_CONTROL: usize = 64;
/// How long a closing connection may take to write its last control frames.
const CLOSE_GRACE: Duration = Duration::from_millis(250);
/// `PeerGone(NotHere)` answers per connection: a burst of 3, then 1/s.
const NOT_HERE_BURST: f64 = 3.0;

/// A frame the writer sends that is not a packet.
#[derive(Debug)]
pub(crate) enum Control {
    Pong([u8; 8]),
    PeerGone(NodePublic, PeerGoneReason),
    Health(String),
    Restarting {
        reconnect_in: Duration,
        try_for: Duration,
    },
}

/// A packet queued for this connection.
pub(crate) struct Packet {
    src: NodePublic,
    data: Bytes,
}

struct Queues {
    packets: BoundedQueue<Packet>,
    control: VecDeque<Control>,
    closed: bool,
}

/// What happened to a packet handed to [`Conn::enqueue`].
pub(crate) enum Enqueued {
    Queued,
    /// Queued, but the oldest packet was dropped; `true` if this started an
    /// overflow.
    DroppedOldest(bool),
    /// The connection is closing.
    Closed,
}

/// A logged-in connection, shared by its tasks, the routing table and other
/// connections' readers.
pub(crate) struct Conn {
    // --- set once at login
    pub id: ConnId,
    pub key: NodePublic,
    pub remote: Option<SocketAddr>,
    // --- shared, behind their own synchronisation
    queues: Mutex<Queues>,
    wake: Notify,
    closed: CancellationToken,
    /// One of several connections of its key (then every frame it sends
    /// goes through the routing table's lock, to make it active).
    pub is_duplicate: AtomicBool,
    pub preferred: AtomicBool,
}

impl Conn {
    fn new(id: ConnId, key: NodePublic, remote: Option<SocketAddr>, depth: usize) -> Self {
        Conn {
            id,
            key,
            remote,
            queues: Mutex::new(Queues {
                packets: BoundedQueue::new(depth),
                control: VecDeque::new(),
                closed: false,
            }),
            wake: Notify::new(),
            closed: CancellationToken::new(),
            is_duplicate: AtomicBool::new(false),
            preferred: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a packet from `src`.
    pub fn enqueue(&self, src: NodePublic, data: Bytes) -> Enqueued {
        let mut q = self.lock();
        if q.closed {
            return Enqueued::Closed;
        }
        let before = q.packets.overflows();
        let r = q.packets.push(Packet { src, data });
        let started = q.packets.overflows() != before;
        drop(q);
        self.wake.notify_one();
        match r {
            Push::Queued => Enqueued::Queued,
            Push::DroppedOldest(_) => Enqueued::DroppedOldest(started),
        }
    }

    /// Queues a control frame (dropped if too many wait).
    pub fn control(&self, c: Control) {
        let mut q = self.lock();
        if q.closed || q.control.len() >= MAX_CONTROL {
            return;
        }
        q.control.push_back(c);
        drop(q);
        self.wake.notify_one();
    }

    /// Closes the connection: both tasks stop; control frames already queued
    /// (a `Health` telling why, `Restarting`) get a short grace to go out.
    pub fn close(&self) {
        self.closed.cancel();
        self.wake.notify_one();
    }
}

/// Runs one upgraded connection to its end: login, admission, the two loops,
/// cleanup.
pub(crate) async fn serve<R, W>(
    inner: Arc<Inner>,
    mut rd: R,
    mut wr: W,
    mut buf: BytesMut,
    remote: Option<SocketAddr>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    inner.stats.accepted();
    let login = ServerLogin::new(&inner.key, inner.public, rand::random());
    let greeted = tokio::time::timeout(
        inner.config.login_timeout,
        greet(&login, &mut rd, &mut wr, &mut buf),
    )
    .await;
    let (key, info) = match greeted {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => {
            tracing::debug!(remote = ?remote, error = %e, "relay login failed");
            inner.stats.refused(RefuseReason::BadLogin);
            return;
        }
        Err(_) => {
            tracing::debug!(remote = ?remote, "relay login timed out");
            inner.stats.refused(RefuseReason::Timeout);
            return;
        }
    };
    let span = tracing::debug_span!("relay_client", node = %key.short(), prober = info.is_prober);
    let Some(server_info) = admit(&inner, &login, key, &mut wr)
        .instrument(span.clone())
        .await
    else {
        return;
    };
    run(inner, key, remote, rd, wr, buf, server_info)
        .instrument(span)
        .await;
}

/// Sends `ServerKey` and reads the `ClientInfo`: the client's key, proven.
async fn greet<R, W>(
    login: &ServerLogin<'_>,
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
) -> Result<(NodePublic, ClientInfo), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&login.server_key_frame())
        .await
        .map_err(|e| e.to_string())?;
    wr.flush().await.map_err(|e| e.to_string())?;
    read_frame_with(rd, buf, MAX_FRAME_FROM_CLIENT, |f| {
        login.handle_client_info(&f)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Asks admission about `key`; returns the `ServerInfo` frame to send if
/// admitted, else tells the client why and returns `None`.
async fn admit<W: AsyncWrite + Unpin>(
    inner: &Inner,
    login: &ServerLogin<'_>,
    key: NodePublic,
    wr: &mut W,
) -> Option<Vec<u8>> {
    let refusal = if inner.closing.is_cancelled() {
        Some((RefuseReason::Closing, "the relay is shutting down"))
    } else {
        match inner.admit(key).await {
            Ok(true) => None,
            Ok(false) => Some((
                RefuseReason::NotAdmitted,
                "this node key is not admitted to this relay",
            )),
            Err(e) => {
                tracing::warn!(error = %e, "relay admission check failed; login refused");
                Some((
                    RefuseReason::AdmissionError,
                    "the relay cannot check this node key right now",
                ))
            }
        }
    };
    if let Some((reason, text)) = refusal {
        tracing::debug!(reason = ?reason, "relay login refused");
        inner.stats.refused(reason);
        // Tell the client why before closing: derp clients surface a Health
        // frame as a connection problem.
        let health = Frame::Health {
            problem: text.as_bytes(),
        }
        .to_vec();
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            wr.write_all(&health).await?;
            wr.flush().await
        })
        .await;
        return None;
    }
    match login.server_info_frame(&key) {
        Ok(f) => Some(f),
        Err(_) => {
            inner.stats.refused(RefuseReason::BadLogin);
            None
        }
    }
}

/// Serves an admitted connection until it ends.
async fn run<R, W>(
    inner: Arc<Inner>,
    key: NodePublic,
    remote: Option<SocketAddr>,
    mut rd: R,
    wr: W,
    buf: BytesMut,
    server_info: Vec<u8>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let epoch = inner.revocation_epoch();
    let id = inner.next_conn_id();
    let conn = Arc::new(Conn::new(id, key, remote, inner.config.queue_depth));
    inner.register(&conn);
    // A revocation between the admission check and the registration must not
    // be missed: check again if one happened.
    if inner.revocation_epoch() != epoch && !matches!(inner.admit(key).await, Ok(true)) {
        inner.stats.revoked(1);
        conn.close();
    }
    tracing::debug!(remote = ?remote, conn = id, "relay client connected");

    let writer =
        tokio::spawn(write_loop(inner.clone(), conn.clone(), wr, server_info).in_current_span());
    let end = read_loop(&inner, &conn, &mut rd, buf).await;
    if let Err(e) = &end {
        tracing::debug!(error = %e, "relay client closed for a protocol error");
    }
    conn.close();
    inner.unregister(&conn);
    let _ = writer.await;
    // Whatever is still queued will never be written.
    let left = conn.lock().packets.take_all().count() as u64;
    inner.stats.dropped(DropReason::Gone, left);
    tracing::debug!(conn = id, remote = ?conn.remote, "relay client disconnected");
}

/// Why a connection's reader stopped.
#[derive(Debug, thiserror::Error)]
enum ReadEnd {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Frame(#[from] frame::FrameError),
    #[error("{0}")]
    Protocol(#[from] crate::proto::server::ProtocolError),
}

/// Reads until one whole frame is in `buf`, hands it to `f`, removes it.
async fn read_frame_with<R, T>(
    rd: &mut R,
    buf: &mut BytesMut,
    max: usize,
    f: impl FnOnce(Frame<'_>) -> T,
) -> std::io::Result<Result<T, frame::FrameError>>
where
    R: AsyncRead + Unpin,
{
    loop {
        match frame::peek_header(buf, max) {
            Err(e) => return Ok(Err(e)),
            Ok(Some(h)) => {
                let total = h.total_len();
                let r = Frame::parse(h.frame_type, &buf[FRAME_HEADER_LEN..total]).map(f);
                buf.advance(total);
                return Ok(r);
            }
            Ok(None) => {
                buf.reserve(4096);
                if rd.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}

/// Counters a reader keeps locally and adds to the server's per read.
#[derive(Default)]
struct ReadBatch {
    packets: u64,
    bytes: u64,
    unknown_dest: u64,
    duplicate: u64,
    queue_full: u64,
    overflows: u64,
    gone: u64,
}

/// A token bucket for `PeerGone(NotHere)` answers.
struct NotHereLimit {
    tokens: f64,
    last: Instant,
}

impl NotHereLimit {
    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed).min(NOT_HERE_BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn read_loop<R>(
    inner: &Inner,
    conn: &Conn,
    rd: &mut R,
    mut buf: BytesMut,
) -> Result<(), ReadEnd>
where
    R: AsyncRead + Unpin,
{
    let mut not_here = NotHereLimit {
        tokens: NOT_HERE_BURST,
        last: now(),
    };
    loop {
        let mut batch = ReadBatch::default();
        let r = handle_frames(inner, conn, &mut buf, &mut batch, &mut not_here);
        inner.stats.packets_in(batch.packets, batch.bytes);
        inner
            .stats
            .dropped(DropReason::UnknownDest, batch.unknown_dest);
        inner
            .stats
            .dropped(DropReason::DuplicateClient, batch.duplicate);
        inner.stats.dropped(DropReason::QueueFull, batch.queue_full);
        inner.stats.dropped(DropReason::Gone, batch.gone);
        inner.stats.overflowed(batch.overflows);
        r?;
        if buf.capacity() - buf.len() < MAX_FRAME_AFTER_LOGIN + FRAME_HEADER_LEN {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            n = rd.read_buf(&mut buf) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            () = conn.closed.cancelled() => return Ok(()),
        }
    }
}

/// Handles every whole frame in `buf`.
fn handle_frames(
    inner: &Inner,
    conn: &Conn,
    buf: &mut BytesMut,
    batch: &mut ReadBatch,
    not_here: &mut NotHereLimit,
) -> Result<(), ReadEnd> {
    while let Some(h) = frame::peek_header(buf, MAX_FRAME_AFTER_LOGIN)? {
        if conn.is_duplicate.load(Ordering::Relaxed) {
            inner.note_activity(conn);
        }
        let total = h.total_len();
        if h.frame_type == FrameType::SendPacket as u8 && h.len >= KEY_LEN {
            // The hot path: the packet leaves as a slice of the read buffer.
            let frame = buf.split_to(total).freeze();
            let mut dst = [0u8; KEY_LEN];
            dst.copy_from_slice(&frame[FRAME_HEADER_LEN..FRAME_HEADER_LEN + KEY_LEN]);
            let data = frame.slice(FRAME_HEADER_LEN + KEY_LEN..);
            route(
                inner,
                conn,
                NodePublic::from_bytes(dst),
                data,
                batch,
                not_here,
            );
            continue;
        }
        let action = {
            let f = Frame::parse(h.frame_type, &buf[FRAME_HEADER_LEN..total])?;
            match classify(f, h.len)? {
                Action::Forward { .. } | Action::Ignore => None,
                Action::Pong(data) => Some(Control::Pong(data)),
                Action::Preferred(p) => {
                    conn.preferred.store(p, Ordering::Relaxed);
                    None
                }
            }
        };
        buf.advance(total);
        if let Some(c) = action {
            conn.control(c);
        }
    }
    Ok(())
}

fn route(
    inner: &Inner,
    conn: &Conn,
    dst: NodePublic,
    data: Bytes,
    batch: &mut ReadBatch,
    not_here: &mut NotHereLimit,
) {
    let len = data.len() as u64;
    // Kept for the slow path; a cheap reference count.
    let disco = weft_disco::is_disco(&data);
    match inner.active.with(&dst, |d| d.enqueue(conn.key, data)) {
        Some(Enqueued::Queued) => {
            batch.packets += 1;
            batch.bytes += len;
        }
        Some(Enqueued::DroppedOldest(started)) => {
            batch.packets += 1;
            batch.bytes += len;
            batch.queue_full += 1;
            batch.overflows += u64::from(started);
        }
        Some(Enqueued::Closed) => batch.gone += 1,
        None => {
            if inner.is_duplicated(&dst) {
                batch.duplicate += 1;
            } else {
                batch.unknown_dest += 1;
                // derp tells a sender that its peer is not here, but only in
                // answer to disco (path discovery) and rate-limited.
                if disco && not_here.allow(now()) {
                    conn.control(Control::PeerGone(dst, PeerGoneReason::NotHere));
                }
            }
        }
    }
}

async fn write_loop<W>(inner: Arc<Inner>, conn: Arc<Conn>, mut wr: W, server_info: Vec<u8>)
where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(WRITE_CHUNK + MAX_FRAME_AFTER_LOGIN);
    out.extend_from_slice(&server_info);
    let depth = inner.config.queue_depth;
    let mut packets: Vec<Packet> = Vec::with_capacity(depth);
    let mut controls: Vec<Control> = Vec::new();
    let mut heard: HashSet<NodePublic> = HashSet::new();
    let mut last_src: Option<NodePublic> = None;
    let mut keepalive = {
        let jitter = Duration::from_millis(rand::random::<u64>() % 5000);
        let period = inner.config.keepalive;
        tokio::time::interval_at(tokio::time::Instant::now() + period + jitter, period)
    };
    let write_timeout = inner.config.write_timeout;
    loop {
        let closing = conn.closed.is_cancelled();
        {
            let mut q = conn.lock();
            if !closing {
                q.packets.drain_into(&mut packets, depth);
            }
            controls.extend(q.control.drain(..));
            if closing {
                q.closed = true;
            }
        }
        for c in controls.drain(..) {
            encode_control(&inner, &c, &mut out);
        }
        let (mut n, mut bytes) = (0u64, 0u64);
        for p in &packets {
            if last_src != Some(p.src) {
                last_src = Some(p.src);
                if heard.insert(p.src) {
                    inner.note_heard_from(&conn, p.src);
                }
            }
            Frame::RecvPacket {
                src: p.src,
                packet: &p.data,
            }
            .encode(&mut out);
            n += 1;
            bytes += p.data.len() as u64;
            if out.len() >= WRITE_CHUNK {
                // Flush mid-batch so a batch of large packets does not grow
                // the buffer without bound.
                if write(&mut wr, &mut out, write_timeout).await.is_err() {
                    inner
                        .stats
                        .dropped(DropReason::WriteError, packets.len() as u64);
                    conn.close();
                    return;
                }
            }
        }
        packets.clear();
        if !out.is_empty() {
            let limit = if closing { CLOSE_GRACE } else { write_timeout };
            let ok = tokio::select! {
                r = write(&mut wr, &mut out, limit) => r.is_ok(),
                () = conn.closed.cancelled(), if !closing => false,
            };
            if !ok {
                if !conn.closed.is_cancelled() {
                    tracing::debug!(conn = conn.id, "relay write failed or timed out; closing");
                    inner.stats.dropped(DropReason::WriteError, n);
                    conn.close();
                }
                return;
            }
            inner.stats.packets_out(n, bytes);
        }
        if closing {
            let _ = tokio::time::timeout(CLOSE_GRACE, wr.shutdown()).await;
            return;
        }
        let empty = {
            let q = conn.lock();
            q.packets.is_empty() && q.control.is_empty()
        };
        if empty {
            tokio::select! {
                () = conn.wake.notified() => {}
                _ = keepalive.tick() => Frame::KeepAlive.encode(&mut out),
                () = conn.closed.cancelled() => {}
            }
        }
    }
}

fn encode_control(inner: &Inner, c: &Control, out: &mut BytesMut) {
    match c {
        Control::Pong(data) => Frame::Pong { data: *data }.encode(out),
        Control::PeerGone(peer, reason) => {
            inner
                .stats
                .peer_gone_sent(*reason == PeerGoneReason::NotHere);
            Frame::PeerGone {
                peer: *peer,
                reason: *reason,
            }
            .encode(out);
        }
        Control::Health(text) => Frame::Health {
            problem: text.as_bytes(),
        }
        .encode(out),
        Control::Restarting {
            reconnect_in,
            try_for,
        } => Frame::Restarting {
            reconnect_in: *reconnect_in,
            try_for: *try_for,
        }
        .encode(out),
    }
}

async fn write<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    limit: Duration,
) -> Result<(), ()> {
    let r = tokio::time::timeout(limit, async {
        wr.write_all(out).await?;
        wr.flush().await
    })
    .await;
    out.clear();
    match r {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
