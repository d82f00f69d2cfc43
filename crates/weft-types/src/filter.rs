//! The compiled access policy as it travels to a node: packet filter rules and
//! SSH rules, as plain data. The matchers live with their engines:
//! `weft_filter::CompiledFilter` (built once per netmap on the node) for the
//! packet filter, `weft_policy::authorize_ssh` for SSH.
//!
//! `weft-control` compiles the tailnet policy (HuJSON, see `docs/POLICY.md`)
//! once per *destination* node and ships the result in the netmap. The node
//! enforces it on what it receives; senders never filter. Everything here is
//! already resolved: no groups, tags or user names, only addresses, ports and
//! protocol numbers (packet filter) or addresses and local user names (SSH).
//!
//! # Packet filter
//!
//! A [`PacketFilter`] is an ordered list of [`FilterRule`]s. A packet is
//! allowed when *some* rule matches it; the filter is default-deny, so an
//! empty filter refuses every new inbound flow (this is also what "shields
//! up" installs). A rule matches when
//! - the packet's protocol is one of the rule's [`FilterRule::protos`] (an
//!   **empty list means TCP, UDP, ICMPv4 and ICMPv6**, see [`proto::DEFAULT`]),
//! - its source address lies in one of [`FilterRule::src`], and
//! - its destination address lies in the prefix of one [`DstPorts`] entry
//!   whose [`PortRange`] admits the packet, where "admits" depends on the
//!   protocol: TCP, UDP and SCTP compare the destination port; ICMPv4 and
//!   ICMPv6 have no ports and are admitted by any entry; every other protocol
//!   is admitted only by an entry that covers all ports (`0-65535`).
//!
//! Stateful parts (replies to this node's own flows, TCP non-SYN segments,
//! ICMP errors) are the engine's business: the filter only judges packets
//! that would open a new flow.
//!
//! # SSH policy
//!
//! An [`SshPolicy`] is an ordered list of [`SshRule`]s evaluated first match
//! wins by the node's SSH server (the evaluator lives in `weft-policy`, which
//! is given a snapshot of the local user database). A rule matches when one
//! of its principals covers the connection's source address and the requested
//! login maps to a local user through [`SshRule::users`].
#![allow(clippy::module_name_repetitions)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// IANA protocol numbers the filter treats specially.
pub mod proto {
    pub use weft_packet::proto::{ICMP, ICMPV6, SCTP, TCP, UDP};

    /// The protocols a rule with an empty [`protos`](super::FilterRule::protos)
    /// list admits: TCP, UDP, ICMPv4 and ICMPv6 (Tailscale's default too).
    pub const DEFAULT: [u8; 4] = [TCP, UDP, ICMP, ICMPV6];

    /// Returns whether packets of `proto` carry a destination port the filter
    /// compares (TCP, UDP, SCTP).
    #[must_use]
    pub const fn has_ports(proto: u8) -> bool {
        matches!(proto, TCP | UDP | SCTP)
    }

    /// Returns whether `proto` is ICMP of either family (ports ignored).
    #[must_use]
    pub const fn is_icmp(proto: u8) -> bool {
        matches!(proto, ICMP | ICMPV6)
    }
}

/// An inclusive range of destination ports, `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    /// First port of the range.
    pub first: u16,
    /// Last port of the range (inclusive, `>= first`).
    pub last: u16,
}

impl PortRange {
    /// Every port, `0-65535`.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// Returns the range holding exactly `port`.
    #[must_use]
    pub const fn single(port: u16) -> Self {
        PortRange {
            first: port,
            last: port,
        }
    }

    /// Returns whether `port` lies in the range.
    #[must_use]
    pub const fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Returns whether the range covers every port.
    #[must_use]
    pub const fn is_all(&self) -> bool {
        self.first == 0 && self.last == u16::MAX
    }

    /// Returns whether a packet of protocol `proto` to `port` is admitted by
    /// this range, following the per-protocol rule in the module docs.
    #[must_use]
    pub const fn admits(&self, proto: u8, port: u16) -> bool {
        if proto::has_ports(proto) {
            self.contains(port)
        } else if proto::is_icmp(proto) {
            true
        } else {
            self.is_all()
        }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            f.write_str("*")
        } else if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One destination of a rule: addresses of the receiving node and the ports
/// open on them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DstPorts {
    /// Destination prefix; usually one of the node's own addresses as a /32 or /128.
    pub net: IpNet,
    /// Ports admitted on `net` (see [`PortRange::admits`] for non-port protocols).
    pub ports: PortRange,
}

/// Where a compiled rule came from in the policy file, so a node can log
/// which rule let a flow in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RuleOrigin {
    /// Index of the rule in the policy's `acls` (packet filter) or `ssh`
    /// (SSH policy) array, from 0.
    pub index: u32,
    /// 1-based line of the rule in the policy file.
    pub line: u32,
}

