//! Flow keys, their keyed hash, and the per-flow state machine.
//!
//! Every key is written from this node's side: `local` is the node's
//! address, `remote` the peer's, `lport`/`rport` the ports on each side. An
//! outbound packet (`src` = local) and the inbound reply (`dst` = local)
//! therefore produce the same key.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use weft_types::filter::proto;

use crate::Timeouts;
use crate::table::Keyed;
use weft_packet::tcp;

/// Which side opened a flow, or which way a packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// Peer → this node.
    Inbound,
    /// This node → peer.
    Outbound,
}

/// The two addresses and the protocol of a flow: they pick the shard, so
/// every flow between two hosts over one protocol shares a shard (and so
/// does the fragment state that refers to them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pair {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: u8,
    pub hash: u64,
}

/// A connection-tracking key: a [`Pair`]'s addresses and protocol plus the
/// ports. ICMP echo flows put the echo id in `lport` and the opener's side
/// in `rport` (see [`ECHO_OUT`], [`ECHO_IN`]); protocols without ports use
/// 0 and 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowKey {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: u8,
    pub lport: u16,
    pub rport: u16,
    pub hash: u64,
}

/// `rport` of an echo flow this node opened (it sent the request).
pub(crate) const ECHO_OUT: u16 = 0;
/// `rport` of an echo flow the peer opened.
pub(crate) const ECHO_IN: u16 = 1;

impl FlowKey {
    /// Returns the destination port the packet filter judges an inbound
    /// flow on: the local port for protocols with ports, 0 otherwise.
    pub fn judged_port(&self) -> u16 {
        if proto::has_ports(self.proto) {
            self.lport
        } else {
            0
        }
    }
}

impl Keyed for FlowKey {
    fn hash64(&self) -> u64 {
        self.hash
    }
}

/// Names the flow a datagram's later fragments belong to: the pair plus
/// the IP identification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FragKey {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: u8,
    pub id: u32,
    pub hash: u64,
}

impl Keyed for FragKey {
    fn hash64(&self) -> u64 {
        self.hash
    }
}

/// What a fragment entry remembers: the flow its first fragment joined.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FragEntry {
    pub flow: FlowKey,
    pub last_seen: Instant,
}

/// Hashes keys with secret keys drawn from the caller's seed.
///
/// The construction (folded 64×64→128 multiplications over key words XORed
/// with secret words) is fast and, without the secret, hard to aim; it is
/// not a cryptographic PRF. A peer that could force collisions would only
/// lengthen probe sequences inside one shard, whose size is bounded.
#[derive(Clone)]
pub(crate) struct KeyHasher {
    k: [u64; 4],
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher { .. }")
    }
}

const MUL: u64 = 0x9e37_79b9_7f4a_7c15;

fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    // Truncation intended: the two halves are folded together.
    #[allow(clippy::cast_possible_truncation)]
    let (lo, hi) = (p as u64, (p >> 64) as u64);
    lo ^ hi
}

fn bits(ip: IpAddr) -> (u64, u64) {
    match ip {
        IpAddr::V4(a) => (u64::from(u32::from(a)), 0x0004_0000_0000_0000),
        IpAddr::V6(a) => {
            let b = a.to_bits();
            #[allow(clippy::cast_possible_truncation)]
            let (lo, hi) = (b as u64, (b >> 64) as u64);
            (lo, hi)
        }
    }
}

impl KeyHasher {
    /// Derives the secret words from `seed`; odd so no multiplier is zero.
    pub fn new(seed: [u8; 32]) -> Self {
        let mut k = [0u64; 4];
        for (word, chunk) in k.iter_mut().zip(seed.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *word = u64::from_le_bytes(b) | 1;
        }
        KeyHasher { k }
    }

    pub fn pair(&self, local: IpAddr, remote: IpAddr, proto: u8) -> Pair {
        let [k0, k1, k2, k3] = self.k;
        let (l0, l1) = bits(local);
        let (r0, r1) = bits(remote);
        let h = fold(l0 ^ k0, l1 ^ k1 ^ MUL);
        let h = fold(h ^ r0 ^ k2, r1 ^ k3 ^ u64::from(proto));
        let hash = fold(h ^ k1, MUL ^ k3);
        Pair {
            local,
            remote,
            proto,
            hash,
        }
    }

