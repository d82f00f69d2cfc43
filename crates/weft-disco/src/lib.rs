//! Disco ("discovery"), sans-IO: how two Weft nodes reach each other —
//! through a relay from the first packet, directly as soon as a UDP path
//! through the NATs between them is found — and keep checking that the path
//! still works.
//!
//! Disco messages share the node's one UDP socket with WireGuard, and go
//! through relays (DERP) when no UDP path is known. They are small sealed
//! datagrams (NaCl box between the two daemons' *disco keys*, which are new
//! at every daemon start and published through control), so only the peer
//! named in the netmap can produce or read them.
//!
//! * [`message`]: the wire codec. A datagram is recognised by its magic
//!   prefix ([`is_disco`]), parsed once into a [`Sealed`] view, and opened
//!   into a [`Message`] (`Ping`, `Pong`, `CallMeMaybe`).
//! * [`prober`]: [`PathProber`], which of one peer's UDP endpoints answer:
//!   pings, round trips, the best one, heartbeats, loss.
//! * [`path`]: one peer's path state machine ([`PathState`]: probing →
//!   direct, falling back to its relay region; roaming; CallMeMaybe).
//! * [`home_relay`]: [`HomeRelay`], our home relay region by measured
//!   latency, with hysteresis.
//! * [`netcheck`]: [`Netcheck`], the STUN probe planner and its [`Report`]
//!   (UDP yes/no, public addresses, hard NAT, per-region latency).
//! * [`stun`]: the STUN Binding codec (RFC 8489): build a request with a
//!   transaction id into a caller buffer, parse the response into
//!   `(TxId, reflexive address)`; the server side's answer. Used by weftd
//!   for netcheck's probes and by the STUN server in `weft-relay`.
//! * [`Disco`]: all of the above behind one object, the one the driver
//!   (weftd) uses. States, timers and constants: `docs/PATHS.md`.
//!
//! # Driving a [`Disco`]
//!
//! It neither reads the clock nor does I/O; every input carries `now`, and
//! it only changes when called. The driver owns the UDP socket (shared with
//! WireGuard), the relay connections and a timer, and loops:
//!
//! 1. **Feed inputs**, each with `now`:
//!    * configuration from the netmap: [`Disco::upsert_peer`] (node key,
//!      disco key, endpoints, home relay region) / [`Disco::remove_peer`],
//!      [`Disco::set_relay_map`] (regions with resolved STUN addresses),
//!      [`Disco::set_node_key`];
//!    * our own endpoints when they change (interface addresses, link
//!      change): [`Disco::handle_local_endpoints_changed`];
//!    * datagrams: UDP ones with the disco magic to [`Disco::handle_udp`],
//!      relay `RecvPacket`s with the disco magic to [`Disco::handle_relay`],
//!      decoded STUN Binding responses to [`Disco::handle_stun_response`];
//!    * relay connection state and latency: [`Disco::handle_relay_connection`],
//!      [`Disco::handle_relay_latency`];
//!    * WireGuard traffic sent through the relay:
//!      [`Disco::handle_relayed_traffic`]; `weft ping`: [`Disco::ping`];
//!      `weft netcheck`: [`Disco::netcheck_now`].
//! 2. **Run timers**: call [`Disco::handle_timeout`] when the instant that
//!    [`Disco::poll_timeout`] returns has come (it returns the reason too;
//!    ask again after every input, since inputs can make it earlier).
//! 3. **Drain outputs** after every input and timeout:
//!    * [`Disco::poll_transmit`] until `None`: a [`Transmit::Disco`] is a
//!      sealed datagram for [`Destination::Udp`] (send from the WireGuard
//!      socket) or [`Destination::Relay`] (DERP `SendPacket` to that node
//!      key on that region's relay, connecting to it if needed); a
//!      [`Transmit::Stun`] is a STUN Binding request to encode with its
//!      transaction id and send from the WireGuard socket;
//!    * [`Disco::poll_event`] until `None`: [`Event::PathChanged`] (send the
//!      peer's WireGuard packets to this UDP address, or through this relay
//!      region; [`Disco::path`] answers the same at any time),
//!      [`Event::HomeRelayChanged`] (connect, `NotePreferred`, report to
//!      control), [`Event::EndpointsChanged`] (report to control),
//!      [`Event::Ping`], [`Event::Latency`], [`Event::Netcheck`].
//!
//! What it is not: no sockets, no clock, no OS randomness (the caller passes
//! `now` and a seed, so a run replays exactly), no DERP encoding, no STUN I/O
//! ([`stun`] is a pure codec), no
//! DNS (the driver resolves relay host names).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod disco;
pub mod home_relay;
pub mod message;
pub mod netcheck;
pub mod path;
pub mod prober;
pub mod stun;

pub use disco::{
    Destination, Disco, Event, PeerStatus, PingId, PingOutcome, RELAY_MAGIC_IP, RelayRegionInfo,
    Stats, Transmit,
};
pub use home_relay::{HomeChange, HomeRelay, RelayHealth};
pub use message::{
    CallMeMaybe, DecodeError, MAGIC, Message, Ping, Pong, Sealed, SharedBox, TxId, is_disco,
};
pub use netcheck::{Netcheck, Report, StunProbe, StunTxId};
pub use path::{Path, PathState, RegionId};
pub use prober::{BestChange, PathProber};
