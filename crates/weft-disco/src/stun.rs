//! STUN Binding (RFC 8489, which obsoletes RFC 5389), sans-IO: what a node
//! needs to learn its reflexive address and what a STUN server needs to tell
//! it. Read RFC 8489 §5 (header), §14.1–14.2 (MAPPED-ADDRESS and
//! XOR-MAPPED-ADDRESS) and §14.7 (FINGERPRINT) first.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0 0|  message type (method+class)|       message length         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  magic cookie 0x2112A442                       |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                  transaction id (96 bits)                      |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | attributes: type (16) | length (16) | value, padded to 4 bytes |
//! ```
//!
//! * **Client side** (weftd, on its one UDP socket): [`write_binding_request`]
//!   into a caller buffer with a fresh [`TxId`], then
//!   [`parse_binding_response`] on whatever comes back (after [`is_stun`] told
//!   it apart from WireGuard and disco) gives `(TxId, reflexive address)`;
//!   match the id against the requests in flight and ignore the rest.
//! * **Server side**: [`answer_binding_request`] turns a request and the
//!   address it came from into the success response, in a caller buffer.
//! * **Everything else**: [`parse`] validates a whole datagram once and
//!   returns a [`Message`] view; it never panics and never allocates.
//!
//! Requests carry SOFTWARE `tailnode` and a FINGERPRINT, byte for byte what
//! Tailscale's `net/stun` sends, because Tailscale's STUN servers (`derper`,
//! `stund`) drop Binding requests without exactly those two attributes; so a
//! Weft node can use any DERP server's STUN port. Our own server answers any
//! well-formed Binding request.
//!
//! Why hand-written rather than a crate: a Binding exchange is one header and
//! two address attributes; the STUN crates are idle (`stun_codec`, `stun-rs`)
//! or pull in WebRTC utilities (`stun`), allocate per message, and do not
//! write into a caller's buffer. `stun_codec` stays as the test oracle.
//!
//! Not here: authentication (MESSAGE-INTEGRITY is recognised and reported,
//! never verified; a Binding server without credentials does not need it),
//! TURN, and STUN over TCP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The magic cookie of RFC 8489 §5, in network byte order.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Bytes of the message header.
pub const HEADER_LEN: usize = 20;
/// The Binding method (RFC 8489 §18.2).
pub const METHOD_BINDING: u16 = 0x001;
/// The SOFTWARE value of our requests; Tailscale's STUN servers require it.
pub const SOFTWARE: &[u8; 8] = b"tailnode";
/// Bytes of the request [`write_binding_request`] writes: header, SOFTWARE
/// (4 + 8) and FINGERPRINT (4 + 4).
pub const BINDING_REQUEST_LEN: usize = HEADER_LEN + 4 + SOFTWARE.len() + FINGERPRINT_ATTR_LEN;
/// The most bytes [`write_binding_response`] writes (an IPv6 address).
pub const MAX_BINDING_RESPONSE_LEN: usize = HEADER_LEN + 4 + 20 + FINGERPRINT_ATTR_LEN;

/// FINGERPRINT is CRC-32 of the message up to it, XOR this (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554e;
const FINGERPRINT_ATTR_LEN: usize = 8;

/// Attribute types (RFC 8489 §18.3, RFC 8445 §16.1 for ICE's).
mod attr {
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    pub const USERNAME: u16 = 0x0006;
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    pub const ERROR_CODE: u16 = 0x0009;
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000a;
    pub const REALM: u16 = 0x0014;
    pub const NONCE: u16 = 0x0015;
    pub const MESSAGE_INTEGRITY_SHA256: u16 = 0x001c;
    pub const PASSWORD_ALGORITHM: u16 = 0x001d;
    pub const USERHASH: u16 = 0x001e;
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    pub const PRIORITY: u16 = 0x0024;
    pub const USE_CANDIDATE: u16 = 0x0025;
    /// Not in any RFC, but sent by some servers (the old draft's number);
    /// Tailscale's client reads it too.
    pub const XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
    pub const SOFTWARE: u16 = 0x8022;
    pub const FINGERPRINT: u16 = 0x8028;