/// One packet filter rule: sources × destinations × protocols.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterRule {
    /// Source prefixes. "Any source" is `0.0.0.0/0` and `::/0`.
    pub src: Vec<IpNet>,
    /// Destination prefixes with their ports.
    pub dst: Vec<DstPorts>,
    /// IP protocol numbers. **Empty means [`proto::DEFAULT`]** (TCP, UDP,
    /// ICMPv4, ICMPv6), not "every protocol".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub protos: Vec<u8>,
    /// The policy rule this was compiled from; `None` for rules not made from
    /// a policy file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

impl FilterRule {
    /// Returns whether this rule admits protocol `proto`.
    #[must_use]
    pub fn admits_proto(&self, proto: u8) -> bool {
        if self.protos.is_empty() {
            proto::DEFAULT.contains(&proto)
        } else {
            self.protos.contains(&proto)
        }
    }

    /// Returns whether this rule allows the packet, by a plain scan: the
    /// reference semantics that the node's compiled matcher
    /// (`weft_filter::CompiledFilter`) indexes. A source and destination of
    /// different families never match.
    #[must_use]
    pub fn matches(&self, src: IpAddr, dst: IpAddr, proto: u8, dst_port: u16) -> bool {
        src.is_ipv4() == dst.is_ipv4()
            && self.admits_proto(proto)
            && self.src.iter().any(|n| n.contains(&src))
            && self
                .dst
                .iter()
                .any(|d| d.net.contains(&dst) && d.ports.admits(proto, dst_port))
    }
}

/// A node's packet filter as it travels in the netmap: the rules, in order.
/// Plain data: nodes compile it into a matcher (`weft_filter::CompiledFilter`)
/// once per netmap; control only encodes it.
///
/// Serializes as `{"rules": [...]}`. The default filter has no rules and
/// refuses every new inbound flow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketFilter {
    /// The rules, in policy order.
    pub rules: Vec<FilterRule>,
}

impl PacketFilter {
    /// Returns whether the filter has no rules (refuses everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

// ---------------------------------------------------------------------------
// SSH
// ---------------------------------------------------------------------------

/// The key of [`SshRule::users`] that applies to any requested login without
/// an entry of its own.
pub const SSH_ANY_USER: &str = "*";

/// The compiled SSH policy for one node: rules in order, first match wins.
/// The default policy has no rules and refuses every login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshPolicy {
    /// The rules, in policy order.
    pub rules: Vec<SshRule>,
}

/// One SSH rule: who (principals), as whom (users), and how (action).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshRule {
    /// Sources allowed by this rule; a connection matches if its source
    /// address matches any principal.
    pub principals: Vec<SshPrincipal>,
    /// Requested login → local user. A login without its own key uses the
    /// [`SSH_ANY_USER`] (`"*"`) entry; no entry at all means no mapping.
    pub users: BTreeMap<String, LocalUser>,
    /// What to do when this rule matches.
    pub action: SshAction,
    /// The `ssh` rule of the policy file this came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<RuleOrigin>,
}

impl SshRule {
    /// Returns the mapping for `requested`: its own entry, else the `"*"`
    /// entry, else `None` (the rule does not apply to that login).
    #[must_use]
    pub fn local_user_for(&self, requested: &str) -> Option<&LocalUser> {
        self.users
            .get(requested)
            .or_else(|| self.users.get(SSH_ANY_USER))
    }

    /// Returns whether a connection from `src` is covered by a principal.
    #[must_use]
    pub fn matches_source(&self, src: IpAddr) -> bool {
        self.principals.iter().any(|p| p.matches(src))
    }
}

/// Who a rule lets in, by source address (identities are resolved to node
/// addresses by control).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshPrincipal {
    /// Any source address.
    Any,
    /// Sources within this prefix (a node address is a /32 or /128).
    Prefix(IpNet),
}

impl SshPrincipal {
    /// Returns whether `src` is covered.
    #[must_use]
    pub fn matches(&self, src: IpAddr) -> bool {
        match self {
            SshPrincipal::Any => true,
            SshPrincipal::Prefix(n) => n.contains(&src),
        }
    }
}

/// The local account a requested login maps to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalUser {
    /// Log in as exactly this local user (e.g. `"root"` → `root`).
    Named(String),
    /// Log in as the local user with the requested name, **provided its uid
    /// is not 0**; a uid-0 account (whatever its name) is refused. This is how
    /// `autogroup:nonroot` and `localpart:` entries compile.
    SameNameNonRoot,
    /// Explicitly no mapping: the rule does not apply to this login (used to
    /// keep `root` out of a `"*"` entry).
    NoMapping,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshAction {
    /// Accept now, or hold for a fresh check.
    pub mode: SshMode,
    /// Whether SSH agent forwarding is allowed.
    pub allow_agent_forwarding: bool,
    /// Whether local port forwarding (`ssh -L`, `direct-tcpip`) is allowed.
    pub allow_local_port_forwarding: bool,
    /// Whether remote port forwarding (`ssh -R`, `tcpip-forward`) is allowed.
    pub allow_remote_port_forwarding: bool,
    /// Record every session under this rule (the policy's `recorder`);
    /// `None`: no recording. Absent on the wire when `None`, so older
    /// netmaps still parse. Since capability version 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorder: Option<SshRecorder>,
}

