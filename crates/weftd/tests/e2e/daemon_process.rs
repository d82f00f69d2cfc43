//! `weftd` in tailnet mode as a real process in a network namespace, without
//! a control server: the TUN it makes, its LocalAPI socket, and its state
//! file across `kill -9`, restarts and corruption.
//!
//! Needs root and `/dev/net/tun`; skips without them unless `WEFT_E2E=1`.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::{Netns, Signal, e2e_lab, wait_for, wait_until};
use weft_localapi::{BackendState, LocalClient, Status};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

fn args<'a>(state: &'a Path, sock: &'a Path) -> Vec<String> {
    [
        "--state",
        &state.display().to_string(),
        "--socket",
        &sock.display().to_string(),
        "--tun",
        "weft0",
        "--port",
        "0",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn status(sock: &Path) -> anyhow::Result<Status> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(LocalClient::new(sock).status())?)
}

fn machine_key(state: &Path) -> anyhow::Result<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(state)?)?;
    v["machine_key"]
        .as_str()
        .map(str::to_owned)
        .context("no machine_key in the state file")
}

fn wait_ready(sock: &Path) -> anyhow::Result<Status> {
    Ok(wait_for(
        Duration::from_secs(15),
        "weftd's LocalAPI answers",
        || Ok(status(sock).ok()),
    )?)
}

fn tun_mtu(ns: &Netns) -> anyhow::Result<String> {
    Ok(ns.ip(["-o", "link", "show", "weft0"])?.stdout)
}

#[test]
fn weftd_keeps_its_state_across_kill_9_tightens_its_mode_and_refuses_a_corrupt_state_file()
-> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let ns = lab.netns("n")?;
    let state = lab.dir().join("state/weftd.state");
    let sock = lab.dir().join("run/weftd.sock");

    // First start: a fresh state, a TUN with MTU 1280, a readable socket.
    let first = ns.spawn("weftd-1", WEFTD, args(&state, &sock))?;
    let s = wait_ready(&sock)?;
    ensure!(
        s.backend_state == BackendState::NeedsLogin,
        "fresh node: {:?}",
        s.backend_state
    );
    ensure!(s.tun == "weft0");
    let link = tun_mtu(&ns)?;
    ensure!(link.contains("mtu 1280"), "{link}");
    let mode = std::fs::metadata(&state)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "state file mode {mode:o}");
    let mode = std::fs::metadata(&sock)?.permissions().mode() & 0o777;
    ensure!(mode == 0o666, "socket mode {mode:o}");
    let key = machine_key(&state)?;
    ensure!(key.starts_with("privkey:"));
    let log = first.log();
    ensure!(!log.contains(&key), "the machine key leaked into the log");

    // kill -9 leaves a stale socket; the next start replaces it and keeps the keys.
    first.signal(Signal::SIGKILL)?;
    first.wait_exit(Duration::from_secs(5))?;
    ensure!(sock.exists(), "a killed daemon leaves its socket behind");
    let second = ns.spawn("weftd-2", WEFTD, args(&state, &sock))?;
    wait_ready(&sock)?;
    ensure!(
        machine_key(&state)? == key,
        "the machine key changed across a restart"
    );

    // SIGTERM: a clean exit that removes the socket and the TUN.
    second.signal(Signal::SIGTERM)?;
    let st = second.wait_exit(Duration::from_secs(10))?;
    ensure!(st.success(), "exit status {st}\n{}", second.log());
    ensure!(!sock.exists(), "socket left behind after a clean exit");
    wait_until(Duration::from_secs(5), "weft0 is gone", || {
        Ok(!ns.has_link("weft0"))
    })?;

    // A state file others can read (it holds the keys): made 0600, with a warning.
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o644))?;
    let third = ns.spawn("weftd-3", WEFTD, args(&state, &sock))?;
    wait_ready(&sock)?;
    let mode = std::fs::metadata(&state)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "a 0644 state file was left {mode:o}");
    ensure!(
        third.log().contains("others could access it; made it 0600"),
        "{}",
        third.log()
    );
    ensure!(machine_key(&state)? == key, "the keys changed");
    third.signal(Signal::SIGTERM)?;
    third.wait_exit(Duration::from_secs(10))?;

    // Trailing bytes after a valid document: refused like any corrupt file.
    let with_junk = format!("{}garbage\n", std::fs::read_to_string(&state)?);
    std::fs::write(&state, &with_junk)?;
    let out = ns
        .command(WEFTD)
        .args(args(&state, &sock))
        .timeout(Duration::from_secs(10))
        .run_unchecked()?;
    ensure!(!out.status.success(), "weftd started with trailing junk");
    ensure!(
        out.stderr.contains(&state.display().to_string())
            && out.stderr.contains("more after the JSON document"),
        "{}",
        out.stderr
    );
    ensure!(
        std::fs::read_to_string(&state)? == with_junk,
        "the file was changed"
    );

    // A corrupt state file: refuse to start, name the file, leave it alone.
    std::fs::write(&state, "{\"version\":1,")?;
    let out = ns
        .command(WEFTD)
        .args(args(&state, &sock))
        .timeout(Duration::from_secs(10))
        .run_unchecked()?;
    ensure!(
        !out.status.success(),
        "weftd started with a corrupt state file"
    );
    ensure!(
        out.stderr.contains(&state.display().to_string()) && out.stderr.contains("corrupt"),
        "{}",
        out.stderr
    );
    ensure!(
        std::fs::read_to_string(&state)? == "{\"version\":1,",
        "the corrupt file was changed"
    );
    ensure!(
        !ns.has_link("weft0"),
        "no TUN for a daemon that refused to start"
    );
    Ok(())
}

