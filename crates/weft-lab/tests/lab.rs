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

/// A UDP reflector in `ns` on `addr`: answers each datagram with the source address it saw
/// (`ip:port` as text). Serves at most 16 datagrams and stops after 10 s without one.
fn udp_reflector(ns: &weft_lab::Netns, addr: SocketAddr) -> anyhow::Result<()> {
    let sock = ns.udp_socket(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        for _ in 0..16 {
            let Ok((_, from)) = sock.recv_from(&mut buf) else {
                return;
            };
            let _ = sock.send_to(from.to_string().as_bytes(), from);
        }
    });
    Ok(())
}

/// Sends one datagram from `sock` to `to` and returns the source address the far end saw, or
/// `None` when no answer comes within 1 s.
fn seen_from(sock: &std::net::UdpSocket, to: SocketAddr) -> anyhow::Result<Option<SocketAddr>> {
    sock.send_to(b"who am i", to)?;
    let mut buf = [0u8; 64];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            anyhow::ensure!(from == to, "answer from {from}, asked {to}");
            Ok(Some(std::str::from_utf8(&buf[..n])?.parse()?))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Each NAT kind of `weft_lab::nat` does what it claims, seen from two UDP reflectors on the
/// internet: one socket, two destinations. No NAT: our own address. Easy: the router's address,
/// the same port to both, our own port kept. Hard: the router's address, a different port per
/// destination. UDP blocked: no answer at all, while TCP through the same router works.
#[test]
fn nat_sites_map_udp_as_their_kind_claims() -> anyhow::Result<()> {
    use weft_lab::nat::{NatKind, Site};
    use weft_lab::tailnet::{Binaries, Tailnet};
    let lab = e2e_lab!("nft");
    // The tailnet's underlay is the internet; no weft binary runs in this test.
    let none = std::path::PathBuf::from("/nonexistent");
    let net = Tailnet::with_binaries(
        &lab,
        Binaries {
            control: none.clone(),
            weftd: none.clone(),
            weft: none,
        },
    )?;
    let (e1, a1) = net.attach("echo1")?;
    let (e2, a2) = net.attach("echo2")?;
    let (d1, d2) = (
        SocketAddr::new(a1.into(), 3478),
        SocketAddr::new(a2.into(), 3478),
    );
    const LOCAL_PORT: u16 = 40000;
    udp_reflector(&e1, d1)?;
    udp_reflector(&e2, d2)?;
    for (i, kind) in [
        NatKind::NoNat,
        NatKind::Easy,
        NatKind::Hard,
        NatKind::UdpBlocked,
    ]
    .into_iter()
    .enumerate()
    {
        let site = Site::new(&net, &format!("s{i}"), kind)?;
        let (host, own) = site.host(&format!("h{i}"))?;
        let sock = host.udp_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), LOCAL_PORT))?;
        sock.set_read_timeout(Some(Duration::from_secs(1)))?;
        let (s1, s2) = (seen_from(&sock, d1)?, seen_from(&sock, d2)?);
        let public = site.public_addr().map(IpAddr::from);
        match kind {
            NatKind::NoNat => {
                let own = SocketAddr::new(own.into(), LOCAL_PORT);
                assert_eq!((s1, s2), (Some(own), Some(own)), "{kind:?}");
                assert_eq!(public, None);
            }
            NatKind::Easy => {
                let mapped = SocketAddr::new(public.unwrap(), LOCAL_PORT);
                assert_eq!((s1, s2), (Some(mapped), Some(mapped)), "{kind:?}");
                // Hole punching: a peer's packet that arrives before ours is dropped and does
                // not disturb the mapping our packet to that peer makes afterwards.
                let peer = e1.udp_socket(SocketAddr::new(a1.into(), 3479))?;
                peer.set_read_timeout(Some(Duration::from_secs(1)))?;
                peer.send_to(b"early", (public.unwrap(), LOCAL_PORT + 1))?;
                let sock2 = host.udp_socket(SocketAddr::new(
                    Ipv4Addr::UNSPECIFIED.into(),
                    LOCAL_PORT + 1,
                ))?;
                sock2.set_read_timeout(Some(Duration::from_millis(300)))?;
                let mut buf = [0u8; 16];
                assert!(
                    sock2.recv_from(&mut buf).is_err(),
                    "an unsolicited packet got in"
                );
                sock2.send_to(b"punch", peer.local_addr()?)?;
                let (_, seen) = peer.recv_from(&mut buf)?;
                assert_eq!(
                    seen,
                    SocketAddr::new(public.unwrap(), LOCAL_PORT + 1),
                    "{kind:?}"
                );
                peer.send_to(b"back", seen)?;
                let (n, _) = sock2.recv_from(&mut buf)?;
                assert_eq!(&buf[..n], b"back");
            }
            NatKind::Hard => {
                let (s1, s2) = (s1.unwrap(), s2.unwrap());
                assert_eq!((s1.ip(), s2.ip()), (public.unwrap(), public.unwrap()));
                assert_ne!(
                    s1.port(),
                    s2.port(),
                    "{kind:?}: one mapping for two destinations"
                );
            }
            NatKind::UdpBlocked => {
                assert_eq!((s1, s2), (None, None), "{kind:?}");
                let r = tcp_transfer(
                    &host,
                    &e1,
                    SocketAddr::new(a1.into(), 5001),
                    64 * 1024,
                    Duration::from_secs(10),
                )?;
                r.verify()?;
            }
        }
        // The internet has no route to the LAN: only the router's address is reachable.
        if let Some(gw) = site.gateway() {
            assert!(
                e1.ping(own.into(), 1).is_err(),
                "{kind:?}: LAN reachable from outside"
            );
            host.ping(IpAddr::from(gw), 1)?;
        }
    }
    Ok(())
}

