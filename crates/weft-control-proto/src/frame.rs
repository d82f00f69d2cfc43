//! Frames on the upgraded HTTP connection, and the fragments inside records.
//!
//! ```text
//! frame:   0      1      2      3 ...
//!          +------+------+------+--------------------------------+
//!          | type | length (u16 BE) | body (length bytes)         |
//!          +------+------+------+--------------------------------+
//!
//!   type 0x01  handshake response: body = Noise message 2 (48 bytes);
//!              sent once, by the server, as its first frame.
//!   type 0x02  record: body = one Noise transport message
//!              (ciphertext + 16-byte tag, 17..=65535 bytes).
//!
//! record plaintext:
//!          +-------+-------------------------------------------+
//!          | flags | fragment (0..=65518 bytes)                |
//!          +-------+-------------------------------------------+
//!   flags bit 0 (0x01) FIN: this fragment ends an application message.
//!   flags bits 1-7 must be zero.
//! ```
//!
//! An application message (one JSON value) is the concatenation of the
//! fragments of consecutive records up to and including one with FIN. The
//! receiver bounds the total ([`crate::ChannelConfig::max_message_size`]).

/// The frame type of the server's handshake response.
pub const FRAME_HANDSHAKE: u8 = 0x01;
/// The frame type of an encrypted record.
pub const FRAME_RECORD: u8 = 0x02;
/// The frame header length: type and length.
pub const HEADER_LEN: usize = 3;
/// The flag that ends a message.
pub const FLAG_FIN: u8 = 0x01;
/// The largest record body (one Noise message).
pub const MAX_RECORD_LEN: usize = crate::noise::MAX_NOISE_MESSAGE;
/// The smallest record body: the tag and the flags byte.
pub const MIN_RECORD_LEN: usize = crate::noise::TAG_LEN + 1;
/// The largest record plaintext.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - crate::noise::TAG_LEN;
/// The largest fragment of a message that fits one record.
pub const MAX_FRAGMENT: usize = MAX_RECORD_PLAINTEXT - 1;

/// One complete frame found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawFrame<'a> {
    pub(crate) kind: u8,
    pub(crate) body: &'a [u8],
}

/// Splits the first complete frame off `buf`. Returns `None` if `buf` does
/// not hold a whole frame yet, else the frame and the bytes it took.
pub(crate) fn split_frame(buf: &[u8]) -> Option<(RawFrame<'_>, usize)> {
    let [kind, hi, lo, rest @ ..] = buf else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    let body = rest.get(..len)?;
    Some((RawFrame { kind: *kind, body }, HEADER_LEN + len))
}

/// Appends a frame header for a body of `len` bytes (at most 65535).
pub(crate) fn push_header(out: &mut Vec<u8>, kind: u8, len: u16) {
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_is_split_only_when_complete() {
        let mut buf = Vec::new();
        push_header(&mut buf, FRAME_RECORD, 3);
        buf.extend_from_slice(b"abcde");
        let (f, used) = split_frame(&buf).unwrap();
        assert_eq!(
            f,
            RawFrame {
                kind: FRAME_RECORD,
                body: b"abc"
            }
        );
        assert_eq!(used, 6);
        assert_eq!(split_frame(&buf[..5]), None);
        assert_eq!(split_frame(&buf[..2]), None);
    }

    #[test]
    fn the_fragment_limit_fills_a_noise_message_exactly() {
        assert_eq!(
            HEADER_LEN + 1 + MAX_FRAGMENT + crate::noise::TAG_LEN,
            3 + 65535
        );
    }
}
