//! Shared harness: a server in-process on 127.0.0.1 with a temporary SQLite
//! database, and simulated nodes built on `weft-client`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use weft_client::{
    ClientParams, ConnectOptions, ControlUrl, MapSession, Session, SessionEvent, Target,
};
use weft_control::admin::types::{CreatedPreauthKey, NewPreauthKey, NewUser};
use weft_control::clock::TestClock;
use weft_control::{Server, ServerConfig};
use weft_types::control::{AuthKey, ExpiryRequest, RegisterAuth};
use weft_types::{
    CapabilityVersion, DiscoPrivate, Endpoint, EndpointKind, HostInfo, MachinePrivate,
    MachinePublic, NetMap, NodePrivate,
};

/// How long any single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// Logs to the test output with `RUST_LOG=weft_control=debug` and the like.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A server with its temp dir and test clock.
pub struct TestServer {
    pub server: Server,
    pub clock: Arc<TestClock>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Self {
        init_logs();
        let dir = tempfile::tempdir().unwrap();
        let clock = TestClock::new();
        let mut config = ServerConfig::for_tests(dir.path());
        config.clock = clock.clone();
        tweak(&mut config);
        let server = Server::start(config).await.unwrap();
        TestServer { server, clock, dir }
    }

    pub fn url(&self) -> ControlUrl {
        self.server.url().parse().unwrap()
    }

    /// Creates a user (member).
    pub async fn user(&self, login: &str) {
        self.server
            .admin()
            .create_user(NewUser {
                login_name: login.into(),
                ..NewUser::default()
            })
            .await
            .unwrap();
    }

    /// Creates a pre-auth key.
    pub async fn key(&self, req: NewPreauthKey) -> CreatedPreauthKey {
        self.server.admin().create_preauth_key(req).await.unwrap()
    }

