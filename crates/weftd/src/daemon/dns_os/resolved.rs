//! Resolved mode: per-link DNS on Weft's interface through
//! systemd-resolved's D-Bus API (`org.freedesktop.resolve1.Manager`:
//! `SetLinkDNS`, `SetLinkDomains`, `SetLinkDefaultRoute`, `RevertLink`).
//!
//! The calls go through `busctl`, which ships with systemd itself (so it is
//! there wherever resolved runs, unlike `resolvectl`, which Debian moved to
//! the systemd-resolved package), and speaks the D-Bus API directly with
//! typed arguments: the same calls zbus would make, without a D-Bus stack
//! in weftd for one mode. [`calls`] builds the argument lists (pure, tested
//! against the API's signatures); [`Busctl`] runs them, each bounded by a
//! timeout.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use super::OsDnsConfig;

const DEST: &str = "org.freedesktop.resolve1";
const OBJECT: &str = "/org/freedesktop/resolve1";
const MANAGER: &str = "org.freedesktop.resolve1.Manager";
/// How long one call may take before it counts as failed.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// One method call on the Manager: method, D-Bus signature, arguments as
/// busctl takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: &'static str,
    pub signature: &'static str,
    pub args: Vec<String>,
}

/// Returns the calls that make link `ifindex` use `cfg`.
///
/// The tailnet and extra search domains are search domains (resolved also
/// routes their names to the link); split-DNS domains are routing-only
/// (`~domain`); `~.` is added only when the tailnet pushes global
/// nameservers, and then the link is also the default route.
pub fn calls(ifindex: u32, cfg: &OsDnsConfig) -> Vec<Call> {
    let idx = ifindex.to_string();
    let mut dns = vec![idx.clone(), cfg.nameservers.len().to_string()];
    for ns in &cfg.nameservers {
        let (family, bytes): (i32, Vec<u8>) = match ns {
            IpAddr::V4(a) => (libc::AF_INET, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6, a.octets().to_vec()),
        };
        dns.push(family.to_string());
        dns.push(bytes.len().to_string());
        dns.extend(bytes.iter().map(u8::to_string));
    }
    let mut domains: Vec<(String, bool)> = cfg.search.iter().map(|d| (d.clone(), false)).collect();
    for d in &cfg.match_domains {
        if !cfg.search.contains(d) {
            domains.push((d.clone(), true));
        }
    }
    if cfg.default_route {
        domains.push((".".into(), true));
    }
    let mut dom = vec![idx.clone(), domains.len().to_string()];
    for (d, routing_only) in domains {
        dom.push(d);
        dom.push(routing_only.to_string());
    }
    vec![
        Call {
            method: "SetLinkDNS",
            signature: "ia(iay)",
            args: dns,
        },
        Call {
            method: "SetLinkDomains",
            signature: "ia(sb)",
            args: dom,
        },
        Call {
            method: "SetLinkDefaultRoute",
            signature: "ib",
            args: vec![idx, cfg.default_route.to_string()],
        },
    ]
}

/// Returns the call that undoes everything [`calls`] set on link `ifindex`.
pub fn revert(ifindex: u32) -> Call {
    Call {
        method: "RevertLink",
        signature: "i",
        args: vec![ifindex.to_string()],
    }
}

/// Why a call failed (the message is for `weft status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("systemd-resolved refused {method}: {detail}")]
pub struct CallError {
    pub method: &'static str,
    pub detail: String,
}

/// Runs calls with `busctl` on the system bus (or on `address`, a private
/// bus, when set).
#[derive(Debug, Clone, Default)]
pub struct Busctl {
    pub address: Option<String>,
}

impl Busctl {
    fn command(&self) -> Command {
        let mut c = Command::new("busctl");
        match &self.address {
            Some(a) => c.arg(format!("--address={a}")),
            None => c.arg("--system"),
        };
        c.arg(format!("--timeout={}", CALL_TIMEOUT.as_secs()));
        c
    }

    /// Returns whether resolved answers on the bus.
    pub fn resolved_answers(&self) -> bool {
        self.command()
            .args(["call", DEST, OBJECT, "org.freedesktop.DBus.Peer", "Ping"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Makes `call`.
    ///
    /// # Errors
    /// [`CallError`] when busctl cannot run or resolved refuses.
    pub fn call(&self, call: &Call) -> Result<(), CallError> {
        let out = self
            .command()
            .args(["call", DEST, OBJECT, MANAGER, call.method, call.signature])
            .args(&call.args)
            .output()
            .map_err(|e| CallError {
                method: call.method,
                detail: format!("cannot run busctl: {e}"),
            })?;
        if out.status.success() {
            return Ok(());
        }
        Err(CallError {
            method: call.method,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(default_route: bool) -> OsDnsConfig {
        OsDnsConfig {
            nameservers: vec![super::super::SERVICE_V4],
            search: vec!["t.weft.internal".into(), "extra.example".into()],
            match_domains: vec!["t.weft.internal".into(), "corp.example".into()],
            default_route,
        }
    }

    fn argv(c: &Call) -> String {
        format!("{} {} {}", c.method, c.signature, c.args.join(" "))
    }

    /// The recorded contract: the argument lists as busctl takes them for
    /// the signatures of org.freedesktop.resolve1.Manager(5).
    #[test]
    fn link_calls_set_our_resolver_search_and_routing_domains() {
        let got: Vec<String> = calls(7, &cfg(false)).iter().map(argv).collect();
        assert_eq!(
            got,
            vec![
                "SetLinkDNS ia(iay) 7 1 2 4 100 100 100 100",
                "SetLinkDomains ia(sb) 7 3 t.weft.internal false extra.example false corp.example true",
                "SetLinkDefaultRoute ib 7 false",
            ]
        );
    }

    #[test]
    fn global_nameservers_add_the_root_routing_domain_and_default_route() {
        let got: Vec<String> = calls(7, &cfg(true)).iter().map(argv).collect();
        assert_eq!(
            got[1],
            "SetLinkDomains ia(sb) 7 4 t.weft.internal false extra.example false corp.example true . true"
        );
        assert_eq!(got[2], "SetLinkDefaultRoute ib 7 true");
        assert_eq!(argv(&revert(7)), "RevertLink i 7");
    }

    #[test]
    fn an_ipv6_resolver_is_family_10_with_16_bytes() {
        let c = OsDnsConfig {
            nameservers: vec![super::super::SERVICE_V6],
            ..cfg(false)
        };
        assert_eq!(
            argv(&calls(3, &c)[0]),
            "SetLinkDNS ia(iay) 3 1 10 16 253 122 17 92 161 224 0 0 0 0 0 0 0 0 0 83"
        );
    }
}
