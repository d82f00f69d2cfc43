//! WireGuard for Weft, sans-IO.
//!
//! This crate holds the protocol side of Weft's data plane and nothing else:
//! no sockets, no TUN, no threads, no clock reads of its own. Drivers (see
//! `weft-net`) feed it packets and the current time and do what it says.
//! (boringtun 0.7.1 itself reads the wall clock once per session it creates,
//! to stamp handshakes; see [`session`].)
//!
//! * [`Device`]: a WireGuard interface — private key, listen port, fwmark and
//!   peers — with the cryptokey routing table ([`allowed_ips::AllowedIps`]).
//!   Its data-path methods take `&self` so a TUN thread and a UDP thread can
//!   drive one device concurrently (one lock per peer).
//! * [`session`]: one peer's Noise session behind our own [`session::WgSession`]
//!   trait, implemented on boringtun's `noise::Tunn`. boringtun reads its own
//!   clock; we build it with `mock-instant` and set that (thread-local) clock
//!   from the caller's `now` right before every call, so every timer in this
//!   crate — ours and boringtun's — runs on injected time.
//! * [`uapi`]: the cross-platform UAPI text protocol (`get=1` / `set=1`)
//!   spoken by `wg(8)`, parsed into typed [`DeviceUpdate`]s.
//! * [`wire`]: WireGuard message types and sizes. IP packets travel as
//!   `weft_packet::IpPacket` views: [`Device::encapsulate`] takes one (the
//!   driver checked the bytes read from TUN), [`Device::decapsulate`] builds
//!   one from the decrypted bytes (for the AllowedIPs source check) and hands
//!   it back, so the packet filter and GRO read the same view.
//!
//! Driving loop (driver side):
//! 1. Packets from TUN → [`Device::encapsulate`]; datagrams from UDP →
//!    [`Device::decapsulate`]. Both write into the caller's buffer, and hand
//!    any extra datagrams (handshake messages, packets that waited for a
//!    handshake) to a `send` callback.
//! 2. Every [`TIMER_TICK`] call [`Device::handle_timeout`].
//! 3. Configuration comes through [`Device::apply`] (typed) or
//!    [`Device::uapi_set`] (text); both are all-or-nothing. Act on the
//!    returned [`Applied`] (rebind, set the mark).
//!
//! What this crate does not do: resolve host names (UAPI endpoints are
//! numeric), pad transport messages to 16 bytes (boringtun does not; the
//! inner packet's own length field makes padding unnecessary for interop),
//! or read OS randomness itself — boringtun draws ephemeral keys from the OS
//! RNG internally.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod allowed_ips;
mod device;
pub mod session;
pub mod uapi;
pub mod wire;

pub use device::{
    Applied, Decapsulated, Device, DeviceStats, DeviceUpdate, DropReason, Encapsulated, MIN_OUT,
    OVERHEAD, PeerStats, PeerUpdate, TIMER_TICK,
};
