//! Software GRO for TUN writes: coalescing a batch of decrypted packets into
//! a few large ones, without allocating.
//!
//! Read first: the `virtio_net_hdr` section of the virtio spec ("Packet
//! Transmission"), and Linux's `tcp_gro_receive` for what may be merged.
//!
//! With `IFF_VNET_HDR`, each write to TUN starts with a `virtio_net_hdr`.
//! A packet whose header says "GSO, TCPv4, segment size N" may carry up to
//! 64 KiB of payload: the kernel treats it as that many segments that
//! arrived together (exactly what NIC GRO produces), so the TCP stack runs
//! once per super-packet instead of once per segment. [`Gro::coalesce`]
//! builds those super-packets from a batch, without copying: a joining
//! packet's payload stays where it is, and the head is written together
//! with the joined payloads in one `writev`.
//!
//! * A packet may join the *head* packet of its flow (same addresses,
//!   ports, ACK number, IP and TCP options) if it continues the byte stream
//!   exactly (its sequence number is the head's next one), its payload is
//!   not longer than the head's first segment, the head is not closed, and
//!   the result stays under 64 KiB and [`MAX_SEGMENTS`]. A shorter segment
//!   or PSH closes the head (nothing may follow it within a GSO packet).
//! * UDP datagrams of one flow join the same way when the device has USO,
//!   all of the head's size except a shorter last one.
//! * Every packet's own checksum is verified before it joins: the merged
//!   packet goes up as `CHECKSUM_PARTIAL` (`NEEDS_CSUM`), which the kernel
//!   does not verify, so an invalid segment must never be folded in.
//! * Anything else is written as it came, with an empty header. A packet of
//!   a flow that cannot join ends that flow's head, so packets of a flow
//!   are never reordered.

use std::net::IpAddr;

use weft_packet::{Fragment, IpPacket, IpVersion, Transport, proto, tcp};

use crate::checksum::{fold, sum16};

/// Room for the virtio header in front of every packet.
pub(crate) const HEADER_LEN: usize = tun_rs::VIRTIO_NET_HDR_LEN;

/// At most this many segments per coalesced packet.
pub(crate) const MAX_SEGMENTS: u16 = 64;

const MAX_IP_LEN: usize = 65535;

const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;

/// Addresses, protocol and ports: what identifies a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FiveTuple {
    src: [u8; 16],
    dst: [u8; 16],
    v6: bool,
    proto: u8,
    sport: u16,
    dport: u16,
}

/// What GRO reads from a packet's view ([`Parsed::from_packet`]), kept per
/// slot until the batch is written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parsed {
    tuple: FiveTuple,
    /// IP header length (IPv4 without options: 20; IPv6: 40).
    ip_len: usize,
    /// TCP header length, or 8 for UDP.
    l4_len: usize,
    /// Bytes after the transport header.
    payload: usize,
    /// TCP sequence number (0 for UDP).
    seq: u32,
    /// TCP ACK number (0 for UDP).
    ack: u32,
    /// TCP flags (0 for UDP).
    flags: u8,
    /// Whether it may join or start a coalesced packet at all.
    candidate: bool,
}

/// The packet currently collecting a flow's segments.
#[derive(Debug, Clone, Copy)]
struct Head {
    slot: usize,
    parsed: Parsed,
    /// Length of the coalesced packet: the head's own bytes plus the
    /// payloads that joined it.
    total: usize,
    /// Payload size of the first segment: every joiner but the last has it.
    segment: usize,
    segments: u16,
    next_seq: u32,
    psh: bool,
    closed: bool,
}

/// A payload that joined a head: it stays in its own slot and is written
/// after the head with the same `writev`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Join {
    head: usize,
    slot: usize,
    /// Byte range within the slot (headroom included).
    start: usize,
    end: usize,
}

/// Reusable GRO state; holds no packets between calls.
#[derive(Debug)]
pub(crate) struct Gro {
    heads: Vec<Head>,
    joins: Vec<Join>,
    udp: bool,
}

impl Gro {
    /// Creates the state for batches of up to `batch` packets. UDP is
    /// coalesced only if `udp` (the device accepted USO).
    pub(crate) fn new(batch: usize, udp: bool) -> Self {
        Self {
            heads: Vec::with_capacity(batch),
            joins: Vec::with_capacity(batch),
            udp,
        }
    }

