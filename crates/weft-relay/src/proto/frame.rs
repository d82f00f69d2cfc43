//! DERP frames: `type (1 byte) | length (4 bytes, big-endian) | payload`.
//!
//! | type | name | payload (derp.go) |
//! |---|---|---|
//! | 0x01 | ServerKey | 8-byte magic "DERP🔑", 32-byte server key, (more: future use) |
//! | 0x02 | ClientInfo | 32-byte client key, 24-byte nonce, box(JSON) |
//! | 0x03 | ServerInfo | 24-byte nonce, box(JSON) |
//! | 0x04 | SendPacket | 32-byte destination key, packet |
//! | 0x05 | RecvPacket | 32-byte source key, packet |
//! | 0x06 | KeepAlive | none |
//! | 0x07 | NotePreferred | 1 byte: 1 if this is the client's home relay |
//! | 0x08 | PeerGone | 32-byte key, optional 1-byte reason |
//! | 0x09 | PeerPresent | 32-byte key, optional 16-byte IP + 2-byte port, optional flags |
//! | 0x0a | ForwardPacket | 32-byte source, 32-byte destination, packet (mesh only) |
//! | 0x10 | WatchConns | none (mesh only) |
//! | 0x11 | ClosePeer | 32-byte key (mesh only) |
//! | 0x12 | Ping | 8 bytes, echoed in Pong |
//! | 0x13 | Pong | the 8 bytes of the Ping |
//! | 0x14 | Health | UTF-8 text of a problem; empty = healthy again |
//! | 0x15 | Restarting | two big-endian u32: reconnect in (ms), try for (ms) |
//!
//! Reading is two steps: [`peek_header`] finds out whether a whole frame is
//! in the buffer (and refuses lengths above the reader's limit before any
//! payload is read), then [`Frame::parse`] checks the payload against its
//! type. Like derp, readers skip frames of unknown types and ignore bytes a
//! newer peer may append where derp does; everything else that does not fit
//! is an error. Writing goes into any [`BufMut`] the caller owns.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::BufMut;
use weft_types::NodePublic;

use super::{FRAME_HEADER_LEN, KEY_LEN, MAGIC, MAX_PACKET_SIZE, NONCE_LEN};

/// The type byte of a frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum FrameType {
    /// Server → client: the server's public key.
    ServerKey = 0x01,
    /// Client → server: the client's key and sealed info.
    ClientInfo = 0x02,
    /// Server → client: sealed server info; login is done.
    ServerInfo = 0x03,
    /// Client → server: a packet for a node key.
    SendPacket = 0x04,
    /// Server → client: a packet from a node key.
    RecvPacket = 0x05,
    /// Server → client: nothing, to keep the connection alive.
    KeepAlive = 0x06,
    /// Client → server: whether this is the client's home relay.
    NotePreferred = 0x07,
    /// Server → client: a peer is gone (or was never here).
    PeerGone = 0x08,
    /// Server → client: a peer is present (mesh watchers only).
    PeerPresent = 0x09,
    /// Mesh: a packet forwarded from another server of the region.
    ForwardPacket = 0x0a,
    /// Mesh: subscribe to connects and disconnects.
    WatchConns = 0x10,
    /// Mesh: close a peer's connection.
    ClosePeer = 0x11,
    /// Either way: please answer with a Pong.
    Ping = 0x12,
    /// Either way: the answer to a Ping.
    Pong = 0x13,
    /// Server → client: a problem with this connection, or none.
    Health = 0x14,
    /// Server → client: the server is restarting.
    Restarting = 0x15,
}

impl FrameType {
    /// Returns the frame type of a type byte, if it is one we know.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::ServerKey,
            0x02 => Self::ClientInfo,
            0x03 => Self::ServerInfo,
            0x04 => Self::SendPacket,
            0x05 => Self::RecvPacket,
            0x06 => Self::KeepAlive,
            0x07 => Self::NotePreferred,
            0x08 => Self::PeerGone,
            0x09 => Self::PeerPresent,
            0x0a => Self::ForwardPacket,
            0x10 => Self::WatchConns,
            0x11 => Self::ClosePeer,
            0x12 => Self::Ping,
            0x13 => Self::Pong,
            0x14 => Self::Health,
            0x15 => Self::Restarting,
            _ => return None,
        })
    }
}

