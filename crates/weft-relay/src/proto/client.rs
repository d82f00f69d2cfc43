//! One client connection to a DERP server, without I/O.
//!
//! Driving it (the shape of every Weft core):
//! 1. after the HTTP upgrade, feed every frame read to
//!    [`ClientCore::handle_frame`] (packets come back as [`Received`],
//!    borrowing the frame, so the driver can hand out a slice of its read
//!    buffer without a copy);
//! 2. call [`ClientCore::handle_timeout`] at [`ClientCore::poll_timeout`];
//!    an error there (or from `handle_frame`) means the connection is dead;
//! 3. write every [`ClientCore::poll_transmit`] frame before any data
//!    packet once [`ClientCore::is_connected`] (the `ClientInfo` must be the
//!    first frame the server reads), and drain [`ClientCore::poll_event`].
//!
//! Data packets do not pass through the core: the driver encodes them with
//! [`crate::proto::frame::encode_send_packet`] into its own buffer, and only
//! once the login is done.
//!
//! Liveness: a derp server sends `KeepAlive` every 60 s; we do not wait for
//! it. After `idle_ping_after` without any frame from the server the core
//! sends a `Ping`, and if nothing at all arrives within `pong_timeout` the
//! connection is declared dead, so a silently broken path is noticed in
//! about half a minute instead of two.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_types::{NodePrivate, NodePublic};

use super::NONCE_LEN;
use super::frame::{Frame, PeerGoneReason};
use super::login::{self, ClientInfo, LoginError, ServerInfo};

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// What the client says about itself in `ClientInfo`.
    pub info: ClientInfo,
    /// Whether to tell the server it is the client's home relay.
    pub preferred: bool,
    /// Time without any frame from the server before a keep-alive `Ping`.
    pub idle_ping_after: Duration,
    /// Time a keep-alive `Ping` (or a [`ClientCore::ping`]) may wait for an
    /// answer; for the keep-alive, any frame counts.
    pub pong_timeout: Duration,
    /// Time from the upgrade to `ServerInfo`.
    pub login_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            info: ClientInfo::weft(),
            preferred: false,
            idle_ping_after: Duration::from_secs(20),
            pong_timeout: Duration::from_secs(10),
            login_timeout: Duration::from_secs(10),
        }
    }
}

/// Something the server told us (other than packets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Login done: the server proved its key.
    Connected {
        /// The server's public key.
        server_key: NodePublic,
        /// What it said about itself.
        info: ServerInfo,
    },
    /// A peer we heard from left, or a peer we sent to is not here.
    PeerGone {
        /// The peer.
        peer: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer is present (only mesh watchers get these).
    PeerPresent {
        /// The peer.
        peer: NodePublic,
        /// Its address as the server sees it.
        addr: Option<SocketAddr>,
    },
    /// The answer to a [`ClientCore::ping`].
    Pong {
        /// The ping's payload.
        data: [u8; 8],
        /// The round-trip time.
        rtt: Duration,
    },
    /// The server reports a problem with this connection (`None`: healthy
    /// again).
    Health {
        /// The problem, as the server put it.
        problem: Option<String>,
    },
    /// The server is restarting: reconnect after `reconnect_in`, retrying
    /// quickly for `try_for`.
    Restarting {
        /// When to reconnect.
        reconnect_in: Duration,
        /// How long to keep retrying quickly.
        try_for: Duration,
    },
}

/// A packet from the server, borrowing the frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A packet from `src`.
    Packet {
        /// The sender's node key.
        src: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
}

/// Why a connection is over.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's greeting or `ServerInfo` was wrong.
    #[error("relay login failed: {0}")]
    Login(#[from] LoginError),
    /// No `ServerInfo` within the login timeout.
    #[error("relay login timed out (no ServerInfo within {0:?})")]
    LoginTimeout(Duration),
    /// Nothing from the server for too long, even after a ping.
    #[error("relay connection timed out (nothing received for {0:?})")]
    Timeout(Duration),
}

#[derive(Debug)]
enum State {
    AwaitServerKey,
    AwaitServerInfo { server: NodePublic },
    Connected { server: NodePublic },
}

