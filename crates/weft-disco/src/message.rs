//! The disco wire format.
//!
//! ```text
//! outer (cleartext)                        inner (sealed)
//! +--------+----------------+-------+-----+  +------+---------+-----------+
//! | magic  | sender disco   | nonce | box |  | type | version | payload   |
//! | 6 B    | public key 32B | 24 B  |     |  | 1 B  | 1 B     | by type   |
//! +--------+----------------+-------+-----+  +------+---------+-----------+
//! ```
//!
//! * **magic** `54 53 f0 9f 92 ac` ("TS💬", Tailscale's disco magic, so that
//!   the format is byte-identical to Tailscale's disco). A WireGuard message
//!   starts with its type 1–4 as a little-endian `u32`, i.e. a byte 1–4
//!   followed by three zero bytes (whitepaper §5.4); the magic's first byte
//!   is 0x54 and its next three are not zero, so neither can be taken for the
//!   other. A STUN message starts with two zero bits (RFC 8489 §5); 0x54 does
//!   not.
//! * **box**: NaCl `crypto_box` (X25519 + XSalsa20-Poly1305; 16-byte tag
//!   first) between the sender's and the receiver's disco keys, under the
//!   24-byte nonce. Both directions share one key, so each side must keep its
//!   nonces apart from the other's: [`crate::Disco`] uses a random 16-byte
//!   prefix per daemon and a counter.
//! * **payload** by type (version 0; newer versions may append bytes, which
//!   older readers ignore):
//!   * `0x01` Ping: 12-byte transaction id, the sender's 32-byte node key,
//!     then optional padding (for path-MTU probing later).
//!   * `0x02` Pong: the ping's transaction id, then the address the ping came
//!     from as the responder saw it: 16-byte IPv6 (IPv4 as `::ffff:a.b.c.d`)
//!     and a big-endian port.
//!   * `0x03` CallMeMaybe: the sender's endpoints, 18 bytes each as above
//!     ("ping me on these, I am pinging you"); for NAT traversal through a
//!     relay.
//!
//! Untrusted input goes through [`Sealed::parse`] (lengths and magic) and
//! [`SharedBox::open`] (authentication, then [`Message::decode`]); neither
//! panics on any input.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use crypto_box::SalsaBox;
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::generic_array::typenum::Unsigned as _;
use crypto_box::aead::{Aead, AeadCore};
use weft_types::{DiscoPrivate, DiscoPublic, NodePublic};

/// The first six bytes of every disco datagram ("TS💬", as Tailscale's).
pub const MAGIC: [u8; 6] = [0x54, 0x53, 0xf0, 0x9f, 0x92, 0xac];
/// Bytes of the sender's disco public key.
const KEY_LEN: usize = 32;
/// Bytes of the box nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes the box adds (the Poly1305 tag).
const TAG_LEN: usize = 16;
/// Bytes before the box.
const HEADER_LEN: usize = MAGIC.len() + KEY_LEN + NONCE_LEN;
/// Bytes of a transaction id.
pub const TX_ID_LEN: usize = 12;
/// Bytes of an encoded socket address (IPv6 form + port).
const ADDR_LEN: usize = 18;
/// The smallest valid datagram: header, tag, type and version.
pub const MIN_LEN: usize = HEADER_LEN + TAG_LEN + 2;
/// The most endpoints a CallMeMaybe carries (keeps it within 1280 bytes).
pub const MAX_CALL_ME_MAYBE: usize = 64;

const TYPE_PING: u8 = 0x01;
const TYPE_PONG: u8 = 0x02;
const TYPE_CALL_ME_MAYBE: u8 = 0x03;
/// The version this code writes.
const VERSION: u8 = 0;

/// Why a datagram is not a disco message we can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// It does not start with [`MAGIC`].
    #[error("not a disco message (no magic)")]
    NoMagic,
    /// Shorter than the smallest valid message.
    #[error("disco message too short")]
    TooShort,
    /// The box did not open: wrong key, or tampered with.
    #[error("disco message failed authentication")]
    Unauthenticated,
    /// An inner type this code does not know.
    #[error("unknown disco message type {0:#04x}")]
    UnknownType(u8),
    /// The payload is too short for its type.
    #[error("disco payload too short for its type")]
    Truncated,
}

/// A ping's transaction id, echoed in the pong.
pub type TxId = [u8; TX_ID_LEN];