    /// Creates a reusable key for `login`.
    pub async fn reusable_key(&self, login: &str) -> String {
        self.key(NewPreauthKey {
            user: Some(login.into()),
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await
        .secret
    }

    /// Starts a server with the member `login`; returns it and a reusable key of `login`'s.
    pub async fn with_user(login: &str) -> (Self, String) {
        let t = Self::start().await;
        t.user(login).await;
        let key = t.reusable_key(login).await;
        (t, key)
    }

    /// GETs `path` from the server (plain HTTP/1.1, connection: close) and returns the whole
    /// response, head and body.
    pub async fn http_get(&self, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut s = tokio::net::TcpStream::connect(self.server.local_addr())
            .await
            .unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }
}

/// A simulated node: its keys and the session it is in.
pub struct TestNode {
    pub name: String,
    pub target: Target,
    pub node_key: NodePrivate,
    pub disco: DiscoPrivate,
    pub session: Option<Session>,
    pub netmap: Option<Arc<NetMap>>,
    pub events: Vec<SessionEvent>,
}

pub fn host_info(name: &str) -> HostInfo {
    HostInfo {
        hostname: name.into(),
        os: "linux".into(),
        os_version: "Debian 13".into(),
        weft_version: "0.1.0".into(),
        ..HostInfo::default()
    }
}

pub fn endpoint(s: &str) -> Endpoint {
    Endpoint {
        addr: s.parse().unwrap(),
        kind: EndpointKind::Local,
    }
}

impl TestNode {
    pub fn new(server: &TestServer, name: &str) -> Self {
        Self::for_server(server.url(), server.server.public_key(), name)
    }

    /// Returns a node called `name` that has joined `server` with `key`.
    pub async fn joined(server: &TestServer, name: &str, key: &str) -> Self {
        let mut n = Self::new(server, name);
        n.join(key).await;
        n
    }

    /// A node of the server at `url` with the static key `server_key`.
    pub fn for_server(url: ControlUrl, server_key: MachinePublic, name: &str) -> Self {
        TestNode {
            name: name.into(),
            target: Target {
                url,
                machine_key: MachinePrivate::generate(),
                server_key,
            },
            node_key: NodePrivate::generate(),
            disco: DiscoPrivate::generate(),
            session: None,
            netmap: None,
            events: Vec::new(),
        }
    }

    pub fn params(&self, auth: RegisterAuth) -> ClientParams {
        ClientParams {
            node_key: self.node_key.public(),
            old_node_key: None,
            auth,
            expiry: ExpiryRequest::Default,
            ephemeral: false,
            host_info: host_info(&self.name),
            disco_key: self.disco.public(),
            endpoints: vec![endpoint("198.18.0.1:41641")],
            map: true,
            interactive: true,
        }
    }

    /// Starts a session with these parameters.
    pub async fn start(&mut self, params: ClientParams) {
        let prev = match self.session.take() {
            Some(s) => s.close().await,
            None => None,
        };
        let prev: Option<MapSession> = prev;
        let s = Session::start(&self.target, params, prev, &ConnectOptions::default())
            .await
            .unwrap();
        self.session = Some(s);
    }

    /// Registers with an auth key and waits for the first netmap.
    pub async fn join(&mut self, key: &str) {
        self.start(self.params(RegisterAuth::AuthKey(AuthKey(key.into()))))
            .await;
        match self.next().await {
            SessionEvent::Registered(_) => {}
            other => panic!("{}: expected Registered, got {other:?}", self.name),
        }
        self.wait_map(|_| true).await;
    }

    /// Returns the next session event (panics on error or timeout).
    pub async fn next(&mut self) -> SessionEvent {
        let s = self.session.as_mut().expect("no session");
        let ev = tokio::time::timeout(WAIT, s.next_event())
            .await
            .unwrap_or_else(|_| panic!("{}: no event within {WAIT:?}", self.name))
            .unwrap_or_else(|e| panic!("{}: session ended: {e}", self.name));
        if let SessionEvent::NetMap { netmap, .. } = &ev {
            self.netmap = Some(netmap.clone());
        }
        self.events.push(ev.clone());
        ev
    }

    /// Returns the next event or the error that ended the session.
    pub async fn next_result(&mut self) -> Result<SessionEvent, weft_client::ClientError> {
        let s = self.session.as_mut().expect("no session");
        let r = tokio::time::timeout(WAIT, s.next_event())
            .await
            .unwrap_or_else(|_| panic!("{}: no event within {WAIT:?}", self.name));
        if let Ok(SessionEvent::NetMap { netmap, .. }) = &r {
            self.netmap = Some(netmap.clone());
        }
        r
    }

    /// Waits until the netmap satisfies `cond`; returns it.
    pub async fn wait_map(&mut self, cond: impl Fn(&NetMap) -> bool) -> Arc<NetMap> {
        if let Some(m) = &self.netmap
            && cond(m)
        {
            return m.clone();
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.session.as_mut().expect("no session");
            let ev = tokio::time::timeout_at(deadline, s.next_event())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{}: netmap condition not met within {WAIT:?}; last netmap: {:#?}",
                        self.name,
                        self.netmap.as_ref().map(|m| m
                            .peers
                            .values()
                            .map(|p| (&p.name, p.online, p.expired, &p.endpoints))
                            .collect::<Vec<_>>())
                    )
                })
                .unwrap_or_else(|e| panic!("{}: session ended: {e}", self.name));
            self.events.push(ev.clone());
            if let SessionEvent::NetMap { netmap, .. } = ev {
                self.netmap = Some(netmap.clone());
                if cond(&netmap) {
                    return netmap;
                }
            }
        }
    }

    /// Returns the peer with this hostname, if present.
    pub fn peer<'a>(map: &'a NetMap, hostname: &str) -> Option<&'a weft_types::Node> {
        map.peers
            .values()
            .find(|p| p.host_info.hostname == hostname)
    }

    pub async fn close(&mut self) {
        if let Some(s) = self.session.take() {
            s.close().await;
        }
    }
}