    /// Returns the byte ranges of the payloads that joined the packet in
    /// `slot` during the last [`Self::coalesce`], in stream order: write
    /// them right after it (`writev`).
    pub(crate) fn joined(
        &self,
        slot: usize,
    ) -> impl Iterator<Item = (usize, std::ops::Range<usize>)> {
        self.joins
            .iter()
            .filter(move |j| j.head == slot)
            .map(|j| (j.slot, j.start..j.end))
    }

    /// Coalesces `slots[..lens.len()]`: slot `i` holds [`HEADER_LEN`] bytes
    /// of headroom, then a packet of `lens[i]` bytes whose view gave
    /// `metas[i]` ([`Parsed::from_packet`]; `None` for a packet that is not
    /// TCP or UDP). Writes the virtio header of every packet to be written
    /// and fixes the IP/transport headers of those that others joined, and
    /// puts the indices of the slots to write, in order, into `out`. Write
    /// slot `i` as its first `HEADER_LEN + lens[i]` bytes followed by
    /// [`Self::joined`]`(i)`.
    pub(crate) fn coalesce<S: AsMut<[u8]>>(
        &mut self,
        slots: &mut [S],
        lens: &[usize],
        metas: &[Option<Parsed>],
        out: &mut Vec<usize>,
    ) {
        self.heads.clear();
        self.joins.clear();
        out.clear();
        let n = lens.len().min(slots.len());
        for i in 0..n {
            let len = lens[i];
            let slot = slots[i].as_mut();
            let Some(packet) = slot.get(HEADER_LEN..HEADER_LEN + len) else {
                continue;
            };
            let parsed = metas.get(i).copied().flatten().map(|mut p| {
                p.candidate &= p.tuple.proto == proto::TCP || self.udp;
                p
            });
            let valid = parsed.is_some_and(|p| p.candidate && checksum_ok(packet, &p));
            write_header(slot, &VirtioHeader::default());
            out.push(i);
            let Some(p) = parsed else { continue };
            let found = self.heads.iter().position(|h| h.parsed.tuple == p.tuple);
            if !p.candidate {
                // It cannot join; nothing of its flow may overtake it.
                if let Some(h) = found {
                    self.heads[h].closed = true;
                }
                continue;
            }
            if let Some(h) = found
                && valid
                && self.try_join(h, i, &p, slots, lens)
            {
                out.pop();
                continue;
            }
            // Start a new head; the flow's old head (if any) is complete.
            let head = Head {
                slot: i,
                parsed: p,
                total: len,
                segment: p.payload,
                segments: 1,
                next_seq: p.seq.wrapping_add(p.payload as u32),
                psh: p.flags & tcp::PSH != 0,
                closed: !valid || p.flags & tcp::PSH != 0,
            };
            match found {
                Some(h) => {
                    let old = std::mem::replace(&mut self.heads[h], head);
                    retire(slots, lens, &old);
                }
                None => self.heads.push(head),
            }
        }
        for h in &self.heads {
            retire(slots, lens, h);
        }
    }

    /// Returns the length the packet in `slot` has once its joined payloads
    /// follow it.
    #[cfg(test)]
    pub(crate) fn total_len(&self, slot: usize, own: usize) -> usize {
        own + self.joined(slot).map(|(_, r)| r.len()).sum::<usize>()
    }

    /// Joins packet `i` (already checksum-verified) to head `h` if allowed;
    /// returns whether it did.
    fn try_join<S: AsMut<[u8]>>(
        &mut self,
        h: usize,
        i: usize,
        p: &Parsed,
        slots: &mut [S],
        lens: &[usize],
    ) -> bool {
        let head = self.heads[h];
        let hp = &head.parsed;
        if head.closed
            || head.segments >= MAX_SEGMENTS
            || p.payload > head.segment
            || head.total + p.payload > MAX_IP_LEN
            || p.l4_len != hp.l4_len
            || p.ip_len != hp.ip_len
            || (p.tuple.proto == proto::TCP && (p.seq != head.next_seq || p.ack != hp.ack))
        {
            return false;
        }
        let (Some(head_len), Some(len)) = (lens.get(head.slot), lens.get(i)) else {
            return false;
        };
        let (before, after) = slots.split_at_mut(i);
        let head_packet = before
            .get_mut(head.slot)
            .and_then(|s| s.as_mut().get(HEADER_LEN..HEADER_LEN + head_len));
        let packet = after
            .first_mut()
            .and_then(|s| s.as_mut().get(HEADER_LEN..HEADER_LEN + len));
        let (Some(head_packet), Some(packet)) = (head_packet, packet) else {
            return false;
        };
        if !headers_match(head_packet, packet, p) {
            return false;
        }
        let start = HEADER_LEN + p.ip_len + p.l4_len;
        self.joins.push(Join {
            head: head.slot,
            slot: i,
            start,
            end: start + p.payload,
        });
        let head = &mut self.heads[h];
        head.total += p.payload;
        head.segments += 1;
        head.next_seq = head.next_seq.wrapping_add(p.payload as u32);
        if p.flags & tcp::PSH != 0 {
            head.psh = true;
            head.closed = true;
        }
        if p.payload < head.segment {
            head.closed = true;
        }
        true
    }
}

