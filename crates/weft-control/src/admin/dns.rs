//! The tailnet's DNS settings as the admin edits them: parsing what was
//! typed, applying a partial change, and refusing settings that would break
//! name resolution. Pure: the admin service stores the result and hands it
//! to the coordinator, which publishes it as `Delta::Dns`.
//!
//! What is refused, each with a one-line reason:
//! - a resolver (global or split-DNS) that is a Weft address: the MagicDNS
//!   service address 100.100.100.100, anything in the project ULA
//!   (`fd7a:115c:a1e0::/48`, which holds the IPv6 service address) or in the
//!   tailnet's address pool. The node's resolver would forward to itself or
//!   to a peer's resolver, which forwards back: a loop;
//! - unspecified and multicast resolver or record addresses;
//! - text that is not a DNS name (names are lowercased and a trailing dot
//!   dropped first, so `Corp.Example.COM.` is `corp.example.com`);
//! - a split-DNS route for the tailnet domain or a name under it (MagicDNS
//!   answers those), and the tailnet domain as an extra search domain (it is
//!   implicitly the first one);
//! - more than [`MAX_NAMESERVERS`], [`MAX_SEARCH_DOMAINS`], [`MAX_ROUTES`],
//!   [`MAX_ROUTE_RESOLVERS`] per route or [`MAX_RECORDS`].

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::{Ipv4Net, Ipv6Net};
use weft_control_store::alloc::{MAGICDNS_V4, TAILNET_V6};
use weft_types::DnsName;
use weft_types::netmap::{DnsConfig, DnsRecord};

use super::types::{DnsPatch, DnsRecordView, DnsSettingsBody, DnsView};

/// Global nameservers, at most.
pub const MAX_NAMESERVERS: usize = 8;
/// Extra search domains, at most (glibc reads six; other resolvers more).
pub const MAX_SEARCH_DOMAINS: usize = 16;
/// Split-DNS routes, at most.
pub const MAX_ROUTES: usize = 256;
/// Resolvers per split-DNS route, at most.
pub const MAX_ROUTE_RESOLVERS: usize = 8;
/// Extra records, at most.
pub const MAX_RECORDS: usize = 1024;

/// What validation needs to know about the tailnet.
#[derive(Debug, Clone)]
pub(crate) struct Tailnet {
    /// The tailnet domain.
    pub domain: DnsName,
    /// The pool node addresses come from.
    pub pool_v4: Ipv4Net,
    pub pool_v6: Ipv6Net,
}

pub(crate) use crate::state::default_dns_config as default_config;

/// Builds settings from a `PUT /dns` body.
///
/// # Errors
/// A one-line reason (see the module docs).
pub(crate) fn from_body(b: &DnsSettingsBody, t: &Tailnet) -> Result<DnsConfig, String> {
    let mut c = DnsConfig {
        magic_dns: b.magic_dns,
        ..DnsConfig::default()
    };
    for s in &b.nameservers {
        push_unique(&mut c.nameservers, parse_resolver("nameserver", s, t)?);
    }
    for s in &b.search_domains {
        push_unique(&mut c.search_domains, parse_name("search domain", s)?);
    }
    for (k, v) in &b.routes {
        let (name, resolvers) = parse_route(k, v, t)?;
        c.routes.insert(name, resolvers);
    }
    for r in &b.extra_records {
        push_unique(&mut c.extra_records, parse_record(r)?);
    }
    validate(&c, t)?;
    Ok(c)
}

