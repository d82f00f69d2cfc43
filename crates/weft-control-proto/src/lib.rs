//! Weft's control protocol, sans-IO: the Noise IK handshake over an HTTP
//! upgrade, authenticated length-prefixed frames with fragmentation, the
//! JSON message codec (with encode-once splicing for the server), and the
//! client's map session that turns a map stream into a netmap and diffs.
//!
//! What it is not: no sockets, no HTTP library, no async runtime, no clock
//! and no OS randomness. Drivers (the `weft-control` server, the node's
//! control client) move bytes, pass `now: Instant` and seeds, and act on
//! the events and errors. The wire format is specified in `docs/PROTOCOL.md`;
//! the message types live in `weft-types`.
//!
//! - [`upgrade`]: `GET /key`, the `POST /control` upgrade headers and the
//!   server's refusals.
//! - [`Connection`] ([`ClientConnection`], [`ServerConnection`]): handshake,
//!   records, keep-alives, timeouts.
//! - [`encode`]: [`Encoded`] fragments, full maps spliced from them, map
//!   stream numbering on the server.
//! - [`MapSession`]: full map + deltas → [`weft_types::NetMap`] + [`NetMapDiff`].
//! - [`ControlClient`]: the node's conversation on one connection
//!   (register, auth URL follow-up, map stream, updates, SSH checks): the
//!   one implementation, driven for `weftd` by `weft-client`.
//! - [`SshCheckCall`]: one SSH check (`check` rules) as the node sees it.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod client;
pub mod connection;
pub mod encode;
pub mod frame;
pub mod map_session;
pub mod noise;
pub mod ssh_check;
pub mod upgrade;

pub use client::{ClientEvent, ClientParams, ControlClient, ControlClientError};
pub use connection::{
    Accepted, ChannelConfig, ChannelError, ClientConnection, ClientRole, Connection, Event, Role,
    ServerConnection, ServerRole,
};
pub use encode::{EncodeError, Encoded, FullMapParts, MapStream};
pub use map_session::{ChangedFields, MapError, MapSession, NetMapDiff, PeerDiff};
pub use ssh_check::{CheckError, CheckProgress, CheckResult, SshCheckCall, check_id_from};
pub use upgrade::{UpgradeError, UpgradeHeaders, UpgradeRefused, UpgradeRequest};
