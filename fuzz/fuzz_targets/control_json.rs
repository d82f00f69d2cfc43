//! Control messages as JSON, the way each side decodes a reassembled
//! message: a stream of `ServerMessage`s fed to a node's `MapSession`
//! (netmaps and deltas applied in order), and `ClientMessage` as the server
//! reads it. Serialising what was decoded must decode to the same value.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use weft_control_proto::MapSession;
use weft_fuzz::base_instant;
use weft_types::control::{ClientMessage, ServerMessage};

fuzz_target!(|data: &[u8]| {
    let now = base_instant();
    let mut session = MapSession::new(Duration::from_secs(120), now);
    let stream = serde_json::Deserializer::from_slice(data).into_iter::<ServerMessage>();
    for msg in stream.take(32) {
        let Ok(msg) = msg else { break };
        let text = serde_json::to_vec(&msg).expect("a decoded message serialises");
        let again: ServerMessage = serde_json::from_slice(&text).expect("and decodes back");
        assert_eq!(again, msg);
        match msg {
            ServerMessage::Map(resp) => match session.handle_response(resp, now) {
                Ok(diff) => {
                    std::hint::black_box(diff.is_empty());
                }
                Err(_) => session.restart(now),
            },
            ServerMessage::KeepAlive(_) => session.handle_keep_alive(now),
            _ => {}
        }
    }
    if let Some(map) = session.netmap() {
        std::hint::black_box(serde_json::to_vec(map).map(|v| v.len()).unwrap_or(0));
    }
    if let Ok(msg) = serde_json::from_slice::<ClientMessage>(data) {
        let text = serde_json::to_vec(&msg).expect("a decoded message serialises");
        let again: ClientMessage = serde_json::from_slice(&text).expect("and decodes back");
        assert_eq!(again, msg);
    }
});
