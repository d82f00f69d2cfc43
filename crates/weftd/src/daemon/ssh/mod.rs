//! Weft SSH in the daemon: runs the [`weft_ssh`] server on the node's own
//! tailnet addresses while `--ssh` is on, and feeds it each new netmap.
//!
//! The service is a task beside the coordinator. It watches the event bus
//! and, on every event, asks the coordinator for the few facts it needs
//! ([`Wanted`]: is SSH on, our addresses, the current netmap), then makes the
//! world match:
//!
//! | situation | action |
//! |---|---|
//! | `--ssh` on (first time) | load or generate host keys, publish them in HostInfo |
//! | on, running, has addresses | server up, one listener per tailnet address on TCP 22 |
//! | a new netmap | [`SshServer::update_policy`]: sessions it no longer allows are closed |
//! | addresses changed | server restarted on the new addresses |
//! | `--ssh` off, `down`, logout, key expiry | server shut down, sessions closed |
//!
//! Host keys: `/etc/ssh/ssh_host_{ed25519,ecdsa}_key` when present and the
//! daemon runs as root, else our own under `<statedir>/ssh` (0600).
//!
//! Check mode. `check` rules need a [`CheckHook`] that asks control; it is
//! plugged in through [`SshOptions::check_hook`]. Without one, `check` logins
//! are refused with [`authz::CHECK_UNAVAILABLE`].

pub mod authz;
pub mod listen;
pub mod sock_owner;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use weft_ssh::{
    CheckHook, CheckOutcome, CheckRequest, HostKeyOptions, HostKeys, PendingCheck, SftpCommand,
    SshConfig, SshServer,
};
use weft_types::NetMap;
use weft_types::node::SshHostKey;

use weft_localapi::BackendState;

use super::backend::{Backend, Handle};
use authz::NetmapAuthorizer;
use sock_owner::SocketOwners;

/// The TCP port the server listens on.
pub const SSH_PORT: u16 = 22;
/// How long sessions get to end on their own when the server stops.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// How often a failed listener bind or key load is retried.
const RETRY: Duration = Duration::from_secs(2);

/// How the daemon runs its SSH server.
#[derive(Clone)]
pub struct SshOptions {
    /// Our own host keys live in `<statedir>/ssh`.
    pub statedir: PathBuf,
    /// The TCP port ([`SSH_PORT`]).
    pub port: u16,
    /// Decides `check` rules (re-authentication at control). `None`: check
    /// mode is unavailable and such logins are refused with a message.
    pub check_hook: Option<Arc<dyn CheckHook>>,
    /// Takes finished session recordings (the upload to control).
    pub recording_sink: Option<Arc<dyn weft_ssh::RecordingSink>>,
    /// Who owns a connection from this node's own address
    /// ([`sock_owner::SockDiag`] in the daemon).
    pub socket_owners: Arc<dyn SocketOwners>,
    /// This weftd binary, run as `<sftp_program> sftp-server` (as the login
    /// user) for each SFTP session.
    pub sftp_program: PathBuf,
}

impl std::fmt::Debug for SshOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshOptions")
            .field("statedir", &self.statedir)
            .field("port", &self.port)
            .field("check_hook", &self.check_hook.is_some())
            .field("sftp_program", &self.sftp_program)
            .finish()
    }
}

/// What the coordinator's state asks of the SSH server.
#[derive(Debug, Clone)]
pub struct Wanted {
    /// `--ssh` is on (host keys are needed and published).
    pub run_ssh: bool,
    /// `--ssh-x11`: serve X11 forwarding.
    pub x11: bool,
    /// Serve now: on, running, with a netmap and addresses.
    pub serve: Option<(Vec<IpAddr>, Arc<NetMap>)>,
}

impl Wanted {
    /// Reads the facts from the coordinator.
    pub fn of(b: &Backend) -> Self {
        let prefs = b.prefs();
        let run_ssh = prefs.run_ssh;
        let serve = b
            .netmap()
            .filter(|_| run_ssh && b.state() == BackendState::Running)
            .and_then(|nm| {
                let mut addrs: Vec<IpAddr> = nm
                    .self_node
                    .addresses
                    .iter()
                    .map(ipnet::IpNet::addr)
                    .collect();
                addrs.sort_unstable();
                addrs.dedup();
                (!addrs.is_empty()).then(|| (addrs, Arc::clone(nm)))
            });
        Self {
            run_ssh,
            x11: prefs.ssh_x11,
            serve,
        }
    }
}