/// Connects from `src` (any 127.0.0.0/8 address is a distinct source on
/// loopback), upgrades by hand and completes the Noise handshake as
/// `machine` (sending one keep-alive, the record that confirms it to the
/// server). Returns the socket and the client half, or the HTTP answer
/// (or I/O error) that refused it.
pub async fn raw_channel_from(
    server: std::net::SocketAddr,
    server_key: &MachinePublic,
    src: std::net::IpAddr,
    machine: &MachinePrivate,
    version: CapabilityVersion,
) -> Result<(tokio::net::TcpStream, weft_control_proto::ClientConnection), String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    #[allow(clippy::disallowed_methods)] // a test's clock
    let now = std::time::Instant::now();
    let (mut conn, req) = weft_control_proto::Connection::client(
        machine,
        server_key,
        version,
        weft_control_proto::ChannelConfig::default(),
        rand_seed(),
        now,
    )
    .map_err(|e| e.to_string())?;
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(std::net::SocketAddr::new(src, 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    let mut tcp = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut head = format!("POST /control HTTP/1.1\r\nHost: {server}\r\nContent-Length: 0\r\n");
    for (name, value) in req.headers() {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut input = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = tcp.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!(
                "closed before the answer: {}",
                String::from_utf8_lossy(&input)
            ));
        }
        input.extend_from_slice(&buf[..n]);
        if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let answer = String::from_utf8_lossy(&input[..end]).into_owned();
    if !answer.starts_with("HTTP/1.1 101") {
        let body = String::from_utf8_lossy(&input[end..]).into_owned();
        return Err(format!("{answer}{body}"));
    }
    let mut pending = input[end..].to_vec();
    while !conn.is_established() {
        if pending.is_empty() {
            let n = tcp.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err("closed during the handshake".into());
            }
            pending.extend_from_slice(&buf[..n]);
        }
        conn.handle_input(&pending, now)
            .map_err(|e| e.to_string())?;
        pending.clear();
    }
    // The first record completes the handshake on the server's side.
    conn.send(
        &weft_types::control::ClientMessage::KeepAlive(weft_types::control::KeepAlive {}),
        now,
    )
    .map_err(|e| e.to_string())?;
    while let Some(bytes) = conn.poll_transmit() {
        tcp.write_all(&bytes)
            .await
            .map_err(|e| format!("write: {e}"))?;
    }
    Ok((tcp, conn))
}

fn rand_seed() -> [u8; 32] {
    weft_types::entropy::seed()
}

/// Sends `msg` on a raw channel and returns the server's next message that
/// is not a keep-alive, or the error that ended the channel.
pub async fn exchange(
    tcp: &mut tokio::net::TcpStream,
    conn: &mut weft_control_proto::ClientConnection,
    msg: weft_types::control::ClientMessage,
) -> Result<weft_types::control::ServerMessage, String> {
    use tokio::io::AsyncWriteExt as _;
    #[allow(clippy::disallowed_methods)] // a test's clock
    let now = std::time::Instant::now();
    conn.send(&msg, now).map_err(|e| e.to_string())?;
    while let Some(bytes) = conn.poll_transmit() {
        tcp.write_all(&bytes).await.map_err(|e| e.to_string())?;
    }
    next_message(tcp, conn).await
}

/// Reads until the server's next message that is not a keep-alive.
pub async fn next_message(
    tcp: &mut tokio::net::TcpStream,
    conn: &mut weft_control_proto::ClientConnection,
) -> Result<weft_types::control::ServerMessage, String> {
    use tokio::io::AsyncReadExt as _;
    use weft_control_proto::Event;
    use weft_types::control::ServerMessage;
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(ev) = conn.poll_event() {
            if let Event::Message(m) = ev
                && !matches!(m, ServerMessage::KeepAlive(_))
            {
                return Ok(m);
            }
        }
        let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
            .await
            .map_err(|_| format!("no message within {WAIT:?}"))?
            .map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed by the server".into());
        }
        #[allow(clippy::disallowed_methods)] // a test's clock
        let now = std::time::Instant::now();
        conn.handle_input(&buf[..n], now)
            .map_err(|e| e.to_string())?;
    }
}

