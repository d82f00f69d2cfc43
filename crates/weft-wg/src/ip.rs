//! A validated view of an IPv4 or IPv6 header, just enough for cryptokey
//! routing: the version, lengths, addresses and the next protocol.
//!
//! [`IpPacket::new`] checks every length once (RFC 791 §3.1 for IPv4,
//! RFC 8200 §3 for IPv6); after that every accessor is infallible and cheap.
//! This is deliberately not a full packet parser: IPv6 extension headers are
//! not walked ([`IpPacket::next_protocol`] is the fixed header's Next Header
//! field), and no checksum is verified — WireGuard's AEAD already protects the
//! bytes and the kernel checks the rest.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Minimum IPv4 header length (RFC 791 §3.1: IHL ≥ 5 words).
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// The fixed IPv6 header length (RFC 8200 §3).
pub const IPV6_HEADER_LEN: usize = 40;

/// Why a buffer is not a well-formed IP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IpError {
    /// The buffer is shorter than the minimum header of its version.
    #[error("buffer of {len} bytes is shorter than the minimum IP header")]
    TooShort {
        /// Length of the buffer.
        len: usize,
    },
    /// The version nibble is neither 4 nor 6.
    #[error("IP version {0} is neither 4 nor 6")]
    BadVersion(u8),
    /// The IPv4 IHL field is below 5 or points past the total length.
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    /// The total length field is smaller than the header or larger than the buffer.
    #[error("IP total length {total} does not fit the {len}-byte buffer")]
    BadTotalLength {
        /// Total length the header claims.
        total: usize,
        /// Length of the buffer.
        len: usize,
    },
}

/// IP version of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpVersion {
    /// IPv4 (RFC 791).
    V4,
    /// IPv6 (RFC 8200).
    V6,
}

/// A validated IPv4 or IPv6 packet borrowed from a buffer.
///
/// The view covers exactly `total_len()` bytes: trailing bytes in the buffer
/// beyond the length the header declares are not part of the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpPacket<'a> {
    bytes: &'a [u8],
    version: IpVersion,
    header_len: usize,
    protocol: u8,
    src: IpAddr,
    dst: IpAddr,
}

impl<'a> IpPacket<'a> {
    /// Validates `buf` as an IPv4 or IPv6 packet.
    ///
    /// # Errors
    /// An [`IpError`] when the version is unknown or any length field is
    /// inconsistent with the others or with the buffer.
    pub fn new(buf: &'a [u8]) -> Result<Self, IpError> {
        let Some(&first) = buf.first() else {
            return Err(IpError::TooShort { len: 0 });
        };
        match first >> 4 {
            4 => Self::new_v4(buf),
            6 => Self::new_v6(buf),
            v => Err(IpError::BadVersion(v)),
        }
    }

