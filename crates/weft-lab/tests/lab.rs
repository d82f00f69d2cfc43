//! The harness tested on itself, as root in network namespaces (skips otherwise; fails under
//! `WEFT_E2E=1`).
#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use weft_lab::{
    LabError, Signal, WgDaemon, WgDevice, WgKeyPair, e2e_lab, host_command, names, tcp_transfer,
    wait_until, wg_socket_path,
};

fn ns_exists(name: &str) -> bool {
    std::path::Path::new(weft_lab::NETNS_DIR)
        .join(name)
        .exists()
}

#[test]
fn namespaces_and_their_processes_are_gone_after_the_lab_is_dropped() -> anyhow::Result<()> {
    let lab = e2e_lab!("sleep");
    let a = lab.netns("a")?;
    assert!(
        a.name()
            .starts_with(&format!("weft-{}-", std::process::id())),
        "{}",
        a.name()
    );
    assert!(ns_exists(a.name()));
    // A process nobody holds a handle to: the Lab must still stop it.
    let p = a.spawn("sleeper", "sleep", ["600"])?;
    let pid = p.pid();
    std::mem::forget(p);
    let name = a.name().to_owned();
    drop(lab);
    assert!(!ns_exists(&name), "{name} survived the Lab");
    wait_until(
        Duration::from_secs(5),
        "the orphaned sleeper to be reaped or gone",
        || {
            // It was our child: it is a zombie until reaped, which is fine; it must not be running.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            Ok(stat.is_empty() || stat.contains(") Z "))
        },
    )?;
    Ok(())
}

#[test]
fn a_link_connects_two_namespaces_on_distinct_subnets() -> anyhow::Result<()> {
    let lab = e2e_lab!("ping");
    let (a, b, c) = (lab.netns("a")?, lab.netns("b")?, lab.netns("c")?);
    let ab = lab.link(&a, &b)?;
    let ac = lab.link(&a, &c)?;
    assert_ne!(ab.subnet, ac.subnet);
    assert_eq!(ab.a.ifname, "to-b");
    assert_eq!(ab.b.ifname, "to-a");
    for l in [&ab, &ac] {
        assert_eq!(l.subnet.octets()[0], 198);
        assert!((18..=19).contains(&l.subnet.octets()[1]), "{:?}", l.subnet);
    }
    a.ping(IpAddr::V4(ab.b.addr), 2)?;
    c.ping(IpAddr::V4(ac.a.addr), 2)?;
    // b and c are not connected to each other.
    assert!(
        b.command("ping")
            .args(["-c1", "-W1", &ac.b.addr.to_string()])
            .run()
            .is_err()
    );
    Ok(())
}

#[test]
fn a_router_forwards_between_its_links() -> anyhow::Result<()> {
    let lab = e2e_lab!("ping", "nft");
    let (a, r, b) = (lab.netns("a")?, lab.router("r")?, lab.netns("b")?);
    let ar = lab.link(&a, &r)?;
    let rb = lab.link(&r, &b)?;
    a.add_route("default", IpAddr::V4(ar.b.addr))?;
    b.add_route("default", IpAddr::V4(rb.a.addr))?;
    a.ping(IpAddr::V4(rb.b.addr), 2)?;
    // With masquerade on the b side, b sees a's packets coming from the router.
    r.masquerade(&rb.a.ifname)?;
    let sock = b.udp_socket(SocketAddr::new(IpAddr::V4(rb.b.addr), 4000))?;
    sock.set_read_timeout(Some(Duration::from_secs(5)))?;
    let tx = a.udp_socket("0.0.0.0:0".parse()?)?;
    tx.send_to(b"hello", SocketAddr::new(IpAddr::V4(rb.b.addr), 4000))?;
    let mut buf = [0u8; 16];
    let (n, from) = sock.recv_from(&mut buf)?;
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(from.ip(), IpAddr::V4(rb.a.addr), "not masqueraded");
    Ok(())
}

