//! Encode once, send to many: JSON fragments the server makes once and
//! splices into each recipient's message.
//!
//! A full map for a node with 10,000 peers is mostly the same 10,000 peer
//! entries every other node gets. The server keeps each node's JSON as an
//! [`Encoded<Node>`], made once per change of that node, and builds a
//! recipient's full map by copying those fragments into place
//! ([`full_map_body`]): no peer is serialized again. A delta that goes to
//! every node is encoded once ([`delta_body`]); per recipient only the small
//! envelope with its `seq` is written around it ([`MapStream::next`]) and
//! the result encrypted by [`crate::Connection::send_encoded`].
//!
//! The bytes are exactly those `serde_json` makes for the typed messages
//! (tests check byte equality), so a client parses them as
//! [`ServerMessage`] like any other message.

use std::marker::PhantomData;
use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;
use weft_types::control::ServerMessage;
use weft_types::netmap::{DnsConfig, PacketFilter, RelayMap, SshPolicy};
use weft_types::{Delta, DnsName, MapBody, Node, UserProfile};

/// A value of type `T` encoded as JSON once; cheap to clone and share
/// between threads. Serializing it (with serde_json) copies the bytes.
pub struct Encoded<T: ?Sized> {
    raw: Arc<RawValue>,
    _type: PhantomData<fn() -> T>,
}

/// Why a value could not be encoded (a type whose `Serialize` fails, such
/// as a map with non-string keys; none of ours do).
#[derive(Debug, thiserror::Error)]
#[error("could not encode a message as JSON: {0}")]
pub struct EncodeError(#[from] serde_json::Error);

impl<T: ?Sized> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            raw: Arc::clone(&self.raw),
            _type: PhantomData,
        }
    }
}

impl<T: ?Sized> std::fmt::Debug for Encoded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Encoded({} bytes)", self.raw.get().len())
    }
}

impl<T: ?Sized + Serialize> Encoded<T> {
    /// Encodes `value`.
    ///
    /// # Errors
    /// [`EncodeError`] if `T`'s `Serialize` fails.
    pub fn new(value: &T) -> Result<Self, EncodeError> {
        Ok(Self::from_raw(serde_json::value::to_raw_value(value)?))
    }
}

impl<T: ?Sized> Encoded<T> {
    fn from_raw(raw: Box<RawValue>) -> Self {
        Self {
            raw: Arc::from(raw),
            _type: PhantomData,
        }
    }

    /// Returns the JSON bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.raw.get().as_bytes()
    }

    /// Returns the JSON text.
    pub fn as_str(&self) -> &str {
        self.raw.get()
    }

    /// Returns the length in bytes.
    pub fn len(&self) -> usize {
        self.raw.get().len()
    }

    /// Returns whether the encoding is empty (never, for valid JSON).
    pub fn is_empty(&self) -> bool {
        self.raw.get().is_empty()
    }
}

impl<T: ?Sized> Serialize for Encoded<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(s)
    }
}

/// What the server has ready for one recipient's full map: shared
/// fragments for nodes, profiles and tailnet-wide settings, and the
/// recipient's own packet filter and SSH policy.
#[derive(Debug, Clone, Copy)]
pub struct FullMapParts<'a> {
    /// The recipient itself.
    pub self_node: &'a Encoded<Node>,
    /// Its peers; listed in ascending id order by convention (the client
    /// does not depend on the order, but a duplicate id is an error).
    pub peers: &'a [&'a Encoded<Node>],
    /// The owners of the recipient and its peers (no duplicate ids).
    pub user_profiles: &'a [&'a Encoded<UserProfile>],
    /// The tailnet's DNS domain.
    pub domain: &'a DnsName,
    /// DNS settings.
    pub dns: &'a Encoded<DnsConfig>,
    /// Relay map.
    pub relay_map: &'a Encoded<RelayMap>,
    /// The recipient's packet filter.
    pub packet_filter: &'a Encoded<PacketFilter>,
    /// The recipient's SSH policy.
    pub ssh_policy: &'a Encoded<SshPolicy>,
}

// Mirrors of the weft-types wire shapes with pre-encoded parts. Field names
// and order must match `NetMap`, `MapBody`, `MapResponse` and
// `ServerMessage`; the tests compare bytes with the typed encoding.
#[derive(Serialize)]
struct NetMapRef<'a> {
    self_node: &'a Encoded<Node>,
    peers: &'a [&'a Encoded<Node>],
    user_profiles: &'a [&'a Encoded<UserProfile>],
    domain: &'a DnsName,
    dns: &'a Encoded<DnsConfig>,
    relay_map: &'a Encoded<RelayMap>,
    packet_filter: &'a Encoded<PacketFilter>,
    ssh_policy: &'a Encoded<SshPolicy>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum MapBodyRef<'a> {
    Full(NetMapRef<'a>),
}

#[derive(Serialize)]
struct MapResponseRef<'a> {
    seq: u64,
    body: &'a Encoded<MapBody>,
}

