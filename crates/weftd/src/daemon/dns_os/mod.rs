//! MagicDNS in the OS: points the host's DNS at weftd's resolver while
//! `--accept-dns` is on and the tailnet wants it, and gives the host its own
//! configuration back, byte for byte, when that ends (`weft down`,
//! `--accept-dns=false`, daemon stop, or the next start after a crash).
//!
//! Modes, detected at start and again before every change ([`detect`]):
//! * **direct**: `/etc/resolv.conf` is a plain file. Weft backs it up in the
//!   state dir and writes its own (marker comment first); the pure machine
//!   in [`direct`] says which step comes next, so any crash is recovered.
//! * **resolved**: `/etc/resolv.conf` is a symlink into systemd-resolved's
//!   files and resolved answers on the system bus. Weft sets per-link DNS on
//!   its interface ([`resolved`]) and reverts the link to undo it; the file
//!   is never touched.
//! * **unsupported**: any other symlink (Debian's `resolvconf`, a
//!   NetworkManager-managed link…) or no file at all. Weft does not touch it
//!   and says so in `weft status`. (resolvconf could be fed through
//!   `resolvconf -a`, but its hooks differ between Debian's and openresolv's
//!   and it is rare next to resolved; an honest "not touched" beats a guess.)
//!
//! Not here: the resolver itself (`daemon::dns`), which forwards to what
//! [`OsDns::host_nameservers`] returns.

pub mod direct;
pub mod driver;
pub mod resolv_conf;
pub mod resolved;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use weft_types::NetMap;

pub use driver::OsDns;

/// The resolver's IPv4 service address.
pub const SERVICE_V4: IpAddr = IpAddr::V4(Ipv4Addr::new(100, 100, 100, 100));
/// The resolver's IPv6 service address (in the project's ULA).
pub const SERVICE_V6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0x53));

/// What Weft wants the OS to use while it manages DNS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OsDnsConfig {
    /// The resolvers the OS should ask (weftd's own).
    pub nameservers: Vec<IpAddr>,
    /// Search domains, in order: the tailnet domain (with MagicDNS), then
    /// the tailnet's extra ones.
    pub search: Vec<String>,
    /// Domains whose names go to Weft's resolver (resolved mode): the
    /// tailnet domain (with MagicDNS) and the split-DNS routes.
    pub match_domains: Vec<String>,
    /// Every name goes to Weft's resolver (the tailnet pushes global
    /// nameservers); in resolved mode this is the `~.` routing domain.
    pub default_route: bool,
}

/// Returns what the OS should use, or `None` when Weft should leave (or
/// give back) the host's DNS: `--accept-dns` off, the node not running, no
/// netmap, or a netmap with MagicDNS off and nothing to route.
pub fn desired(accept_dns: bool, running: bool, nm: Option<&NetMap>) -> Option<OsDnsConfig> {
    let nm = nm?;
    if !accept_dns || !running {
        return None;
    }
    let dns = &nm.dns;
    if !dns.magic_dns && dns.nameservers.is_empty() && dns.routes.is_empty() {
        return None;
    }
    let domain = nm.domain.to_string();
    let mut search = Vec::new();
    let mut match_domains = Vec::new();
    if dns.magic_dns {
        search.push(domain.clone());
        match_domains.push(domain);
    }
    for d in &dns.search_domains {
        let d = d.to_string();
        if !search.contains(&d) {
            search.push(d);
        }
    }
    for d in dns.routes.keys() {
        let d = d.to_string();
        if !match_domains.contains(&d) {
            match_domains.push(d);
        }
    }
    Some(OsDnsConfig {
        nameservers: vec![SERVICE_V4],
        search,
        match_domains,
        default_route: !dns.nameservers.is_empty(),
    })
}