    /// Comprehension-required attributes (below 0x8000) that we know and
    /// may skip: a message carrying any other one is refused (§14).
    pub const KNOWN_REQUIRED: [u16; 13] = [
        MAPPED_ADDRESS,
        USERNAME,
        MESSAGE_INTEGRITY,
        ERROR_CODE,
        UNKNOWN_ATTRIBUTES,
        REALM,
        NONCE,
        MESSAGE_INTEGRITY_SHA256,
        PASSWORD_ALGORITHM,
        USERHASH,
        XOR_MAPPED_ADDRESS,
        PRIORITY,
        USE_CANDIDATE,
    ];
}

/// A STUN transaction id: 96 random bits chosen by the client (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct TxId(pub [u8; 12]);

impl From<[u8; 12]> for TxId {
    fn from(b: [u8; 12]) -> Self {
        TxId(b)
    }
}

impl From<TxId> for [u8; 12] {
    fn from(t: TxId) -> Self {
        t.0
    }
}

/// The class of a message (RFC 8489 §5).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    /// A request.
    Request,
    /// An indication (no response expected).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

/// Why bytes are not an acceptable STUN message, or a buffer is too small.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
pub enum StunError {
    /// Shorter than a header, the top bits are set, or the magic cookie is
    /// wrong: not STUN at all.
    #[error("not a STUN message")]
    NotStun,
    /// The length field disagrees with the datagram or is not a multiple of 4.
    #[error("STUN message length field does not match the datagram")]
    BadLength,
    /// An attribute runs past the end, or a known attribute has the wrong size
    /// or an unknown address family.
    #[error("malformed STUN attribute {0:#06x}")]
    BadAttribute(u16),
    /// A comprehension-required attribute we do not know (RFC 8489 §14).
    #[error("unknown comprehension-required STUN attribute {0:#06x}")]
    UnknownRequiredAttribute(u16),
    /// FINGERPRINT is not the last attribute, or its CRC does not match.
    #[error("bad STUN FINGERPRINT")]
    BadFingerprint,
    /// Well-formed, but not the message the caller asked for (e.g. an error
    /// response where a Binding success was expected).
    #[error("unexpected STUN message: {class:?} of method {method:#05x}")]
    Unexpected {
        /// The message's class.
        class: Class,
        /// The message's method.
        method: u16,
    },
    /// A success response without MAPPED-ADDRESS or XOR-MAPPED-ADDRESS.
    #[error("STUN response carries no mapped address")]
    NoAddress,
    /// The caller's buffer cannot hold the message.
    #[error("buffer too small for the STUN message ({needed} bytes needed)")]
    BufferTooSmall {
        /// The bytes needed.
        needed: usize,
    },
}

/// A validated STUN message: the header and the attributes this codec knows.
/// Built by [`parse`]; borrows the datagram.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Message<'a> {
    /// The class.
    pub class: Class,
    /// The method (12 bits).
    pub method: u16,
    /// The transaction id.
    pub tx_id: TxId,
    /// XOR-MAPPED-ADDRESS (or its 0x8020 variant), decoded.
    pub xor_mapped_address: Option<SocketAddr>,
    /// MAPPED-ADDRESS, the RFC 3489 form.
    pub mapped_address: Option<SocketAddr>,
    /// SOFTWARE, as sent (not checked to be UTF-8).
    pub software: Option<&'a [u8]>,
    /// The ERROR-CODE number (300–699) of an error response.
    pub error_code: Option<u16>,
    /// Whether a FINGERPRINT was present (it was valid, or [`parse`] would
    /// have failed).
    pub fingerprint: bool,
    /// Whether MESSAGE-INTEGRITY(-SHA256) was present. It is not verified.
    pub integrity: bool,
}

impl Message<'_> {
    /// Returns the reflexive address: XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS
    /// from a server that only speaks RFC 3489.
    pub fn address(&self) -> Option<SocketAddr> {
        self.xor_mapped_address.or(self.mapped_address)
    }

    /// Returns whether this is a Binding request.
    pub fn is_binding_request(&self) -> bool {
        self.class == Class::Request && self.method == METHOD_BINDING
    }
}