/// Applies a `PATCH /dns` to `cur`: clears, then removals, then additions,
/// then `magic_dns`; the result is validated whole.
///
/// # Errors
/// A one-line reason: something unparsable or refused (module docs), or a
/// removal of something that is not configured (a typo would otherwise
/// pass silently). Nothing is changed then.
pub(crate) fn apply_patch(cur: &DnsConfig, p: &DnsPatch, t: &Tailnet) -> Result<DnsConfig, String> {
    let mut c = cur.clone();
    if p.clear_nameservers {
        c.nameservers.clear();
    }
    if p.clear_search_domains {
        c.search_domains.clear();
    }
    if p.clear_routes {
        c.routes.clear();
    }
    if p.clear_records {
        c.extra_records.clear();
    }

    for s in &p.remove_nameservers {
        let ip = parse_addr("nameserver", s)?;
        remove_one(
            &mut c.nameservers,
            |x| *x == ip,
            || format!("nameserver {ip}"),
        )?;
    }
    for s in &p.remove_search_domains {
        let n = parse_name("search domain", s)?;
        remove_one(
            &mut c.search_domains,
            |x| *x == n,
            || format!("search domain {n}"),
        )?;
    }
    for s in &p.remove_routes {
        let n = parse_name("route domain", s)?;
        if c.routes.remove(&n).is_none() {
            return Err(format!("no split-DNS route for {n} is configured"));
        }
    }
    for s in &p.remove_records {
        let (name, addr) = match s.split_once('=') {
            Some((n, a)) => (
                parse_name("record name", n)?,
                Some(parse_addr("record", a)?),
            ),
            None => (parse_name("record name", s)?, None),
        };
        let before = c.extra_records.len();
        c.extra_records
            .retain(|r| r.name != name || addr.is_some_and(|a| a != r.addr));
        if c.extra_records.len() == before {
            return Err(match addr {
                Some(a) => format!("no record {name}={a} is configured"),
                None => format!("no record for {name} is configured"),
            });
        }
    }

    for s in &p.add_nameservers {
        push_unique(&mut c.nameservers, parse_resolver("nameserver", s, t)?);
    }
    for s in &p.add_search_domains {
        push_unique(&mut c.search_domains, parse_name("search domain", s)?);
    }
    for (k, v) in &p.set_routes {
        let (name, resolvers) = parse_route(k, v, t)?;
        c.routes.insert(name, resolvers);
    }
    for r in &p.add_records {
        push_unique(&mut c.extra_records, parse_record(r)?);
    }
    if let Some(on) = p.magic_dns {
        c.magic_dns = on;
    }
    validate(&c, t)?;
    Ok(c)
}

/// Checks settings whole: limits, loops and names that MagicDNS owns.
///
/// # Errors
/// A one-line reason.
pub(crate) fn validate(c: &DnsConfig, t: &Tailnet) -> Result<(), String> {
    limit("nameservers", c.nameservers.len(), MAX_NAMESERVERS)?;
    limit("search domains", c.search_domains.len(), MAX_SEARCH_DOMAINS)?;
    limit("split-DNS routes", c.routes.len(), MAX_ROUTES)?;
    limit("extra records", c.extra_records.len(), MAX_RECORDS)?;
    for ip in &c.nameservers {
        check_resolver("nameserver", *ip, t)?;
    }
    for d in &c.search_domains {
        if *d == t.domain {
            return Err(format!(
                "search domain {d} is the tailnet domain, which is always searched first while MagicDNS is on; leave it out"
            ));
        }
    }
    for (d, resolvers) in &c.routes {
        if is_under(d, &t.domain) {
            return Err(format!(
                "split-DNS route {d} is inside the tailnet domain {}, which MagicDNS answers; route a domain outside it",
                t.domain
            ));
        }
        if resolvers.len() > MAX_ROUTE_RESOLVERS {
            return Err(format!(
                "split-DNS route {d} has {} resolvers; at most {MAX_ROUTE_RESOLVERS}",
                resolvers.len()
            ));
        }
        for ip in resolvers {
            check_resolver(&format!("resolver of route {d}"), *ip, t)?;
        }
    }
    for r in &c.extra_records {
        check_record_addr(&r.name, r.addr)?;
    }
    Ok(())
}