/// Why a peer is gone (the optional reason byte of `PeerGone`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PeerGoneReason {
    /// It was connected and disconnected (0x00; also the default when the
    /// byte is missing).
    Disconnected,
    /// The server does not know it (0x01), sent in answer to a packet for it.
    NotHere,
    /// A reason byte this version does not know.
    Other(u8),
}

impl PeerGoneReason {
    fn from_u8(b: u8) -> Self {
        match b {
            0x00 => Self::Disconnected,
            0x01 => Self::NotHere,
            other => Self::Other(other),
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Self::Disconnected => 0x00,
            Self::NotHere => 0x01,
            Self::Other(b) => b,
        }
    }
}

/// One frame, parsed; payload slices borrow the buffer it was read from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Frame<'a> {
    /// The server's public key.
    ServerKey {
        /// The server's key.
        key: NodePublic,
    },
    /// The client's key and its info sealed to the server's key.
    ClientInfo {
        /// The client's node key.
        key: NodePublic,
        /// The 24-byte nonce and the box.
        sealed: &'a [u8],
    },
    /// The server's info sealed to the client's key.
    ServerInfo {
        /// The 24-byte nonce and the box.
        sealed: &'a [u8],
    },
    /// A packet for `dst`.
    SendPacket {
        /// The destination node key.
        dst: NodePublic,
        /// The packet (at most [`MAX_PACKET_SIZE`]).
        packet: &'a [u8],
    },
    /// A packet from `src`.
    RecvPacket {
        /// The source node key.
        src: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// A keep-alive.
    KeepAlive,
    /// Whether this relay is the client's home.
    NotePreferred {
        /// The client's home relay is this one.
        preferred: bool,
    },
    /// A peer is gone.
    PeerGone {
        /// The peer.
        peer: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer is present.
    PeerPresent {
        /// The peer.
        peer: NodePublic,
        /// Its address as the server sees it, if sent.
        addr: Option<SocketAddr>,
        /// Its flags byte, if sent.
        flags: Option<u8>,
    },
    /// Mesh: a packet forwarded between servers.
    ForwardPacket {
        /// The original sender.
        src: NodePublic,
        /// The destination.
        dst: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// Mesh: subscribe to presence changes.
    WatchConns,
    /// Mesh: close a peer.
    ClosePeer {
        /// The peer to close.
        peer: NodePublic,
    },
    /// A ping.
    Ping {
        /// The 8 bytes to echo.
        data: [u8; 8],
    },
    /// A pong.
    Pong {
        /// The echoed 8 bytes.
        data: [u8; 8],
    },
    /// The connection's health: a problem, or empty when healthy again.
    Health {
        /// The problem text (UTF-8 from a well-behaved server).
        problem: &'a [u8],
    },
    /// The server is restarting.
    Restarting {
        /// When to reconnect (advice).
        reconnect_in: Duration,
        /// How long to keep trying fast (advice).
        try_for: Duration,
    },
    /// A frame of a type this version does not know; readers skip it.
    Unknown {
        /// The type byte.
        frame_type: u8,
    },
}

/// Why bytes are not an acceptable frame.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum FrameError {
    /// The header announces more bytes than this reader accepts.
    #[error("frame of type {frame_type:#04x} announces {len} bytes, more than the limit of {max}")]
    TooLong {
        /// The type byte.
        frame_type: u8,
        /// The announced payload length.
        len: usize,
        /// The reader's limit.
        max: usize,
    },
    /// The payload is shorter than its type needs.
    #[error("{frame_type:?} frame of {len} bytes is too short")]
    TooShort {
        /// The frame type.
        frame_type: FrameType,
        /// The payload length.
        len: usize,
    },
    /// The payload must have an exact length and does not.
    #[error("{frame_type:?} frame has the wrong length {len}")]
    BadLength {
        /// The frame type.
        frame_type: FrameType,
        /// The payload length.
        len: usize,
    },
    /// A `ServerKey` frame without the DERP magic.
    #[error("server greeting without the DERP magic")]
    BadMagic,
    /// A packet larger than [`MAX_PACKET_SIZE`].
    #[error("packet of {len} bytes is larger than the 64 KiB maximum")]
    PacketTooLarge {
        /// The packet length.
        len: usize,
    },
}

/// The header of a whole frame found at the start of a buffer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FrameHeader {
    /// The type byte.
    pub frame_type: u8,
    /// The payload length.
    pub len: usize,
}

