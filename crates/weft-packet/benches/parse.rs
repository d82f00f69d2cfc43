//! Measures ns/packet of [`IpPacket::new`] on the packets the data plane
//! sees most and prints them. Prints only; no assertions on timing.
//!
//! Run with `cargo bench -p weft-packet`.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::disallowed_methods)]

use std::hint::black_box;
use std::time::Instant;

use weft_packet::{IpPacket, Transport};

const PACKETS: u32 = 5_000_000;

/// A TCP segment with 12 bytes of options (timestamps) and `len` bytes of data.
fn tcp(v6: bool, len: usize) -> Vec<u8> {
    let mut l4 = vec![0u8; 32 + len];
    l4[0..2].copy_from_slice(&50000u16.to_be_bytes());
    l4[2..4].copy_from_slice(&22u16.to_be_bytes());
    l4[12] = 8 << 4;
    l4[13] = 0x18;
    ip(v6, 6, &l4)
}

fn udp(v6: bool, len: usize) -> Vec<u8> {
    let mut l4 = vec![0u8; 8 + len];
    l4[0..2].copy_from_slice(&53u16.to_be_bytes());
    l4[2..4].copy_from_slice(&40000u16.to_be_bytes());
    l4[4..6].copy_from_slice(&u16::try_from(8 + len).unwrap().to_be_bytes());
    ip(v6, 17, &l4)
}

fn ip(v6: bool, proto: u8, l4: &[u8]) -> Vec<u8> {
    let mut p = if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&u16::try_from(l4.len()).unwrap().to_be_bytes());
        h[6] = proto;
        h[8] = 0xfd;
        h[24] = 0xfd;
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&u16::try_from(20 + l4.len()).unwrap().to_be_bytes());
        h[9] = proto;
        h[12..16].copy_from_slice(&[100, 64, 0, 2]);
        h[16..20].copy_from_slice(&[100, 64, 0, 1]);
        h
    };
    p.extend_from_slice(l4);
    p
}

fn main() {
    let cases = [
        ("TCP data segment, IPv4, 1,400 bytes", tcp(false, 1400)),
        ("TCP data segment, IPv6, 1,400 bytes", tcp(true, 1400)),
        ("UDP datagram, IPv4, 100 bytes", udp(false, 100)),
    ];
    for (name, packet) in &cases {
        let mut ports = 0u64;
        let start = Instant::now();
        for _ in 0..PACKETS {
            let ip = IpPacket::new(black_box(packet)).unwrap();
            if let Transport::Tcp(t) = black_box(ip).transport() {
                ports += u64::from(t.dst_port());
            }
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(PACKETS);
        println!("IpPacket::new, {name:<40} {ns:>6.1} ns/packet");
        black_box(ports);
    }
}
