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
    DiscoPrivate, Endpoint, EndpointKind, HostInfo, MachinePrivate, NetMap, NodePrivate,
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
        TestNode {
            name: name.into(),
            target: Target {
                url: server.url(),
                machine_key: MachinePrivate::generate(),
                server_key: server.server.public_key(),
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

/// A `weft-control serve` child process (the real binary).
pub struct ServerProcess {
    pub child: std::process::Child,
    pub addr: std::net::SocketAddr,
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
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.join("server.log"))
            .unwrap();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
            .args([
                "serve",
                "--listen",
                &addr.to_string(),
                "--batch-delay",
                "20ms",
                "--state-dir",
            ])
            .arg(state_dir)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let p = ServerProcess {
            child,
            addr,
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

    /// Runs the CLI against this server; returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weft-control"))
            .args(args)
            .arg("--state-dir")
            .arg(&self.state_dir)
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
