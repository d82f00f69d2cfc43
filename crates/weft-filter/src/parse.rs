//! A validated view of an IPv4 or IPv6 packet, down to what the filter
//! judges: addresses, protocol, fragmentation, TCP flags and ports, UDP and
//! SCTP ports, ICMP type with the echo id or the header embedded in an error.
//!
//! [`parse`] checks every length it reads and copies the few fields it needs
//! into a small [`Packet`] value, so nothing downstream can fail or panic.
//! It does not verify checksums (the receiving kernel does) and does not
//! reassemble fragments (see [`Frag`]).
//!
//! Read first: RFC 791 §3.1 (IPv4 header), RFC 8200 §4 (IPv6 extension
//! headers, fragment header), RFC 9293 §3.1 (TCP header), RFC 792 and
//! RFC 4443 (ICMP, the "as much of the invoking packet as possible" rule),
//! RFC 1858 (tiny and overlapping fragment attacks).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use weft_types::filter::proto;

/// The most IPv6 extension headers walked before a packet is refused as
/// [`DropReason::Unsupported`](crate::DropReason::Unsupported). Real traffic
/// carries zero to two.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// TCP flag bits (byte 13 of the TCP header).
pub(crate) mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

/// IPv6 extension header numbers (IANA "IPv6 Extension Header Types").
mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// Why a packet could not be judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Truncated, inconsistent lengths, wrong version, or self-contradictory
    /// fields (TCP SYN with FIN or RST, port 0, an RFC 1858 overlapping
    /// fragment).
    Malformed,
    /// Well-formed but outside what the filter handles: more than
    /// [`MAX_EXTENSION_HEADERS`], a routing header with segments left (the
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

/// Parses an IPv4 or IPv6 packet (by its version nibble). Bytes after the
/// length the IP header gives are ignored.
#[inline]
pub(crate) fn parse(buf: &[u8]) -> Result<Packet, ParseError> {
    match byte(buf, 0)? >> 4 {
        4 => parse_v4(buf),
        6 => parse_v6(buf),
        _ => Err(ParseError::Malformed),
    }
}

#[inline]
fn parse_v4(buf: &[u8]) -> Result<Packet, ParseError> {
    let ihl = usize::from(byte(buf, 0)? & 0x0f) * 4;
    let total = usize::from(be16(buf, 2)?);
    if ihl < 20 || total < ihl {
        return Err(ParseError::Malformed);
    }
    let pkt = buf.get(..total).ok_or(ParseError::Malformed)?;
    let id = u32::from(be16(pkt, 4)?);
    let flags_offset = be16(pkt, 6)?;
    let more = flags_offset & 0x2000 != 0;
    let offset = flags_offset & 0x1fff;
    let proto = byte(pkt, 9)?;
    let src = IpAddr::V4(v4(pkt, 12)?);
    let dst = IpAddr::V4(v4(pkt, 16)?);
    let payload = pkt.get(ihl..).ok_or(ParseError::Malformed)?;
    if offset != 0 {
        // RFC 1858 §4: an offset of 8 bytes can only serve to overwrite the
        // flags of the TCP header in the first fragment.
        if proto == proto::TCP && offset == 1 {
            return Err(ParseError::Malformed);
        }
        let frag = Frag::Later { id };
        let l4 = L4::Absent;
        return Ok(Packet {
            src,
            dst,
            proto,
            frag,
            l4,
        });
    }
    let frag = if more {
        Frag::First { id }
    } else {
        Frag::Whole
    };
    let l4 = parse_l4(proto, payload, frag == Frag::Whole, false)?;
    Ok(Packet {
        src,
        dst,
        proto,
        frag,
        l4,
    })
}

