//! The engine with a pass-through "tunnel": IP packets travel inside UDP
//! datagrams unencrypted. It measures what the I/O machinery alone (TUN
//! offloads, GSO/GRO, batching, threads) can carry, without crypto.
//!
//! ```text
//! passthrough <iface> <listen_port> <peer_ip:port> [--no-offload]
//! ```
//! Then give the interface an address and bring it up. Never use it for
//! anything but measurements between namespaces you own.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use weft_net::{Engine, EngineConfig, Offload, Tun, TunConfig, Tunnel};
use weft_packet::IpPacket;
use weft_wg::{Decapsulated, DropReason, Encapsulated};

struct PassThrough {
    peer: SocketAddr,
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
        let p = &mut out[..datagram.len()];
        p.copy_from_slice(datagram);
        match IpPacket::new(p) {
            Ok(ip) => Decapsulated::ToTunnel(ip),
            Err(_) => Decapsulated::Dropped(DropReason::BadInnerPacket),
        }
    }

    fn handle_timeout(&self, _now: Instant, _send: &mut dyn FnMut(SocketAddr, &[u8])) {}
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: passthrough <iface> <listen_port> <peer_ip:port> [--no-offload]");
        std::process::exit(2);
    }
    let offload = if args.iter().any(|a| a == "--no-offload") {
        Offload::Off
    } else {
        Offload::Auto
    };
    let mut signals = nix::sys::signal::SigSet::empty();
    signals.add(nix::sys::signal::Signal::SIGINT);
    signals.add(nix::sys::signal::Signal::SIGTERM);
    signals.thread_block().unwrap();
    let tun = Tun::create(&TunConfig {
        offload,
        ..TunConfig::new(&args[1])
    })
    .unwrap();
    let tunnel = Arc::new(PassThrough {
        peer: args[3].parse().unwrap(),
    });
    let engine = Engine::start(
        tunnel,
        tun,
        EngineConfig {
            listen_port: args[2].parse().unwrap(),
            fwmark: 0,
        },
    )
    .unwrap();
    println!("up on port {}", engine.listen_port());
    let _ = signals.wait();
    println!("{:?}", engine.stats());
    engine.shutdown();
}
