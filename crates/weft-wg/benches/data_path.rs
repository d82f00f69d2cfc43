//! Encapsulates and decapsulates 100k packets between two in-memory devices
//! and prints ns/packet, next to the bare session (boringtun plus our clock
//! shim) for comparison. Prints only; no assertions on timing.
//!
//! Run with `cargo bench -p weft-wg`.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_packet::IpPacket;
use weft_types::NodePrivate;
use weft_wg::session::{BoringSession, Clock, SessionOutput, WgSession};
use weft_wg::{Decapsulated, Device, DeviceUpdate, Encapsulated, PeerUpdate};

const PACKETS: u32 = 100_000;

/// An IPv4/UDP packet of `len` bytes, 100.64.0.1 → 100.64.0.2.
fn packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
    p
}

/// The view the engine builds of each packet it reads from TUN; built in
/// the loop, so encapsulation is measured with its one parse as before.
fn view(p: &[u8]) -> IpPacket<'_> {
    IpPacket::new(p).unwrap()
}

fn device(now: Instant, me: u8, peer: u8) -> Device {
    let dev = Device::new(
        now,
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
    );
    let mut u = PeerUpdate::new(NodePrivate::from_bytes([peer; 32]).public());
    u.endpoint = Some(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(198, 18, 0, peer)),
        51820,
    ));
    u.allowed_ips = vec![IpNet::new(IpAddr::V4(Ipv4Addr::new(100, 64, 0, peer)), 32).unwrap()];
    let key = Some(Some(NodePrivate::from_bytes([me; 32])));
    dev.apply(
        DeviceUpdate {
            private_key: key,
            peers: vec![u],
            ..Default::default()
        },
        now,
    );
    dev
}

fn bench_devices(size: usize) {
    let now = Instant::now();
    let (a, b) = (device(now, 1, 2), device(now, 2, 1));
    let from_a = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1)), 51820);
    let p = packet(size);
    let mut out = vec![0u8; 65_536];
    let mut rx = vec![0u8; 65_536];
    // Handshake: ping-pong the datagrams by hand until quiet.
    let mut pending: Vec<(bool, Vec<u8>)> = Vec::new();
    let _ = a.encapsulate(view(&p), &mut out, now, &mut |_, d| {
        pending.push((true, d.to_vec()))
    });
    while let Some((to_b, d)) = pending.pop() {
        let (dev, from) = if to_b {
            (&b, from_a)
        } else {
            (&a, SocketAddr::from(([198, 18, 0, 2], 51820)))
        };
        let mut next = Vec::new();
        let _ = dev.decapsulate(from, &d, &mut rx, now, &mut |_, r| {
            next.push((!to_b, r.to_vec()))
        });
        pending.extend(next);
    }

    // Encapsulate alone, then encapsulate + decapsulate; the difference is
    // the decapsulation cost. Nothing is stored, so no allocation or cache
    // misses on 100k datagrams pollute the figures.
    let t = Instant::now();
    for i in 0..PACKETS {
        let now = now + Duration::from_micros(u64::from(i));
        let Encapsulated::Send { .. } = a.encapsulate(view(&p), &mut out, now, &mut |_, _| {})
        else {
            panic!()
        };
    }
    let enc = t.elapsed();
    let t = Instant::now();
    for i in 0..PACKETS {
        let now = now + Duration::from_micros(u64::from(PACKETS + i));
        let Encapsulated::Send { datagram, .. } =
            a.encapsulate(view(&p), &mut out, now, &mut |_, _| {})
        else {
            panic!()
        };
        let Decapsulated::ToTunnel(_) =
            b.decapsulate(from_a, datagram, &mut rx, now, &mut |_, _| {})
        else {
            panic!()
        };
    }
    let dec = t.elapsed().saturating_sub(enc);
    report("Device", size, enc, dec);
}

fn bench_sessions(size: usize) {
    let now = Instant::now();
    let clock = Clock::new(now, SystemTime::UNIX_EPOCH);
    let (ka, kb) = (
        NodePrivate::from_bytes([1; 32]),
        NodePrivate::from_bytes([2; 32]),
    );
    let mut a = BoringSession::new(&ka, &kb.public(), None, 1, clock, now);
    let mut b = BoringSession::new(&kb, &ka.public(), None, 2, clock, now);
    let (mut out, mut rx) = (vec![0u8; 65_536], vec![0u8; 65_536]);
    let SessionOutput::Network(init) = a.initiate_handshake(&mut out, now) else {
        panic!()
    };
    let init = init.to_vec();
    let SessionOutput::Network(resp) = b.decapsulate(None, &init, &mut rx, now) else {
        panic!()
    };
    let resp = resp.to_vec();
    let SessionOutput::Network(ka_) = a.decapsulate(None, &resp, &mut out, now) else {
        panic!()
    };
    let ka_ = ka_.to_vec();
    let _ = b.decapsulate(None, &ka_, &mut rx, now);

    let p = packet(size);
    let t = Instant::now();
    for i in 0..PACKETS {
        let now = now + Duration::from_micros(u64::from(i));
        let SessionOutput::Network(_) = a.encapsulate(&p, &mut out, now) else {
            panic!()
        };
    }
    let enc = t.elapsed();
    let t = Instant::now();
    for i in 0..PACKETS {
        let now = now + Duration::from_micros(u64::from(PACKETS + i));
        let SessionOutput::Network(d) = a.encapsulate(&p, &mut out, now) else {
            panic!()
        };
        let SessionOutput::Tunnel(_) = b.decapsulate(None, d, &mut rx, now) else {
            panic!()
        };
    }
    let dec = t.elapsed().saturating_sub(enc);
    report("BoringSession", size, enc, dec);
}

fn report(what: &str, size: usize, enc: Duration, dec: Duration) {
    let per = |d: Duration| d.as_nanos() as f64 / f64::from(PACKETS);
    let gbps = |d: Duration| (size as f64 * 8.0 * f64::from(PACKETS)) / d.as_secs_f64() / 1e9;
    println!(
        "{what:>14} {size:>5} B: encapsulate {:>7.0} ns/packet ({:>5.2} Gbit/s), decapsulate {:>7.0} ns/packet ({:>5.2} Gbit/s)",
        per(enc),
        gbps(enc),
        per(dec),
        gbps(dec),
    );
}

fn main() {
    for size in [64, 1420] {
        bench_sessions(size);
        bench_devices(size);
    }
}
