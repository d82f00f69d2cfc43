//! The node's conversation against a scripted server: pre-auth key,
//! interactive login with a follow-up, map stream, updates, reconnects.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use weft_control_proto::encode::delta_body;
use weft_control_proto::{
    ChannelConfig, ClientConnection, ClientEvent, ClientParams, Connection, ControlClient,
    ControlClientError, Encoded, Event, MapSession, MapStream, PeerDiff, ServerConnection,
};
use weft_types::control::*;
use weft_types::netmap::{Delta, MapBody, MapResponse, PeerDelta};
use weft_types::{CapabilityVersion, DiscoPrivate, NodeId, NodePrivate};

fn params(auth: RegisterAuth) -> ClientParams {
    ClientParams {
        node_key: NodePrivate::from_bytes([5; 32]).public(),
        old_node_key: None,
        auth,
        expiry: ExpiryRequest::Default,
        ephemeral: false,
        host_info: node(1).host_info,
        disco_key: DiscoPrivate::from_bytes([6; 32]).public(),
        endpoints: vec![endpoint(1, 41641)],
        map: true,
        interactive: true,
    }
}

fn registered(authorized: bool) -> ServerMessage {
    ServerMessage::Register(RegisterResponse::Registered(Registered {
        node_id: NodeId(1),
        user: Some(profile(1)),
        tags: Default::default(),
        machine_authorized: authorized,
        key_expiry: None,
    }))
}

/// The client end of a connection (the handshake under way) and the
/// server end that accepted it.
fn channel(now: Instant) -> (ClientConnection, ServerConnection) {
    let (conn, req) = Connection::client(
        &machine_key(),
        &server_key().public(),
        CapabilityVersion::CURRENT,
        ChannelConfig::default(),
        counting(CLIENT_SEED),
        now,
    )
    .unwrap();
    let server = accept(&req, ChannelConfig::default(), now).connection;
    (conn, server)
}

/// A client and the server end of its connection, handshake done.
fn connect(
    auth: RegisterAuth,
    session: MapSession,
    now: Instant,
) -> (ControlClient, ServerConnection) {
    let (conn, server) = channel(now);
    let client = ControlClient::new(conn, params(auth), session, now).unwrap();
    (client, server)
}

/// Moves bytes both ways until quiet; returns what the server received.
fn exchange(
    client: &mut ControlClient,
    server: &mut ServerConnection,
    now: Instant,
) -> Vec<ClientMessage> {
    let mut got = Vec::new();
    loop {
        let mut moved = false;
        while let Some(b) = server.poll_transmit() {
            client.handle_input(&b, now).unwrap();
            moved = true;
        }
        while let Some(b) = client.poll_transmit() {
            server.handle_input(&b, now).unwrap();
            moved = true;
        }
        while let Some(ev) = server.poll_event() {
            if let Event::Message(m) = ev {
                got.push(m);
            }
        }
        if !moved {
            return got;
        }
    }
}

fn client_events(c: &mut ControlClient) -> Vec<ClientEvent> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

#[test]
fn a_pre_auth_key_registers_and_opens_the_map_stream() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::AuthKey(AuthKey("k".into())),
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Register(req)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(req.auth, RegisterAuth::AuthKey(AuthKey("k".into())));

    server.send(&registered(true), now).unwrap();
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Map(map)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert!(map.stream);
    assert_eq!(map.endpoints, vec![endpoint(1, 41641)]);

    let mut stream = MapStream::new();
    let full = MapBody::Full(Box::new(netmap(1, [2, 3])));
    server
        .send_encoded(&stream.next(&Encoded::new(&full).unwrap()).unwrap(), now)
        .unwrap();
    server
        .send_encoded(
            &stream
                .next(&delta_body(&[Delta::Peer(PeerDelta::Removed(NodeId(3)))]).unwrap())
                .unwrap(),
            now,
        )
        .unwrap();
    exchange(&mut client, &mut server, now);
    let events = client_events(&mut client);
    assert!(matches!(events[0], ClientEvent::Registered(_)));
    assert!(matches!(&events[1], ClientEvent::NetMap(d) if d.peers.len() == 2));
    assert!(
        matches!(&events[2], ClientEvent::NetMap(d) if d.peers.get(&NodeId(3)).is_some_and(|p| matches!(p, PeerDiff::Removed(_))))
    );
    assert_eq!(client.netmap().unwrap(), &netmap(1, [2]));
}

