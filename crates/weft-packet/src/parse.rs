//! [`IpPacket::new`]'s checks: every length is read here and nowhere else.

use crate::transport::{Icmp, IcmpMessage, Quote, QuotedTransport, Sctp, Tcp, Udp};
use crate::{
    Fragment, IPV4_MIN_HEADER_LEN, IPV6_HEADER_LEN, IpHeader, IpPacket, IpVersion,
    MAX_EXTENSION_HEADERS, PacketError, Transport, proto,
};

/// IPv6 extension header numbers (IANA "IPv6 Extension Header Types").
mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTH: u8 = 51;
    pub const DEST_OPTS: u8 = 60;
}

/// ICMP types per family.
struct IcmpTypes {
    echo_request: u8,
    echo_reply: u8,
    errors: &'static [u8],
}

const ICMP4: IcmpTypes = IcmpTypes {
    echo_request: 8,
    echo_reply: 0,
    errors: &[3, 11, 12],
};

const ICMP6: IcmpTypes = IcmpTypes {
    echo_request: 128,
    echo_reply: 129,
    errors: &[1, 2, 3, 4],
};

#[inline(always)]
pub(crate) fn packet(buf: &[u8]) -> Result<IpPacket<'_>, PacketError> {
    let Some(&first) = buf.first() else {
        return Err(PacketError::Truncated);
    };
    match first >> 4 {
        4 => v4(buf),
        6 => v6(buf),
        v => Err(PacketError::BadVersion(v)),
    }
}

#[inline]
fn v4(buf: &[u8]) -> Result<IpPacket<'_>, PacketError> {
    let h: &[u8; IPV4_MIN_HEADER_LEN] = buf.first_chunk().ok_or(PacketError::Truncated)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if ihl < IPV4_MIN_HEADER_LEN || ihl > total {
        return Err(PacketError::BadHeaderLength);
    }
    let bytes = buf.get(..total).ok_or(PacketError::Truncated)?;
    let payload = bytes.get(ihl..).ok_or(PacketError::BadHeaderLength)?;
    let id = u32::from(u16::from_be_bytes([h[4], h[5]]));
    let flags_offset = u16::from_be_bytes([h[6], h[7]]);
    let offset = flags_offset & 0x1fff;
    let more = flags_offset & 0x2000 != 0;
    let protocol = h[9];
    let fragment = match (offset, more) {
        (0, false) => Fragment::Whole,
        (0, true) => Fragment::First { id },
        (offset, _) => Fragment::Later { id, offset },
    };
    let transport = match fragment {
        Fragment::Later { .. } => Transport::Fragment(payload),
        Fragment::Whole => transport(protocol, payload, true, IpVersion::V4)?,
        Fragment::First { .. } => transport(protocol, payload, false, IpVersion::V4)?,
    };
    Ok(IpPacket {
        bytes,
        header: IpHeader::V4(h),
        protocol,
        header_len: ihl,
        fragment,
        transport,
    })
}

#[inline]
fn v6(buf: &[u8]) -> Result<IpPacket<'_>, PacketError> {
    let h: &[u8; IPV6_HEADER_LEN] = buf.first_chunk().ok_or(PacketError::Truncated)?;
    let total = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([h[4], h[5]]));
    let bytes = buf.get(..total).ok_or(PacketError::Truncated)?;
    let (protocol, start, fragment) = if is_extension(h[6]) {
        walk_extensions(bytes, h[6], IPV6_HEADER_LEN)?
    } else {
        (h[6], IPV6_HEADER_LEN, Fragment::Whole)
    };
    let payload = bytes.get(start..).ok_or(PacketError::Truncated)?;

    let transport = match fragment {
        Fragment::Later { .. } => Transport::Fragment(payload),
        Fragment::Whole => transport(protocol, payload, true, IpVersion::V6)?,
        Fragment::First { .. } => transport(protocol, payload, false, IpVersion::V6)?,
    };
    Ok(IpPacket {
        bytes,
        header: IpHeader::V6(h),
        protocol,
        header_len: start,
        fragment,
        transport,
    })
}

