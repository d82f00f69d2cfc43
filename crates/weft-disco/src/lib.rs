//! Disco ("discovery"), sans-IO: how two Weft nodes find a direct UDP path
//! to each other and keep checking that it still works.
//!
//! Disco messages share the node's one UDP socket with WireGuard. They are
//! small sealed datagrams (NaCl box between the two daemons' *disco keys*,
//! which are new at every daemon start and published through control), so
//! only the peer named in the netmap can produce or read them.
//!
//! * [`message`]: the wire codec. A datagram is recognised by its magic
//!   prefix ([`is_disco`]), parsed once into a [`Sealed`] view, and opened
//!   into a [`Message`] (`Ping`, `Pong`, `CallMeMaybe`).
//! * [`prober`]: [`PathProber`], one peer's path state on injected time:
//!   ping every candidate endpoint, record round-trip times, pick the best,
//!   keep it trusted with heartbeats, fall back to probing when it goes quiet.
//! * [`stun`]: the STUN Binding codec (RFC 8489): build a request with a
//!   transaction id into a caller buffer, parse the response into
//!   `(TxId, reflexive address)`; the server side's answer. Shared by
//!   weftd's STUN client and the STUN server in `weft-relay`.
//! * [`Disco`]: every peer's prober plus the sealing and pending-ping
//!   bookkeeping, driven like every Weft core:
//!   1. feed datagrams with [`Disco::handle_udp`] and configuration with
//!      [`Disco::upsert_peer`] / [`Disco::remove_peer`];
//!   2. call [`Disco::handle_timeout`] at [`Disco::poll_timeout`] (or on a
//!      steady tick);
//!   3. drain [`Disco::poll_transmit`] (datagrams to send) and
//!      [`Disco::poll_event`] (best path changes, ping results).
//!
//! What it is not: no sockets, no clock, no OS randomness (the caller passes
//! `now` and a seed), no STUN I/O, no relay. NAT traversal (`CallMeMaybe` sent
//! via a relay so both sides punch at once) is left for the relay issue; the
//! message already exists.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod disco;
pub mod message;
pub mod prober;
pub mod stun;

pub use disco::{Disco, Event, PingId, PingOutcome, Transmit};
pub use message::{
    CallMeMaybe, DecodeError, MAGIC, Message, Ping, Pong, Sealed, SharedBox, TxId, is_disco,
};
pub use prober::{BestChange, PathProber};
