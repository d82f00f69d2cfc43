//! The node's side of one control connection, sans-IO: register, follow an
//! auth URL, open the map stream, keep it, report endpoint and host info
//! changes, carry SSH checks. It joins a [`ClientConnection`] and a
//! [`MapSession`] so a driver only moves bytes and time and acts on
//! [`ClientEvent`]s. It is the node's only implementation of the
//! conversation: `weft-client`'s tokio driver runs it for `weftd`, the
//! tests and the load generator.
//!
//! A connection starts one of three ways:
//! - [`ControlClient::new`]: `register` first (with the proof of consent in
//!   [`ClientParams::auth`]), then the map stream if asked and authorized;
//! - [`ControlClient::resume`]: the map stream at once, for a node key
//!   control accepted on an earlier connection (a reconnect);
//! - [`ControlClient::for_checks`]: neither; the connection carries SSH
//!   checks ([`ControlClient::send_ssh_check`]) only.
//!
//! Driving loop (the same three steps as every core):
//!
//! 1. Feed socket bytes ([`ControlClient::handle_input`], then
//!    [`ControlClient::handle_eof`] at end of stream); call
//!    [`ControlClient::update_endpoints`] / [`ControlClient::update_host_info`]
//!    as things change.
//! 2. Write every [`ControlClient::poll_transmit`] buffer; act on every
//!    [`ControlClient::poll_event`].
//! 3. Sleep until [`ControlClient::poll_timeout`], then call
//!    [`ControlClient::handle_timeout`].
//!
//! Any error ends the connection. To reconnect, take the map session out
//! with [`ControlClient::into_map_session`] and hand it to the next
//! connection's client: the last good netmap stays in force and the next
//! full map is diffed against it.
//!
//! What it does not decide: key handling (making a new node key after
//! [`ClientEvent::NodeKeyExpired`], persisting keys), when to ask the user
//! to log in ([`ClientParams::interactive`]), retries and backoff, and what
//! to show the user. Those are the daemon's.
//!
//! Everything the node tells control is built here and only here: the
//! `register` request from [`ClientParams`] ([`ControlClient::new`]), the
//! `map` request ([`ControlClient::resume`] and after registering), and the
//! endpoint and host-info updates. A field the node reports one day (a
//! home relay, a STUN-learned endpoint) is a field of [`ClientParams`] and
//! a line in the request built from it.

use std::collections::VecDeque;
use std::time::Instant;

use weft_types::control::{
    ClientMessage, EndpointUpdate, ExpiryRequest, MapRequest, ProtocolError, Refusal,
    RefusalReason, RegisterAuth, RegisterRequest, RegisterResponse, Registered, ServerMessage,
    SshCheckDecision, SshCheckRequest, SshRecordingAck, SshRecordingChunk,
};
use weft_types::{CapabilityVersion, DiscoPublic, Endpoint, HostInfo, NetMap, NodePublic};

use crate::connection::{ChannelError, ClientConnection, Event};
use crate::map_session::{DEFAULT_STALL_TIMEOUT, MapError, MapSession, NetMapDiff};

/// What the node wants from a connection and tells control about itself.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// The node key to register and map.
    pub node_key: NodePublic,
    /// The key being replaced (rotation). `None`: not a rotation.
    pub old_node_key: Option<NodePublic>,
    /// How consent is proven for the first `register`.
    pub auth: RegisterAuth,
    /// The expiry to ask for; [`ExpiryRequest::Now`] logs out.
    pub expiry: ExpiryRequest,
    /// Register as an ephemeral node.
    pub ephemeral: bool,
    /// What the node reports about its host.
    pub host_info: HostInfo,
    /// This daemon run's disco key.
    pub disco_key: DiscoPublic,
    /// Current endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Open a streaming map once registered and authorized. `false`: stop
    /// after the registration answer (e.g. `weft login` without `up`).
    pub map: bool,
    /// The user is at hand (asked for an interactive login): when control
    /// answers with an auth URL, a follow-up `register` waits on this
    /// connection until the login finishes, and an expired URL is replaced
    /// by a fresh one. `false`: the URL is reported
    /// ([`ClientEvent::NeedsAuth`]) and the connection has nothing more to
    /// do; register again with [`RegisterAuth::Followup`] once the user
    /// asks.
    pub interactive: bool,
}

