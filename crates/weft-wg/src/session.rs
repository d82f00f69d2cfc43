//! One peer's Noise session, behind our own [`WgSession`] trait, implemented
//! on boringtun's `noise::Tunn` ([`BoringSession`]).
//!
//! # Time
//! boringtun reads its own clock (`Instant::now()` in its timers, handshake
//! and rate limiter). The workspace builds it with the `mock-instant` feature,
//! which turns every one of those reads into a read of `mock_instant`'s
//! **thread-local** `MockClock`. So every method here takes the caller's `now`
//! and, right before calling into boringtun, sets that clock to "time since
//! the device epoch" ([`Clock::enter`]). Two rules keep this sound:
//!
//! * **Never backwards per object.** mock `Instant::duration_since` and
//!   `elapsed` panic on underflow, and boringtun stores `Instant`s. Each
//!   boringtun object therefore remembers the last time it was shown and is
//!   shown `max(now, last)`; two threads with slightly different `now`s can
//!   drive one device without ever moving an object's clock back.
//! * **Set under the object's lock.** Everything here takes `&mut self`, so a
//!   caller must hold the peer's lock before the clock is set; another thread
//!   cannot slip an older time in between.
//!
//! The wall clock: boringtun 0.7.1 stamps handshake initiations (TAI64N,
//! whitepaper §5.4.2) with `std::time::SystemTime::now()` read once when a
//! `Tunn` is created, plus mock-clock time elapsed since. That is real wall
//! time, which is what a peer needs to accept a restarted daemon's handshakes.
//! We also set `MockClock`'s system time to the driver's wall clock, so a
//! boringtun that reads the mock wall clock stays correct.
//!
//! boringtun also draws ephemeral keys and cookie secrets from the OS RNG;
//! that cannot be injected.
//!
//! # Rate limiting
//! One device-wide limiter ([`HandshakeGate`], boringtun's `RateLimiter`)
//! screens every handshake initiation and response before any
//! Diffie-Hellman, and alone decides when a cookie is required. Each `Tunn`
//! gets a private limiter that checks MAC1 but never asks for a cookie: with
//! two limiters under load, each with its own cookie secret, a peer would be
//! handed cookies the other one rejects and never get through.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{HandshakeInit, Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use mock_instant::MockClock;
use weft_types::{NodePrivate, NodePublic};

use crate::wire::{self, INITIATION_LEN, MESSAGE_INITIATION, TRANSPORT_OVERHEAD};

// The timer constants are boringtun's, which enforces them; they are
// repeated here to document them and to drive tests.

/// The initiator rekeys a session this old once it sends (whitepaper §6.1, §6.2).
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
/// A session this old is never used again (whitepaper §6.1, §6.2).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
/// Handshake retries give up after this long (whitepaper §6.1, §6.4).
pub const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
/// An unanswered initiation is retried after this long (whitepaper §6.1, §6.4).
pub const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that received data and sent nothing back sends an empty
/// keepalive after this long (whitepaper §6.1, §6.5).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The handshake messages the device lets through per second, across all
/// peers, before it answers with cookies (whitepaper §5.3; boringtun's device
/// uses the same figure).
pub(crate) const DEVICE_HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Maps the driver's clocks onto boringtun's mock clock.
///
/// Mock time is "time since the device epoch"; mock wall time is the driver's
/// wall clock at the epoch plus the same offset.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    epoch: Instant,
    unix_at_epoch: Duration,
}

impl Clock {
    /// Creates the mapping from the driver's monotonic and wall clocks read
    /// at the same moment. A wall time before 1970 counts as 1970.
    pub fn new(epoch: Instant, unix_at_epoch: SystemTime) -> Self {
        let unix_at_epoch = unix_at_epoch
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            epoch,
            unix_at_epoch,
        }
    }

    /// Returns the device epoch.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Returns the time since the epoch (zero for an earlier `now`).
    pub fn since_epoch(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.epoch)
    }

    /// Returns the wall-clock time `since_epoch` after the epoch.
    pub fn wall(&self, since_epoch: Duration) -> SystemTime {
        SystemTime::UNIX_EPOCH + self.unix_at_epoch + since_epoch
    }

    /// Sets boringtun's (thread-local) clock to `max(now, *last)` and records
    /// that time in `last`. Call it under the lock of the object `last`
    /// belongs to, right before calling into that object.
    pub fn enter(&self, now: Instant, last: &mut Duration) {
        let t = self.since_epoch(now).max(*last);
        *last = t;
        MockClock::set_time(t);
        MockClock::set_system_time(self.unix_at_epoch + t);
    }
}

