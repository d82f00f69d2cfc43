//! `weft-control serve` as an operator meets it (the real binary): one
//! server per state directory, each error said once, metrics apart from the
//! public listener, and policy errors naming the file given.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use crate::common::{ServerProcess, free_port};

/// Runs `weft-control serve` with `args` and waits (at most 20 s) for it to
/// exit by itself; returns (status, stderr, how long it ran).
fn serve_expecting_exit(args: &[&str]) -> (i32, String, Duration) {
    #[allow(clippy::disallowed_methods)] // measuring a child process
    let started = std::time::Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .arg("serve")
        .args(args)
        .env_remove("WEFT_CONTROL_STATE_DIR")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err, started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("serve {args:?} kept running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The modification times of the database files in `dir`.
fn db_mtimes(dir: &std::path::Path) -> Vec<(String, SystemTime)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("weft.db"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().modified().unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_state_dir_fails_at_once_naming_the_first_and_touches_nothing()
{
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(dir.path(), free_port()).await;
    let (code, _, err) = first.cli(&["users", "create", "alice@example.com"]);
    assert_eq!(code, 0, "{err}");
    let before = db_mtimes(dir.path());
    assert!(!before.is_empty(), "no database files in {:?}", dir.path());

    let listen = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let (code, err, took) = serve_expecting_exit(&[
        "--listen",
        &listen,
        "--metrics-listen",
        &metrics,
        "--no-stun",
        "--state-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "another weft-control is running with this state dir (pid {})",
        first.child.id()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(db_mtimes(dir.path()), before, "the database was touched");

    // The first one is unaffected.
    let (code, out, err) = first.cli(&["users", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("alice@example.com"), "{out}");
    assert!(first.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_address_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = ServerProcess::start(dir.path(), free_port()).await;
    let other = tempfile::tempdir().unwrap();
    let metrics = format!("127.0.0.1:{}", free_port());
    let (code, err, _) = serve_expecting_exit(&[
        "--listen",
        &first.addr.to_string(),
        "--metrics-listen",
        &metrics,
        "--no-stun",
        "--state-dir",
        other.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on {}", first.addr)),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    // Nothing was created in the new state dir's database.
    assert!(db_mtimes(other.path()).is_empty(), "{err}");

    // The metrics address too, with what to do about it.
    let (code, err, _) = serve_expecting_exit(&[
        "--listen",
        &format!("127.0.0.1:{}", free_port()),
        "--metrics-listen",
        &first.metrics.to_string(),
        "--no-stun",
        "--state-dir",
        other.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("cannot serve metrics on {}", first.metrics))
            && err.contains("--metrics-listen"),
        "{err}"
    );
    assert_eq!(err.matches("Address already in use").count(), 1, "{err}");
    assert!(first.stop().success());
}

/// Sends `GET path` to `addr`; returns the status line and the body.
async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_served_on_their_own_listener_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(dir.path(), free_port()).await;
    let (status, _) = get(s.addr, "/metrics").await;
    assert!(
        status.starts_with("HTTP/1.1 404"),
        "public /metrics: {status}"
    );
    let (status, body) = get(s.metrics, "/metrics").await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(body.contains("weft_"), "{body}");
    assert!(s.stop().success());

    // --no-metrics: nothing listens on the metrics address.
    let mut s = ServerProcess::start_with(dir.path(), free_port(), &["--no-metrics"], None).await;
    assert!(tokio::net::TcpStream::connect(s.metrics).await.is_err());
    assert!(s.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_set_errors_name_the_file_given_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServerProcess::start(dir.path(), free_port()).await;
    let before = s.cli(&["policy", "get"]);
    let bad = dir.path().join("policy-bad.hujson");
    std::fs::write(
        &bad,
        "{\n  \"acls\": [\n    {\"action\": \"accept\", \"src\": [\"group:nobody\"], \"dst\": [\"*:*\"]},\n  ],\n}\n",
    )
    .unwrap();
    let (code, _, err) = s.cli(&["policy", "set", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("policy-bad.hujson:3:"), "{err}");
    assert!(!err.contains("policy.hujson"), "{err}");
    assert!(err.contains("old policy stays in force"), "{err}");
    assert_eq!(s.cli(&["policy", "get"]), before);
    assert!(s.stop().success());
}

/// `--config`: the file sets serve's settings and a flag overrides it;
/// systemd readiness (`Type=notify`): READY=1 arrives on NOTIFY_SOCKET once
/// the listener answers (fails on a server that never notifies: no datagram).
#[test]
fn config_file_settings_apply_flags_override_them_and_ready_is_sent_once_listening() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let (file_port, flag_port) = (free_port(), free_port());
    let state = dir.path().join("state");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "# set by the file, overridden by --listen\nlisten = \"127.0.0.1:{file_port}\"\n\
             state-dir = \"{}\"\nno-metrics = true\nno-stun = true\ndomain = \"corp.internal\"\n",
            state.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{flag_port}"))
        .env_remove("WEFT_CONTROL_STATE_DIR")
        .env_remove("WEFT_CONTROL_LISTEN")
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let got = notify.recv(&mut buf);
    // The port answers at the moment READY=1 is read.
    let flag_listener = std::net::TcpStream::connect(("127.0.0.1", flag_port));
    let file_listener = std::net::TcpStream::connect(("127.0.0.1", file_port));
    let _ = child.kill();
    let _ = child.wait();
    let n = got.expect("READY=1 on NOTIFY_SOCKET within 30 s");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "READY=1");
    assert!(
        flag_listener.is_ok(),
        "--listen from the flag: {flag_listener:?}"
    );
    assert!(
        file_listener.is_err(),
        "the flag overrides the file's listen"
    );
    assert!(
        state.join("server.key").exists(),
        "state-dir from the file is used"
    );
}

/// A configuration file with an unknown key or a bad value: serve refuses
/// to start, names the file, the line and the key, and touches no state.
#[test]
fn a_bad_config_file_refuses_to_start_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("config.toml");
    for (text, want) in [
        (
            "listen = \"127.0.0.1:1\"\nmax-conections = 10\n",
            ":2: key `max-conections`: unknown field",
        ),
        (
            "\nnode-key-expiry = \"forever\"\n",
            ":2: key `node-key-expiry`: ",
        ),
    ] {
        std::fs::write(&config, text).unwrap();
        let (code, err, _) = serve_expecting_exit(&[
            "--config",
            config.to_str().unwrap(),
            "--state-dir",
            state.to_str().unwrap(),
        ]);
        assert_ne!(code, 0, "{text}");
        assert!(
            err.contains(&format!("{}{want}", config.display())),
            "{text}: {err}"
        );
        assert!(!state.exists(), "nothing created before the file is read");
    }
    let (code, err, _) = serve_expecting_exit(&[
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("missing.toml"), "{err}");
}