#[test]
fn an_interactive_login_follows_the_auth_url() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    let url = "https://control.example/a/k3x9".to_owned();
    server
        .send(
            &ServerMessage::Register(RegisterResponse::NeedsAuth {
                auth_url: url.clone(),
            }),
            now,
        )
        .unwrap();
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Register(follow)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(
        follow.auth,
        RegisterAuth::Followup {
            auth_url: url.clone()
        }
    );
    assert_eq!(
        client_events(&mut client),
        vec![ClientEvent::NeedsAuth { auth_url: url }]
    );

    // Not yet approved by an admin: registered, but no map stream.
    server.send(&registered(false), now).unwrap();
    assert!(exchange(&mut client, &mut server, now).is_empty());
    assert!(
        matches!(client_events(&mut client).as_slice(), [ClientEvent::Registered(r)] if !r.machine_authorized)
    );
}

#[test]
fn refusals_and_expiry_end_the_conversation_with_an_event() {
    let now = t0();
    for (resp, want) in [
        (
            RegisterResponse::Refused(Refusal {
                reason: RefusalReason::NodeKeyInUse,
                message: "in use".into(),
                retry_after_ms: None,
            }),
            ClientEvent::Refused(Refusal {
                reason: RefusalReason::NodeKeyInUse,
                message: "in use".into(),
                retry_after_ms: None,
            }),
        ),
        (
            RegisterResponse::NodeKeyExpired,
            ClientEvent::NodeKeyExpired,
        ),
        (RegisterResponse::LoggedOut, ClientEvent::LoggedOut),
    ] {
        let (mut client, mut server) = connect(
            RegisterAuth::None,
            MapSession::new(Duration::from_secs(150), now),
            now,
        );
        exchange(&mut client, &mut server, now);
        server.send(&ServerMessage::Register(resp), now).unwrap();
        assert!(exchange(&mut client, &mut server, now).is_empty());
        assert_eq!(client_events(&mut client), vec![want]);
    }
}

#[test]
fn endpoint_and_host_info_changes_go_out_while_mapping() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    // Before the stream: remembered for the map request, not sent.
    client
        .update_endpoints(vec![endpoint(1, 5000)], now)
        .unwrap();
    client.update_home_relay(Some(900), now).unwrap();
    exchange(&mut client, &mut server, now);
    server.send(&registered(true), now).unwrap();
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Map(map)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(map.endpoints, vec![endpoint(1, 5000)]);
    assert_eq!(map.home_relay, Some(900));

    client
        .update_endpoints(vec![endpoint(1, 6000)], now)
        .unwrap();
    let mut hi = node(1).host_info;
    hi.shields_up = true;
    client.update_host_info(hi.clone(), now).unwrap();
    // A new home relay alone goes out with the current endpoints; the same
    // one again sends nothing.
    client.update_home_relay(Some(901), now).unwrap();
    client.update_home_relay(Some(901), now).unwrap();
    let got = exchange(&mut client, &mut server, now);
    assert_eq!(
        got,
        vec![
            ClientMessage::Endpoints(EndpointUpdate {
                endpoints: vec![endpoint(1, 6000)],
                home_relay: Some(900),
            }),
            ClientMessage::HostInfo(hi),
            ClientMessage::Endpoints(EndpointUpdate {
                endpoints: vec![endpoint(1, 6000)],
                home_relay: Some(901),
            }),
        ]
    );
}

#[test]
fn a_server_error_or_a_stalled_stream_ends_the_connection() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    let err = ProtocolError {
        code: ErrorCode::NotRegistered,
        message: "register first".into(),
    };
    server
        .send(&ServerMessage::Error(err.clone()), now)
        .unwrap();
    let bytes = server.poll_transmit().unwrap();
    assert_eq!(
        client.handle_input(&bytes, now),
        Err(ControlClientError::Server(err))
    );

    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    server.send(&registered(true), now).unwrap();
    exchange(&mut client, &mut server, now);
    let (deadline, _) = client.poll_timeout().unwrap();
    assert!(
        deadline <= now + Duration::from_secs(60),
        "keep-alive comes first"
    );
    // The server goes silent; the connection's idle timer fires at 150 s.
    let late = now + Duration::from_secs(150);
    client
        .handle_timeout(now + Duration::from_secs(60))
        .unwrap();
    assert!(client.handle_timeout(late).is_err());
}

