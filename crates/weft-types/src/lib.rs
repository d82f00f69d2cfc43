//! Weft's shared vocabulary, in the role Tailscale's `tailcfg` plays: keys,
//! identifiers, validated names, roles, nodes, netmaps and every message that passes
//! between weft-control, weftd and the CLI.
//!
//! This crate holds types only: no I/O, no async runtime, no CLI or database
//! dependencies. The one exception is [`entropy`], the workspace's single
//! door to the OS random number generator (key generation needs it). Validated values deserialize through their `FromStr`, so JSON
//! cannot bypass validation. Times are [`UnixMillis`]. The doc of every
//! `Option` field says what `None` means.
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod control;
pub mod entropy;
pub mod filter;
pub mod ids;
pub mod key;
pub mod keyfile;
pub mod names;
pub mod netmap;
pub mod node;
pub mod time;
pub mod version;

pub use ids::{NodeId, StableNodeId, UserId};
pub use key::{
    DiscoPrivate, DiscoPublic, KeyParseError, MachinePrivate, MachinePublic, NodePrivate,
    NodePublic,
};
pub use names::{DnsLabel, DnsName, Hostname, LoginName, NameError, Tag};
pub use netmap::{Delta, MapBody, MapResponse, NetMap, PeerDelta};
pub use node::{
    Endpoint, EndpointKind, HostInfo, HostInfoError, Node, NodeOwner, Role, RoleError, UserProfile,
};
pub use time::UnixMillis;
pub use version::CapabilityVersion;