/// Turns a head that absorbed other packets into a GSO packet.
fn retire<S: AsMut<[u8]>>(slots: &mut [S], lens: &[usize], h: &Head) {
    if h.segments > 1
        && let (Some(slot), Some(&len)) = (slots.get_mut(h.slot), lens.get(h.slot))
    {
        finish(slot.as_mut(), len, h);
    }
}

impl Parsed {
    /// Reads what GRO needs from a packet's validated view. `None` for
    /// anything but TCP and UDP; `candidate` says whether it may join or
    /// start a coalesced packet at all (before the device's UDP support is
    /// taken into account).
    pub(crate) fn from_packet(ip: &IpPacket<'_>) -> Option<Parsed> {
        let mut tuple = FiveTuple {
            src: [0; 16],
            dst: [0; 16],
            v6: ip.version() == IpVersion::V6,
            proto: ip.protocol(),
            sport: 0,
            dport: 0,
        };
        for (out, addr) in [(&mut tuple.src, ip.src()), (&mut tuple.dst, ip.dst())] {
            match addr {
                IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
                IpAddr::V6(a) => *out = a.octets(),
            }
        }
        let ip_len = ip.header_len();
        // Options and extension headers are rare; leaving them out keeps
        // "headers match" simple. The IPv4 header checksum is verified
        // because the merged packet's is computed afresh.
        let ip_ok = ip.fragment() == Fragment::Whole
            && match ip.version() {
                IpVersion::V4 => {
                    ip_len == 20
                        && ip
                            .as_bytes()
                            .get(..20)
                            .is_some_and(|h| fold(sum16(h, 0)) == 0xffff)
                }
                IpVersion::V6 => ip_len == 40,
            };
        match ip.transport() {
            Transport::Tcp(t) => {
                tuple.sport = t.src_port();
                tuple.dport = t.dst_port();
                let flags = t.flags();
                let payload = t.payload().len();
                // Only plain data segments: ACK, or ACK+PSH. ECE/CWR/URG and
                // SYN/FIN/RST go up on their own.
                let plain = flags == tcp::ACK || flags == tcp::ACK | tcp::PSH;
                Some(Parsed {
                    tuple,
                    ip_len,
                    l4_len: t.header_len(),
                    payload,
                    seq: t.seq(),
                    ack: t.ack(),
                    flags,
                    candidate: ip_ok && plain && payload > 0,
                })
            }
            Transport::Udp(u) => {
                tuple.sport = u.src_port();
                tuple.dport = u.dst_port();
                let datagram = u.datagram().len();
                let payload = datagram - 8;
                Some(Parsed {
                    tuple,
                    ip_len,
                    l4_len: 8,
                    payload,
                    seq: 0,
                    ack: 0,
                    flags: 0,
                    candidate: ip_ok && u.length() == datagram && u.checksum() != 0 && payload > 0,
                })
            }
            Transport::Sctp(_)
            | Transport::Icmp(_)
            | Transport::Other(_)
            | Transport::Fragment(_) => None,
        }
    }
}