/// Roaming gives the host a new address behind the same router; the router maps it afresh.
#[test]
fn a_roaming_host_gets_a_new_lan_address_and_keeps_its_route_out() -> anyhow::Result<()> {
    use weft_lab::nat::{NatKind, Site};
    use weft_lab::tailnet::{Binaries, Tailnet};
    let lab = e2e_lab!("nft", "ping");
    let none = std::path::PathBuf::from("/nonexistent");
    let net = Tailnet::with_binaries(
        &lab,
        Binaries {
            control: none.clone(),
            weftd: none.clone(),
            weft: none,
        },
    )?;
    let (e1, a1) = net.attach("echo1")?;
    let site = Site::new(&net, "home", NatKind::Easy)?;
    let (host, old) = site.host("laptop")?;
    let new = site.roam(&host)?;
    assert_ne!(old, new);
    let addrs = host
        .ip(["-o", "-4", "addr", "show", "dev", weft_lab::nat::LAN_IF])?
        .stdout;
    assert!(
        addrs.contains(&format!("{new}/24")) && !addrs.contains(&format!("{old}/24")),
        "{addrs}"
    );
    host.ping(IpAddr::from(a1), 1)?;
    let d1 = SocketAddr::new(a1.into(), 3478);
    udp_reflector(&e1, d1)?;
    let sock = host.udp_socket(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 40001))?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    assert_eq!(
        seen_from(&sock, d1)?,
        Some(SocketAddr::new(site.public_addr().unwrap().into(), 40001))
    );
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

/// `/etc/sudoers.d/<name>` letting one test account run anything as root without a password,
/// removed on drop (the account itself goes with its [`LocalAccount`]).
struct SudoRule(std::path::PathBuf);

impl SudoRule {
    fn grant(user: &str) -> anyhow::Result<Self> {
        // sudo ignores files in sudoers.d whose names contain a dot or end in `~`.
        let path = std::path::Path::new("/etc/sudoers.d").join(format!("weft-lab-{user}"));
        std::fs::write(&path, format!("{user} ALL=(root) NOPASSWD: ALL\n"))?;
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o440))?;
        Ok(SudoRule(path))
    }
}

impl Drop for SudoRule {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The README's first command typed by a sudo user instead of root: `./target/debug/weft-demo`
/// runs itself again through the real `sudo` (the account may use it without a password here;
/// a person would be asked for theirs) and the tailnet comes up as for root.
#[test]
fn the_readme_demo_runs_for_a_sudo_user_through_sudo() -> anyhow::Result<()> {
    let _lab = e2e_lab!("ping", "sudo", "runuser", "/dev/net/tun");
    let user = weft_lab::account::LocalAccount::create("wd", "s")?;
    let _rule = SudoRule::grant(&user.name)?;
    let demo = env!("CARGO_BIN_EXE_weft-demo");
    let out = host_command("runuser")
        .args(["-u", &user.name, "--", demo, "--once"])
        .timeout(Duration::from_secs(180))
        .run_unchecked()?;
    assert!(
        out.status.success(),
        "weft-demo --once failed for a sudo user: {}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("running it again with sudo"),
        "{}",
        out.stderr
    );
    for node in ["alpha", "beta", "gamma"] {
        assert!(out.stdout.contains(node), "{node} missing: {}", out.stdout);
    }
    assert!(out.stdout.contains("pong from"), "{}", out.stdout);
    Ok(())
}
