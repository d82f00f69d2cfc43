//! The little languages inside policy strings: selectors, `alias:ports`,
//! protocols, SSH users, check periods and names.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use weft_types::filter::{CheckPeriod, PortRange, proto};

use crate::error::ErrorKind;
use crate::policy::{Autogroup, Selector, SshUser};

/// Names defined by the policy, which selectors may refer to.
pub(crate) struct Names<'a> {
    pub groups: &'a BTreeMap<String, Vec<String>>,
    pub tags: &'a [String],
    pub hosts: &'a BTreeMap<String, IpNet>,
}

/// Where a selector appears; decides which forms are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    AclSrc,
    AclDst,
    SshSrc,
    SshDst,
    /// `src` of `tests`/`sshTests` and the targets they try.
    TestEndpoint,
}

const KNOWN_AUTOGROUPS: &[&str] = &[
    "autogroup:member",
    "autogroup:tagged",
    "autogroup:admin",
    "autogroup:self",
];
const TAILSCALE_ONLY_AUTOGROUPS: &[&str] = &[
    "autogroup:owner",
    "autogroup:it-admin",
    "autogroup:network-admin",
    "autogroup:billing-admin",
    "autogroup:auditor",
    "autogroup:shared",
    "autogroup:internet",
    "autogroup:danger-all",
];

/// Parses a selector (`*`, login, `group:`, `tag:`, `autogroup:`, host, IP, CIDR).
pub(crate) fn selector(s: &str, place: Place, names: &Names<'_>) -> Result<Selector, ErrorKind> {
    let sel = selector_any_place(s, names)?;
    let not_here = |reason: &'static str| {
        Err(ErrorKind::NotAllowedHere {
            name: s.to_string(),
            reason,
        })
    };
    match (&sel, place) {
        (Selector::Autogroup(Autogroup::SelfDevices), Place::AclSrc | Place::SshSrc) => not_here(
            "autogroup:self is only valid in dst (it means \"the source user's own devices\")",
        ),
        (Selector::Autogroup(Autogroup::SelfDevices), Place::TestEndpoint) => {
            not_here("tests name one identity: a user, tag, host or IP")
        }
        (Selector::Any | Selector::Group(_) | Selector::Autogroup(_), Place::TestEndpoint) => {
            not_here("tests name one identity: a user, tag, host or IP")
        }
        (Selector::Host(_, net) | Selector::Prefix(net), Place::TestEndpoint)
            if net.prefix_len() != net.max_prefix_len() =>
        {
            not_here("tests name one address, not a range")
        }
        _ => Ok(sel),
    }
}

/// Checks that `sel` may be a source of a rule whose `dst` has
/// `autogroup:self` (`place` is [`Place::AclSrc`] or [`Place::SshSrc`]).
///
/// Tailscale's rule, which Weft mirrors: such a rule takes only sources that
/// are users: logins, groups and the autogroups of users (Tailscale: "users,
/// groups, or supported autogroups"). Tags, `autogroup:tagged`, hosts and
/// addresses have no user whose devices autogroup:self could mean. In `acls`
/// Tailscale also accepts `*` (each user then reaches their own devices); in
/// `ssh` it does not ("autogroup:self, if the source contains only users or
/// groups").
pub(crate) fn self_source(sel: &Selector, text: &str, place: Place) -> Result<(), ErrorKind> {
    let allowed = if place == Place::SshSrc {
        "user logins, groups, autogroup:member or autogroup:admin"
    } else {
        "user logins, groups, autogroup:member, autogroup:admin or \"*\""
    };
    let why = match sel {
        Selector::User(_)
        | Selector::Group(_)
        | Selector::Autogroup(Autogroup::Member | Autogroup::Admin) => return Ok(()),
        Selector::Any if place != Place::SshSrc => return Ok(()),
        Selector::Any => "in ssh rules \"*\" takes in tagged devices, which have no user",
        Selector::Tag(_) | Selector::Autogroup(Autogroup::Tagged) => "tagged devices have no user",
        Selector::Host(..) | Selector::Prefix(_) => "an address has no user",
        // Refused in any src before this check; kept total for safety.
        Selector::Autogroup(Autogroup::SelfDevices) => "autogroup:self is only valid in dst",
    };
    Err(ErrorKind::SelfNeedsUserSource {
        name: text.to_string(),
        why,
        allowed,
    })
}

