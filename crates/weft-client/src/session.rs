//! A [`Session`]: the node's conversation on one connection, driven by the
//! protocol crate's sans-IO [`ControlClient`] (the only implementation of
//! the conversation) over the crate's one I/O loop.
//!
//! Three ways to start, as the protocol crate's client has:
//! [`Session::start`] registers (with a key, or interactively: the auth URL
//! is reported and, when the user is at hand, the follow-up sent at once),
//! then follows the map stream, whose full map and deltas become a
//! [`NetMap`] and a [`NetMapDiff`] per response; [`Session::resume`] opens
//! the map stream at once for a key control already accepted;
//! [`Session::for_checks`] only carries SSH checks ([`crate::ssh_check`]).
//! [`register`] is one `register` exchange on a session of its own.
//!
//! A session ends with its connection. To reconnect without losing the
//! netmap, [`Session::close`] returns the [`MapSession`]; hand it to the next
//! session and the new stream's full map is diffed against the last good
//! netmap. [`crate::Backoff`] paces the attempts.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use weft_control_proto::{
    ClientEvent, ClientParams, Connection, ControlClient, ControlClientError, MapSession,
    NetMapDiff,
};
use weft_types::control::{
    Refusal, RegisterRequest, RegisterResponse, Registered, SshCheckDecision, SshCheckRequest,
    SshRecordingAck, SshRecordingChunk,
};
use weft_types::{DiscoPublic, Endpoint, HostInfo, NetMap};

use crate::ClientError;
use crate::channel::{ConnectOptions, Target};
use crate::driver::{self, AbortOnDrop, Core};

/// What happened in a session.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The user must visit this URL (with [`ClientParams::interactive`] the
    /// follow-up is already waiting).
    NeedsAuth {
        /// The URL to show.
        auth_url: String,
    },
    /// The node key is registered (the map stream follows if authorized
    /// and asked for).
    Registered(Registered),
    /// The node key has expired: make a new one, register it with this one
    /// as the old key.
    NodeKeyExpired,
    /// The logout went through.
    LoggedOut,
    /// Registration was refused; the message is for the user.
    Refused(Refusal),
    /// The netmap changed (or, with an empty diff, a response confirmed it).
    NetMap {
        /// What changed.
        diff: NetMapDiff,
        /// The netmap after the change.
        netmap: Arc<NetMap>,
    },
    /// An answer to a check sent with [`Session::send_ssh_check`].
    SshCheck(SshCheckDecision),
    /// An answer to a chunk sent with [`Session::send_ssh_recording`].
    SshRecording(SshRecordingAck),
}

/// What the owner tells a running session.
#[derive(Debug)]
enum Cmd {
    Endpoints(Vec<Endpoint>),
    HomeRelay(Option<u16>),
    HostInfo(HostInfo),
    SshCheck(SshCheckRequest),
    SshRecording(Box<SshRecordingChunk>),
}

/// How a session's conversation begins (see the module docs).
enum Opening {
    Register(ClientParams),
    Resume(ClientParams),
    Checks,
}

/// One connection's conversation. Dropping it closes the connection.
#[derive(Debug)]
pub struct Session {
    url: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<Result<SessionEvent, ClientError>>,
    task: Option<AbortOnDrop<SessionCore>>,
}

impl Session {
    /// Connects and starts the conversation; the `register` goes out as
    /// soon as the handshake completes. `map_session` carries the netmap of
    /// an earlier connection (`None` on the first).
    ///
    /// # Errors
    /// [`ClientError::Unreachable`], [`ClientError::Upgrade`],
    /// [`ClientError::Channel`].
    pub async fn start(
        target: &Target,
        params: ClientParams,
        map_session: Option<MapSession>,
        opts: &ConnectOptions,
    ) -> Result<Session, ClientError> {
        Self::open(target, Opening::Register(params), map_session, opts).await
    }

    /// Connects and opens the map stream at once, for a node key control
    /// accepted on an earlier connection (no `register`; `params.auth` is
    /// not used). A key control no longer knows ends the session with a
    /// [`ClientError::Server`] of code `not_registered`.
    ///
    /// # Errors
    /// As [`Session::start`].
    pub async fn resume(
        target: &Target,
        params: ClientParams,
        map_session: Option<MapSession>,
        opts: &ConnectOptions,
    ) -> Result<Session, ClientError> {
        Self::open(target, Opening::Resume(params), map_session, opts).await
    }