/// What a session call produced. Slices borrow the caller's output buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionOutput<'o> {
    /// Nothing to do.
    Done,
    /// Send this datagram to the peer.
    Network(&'o [u8]),
    /// Decrypted IP packet, trimmed to its header's length. Its source has
    /// *not* been checked against AllowedIPs yet.
    Tunnel(&'o [u8]),
    /// The input was refused.
    Error(SessionError),
}

/// Why a session refused an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The output buffer is too small for the result.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// The datagram is not a well-formed WireGuard message.
    #[error("malformed WireGuard message")]
    Malformed,
    /// A MAC, AEAD tag or static key did not verify.
    #[error("message failed authentication")]
    Unauthenticated,
    /// A transport counter or handshake timestamp was seen before or is too old.
    #[error("replayed message")]
    Replayed,
    /// No session or pending handshake matches the message's index.
    #[error("no session for this message")]
    NoSession,
    /// The connection gave up (`REKEY_ATTEMPT_TIME`) or its keys expired.
    #[error("connection expired")]
    ConnectionExpired,
    /// The rate limiter is under load and the message carries no valid cookie.
    #[error("rate limited")]
    UnderLoad,
    /// A decrypted payload that is not a well-formed IPv4/IPv6 packet.
    #[error("decrypted payload is not an IP packet")]
    BadInnerPacket,
}

/// Session statistics, read with the clock set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionStats {
    /// Time since the current session was established, if there is one.
    pub since_handshake: Option<Duration>,
    /// Estimated loss on the receive side, 0.0–1.0.
    pub estimated_loss: f32,
    /// Round-trip time of the last handshake we initiated, in milliseconds.
    pub rtt_ms: Option<u32>,
}

/// One peer's WireGuard session: handshake, transport keys, timers and the
/// queue of packets waiting for a handshake. Every method takes the caller's
/// `now`; none reads a clock. Output goes into the caller's buffer.
pub trait WgSession: Send {
    /// Encrypts one IP packet (or an empty keepalive). Without a session the
    /// packet is queued and the result may be a handshake initiation to send.
    /// `out` must hold `packet.len() + 32` bytes and at least 148.
    fn encapsulate<'o>(
        &mut self,
        packet: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> SessionOutput<'o>;

    /// Processes one datagram addressed to this session. `out` must hold
    /// `datagram.len()` bytes and at least 148.
    fn decapsulate<'o>(
        &mut self,
        from: Option<IpAddr>,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> SessionOutput<'o>;

    /// Encrypts the next packet queued during a handshake; `Done` when the
    /// queue is empty or no session is current. Needs
    /// [`WgSession::queued_len`]` + 32` bytes of `out`.
    fn next_queued<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o>;

    /// Returns an upper bound on the length of queued packets, or `None`
    /// when nothing is queued.
    fn queued_len(&self) -> Option<usize>;

    /// Runs the timers: handshake retries, rekeying, passive keepalives and
    /// expiry. `out` must hold 148 bytes.
    fn update_timers<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o>;

    /// Starts a handshake unless one is in progress. `out` must hold 148 bytes.
    fn initiate_handshake<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o>;

    /// Replaces our static key; existing sessions are dropped.
    fn set_static_private(&mut self, key: &NodePrivate, now: Instant);

    /// Returns true when a session is current (packets go out without a handshake).
    fn has_current_session(&mut self, now: Instant) -> bool;

    /// Returns session statistics.
    fn stats(&mut self, now: Instant) -> SessionStats;
}