    pub fn flow(&self, pair: Pair, lport: u16, rport: u16) -> FlowKey {
        let ports = (u64::from(lport) << 16) | u64::from(rport);
        let hash = fold(pair.hash ^ ports ^ self.k[2], self.k[0] ^ MUL);
        FlowKey {
            local: pair.local,
            remote: pair.remote,
            proto: pair.proto,
            lport,
            rport,
            hash,
        }
    }

    pub fn frag(&self, pair: Pair, id: u32) -> FragKey {
        let hash = fold(pair.hash ^ u64::from(id) ^ self.k[3], self.k[1] ^ MUL);
        FragKey {
            local: pair.local,
            remote: pair.remote,
            proto: pair.proto,
            id,
            hash,
        }
    }
}

/// A flow's protocol state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowState {
    /// TCP: the opener's SYN was seen, the answering SYN-ACK not yet.
    TcpOpening,
    /// TCP: the SYN-ACK was seen; a FIN from one side (a half-close) keeps
    /// the flow here.
    TcpEstablished { fin_in: bool, fin_out: bool },
    /// TCP: FINs from both sides, or an RST.
    TcpClosing,
    /// UDP, SCTP and protocols without ports.
    Datagram,
    /// ICMP echo.
    Echo,
}

/// One tracked flow.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Flow {
    pub origin: Dir,
    pub state: FlowState,
    /// Whether a packet went the other way than the opener's.
    pub replied: bool,
    pub last_seen: Instant,
}

impl Flow {
    /// Returns a new flow opened in direction `origin` by a packet of
    /// protocol `proto` (a TCP flow starts in [`FlowState::TcpOpening`]).
    pub fn open(origin: Dir, proto: u8, now: Instant) -> Self {
        let state = match proto {
            proto::TCP => FlowState::TcpOpening,
            proto::ICMP | proto::ICMPV6 => FlowState::Echo,
            _ => FlowState::Datagram,
        };
        Flow {
            origin,
            state,
            replied: false,
            last_seen: now,
        }
    }

    /// Returns the idle time after which the flow expires.
    pub fn timeout(&self, t: &Timeouts) -> Duration {
        match self.state {
            FlowState::TcpOpening => t.tcp_opening,
            FlowState::TcpEstablished { .. } => t.tcp_established,
            FlowState::TcpClosing => t.tcp_closing,
            FlowState::Datagram => t.udp,
            FlowState::Echo => t.icmp,
        }
    }

    pub fn expired(&self, now: Instant, t: &Timeouts) -> bool {
        now.saturating_duration_since(self.last_seen) >= self.timeout(t)
    }

    /// Returns whether the flow has proven two-way: an established TCP
    /// connection, or a reply seen. Eviction spares such flows first.
    pub fn assured(&self) -> bool {
        match self.state {
            FlowState::TcpEstablished { .. } => true,
            FlowState::TcpOpening | FlowState::TcpClosing => false,
            FlowState::Datagram | FlowState::Echo => self.replied,
        }
    }

    /// Returns whether a TCP segment with `flags` would open a new
    /// connection on this flow's tuple rather than continue it: a bare SYN
    /// after the handshake (the tuple is being reused).
    pub fn is_reopened_by(&self, flags: u8) -> bool {
        flags & (tcp::SYN | tcp::ACK) == tcp::SYN && self.state != FlowState::TcpOpening
    }

