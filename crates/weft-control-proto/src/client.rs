//! The node's side of one control connection, sans-IO: register, follow an
//! auth URL, open the map stream, keep it, report endpoint and host info
//! changes. It joins a [`ClientConnection`] and a [`MapSession`] so the
//! daemon's driver only moves bytes and time and acts on [`ClientEvent`]s.
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
//! [`ControlClient::new`]: the last good netmap stays in force and the next
//! full map is diffed against it.
//!
//! What it does not decide: key handling (making a new node key after
//! [`ClientEvent::NodeKeyExpired`], persisting keys), retries and backoff,
//! and what to show the user. Those are the daemon's.

use std::collections::VecDeque;
use std::time::Instant;

use weft_types::control::{
    ClientMessage, EndpointUpdate, ExpiryRequest, MapRequest, ProtocolError, Refusal, RegisterAuth,
    RegisterRequest, RegisterResponse, Registered, ServerMessage, SshCheckDecision,
    SshCheckRequest,
};
use weft_types::{CapabilityVersion, DiscoPublic, Endpoint, HostInfo, NetMap, NodePublic};

use crate::connection::{ChannelError, ClientConnection, Event};
use crate::map_session::{MapError, MapSession, NetMapDiff};

/// What the node wants from this connection.
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
}

/// What happened on the connection that the daemon acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The user must visit this URL; the client is already waiting for it
    /// (a follow-up `register` is out).
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
    /// Registration was refused; show `message` to the user.
    Refused(Refusal),
    /// The netmap changed; read it from [`ControlClient::netmap`].
    NetMap(NetMapDiff),
    /// An answer to a check sent with [`ControlClient::send_ssh_check`];
    /// feed it to that check's [`crate::SshCheckCall`].
    SshCheck(SshCheckDecision),
}

/// Why the connection ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
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
    /// A `register` is out.
    Registering,
    /// The map stream is open.
    Mapping,
    /// Nothing more to do on this connection (registered without a map,
    /// refused, logged out, key expired).
    Idle,
}

/// One control connection of a node. See the module docs.
#[derive(Debug)]
pub struct ControlClient {
    conn: ClientConnection,
    session: MapSession,
    params: ClientParams,
    version: CapabilityVersion,
    phase: Phase,
    events: VecDeque<ClientEvent>,
}