/// What happened on the connection that the daemon acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The user must visit this URL. With [`ClientParams::interactive`] the
    /// client is already waiting for it (a follow-up `register` is out).
    NeedsAuth {
        /// The URL to show.
        auth_url: String,
    },
    /// The node key is registered. If `machine_authorized` and
    /// [`ClientParams::map`], the map stream has been requested.
    Registered(Registered),
    /// The node key has expired: make a new one and reconnect with it and
    /// this one as `old_node_key`.
    NodeKeyExpired,
    /// The logout went through.
    LoggedOut,
    /// Registration was refused; show `message` to the user. After an
    /// expired auth URL on an interactive connection the client has already
    /// asked for a new one.
    Refused(Refusal),
    /// The netmap changed; read it from [`ControlClient::netmap`].
    NetMap(NetMapDiff),
    /// An answer to a check sent with [`ControlClient::send_ssh_check`];
    /// feed it to that check's [`crate::SshCheckCall`].
    SshCheck(SshCheckDecision),
    /// An answer to a chunk sent with [`ControlClient::send_ssh_recording`].
    SshRecording(SshRecordingAck),
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlClientError {
    /// The channel failed.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The map stream broke; reconnect for a fresh full map.
    #[error(transparent)]
    Map(#[from] MapError),
    /// The server sent a fatal error.
    #[error("control server error ({code:?}): {message}", code = .0.code, message = .0.message)]
    Server(ProtocolError),
    /// The server sent a message that does not fit the conversation.
    #[error("unexpected message from the control server: {0}")]
    Unexpected(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A `register` is out; `followup`: it waits for an interactive login.
    Registering { followup: bool },
    /// The map stream is open.
    Mapping,
    /// Nothing more to do on this connection (registered without a map,
    /// waiting for the user, refused, logged out, key expired, or a
    /// connection for SSH checks).
    Idle,
}

/// One control connection of a node. See the module docs.
#[derive(Debug)]
pub struct ControlClient {
    conn: ClientConnection,
    session: MapSession,
    /// `None` on a connection for SSH checks only.
    params: Option<ClientParams>,
    /// The home relay region last set ([`ControlClient::update_home_relay`]).
    home_relay: Option<u16>,
    version: CapabilityVersion,
    phase: Phase,
    events: VecDeque<ClientEvent>,
}

impl ControlClient {
    /// Starts the conversation on a fresh connection with a `register`,
    /// queued at once (it goes out when the handshake completes).
    /// `session` carries the netmap from an earlier connection, or is
    /// `MapSession::new` on the first.
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] if the connection is already dead.
    pub fn new(
        conn: ClientConnection,
        params: ClientParams,
        session: MapSession,
        now: Instant,
    ) -> Result<Self, ControlClientError> {
        let auth = params.auth.clone();
        let mut client = Self::start(conn, Some(params), session, now);
        client.send_register(auth, now)?;
        Ok(client)
    }

    /// Starts the conversation on a fresh connection with the map stream,
    /// for a node key control accepted before (the `auth` in `params` is not
    /// used). A key control no longer knows ends the connection with a
    /// `not_registered` server error: register again then.
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] if the connection is already dead.
    pub fn resume(
        conn: ClientConnection,
        params: ClientParams,
        session: MapSession,
        now: Instant,
    ) -> Result<Self, ControlClientError> {
        let mut client = Self::start(conn, Some(params), session, now);
        client.open_map(now)?;
        Ok(client)
    }

    /// Starts a connection that carries SSH checks only: nothing is sent
    /// until [`ControlClient::send_ssh_check`].
    pub fn for_checks(conn: ClientConnection, now: Instant) -> Self {
        Self::start(conn, None, MapSession::new(DEFAULT_STALL_TIMEOUT, now), now)
    }

    fn start(
        conn: ClientConnection,
        params: Option<ClientParams>,
        mut session: MapSession,
        now: Instant,
    ) -> Self {
        session.restart(now);
        Self {
            version: conn.version(),
            conn,
            session,
            params,
            home_relay: None,
            phase: Phase::Idle,
            events: VecDeque::new(),
        }
    }

    /// Returns the current netmap (kept from an earlier connection until a
    /// new full map arrives).
    pub fn netmap(&self) -> Option<&NetMap> {
        self.session.netmap()
    }

    /// Ends this client, keeping the map session for the next connection.
    pub fn into_map_session(self) -> MapSession {
        self.session
    }

    /// Feeds bytes read from the socket.
    ///
    /// # Errors
    /// A [`ControlClientError`]; the connection is over.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ControlClientError> {
        self.conn.handle_input(bytes, now)?;
        while let Some(event) = self.conn.poll_event() {
            match event {
                Event::Established => {}
                Event::Message(msg) => self.handle_message(msg, now)?,
            }
        }
        Ok(())
    }

    /// Reports the end of the stream.
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] for a truncated stream.
    pub fn handle_eof(&mut self) -> Result<(), ControlClientError> {
        Ok(self.conn.handle_eof()?)
    }

    /// Sends the node's new endpoints (only while the map stream is open;
    /// otherwise they go in the next `MapRequest`).
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] on a dead connection.
    pub fn update_endpoints(
        &mut self,
        endpoints: Vec<Endpoint>,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        if let Some(p) = &mut self.params {
            p.endpoints.clone_from(&endpoints);
        }
        self.send_endpoints(endpoints, now)
    }

    /// Sends `endpoints` with our home relay while the map stream is open.
    fn send_endpoints(
        &mut self,
        endpoints: Vec<Endpoint>,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        if self.phase == Phase::Mapping {
            let home_relay = self.home_relay;
            self.conn.send(
                &ClientMessage::Endpoints(EndpointUpdate {
                    endpoints,
                    home_relay,
                }),
                now,
            )?;
        }
        Ok(())
    }

    /// Sets the node's home relay region, sent with the endpoints (at once
    /// while the map stream is open, otherwise in the next `MapRequest`).
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] on a dead connection.
    pub fn update_home_relay(
        &mut self,
        home_relay: Option<u16>,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        if self.home_relay == home_relay {
            return Ok(());
        }
        self.home_relay = home_relay;
        match self.params.as_ref().map(|p| p.endpoints.clone()) {
            Some(endpoints) => self.send_endpoints(endpoints, now),
            None => Ok(()),
        }
    }

    /// Sends the node's new host info (only while the map stream is open;
    /// otherwise it goes in the next request).
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] on a dead connection.
    pub fn update_host_info(
        &mut self,
        host_info: HostInfo,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        if let Some(p) = &mut self.params {
            p.host_info = host_info.clone();
        }
        if self.phase == Phase::Mapping {
            self.conn.send(&ClientMessage::HostInfo(host_info), now)?;
        }
        Ok(())
    }

    /// Sends an SSH check (capability version 2) on this connection, in any
    /// phase; its decisions come back as [`ClientEvent::SshCheck`].
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] on a dead connection.
    pub fn send_ssh_check(
        &mut self,
        req: SshCheckRequest,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        self.conn.send(&ClientMessage::SshCheck(req), now)?;
        Ok(())
    }

    /// Sends a piece of an SSH session recording (capability version 3) on
    /// this connection, in any phase; control answers each with
    /// [`ClientEvent::SshRecording`].
    ///
    /// # Errors
    /// [`ControlClientError::Channel`] on a dead connection.
    pub fn send_ssh_recording(
        &mut self,
        chunk: SshRecordingChunk,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        self.conn.send(&ClientMessage::SshRecording(chunk), now)?;
        Ok(())
    }

    /// Returns bytes to write to the socket.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.conn.poll_transmit()
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Returns when [`ControlClient::handle_timeout`] is due, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let conn = self.conn.poll_timeout();
        let map = if self.phase == Phase::Mapping {
            self.session.poll_timeout()
        } else {
            None
        };
        match (conn, map) {
            (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// Advances timers (handshake and idle timeouts, keep-alives, map stall).
    ///
    /// # Errors
    /// A [`ControlClientError`] for a timeout; the connection is over.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ControlClientError> {
        self.conn.handle_timeout(now)?;
        if self.phase == Phase::Mapping {
            self.session.handle_timeout(now)?;
        }
        Ok(())
    }

    /// Sends a `register` built from the params with `auth`. Only a client
    /// made by [`ControlClient::new`] registers.
    fn send_register(
        &mut self,
        auth: RegisterAuth,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        let Some(p) = &self.params else {
            return Ok(());
        };
        let followup = matches!(auth, RegisterAuth::Followup { .. });
        let req = RegisterRequest {
            version: self.version,
            node_key: p.node_key,
            old_node_key: p.old_node_key,
            auth,
            expiry: p.expiry,
            ephemeral: p.ephemeral,
            host_info: p.host_info.clone(),
        };
        self.conn.send(&ClientMessage::Register(req), now)?;
        self.phase = Phase::Registering { followup };
        Ok(())
    }

    /// Sends the streaming `map` request built from the params.
    fn open_map(&mut self, now: Instant) -> Result<(), ControlClientError> {
        let Some(p) = &self.params else {
            return Ok(());
        };
        let req = MapRequest {
            version: self.version,
            node_key: p.node_key,
            disco_key: p.disco_key,
            endpoints: p.endpoints.clone(),
            home_relay: self.home_relay,
            host_info: p.host_info.clone(),
            stream: true,
        };
        self.conn.send(&ClientMessage::Map(req), now)?;
        self.session.restart(now);
        self.phase = Phase::Mapping;
        Ok(())
    }

    fn handle_message(
        &mut self,
        msg: ServerMessage,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        match (msg, self.phase) {
            (ServerMessage::KeepAlive(_), _) => {
                if self.phase == Phase::Mapping {
                    self.session.handle_keep_alive(now);
                }
            }
            (ServerMessage::Error(e), _) => return Err(ControlClientError::Server(e)),
            (ServerMessage::Register(resp), Phase::Registering { followup }) => {
                self.handle_register(resp, followup, now)?
            }
            (ServerMessage::Register(_), _) => {
                return Err(ControlClientError::Unexpected(
                    "register answer without a request",
                ));
            }
            (ServerMessage::Map(resp), Phase::Mapping) => {
                let diff = self.session.handle_response(resp, now)?;
                self.events.push_back(ClientEvent::NetMap(diff));
            }
            (ServerMessage::Map(_), _) => {
                return Err(ControlClientError::Unexpected(
                    "map response without a stream",
                ));
            }
            (ServerMessage::SshCheck(d), _) => self.events.push_back(ClientEvent::SshCheck(d)),
            (ServerMessage::SshRecording(a), _) => {
                self.events.push_back(ClientEvent::SshRecording(a));
            }
        }
        Ok(())
    }

    fn handle_register(
        &mut self,
        resp: RegisterResponse,
        followup: bool,
        now: Instant,
    ) -> Result<(), ControlClientError> {
        self.phase = Phase::Idle;
        let (interactive, map, logout) = self.params.as_ref().map_or((false, false, false), |p| {
            (p.interactive, p.map, p.expiry == ExpiryRequest::Now)
        });
        match resp {
            RegisterResponse::NeedsAuth { auth_url } => {
                if interactive {
                    self.send_register(
                        RegisterAuth::Followup {
                            auth_url: auth_url.clone(),
                        },
                        now,
                    )?;
                }
                self.events.push_back(ClientEvent::NeedsAuth { auth_url });
            }
            RegisterResponse::Registered(r) => {
                let authorized = r.machine_authorized;
                self.events.push_back(ClientEvent::Registered(r));
                if authorized && map && !logout {
                    self.open_map(now)?;
                }
            }
            RegisterResponse::NodeKeyExpired => {
                self.events.push_back(ClientEvent::NodeKeyExpired);
            }
            RegisterResponse::LoggedOut => {
                self.events.push_back(ClientEvent::LoggedOut);
            }
            RegisterResponse::Refused(r) => {
                let expired_url = followup && r.reason == RefusalReason::AuthUrlExpired;
                self.events.push_back(ClientEvent::Refused(r));
                if expired_url && interactive {
                    // Start over: the next answer carries a fresh URL.
                    self.send_register(RegisterAuth::None, now)?;
                }
            }
        }
        Ok(())
    }
}
