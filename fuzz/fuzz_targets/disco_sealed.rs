//! Structure-aware: arbitrary bytes as the *plaintext* of a disco box that
//! a known peer sealed for us, so the fuzzer gets past the Poly1305 tag and
//! reaches `Message::decode` and what `Disco` does with each message (pings,
//! pongs, CallMeMaybe; over UDP and through the relay).
#![no_main]

use std::time::Duration;

use crypto_box::aead::Aead;
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::{PublicKey, SalsaBox, SecretKey};
use libfuzzer_sys::fuzz_target;
use weft_disco::{Disco, MAGIC, RegionId, RelayRegionInfo};
use weft_fuzz::{base_instant, underlay};
use weft_types::{DiscoPrivate, NodePrivate};

fuzz_target!(|data: &[u8]| {
    let Some((&how, plain)) = data.split_first() else {
        return;
    };
    let now = base_instant();
    let ours = DiscoPrivate::from_bytes([101; 32]);
    let peer_disco = DiscoPrivate::from_bytes([102; 32]);
    let peer = NodePrivate::from_bytes([2; 32]).public();
    let mut d = Disco::new(
        ours.clone(),
        NodePrivate::from_bytes([1; 32]).public(),
        [1; 32],
    );
    d.set_relay_map(
        [RelayRegionInfo {
            id: RegionId(1),
            stun: vec![underlay(9)],
        }],
        now,
    );
    d.upsert_peer(
        peer,
        peer_disco.public(),
        [underlay(1)],
        Some(RegionId(1)),
        now,
    );

    let sealer = SalsaBox::new(
        &PublicKey::from(*ours.public().as_bytes()),
        &SecretKey::from(*peer_disco.as_bytes()),
    );
    // A fixed nonce: the input alone decides the datagram.
    let nonce = GenericArray::from([7u8; 24]);
    let boxed = sealer.encrypt(&nonce, plain).expect("sealing into a Vec");
    let mut datagram = Vec::with_capacity(MAGIC.len() + 32 + 24 + boxed.len());
    datagram.extend_from_slice(&MAGIC);
    datagram.extend_from_slice(peer_disco.public().as_bytes());
    datagram.extend_from_slice(&nonce);
    datagram.extend_from_slice(&boxed);

    if how & 1 == 0 {
        d.handle_udp(underlay(1), &datagram, now);
    } else {
        d.handle_relay(RegionId(1), peer, &datagram, now);
    }
    // Let the node act on it: answers, probes, timers.
    let later = now + Duration::from_millis(u64::from(how >> 1) * 40);
    d.handle_timeout(later);
    for _ in 0..256 {
        if d.poll_transmit().is_none() && d.poll_event().is_none() {
            break;
        }
    }
});
