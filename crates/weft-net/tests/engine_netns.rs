//! The engine's I/O machinery (TUN with offloads, batched UDP, rebinding,
//! shutdown) driven by a pass-through "tunnel" that copies packets into
//! datagrams unchanged. Each test runs on a thread moved into a fresh
//! network namespace, so all traffic stays there and the namespace goes
//! away with the thread.
//!
//! Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); skipped otherwise, unless
//! `WEFT_E2E=1`, which turns a missing privilege into a failure.
#![allow(clippy::unwrap_used)]
// These tests time real I/O (promptness of shutdown, timer ticks).
#![allow(clippy::disallowed_methods)]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_net::{Engine, EngineConfig, Offload, Tun, TunConfig, Tunnel};
use weft_packet::IpPacket;
use weft_wg::{Decapsulated, DropReason, Encapsulated};

const TUN_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 7, 1);
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(100, 64, 7, 2);

/// Seals by copying; "sends" everything to one fixed endpoint.
struct PassThrough {
    peer: SocketAddr,
    ticks: AtomicU64,
    empty_datagrams: AtomicU64,
}

impl Tunnel for PassThrough {
    fn encapsulate<'o>(
        &self,
        packet: IpPacket<'_>,
        out: &'o mut [u8],
        _now: Instant,
        _send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Encapsulated<'o> {
        let packet = packet.as_bytes();
        let d = &mut out[..packet.len()];
        d.copy_from_slice(packet);
        Encapsulated::Send {
            to: self.peer,
            datagram: d,
        }
    }

    fn decapsulate<'o>(
        &self,
        _from: SocketAddr,
        datagram: &[u8],
        out: &'o mut [u8],
        _now: Instant,
        _send: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Decapsulated<'o> {
        if datagram.is_empty() {
            self.empty_datagrams.fetch_add(1, Ordering::Relaxed);
        }
        let p = &mut out[..datagram.len()];
        p.copy_from_slice(datagram);
        match IpPacket::new(p) {
            Ok(ip) => Decapsulated::ToTunnel(ip),
            Err(_) => Decapsulated::Dropped(DropReason::BadInnerPacket),
        }
    }

    fn handle_timeout(&self, _now: Instant, _send: &mut dyn FnMut(SocketAddr, &[u8])) {
        self.ticks.fetch_add(1, Ordering::Relaxed);
    }
}

fn privileged() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("WEFT_E2E").is_none_or(|v| v != "1"),
        "WEFT_E2E=1 but not root: this test needs CAP_NET_ADMIN"
    );
    eprintln!("skipped: needs root");
    false
}

/// Runs `f` on a thread inside a new, empty network namespace (lo up).
fn in_netns(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set lo up");
        f();
    })
    .join()
    .unwrap();
}

/// A minimal IPv4/UDP packet (UDP checksum 0 = none, allowed over IPv4).
fn udp_packet(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (SocketAddr::V4(s), SocketAddr::V4(d)) = (src, dst) else {
        panic!("IPv4 only")
    };
    let total = 20 + 8 + payload.len();
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40;
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&s.ip().octets());
    p[16..20].copy_from_slice(&d.ip().octets());
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&s.port().to_be_bytes());
    p[22..24].copy_from_slice(&d.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// A blocking test socket with room for a few hundred queued datagrams.
fn test_socket(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &(4 << 20)).unwrap();
    s
}