    fn new_v4(buf: &'a [u8]) -> Result<Self, IpError> {
        let Some(h) = buf.first_chunk::<IPV4_MIN_HEADER_LEN>() else {
            return Err(IpError::TooShort { len: buf.len() });
        };
        let header_len = usize::from(h[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if header_len < IPV4_MIN_HEADER_LEN {
            return Err(IpError::BadHeaderLength);
        }
        if total > buf.len() || total < IPV4_MIN_HEADER_LEN {
            return Err(IpError::BadTotalLength {
                total,
                len: buf.len(),
            });
        }
        if header_len > total {
            return Err(IpError::BadHeaderLength);
        }
        let src = Ipv4Addr::new(h[12], h[13], h[14], h[15]);
        let dst = Ipv4Addr::new(h[16], h[17], h[18], h[19]);
        let (bytes, _) = buf.split_at(total);
        Ok(Self {
            bytes,
            version: IpVersion::V4,
            header_len,
            protocol: h[9],
            src: src.into(),
            dst: dst.into(),
        })
    }

    fn new_v6(buf: &'a [u8]) -> Result<Self, IpError> {
        let Some(h) = buf.first_chunk::<IPV6_HEADER_LEN>() else {
            return Err(IpError::TooShort { len: buf.len() });
        };
        let payload = usize::from(u16::from_be_bytes([h[4], h[5]]));
        let total = IPV6_HEADER_LEN + payload;
        if total > buf.len() {
            return Err(IpError::BadTotalLength {
                total,
                len: buf.len(),
            });
        }
        let mut src = [0u8; 16];
        let mut dst = [0u8; 16];
        src.copy_from_slice(&h[8..24]);
        dst.copy_from_slice(&h[24..40]);
        let (bytes, _) = buf.split_at(total);
        Ok(Self {
            bytes,
            version: IpVersion::V6,
            header_len: IPV6_HEADER_LEN,
            protocol: h[6],
            src: Ipv6Addr::from(src).into(),
            dst: Ipv6Addr::from(dst).into(),
        })
    }

    /// Returns the IP version.
    pub fn version(&self) -> IpVersion {
        self.version
    }

    /// Returns the header length in bytes (IHL × 4 for IPv4, 40 for IPv6).
    pub fn header_len(&self) -> usize {
        self.header_len
    }

    /// Returns the total length the header declares (header plus payload).
    pub fn total_len(&self) -> usize {
        self.bytes.len()
    }

    /// Returns the source address.
    pub fn src(&self) -> IpAddr {
        self.src
    }

    /// Returns the destination address.
    pub fn dst(&self) -> IpAddr {
        self.dst
    }

    /// Returns the IPv4 Protocol or the IPv6 fixed header's Next Header field.
    pub fn next_protocol(&self) -> u8 {
        self.protocol
    }

    /// Returns the packet's bytes, exactly `total_len()` of them.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a minimal IPv4 packet (no options) with `payload_len` zero bytes.
    pub(crate) fn ipv4(src: [u8; 4], dst: [u8; 4], payload_len: usize) -> Vec<u8> {
        let total = 20 + payload_len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&u16::try_from(total).unwrap().to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p
    }

    /// Builds a minimal IPv6 packet with `payload_len` zero bytes.
    pub(crate) fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload_len: usize) -> Vec<u8> {
        let mut p = vec![0u8; 40 + payload_len];
        p[0] = 0x60;
        p[4..6].copy_from_slice(&u16::try_from(payload_len).unwrap().to_be_bytes());
        p[6] = 58;
        p[7] = 64;
        p[8..24].copy_from_slice(&src.octets());
        p[24..40].copy_from_slice(&dst.octets());
        p
    }

    #[test]
    fn parses_an_ipv4_header() {
        let p = ipv4([100, 64, 0, 1], [100, 64, 0, 2], 8);
        let ip = IpPacket::new(&p).unwrap();
        assert_eq!(ip.version(), IpVersion::V4);
        assert_eq!(ip.header_len(), 20);
        assert_eq!(ip.total_len(), 28);
        assert_eq!(ip.src(), IpAddr::from([100, 64, 0, 1]));
        assert_eq!(ip.dst(), IpAddr::from([100, 64, 0, 2]));
        assert_eq!(ip.next_protocol(), 17);
    }

    #[test]
    fn parses_an_ipv6_header() {
        let a: Ipv6Addr = "fd7a:115c:a1e0::1".parse().unwrap();
        let b: Ipv6Addr = "fd7a:115c:a1e0::2".parse().unwrap();
        let p = ipv6(a, b, 12);
        let ip = IpPacket::new(&p).unwrap();
        assert_eq!(ip.version(), IpVersion::V6);
        assert_eq!(ip.header_len(), 40);
        assert_eq!(ip.total_len(), 52);
        assert_eq!((ip.src(), ip.dst()), (IpAddr::V6(a), IpAddr::V6(b)));
        assert_eq!(ip.next_protocol(), 58);
    }

    #[test]
    fn trailing_bytes_beyond_the_total_length_are_not_part_of_the_packet() {
        let mut p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 4);
        p.extend_from_slice(&[0xee; 10]);
        assert_eq!(IpPacket::new(&p).unwrap().as_bytes().len(), 24);
    }

