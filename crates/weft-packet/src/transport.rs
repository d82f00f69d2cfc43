//! The transport-header views of an [`IpPacket`](crate::IpPacket). Each is
//! built by [`IpPacket::new`](crate::IpPacket::new) after its fixed header
//! was found complete, so every accessor is infallible.

use core::net::IpAddr;

use crate::IpHeader;

/// What follows the IP header(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// A TCP segment (or the start of one, in a first fragment).
    Tcp(Tcp<'a>),
    /// A UDP datagram (or the start of one, in a first fragment).
    Udp(Udp<'a>),
    /// An SCTP packet; only its common header is read.
    Sctp(Sctp<'a>),
    /// An ICMP message of the packet's own family (ICMPv4 in IPv4, ICMPv6
    /// in IPv6).
    Icmp(Icmp<'a>),
    /// A protocol this crate does not look into (GRE, ESP, ICMP of the
    /// other family, …): the bytes after the IP header(s).
    Other(&'a [u8]),
    /// A non-first fragment: data from the middle of a datagram, no
    /// transport header.
    Fragment(&'a [u8]),
}

fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

fn be32(b: [u8; 4]) -> u32 {
    u32::from_be_bytes(b)
}

/// A TCP header (RFC 9293 §3.1). The fixed 20 bytes are always present;
/// in a whole packet the options are too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tcp<'a> {
    fixed: &'a [u8; 20],
    /// The segment from its first header byte to the end of the packet.
    segment: &'a [u8],
}

impl<'a> Tcp<'a> {
    pub(crate) const fn new(fixed: &'a [u8; 20], segment: &'a [u8]) -> Self {
        Self { fixed, segment }
    }

    /// Returns the source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        be16([self.fixed[0], self.fixed[1]])
    }

    /// Returns the destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        be16([self.fixed[2], self.fixed[3]])
    }

    /// Returns the sequence number.
    #[must_use]
    pub fn seq(&self) -> u32 {
        be32([self.fixed[4], self.fixed[5], self.fixed[6], self.fixed[7]])
    }

    /// Returns the acknowledgment number.
    #[must_use]
    pub fn ack(&self) -> u32 {
        be32([self.fixed[8], self.fixed[9], self.fixed[10], self.fixed[11]])
    }

    /// Returns the header length the data offset gives, in bytes (20–60).
    #[must_use]
    pub fn header_len(&self) -> usize {
        usize::from(self.fixed[12] >> 4) * 4
    }

    /// Returns the flag byte (see [`crate::tcp`]).
    #[must_use]
    pub fn flags(&self) -> u8 {
        self.fixed[13]
    }

    /// Returns the options: the header bytes after the fixed 20 (as many as
    /// a first fragment holds).
    #[must_use]
    pub fn options(&self) -> &'a [u8] {
        let end = self.header_len().min(self.segment.len());
        self.segment.get(20..end).unwrap_or_default()
    }

    /// Returns the data after the header (empty when a first fragment ends
    /// inside the header).
    #[must_use]
    pub fn payload(&self) -> &'a [u8] {
        self.segment.get(self.header_len()..).unwrap_or_default()
    }

    /// Returns the whole segment, header and payload: what the checksum
    /// covers.
    #[must_use]
    pub const fn segment(&self) -> &'a [u8] {
        self.segment
    }
}

/// A UDP header (RFC 768).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Udp<'a> {
    fixed: &'a [u8; 8],
    /// The datagram from its first header byte to the end of the packet.
    datagram: &'a [u8],
}

impl<'a> Udp<'a> {
    pub(crate) const fn new(fixed: &'a [u8; 8], datagram: &'a [u8]) -> Self {
        Self { fixed, datagram }
    }

    /// Returns the source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        be16([self.fixed[0], self.fixed[1]])
    }

    /// Returns the destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        be16([self.fixed[2], self.fixed[3]])
    }

    /// Returns the length field: header plus data. In a whole packet it is
    /// at least 8 and at most [`Udp::datagram`]'s length.
    #[must_use]
    pub fn length(&self) -> usize {
        usize::from(be16([self.fixed[4], self.fixed[5]]))
    }

    /// Returns the checksum field (0: the sender computed none, IPv4 only).
    #[must_use]
    pub fn checksum(&self) -> u16 {
        be16([self.fixed[6], self.fixed[7]])
    }

    /// Returns the bytes from the UDP header to the end of the IP packet
    /// (which may run past [`Udp::length`] if the IP packet is padded).
    #[must_use]
    pub const fn datagram(&self) -> &'a [u8] {
        self.datagram
    }
}