/// How the destination node records the sessions of an SSH rule: terminal
/// output (and resizes) always, as asciicast v2 files kept on the node and
/// uploaded to control.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshRecorder {
    /// Also record what the client types (`"i"` events). Off by default:
    /// input carries passwords typed at prompts.
    pub input: bool,
    /// Fail closed: refuse the login when the recording cannot be created,
    /// and end the session when it can no longer be written. When false,
    /// such a session goes on unrecorded (with a warning in the log).
    pub enforce: bool,
}

/// How a matching SSH rule admits a login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshMode {
    /// Let the session start.
    Accept,
    /// Admit only if the user has (re)authenticated with control within
    /// `period`; the node asks control for the decision.
    Check {
        /// How recent the authentication must be.
        period: CheckPeriod,
    },
}

/// The freshness a check-mode rule demands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckPeriod {
    /// Re-authenticate for every session.
    Always,
    /// An authentication younger than this many milliseconds suffices.
    Millis(u64),
}

impl CheckPeriod {
    /// The default check period: 12 hours.
    pub const DEFAULT: CheckPeriod = CheckPeriod::Millis(12 * 60 * 60 * 1000);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_rule_matches_by_source_destination_port_and_protocol() {
        let r = FilterRule {
            src: vec![net("100.64.0.0/24")],
            dst: vec![DstPorts {
                net: net("100.64.1.1/32"),
                ports: PortRange {
                    first: 8000,
                    last: 8099,
                },
            }],
            protos: vec![],
            origin: None,
        };
        let (s, d) = (ip("100.64.0.9"), ip("100.64.1.1"));
        assert!(r.matches(s, d, proto::TCP, 8000));
        assert!(r.matches(s, d, proto::UDP, 8099));
        assert!(r.matches(s, d, proto::ICMP, 0), "ICMP has no ports");
        assert!(!r.matches(s, d, proto::TCP, 8100));
        assert!(!r.matches(s, d, 47, 0), "GRE is not in the default set");
        assert!(!r.matches(ip("100.64.1.9"), d, proto::TCP, 8000));
        assert!(!r.matches(s, ip("100.64.1.2"), proto::TCP, 8000));
        assert!(!r.matches(ip("fd7a:115c:a1e0::9"), d, proto::TCP, 8000));
    }

    #[test]
    fn a_filter_round_trips_through_json() {
        let f = PacketFilter {
            rules: vec![FilterRule {
                src: vec![net("100.64.0.0/10"), net("fd7a:115c:a1e0::/48")],
                dst: vec![DstPorts {
                    net: net("fd7a:115c:a1e0::1/128"),
                    ports: PortRange::single(22),
                }],
                protos: vec![proto::TCP],
                origin: Some(RuleOrigin { index: 3, line: 17 }),
            }],
        };
        let json = serde_json::to_string(&f).unwrap();
        assert_eq!(
            json,
            r#"{"rules":[{"src":["100.64.0.0/10","fd7a:115c:a1e0::/48"],"dst":[{"net":"fd7a:115c:a1e0::1/128","ports":{"first":22,"last":22}}],"protos":[6],"origin":{"index":3,"line":17}}]}"#
        );
        let back: PacketFilter = serde_json::from_str(&json).unwrap();
        assert_eq!(back, f);
        assert!(back.rules[0].matches(
            ip("fd7a:115c:a1e0::7"),
            ip("fd7a:115c:a1e0::1"),
            proto::TCP,
            22
        ));
    }

    #[test]
    fn ssh_types_have_a_stable_json_form() {
        let policy = SshPolicy {
            rules: vec![SshRule {
                principals: vec![
                    SshPrincipal::Any,
                    SshPrincipal::Prefix(net("100.64.0.7/32")),
                ],
                users: [
                    ("*".to_string(), LocalUser::SameNameNonRoot),
                    ("root".to_string(), LocalUser::NoMapping),
                    ("deploy".to_string(), LocalUser::Named("deploy".into())),
                ]
                .into_iter()
                .collect(),
                action: SshAction {
                    mode: SshMode::Check {
                        period: CheckPeriod::DEFAULT,
                    },
                    allow_agent_forwarding: true,
                    allow_local_port_forwarding: true,
                    allow_remote_port_forwarding: false,
                    recorder: None,
                },
                origin: Some(RuleOrigin { index: 0, line: 4 }),
            }],
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(
            json,
            r#"{"rules":[{"principals":["any",{"prefix":"100.64.0.7/32"}],"users":{"*":"same_name_non_root","deploy":{"named":"deploy"},"root":"no_mapping"},"action":{"mode":{"check":{"period":{"millis":43200000}}},"allow_agent_forwarding":true,"allow_local_port_forwarding":true,"allow_remote_port_forwarding":false},"origin":{"index":0,"line":4}}]}"#
        );
        let back: SshPolicy = serde_json::from_str(&json).unwrap();
        assert_eq!(back, policy);
        let r = &policy.rules[0];
        assert_eq!(r.local_user_for("root"), Some(&LocalUser::NoMapping));
        assert_eq!(r.local_user_for("bob"), Some(&LocalUser::SameNameNonRoot));
        assert!(r.matches_source(ip("fd7a:115c:a1e0::1")));
    }
}