#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum ServerMessageRef<'a> {
    Map(MapResponseRef<'a>),
}

/// Builds a full-map body from pre-encoded parts (copies, no re-encoding).
///
/// # Errors
/// [`EncodeError`] only if serde_json fails to write, which it does not for
/// these types.
pub fn full_map_body(parts: &FullMapParts<'_>) -> Result<Encoded<MapBody>, EncodeError> {
    let body = MapBodyRef::Full(NetMapRef {
        self_node: parts.self_node,
        peers: parts.peers,
        user_profiles: parts.user_profiles,
        domain: parts.domain,
        dns: parts.dns,
        relay_map: parts.relay_map,
        packet_filter: parts.packet_filter,
        ssh_policy: parts.ssh_policy,
    });
    Ok(Encoded::from_raw(serde_json::value::to_raw_value(&body)?))
}

/// Encodes a batch of deltas once, for any number of recipients.
///
/// # Errors
/// As [`Encoded::new`].
pub fn delta_body(deltas: &[Delta]) -> Result<Encoded<MapBody>, EncodeError> {
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum DeltaBodyRef<'a> {
        Delta(&'a [Delta]),
    }
    Ok(Encoded::from_raw(serde_json::value::to_raw_value(
        &DeltaBodyRef::Delta(deltas),
    )?))
}

/// Encodes `deltas` followed by a pre-encoded packet filter and SSH policy
/// (each if given) as one delta body: the same bytes as [`delta_body`] with
/// `Delta::PacketFilter` and `Delta::SshPolicy` appended, but the filter,
/// often the largest part, is copied rather than serialized again.
///
/// # Errors
/// As [`Encoded::new`].
pub fn delta_body_with_policy(
    deltas: &[Delta],
    packet_filter: Option<&Encoded<PacketFilter>>,
    ssh_policy: Option<&Encoded<SshPolicy>>,
) -> Result<Encoded<MapBody>, EncodeError> {
    // Mirrors `Delta`'s externally tagged, snake_case variants.
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum PolicyDeltaRef<'a> {
        PacketFilter(&'a Encoded<PacketFilter>),
        SshPolicy(&'a Encoded<SshPolicy>),
    }
    #[derive(Serialize)]
    #[serde(untagged)]
    enum ItemRef<'a> {
        Typed(&'a Delta),
        Policy(PolicyDeltaRef<'a>),
    }
    #[derive(Serialize)]
    #[serde(rename_all = "snake_case")]
    enum DeltaBodyRef<'a> {
        Delta(&'a [ItemRef<'a>]),
    }
    let mut items: Vec<ItemRef<'_>> = deltas.iter().map(ItemRef::Typed).collect();
    items.extend(packet_filter.map(|f| ItemRef::Policy(PolicyDeltaRef::PacketFilter(f))));
    items.extend(ssh_policy.map(|s| ItemRef::Policy(PolicyDeltaRef::SshPolicy(s))));
    Ok(Encoded::from_raw(serde_json::value::to_raw_value(
        &DeltaBodyRef::Delta(&items),
    )?))
}

/// Wraps a map body in the `map` message with sequence number `seq`.
///
/// # Errors
/// As [`Encoded::new`].
pub fn map_message(
    seq: u64,
    body: &Encoded<MapBody>,
) -> Result<Encoded<ServerMessage>, EncodeError> {
    let msg = ServerMessageRef::Map(MapResponseRef { seq, body });
    Ok(Encoded::from_raw(serde_json::value::to_raw_value(&msg)?))
}

/// The server's side of one map stream: numbers its responses.
///
/// The first response must be a full map (the server's session logic
/// guarantees it); each call to [`MapStream::next`] takes the next `seq`.
#[derive(Debug, Clone, Default)]
pub struct MapStream {
    last_seq: u64,
}

impl MapStream {
    /// Starts a stream; the first response gets `seq` 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the `seq` of the last response made (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Returns the next message of the stream around `body`.
    ///
    /// # Errors
    /// As [`Encoded::new`].
    pub fn next(&mut self, body: &Encoded<MapBody>) -> Result<Encoded<ServerMessage>, EncodeError> {
        let msg = map_message(self.last_seq + 1, body)?;
        self.last_seq += 1;
        Ok(msg)
    }
}
