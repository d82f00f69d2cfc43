//! The channel: one upgraded connection between a node and the control
//! server, from the Noise handshake to encrypted, fragmented JSON messages.
//!
//! [`Connection`] is sans-IO. It never touches a socket or a clock; the
//! driver moves bytes and time in and out:
//!
//! 1. Change state: feed received bytes with [`Connection::handle_input`],
//!    end of stream with [`Connection::handle_eof`], or send a message with
//!    [`Connection::send`] / [`Connection::send_encoded`].
//! 2. Drain outputs: write every [`Connection::poll_transmit`] buffer to the
//!    socket; handle every [`Connection::poll_event`].
//! 3. Ask [`Connection::poll_timeout`] when to wake up next and call
//!    [`Connection::handle_timeout`] then.
//!
//! Any error is final: the connection is dead, every later call returns
//! [`ChannelError::Dead`], and the driver closes the socket (logging the
//! first error, which says why). There is no recovery inside a connection;
//! a node reconnects and starts over.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_types::control::{ClientMessage, KeepAlive, ServerMessage};
use weft_types::{CapabilityVersion, MachinePrivate, MachinePublic};

use crate::encode::Encoded;
use crate::frame::{
    FLAG_FIN, FRAME_HANDSHAKE, FRAME_RECORD, HEADER_LEN, MAX_FRAGMENT, MIN_RECORD_LEN, push_header,
    split_frame,
};
use crate::noise::{self, INITIATION_LEN, RESPONSE_LEN, TAG_LEN};
use crate::upgrade::{self, UpgradeError, UpgradeHeaders, UpgradeRequest};

/// The default bound on one received application message (16 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 << 20;
/// The receive bound a server should use for client messages (64 KiB):
/// nodes send requests and host info, never maps. The largest is a
/// `register` or `map` request with host info at its limits
/// (`weft_types::node::host_info_limits`, 16 KiB of fields) and 64
/// endpoints: under 32 KiB of JSON. Every connection may hold this much
/// while a message is reassembled, so it bounds the server's memory too.
pub const SERVER_MAX_MESSAGE_SIZE: usize = 64 << 10;
/// The default time a handshake may take (client: until message 2 arrives;
/// server: until the first record confirms the client has the keys).
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The default send silence after which a keep-alive goes out.
pub const DEFAULT_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
/// The default receive silence after which the connection is dead.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(150);

/// `snow` reports at most the length of the buffer it wrote into.
const WRITTEN_WITHIN_BUFFER: &str = "snow wrote more bytes than the buffer holds";

/// Limits and timers of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// The largest application message accepted from the peer; a bigger one
    /// is [`ChannelError::MessageTooLarge`]. Sending is not limited here.
    pub max_message_size: usize,
    /// How long the handshake may take.
    pub handshake_timeout: Duration,
    /// Send a keep-alive after this long without sending anything. `None`:
    /// never send keep-alives.
    pub keep_alive_interval: Option<Duration>,
    /// Fail with [`ChannelError::IdleTimeout`] after this long without
    /// receiving anything. `None`: wait forever.
    pub idle_timeout: Option<Duration>,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            keep_alive_interval: Some(DEFAULT_KEEP_ALIVE_INTERVAL),
            idle_timeout: Some(DEFAULT_IDLE_TIMEOUT),
        }
    }
}

impl ChannelConfig {
    /// Returns the defaults with the server's smaller receive bound
    /// ([`SERVER_MAX_MESSAGE_SIZE`]).
    pub fn for_server() -> Self {
        Self {
            max_message_size: SERVER_MAX_MESSAGE_SIZE,
            ..Self::default()
        }
    }
}

