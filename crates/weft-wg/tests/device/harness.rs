//! An in-memory network of `Device`s on virtual time: datagrams go into a
//! queue and the test decides when (and whether) they arrive.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;
use weft_packet::IpPacket;
use weft_types::{NodePrivate, NodePublic};
use weft_wg::{Decapsulated, Device, DeviceUpdate, DropReason, Encapsulated, PeerUpdate};

/// The one place tests read the clock: a base `Instant` to add virtual time to.
#[allow(clippy::disallowed_methods)]
pub fn base_instant() -> Instant {
    Instant::now()
}

/// A fixed wall clock for the device epoch, so `get` output is reproducible.
pub fn unix_epoch_of_tests() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

pub fn key(seed: u8) -> NodePrivate {
    NodePrivate::from_bytes([seed; 32])
}

pub fn underlay(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1 + i as u8)), 51820)
}

pub fn overlay_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(100, 64, 0, 1 + i as u8)
}

pub fn overlay_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 1 + i as u16)
}

/// A minimal IPv4/UDP packet whose payload starts with `tag`.
pub fn ipv4_packet(src: Ipv4Addr, dst: Ipv4Addr, tag: u32, payload_len: usize) -> Vec<u8> {
    let payload_len = payload_len.max(4);
    let total = 28 + payload_len;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    p[20..22].copy_from_slice(&4000u16.to_be_bytes());
    p[22..24].copy_from_slice(&5000u16.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    p[28..32].copy_from_slice(&tag.to_be_bytes());
    p
}

/// A minimal IPv6/UDP packet whose payload starts with `tag`.
pub fn ipv6_packet(src: Ipv6Addr, dst: Ipv6Addr, tag: u32) -> Vec<u8> {
    let mut p = vec![0u8; 40 + 12];
    p[0] = 0x60;
    p[4..6].copy_from_slice(&12u16.to_be_bytes());
    p[6] = 17;
    p[7] = 64;
    p[8..24].copy_from_slice(&src.octets());
    p[24..40].copy_from_slice(&dst.octets());
    p[44..46].copy_from_slice(&12u16.to_be_bytes());
    p[48..52].copy_from_slice(&tag.to_be_bytes());
    p
}

/// The validated view of a test packet (the harness builds valid ones), as
/// the driver hands it to [`Device::encapsulate`].
pub fn view(packet: &[u8]) -> IpPacket<'_> {
    IpPacket::new(packet).expect("test packets are valid IP packets")
}

/// The message type of a WireGuard datagram.
pub fn message_type(datagram: &[u8]) -> u8 {
    datagram[0]
}

/// The receiver index of a transport message.
pub fn receiver_index(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[4..8].try_into().unwrap())
}

pub struct Node {
    pub dev: Device,
    pub key: NodePrivate,
    pub addr: SocketAddr,
}

impl Node {
    pub fn public(&self) -> NodePublic {
        self.key.public()
    }
}

/// A datagram on the wire.
#[derive(Debug, Clone)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

pub struct Net {
    pub now: Instant,
    pub nodes: Vec<Node>,
    /// Datagrams sent and not yet delivered.
    pub wire: VecDeque<Datagram>,
    /// Every datagram ever sent, in order.
    pub sent: Vec<Datagram>,
    /// IP packets each node wrote to its TUN.
    pub delivered: Vec<Vec<Vec<u8>>>,
    /// Drops on receive, per node.
    pub rx_drops: Vec<Vec<DropReason>>,
}

impl Net {
    /// `n` devices with keys and underlay addresses, not yet peered.
    pub fn new(n: usize) -> Self {
        let now = base_instant();
        let nodes = (0..n)
            .map(|i| {
                let dev = Device::new(now, unix_epoch_of_tests());
                let key = key(i as u8 + 1);
                dev.apply(
                    DeviceUpdate {
                        private_key: Some(Some(key.clone())),
                        listen_port: Some(51820),
                        ..Default::default()
                    },
                    now,
                );
                Node {
                    dev,
                    key,
                    addr: underlay(i),
                }
            })
            .collect();
        Self {
            now,
            nodes,
            wire: VecDeque::new(),
            sent: Vec::new(),
            delivered: vec![Vec::new(); n],
            rx_drops: vec![Vec::new(); n],
        }
    }

    /// Two peered devices.
    pub fn pair() -> Self {
        let mut net = Self::new(2);
        net.peer(0, 1);
        net.peer(1, 0);
        net
    }