/// Returns the settings as the admin API shows them.
pub(crate) fn view(
    c: &DnsConfig,
    domain: &DnsName,
    updated: Option<i64>,
    author: Option<String>,
) -> DnsView {
    DnsView {
        domain: domain.to_string(),
        magic_dns: c.magic_dns,
        nameservers: c.nameservers.clone(),
        search_domains: c.search_domains.iter().map(ToString::to_string).collect(),
        routes: c
            .routes
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
        extra_records: c
            .extra_records
            .iter()
            .map(|r| DnsRecordView {
                name: r.name.to_string(),
                addr: r.addr.to_string(),
            })
            .collect(),
        updated,
        author,
    }
}

/// Parses a DNS name as typed: surrounding space and one trailing dot are
/// dropped and letters lowercased before the check.
///
/// # Errors
/// A one-line reason naming `what` and the text.
pub(crate) fn parse_name(what: &str, s: &str) -> Result<DnsName, String> {
    let t = s.trim();
    let t = t.strip_suffix('.').unwrap_or(t).to_ascii_lowercase();
    t.parse().map_err(|_| {
        format!(
            "{what} {s:?} is not a DNS name (labels of a-z, 0-9 and '-' joined by '.', at most 253 characters)"
        )
    })
}

fn parse_addr(what: &str, s: &str) -> Result<IpAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{what} {s:?} is not an IP address"))
}

fn parse_resolver(what: &str, s: &str, t: &Tailnet) -> Result<IpAddr, String> {
    let ip = parse_addr(what, s)?;
    check_resolver(what, ip, t)?;
    Ok(ip)
}

fn parse_route(k: &str, v: &[String], t: &Tailnet) -> Result<(DnsName, Vec<IpAddr>), String> {
    let name = parse_name("route domain", k)?;
    let mut resolvers = Vec::new();
    for s in v {
        push_unique(
            &mut resolvers,
            parse_resolver(&format!("resolver of route {name}"), s, t)?,
        );
    }
    Ok((name, resolvers))
}

fn parse_record(r: &DnsRecordView) -> Result<DnsRecord, String> {
    let name = parse_name("record name", &r.name)?;
    let addr = parse_addr(&format!("address of record {name}"), &r.addr)?;
    check_record_addr(&name, addr)?;
    Ok(DnsRecord { name, addr })
}

fn check_resolver(what: &str, ip: IpAddr, t: &Tailnet) -> Result<(), String> {
    let weft = match ip {
        IpAddr::V4(v4) => v4 == MAGICDNS_V4 || t.pool_v4.contains(&v4),
        IpAddr::V6(v6) => TAILNET_V6.contains(&v6) || t.pool_v6.contains(&v6),
    };
    if weft {
        return Err(format!(
            "{what} {ip} is a Weft address (the MagicDNS service address or the tailnet's range); nodes would forward queries to themselves in a loop"
        ));
    }
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{what} {ip} is not a unicast address"));
    }
    Ok(())
}

fn check_record_addr(name: &DnsName, ip: IpAddr) -> Result<(), String> {
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!(
            "record {name}={ip}: the address is not a unicast address"
        ));
    }
    Ok(())
}

fn limit(what: &str, n: usize, max: usize) -> Result<(), String> {
    if n > max {
        return Err(format!("{n} {what}; at most {max}"));
    }
    Ok(())
}

/// Whether `name` is `domain` or a name under it.
fn is_under(name: &DnsName, domain: &DnsName) -> bool {
    let (n, d) = (name.as_str(), domain.as_str());
    n == d || n.strip_suffix(d).is_some_and(|head| head.ends_with('.'))
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

fn remove_one<T>(
    v: &mut Vec<T>,
    pred: impl Fn(&T) -> bool,
    what: impl FnOnce() -> String,
) -> Result<(), String> {
    let before = v.len();
    v.retain(|x| !pred(x));
    if v.len() == before {
        return Err(format!("{} is not configured", what()));
    }
    Ok(())
}

#[cfg(test)]
#[path = "dns_tests.rs"]
mod tests;
