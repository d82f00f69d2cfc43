//! A simulated network for disco cores, on virtual time.
//!
//! Nodes sit behind no NAT, an easy NAT (endpoint-independent mapping that
//! keeps the port, address-and-port-dependent filtering, like nftables
//! `masquerade`) or a hard NAT (a new port for every destination, like
//! `masquerade fully-random`), or behind a firewall that drops all UDP.
//! A relay forwards `Destination::Relay` datagrams between nodes by node
//! key; STUN servers answer netcheck's requests with the address they saw.
//! A stand-in for control passes each node's endpoints and home relay to
//! the others, as the netmap would. Every datagram takes a fixed one-way
//! latency; nothing else happens between two steps of the clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use weft_disco::{Destination, Disco, Event, Path, RegionId, RelayRegionInfo, Transmit};
use weft_types::{DiscoPrivate, Endpoint, EndpointKind, NodePrivate, NodePublic};

pub const REGION: RegionId = RegionId(1);
pub const PORT: u16 = 41641;

pub fn t0() -> Instant {
    #[allow(clippy::disallowed_methods)] // the tests' one base instant
    Instant::now()
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    None,
    Easy { public: IpAddr },
    Hard { public: IpAddr },
}

pub struct Node {
    pub disco: Disco,
    pub key: NodePublic,
    pub ip: IpAddr,
    pub nat: Nat,
    /// Drops all UDP, both ways.
    pub udp_blocked: bool,
    /// Remote addresses we sent to (what the NAT's filter lets back in).
    holes: BTreeSet<SocketAddr>,
    /// Hard NAT: the public port towards each destination.
    hard_ports: BTreeMap<SocketAddr, u16>,
    next_port: u16,
    /// Everything it emitted, with the time.
    pub events: Vec<(Instant, Event)>,
    pub sent: Vec<(Instant, Transmit)>,
}

impl Node {
    /// The address a packet from us to `dst` comes from, as `dst` sees it.
    fn source_towards(&mut self, dst: SocketAddr) -> SocketAddr {
        match self.nat {
            Nat::None => SocketAddr::new(self.ip, PORT),
            Nat::Easy { public } => SocketAddr::new(public, PORT),
            Nat::Hard { public } => {
                let next = &mut self.next_port;
                let port = *self.hard_ports.entry(dst).or_insert_with(|| {
                    *next += 1;
                    *next
                });
                SocketAddr::new(public, port)
            }
        }
    }

    /// Whether a datagram for `dst` from `src` reaches us.
    fn accepts(&self, dst: SocketAddr, src: SocketAddr) -> bool {
        if self.udp_blocked {
            return false;
        }
        match self.nat {
            Nat::None => dst == SocketAddr::new(self.ip, PORT),
            Nat::Easy { public } => {
                dst == SocketAddr::new(public, PORT) && self.holes.contains(&src)
            }
            Nat::Hard { public } => {
                dst.ip() == public && self.hard_ports.get(&src) == Some(&dst.port())
            }
        }
    }

    pub fn local_endpoint(&self) -> Endpoint {
        Endpoint {
            addr: SocketAddr::new(self.ip, PORT),
            kind: EndpointKind::Local,
        }
    }

    /// The path events it emitted for `peer`, in order.
    pub fn paths(&self, peer: &NodePublic) -> Vec<(Instant, Option<Path>)> {
        self.events
            .iter()
            .filter_map(|(t, e)| match e {
                Event::PathChanged { peer: p, path } if p == peer => Some((*t, *path)),
                _ => None,
            })
            .collect()
    }

    /// UDP disco datagrams it sent.
    pub fn udp_disco_sent(&self) -> Vec<(Instant, SocketAddr)> {
        self.sent
            .iter()
            .filter_map(|(t, x)| match x {
                Transmit::Disco {
                    to: Destination::Udp(a),
                    ..
                } => Some((*t, *a)),
                _ => None,
            })
            .collect()
    }
}

enum Packet {
    Udp {
        to: SocketAddr,
        from: SocketAddr,
        payload: Vec<u8>,
    },
    Relay {
        to: NodePublic,
        from: NodePublic,
        region: RegionId,
        payload: Vec<u8>,
    },
    StunAnswer {
        node: usize,
        tx_id: [u8; 12],
        mapped: SocketAddr,
        from: SocketAddr,
    },
}

pub struct Sim {
    pub now: Instant,
    pub start: Instant,
    pub nodes: Vec<Node>,
    /// Delivery queue: (time, sequence) → packet.
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    pub latency: Duration,
    pub relay_latency: Duration,
    pub relay_up: bool,
    /// STUN servers of the relay map, by region (every region listed here
    /// is in the relay map, and region 1 always is). The relay delivers in
    /// every region.
    pub stun: Vec<(RegionId, SocketAddr)>,
    /// Which nodes control lets see each other (both ways).
    links: BTreeSet<(usize, usize)>,
    /// Whether the nodes have a relay map at all.
    pub with_relay: bool,
}

