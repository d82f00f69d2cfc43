//! `weftd wg <iface>`: a plain userspace WireGuard device, configured with
//! `wg(8)` through the UAPI socket, like `wireguard-go -f <iface>`.
//!
//! Start-up order: refuse if a live daemon owns the UAPI socket, create the
//! TUN device, start the engine (which binds a UDP port), then bind the
//! socket — so by the time `wg show` works, the interface exists. Shutdown
//! (SIGINT/SIGTERM) runs the other way round.

pub mod framing;
pub mod stats;
pub mod uapi;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use weft_net::{Engine, EngineConfig, NetError, Offload, Tun, TunConfig};
use weft_wg::{Applied, Device, DeviceUpdate};

use uapi::{Handler, Refusal};

/// Arguments of `weftd wg`.
#[derive(Debug, clap::Args)]
pub struct WgArgs {
    /// Interface name (also names the UAPI socket <uapi-dir>/<iface>.sock).
    pub iface: String,
    /// Initial MTU of the interface.
    #[arg(long, default_value_t = 1420)]
    pub mtu: u16,
    /// Do not use TUN segmentation offloads (TSO/USO).
    #[arg(long)]
    pub no_offload: bool,
    /// Directory of UAPI sockets (wg(8) only looks in the default).
    #[arg(long, default_value = uapi::DEFAULT_DIR)]
    pub uapi_dir: PathBuf,
    /// Accepted for wireguard-go compatibility; weftd always stays in the
    /// foreground.
    #[arg(short = 'f', long, hide = true)]
    pub foreground: bool,
}

use crate::clock::now;

/// Runs the device until SIGINT/SIGTERM (Ok) or a data-plane failure (Err).
///
/// # Errors
/// Setup failures with what to do about them, or the data-plane failure.
pub fn run(args: &WgArgs) -> anyhow::Result<()> {
    // Block the signals before any thread starts, so every thread inherits
    // the mask and they are only ever delivered to our signalfd.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals
        .thread_block()
        .context("cannot block SIGINT/SIGTERM")?;
    let signal_fd = SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC)
        .context("cannot create a signalfd")?;

    let path = uapi::socket_path(&args.uapi_dir, &args.iface);
    uapi::clear_stale(&path)?;

    let tun = Tun::create(&TunConfig {
        mtu: args.mtu,
        offload: if args.no_offload {
            Offload::Off
        } else {
            Offload::Auto
        },
        ..TunConfig::new(&args.iface)
    })?;
    let device = Arc::new(Device::new(now(), crate::clock::wall()));
    let engine = Engine::start(Arc::clone(&device), tun, EngineConfig::default())?;
    let control = Arc::new(Control::new(device, engine));

    let (listener, socket_file) = uapi::bind(&args.uapi_dir, &path)?;
    let server = uapi::Server::start(listener, Arc::clone(&control))?;
    tracing::info!(interface = %args.iface, socket = %socket_file.path().display(), "weftd wg ready");

    let outcome = wait_for_exit(&signal_fd, &control.engine);

    server.shutdown();
    drop(socket_file);
    match Arc::try_unwrap(control) {
        Ok(control) => control.engine.shutdown(),
        Err(_) => tracing::warn!("UAPI handler still referenced at shutdown"),
    }
    if outcome.is_ok() {
        tracing::info!(interface = %args.iface, "stopped");
    }
    outcome
}

/// Sleeps until a signal (Ok) or an engine failure (Err).
fn wait_for_exit(signal_fd: &SignalFd, engine: &Engine<Device>) -> anyhow::Result<()> {
    loop {
        let mut fds = [
            PollFd::new(std::os::fd::AsFd::as_fd(signal_fd), PollFlags::POLLIN),
            PollFd::new(std::os::fd::AsFd::as_fd(engine.failed()), PollFlags::POLLIN),
        ];
        match nix::poll::poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("poll failed"),
        }
        if let Ok(Some(info)) = signal_fd.read_signal() {
            let name = Signal::try_from(info.ssi_signo as i32)
                .map(|s| s.as_str())
                .unwrap_or("signal");
            tracing::info!(signal = name, "shutting down");
            return Ok(());
        }
        if engine.failed().is_set() {
            let why = engine.failure().unwrap_or_else(|| "unknown".to_owned());
            anyhow::bail!("the data plane stopped: {why}");
        }
    }
}

/// Glue between UAPI requests and the device + engine.
struct Control {
    device: Arc<Device>,
    engine: Engine<Device>,
    /// One configuration change at a time (set + rebind).
    lock: Mutex<()>,
}

impl Control {
    fn new(device: Arc<Device>, engine: Engine<Device>) -> Self {
        let control = Self {
            device,
            engine,
            lock: Mutex::new(()),
        };
        // Port 0 means "pick one": tell the core which one we got, so `wg
        // show` prints it as wireguard-go does.
        control.set_core_port(control.engine.listen_port());
        control
    }

    /// Acts on what the core says changed; on a failed rebind, puts the old
    /// port back into the core so the device stays consistent.
    fn after_apply(&self, applied: Applied, old_port: u16) -> Result<(), Refusal> {
        if let Some(port) = applied.listen_port {
            match self.engine.rebind(port) {
                Ok(bound) => {
                    if bound != port {
                        self.set_core_port(bound);
                    }
                }
                Err(e) => {
                    self.set_core_port(old_port);
                    let errno = match &e {
                        NetError::Bind { source, .. }
                            if source.raw_os_error() == Some(libc::EADDRINUSE) =>
                        {
                            -libc::EADDRINUSE
                        }
                        _ => -libc::EIO,
                    };
                    return Err(Refusal {
                        errno,
                        reason: format!("{:#}", anyhow::Error::new(e)),
                    });
                }
            }
        }
        if let Some(mark) = applied.fwmark
            && let Err(e) = self.engine.set_fwmark(mark)
        {
            return Err(Refusal {
                errno: -libc::EIO,
                reason: format!("{:#}", anyhow::Error::new(e)),
            });
        }
        Ok(())
    }

    fn set_core_port(&self, port: u16) {
        self.device.apply(
            DeviceUpdate {
                listen_port: Some(port),
                ..DeviceUpdate::default()
            },
            now(),
        );
    }
}

#[cfg(test)]
mod tests;

impl Handler for Control {
    fn get(&self) -> String {
        self.device.uapi_get(now())
    }

    fn set(&self, body: &str) -> Result<(), Refusal> {
        let _guard = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        let old_port = self.engine.listen_port();
        let applied = self.device.uapi_set(body, now()).map_err(|e| Refusal {
            errno: e.errno,
            reason: e.message,
        })?;
        self.after_apply(applied, old_port)
    }

    fn stats(&self) -> String {
        stats::render(&self.device.stats())
    }
}