/// Returns whether `b` looks like STUN (RFC 8489 §5: two zero bits, the magic
/// cookie), the cheap test for telling STUN apart from WireGuard and disco on
/// a shared socket. [`parse`] does the full validation.
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[0] & 0xc0 == 0 && b[4..8] == MAGIC_COOKIE
}

/// Validates a whole datagram as one STUN message.
///
/// Strict: the length field must cover exactly the rest of the datagram,
/// every attribute must fit, known attributes must have their exact sizes and
/// address families, FINGERPRINT (if any) must be last and match, and any
/// comprehension-required attribute outside the known set is refused. Never
/// panics, never allocates.
///
/// # Errors
/// [`StunError`] naming the first problem found.
pub fn parse(b: &[u8]) -> Result<Message<'_>, StunError> {
    if !is_stun(b) {
        return Err(StunError::NotStun);
    }
    let msg_type = u16::from_be_bytes([b[0], b[1]]);
    let length = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if length % 4 != 0 || HEADER_LEN + length != b.len() {
        return Err(StunError::BadLength);
    }
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&b[8..HEADER_LEN]);
    let (method, class) = split_type(msg_type);
    let mut msg = Message {
        class,
        method,
        tx_id: TxId(tx),
        xor_mapped_address: None,
        mapped_address: None,
        software: None,
        error_code: None,
        fingerprint: false,
        integrity: false,
    };

    let mut at = HEADER_LEN;
    while at < b.len() {
        if msg.fingerprint {
            // Something follows FINGERPRINT.
            return Err(StunError::BadFingerprint);
        }
        let Some(head) = b.get(at..at + 4) else {
            return Err(StunError::BadAttribute(0));
        };
        let ty = u16::from_be_bytes([head[0], head[1]]);
        let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let start = at + 4;
        let padded = len.div_ceil(4) * 4;
        let Some(value) = b.get(start..start + len) else {
            return Err(StunError::BadAttribute(ty));
        };
        if start + padded > b.len() {
            return Err(StunError::BadAttribute(ty));
        }
        match ty {
            attr::XOR_MAPPED_ADDRESS | attr::XOR_MAPPED_ADDRESS_ALT => {
                let addr =
                    read_address(value, Some(&msg.tx_id)).ok_or(StunError::BadAttribute(ty))?;
                msg.xor_mapped_address.get_or_insert(addr);
            }
            attr::MAPPED_ADDRESS => {
                let addr = read_address(value, None).ok_or(StunError::BadAttribute(ty))?;
                msg.mapped_address.get_or_insert(addr);
            }
            attr::SOFTWARE => {
                msg.software.get_or_insert(value);
            }
            attr::ERROR_CODE => {
                // 21 reserved bits, class (3 bits, 3–6), number (0–99), reason.
                if value.len() < 4 || !(3..=6).contains(&(value[2] & 0x07)) || value[3] > 99 {
                    return Err(StunError::BadAttribute(ty));
                }
                let code = u16::from(value[2] & 0x07) * 100 + u16::from(value[3]);
                msg.error_code.get_or_insert(code);
            }
            attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 => msg.integrity = true,
            attr::FINGERPRINT => {
                if len != 4 {
                    return Err(StunError::BadAttribute(ty));
                }
                let got = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                if got != fingerprint(&b[..at]) {
                    return Err(StunError::BadFingerprint);
                }
                msg.fingerprint = true;
            }
            t if t < 0x8000 && !attr::KNOWN_REQUIRED.contains(&t) => {
                return Err(StunError::UnknownRequiredAttribute(t));
            }
            _ => {}
        }
        at = start + padded;
    }
    Ok(msg)
}