#[test]
fn a_failed_command_reports_its_command_line_status_and_output() -> anyhow::Result<()> {
    let lab = e2e_lab!("sh");
    let a = lab.netns("a")?;
    let err = a
        .exec("sh", ["-c", "echo to-out; echo to-err >&2; exit 3"])
        .unwrap_err();
    let msg = err.to_string();
    for want in ["sh -c", a.name(), "exit status: 3", "to-out", "to-err"] {
        assert!(msg.contains(want), "missing {want:?} in:\n{msg}");
    }
    let err = a
        .command("sleep")
        .arg("30")
        .timeout(Duration::from_millis(300))
        .run()
        .unwrap_err();
    assert!(matches!(err, LabError::CommandTimeout { .. }), "{err}");
    Ok(())
}

#[test]
fn a_process_is_stopped_by_sigterm_and_its_log_is_kept() -> anyhow::Result<()> {
    let lab = e2e_lab!("sh");
    let a = lab.netns("a")?;
    let p = a.spawn(
        "echoer",
        "sh",
        [
            "-c",
            "echo started; trap 'echo got-term; exit 7' TERM; while :; do sleep 0.05; done",
        ],
    )?;
    wait_until(Duration::from_secs(5), "echoer to start", || {
        Ok(p.log().contains("started"))
    })?;
    assert!(p.is_running());
    p.signal(Signal::SIGTERM)?;
    let status = p.wait_exit(Duration::from_secs(5))?;
    assert_eq!(status.code(), Some(7));
    assert!(p.log().contains("got-term"), "{}", p.log());
    assert!(
        p.signal(Signal::SIGTERM).is_err(),
        "signalled an exited process"
    );
    assert!(p.report().contains("exited"), "{}", p.report());
    Ok(())
}

#[test]
fn sockets_made_inside_a_namespace_carry_a_checked_tcp_transfer() -> anyhow::Result<()> {
    let lab = e2e_lab!();
    let (a, b) = (lab.netns("a")?, lab.netns("b")?);
    let l = lab.link(&a, &b)?;
    let report = tcp_transfer(
        &a,
        &b,
        SocketAddr::new(IpAddr::V4(l.b.addr), 5001),
        8 << 20,
        Duration::from_secs(30),
    )?;
    report.verify()?;
    assert_eq!(report.bytes_received, 8 << 20);
    // The root namespace has no such address: binding there fails, proving enter() switched.
    assert!(std::net::UdpSocket::bind(SocketAddr::new(IpAddr::V4(l.b.addr), 0)).is_err());
    Ok(())
}

#[test]
fn leftovers_of_a_dead_run_are_removed_and_those_of_live_runs_are_not() -> anyhow::Result<()> {
    let lab = e2e_lab!("true");
    // A PID that surely belongs to nobody now: a child that has exited and been reaped.
    let dead = {
        let mut c = std::process::Command::new("true").spawn()?;
        let pid = c.id();
        c.wait()?;
        pid
    };
    let dead_ns = format!("weft-{dead}-0bad-x");
    host_command("ip").args(["netns", "add", &dead_ns]).run()?;
    std::fs::create_dir_all(weft_lab::WG_SOCKET_DIR)?;
    let dead_sock = wg_socket_path(&names::ifname_for(dead, 0));
    std::fs::write(&dead_sock, "")?;
    let dead_dir = weft_lab::runs_root().join(format!("weft-{dead}-0bad"));
    std::fs::create_dir_all(&dead_dir)?;
    let live = lab.netns("live")?;

    let problems = weft_lab::cleanup_stale();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(!ns_exists(&dead_ns), "stale namespace survived");
    assert!(!dead_sock.exists(), "stale socket survived");
    assert!(!dead_dir.exists(), "stale run dir survived");
    assert!(
        ns_exists(live.name()),
        "cleanup removed a live run's namespace"
    );
    assert!(lab.dir().exists(), "cleanup removed a live run's dir");
    Ok(())
}