/// Why a connection died. Every variant is final.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The handshake did not complete in time.
    #[error("handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The server's handshake response did not authenticate: the server
    /// does not hold the pinned key, or the message was tampered with.
    #[error(
        "handshake failed: the server does not hold the pinned key, or the response was tampered with"
    )]
    HandshakeFailed,
    /// Nothing arrived for the idle timeout.
    #[error("nothing received for {0:?}")]
    IdleTimeout(Duration),
    /// A record failed to decrypt: forged, replayed, reordered or corrupted.
    #[error("record failed authentication (forged, replayed, reordered or corrupted)")]
    Authentication,
    /// A frame type this side does not know.
    #[error("unknown frame type {0:#04x}")]
    UnknownFrameType(u8),
    /// A known frame at the wrong time (e.g. a second handshake response).
    #[error("unexpected frame: {0}")]
    UnexpectedFrame(&'static str),
    /// A frame or record that breaks the layout rules.
    #[error("malformed frame: {0}")]
    MalformedFrame(&'static str),
    /// A message grew past [`ChannelConfig::max_message_size`].
    #[error("message larger than the limit of {limit} bytes")]
    MessageTooLarge {
        /// The limit in force.
        limit: usize,
    },
    /// A complete message that is not valid JSON of the expected type.
    #[error("malformed message: {0}")]
    MalformedMessage(String),
    /// The stream ended inside a frame or a fragmented message.
    #[error("connection closed in the middle of a frame or message")]
    Truncated,
    /// The stream ended before the handshake completed.
    #[error("connection closed before the handshake completed")]
    ClosedDuringHandshake,
    /// A message could not be encoded (a bug in the caller's types).
    #[error("could not encode a message: {0}")]
    Encode(String),
    /// The Noise library refused to encrypt (nonce exhausted after 2^64
    /// records, which no connection reaches).
    #[error("encryption failed")]
    Encrypt,
    /// The peer closed the stream cleanly; nothing more can be sent.
    #[error("connection is closed")]
    Closed,
    /// An earlier error killed the connection.
    #[error("connection is dead after an earlier error")]
    Dead,
}

/// Something the connection reports to its driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<M> {
    /// The handshake is complete. On the client: message 2 arrived and
    /// queued messages went out. On the server: the first record arrived,
    /// proving the client derived the session keys.
    Established,
    /// A complete application message from the peer.
    Message(M),
}

mod sealed {
    pub trait Sealed {}
}

/// Which end of the channel a [`Connection`] is; fixes the message types.
pub trait Role: sealed::Sealed {
    /// What this side sends.
    type Send: Serialize;
    /// What this side receives.
    type Recv: DeserializeOwned;
    /// Returns the keep-alive message this side sends.
    fn keep_alive() -> Self::Send;
}

/// The node's end: sends [`ClientMessage`], receives [`ServerMessage`].
#[derive(Debug)]
pub enum ClientRole {}
/// The control server's end: sends [`ServerMessage`], receives [`ClientMessage`].
#[derive(Debug)]
pub enum ServerRole {}

impl sealed::Sealed for ClientRole {}
impl sealed::Sealed for ServerRole {}

impl Role for ClientRole {
    type Send = ClientMessage;
    type Recv = ServerMessage;
    fn keep_alive() -> ClientMessage {
        ClientMessage::KeepAlive(KeepAlive {})
    }
}

impl Role for ServerRole {
    type Send = ServerMessage;
    type Recv = ClientMessage;
    fn keep_alive() -> ServerMessage {
        ServerMessage::KeepAlive(KeepAlive {})
    }
}

/// A node's connection to control.
pub type ClientConnection = Connection<ClientRole>;
/// The control server's connection to one node.
pub type ServerConnection = Connection<ServerRole>;

/// What the server learns from a successful [`Connection::accept`].
#[derive(Debug)]
pub struct Accepted {
    /// The connection, with the handshake response waiting in
    /// [`Connection::poll_transmit`]: write it right after the `101`.
    pub connection: ServerConnection,
    /// The client's machine key, authenticated by the handshake.
    pub machine_key: MachinePublic,
    /// The client's capability version (bound into the handshake).
    pub version: CapabilityVersion,
}

