//! `Control` with the real core and engine: listen-port changes through the
//! UAPI rebind the socket, and a refused rebind leaves the device as it was.
//! Needs root (a TUN device in a private network namespace); skipped
//! otherwise unless `WEFT_E2E=1`.

use std::net::UdpSocket;

use super::*;

fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("WEFT_E2E").is_none_or(|v| v != "1"),
        "WEFT_E2E=1 but not root: this test needs CAP_NET_ADMIN"
    );
    false
}

/// Runs `f` on a thread inside a new, empty network namespace.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f();
    })
    .join()
    .unwrap();
}

fn control(name: &str) -> Control {
    let tun = Tun::create(&TunConfig::new(name)).unwrap();
    let device = Arc::new(Device::new(now(), crate::clock::wall()));
    let engine = Engine::start(Arc::clone(&device), tun, EngineConfig::default()).unwrap();
    Control::new(device, engine)
}

fn reported_port(c: &Control) -> Option<u16> {
    c.get()
        .lines()
        .find_map(|l| l.strip_prefix("listen_port="))
        .and_then(|p| p.parse().ok())
}

fn free_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_port_picked_at_start_is_the_one_reported() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let c = control("wdt0");
        assert_ne!(c.engine.listen_port(), 0);
        assert_eq!(reported_port(&c), Some(c.engine.listen_port()));
    });
}

#[test]
fn setting_the_listen_port_rebinds_the_socket() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let c = control("wdt1");
        let port = free_port();
        c.set(&format!("listen_port={port}\n")).unwrap();
        assert_eq!(c.engine.listen_port(), port);
        assert_eq!(reported_port(&c), Some(port));
        // The old port is free again; the new one is ours.
        assert!(UdpSocket::bind(("0.0.0.0", port)).is_err());

        c.set("listen_port=0\n").unwrap();
        let picked = c.engine.listen_port();
        assert_ne!(picked, 0);
        assert_ne!(picked, port);
        assert_eq!(reported_port(&c), Some(picked));
    });
}

#[test]
fn a_taken_port_is_refused_and_the_old_one_kept() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let c = control("wdt2");
        let before = c.engine.listen_port();
        let taken = UdpSocket::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let refusal = c.set(&format!("listen_port={port}\n")).unwrap_err();
        assert_eq!(refusal.errno, -libc::EADDRINUSE, "{refusal:?}");
        assert_eq!(c.engine.listen_port(), before);
        assert_eq!(reported_port(&c), Some(before));
    });
}

#[test]
fn a_fwmark_set_through_the_uapi_reaches_the_socket() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let c = control("wdt3");
        c.set("fwmark=51820\n").unwrap();
        assert!(c.get().contains("fwmark=51820\n"), "{}", c.get());
        assert_eq!(c.engine.socket_fwmark().unwrap(), 51820);
        c.set("listen_port=0\n").unwrap();
        assert_eq!(
            c.engine.socket_fwmark().unwrap(),
            51820,
            "kept across a rebind"
        );
        c.set("fwmark=0\n").unwrap();
        assert_eq!(c.engine.socket_fwmark().unwrap(), 0);
    });
}
