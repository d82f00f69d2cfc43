//! What the filter reads from a packet: addresses, protocol,
//! fragmentation, TCP flags and ports, UDP and SCTP ports, ICMP type with
//! the echo id or the flow an error quotes.
//!
//! The bytes are checked once, by `weft_packet::IpPacket::new` (often in
//! WireGuard's decapsulation, before the packet reaches the filter);
//! [`classify`] copies the few fields the filter needs out of that view
//! into a small [`Packet`] value and refuses the well-formed packets whose
//! fields contradict each other. Nothing here reads bytes.
//!
//! Read first: RFC 9293 §3.1 (TCP flags), RFC 792 and RFC 4443 (ICMP
//! errors), RFC 1858 (tiny and overlapping fragment attacks).

use std::net::IpAddr;

use weft_packet::{
    Fragment, IcmpMessage, IpPacket, IpVersion, PacketError, QuotedTransport, Transport, tcp,
};
use weft_types::filter::proto;

/// Why a packet could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Truncated, inconsistent lengths, wrong version, or self-contradictory
    /// fields (TCP SYN with FIN or RST, port 0, an RFC 1858 overlapping
    /// fragment).
    Malformed,
    /// Well-formed but outside what the filter handles: more than
    /// [`weft_packet::MAX_EXTENSION_HEADERS`], a routing header with segments left (the
    /// packet's final destination is not the address in its header).
    Unsupported,
}

/// How a packet relates to IP fragmentation. The identification is widened
/// to 32 bits so both families share one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frag {
    /// Not fragmented (an IPv6 "atomic fragment" counts as whole).
    Whole,
    /// Offset 0 with more fragments to come: carries the transport header.
    First { id: u32 },
    /// Offset > 0: carries no transport header.
    Later { id: u32 },
}

/// What the filter needs from the transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum L4 {
    /// TCP ports and flags.
    Tcp { sport: u16, dport: u16, flags: u8 },
    /// UDP or SCTP ports.
    Ports { sport: u16, dport: u16 },
    /// ICMPv4 or ICMPv6 (the one matching the IP version).
    Icmp(Icmp),
    /// Any other protocol: no ports.
    Other,
    /// A non-first fragment: the transport header is elsewhere.
    Absent,
}

/// The ICMP messages the filter tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Icmp {
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Destination unreachable (incl. v4 "fragmentation needed"), packet too
    /// big, time exceeded, parameter problem. `inner` is the flow the quoted
    /// packet belongs to, or `None` when the quote cannot name one (a
    /// non-first fragment, an ICMP message other than echo).
    Error {
        inner: Option<Inner>,
    },
    /// Any other type (timestamp, router and neighbor discovery, MLD, …).
    Other,
}

/// The packet quoted inside an ICMP error, seen from the node that sent it:
/// `src` is (normally) this node. For a quoted ICMP echo, `sport` is the
/// echo id and `dport` is [`ECHO_REQUEST`] or [`ECHO_REPLY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inner {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
}

/// Marks a quoted echo request in [`Inner::dport`].
pub(crate) const ECHO_REQUEST: u16 = 0;
/// Marks a quoted echo reply in [`Inner::dport`].
pub(crate) const ECHO_REPLY: u16 = 1;

/// A parsed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The transport protocol number (after IPv6 extension headers).
    pub proto: u8,
    pub frag: Frag,
    pub l4: L4,
}

pub(crate) fn unparsable(e: PacketError) -> ParseError {
    match e {
        PacketError::TooManyExtensionHeaders | PacketError::RoutingHeader => {
            ParseError::Unsupported
        }
        PacketError::Truncated
        | PacketError::BadVersion(_)
        | PacketError::BadHeaderLength
        | PacketError::BadTransportLength
        | PacketError::DuplicateFragmentHeader
        | PacketError::BadIcmpQuote => ParseError::Malformed,
    }
}

/// Reads what the filter judges from a validated packet, refusing the
/// well-formed packets whose fields contradict each other: a TCP SYN with
/// FIN or RST, TCP or SCTP port 0, UDP destination port 0, and an IPv4 TCP
/// fragment at offset 8 (RFC 1858 §4: it can only serve to overwrite the
/// flags of the first fragment's TCP header).
#[inline(always)]
pub(crate) fn classify(ip: &IpPacket<'_>) -> Result<Packet, ParseError> {
    let proto = ip.protocol();
    let frag = match ip.fragment() {
        Fragment::Whole => Frag::Whole,
        Fragment::First { id } => Frag::First { id },
        Fragment::Later { id, offset } => {
            if offset == 1 && proto == proto::TCP && ip.version() == IpVersion::V4 {
                return Err(ParseError::Malformed);
            }
            Frag::Later { id }
        }
    };
    let l4 = match ip.transport() {
        Transport::Tcp(t) => {
            let (sport, dport, flags) = (t.src_port(), t.dst_port(), t.flags());
            let syn = flags & tcp::SYN != 0;
            if sport == 0 || dport == 0 || (syn && flags & (tcp::FIN | tcp::RST) != 0) {
                return Err(ParseError::Malformed);
            }
            L4::Tcp {
                sport,
                dport,
                flags,
            }
        }
        Transport::Udp(u) => {
            if u.dst_port() == 0 {
                return Err(ParseError::Malformed);
            }
            L4::Ports {
                sport: u.src_port(),
                dport: u.dst_port(),
            }
        }
        Transport::Sctp(s) => {
            if s.src_port() == 0 || s.dst_port() == 0 {
                return Err(ParseError::Malformed);
            }
            L4::Ports {
                sport: s.src_port(),
                dport: s.dst_port(),
            }
        }
        Transport::Icmp(i) => L4::Icmp(match i.message() {
            IcmpMessage::EchoRequest { id, .. } => Icmp::EchoRequest { id },
            IcmpMessage::EchoReply { id, .. } => Icmp::EchoReply { id },
            IcmpMessage::Error { quote } => Icmp::Error {
                inner: quote.map(|q| {
                    let (sport, dport) = match q.transport() {
                        QuotedTransport::Ports { src, dst } => (src, dst),
                        QuotedTransport::EchoRequest { id } => (id, ECHO_REQUEST),
                        QuotedTransport::EchoReply { id } => (id, ECHO_REPLY),
                        QuotedTransport::NoPorts => (0, 0),
                    };
                    Inner {
                        src: q.src(),
                        dst: q.dst(),
                        proto: q.protocol(),
                        sport,
                        dport,
                    }
                }),
            },
            IcmpMessage::Other => Icmp::Other,
        }),
        Transport::Other(_) => L4::Other,
        Transport::Fragment(_) => L4::Absent,
    };
    Ok(Packet {
        src: ip.src(),
        dst: ip.dst(),
        proto,
        frag,
        l4,
    })
}