fn selector_any_place(s: &str, names: &Names<'_>) -> Result<Selector, ErrorKind> {
    if s == "*" {
        return Ok(Selector::Any);
    }
    if let Some(rest) = s.strip_prefix("autogroup:") {
        return match rest {
            "member" => Ok(Selector::Autogroup(Autogroup::Member)),
            "tagged" => Ok(Selector::Autogroup(Autogroup::Tagged)),
            "admin" => Ok(Selector::Autogroup(Autogroup::Admin)),
            "self" => Ok(Selector::Autogroup(Autogroup::SelfDevices)),
            "nonroot" => Err(ErrorKind::NotAllowedHere {
                name: s.to_string(),
                reason: "autogroup:nonroot is only valid in the \"users\" of an ssh rule",
            }),
            "internet" => Err(ErrorKind::Unsupported {
                field: s.to_string(),
                hint: "autogroup:internet needs exit nodes, which are not supported yet",
            }),
            _ if TAILSCALE_ONLY_AUTOGROUPS.contains(&s) => Err(ErrorKind::Unsupported {
                field: s.to_string(),
                hint: "Weft knows autogroup:member, autogroup:tagged, autogroup:admin and autogroup:self",
            }),
            _ => Err(ErrorKind::UnknownAutogroup {
                name: s.to_string(),
                known: KNOWN_AUTOGROUPS.to_vec(),
            }),
        };
    }
    if s.starts_with("group:") {
        group_name(s)?;
        if !names.groups.contains_key(s) && !is_idp_group(s) {
            return Err(ErrorKind::UnknownGroup {
                name: s.to_string(),
                defined: names.groups.keys().cloned().collect(),
            });
        }
        return Ok(Selector::Group(s.to_string()));
    }
    if s.starts_with("tag:") {
        tag_name(s)?;
        if !names.tags.iter().any(|t| t == s) {
            return Err(ErrorKind::UnknownTag {
                name: s.to_string(),
                defined: names.tags.to_vec(),
            });
        }
        return Ok(Selector::Tag(s.to_string()));
    }
    if s.contains('@') {
        user_login(s)?;
        return Ok(Selector::User(s.to_string()));
    }
    if let Some(net) = names.hosts.get(s) {
        return Ok(Selector::Host(s.to_string(), *net));
    }
    if looks_like_address(s) {
        return address(s).map(Selector::Prefix);
    }
    Err(ErrorKind::UnknownHost {
        name: s.to_string(),
        defined: names.hosts.keys().cloned().collect(),
    })
}

fn looks_like_address(s: &str) -> bool {
    s.contains(':') || s.contains('/') || s.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// Parses an IP address (as a full-length prefix) or a CIDR (host bits are
/// cleared, as Tailscale does).
pub(crate) fn address(s: &str) -> Result<IpNet, ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadAddress {
            text: s.to_string(),
            reason,
        })
    };
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    match s.split_once('/') {
        Some((addr, len)) => {
            let Ok(ip) = addr.parse::<IpAddr>() else {
                return bad("the part before `/` is not an IP address");
            };
            let max = if ip.is_ipv4() { 32 } else { 128 };
            match len.parse::<u8>() {
                Ok(l) if l <= max && !len.starts_with('+') => IpNet::new(ip, l)
                    .map(|n| n.trunc())
                    .or_else(|_| bad("invalid prefix length")),
                _ if ip.is_ipv4() => bad("the prefix length must be 0-32"),
                _ => bad("the prefix length must be 0-128"),
            }
        }
        None => {
            bad("expected an IPv4 or IPv6 address such as 100.64.0.1, or a CIDR such as 10.0.0.0/8")
        }
    }
}

/// Checks `group:name`.
pub(crate) fn group_name(s: &str) -> Result<(), ErrorKind> {
    prefixed_name(s, "group:", "group name")
}

/// Returns whether `group:x` names a group of the identity provider: one
/// with a `:` after `group:` (`group:oidc:engineering`). The policy may use
/// such a group without defining it; its members come from the users'
/// [`crate::User::groups`] (and the policy's `groups`, if it lists it too).
#[must_use]
pub fn is_idp_group(s: &str) -> bool {
    s.strip_prefix("group:").is_some_and(|n| n.contains(':'))
}