/// Returns whether `datagram` carries the disco magic (and so must not be
/// handed to WireGuard).
pub fn is_disco(datagram: &[u8]) -> bool {
    datagram.starts_with(&MAGIC)
}

/// A disco datagram whose framing was checked; the box is still sealed.
#[derive(Debug, Clone, Copy)]
pub struct Sealed<'a> {
    sender: DiscoPublic,
    nonce: &'a [u8],
    boxed: &'a [u8],
}

impl<'a> Sealed<'a> {
    /// Checks the magic and the length and splits the datagram.
    ///
    /// # Errors
    /// [`DecodeError::NoMagic`] or [`DecodeError::TooShort`].
    pub fn parse(datagram: &'a [u8]) -> Result<Self, DecodeError> {
        if !is_disco(datagram) {
            return Err(DecodeError::NoMagic);
        }
        if datagram.len() < MIN_LEN {
            return Err(DecodeError::TooShort);
        }
        let (key, rest) = datagram[MAGIC.len()..].split_at(KEY_LEN);
        let (nonce, boxed) = rest.split_at(NONCE_LEN);
        let mut sender = [0u8; KEY_LEN];
        sender.copy_from_slice(key);
        Ok(Self {
            sender: DiscoPublic::from_bytes(sender),
            nonce,
            boxed,
        })
    }

    /// Returns the sender's disco public key (not yet authenticated: only a
    /// successful [`SharedBox::open`] proves it).
    pub fn sender(&self) -> DiscoPublic {
        self.sender
    }
}

/// "Are you there on this address?"
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ping {
    /// Chosen by the sender, echoed in the pong.
    pub tx_id: TxId,
    /// The sender's node key (so the receiver can tell which peer pinged).
    pub node_key: NodePublic,
    /// Extra zero bytes to append (path-MTU probing); not kept on decode.
    pub padding: u16,
}

/// "Yes; and this is where your ping came from."
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The ping's transaction id.
    pub tx_id: TxId,
    /// The ping's source address as the responder saw it.
    pub observed_src: SocketAddr,
}

/// "I am pinging you on these endpoints; ping me back on mine."
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMeMaybe {
    /// The sender's endpoints (at most [`MAX_CALL_ME_MAYBE`]).
    pub endpoints: Vec<SocketAddr>,
}

/// The inner message of a disco datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`CallMeMaybe`].
    CallMeMaybe(CallMeMaybe),
}

impl Message {
    /// Returns the plaintext: type, version, payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Message::Ping(p) => {
                out.extend_from_slice(&[TYPE_PING, VERSION]);
                out.extend_from_slice(&p.tx_id);
                out.extend_from_slice(p.node_key.as_bytes());
                out.resize(out.len() + usize::from(p.padding), 0);
            }
            Message::Pong(p) => {
                out.extend_from_slice(&[TYPE_PONG, VERSION]);
                out.extend_from_slice(&p.tx_id);
                put_addr(&mut out, p.observed_src);
            }
            Message::CallMeMaybe(c) => {
                out.extend_from_slice(&[TYPE_CALL_ME_MAYBE, VERSION]);
                for addr in c.endpoints.iter().take(MAX_CALL_ME_MAYBE) {
                    put_addr(&mut out, *addr);
                }
            }
        }
        out
    }

    /// Parses a plaintext. Bytes after a known payload are ignored (room for
    /// newer versions).
    ///
    /// # Errors
    /// [`DecodeError::TooShort`], [`DecodeError::UnknownType`] or
    /// [`DecodeError::Truncated`].
    pub fn decode(plain: &[u8]) -> Result<Self, DecodeError> {
        let [ty, _version, payload @ ..] = plain else {
            return Err(DecodeError::TooShort);
        };
        match *ty {
            TYPE_PING => {
                let tx_id = take::<TX_ID_LEN>(payload, 0)?;
                let key = take::<KEY_LEN>(payload, TX_ID_LEN)?;
                Ok(Message::Ping(Ping {
                    tx_id,
                    node_key: NodePublic::from_bytes(key),
                    padding: 0,
                }))
            }
            TYPE_PONG => {
                let tx_id = take::<TX_ID_LEN>(payload, 0)?;
                let addr = take::<ADDR_LEN>(payload, TX_ID_LEN)?;
                Ok(Message::Pong(Pong {
                    tx_id,
                    observed_src: get_addr(&addr),
                }))
            }
            TYPE_CALL_ME_MAYBE => {
                let endpoints = payload
                    .chunks_exact(ADDR_LEN)
                    .take(MAX_CALL_ME_MAYBE)
                    .filter_map(|c| <[u8; ADDR_LEN]>::try_from(c).ok())
                    .map(|a| get_addr(&a))
                    .collect();
                Ok(Message::CallMeMaybe(CallMeMaybe { endpoints }))
            }
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

fn take<const N: usize>(payload: &[u8], at: usize) -> Result<[u8; N], DecodeError> {
    payload
        .get(at..at + N)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::Truncated)
}

fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    let v6 = match addr.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&v6.octets());
    out.extend_from_slice(&addr.port().to_be_bytes());
}

