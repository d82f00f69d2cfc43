//! weftd's state file loader on arbitrary bytes (a file on disk that
//! something else changed or truncated): `StateFile::parse`, the pure half
//! of `StateFile::load`. weftd is a binary crate, so its module is compiled
//! in here from its source file.
#![no_main]

#[allow(dead_code, unreachable_pub, clippy::all)]
#[path = "../../crates/weftd/src/daemon/state_file.rs"]
mod state_file;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = state_file::StateFile::parse(data) {
        // What weftd writes back must load again.
        let text = serde_json::to_vec(&state).expect("a parsed state serialises");
        let again = state_file::StateFile::parse(&text).expect("weftd reads what it writes");
        assert_eq!(again.current_profile, state.current_profile);
        assert_eq!(again.profiles, state.profiles);
        assert!(state.current().is_some(), "the current profile exists");
    }
});