/// Writes a Binding request with id `tx_id` into `buf` (SOFTWARE `tailnode`
/// and a FINGERPRINT, as Tailscale's STUN servers require) and returns its
/// length, [`BINDING_REQUEST_LEN`].
///
/// # Errors
/// [`StunError::BufferTooSmall`] if `buf` is shorter than
/// [`BINDING_REQUEST_LEN`].
pub fn write_binding_request(tx_id: TxId, buf: &mut [u8]) -> Result<usize, StunError> {
    let out = buf
        .get_mut(..BINDING_REQUEST_LEN)
        .ok_or(StunError::BufferTooSmall {
            needed: BINDING_REQUEST_LEN,
        })?;
    let mut w = Writer::new(out, join_type(METHOD_BINDING, Class::Request), tx_id);
    w.attribute(attr::SOFTWARE, SOFTWARE);
    Ok(w.finish_with_fingerprint())
}

/// Writes the Binding success response telling `tx_id`'s client that its
/// request came from `addr` (XOR-MAPPED-ADDRESS, then FINGERPRINT) and
/// returns its length. An IPv4-mapped IPv6 source (a dual-stack socket) is
/// answered as the IPv4 address it is.
///
/// # Errors
/// [`StunError::BufferTooSmall`] if `buf` cannot hold the response
/// ([`MAX_BINDING_RESPONSE_LEN`] always can).
pub fn write_binding_response(
    tx_id: TxId,
    addr: SocketAddr,
    buf: &mut [u8],
) -> Result<usize, StunError> {
    let ip = addr.ip().to_canonical();
    let value_len = if ip.is_ipv4() { 8 } else { 20 };
    let needed = HEADER_LEN + 4 + value_len + FINGERPRINT_ATTR_LEN;
    let out = buf
        .get_mut(..needed)
        .ok_or(StunError::BufferTooSmall { needed })?;
    let mut value = [0u8; 20];
    let value = write_xor_address(SocketAddr::new(ip, addr.port()), &tx_id, &mut value);
    let mut w = Writer::new(out, join_type(METHOD_BINDING, Class::Success), tx_id);
    w.attribute(attr::XOR_MAPPED_ADDRESS, value);
    Ok(w.finish_with_fingerprint())
}

/// Parses a Binding success response into its transaction id and the
/// reflexive address it reports (the client side of a Binding exchange).
///
/// # Errors
/// As [`parse`]; [`StunError::Unexpected`] for anything but a Binding success
/// response; [`StunError::NoAddress`] when it names no address.
pub fn parse_binding_response(b: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    let msg = parse(b)?;
    if msg.class != Class::Success || msg.method != METHOD_BINDING {
        return Err(StunError::Unexpected {
            class: msg.class,
            method: msg.method,
        });
    }
    let addr = msg.address().ok_or(StunError::NoAddress)?;
    Ok((msg.tx_id, addr))
}

/// Answers a Binding request that came from `from`: validates `request` and
/// writes the success response into `out`, returning its length (the server
/// side of a Binding exchange).
///
/// # Errors
/// As [`parse`]; [`StunError::Unexpected`] for anything but a Binding
/// request (which a server drops); [`StunError::BufferTooSmall`].
pub fn answer_binding_request(
    request: &[u8],
    from: SocketAddr,
    out: &mut [u8],
) -> Result<usize, StunError> {
    let msg = parse(request)?;
    if !msg.is_binding_request() {
        return Err(StunError::Unexpected {
            class: msg.class,
            method: msg.method,
        });
    }
    write_binding_response(msg.tx_id, from, out)
}

// ---------------------------------------------------------------- helpers

/// Splits a message type into method and class (RFC 8489 §5: the class bits
/// C1 C0 sit at bits 8 and 4, between the method's bits).
fn split_type(t: u16) -> (u16, Class) {
    let method = (t & 0x000f) | ((t & 0x00e0) >> 1) | ((t & 0x3e00) >> 2);
    let class = match ((t >> 7) & 0x2) | ((t >> 4) & 0x1) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (method, class)
}

fn join_type(method: u16, class: Class) -> u16 {
    let c = match class {
        Class::Request => 0u16,
        Class::Indication => 1,
        Class::Success => 2,
        Class::Error => 3,
    };
    (method & 0x000f)
        | ((method & 0x0070) << 1)
        | ((method & 0x0f80) << 2)
        | ((c & 0x1) << 4)
        | ((c & 0x2) << 7)
}