/// [`WgSession`] on boringtun 0.7.1's `noise::Tunn`.
pub struct BoringSession {
    tunn: Tunn,
    clock: Clock,
    /// The latest mock time this `Tunn` has seen (see the module docs).
    last: Duration,
    /// Longest packet queued since the queue was last drained.
    queued: Option<usize>,
}

impl std::fmt::Debug for BoringSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoringSession")
            .field("last", &self.last)
            .field("queued", &self.queued)
            .finish()
    }
}

impl BoringSession {
    /// Creates a session between our `key` and the peer's `peer` key.
    /// `index` is this peer's 24-bit local index: every receiver index the
    /// peer uses to address us is `index << 8 | n`.
    pub fn new(
        key: &NodePrivate,
        peer: &NodePublic,
        preshared_key: Option<[u8; 32]>,
        index: u32,
        clock: Clock,
        now: Instant,
    ) -> Self {
        let mut last = Duration::ZERO;
        clock.enter(now, &mut last);
        let secret = StaticSecret::from(*key.as_bytes());
        let limiter = unlimited(&PublicKey::from(&secret));
        let peer = PublicKey::from(peer.to_bytes());
        let tunn = Tunn::new(secret, peer, preshared_key, None, index, Some(limiter));
        Self {
            tunn,
            clock,
            last,
            queued: None,
        }
    }

    fn note_queued(&mut self, len: usize) {
        self.queued = Some(self.queued.map_or(len, |q| q.max(len)));
    }
}

impl WgSession for BoringSession {
    fn encapsulate<'o>(
        &mut self,
        packet: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> SessionOutput<'o> {
        if out.len() < (packet.len() + TRANSPORT_OVERHEAD).max(INITIATION_LEN) {
            return SessionOutput::Error(SessionError::BufferTooSmall);
        }
        self.clock.enter(now, &mut self.last);
        let result = self.tunn.encapsulate(packet, out);
        // Without a current session boringtun queued the packet and perhaps
        // wrote a handshake initiation instead of a transport message.
        let queued = match &result {
            TunnResult::Done => true,
            TunnResult::WriteToNetwork(d) => wire::message_type(d) == MESSAGE_INITIATION,
            _ => false,
        };
        if queued {
            self.note_queued(packet.len());
        }
        convert(result, false)
    }

    fn decapsulate<'o>(
        &mut self,
        from: Option<IpAddr>,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
    ) -> SessionOutput<'o> {
        if datagram.is_empty() {
            // boringtun reads an empty datagram as "send the next queued packet".
            return SessionOutput::Error(SessionError::Malformed);
        }
        if out.len() < datagram.len().max(INITIATION_LEN) {
            return SessionOutput::Error(SessionError::BufferTooSmall);
        }
        self.clock.enter(now, &mut self.last);
        let is_transport = wire::message_type(datagram) == wire::MESSAGE_TRANSPORT;
        convert(self.tunn.decapsulate(from, datagram, out), is_transport)
    }

    fn next_queued<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o> {
        let Some(longest) = self.queued else {
            return SessionOutput::Done;
        };
        if out.len() < (longest + TRANSPORT_OVERHEAD).max(INITIATION_LEN) {
            return SessionOutput::Error(SessionError::BufferTooSmall);
        }
        self.clock.enter(now, &mut self.last);
        if self.tunn.time_since_last_handshake().is_none() {
            // Without a current session boringtun would dequeue, requeue and
            // perhaps start a handshake we do not want (e.g. as responder).
            return SessionOutput::Done;
        }
        match self.tunn.decapsulate(None, &[], out) {
            TunnResult::Done => {
                self.queued = None;
                SessionOutput::Done
            }
            other => convert(other, false),
        }
    }

    fn queued_len(&self) -> Option<usize> {
        self.queued
    }

    fn update_timers<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o> {
        if out.len() < INITIATION_LEN {
            return SessionOutput::Error(SessionError::BufferTooSmall);
        }
        self.clock.enter(now, &mut self.last);
        let result = self.tunn.update_timers(out);
        match &result {
            // boringtun cleared its queue when the connection expired.
            TunnResult::Err(WireGuardError::ConnectionExpired) => self.queued = None,
            // A keepalive without a session is queued behind a new handshake.
            TunnResult::WriteToNetwork(d) if wire::message_type(d) == MESSAGE_INITIATION => {
                self.note_queued(0);
            }
            _ => {}
        }
        convert(result, false)
    }

    fn initiate_handshake<'o>(&mut self, out: &'o mut [u8], now: Instant) -> SessionOutput<'o> {
        if out.len() < INITIATION_LEN {
            return SessionOutput::Error(SessionError::BufferTooSmall);
        }
        self.clock.enter(now, &mut self.last);
        convert(self.tunn.format_handshake_initiation(out, false), false)
    }

    fn set_static_private(&mut self, key: &NodePrivate, now: Instant) {
        self.clock.enter(now, &mut self.last);
        let secret = StaticSecret::from(*key.as_bytes());
        let public = PublicKey::from(&secret);
        let limiter = unlimited(&public);
        self.tunn.set_static_private(secret, public, Some(limiter));
    }

    fn has_current_session(&mut self, now: Instant) -> bool {
        self.clock.enter(now, &mut self.last);
        self.tunn.time_since_last_handshake().is_some()
    }

    fn stats(&mut self, now: Instant) -> SessionStats {
        self.clock.enter(now, &mut self.last);
        let (since_handshake, _, _, estimated_loss, rtt_ms) = self.tunn.stats();
        SessionStats {
            since_handshake,
            estimated_loss,
            rtt_ms,
        }
    }
}

