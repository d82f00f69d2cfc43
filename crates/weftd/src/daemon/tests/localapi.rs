//! The LocalAPI over a real unix socket, with the typed client the CLI uses.

use std::sync::Arc;
use std::time::Duration;

use weft_localapi::{
    BackendState, LocalClient, Notify, PingPath, PingRequest, PrefsPatch, StartRequest,
};

use super::backend::{Harness, prefs, with_key};
use super::fake::{FakeControl, FakeDataPlane, URL};
use crate::daemon::localapi::{self, Authorizer};

struct Api {
    _dir: tempfile::TempDir,
    client: LocalClient,
    harness: Harness,
    control: FakeControl,
    dp: FakeDataPlane,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn api(authorize: Authorizer) -> Api {
    api_with(
        authorize,
        localapi::conn::Limits::for_descriptor_limit(1024),
    )
    .await
}

async fn api_with(authorize: Authorizer, limits: localapi::conn::Limits) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let (control, dp) = (FakeControl::new(), FakeDataPlane::default());
    let harness = Harness::start(&dir.path().join("weftd.state"), &control, &dp).await;
    let sock = dir.path().join("run/weftd.sock");
    let listener = localapi::bind(&sock).unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let router = localapi::router(harness.handle.clone(), authorize, rx.clone(), &limits);
    let mut wait = rx;
    let server = tokio::spawn(localapi::serve(
        listener,
        router,
        async move {
            let _ = wait.wait_for(|s| *s).await;
        },
        limits,
    ));
    Api {
        client: LocalClient::new(&sock),
        _dir: dir,
        harness,
        control,
        dp,
        stop: tx,
        server,
    }
}

impl Api {
    /// Stops the server (open watch streams end) and the coordinator. A
    /// client that stopped reading can hold its connection open; like the
    /// daemon, the test gives up on it after a bound.
    async fn stop(mut self) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(localapi::SHUTDOWN_GRACE, &mut self.server)
            .await
            .is_err()
        {
            self.server.abort();
        }
        self.harness.stop().await;
    }
}

fn everyone() -> Authorizer {
    Arc::new(|_| true)
}

fn nobody() -> Authorizer {
    Arc::new(|_| false)
}

#[tokio::test]
async fn the_socket_is_world_readable_and_a_stale_one_is_replaced() {
    let a = api(everyone()).await;
    let mode = std::fs::metadata(a.client.socket()).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o666
    );
    // A second daemon on the same live socket is refused.
    let err = localapi::bind(a.client.socket()).unwrap_err().to_string();
    assert!(err.contains("already listening"), "{err}");
    let path = a.client.socket().to_owned();
    a.stop().await;
    // Now the file is stale: binding again works.
    localapi::bind(&path).unwrap();
}

