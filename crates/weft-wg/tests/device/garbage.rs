//! Hostile input: garbage, short, oversized and mis-addressed datagrams, and
//! garbage from TUN. Nothing may panic; every drop is counted.

use proptest::prelude::*;
use weft_wg::{Decapsulated, Encapsulated};

use crate::harness::*;

/// `len` random bytes with a WireGuard message header of type `ty`.
fn typed(ty: u8, len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), len).prop_map(move |mut v| {
        v[0] = ty;
        v[1..4].fill(0);
        v
    })
}

/// Datagrams that look more or less like WireGuard messages.
fn datagram(receiver: u32) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200),
        1 => typed(1, 148),
        1 => typed(2, 92),
        1 => typed(3, 64),
        2 => (32usize..1600).prop_flat_map(move |len| typed(4, len)),
        // Addressed to a real session, with garbage contents.
        2 => (32usize..1600, any::<u8>()).prop_flat_map(move |(len, low)| typed(4, len).prop_map(move |mut v| {
            v[4..8].copy_from_slice(&((receiver & !0xff) | u32::from(low)).to_le_bytes());
            v
        })),
        2 => (any::<u8>()).prop_flat_map(move |low| typed(2, 92).prop_map(move |mut v| {
            v[8..12].copy_from_slice(&((receiver & !0xff) | u32::from(low)).to_le_bytes());
            v
        })),
        1 => (65_000usize..70_000).prop_flat_map(|len| typed(4, len)),
    ]
}

fn out_len() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![0usize, 1, 31, 64, 147, 148, 200, 1500, 2048, 70_000])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn garbage_datagrams_never_panic_and_are_counted(
        (d, out_len) in (datagram(0x100), out_len()),
    ) {
        let mut net = Net::pair();
        net.handshake();
        let dev = &net.nodes[1].dev;
        let before = dev.stats();
        let mut out = vec![0u8; out_len];
        let mut replies = 0;
        let r = dev.decapsulate(net.nodes[0].addr, &d, &mut out, net.now, &mut |_, _| replies += 1);
        let after = dev.stats();
        prop_assert!(matches!(r, Decapsulated::Dropped(_)), "{:?}", r);
        prop_assert_eq!(after.rx_datagrams, before.rx_datagrams + 1);
        prop_assert_eq!(after.total_drops(), before.total_drops() + 1);
        prop_assert_eq!(replies, 0);
    }

    /// Bytes from TUN reach the device only as a view `weft_packet`
    /// accepted (the engine counts the rest); any such view, however odd,
    /// is handled without panicking and every drop is counted.
    #[test]
    fn garbage_from_tun_never_panics_and_is_counted(
        mut p in proptest::collection::vec(any::<u8>(), 0..1600),
        version in prop::sample::select(vec![0x45u8, 0x4f, 0x60, 0x00]),
        fix_length in any::<bool>(),
        out_len in out_len(),
    ) {
        if let Some(first) = p.first_mut() {
            *first = version;
        }
        if fix_length && p.len() >= 40 {
            // A consistent length field gets the bytes past the IP header check.
            let len = u16::try_from(p.len()).unwrap();
            match version >> 4 {
                4 => p[2..4].copy_from_slice(&len.to_be_bytes()),
                6 => p[4..6].copy_from_slice(&(len - 40).to_be_bytes()),
                _ => {}
            }
        }
        let Ok(ip) = weft_packet::IpPacket::new(&p) else {
            return Ok(());
        };
        let mut net = Net::pair();
        let dev = &net.nodes[0].dev;
        let before = dev.stats();
        let mut out = vec![0u8; out_len];
        let r = dev.encapsulate(ip, &mut out, net.now, &mut |_, _| {});
        let after = dev.stats();
        prop_assert_eq!(after.tx_packets, before.tx_packets + 1);
        let dropped = u64::from(matches!(r, Encapsulated::Dropped(_)));
        prop_assert_eq!(after.total_drops(), before.total_drops() + dropped);
        net.wire.clear();
    }
}
