//! The data `Disco` takes and gives: transmits, events, counters.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use weft_types::{Endpoint, NodePublic};

use crate::netcheck::{Report, StunTxId};
use crate::path::{Path, PathState, RegionId};

/// The address a pong names as the source of a ping that came through a
/// relay: `127.3.3.40:<region>`, Tailscale's `tailcfg.DerpMagicIP`, so
/// that Tailscale's disco reads it the same way.
pub const RELAY_MAGIC_IP: Ipv4Addr = Ipv4Addr::new(127, 3, 3, 40);

/// Where a disco datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    /// Straight to this UDP address, from the WireGuard socket.
    Udp(SocketAddr),
    /// Through the relay of `region` (a DERP `SendPacket`), to `node`.
    Relay {
        /// The relay region.
        region: RegionId,
        /// The receiving node's key.
        node: NodePublic,
    },
}

/// Something to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transmit {
    /// A sealed disco datagram; send `payload` as it is.
    Disco {
        /// Where to.
        to: Destination,
        /// The datagram.
        payload: Vec<u8>,
    },
    /// A STUN Binding request for netcheck: encode it with `tx_id` (the
    /// crate's STUN codec) and send it to `server` from the WireGuard
    /// socket; feed the answer to [`crate::Disco::handle_stun_response`].
    Stun {
        /// The STUN server.
        server: SocketAddr,
        /// The request's transaction id.
        tx_id: StunTxId,
    },
}

/// Identifies a ping asked for with [`crate::Disco::ping`].
pub type PingId = u64;

/// How an asked-for ping ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PingOutcome {
    /// A pong came back.
    Pong {
        /// The path the pong came over (`weft ping` prints
        /// `via relay(<region>)` or `via IP:PORT`).
        path: Path,
        /// Round-trip time.
        rtt: Duration,
    },
    /// No pong within the ping's timeout (or the peer went away).
    Timeout,
}

/// Something the driver should act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The path for `peer`'s traffic changed: WireGuard sends to the
    /// direct address, or through the relay region to the peer's node key.
    /// `None`: no path (the peer has no relay and no direct path answers).
    PathChanged {
        /// The peer's node key.
        peer: NodePublic,
        /// The new path.
        path: Option<Path>,
    },
    /// A ping asked for with [`crate::Disco::ping`] finished.
    Ping {
        /// The id [`crate::Disco::ping`] returned.
        id: PingId,
        /// Which peer.
        peer: NodePublic,
        /// What happened.
        outcome: PingOutcome,
    },
    /// A pong measured the round trip to `peer` over `path`.
    Latency {
        /// The peer's node key.
        peer: NodePublic,
        /// The path the pong came over.
        path: Path,
        /// Round-trip time.
        rtt: Duration,
    },
    /// Our home relay region changed: connect to it, tell it it is our
    /// preferred one (DERP `NotePreferred`) and report it to control.
    HomeRelayChanged {
        /// The new home; `None` when the relay map has no region left.
        region: Option<RegionId>,
    },
    /// Our endpoints (the driver's local ones plus what netcheck found)
    /// changed: report them to control.
    EndpointsChanged {
        /// All of them, sorted.
        endpoints: Vec<Endpoint>,
    },
    /// A netcheck run finished (`weft netcheck` shows this).
    Netcheck(Report),
}

/// One relay region as disco needs it: its id and its STUN servers'
/// addresses (the driver resolves host names; empty: no STUN there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayRegionInfo {
    /// The region id.
    pub id: RegionId,
    /// Its STUN servers.
    pub stun: Vec<SocketAddr>,
}

/// Datagrams and answers dropped, by reason (all counted, none logged
/// above trace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Not a disco datagram, too short, or garbage inside the box.
    pub malformed: u64,
    /// From a disco key that is no peer's.
    pub unknown_sender: u64,
    /// The box did not open: spoofed (a forged CallMeMaybe among them) or
    /// tampered with.
    pub unauthenticated: u64,
    /// A ping naming another node key than its sender's, or a datagram the
    /// relay delivered from another node than the disco key belongs to.
    pub wrong_node_key: u64,
    /// A CallMeMaybe that did not come through the relay.
    pub call_me_maybe_rejected: u64,
    /// A STUN answer for no transaction of ours, or from another address
    /// than we asked.
    pub stun_unexpected: u64,
}

impl Stats {
    /// Returns every counter with its snake_case name, as metrics and
    /// `weft status --json` label them (the names never change).
    pub fn by_reason(&self) -> [(&'static str, u64); 6] {
        [
            ("malformed", self.malformed),
            ("unknown_sender", self.unknown_sender),
            ("unauthenticated", self.unauthenticated),
            ("wrong_node_key", self.wrong_node_key),
            ("call_me_maybe_rejected", self.call_me_maybe_rejected),
            ("stun_unexpected", self.stun_unexpected),
        ]
    }
}

/// One peer as `weft status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerStatus {
    /// The path its traffic takes.
    pub path: Option<Path>,
    /// Where the path state machine stands.
    pub state: PathState,
    /// The direct path's last round trip.
    pub direct_rtt: Option<Duration>,
    /// Its home relay, if we have that region.
    pub relay: Option<RegionId>,
}
