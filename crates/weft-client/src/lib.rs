//! The control client's I/O: the two HTTP exchanges (`GET /key`, the
//! `POST /control` upgrade) behind a [`Dialer`], and one task per
//! connection that drives the sans-IO protocol of `weft-control-proto`
//! over the byte stream.
//!
//! Pick the level that fits:
//! - [`fetch_key`]: the server's static key, to pin (`GET /key`).
//! - [`Session`]: the node's conversation on one connection, run by the
//!   protocol crate's `ControlClient` (its only implementation): register
//!   with a key or interactively, then the map stream as netmaps and diffs,
//!   endpoint and host-info updates, keep-alives, SSH checks. `weftd`, the
//!   tests and the load generator all talk to control through it;
//!   [`Backoff`] paces reconnects, and [`Session::close`] hands the last
//!   good netmap to the next connection.
//! - [`register`]: one `register` exchange (a session that stops at the
//!   answer).
//! - [`ssh_check`]: one SSH check (`check` rules) on a session of its own.
//! - [`Channel`]: a bare authenticated connection carrying typed messages,
//!   for tests and tools that speak the protocol by hand.
//!
//! What it is not: no key storage, no retry policy of its own, no netmap
//! consumer. Plain `http://` is fine: the Noise channel authenticates the
//! server (by the pinned key) and encrypts everything after the upgrade.
//! `https://` runs both HTTP exchanges (and so the byte stream after the
//! upgrade) over TLS ([`tls`]: rustls, the system's roots, plus a private
//! CA from [`ControlUrl::with_ca_file`]); the pinned server key is still
//! checked by the Noise handshake on top.
//!
//! Errors name the server URL and the cause, e.g.
//! `cannot reach control server http://198.18.0.1:8080: connection refused`.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod backoff;
mod channel;
mod dial;
mod driver;
mod error;
pub mod http;
mod session;
pub mod ssh_check;
pub mod ssh_recording;
pub mod tls;
mod url;

pub use backoff::Backoff;
pub use channel::{Channel, ConnectOptions, Target};
pub use dial::{Dialer, Io, SharedDialer, TcpDialer, Upgraded};
pub use error::ClientError;
pub use http::fetch_key;
pub use session::{Session, SessionEvent, register};
pub use ssh_check::{SshCheckWait, ssh_check};
pub use ssh_recording::{UploadError, UploadOutcome, upload_ssh_recording};
pub use url::ControlUrl;
/// The protocol pieces a caller of this crate needs, re-exported.
pub use weft_control_proto::{
    ChannelConfig, CheckProgress, CheckResult, ClientParams, MapSession, NetMapDiff, PeerDiff,
    check_id_from,
};