/// The rate limiter each `Tunn` gets: its own (never shared, so its
/// `Instant`s follow this peer's clock), checking MAC1 but never asking for
/// a cookie. Load is judged once, device-wide, by [`HandshakeGate`]: two
/// limiters with different cookie secrets would hand a peer cookies that the
/// other one rejects.
fn unlimited(our_public: &PublicKey) -> Arc<RateLimiter> {
    Arc::new(RateLimiter::new(our_public, u64::MAX))
}

fn convert(result: TunnResult<'_>, is_transport: bool) -> SessionOutput<'_> {
    match result {
        TunnResult::Done => SessionOutput::Done,
        TunnResult::WriteToNetwork(d) => SessionOutput::Network(d),
        TunnResult::WriteToTunnelV4(p, _) | TunnResult::WriteToTunnelV6(p, _) => {
            SessionOutput::Tunnel(p)
        }
        TunnResult::Err(e) => SessionOutput::Error(map_error(&e, is_transport)),
    }
}

fn map_error(e: &WireGuardError, is_transport: bool) -> SessionError {
    use WireGuardError as W;
    match e {
        W::DestinationBufferTooSmall => SessionError::BufferTooSmall,
        // After a transport message decrypted, `InvalidPacket` is boringtun
        // rejecting the plaintext as an IP packet.
        W::InvalidPacket if is_transport => SessionError::BadInnerPacket,
        W::IncorrectPacketLength
        | W::WrongPacketType
        | W::InvalidPacket
        | W::InvalidTai64nTimestamp
        | W::LockFailed => SessionError::Malformed,
        W::WrongKey | W::InvalidMac | W::InvalidAeadTag => SessionError::Unauthenticated,
        W::WrongTai64nTimestamp | W::InvalidCounter | W::DuplicateCounter => SessionError::Replayed,
        W::UnexpectedPacket | W::WrongIndex | W::NoCurrentSession => SessionError::NoSession,
        W::ConnectionExpired => SessionError::ConnectionExpired,
        W::UnderLoad => SessionError::UnderLoad,
    }
}

/// Our static key in the forms boringtun wants, computed once per key.
pub(crate) struct StaticIdentity {
    secret: StaticSecret,
    public: PublicKey,
}

impl StaticIdentity {
    pub(crate) fn new(key: &NodePrivate) -> Self {
        let secret = StaticSecret::from(*key.as_bytes());
        let public = PublicKey::from(&secret);
        Self { secret, public }
    }
}

/// A handshake initiation whose MAC1 (and, under load, MAC2) verified.
pub(crate) struct VerifiedInitiation<'d>(HandshakeInit<'d>);