#[test]
fn two_wireguard_go_devices_configured_with_wg_reach_each_other() -> anyhow::Result<()> {
    let lab = e2e_lab!("wg", "wireguard-go", "ping", "/dev/net/tun");
    let (a, b) = (lab.netns("a")?, lab.netns("b")?);
    let link = lab.link(&a, &b)?;
    let wa = WgDevice::start(&lab, &a, &WgDaemon::wireguard_go())?;
    let wb = WgDevice::start(&lab, &b, &WgDaemon::wireguard_go())?;
    assert!(wa.ifname.len() <= names::IFNAME_MAX);
    let (ka, kb) = (WgKeyPair::generate()?, WgKeyPair::generate()?);
    wa.setconf(&format!(
        "[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\nEndpoint = {}:51820\nAllowedIPs = 100.64.0.2/32\n",
        ka.private, kb.public, link.b.addr
    ))?;
    wb.setconf(&format!("[Interface]\nPrivateKey = {}\nListenPort = 51820\n\n[Peer]\nPublicKey = {}\nAllowedIPs = 100.64.0.1/32\n", kb.private, ka.public))?;
    wa.up("100.64.0.1/24", 1420)?;
    wb.up("100.64.0.2/24", 1420)?;
    weft_lab::with_diagnostics(
        || {
            a.wait_ping(
                IpAddr::V4(Ipv4Addr::new(100, 64, 0, 2)),
                Duration::from_secs(15),
            )?;
            let d = wa.dump()?;
            let p = d
                .peer(&kb.public)
                .ok_or_else(|| anyhow::anyhow!("peer missing"))?;
            anyhow::ensure!(p.latest_handshake > 0 && p.rx_bytes > 0, "{p:?}");
            let resp = wa.uapi("get=1\n\n")?;
            anyhow::ensure!(weft_lab::uapi_errno(&resp) == Some(0), "{resp}");
            anyhow::ensure!(
                resp.contains(&format!("public_key={}", kb.public_hex()?)),
                "{resp}"
            );
            Ok(())
        },
        || format!("{}\n{}", wa.report(), wb.report()),
    )?;
    let sock = wg_socket_path(&wa.ifname);
    drop(wa);
    assert!(!sock.exists(), "wireguard-go left its socket behind");
    Ok(())
}

/// The README's first command on a fresh root machine without `sudo`: the command as the README
/// writes it has no `sudo`, and `target/debug/weft-demo --once` (the same binary, the short mode
/// so that it ends by itself) runs with a `PATH` from which `sudo` is removed, builds its tailnet,
/// prints every node's status and its pings, and tears everything down.
#[test]
fn the_readme_demo_runs_as_root_on_a_machine_without_sudo() -> anyhow::Result<()> {
    let lab = e2e_lab!("ping", "/dev/net/tun");
    let readme = include_str!("../../../README.md");
    let first = "cargo build --workspace --bins && ./target/debug/weft-demo";
    assert!(
        readme.contains(&format!("```sh\n{first}\n```")),
        "README's first command changed; update this test with it"
    );
    assert!(
        readme.contains("cargo test --workspace --locked"),
        "README's second command changed"
    );
    // Every directory of PATH, mirrored without `sudo`: a machine where it is not installed.
    let bin = lab.dir().join("path-without-sudo");
    std::fs::create_dir_all(&bin)?;
    let path = std::env::var("PATH").unwrap_or_default();
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let link = bin.join(&name);
            if name == "sudo" || link.exists() {
                continue;
            }
            std::os::unix::fs::symlink(e.path(), &link)?;
        }
    }
    assert!(!bin.join("sudo").exists());
    let demo = env!("CARGO_BIN_EXE_weft-demo");
    let out = host_command(demo)
        .arg("--once")
        .env("PATH", bin.display().to_string())
        .timeout(Duration::from_secs(180))
        .run_unchecked()?;
    assert!(
        out.status.success(),
        "weft-demo --once failed without sudo: {}\n{}",
        out.stdout,
        out.stderr
    );
    for node in ["alpha", "beta", "gamma"] {
        assert!(out.stdout.contains(node), "{node} missing: {}", out.stdout);
    }
    assert!(
        out.stdout.contains("pong from"),
        "no weft ping answered: {}",
        out.stdout
    );
    assert!(!format!("{}{}", out.stdout, out.stderr).contains("sudo"));
    Ok(())
}
