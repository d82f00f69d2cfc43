//! The node's stateful inbound packet filter, sans-IO.
//!
//! `weft-control` compiles the tailnet policy into a [`PacketFilter`] for
//! each destination node; the node enforces it on what it *receives* (see
//! `weft_types::filter`). This crate is that enforcement: a
//! [`CompiledFilter`] built from the rules once per netmap, and a [`Filter`] that
//! the data plane asks about every decrypted inbound packet
//! ([`Filter::inbound_packet`], before the packet is written to TUN) and
//! tells about every outbound packet ([`Filter::outbound_packet`], as it is
//! read from TUN) so that replies to this node's own flows come back in.
//! Packets arrive as `weft_packet` views, checked once upstream (WireGuard's
//! decapsulation, the engine's TUN reader); [`Filter::inbound`] and
//! [`Filter::outbound`] take bytes and check them the same way. It does no
//! I/O, reads no clock (every call takes `now`) and draws no randomness (the
//! hash keys come from a seed).
//!
//! What it is not: a firewall for outbound traffic (outbound packets are
//! never dropped, only tracked), a TCP sequence-number validator, or a
//! fragment reassembler.
//!
//! # Driving it
//! 1. Build one [`Filter`] per data plane with [`Filter::new`] and share it
//!    (`Arc<Filter>`) between the TUN-reading and the decrypting threads;
//!    every method takes `&self`.
//! 2. Call [`Filter::outbound_packet`] for each packet read from TUN and
//!    [`Filter::inbound_packet`] for each decrypted packet; write the packet
//!    to TUN only on [`Verdict::Accept`].
//! 3. Install the policy with [`Filter::set_policy`] (or the
//!    [`Filter::set_filter`], [`Filter::set_local_addrs`],
//!    [`Filter::set_shields_up`] shortcuts) whenever the netmap or the
//!    preferences change; call [`Filter::handle_timeout`] about every
//!    [`SWEEP_INTERVAL`] to free expired flows; read [`Filter::stats`] for
//!    status and metrics.
//!
//! # Semantics
//! A buffer `weft_packet` refuses, or a packet whose fields contradict each
//! other (TCP SYN with FIN or RST, port 0, an RFC 1858 overlapping
//! fragment), is dropped as [`DropReason::Malformed`] (or
//! [`DropReason::Unsupported`], see below). A packet whose destination is not one of the node's own
//! addresses ([`Filter::set_local_addrs`]) is dropped as
//! [`DropReason::NotForUs`]. Then:
//!
//! - **Known flows pass.** A flow is keyed by protocol, both addresses and
//!   both ports (ICMP echo: the echo id and which side sent the request).
//!   An inbound packet of a tracked flow passes whether this node opened
//!   the flow (a reply) or admitted it earlier (a later packet of an
//!   inbound flow).
//! - **New inbound flows are judged.** A TCP SYN without ACK, the first
//!   datagram of a UDP, SCTP or other-protocol flow, and an ICMP echo
//!   request are matched with [`CompiledFilter::allows`] (source, destination,
//!   protocol, destination port; 0 for protocols without ports). Admitted:
//!   the flow is tracked and the packet passes; refused:
//!   [`DropReason::NotAllowed`]. With shields up, every new inbound flow is
//!   refused as [`DropReason::ShieldsUp`].
//! - **TCP segments other than a SYN need a flow.** A non-SYN segment (RST
//!   included) of no tracked flow is dropped as [`DropReason::NoFlow`].
//!   *This is stricter than Tailscale*, which lets every non-SYN segment
//!   through and relies on the receiving stack to reject it; here a
//!   connection the policy no longer allows is cut, not just refused new
//!   SYNs. A bare SYN on the tuple of a connection past its handshake opens
//!   a new connection and is judged again.
//! - **ICMP.** An echo reply passes only for an echo request this node sent
//!   (same peer, same id). An error (destination unreachable, packet too
//!   big, time exceeded, parameter problem) passes only if the packet it
//!   quotes belongs to a tracked flow (checked against the quoted header,
//!   not the error's source, which may be a router); otherwise
//!   [`DropReason::NoFlow`]. Other ICMP types (timestamp, neighbor and
//!   router discovery, …) are judged one by one by the filter and never
//!   tracked. Tailscale lets every echo reply and error through.
//! - **Fragments.** A first fragment is judged like a whole packet on its
//!   transport header (which must be complete in it, RFC 1858). A later
//!   fragment passes only while its datagram's first fragment was accepted
//!   and that flow is still tracked; one that overtakes its first fragment
//!   is dropped as [`DropReason::NoFlow`]. An 8-byte-offset TCP fragment
//!   (the RFC 1858 overlap attack) is [`DropReason::Malformed`].
//! - **IPv6 extension headers** are skipped, up to
//!   [`MAX_EXTENSION_HEADERS`]; more, or a routing header with segments left
//!   (the packet is not really for us), is [`DropReason::Unsupported`].
//! - **Everything else** is denied: the filter is default-deny, and so is
//!   [`Filter::new`] until a policy is installed.
//!
//! Outbound packets open and refresh flows: a TCP SYN opens one (a segment
//! of an unknown connection does not, so a connection the policy cut cannot
//! be revived by the local side retransmitting), any UDP, SCTP or other
//! datagram opens one, an echo request opens one. Flows are never opened for
//! a source address that is not the node's own. So a UDP flow the policy cut
//! comes back only if a local program sends to that peer first — which
//! makes it a flow this node opened.
//!
//! **Policy changes** ([`Filter::set_policy`]) apply to every shard under
//! its lock: each flow an inbound packet opened is judged again against the
//! new policy (filter, shields-up, local addresses) and dropped if no longer
//! allowed, so cut connections stop within one packet; flows it still
//! allows continue untouched. Flows this node opened survive any policy
//! (they only go when their local address does). Shields-up therefore also
//! cuts inbound-opened connections, unlike Tailscale where established TCP
//! survives it.
//!
//! **Timeouts** ([`Timeouts`]) are idle times per state: TCP opening 30 s,
//! established 5 days (as Linux conntrack: because non-SYN segments need a
//! flow here, a short idle timeout would kill quiet SSH sessions), closing
//! (FINs both ways or an RST) 30 s, UDP and other datagrams 60 s, ICMP echo
//! 30 s, fragments 60 s. Expiry is checked on lookup, so a flow is never
//! used past its timeout even if [`Filter::handle_timeout`] is late.
//!
//! **Bounded state.** The table holds at most [`Config::max_flows`] flows,
//! split over [`Config::shards`] shards with one mutex each (flows between
//! the same two addresses over one protocol share a shard). Inserting into a
//! full shard evicts a flow: among the eight least recently used, an
//! expired one, else one not yet two-way (TCP before its SYN-ACK or after
//! its FIN/RST, a datagram flow without a reply), else the least recently
//! used. An evicted TCP connection is cut like a revoked one (its next
//! segment finds no flow), so size the table for the node's load; evictions
//! are counted in [`FilterStats::flows_evicted`]. Flow keys are hashed with
//! keys derived from the seed given to [`Filter::new`], so peers cannot aim
//! at one index bucket. Per packet the steady state allocates nothing (see
//! the `no_alloc` test).
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod classify;
mod compiled;
mod filter;
mod flow;
mod stats;
mod table;