#[test]
fn a_reconnect_keeps_the_netmap_and_diffs_against_it() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    server.send(&registered(true), now).unwrap();
    exchange(&mut client, &mut server, now);
    server
        .send(
            &ServerMessage::Map(MapResponse {
                seq: 1,
                body: MapBody::Full(Box::new(netmap(1, [2, 3]))),
            }),
            now,
        )
        .unwrap();
    exchange(&mut client, &mut server, now);
    client_events(&mut client);

    // The connection dies; the next one starts from the kept netmap.
    let session = client.into_map_session();
    let (mut client, mut server) = connect(RegisterAuth::None, session, now);
    assert_eq!(client.netmap().unwrap(), &netmap(1, [2, 3]));
    exchange(&mut client, &mut server, now);
    server.send(&registered(true), now).unwrap();
    exchange(&mut client, &mut server, now);
    server
        .send(
            &ServerMessage::Map(MapResponse {
                seq: 1,
                body: MapBody::Full(Box::new(netmap(1, [2, 4]))),
            }),
            now,
        )
        .unwrap();
    exchange(&mut client, &mut server, now);
    let events = client_events(&mut client);
    let Some(ClientEvent::NetMap(diff)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        diff.peers.keys().copied().collect::<Vec<_>>(),
        vec![NodeId(3), NodeId(4)]
    );
    assert!(!diff.self_node && !diff.dns);
}

#[test]
fn an_ssh_check_on_the_map_connection_comes_back_as_events_for_its_call() {
    use weft_control_proto::{CheckProgress, CheckResult, SshCheckCall, check_id_from};
    use weft_types::{UnixMillis, UserId};
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::AuthKey(AuthKey("k".into())),
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    server.send(&registered(true), now).unwrap();
    exchange(&mut client, &mut server, now);
    client_events(&mut client);

    let req = SshCheckRequest {
        request_id: 11,
        node_key: NodePrivate::from_bytes([5; 32]).public(),
        check_id: check_id_from([7; 16]),
        src_node: NodeId(2),
        src_user: UserId(1),
        ssh_user: "alice".into(),
        local_user: "alice".into(),
        check_period_ms: 3_600_000,
        max_wait_ms: 60_000,
    };
    let mut call = SshCheckCall::new(req.clone(), now);
    client.send_ssh_check(req.clone(), now).unwrap();
    let got = exchange(&mut client, &mut server, now);
    assert_eq!(got, vec![ClientMessage::SshCheck(req)]);

    let url = format!("http://control/a/{}", check_id_from([7; 16]));
    let pending = SshCheckVerdict::Pending {
        auth_url: url.clone(),
        expires: UnixMillis(60_000),
    };
    server
        .send(
            &ServerMessage::SshCheck(SshCheckDecision {
                request_id: 11,
                verdict: pending,
            }),
            now,
        )
        .unwrap();
    let later = now + Duration::from_secs(30);
    server
        .send(
            &ServerMessage::SshCheck(SshCheckDecision {
                request_id: 11,
                verdict: SshCheckVerdict::Accept {
                    until: UnixMillis(9),
                },
            }),
            later,
        )
        .unwrap();
    exchange(&mut client, &mut server, later);
    let mut progress = Vec::new();
    for ev in client_events(&mut client) {
        let ClientEvent::SshCheck(d) = ev else {
            panic!("{ev:?}")
        };
        progress.push(call.handle_decision(d, later, UnixMillis(30_000)).unwrap());
    }
    assert_eq!(
        progress,
        vec![
            CheckProgress::Pending {
                auth_url: url,
                expires: UnixMillis(60_000)
            },
            CheckProgress::Done(CheckResult::Accepted {
                until: UnixMillis(9)
            }),
        ]
    );
    assert!(call.is_done());
}

#[test]
fn without_the_user_at_hand_an_auth_url_is_reported_and_nothing_follows() {
    let now = t0();
    let (conn, mut server) = channel(now);
    let params = ClientParams {
        interactive: false,
        ..params(RegisterAuth::None)
    };
    let mut client = ControlClient::new(
        conn,
        params,
        MapSession::new(Duration::from_secs(150), now),
        now,
    )
    .unwrap();
    exchange(&mut client, &mut server, now);
    let url = "https://control.example/a/k3x9".to_owned();
    server
        .send(
            &ServerMessage::Register(RegisterResponse::NeedsAuth {
                auth_url: url.clone(),
            }),
            now,
        )
        .unwrap();
    assert!(
        exchange(&mut client, &mut server, now).is_empty(),
        "no follow-up until the user asks"
    );
    assert_eq!(
        client_events(&mut client),
        vec![ClientEvent::NeedsAuth { auth_url: url }]
    );
    // Idle now: only the channel's keep-alive timer is left.
    let (_, why) = client.poll_timeout().unwrap();
    assert_ne!(why, "map stream stall");
}