enum State {
    /// Client: message 1 is out; waiting for message 2.
    AwaitingResponse {
        hs: Box<snow::HandshakeState>,
        deadline: Instant,
    },
    /// Server: message 2 is out; waiting for the first record.
    AwaitingConfirmation {
        transport: Box<snow::TransportState>,
        deadline: Instant,
    },
    /// Both sides hold the session keys.
    Open {
        transport: Box<snow::TransportState>,
    },
    /// The peer ended the stream cleanly.
    Closed,
    /// An error ended the connection.
    Dead,
}

/// One end of the control channel. See the module docs for the driving loop.
pub struct Connection<R: Role> {
    // --- set once in the constructor ---
    config: ChannelConfig,
    remote_key: MachinePublic,
    version: CapabilityVersion,
    // --- protocol state ---
    state: State,
    /// Received bytes not yet forming a whole frame.
    inbuf: Vec<u8>,
    /// Fragments of the message being reassembled.
    message: Vec<u8>,
    /// Decryption and encryption scratch space.
    scratch: Vec<u8>,
    /// Client only: messages sent before the handshake completed.
    queued: Vec<Vec<u8>>,
    // --- outputs ---
    outbuf: Vec<u8>,
    events: VecDeque<Event<R::Recv>>,
    // --- timers ---
    last_recv: Instant,
    last_send: Instant,
    _role: PhantomData<R>,
}

impl<R: Role> std::fmt::Debug for Connection<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::AwaitingResponse { .. } => "awaiting-response",
            State::AwaitingConfirmation { .. } => "awaiting-confirmation",
            State::Open { .. } => "open",
            State::Closed => "closed",
            State::Dead => "dead",
        };
        f.debug_struct("Connection")
            .field("remote_key", &self.remote_key)
            .field("version", &self.version)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Connection<ClientRole> {
    /// Starts a handshake to the server whose pinned key is `server_key`.
    /// Returns the connection and the headers of the upgrade request, which
    /// carry Noise message 1. Messages sent before the handshake completes
    /// are queued.
    ///
    /// `seed` must come from a CSPRNG (it becomes the ephemeral key); a
    /// fixed seed reproduces the handshake bytes (test vectors).
    ///
    /// # Errors
    /// [`ChannelError::Encrypt`] if Noise refuses the keys (it does not for
    /// 32-byte X25519 keys).
    pub fn client(
        machine_key: &MachinePrivate,
        server_key: &MachinePublic,
        version: CapabilityVersion,
        config: ChannelConfig,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<(Self, UpgradeRequest), ChannelError> {
        let prologue = noise::prologue(version);
        let mut hs = noise::builder(seed)
            .and_then(|b| b.local_private_key(machine_key.as_bytes()))
            .and_then(|b| b.remote_public_key(server_key.as_bytes()))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .map_err(|_| ChannelError::Encrypt)?;
        let mut msg = [0u8; INITIATION_LEN];
        let n = hs
            .write_message(&[], &mut msg)
            .map_err(|_| ChannelError::Encrypt)?;
        let request = UpgradeRequest {
            handshake: upgrade::encode_initiation(msg.get(..n).expect(WRITTEN_WITHIN_BUFFER)),
            capability: version,
        };
        let deadline = now + config.handshake_timeout;
        let state = State::AwaitingResponse {
            hs: Box::new(hs),
            deadline,
        };
        Ok((Self::new(config, *server_key, version, state, now), request))
    }
}

impl Connection<ServerRole> {
    /// Checks an upgrade request and answers its Noise message 1 with the
    /// server's static key. On success the caller answers `101 Switching
    /// Protocols` and then writes [`Connection::poll_transmit`] (message 2).
    ///
    /// `seed` must come from a CSPRNG (it becomes the ephemeral key).
    ///
    /// # Errors
    /// An [`UpgradeError`]; answer with its [`UpgradeError::status`] and its
    /// text as the body.
    pub fn accept(
        server_key: &MachinePrivate,
        headers: &UpgradeHeaders<'_>,
        config: ChannelConfig,
        seed: [u8; 32],
        now: Instant,
    ) -> Result<Accepted, UpgradeError> {
        let checked = upgrade::check_headers(headers)?;
        if checked.initiation.len() != INITIATION_LEN {
            return Err(UpgradeError::HandshakeFailed);
        }
        let prologue = noise::prologue(checked.version);
        let mut hs = noise::builder(seed)
            .and_then(|b| b.local_private_key(server_key.as_bytes()))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| UpgradeError::HandshakeFailed)?;
        let mut payload = [0u8; INITIATION_LEN];
        let n = hs
            .read_message(&checked.initiation, &mut payload)
            .map_err(|_| UpgradeError::HandshakeFailed)?;
        if n != 0 {
            return Err(UpgradeError::HandshakeFailed);
        }
        let client_key = hs
            .get_remote_static()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .map(MachinePublic::from_bytes)
            .ok_or(UpgradeError::HandshakeFailed)?;
        let mut response = [0u8; RESPONSE_LEN];
        let n = hs
            .write_message(&[], &mut response)
            .map_err(|_| UpgradeError::HandshakeFailed)?;
        let transport = hs
            .into_transport_mode()
            .map_err(|_| UpgradeError::HandshakeFailed)?;

        let deadline = now + config.handshake_timeout;
        let state = State::AwaitingConfirmation {
            transport: Box::new(transport),
            deadline,
        };
        let mut connection = Self::new(config, client_key, checked.version, state, now);
        let body = response.get(..n).expect(WRITTEN_WITHIN_BUFFER);
        push_header(&mut connection.outbuf, FRAME_HANDSHAKE, RESPONSE_LEN as u16);
        connection.outbuf.extend_from_slice(body);
        Ok(Accepted {
            connection,
            machine_key: client_key,
            version: checked.version,
        })
    }
}

