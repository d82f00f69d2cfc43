//! MagicDNS: the resolver weftd runs at the service addresses
//! ([`SERVICE_V4`], [`SERVICE_V6`]), as a sans-IO core.
//!
//! It answers tailnet names itself (A/AAAA for `<label>.<domain>`, the
//! short `<label>`, extra records; PTR for tailnet addresses) and forwards
//! everything else to an upstream resolver: the split-DNS route whose
//! domain is the longest suffix of the name, else the tailnet's global
//! nameservers, else the nameservers the host had. It is not a recursive
//! resolver and caches nothing: forwarded answers come from the upstream.
//!
//! The wire format is hickory-proto's; nothing here parses DNS by hand.
//! hickory-server does not fit: it owns sockets and runs an async request
//! loop, while queries reach weftd as IP packets read from TUN, and the
//! driver must decide per packet, on the engine's terms, without a socket
//! bound on a host interface. The core takes query bytes and hands back
//! reply bytes or "send these bytes to upstream X".
//!
//! Driving it ([`Resolver`]), in three steps:
//! 1. feed inputs: [`Resolver::handle_query`] (a client's query),
//!    [`Resolver::handle_upstream`] (an upstream's reply),
//!    [`Resolver::handle_upstream_failed`] (it could not be reached),
//!    configuration ([`Resolver::set_netmap`], [`Resolver::set_host_nameservers`]);
//! 2. drain [`Resolver::poll_transmit`] and do the I/O each asks for;
//! 3. ask [`Resolver::poll_timeout`] and call [`Resolver::handle_timeout`]
//!    then (an upstream that did not answer in [`UPSTREAM_TRY`] is
//!    replaced by the next; when none is left the client gets SERVFAIL).

mod names;
mod resolver;

pub use names::{NameSource, NameTable};
pub use resolver::{
    Answer, ForwardId, Origin, Resolver, Route, Stats, Transmit, Transport, Upstream,
};

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// The IPv4 service address (Tailscale's, inside 100.64.0.0/10, so the
/// tailnet route already sends it to TUN).
pub const SERVICE_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);
/// The IPv6 service address, in the project ULA `fd7a:115c:a1e0::/48`
/// (routed to TUN).
pub const SERVICE_V6: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53);
/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// TTL of local answers: short, so a rename or a peer leaving shows soon
/// in caches.
pub const TTL: u32 = 30;
/// How long one upstream gets to answer before the next is tried.
pub const UPSTREAM_TRY: Duration = Duration::from_secs(2);
/// Upstreams tried per query (so a client sees SERVFAIL after at most
/// `MAX_TRIES × UPSTREAM_TRY`, inside dig's 5 s).
pub const MAX_TRIES: usize = 2;
/// Forwarded queries in flight; more are answered SERVFAIL at once.
pub const MAX_PENDING: usize = 4096;
/// Largest UDP answer sent to a client, whatever its EDNS size says
/// (DNS flag day 2020: fits the tunnel MTU without fragments).
pub const MAX_UDP_ANSWER: usize = 1232;

/// Returns whether `ip` is one of the resolver's service addresses.
pub fn is_service_addr(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4 == SERVICE_V4,
        IpAddr::V6(v6) => v6 == SERVICE_V6,
    }
}
