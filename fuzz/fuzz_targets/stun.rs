//! STUN (weft-disco's codec, used by netcheck on the node and by the relay's
//! STUN server): `parse` on arbitrary datagrams, the Binding-response reader,
//! and the server's answer, which must read back as the requester's address.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_disco::stun;
use weft_fuzz::underlay;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = stun::parse(data) {
        assert!(stun::is_stun(data));
        std::hint::black_box((msg.address(), msg.is_binding_request()));
    }
    let _ = stun::parse_binding_response(data);
    for from in [
        underlay(0),
        "[fd7a:115c:a1e0::2]:41641".parse().expect("addr"),
    ] {
        let mut out = [0u8; 128];
        if let Ok(n) = stun::answer_binding_request(data, from, &mut out) {
            let (_, addr) = stun::parse_binding_response(&out[..n])
                .expect("the server's answer is a valid Binding response");
            assert_eq!(addr, from, "the answer carries the requester's address");
        }
    }
});
