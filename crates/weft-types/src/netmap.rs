//! The network map: everything a node needs to know about its tailnet, and
//! the `map` stream messages that deliver it — one full map, then deltas.
//!
//! Deltas are explicit variants ([`Delta`], [`PeerDelta`]): there is no
//! "absent means unchanged" convention anywhere in a map message. Each
//! [`MapResponse`] of a stream carries `seq`, which starts at 1 and grows by
//! exactly one per response, so a client notices a lost or reordered message.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::ids::{NodeId, UserId};
use crate::names::DnsName;
use crate::node::{Endpoint, Node, UserProfile};
use crate::time::UnixMillis;

pub use crate::filter::{PacketFilter, SshPolicy};

/// A node's view of its tailnet, as built by the client from a full map and
/// the deltas after it (and as the server sends it in [`MapBody::Full`]).
///
/// On the wire `peers` and `user_profiles` are JSON arrays; a map with the
/// same id twice is rejected when it is parsed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetMap {
    /// The node itself, as the server sees it (addresses, expiry, owner…).
    pub self_node: Node,
    /// The peers this node may see, by id. Expired peers are present (with
    /// `expired: true`) but are not usable; see [`Node::is_usable_at`].
    #[serde(with = "keyed_list")]
    pub peers: BTreeMap<NodeId, Node>,
    /// The users that own this node and its peers.
    #[serde(with = "keyed_list")]
    pub user_profiles: BTreeMap<UserId, UserProfile>,
    /// The tailnet's DNS domain; node names are `<label>.<domain>`.
    pub domain: DnsName,
    /// DNS settings for the node.
    pub dns: DnsConfig,
    /// Relay servers the node may use.
    pub relay_map: RelayMap,
    /// This node's compiled packet filter.
    pub packet_filter: PacketFilter,
    /// This node's SSH policy.
    pub ssh_policy: SshPolicy,
}

impl NetMap {
    /// Returns the peers usable at wall time `now` (see [`Node::is_usable_at`]).
    pub fn usable_peers(&self, now: UnixMillis) -> impl Iterator<Item = &Node> {
        self.peers.values().filter(move |n| n.is_usable_at(now))
    }
}

/// DNS settings for a node: what its MagicDNS resolver (weftd, at the
/// service addresses) answers itself, where it forwards the rest, and what
/// the node puts in the OS's DNS configuration when `--accept-dns` is on.
///
/// Fields added after the first cut default when absent, so a map from an
/// older server still parses.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DnsConfig {
    /// Answer `<label>.<domain>` (and `<label>` through the search domain)
    /// for tailnet nodes, and PTR for their addresses, at the resolver.
    pub magic_dns: bool,
    /// Global upstream resolvers (port 53) for names nothing else claims.
    /// Empty: the resolvers the host had before Weft changed its DNS.
    pub nameservers: Vec<IpAddr>,
    /// Extra search domains, in order, after the tailnet domain (which is
    /// implicit while `magic_dns` is on).
    pub search_domains: Vec<DnsName>,
    /// Split DNS: names equal to or under a key are forwarded to its
    /// resolvers (port 53) instead of the global ones; the longest matching
    /// suffix wins. An empty list means "answered by the resolver itself
    /// only" (names it does not know are NXDOMAIN, never forwarded).
    #[serde(default)]
    pub routes: BTreeMap<DnsName, Vec<IpAddr>>,
    /// Extra records the admin configured: fixed A/AAAA answers, answered
    /// like node names (a name may have several).
    #[serde(default)]
    pub extra_records: Vec<DnsRecord>,
}

/// One admin-configured DNS record (`name` → `addr`): an A record for an
/// IPv4 address, AAAA for IPv6.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DnsRecord {
    /// The fully qualified name (no trailing dot).
    pub name: DnsName,
    /// The address it resolves to.
    pub addr: IpAddr,
}

/// Relay servers by region (the first cut; grows with `weft-relay`).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct RelayMap {
    /// Regions by region id.
    pub regions: BTreeMap<u16, RelayRegion>,
}

/// One relay region: relays that are close together.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayRegion {
    /// The region id (the key in [`RelayMap::regions`]).
    pub id: u16,
    /// A short code, e.g. `fra`.
    pub code: String,
    /// A human name, e.g. `Frankfurt`.
    pub name: String,
    /// The relays of the region, in order of preference.
    pub nodes: Vec<RelayNode>,
}

