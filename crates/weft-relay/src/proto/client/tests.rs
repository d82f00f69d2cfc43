use super::*;
use crate::proto::server::ServerLogin;

fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)] // the tests' base instant; time moves by hand
    Instant::now()
}

const SECOND: Duration = Duration::from_secs(1);

struct Pair {
    server: NodePrivate,
    client: ClientCore,
    now: Instant,
}

fn decode(bytes: &[u8]) -> Frame<'_> {
    Frame::decode(bytes, 1 << 20).unwrap().unwrap().0
}

/// A client core and a server key, logged in on virtual time.
fn logged_in(opts: ClientOptions) -> Pair {
    let now = t0();
    let server = NodePrivate::from_bytes([1; 32]);
    let mut client = ClientCore::new(NodePrivate::from_bytes([2; 32]), opts, [7; 32], now);
    let login = ServerLogin::new(&server, server.public(), [8; NONCE_LEN]);
    let greeting = login.server_key_frame();
    assert_eq!(client.handle_frame(decode(&greeting), now), Ok(None));
    let info = client.poll_transmit().expect("ClientInfo");
    let (key, _) = login.handle_client_info(&decode(&info)).unwrap();
    assert_eq!(key, client.public_key());
    assert!(!client.is_connected());
    let si = login.server_info_frame(&key).unwrap();
    client.handle_frame(decode(&si), now).unwrap();
    assert!(client.is_connected());
    assert_eq!(
        client.poll_event(),
        Some(ClientEvent::Connected {
            server_key: server.public(),
            info: ServerInfo {
                version: 2,
                ..ServerInfo::default()
            }
        })
    );
    Pair {
        server,
        client,
        now,
    }
}

#[test]
fn login_sends_client_info_and_ends_with_connected() {
    let p = logged_in(ClientOptions::default());
    assert_eq!(p.client.server_key(), Some(p.server.public()));
}

#[test]
fn a_preferred_client_says_so_right_after_login() {
    let mut p = logged_in(ClientOptions {
        preferred: true,
        ..ClientOptions::default()
    });
    let f = p.client.poll_transmit().expect("NotePreferred");
    assert_eq!(decode(&f), Frame::NotePreferred { preferred: true });
    p.client.set_preferred(true);
    assert_eq!(p.client.poll_transmit(), None, "no news, nothing sent");
    p.client.set_preferred(false);
    assert_eq!(
        decode(&p.client.poll_transmit().unwrap()),
        Frame::NotePreferred { preferred: false }
    );
}

#[test]
fn a_greeting_that_is_not_server_key_fails_the_login() {
    let now = t0();
    let mut c = ClientCore::new(
        NodePrivate::from_bytes([2; 32]),
        ClientOptions::default(),
        [7; 32],
        now,
    );
    assert_eq!(
        c.handle_frame(Frame::KeepAlive, now),
        Err(ClientError::Login(LoginError::UnexpectedFrame {
            expected: "ServerKey",
            got: 0x06
        }))
    );
}

#[test]
fn a_server_info_not_sealed_by_the_announced_key_fails_the_login() {
    let now = t0();
    let server = NodePrivate::from_bytes([1; 32]);
    let impostor = NodePrivate::from_bytes([3; 32]);
    let mut c = ClientCore::new(
        NodePrivate::from_bytes([2; 32]),
        ClientOptions::default(),
        [7; 32],
        now,
    );
    c.handle_frame(decode(&login::server_key_frame(&server.public())), now)
        .unwrap();
    let fake = ServerLogin::new(&impostor, server.public(), [8; NONCE_LEN]);
    let si = fake.server_info_frame(&c.public_key()).unwrap();
    assert_eq!(
        c.handle_frame(decode(&si), now),
        Err(ClientError::Login(LoginError::Unauthenticated))
    );
}

#[test]
fn a_health_refusal_before_server_info_is_surfaced() {
    let now = t0();
    let server = NodePrivate::from_bytes([1; 32]);
    let mut c = ClientCore::new(
        NodePrivate::from_bytes([2; 32]),
        ClientOptions::default(),
        [7; 32],
        now,
    );
    c.handle_frame(decode(&login::server_key_frame(&server.public())), now)
        .unwrap();
    c.handle_frame(
        Frame::Health {
            problem: b"not admitted",
        },
        now,
    )
    .unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Health {
            problem: Some("not admitted".into())
        })
    );
}

#[test]
fn the_login_times_out_without_server_info() {
    let now = t0();
    let mut c = ClientCore::new(
        NodePrivate::from_bytes([2; 32]),
        ClientOptions::default(),
        [7; 32],
        now,
    );
    assert_eq!(c.poll_timeout().map(|t| t.0), Some(now + 10 * SECOND));
    assert_eq!(c.handle_timeout(now + 9 * SECOND), Ok(()));
    assert_eq!(
        c.handle_timeout(now + 10 * SECOND),
        Err(ClientError::LoginTimeout(10 * SECOND))
    );
}

