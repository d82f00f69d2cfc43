//! `Device::decapsulate` on arbitrary datagrams, into three devices: one
//! without a key, one with a peer but no session, and one with an
//! established session (set up once, in memory).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weft_fuzz::{base_instant, ipv4_udp, underlay, wg_device, wg_pump};
use weft_packet::IpPacket;
use weft_wg::{Decapsulated, Device, Encapsulated};

struct Devices {
    no_key: Device,
    no_session: Device,
    /// Node 0 (initiator) and node 1, with a session.
    pair: (Device, Device),
}

fn devices() -> &'static Devices {
    static D: OnceLock<Devices> = OnceLock::new();
    D.get_or_init(|| {
        let now = base_instant();
        let no_key = Device::new(now, weft_fuzz::unix_epoch());
        let no_session = wg_device(1, Some(0));
        let (a, b) = (wg_device(0, Some(1)), wg_device(1, Some(0)));
        let packet = ipv4_udp(0, 1, b"hello");
        let mut out = vec![0u8; 2048];
        let mut wire = Vec::new();
        let view = IpPacket::new(&packet).expect("the fixture packet is valid");
        let r = a.encapsulate(view, &mut out, now, &mut |_, d| wire.push((1, d.to_vec())));
        assert_eq!(r, Encapsulated::Queued);
        wg_pump(&a, &b, wire);
        assert!(
            b.peers(now).iter().any(|p| p.last_handshake.is_some()),
            "the fixture pair completed its handshake"
        );
        Devices {
            no_key,
            no_session,
            pair: (a, b),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = devices();
    let now = base_instant();
    let mut out = vec![0u8; data.len().max(148)];
    for dev in [&d.no_key, &d.no_session, &d.pair.1] {
        let before = dev.stats();
        let r = dev.decapsulate(underlay(0), data, &mut out, now, &mut |_, reply| {
            assert!(!reply.is_empty());
        });
        let after = dev.stats();
        assert_eq!(after.rx_datagrams, before.rx_datagrams + 1);
        if let Decapsulated::Dropped(_) = r {
            assert_eq!(
                after.total_drops(),
                before.total_drops() + 1,
                "every drop is counted"
            );
        }
    }
});
