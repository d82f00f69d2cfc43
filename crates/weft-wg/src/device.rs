//! The WireGuard interface: configuration, peers, routing and the data path.
//! (API skeleton; implementation in progress.)

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_types::{NodePrivate, NodePublic};

/// How often drivers should call [`Device::handle_timeout`].
pub const TIMER_TICK: Duration = Duration::from_millis(100);

/// Why the device dropped a packet. Every drop is counted in [`DeviceStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A datagram that is not a well-formed WireGuard message (type, length).
    Malformed,
    /// A handshake, cookie or data message for no peer we know.
    UnknownPeer,
    /// A message that failed authentication (MAC or AEAD).
    Unauthenticated,
    /// A data message whose counter was already seen or is too old.
    Replayed,
    /// A decrypted packet whose source address is outside the sender's AllowedIPs.
    SpoofedSource,
    /// A decrypted payload that is not a well-formed IPv4/IPv6 packet.
    BadInnerPacket,
    /// A packet from TUN whose destination matches no peer's AllowedIPs.
    NoRoute,
    /// A packet for a peer with no known endpoint.
    NoEndpoint,
    /// The device has no private key (it is down).
    NoPrivateKey,
    /// A handshake refused by the rate limiter (a cookie reply was sent instead).
    RateLimited,
    /// A message for an expired session or a connection that gave up.
    Expired,
    /// The caller's output buffer was too small.
    BufferTooSmall,
}

/// Counters of one device; all monotonic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Datagrams received from the network, of any kind.
    pub rx_datagrams: u64,
    /// Packets taken from TUN.
    pub tx_packets: u64,
    /// Drops by reason, sorted.
    pub drops: std::collections::BTreeMap<DropReason, u64>,
}

/// What one peer looks like from outside (for `wg show`, status, tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: NodePublic,
    pub endpoint: Option<SocketAddr>,
    pub allowed_ips: Vec<IpNet>,
    pub persistent_keepalive: Option<u16>,
    /// Wall-clock time of the last completed handshake.
    pub last_handshake: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A typed configuration change, as UAPI `set=1` describes it.
/// `None` means "leave unchanged".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceUpdate {
    /// `Some(None)` removes the private key (device down).
    pub private_key: Option<Option<NodePrivate>>,
    pub listen_port: Option<u16>,
    /// `Some(0)` removes the mark.
    pub fwmark: Option<u32>,
    pub replace_peers: bool,
    pub peers: Vec<PeerUpdate>,
}

/// A typed change to one peer. `None` means "leave unchanged".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerUpdate {
    pub public_key: NodePublic,
    pub remove: bool,
    pub update_only: bool,
    /// `Some(None)` removes the preshared key.
    pub preshared_key: Option<Option<[u8; 32]>>,
    pub endpoint: Option<SocketAddr>,
    /// `Some(0)` disables persistent keepalive.
    pub persistent_keepalive: Option<u16>,
    pub replace_allowed_ips: bool,
    pub allowed_ips: Vec<IpNet>,
}

/// What changed that a driver must act on after [`Device::apply`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// The listen port changed to this value: rebind the UDP socket.
    pub listen_port: Option<u16>,
    /// The fwmark changed to this value: set SO_MARK on the socket.
    pub fwmark: Option<u32>,
}

/// Result of [`Device::encapsulate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Encapsulated<'o> {
    /// Send this datagram to `to`.
    Send { to: SocketAddr, datagram: &'o [u8] },
    /// The packet is queued until a handshake completes; any handshake
    /// message was already handed to the `send` callback.
    Queued,
    /// The packet was dropped and counted.
    Dropped(DropReason),
}

/// Result of [`Device::decapsulate`].
#[derive(Debug, PartialEq, Eq)]
pub enum Decapsulated<'o> {
    /// Write this IP packet to TUN. Its source was checked against the
    /// sending peer's AllowedIPs.
    ToTunnel(&'o [u8]),
    /// Nothing for TUN (a handshake message, cookie or keepalive); any
    /// replies were already handed to the `send` callback.
    Done,
    /// The datagram was dropped and counted.
    Dropped(DropReason),
}

/// A WireGuard interface. See the crate docs for the driving loop.
pub struct Device {
    _private: (),
}

impl Device {
    /// Creates a device with no key and no peers. `now` and `unix_now` are
    /// the driver's monotonic and wall clocks at the same moment; wall time
    /// reported later (last handshake) is derived from them.
    pub fn new(now: Instant, unix_now: SystemTime) -> Self {
        let _ = (now, unix_now);
        todo!()
    }

    /// Applies a configuration change atomically.
    pub fn apply(&self, update: DeviceUpdate, now: Instant) -> Applied {
        let _ = (update, now);
        todo!()
    }

    /// Applies a UAPI `set=1` body (the lines after `set=1`, up to the blank line).
    ///
    /// # Errors
    /// A [`crate::uapi::UapiError`] (carrying the errno to report) when the text
    /// is malformed; the device is then unchanged.
    pub fn uapi_set(&self, body: &str, now: Instant) -> Result<Applied, crate::uapi::UapiError> {
        let _ = (body, now);
        todo!()
    }

    /// Returns the UAPI `get=1` response body, without the final `errno=0` line.
    pub fn uapi_get(&self, now: Instant) -> String {
        let _ = now;
        todo!()
    }

    /// Returns the listen port (0 = not set; the driver picks one).
    pub fn listen_port(&self) -> u16 {
        todo!()
    }

    /// Returns the fwmark (0 = none).
    pub fn fwmark(&self) -> u32 {
        todo!()
    }

    /// Encrypts one IP packet from TUN for the peer that owns its destination.
    /// `out` must be at least `packet.len() + 32` bytes and at least 148.
    pub fn encapsulate<'o>(
        &self,
        packet: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o> {
        let _ = (packet, out, now, send);
        todo!()
    }

    /// Processes one datagram from the network. `out` must be at least as
    /// large as `datagram` and at least 148 bytes.
    pub fn decapsulate<'o>(
        &self,
        from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        now: Instant,
        send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o> {
        let _ = (from, datagram, out, now, send);
        todo!()
    }

    /// Runs every peer's timers (handshake retries, rekey, keepalives, expiry).
    pub fn handle_timeout(&self, now: Instant, send: &mut dyn FnMut(SocketAddr, &[u8])) {
        let _ = (now, send);
        todo!()
    }

    /// Returns device counters.
    pub fn stats(&self) -> DeviceStats {
        todo!()
    }

    /// Returns every peer's state, sorted by public key.
    pub fn peers(&self, now: Instant) -> Vec<PeerStats> {
        let _ = now;
        todo!()
    }
}
