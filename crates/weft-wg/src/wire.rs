//! WireGuard message framing: the four message types and their sizes.
//!
//! Read first: the WireGuard whitepaper (Donenfeld, "WireGuard: Next
//! Generation Kernel Network Tunnel"), §5.4 "Messages". Every message starts
//! with a one-byte type and three reserved zero bytes, read together as a
//! little-endian `u32`; messages are told apart by (type, exact length), the
//! way boringtun's `Tunn::parse_incoming_packet` does. The cryptographic
//! contents are boringtun's business; the device only needs the type and, for
//! index-addressed messages, the receiver index to find the peer.

/// Handshake initiation, initiator → responder (whitepaper §5.4.2).
pub const MESSAGE_INITIATION: u32 = 1;
/// Handshake response, responder → initiator (whitepaper §5.4.3).
pub const MESSAGE_RESPONSE: u32 = 2;
/// Cookie reply, sent instead of a response under load (whitepaper §5.4.7).
pub const MESSAGE_COOKIE_REPLY: u32 = 3;
/// Transport data (whitepaper §5.4.6).
pub const MESSAGE_TRANSPORT: u32 = 4;

/// Size of a handshake initiation: type, sender, ephemeral (32), static
/// (32 + 16), timestamp (12 + 16), mac1, mac2 (whitepaper §5.4.2).
pub const INITIATION_LEN: usize = 148;
/// Size of a handshake response (whitepaper §5.4.3).
pub const RESPONSE_LEN: usize = 92;
/// Size of a cookie reply (whitepaper §5.4.7).
pub const COOKIE_REPLY_LEN: usize = 64;
/// Bytes a transport message adds to its payload: type, receiver index,
/// counter (16) and the Poly1305 tag (16) (whitepaper §5.4.6).
pub const TRANSPORT_OVERHEAD: usize = 32;
/// Offset of the encrypted payload in a transport message (whitepaper §5.4.6).
pub const TRANSPORT_HEADER_LEN: usize = 16;

/// The kind of a well-formed WireGuard message and, where the message is
/// addressed by index, the receiver index it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MessageKind {
    /// A handshake initiation; the sender is found by decrypting its static key.
    Initiation,
    /// A handshake response to the initiation we sent with `receiver`.
    Response { receiver: u32 },
    /// A cookie reply to the handshake message we sent with `receiver`.
    CookieReply { receiver: u32 },
    /// Transport data for the session whose local index is `receiver`.
    Transport { receiver: u32 },
}

impl MessageKind {
    /// Classifies a datagram by (type, exact length), or `None` when it is not
    /// a WireGuard message.
    pub(crate) fn classify(datagram: &[u8]) -> Option<Self> {
        let (ty, rest) = datagram.split_first_chunk::<4>()?;
        let ty = u32::from_le_bytes(*ty);
        let receiver = || rest.first_chunk::<4>().map(|r| u32::from_le_bytes(*r));
        match (ty, datagram.len()) {
            (MESSAGE_INITIATION, INITIATION_LEN) => Some(Self::Initiation),
            // The response carries the sender index first, then the receiver.
            (MESSAGE_RESPONSE, RESPONSE_LEN) => rest
                .get(4..8)
                .and_then(|r| <[u8; 4]>::try_from(r).ok())
                .map(|r| Self::Response {
                    receiver: u32::from_le_bytes(r),
                }),
            (MESSAGE_COOKIE_REPLY, COOKIE_REPLY_LEN) => {
                receiver().map(|receiver| Self::CookieReply { receiver })
            }
            (MESSAGE_TRANSPORT, n) if n >= TRANSPORT_OVERHEAD => {
                receiver().map(|receiver| Self::Transport { receiver })
            }
            _ => None,
        }
    }
}

/// Returns the message type of an outgoing datagram (its first byte).
pub(crate) fn message_type(datagram: &[u8]) -> u32 {
    datagram.first().copied().map_or(0, u32::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_told_apart_by_type_and_exact_length() {
        let mut init = [0u8; INITIATION_LEN];
        init[0] = 1;
        assert_eq!(MessageKind::classify(&init), Some(MessageKind::Initiation));
        assert_eq!(MessageKind::classify(&init[..147]), None);

        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = 2;
        resp[8..12].copy_from_slice(&0x0102_0304u32.to_le_bytes());
        assert_eq!(
            MessageKind::classify(&resp),
            Some(MessageKind::Response {
                receiver: 0x0102_0304
            })
        );

        let mut data = [0u8; 40];
        data[0] = 4;
        data[4..8].copy_from_slice(&7u32.to_le_bytes());
        assert_eq!(
            MessageKind::classify(&data),
            Some(MessageKind::Transport { receiver: 7 })
        );
        assert_eq!(MessageKind::classify(&data[..31]), None);

        data[1] = 1; // reserved bytes must be zero
        assert_eq!(MessageKind::classify(&data), None);
        assert_eq!(MessageKind::classify(&[]), None);
    }
}
