//! Test harness for Weft's end-to-end tests: real binaries in network namespaces, joined by veth
//! links, driven and observed from the test process.
//!
//! What it is: the plumbing every e2e test shares — a per-run [`Lab`] that creates namespaces,
//! links and unique names and tears all of it down (even when the test panics), [`Process`]es
//! stopped by PID, commands with time limits and error messages that carry their output,
//! condition waits instead of sleeps, and the skip-or-fail policy for prerequisites. What it is
//! not: a simulator (in-process tests on virtual time belong to the crates under test), or a
//! place for product logic.
//!
//! # A test, start to finish
//!
//! ```no_run
//! use std::time::Duration;
//! use weft_lab::{WgDaemon, WgDevice, WgKeyPair, e2e_lab, with_diagnostics};
//!
//! #[test]
//! fn two_wireguard_go_peers_ping() -> anyhow::Result<()> {
//!     // Skips (printing why) without root or wg/wireguard-go; fails instead under WEFT_E2E=1.
//!     let lab = e2e_lab!("wg", "wireguard-go", "/dev/net/tun");
//!     let (a, b) = (lab.netns("a")?, lab.netns("b")?);     // weft-<pid>-<tag>-a, -b
//!     let link = lab.link(&a, &b)?;                         // veth, 198.18.x.1/24 <-> .2/24
//!     let wa = WgDevice::start(&lab, &a, &WgDaemon::wireguard_go())?;
//!     let wb = WgDevice::start(&lab, &b, &WgDaemon::wireguard_go())?;
//!     let (ka, kb) = (WgKeyPair::generate()?, WgKeyPair::generate()?);
//!     wa.setconf(&format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\n\
//!                          Endpoint = {}:51820\nAllowedIPs = 100.64.0.2/32\n", ka.private, kb.public, link.b.addr))?;
//!     wb.setconf(&format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\n\
//!                          AllowedIPs = 100.64.0.1/32\n", kb.private, ka.public))?;
//!     wa.up("100.64.0.1/24", 1420)?;
//!     wb.up("100.64.0.2/24", 1420)?;
//!     // On failure, the error carries both daemons' logs and `wg show` while they still run.
//!     with_diagnostics(
//!         || {
//!             a.wait_ping("100.64.0.2".parse()?, Duration::from_secs(10))?;
//!             Ok(())
//!         },
//!         || format!("{}\n{}", wa.report(), wb.report()),
//!     )
//! }   // drop order: wb, wa (daemons stopped by PID), link, a, b, lab (namespaces deleted)
//! ```
//!
//! # The pieces
//!
//! * **[`Lab`]** — one run. Prefix `weft-<pid>-<4 hex>` ([`RunId`]); temp dir
//!   `$TMPDIR/weft-lab/<prefix>/` holding process logs (kept and printed if the test panics, or
//!   with `WEFT_LAB_KEEP_LOGS=1`). On creation it removes leftovers of dead runs
//!   ([`cleanup_stale`]: only `weft-`/`wf` names whose PID no longer exists). On drop it stops
//!   whatever still runs in its namespaces and deletes them.
//!   - [`Lab::netns`] / [`Lab::router`] (forwarding on) create namespaces with `lo` up.
//!   - [`Lab::link`] joins two namespaces with a veth pair on a fresh /24 of 198.18.0.0/15
//!     (`.1` in the first, `.2` in the second); the returned [`Link`] has names and addresses.
//!   - [`Lab::unique_ifname`] gives machine-wide unique interface names (`wf<pid>-<n>`, ≤ 15
//!     bytes) — required for WireGuard devices, whose sockets share `/var/run/wireguard`.
//! * **[`Netns`]** — do things in a namespace: [`Netns::exec`] (run, fail on non-zero exit with a
//!   message holding command line, status, stdout, stderr), [`Netns::command`] (builder: env,
//!   stdin, time limit, [`Cmd::run_unchecked`] for expected failures), [`Netns::spawn`]
//!   (background [`Process`]), [`Netns::ip`], [`Netns::sysctl`], addresses and routes,
//!   [`Netns::nft`] and [`Netns::masquerade`] for NAT routers, [`Netns::ping`] /
//!   [`Netns::wait_ping`], [`Netns::snmp`] counters, and [`Netns::enter`] to run Rust code inside
//!   (plus [`Netns::udp_socket`], [`Netns::tcp_listener`], [`Netns::tcp_connect`], whose sockets
//!   stay in the namespace).
//! * **[`Process`]** — a background program; stdout+stderr in `<run dir>/<name>.log`
//!   ([`Process::log`], [`Process::report`]); [`Process::signal`], [`Process::wait_exit`],
//!   [`Process::ensure_running`]; dropped ⇒ SIGTERM, 5 s grace, SIGKILL, by PID.
//! * **Waiting** — [`wait_until`] / [`wait_for`] poll with backoff; a timeout names what was
//!   awaited and the probe's last error or observation.
//! * **Prerequisites** — [`e2e_lab!`] (one line per test), [`require_root`], [`require_cmd`],
//!   [`e2e_strict`] (`WEFT_E2E=1`).
//! * **Traffic** — [`tcp_transfer`]: N pseudo-random bytes over TCP between namespaces with
//!   SHA-256 on both sides ([`TransferReport::verify`]).
//! * **WireGuard** — [`WgDaemon`] (how to start an implementation: `weftd wg {if}`,
//!   `wireguard-go -f {if}`), [`WgDevice`] (start, `setconf`, `up`, `dump`, `showconf`, raw
//!   [`WgDevice::uapi`]), [`WgKeyPair`], [`parse_wg_dump`].
//! * **Diagnostics** — [`with_diagnostics`] runs a test body and, if it fails or panics, appends a
//!   report gathered while the daemons are still up.
//!
//! # Rules the harness keeps for you
//! * Underlay addresses only from 198.18.0.0/15; every packet stays inside the run's namespaces.
//! * Only processes we started are signalled, by PID; only namespaces of our own runs (live: this
//!   one; dead: leftovers) are deleted.
//! * Every command and wait has a time limit.
//!
//! * **Machines** — [`machine::Machine`]: a Debian 12 tree booted with `systemd-nspawn --boot`
//!   into one of the run's namespaces (its own systemd as PID 1, a fresh in-memory layer per boot),
//!   for install/uninstall tests; halted and its cgroups removed on drop and by the stale sweep.
//! * **Tailnets** — [`tailnet`]: control and weftd nodes on a switched underlay; [`nat`]: sites
//!   behind real nftables NAT routers (easy, hard, UDP blocked) on that underlay.
//!
//! * **Web** — [`web`]: the browser tests' real peers in `tests/web` (an OpenID Provider,
//!   Playwright driving Debian's chromium) and the prerequisites that name them.
//!
//! Later additions are expected to live here too: SSH clients, PostgreSQL helpers.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod account;
mod error;
mod lab;
pub mod machine;
pub mod names;
pub mod nat;
mod netns;
mod prereq;
mod process;
pub mod tailnet;
mod traffic;
mod wait;
pub mod web;
mod wg;