    /// Configures node `a` with node `b` as a peer: endpoint, and b's overlay
    /// addresses as its AllowedIPs.
    pub fn peer(&mut self, a: usize, b: usize) {
        let mut u = PeerUpdate::new(self.nodes[b].public());
        u.endpoint = Some(self.nodes[b].addr);
        u.allowed_ips = vec![
            IpNet::new(IpAddr::V4(overlay_v4(b)), 32).unwrap(),
            IpNet::new(IpAddr::V6(overlay_v6(b)), 128).unwrap(),
        ];
        self.nodes[a].dev.apply(
            DeviceUpdate {
                peers: vec![u],
                ..Default::default()
            },
            self.now,
        );
    }

    fn push(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let d = Datagram {
            from,
            to,
            bytes: bytes.to_vec(),
        };
        self.sent.push(d.clone());
        self.wire.push_back(d);
    }

    /// Node `i` reads `packet` from its TUN. Returns what `encapsulate` said,
    /// with the datagram (if any) already on the wire.
    pub fn send_ip(&mut self, i: usize, packet: &[u8]) -> Outcome {
        let mut out = vec![0u8; packet.len() + 32 + 148];
        let mut extra = Vec::new();
        let from = self.nodes[i].addr;
        let r = self.nodes[i]
            .dev
            .encapsulate(view(packet), &mut out, self.now, &mut |to, d| {
                extra.push((to, d.to_vec()))
            });
        let outcome = match r {
            Encapsulated::Send { to, datagram } => {
                let d = datagram.to_vec();
                extra.push((to, d));
                Outcome::Sent
            }
            Encapsulated::Queued => Outcome::Queued,
            Encapsulated::Dropped(r) => Outcome::Dropped(r),
        };
        for (to, d) in extra {
            self.push(from, to, &d);
        }
        outcome
    }

    /// Index of the node listening on `addr`.
    pub fn node_at(&self, addr: SocketAddr) -> Option<usize> {
        self.nodes.iter().position(|n| n.addr == addr)
    }

    /// Hands one datagram to the node at its destination, as if it came
    /// from `from`.
    pub fn deliver(&mut self, d: Datagram) -> Outcome {
        let Some(i) = self.node_at(d.to) else {
            return Outcome::Lost;
        };
        let mut out = vec![0u8; d.bytes.len().max(148)];
        let mut replies = Vec::new();
        let r =
            self.nodes[i]
                .dev
                .decapsulate(d.from, &d.bytes, &mut out, self.now, &mut |to, b| {
                    replies.push((to, b.to_vec()))
                });
        let outcome = match r {
            Decapsulated::ToTunnel(p) => {
                self.delivered[i].push(p.as_bytes().to_vec());
                Outcome::Delivered
            }
            Decapsulated::Done => Outcome::Done,
            Decapsulated::Dropped(r) => {
                self.rx_drops[i].push(r);
                Outcome::Dropped(r)
            }
        };
        let me = self.nodes[i].addr;
        for (to, b) in replies {
            self.push(me, to, &b);
        }
        outcome
    }

    /// Delivers datagrams until the wire is empty (bounded).
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            let Some(d) = self.wire.pop_front() else {
                return;
            };
            self.deliver(d);
        }
        panic!("the network did not go quiet");
    }

    /// Runs every node's timers at the current time.
    pub fn tick(&mut self) {
        for i in 0..self.nodes.len() {
            let mut out = Vec::new();
            self.nodes[i]
                .dev
                .handle_timeout(self.now, &mut |to, d| out.push((to, d.to_vec())));
            let me = self.nodes[i].addr;
            for (to, d) in out {
                self.push(me, to, &d);
            }
        }
    }

    /// Advances virtual time by `total` in steps of `step`, running timers
    /// and delivering everything after each step.
    pub fn run_for(&mut self, total: Duration, step: Duration) {
        let end = self.now + total;
        while self.now < end {
            self.now += step;
            self.tick();
            self.pump();
        }
    }

    /// Datagrams sent from node `i` since `sent[from..]`.
    pub fn sent_by(&self, i: usize, from: usize) -> Vec<Datagram> {
        self.sent[from..]
            .iter()
            .filter(|d| d.from == self.nodes[i].addr)
            .cloned()
            .collect()
    }

    /// Completes a handshake from node 0 to node 1 by sending one packet.
    pub fn handshake(&mut self) {
        let p = ipv4_packet(overlay_v4(0), overlay_v4(1), 0xbeef, 16);
        assert_eq!(self.send_ip(0, &p), Outcome::Queued);
        self.pump();
        assert_eq!(
            self.delivered[1].last(),
            Some(&p),
            "the queued packet arrives once the handshake completes"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    Queued,
    Delivered,
    Done,
    Lost,
    Dropped(DropReason),
}
