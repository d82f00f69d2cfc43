//! Bad input: garbage, oversized names, floods, stalled clients, rate limits.
//! The server must answer with errors and limits, never crash or wedge.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_ssh::SshConfig;

/// Reads until EOF or error; returns the bytes, or panics after `limit`.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("server did not close the connection");
    all
}

async fn still_serves(srv: &TestServer, user: &str) {
    let out = run(srv.ssh(user, &[], &["echo alive"])).await;
    assert_eq!(text(&out.stdout), "alive\n", "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_silence_and_huge_usernames_are_refused_and_the_server_keeps_serving() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("g");
    let config = SshConfig {
        handshake_timeout: Duration::from_secs(1),
        auth_timeout: Duration::from_secs(2),
        ..SshConfig::default()
    };
    let srv = start_with(
        FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone())),
        config,
    )
    .await;

    // Garbage instead of an identification line.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let junk: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(7919) % 251) as u8)
        .collect();
    let _ = s.write_all(&junk).await;
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(got.starts_with(b"SSH-2.0-Weft"), "{:?}", text(&got));

    // A valid identification line followed by garbage packets.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"SSH-2.0-fuzz\r\n").await.unwrap();
    let _ = s.write_all(&[0xff; 4096]).await;
    read_to_close(&mut s, Duration::from_secs(10)).await;

    // Silence: closed by the handshake timeout.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await;

    // Identification, then silence: closed by the auth timeout.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(b"SSH-2.0-slowpoke\r\n").await.unwrap();
    read_to_close(&mut s, Duration::from_secs(10)).await;

    // A 10 KB login name.
    let huge = "u".repeat(10_000);
    let out = run(srv.ssh(&huge, &[], &["true"])).await;
    assert_eq!(out.status.code(), Some(255));
    assert!(out.stdout.is_empty());

    still_serves(&srv, &user.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_opening_connections_too_fast_is_rate_limited() {
    if !e2e_ready() {
        return;
    }
    let config = SshConfig {
        conn_burst: 3,
        conn_rate_per_sec: 0.001,
        ..SshConfig::default()
    };
    let srv = start_with(FakeAuthz::new(), config).await;
    let mut admitted = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let mut line = [0u8; 12];
        s.read_exact(&mut line).await.unwrap();
        assert_eq!(&line, b"SSH-2.0-Weft");
        admitted.push(s);
    }
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let got = read_to_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        got.is_empty(),
        "a rate-limited connection gets nothing: {:?}",
        text(&got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_flood_hits_the_cap_without_hurting_the_connection_or_the_server() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("h");
    let config = SshConfig {
        max_channels_per_conn: 32,
        ..SshConfig::default()
    };
    let srv = start_with(
        FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone())),
        config,
    )
    .await;
    let echo = echo_server().await;
    let lport = free_port();
    let spec = format!("{lport}:127.0.0.1:{}", echo.port());
    let _fwd = srv
        .ssh(
            &user.name,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec],
            &[],
        )
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", lport)).ok()
    })
    .await;

    // 300 connections through one SSH connection = 300 direct-tcpip channels.
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", lport)).await else {
                return (false, None);
            };
            let msg = format!("ping-{i:04}");
            if s.write_all(msg.as_bytes()).await.is_err() {
                return (false, None);
            }
            let mut buf = vec![0u8; msg.len()];
            let ok = matches!(
                tokio::time::timeout(Duration::from_secs(15), s.read_exact(&mut buf)).await,
                Ok(Ok(_))
            ) && buf == msg.as_bytes();
            (ok, Some(s))
        }));
    }
    let mut open = Vec::new();
    let mut ok = 0;
    for t in tasks {
        let (good, s) = t.await.unwrap();
        ok += usize::from(good);
        if good {
            open.extend(s);
        }
    }
    assert!(ok > 0 && ok <= 32, "{ok} channels echoed with a cap of 32");
    drop(open);
    // Slots come back once the channels close.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut s = TcpStream::connect(("127.0.0.1", lport)).await.unwrap();
        s.write_all(b"again").await.unwrap();
        let mut buf = [0u8; 5];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await
        {
            assert_eq!(&buf, b"again");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "channel slots never came back"
        );
    }
    still_serves(&srv, &user.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_stalls_only_itself_and_can_still_be_closed() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("s");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;

    // `yes` floods stdout; nobody reads the client's stdout pipe, so the
    // client stops reading the socket and the server's window fills up.
    let mut stalled = srv.ssh(&user.name, &[], &["yes"]);
    stalled.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut stalled = stalled.spawn().unwrap();
    wait_for(Duration::from_secs(20), || {
        (srv.server.connections().len() == 1).then_some(())
    })
    .await;

    // Meanwhile other clients are served normally, including bulk input.
    for _ in 0..3 {
        still_serves(&srv, &user.name).await;
    }
    let mut c = srv.ssh(&user.name, &[], &["cat"]);
    c.stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..8 {
            stdin.write_all(&chunk).await.unwrap();
        }
    });
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(out.stdout.len(), 8 << 20);

    // The stalled connection still obeys a policy change.
    let update = srv.server.update_policy(FakeAuthz::new().arc()).await;
    assert!(update.closed >= 1, "{update:?}");
    wait_for(Duration::from_secs(20), || {
        srv.server.connections().is_empty().then_some(())
    })
    .await;
    let st = tokio::time::timeout(Duration::from_secs(20), stalled.wait()).await;
    if st.is_err() {
        let _ = stalled.kill().await;
        panic!("the stalled client was not disconnected");
    }
}