impl ControlClient {
    /// Starts the conversation on a fresh connection: the `register` is
    /// queued at once (it goes out when the handshake completes).
    /// `session` carries the netmap from an earlier connection, or is
    /// `MapSession::new` on the first.
    ///
    /// # Errors
    /// [`ClientError::Channel`] if the connection is already dead.
    pub fn new(
        conn: ClientConnection,
        params: ClientParams,
        mut session: MapSession,
        now: Instant,
    ) -> Result<Self, ClientError> {
        session.restart(now);
        let version = conn.version();
        let mut client = Self {
            conn,
            session,
            params,
            version,
            phase: Phase::Registering,
            events: VecDeque::new(),
        };
        let auth = client.params.auth.clone();
        client.send_register(auth, now)?;
        Ok(client)
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
    /// A [`ClientError`]; the connection is over.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ClientError> {
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
    /// [`ClientError::Channel`] for a truncated stream.
    pub fn handle_eof(&mut self) -> Result<(), ClientError> {
        Ok(self.conn.handle_eof()?)
    }

    /// Sends the node's new endpoints (only while the map stream is open;
    /// otherwise they go in the next `MapRequest`).
    ///
    /// # Errors
    /// [`ClientError::Channel`] on a dead connection.
    pub fn update_endpoints(
        &mut self,
        endpoints: Vec<Endpoint>,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.params.endpoints.clone_from(&endpoints);
        if self.phase == Phase::Mapping {
            self.conn
                .send(&ClientMessage::Endpoints(EndpointUpdate { endpoints }), now)?;
        }
        Ok(())
    }

    /// Sends the node's new host info (only while the map stream is open).
    ///
    /// # Errors
    /// [`ClientError::Channel`] on a dead connection.
    pub fn update_host_info(
        &mut self,
        host_info: HostInfo,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.params.host_info = host_info.clone();
        if self.phase == Phase::Mapping {
            self.conn.send(&ClientMessage::HostInfo(host_info), now)?;
        }
        Ok(())
    }

    /// Sends an SSH check (capability version 2) on this connection, in any
    /// phase; its decisions come back as [`ClientEvent::SshCheck`].
    ///
    /// # Errors
    /// [`ClientError::Channel`] on a dead connection.
    pub fn send_ssh_check(
        &mut self,
        req: SshCheckRequest,
        now: Instant,
    ) -> Result<(), ClientError> {
        self.conn.send(&ClientMessage::SshCheck(req), now)?;
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
    /// A [`ClientError`] for a timeout; the connection is over.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        self.conn.handle_timeout(now)?;
        if self.phase == Phase::Mapping {
            self.session.handle_timeout(now)?;
        }
        Ok(())
    }

    fn send_register(&mut self, auth: RegisterAuth, now: Instant) -> Result<(), ClientError> {
        let p = &self.params;
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
        Ok(())
    }

    fn handle_message(&mut self, msg: ServerMessage, now: Instant) -> Result<(), ClientError> {
        match (msg, self.phase) {
            (ServerMessage::KeepAlive(_), _) => {
                if self.phase == Phase::Mapping {
                    self.session.handle_keep_alive(now);
                }
            }
            (ServerMessage::Error(e), _) => return Err(ClientError::Server(e)),
            (ServerMessage::Register(resp), Phase::Registering) => {
                self.handle_register(resp, now)?
            }
            (ServerMessage::Register(_), _) => {
                return Err(ClientError::Unexpected("register answer without a request"));
            }
            (ServerMessage::Map(resp), Phase::Mapping) => {
                let diff = self.session.handle_response(resp, now)?;
                self.events.push_back(ClientEvent::NetMap(diff));
            }
            (ServerMessage::Map(_), _) => {
                return Err(ClientError::Unexpected("map response without a stream"));
            }
            (ServerMessage::SshCheck(d), _) => self.events.push_back(ClientEvent::SshCheck(d)),
        }
        Ok(())
    }

    fn handle_register(&mut self, resp: RegisterResponse, now: Instant) -> Result<(), ClientError> {
        match resp {
            RegisterResponse::NeedsAuth { auth_url } => {
                self.send_register(
                    RegisterAuth::Followup {
                        auth_url: auth_url.clone(),
                    },
                    now,
                )?;
                self.events.push_back(ClientEvent::NeedsAuth { auth_url });
            }
            RegisterResponse::Registered(r) => {
                let authorized = r.machine_authorized;
                self.events.push_back(ClientEvent::Registered(r));
                if authorized && self.params.map && self.params.expiry != ExpiryRequest::Now {
                    let p = &self.params;
                    let req = MapRequest {
                        version: self.version,
                        node_key: p.node_key,
                        disco_key: p.disco_key,
                        endpoints: p.endpoints.clone(),
                        host_info: p.host_info.clone(),
                        stream: true,
                    };
                    self.conn.send(&ClientMessage::Map(req), now)?;
                    self.session.restart(now);
                    self.phase = Phase::Mapping;
                } else {
                    self.phase = Phase::Idle;
                }
            }
            RegisterResponse::NodeKeyExpired => {
                self.events.push_back(ClientEvent::NodeKeyExpired);
                self.phase = Phase::Idle;
            }
            RegisterResponse::LoggedOut => {
                self.events.push_back(ClientEvent::LoggedOut);
                self.phase = Phase::Idle;
            }
            RegisterResponse::Refused(r) => {
                self.events.push_back(ClientEvent::Refused(r));
                self.phase = Phase::Idle;
            }
        }
        Ok(())
    }
}
