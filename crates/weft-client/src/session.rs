//! A [`Session`]: the node's whole conversation on one connection, driven
//! by the protocol crate's sans-IO [`ControlClient`]: register (with a key,
//! or interactively: the auth URL is reported and the follow-up long-poll
//! sent at once), then the map stream, whose full map and deltas become a
//! [`NetMap`] and a [`NetMapDiff`] per response.
//!
//! A session ends with its connection. To reconnect without losing the
//! netmap, [`Session::close`] returns the [`MapSession`]; hand it to the next
//! [`Session::start`] and the new stream's full map is diffed against the
//! last good netmap. [`crate::Backoff`] paces the attempts.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;
use weft_control_proto::{ClientError as ProtoError, NetMapDiff};
use weft_control_proto::{ClientEvent, ClientParams, Connection, ControlClient, MapSession};
use weft_types::control::{Refusal, Registered};
use weft_types::{Endpoint, HostInfo, NetMap};

use crate::channel::{ConnectOptions, Target};
use crate::driver::{self, Core};
use crate::{ClientError, http};

/// What happened in a session.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// The user must visit this URL; the follow-up is already waiting.
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
    /// The netmap changed.
    NetMap {
        /// What changed.
        diff: NetMapDiff,
        /// The netmap after the change.
        netmap: Arc<NetMap>,
    },
}

/// What the owner tells a running session.
#[derive(Debug)]
enum Cmd {
    Endpoints(Vec<Endpoint>),
    HostInfo(HostInfo),
}

/// One connection's conversation. Dropping it closes the connection.
#[derive(Debug)]
pub struct Session {
    url: String,
    cmds: mpsc::UnboundedSender<Cmd>,
    events: mpsc::Receiver<Result<SessionEvent, ClientError>>,
    task: Option<tokio::task::JoinHandle<SessionCore>>,
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
        let (tcp, leftover) = http::upgrade(&target.url, &request, opts.connect_timeout).await?;
        let session = map_session.unwrap_or_else(|| {
            MapSession::new(weft_control_proto::map_session::DEFAULT_STALL_TIMEOUT, now)
        });
        let mut client =
            ControlClient::new(conn, params, session, now).map_err(|e| proto_error(&url, e))?;
        if !leftover.is_empty() {
            client
                .handle_input(&leftover, now)
                .map_err(|e| proto_error(&url, e))?;
        }
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::channel(64);
        let core = SessionCore {
            url: url.clone(),
            client,
        };
        let task = tokio::spawn(driver::drive(core, tcp, cmd_rx, ev_tx));
        Ok(Session {
            url,
            cmds: cmd_tx,
            events: ev_rx,
            task: Some(task),
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

    /// Reports new host info.
    pub fn update_host_info(&self, host_info: HostInfo) {
        let _ = self.cmds.send(Cmd::HostInfo(host_info));
    }

    /// Closes the connection and returns the map session (the last good
    /// netmap) for the next connection.
    pub async fn close(mut self) -> Option<MapSession> {
        let (dead_tx, _) = mpsc::unbounded_channel();
        // Dropping the command sender ends the driver loop.
        self.cmds = dead_tx;
        let task = self.task.take()?;
        task.await.ok().map(|core| core.client.into_map_session())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

fn proto_error(url: &str, e: ProtoError) -> ClientError {
    match e {
        ProtoError::Channel(c) => ClientError::channel(url, c),
        ProtoError::Map(m) => ClientError::Map {
            url: url.to_owned(),
            source: m,
        },
        ProtoError::Server(p) => ClientError::server(url, p),
        ProtoError::Unexpected(what) => ClientError::Unexpected {
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
            Cmd::HostInfo(h) => self.client.update_host_info(h, now),
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
            ClientEvent::NetMap(diff) => match self.client.netmap() {
                Some(map) => SessionEvent::NetMap {
                    diff,
                    netmap: Arc::new(map.clone()),
                },
                None => return None,
            },
            // A session sends no checks (see [`crate::ssh_check`]); skip.
            ClientEvent::SshCheck(_) => return self.poll_output(),
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
