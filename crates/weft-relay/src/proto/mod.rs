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

mod constants;
pub use constants::{
    DERP_PATH, FAST_START_HEADER, FRAME_HEADER_LEN, KEEP_ALIVE, KEY_LEN, MAGIC,
    MAX_FRAME_FROM_CLIENT, MAX_FRAME_FROM_SERVER, MAX_PACKET_SIZE, NONCE_LEN, PROTOCOL_VERSION,
};
