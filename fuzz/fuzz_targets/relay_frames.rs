//! DERP relay frames (weft-relay's `proto::frame`), as the relay server reads
//! them from a client and a client reads them from the server: frames
//! decoded one after another from a byte stream under each side's size
//! limit; every decoded frame encodes to bytes that decode to the same frame.
//!
//! weft-relay is a binary-heavy crate (axum, rustls, tokio); the fuzz
//! workspace compiles only its frame module and the protocol constants beside
//! it, from their source files (`frame.rs` reads the constants as `super::…`,
//! here the crate root).
#![no_main]

#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/weft-relay/src/proto/constants.rs"]
mod constants;
use constants::{
    FRAME_HEADER_LEN, KEY_LEN, MAGIC, MAX_FRAME_FROM_CLIENT, MAX_FRAME_FROM_SERVER,
    MAX_PACKET_SIZE, NONCE_LEN,
};

#[allow(dead_code, unreachable_pub, clippy::all)]
// rustfmt would look for frame.rs's test module beside this file.
#[rustfmt::skip]
#[path = "../../crates/weft-relay/src/proto/frame.rs"]
mod frame;

use frame::Frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for max in [MAX_FRAME_FROM_CLIENT, MAX_FRAME_FROM_SERVER] {
        let mut at = 0;
        for _ in 0..64 {
            let Ok(Some((frame, used))) = Frame::decode(&data[at..], max) else {
                break;
            };
            assert!(used > 0 && at + used <= data.len());
            let bytes = frame.to_vec();
            assert_eq!(bytes.len(), frame.encoded_len());
            if !matches!(frame, Frame::Unknown { .. }) {
                let (again, n) = Frame::decode(&bytes, usize::MAX)
                    .expect("an encoded frame decodes")
                    .expect("and is complete");
                assert_eq!(n, bytes.len());
                assert_eq!(again, frame, "decode(encode(f)) == f");
            }
            at += used;
        }
    }
    if let Some((&ty, payload)) = data.split_first() {
        let _ = Frame::parse(ty, payload);
    }
});
