//! A [`Channel`]: one authenticated control connection that carries typed
//! messages both ways, with no conversation of its own: the caller decides
//! what to send and what the answers mean. It is for tests and tools that
//! speak the protocol by hand (a malformed request, a message out of
//! turn); a node talks to control through [`crate::Session`], which runs
//! the protocol's conversation. Also here: [`Target`] and
//! [`ConnectOptions`], shared by both.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use tokio::sync::mpsc;
use weft_control_proto::{ChannelConfig, ClientConnection, Connection, Event};
use weft_types::control::{ClientMessage, ServerMessage};
use weft_types::{CapabilityVersion, MachinePrivate, MachinePublic};

use crate::dial::SharedDialer;
use crate::driver::{self, AbortOnDrop, Core};
use crate::http::{self, io_cause};
use crate::{ClientError, ControlUrl};

/// Who connects where: the server URL, this machine's key and the server
/// key it pinned.
#[derive(Debug, Clone)]
pub struct Target {
    /// The control server.
    pub url: ControlUrl,
    /// This machine's key (the Noise static key).
    pub machine_key: MachinePrivate,
    /// The server's static key, pinned at first contact (`GET /key`).
    pub server_key: MachinePublic,
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Time for TCP, the upgrade and the handshake together.
    pub connect_timeout: Duration,
    /// Limits and timers of the channel.
    pub channel: ChannelConfig,
    /// The capability version to speak.
    pub version: CapabilityVersion,
    /// How the server is reached ([`crate::TcpDialer`] by default).
    pub dialer: SharedDialer,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connect_timeout: http::DEFAULT_CONNECT_TIMEOUT,
            channel: ChannelConfig::default(),
            version: CapabilityVersion::CURRENT,
            dialer: SharedDialer::default(),
        }
    }
}

/// One upgraded, authenticated control connection.
///
/// Dropping it closes the connection.
#[derive(Debug)]
pub struct Channel {
    url: String,
    cmds: mpsc::UnboundedSender<ClientMessage>,
    msgs: mpsc::Receiver<Result<ServerMessage, ClientError>>,
    _task: AbortOnDrop<ChannelCore>,
}

impl Channel {
    /// Connects, upgrades and completes the Noise handshake (so a wrong
    /// pinned key fails here, not on the first message).
    ///
    /// # Errors
    /// [`ClientError::Unreachable`], [`ClientError::Upgrade`],
    /// [`ClientError::Channel`] (e.g. `HandshakeFailed` when the server does
    /// not hold the pinned key).
    pub async fn connect(target: &Target, opts: &ConnectOptions) -> Result<Channel, ClientError> {
        let url = target.url.to_string();
        let (mut conn, request) = Connection::client(
            &target.machine_key,
            &target.server_key,
            opts.version,
            opts.channel.clone(),
            driver::seed(),
            driver::now(),
        )
        .map_err(|e| ClientError::channel(&url, e))?;
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let upgraded = opts
            .dialer
            .0
            .upgrade(&target.url, &request, opts.connect_timeout)
            .await?;
        let mut tcp = upgraded.io;
        let established = async {
            let mut input = upgraded.leftover.to_vec();
            let mut buf = vec![0u8; 4096];
            loop {
                if !input.is_empty() {
                    conn.handle_input(&input, driver::now())
                        .map_err(|e| ClientError::channel(&url, e))?;
                    input.clear();
                }
                if conn.is_established() {
                    return Ok(());
                }
                match tcp.read(&mut buf).await {
                    Ok(0) => {
                        let e = conn
                            .handle_eof()
                            .err()
                            .unwrap_or(weft_control_proto::ChannelError::ClosedDuringHandshake);
                        return Err(ClientError::channel(&url, e));
                    }
                    Ok(n) => input.extend_from_slice(
                        buf.get(..n)
                            .expect("read returned more bytes than the buffer holds"),
                    ),
                    Err(e) => return Err(ClientError::unreachable(&url, io_cause(&e))),
                }
            }
        };
        tokio::time::timeout_at(deadline, established)
            .await
            .map_err(|_| {
                ClientError::channel(
                    &url,
                    weft_control_proto::ChannelError::HandshakeTimeout(opts.connect_timeout),
                )
            })??;
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (msg_tx, msg_rx) = mpsc::channel(64);
        let core = ChannelCore {
            url: url.clone(),
            conn,
        };
        let task = tokio::spawn(driver::drive(core, tcp, cmd_rx, msg_tx));
        Ok(Channel {
            url,
            cmds: cmd_tx,
            msgs: msg_rx,
            _task: AbortOnDrop::new(task),
        })
    }

    /// Returns the server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Queues a message for the server.
    ///
    /// # Errors
    /// [`ClientError::Closed`] if the connection already ended (the reason
    /// comes from [`Channel::recv`]).
    pub fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        self.cmds.send(msg).map_err(|_| ClientError::Closed {
            url: self.url.clone(),
        })
    }

    /// Returns the next message from the server, keep-alives included.
    ///
    /// # Errors
    /// [`ClientError::Server`] for an `error` message (the server closes
    /// after it), [`ClientError::Closed`] at a clean end, and whatever broke
    /// the connection otherwise.
    pub async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        match self.msgs.recv().await {
            Some(Ok(ServerMessage::Error(e))) => Err(ClientError::server(&self.url, e)),
            Some(Ok(msg)) => Ok(msg),
            Some(Err(e)) => Err(e),
            None => Err(ClientError::Closed {
                url: self.url.clone(),
            }),
        }
    }
}

/// The core of a [`Channel`]: the bare connection.
#[derive(Debug)]
pub(crate) struct ChannelCore {
    url: String,
    conn: ClientConnection,
}

impl Core for ChannelCore {
    type Cmd = ClientMessage;
    type Out = ServerMessage;

    fn url(&self) -> &str {
        &self.url
    }

    fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ClientError> {
        self.conn
            .handle_input(bytes, now)
            .map_err(|e| ClientError::channel(&self.url, e))
    }

    fn handle_eof(&mut self) -> Result<(), ClientError> {
        self.conn
            .handle_eof()
            .map_err(|e| ClientError::channel(&self.url, e))
    }

    fn handle_cmd(&mut self, cmd: ClientMessage, now: Instant) -> Result<(), ClientError> {
        self.conn
            .send(&cmd, now)
            .map_err(|e| ClientError::channel(&self.url, e))
    }

    fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.conn.poll_transmit()
    }

    fn poll_output(&mut self) -> Option<ServerMessage> {
        loop {
            match self.conn.poll_event()? {
                Event::Established => {}
                Event::Message(m) => return Some(m),
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.conn.poll_timeout().map(|(t, _)| t)
    }

    fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        self.conn
            .handle_timeout(now)
            .map_err(|e| ClientError::channel(&self.url, e))
    }
}