    /// Connects for SSH checks only ([`Session::send_ssh_check`]).
    ///
    /// # Errors
    /// As [`Session::start`].
    pub async fn for_checks(
        target: &Target,
        opts: &ConnectOptions,
    ) -> Result<Session, ClientError> {
        Self::open(target, Opening::Checks, None, opts).await
    }

    async fn open(
        target: &Target,
        opening: Opening,
        map_session: Option<MapSession>,
        opts: &ConnectOptions,
    ) -> Result<Session, ClientError> {
        let url = target.url.to_string();
        let now = driver::now();
        let (conn, request) = Connection::client(
            &target.machine_key,
            &target.server_key,
            opts.version,
            opts.channel.clone(),
            driver::seed(),
            now,
        )
        .map_err(|e| ClientError::channel(&url, e))?;
        let upgraded = opts
            .dialer
            .0
            .upgrade(&target.url, &request, opts.connect_timeout)
            .await?;
        let now = driver::now();
        let session = map_session.unwrap_or_else(|| {
            MapSession::new(weft_control_proto::map_session::DEFAULT_STALL_TIMEOUT, now)
        });
        let started = match opening {
            Opening::Register(params) => ControlClient::new(conn, params, session, now),
            Opening::Resume(params) => ControlClient::resume(conn, params, session, now),
            Opening::Checks => Ok(ControlClient::for_checks(conn, now)),
        };
        let mut client = started.map_err(|e| proto_error(&url, e))?;
        if !upgraded.leftover.is_empty() {
            client
                .handle_input(&upgraded.leftover, now)
                .map_err(|e| proto_error(&url, e))?;
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let core = SessionCore {
            url: url.clone(),
            client,
        };
        let task = tokio::spawn(driver::drive(core, upgraded.io, cmd_rx, ev_tx));
        Ok(Session {
            url,
            cmds: cmd_tx,
            events: ev_rx,
            task: Some(AbortOnDrop::new(task)),
        })
    }

    /// Returns the server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Returns the next event.
    ///
    /// # Errors
    /// The error that ended the connection ([`ClientError::Closed`] for a
    /// clean close); later calls return [`ClientError::Closed`].
    pub async fn next_event(&mut self) -> Result<SessionEvent, ClientError> {
        match self.events.recv().await {
            Some(r) => r,
            None => Err(ClientError::Closed {
                url: self.url.clone(),
            }),
        }
    }

    /// Reports new endpoints (sent while the map stream is open, otherwise
    /// with the next map request).
    pub fn update_endpoints(&self, endpoints: Vec<Endpoint>) {
        let _ = self.cmds.send(Cmd::Endpoints(endpoints));
    }

    /// Reports the node's home relay region (sent with the endpoints).
    pub fn update_home_relay(&self, home_relay: Option<u16>) {
        let _ = self.cmds.send(Cmd::HomeRelay(home_relay));
    }

    /// Reports new host info.
    pub fn update_host_info(&self, host_info: HostInfo) {
        let _ = self.cmds.send(Cmd::HostInfo(host_info));
    }

    /// Sends an SSH check; its decisions come as [`SessionEvent::SshCheck`].
    pub fn send_ssh_check(&self, req: SshCheckRequest) {
        let _ = self.cmds.send(Cmd::SshCheck(req));
    }

    /// Sends a piece of an SSH recording; the answer comes as
    /// [`SessionEvent::SshRecording`].
    pub fn send_ssh_recording(&self, chunk: SshRecordingChunk) {
        let _ = self.cmds.send(Cmd::SshRecording(Box::new(chunk)));
    }

    /// Closes the connection and returns the map session (the last good
    /// netmap) for the next connection.
    pub async fn close(mut self) -> Option<MapSession> {
        let (dead_tx, _) = mpsc::unbounded_channel();
        // Dropping the command sender ends the driver loop.
        self.cmds = dead_tx;
        let task = self.task.take()?;
        task.join()
            .await
            .ok()
            .map(|core| core.client.into_map_session())
    }
}

/// Sends one `register` on a connection of its own and returns the answer:
/// a follow-up (`auth: followup`) waits until the user finished at the auth
/// URL or it expired; a new auth URL is returned, not followed.
///
/// # Errors
/// Connection errors, [`ClientError::Server`] if the server answered with
/// an error.
pub async fn register(
    target: &Target,
    req: RegisterRequest,
    opts: &ConnectOptions,
) -> Result<RegisterResponse, ClientError> {
    let params = ClientParams {
        node_key: req.node_key,
        old_node_key: req.old_node_key,
        auth: req.auth,
        expiry: req.expiry,
        ephemeral: req.ephemeral,
        host_info: req.host_info,
        // Only map requests carry these; no map follows here.
        disco_key: DiscoPublic::from_bytes([0; 32]),
        endpoints: Vec::new(),
        map: false,
        interactive: false,
    };
    let mut session = Session::start(target, params, None, opts).await?;
    loop {
        let answer = match session.next_event().await? {
            SessionEvent::NeedsAuth { auth_url } => RegisterResponse::NeedsAuth { auth_url },
            SessionEvent::Registered(r) => RegisterResponse::Registered(r),
            SessionEvent::NodeKeyExpired => RegisterResponse::NodeKeyExpired,
            SessionEvent::LoggedOut => RegisterResponse::LoggedOut,
            SessionEvent::Refused(r) => RegisterResponse::Refused(r),
            SessionEvent::NetMap { .. }
            | SessionEvent::SshCheck(_)
            | SessionEvent::SshRecording(_) => continue,
        };
        return Ok(answer);
    }
}

fn proto_error(url: &str, e: ControlClientError) -> ClientError {
    match e {
        ControlClientError::Channel(c) => ClientError::channel(url, c),
        ControlClientError::Map(m) => ClientError::Map {
            url: url.to_owned(),
            source: m,
        },
        ControlClientError::Server(p) => ClientError::server(url, p),
        ControlClientError::Unexpected(what) => ClientError::Unexpected {
            url: url.to_owned(),
            what,
        },
    }
}

#[derive(Debug)]
struct SessionCore {
    url: String,
    client: ControlClient,
}

impl Core for SessionCore {
    type Cmd = Cmd;
    type Out = SessionEvent;