    #[test]
    fn inconsistent_lengths_are_rejected() {
        assert_eq!(IpPacket::new(&[]), Err(IpError::TooShort { len: 0 }));
        assert_eq!(
            IpPacket::new(&[0x45; 19]),
            Err(IpError::TooShort { len: 19 })
        );
        assert_eq!(IpPacket::new(&[0x15; 40]), Err(IpError::BadVersion(1)));

        let mut p = ipv4([1, 1, 1, 1], [2, 2, 2, 2], 4);
        p[0] = 0x44; // IHL 4 words
        assert_eq!(IpPacket::new(&p), Err(IpError::BadHeaderLength));
        p[0] = 0x47; // IHL 28 bytes > total 24
        assert_eq!(IpPacket::new(&p), Err(IpError::BadHeaderLength));
        p[0] = 0x45;
        p[2..4].copy_from_slice(&25u16.to_be_bytes());
        assert_eq!(
            IpPacket::new(&p),
            Err(IpError::BadTotalLength { total: 25, len: 24 })
        );

        let mut p6 = ipv6(Ipv6Addr::LOCALHOST, Ipv6Addr::LOCALHOST, 0);
        p6[5] = 1;
        assert_eq!(
            IpPacket::new(&p6),
            Err(IpError::BadTotalLength { total: 41, len: 40 })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_valid_views_fit_their_buffer(
            buf in proptest::collection::vec(any::<u8>(), 0..120)
        ) {
            if let Ok(ip) = IpPacket::new(&buf) {
                prop_assert!(ip.total_len() <= buf.len());
                prop_assert!(ip.header_len() <= ip.total_len());
            }
        }
    }
}

#[cfg(test)]
mod agreement {
    //! `weft_packet::IpPacket` against this header-only view, which it
    //! replaces: it reads the same header, and refuses more only for what
    //! lies past the IP header.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;
    use weft_packet::PacketError;

    fn agree(buf: &[u8]) -> Result<(), TestCaseError> {
        match (IpPacket::new(buf), weft_packet::IpPacket::new(buf)) {
            (Err(_), Err(_)) => {}
            (Err(old), Ok(_)) => {
                prop_assert!(
                    false,
                    "the view accepts what the header check refused: {old}"
                )
            }
            (Ok(_), Err(e)) => prop_assert!(
                !matches!(e, PacketError::BadVersion(_) | PacketError::BadHeaderLength),
                "refused the IP header the old check accepted: {e}"
            ),
            (Ok(old), Ok(new)) => {
                prop_assert_eq!(old.src(), new.src());
                prop_assert_eq!(old.dst(), new.dst());
                prop_assert_eq!(old.as_bytes(), new.as_bytes());
                match old.version() {
                    IpVersion::V4 => {
                        prop_assert_eq!(new.version(), weft_packet::IpVersion::V4);
                        prop_assert_eq!(old.header_len(), new.header_len());
                        prop_assert_eq!(old.next_protocol(), new.protocol());
                    }
                    IpVersion::V6 => {
                        prop_assert_eq!(new.version(), weft_packet::IpVersion::V6);
                        prop_assert!(new.header_len() >= old.header_len());
                    }
                }
            }
        }
        Ok(())
    }

    /// A UDP datagram in IPv4 or IPv6 with `extra` bytes after it.
    fn seed(v6: bool, extra: usize) -> Vec<u8> {
        let mut p = if v6 {
            tests::ipv6(
                "fd7a:115c:a1e0::1".parse().unwrap(),
                "fd7a:115c:a1e0::2".parse().unwrap(),
                12,
            )
        } else {
            tests::ipv4([100, 64, 0, 1], [100, 64, 0, 2], 12)
        };
        let at = if v6 { 40 } else { 20 };
        if v6 {
            p[6] = 17;
        }
        p[at + 4..at + 6].copy_from_slice(&12u16.to_be_bytes());
        p.extend(std::iter::repeat_n(0xee, extra));
        p
    }

    #[test]
    fn a_valid_udp_packet_reads_alike() {
        agree(&seed(false, 0)).unwrap();
        agree(&seed(true, 3)).unwrap();
        assert!(weft_packet::IpPacket::new(&seed(false, 0)).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(10_000))]

        #[test]
        fn the_view_reads_the_same_header_on_arbitrary_bytes(
            buf in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            agree(&buf)?;
        }

        #[test]
        fn the_view_reads_the_same_header_on_mangled_packets(
            v6 in any::<bool>(),
            extra in 0usize..4,
            flips in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
            cut in proptest::option::weighted(0.25, any::<usize>()),
        ) {
            let mut p = seed(v6, extra);
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