pub use error::{CommandError, LabError, Result, shell_quote};
pub use lab::{
    Lab, Link, LinkEnd, NETNS_DIR, WG_SOCKET_DIR, cleanup_stale, runs_root, wg_socket_path,
};
pub use names::RunId;
pub use netns::{Netns, parse_snmp};
pub use nix::sys::signal::Signal;
pub use prereq::{
    E2E_ENV, Skipped, current_test_name, e2e_lab, e2e_strict, missing_prereqs, require_cmd,
    require_path, require_root,
};
pub use process::{Cmd, DEFAULT_CMD_TIMEOUT, Output, Process, STOP_GRACE, host_command};
pub use traffic::{TransferReport, XorShift, hex, tcp_transfer};
pub use wait::{now, observed, wait_for, wait_until};
pub use wg::{
    DAEMON_START_TIMEOUT, WgDaemon, WgDevice, WgDump, WgKeyPair, WgPeerDump, base64_key_to_hex,
    parse_wg_dump, uapi_errno, uapi_request,
};

/// Runs `body`; if it returns an error or panics, calls `diagnostics` *before* anything the body
/// borrowed is dropped — so daemons are still running and can be asked — and attaches the report:
/// appended to the error, or printed to stderr ahead of the re-raised panic.
///
/// # Errors
/// The body's error, with the diagnostics appended.
pub fn with_diagnostics<T>(
    body: impl FnOnce() -> anyhow::Result<T>,
    diagnostics: impl FnOnce() -> String,
) -> anyhow::Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow::anyhow!(
            "{e:?}\n\n====== diagnostics ======\n{}",
            diagnostics()
        )),
        Err(panic) => {
            eprintln!("====== diagnostics ======\n{}", diagnostics());
            std::panic::resume_unwind(panic)
        }
    }
}