fn get_addr(b: &[u8; ADDR_LEN]) -> SocketAddr {
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(ip);
    let ip = v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4);
    SocketAddr::new(ip, u16::from_be_bytes([b[16], b[17]]))
}

/// The box between our disco key and one peer's: the X25519 shared secret,
/// computed once per peer.
pub struct SharedBox {
    inner: SalsaBox,
}

impl std::fmt::Debug for SharedBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedBox(<redacted>)")
    }
}

impl SharedBox {
    /// Computes the box between `ours` and `theirs`.
    pub fn new(ours: &DiscoPrivate, theirs: &DiscoPublic) -> Self {
        let secret = crypto_box::SecretKey::from(*ours.as_bytes());
        let public = crypto_box::PublicKey::from(theirs.to_bytes());
        Self {
            inner: SalsaBox::new(&public, &secret),
        }
    }

    /// Returns the whole datagram for `msg`, from `sender` (our disco public
    /// key) under `nonce`, which must never repeat for this pair of keys.
    pub fn seal(&self, sender: &DiscoPublic, nonce: [u8; NONCE_LEN], msg: &Message) -> Vec<u8> {
        let plain = msg.encode();
        let n = GenericArray::from_slice(&nonce);
        // Encryption into a Vec cannot fail for messages this small; an empty
        // box would only be dropped by the receiver.
        let boxed = self.inner.encrypt(n, plain.as_slice()).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + boxed.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(sender.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&boxed);
        out
    }