/// What [`HandshakeGate::check`] decided.
pub(crate) enum GateDecision<'d> {
    /// An initiation whose MACs verified; identify the sender with
    /// [`identify_initiator`].
    Initiation(VerifiedInitiation<'d>),
    /// A response whose MACs verified; its receiver index names the peer.
    Response,
    /// Under load: send the cookie reply of this length (in the caller's buffer).
    Cookie(usize),
    /// Refused.
    Refuse(SessionError),
}

/// The device-wide rate limiter for handshake messages (whitepaper §5.3,
/// §5.4.4, §5.4.7). Every initiation and response passes it before any
/// Diffie-Hellman: it checks MAC1, counts the message and, above
/// [`DEVICE_HANDSHAKE_RATE_LIMIT`] a second, demands a valid MAC2 (a cookie
/// bound to the sender's IP), answering with a cookie reply otherwise. It
/// lives under its own lock; see the module docs for `last`.
pub(crate) struct HandshakeGate {
    limiter: RateLimiter,
    clock: Clock,
    last: Duration,
}

impl HandshakeGate {
    pub(crate) fn new(key: &NodePrivate, clock: Clock, now: Instant) -> Self {
        let mut last = Duration::ZERO;
        clock.enter(now, &mut last);
        let public = PublicKey::from(&StaticSecret::from(*key.as_bytes()));
        let limiter = RateLimiter::new(&public, DEVICE_HANDSHAKE_RATE_LIMIT);
        Self {
            limiter,
            clock,
            last,
        }
    }

    /// Checks the MACs of a handshake initiation or response and counts it
    /// against the rate limit. `cookie_out` must hold 64 bytes.
    pub(crate) fn check<'d>(
        &mut self,
        from: IpAddr,
        datagram: &'d [u8],
        cookie_out: &mut [u8],
        now: Instant,
    ) -> GateDecision<'d> {
        self.clock.enter(now, &mut self.last);
        match self.limiter.verify_packet(Some(from), datagram, cookie_out) {
            Ok(Packet::HandshakeInit(init)) => GateDecision::Initiation(VerifiedInitiation(init)),
            Ok(Packet::HandshakeResponse(_)) => GateDecision::Response,
            Ok(_) => GateDecision::Refuse(SessionError::Malformed),
            Err(TunnResult::WriteToNetwork(cookie)) => GateDecision::Cookie(cookie.len()),
            Err(TunnResult::Err(e)) => GateDecision::Refuse(map_error(&e, false)),
            Err(_) => GateDecision::Refuse(SessionError::Malformed),
        }
    }

    /// Resets the per-second handshake count once a second has passed
    /// (boringtun's `reset_count` checks the second itself, so calling it
    /// every tick runs it once a second).
    pub(crate) fn tick(&mut self, now: Instant) {
        self.clock.enter(now, &mut self.last);
        self.limiter.reset_count();
    }
}

