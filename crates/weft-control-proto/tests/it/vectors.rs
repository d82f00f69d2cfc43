//! The test vectors of docs/PROTOCOL.md §10: fixed keys and seeds produce
//! exactly these bytes. Another implementation of the protocol can check
//! itself against the same numbers.

#![allow(clippy::unwrap_used)]

use crate::common;

use base64::Engine as _;
use common::*;
use weft_control_proto::noise::{ephemeral_private_from_seed, prologue};
use weft_control_proto::{ChannelConfig, Connection, Event};
use weft_types::CapabilityVersion;
use weft_types::control::{ClientMessage, KeepAlive, ServerMessage};

/// Everything the vectors pin, computed by this implementation.
struct Computed {
    client_ephemeral: String,
    server_ephemeral: String,
    message1: String,
    header: String,
    response_frame: String,
    client_record: String,
    server_record: String,
}

fn compute() -> Computed {
    let now = t0();
    let (mut client, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion(1),
        ChannelConfig::default(),
        counting(CLIENT_SEED),
        now,
    )
    .unwrap();
    let mut server = accept(&req, ChannelConfig::default(), now).connection;
    let response_frame = server.poll_transmit().unwrap();
    client.handle_input(&response_frame, now).unwrap();
    client
        .send(&ClientMessage::KeepAlive(KeepAlive {}), now)
        .unwrap();
    let client_record = client.poll_transmit().unwrap();
    server.handle_input(&client_record, now).unwrap();
    assert_eq!(
        std::iter::from_fn(|| server.poll_event()).collect::<Vec<_>>(),
        vec![
            Event::Established,
            Event::Message(ClientMessage::KeepAlive(KeepAlive {}))
        ]
    );
    server
        .send(&ServerMessage::KeepAlive(KeepAlive {}), now)
        .unwrap();
    let server_record = server.poll_transmit().unwrap();
    client.handle_input(&server_record, now).unwrap();

    let msg1 = base64::engine::general_purpose::STANDARD
        .decode(&req.handshake)
        .unwrap();
    Computed {
        client_ephemeral: hex::encode(ephemeral_private_from_seed(counting(CLIENT_SEED))),
        server_ephemeral: hex::encode(ephemeral_private_from_seed(counting(SERVER_SEED))),
        message1: hex::encode(msg1),
        header: req.handshake,
        response_frame: hex::encode(response_frame),
        client_record: hex::encode(client_record),
        server_record: hex::encode(server_record),
    }
}

#[test]
fn the_inputs_are_the_documented_ones() {
    assert_eq!(
        hex::encode(machine_key().as_bytes()),
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    );
    assert_eq!(
        hex::encode(server_key().as_bytes()),
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    );
    assert_eq!(machine_key().public().to_string(), MACHINE_PUBLIC);
    assert_eq!(server_key().public().to_string(), SERVER_PUBLIC);
    assert_eq!(prologue(CapabilityVersion(1)), b"Weft Control Protocol v1");
}

#[test]
fn fixed_keys_and_seeds_give_the_documented_bytes() {
    let c = compute();
    let all = [
        (
            "client ephemeral private",
            &c.client_ephemeral,
            CLIENT_EPHEMERAL,
        ),
        (
            "server ephemeral private",
            &c.server_ephemeral,
            SERVER_EPHEMERAL,
        ),
        ("message 1", &c.message1, MESSAGE_1),
        ("X-Weft-Handshake", &c.header, HANDSHAKE_HEADER_VALUE),
        (
            "handshake response frame",
            &c.response_frame,
            RESPONSE_FRAME,
        ),
        ("first client record", &c.client_record, CLIENT_RECORD),
        ("first server record", &c.server_record, SERVER_RECORD),
    ];
    let mut report = String::new();
    for (name, got, _) in &all {
        report.push_str(&format!("{name}: {got}\n"));
    }
    for (name, got, want) in all {
        assert_eq!(got, want, "{name} differs; computed:\n{report}");
    }
}

#[test]
fn the_protocol_document_shows_these_vectors() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/PROTOCOL.md"
    ))
    .unwrap();
    for v in [
        MACHINE_PUBLIC,
        SERVER_PUBLIC,
        CLIENT_EPHEMERAL,
        SERVER_EPHEMERAL,
        MESSAGE_1,
        HANDSHAKE_HEADER_VALUE,
        RESPONSE_FRAME,
        CLIENT_RECORD,
        SERVER_RECORD,
    ] {
        assert!(doc.contains(v), "docs/PROTOCOL.md lacks {v}");
    }
}

// Cross-checked against an independent Noise implementation (Python
// `noiseprotocol` 0.3.1 with the same keys, ephemeral keys and prologue).
const MACHINE_PUBLIC: &str =
    "mkey:8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f";
const SERVER_PUBLIC: &str = "mkey:358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254";
const CLIENT_EPHEMERAL: &str = "ae7018f739a075a1003bf31a11ace3d967e5c0daf483caa5422e699ced850032";
const SERVER_EPHEMERAL: &str = "6dd195381f0ed32895cfc8c3d1086319ed318de9f5ada2404e808e07a48c2ac2";
const MESSAGE_1: &str = "9ac0a6818c2cf92703ff9deb5e030fe9bbca12e9b5d9d7221321b9ff535b474984164f824e961b223533c155eaf5abe59438c6a98405cdeedba42e2b0d7fd3a12ad485233a9938514a11931308b7d1f52f81bd2916cbc7d4467f65a79a7b0c9a";
const HANDSHAKE_HEADER_VALUE: &str = "msCmgYws+ScD/53rXgMP6bvKEum12dciEyG5/1NbR0mEFk+CTpYbIjUzwVXq9avllDjGqYQFze7bpC4rDX/ToSrUhSM6mThRShGTEwi30fUvgb0pFsvH1EZ/Zaeaewya";
const RESPONSE_FRAME: &str = "010030891931640bafa3f11781fb8a7e9b28eaddae34bdb6609daa1d5326d5129715494d227c9e75a6c109f9148946d06242f6";
const CLIENT_RECORD: &str =
    "0200228a82be7000e3b69b820ee401d866c60847174085e4a3b06e979c45cb377a20863a0f";
const SERVER_RECORD: &str =
    "020022d9404c0319b1c3a2466b8ca33ee3b7118c8fbe07aa424c74653be7ece2f3a834fd10";