/// Checks `tag:name`: valid exactly when it is a `weft_types::Tag`, a tag a
/// node can carry; the error says which rule it breaks.
pub(crate) fn tag_name(s: &str) -> Result<(), ErrorKind> {
    if s.parse::<weft_types::Tag>().is_ok() {
        return Ok(());
    }
    let bad = |reason| {
        Err(ErrorKind::BadName {
            what: "tag",
            text: s.to_string(),
            reason,
        })
    };
    let Some(name) = s.strip_prefix(weft_types::names::TAG_PREFIX) else {
        return bad("tags start with \"tag:\"");
    };
    match name.chars().next() {
        None => bad("the name after the prefix is empty"),
        Some(c) if !c.is_ascii_alphabetic() => bad("the name must start with a letter"),
        _ if name.len() > weft_types::names::TAG_NAME_MAX_LEN => {
            bad("at most 63 characters after \"tag:\"")
        }
        _ => bad("use letters, digits and `-` only"),
    }
}

fn prefixed_name(s: &str, prefix: &str, what: &'static str) -> Result<(), ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadName {
            what,
            text: s.to_string(),
            reason,
        })
    };
    let Some(name) = s.strip_prefix(prefix) else {
        return bad("group names start with \"group:\"");
    };
    let mut chars = name.chars();
    match chars.next() {
        None => bad("the name after the prefix is empty"),
        Some(c) if !c.is_ascii_alphabetic() => bad("the name must start with a letter"),
        _ if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')) => {
            bad("use letters, digits, `-`, `_`, `.` and `:` only")
        }
        _ => Ok(()),
    }
}

/// Checks a user login (`local@domain`).
pub(crate) fn user_login(s: &str) -> Result<(), ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadName {
            what: "user login",
            text: s.to_string(),
            reason,
        })
    };
    match s.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            if s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ':')
            {
                bad("logins contain no spaces or `:`")
            } else {
                Ok(())
            }
        }
        _ => bad("expected a login like alice@example.com"),
    }
}

/// Checks a host alias name (a key of `hosts`).
pub(crate) fn host_name(s: &str) -> Result<(), ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadName {
            what: "host name",
            text: s.to_string(),
            reason,
        })
    };
    if s.is_empty() {
        return bad("the name is empty");
    }
    if s.starts_with("group:") || s.starts_with("tag:") || s.starts_with("autogroup:") || s == "*" {
        return bad("host names cannot look like a group, tag or autogroup");
    }
    if s.parse::<IpAddr>().is_ok() || s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return bad("a host name cannot look like an address");
    }
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        || !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
    {
        return bad("use letters, digits, `-`, `_` and `.`, starting with a letter or digit");
    }
    Ok(())
}

/// Splits `alias:ports` at the port separator. IPv6 addresses take the
/// bracket form `[fd13::1]:22` or a CIDR (`fd13::1/128:22`).
pub(crate) fn split_dst(s: &str) -> Result<(&str, &str), ErrorKind> {
    if let Some(rest) = s.strip_prefix('[') {
        return match rest.split_once("]:") {
            Some((addr, ports)) => Ok((addr, ports)),
            None => Err(ErrorKind::BadPort {
                text: s.to_string(),
                reason: "expected `[address]:ports`, e.g. \"[fd7a:115c:a1e0::1]:22\"".to_string(),
            }),
        };
    }
    match s.rsplit_once(':') {
        Some((alias, ports)) if !alias.is_empty() && !alias.ends_with(':') => Ok((alias, ports)),
        _ => Err(ErrorKind::BadPort {
            text: s.to_string(),
            reason: format!(
                "a destination needs ports: write \"{s}:*\" for all ports or \"{s}:22\" for one"
            ),
        }),
    }
}

/// Parses `*`, `22`, `80,443`, `8000-8099` or a mix (`22,8000-8099`).
pub(crate) fn ports(s: &str) -> Result<Vec<PortRange>, ErrorKind> {
    if s == "*" {
        return Ok(vec![PortRange::ALL]);
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (port_number(a, s)?, port_number(b, s)?);
                if first > last {
                    return Err(ErrorKind::PortRangeReversed { first, last });
                }
                PortRange { first, last }
            }
            None => PortRange::single(port_number(part, s)?),
        };
        out.push(range);
    }
    Ok(out)
}

fn port_number(p: &str, whole: &str) -> Result<u16, ErrorKind> {
    let bad = |reason: String| {
        Err(ErrorKind::BadPort {
            text: whole.to_string(),
            reason,
        })
    };
    if p.is_empty() {
        return bad(
            "expected `*`, a port, a range like 8000-8099 or a comma-separated list".to_string(),
        );
    }
    if !p.bytes().all(|b| b.is_ascii_digit()) {
        return bad(format!("\"{p}\" is not a port number"));
    }
    // All digits: the only way left to fail is being too large.
    p.parse::<u16>()
        .or_else(|_| bad(format!("{p} is larger than 65535")))
}

