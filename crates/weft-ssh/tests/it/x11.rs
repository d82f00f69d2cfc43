//! `x11-req` at the wire level, from a russh client: the malformed requests OpenSSH never sends
//! are refused with the reason on the channel's stderr, the pref is honoured, and a good request
//! gives the session a display.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use russh::{ChannelMsg, client};
use weft_ssh::SshConfig;

struct Client;

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// A logged-in session channel on `srv` as `user`.
async fn session(
    srv: &TestServer,
    user: &str,
) -> (client::Handle<Client>, russh::Channel<client::Msg>) {
    let config = Arc::new(client::Config::default());
    let mut h = client::connect(config, srv.addr, Client).await.unwrap();
    let auth = h.authenticate_none(user).await.unwrap();
    assert!(auth.success(), "login refused: {auth:?}");
    let ch = h.channel_open_session().await.unwrap();
    (h, ch)
}

/// Sends an `x11-req` and returns (granted, what came on stderr meanwhile).
async fn x11_req(
    ch: &mut russh::Channel<client::Msg>,
    proto: &str,
    cookie: &str,
    screen: u32,
) -> (bool, String) {
    ch.request_x11(true, false, proto, cookie, screen)
        .await
        .unwrap();
    let mut stderr = String::new();
    let wait = async {
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Success) => return true,
                Some(ChannelMsg::Failure) => return false,
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    stderr.push_str(&String::from_utf8_lossy(&data));
                }
                None => panic!("channel closed before the x11-req answer"),
                Some(_) => {}
            }
        }
    };
    let granted = tokio::time::timeout(Duration::from_secs(15), wait)
        .await
        .unwrap();
    (granted, stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_x11_requests_are_refused_with_the_reason_and_a_good_one_gets_a_display() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("x");
    let authz = || FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()));

    // The pref off (the default): refused, saying how to turn it on.
    let off = start(authz()).await;
    let (_h, mut ch) = session(&off, &user.name).await;
    let (granted, why) = x11_req(&mut ch, "MIT-MAGIC-COOKIE-1", "00112233", 0).await;
    assert!(!granted);
    assert!(
        why.contains("X11 forwarding is off") && why.contains("weft set --ssh-x11"),
        "{why}"
    );

    let on = start_with(
        authz(),
        SshConfig {
            x11_forwarding: true,
            ..SshConfig::default()
        },
    )
    .await;
    let long = "ab".repeat(129);
    let cases: [(&str, &str, u32, &str); 6] = [
        (
            "XDM-AUTHORIZATION-1",
            "00112233",
            0,
            "unsupported X11 authentication protocol",
        ),
        ("MIT-MAGIC-COOKIE-1", "0011223", 0, "malformed X11 cookie"),
        ("MIT-MAGIC-COOKIE-1", "zz112233", 0, "malformed X11 cookie"),
        ("MIT-MAGIC-COOKIE-1", "", 0, "malformed X11 cookie"),
        ("MIT-MAGIC-COOKIE-1", &long, 0, "malformed X11 cookie"),
        (
            "MIT-MAGIC-COOKIE-1",
            "00112233",
            70_000,
            "screen number 70000 is out of range",
        ),
    ];
    for (proto, cookie, screen, want) in cases {
        let (_h, mut ch) = session(&on, &user.name).await;
        let (granted, why) = x11_req(&mut ch, proto, cookie, screen).await;
        assert!(!granted, "{proto} {cookie:?} {screen} was granted");
        assert!(why.contains(want), "{proto} {cookie:?} {screen}: {why:?}");
    }
    assert!(
        !user.home.join(".Xauthority").exists(),
        "a refused request touched ~/.Xauthority"
    );

    // A good request: a display, the cookie in the user's own file; a second one is refused.
    let (_h, mut ch) = session(&on, &user.name).await;
    let (granted, why) = x11_req(
        &mut ch,
        "MIT-MAGIC-COOKIE-1",
        "00112233445566778899AABBCCDDEEFF",
        0,
    )
    .await;
    assert!(granted, "{why}");
    let (again, why) = x11_req(&mut ch, "MIT-MAGIC-COOKIE-1", "0011", 0).await;
    assert!(!again && why.contains("already requested"), "{why}");
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(user.home.join(".Xauthority")).unwrap();
    assert_eq!((md.uid(), md.gid()), (user.uid, user.gid));
    ch.exec(true, "echo \"$DISPLAY\"; xauth list")
        .await
        .unwrap();
    let mut out = String::new();
    let read = async {
        while let Some(m) = ch.wait().await {
            match m {
                ChannelMsg::Data { data } => out.push_str(&String::from_utf8_lossy(&data)),
                ChannelMsg::Close | ChannelMsg::Eof => break,
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(15), read)
        .await
        .unwrap();
    let display = out.lines().next().unwrap_or("");
    assert!(
        display.starts_with("localhost:") && display.ends_with(".0"),
        "{out}"
    );
    assert!(out.contains("00112233445566778899aabbccddeeff"), "{out}");
}
