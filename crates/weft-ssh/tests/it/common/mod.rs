//! Test harness: a server on 127.0.0.1 with a fake authorizer and check hook,
//! throwaway local users, and the real OpenSSH client tools.
#![allow(dead_code, clippy::unwrap_used, clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use weft_ssh::{
    Authorizer, CheckHook, CheckOutcome, CheckRequest, Decision, Grant, HostKeys, Origin,
    PeerIdentity, PendingCheck, SshConfig, SshServer, Unidentified,
};

/// Returns false (test should return early) when e2e prerequisites are
/// missing; panics instead when WEFT_E2E=1.
pub fn e2e_ready() -> bool {
    let strict = std::env::var("WEFT_E2E").is_ok_and(|v| v == "1");
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    for tool in [
        "/usr/bin/ssh",
        "/usr/bin/scp",
        "/usr/bin/sftp",
        "/usr/bin/ssh-agent",
        "/usr/bin/ssh-add",
        "/usr/bin/tmux",
        "/usr/sbin/useradd",
        "/usr/lib/openssh/sftp-server",
    ] {
        if !Path::new(tool).exists() {
            missing.push(tool.to_owned());
        }
    }
    if missing.is_empty() {
        return true;
    }
    assert!(
        !strict,
        "WEFT_E2E=1 but prerequisites are missing: {missing:?}"
    );
    eprintln!("skipping: missing {missing:?}");
    false
}

// --- fake policy -----------------------------------------------------------

/// What the fake policy answers per requested login.
#[derive(Clone, Debug)]
pub enum Rule {
    Accept(String),
    /// `autogroup:nonroot`: same name, never uid 0.
    NonRoot,
    Check(String, Duration),
    Custom(Decision),
}

/// A fake [`Authorizer`]: 127.0.0.1 is node "laptop" of alice@example.com;
/// logins are looked up in `rules`, else the no-match refusal.
#[derive(Clone, Debug, Default)]
pub struct FakeAuthz {
    pub rules: BTreeMap<String, Rule>,
    /// Applies to any login not in `rules` (like `"*"`).
    pub wildcard: Option<Rule>,
    pub known: bool,
    /// Say every connection was opened by this local uid on the node itself
    /// (weftd decides that from the source address and sock_diag).
    pub local_uid: Option<u32>,
}

impl FakeAuthz {
    pub fn new() -> Self {
        FakeAuthz {
            known: true,
            ..Default::default()
        }
    }
    pub fn with(mut self, login: &str, rule: Rule) -> Self {
        self.rules.insert(login.to_owned(), rule);
        self
    }
    pub fn arc(self) -> Arc<dyn Authorizer> {
        Arc::new(self)
    }
}

pub fn peer() -> PeerIdentity {
    PeerIdentity {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        origin: Origin::Peer,
        node_id: "n1".into(),
        node_name: "laptop".into(),
        user_login: Some("alice@example.com".into()),
        tags: vec![],
    }
}

impl Authorizer for FakeAuthz {
    fn identify(&self, src: SocketAddr, _local: SocketAddr) -> Result<PeerIdentity, Unidentified> {
        if !self.known || src.ip() != IpAddr::V4(Ipv4Addr::LOCALHOST) {
            return Err(Unidentified::UnknownAddress(src.ip()));
        }
        Ok(PeerIdentity {
            origin: self
                .local_uid
                .map_or(Origin::Peer, |uid| Origin::LocalProcess { uid }),
            ..peer()
        })
    }
    fn authorize(
        &self,
        _peer: &PeerIdentity,
        ssh_user: &str,
        _now: i64,
        _uid_of: &dyn Fn(&str) -> Option<u32>,
    ) -> Decision {
        match self.rules.get(ssh_user).or(self.wildcard.as_ref()) {
            None => Decision::no_matching_rule(ssh_user),
            Some(Rule::Accept(local)) => Decision::Accept(Grant::new(local.clone())),
            Some(Rule::NonRoot) => Decision::Accept(Grant {
                refuse_root: true,
                ..Grant::new(ssh_user)
            }),
            Some(Rule::Check(local, period)) => Decision::Check {
                grant: Grant::new(local.clone()),
                period: *period,
            },
            Some(Rule::Custom(d)) => d.clone(),
        }
    }
}

/// A fake control-side check: records requests; the test decides.
#[derive(Default)]
pub struct FakeCheck {
    pub started: watch::Sender<usize>,
    /// Checks whose outcome is still awaited by the server (a client may be gone).
    pub waiting: watch::Sender<usize>,
    pub decision: Mutex<Option<CheckOutcome>>,
    pub decided: Notify,
}