/// One relay server.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RelayNode {
    /// A unique name, e.g. `1a`.
    pub name: String,
    /// Host name or IP literal to connect to.
    pub host: String,
    /// TCP port of the relay protocol.
    pub relay_port: u16,
    /// UDP port of its STUN server (3478 by default; 0: none).
    pub stun_port: u16,
    /// An IPv4 address to use instead of resolving `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<std::net::Ipv4Addr>,
    /// An IPv6 address to use instead of resolving `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<std::net::Ipv6Addr>,
    /// Speak plain HTTP instead of TLS (a relay behind plain-HTTP control,
    /// and tests; Tailscale's `InsecureForTests`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_for_tests: bool,
}

impl RelayNode {
    /// Returns the addresses the map gives for this relay without a DNS
    /// lookup: its `ipv4`/`ipv6` if either is set, else `host` if it is an
    /// IP literal (`[..]` allowed), else none (resolve `host`).
    pub fn known_addrs(&self) -> Vec<IpAddr> {
        match (self.ipv4, self.ipv6) {
            (None, None) => self
                .host
                .trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .ok()
                .into_iter()
                .collect(),
            (v4, v6) => v4
                .map(IpAddr::from)
                .into_iter()
                .chain(v6.map(IpAddr::from))
                .collect(),
        }
    }
}

/// One message of a map stream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapResponse {
    /// Position in the stream: 1 for the first response, then +1 for each
    /// response (full or delta). Keep-alives carry none.
    pub seq: u64,
    /// A full map or a batch of changes.
    pub body: MapBody,
}

/// A full map or a batch of deltas.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapBody {
    /// The whole map; replaces whatever the client had. Always the first
    /// response of a stream; the server may send another one at any time.
    Full(Box<NetMap>),
    /// Changes to apply, in order, to the map built so far. All of them or
    /// none: a delta that does not fit the map is a protocol error.
    Delta(Vec<Delta>),
}

/// One change to a netmap.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delta {
    /// A change to one peer.
    Peer(PeerDelta),
    /// The node itself changed (addresses, name, expiry, authorization…).
    SelfNode(Box<Node>),
    /// A user profile was added or changed (replaces one with the same id).
    UserProfile(UserProfile),
    /// A user profile is no longer referenced.
    UserProfileRemoved(UserId),
    /// New DNS settings.
    Dns(DnsConfig),
    /// New relay map.
    RelayMap(RelayMap),
    /// New packet filter for this node.
    PacketFilter(Box<PacketFilter>),
    /// New SSH policy for this node.
    SshPolicy(SshPolicy),
}

/// A change to one peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerDelta {
    /// A new peer (its id must not be in the map).
    Added(Box<Node>),
    /// A peer left, or may no longer be seen (its id must be in the map).
    Removed(NodeId),
    /// A peer changed in a way the narrower variants do not cover: new node
    /// key (re-keyed), expiry, name, addresses, host info… The whole node
    /// replaces the old one (its id must be in the map).
    Changed(Box<Node>),
    /// A peer's endpoints changed.
    Endpoints {
        /// Which peer.
        id: NodeId,
        /// The complete new list.
        endpoints: Vec<Endpoint>,
        /// The peer's home relay region ([`Node::home_relay`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        home_relay: Option<u16>,
    },
    /// A peer connected to or disconnected from control.
    Online {
        /// Which peer.
        id: NodeId,
        /// Whether it now has a map stream open.
        online: bool,
        /// When it connected (online) or was last heard from (offline).
        last_seen: UnixMillis,
    },
}

/// Serializes a `BTreeMap<K, V>` as a JSON array of `V` (each value knows its
/// own key) and rejects duplicate keys on the way back.
mod keyed_list {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{Deserialize, Deserializer, Error as _};
    use serde::ser::Serializer;

    use crate::ids::{NodeId, UserId};
    use crate::node::{Node, UserProfile};

    pub(super) trait Keyed {
        type Key: Ord + Copy + fmt::Display;
        fn key(&self) -> Self::Key;
    }

    impl Keyed for Node {
        type Key = NodeId;
        fn key(&self) -> NodeId {
            self.id
        }
    }

    impl Keyed for UserProfile {
        type Key = UserId;
        fn key(&self) -> UserId {
            self.id
        }
    }

    pub(super) fn serialize<S, V>(map: &BTreeMap<V::Key, V>, s: S) -> Result<S::Ok, S::Error>
    where
        S: Serializer,
        V: Keyed + serde::Serialize,
    {
        s.collect_seq(map.values())
    }

    pub(super) fn deserialize<'de, D, V>(d: D) -> Result<BTreeMap<V::Key, V>, D::Error>
    where
        D: Deserializer<'de>,
        V: Keyed + Deserialize<'de>,
    {
        let list = Vec::<V>::deserialize(d)?;
        let mut map = BTreeMap::new();
        for v in list {
            let k = v.key();
            if map.insert(k, v).is_some() {
                return Err(D::Error::custom(format_args!("id {k} appears twice")));
            }
        }
        Ok(map)
    }
}
