//! The channel end to end in memory: handshake, messages, and every way a
//! peer or an attacker can break it.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::*;
use proptest::prelude::*;
use weft_control_proto::frame::{FRAME_HANDSHAKE, FRAME_RECORD, MAX_FRAGMENT};
use weft_control_proto::{
    ChannelConfig, ChannelError, Connection, Encoded, Event, UpgradeError, UpgradeHeaders,
};
use weft_types::control::{ClientMessage, EndpointUpdate, KeepAlive, ServerMessage};
use weft_types::{CapabilityVersion, MachinePrivate};

fn keep_alive() -> ClientMessage {
    ClientMessage::KeepAlive(KeepAlive {})
}

fn big_update(n: usize) -> ClientMessage {
    ClientMessage::Endpoints(EndpointUpdate {
        endpoints: (0..n).map(|i| endpoint(i as i64, 1000)).collect(),
        home_relay: None,
    })
}

// --- handshake ---

#[test]
fn a_handshake_and_messages_round_trip_both_ways() {
    let now = t0();
    let (mut client, mut server) = open(ChannelConfig::default(), now);
    assert_eq!(server.remote_key(), machine_key().public());
    assert_eq!(client.remote_key(), server_key().public());

    // The client may send before the handshake completes; the message waits.
    client.send(&keep_alive(), now).unwrap();
    assert!(client.poll_transmit().is_none());

    pump(&mut server, &mut client, now).unwrap();
    assert_eq!(events(&mut client), vec![Event::Established]);
    pump(&mut client, &mut server, now).unwrap();
    assert_eq!(
        events(&mut server),
        vec![Event::Established, Event::Message(keep_alive())]
    );

    let msg = ServerMessage::KeepAlive(KeepAlive {});
    server.send(&msg, now).unwrap();
    pump(&mut server, &mut client, now).unwrap();
    assert_eq!(events(&mut client), vec![Event::Message(msg)]);
}

#[test]
fn connections_and_encoded_messages_can_move_between_threads() {
    fn send<T: Send + 'static>() {}
    fn share<T: Send + Sync + 'static>() {}
    send::<weft_control_proto::ClientConnection>();
    send::<weft_control_proto::ServerConnection>();
    send::<weft_control_proto::MapSession>();
    share::<Encoded<ServerMessage>>();
}

#[test]
fn a_handshake_response_and_records_in_one_read_are_all_processed() {
    let now = t0();
    let (mut client, mut server) = open(ChannelConfig::default(), now);
    let msg = ServerMessage::KeepAlive(KeepAlive {});
    server.send(&msg, now).unwrap();
    server.send(&msg, now).unwrap();
    let bytes = server.poll_transmit().unwrap();
    client.handle_input(&bytes, now).unwrap();
    assert_eq!(
        events(&mut client),
        vec![
            Event::Established,
            Event::Message(msg.clone()),
            Event::Message(msg)
        ]
    );
}

