//! The control channel before any key is shared, on arbitrary bytes: the
//! server's checks of an upgrade request (headers, base64, Noise message 1)
//! and a client's frame splitter and handshake-response reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_control_proto::{ChannelConfig, ClientConnection, ServerConnection, UpgradeHeaders};
use weft_fuzz::base_instant;
use weft_types::{CapabilityVersion, MachinePrivate};

fuzz_target!(|data: &[u8]| {
    let now = base_instant();
    let server_key = MachinePrivate::from_bytes([2; 32]);

    // The server: the three header values, one per line.
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let headers = UpgradeHeaders {
        upgrade: lines.next(),
        capability: lines.next(),
        handshake: lines.next(),
    };
    if let Ok(accepted) = ServerConnection::accept(
        &server_key,
        &headers,
        ChannelConfig::for_server(),
        [4; 32],
        now,
    ) {
        let mut c = accepted.connection;
        assert!(
            c.poll_transmit().is_some(),
            "an accepted handshake is answered"
        );
    }

    // The client: everything the server sends, split at a chosen point.
    let (mut client, _request) = ClientConnection::client(
        &MachinePrivate::from_bytes([1; 32]),
        &server_key.public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        [3; 32],
        now,
    )
    .expect("a client connection with valid keys");
    let cut = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (first, second) = data.split_at(cut);
    if client.handle_input(first, now).is_ok() && client.handle_input(second, now).is_ok() {
        let _ = client.handle_eof();
    }
    while client.poll_event().is_some() {}
});