use std::net::IpAddr;
use std::time::Duration;

pub use compiled::{CompiledFilter, RuleRef};
pub use filter::Filter;
pub use stats::FilterStats;
pub use weft_packet::MAX_EXTENSION_HEADERS;
pub use weft_types::filter::{PacketFilter, RuleOrigin};

/// How often the driver should call [`Filter::handle_timeout`]. Being late
/// only delays freeing memory; expired flows are never used.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// What to do with an inbound packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the packet to TUN.
    Accept(Accept),
    /// Discard the packet (already counted in [`Filter::stats`]).
    Drop(DropReason),
}

impl Verdict {
    /// Returns whether the packet may pass.
    #[must_use]
    pub const fn is_accept(&self) -> bool {
        matches!(self, Verdict::Accept(_))
    }
}

/// Why an inbound packet passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// It belongs to a tracked flow.
    Flow,
    /// It opened a new inbound flow, admitted by the policy rule `rule`
    /// came from (`None` for a rule not compiled from a policy file).
    NewFlow {
        /// The admitting rule's place in the policy file.
        rule: Option<RuleOrigin>,
    },
    /// An ICMP error about a tracked flow, or a later fragment of a
    /// datagram whose first fragment passed.
    Related,
    /// A one-off ICMP message (neither echo nor error) the policy admits;
    /// no flow is tracked for it.
    Stateless {
        /// The admitting rule's place in the policy file.
        rule: Option<RuleOrigin>,
    },
}