#[test]
fn the_server_learns_the_authenticated_machine_key_and_version() {
    let now = t0();
    let (_, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion(7),
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    let acc = accept(&req, ChannelConfig::default(), now);
    assert_eq!(acc.machine_key, machine_key().public());
    assert_eq!(acc.version, CapabilityVersion(7));
}

#[test]
fn a_client_that_pinned_another_server_key_is_refused_by_the_server() {
    let now = t0();
    let wrong = MachinePrivate::from_bytes(counting(0x99)).public();
    let (_, req) = Connection::client(
        &machine_key(),
        &wrong,
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    let (cap, hs) = headers(&req);
    let h = UpgradeHeaders {
        upgrade: Some("weft-control"),
        capability: Some(&cap),
        handshake: Some(&hs),
    };
    let err = Connection::accept(
        &server_key(),
        &h,
        ChannelConfig::default(),
        counting(2),
        now,
    )
    .unwrap_err();
    assert_eq!(err, UpgradeError::HandshakeFailed);
    assert_eq!(err.status(), 400);
}

#[test]
fn a_server_without_the_pinned_key_fails_the_clients_handshake() {
    // An impostor answers with its own key: the client notices.
    let now = t0();
    let impostor = MachinePrivate::from_bytes(counting(0x99));
    let (mut client, req) = Connection::client(
        &machine_key(),
        &impostor.public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    // The impostor does hold the key the client pinned, so it can answer…
    let (cap, hs) = headers(&req);
    let h = UpgradeHeaders {
        upgrade: Some("weft-control"),
        capability: Some(&cap),
        handshake: Some(&hs),
    };
    let mut acc =
        Connection::accept(&impostor, &h, ChannelConfig::default(), counting(2), now).unwrap();
    let mut response = acc.connection.poll_transmit().unwrap();
    // …but a response forged by anyone else (here: one byte changed) fails.
    response[10] ^= 1;
    assert_eq!(
        client.handle_input(&response, now),
        Err(ChannelError::HandshakeFailed)
    );
    assert_eq!(client.send(&keep_alive(), now), Err(ChannelError::Dead));
}

#[test]
fn a_tampered_machine_key_in_message_one_is_refused() {
    let now = t0();
    let (_, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    for byte in [0usize, 40, 95] {
        let mut msg = b64.decode(&req.handshake).unwrap();
        msg[byte] ^= 0x01;
        let hs = b64.encode(&msg);
        let h = UpgradeHeaders {
            upgrade: Some("weft-control"),
            capability: Some("1"),
            handshake: Some(&hs),
        };
        let err = Connection::accept(
            &server_key(),
            &h,
            ChannelConfig::default(),
            counting(2),
            now,
        )
        .unwrap_err();
        assert_eq!(err, UpgradeError::HandshakeFailed, "byte {byte}");
    }
}

#[test]
fn a_changed_capability_header_breaks_the_handshake() {
    // The version is bound into the prologue: a middlebox cannot change it.
    let now = t0();
    let (_, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion(2),
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    let h = UpgradeHeaders {
        upgrade: Some("weft-control"),
        capability: Some("1"),
        handshake: Some(&req.handshake),
    };
    let err = Connection::accept(
        &server_key(),
        &h,
        ChannelConfig::default(),
        counting(2),
        now,
    )
    .unwrap_err();
    assert_eq!(err, UpgradeError::HandshakeFailed);
}

#[test]
fn a_truncated_handshake_header_is_refused() {
    let now = t0();
    let (_, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let msg = b64.decode(&req.handshake).unwrap();
    for len in [0, 32, 80, 95] {
        let hs = b64.encode(&msg[..len]);
        let h = UpgradeHeaders {
            upgrade: Some("weft-control"),
            capability: Some("1"),
            handshake: Some(&hs),
        };
        let err = Connection::accept(
            &server_key(),
            &h,
            ChannelConfig::default(),
            counting(2),
            now,
        )
        .unwrap_err();
        assert_eq!(err, UpgradeError::HandshakeFailed, "len {len}");
    }
}

#[test]
fn bad_upgrade_requests_get_the_documented_status() {
    let now = t0();
    let cases: [(UpgradeHeaders<'_>, UpgradeError, u16); 6] = [
        (
            UpgradeHeaders {
                upgrade: None,
                capability: Some("1"),
                handshake: Some("AA=="),
            },
            UpgradeError::NotAnUpgrade,
            426,
        ),
        (
            UpgradeHeaders {
                upgrade: Some("websocket"),
                capability: Some("1"),
                handshake: Some("AA=="),
            },
            UpgradeError::NotAnUpgrade,
            426,
        ),
        (
            UpgradeHeaders {
                upgrade: Some("weft-control"),
                capability: None,
                handshake: Some("AA=="),
            },
            UpgradeError::BadCapability,
            400,
        ),
        (
            UpgradeHeaders {
                upgrade: Some("weft-control"),
                capability: Some("+1"),
                handshake: Some("AA=="),
            },
            UpgradeError::BadCapability,
            400,
        ),
        (
            UpgradeHeaders {
                upgrade: Some("weft-control"),
                capability: Some("0"),
                handshake: Some("AA=="),
            },
            UpgradeError::UnsupportedVersion {
                client: CapabilityVersion(0),
                min: CapabilityVersion::MIN_SUPPORTED,
            },
            400,
        ),
        (
            UpgradeHeaders {
                upgrade: Some("weft-control"),
                capability: Some("1"),
                handshake: Some("not base64!"),
            },
            UpgradeError::BadHandshakeEncoding,
            400,
        ),
    ];
    for (h, want, status) in cases {
        let err = Connection::accept(
            &server_key(),
            &h,
            ChannelConfig::default(),
            counting(2),
            now,
        )
        .unwrap_err();
        assert_eq!(err, want);
        assert_eq!(err.status(), status);
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn a_client_whose_handshake_response_never_comes_times_out() {
    let now = t0();
    let config = ChannelConfig {
        handshake_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let (mut client, _server) = open(config, now);
    let (deadline, why) = client.poll_timeout().unwrap();
    assert_eq!(
        (deadline, why),
        (now + Duration::from_secs(10), "handshake")
    );
    client.handle_timeout(now + Duration::from_secs(9)).unwrap();
    assert_eq!(
        client.handle_timeout(deadline),
        Err(ChannelError::HandshakeTimeout(Duration::from_secs(10)))
    );
    assert_eq!(client.poll_timeout(), None);
}

#[test]
fn a_client_that_never_finishes_the_handshake_is_dropped_by_the_server() {
    // The client sent message 1 but never proves it derived the keys.
    let now = t0();
    let (_client, mut server) = open(ChannelConfig::default(), now);
    server.poll_transmit().unwrap();
    let (deadline, why) = server.poll_timeout().unwrap();
    assert_eq!(why, "handshake");
    server
        .handle_timeout(deadline - Duration::from_millis(1))
        .unwrap();
    assert!(matches!(
        server.handle_timeout(deadline),
        Err(ChannelError::HandshakeTimeout(_))
    ));
    assert_eq!(
        server.handle_input(&[0x02, 0, 0], deadline),
        Err(ChannelError::Dead)
    );
}

#[test]
fn a_client_that_hangs_up_during_the_handshake_is_reported() {
    let now = t0();
    let (_client, mut server) = open(ChannelConfig::default(), now);
    assert_eq!(
        server.handle_eof(),
        Err(ChannelError::ClosedDuringHandshake)
    );
}

#[test]
fn the_client_checks_the_servers_answer_to_the_upgrade() {
    use weft_control_proto::UpgradeRefused;
    use weft_control_proto::upgrade::check_response;
    check_response(101, Some("weft-control"), "").unwrap();
    let refusal = UpgradeError::UnsupportedVersion {
        client: CapabilityVersion(0),
        min: CapabilityVersion(1),
    };
    let err = check_response(refusal.status(), None, &refusal.to_string()).unwrap_err();
    assert_eq!(
        err,
        UpgradeRefused::Status {
            status: 400,
            message: refusal.to_string()
        }
    );
    assert!(err.to_string().contains("upgrade weft"));
    assert_eq!(
        check_response(101, Some("websocket"), ""),
        Err(UpgradeRefused::WrongProtocol("websocket".into()))
    );
    let long = "é".repeat(600);
    let Err(UpgradeRefused::Status { message, .. }) = check_response(502, None, &long) else {
        panic!()
    };
    assert!(message.len() <= 512);
}

#[test]
fn the_upgrade_request_carries_the_documented_headers() {
    let (_, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        t0(),
    )
    .unwrap();
    let h = req.headers();
    assert_eq!(h[0], ("Upgrade", "weft-control".to_owned()));
    assert_eq!(h[1], ("Connection", "Upgrade".to_owned()));
    assert_eq!(
        h[2],
        ("X-Weft-Capability", CapabilityVersion::CURRENT.to_string())
    );
    assert_eq!((h[3].0, h[3].1.len()), ("X-Weft-Handshake", 128));
}

// --- records ---

#[test]
fn a_forged_record_is_refused() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    client.send(&keep_alive(), now).unwrap();
    let mut bytes = client.poll_transmit().unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80; // in the tag
    assert_eq!(
        server.handle_input(&bytes, now),
        Err(ChannelError::Authentication)
    );
    assert_eq!(server.handle_input(&[], now), Err(ChannelError::Dead));
}

#[test]
fn a_replayed_record_is_refused() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    client.send(&keep_alive(), now).unwrap();
    let bytes = client.poll_transmit().unwrap();
    server.handle_input(&bytes, now).unwrap();
    assert_eq!(
        server.handle_input(&bytes, now),
        Err(ChannelError::Authentication)
    );
}

#[test]
fn reordered_records_are_refused() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    client.send(&keep_alive(), now).unwrap();
    let first = client.poll_transmit().unwrap();
    client.send(&keep_alive(), now).unwrap();
    let second = client.poll_transmit().unwrap();
    assert_eq!(
        server.handle_input(&second, now),
        Err(ChannelError::Authentication)
    );
    drop(first);
}

#[test]
fn a_record_from_another_session_is_refused() {
    let now = t0();
    let (mut client_a, _server_a) = established(ChannelConfig::default(), now);
    let (_client_b, mut server_b) = {
        // Same keys, different ephemeral seeds: different session keys.
        let (c, req) = Connection::client(
            &machine_key(),
            &server_key().public(),
            CapabilityVersion::CURRENT,
            ChannelConfig::default(),
            counting(0xA0),
            now,
        )
        .unwrap();
        let mut acc = accept(&req, ChannelConfig::default(), now);
        acc.connection.poll_transmit();
        (c, acc.connection)
    };
    client_a.send(&keep_alive(), now).unwrap();
    let bytes = client_a.poll_transmit().unwrap();
    assert_eq!(
        server_b.handle_input(&bytes, now),
        Err(ChannelError::Authentication)
    );
}

#[test]
fn a_stream_cut_inside_a_frame_is_truncated() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    client.send(&keep_alive(), now).unwrap();
    let bytes = client.poll_transmit().unwrap();
    server.handle_input(&bytes[..bytes.len() - 5], now).unwrap();
    assert!(events(&mut server).is_empty());
    assert_eq!(server.handle_eof(), Err(ChannelError::Truncated));
}

#[test]
fn a_stream_cut_between_fragments_of_a_message_is_truncated() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    client.send(&big_update(3000), now).unwrap();
    let bytes = client.poll_transmit().unwrap();
    let first_record = 3 + usize::from(u16::from_be_bytes([bytes[1], bytes[2]]));
    assert!(
        first_record < bytes.len(),
        "the message spans several records"
    );
    server.handle_input(&bytes[..first_record], now).unwrap();
    assert_eq!(server.handle_eof(), Err(ChannelError::Truncated));
}

#[test]
fn a_clean_close_between_messages_is_not_an_error() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    server.handle_eof().unwrap();
    assert_eq!(
        server.send(&ServerMessage::KeepAlive(KeepAlive {}), now),
        Err(ChannelError::Closed)
    );
    client.handle_eof().unwrap();
}

#[test]
fn a_message_over_the_size_limit_is_refused() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    let small = ChannelConfig {
        max_message_size: 100_000,
        ..Default::default()
    };
    let (mut client2, mut server2) = established(small, now);
    // Fits the default limit…
    client.send(&big_update(3000), now).unwrap();
    pump(&mut client, &mut server, now).unwrap();
    assert_eq!(events(&mut server).len(), 1);
    // …not a 100 kB one.
    client2.send(&big_update(3000), now).unwrap();
    assert_eq!(
        pump(&mut client2, &mut server2, now),
        Err(ChannelError::MessageTooLarge { limit: 100_000 })
    );
}

#[test]
fn the_server_configuration_refuses_client_messages_over_64_kibibytes() {
    let now = t0();
    let (mut client, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(1),
        now,
    )
    .unwrap();
    let mut server = accept(&req, ChannelConfig::for_server(), now).connection;
    pump(&mut server, &mut client, now).unwrap();
    client.send(&big_update(2_000), now).unwrap(); // about 100 KB of JSON
    assert_eq!(
        pump(&mut client, &mut server, now),
        Err(ChannelError::MessageTooLarge { limit: 64 << 10 })
    );
}

#[test]
fn the_largest_valid_client_message_fits_the_server_bound_twice() {
    use weft_types::control::{AuthKey, ExpiryRequest, RegisterAuth, RegisterRequest};
    use weft_types::node::host_info_limits::*;
    use weft_types::{HostInfo, NodePrivate};
    // Quotes and backslashes escape to two bytes each: the worst case.
    let quoted = |n: usize| "\"".repeat(n);
    let key_len = (TOTAL_MAX_LEN - HOSTNAME_MAX_LEN - 3 * SHORT_FIELD_MAX_LEN) / SSH_HOST_KEYS_MAX;
    let key = |i: usize| {
        let blob = "A".repeat(key_len - 16);
        format!("ssh-ed25519 {blob} k{i:02}").parse().unwrap()
    };
    let host_info = HostInfo {
        hostname: quoted(HOSTNAME_MAX_LEN),
        os: quoted(SHORT_FIELD_MAX_LEN),
        os_version: quoted(SHORT_FIELD_MAX_LEN),
        weft_version: quoted(SHORT_FIELD_MAX_LEN),
        ssh_host_keys: (0..SSH_HOST_KEYS_MAX).map(key).collect(),
        requested_tags: Default::default(),
        shields_up: true,
    };
    assert_eq!(host_info.validate(), Ok(()));
    let register = ClientMessage::Register(RegisterRequest {
        version: CapabilityVersion::CURRENT,
        node_key: NodePrivate::generate().public(),
        old_node_key: Some(NodePrivate::generate().public()),
        auth: RegisterAuth::AuthKey(AuthKey("k".repeat(200))),
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: host_info.clone(),
    });
    let map_with_endpoints = big_update(64);
    for m in [register, map_with_endpoints] {
        let len = serde_json::to_vec(&m).unwrap().len();
        assert!(
            len * 2 < weft_control_proto::connection::SERVER_MAX_MESSAGE_SIZE,
            "{len} bytes"
        );
    }
}

#[test]
fn unknown_and_misplaced_frames_are_refused() {
    let now = t0();
    let (_, mut server) = established(ChannelConfig::default(), now);
    assert_eq!(
        server.handle_input(&[0x07, 0, 0], now),
        Err(ChannelError::UnknownFrameType(0x07))
    );

    let (_, mut server) = established(ChannelConfig::default(), now);
    assert!(matches!(
        server
            .handle_input(&[FRAME_HANDSHAKE, 0, 48], now)
            .and_then(|_| server.handle_input(&[0; 48], now)),
        Err(ChannelError::UnexpectedFrame(_))
    ));

    let (_, mut server) = established(ChannelConfig::default(), now);
    assert!(matches!(
        server.handle_input(&[FRAME_RECORD, 0, 4, 1, 2, 3, 4], now),
        Err(ChannelError::MalformedFrame(_))
    ));

    // A client must get the handshake response before any record.
    let (mut client, _) = open(ChannelConfig::default(), now);
    assert!(matches!(
        client
            .handle_input(&[FRAME_RECORD, 0, 17], now)
            .and_then(|_| client.handle_input(&[0; 17], now)),
        Err(ChannelError::UnexpectedFrame(_))
    ));
}

#[test]
fn an_encoded_message_is_sent_like_a_typed_one() {
    let now = t0();
    let (mut client, mut server) = established(ChannelConfig::default(), now);
    let msg = ServerMessage::KeepAlive(KeepAlive {});
    server
        .send_encoded(&Encoded::new(&msg).unwrap(), now)
        .unwrap();
    pump(&mut server, &mut client, now).unwrap();
    assert_eq!(events(&mut client), vec![Event::Message(msg)]);
}

// --- timers ---

#[test]
fn a_keep_alive_goes_out_after_the_interval_of_send_silence() {
    let now = t0();
    let config = ChannelConfig {
        keep_alive_interval: Some(Duration::from_secs(60)),
        idle_timeout: Some(Duration::from_secs(150)),
        ..Default::default()
    };
    let (mut client, mut server) = established(config, now);
    assert_eq!(
        server.poll_timeout(),
        Some((now + Duration::from_secs(60), "keep-alive"))
    );
    server
        .handle_timeout(now + Duration::from_secs(59))
        .unwrap();
    assert!(server.poll_transmit().is_none());
    let later = now + Duration::from_secs(60);
    server.handle_timeout(later).unwrap();
    pump(&mut server, &mut client, later).unwrap();
    assert_eq!(
        events(&mut client),
        vec![Event::Message(ServerMessage::KeepAlive(KeepAlive {}))]
    );
    assert_eq!(
        server.poll_timeout(),
        Some((later + Duration::from_secs(60), "keep-alive"))
    );
}

#[test]
fn a_silent_peer_is_dropped_after_the_idle_timeout() {
    let now = t0();
    let config = ChannelConfig {
        keep_alive_interval: None,
        idle_timeout: Some(Duration::from_secs(150)),
        ..Default::default()
    };
    let (_client, mut server) = established(config, now);
    assert_eq!(
        server.poll_timeout(),
        Some((now + Duration::from_secs(150), "idle"))
    );
    assert_eq!(
        server.handle_timeout(now + Duration::from_secs(150)),
        Err(ChannelError::IdleTimeout(Duration::from_secs(150)))
    );
}

// --- fragmentation ---

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn arbitrary_bytes_never_panic_and_end_in_an_error_or_a_wait(
        junk in proptest::collection::vec(any::<u8>(), 0..300),
        prefix_valid in any::<bool>(),
    ) {
        let now = t0();
        let (mut client, mut server) = established(ChannelConfig::default(), now);
        if prefix_valid {
            client.send(&keep_alive(), now).unwrap();
            pump(&mut client, &mut server, now).unwrap();
        }
        match server.handle_input(&junk, now) {
            // Not a whole frame yet: the end of stream then is a truncation.
            Ok(()) => {
                prop_assert!(events(&mut server).iter().all(|e| matches!(e, Event::Message(_))));
                let eof = server.handle_eof();
                prop_assert!(junk.is_empty() == eof.is_ok(), "{:?}", eof);
            }
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                prop_assert_eq!(server.handle_input(b"x", now), Err(ChannelError::Dead));
            }
        }
    }

    #[test]
    fn arbitrary_upgrade_headers_never_panic(
        upgrade in proptest::option::of(".{0,20}"),
        capability in proptest::option::of(".{0,12}"),
        handshake in proptest::option::of("[A-Za-z0-9+/=]{0,300}"),
    ) {
        let h = UpgradeHeaders {
            upgrade: upgrade.as_deref(),
            capability: capability.as_deref(),
            handshake: handshake.as_deref(),
        };
        let result = Connection::accept(&server_key(), &h, ChannelConfig::default(), counting(2), t0());
        prop_assert!(result.is_err());
    }

    #[test]
    fn messages_of_any_size_survive_fragmentation(n in 0usize..12_000, split in 1usize..70_000) {
        let now = t0();
        let (mut client, mut server) = established(ChannelConfig::default(), now);
        let msg = big_update(n);
        client.send(&msg, now).unwrap();
        let bytes = client.poll_transmit().unwrap();
        let json_len = serde_json::to_vec(&msg).unwrap().len();
        let records = json_len.div_ceil(MAX_FRAGMENT).max(1);
        prop_assert_eq!(bytes.len(), json_len + records * (3 + 1 + 16));
        // Delivered in arbitrary pieces, as TCP may.
        for piece in bytes.chunks(split) {
            server.handle_input(piece, now).unwrap();
        }
        prop_assert_eq!(events(&mut server), vec![Event::Message(msg)]);
    }
}
