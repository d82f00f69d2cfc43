//! Direct evaluation of the policy for one source and one destination, with
//! reasons. This is what `explain` and the policy `tests` run; the compiler
//! ([`crate::compile`]) produces the same answers in bulk, and a property
//! test holds the two to each other.

use std::net::IpAddr;

use weft_types::filter::{PortRange, proto};

use crate::policy::{AclRule, Autogroup, Policy, Selector, SshRuleAction, SshRuleSpec, SshUser};
use crate::tailnet::{Endpoint, Tailnet};

/// One concrete party in an evaluation: an identity, and maybe an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Probe {
    /// The user identity (untagged devices and users only).
    pub user: Option<String>,
    /// Tags (tagged devices and tag identities).
    pub tags: Vec<String>,
    /// The address, when the party is a device or an address.
    pub addr: Option<IpAddr>,
    /// How to name it in output.
    pub label: String,
}

impl Probe {
    pub(crate) fn node(tailnet: &Tailnet, index: usize, addr: Option<IpAddr>) -> Option<Probe> {
        let n = tailnet.nodes().get(index)?;
        Some(Probe {
            user: n.owner_name().map(str::to_string),
            tags: n.tag_names(),
            addr,
            label: n.name.to_string(),
        })
    }

    pub(crate) fn user(login: &str) -> Probe {
        Probe {
            user: Some(login.to_string()),
            tags: Vec::new(),
            addr: None,
            label: login.to_string(),
        }
    }

    pub(crate) fn tag(tag: &str) -> Probe {
        Probe {
            user: None,
            tags: vec![tag.to_string()],
            addr: None,
            label: tag.to_string(),
        }
    }

    pub(crate) fn address(tailnet: &Tailnet, addr: IpAddr) -> Probe {
        match tailnet.node_by_addr(addr) {
            Some(n) => Probe {
                user: n.owner_name().map(str::to_string),
                tags: n.tag_names(),
                addr: Some(addr),
                label: n.name.to_string(),
            },
            None => Probe {
                user: None,
                tags: Vec::new(),
                addr: Some(addr),
                label: addr.to_string(),
            },
        }
    }
}

/// Turns endpoints into a pair of probes with addresses of one family.
///
/// # Errors
/// The two sides have no address family in common.
pub(crate) fn probe_pair(
    tailnet: &Tailnet,
    src: &Endpoint,
    dst: &Endpoint,
) -> Result<(Probe, Probe), String> {
    let fixed = |e: &Endpoint| match e {
        Endpoint::Node { addr: Some(a), .. } | Endpoint::Address(a) => Some(a.is_ipv4()),
        _ => None,
    };
    let node_families = |e: &Endpoint| match e {
        Endpoint::Node { id, addr: None } => tailnet
            .node(*id)
            .map(|n| (n.ipv4.is_some(), n.ipv6.is_some())),
        _ => None,
    };
    let v4 = match (fixed(src), fixed(dst)) {
        (Some(a), Some(b)) if a != b => {
            return Err("the source and destination addresses are of different families".into());
        }
        (Some(a), _) | (_, Some(a)) => a,
        _ => match (node_families(src), node_families(dst)) {
            (Some((s4, _)), Some((d4, _))) if s4 && d4 => true,
            (Some((_, s6)), Some((_, d6))) if s6 && d6 => false,
            (Some(_), Some(_)) => {
                return Err("the two nodes have no address family in common".into());
            }
            (Some((s4, _)), None) => s4,
            (None, Some((d4, _))) => d4,
            (None, None) => true,
        },
    };
    let probe = |e: &Endpoint| -> Result<Probe, String> {
        Ok(match e {
            Endpoint::Node { id, addr } => {
                let index = tailnet
                    .index_of(*id)
                    .ok_or_else(|| format!("no node with id {id}"))?;
                let node = tailnet
                    .nodes()
                    .get(index)
                    .ok_or_else(|| format!("no node with id {id}"))?;
                let addr = match addr {
                    Some(a) => Some(*a),
                    None => Some(node.address(v4).ok_or_else(|| {
                        format!("{} has no IPv{} address", node.name, if v4 { 4 } else { 6 })
                    })?),
                };
                Probe::node(tailnet, index, addr).ok_or_else(|| format!("no node with id {id}"))?
            }
            Endpoint::User(u) => Probe::user(u.as_str()),
            Endpoint::Tag(t) => Probe::tag(t.as_str()),
            Endpoint::Address(a) => Probe::address(tailnet, *a),
        })
    };
    Ok((probe(src)?, probe(dst)?))
}

