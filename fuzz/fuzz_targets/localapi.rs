//! LocalAPI bodies: what weftd parses from a local client (`PATCH prefs`,
//! `POST start`, `POST ping`, with weftd's rule that an empty body is
//! `{}`), and what the CLI parses from weftd (`status`, the notify stream).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_localapi::{Notify, PingRequest, Prefs, PrefsPatch, StartRequest, Status};

/// weftd's body rule (crates/weftd/src/daemon/localapi/mod.rs `parse`).
fn parse<T: DeserializeOwned>(body: &[u8]) -> Option<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).ok()
}

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(v: &T) {
    let text = serde_json::to_vec(v).expect("a decoded body serialises");
    let again: T = serde_json::from_slice(&text).expect("and decodes back");
    assert_eq!(&again, v);
}

fuzz_target!(|data: &[u8]| {
    if let Some(patch) = parse::<PrefsPatch>(data) {
        round_trip(&patch);
        let prefs = patch.apply_to(&Prefs::default());
        round_trip(&prefs);
        if patch.is_empty() {
            assert_eq!(prefs, Prefs::default(), "an empty patch changes nothing");
        }
    }
    if let Some(start) = parse::<StartRequest>(data) {
        round_trip(&start);
    }
    if let Some(ping) = parse::<PingRequest>(data) {
        round_trip(&ping);
    }
    if let Ok(status) = serde_json::from_slice::<Status>(data) {
        std::hint::black_box(serde_json::to_vec(&status).map(|v| v.len()).unwrap_or(0));
    }
    for n in serde_json::Deserializer::from_slice(data)
        .into_iter::<Notify>()
        .take(16)
    {
        let Ok(n) = n else { break };
        std::hint::black_box(serde_json::to_vec(&n).map(|v| v.len()).unwrap_or(0));
    }
});