impl FrameHeader {
    /// Returns the frame's length including its header.
    pub fn total_len(&self) -> usize {
        FRAME_HEADER_LEN + self.len
    }
}

/// Looks for one frame at the start of `buf`: `Ok(None)` while the header or
/// the payload is incomplete, the header once the whole frame is there.
///
/// # Errors
/// [`FrameError::TooLong`] as soon as the header announces more than `max`
/// payload bytes, so a reader never buffers more than its limit.
pub fn peek_header(buf: &[u8], max: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some(h) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > max {
        return Err(FrameError::TooLong {
            frame_type: h[0],
            len,
            max,
        });
    }
    if buf.len() < FRAME_HEADER_LEN + len {
        return Ok(None);
    }
    Ok(Some(FrameHeader {
        frame_type: h[0],
        len,
    }))
}

fn key_at(p: &[u8], at: usize) -> NodePublic {
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&p[at..at + KEY_LEN]);
    NodePublic::from_bytes(k)
}

impl<'a> Frame<'a> {
    /// Decodes the first frame of `buf`: `Ok(None)` while it is incomplete,
    /// else the frame and the bytes it took.
    ///
    /// # Errors
    /// As [`peek_header`] and [`Frame::parse`].
    pub fn decode(buf: &'a [u8], max: usize) -> Result<Option<(Frame<'a>, usize)>, FrameError> {
        let Some(h) = peek_header(buf, max)? else {
            return Ok(None);
        };
        let frame = Frame::parse(h.frame_type, &buf[FRAME_HEADER_LEN..h.total_len()])?;
        Ok(Some((frame, h.total_len())))
    }