fn parse_v6(buf: &[u8]) -> Result<Packet, ParseError> {
    let total = 40 + usize::from(be16(buf, 4)?);
    let pkt = buf.get(..total).ok_or(ParseError::Malformed)?;
    let src = IpAddr::V6(v6(pkt, 8)?);
    let dst = IpAddr::V6(v6(pkt, 24)?);
    let (proto, start, frag) = walk_extensions(pkt, byte(pkt, 6)?, 40)?;
    if let Frag::Later { .. } = frag {
        let l4 = L4::Absent;
        return Ok(Packet {
            src,
            dst,
            proto,
            frag,
            l4,
        });
    }
    let payload = pkt.get(start..).ok_or(ParseError::Malformed)?;
    let l4 = parse_l4(proto, payload, frag == Frag::Whole, true)?;
    Ok(Packet {
        src,
        dst,
        proto,
        frag,
        l4,
    })
}

/// Walks IPv6 extension headers from `next` at `offset` and returns the
/// upper-layer protocol, where its header starts, and the fragmentation.
/// Stops at a non-first fragment (the protocol is then the fragment
/// header's next header, which RFC 8200 makes equal in every fragment).
fn walk_extensions(
    pkt: &[u8],
    mut next: u8,
    mut offset: usize,
) -> Result<(u8, usize, Frag), ParseError> {
    let mut frag = Frag::Whole;
    let mut seen_fragment = false;
    for _ in 0..=MAX_EXTENSION_HEADERS {
        if !matches!(
            next,
            ext::HOP_BY_HOP | ext::DEST_OPTS | ext::ROUTING | ext::AUTH | ext::FRAGMENT
        ) {
            return Ok((next, offset, frag));
        }
        let len = match next {
            ext::HOP_BY_HOP | ext::DEST_OPTS => (usize::from(byte(pkt, offset + 1)?) + 1) * 8,
            ext::ROUTING => {
                if byte(pkt, offset + 3)? != 0 {
                    return Err(ParseError::Unsupported);
                }
                (usize::from(byte(pkt, offset + 1)?) + 1) * 8
            }
            ext::AUTH => (usize::from(byte(pkt, offset + 1)?) + 2) * 4,
            ext::FRAGMENT => {
                if seen_fragment {
                    return Err(ParseError::Malformed);
                }
                seen_fragment = true;
                let field = be16(pkt, offset + 2)?;
                let id = be32(pkt, offset + 4)?;
                let nh = byte(pkt, offset)?;
                if field >> 3 != 0 {
                    return Ok((nh, offset + 8, Frag::Later { id }));
                }
                if field & 1 != 0 {
                    frag = Frag::First { id };
                }
                8
            }
            _ => return Ok((next, offset, frag)),
        };
        next = byte(pkt, offset)?;
        offset += len;
        if offset > pkt.len() {
            return Err(ParseError::Malformed);
        }
    }
    // One more extension header than the bound.
    Err(ParseError::Unsupported)
}

/// Parses the transport header. `whole` says the payload is the complete
/// datagram (not a first fragment), so lengths inside it must fit.
#[inline]
fn parse_l4(proto: u8, p: &[u8], whole: bool, is_v6: bool) -> Result<L4, ParseError> {
    match proto {
        proto::TCP => {
            let (sport, dport) = (be16(p, 0)?, be16(p, 2)?);
            let data_offset = usize::from(byte(p, 12)? >> 4) * 4;
            let flags = byte(p, 13)?;
            if p.len() < 20 || data_offset < 20 || (whole && data_offset > p.len()) {
                return Err(ParseError::Malformed);
            }
            let syn = flags & tcp::SYN != 0;
            if sport == 0 || dport == 0 || (syn && flags & (tcp::FIN | tcp::RST) != 0) {
                return Err(ParseError::Malformed);
            }
            Ok(L4::Tcp {
                sport,
                dport,
                flags,
            })
        }
        proto::UDP => {
            let (sport, dport, len) = (be16(p, 0)?, be16(p, 2)?, usize::from(be16(p, 4)?));
            if dport == 0 || (whole && (len < 8 || len > p.len())) {
                return Err(ParseError::Malformed);
            }
            Ok(L4::Ports { sport, dport })
        }
        proto::SCTP => {
            let (sport, dport) = (be16(p, 0)?, be16(p, 2)?);
            if p.len() < 12 || sport == 0 || dport == 0 {
                return Err(ParseError::Malformed);
            }
            Ok(L4::Ports { sport, dport })
        }
        proto::ICMP if !is_v6 => parse_icmp(p, false).map(L4::Icmp),
        proto::ICMPV6 if is_v6 => parse_icmp(p, true).map(L4::Icmp),
        _ => Ok(L4::Other),
    }
}

