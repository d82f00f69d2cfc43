//! The control client's I/O: TCP, the two HTTP exchanges (`GET /key`, the
//! `POST /control` upgrade) and a task per connection that drives the
//! sans-IO protocol of `weft-control-proto` over the socket.
//!
//! Three levels, pick the one that fits:
//! - [`fetch_key`]: the server's static key, to pin (`GET /key`).
//! - [`Session`]: the node's whole conversation on one connection
//!   (register with a key or interactively, then the map stream as netmaps
//!   and diffs, endpoint and host-info updates). Tests and simple nodes use
//!   it; [`Backoff`] paces reconnects, and [`Session::close`] hands the last
//!   good netmap to the next connection.
//! - [`register`] / [`map`]: one `register` exchange, or a map stream of raw
//!   responses, for a daemon that keeps its own state machine (weftd).
//! - [`ssh_check`]: one SSH check (`check` rules) on its own connection.
//! - [`Channel`]: a bare authenticated connection carrying typed messages.
//!
//! What it is not: no key storage, no retry policy of its own, no netmap
//! consumer. Plain `http://` is fine: the Noise channel authenticates the
//! server (by the pinned key) and encrypts everything after the upgrade.
//! `https://` (for fetching the key the first time over TLS) is not
//! implemented yet and fails with [`ClientError::TlsUnsupported`].
//!
//! Errors name the server URL and the cause, e.g.
//! `cannot reach control server http://198.18.0.1:8080: connection refused`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod channel;
mod driver;
mod error;
pub mod http;
mod ops;
mod session;
pub mod ssh_check;
mod url;

pub use channel::{Channel, ConnectOptions, Target};
pub use error::ClientError;
pub use http::fetch_key;
pub use ops::{Backoff, MapEvent, MapEvents, MapUpdate, map, register};
pub use session::{Session, SessionEvent};
pub use ssh_check::{SshCheckWait, ssh_check};
pub use url::ControlUrl;
/// The protocol pieces a caller of this crate needs, re-exported.
pub use weft_control_proto::{
    ChannelConfig, CheckProgress, CheckResult, ClientParams, MapSession, NetMapDiff, PeerDiff,
    check_id_from,
};