#[test]
fn an_expired_auth_url_is_replaced_while_the_user_waits() {
    let now = t0();
    let (mut client, mut server) = connect(
        RegisterAuth::None,
        MapSession::new(Duration::from_secs(150), now),
        now,
    );
    exchange(&mut client, &mut server, now);
    let url = "https://control.example/a/old".to_owned();
    server
        .send(
            &ServerMessage::Register(RegisterResponse::NeedsAuth {
                auth_url: url.clone(),
            }),
            now,
        )
        .unwrap();
    exchange(&mut client, &mut server, now);
    client_events(&mut client);
    let expired = Refusal {
        reason: RefusalReason::AuthUrlExpired,
        message: "the login expired".into(),
        retry_after_ms: None,
    };
    server
        .send(
            &ServerMessage::Register(RegisterResponse::Refused(expired.clone())),
            now,
        )
        .unwrap();
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Register(again)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert_eq!(
        again.auth,
        RegisterAuth::None,
        "a fresh login, not the old URL"
    );
    assert_eq!(
        client_events(&mut client),
        vec![ClientEvent::Refused(expired)]
    );
}

#[test]
fn a_resumed_connection_opens_the_map_stream_without_registering() {
    let now = t0();
    let (conn, mut server) = channel(now);
    let mut client = ControlClient::resume(
        conn,
        params(RegisterAuth::AuthKey(AuthKey("unused".into()))),
        MapSession::with_netmap(netmap(1, [2]), Duration::from_secs(150), now),
        now,
    )
    .unwrap();
    let got = exchange(&mut client, &mut server, now);
    let [ClientMessage::Map(map)] = got.as_slice() else {
        panic!("{got:?}")
    };
    assert!(map.stream);
    assert_eq!(map.node_key, NodePrivate::from_bytes([5; 32]).public());
    server
        .send(
            &ServerMessage::Map(MapResponse {
                seq: 1,
                body: MapBody::Full(Box::new(netmap(1, [2, 3]))),
            }),
            now,
        )
        .unwrap();
    exchange(&mut client, &mut server, now);
    let events = client_events(&mut client);
    let [ClientEvent::NetMap(diff)] = events.as_slice() else {
        panic!("{events:?}")
    };
    assert_eq!(
        diff.peers.keys().copied().collect::<Vec<_>>(),
        vec![NodeId(3)],
        "diffed against the netmap kept from before"
    );
    // A register answer on a map-only connection does not fit.
    server.send(&registered(true), now).unwrap();
    let bytes = server.poll_transmit().unwrap();
    assert!(matches!(
        client.handle_input(&bytes, now),
        Err(ControlClientError::Unexpected(_))
    ));
}

#[test]
fn a_connection_for_checks_sends_nothing_but_its_checks() {
    use weft_control_proto::check_id_from;
    use weft_types::{UnixMillis, UserId};
    let now = t0();
    let (conn, mut server) = channel(now);
    let mut client = ControlClient::for_checks(conn, now);
    client
        .update_endpoints(vec![endpoint(1, 5000)], now)
        .unwrap();
    assert!(exchange(&mut client, &mut server, now).is_empty());
    let req = SshCheckRequest {
        request_id: 3,
        node_key: NodePrivate::from_bytes([5; 32]).public(),
        check_id: check_id_from([1; 16]),
        src_node: NodeId(2),
        src_user: UserId(1),
        ssh_user: "alice".into(),
        local_user: "alice".into(),
        check_period_ms: 0,
        max_wait_ms: 60_000,
    };
    client.send_ssh_check(req.clone(), now).unwrap();
    assert_eq!(
        exchange(&mut client, &mut server, now),
        vec![ClientMessage::SshCheck(req)]
    );
    let decision = SshCheckDecision {
        request_id: 3,
        verdict: SshCheckVerdict::Accept {
            until: UnixMillis(1),
        },
    };
    server
        .send(&ServerMessage::SshCheck(decision.clone()), now)
        .unwrap();
    exchange(&mut client, &mut server, now);
    assert_eq!(
        client_events(&mut client),
        vec![ClientEvent::SshCheck(decision)]
    );
}