/// ICMP types per family: (echo request, echo reply, error types).
const ICMP4: (u8, u8, [u8; 3]) = (8, 0, [3, 11, 12]);
const ICMP6: (u8, u8, [u8; 4]) = (128, 129, [1, 2, 3, 4]);

fn parse_icmp(p: &[u8], is_v6: bool) -> Result<Icmp, ParseError> {
    if p.len() < 8 {
        return Err(ParseError::Malformed);
    }
    let ty = byte(p, 0)?;
    let (req, rep, is_error) = if is_v6 {
        (ICMP6.0, ICMP6.1, ICMP6.2.contains(&ty))
    } else {
        (ICMP4.0, ICMP4.1, ICMP4.2.contains(&ty))
    };
    if ty == req {
        Ok(Icmp::EchoRequest { id: be16(p, 4)? })
    } else if ty == rep {
        Ok(Icmp::EchoReply { id: be16(p, 4)? })
    } else if is_error {
        let quoted = p.get(8..).ok_or(ParseError::Malformed)?;
        let inner = if is_v6 {
            parse_inner_v6(quoted)?
        } else {
            parse_inner_v4(quoted)?
        };
        Ok(Icmp::Error { inner })
    } else {
        Ok(Icmp::Other)
    }
}

/// Parses the IPv4 packet quoted in an ICMPv4 error: its header plus at
/// least the first 8 bytes of its payload (RFC 792). The quote is usually
/// truncated, so the total length field is not checked.
fn parse_inner_v4(q: &[u8]) -> Result<Option<Inner>, ParseError> {
    if byte(q, 0)? >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = usize::from(byte(q, 0)? & 0x0f) * 4;
    if ihl < 20 {
        return Err(ParseError::Malformed);
    }
    let src = IpAddr::V4(v4(q, 12)?);
    let dst = IpAddr::V4(v4(q, 16)?);
    let proto = byte(q, 9)?;
    if be16(q, 6)? & 0x1fff != 0 {
        return Ok(None);
    }
    let l4 = q.get(ihl..).ok_or(ParseError::Malformed)?;
    inner_l4(src, dst, proto, l4, false)
}

/// Parses the IPv6 packet quoted in an ICMPv6 error (RFC 4443 §2.4: as much
/// of the invoking packet as fits), walking its extension headers.
fn parse_inner_v6(q: &[u8]) -> Result<Option<Inner>, ParseError> {
    if byte(q, 0)? >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    let src = IpAddr::V6(v6(q, 8)?);
    let dst = IpAddr::V6(v6(q, 24)?);
    let (proto, start, frag) = walk_extensions(q, byte(q, 6)?, 40)?;
    if let Frag::Later { .. } = frag {
        return Ok(None);
    }
    let l4 = q.get(start..).ok_or(ParseError::Malformed)?;
    inner_l4(src, dst, proto, l4, true)
}

fn inner_l4(
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    l4: &[u8],
    is_v6: bool,
) -> Result<Option<Inner>, ParseError> {
    let (sport, dport) = match proto {
        proto::TCP | proto::UDP | proto::SCTP => (be16(l4, 0)?, be16(l4, 2)?),
        proto::ICMP | proto::ICMPV6 if (proto == proto::ICMPV6) == is_v6 => {
            let (req, rep) = if is_v6 {
                (ICMP6.0, ICMP6.1)
            } else {
                (ICMP4.0, ICMP4.1)
            };
            let ty = byte(l4, 0)?;
            let id = be16(l4, 4)?;
            if ty == req {
                (id, ECHO_REQUEST)
            } else if ty == rep {
                (id, ECHO_REPLY)
            } else {
                // An error about an error (or about other ICMP) names no flow.
                return Ok(None);
            }
        }
        _ => (0, 0),
    };
    Ok(Some(Inner {
        src,
        dst,
        proto,
        sport,
        dport,
    }))
}