/// Raises this process's open-file limit to its hard limit, for a flood
/// that holds `need` sockets here. Returns `false` (and says why) when the
/// hard limit is too low; with `WEFT_E2E=1` that fails the test instead.
pub fn raise_nofile(need: u64) -> bool {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    if hard >= need {
        return true;
    }
    let why = format!("the open-file hard limit is {hard}; this test holds {need} sockets");
    assert!(std::env::var("WEFT_E2E").as_deref() != Ok("1"), "{why}");
    eprintln!("skipped: {why}");
    false
}

/// Fetches `/metrics` of the server at `addr` and returns the value of
/// the sample that starts with `name` (a metric name, with labels if any).
pub async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A `weft-control serve` child process (the real binary).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
    /// Where its metrics are served (`--metrics-listen`).
    pub metrics: std::net::SocketAddr,
    pub state_dir: std::path::PathBuf,
}

/// Returns a loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl ServerProcess {
    /// Starts the binary on `state_dir` (and `port`) and waits until it answers.
    pub async fn start(state_dir: &std::path::Path, port: u16) -> Self {
        Self::start_with(state_dir, port, &[], None).await
    }

    /// Starts the binary with extra `serve` arguments and, if `nofile` is
    /// given, that open-file limit (soft, hard), as a container or init
    /// system may impose it.
    pub async fn start_with(
        state_dir: &std::path::Path,
        port: u16,
        extra: &[&str],
        nofile: Option<(u64, u64)>,
    ) -> Self {
        use std::os::unix::process::CommandExt as _;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("server.log"))
            .unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        // Tests run side by side: not the shared default metrics port 9090.
        let metrics: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"));
        cmd.args([
            "serve",
            "--listen",
            &addr.to_string(),
            "--metrics-listen",
            &metrics.to_string(),
            "--batch-delay",
            "20ms",
            // Tests run side by side: not the shared default port 3478.
            "--stun-listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(state_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
        if let Some((soft, hard)) = nofile {
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(
                        nix::sys::resource::Resource::RLIMIT_NOFILE,
                        soft,
                        hard,
                    )
                    .map_err(std::io::Error::from)
                });
            }
        }
        let child = cmd.spawn().unwrap();
        let p = ServerProcess {
            child,
            addr,
            metrics,
            state_dir: state_dir.to_owned(),
        };
        let url: ControlUrl = p.url().parse().unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if weft_client::fetch_key(&url, Duration::from_secs(1))
                .await
                .is_ok()
                && state_dir.join("admin.sock").exists()
            {
                return p;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the server did not come up; see {}",
                state_dir.join("server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Returns what the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state_dir.join("server.log")).unwrap_or_default()
    }

    pub fn admin(&self) -> weft_control::admin::client::AdminClient {
        weft_control::admin::client::AdminClient::new(
            weft_control::admin::client::AdminTarget::Socket(self.state_dir.join("admin.sock")),
        )
    }

    /// Sends SIGKILL (no chance to clean up) and reaps the process.
    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.child.wait().unwrap()
    }

    /// Runs the CLI against this server (`--state-dir` last); returns
    /// (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let dir = self.state_dir.to_str().unwrap();
        Self::cli_exact(&[args, &["--state-dir", dir]].concat())
    }

    /// Runs the CLI with exactly `args`; returns (status, stdout, stderr).
    pub fn cli_exact(args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
            .args(args)
            .env_remove("WEFT_CONTROL_STATE_DIR")
            .env_remove("WEFT_CONTROL_SERVER")
            .env_remove("WEFT_CONTROL_API_KEY")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
