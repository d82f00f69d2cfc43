//! weft-relay: Weft's relay, speaking Tailscale's DERP protocol on the wire,
//! so Weft nodes can use any DERP server, Tailscale's DERP clients and
//! probers work against Weft's relay, and the relay only ever forwards
//! sealed WireGuard and disco datagrams between node keys. Also the STUN
//! server. What it is not: the relay map, the node's path logic (that is
//! `weft-disco` and weftd), or a DERP mesh (no `--mesh-key` peers).
//!
//! # Layers
//! * [`proto`]: sans-IO. Frame codec, login handshake on both sides, the
//!   client connection core, the server's routing table and send queue. No
//!   sockets, no clock, no randomness of its own; tested on virtual time.
//! * [`RelayServer`]: the server driver (tokio). A task per connection
//!   reading (a packet is copied once, straight into the destination's
//!   queue, already encoded as the `RecvPacket` it will read; the queue is
//!   bounded in bytes and owns its storage, so a slow client pins only its
//!   own bytes) and one writing (takes its whole queue by swapping buffers,
//!   one write call); a sharded map of active connections, so no lock is
//!   shared by all packets. Admission at login ([`Admission`]); revocation closes
//!   every connection of a key at once.
//! * [`RelayClient`]: the client driver weftd uses: connect (TCP or TLS),
//!   log in with the node key, send/receive by node key, ping, reconnect
//!   with backoff.
//! * [`stun`]: the STUN server (UDP, both families) on `weft-disco`'s codec.
//! * [`listen`]: the standalone HTTP(S) listener of the `weft-relay` binary.
//!
//! # Embedding the server (weft-control)
//! ```no_run
//! # async fn f(relay_key: weft_types::NodePrivate) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use weft_relay::{AllowedKeys, RelayConfig, RelayServer};
//!
//! let allowed = AllowedKeys::new();                    // fed from control's live state
//! let relay = RelayServer::new(RelayConfig::new(relay_key, Arc::new(allowed.clone())))?;
//! let app = axum::Router::new().merge(relay.router()); // serves /derp, /derp/probe, /generate_204
//! // … a node is deleted or expires:
//! # let key = weft_types::NodePrivate::generate().public();
//! allowed.disallow(&key);
//! relay.revoke(&key);                                  // its connections close at once
//! # let _ = app; Ok(()) }
//! ```
//! The serving loop must serve HTTP/1.1 with upgrades (hyper's
//! `serve_connection(..).with_upgrades()`); the client address reaches the
//! logs through an `axum::extract::ConnectInfo<SocketAddr>` extension.
//!
//! # Using the client (weftd)
//! ```no_run
//! # async fn f(node_key: weft_types::NodePrivate, peer: weft_types::NodePublic) -> Result<(), Box<dyn std::error::Error>> {
//! use weft_relay::{ClientConfig, Event, RelayClient, RelayNode};
//!
//! let relay = RelayNode::from_url("https://relay.example.com")?;
//! let (client, mut events) = RelayClient::start(ClientConfig::new(node_key, relay))?;
//! client.send(&peer, b"a WireGuard datagram")?;        // never blocks; bounded
//! while let Some(ev) = events.recv().await {
//!     if let Event::Packet { src, data } = ev { /* into WireGuard */ let _ = (src, data); }
//! }
//! # Ok(()) }
//! ```
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod admission;
mod client;
mod clock;
mod keyfile;
pub mod listen;
pub mod metrics;
mod net;
pub mod proto;
mod server;
pub mod stun;
pub mod tls;

pub use admission::{
    Admission, AdmissionError, AdmitAnyKeyInsecure, AllowedKeys, RestAdmission, VerifyRequest,
    VerifyResponse,
};
pub use client::{
    ClientConfig, ClientConfigError, ClientStats, Event, PingError, RelayClient, RelayNode,
    SendError,
};
pub use keyfile::{KeyFileError, load_or_create_key};
pub use metrics::{DropReason, RefuseReason, StatsSnapshot};
pub use proto::ClientOptions;
pub use server::{RelayConfig, RelayError, RelayServer, Restarting};