#[tokio::test]
async fn readers_may_look_but_not_touch() {
    let a = api(nobody()).await;
    let status = a.client.status().await.unwrap();
    assert_eq!(status.backend_state, BackendState::NeedsLogin);
    assert_eq!(status.tun, "weft0");
    a.client.prefs().await.unwrap();
    a.client.profiles().await.unwrap();
    a.client.debug_prefs().await.unwrap();
    let mut w = a.client.watch().await.unwrap();
    assert!(matches!(
        w.next().await.unwrap(),
        Some(Notify::Snapshot { .. })
    ));

    let err = a.client.start(&StartRequest::default()).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(
        err.to_string().contains("POST /start") && err.to_string().contains("operator"),
        "{err}"
    );
    let err = a
        .client
        .edit_prefs(&PrefsPatch {
            shields_up: Some(true),
            ..PrefsPatch::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
    assert!(!a.client.prefs().await.unwrap().shields_up);
    a.stop().await;
}

#[tokio::test]
async fn bad_json_is_a_400_with_a_message_and_the_daemon_carries_on() {
    let a = api(everyone()).await;
    for (path, body) in [
        ("prefs", "{not json"),
        ("start", "[1,2]"),
        ("ping", "{\"ip\":\"nope\",\"timeout_ms\":1}"),
    ] {
        let method = if path == "prefs" { "PATCH" } else { "POST" };
        let (status, text) = raw(a.client.socket(), method, path, body).await;
        assert_eq!(status, 400, "{path}: {text}");
        let e: weft_localapi::ErrorBody = serde_json::from_str(&text).unwrap();
        assert!(e.error.contains("invalid JSON"), "{}", e.error);
    }
    let (status, text) = raw(a.client.socket(), "GET", "nope", "").await;
    assert_eq!(status, 404, "{text}");
    a.client.status().await.unwrap();
    a.stop().await;
}

/// Sends one raw HTTP/1.1 request and returns the status and body.
async fn raw(sock: &std::path::Path, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::UnixStream::connect(sock).await.unwrap();
    let req = format!(
        "{method} /localapi/v0/{path} HTTP/1.1\r\nHost: local-weftd.sock\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    // Chunked bodies: take the JSON object inside.
    let json = body.find('{').map(|i| &body[i..]).unwrap_or(body);
    let json = json.rfind('}').map(|j| &json[..=j]).unwrap_or(json);
    (status, json.to_owned())
}

#[tokio::test]
async fn up_over_the_socket_watches_the_login_to_running() {
    let a = api(everyone()).await;
    let mut w = a.client.watch().await.unwrap();
    let Some(Notify::Snapshot { state, .. }) = w.next().await.unwrap() else {
        panic!("snapshot first")
    };
    assert_eq!(state, BackendState::NeedsLogin);
    a.client.start(&with_key(URL, "tskey-good")).await.unwrap();
    let mut seen = Vec::new();
    while let Some(n) = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .unwrap()
        .unwrap()
    {
        let done = n
            == Notify::State {
                state: BackendState::Running,
            };
        seen.push(n);
        if done {
            break;
        }
    }
    assert!(seen.contains(&Notify::LoginFinished), "{seen:?}");
    let status = a.client.status().await.unwrap();
    assert_eq!(status.peers.len(), 2);
    assert_eq!(status.peers[0].name, "node2");
    assert_eq!(status.peers[0].addresses[0].to_string(), "100.64.0.2");
    assert_eq!(
        status.self_node.as_ref().map(|s| s.name.as_str()),
        Some("node1")
    );
    assert_eq!(
        status.user.as_ref().map(|u| u.login_name.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        status.tailnet.as_ref().map(|t| t.domain.as_str()),
        Some("example.weft.internal")
    );

    let who = a.client.whois("100.64.0.3".parse().unwrap()).await.unwrap();
    assert_eq!(who.node.name, "node3");
    let err = a
        .client
        .whois("100.64.9.9".parse().unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    assert!(err.to_string().contains("100.64.9.9"));

    let dbg = a.client.debug_prefs().await.unwrap();
    assert_eq!(dbg.private_node_key.as_deref(), Some("<redacted>"));
    let raw_dbg = raw(a.client.socket(), "GET", "debug/prefs", "").await.1;
    assert!(!raw_dbg.contains("privkey:"), "{raw_dbg}");
    let _ = &a.control;
    a.stop().await;
}

#[tokio::test]
async fn ping_reports_the_pong_or_a_504_on_timeout() {
    let a = api(everyone()).await;
    a.client.start(&with_key(URL, "tskey-good")).await.unwrap();
    for _ in 0..100 {
        if a.client.status().await.unwrap().backend_state == BackendState::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let req = PingRequest {
        ip: "100.64.0.2".parse().unwrap(),
        timeout_ms: 200,
    };
    let err = a.client.ping(&req).await.unwrap_err();
    assert_eq!(err.status(), Some(504), "{err}");
    a.dp.log.lock().unwrap().ping_answer = Some(weft_disco::PingOutcome::Pong {
        path: weft_disco::Path::Direct("198.18.0.2:41641".parse().unwrap()),
        rtt: Duration::from_millis(3),
    });
    let pong = a.client.ping(&req).await.unwrap();
    assert_eq!(pong.node_name, "node2");
    assert_eq!(
        pong.via,
        PingPath::Direct("198.18.0.2:41641".parse().unwrap())
    );
    assert!((pong.latency_ms - 3.0).abs() < 1e-9);
    let err = a
        .client
        .ping(&PingRequest {
            ip: "100.64.9.9".parse().unwrap(),
            timeout_ms: 100,
        })
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404));
    a.stop().await;
}

#[tokio::test]
async fn profiles_over_the_socket() {
    let a = api(everyone()).await;
    // An empty profile is not listed; a nickname makes the first one show.
    assert!(a.client.profiles().await.unwrap().is_empty());
    let nick = PrefsPatch {
        nickname: Some(Some("home".into())),
        ..PrefsPatch::default()
    };
    a.client.edit_prefs(&nick).await.unwrap();
    let first = a.client.profiles().await.unwrap()[0].id.clone();
    let new = a.client.new_profile().await.unwrap();
    assert!(new.selected && new.id != first);
    a.client
        .start(&StartRequest {
            prefs: Some(prefs(URL)),
            ..StartRequest::default()
        })
        .await
        .unwrap();
    let back = a.client.switch_profile(&first).await.unwrap();
    assert!(back.selected);
    a.client.delete_profile(&new.id).await.unwrap();
    assert_eq!(a.client.profiles().await.unwrap().len(), 1);
    let err = a.client.switch_profile("zzzz").await.unwrap_err();
    assert_eq!(err.status(), Some(404));
    a.stop().await;
}

#[tokio::test]
async fn a_watcher_that_stops_reading_never_blocks_the_daemon() {
    let a = api(everyone()).await;
    let _stalled = a.client.watch().await.unwrap(); // never read
    // Flood the bus well past its capacity with prefs changes.
    for i in 0..(crate::daemon::bus::CAPACITY + 50) {
        let patch = PrefsPatch {
            hostname: Some(Some(format!("h{i}"))),
            ..PrefsPatch::default()
        };
        tokio::time::timeout(Duration::from_secs(5), a.client.edit_prefs(&patch))
            .await
            .unwrap()
            .unwrap();
    }
    a.client.status().await.unwrap();
    a.stop().await;
}

/// Limits with short read deadlines, so the tests wait little.
fn short_deadlines() -> localapi::conn::Limits {
    localapi::conn::Limits {
        per_uid: 3,
        nonroot_total: 100,
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
    }
}

/// Reads until the server closes the connection (or 5 s pass: a failure).
async fn read_until_closed(s: &mut tokio::net::UnixStream) -> String {
    use tokio::io::AsyncReadExt as _;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server kept the connection open")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn idle_and_half_sent_requests_are_dropped_at_their_deadlines() {
    use tokio::io::AsyncWriteExt as _;
    let a = api_with(everyone(), short_deadlines()).await;
    let sock = a.client.socket().to_owned();
    // Nothing sent; half a request head; a complete head and half its body.
    let mut idle = tokio::net::UnixStream::connect(&sock).await.unwrap();
    let mut half_head = tokio::net::UnixStream::connect(&sock).await.unwrap();
    half_head
        .write_all(b"GET /localapi/v0/status HTTP/1.1\r\nHost: lo")
        .await
        .unwrap();
    let mut half_body = tokio::net::UnixStream::connect(&sock).await.unwrap();
    half_body
        .write_all(
            b"PATCH /localapi/v0/prefs HTTP/1.1\r\nHost: local\r\nContent-Length: 100\r\n\r\n{\"shields",
        )
        .await
        .unwrap();
    assert_eq!(read_until_closed(&mut idle).await, "");
    // hyper closes a head that did not arrive in time (408 or nothing).
    let answer = read_until_closed(&mut half_head).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    let answer = read_until_closed(&mut half_body).await;
    assert!(
        answer.starts_with("HTTP/1.1 408") && answer.contains("did not arrive within 300 ms"),
        "{answer}"
    );
    // A keep-alive connection that goes quiet after a response is closed too.
    let mut kept = tokio::net::UnixStream::connect(&sock).await.unwrap();
    kept.write_all(b"GET /localapi/v0/prefs HTTP/1.1\r\nHost: local\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_until_closed(&mut kept)
            .await
            .starts_with("HTTP/1.1 200")
    );
    // Nothing of it changed the prefs or stopped the server.
    assert!(!a.client.prefs().await.unwrap().shields_up);
    a.client.status().await.unwrap();
    a.stop().await;
}

#[tokio::test]
async fn a_non_root_uid_gets_a_few_connections_and_then_a_reason_root_always_gets_in() {
    if !nix::unistd::geteuid().is_root() {
        return; // Connecting as another uid needs root.
    }
    let a = api_with(everyone(), short_deadlines()).await;
    let sock = a.client.socket().to_owned();
    // Connect as uid 65534 from a thread of its own (the raw syscall changes
    // only this thread's credentials, which SO_PEERCRED reports).
    let held = std::thread::spawn(move || {
        // SAFETY: a plain syscall on this thread's own credentials.
        let r = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
        assert_eq!(r, 0);
        (0..5)
            .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
            .collect::<Vec<_>>()
    })
    .join()
    .unwrap();
    // The first three are served; the rest were told why and closed.
    let mut answers = Vec::new();
    for s in held {
        let mut s = tokio::net::UnixStream::from_std({
            s.set_nonblocking(true).unwrap();
            s
        })
        .unwrap();
        use tokio::io::AsyncWriteExt as _;
        let _ = s
            .write_all(b"GET /localapi/v0/prefs HTTP/1.1\r\nHost: l\r\nConnection: close\r\n\r\n")
            .await;
        answers.push(read_until_closed(&mut s).await);
    }
    let ok = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 200"))
        .count();
    let refused: Vec<&String> = answers
        .iter()
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .collect();
    assert_eq!((ok, refused.len()), (3, 2), "{answers:?}");
    assert!(
        refused[0].contains("too many LocalAPI connections from uid 65534 (at most 3 at once)"),
        "{}",
        refused[0]
    );
    // Root is never limited.
    let mut mine = Vec::new();
    for _ in 0..10 {
        mine.push(
            tokio::net::UnixStream::connect(a.client.socket())
                .await
                .unwrap(),
        );
    }
    a.client.status().await.unwrap();
    a.stop().await;
}