/// Where the OS keeps its DNS configuration (fixed on a host; tests point
/// them elsewhere).
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/etc/resolv.conf`.
    pub resolv_conf: PathBuf,
    /// The backup of the original (in weftd's state dir).
    pub backup: PathBuf,
    /// systemd-resolved's list of upstream servers,
    /// `/run/systemd/resolve/resolv.conf`.
    pub resolved_upstreams: PathBuf,
}

impl Paths {
    /// Returns the host's paths, with the backup in `statedir`.
    pub fn system(statedir: &Path) -> Self {
        Paths {
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            backup: statedir.join("resolv.conf.weft-backup"),
            resolved_upstreams: PathBuf::from("/run/systemd/resolve/resolv.conf"),
        }
    }
}

/// What resolv.conf is, as [`detect`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    /// A symlink, with where it points.
    Symlink(PathBuf),
    Missing,
    /// A directory, socket… or unreadable metadata (the message says which).
    Other(String),
}

/// How Weft configures the OS's DNS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "reason")]
pub enum Mode {
    Direct,
    Resolved,
    /// Not touched, and why.
    Unsupported(String),
}

impl Mode {
    /// Returns the mode's name as `weft dns status` shows it.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Resolved => "resolved",
            Mode::Unsupported(_) => "unsupported",
        }
    }
}

/// Returns the mode for a resolv.conf of kind `file` at `path`;
/// `resolved_answers` says whether systemd-resolved answered on D-Bus.
pub fn detect(path: &Path, file: &FileKind, resolved_answers: bool) -> Mode {
    let path = path.display();
    match file {
        FileKind::Regular => Mode::Direct,
        FileKind::Missing => Mode::Unsupported(format!("{path} does not exist; not touched")),
        FileKind::Other(what) => Mode::Unsupported(format!("{path} is {what}; not touched")),
        FileKind::Symlink(to) => {
            let to_s = to.to_string_lossy();
            let systemd = to_s.contains("/run/systemd/resolve/")
                || to_s.ends_with("/lib/systemd/resolv.conf");
            if systemd && resolved_answers {
                Mode::Resolved
            } else if systemd {
                Mode::Unsupported(format!(
                    "{path} points to systemd-resolved's {to_s} but resolved does not answer on D-Bus; not touched"
                ))
            } else if to_s.contains("resolvconf") {
                Mode::Unsupported(format!(
                    "{path} is managed by resolvconf (a symlink to {to_s}), which weftd does not drive; not touched"
                ))
            } else {
                Mode::Unsupported(format!(
                    "{path} is a symlink to {to_s} (managed by another program); not touched"
                ))
            }
        }
    }
}

/// Returns `servers` without weftd's own service addresses (forwarding to
/// them would loop).
pub fn without_service_addrs(servers: Vec<IpAddr>) -> Vec<IpAddr> {
    servers
        .into_iter()
        .filter(|ip| *ip != SERVICE_V4 && *ip != SERVICE_V6)
        .collect()
}

/// Returns `GET dns/status` from the prefs, the netmap and the OS side
/// (`None`: weftd does not manage OS DNS, as in tests).
pub fn status(
    accept_dns: bool,
    nm: Option<&NetMap>,
    os: Option<driver::Report>,
) -> weft_localapi::DnsStatus {
    let (mode, mode_reason) = match os.as_ref().map(|r| &r.mode) {
        Some(Mode::Unsupported(why)) => ("unsupported".to_owned(), Some(why.clone())),
        Some(m) => (m.name().to_owned(), None),
        None => (
            "unsupported".to_owned(),
            Some("OS DNS is not managed by this weftd".to_owned()),
        ),
    };
    let applied = os.as_ref().and_then(|r| r.applied.clone());
    let dns = nm.map(|n| &n.dns);
    weft_localapi::DnsStatus {
        mode,
        mode_reason,
        accept_dns,
        managing: os.as_ref().is_some_and(|r| r.managing),
        magic_dns: dns.is_some_and(|d| d.magic_dns),
        domain: nm.map(|n| n.domain.to_string()),
        resolvers: applied
            .as_ref()
            .map(|a| a.nameservers.clone())
            .unwrap_or_default(),
        search_domains: applied
            .as_ref()
            .map(|a| a.search.clone())
            .unwrap_or_default(),
        match_domains: applied
            .as_ref()
            .map(|a| a.match_domains.clone())
            .unwrap_or_default(),
        default_route: applied.as_ref().is_some_and(|a| a.default_route),
        global_nameservers: dns.map(|d| d.nameservers.clone()).unwrap_or_default(),
        split_routes: dns
            .map(|d| {
                d.routes
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        os: os
            .as_ref()
            .and_then(|r| r.os.clone())
            .map(|rc| weft_localapi::OsResolvers {
                nameservers: rc.nameservers,
                search: rc.search,
                options: rc.options,
            }),
        host_nameservers: os
            .as_ref()
            .map(|r| r.host_nameservers.clone())
            .unwrap_or_default(),
        health: os.and_then(|r| r.health),
    }
}

#[cfg(test)]
#[path = "mod_tests.rs"]
mod tests;