    /// Accounts one packet going `dir`: refreshes the idle timer and, for
    /// TCP, moves the coarse state on `flags` (pass 0 for other protocols).
    pub fn on_packet(&mut self, dir: Dir, flags: u8, now: Instant) {
        if dir != self.origin {
            self.replied = true;
        }
        if now > self.last_seen {
            self.last_seen = now;
        }
        self.state = match self.state {
            FlowState::TcpOpening | FlowState::TcpEstablished { .. } if flags & tcp::RST != 0 => {
                FlowState::TcpClosing
            }
            FlowState::TcpOpening
                if dir != self.origin && flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK =>
            {
                FlowState::TcpEstablished {
                    fin_in: false,
                    fin_out: false,
                }
            }
            FlowState::TcpEstablished { fin_in, fin_out } if flags & tcp::FIN != 0 => {
                let (fin_in, fin_out) = match dir {
                    Dir::Inbound => (true, fin_out),
                    Dir::Outbound => (fin_in, true),
                };
                if fin_in && fin_out {
                    FlowState::TcpClosing
                } else {
                    FlowState::TcpEstablished { fin_in, fin_out }
                }
            }
            other => other,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // the tests' base instant
    fn t0() -> Instant {
        Instant::now()
    }

    fn flow(origin: Dir) -> Flow {
        Flow::open(origin, proto::TCP, t0())
    }

    #[test]
    fn a_tcp_flow_is_established_by_the_answering_syn_ack_only() {
        let t0 = t0();
        let mut f = flow(Dir::Outbound);
        f.on_packet(Dir::Outbound, tcp::SYN | tcp::ACK, t0);
        assert_eq!(
            f.state,
            FlowState::TcpOpening,
            "the opener's own SYN-ACK is no answer"
        );
        f.on_packet(Dir::Inbound, tcp::SYN | tcp::ACK, t0);
        assert!(matches!(f.state, FlowState::TcpEstablished { .. }));
        assert!(f.assured());
    }

    #[test]
    fn fins_from_both_sides_close_a_tcp_flow_but_a_half_close_does_not() {
        let t0 = t0();
        let mut f = flow(Dir::Inbound);
        f.on_packet(Dir::Outbound, tcp::SYN | tcp::ACK, t0);
        f.on_packet(Dir::Inbound, tcp::FIN | tcp::ACK, t0);
        assert!(matches!(
            f.state,
            FlowState::TcpEstablished {
                fin_in: true,
                fin_out: false
            }
        ));
        f.on_packet(Dir::Inbound, tcp::FIN | tcp::ACK, t0);
        assert!(
            matches!(f.state, FlowState::TcpEstablished { .. }),
            "a repeated FIN is still one side"
        );
        f.on_packet(Dir::Outbound, tcp::FIN | tcp::ACK, t0);
        assert_eq!(f.state, FlowState::TcpClosing);
    }

    #[test]
    fn a_reset_closes_a_tcp_flow_at_once() {
        let t0 = t0();
        let mut f = flow(Dir::Outbound);
        f.on_packet(Dir::Inbound, tcp::RST | tcp::ACK, t0);
        assert_eq!(f.state, FlowState::TcpClosing);
        assert!(!f.assured());
    }

    #[test]
    fn a_flow_expires_after_the_timeout_of_its_state() {
        let t = Timeouts::default();
        let t0 = t0();
        let f = flow(Dir::Outbound);
        assert!(!f.expired(f.last_seen + t.tcp_opening - Duration::from_millis(1), &t));
        assert!(f.expired(f.last_seen + t.tcp_opening, &t));
        assert!(
            !f.expired(t0 - Duration::from_secs(1), &t),
            "a stale `now` never expires a flow"
        );
    }

    #[test]
    fn both_directions_of_a_flow_hash_to_the_same_key() {
        let h = KeyHasher::new([7; 32]);
        let a: IpAddr = "100.64.0.1".parse().unwrap();
        let b: IpAddr = "100.64.0.2".parse().unwrap();
        let k1 = h.flow(h.pair(a, b, proto::TCP), 40000, 22);
        let k2 = h.flow(h.pair(a, b, proto::TCP), 40000, 22);
        assert_eq!(k1, k2);
        assert_ne!(k1.hash, h.flow(h.pair(a, b, proto::TCP), 22, 40000).hash);
        let other = KeyHasher::new([8; 32]);
        assert_ne!(
            k1.hash,
            other.flow(other.pair(a, b, proto::TCP), 40000, 22).hash
        );
    }
}