impl Sim {
    /// A network with one relay region and one STUN server, or (`with_relay`
    /// false) no relay map at all.
    pub fn new(with_relay: bool) -> Self {
        let now = t0();
        Self {
            now,
            start: now,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            latency: Duration::from_millis(10),
            relay_latency: Duration::from_millis(25),
            relay_up: true,
            stun: vec![(REGION, addr("198.19.100.1:3478"))],
            links: BTreeSet::new(),
            with_relay,
        }
    }

    /// Adds a node at `ip` (198.18.0.0/15) behind `nat`.
    pub fn add(&mut self, ip: &str, nat: Nat) -> usize {
        let n = self.nodes.len() as u8 + 1;
        let key = NodePrivate::from_bytes([n; 32]).public();
        let mut disco = Disco::new(DiscoPrivate::from_bytes([n + 100; 32]), key, [n; 32]);
        let now = self.now;
        if self.with_relay {
            let mut regions: BTreeMap<RegionId, Vec<SocketAddr>> = BTreeMap::new();
            for (r, a) in &self.stun {
                regions.entry(*r).or_default().push(*a);
            }
            regions.entry(REGION).or_default();
            disco.set_relay_map(
                regions
                    .into_iter()
                    .map(|(id, stun)| RelayRegionInfo { id, stun }),
                now,
            );
        }
        let ip: IpAddr = ip.parse().expect("test ip");
        let local = Endpoint {
            addr: SocketAddr::new(ip, PORT),
            kind: EndpointKind::Local,
        };
        disco.handle_local_endpoints_changed(PORT, [local], now);
        self.nodes.push(Node {
            disco,
            key,
            ip,
            nat,
            udp_blocked: false,
            holes: BTreeSet::new(),
            hard_ports: BTreeMap::new(),
            next_port: 20000,
            events: Vec::new(),
            sent: Vec::new(),
        });
        let i = self.nodes.len() - 1;
        self.pump(i);
        i
    }

    /// Lets `a` and `b` see each other in their netmaps (control).
    pub fn link(&mut self, a: usize, b: usize) {
        self.links.insert((a.min(b), a.max(b)));
        self.tell(a, b);
        self.tell(b, a);
    }

    /// Lets `to` see `about` in its netmap, but not the other way round yet
    /// (control reaches nodes one after the other); [`Sim::link`] completes it.
    pub fn introduce(&mut self, to: usize, about: usize) {
        self.tell(to, about);
    }

    /// Removes `b` from `a`'s netmap and back.
    pub fn unlink(&mut self, a: usize, b: usize) {
        self.links.remove(&(a.min(b), a.max(b)));
        let (ka, kb) = (self.nodes[a].key, self.nodes[b].key);
        let now = self.now;
        self.nodes[a].disco.remove_peer(&kb);
        self.nodes[b].disco.remove_peer(&ka);
        self.pump(a);
        self.pump(b);
        // The driver drops the peer and its path with it.
        for (i, k) in [(a, kb), (b, ka)] {
            self.nodes[i].events.push((
                now,
                Event::PathChanged {
                    peer: k,
                    path: None,
                },
            ));
        }
    }

    pub fn linked(&self, a: usize, b: usize) -> bool {
        self.links.contains(&(a.min(b), a.max(b)))
    }

    /// Control sends `about`'s current endpoints and home relay to `to`.
    fn tell(&mut self, to: usize, about: usize) {
        let now = self.now;
        let (key, disco_key, endpoints, home) = {
            let n = &self.nodes[about];
            (
                n.key,
                n.disco.public_key(),
                n.disco
                    .endpoints()
                    .iter()
                    .map(|e| e.addr)
                    .collect::<Vec<_>>(),
                n.disco.home_relay(),
            )
        };
        self.nodes[to]
            .disco
            .upsert_peer(key, disco_key, endpoints, home, now);
        self.pump(to);
    }

    /// What control would tell `to` about `about` right now.
    pub fn home_of(&self, about: usize) -> Option<RegionId> {
        self.nodes[about].disco.home_relay()
    }

    /// Moves node `i` to another address (and NAT): its old address and
    /// NAT state are gone; the driver reports the new local endpoint.
    pub fn move_node(&mut self, i: usize, ip: &str, nat: Nat) {
        let now = self.now;
        let n = &mut self.nodes[i];
        n.ip = ip.parse().expect("test ip");
        n.nat = nat;
        n.holes.clear();
        n.hard_ports.clear();
        let local = n.local_endpoint();
        n.disco.handle_local_endpoints_changed(PORT, [local], now);
        self.pump(i);
    }

    /// Changes only the NAT (its public address or kind), as a NAT that
    /// reboots or rebinds would; the node is not told.
    pub fn rebind_nat(&mut self, i: usize, nat: Nat) {
        let n = &mut self.nodes[i];
        n.nat = nat;
        n.holes.clear();
        n.hard_ports.clear();
    }