/// The outcome of one selector test: `Ok(why it matched)` or `Err(why not)`.
pub(crate) type Why = Result<String, String>;

/// Tests a source selector against a probe.
pub(crate) fn match_src(policy: &Policy, tailnet: &Tailnet, sel: &Selector, p: &Probe) -> Why {
    match_party(policy, tailnet, sel, p)
}

/// Tests a destination target against a probe; `autogroup:self` also looks
/// at the source.
pub(crate) fn match_dst(
    policy: &Policy,
    tailnet: &Tailnet,
    sel: &Selector,
    src: &Probe,
    dst: &Probe,
) -> Why {
    if let Selector::Autogroup(Autogroup::SelfDevices) = sel {
        return match (&src.user, &dst.user) {
            (Some(s), Some(d)) if s == d => Ok(format!(
                "{} belongs to {s}, the source's own user",
                dst.label
            )),
            (Some(s), Some(d)) => Err(format!(
                "{} belongs to {d}, not to the source user {s}",
                dst.label
            )),
            (None, _) => Err(format!(
                "autogroup:self needs a user as source; {} has no user identity",
                src.label
            )),
            (_, None) => Err(format!(
                "{} is not a user's device (tagged devices are never autogroup:self)",
                dst.label
            )),
        };
    }
    match_party(policy, tailnet, sel, dst)
}

fn match_party(policy: &Policy, tailnet: &Tailnet, sel: &Selector, p: &Probe) -> Why {
    let who = &p.label;
    let identity = || -> String {
        match (&p.user, p.tags.is_empty()) {
            (Some(u), _) if u == who => u.clone(),
            (Some(u), _) => format!("{who} ({u})"),
            (None, false) => format!("{who} (tagged {})", p.tags.join(", ")),
            (None, true) => who.clone(),
        }
    };
    match sel {
        Selector::Any => Ok("* matches everything".into()),
        Selector::User(u) => match &p.user {
            Some(pu) if pu == u => Ok(if pu == who {
                format!("{u} is that user")
            } else {
                format!("{who} belongs to {u}")
            }),
            Some(_) => Err(format!("{} is not {u}", identity())),
            None if !p.tags.is_empty() => Err(format!(
                "{} is tagged, so it has no user identity",
                identity()
            )),
            None => Err(format!("{} has no user identity", identity())),
        },
        Selector::Group(g) => {
            let members = policy.groups.get(g).map_or(&[][..], Vec::as_slice);
            match &p.user {
                Some(pu) if members.contains(pu) => Ok(format!("{pu} is a member of {g}")),
                Some(pu) if tailnet.in_idp_group(pu, g) => Ok(format!(
                    "{pu} is a member of {g} (a group of the identity provider, as of their last login)"
                )),
                Some(pu) => {
                    let mut all = members.to_vec();
                    all.extend(tailnet.idp_group_members(g).iter().cloned());
                    Err(format!(
                        "{pu} is not a member of {g} ({})",
                        members_list(&all)
                    ))
                }
                None if !p.tags.is_empty() => {
                    Err(format!("{} is tagged, so it is in no group", identity()))
                }
                None => Err(format!("{} has no user identity", identity())),
            }
        }
        Selector::Tag(t) => {
            if p.tags.contains(t) {
                Ok(format!("{who} is tagged {t}"))
            } else {
                Err(format!("{} is not tagged {t}", identity()))
            }
        }
        Selector::Autogroup(Autogroup::Member) => match &p.user {
            Some(u) => Ok(format!("{who} is a member's device ({u})")),
            None => Err(format!("{} is not a user's device", identity())),
        },
        Selector::Autogroup(Autogroup::Tagged) => {
            if p.tags.is_empty() {
                Err(format!("{} has no tags", identity()))
            } else {
                Ok(format!("{who} is tagged {}", p.tags.join(", ")))
            }
        }
        Selector::Autogroup(Autogroup::Admin) => match &p.user {
            Some(u) if tailnet.is_admin(u) => Ok(format!("{u} is an admin")),
            Some(u) => Err(format!("{u} is not an admin")),
            None => Err(format!("{} has no user identity", identity())),
        },
        Selector::Autogroup(Autogroup::SelfDevices) => {
            Err("autogroup:self only applies to destinations".into())
        }
        Selector::Host(name, net) => match p.addr {
            Some(a) if net.contains(&a) => Ok(format!("{a} is host {name} ({net})")),
            Some(a) => Err(format!("{a} is not in host {name} ({net})")),
            None => Err(format!(
                "{who} is an identity without an address, and {name} is matched by address"
            )),
        },
        Selector::Prefix(net) => match p.addr {
            Some(a) if net.contains(&a) => Ok(format!("{a} is in {net}")),
            Some(a) => Err(format!("{a} is not in {net}")),
            None => Err(format!(
                "{who} is an identity without an address, and {net} is matched by address"
            )),
        },
    }
}

