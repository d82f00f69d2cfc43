//! One upgraded control connection: the server's [`ServerConnection`]
//! driven over the socket by a task of its own.
//!
//! The task reads and decrypts requests, answers `register` (a follow-up
//! long-poll runs as a future beside the loop, so keep-alives and reads go
//! on meanwhile), opens the map stream through the coordinator and then
//! sends what the coordinator queues for it: a full map spliced from the
//! latest snapshot (at most `full_map_concurrency` at once, server-wide),
//! then deltas, each encoded once for all recipients and only wrapped
//! (`seq`) and encrypted here. Any protocol error ends the connection with
//! its reason logged; the node reconnects.
//!
//! A connection must prove a registration (a `registered` answer, an open
//! map, an SSH check of a registered node) within
//! [`crate::config::ServerConfig::register_timeout`], unless a `register`
//! is being answered (an interactive login waits as long as its URL is
//! valid); until then its [admission](crate::admission) standing is
//! *unregistered*, and a flood of such connections evicts it first.
//! Host info is checked against `weft_types::node::host_info_limits` in
//! `map` and `host_info` alike.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::oneshot;
use weft_control_proto::{Accepted, ChannelError, Event, MapStream, ServerConnection};
use weft_types::control::{
    ClientMessage, ErrorCode, MapRequest, ProtocolError, RegisterResponse, ServerMessage,
    SshCheckDecision, SshCheckVerdict,
};

use crate::check;
use weft_types::{CapabilityVersion, HostInfo, MachinePublic, NodeId};

use crate::admission::{Source, Standing, Ticket};
use crate::ctx::Ctx;
use crate::registration;
use crate::state::coordinator::{Msg, Subscribe};
use crate::state::queue::{Item, StreamQueue};

/// Endpoints a node may report at once.
const MAX_ENDPOINTS: usize = 64;

type PendingRegister = Pin<Box<dyn Future<Output = RegisterResponse> + Send>>;

/// An SSH check waiting for its user: the request id and the final verdict.
type PendingCheck = (u64, Pin<Box<dyn Future<Output = SshCheckVerdict> + Send>>);

/// An open map stream on this connection.
struct ActiveStream {
    node: NodeId,
    id: u64,
    queue: Arc<StreamQueue>,
    numbering: MapStream,
    /// The snapshot version of the last full map sent: deltas up to it are
    /// already in that map.
    full_version: u64,
}