fn start(name: &str, offload: Offload) -> (Engine<PassThrough>, Arc<PassThrough>, UdpSocket) {
    let peer = test_socket(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    let tunnel = Arc::new(PassThrough {
        peer: peer.local_addr().unwrap(),
        ticks: AtomicU64::new(0),
        empty_datagrams: AtomicU64::new(0),
    });
    let tun = Tun::create(&TunConfig {
        offload,
        ipv4: Some((TUN_ADDR, 24)),
        ..TunConfig::new(name)
    })
    .unwrap();
    let engine = Engine::start(Arc::clone(&tunnel), tun, EngineConfig::default()).unwrap();
    (engine, tunnel, peer)
}

fn exercise_both_directions(offload: Offload) {
    let (engine, tunnel, peer) = start("wnt0", offload);
    let app = test_socket(SocketAddr::from((TUN_ADDR, 0)));
    let far = SocketAddr::from((PEER_ADDR, 9999));

    // TUN → engine → UDP: the peer gets the raw IP packet.
    for i in 0..200u32 {
        app.send_to(&[(i % 251) as u8; 1000], far).unwrap();
    }
    let mut buf = [0u8; 2048];
    let mut got = 0;
    while got < 200 {
        let (n, from) = peer
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("after {got} packets: {e}; {:?}", engine.stats()));
        assert_eq!(from.port(), engine.listen_port());
        if buf[0] >> 4 != 4 {
            continue; // the kernel's own IPv6 chatter on a new link
        }
        assert_eq!(n, 1028, "IPv4 + UDP + payload");
        assert_eq!(buf[9], 17);
        assert_eq!(&buf[16..20], &PEER_ADDR.octets());
        assert_eq!(buf[28], (got % 251) as u8, "in order");
        got += 1;
    }

    // UDP → engine → TUN: the app gets the payload from the far address.
    let to_engine = SocketAddr::from((Ipv4Addr::LOCALHOST, engine.listen_port()));
    let app_addr = app.local_addr().unwrap();
    for i in 0..200u32 {
        let payload = format!("reply {i}");
        peer.send_to(&udp_packet(far, app_addr, payload.as_bytes()), to_engine)
            .unwrap();
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 200 {
        let (n, from) = app.recv_from(&mut buf).unwrap();
        assert_eq!(from, far);
        seen.insert(String::from_utf8(buf[..n].to_vec()).unwrap());
    }
    // An empty datagram reaches the core too (which counts it as malformed),
    // and the empty "packet" the pass-through makes of it breaks nothing.
    peer.send_to(&[], to_engine).unwrap();
    peer.send_to(&udp_packet(far, app_addr, b"after empty"), to_engine)
        .unwrap();
    let (n, _) = app.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"after empty");
    assert_eq!(tunnel.empty_datagrams.load(Ordering::Relaxed), 1);

    let stats = engine.stats();
    assert!(stats.udp_recv_datagrams >= 200, "{stats:?}");
    assert!(stats.tun_read_packets >= 200, "{stats:?}");
    assert!(
        stats.udp_send_errors == 0 && stats.tun_write_errors == 0,
        "{stats:?}"
    );

    // Timers tick.
    let t0 = tunnel.ticks.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(3);
    while tunnel.ticks.load(Ordering::Relaxed) < t0 + 2 {
        assert!(Instant::now() < deadline, "timer thread does not tick");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn packets_cross_the_engine_both_ways_with_offloads() {
    if !privileged() {
        return;
    }
    in_netns(|| exercise_both_directions(Offload::Auto));
}

#[test]
fn packets_cross_the_engine_both_ways_without_offloads() {
    if !privileged() {
        return;
    }
    in_netns(|| exercise_both_directions(Offload::Off));
}

#[test]
fn offloads_are_on_for_a_fresh_device_on_this_kernel() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let tun = Tun::create(&TunConfig::new("wnt1")).unwrap();
        assert!(tun.offload(), "IFF_VNET_HDR + TSO should be available");
    });
}

#[test]
fn rebinding_moves_traffic_to_the_new_port() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let (engine, _tunnel, peer) = start("wnt2", Offload::Auto);
        let app = test_socket(SocketAddr::from((TUN_ADDR, 0)));
        let far = SocketAddr::from((PEER_ADDR, 9999));
        let old = engine.listen_port();
        assert_eq!(engine.rebind(old).unwrap(), old, "same port: no-op");
        let new = engine.rebind(0).unwrap();
        assert_ne!(new, old);
        assert_eq!(engine.listen_port(), new);

        let taken = UdpSocket::bind("0.0.0.0:0").unwrap();
        let err = engine
            .rebind(taken.local_addr().unwrap().port())
            .unwrap_err();
        assert!(err.to_string().contains("cannot bind"), "{err}");
        assert_eq!(
            engine.listen_port(),
            new,
            "a failed rebind keeps the socket"
        );

        let pkt = udp_packet(far, app.local_addr().unwrap(), b"after rebind");
        peer.send_to(&pkt, (Ipv4Addr::LOCALHOST, new)).unwrap();
        let mut buf = [0u8; 64];
        let (n, _) = app.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"after rebind");
        // Outgoing traffic uses the new port too.
        app.send_to(b"x", far).unwrap();
        let mut buf = [0u8; 2048];
        loop {
            let (_, from) = peer.recv_from(&mut buf).unwrap();
            if buf[0] >> 4 == 4 {
                assert_eq!(from.port(), new);
                break;
            }
        }
    });
}

#[test]
fn shutdown_is_prompt_and_deletes_the_interface() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let (engine, _tunnel, _peer) = start("wnt3", Offload::Auto);
        assert!(nix::net::if_::if_nametoindex("wnt3").is_ok());
        let t = Instant::now();
        engine.shutdown();
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "took {:?}",
            t.elapsed()
        );
        assert!(
            nix::net::if_::if_nametoindex("wnt3").is_err(),
            "interface still there"
        );
    });
}

#[test]
fn deleting_the_interface_is_reported_as_a_failure() {
    if !privileged() {
        return;
    }
    in_netns(|| {
        let (engine, _tunnel, _peer) = start("wnt4", Offload::Auto);
        let ok = std::process::Command::new("ip")
            .args(["link", "del", "wnt4"])
            .status()
            .unwrap()
            .success();
        assert!(ok);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !engine.failed().is_set() {
            assert!(Instant::now() < deadline, "no failure reported");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(engine.failure().is_some());
        engine.shutdown();
    });
}