/// Decrypts the initiator's static key from a verified initiation.
pub(crate) fn identify_initiator(
    us: &StaticIdentity,
    init: &VerifiedInitiation<'_>,
) -> Result<NodePublic, SessionError> {
    parse_handshake_anon(&us.secret, &us.public, &init.0)
        .map(|half| NodePublic::from_bytes(half.peer_static_public))
        .map_err(|e| map_error(&e, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)]
    fn base() -> Instant {
        Instant::now()
    }

    fn pair(now: Instant) -> (BoringSession, BoringSession) {
        let clock = Clock::new(
            now,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        );
        let (a, b) = (
            NodePrivate::from_bytes([1; 32]),
            NodePrivate::from_bytes([2; 32]),
        );
        let sa = BoringSession::new(&a, &b.public(), None, 1, clock, now);
        let sb = BoringSession::new(&b, &a.public(), None, 2, clock, now);
        (sa, sb)
    }

    fn network(o: SessionOutput<'_>) -> Vec<u8> {
        match o {
            SessionOutput::Network(d) => d.to_vec(),
            other => panic!("expected a datagram, got {other:?}"),
        }
    }

    /// An IPv4/UDP packet 100.64.0.1 → 100.64.0.2 with `payload_len` zero bytes.
    fn ipv4_udp(payload_len: usize) -> Vec<u8> {
        let total = 28 + payload_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        p[24..26].copy_from_slice(&u16::try_from(8 + payload_len).unwrap().to_be_bytes());
        p
    }

    #[test]
    fn two_sessions_handshake_and_exchange_a_packet_on_virtual_time() {
        let t0 = base();
        let (mut a, mut b) = pair(t0);
        let mut buf = [0u8; 256];
        let packet = ipv4_udp(8);

        let init = network(a.encapsulate(&packet, &mut buf, t0));
        assert_eq!(a.queued_len(), Some(packet.len()));
        let resp = network(b.decapsulate(None, &init, &mut buf, t0 + Duration::from_millis(10)));
        let keepalive =
            network(a.decapsulate(None, &resp, &mut buf, t0 + Duration::from_millis(20)));
        assert_eq!(keepalive.len(), TRANSPORT_OVERHEAD);
        let queued = network(a.next_queued(&mut buf, t0 + Duration::from_millis(20)));
        assert_eq!(
            a.next_queued(&mut buf, t0 + Duration::from_millis(20)),
            SessionOutput::Done
        );
        assert_eq!(a.queued_len(), None);

        assert_eq!(
            b.decapsulate(None, &keepalive, &mut buf, t0 + Duration::from_millis(30)),
            SessionOutput::Done
        );
        match b.decapsulate(None, &queued, &mut buf, t0 + Duration::from_millis(30)) {
            SessionOutput::Tunnel(p) => assert_eq!(p, &packet[..]),
            other => panic!("{other:?}"),
        }
        assert!(a.has_current_session(t0 + Duration::from_secs(1)));
        let stats = a.stats(t0 + Duration::from_secs(1));
        assert!(stats.since_handshake.is_some());
    }

    #[test]
    fn a_session_shown_an_earlier_time_does_not_move_its_clock_back() {
        let t0 = base() + Duration::from_secs(100);
        let (mut a, _b) = pair(t0);
        let mut buf = [0u8; 256];
        let packet = ipv4_udp(8);
        network(a.encapsulate(&packet, &mut buf, t0 + Duration::from_secs(10)));
        // Another thread's older `now`: before the handshake was sent, even
        // before the device epoch.
        let _ = a.update_timers(&mut buf, t0 + Duration::from_secs(1));
        let _ = a.update_timers(&mut buf, t0 - Duration::from_secs(50));
        assert_eq!(a.last, Duration::from_secs(10));
        // Time moves on from there: the retry comes REKEY_TIMEOUT after the send.
        let retry = a.update_timers(&mut buf, t0 + Duration::from_secs(10) + REKEY_TIMEOUT);
        assert_eq!(wire::message_type(&network(retry)), MESSAGE_INITIATION);
    }

    #[test]
    fn buffers_too_small_are_refused_not_panicked_on() {
        let t0 = base();
        let (mut a, _b) = pair(t0);
        let packet = ipv4_udp(400);
        let mut small = [0u8; 147];
        assert_eq!(
            a.encapsulate(&packet, &mut small, t0),
            SessionOutput::Error(SessionError::BufferTooSmall)
        );
        assert_eq!(
            a.update_timers(&mut small, t0),
            SessionOutput::Error(SessionError::BufferTooSmall)
        );
        let mut big = [0u8; 1024];
        let _ = a.encapsulate(&packet, &mut big, t0);
        let mut medium = [0u8; 200];
        assert_eq!(
            a.next_queued(&mut medium, t0),
            SessionOutput::Error(SessionError::BufferTooSmall)
        );
    }
}
