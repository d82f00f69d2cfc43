//! One client connection on the server: the login, then two tasks — the
//! reader (this connection's frames: a packet is copied straight into its
//! destination's [`FrameBuffer`], already encoded as the `RecvPacket` the
//! destination will read) and the writer (takes its buffer whole and writes
//! it with one call).
//!
//! Buffers: the reader's buffer is reused in place (nothing keeps a
//! reference into it), each connection's queue is bounded in bytes and owns
//! its storage, and the writer swaps its storage with the queue's. In steady
//! state nothing is allocated per packet.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf as _, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use weft_types::NodePublic;

use super::Inner;
use crate::clock::now;
use crate::metrics::{DropReason, RefuseReason};
use crate::proto::frame::{self, Frame, PeerGoneReason};
use crate::proto::login::ClientInfo;
use crate::proto::queue::{FrameBuffer, Push, Taken};
use crate::proto::routes::ConnId;
use crate::proto::server::{Action, ServerLogin, classify};
use crate::proto::{FRAME_HEADER_LEN, KEY_LEN, MAX_FRAME_FROM_CLIENT, MAX_PACKET_SIZE};

/// The largest frame an admitted client may send: a `SendPacket` of the
/// largest packet.
const MAX_FRAME_AFTER_LOGIN: usize = KEY_LEN + MAX_PACKET_SIZE;
/// The reader keeps at least this much room for the next read.
const READ_ROOM: usize = 64 << 10;
/// How long a closing connection may take to write its last control frames.
const CLOSE_GRACE: Duration = Duration::from_millis(250);
/// `PeerGone(NotHere)` answers per connection: a burst of 3, then 1/s.
const NOT_HERE_BURST: f64 = 3.0;

struct Pending {
    frames: FrameBuffer,
    closed: bool,
}

/// What happened to a packet handed to [`Conn::enqueue`].
pub(crate) enum Enqueued {
    Queued,
    /// Dropped: the queue was full; `true` if this started an overflow.
    Dropped(bool),
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
    pending: Mutex<Pending>,
    wake: Notify,
    closed: CancellationToken,
    /// One of several connections of its key (then every frame it sends
    /// goes through the routing table's lock, to make it active).
    pub is_duplicate: AtomicBool,
    pub preferred: AtomicBool,
}