/// Parses an ACL `proto`: a name or an IANA number. `icmp` means both ICMPv4
/// and ICMPv6.
pub(crate) fn protos(s: &str) -> Result<Vec<u8>, ErrorKind> {
    let one = match s.to_ascii_lowercase().as_str() {
        "tcp" => proto::TCP,
        "udp" => proto::UDP,
        "icmp" => return Ok(vec![proto::ICMP, proto::ICMPV6]),
        "ipv6-icmp" | "icmpv6" => proto::ICMPV6,
        "sctp" => proto::SCTP,
        "igmp" => 2,
        "ipv4" | "ip-in-ip" => 4,
        "egp" => 8,
        "igp" => 9,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "fc" => 133,
        n => n
            .parse::<u8>()
            .map_err(|_| ErrorKind::BadProto(s.to_string()))?,
    };
    Ok(vec![one])
}

/// Returns a short protocol name for output.
#[must_use]
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "ipv6-icmp".into(),
        proto::SCTP => "sctp".into(),
        2 => "igmp".into(),
        4 => "ipv4".into(),
        47 => "gre".into(),
        50 => "esp".into(),
        51 => "ah".into(),
        n => format!("proto {n}"),
    }
}

/// Parses an SSH `users` entry.
pub(crate) fn ssh_user(s: &str) -> Result<SshUser, ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadSshUser {
            text: s.to_string(),
            reason,
        })
    };
    if s == "root" {
        return Ok(SshUser::Root);
    }
    if s == "autogroup:nonroot" {
        return Ok(SshUser::NonRoot);
    }
    if let Some(rest) = s.strip_prefix("autogroup:") {
        let _ = rest;
        return Err(ErrorKind::UnknownAutogroup {
            name: s.to_string(),
            known: vec!["autogroup:nonroot"],
        });
    }
    if let Some(rest) = s.strip_prefix("localpart:") {
        return match rest.strip_prefix("*@") {
            Some(domain) if !domain.is_empty() && !domain.contains(['@', ' ', ':']) => {
                Ok(SshUser::Localpart {
                    domain: domain.to_string(),
                })
            }
            _ => bad("expected localpart:*@example.com"),
        };
    }
    if s == "*" {
        return bad("use \"autogroup:nonroot\" for any non-root user");
    }
    local_user_name(s).map(|()| SshUser::Named(s.to_string())).or_else(|_| bad("local user names use letters, digits, `_`, `.` and `-` (at most 32), not starting with `-`"))
}

/// Checks a local (Unix) user name.
pub(crate) fn local_user_name(s: &str) -> Result<(), ErrorKind> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.strip_suffix('$')
            .unwrap_or(s)
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ErrorKind::BadSshUser {
            text: s.to_string(),
            reason: "not a valid local user name",
        })
    }
}

/// Parses a `checkPeriod`: `always`, or a duration like `12h`, `30m`,
/// `1h30m`, `90s`, between 1 minute and 168 hours.
pub(crate) fn check_period(s: &str) -> Result<CheckPeriod, ErrorKind> {
    let bad = |reason| {
        Err(ErrorKind::BadCheckPeriod {
            text: s.to_string(),
            reason,
        })
    };
    if s == "always" {
        return Ok(CheckPeriod::Always);
    }
    let mut total_ms: u64 = 0;
    let mut digits = String::new();
    let mut any = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit_ms: u64 = match c {
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1000,
            _ => return bad("expected \"always\" or a duration like 12h, 30m or 1h30m"),
        };
        let Ok(n) = digits.parse::<u64>() else {
            return bad("expected a number before each unit, e.g. 12h");
        };
        total_ms = total_ms.saturating_add(n.saturating_mul(unit_ms));
        digits.clear();
        any = true;
    }
    if !any || !digits.is_empty() {
        return bad("expected \"always\" or a duration with units, e.g. 12h, 30m or 1h30m");
    }
    if total_ms < 60_000 {
        return bad("the shortest check period is 1m");
    }
    if total_ms > 168 * 3_600_000 {
        return bad("the longest check period is 168h");
    }
    Ok(CheckPeriod::Millis(total_ms))
}
