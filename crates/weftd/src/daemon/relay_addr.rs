//! Relay endpoints: the addresses WireGuard sends to when a peer is reached
//! through a relay.
//!
//! `weft-wg` knows a peer's endpoint only as a `SocketAddr`. A peer on a
//! relay path gets a synthetic one, `[fd7a:115c:a1e0:ff52::<index>]:<region>`:
//! the index names the peer's node key in [`RelayAddrs`], the port is the
//! relay region. The prefix is a /64 of the project's ULA that no node is
//! ever given (tailnet addresses are `fd7a:115c:a1e0::<n>`), and nothing
//! with it ever reaches a socket: the engine asks [`is_relay_addr`] once per
//! send run and hands those datagrams to the relay instead. The same address
//! is what a relayed datagram from that peer is opened with, so WireGuard's
//! roaming follows a peer onto the relay and back to a direct address like
//! between two direct ones.

use std::collections::HashMap;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use weft_disco::RegionId;
use weft_types::NodePublic;

/// The first four 16-bit groups of every relay endpoint.
const PREFIX: [u16; 4] = [0xfd7a, 0x115c, 0xa1e0, 0xff52];
/// The most peers given a relay endpoint (a relayed datagram from yet
/// another key is dropped).
pub const MAX_RELAY_PEERS: usize = 1 << 20;

/// Returns whether `addr` is a relay endpoint (cheap: no lookup).
pub fn is_relay_addr(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(a) => a.ip().segments()[..4] == PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// Node keys by index and back; indexes are never reused (a key keeps its
/// address for the daemon's life, whichever region it moves to).
#[derive(Debug, Default)]
pub struct RelayAddrs {
    index: HashMap<NodePublic, u32>,
    keys: Vec<NodePublic>,
}

impl RelayAddrs {
    /// Returns the relay endpoint of `peer` through `region`, giving the
    /// peer an index if it has none; `None` when the table is full.
    pub fn addr(&mut self, region: RegionId, peer: &NodePublic) -> Option<SocketAddr> {
        let idx = match self.index.get(peer) {
            Some(i) => *i,
            None => {
                if self.keys.len() >= MAX_RELAY_PEERS {
                    return None;
                }
                let i = u32::try_from(self.keys.len()).ok()?;
                self.keys.push(*peer);
                self.index.insert(*peer, i);
                i
            }
        };
        Some(endpoint(idx, region))
    }

    /// Returns the relay endpoint `peer` already has through `region`
    /// (`None`: not given one yet; [`RelayAddrs::addr`] gives one).
    pub fn existing(&self, region: RegionId, peer: &NodePublic) -> Option<SocketAddr> {
        self.index.get(peer).map(|i| endpoint(*i, region))
    }

    /// Returns the region and node key a relay endpoint stands for.
    pub fn lookup(&self, addr: &SocketAddr) -> Option<(RegionId, NodePublic)> {
        let SocketAddr::V6(a) = addr else {
            return None;
        };
        let s = a.ip().segments();
        if s[..4] != PREFIX || s[4] != 0 || s[5] != 0 {
            return None;
        }
        let idx = (u32::from(s[6]) << 16) | u32::from(s[7]);
        let key = self.keys.get(usize::try_from(idx).ok()?)?;
        Some((RegionId(a.port()), *key))
    }
}

fn endpoint(idx: u32, region: RegionId) -> SocketAddr {
    let [p0, p1, p2, p3] = PREFIX;
    let ip = Ipv6Addr::new(p0, p1, p2, p3, 0, 0, (idx >> 16) as u16, idx as u16);
    SocketAddr::V6(SocketAddrV6::new(ip, region.0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_types::NodePrivate;

    #[test]
    fn a_peer_keeps_its_address_and_the_port_names_the_region() {
        let (a, b) = (
            NodePrivate::from_bytes([1; 32]).public(),
            NodePrivate::from_bytes([2; 32]).public(),
        );
        let mut t = RelayAddrs::default();
        let a900 = t.addr(RegionId(900), &a).unwrap();
        let b900 = t.addr(RegionId(900), &b).unwrap();
        let a901 = t.addr(RegionId(901), &a).unwrap();
        assert_eq!(t.existing(RegionId(901), &a), Some(a901));
        assert_eq!(
            t.existing(RegionId(900), &NodePrivate::from_bytes([3; 32]).public()),
            None
        );
        assert_ne!(a900, b900);
        assert_eq!(a900.ip(), a901.ip());
        assert_eq!(a901.port(), 901);
        for (addr, want) in [(a900, (900, a)), (b900, (900, b)), (a901, (901, a))] {
            assert!(is_relay_addr(&addr));
            assert_eq!(t.lookup(&addr), Some((RegionId(want.0), want.1)));
        }
    }

    #[test]
    fn real_addresses_are_not_relay_endpoints() {
        let t = RelayAddrs::default();
        for s in [
            "198.18.0.1:41641",
            "[fd7a:115c:a1e0::5]:41641",
            "[fd7a:115c:a1e0:ff52::7]:900",
            "[2001:db8::1]:900",
        ] {
            let addr: SocketAddr = s.parse().unwrap();
            assert_eq!(t.lookup(&addr), None, "{s}");
        }
        assert!(!is_relay_addr(&"198.18.0.1:41641".parse().unwrap()));
        assert!(!is_relay_addr(
            &"[fd7a:115c:a1e0::5]:41641".parse().unwrap()
        ));
        // The prefix is claimed even for an index never handed out: such a
        // datagram goes nowhere rather than onto the network.
        assert!(is_relay_addr(
            &"[fd7a:115c:a1e0:ff52::7]:900".parse().unwrap()
        ));
    }
}