fn fingerprint(before: &[u8]) -> u32 {
    crc32fast::hash(before) ^ FINGERPRINT_XOR
}

/// Decodes a (XOR-)MAPPED-ADDRESS value: reserved byte, family (1 = IPv4,
/// 2 = IPv6), port, address; XORed with the cookie and the transaction id
/// when `xor` is given (RFC 8489 §14.2).
fn read_address(v: &[u8], xor: Option<&TxId>) -> Option<SocketAddr> {
    let mut mask = [0u8; 16];
    if let Some(tx) = xor {
        mask[..4].copy_from_slice(&MAGIC_COOKIE);
        mask[4..].copy_from_slice(&tx.0);
    }
    let port = u16::from_be_bytes([v.get(2)? ^ mask[0], v.get(3)? ^ mask[1]]);
    let ip = match (v[1], v.len()) {
        (1, 8) => {
            let mut o = [0u8; 4];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (2, 20) => {
            let mut o = [0u8; 16];
            for (i, b) in o.iter_mut().enumerate() {
                *b = v[4 + i] ^ mask[i];
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Encodes `addr` as an XOR-MAPPED-ADDRESS value into `out`, returning the
/// used part (8 bytes for IPv4, 20 for IPv6).
fn write_xor_address<'o>(addr: SocketAddr, tx: &TxId, out: &'o mut [u8; 20]) -> &'o [u8] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE);
    mask[4..].copy_from_slice(&tx.0);
    let port = addr.port().to_be_bytes();
    out[0] = 0;
    out[2] = port[0] ^ mask[0];
    out[3] = port[1] ^ mask[1];
    let len = match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = 1;
            out[4..8].copy_from_slice(&ip.octets());
            8
        }
        IpAddr::V6(ip) => {
            out[1] = 2;
            out[4..20].copy_from_slice(&ip.octets());
            20
        }
    };
    for (b, m) in out[4..len].iter_mut().zip(mask) {
        *b ^= m;
    }
    &out[..len]
}

/// Writes a message into an exactly sized buffer: header first, attributes in
/// order, the length field kept up to date.
struct Writer<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl<'b> Writer<'b> {
    fn new(buf: &'b mut [u8], msg_type: u16, tx: TxId) -> Self {
        buf[..2].copy_from_slice(&msg_type.to_be_bytes());
        buf[2..4].copy_from_slice(&[0, 0]);
        buf[4..8].copy_from_slice(&MAGIC_COOKIE);
        buf[8..HEADER_LEN].copy_from_slice(&tx.0);
        Writer {
            buf,
            at: HEADER_LEN,
        }
    }

    /// Appends an attribute (values here are multiples of 4 bytes: no padding).
    fn attribute(&mut self, ty: u16, value: &[u8]) {
        let end = self.at + 4 + value.len();
        self.buf[self.at..self.at + 2].copy_from_slice(&ty.to_be_bytes());
        self.buf[self.at + 2..self.at + 4].copy_from_slice(&(value.len() as u16).to_be_bytes());
        self.buf[self.at + 4..end].copy_from_slice(value);
        self.at = end;
        self.set_length(self.at - HEADER_LEN);
    }

    fn set_length(&mut self, len: usize) {
        self.buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }

    /// Appends FINGERPRINT over everything before it (with the length field
    /// already counting the fingerprint, RFC 8489 §14.7) and returns the
    /// message length.
    fn finish_with_fingerprint(mut self) -> usize {
        let at = self.at;
        self.set_length(at + FINGERPRINT_ATTR_LEN - HEADER_LEN);
        let fp = fingerprint(&self.buf[..at]);
        self.buf[at..at + 2].copy_from_slice(&attr::FINGERPRINT.to_be_bytes());
        self.buf[at + 2..at + 4].copy_from_slice(&4u16.to_be_bytes());
        self.buf[at + 4..at + 8].copy_from_slice(&fp.to_be_bytes());
        at + FINGERPRINT_ATTR_LEN
    }
}

#[cfg(test)]
mod tests;