    /// Parses a payload of type `frame_type`.
    ///
    /// # Errors
    /// [`FrameError`] when the payload does not fit its type.
    pub fn parse(frame_type: u8, p: &'a [u8]) -> Result<Frame<'a>, FrameError> {
        let Some(ty) = FrameType::from_u8(frame_type) else {
            return Ok(Frame::Unknown { frame_type });
        };
        let need = |n: usize| {
            if p.len() < n {
                Err(FrameError::TooShort {
                    frame_type: ty,
                    len: p.len(),
                })
            } else {
                Ok(())
            }
        };
        let exact = |n: usize| {
            if p.len() != n {
                Err(FrameError::BadLength {
                    frame_type: ty,
                    len: p.len(),
                })
            } else {
                Ok(())
            }
        };
        let packet = |at: usize| {
            let packet = &p[at..];
            if packet.len() > MAX_PACKET_SIZE {
                Err(FrameError::PacketTooLarge { len: packet.len() })
            } else {
                Ok(packet)
            }
        };
        Ok(match ty {
            FrameType::ServerKey => {
                need(MAGIC.len() + KEY_LEN)?;
                if p[..MAGIC.len()] != MAGIC {
                    return Err(FrameError::BadMagic);
                }
                Frame::ServerKey {
                    key: key_at(p, MAGIC.len()),
                }
            }
            FrameType::ClientInfo => {
                need(KEY_LEN + NONCE_LEN)?;
                Frame::ClientInfo {
                    key: key_at(p, 0),
                    sealed: &p[KEY_LEN..],
                }
            }
            FrameType::ServerInfo => {
                need(NONCE_LEN)?;
                Frame::ServerInfo { sealed: p }
            }
            FrameType::SendPacket => {
                need(KEY_LEN)?;
                Frame::SendPacket {
                    dst: key_at(p, 0),
                    packet: packet(KEY_LEN)?,
                }
            }
            FrameType::RecvPacket => {
                need(KEY_LEN)?;
                Frame::RecvPacket {
                    src: key_at(p, 0),
                    packet: packet(KEY_LEN)?,
                }
            }
            FrameType::KeepAlive => Frame::KeepAlive,
            FrameType::NotePreferred => {
                exact(1)?;
                Frame::NotePreferred {
                    preferred: p[0] != 0,
                }
            }
            FrameType::PeerGone => {
                need(KEY_LEN)?;
                Frame::PeerGone {
                    peer: key_at(p, 0),
                    reason: p.get(KEY_LEN).map_or(PeerGoneReason::Disconnected, |b| {
                        PeerGoneReason::from_u8(*b)
                    }),
                }
            }
            FrameType::PeerPresent => {
                need(KEY_LEN)?;
                let addr = p.get(KEY_LEN..KEY_LEN + 18).map(|a| {
                    let mut ip = [0u8; 16];
                    ip.copy_from_slice(&a[..16]);
                    let v6 = Ipv6Addr::from(ip);
                    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
                    SocketAddr::new(ip, u16::from_be_bytes([a[16], a[17]]))
                });
                Frame::PeerPresent {
                    peer: key_at(p, 0),
                    addr,
                    flags: addr.and(p.get(KEY_LEN + 18).copied()),
                }
            }
            FrameType::ForwardPacket => {
                need(2 * KEY_LEN)?;
                Frame::ForwardPacket {
                    src: key_at(p, 0),
                    dst: key_at(p, KEY_LEN),
                    packet: packet(2 * KEY_LEN)?,
                }
            }
            FrameType::WatchConns => {
                exact(0)?;
                Frame::WatchConns
            }
            FrameType::ClosePeer => {
                exact(KEY_LEN)?;
                Frame::ClosePeer { peer: key_at(p, 0) }
            }
            FrameType::Ping | FrameType::Pong => {
                need(8)?;
                let mut data = [0u8; 8];
                data.copy_from_slice(&p[..8]);
                if ty == FrameType::Ping {
                    Frame::Ping { data }
                } else {
                    Frame::Pong { data }
                }
            }
            FrameType::Health => Frame::Health { problem: p },
            FrameType::Restarting => {
                need(8)?;
                let ms = |at: usize| {
                    Duration::from_millis(u64::from(u32::from_be_bytes([
                        p[at],
                        p[at + 1],
                        p[at + 2],
                        p[at + 3],
                    ])))
                };
                Frame::Restarting {
                    reconnect_in: ms(0),
                    try_for: ms(4),
                }
            }
        })
    }

    /// Returns the frame's type byte.
    pub fn frame_type(&self) -> u8 {
        let ty = match self {
            Frame::ServerKey { .. } => FrameType::ServerKey,
            Frame::ClientInfo { .. } => FrameType::ClientInfo,
            Frame::ServerInfo { .. } => FrameType::ServerInfo,
            Frame::SendPacket { .. } => FrameType::SendPacket,
            Frame::RecvPacket { .. } => FrameType::RecvPacket,
            Frame::KeepAlive => FrameType::KeepAlive,
            Frame::NotePreferred { .. } => FrameType::NotePreferred,
            Frame::PeerGone { .. } => FrameType::PeerGone,
            Frame::PeerPresent { .. } => FrameType::PeerPresent,
            Frame::ForwardPacket { .. } => FrameType::ForwardPacket,
            Frame::WatchConns => FrameType::WatchConns,
            Frame::ClosePeer { .. } => FrameType::ClosePeer,
            Frame::Ping { .. } => FrameType::Ping,
            Frame::Pong { .. } => FrameType::Pong,
            Frame::Health { .. } => FrameType::Health,
            Frame::Restarting { .. } => FrameType::Restarting,
            Frame::Unknown { frame_type } => return *frame_type,
        };
        ty as u8
    }

    /// Returns the payload length [`Frame::encode`] writes.
    pub fn payload_len(&self) -> usize {
        match self {
            Frame::ServerKey { .. } => MAGIC.len() + KEY_LEN,
            Frame::ClientInfo { sealed, .. } => KEY_LEN + sealed.len(),
            Frame::ServerInfo { sealed } => sealed.len(),
            Frame::SendPacket { packet, .. } | Frame::RecvPacket { packet, .. } => {
                KEY_LEN + packet.len()
            }
            Frame::KeepAlive | Frame::WatchConns | Frame::Unknown { .. } => 0,
            Frame::NotePreferred { .. } => 1,
            Frame::PeerGone { .. } => KEY_LEN + 1,
            Frame::PeerPresent { addr, flags, .. } => {
                KEY_LEN + addr.map_or(0, |_| 18 + usize::from(flags.is_some()))
            }
            Frame::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Frame::ClosePeer { .. } => KEY_LEN,
            Frame::Ping { .. } | Frame::Pong { .. } | Frame::Restarting { .. } => 8,
            Frame::Health { problem } => problem.len(),
        }
    }

    /// Returns the length [`Frame::encode`] writes, header included.
    pub fn encoded_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload_len()
    }

