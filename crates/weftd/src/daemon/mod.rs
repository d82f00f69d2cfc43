//! `weftd` in tailnet mode (the default): join a tailnet through a control
//! server and carry its traffic over WireGuard.
//!
//! Modules, by owner (see [`backend`] for how they meet):
//! * [`state_file`], [`profiles`]: the state file and the profiles in it;
//! * [`control`]: the control task over `weft-client`'s session (register,
//!   map stream, reconnect with backoff, the wait for an interactive login);
//! * [`backend`]: the coordinator and the backend state machine;
//! * [`config`], [`dataplane`], [`tunnel`], [`relay`], [`netlink`],
//!   [`endpoints`]: the data plane (incremental peer programming, disco,
//!   relay connections, TUN addresses, our endpoints);
//! * [`bus`], [`localapi`], [`validate`]: the LocalAPI server, its event
//!   stream and the bounds on what callers may set;
//! * [`ssh`]: Weft SSH on the tailnet addresses while `--ssh` is on;
//! * [`dns_os`]: the OS's DNS pointed at MagicDNS while `--accept-dns` is on
//!   (resolv.conf or systemd-resolved), and given back.
//!
//! Every path comes from a flag (`--state`, `--socket`, `--tun`, `--port`),
//! so several daemons run side by side in network namespaces.

pub mod backend;
pub mod bus;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod dns;
pub mod dns_os;
pub mod endpoints;
pub mod filter;
pub mod localapi;
pub mod metrics;
pub mod netlink;
pub mod profiles;
pub mod relay;
pub mod relay_addr;
pub mod ssh;
pub mod ssh_check;
pub mod ssh_recording;
pub mod state_file;
pub mod stun_hosts;
#[cfg(test)]
mod tests;
pub mod tunnel;
pub mod validate;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use weft_disco::Disco;
use weft_net::{Engine, EngineConfig, Offload, Tun, TunConfig};
use weft_types::DiscoPrivate;
use weft_wg::Device;

use backend::{Backend, DaemonInfo};
use dataplane::EngineDataPlane;
use profiles::ProfileStore;
use tunnel::TailnetTunnel;

/// The TUN MTU in tailnet mode (Tailscale's safe default).
pub const TUN_MTU: u16 = 1280;
/// How often our local endpoints are re-read (getifaddrs: cheap). A roaming
/// node notices its new address within this, then disco re-runs STUN and
/// sends CallMeMaybe; at 5 s the path came back after 5.4 s in one of 8 runs.
pub const ENDPOINT_POLL: Duration = Duration::from_secs(1);

/// Arguments of `weftd` / `weftd run`.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// The state file (keys, profiles, prefs).
    #[arg(long, default_value = "/var/lib/weft/weftd.state")]
    pub state: PathBuf,
    /// The directory for other state (SSH host keys).
    #[arg(long, default_value = "/var/lib/weft")]
    pub statedir: PathBuf,
    /// The LocalAPI socket.
    #[arg(long, default_value = weft_localapi::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// The TUN interface name.
    #[arg(long, default_value = "weft0")]
    pub tun: String,
    /// The UDP port for WireGuard and disco (0 = any free port).
    #[arg(long, default_value_t = 41641)]
    pub port: u16,
    /// The resolv.conf MagicDNS manages (for tests and unusual layouts).
    #[arg(long, default_value = "/etc/resolv.conf", hide = true)]
    pub resolv_conf: PathBuf,
    /// A user who may change settings through the LocalAPI besides root.
    #[arg(long)]
    pub operator: Option<String>,
    /// Log at debug level (RUST_LOG still wins when set).
    #[arg(long, short)]
    pub verbose: bool,
}

fn clocks() -> (Instant, SystemTime) {
    (crate::clock::now(), crate::clock::wall())
}

/// Runs the daemon until SIGINT/SIGTERM or a data-plane failure.
///
/// # Errors
/// A setup failure (state file, TUN, socket…) or the data-plane failure.
pub fn run(args: &DaemonArgs) -> anyhow::Result<()> {
    let operator_uid = match &args.operator {
        None => None,
        Some(name) => Some(
            nix::unistd::User::from_name(name)
                .with_context(|| format!("cannot look up the operator user {name:?}"))?
                .with_context(|| format!("no such user {name:?} (--operator)"))?
                .uid
                .as_raw(),
        ),
    };
    let nofile = raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("weftd")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(args, operator_uid, nofile))
}

