//! Structure-aware: arbitrary bytes as the *plaintext* of a transport
//! message from an authenticated peer, so the fuzzer gets past the AEAD tag
//! and reaches what `Device::decapsulate` does with the decrypted payload
//! (inner packet parse, the AllowedIPs source check, keepalives).
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

use weft_fuzz::{base_instant, overlay_v4, overlay_v6, underlay, unix_epoch, wg_device, wg_key};
use weft_wg::session::{BoringSession, Clock, SessionOutput, WgSession};
use weft_wg::{Decapsulated, Device};

struct Pair {
    /// Node 0's side, as a bare session: it encrypts any bytes.
    a: Mutex<BoringSession>,
    /// Node 1, the device under test.
    b: Device,
}

fn pair() -> &'static Pair {
    static P: OnceLock<Pair> = OnceLock::new();
    P.get_or_init(|| {
        let now = base_instant();
        let b = wg_device(1, Some(0));
        let clock = Clock::new(now, unix_epoch());
        let mut a = BoringSession::new(&wg_key(1), &wg_key(2).public(), None, 1, clock, now);
        let mut out = vec![0u8; 2048];
        let mut out_b = vec![0u8; 2048];
        let SessionOutput::Network(init) = a.initiate_handshake(&mut out, now) else {
            panic!("a handshake initiation");
        };
        let mut response = Vec::new();
        let r = b.decapsulate(underlay(0), init, &mut out_b, now, &mut |_, d| {
            response = d.to_vec()
        });
        assert_eq!(r, Decapsulated::Done);
        let from = Some(underlay(1).ip());
        if let SessionOutput::Network(keepalive) = a.decapsulate(from, &response, &mut out, now) {
            let keepalive = keepalive.to_vec();
            let _ = b.decapsulate(underlay(0), &keepalive, &mut out_b, now, &mut |_, _| {});
        }
        assert!(
            a.has_current_session(now),
            "the fixture completed its handshake"
        );
        Pair {
            a: Mutex::new(a),
            b,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let p = pair();
    let now = base_instant();
    let mut out = vec![0u8; data.len() + 64 + 148];
    let mut a = p.a.lock().unwrap_or_else(|e| e.into_inner());
    let SessionOutput::Network(datagram) = a.encapsulate(data, &mut out, now) else {
        return;
    };
    let datagram = datagram.to_vec();
    drop(a);
    let mut out_b = vec![0u8; datagram.len().max(148)];
    let before = p.b.stats();
    let r =
        p.b.decapsulate(underlay(0), &datagram, &mut out_b, now, &mut |_, _| {});
    match r {
        Decapsulated::ToTunnel(ip) => {
            let src = ip.src();
            assert!(
                src == IpAddr::V4(overlay_v4(0)) || src == IpAddr::V6(overlay_v6(0)),
                "only the peer's own addresses pass the AllowedIPs check"
            );
            assert!(
                ip.total_len() <= data.len(),
                "the inner packet came from the plaintext"
            );
        }
        Decapsulated::Done => assert!(data.is_empty(), "only an empty payload is a keepalive"),
        Decapsulated::Dropped(_) => {
            assert_eq!(p.b.stats().total_drops(), before.total_drops() + 1);
        }
    }
});