    fn url(&self) -> &str {
        &self.url
    }

    fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ClientError> {
        self.client
            .handle_input(bytes, now)
            .map_err(|e| proto_error(&self.url, e))
    }

    fn handle_eof(&mut self) -> Result<(), ClientError> {
        self.client
            .handle_eof()
            .map_err(|e| proto_error(&self.url, e))
    }

    fn handle_cmd(&mut self, cmd: Cmd, now: Instant) -> Result<(), ClientError> {
        let r = match cmd {
            Cmd::Endpoints(e) => self.client.update_endpoints(e, now),
            Cmd::HomeRelay(r) => self.client.update_home_relay(r, now),
            Cmd::HostInfo(h) => self.client.update_host_info(h, now),
            Cmd::SshCheck(req) => self.client.send_ssh_check(req, now),
            Cmd::SshRecording(chunk) => self.client.send_ssh_recording(*chunk, now),
        };
        r.map_err(|e| proto_error(&self.url, e))
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.client.poll_transmit()
    }

    fn poll_output(&mut self) -> Option<SessionEvent> {
        Some(match self.client.poll_event()? {
            ClientEvent::NeedsAuth { auth_url } => SessionEvent::NeedsAuth { auth_url },
            ClientEvent::Registered(r) => SessionEvent::Registered(r),
            ClientEvent::NodeKeyExpired => SessionEvent::NodeKeyExpired,
            ClientEvent::LoggedOut => SessionEvent::LoggedOut,
            ClientEvent::Refused(r) => SessionEvent::Refused(r),
            ClientEvent::NetMap(diff) => {
                // A netmap event follows an accepted map response: the
                // netmap is there.
                let netmap = Arc::new(self.client.netmap()?.clone());
                SessionEvent::NetMap { diff, netmap }
            }
            ClientEvent::SshCheck(d) => SessionEvent::SshCheck(d),
            ClientEvent::SshRecording(a) => SessionEvent::SshRecording(a),
        })
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout().map(|(t, _)| t)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        self.client
            .handle_timeout(now)
            .map_err(|e| proto_error(&self.url, e))
    }
}
