//! The UAPI text protocol (`wg set` / `wg show` through the control
//! socket): `parse_set` on arbitrary text, `serialize_set` reads back
//! unchanged, and a device applies the update (all or nothing) and answers
//! `get`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_fuzz::{base_instant, wg_device};
use weft_wg::uapi::{parse_set, serialize_set};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let now = base_instant();
    if let Ok(update) = parse_set(body) {
        let text = serialize_set(&update);
        let again = parse_set(&text).expect("serialize_set writes what parse_set reads");
        assert_eq!(again, update, "parse_set(serialize_set(u)) == u");
    }
    // A device with a peer: the update may touch it.
    let dev = wg_device(0, Some(1));
    let before = dev.uapi_get(now);
    match dev.uapi_set(body, now) {
        Ok(_) => {
            let _ = dev.uapi_get(now);
        }
        Err(_) => assert_eq!(dev.uapi_get(now), before, "a refused set changes nothing"),
    }
});