#[test]
fn two_daemons_run_side_by_side_on_their_own_paths() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let ns = lab.netns("n")?;
    let a = (lab.dir().join("a.state"), lab.dir().join("a.sock"));
    let b = (lab.dir().join("b.state"), lab.dir().join("b.sock"));
    let mut bargs = args(&b.0, &b.1);
    bargs[5] = "weft1".into();
    let _pa = ns.spawn("weftd-a", WEFTD, args(&a.0, &a.1))?;
    let _pb = ns.spawn("weftd-b", WEFTD, bargs)?;
    ensure!(wait_ready(&a.1)?.tun == "weft0");
    ensure!(wait_ready(&b.1)?.tun == "weft1");
    ensure!(
        machine_key(&a.0)? != machine_key(&b.0)?,
        "each daemon has its own machine"
    );
    // A second daemon on a live socket is refused.
    let out = ns
        .command(WEFTD)
        .args(args(&a.0, &a.1))
        .timeout(Duration::from_secs(10))
        .run_unchecked()?;
    ensure!(
        !out.status.success() && out.stderr.contains("already"),
        "{}",
        out.stderr
    );
    Ok(())
}

#[test]
fn out_of_descriptors_the_localapi_sheds_connections_and_recovers() -> anyhow::Result<()> {
    let lab = e2e_lab!("prlimit", "/dev/net/tun");
    let ns = lab.netns("n")?;
    let state = lab.dir().join("weftd.state");
    let sock = lab.dir().join("weftd.sock");
    // So few descriptors that root alone (never limited) can use them all up.
    let mut argv = vec!["--nofile=64:64".to_owned(), "--".into(), WEFTD.into()];
    argv.extend(args(&state, &sock));
    let weftd = ns.spawn("weftd", "prlimit", argv)?;
    wait_ready(&sock)?;

    // 200 idle connections: the first ones are served (and held until the header
    // deadline), the rest are closed at once instead of left in the backlog.
    let mut held: Vec<std::os::unix::net::UnixStream> = (0..200)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock))
        .collect::<Result<_, _>>()?;
    let shed = wait_for(Duration::from_secs(5), "connections shed at once", || {
        let mut shed = 0;
        for s in &mut held {
            use std::io::Read as _;
            s.set_nonblocking(true)?;
            let mut b = [0u8; 1];
            if matches!(s.read(&mut b), Ok(0)) {
                shed += 1;
            }
        }
        Ok((shed >= 100).then_some(shed))
    })?;
    drop(held);
    // Once they are gone the daemon answers again, and it said so without flooding its log.
    let s = wait_ready(&sock)?;
    ensure!(s.tun == "weft0");
    weftd.ensure_running()?;
    let log = weftd.log();
    let lines = log.matches("Out of file descriptors").count();
    ensure!(
        (1..=3).contains(&lines),
        "{lines} 'out of file descriptors' lines for {shed} shed connections:\n{log}"
    );
    Ok(())
}

/// systemd readiness (`Type=notify`, as weftd.service runs it): a logged-out
/// weftd sends READY=1 to NOTIFY_SOCKET, and at that moment its LocalAPI
/// answers (no polling: the status call is made once, right after READY=1).
/// Fails on a daemon that never notifies (no datagram within 30 s).
#[test]
fn weftd_tells_systemd_it_is_ready_once_the_localapi_answers() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let ns = lab.netns("n")?;
    let state = lab.dir().join("state/weftd.state");
    let sock = lab.dir().join("run/weftd.sock");
    let notify_path = lab.dir().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(30)))?;
    let _d = ns
        .command(WEFTD)
        .args(args(&state, &sock))
        .env("NOTIFY_SOCKET", notify_path.display().to_string())
        .spawn("weftd-notify")?;
    let mut buf = [0u8; 256];
    let n = notify
        .recv(&mut buf)
        .context("READY=1 on NOTIFY_SOCKET within 30 s")?;
    let s = status(&sock).context("the LocalAPI answers when READY=1 arrives")?;
    ensure!(String::from_utf8_lossy(&buf[..n]).trim() == "READY=1");
    ensure!(
        s.backend_state == BackendState::NeedsLogin,
        "a fresh weftd is ready logged out: {:?}",
        s.backend_state
    );
    Ok(())
}