    /// Appends the frame to `out`. An `Unknown` frame is written with an
    /// empty payload. Packets are not checked against [`MAX_PACKET_SIZE`]
    /// here; [`encode_send_packet`] does that for the hot path.
    pub fn encode(&self, out: &mut impl BufMut) {
        out.put_u8(self.frame_type());
        // Payloads are bounded by the frame readers' limits (far below 4 GiB).
        out.put_u32(self.payload_len() as u32);
        match self {
            Frame::ServerKey { key } => {
                out.put_slice(&MAGIC);
                out.put_slice(key.as_bytes());
            }
            Frame::ClientInfo { key, sealed } => {
                out.put_slice(key.as_bytes());
                out.put_slice(sealed);
            }
            Frame::ServerInfo { sealed } => out.put_slice(sealed),
            Frame::SendPacket { dst: key, packet } | Frame::RecvPacket { src: key, packet } => {
                out.put_slice(key.as_bytes());
                out.put_slice(packet);
            }
            Frame::KeepAlive | Frame::WatchConns | Frame::Unknown { .. } => {}
            Frame::NotePreferred { preferred } => out.put_u8(u8::from(*preferred)),
            Frame::PeerGone { peer, reason } => {
                out.put_slice(peer.as_bytes());
                out.put_u8(reason.to_u8());
            }
            Frame::PeerPresent { peer, addr, flags } => {
                out.put_slice(peer.as_bytes());
                if let Some(a) = addr {
                    let ip = match a.ip() {
                        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                        IpAddr::V6(v6) => v6,
                    };
                    out.put_slice(&ip.octets());
                    out.put_u16(a.port());
                    if let Some(f) = flags {
                        out.put_u8(*f);
                    }
                }
            }
            Frame::ForwardPacket { src, dst, packet } => {
                out.put_slice(src.as_bytes());
                out.put_slice(dst.as_bytes());
                out.put_slice(packet);
            }
            Frame::ClosePeer { peer } => out.put_slice(peer.as_bytes()),
            Frame::Ping { data } | Frame::Pong { data } => out.put_slice(data),
            Frame::Health { problem } => out.put_slice(problem),
            Frame::Restarting {
                reconnect_in,
                try_for,
            } => {
                let ms = |d: &Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
                out.put_u32(ms(reconnect_in));
                out.put_u32(ms(try_for));
            }
        }
    }

    /// Returns the frame as a new vector (control frames; not for packets).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }
}

/// Appends a `SendPacket` frame for `dst` to `out`.
///
/// # Errors
/// [`FrameError::PacketTooLarge`] above [`MAX_PACKET_SIZE`] (nothing written).
pub fn encode_send_packet(
    out: &mut impl BufMut,
    dst: &NodePublic,
    packet: &[u8],
) -> Result<(), FrameError> {
    if packet.len() > MAX_PACKET_SIZE {
        return Err(FrameError::PacketTooLarge { len: packet.len() });
    }
    Frame::SendPacket { dst: *dst, packet }.encode(out);
    Ok(())
}

/// Returns the encoded length of a `SendPacket`/`RecvPacket` frame of a
/// packet of `len` bytes.
pub const fn packet_frame_len(len: usize) -> usize {
    FRAME_HEADER_LEN + KEY_LEN + len
}

#[cfg(test)]
mod tests;