impl FakeCheck {
    pub fn decide(&self, outcome: CheckOutcome) {
        *self.decision.lock().unwrap() = Some(outcome);
        self.decided.notify_waiters();
    }
}

pub struct CheckHandle(pub Arc<FakeCheck>);

impl CheckHook for CheckHandle {
    fn start(&self, _req: CheckRequest) -> PendingCheck {
        self.0.started.send_modify(|n| *n += 1);
        let me = self.0.clone();
        PendingCheck {
            url: "https://control.test/ssh/check/42".into(),
            outcome: Box::pin(async move {
                struct Waiting(Arc<FakeCheck>);
                impl Drop for Waiting {
                    fn drop(&mut self) {
                        self.0.waiting.send_modify(|n| *n -= 1);
                    }
                }
                me.waiting.send_modify(|n| *n += 1);
                let _waiting = Waiting(me.clone());
                loop {
                    let wait = me.decided.notified();
                    if let Some(o) = me.decision.lock().unwrap().clone() {
                        return o;
                    }
                    wait.await;
                }
            }),
        }
    }
}

// --- server ----------------------------------------------------------------

pub struct TestServer {
    pub server: SshServer,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub known_hosts: PathBuf,
    pub check: Arc<FakeCheck>,
}

pub async fn start(authz: FakeAuthz) -> TestServer {
    start_with(authz, SshConfig::default()).await
}

pub async fn start_with(authz: FakeAuthz, mut config: SshConfig) -> TestServer {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("weft_ssh=debug")
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    // World-traversable so dropped-privilege children can reach files we hand them.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    config.agent_socket_parent = dir.path().to_owned();
    let keys = HostKeys::ephemeral().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let lines: Vec<String> = keys
        .public_lines()
        .iter()
        .map(|k| format!("[127.0.0.1]:{} {k}", addr.port()))
        .collect();
    std::fs::write(&known_hosts, lines.join("\n") + "\n").unwrap();
    let check = Arc::new(FakeCheck::default());
    let server = SshServer::new(
        config,
        &keys,
        authz.arc(),
        Arc::new(CheckHandle(check.clone())),
    );
    let s = server.clone();
    tokio::spawn(async move { s.serve(listener).await });
    TestServer {
        server,
        addr,
        dir,
        known_hosts,
        check,
    }
}

impl TestServer {
    /// Common client options: our known_hosts only, no keys or agents from
    /// the real ~/.ssh, no config files.
    pub fn opts(&self) -> Vec<String> {
        [
            "-F",
            "/dev/null",
            "-o",
            &format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "PubkeyAuthentication=no",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "GSSAPIAuthentication=no",
            "-o",
            "ConnectTimeout=10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    /// `ssh [extra] -p PORT user@127.0.0.1 [remote...]`.
    pub fn ssh(&self, user: &str, extra: &[&str], remote: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("/usr/bin/ssh");
        c.args(self.opts())
            .args(["-o", "IdentityAgent=none"])
            .args(extra);
        c.args([
            "-p",
            &self.addr.port().to_string(),
            &format!("{user}@127.0.0.1"),
        ])
        .args(remote);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }
}

/// Runs a command to completion with a 60 s bound.
pub async fn run(mut cmd: tokio::process::Command) -> Output {
    tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("command timed out")
        .unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
pub async fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// --- throwaway local users -------------------------------------------------

static USERADD: Mutex<()> = Mutex::new(());

/// A local user (and a supplementary group) created for one test and
/// removed with its home directory on drop.
pub struct TestUser {
    pub name: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn sh(cmd: &str, args: &[&str]) -> bool {
    std::process::Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl TestUser {
    pub fn create(tag: &str) -> TestUser {
        let _g = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        let unique = format!("{:06x}", weft_types::entropy::u64() & 0xff_ffff);
        let name = format!("wft{unique}{tag}");
        let group = format!("{name}g");
        assert!(sh("/usr/sbin/groupadd", &[&group]), "groupadd {group}");
        assert!(
            sh(
                "/usr/sbin/useradd",
                &["-m", "-s", "/bin/bash", "-G", &group, &name]
            ),
            "useradd {name}"
        );
        let pw = nix::unistd::User::from_name(&name).unwrap().unwrap();
        TestUser {
            name,
            group,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            home: pw.dir,
        }
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _g = USERADD.lock().unwrap_or_else(|e| e.into_inner());
        sh("/usr/sbin/userdel", &["-r", "-f", &self.name]);
        sh("/usr/sbin/groupdel", &[&self.group]);
    }
}

/// A TCP echo service on 127.0.0.1 for forwarding tests.
pub async fn echo_server() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Returns a free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