fn byte(b: &[u8], at: usize) -> Result<u8, ParseError> {
    b.get(at).copied().ok_or(ParseError::Malformed)
}

fn be16(b: &[u8], at: usize) -> Result<u16, ParseError> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(ParseError::Malformed),
    }
}

fn be32(b: &[u8], at: usize) -> Result<u32, ParseError> {
    let bytes: [u8; 4] = b
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Malformed)?;
    Ok(u32::from_be_bytes(bytes))
}

fn v4(b: &[u8], at: usize) -> Result<Ipv4Addr, ParseError> {
    be32(b, at).map(Ipv4Addr::from)
}

fn v6(b: &[u8], at: usize) -> Result<Ipv6Addr, ParseError> {
    let bytes: [u8; 16] = b
        .get(at..at + 16)
        .and_then(|s| s.try_into().ok())
        .ok_or(ParseError::Malformed)?;
    Ok(Ipv6Addr::from(bytes))
}

// ---------------------------------------------------------------------------
// From a validated view (weft-packet)
// ---------------------------------------------------------------------------

use weft_packet::{
    Fragment, IcmpMessage, IpPacket, IpVersion, PacketError, QuotedTransport, Transport,
};

/// Returns why the filter cannot judge a buffer [`IpPacket::new`] refused.
#[cfg_attr(not(test), expect(dead_code, reason = "replaces `parse` in the next commit"))]
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
#[cfg_attr(not(test), expect(dead_code, reason = "replaces `parse` in the next commit"))]
#[inline]
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
                    let (sport, dport) = match q.transport {
                        QuotedTransport::Ports { src, dst } => (src, dst),
                        QuotedTransport::EchoRequest { id } => (id, ECHO_REQUEST),
                        QuotedTransport::EchoReply { id } => (id, ECHO_REPLY),
                        QuotedTransport::NoPorts => (0, 0),
                    };
                    Inner {
                        src: q.src,
                        dst: q.dst,
                        proto: q.protocol,
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

#[cfg(test)]
mod agreement {
    //! The view-based [`classify`] against the byte parser it replaces.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    /// The one deliberate difference: the view wants the whole 8-byte UDP
    /// header even in a first fragment, the old parser only the first 6.
    fn udp_first_fragment_cut_inside_the_header(buf: &[u8]) -> bool {
        let Ok(old) = parse(buf) else { return false };
        if !matches!(old.frag, Frag::First { .. }) || old.proto != proto::UDP {
            return false;
        }
        let header = match buf[0] >> 4 {
            4 => usize::from(buf[0] & 0x0f) * 4,
            _ => walk_extensions(buf, buf[6], 40).unwrap().1,
        };
        let total = match buf[0] >> 4 {
            4 => usize::from(u16::from_be_bytes([buf[2], buf[3]])),
            _ => 40 + usize::from(u16::from_be_bytes([buf[4], buf[5]])),
        };
        total - header < 8
    }

    fn agree(buf: &[u8]) -> Result<(), TestCaseError> {
        let old = parse(buf);
        let new = IpPacket::new(buf)
            .map_err(unparsable)
            .and_then(|ip| classify(&ip));
        if udp_first_fragment_cut_inside_the_header(buf) {
            prop_assert_eq!(new, Err(ParseError::Malformed));
        } else {
            prop_assert_eq!(new, old, "bytes {:02x?}", buf);
        }
        Ok(())
    }

    fn ip4(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![
            0x45, 0, 0, 0, 0, 7, 0, 0, 64, proto, 0, 0, 100, 64, 0, 2, 100, 64, 0, 1,
        ];
        p[2..4].copy_from_slice(&u16::try_from(20 + payload.len()).unwrap().to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn ip6(next: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        p[6] = next;
        p[8] = 0xfd;
        p[23] = 2;
        p[24] = 0xfd;
        p[39] = 1;
        p.extend_from_slice(payload);
        p
    }

    fn tcp_header(flags: u8) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&50000u16.to_be_bytes());
        t[2..4].copy_from_slice(&22u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    /// Valid packets of every kind the filter tells apart, to be mangled.
    fn seeds() -> Vec<Vec<u8>> {
        let syn4 = ip4(proto::TCP, 0, &tcp_header(tcp::SYN));
        let udp = [0x9c, 0x40, 0, 53, 0, 12, 0, 0, 1, 2, 3, 4];
        let echo = [8, 0, 0, 0, 0, 9, 0, 1];
        let mut unreachable = vec![3, 3, 0, 0, 0, 0, 0, 0];
        unreachable.extend_from_slice(&syn4[..28]);
        let v6_syn = ip6(proto::TCP, &tcp_header(tcp::SYN));
        let mut too_big = vec![2, 0, 0, 0, 0, 0, 5, 0];
        too_big.extend_from_slice(&v6_syn);
        // Hop-by-hop options, then a first-fragment header, then UDP.
        let mut ext = vec![44, 0, 1, 4, 0, 0, 0, 0, proto::UDP, 0, 0, 1, 0, 0, 0, 9];
        ext.extend_from_slice(&udp);
        vec![
            syn4,
            ip4(proto::UDP, 0x2000, &udp),
            ip4(proto::UDP, 0, &udp[..8]),
            ip4(proto::ICMP, 0, &echo),
            ip4(proto::ICMP, 0, &unreachable),
            ip4(proto::TCP, 1, &[0; 16]),
            ip4(proto::SCTP, 0, &[0, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            ip4(47, 0, &[0; 4]),
            v6_syn,
            ip6(proto::ICMPV6, &too_big),
            ip6(0, &ext),
            ip6(43, &[proto::TCP, 0, 0, 1, 0, 0, 0, 0]),
            // The filter's own refusals, and their near misses.
            ip4(proto::TCP, 0, &tcp_header(tcp::SYN | tcp::FIN)),
            ip4(proto::TCP, 0, &tcp_header(tcp::SYN | tcp::RST)),
            ip4(proto::TCP, 0, &tcp_header(tcp::FIN | tcp::ACK)),
            ip4(proto::UDP, 0, &[0x9c, 0x40, 0, 0, 0, 8, 0, 0]),
            ip4(proto::UDP, 0, &[0, 0, 0, 1, 0, 8, 0, 0]),
            ip4(proto::SCTP, 0, &[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0]),
            ip4(proto::TCP, 2, &[0; 16]),
            ip6(44, &[proto::TCP, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0]),
            ip4(proto::UDP, 0x2000, &udp[..6]),
        ]
    }

    /// Bytes that sit on the boundaries the parsers test: zero, one,
    /// version and length nibbles, all ones.
    fn interesting_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            2 => any::<u8>(),
            1 => prop::sample::select(vec![0u8, 1, 2, 4, 5, 6, 8, 0x10, 0x12, 0x40, 0x45, 0x50, 0x60, 0xff]),
        ]
    }

    #[test]
    fn every_seed_is_judged_alike() {
        for s in seeds() {
            agree(&s).unwrap();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn the_view_agrees_with_the_byte_parser_on_arbitrary_bytes(
            buf in proptest::collection::vec(any::<u8>(), 0..120),
            version in prop_oneof![Just(0x40u8), Just(0x60), Just(0x45)],
        ) {
            let mut buf = buf;
            if let Some(b) = buf.first_mut() {
                // Mostly plausible versions, so the input gets past the first check.
                *b = if version == 0x45 { 0x45 } else { version | (*b & 0x0f) };
            }
            agree(&buf)?;
        }

        #[test]
        fn the_view_agrees_with_the_byte_parser_on_mangled_packets(
            seed in any::<prop::sample::Index>(),
            flips in proptest::collection::vec((0usize..80, interesting_byte()), 0..4),
            cut in proptest::option::weighted(0.25, any::<usize>()),
        ) {
            let mut seeds = seeds();
            let mut p = seeds.swap_remove(seed.index(seeds.len()));
            for (at, byte) in flips {
                let i = at % p.len();
                p[i] = byte;
            }
            if let Some(cut) = cut {
                p.truncate(cut % (p.len() + 1));
            }
            agree(&p)?;
        }
    }
}