/// Returns whether `next` names an extension header [`walk_extensions`]
/// steps over.
#[inline]
fn is_extension(next: u8) -> bool {
    matches!(
        next,
        ext::HOP_BY_HOP | ext::ROUTING | ext::FRAGMENT | ext::AUTH | ext::DEST_OPTS
    )
}

/// Walks IPv6 extension headers from `next` at `offset` and returns the
/// upper-layer protocol, where its header starts, and the fragmentation.
/// Stops at a non-first fragment (the protocol is then the fragment
/// header's Next Header, which RFC 8200 §4.5 makes equal in every fragment).
fn walk_extensions(
    pkt: &[u8],
    mut next: u8,
    mut offset: usize,
) -> Result<(u8, usize, Fragment), PacketError> {
    let mut fragment = Fragment::Whole;
    let mut seen_fragment = false;
    // One more round than the bound: the last only looks at `next`.
    for _ in 0..=MAX_EXTENSION_HEADERS {
        let len = match next {
            ext::HOP_BY_HOP | ext::DEST_OPTS => (usize::from(byte(pkt, offset + 1)?) + 1) * 8,
            ext::ROUTING => {
                if byte(pkt, offset + 3)? != 0 {
                    return Err(PacketError::RoutingHeader);
                }
                (usize::from(byte(pkt, offset + 1)?) + 1) * 8
            }
            ext::AUTH => (usize::from(byte(pkt, offset + 1)?) + 2) * 4,
            ext::FRAGMENT => {
                if seen_fragment {
                    return Err(PacketError::DuplicateFragmentHeader);
                }
                seen_fragment = true;
                let h: &[u8; 8] = pkt
                    .get(offset..)
                    .and_then(<[u8]>::first_chunk)
                    .ok_or(PacketError::Truncated)?;
                let field = u16::from_be_bytes([h[2], h[3]]);
                let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
                if field >> 3 != 0 {
                    let later = Fragment::Later {
                        id,
                        offset: field >> 3,
                    };
                    return Ok((h[0], offset + 8, later));
                }
                if field & 1 != 0 {
                    fragment = Fragment::First { id };
                }
                8
            }
            upper => return Ok((upper, offset, fragment)),
        };
        next = byte(pkt, offset)?;
        offset += len;
        if offset > pkt.len() {
            return Err(PacketError::Truncated);
        }
    }
    Err(PacketError::TooManyExtensionHeaders)
}

/// Checks the transport header at the start of `p`. `whole` says `p` is the
/// complete datagram (not a first fragment), so lengths inside it must fit.
#[inline]
fn transport(
    protocol: u8,
    p: &[u8],
    whole: bool,
    version: IpVersion,
) -> Result<Transport<'_>, PacketError> {
    match (protocol, version) {
        (proto::TCP, _) => {
            let fixed: &[u8; 20] = p.first_chunk().ok_or(PacketError::Truncated)?;
            let header_len = usize::from(fixed[12] >> 4) * 4;
            if header_len < 20 || (whole && header_len > p.len()) {
                return Err(PacketError::BadTransportLength);
            }
            Ok(Transport::Tcp(Tcp::new(fixed, p)))
        }
        (proto::UDP, _) => {
            let fixed: &[u8; 8] = p.first_chunk().ok_or(PacketError::Truncated)?;
            let len = usize::from(u16::from_be_bytes([fixed[4], fixed[5]]));
            if whole && (len < 8 || len > p.len()) {
                return Err(PacketError::BadTransportLength);
            }
            Ok(Transport::Udp(Udp::new(fixed, p)))
        }
        (proto::SCTP, _) => {
            let fixed: &[u8; 12] = p.first_chunk().ok_or(PacketError::Truncated)?;
            Ok(Transport::Sctp(Sctp::new(fixed)))
        }
        (proto::ICMP, IpVersion::V4) => icmp(p, &ICMP4, IpVersion::V4),
        (proto::ICMPV6, IpVersion::V6) => icmp(p, &ICMP6, IpVersion::V6),
        _ => Ok(Transport::Other(p)),
    }
}