    /// Drains node `i`'s transmits onto the network and its events into
    /// its log (passing endpoint and home relay changes to control).
    pub fn pump(&mut self, i: usize) {
        let now = self.now;
        let mut tell = false;
        while let Some(e) = self.nodes[i].disco.poll_event() {
            if matches!(
                e,
                Event::EndpointsChanged { .. } | Event::HomeRelayChanged { .. }
            ) {
                tell = true;
            }
            self.nodes[i].events.push((now, e));
        }
        while let Some(t) = self.nodes[i].disco.poll_transmit() {
            self.nodes[i].sent.push((now, t.clone()));
            self.route(i, t);
        }
        if tell {
            let others: Vec<usize> = (0..self.nodes.len())
                .filter(|j| *j != i && self.linked(i, *j))
                .collect();
            for j in others {
                self.tell(j, i);
            }
        }
    }

    fn enqueue(&mut self, at: Instant, p: Packet) {
        self.seq += 1;
        self.queue.insert((at, self.seq), p);
    }

    fn route(&mut self, i: usize, t: Transmit) {
        let now = self.now;
        match t {
            Transmit::Disco {
                to: Destination::Udp(to),
                payload,
            } => {
                let n = &mut self.nodes[i];
                if n.udp_blocked {
                    return;
                }
                let from = n.source_towards(to);
                n.holes.insert(to);
                self.enqueue(now + self.latency, Packet::Udp { to, from, payload });
            }
            Transmit::Disco {
                to: Destination::Relay { region, node },
                payload,
            } => {
                if !self.relay_up || !self.with_relay {
                    return;
                }
                let from = self.nodes[i].key;
                self.enqueue(
                    now + self.relay_latency,
                    Packet::Relay {
                        to: node,
                        from,
                        region,
                        payload,
                    },
                );
            }
            Transmit::Stun { server, tx_id } => {
                if !self.stun.iter().any(|(_, a)| *a == server) {
                    return;
                }
                let n = &mut self.nodes[i];
                if n.udp_blocked {
                    return;
                }
                let mapped = n.source_towards(server);
                n.holes.insert(server);
                self.enqueue(
                    now + 2 * self.latency,
                    Packet::StunAnswer {
                        node: i,
                        tx_id,
                        mapped,
                        from: server,
                    },
                );
            }
        }
    }

    fn deliver(&mut self, p: Packet) {
        let now = self.now;
        match p {
            Packet::Udp { to, from, payload } => {
                let Some(j) = (0..self.nodes.len()).find(|j| self.nodes[*j].accepts(to, from))
                else {
                    return;
                };
                self.nodes[j].disco.handle_udp(from, &payload, now);
                self.pump(j);
            }
            Packet::Relay {
                to,
                from,
                region,
                payload,
            } => {
                if !self.relay_up {
                    return;
                }
                let Some(j) = (0..self.nodes.len()).find(|j| self.nodes[*j].key == to) else {
                    return;
                };
                self.nodes[j]
                    .disco
                    .handle_relay(region, from, &payload, now);
                self.pump(j);
            }
            Packet::StunAnswer {
                node,
                tx_id,
                mapped,
                from,
            } => {
                if self.nodes[node].udp_blocked {
                    return;
                }
                self.nodes[node]
                    .disco
                    .handle_stun_response(tx_id, mapped, from, now);
                self.pump(node);
            }
        }
    }

    /// Runs the network until `until`: packets are delivered and timers run
    /// in time order. Panics if a core asks to be woken in the past again
    /// right after its timers ran (a driver would spin).
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_packet = self.queue.keys().next().map(|(t, _)| *t);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, n)| n.disco.poll_timeout().map(|(t, _)| (t, i)))
                .min();
            let next = match (next_packet, next_timer) {
                (Some(p), Some((t, _))) => p.min(t),
                (Some(p), None) => p,
                (None, Some((t, _))) => t,
                (None, None) => break,
            };
            if next > until {
                break;
            }
            self.now = self.now.max(next);
            if next_packet.is_some_and(|p| p <= next) {
                let Some((_, p)) = self.queue.pop_first() else {
                    break;
                };
                self.deliver(p);
                continue;
            }
            let Some((_, i)) = next_timer else {
                break;
            };
            let now = self.now;
            self.nodes[i].disco.handle_timeout(now);
            self.pump(i);
            if let Some((t, why)) = self.nodes[i].disco.poll_timeout() {
                assert!(t > now, "node {i} wants a timeout at {t:?} <= now ({why})");
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` more.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs until `cond` holds (checked after every step of `step`), at most
    /// `limit`; returns how long it took.
    pub fn run_until_cond(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        let step = Duration::from_millis(1);
        while self.now < start + limit {
            if cond(self) {
                return Some(self.now - start);
            }
            self.run_for(step);
        }
        cond(self).then(|| self.now - start)
    }

    pub fn path(&self, from: usize, to: usize) -> Option<Path> {
        self.nodes[from].disco.path(&self.nodes[to].key)
    }
}