/// Keeps at most this many [`ClientCore::ping`]s waiting for their pong.
const MAX_PINGS_IN_FLIGHT: usize = 16;

/// One client connection's protocol state. See the module docs for the
/// driving loop.
pub struct ClientCore {
    key: NodePrivate,
    opts: ClientOptions,
    state: State,
    login_deadline: Instant,
    last_rx: Instant,
    /// The keep-alive ping in flight, and when it was sent.
    keepalive: Option<([u8; 8], Instant)>,
    /// Caller pings in flight, oldest first.
    pings: VecDeque<([u8; 8], Instant)>,
    nonce: [u8; NONCE_LEN],
    ping_base: u64,
    ping_counter: u64,
    preferred_sent: Option<bool>,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
}

impl std::fmt::Debug for ClientCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCore")
            .field("key", &self.key.public())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl ClientCore {
    /// Starts a connection's protocol for the node holding `key`, right
    /// after the HTTP upgrade. `seed` (random, from the driver) provides the
    /// `ClientInfo` nonce and the ping payloads.
    pub fn new(key: NodePrivate, opts: ClientOptions, seed: [u8; 32], now: Instant) -> Self {
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&seed[..NONCE_LEN]);
        let mut base = [0u8; 8];
        base.copy_from_slice(&seed[NONCE_LEN..]);
        ClientCore {
            key,
            login_deadline: now + opts.login_timeout,
            opts,
            state: State::AwaitServerKey,
            last_rx: now,
            keepalive: None,
            pings: VecDeque::new(),
            nonce,
            ping_base: u64::from_be_bytes(base),
            ping_counter: 0,
            preferred_sent: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Returns whether the login is done.
    pub fn is_connected(&self) -> bool {
        matches!(self.state, State::Connected { .. })
    }

    /// Returns the server's key once it has sent it.
    pub fn server_key(&self) -> Option<NodePublic> {
        match self.state {
            State::AwaitServerKey => None,
            State::AwaitServerInfo { server } | State::Connected { server } => Some(server),
        }
    }

    /// Returns our node key.
    pub fn public_key(&self) -> NodePublic {
        self.key.public()
    }

    /// Handles one frame from the server.
    ///
    /// # Errors
    /// [`ClientError::Login`] when the greeting or `ServerInfo` is wrong; the
    /// connection must be closed.
    pub fn handle_frame<'a>(
        &mut self,
        frame: Frame<'a>,
        now: Instant,
    ) -> Result<Option<Received<'a>>, ClientError> {
        self.last_rx = now;
        self.keepalive = None;
        match self.state {
            State::AwaitServerKey => {
                let Frame::ServerKey { key: server } = frame else {
                    return Err(LoginError::UnexpectedFrame {
                        expected: "ServerKey",
                        got: frame.frame_type(),
                    }
                    .into());
                };
                let info =
                    login::seal_client_info(&self.key, &server, self.nonce, &self.opts.info)?;
                self.transmits.push_back(info);
                self.state = State::AwaitServerInfo { server };
                return Ok(None);
            }
            State::AwaitServerInfo { server } => {
                if let Frame::ServerInfo { sealed } = frame {
                    let info = login::open_server_info(&self.key, &server, sealed)?;
                    self.state = State::Connected { server };
                    self.events.push_back(ClientEvent::Connected {
                        server_key: server,
                        info,
                    });
                    self.send_preferred();
                    return Ok(None);
                }
            }
            State::Connected { .. } => {}
        }
        match frame {
            Frame::RecvPacket { src, packet } if self.is_connected() => {
                return Ok(Some(Received::Packet { src, packet }));
            }
            Frame::Ping { data } if self.opts.info.can_ack_pings => {
                self.transmits.push_back(Frame::Pong { data }.to_vec());
            }
            Frame::Pong { data } => {
                if let Some(i) = self.pings.iter().position(|(d, _)| *d == data)
                    && let Some((_, sent)) = self.pings.remove(i)
                {
                    self.events.push_back(ClientEvent::Pong {
                        data,
                        rtt: now.saturating_duration_since(sent),
                    });
                }
            }
            Frame::PeerGone { peer, reason } => {
                self.events
                    .push_back(ClientEvent::PeerGone { peer, reason });
            }
            Frame::PeerPresent { peer, addr, .. } => {
                self.events
                    .push_back(ClientEvent::PeerPresent { peer, addr });
            }
            Frame::Health { problem } => {
                let problem =
                    (!problem.is_empty()).then(|| String::from_utf8_lossy(problem).into_owned());
                self.events.push_back(ClientEvent::Health { problem });
            }
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => {
                self.events.push_back(ClientEvent::Restarting {
                    reconnect_in,
                    try_for,
                });
            }
            // KeepAlive (liveness is recorded above), a second greeting,
            // frames meant for servers, unknown types: nothing to do.
            _ => {}
        }
        Ok(None)
    }

    /// Sends a `Ping` and returns its payload; the answer comes back as
    /// [`ClientEvent::Pong`]. `None` before the login is done.
    pub fn ping(&mut self, now: Instant) -> Option<[u8; 8]> {
        if !self.is_connected() {
            return None;
        }
        let data = self.next_ping_data();
        if self.pings.len() == MAX_PINGS_IN_FLIGHT {
            self.pings.pop_front();
        }
        self.pings.push_back((data, now));
        self.transmits.push_back(Frame::Ping { data }.to_vec());
        Some(data)
    }

    /// Sets whether this relay is our home relay; sent now if connected,
    /// else at login.
    pub fn set_preferred(&mut self, preferred: bool) {
        self.opts.preferred = preferred;
        if self.is_connected() {
            self.send_preferred();
        }
    }

    /// Advances timers.
    ///
    /// # Errors
    /// [`ClientError::LoginTimeout`] or [`ClientError::Timeout`]: the
    /// connection is dead.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        if !self.is_connected() {
            if now >= self.login_deadline {
                return Err(ClientError::LoginTimeout(self.opts.login_timeout));
            }
            return Ok(());
        }
        while let Some((_, sent)) = self.pings.front() {
            if now.saturating_duration_since(*sent) < self.opts.pong_timeout {
                break;
            }
            self.pings.pop_front();
        }
        match self.keepalive {
            Some((_, sent)) => {
                if now >= sent + self.opts.pong_timeout {
                    return Err(ClientError::Timeout(
                        now.saturating_duration_since(self.last_rx),
                    ));
                }
            }
            None => {
                if now >= self.last_rx + self.opts.idle_ping_after {
                    let data = self.next_ping_data();
                    self.keepalive = Some((data, now));
                    self.transmits.push_back(Frame::Ping { data }.to_vec());
                }
            }
        }
        Ok(())
    }

    /// Returns when [`ClientCore::handle_timeout`] must run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        if !self.is_connected() {
            return Some((self.login_deadline, "login deadline"));
        }
        let alive = match self.keepalive {
            Some((_, sent)) => (sent + self.opts.pong_timeout, "keep-alive ping deadline"),
            None => (
                self.last_rx + self.opts.idle_ping_after,
                "idle: keep-alive ping",
            ),
        };
        let ping = self
            .pings
            .front()
            .map(|(_, sent)| (*sent + self.opts.pong_timeout, "ping expiry"));
        Some(match ping {
            Some(p) if p.0 < alive.0 => p,
            _ => alive,
        })
    }

    /// Returns the next control frame to write.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// Returns the next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn next_ping_data(&mut self) -> [u8; 8] {
        self.ping_counter += 1;
        (self.ping_base ^ self.ping_counter).to_be_bytes()
    }

    fn send_preferred(&mut self) {
        let want = self.opts.preferred;
        // derp servers assume "not preferred" until told; say it only when
        // it is news.
        if self.preferred_sent.unwrap_or(false) != want {
            self.transmits
                .push_back(Frame::NotePreferred { preferred: want }.to_vec());
            self.preferred_sent = Some(want);
        }
    }
}

#[cfg(test)]
mod tests;
