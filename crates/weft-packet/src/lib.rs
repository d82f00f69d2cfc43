//! A validated view of an IPv4 or IPv6 packet, down to its transport header.
//!
//! [`IpPacket::new`] is the only place a packet's bytes are checked: the IP
//! header and its lengths, IPv6 extension headers, fragmentation, and the
//! transport header (TCP, UDP, SCTP, ICMPv4/ICMPv6 including the packet an
//! ICMP error quotes). After that nothing can fail: every accessor of
//! [`IpPacket`] and of the transport views in [`Transport`] is infallible
//! and reads the bytes the constructor checked. WireGuard (`weft-wg`, for
//! cryptokey routing), the packet filter (`weft-filter`) and GRO
//! (`weft-net`) all read the same view, so a packet is parsed once on its
//! way through the data plane.
//!
//! What it is not: it verifies no checksum (GRO does, on the bytes, where
//! it needs to), reassembles no fragments (a non-first fragment's view has
//! no transport header, see [`Fragment`]), and judges nothing — a TCP
//! segment with SYN and FIN set, or port 0, is well-formed here; deciding
//! that it is hostile is the filter's business. It does no I/O and never
//! allocates (`no_std`).
//!
//! Read first: RFC 791 §3.1 (IPv4 header), RFC 8200 §4 (IPv6 extension
//! headers, the fragment header), RFC 9293 §3.1 (TCP header), RFC 768
//! (UDP), RFC 9260 §3.1 (SCTP common header), RFC 792 and RFC 4443 (ICMP,
//! and how much of the invoking packet an error quotes).
#![no_std]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(test)]
extern crate std;

mod parse;
mod transport;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use transport::{Icmp, IcmpMessage, Quote, QuotedTransport, Sctp, Tcp, Transport, Udp};

/// IANA protocol numbers ("Assigned Internet Protocol Numbers").
pub mod proto {
    /// ICMP for IPv4 (RFC 792).
    pub const ICMP: u8 = 1;
    /// TCP (RFC 9293).
    pub const TCP: u8 = 6;
    /// UDP (RFC 768).
    pub const UDP: u8 = 17;
    /// ICMP for IPv6 (RFC 4443).
    pub const ICMPV6: u8 = 58;
    /// SCTP (RFC 9260).
    pub const SCTP: u8 = 132;
}

/// TCP flag bits, as [`Tcp::flags`] returns them (byte 13 of the header,
/// RFC 9293 §3.1).
pub mod tcp {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers: opens a connection.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// The acknowledgment field is significant.
    pub const ACK: u8 = 0x10;
}

/// The most IPv6 extension headers [`IpPacket::new`] walks; a packet with
/// more is refused as [`PacketError::TooManyExtensionHeaders`]. Real
/// traffic carries zero to two.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// The smallest IPv4 header (RFC 791 §3.1: IHL ≥ 5 words).
pub const IPV4_MIN_HEADER_LEN: usize = 20;

/// The fixed IPv6 header (RFC 8200 §3).
pub const IPV6_HEADER_LEN: usize = 40;

/// Why a buffer is not a packet [`IpPacket::new`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// The buffer ends inside a header, or before the length the IP header
    /// declares.
    #[error("truncated packet: a header or the declared length runs past the end")]
    Truncated,
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    BadVersion(u8),
    /// The IPv4 header length is below 20 bytes or beyond the total length.
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    /// A transport header's own length field contradicts the packet: a TCP
    /// data offset below 20 bytes or past the segment, a UDP length below
    /// 8 or past the datagram.
    #[error("bad transport header length")]
    BadTransportLength,
    /// An IPv6 packet with two fragment headers.
    #[error("two IPv6 fragment headers")]
    DuplicateFragmentHeader,
    /// More than [`MAX_EXTENSION_HEADERS`] IPv6 extension headers.
    #[error("more than {MAX_EXTENSION_HEADERS} IPv6 extension headers")]
    TooManyExtensionHeaders,
    /// An IPv6 routing header with segments left: the packet's final
    /// destination is not the address in its header.
    #[error("IPv6 routing header with segments left")]
    RoutingHeader,
    /// An ICMP error quoting something that is not an IP packet of the
    /// error's own family.
    #[error("ICMP error quoting a packet of another IP version")]
    BadIcmpQuote,
}

/// The IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4 (RFC 791).
    V4,
    /// IPv6 (RFC 8200).
    V6,
}