impl<R: Role> Connection<R> {
    fn new(
        config: ChannelConfig,
        remote_key: MachinePublic,
        version: CapabilityVersion,
        state: State,
        now: Instant,
    ) -> Self {
        Self {
            config,
            remote_key,
            version,
            state,
            inbuf: Vec::new(),
            message: Vec::new(),
            scratch: Vec::new(),
            queued: Vec::new(),
            outbuf: Vec::new(),
            events: VecDeque::new(),
            last_recv: now,
            last_send: now,
            _role: PhantomData,
        }
    }

    /// Returns the peer's static key: the server key the client pinned, or
    /// the client's machine key on the server.
    pub fn remote_key(&self) -> MachinePublic {
        self.remote_key
    }

    /// Returns the client's capability version (on both sides).
    pub fn version(&self) -> CapabilityVersion {
        self.version
    }

    /// Returns whether the handshake is complete and the connection alive.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// Returns when something was last received (or the connection began).
    pub fn last_received(&self) -> Instant {
        self.last_recv
    }

    /// Feeds bytes read from the socket.
    ///
    /// # Errors
    /// Any [`ChannelError`] about frames, records or messages; the
    /// connection is dead afterwards.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ChannelError> {
        self.check_alive()?;
        self.inbuf.extend_from_slice(bytes);
        let inbuf = std::mem::take(&mut self.inbuf);
        let mut offset = 0;
        let mut result = Ok(());
        while let Some((frame, used)) = inbuf.get(offset..).and_then(split_frame) {
            offset += used;
            self.last_recv = now;
            result = self.handle_frame(frame.kind, frame.body, now);
            if result.is_err() {
                break;
            }
        }
        match result {
            Ok(()) => {
                self.inbuf = inbuf;
                self.inbuf.drain(..offset);
                Ok(())
            }
            Err(e) => Err(self.die(e)),
        }
    }

    /// Reports that the peer closed its sending side.
    ///
    /// # Errors
    /// [`ChannelError::Truncated`] if a frame or message was cut off,
    /// [`ChannelError::ClosedDuringHandshake`] before the handshake completed.
    pub fn handle_eof(&mut self) -> Result<(), ChannelError> {
        self.check_alive()?;
        if !self.inbuf.is_empty() || !self.message.is_empty() {
            return Err(self.die(ChannelError::Truncated));
        }
        if !matches!(self.state, State::Open { .. }) {
            return Err(self.die(ChannelError::ClosedDuringHandshake));
        }
        self.state = State::Closed;
        Ok(())
    }

    /// Encrypts and queues a message for the peer (on a client before the
    /// handshake completes: queues it until then).
    ///
    /// # Errors
    /// [`ChannelError::Closed`]/[`ChannelError::Dead`] on a finished
    /// connection, [`ChannelError::Encode`] if the message cannot be encoded.
    pub fn send(&mut self, msg: &R::Send, now: Instant) -> Result<(), ChannelError> {
        self.check_alive()?;
        let bytes = serde_json::to_vec(msg).map_err(|e| ChannelError::Encode(e.to_string()))?;
        self.send_bytes(&bytes, now)
    }

    /// Like [`Connection::send`] for a message encoded once for many
    /// recipients (see [`crate::encode`]): only encryption happens here.
    ///
    /// # Errors
    /// As [`Connection::send`].
    pub fn send_encoded(
        &mut self,
        msg: &Encoded<R::Send>,
        now: Instant,
    ) -> Result<(), ChannelError> {
        self.check_alive()?;
        self.send_bytes(msg.as_bytes(), now)
    }

    /// Returns the bytes to write to the socket, if any (all of them at once).
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        if self.outbuf.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.outbuf))
        }
    }

    /// Returns the next event, if any.
    pub fn poll_event(&mut self) -> Option<Event<R::Recv>> {
        self.events.pop_front()
    }

    /// Returns when [`Connection::handle_timeout`] must be called next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.state {
            State::AwaitingResponse { deadline, .. }
            | State::AwaitingConfirmation { deadline, .. } => Some((*deadline, "handshake")),
            State::Open { .. } => {
                let keep_alive = self
                    .config
                    .keep_alive_interval
                    .map(|d| (self.last_send + d, "keep-alive"));
                let idle = self
                    .config
                    .idle_timeout
                    .map(|d| (self.last_recv + d, "idle"));
                match (keep_alive, idle) {
                    (Some(k), Some(i)) => Some(if i.0 <= k.0 { i } else { k }),
                    (k, i) => k.or(i),
                }
            }
            State::Closed | State::Dead => None,
        }
    }

    /// Advances timers: fails a handshake or an idle connection that ran out
    /// of time, and sends a keep-alive when one is due.
    ///
    /// # Errors
    /// [`ChannelError::HandshakeTimeout`] or [`ChannelError::IdleTimeout`];
    /// the connection is dead afterwards.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ChannelError> {
        match &self.state {
            State::AwaitingResponse { deadline, .. }
            | State::AwaitingConfirmation { deadline, .. } => {
                if now >= *deadline {
                    return Err(self.die(ChannelError::HandshakeTimeout(
                        self.config.handshake_timeout,
                    )));
                }
                Ok(())
            }
            State::Open { .. } => {
                if let Some(idle) = self.config.idle_timeout
                    && now >= self.last_recv + idle
                {
                    return Err(self.die(ChannelError::IdleTimeout(idle)));
                }
                if let Some(every) = self.config.keep_alive_interval
                    && now >= self.last_send + every
                {
                    self.send(&R::keep_alive(), now)?;
                }
                Ok(())
            }
            State::Closed | State::Dead => Ok(()),
        }
    }

    fn check_alive(&self) -> Result<(), ChannelError> {
        match self.state {
            State::Dead => Err(ChannelError::Dead),
            State::Closed => Err(ChannelError::Closed),
            _ => Ok(()),
        }
    }

    /// Marks the connection dead and hands back the error that killed it.
    fn die(&mut self, e: ChannelError) -> ChannelError {
        self.state = State::Dead;
        self.inbuf.clear();
        self.message.clear();
        self.queued.clear();
        e
    }

    fn handle_frame(&mut self, kind: u8, body: &[u8], now: Instant) -> Result<(), ChannelError> {
        match (kind, &mut self.state) {
            (FRAME_HANDSHAKE, State::AwaitingResponse { .. }) => {
                self.finish_client_handshake(body, now)
            }
            (FRAME_HANDSHAKE, _) => Err(ChannelError::UnexpectedFrame(
                "handshake response after the handshake",
            )),
            (FRAME_RECORD, State::AwaitingResponse { .. }) => Err(ChannelError::UnexpectedFrame(
                "record before the handshake response",
            )),
            (FRAME_RECORD, _) => self.handle_record(body),
            (other, _) => Err(ChannelError::UnknownFrameType(other)),
        }
    }

    fn finish_client_handshake(&mut self, body: &[u8], now: Instant) -> Result<(), ChannelError> {
        if body.len() != RESPONSE_LEN {
            return Err(ChannelError::MalformedFrame(
                "handshake response of the wrong length",
            ));
        }
        let State::AwaitingResponse { mut hs, .. } =
            std::mem::replace(&mut self.state, State::Dead)
        else {
            return Err(ChannelError::UnexpectedFrame(
                "handshake response after the handshake",
            ));
        };
        let mut payload = [0u8; RESPONSE_LEN];
        let n = hs
            .read_message(body, &mut payload)
            .map_err(|_| ChannelError::HandshakeFailed)?;
        if n != 0 {
            return Err(ChannelError::MalformedFrame(
                "handshake response with a payload",
            ));
        }
        let transport = hs
            .into_transport_mode()
            .map_err(|_| ChannelError::HandshakeFailed)?;
        self.state = State::Open {
            transport: Box::new(transport),
        };
        self.events.push_back(Event::Established);
        for msg in std::mem::take(&mut self.queued) {
            self.seal(&msg, now)?;
        }
        Ok(())
    }

    fn handle_record(&mut self, body: &[u8]) -> Result<(), ChannelError> {
        if body.len() < MIN_RECORD_LEN {
            return Err(ChannelError::MalformedFrame(
                "record shorter than its tag and flags",
            ));
        }
        let transport = match &mut self.state {
            State::Open { transport } | State::AwaitingConfirmation { transport, .. } => transport,
            _ => {
                return Err(ChannelError::UnexpectedFrame(
                    "record on a finished connection",
                ));
            }
        };
        self.scratch.resize(body.len(), 0);
        let n = transport
            .read_message(body, &mut self.scratch)
            .map_err(|_| ChannelError::Authentication)?;
        if let State::AwaitingConfirmation { .. } = self.state {
            let State::AwaitingConfirmation { transport, .. } =
                std::mem::replace(&mut self.state, State::Dead)
            else {
                return Err(ChannelError::UnexpectedFrame(
                    "record on a finished connection",
                ));
            };
            self.state = State::Open { transport };
            self.events.push_back(Event::Established);
        }
        let plain = self.scratch.get(..n).expect(WRITTEN_WITHIN_BUFFER);
        let [flags, fragment @ ..] = plain else {
            return Err(ChannelError::MalformedFrame("record without flags"));
        };
        if flags & !FLAG_FIN != 0 {
            return Err(ChannelError::MalformedFrame("record with unknown flags"));
        }
        let limit = self.config.max_message_size;
        if self.message.len() + fragment.len() > limit {
            return Err(ChannelError::MessageTooLarge { limit });
        }
        self.message.extend_from_slice(fragment);
        if flags & FLAG_FIN != 0 {
            let parsed = serde_json::from_slice::<R::Recv>(&self.message);
            self.message.clear();
            let msg = parsed.map_err(|e| ChannelError::MalformedMessage(e.to_string()))?;
            self.events.push_back(Event::Message(msg));
        }
        Ok(())
    }

    fn send_bytes(&mut self, bytes: &[u8], now: Instant) -> Result<(), ChannelError> {
        if let State::AwaitingResponse { .. } = self.state {
            self.queued.push(bytes.to_vec());
            return Ok(());
        }
        self.seal(bytes, now).map_err(|e| self.die(e))
    }

    /// Splits `msg` into fragments and appends one record frame per fragment.
    fn seal(&mut self, msg: &[u8], now: Instant) -> Result<(), ChannelError> {
        if msg.is_empty() {
            self.seal_record(FLAG_FIN, &[])?;
        }
        let mut chunks = msg.chunks(MAX_FRAGMENT).peekable();
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() { FLAG_FIN } else { 0 };
            self.seal_record(flags, chunk)?;
        }
        self.last_send = now;
        Ok(())
    }

    /// Encrypts `flags || chunk` and appends it as one record frame.
    fn seal_record(&mut self, flags: u8, chunk: &[u8]) -> Result<(), ChannelError> {
        let transport = match &mut self.state {
            State::Open { transport } | State::AwaitingConfirmation { transport, .. } => transport,
            _ => return Err(ChannelError::Dead),
        };
        self.scratch.clear();
        self.scratch.push(flags);
        self.scratch.extend_from_slice(chunk);
        let start = self.outbuf.len();
        self.outbuf
            .resize(start + HEADER_LEN + self.scratch.len() + TAG_LEN, 0);
        let (header, out) = self
            .outbuf
            .get_mut(start..)
            .and_then(|region| region.split_at_mut_checked(HEADER_LEN))
            .ok_or(ChannelError::Encrypt)?;
        let n = transport
            .write_message(&self.scratch, out)
            .map_err(|_| ChannelError::Encrypt)?;
        let len = u16::try_from(n).map_err(|_| ChannelError::Encrypt)?;
        let [hi, lo] = len.to_be_bytes();
        header.copy_from_slice(&[FRAME_RECORD, hi, lo]);
        self.outbuf.truncate(start + HEADER_LEN + n);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upgrade::UpgradeHeaders;

    fn pair(now: Instant) -> (ClientConnection, ServerConnection) {
        let server_key = MachinePrivate::from_bytes([2; 32]);
        let (mut client, req) = Connection::client(
            &MachinePrivate::from_bytes([1; 32]),
            &server_key.public(),
            CapabilityVersion::CURRENT,
            ChannelConfig::default(),
            [3; 32],
            now,
        )
        .unwrap();
        let cap = req.capability.to_string();
        let h = UpgradeHeaders {
            upgrade: Some("weft-control"),
            capability: Some(&cap),
            handshake: Some(&req.handshake),
        };
        let mut server =
            Connection::accept(&server_key, &h, ChannelConfig::default(), [4; 32], now)
                .unwrap()
                .connection;
        client
            .handle_input(&server.poll_transmit().unwrap(), now)
            .unwrap();
        (client, server)
    }

    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_record_that_is_not_a_client_message_is_refused() {
        let now = t0();
        for bad in [
            &b"not json"[..],
            b"{}",
            b"{\"map\":{}}",
            b"{\"frobnicate\":{}}",
            b"",
        ] {
            let (mut client, mut server) = pair(now);
            client.send_bytes(bad, now).unwrap();
            let err = server
                .handle_input(&client.poll_transmit().unwrap(), now)
                .unwrap_err();
            assert!(matches!(err, ChannelError::MalformedMessage(_)), "{err:?}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn a_record_with_unknown_flags_is_refused() {
        let now = t0();
        let (mut client, mut server) = pair(now);
        client.seal_record(0x02, b"{}").unwrap();
        let err = server
            .handle_input(&client.poll_transmit().unwrap(), now)
            .unwrap_err();
        assert_eq!(
            err,
            ChannelError::MalformedFrame("record with unknown flags")
        );
    }

    #[test]
    fn a_record_without_the_flags_byte_is_refused() {
        // An authenticated record with an empty plaintext: only a peer with
        // the keys can make one, and it is still refused.
        let now = t0();
        let (mut client, mut server) = pair(now);
        let State::Open { transport } = &mut client.state else {
            panic!()
        };
        let mut out = [0u8; TAG_LEN];
        let n = transport.write_message(&[], &mut out).unwrap();
        let mut frame = vec![FRAME_RECORD, 0, n as u8];
        frame.extend_from_slice(&out[..n]);
        assert!(matches!(
            server.handle_input(&frame, now),
            Err(ChannelError::MalformedFrame(_))
        ));
    }
}