fn members_list(m: &[String]) -> String {
    if m.is_empty() {
        "the group is empty".into()
    } else {
        format!("members: {}", m.join(", "))
    }
}

/// Returns the protocol number to try for `proto` between these probes:
/// ICMP becomes ICMPv6 between IPv6 addresses.
pub(crate) fn effective_proto(proto_num: u8, src: &Probe, dst: &Probe) -> u8 {
    let v6 = src.addr.or(dst.addr).is_some_and(|a| a.is_ipv6());
    if proto_num == proto::ICMP && v6 {
        proto::ICMPV6
    } else {
        proto_num
    }
}

/// Returns whether the rule admits the protocol.
pub(crate) fn rule_admits_proto(rule: &AclRule, proto_num: u8) -> bool {
    if rule.protos.is_empty() {
        proto::DEFAULT.contains(&proto_num)
    } else {
        rule.protos.contains(&proto_num)
    }
}

/// Returns whether any of `ports` admits the packet.
pub(crate) fn ports_admit(ports: &[PortRange], proto_num: u8, port: u16) -> bool {
    ports.iter().any(|r| r.admits(proto_num, port))
}

/// A rule that allows the flow: which rule, source selector and destination entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hit {
    pub rule: usize,
    pub src: usize,
    pub dst: usize,
}

/// Returns every ACL rule that allows `src` → `dst` on `proto`/`port`, in order.
pub(crate) fn allowing_rules(
    policy: &Policy,
    tailnet: &Tailnet,
    src: &Probe,
    dst: &Probe,
    proto_num: u8,
    port: u16,
) -> Vec<Hit> {
    let mut hits = Vec::new();
    for (ri, rule) in policy.acls.iter().enumerate() {
        if !rule_admits_proto(rule, proto_num) {
            continue;
        }
        let Some(si) = rule
            .src
            .iter()
            .position(|s| match_src(policy, tailnet, &s.value, src).is_ok())
        else {
            continue;
        };
        let di = rule.dst.iter().position(|d| {
            ports_admit(&d.value.ports, proto_num, port)
                && match_dst(policy, tailnet, &d.value.target, src, dst).is_ok()
        });
        if let Some(di) = di {
            hits.push(Hit {
                rule: ri,
                src: si,
                dst: di,
            });
        }
    }
    hits
}

/// The result of evaluating `ssh` rules for one login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SshVerdict {
    /// An accept rule admits it.
    Accept { rule: usize, local: String },
    /// A check rule admits it after a check.
    Check { rule: usize, local: String },
    /// No rule maps the login.
    Deny,
}

/// Maps `login` through a rule's users at the policy level. A name is
/// taken to be uid 0 exactly when it is `root` (the local user database is
/// the node's business).
pub(crate) fn map_ssh_user(rule: &SshRuleSpec, src: &Probe, login: &str) -> Option<String> {
    for u in &rule.users {
        match &u.value {
            SshUser::Root if login == "root" => return Some("root".into()),
            SshUser::NonRoot if login != "root" => return Some(login.to_string()),
            SshUser::Named(n) if n == login => return Some(login.to_string()),
            SshUser::Localpart { domain }
                if login != "root"
                    && src
                        .user
                        .as_deref()
                        .is_some_and(|u| u.split_once('@') == Some((login, domain.as_str()))) =>
            {
                return Some(login.to_string());
            }
            _ => {}
        }
    }
    None
}

/// Evaluates `ssh` rules in order for `src` connecting to `dst` as `login`.
pub(crate) fn ssh_decide(
    policy: &Policy,
    tailnet: &Tailnet,
    src: &Probe,
    dst: &Probe,
    login: &str,
) -> SshVerdict {
    for (ri, rule) in policy.ssh.iter().enumerate() {
        if !rule
            .src
            .iter()
            .any(|s| match_src(policy, tailnet, &s.value, src).is_ok())
        {
            continue;
        }
        if !rule
            .dst
            .iter()
            .any(|d| match_dst(policy, tailnet, &d.value, src, dst).is_ok())
        {
            continue;
        }
        let Some(local) = map_ssh_user(rule, src, login) else {
            continue;
        };
        return match rule.action {
            SshRuleAction::Accept => SshVerdict::Accept { rule: ri, local },
            SshRuleAction::Check(_) => SshVerdict::Check { rule: ri, local },
        };
    }
    SshVerdict::Deny
}