#[inline(never)]
fn icmp<'a>(
    p: &'a [u8],
    types: &IcmpTypes,
    version: IpVersion,
) -> Result<Transport<'a>, PacketError> {
    let fixed: &[u8; 8] = p.first_chunk().ok_or(PacketError::Truncated)?;
    let ty = fixed[0];
    let id = u16::from_be_bytes([fixed[4], fixed[5]]);
    let seq = u16::from_be_bytes([fixed[6], fixed[7]]);
    let message = if ty == types.echo_request {
        IcmpMessage::EchoRequest { id, seq }
    } else if ty == types.echo_reply {
        IcmpMessage::EchoReply { id, seq }
    } else if types.errors.contains(&ty) {
        let quoted = p.get(8..).ok_or(PacketError::Truncated)?;
        let quote = match version {
            IpVersion::V4 => quote_v4(quoted)?,
            IpVersion::V6 => quote_v6(quoted)?,
        };
        IcmpMessage::Error { quote }
    } else {
        IcmpMessage::Other
    };
    Ok(Transport::Icmp(Icmp::new(fixed, message)))
}

/// Reads the IPv4 packet quoted in an ICMPv4 error: its header plus at
/// least the first 8 bytes of its payload (RFC 792). The quote is usually
/// cut short, so its total length is not checked.
fn quote_v4(q: &[u8]) -> Result<Option<Quote<'_>>, PacketError> {
    let h: &[u8; IPV4_MIN_HEADER_LEN] = q.first_chunk().ok_or(PacketError::Truncated)?;
    let ihl = usize::from(h[0] & 0x0f) * 4;
    if h[0] >> 4 != 4 || ihl < IPV4_MIN_HEADER_LEN {
        return Err(PacketError::BadIcmpQuote);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
        return Ok(None);
    }
    let l4 = q.get(ihl..).ok_or(PacketError::Truncated)?;
    quoted_transport(IpHeader::V4(h), h[9], l4, &ICMP4, proto::ICMP)
}

/// Reads the IPv6 packet quoted in an ICMPv6 error (RFC 4443 §2.4: as much
/// of the invoking packet as fits), walking its extension headers.
fn quote_v6(q: &[u8]) -> Result<Option<Quote<'_>>, PacketError> {
    let h: &[u8; IPV6_HEADER_LEN] = q.first_chunk().ok_or(PacketError::Truncated)?;
    if h[0] >> 4 != 6 {
        return Err(PacketError::BadIcmpQuote);
    }
    let (protocol, start, fragment) = walk_extensions(q, h[6], IPV6_HEADER_LEN)?;
    if let Fragment::Later { .. } = fragment {
        return Ok(None);
    }
    let l4 = q.get(start..).ok_or(PacketError::Truncated)?;
    quoted_transport(IpHeader::V6(h), protocol, l4, &ICMP6, proto::ICMPV6)
}

fn quoted_transport<'a>(
    header: IpHeader<'a>,
    protocol: u8,
    l4: &[u8],
    icmp: &IcmpTypes,
    icmp_proto: u8,
) -> Result<Option<Quote<'a>>, PacketError> {
    let transport = match protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            let h: &[u8; 4] = l4.first_chunk().ok_or(PacketError::Truncated)?;
            QuotedTransport::Ports {
                src: u16::from_be_bytes([h[0], h[1]]),
                dst: u16::from_be_bytes([h[2], h[3]]),
            }
        }
        p if p == icmp_proto => {
            let h: &[u8; 6] = l4.first_chunk().ok_or(PacketError::Truncated)?;
            let id = u16::from_be_bytes([h[4], h[5]]);
            if h[0] == icmp.echo_request {
                QuotedTransport::EchoRequest { id }
            } else if h[0] == icmp.echo_reply {
                QuotedTransport::EchoReply { id }
            } else {
                // An error about an error (or about other ICMP) names no flow.
                return Ok(None);
            }
        }
        _ => QuotedTransport::NoPorts,
    };
    Ok(Some(Quote::new(header, protocol, transport)))
}

fn byte(b: &[u8], at: usize) -> Result<u8, PacketError> {
    b.get(at).copied().ok_or(PacketError::Truncated)
}