/// Starts the SSH service; it ends when `stop` becomes true or the
/// coordinator goes away, shutting the server down first.
pub fn spawn(handle: Handle, opts: SshOptions, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Ok((_, mut events)) = handle.call(|b| b.watch()).await else {
            return;
        };
        let mut svc = Service {
            opts,
            handle: handle.clone(),
            keys: None,
            running: None,
        };
        loop {
            let Ok(want) = handle.call(|b| Wanted::of(b)).await else {
                break;
            };
            let retry = svc.reconcile(want).await;
            tokio::select! {
                ev = events.recv() => match ev {
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = stop.wait_for(|s| *s) => break,
                () = tokio::time::sleep(RETRY), if retry => {}
            }
        }
        svc.stop().await;
    })
}

/// A running server and what it was started for.
struct Running {
    server: SshServer,
    addrs: Vec<IpAddr>,
    netmap: Arc<NetMap>,
    /// Accept loops by address; an address missing here is retried.
    listeners: BTreeMap<IpAddr, JoinHandle<()>>,
}

impl Running {
    async fn stop(self, why: &str) {
        tracing::info!(reason = why, "SSH server stopping");
        for l in self.listeners.values() {
            l.abort();
        }
        self.server.shutdown(STOP_GRACE).await;
    }
}

struct Service {
    opts: SshOptions,
    handle: Handle,
    keys: Option<HostKeys>,
    running: Option<Running>,
}

impl Service {
    /// Makes the server match `want`; returns whether something failed and
    /// should be retried.
    async fn reconcile(&mut self, want: Wanted) -> bool {
        if want.run_ssh && self.keys.is_none() && !self.load_keys().await {
            return true;
        }
        let Some((addrs, netmap)) = want.serve else {
            if let Some(r) = self.running.take() {
                r.stop("SSH is off or the node is not running").await;
            }
            return false;
        };
        if let Some(r) = self.running.take_if(|r| r.addrs != addrs) {
            r.stop("the tailnet addresses changed").await;
        }
        let Some(keys) = &self.keys else { return true };
        let check = self.opts.check_hook.is_some();
        let running = match &mut self.running {
            Some(r) => {
                if !Arc::ptr_eq(&r.netmap, &netmap) {
                    r.netmap = Arc::clone(&netmap);
                    let authz =
                        NetmapAuthorizer::new(netmap, check, Arc::clone(&self.opts.socket_owners));
                    let update = r.server.update_policy(Arc::new(authz)).await;
                    if update.closed > 0 {
                        tracing::info!(
                            closed = update.closed,
                            kept = update.kept,
                            "SSH policy changed"
                        );
                    }
                }
                r
            }
            None => {
                let config = SshConfig {
                    tailnet_addrs: addrs.clone(),
                    // The built-in SFTP server (this binary, `weftd
                    // sftp-server`); the system sftp-server is never used.
                    sftp_command: Some(SftpCommand {
                        program: self.opts.sftp_program.clone(),
                        args: vec!["sftp-server".into()],
                    }),
                    sftp_server_paths: Vec::new(),
                    x11_forwarding: want.x11,
                    // Sessions under a rule with a `recorder` (0700).
                    recordings_dir: self.opts.statedir.join("recordings"),
                    recording_sink: self.opts.recording_sink.clone(),
                    ..SshConfig::default()
                };
                let hook: Arc<dyn CheckHook> = match &self.opts.check_hook {
                    Some(h) => Arc::clone(h),
                    None => Arc::new(NoCheck),
                };
                let authz = Arc::new(NetmapAuthorizer::new(
                    Arc::clone(&netmap),
                    check,
                    Arc::clone(&self.opts.socket_owners),
                ));
                let server = SshServer::new(config, keys, authz, hook);
                tracing::info!(addresses = ?addrs, port = self.opts.port, "SSH server starting");
                self.running.insert(Running {
                    server,
                    addrs,
                    netmap,
                    listeners: BTreeMap::new(),
                })
            }
        };
        running.server.set_x11_forwarding(want.x11);
        let mut failed = false;
        for addr in running.addrs.clone() {
            if running.listeners.contains_key(&addr) {
                continue;
            }
            match listen::bind(addr, self.opts.port) {
                Ok(listener) => {
                    let server = running.server.clone();
                    running.listeners.insert(
                        addr,
                        tokio::spawn(async move {
                            let _ = server.serve(listener).await;
                        }),
                    );
                }
                Err(e) => {
                    tracing::warn!(%addr, port = self.opts.port, error = %e, "Cannot listen for SSH; retrying");
                    failed = true;
                }
            }
        }
        failed
    }

