//! DERP relay frames (weft-relay's `proto::frame`), as the relay server reads
//! them from a client and a client reads them from the server: frames
//! decoded one after another from a byte stream under each side's size
//! limit; every decoded frame encodes to bytes that decode to the same frame.
//!
//! weft-relay is a binary-heavy crate (axum, rustls, tokio); the fuzz
//! workspace compiles only its frame module, from its source file, with the
//! protocol constants of `crates/weft-relay/src/proto/mod.rs` beside it.
#![no_main]

// Copied from crates/weft-relay/src/proto/mod.rs (frame.rs reads them as
// `super::…`, here the crate root); keep in step with it.
const MAGIC: [u8; 8] = *b"DERP\xf0\x9f\x94\x91";
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 5;
const MAX_PACKET_SIZE: usize = 64 << 10;
const MAX_FRAME_FROM_SERVER: usize = 1 << 20;
const MAX_FRAME_FROM_CLIENT: usize = 256 << 10;

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