/// Whether everything but lengths, IDs, checksums and sequence numbers is
/// the same, so the merged packet's headers speak for all segments.
fn headers_match(head: &[u8], packet: &[u8], p: &Parsed) -> bool {
    let ip_same = if p.tuple.v6 {
        // Version, traffic class, flow label; next header; hop limit.
        head.get(..4) == packet.get(..4) && head.get(6..8) == packet.get(6..8)
    } else {
        // TOS; DF/MF flags; TTL and protocol.
        head.get(1) == packet.get(1)
            && head.get(6).map(|b| b & 0xe0) == packet.get(6).map(|b| b & 0xe0)
            && head.get(8..10) == packet.get(8..10)
    };
    if !ip_same {
        return false;
    }
    if p.tuple.proto == proto::TCP {
        // Window may differ (the kernel keeps the first one, as NIC GRO
        // does); options must be identical.
        let opts = p.ip_len + 20..p.ip_len + p.l4_len;
        head.get(opts.clone()) == packet.get(opts)
    } else {
        true
    }
}

/// Verifies the transport checksum (with the pseudo-header).
fn checksum_ok(packet: &[u8], p: &Parsed) -> bool {
    let Some(l4) = packet.get(p.ip_len..) else {
        return false;
    };
    fold(sum16(l4, pseudo_sum(p, l4.len()))) == 0xffff
}

fn pseudo_sum(p: &Parsed, l4_len: usize) -> u64 {
    let addr = if p.tuple.v6 { 16 } else { 4 };
    let mut acc = sum16(&p.tuple.src[..addr], 0);
    acc = sum16(&p.tuple.dst[..addr], acc);
    acc + u64::from(p.tuple.proto) + l4_len as u64
}

/// Fixes the lengths and checksums of a head that others joined (its own
/// `own` bytes are in the slot; the total length is `h.total`) and writes
/// its GSO header.
fn finish(slot: &mut [u8], own: usize, h: &Head) {
    let p = &h.parsed;
    let len = h.total;
    let Some(packet) = slot.get_mut(HEADER_LEN..HEADER_LEN + own) else {
        return;
    };
    if p.tuple.v6 {
        packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
    } else {
        packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        packet[10..12].fill(0);
        let c = !fold(sum16(&packet[..20], 0));
        packet[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let l4_total = len - p.ip_len;
    // CHECKSUM_PARTIAL: the field holds the pseudo-header sum; the kernel
    // adds the rest (per segment, if it ever segments again).
    let partial = fold(pseudo_sum(p, l4_total));
    let (gso_type, csum_offset) = if p.tuple.proto == proto::TCP {
        if h.psh {
            packet[p.ip_len + 13] |= tcp::PSH;
        }
        let t = if p.tuple.v6 {
            VIRTIO_NET_HDR_GSO_TCPV6
        } else {
            VIRTIO_NET_HDR_GSO_TCPV4
        };
        (t, 16)
    } else {
        packet[p.ip_len + 4..p.ip_len + 6].copy_from_slice(&(l4_total as u16).to_be_bytes());
        (VIRTIO_NET_HDR_GSO_UDP_L4, 6)
    };
    packet[p.ip_len + csum_offset..p.ip_len + csum_offset + 2]
        .copy_from_slice(&partial.to_be_bytes());
    write_header(
        slot,
        &VirtioHeader {
            flags: VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type,
            hdr_len: (p.ip_len + p.l4_len) as u16,
            gso_size: h.segment as u16,
            csum_start: p.ip_len as u16,
            csum_offset: csum_offset as u16,
        },
    );
}

/// `struct virtio_net_hdr`, in the host's byte order (legacy TUN).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VirtioHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

fn write_header(slot: &mut [u8], h: &VirtioHeader) {
    let Some(b) = slot.get_mut(..HEADER_LEN) else {
        return;
    };
    b[0] = h.flags;
    b[1] = h.gso_type;
    b[2..4].copy_from_slice(&h.hdr_len.to_ne_bytes());
    b[4..6].copy_from_slice(&h.gso_size.to_ne_bytes());
    b[6..8].copy_from_slice(&h.csum_start.to_ne_bytes());
    b[8..10].copy_from_slice(&h.csum_offset.to_ne_bytes());
}

#[cfg(test)]
pub(crate) fn read_header(slot: &[u8]) -> VirtioHeader {
    let u = |i: usize| u16::from_ne_bytes([slot[i], slot[i + 1]]);
    VirtioHeader {
        flags: slot[0],
        gso_type: slot[1],
        hdr_len: u(2),
        gso_size: u(4),
        csum_start: u(6),
        csum_offset: u(8),
    }
}

#[cfg(test)]
mod tests;