    /// Loads (or creates) the host keys and publishes them; false on failure.
    async fn load_keys(&mut self) -> bool {
        let opts = HostKeyOptions {
            state_dir: self.opts.statedir.join("ssh"),
            ..HostKeyOptions::default()
        };
        let loaded = tokio::task::spawn_blocking(move || HostKeys::load_or_generate(&opts)).await;
        let keys = match loaded {
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Cannot load the SSH host keys; SSH stays off");
                return false;
            }
            Err(e) => {
                tracing::error!(error = %e, "Loading the SSH host keys failed");
                return false;
            }
        };
        for (source, path) in keys.sources() {
            tracing::info!(?source, path = %path.display(), "SSH host key");
        }
        let public: Vec<SshHostKey> = keys
            .public_lines()
            .iter()
            .filter_map(|l| l.parse().ok())
            .collect();
        if self
            .handle
            .call(move |b| b.set_ssh_host_keys(public))
            .await
            .is_err()
        {
            return false;
        }
        self.keys = Some(keys);
        true
    }

    async fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop("weftd is stopping").await;
        }
    }
}

/// The check hook used while none is installed. Never called in practice:
/// without a hook the authorizer refuses `check` rules up front.
struct NoCheck;

impl CheckHook for NoCheck {
    fn start(&self, _req: CheckRequest) -> PendingCheck {
        PendingCheck {
            url: String::new(),
            outcome: Box::pin(async {
                CheckOutcome::Denied {
                    message: authz::CHECK_UNAVAILABLE.to_owned(),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{SocketAddr, TcpStream};

    use super::*;

    /// A service whose host keys are already loaded (nothing published).
    fn service(port: u16) -> Service {
        let (handle, _jobs) = Backend::mailbox();
        let opts = SshOptions {
            statedir: PathBuf::from("/nonexistent"),
            port,
            check_hook: None,
            recording_sink: None,
            socket_owners: Arc::new(sock_owner::SockDiag),
            sftp_program: PathBuf::from("/nonexistent/weftd"),
        };
        Service {
            opts,
            handle,
            keys: Some(HostKeys::ephemeral().unwrap()),
            running: None,
        }
    }

    fn serving(addrs: &[&str]) -> Wanted {
        let nm = Arc::new(crate::daemon::config::tests::netmap(1, &[2]));
        Wanted {
            run_ssh: true,
            x11: false,
            serve: Some((addrs.iter().map(|a| a.parse().unwrap()).collect(), nm)),
        }
    }

    /// Whether an SSH server answers on `ip:port` (reads its identification line).
    fn answers(ip: &str, port: u16) -> bool {
        let addr = SocketAddr::new(ip.parse().unwrap(), port);
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 8];
        s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-"
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Runs blocking probes off the runtime's worker.
    async fn probe(ip: &'static str, port: u16) -> bool {
        tokio::task::spawn_blocking(move || answers(ip, port))
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_server_follows_the_addresses_and_stops_when_ssh_is_off() {
        let port = free_port();
        let mut svc = service(port);
        assert!(!svc.reconcile(serving(&["127.0.0.1"])).await, "bind failed");
        assert!(probe("127.0.0.1", port).await);
        assert!(
            !probe("127.0.0.2", port).await,
            "listening beyond its address"
        );

        // New addresses: the old listener goes, the new one serves.
        assert!(!svc.reconcile(serving(&["127.0.0.2"])).await);
        assert!(probe("127.0.0.2", port).await);
        assert!(
            !probe("127.0.0.1", port).await,
            "the old address still answers"
        );

        // SSH off (or down, logout): nothing listens any more.
        assert!(
            !svc.reconcile(Wanted {
                run_ssh: false,
                x11: false,
                serve: None
            })
            .await
        );
        assert!(svc.running.is_none());
        assert!(!probe("127.0.0.2", port).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_port_in_use_is_reported_for_retry_and_taken_once_free() {
        let blocker = std::net::TcpListener::bind("127.0.0.3:0").unwrap();
        let port = blocker.local_addr().unwrap().port();
        let mut svc = service(port);
        assert!(
            svc.reconcile(serving(&["127.0.0.3"])).await,
            "a failed bind must ask for a retry"
        );
        drop(blocker);
        assert!(!svc.reconcile(serving(&["127.0.0.3"])).await);
        assert!(probe("127.0.0.3", port).await);
        svc.stop().await;
    }
}
