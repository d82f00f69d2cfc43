//! The relay protocol, sans-IO: Tailscale's DERP as it is on the wire
//! (`derp/derp.go`, protocol version 2), with no sockets, no clock and no
//! randomness of its own.
//!
//! * [`frame`]: the frame codec — a 1-byte type, a 4-byte big-endian length,
//!   the payload — parsed into [`Frame`] views borrowing the bytes, and
//!   written into caller buffers. Bounded: a frame longer than the reader's
//!   limit is an error before any payload is read.
//! * [`login`]: the handshake on both sides (server key, `ClientInfo` sealed
//!   to the server key, `ServerInfo` sealed back).
//! * [`client`]: [`ClientCore`], one client connection's state machine
//!   (login, pings, keep-alive, the server's control frames).
//! * [`server`]: what a server does with one client's frames once it is in.
//! * [`routes`]: the server's routing state ([`Routes`]): node key →
//!   connection, duplicate keys, who gets `PeerGone` when a peer leaves.
//! * [`queue`]: [`FrameBuffer`], the encoded frames waiting for one
//!   connection, bounded in bytes, drops counted.
//!
//! Login, as the server sees it:
//! ```text
//! client                                   server
//!   |  GET /derp, Upgrade: DERP  ------------>|
//!   |<------------ 101 Switching Protocols    |
//!   |<------------ ServerKey (magic, key)     |
//!   |  ClientInfo (key, nonce, box(JSON)) --->|  box opens under the client's key
//!   |                                         |  = proof it holds the private key;
//!   |                                         |  admission decides on the key
//!   |<------------ ServerInfo (nonce, box)    |
//!   |  SendPacket(dst, bytes) --------------->|---> RecvPacket(src, bytes) to dst
//! ```

pub mod client;
pub mod frame;
pub mod login;
pub mod queue;
pub mod routes;
pub mod server;

pub use client::{ClientCore, ClientError, ClientEvent, ClientOptions, Received};
pub use frame::{Frame, FrameError, FrameType, PeerGoneReason};
pub use login::{ClientInfo, LoginError, ServerInfo};
pub use queue::{FrameBuffer, Push, Taken};
pub use routes::{ConnId, Lookup, RouteChanges, Routes};

use std::time::Duration;

/// The 8 bytes that open a `ServerKey` frame: "DERP🔑".
pub const MAGIC: [u8; 8] = *b"DERP\xf0\x9f\x94\x91";
/// The protocol version we speak (2: `RecvPacket` carries the source key).
pub const PROTOCOL_VERSION: u32 = 2;
/// Bytes of a node (or server) public key.
pub const KEY_LEN: usize = 32;
/// Bytes of a NaCl box nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes of a frame header: type and big-endian length.
pub const FRAME_HEADER_LEN: usize = 5;
/// The largest packet a client may send or receive (64 KiB).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// The largest frame a client accepts from a server (derp's client: 1 MiB).
pub const MAX_FRAME_FROM_SERVER: usize = 1 << 20;
/// The largest frame a server accepts from a client: a `SendPacket` of the
/// largest packet, or a `ClientInfo` (whose limit derp puts at 256 KiB).
pub const MAX_FRAME_FROM_CLIENT: usize = 256 << 10;
/// How often a server sends `KeepAlive` at least (clients treat twice this
/// without a frame as a dead connection).
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);
/// The HTTP path of the upgrade.
pub const DERP_PATH: &str = "/derp";
/// The request header with which derphttp clients that already know the
/// server's key ask for no `101` answer. We never offer the metadata
/// certificate that leads clients to send it, so none does.
pub const FAST_START_HEADER: &str = "Derp-Fast-Start";