/// How a packet relates to IP fragmentation. The identification is widened
/// to 32 bits so both families share one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented (an IPv6 "atomic fragment", offset 0 without more
    /// fragments, counts as whole).
    Whole,
    /// Offset 0 with more fragments to come: it carries the transport
    /// header (but not necessarily its whole payload).
    First {
        /// The datagram's identification.
        id: u32,
    },
    /// Offset > 0: it carries no transport header ([`Transport::Fragment`]).
    Later {
        /// The datagram's identification.
        id: u32,
        /// Offset of this fragment's data in 8-byte units.
        offset: u16,
    },
}

/// A validated IPv4 or IPv6 packet borrowed from a buffer. Built only by
/// [`IpPacket::new`]; every accessor is infallible.
///
/// The view covers exactly the length the IP header declares
/// ([`IpPacket::total_len`]): bytes after it in the buffer are not part of
/// the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<'a> {
    bytes: &'a [u8],
    header: IpHeader<'a>,
    /// Upper-layer protocol, after IPv6 extension headers.
    protocol: u8,
    /// Offset of the transport header (or a later fragment's data).
    header_len: usize,
    fragment: Fragment,
    transport: Transport<'a>,
}

/// The fixed IP header, checked to be complete: addresses are read from it
/// without a length check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IpHeader<'a> {
    V4(&'a [u8; IPV4_MIN_HEADER_LEN]),
    V6(&'a [u8; IPV6_HEADER_LEN]),
}

impl IpHeader<'_> {
    #[inline]
    pub(crate) fn version(self) -> IpVersion {
        match self {
            IpHeader::V4(_) => IpVersion::V4,
            IpHeader::V6(_) => IpVersion::V6,
        }
    }

    #[inline]
    pub(crate) fn src(self) -> IpAddr {
        match self {
            IpHeader::V4(h) => IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15])),
            IpHeader::V6(h) => IpAddr::V6(Ipv6Addr::from(addr16(h, 8))),
        }
    }

    #[inline]
    pub(crate) fn dst(self) -> IpAddr {
        match self {
            IpHeader::V4(h) => IpAddr::V4(Ipv4Addr::new(h[16], h[17], h[18], h[19])),
            IpHeader::V6(h) => IpAddr::V6(Ipv6Addr::from(addr16(h, 24))),
        }
    }
}

#[inline]
fn addr16(h: &[u8; IPV6_HEADER_LEN], at: usize) -> [u8; 16] {
    let mut a = [0; 16];
    a.copy_from_slice(&h[at..at + 16]);
    a
}

impl<'a> IpPacket<'a> {
    /// Validates `buf` as an IPv4 or IPv6 packet down to its transport
    /// header. Bytes after the length the IP header declares are ignored.
    ///
    /// # Errors
    /// A [`PacketError`] naming the first thing wrong.
    #[inline]
    pub fn new(buf: &'a [u8]) -> Result<Self, PacketError> {
        parse::packet(buf)
    }

    /// Returns the IP version.
    #[must_use]
    #[inline]
    pub fn version(&self) -> IpVersion {
        self.header.version()
    }

    /// Returns the source address.
    #[must_use]
    #[inline]
    pub fn src(&self) -> IpAddr {
        self.header.src()
    }

    /// Returns the destination address.
    #[must_use]
    #[inline]
    pub fn dst(&self) -> IpAddr {
        self.header.dst()
    }

    /// Returns the upper-layer protocol: the IPv4 Protocol field, or for
    /// IPv6 the Next Header that follows the extension headers (for a
    /// non-first fragment, the fragment header's Next Header).
    #[must_use]
    pub const fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Returns the bytes in front of the transport header: IHL × 4 for
    /// IPv4, 40 plus the extension headers for IPv6.
    #[must_use]
    pub const fn header_len(&self) -> usize {
        self.header_len
    }

    /// Returns the length the IP header declares (header plus payload).
    #[must_use]
    pub const fn total_len(&self) -> usize {
        self.bytes.len()
    }

    /// Returns the packet's bytes, exactly [`IpPacket::total_len`] of them.
    #[must_use]
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Returns how the packet relates to fragmentation.
    #[must_use]
    pub const fn fragment(&self) -> Fragment {
        self.fragment
    }

    /// Returns the transport header's view.
    #[must_use]
    pub const fn transport(&self) -> Transport<'a> {
        self.transport
    }
}

#[cfg(test)]
mod tests;
