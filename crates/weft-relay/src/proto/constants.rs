//! DERP's protocol constants, in a file of their own so that the fuzz
//! workspace's `relay_frames` target compiles the same ones as the relay
//! (it includes `frame.rs` and this file by path).

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