/// Raises the open-file soft limit to the hard limit (every LocalAPI, SSH
/// and control connection takes a descriptor) and returns the limit now in
/// force.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(from = soft, to = hard, "Raised the open-file limit");
            hard
        }
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "Cannot raise the open-file limit");
            soft
        }
    }
}

/// Removes the socket file when the daemon exits (not after `kill -9`; the
/// next start replaces a stale socket).
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn run_async(
    args: &DaemonArgs,
    operator_uid: Option<u32>,
    nofile: u64,
) -> anyhow::Result<()> {
    // The socket first: a second daemon on the same paths stops here,
    // before it touches the TUN or the state.
    let listener = localapi::bind(&args.socket)?;
    let _socket_file = SocketFile(args.socket.clone());
    let store = ProfileStore::open(&args.state, dataplane::unix_now().0)?;
    tracing::info!(state = %args.state.display(), machine = %store.machine_key().public().short(), "State loaded");

    let (now, wall) = clocks();
    let tun = Tun::create(&TunConfig {
        mtu: TUN_MTU,
        offload: Offload::Auto,
        ..TunConfig::new(&args.tun)
    })?;
    let device = Arc::new(Device::new(now, wall));
    let disco_key = DiscoPrivate::generate();
    let placeholder = store.machine_key().public(); // replaced by the node key once one is loaded
    let disco = Disco::new(
        disco_key,
        weft_types::NodePublic::from_bytes(placeholder.to_bytes()),
        weft_types::entropy::bytes(),
    );
    let tunnel = Arc::new(TailnetTunnel::new(Arc::clone(&device), disco));
    let relay_options = relay::RelayOptions::default();
    let (relays, relay_inputs) =
        relay::Relays::new(tokio::runtime::Handle::current(), relay_options);
    tunnel.set_relays(Arc::clone(&relays));
    let engine = Engine::start(
        Arc::clone(&tunnel),
        tun,
        EngineConfig {
            listen_port: args.port,
            fwmark: 0,
        },
    )?;
    device.set_bound_port(engine.listen_port());
    tunnel.set_injector(engine.injector());
    let port = engine.listen_port();
    let os = netlink::spawn(args.tun.clone()).context("cannot open a netlink socket")?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (dns, dns_hook) = dns::spawn(engine.injector(), stop_rx.clone());
    tunnel.set_local_service(dns_hook);
    let resolver = dns.clone();
    let dp = EngineDataPlane::new(Arc::clone(&tunnel), engine, os).with_dns(dns);

    let os_hostname = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let info = DaemonInfo {
        tun: args.tun.clone(),
        os_hostname,
    };
    let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (handle, jobs) = Backend::mailbox();
    let mut backend = Backend::new(
        store,
        weft_client::ConnectOptions::default(),
        Box::new(dp),
        bus::Bus::new(),
        info,
        events_tx,
    );
    // MagicDNS in the OS; restores what a crashed earlier run left. The
    // resolver forwards to the nameservers the host had before Weft.
    let dns_paths = dns_os::Paths {
        resolv_conf: args.resolv_conf.clone(),
        ..dns_os::Paths::system(&args.statedir)
    };
    let os_dns = dns_os::OsDns::start(dns_paths, &args.tun);
    let mut host_ns = os_dns.subscribe_host_nameservers();
    backend.set_os_dns(os_dns);
    let host_ns_pump = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            loop {
                let ips = host_ns.borrow_and_update().clone();
                resolver.set_host_nameservers(ips);
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => return,
                    changed = host_ns.changed() => if changed.is_err() { return },
                }
            }
        })
    };
    let relay_pump = tokio::spawn(relay::run(
        Arc::clone(&tunnel),
        relays,
        relay_inputs,
        stop_rx.clone(),
    ));
    let coordinator = tokio::spawn(backend.run(jobs, events_rx, stop_rx.clone()));
    // Weft SSH; `check` rules ask control through the check hook.
    let check_hook = ssh_check::ControlCheckHook::spawn(
        handle.clone(),
        ssh_check::max_wait_from_env(),
        stop_rx.clone(),
    );
    // Finished recordings go to control (the files stay here too).
    let recording_sink = ssh_recording::spawn(
        args.statedir.join("recordings"),
        check_hook.clone(),
        stop_rx.clone(),
    );
    let ssh_opts = ssh::SshOptions {
        statedir: args.statedir.clone(),
        port: ssh::SSH_PORT,
        check_hook: Some(Arc::new(check_hook)),
        recording_sink: Some(Arc::new(recording_sink)),
        socket_owners: Arc::new(ssh::sock_owner::SockDiag),
        // Resolved now, before a package upgrade could replace the file.
        sftp_program: std::env::current_exe()
            .context("cannot find the weftd binary (needed to serve SFTP over Weft SSH)")?,
    };
    let ssh_service = ssh::spawn(handle.clone(), ssh_opts, stop_rx.clone());

    let limits = localapi::conn::Limits::for_descriptor_limit(nofile);
    let router = localapi::router(
        handle.clone(),
        localapi::root_or(operator_uid),
        stop_rx.clone(),
        &limits,
    );
    let mut stop_wait = stop_rx;
    let server = tokio::spawn(localapi::serve(
        listener,
        router,
        async move {
            let _ = stop_wait.wait_for(|s| *s).await;
        },
        limits,
    ));
    tracing::info!(socket = %args.socket.display(), tun = %args.tun, port, "weftd ready");
    // systemd `Type=notify`: ready once the LocalAPI serves (the socket is
    // bound and its server runs), not once the tailnet is up: `weft up`,
    // `weft status` and a logged-out daemon all need only the LocalAPI, and
    // waiting for control would hold boot on a server that may be down.
    // Without NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd that weftd is ready");
    }

    // Subscribed before the monitor starts feeding disco, and the current
    // value is reported first: a list published between a later subscribe
    // and the first `changed()` would otherwise never reach control (seen
    // under load: peers waited forever for our endpoints).
    let reporter = {
        let handle = handle.clone();
        let mut eps = tunnel.endpoints();
        let mut home = tunnel.home_relay();
        tokio::spawn(async move {
            loop {
                let list = eps.borrow_and_update().clone();
                let region = *home.borrow_and_update();
                let sent = handle
                    .call(move |b| {
                        b.set_endpoints(list);
                        b.set_home_relay(region);
                    })
                    .await;
                if sent.is_err() {
                    return;
                }
                let changed = tokio::select! {
                    r = eps.changed() => r,
                    r = home.changed() => r,
                };
                if changed.is_err() {
                    return;
                }
            }
        })
    };
    // Our interface endpoints go to disco, which adds what STUN finds;
    // disco's list goes to control.
    let monitor = {
        let tunnel = Arc::clone(&tunnel);
        let tun = args.tun.clone();
        tokio::spawn(async move {
            loop {
                let eps = endpoints::local(&tun, port);
                tunnel.set_local_endpoints(port, eps, clocks().0);
                tokio::time::sleep(ENDPOINT_POLL).await;
            }
        })
    };
    let outcome = wait_for_exit(&handle).await;
    monitor.abort();
    reporter.abort();
    let _ = stop_tx.send(true);
    let mut server = server;
    if tokio::time::timeout(localapi::SHUTDOWN_GRACE, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("A LocalAPI client did not let go; closing it");
        server.abort();
    }
    drop(handle);
    let _ = tokio::time::timeout(localapi::SHUTDOWN_GRACE * 2, ssh_service).await;
    let _ = coordinator.await;
    let _ = relay_pump.await;
    let _ = host_ns_pump.await;
    if outcome.is_ok() {
        tracing::info!("stopped");
    }
    outcome
}

async fn wait_for_exit(handle: &backend::Handle) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!(signal = "SIGTERM", "shutting down"); return Ok(()) }
            _ = int.recv() => { tracing::info!(signal = "SIGINT", "shutting down"); return Ok(()) }
            _ = tick.tick() => {
                if let Ok(Some(why)) = handle.call(|b| b.data_plane().failure()).await {
                    anyhow::bail!("the data plane stopped: {why}");
                }
            }
        }
    }
}
