//! Disco datagrams as they arrive from anyone: framing (`Sealed::parse`),
//! a box that does not open, the plaintext decoder (`Message::decode`, and
//! encode/decode agreeing), and the whole `Disco::handle_udp` /
//! `handle_relay` path of a node that knows one peer.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use weft_disco::{Disco, Message, Sealed, SharedBox, is_disco};
use weft_fuzz::{base_instant, underlay};
use weft_types::{DiscoPrivate, NodePrivate};

fn node() -> &'static Mutex<Disco> {
    static D: OnceLock<Mutex<Disco>> = OnceLock::new();
    D.get_or_init(|| {
        let now = base_instant();
        let me = NodePrivate::from_bytes([1; 32]).public();
        let mut d = Disco::new(DiscoPrivate::from_bytes([101; 32]), me, [1; 32]);
        let peer = NodePrivate::from_bytes([2; 32]).public();
        let peer_disco = DiscoPrivate::from_bytes([102; 32]).public();
        d.upsert_peer(peer, peer_disco, [underlay(1)], None, now);
        Mutex::new(d)
    })
}

fuzz_target!(|data: &[u8]| {
    let now = base_instant();
    // The plaintext decoder on its own (what a box that opens yields).
    if let Ok(msg) = Message::decode(data) {
        let again = Message::decode(&msg.encode()).expect("encode writes what decode reads");
        assert_eq!(again, msg);
    }
    if let Ok(sealed) = Sealed::parse(data) {
        assert!(is_disco(data));
        let ours = DiscoPrivate::from_bytes([101; 32]);
        let b = SharedBox::new(&ours, &sealed.sender());
        let _ = b.open(&sealed);
    }
    let mut d = node().lock().unwrap_or_else(|e| e.into_inner());
    let peer = NodePrivate::from_bytes([2; 32]).public();
    d.handle_udp(underlay(1), data, now);
    d.handle_relay(weft_disco::RegionId(1), peer, data, now);
    while d.poll_transmit().is_some() {}
    while d.poll_event().is_some() {}
});