#[test]
fn packets_come_back_borrowing_the_frame() {
    let mut p = logged_in(ClientOptions::default());
    let src = NodePublic::from_bytes([4; 32]);
    let got = p
        .client
        .handle_frame(Frame::RecvPacket { src, packet: b"wg" }, p.now)
        .unwrap();
    assert_eq!(got, Some(Received::Packet { src, packet: b"wg" }));
}

#[test]
fn server_pings_are_answered_and_our_pings_measure_the_round_trip() {
    let mut p = logged_in(ClientOptions::default());
    p.client
        .handle_frame(Frame::Ping { data: [5; 8] }, p.now)
        .unwrap();
    assert_eq!(
        decode(&p.client.poll_transmit().unwrap()),
        Frame::Pong { data: [5; 8] }
    );
    let data = p.client.ping(p.now).unwrap();
    assert_eq!(
        decode(&p.client.poll_transmit().unwrap()),
        Frame::Ping { data }
    );
    let later = p.now + Duration::from_micros(1500);
    p.client.handle_frame(Frame::Pong { data }, later).unwrap();
    assert_eq!(
        p.client.poll_event(),
        Some(ClientEvent::Pong {
            data,
            rtt: Duration::from_micros(1500)
        })
    );
    // A pong nobody asked for is no event.
    p.client
        .handle_frame(Frame::Pong { data: [0; 8] }, later)
        .unwrap();
    assert_eq!(p.client.poll_event(), None);
}

#[test]
fn an_idle_connection_is_pinged_and_declared_dead_if_nothing_comes_back() {
    let mut p = logged_in(ClientOptions::default());
    let t = p.now;
    assert_eq!(p.client.poll_timeout().map(|x| x.0), Some(t + 20 * SECOND));
    p.client.handle_timeout(t + 19 * SECOND).unwrap();
    assert_eq!(p.client.poll_transmit(), None);
    p.client.handle_timeout(t + 20 * SECOND).unwrap();
    assert!(matches!(
        decode(&p.client.poll_transmit().unwrap()),
        Frame::Ping { .. }
    ));
    assert_eq!(p.client.poll_timeout().map(|x| x.0), Some(t + 30 * SECOND));
    assert_eq!(
        p.client.handle_timeout(t + 30 * SECOND),
        Err(ClientError::Timeout(30 * SECOND))
    );
}

#[test]
fn any_frame_from_the_server_keeps_the_connection_alive() {
    let mut p = logged_in(ClientOptions::default());
    let t = p.now;
    p.client.handle_timeout(t + 20 * SECOND).unwrap();
    assert!(p.client.poll_transmit().is_some(), "keep-alive ping");
    // A keep-alive frame arrives (not the pong): alive, and the clock restarts.
    p.client
        .handle_frame(Frame::KeepAlive, t + 25 * SECOND)
        .unwrap();
    p.client.handle_timeout(t + 35 * SECOND).unwrap();
    assert_eq!(p.client.poll_timeout().map(|x| x.0), Some(t + 45 * SECOND));
}

#[test]
fn server_notices_become_events() {
    let mut p = logged_in(ClientOptions::default());
    let peer = NodePublic::from_bytes([6; 32]);
    p.client
        .handle_frame(
            Frame::PeerGone {
                peer,
                reason: PeerGoneReason::NotHere,
            },
            p.now,
        )
        .unwrap();
    p.client
        .handle_frame(
            Frame::Restarting {
                reconnect_in: SECOND,
                try_for: 5 * SECOND,
            },
            p.now,
        )
        .unwrap();
    p.client
        .handle_frame(Frame::Health { problem: b"" }, p.now)
        .unwrap();
    assert_eq!(
        p.client.poll_event(),
        Some(ClientEvent::PeerGone {
            peer,
            reason: PeerGoneReason::NotHere
        })
    );
    assert_eq!(
        p.client.poll_event(),
        Some(ClientEvent::Restarting {
            reconnect_in: SECOND,
            try_for: 5 * SECOND
        })
    );
    assert_eq!(
        p.client.poll_event(),
        Some(ClientEvent::Health { problem: None })
    );
}

#[test]
fn pings_before_login_are_refused() {
    let now = t0();
    let mut c = ClientCore::new(
        NodePrivate::from_bytes([2; 32]),
        ClientOptions::default(),
        [7; 32],
        now,
    );
    assert_eq!(c.ping(now), None);
}