impl Conn {
    fn new(id: ConnId, key: NodePublic, remote: Option<SocketAddr>, queue_bytes: usize) -> Self {
        Conn {
            id,
            key,
            remote,
            pending: Mutex::new(Pending {
                frames: FrameBuffer::new(queue_bytes),
                closed: false,
            }),
            wake: Notify::new(),
            closed: CancellationToken::new(),
            is_duplicate: AtomicBool::new(false),
            preferred: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `packet` from `src`, encoded as the `RecvPacket` to write.
    pub fn enqueue(&self, src: &NodePublic, packet: &[u8]) -> Enqueued {
        let mut p = self.lock();
        if p.closed {
            return Enqueued::Closed;
        }
        let r = p
            .frames
            .push_packet(&Frame::RecvPacket { src: *src, packet });
        drop(p);
        match r {
            Push::Queued => {
                self.wake.notify_one();
                Enqueued::Queued
            }
            Push::Dropped { new_overflow } => Enqueued::Dropped(new_overflow),
        }
    }

    /// Queues a control frame; returns `false` if it was dropped (the
    /// queue's control reserve is full, or the connection is closing).
    pub fn control(&self, frame: &Frame<'_>) -> bool {
        let mut p = self.lock();
        if p.closed {
            return false;
        }
        let ok = p.frames.push_control(frame);
        drop(p);
        self.wake.notify_one();
        ok
    }

    /// Closes the connection: both tasks stop; what is already queued (a
    /// `Health` telling why, `Restarting`) gets a short grace to go out.
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
    let login = ServerLogin::new(&inner.key, inner.public, weft_types::entropy::bytes());
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
    // Read before admission asks: a revocation of `key` while it answers (or
    // before the connection is registered) must not be missed.
    let epoch = inner.revocation_epoch();
    let Some(server_info) = admit(&inner, &login, key, &mut wr)
        .instrument(span.clone())
        .await
    else {
        return;
    };
    run(inner, epoch, key, remote, rd, wr, buf, server_info)
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
#[allow(clippy::too_many_arguments)]
async fn run<R, W>(
    inner: Arc<Inner>,
    epoch: u64,
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
    let id = inner.next_conn_id();
    let conn = Arc::new(Conn::new(id, key, remote, inner.config.queue_bytes));
    inner.register(&conn);
    // A revocation since admission was asked must not be missed: ask again
    // if one happened.
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
    let left = conn.lock().frames.clear();
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
    /// Destinations this connection has sent to (kept across batches).
    noted: HashSet<ConnId>,
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
    let mut batch = ReadBatch::default();
    loop {
        let r = handle_frames(inner, conn, &mut buf, &mut batch, &mut not_here);
        let s = &inner.stats;
        s.packets_in(batch.packets, batch.bytes);
        s.dropped(DropReason::UnknownDest, batch.unknown_dest);
        s.dropped(DropReason::DuplicateClient, batch.duplicate);
        s.dropped(DropReason::QueueFull, batch.queue_full);
        s.dropped(DropReason::Gone, batch.gone);
        s.overflowed(batch.overflows);
        batch = ReadBatch {
            noted: std::mem::take(&mut batch.noted),
            ..ReadBatch::default()
        };
        r?;
        // Room for the next read; the space of frames already handled is
        // reclaimed in place (nothing refers to it any more).
        if buf.capacity() - buf.len() < READ_ROOM {
            buf.reserve(READ_ROOM);
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
        let f = Frame::parse(h.frame_type, &buf[FRAME_HEADER_LEN..total])?;
        match classify(f, h.len)? {
            Action::Forward { dst, packet } => route(inner, conn, dst, packet, batch, not_here),
            Action::Pong(data) => {
                conn.control(&Frame::Pong { data });
            }
            Action::Preferred(p) => conn.preferred.store(p, Ordering::Relaxed),
            Action::Ignore => {}
        }
        buf.advance(total);
    }
    Ok(())
}

fn route(
    inner: &Inner,
    conn: &Conn,
    dst: NodePublic,
    packet: &[u8],
    batch: &mut ReadBatch,
    not_here: &mut NotHereLimit,
) {
    let len = packet.len() as u64;
    match inner
        .active
        .with(&dst, |d| (d.id, d.enqueue(&conn.key, packet)))
    {
        Some((dst_id, Enqueued::Queued)) => {
            batch.packets += 1;
            batch.bytes += len;
            // The destination hears PeerGone when we leave. Noted once per
            // destination, outside the shard lock (the routes lock is
            // taken before shard locks, never inside one).
            if batch.noted.insert(dst_id) {
                inner.note_heard_from(dst_id, conn.key);
            }
        }
        Some((_, Enqueued::Dropped(new_overflow))) => {
            batch.queue_full += 1;
            batch.overflows += u64::from(new_overflow);
        }
        Some((_, Enqueued::Closed)) => batch.gone += 1,
        None => {
            if inner.is_duplicated(&dst) {
                batch.duplicate += 1;
            } else {
                batch.unknown_dest += 1;
                // derp tells a sender that its peer is not here, but only in
                // answer to disco (path discovery) and rate-limited.
                if weft_disco::is_disco(packet) && not_here.allow(now()) {
                    let gone = Frame::PeerGone {
                        peer: dst,
                        reason: PeerGoneReason::NotHere,
                    };
                    if conn.control(&gone) {
                        inner.stats.peer_gone_sent(true);
                    }
                }
            }
        }
    }
}

async fn write_loop<W>(inner: Arc<Inner>, conn: Arc<Conn>, mut wr: W, server_info: Vec<u8>)
where
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(server_info.len());
    out.extend_from_slice(&server_info);
    let mut taken = Taken::default();
    let mut keepalive = {
        let jitter = Duration::from_millis(weft_types::entropy::u64() % 5000);
        let period = inner.config.keepalive;
        tokio::time::interval_at(tokio::time::Instant::now() + period + jitter, period)
    };
    let write_timeout = inner.config.write_timeout;
    loop {
        if !out.is_empty() {
            let closing = conn.closed.is_cancelled();
            let limit = if closing { CLOSE_GRACE } else { write_timeout };
            let ok = tokio::select! {
                r = write(&mut wr, &mut out, limit) => r.is_ok(),
                () = conn.closed.cancelled(), if !closing => false,
            };
            if !ok {
                if !conn.closed.is_cancelled() {
                    tracing::debug!(conn = conn.id, "relay write failed or timed out; closing");
                    inner.stats.dropped(DropReason::WriteError, taken.packets);
                    conn.close();
                }
                return;
            }
            inner.stats.packets_out(taken.packets, taken.packet_bytes);
        }
        let closing = conn.closed.is_cancelled();
        taken = {
            let mut p = conn.lock();
            if closing {
                p.closed = true;
            }
            p.frames.take_into(&mut out)
        };
        if !out.is_empty() {
            continue;
        }
        if closing {
            let _ = tokio::time::timeout(CLOSE_GRACE, wr.shutdown()).await;
            return;
        }
        tokio::select! {
            () = conn.wake.notified() => {}
            _ = keepalive.tick() => {
                conn.control(&Frame::KeepAlive);
            }
            () = conn.closed.cancelled() => {}
        }
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