/// Why an inbound packet was dropped. [`DropReason::as_str`] gives the
/// stable name used in `weft status --json` and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// It does not parse as IPv4/IPv6 down to the transport header, or its
    /// fields contradict each other (TCP SYN+FIN, port 0, an overlapping
    /// fragment).
    Malformed,
    /// It parses but the filter does not handle it: too many IPv6 extension
    /// headers, a routing header with segments left.
    Unsupported,
    /// Its destination is not one of this node's addresses.
    NotForUs,
    /// It would open a new inbound flow the policy does not allow.
    NotAllowed,
    /// It would open a new inbound flow while shields are up.
    ShieldsUp,
    /// It cannot open a flow and belongs to none: a TCP non-SYN segment, an
    /// echo reply to no request of ours, an ICMP error about no tracked
    /// flow, a fragment whose first fragment was not accepted.
    NoFlow,
}

impl DropReason {
    /// Every reason, in order.
    pub const ALL: [DropReason; 6] = [
        Self::Malformed,
        Self::Unsupported,
        Self::NotForUs,
        Self::NotAllowed,
        Self::ShieldsUp,
        Self::NoFlow,
    ];

    /// Returns the reason's stable snake_case name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unsupported => "unsupported",
            Self::NotForUs => "not_for_us",
            Self::NotAllowed => "not_allowed",
            Self::ShieldsUp => "shields_up",
            Self::NoFlow => "no_flow",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`Filter::outbound`] did with a packet. The packet is sent either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outbound {
    /// It opened a flow (or reopened a TCP tuple with a new SYN).
    NewFlow,
    /// It belongs to a tracked flow, now refreshed.
    Flow,
    /// Nothing is tracked for it: a TCP segment of an unknown connection, an
    /// ICMP error or other ICMP, a later fragment, a source address that is
    /// not ours, or a packet that does not parse.
    Untracked,
}

/// The access policy the filter enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// This node's packet filter (from the netmap), compiled.
    pub filter: CompiledFilter,
    /// This node's addresses; inbound packets to anything else are dropped.
    pub local_addrs: Vec<IpAddr>,
    /// Refuse every new inbound flow.
    pub shields_up: bool,
}

impl Policy {
    fn is_local(&self, ip: IpAddr) -> bool {
        self.local_addrs.contains(&ip)
    }
}

/// Idle timeouts per flow state (see the crate docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP after the opening SYN, before the answering SYN-ACK.
    pub tcp_opening: Duration,
    /// TCP after the handshake (including half-closed).
    pub tcp_established: Duration,
    /// TCP after FINs both ways or an RST.
    pub tcp_closing: Duration,
    /// UDP, SCTP and other protocols.
    pub udp: Duration,
    /// ICMP echo.
    pub icmp: Duration,
    /// How long a first fragment keeps its datagram's later fragments
    /// admissible (RFC 8200 §4.5 reassembly time).
    pub fragment: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            tcp_opening: Duration::from_secs(30),
            tcp_established: Duration::from_secs(5 * 24 * 3600),
            tcp_closing: Duration::from_secs(30),
            udp: Duration::from_secs(60),
            icmp: Duration::from_secs(30),
            fragment: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    fn shortest_flow(&self) -> Duration {
        self.tcp_opening
            .min(self.tcp_established)
            .min(self.tcp_closing)
            .min(self.udp)
            .min(self.icmp)
    }
}

/// Sizes and timeouts, fixed at [`Filter::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Flows tracked at most (rounded up to a multiple of the shard count).
    pub max_flows: usize,
    /// Number of independently locked shards (rounded up to a power of two,
    /// at most 1024).
    pub shards: usize,
    /// Fragmented datagrams whose later fragments are awaited, at most
    /// (split over the shards like the flows; the oldest is forgotten first).
    pub max_fragments: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_flows: 16_384,
            shards: 16,
            max_fragments: 1024,
            timeouts: Timeouts::default(),
        }
    }
}