/// An SCTP common header (RFC 9260 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sctp<'a> {
    fixed: &'a [u8; 12],
}

impl<'a> Sctp<'a> {
    pub(crate) const fn new(fixed: &'a [u8; 12]) -> Self {
        Self { fixed }
    }

    /// Returns the source port.
    #[must_use]
    pub fn src_port(&self) -> u16 {
        be16([self.fixed[0], self.fixed[1]])
    }

    /// Returns the destination port.
    #[must_use]
    pub fn dst_port(&self) -> u16 {
        be16([self.fixed[2], self.fixed[3]])
    }
}

/// An ICMPv4 or ICMPv6 message: its type, code and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Icmp<'a> {
    fixed: &'a [u8; 8],
    message: IcmpMessage<'a>,
}

impl<'a> Icmp<'a> {
    pub(crate) const fn new(fixed: &'a [u8; 8], message: IcmpMessage<'a>) -> Self {
        Self { fixed, message }
    }

    /// Returns the type field.
    #[must_use]
    pub fn icmp_type(&self) -> u8 {
        self.fixed[0]
    }

    /// Returns the code field.
    #[must_use]
    pub fn code(&self) -> u8 {
        self.fixed[1]
    }

    /// Returns what the message is.
    #[must_use]
    pub const fn message(&self) -> IcmpMessage<'a> {
        self.message
    }
}

/// The ICMP messages told apart. Types per family: echo request 8 / 128,
/// echo reply 0 / 129; errors are destination unreachable (3 / 1), time
/// exceeded (11 / 3), parameter problem (12 / 4) and, for IPv6, packet too
/// big (2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpMessage<'a> {
    /// An echo request ("ping").
    EchoRequest {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// An echo reply.
    EchoReply {
        /// Identifier.
        id: u16,
        /// Sequence number.
        seq: u16,
    },
    /// An error about a packet, which it quotes. `quote` is `None` when
    /// the quote cannot name a flow: the quoted packet is a non-first
    /// fragment, or an ICMP message other than an echo.
    Error {
        /// The quoted packet's addresses and ports.
        quote: Option<Quote<'a>>,
    },
    /// Any other type (timestamp, router and neighbor discovery, MLD, …).
    Other,
}

/// The packet an ICMP error quotes (RFC 792: its IP header and at least
/// 8 bytes of its payload; RFC 4443 §2.4: as much as fits), seen from
/// whoever sent it: `src` is normally the receiver of the error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quote<'a> {
    header: IpHeader<'a>,
    protocol: u8,
    transport: QuotedTransport,
}

impl<'a> Quote<'a> {
    pub(crate) const fn new(
        header: IpHeader<'a>,
        protocol: u8,
        transport: QuotedTransport,
    ) -> Self {
        Self {
            header,
            protocol,
            transport,
        }
    }

    /// Returns the quoted packet's source address.
    #[must_use]
    pub fn src(&self) -> IpAddr {
        self.header.src()
    }

    /// Returns the quoted packet's destination address.
    #[must_use]
    pub fn dst(&self) -> IpAddr {
        self.header.dst()
    }

    /// Returns its upper-layer protocol.
    #[must_use]
    pub const fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Returns what of its transport header the quote shows.
    #[must_use]
    pub const fn transport(&self) -> QuotedTransport {
        self.transport
    }
}

/// The part of a quoted packet's transport header that names its flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotedTransport {
    /// TCP, UDP or SCTP ports.
    Ports {
        /// Source port.
        src: u16,
        /// Destination port.
        dst: u16,
    },
    /// An echo request with this identifier.
    EchoRequest {
        /// Identifier.
        id: u16,
    },
    /// An echo reply with this identifier.
    EchoReply {
        /// Identifier.
        id: u16,
    },
    /// A protocol without ports.
    NoPorts,
}
