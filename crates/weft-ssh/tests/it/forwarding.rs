//! End-to-end: `ssh -L`, `-W`, `-R` and `-A` with the real OpenSSH client.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_ssh::{Decision, Grant};

async fn echo_roundtrip(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(msg).await?;
    let mut buf = vec![0; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf)).await??;
    Ok(buf)
}

/// Waits until something accepts on 127.0.0.1:`port` and echoes.
async fn wait_forward(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if echo_roundtrip(port, b"probe").await.is_ok() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "forward on {port} never came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_remote_forwarding_and_stdio_forwarding_reach_tcp_services() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("l");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;
    let echo = echo_server().await;

    // -L
    let lport = free_port();
    let spec = format!("{lport}:127.0.0.1:{}", echo.port());
    let _l = srv
        .ssh(
            &user.name,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec],
            &[],
        )
        .spawn()
        .unwrap();
    wait_forward(lport).await;
    assert_eq!(
        echo_roundtrip(lport, b"hello via -L").await.unwrap(),
        b"hello via -L"
    );

    // -W (what VS Code Remote-SSH uses as a ProxyCommand)
    let target = format!("127.0.0.1:{}", echo.port());
    let mut c = srv.ssh(&user.name, &["-W", &target], &[]);
    c.stdin(Stdio::piped());
    let mut w = c.spawn().unwrap();
    let mut stdin = w.stdin.take().unwrap();
    let mut stdout = w.stdout.take().unwrap();
    stdin.write_all(b"hello via -W").await.unwrap();
    let mut buf = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), stdout.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"hello via -W");
    drop(stdin);
    let st = tokio::time::timeout(Duration::from_secs(20), w.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success());

    // -R: the server listens on its loopback, connections come back to us.
    let rport = free_port();
    let spec = format!("127.0.0.1:{rport}:127.0.0.1:{}", echo.port());
    let _r = srv
        .ssh(
            &user.name,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
            &[],
        )
        .spawn()
        .unwrap();
    wait_forward(rport).await;
    assert_eq!(
        echo_roundtrip(rport, b"hello via -R").await.unwrap(),
        b"hello via -R"
    );

    // -R on an address that is neither loopback nor ours is refused.
    let spec = format!("198.18.0.1:{}:127.0.0.1:{}", free_port(), echo.port());
    let out = run(srv.ssh(
        &user.name,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
        &[],
    ))
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("remote port forwarding failed"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_is_refused_when_the_policy_action_does_not_allow_it() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("n");
    let grant = Grant {
        allow_local_port_forwarding: false,
        allow_remote_port_forwarding: false,
        allow_agent_forwarding: false,
        ..Grant::new(user.name.clone())
    };
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Custom(Decision::Accept(grant)))).await;
    let echo = echo_server().await;
    let target = format!("127.0.0.1:{}", echo.port());
    let out = run(srv.ssh(&user.name, &["-W", &target], &[])).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("administratively prohibited"),
        "{}",
        text(&out.stderr)
    );
    let spec = format!("127.0.0.1:{}:{target}", free_port());
    let out = run(srv.ssh(
        &user.name,
        &["-N", "-o", "ExitOnForwardFailure=yes", "-R", &spec],
        &[],
    ))
    .await;
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_forwarding_lists_the_clients_key_inside_the_session() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("a");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;
    let dir = srv.dir.path();
    // A client-side agent holding one fresh key.
    let key = dir.join("id_ed25519");
    let st = std::process::Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "weft-agent-test",
            "-f",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let agent_sock = dir.join("agent.sock");
    let mut agent = std::process::Command::new("/usr/bin/ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&agent_sock)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The socket file appears at bind(), a moment before the agent listens:
    // wait until ssh-add gets through, not just for the file.
    wait_for(Duration::from_secs(10), || {
        std::process::Command::new("/usr/bin/ssh-add")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &agent_sock)
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
            .then_some(())
    })
    .await;

    let mut c = tokio::process::Command::new("/usr/bin/ssh");
    c.args(srv.opts())
        .args(["-A", "-o"])
        .arg(format!("IdentityAgent={}", agent_sock.display()));
    c.args([
        "-p",
        &srv.addr.port().to_string(),
        &format!("{}@127.0.0.1", user.name),
    ]);
    c.arg("ssh-add -l; stat -c '%U %a' \"$SSH_AUTH_SOCK\" \"$(dirname \"$SSH_AUTH_SOCK\")\"");
    c.stdin(Stdio::null()).kill_on_drop(true);
    let out = run(c).await;
    let _ = agent.kill();
    let _ = agent.wait();
    let t = text(&out.stdout);
    assert!(out.status.success(), "{t} {}", text(&out.stderr));
    assert!(
        t.contains("weft-agent-test") && t.contains("ED25519"),
        "{t}"
    );
    assert!(
        t.contains(&format!("{} 600\n{} 700", user.name, user.name)),
        "{t}"
    );
    // The socket directory is gone once the connection is.
    wait_for(Duration::from_secs(10), || {
        let left = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("weft-ssh-"));
        (!left).then_some(())
    })
    .await;

    // X11 is refused politely and the session still works.
    let out = run(srv.ssh(
        &user.name,
        &["-X", "-o", "ForwardX11Trusted=no"],
        &["echo still-here"],
    ))
    .await;
    assert_eq!(text(&out.stdout), "still-here\n");
}