/// Why the loop stops.
enum Stop {
    /// The peer closed cleanly, or we sent a final error.
    Done,
    /// A protocol or I/O failure, with the reason for the log.
    Failed(String, &'static str),
}

/// How long an evicted connection may take to receive its final error.
const EVICTION_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Where a connection comes from and what admission knows of it.
pub(crate) struct Origin {
    /// The peer address (`None` in tests that drive a connection directly).
    pub peer: Option<SocketAddr>,
    /// The connection's place in admission (`None`: not admitted through
    /// the listener).
    pub ticket: Option<Arc<Ticket>>,
    /// The capability version the server speaks on this connection (the
    /// client's, clamped to the server's own).
    pub version: CapabilityVersion,
}

struct Conn<IO> {
    ctx: Arc<Ctx>,
    io: IO,
    conn: ServerConnection,
    machine_key: MachinePublic,
    remote: String,
    source: Option<Source>,
    ticket: Option<Arc<Ticket>>,
    /// The version this server speaks here (see [`Origin::version`]).
    version: CapabilityVersion,
    /// The machine has proven a registration on this connection.
    registered: bool,
    /// Without a registration by then (and no `register` being answered),
    /// the connection is closed.
    register_deadline: tokio::time::Instant,
    register: Option<PendingRegister>,
    /// At most one SSH check waits per connection (weftd opens one each).
    check: Option<PendingCheck>,
    /// At most one SSH recording upload per connection.
    recording: Option<crate::recordings::Upload>,
    stream: Option<ActiveStream>,
    /// A final error was sent; close once it is written.
    closing: bool,
}

/// Runs the connection until it ends.
pub(crate) async fn run<IO>(ctx: Arc<Ctx>, io: IO, accepted: Accepted, origin: Origin)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    metrics::gauge!("weft_control_connections").increment(1.0);
    let register_deadline = tokio::time::Instant::now() + ctx.config.register_timeout;
    let mut c = Conn {
        ctx,
        io,
        conn: accepted.connection,
        machine_key: accepted.machine_key,
        remote: origin.peer.map(|p| p.to_string()).unwrap_or_default(),
        source: origin.peer.map(|p| Source::of(p.ip())),
        ticket: origin.ticket,
        version: origin.version,
        registered: false,
        register_deadline,
        register: None,
        check: None,
        recording: None,
        stream: None,
        closing: false,
    };
    let stop = c.run_loop().await;
    match &stop {
        Stop::Done => {
            tracing::debug!(remote = %c.remote, machine = %c.machine_key.short(), version = %c.version, "control connection closed")
        }
        Stop::Failed(reason, kind) => {
            metrics::counter!("weft_control_connection_errors_total", "reason" => *kind)
                .increment(1);
            if c.registered {
                tracing::info!(remote = %c.remote, machine = %c.machine_key.short(), version = %c.version, %reason, "control connection closed");
            } else {
                // Unregistered connections can come by the thousand.
                tracing::debug!(remote = %c.remote, machine = %c.machine_key.short(), version = %c.version, %reason, "control connection closed");
            }
        }
    }
    if let Some(s) = c.stream.take() {
        metrics::gauge!("weft_map_streams").decrement(1.0);
        c.ctx.coord.send(Msg::Unsubscribe {
            node: s.node,
            stream: s.id,
        });
    }
    let _ = c.io.shutdown().await;
    metrics::gauge!("weft_control_connections").decrement(1.0);
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Conn<IO> {
    async fn run_loop(&mut self) -> Stop {
        // Nodes send small messages; the channel reassembles larger ones.
        let mut buf = vec![0u8; 16 << 10];
        loop {
            if let Err(stop) = self.flush().await {
                return stop;
            }
            if self.closing {
                return Stop::Done;
            }
            let deadline = self
                .conn
                .poll_timeout()
                .map(|(t, _)| tokio::time::Instant::from_std(t));
            let queue = self.stream.as_ref().map(|s| s.queue.clone());
            let stop_signal = self.ctx.stop.clone();
            let evicted = self.ticket.as_ref().map(|t| t.evicted().clone());
            let must_register_by = self
                .awaiting_registration()
                .then_some(self.register_deadline);
            tokio::select! {
                biased;
                () = stop_signal.cancelled() => {
                    self.fatal(ErrorCode::ShuttingDown, "the control server is shutting down; reconnect later");
                }
                () = cancelled_opt(evicted.as_ref()) => {
                    self.fatal(
                        ErrorCode::Other,
                        "the control server is at its connection limit and closed this unregistered connection; reconnect later",
                    );
                    let _ = tokio::time::timeout(EVICTION_WRITE_TIMEOUT, self.flush()).await;
                    return Stop::Failed("evicted to make room for a new connection".into(), "evicted");
                }
                () = sleep_opt(must_register_by) => {
                    let limit = self.ctx.config.register_timeout;
                    metrics::counter!("weft_control_connection_errors_total", "reason" => "register_timeout")
                        .increment(1);
                    tracing::debug!(remote = %self.remote, machine = %self.machine_key.short(), ?limit, "no registration in time");
                    self.fatal(
                        ErrorCode::NotRegistered,
                        &format!("this connection did not register within {limit:?}; connect again and register"),
                    );
                }
                r = self.io.read(&mut buf) => {
                    let step = match r {
                        Ok(0) => match self.conn.handle_eof() {
                            Ok(()) => return Stop::Done,
                            Err(e) => Err(e),
                        },
                        Ok(n) => self.conn.handle_input(buf.get(..n).expect("read returns at most the buffer's length"), crate::now()),
                        Err(e) => return Stop::Failed(format!("read failed: {e}"), "io"),
                    };
                    if let Err(e) = step {
                        return channel_failure(&e);
                    }
                    while let Some(ev) = self.conn.poll_event() {
                        if let Event::Message(m) = ev {
                            self.handle_message(m).await;
                        }
                    }
                }
                resp = wait_register(&mut self.register) => {
                    self.register = None;
                    if matches!(resp, RegisterResponse::Registered(_)) {
                        self.mark_registered();
                    }
                    if let Err(e) = self.conn.send(&ServerMessage::Register(resp), crate::now()) {
                        return channel_failure(&e);
                    }
                }
                (request_id, verdict) = wait_check(&mut self.check) => {
                    self.check = None;
                    let d = SshCheckDecision { request_id, verdict };
                    if let Err(e) = self.conn.send(&ServerMessage::SshCheck(d), crate::now()) {
                        return channel_failure(&e);
                    }
                }
                () = wait_queue(queue.as_deref()) => {
                    if let Err(stop) = self.drain_queue().await {
                        return stop;
                    }
                }
                () = sleep_opt(deadline) => {
                    if let Err(e) = self.conn.handle_timeout(crate::now()) {
                        return channel_failure(&e);
                    }
                }
            }
        }
    }

    /// Returns whether the registration deadline applies now: nothing
    /// proven yet, and no `register` or SSH check being answered.
    fn awaiting_registration(&self) -> bool {
        !self.registered && self.register.is_none() && self.check.is_none() && !self.closing
    }

    /// Records that the machine proved a registration: the connection may
    /// stay, and a flood cannot evict it.
    fn mark_registered(&mut self) {
        if !self.registered {
            self.registered = true;
            if let Some(t) = &self.ticket {
                t.set(Standing::Registered);
            }
        }
    }

    /// Ends the connection with `bad_request` if host info is out of bounds.
    fn host_info_ok(&mut self, h: &HostInfo) -> bool {
        match h.validate() {
            Ok(()) => true,
            Err(e) => {
                metrics::counter!("weft_control_connection_errors_total", "reason" => "host_info_invalid")
                    .increment(1);
                self.fatal(ErrorCode::BadRequest, &format!("host info refused: {e}"));
                false
            }
        }
    }

    /// Writes whatever the connection has to send.
    async fn flush(&mut self) -> Result<(), Stop> {
        while let Some(bytes) = self.conn.poll_transmit() {
            let timeout = self.ctx.config.write_timeout;
            match tokio::time::timeout(timeout, self.io.write_all(&bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(Stop::Failed(format!("write failed: {e}"), "io")),
                Err(_) => {
                    return Err(Stop::Failed(
                        format!(
                            "the client did not read {} bytes within {timeout:?}",
                            bytes.len()
                        ),
                        "slow_reader",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends a final error; the loop closes once it is written.
    fn fatal(&mut self, code: ErrorCode, message: &str) {
        tracing::debug!(remote = %self.remote, ?code, message, "ending control connection");
        let err = ProtocolError {
            code,
            message: message.to_owned(),
        };
        let _ = self.conn.send(&ServerMessage::Error(err), crate::now());
        self.closing = true;
    }

    async fn handle_message(&mut self, msg: ClientMessage) {
        if self.closing {
            return;
        }
        match msg {
            ClientMessage::Register(req) => {
                if self.register.is_some() {
                    self.fatal(
                        ErrorCode::BadRequest,
                        "a register request is already outstanding on this connection",
                    );
                    return;
                }
                let fut =
                    registration::register(self.ctx.clone(), self.machine_key, self.source, req);
                self.register = Some(Box::pin(fut));
            }
            ClientMessage::Map(req) => self.open_map(req).await,
            ClientMessage::Endpoints(u) => {
                let Some(s) = &self.stream else {
                    self.fatal(
                        ErrorCode::BadRequest,
                        "endpoints are only accepted on an open map stream",
                    );
                    return;
                };
                if u.endpoints.len() > MAX_ENDPOINTS {
                    self.fatal(ErrorCode::BadRequest, "too many endpoints (at most 64)");
                    return;
                }
                self.ctx.coord.send(Msg::Endpoints {
                    node: s.node,
                    stream: s.id,
                    endpoints: u.endpoints,
                    home_relay: u.home_relay,
                });
            }
            ClientMessage::HostInfo(h) => {
                if self.stream.is_none() {
                    self.fatal(
                        ErrorCode::BadRequest,
                        "host info is only accepted on an open map stream",
                    );
                    return;
                }
                if !self.host_info_ok(&h) {
                    return;
                }
                let Some(s) = &self.stream else {
                    return;
                };
                self.ctx.coord.send(Msg::HostInfo {
                    node: s.node,
                    stream: s.id,
                    host_info: Box::new(h),
                });
            }
            ClientMessage::KeepAlive(_) => {}
            ClientMessage::SshRecording(c) => self.recording_chunk(c).await,
            ClientMessage::SshCheck(r) => {
                let request_id = r.request_id;
                let verdict = if self.check.is_some() {
                    SshCheckVerdict::Reject {
                        message:
                            "another SSH check is waiting on this connection; open one per check"
                                .into(),
                    }
                } else {
                    match check::start(self.ctx.clone(), self.machine_key, r).await {
                        check::Start::Now(v) => v,
                        check::Start::Wait(pending, rest) => {
                            self.check = Some((request_id, rest));
                            pending
                        }
                    }
                };
                if matches!(
                    verdict,
                    SshCheckVerdict::Pending { .. } | SshCheckVerdict::Accept { .. }
                ) {
                    // Only a node registered to this machine gets this far.
                    self.mark_registered();
                }
                let outcome = match &verdict {
                    SshCheckVerdict::Pending { .. } => "pending",
                    SshCheckVerdict::Accept { .. } => "accepted",
                    SshCheckVerdict::Reject { .. } => "rejected",
                };
                metrics::counter!("weft_ssh_checks_total", "first_answer" => outcome).increment(1);
                let _ = self.conn.send(
                    &ServerMessage::SshCheck(SshCheckDecision {
                        request_id,
                        verdict,
                    }),
                    crate::now(),
                );
            }
        }
    }

    async fn recording_chunk(&mut self, c: weft_types::control::SshRecordingChunk) {
        let ack =
            crate::recordings::chunk(&self.ctx, self.machine_key, &mut self.recording, c).await;
        if ack.refused.is_none() {
            // Only a node registered to this machine gets this far.
            self.mark_registered();
        }
        let _ = self
            .conn
            .send(&ServerMessage::SshRecording(ack), crate::now());
    }

    async fn open_map(&mut self, req: MapRequest) {
        if self.register.is_some() {
            self.fatal(
                ErrorCode::BadRequest,
                "send map only after the answer to register",
            );
            return;
        }
        if self.stream.is_some() {
            self.fatal(
                ErrorCode::BadRequest,
                "a map stream is already open on this connection",
            );
            return;
        }
        if req.endpoints.len() > MAX_ENDPOINTS {
            self.fatal(ErrorCode::BadRequest, "too many endpoints (at most 64)");
            return;
        }
        if !self.host_info_ok(&req.host_info) {
            return;
        }
        let queue = Arc::new(StreamQueue::new(self.ctx.config.stream_queue_limit));
        let (tx, rx) = oneshot::channel();
        self.ctx.coord.send(Msg::Subscribe(Box::new(Subscribe {
            node_key: req.node_key,
            machine_key: self.machine_key,
            disco_key: req.disco_key,
            endpoints: req.endpoints,
            home_relay: req.home_relay,
            host_info: req.host_info,
            stream: req.stream,
            queue: queue.clone(),
            reply: tx,
        })));
        let sub = match rx.await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                self.fatal(e.code, &e.message);
                return;
            }
            Err(_) => {
                self.fatal(
                    ErrorCode::ShuttingDown,
                    "the control server is shutting down; reconnect later",
                );
                return;
            }
        };
        self.mark_registered();
        if req.stream {
            metrics::gauge!("weft_map_streams").increment(1.0);
            self.stream = Some(ActiveStream {
                node: sub.node,
                id: sub.stream,
                queue,
                numbering: MapStream::new(),
                full_version: 0,
            });
        } else {
            let mut numbering = MapStream::new();
            if let Err(stop) = self.send_full(sub.node, &mut numbering).await {
                if let Stop::Failed(reason, _) = stop {
                    tracing::info!(remote = %self.remote, %reason, "one-shot map failed");
                }
                self.closing = true;
            }
        }
    }

    /// Sends everything queued for the stream.
    async fn drain_queue(&mut self) -> Result<(), Stop> {
        let Some(mut s) = self.stream.take() else {
            return Ok(());
        };
        let r = self.drain_into(&mut s).await;
        self.stream = Some(s);
        r
    }

    async fn drain_into(&mut self, s: &mut ActiveStream) -> Result<(), Stop> {
        while let Some(item) = s.queue.pop() {
            match item {
                Item::Full => s.full_version = self.send_full(s.node, &mut s.numbering).await?,
                Item::Delta { version, body } => {
                    if version <= s.full_version {
                        continue;
                    }
                    let msg = s
                        .numbering
                        .next(&body)
                        .map_err(|e| Stop::Failed(e.to_string(), "encode"))?;
                    self.conn
                        .send_encoded(&msg, crate::now())
                        .map_err(|e| channel_failure(&e))?;
                    metrics::counter!("weft_map_updates_sent_total", "kind" => "delta")
                        .increment(1);
                    self.flush().await?;
                }
                Item::Close(e) => {
                    self.fatal(e.code, &e.message);
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Builds the node's full map from the latest snapshot and writes it.
    /// Returns the snapshot version it was built from.
    async fn send_full(&mut self, node: NodeId, numbering: &mut MapStream) -> Result<u64, Stop> {
        let ctx = self.ctx.clone();
        let permit = ctx.full_maps.acquire().await.ok();
        #[allow(clippy::disallowed_methods)] // measuring only
        let started = Instant::now();
        let snap = self.ctx.coord.snapshot();
        let body = match snap.full_map(node) {
            Some(Ok(b)) => b,
            Some(Err(e)) => return Err(Stop::Failed(e.to_string(), "encode")),
            None => {
                self.fatal(
                    ErrorCode::NotRegistered,
                    "this node is no longer registered; log in again",
                );
                return Err(Stop::Done);
            }
        };
        let msg = numbering
            .next(&body)
            .map_err(|e| Stop::Failed(e.to_string(), "encode"))?;
        drop(body);
        self.conn
            .send_encoded(&msg, crate::now())
            .map_err(|e| channel_failure(&e))?;
        drop(msg);
        metrics::histogram!("weft_full_map_build_seconds").record(started.elapsed().as_secs_f64());
        self.flush().await?;
        drop(permit);
        metrics::counter!("weft_map_updates_sent_total", "kind" => "full").increment(1);
        Ok(snap.version)
    }
}

fn channel_failure(e: &ChannelError) -> Stop {
    let kind = match e {
        ChannelError::HandshakeTimeout(_) => "handshake_timeout",
        ChannelError::HandshakeFailed => "handshake_failed",
        ChannelError::IdleTimeout(_) => "idle_timeout",
        ChannelError::Authentication => "authentication",
        ChannelError::UnknownFrameType(_)
        | ChannelError::UnexpectedFrame(_)
        | ChannelError::MalformedFrame(_) => "malformed_frame",
        ChannelError::MessageTooLarge { .. } => "message_too_large",
        ChannelError::MalformedMessage(_) => "malformed_message",
        ChannelError::Truncated => "truncated",
        ChannelError::ClosedDuringHandshake => "closed_during_handshake",
        _ => "other",
    };
    Stop::Failed(e.to_string(), kind)
}

async fn wait_register(r: &mut Option<PendingRegister>) -> RegisterResponse {
    match r {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn wait_check(c: &mut Option<PendingCheck>) -> (u64, SshCheckVerdict) {
    match c {
        Some((id, f)) => (*id, f.await),
        None => std::future::pending().await,
    }
}

async fn wait_queue(q: Option<&StreamQueue>) {
    match q {
        Some(q) => {
            if q.len() == 0 {
                q.notified().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn cancelled_opt(token: Option<&tokio_util::sync::CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
