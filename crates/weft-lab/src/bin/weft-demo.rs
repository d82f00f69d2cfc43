//! `weft-demo`: a real local tailnet in network namespaces, in one command.
//!
//! As root: starts `weft-control` and three `weftd` nodes, each in its own namespace on a private
//! underlay (198.19.x.0/24), joins them with a pre-auth key, prints `weft status` of each node,
//! `weft ping` between them and an ICMP ping through the tunnel, then keeps running until Ctrl-C
//! (or exits at once with `--once`). Everything it made — processes, namespaces, temp files — is
//! torn down on exit, Ctrl-C, SIGTERM or a panic.
//!
//! It builds nothing: it runs the `weft-control`, `weftd` and `weft` found next to itself (the
//! same target dir), e.g. `cargo build --workspace --bins && ./target/debug/weft-demo`. Started
//! by a user other than root, it runs itself again through `sudo` when `sudo` is installed.

#![allow(clippy::print_stdout)] // printing the tailnet is this program's job

use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use weft_lab::Lab;
use weft_lab::tailnet::{Binaries, Node, Tailnet};

const NODES: [&str; 3] = ["alpha", "beta", "gamma"];

fn main() -> anyhow::Result<()> {
    let mut once = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--once" => once = true,
            "-h" | "--help" => {
                println!(
                    "Usage: weft-demo [--once]   (as root; a sudo user's run goes through sudo)\n\n\
                     Runs a local tailnet (control server + {} nodes, each in a network namespace),\n\
                     shows `weft status` and `weft ping`, and keeps it up until Ctrl-C.\n\
                     --once  tear down right after the output instead of waiting for Ctrl-C",
                    NODES.len()
                );
                return Ok(());
            }
            other => bail!("unknown argument {other:?} (usage: weft-demo [--once])"),
        }
    }
    if let Err(why) = weft_lab::require_root() {
        // The README's command, typed by a sudo user: run again through sudo (which asks for
        // the password if it must) instead of failing, so one command works for root and for
        // sudo users alike.
        if weft_lab::require_cmd("sudo").is_ok() {
            use std::os::unix::process::CommandExt as _;
            eprintln!("weft-demo needs root ({why}); running it again with sudo");
            let exe = std::env::current_exe().context("finding weft-demo's own path")?;
            let err = std::process::Command::new("sudo")
                .arg("--")
                .arg(exe)
                .args(std::env::args_os().skip(1))
                .exec();
            bail!("running sudo: {err}; run weft-demo as root instead");
        }
        bail!(
            "weft-demo needs root: {why}; run it as root ({} — sudo is not installed)",
            exe_display()
        );
    }
    for tool in ["ip", "ping"] {
        if let Err(why) = weft_lab::require_cmd(tool) {
            bail!("weft-demo needs {tool}: {why}");
        }
    }
    let bins = Binaries::discover().context(
        "weft-demo runs the binaries next to it; build them with `cargo build --release --bins`",
    )?;
    // Ctrl-C, SIGTERM and SIGHUP only set a flag; the main thread notices it and tears down with
    // everything still in scope. (A handler, not a blocked mask: a mask would be inherited by the
    // daemons we start, and they must stay stoppable with SIGTERM.)
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let action = SigAction::new(
            SigHandler::Handler(on_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: `on_signal` only stores into an atomic, which is async-signal-safe.
        unsafe { sigaction(sig, &action) }
            .with_context(|| format!("installing a {sig} handler"))?;
    }
    let lab = Lab::new("weft-demo").context("setting up the run directory")?;
    let result = run(&lab, bins, once);
    eprintln!(
        "Tearing down: stopping the daemons and deleting namespaces {}-*",
        lab.prefix()
    );
    result
}

fn run(lab: &Lab, bins: Binaries, once: bool) -> anyhow::Result<()> {
    println!("Starting a local tailnet (run {})", lab.prefix());
    let net = Tailnet::with_binaries(lab, bins)?;
    let control = net.control("control")?;
    println!(
        "control server: {} (state in {})",
        control.url(),
        control.state_dir().display()
    );
    let nodes = net
        .join(&control, &NODES)
        .context("joining the nodes to the tailnet")?;
    println!(
        "joined {} nodes with a reusable pre-auth key of user alice\n",
        nodes.len()
    );

    for node in &nodes {
        let out = node.weft(["status"]).run()?;
        println!(
            "$ weft status   # on {} (underlay {})",
            node.name(),
            node.underlay_addr()
        );
        print!("{}", out.stdout);
        println!();
    }
    let pairs = [(0, 1), (1, 2), (2, 0)];
    for (a, b) in pairs {
        let (a, b): (&Node, &Node) = (&nodes[a], &nodes[b]);
        println!("$ weft ping -c 3 {}   # on {}", b.name(), a.name());
        let out = a.weft(["ping", "-c", "3", b.name()]).run()?;
        print!("{}", out.stdout);
    }
    // By name: the namespace's resolv.conf is weftd's (nameserver 100.100.100.100, the tailnet
    // domain as search domain), so the system's own ping resolves the peer through MagicDNS.
    let target = nodes[1].name();
    println!(
        "\n$ ping -c 3 {target}   # ICMP through the tunnel, the name from MagicDNS, on {}",
        nodes[0].name()
    );
    let out = nodes[0]
        .netns()
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "1", target])
        .timeout(Duration::from_secs(15))
        .run()?;
    print!("{}", out.stdout);

    if once {
        return Ok(());
    }
    println!(
        "\nThe tailnet keeps running. Try for example:\n  ip netns exec {} {} --socket {} status\n\
         Press Ctrl-C to tear it down.",
        nodes[0].netns().name(),
        net.binaries().weft.display(),
        nodes[0].socket().display()
    );
    // Wait for a signal, but notice a daemon that dies meanwhile.
    loop {
        if let Some(sig) = wait_signal(Duration::from_secs(2)) {
            let name = Signal::try_from(sig)
                .map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_owned());
            println!("\n{name} received");
            return Ok(());
        }
        for node in &nodes {
            if node.pid().is_none() || node.status_json().is_err() {
                bail!(
                    "weftd on {} stopped answering:\n{}",
                    node.name(),
                    node.log()
                );
            }
        }
    }
}

/// The signal that asked us to stop (0: none yet).
static STOP: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(sig: std::ffi::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

/// Waits up to `limit` for a stop signal; returns its number.
fn wait_signal(limit: Duration) -> Option<i32> {
    let start = weft_lab::now();
    loop {
        let sig = STOP.load(Ordering::SeqCst);
        if sig != 0 {
            return Some(sig);
        }
        if start.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn exe_display() -> String {
    std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "weft-demo".into())
}