    /// Authenticates and decodes a sealed datagram.
    ///
    /// # Errors
    /// [`DecodeError::Unauthenticated`] if the box does not open, else as
    /// [`Message::decode`].
    pub fn open(&self, sealed: &Sealed<'_>) -> Result<Message, DecodeError> {
        if sealed.nonce.len() != <SalsaBox as AeadCore>::NonceSize::USIZE {
            return Err(DecodeError::TooShort);
        }
        let n = GenericArray::from_slice(sealed.nonce);
        let plain = self
            .inner
            .decrypt(n, sealed.boxed)
            .map_err(|_| DecodeError::Unauthenticated)?;
        Message::decode(&plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> (DiscoPrivate, DiscoPrivate) {
        (
            DiscoPrivate::from_bytes([1; 32]),
            DiscoPrivate::from_bytes([2; 32]),
        )
    }

    #[test]
    fn the_magic_can_never_be_a_wireguard_message() {
        for ty in 1u8..=4 {
            let wg = [ty, 0, 0, 0, 0, 0];
            assert!(!is_disco(&wg));
        }
        assert!(!(1..=4).contains(&MAGIC[0]));
        assert!(MAGIC[1..4] != [0, 0, 0]);
    }

    #[test]
    fn a_ping_sealed_by_one_side_opens_on_the_other() {
        let (a, b) = keys();
        let ab = SharedBox::new(&a, &b.public());
        let ba = SharedBox::new(&b, &a.public());
        let ping = Message::Ping(Ping {
            tx_id: [7; 12],
            node_key: weft_types::NodePrivate::from_bytes([3; 32]).public(),
            padding: 100,
        });
        let d = ab.seal(&a.public(), [9; 24], &ping);
        let sealed = Sealed::parse(&d).unwrap();
        assert_eq!(sealed.sender(), a.public());
        let Message::Ping(got) = ba.open(&sealed).unwrap() else {
            panic!("not a ping")
        };
        let Message::Ping(sent) = ping else {
            unreachable!()
        };
        assert_eq!((got.tx_id, got.node_key), (sent.tx_id, sent.node_key));
    }

    /// Pins the wire format byte for byte. The expected datagram was made
    /// independently with libsodium (PyNaCl's `Box(a, B).encrypt(inner,
    /// nonce)` with the same keys), the way Tailscale's disco seals.
    #[test]
    fn a_sealed_ping_matches_the_libsodium_vector() {
        let (a, b) = keys();
        let ab = SharedBox::new(&a, &b.public());
        let ping = Message::Ping(Ping {
            tx_id: [7; 12],
            node_key: weft_types::NodePrivate::from_bytes([3; 32]).public(),
            padding: 0,
        });
        let d = ab.seal(&a.public(), [9; 24], &ping);
        let expected = "5453f09f92ac\
            a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a209\
            090909090909090909090909090909090909090909090909\
            e860c9d6375da5bfae411104500a836a0d0dcf94d23b198c2bcb1871cd6d27c8\
            84cc6690bfaabbcb063f2e4788583227d54829e8eebc2421d0344b4ef1eb";
        let got: String = d.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_box_from_a_third_key_does_not_open() {
        let (a, b) = keys();
        let c = DiscoPrivate::from_bytes([5; 32]);
        let cb = SharedBox::new(&c, &b.public());
        let pong = Message::Pong(Pong {
            tx_id: [1; 12],
            observed_src: "198.18.0.1:41641".parse().unwrap(),
        });
        // c claims to be a.
        let d = cb.seal(&a.public(), [0; 24], &pong);
        let ba = SharedBox::new(&b, &a.public());
        assert_eq!(
            ba.open(&Sealed::parse(&d).unwrap()),
            Err(DecodeError::Unauthenticated)
        );
    }

    #[test]
    fn a_tampered_datagram_is_refused() {
        let (a, b) = keys();
        let ab = SharedBox::new(&a, &b.public());
        let ba = SharedBox::new(&b, &a.public());
        let pong = Message::Pong(Pong {
            tx_id: [1; 12],
            observed_src: "[fd7a:115c:a1e0::1]:5".parse().unwrap(),
        });
        let mut d = ab.seal(&a.public(), [4; 24], &pong);
        let last = d.len() - 1;
        d[last] ^= 1;
        assert_eq!(
            ba.open(&Sealed::parse(&d).unwrap()),
            Err(DecodeError::Unauthenticated)
        );
    }

    #[test]
    fn short_and_foreign_datagrams_are_classified() {
        assert_eq!(
            Sealed::parse(&[1, 0, 0, 0]).err(),
            Some(DecodeError::NoMagic)
        );
        assert_eq!(Sealed::parse(&MAGIC).err(), Some(DecodeError::TooShort));
        assert_eq!(
            Message::decode(&[0x42, 0]),
            Err(DecodeError::UnknownType(0x42))
        );
        assert_eq!(
            Message::decode(&[TYPE_PONG, 0, 1, 2]),
            Err(DecodeError::Truncated)
        );
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_filter("not v4-mapped", |(ip, _)| Ipv6Addr::from(*ip)
                    .to_ipv4_mapped()
                    .is_none())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
        ]
    }

    fn message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (any::<[u8; 12]>(), any::<[u8; 32]>()).prop_map(|(tx_id, k)| Message::Ping(Ping {
                tx_id,
                node_key: NodePublic::from_bytes(k),
                padding: 0
            })),
            (any::<[u8; 12]>(), addr()).prop_map(|(tx_id, observed_src)| Message::Pong(Pong {
                tx_id,
                observed_src
            })),
            proptest::collection::vec(addr(), 0..8)
                .prop_map(|endpoints| Message::CallMeMaybe(CallMeMaybe { endpoints })),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip_through_seal_and_open(msg in message(), nonce in any::<[u8; 24]>()) {
            let (a, b) = keys();
            let d = SharedBox::new(&a, &b.public()).seal(&a.public(), nonce, &msg);
            let back = SharedBox::new(&b, &a.public()).open(&Sealed::parse(&d).unwrap()).unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200), with_magic in any::<bool>()) {
            let mut d = data;
            if with_magic { d.splice(0..0, MAGIC); }
            let (_, b) = keys();
            if let Ok(sealed) = Sealed::parse(&d) {
                let bx = SharedBox::new(&b, &sealed.sender());
                let _ = bx.open(&sealed);
            }
            let _ = Message::decode(&d);
        }
    }
}
