//! Sites behind real NAT routers (nftables in a router namespace) on a [`Tailnet`]'s underlay.
//!
//! What it is: the topology of issue 12's NAT tests. The tailnet's switched underlay is "the
//! internet" (control and its relay live there); a [`Site`] is either a host directly on it
//! ([`NatKind::NoNat`]) or a router namespace attached to it, with a LAN behind it (its own /24
//! of 198.18.0.0/16, a bridge in the router) where the site's hosts live. The router's nftables
//! ruleset makes the kind:
//!
//! Every router also drops unsolicited packets from the internet to itself (`iifname "ul0" ct
//! state new drop` in input, as a home router's firewall does), so a hole-punching packet that
//! arrives before the LAN host's own outbound packet is dropped without leaving a conntrack entry
//! behind (such an entry would push the host's mapping to another port).
//!
//! | kind | nftables | behaviour |
//! |---|---|---|
//! | [`NatKind::Easy`] | `oifname "ul0" masquerade` | endpoint-independent mapping, port kept when free (home router) |
//! | [`NatKind::Hard`] | `oifname "ul0" masquerade fully-random` | a new random public port per destination (endpoint-dependent mapping, "hard NAT") |
//! | [`NatKind::UdpBlocked`] | masquerade + `meta l4proto udp drop` in forward | no UDP leaves or enters the LAN; TCP is NATed as Easy |
//!
//! Hosts on the LAN reach the internet through the router (default route); the internet has no
//! route to the LAN, so the only way in is a mapping the router made for outbound traffic. What it
//! is not: a model of CGNAT hairpinning or NAT-PMP (none of the routers maps ports on request).
//!
//! Everything is in the run's namespaces ([`Lab`](crate::Lab)'s RAII deletes them); no packet
//! leaves them.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weft_lab::nat::{NatKind, Site};
//! use weft_lab::tailnet::{KeyOptions, Tailnet};
//! let lab = weft_lab::e2e_lab!("/dev/net/tun", "nft");
//! let net = Tailnet::new(&lab)?;
//! let control = net.control("ctl")?;              // on the internet
//! let home = Site::new(&net, "home", NatKind::Easy)?;
//! let cafe = Site::new(&net, "cafe", NatKind::Hard)?;
//! control.ensure_user("alice")?;
//! let key = control.create_key("alice", &KeyOptions::reusable())?;
//! let a = home.node("a")?;                         // weftd behind the home router
//! let b = cafe.node("b")?;
//! a.up_with_key(&control, &key)?;
//! b.up_with_key(&control, &key)?;
//! let new_addr = home.roam(a.netns())?;            // a moves to another LAN address
//! # let _ = new_addr; Ok(()) }
//! ```

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::netns::Netns;
use crate::process::host_command;
use crate::tailnet::{Node, NodeOptions, Tailnet};
use crate::wait::wait_until;

/// The router's (and a [`NatKind::NoNat`] host's) interface on the internet.
pub const WAN_IF: &str = "ul0";
/// A LAN host's interface.
pub const LAN_IF: &str = "eth0";
/// The LAN bridge in a router.
const LAN_BRIDGE: &str = "lan0";

/// What stands between a site's hosts and the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Nothing: the host is on the internet with its own address.
    NoNat,
    /// nftables `masquerade`: endpoint-independent mapping, source port kept when free.
    Easy,
    /// nftables `masquerade fully-random`: every new flow (other destination) gets a random
    /// public port (endpoint-dependent mapping).
    Hard,
    /// `masquerade`, and the router forwards no UDP at all in either direction.
    UdpBlocked,
}

impl NatKind {
    /// The router's nftables ruleset (none for [`NatKind::NoNat`]).
    pub fn ruleset(self) -> Option<String> {
        let masquerade = match self {
            NatKind::NoNat => return None,
            NatKind::Easy | NatKind::UdpBlocked => "masquerade",
            NatKind::Hard => "masquerade fully-random",
        };
        let filter = if self == NatKind::UdpBlocked {
            "  chain forward {\n    type filter hook forward priority filter; policy accept;\n    \
             meta l4proto udp counter drop\n  }\n"
        } else {
            ""
        };
        // The input chain is a home router's stateful firewall (OpenWrt's wan zone): unsolicited
        // packets to the router itself are dropped before conntrack confirms an entry for them.
        // Without it, a peer's early hole-punching packet would leave an entry that collides with
        // the LAN host's later outbound mapping and push it to another port.
        Some(format!(
            "table ip weft-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
             oifname \"{WAN_IF}\" {masquerade}\n  }}\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    \
             iifname \"{WAN_IF}\" ct state new counter drop\n  }}\n{filter}}}\n"
        ))
    }
}

/// One site: a host on the internet, or a NAT router with a LAN. See the [module docs](self).
#[derive(Debug)]
pub struct Site<'n, 'lab> {
    net: &'n Tailnet<'lab>,
    name: String,
    kind: NatKind,
    /// Router namespace and its internet address; `None` for [`NatKind::NoNat`].
    router: Option<(Netns, Ipv4Addr)>,
    /// The LAN's /24 (network address); the router is `.1`.
    lan: Ipv4Addr,
    next_host: AtomicU32,
}

impl<'n, 'lab> Site<'n, 'lab> {
    /// Creates site `name` (1–12 of `[a-z0-9-]`; the router namespace is `<name>-rt`) of `kind`
    /// on `net`'s underlay.
    ///
    /// # Errors
    /// When a namespace, link or the ruleset cannot be set up.
    pub fn new(net: &'n Tailnet<'lab>, name: &str, kind: NatKind) -> Result<Self> {
        static NEXT_LAN: AtomicU32 = AtomicU32::new(0);
        // LANs from 198.18.0.0/16 only: the internet is in 198.19.0.0/16, so a router's two
        // sides never overlap.
        let block = NEXT_LAN.fetch_add(1, Ordering::Relaxed) % 256;
        let lan = Ipv4Addr::new(198, 18, u8::try_from(block).unwrap_or(0), 0);
        let router = match kind.ruleset() {
            None => None,
            Some(rules) => {
                let (rt, wan) = net.attach(&format!("{name}-rt"))?;
                rt.sysctl("net.ipv4.ip_forward", "1")?;
                rt.ip(["link", "add", LAN_BRIDGE, "type", "bridge"])?;
                rt.ip([
                    "addr",
                    "add",
                    &format!("{}/24", host_addr(lan, 1)),
                    "dev",
                    LAN_BRIDGE,
                ])?;
                rt.ip(["link", "set", LAN_BRIDGE, "up"])?;
                rt.nft(&rules)?;
                Some((rt, wan))
            }
        };
        Ok(Site {
            net,
            name: name.to_owned(),
            kind,
            router,
            lan,
            next_host: AtomicU32::new(2),
        })
    }

    /// Returns the site's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns its kind.
    pub fn kind(&self) -> NatKind {
        self.kind
    }

    /// Returns the router's namespace (`None` without NAT).
    pub fn router(&self) -> Option<&Netns> {
        self.router.as_ref().map(|(ns, _)| ns)
    }

    /// Returns the router's internet address — the public address of every host behind it
    /// (`None` without NAT: each host is its own public address).
    pub fn public_addr(&self) -> Option<Ipv4Addr> {
        self.router.as_ref().map(|(_, a)| *a)
    }

    /// Returns the LAN gateway (the router's LAN address), `None` without NAT.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.router.as_ref().map(|_| host_addr(self.lan, 1))
    }

    /// Creates host namespace `short` at this site and returns it with its own address: on the
    /// internet for [`NatKind::NoNat`], else on the LAN (interface [`LAN_IF`], default route via
    /// the router).
    ///
    /// # Errors
    /// When `ip` fails or the LAN is full.
    pub fn host(&self, short: &str) -> Result<(Netns, Ipv4Addr)> {
        let Some((rt, _)) = &self.router else {
            return self.net.attach(short);
        };
        let addr = self.next_lan_addr()?;
        let ns = self.net.lab().netns(short)?;
        let rt_if = format!("h-{short}");
        let rt_if = if rt_if.len() <= crate::names::IFNAME_MAX {
            rt_if
        } else {
            format!("h{}", addr.octets()[3])
        };
        host_command("ip")
            .args(["link", "add", LAN_IF, "netns", ns.name(), "type", "veth"])
            .args(["peer", "name", &rt_if, "netns", rt.name()])
            .run()?;
        rt.ip(["link", "set", &rt_if, "master", LAN_BRIDGE, "up"])?;
        // Keep the remaining address when the primary one is removed (roaming).
        ns.sysctl(&format!("net.ipv4.conf.{LAN_IF}.promote_secondaries"), "1")?;
        ns.ip(["addr", "add", &format!("{addr}/24"), "dev", LAN_IF])?;
        ns.ip(["link", "set", LAN_IF, "up"])?;
        wait_until(
            Duration::from_secs(5),
            &format!("{LAN_IF} in {short} to be up"),
            || {
                Ok(ns
                    .ip(["-o", "link", "show", "dev", LAN_IF])?
                    .stdout
                    .contains("LOWER_UP"))
            },
        )?;
        ns.ip([
            "route",
            "add",
            "default",
            "via",
            &host_addr(self.lan, 1).to_string(),
        ])?;
        Ok((ns, addr))
    }

    /// Starts a `weftd` node named `short` at this site (not logged in).
    ///
    /// # Errors
    /// As for [`Site::host`] and [`Tailnet::node_in`].
    pub fn node(&self, short: &str) -> Result<Node> {
        self.node_with(short, NodeOptions::default())
    }

    /// [`Site::node`] with options.
    ///
    /// # Errors
    /// As for [`Site::node`].
    pub fn node_with(&self, short: &str, opts: NodeOptions) -> Result<Node> {
        let (ns, addr) = self.host(short)?;
        self.net.node_in(ns, addr, opts)
    }

    /// Moves host `ns` of this site to a fresh address (a laptop that got a new DHCP lease or
    /// changed networks): the new address is added, the old one removed, the default route
    /// restored. Sockets bound to the wildcard address keep working from the new address; the
    /// router makes new mappings for it. Returns the new address. ([`Node::underlay_addr`] keeps
    /// the address it started with.)
    ///
    /// # Errors
    /// When the host has no address at this site or `ip` fails.
    pub fn roam(&self, ns: &Netns) -> Result<Ipv4Addr> {
        let (ifname, new) = match &self.router {
            None => (crate::nat::WAN_IF, self.net.new_underlay_addr()?),
            Some(_) => (LAN_IF, self.next_lan_addr()?),
        };
        let old = ipv4_addrs(ns, ifname)?;
        if old.is_empty() {
            return Err(LabError::Invalid(format!(
                "{} has no IPv4 address on {ifname}",
                ns.short()
            )));
        }
        ns.sysctl(&format!("net.ipv4.conf.{ifname}.promote_secondaries"), "1")?;
        ns.ip(["addr", "add", &format!("{new}/24"), "dev", ifname])?;
        for a in old {
            ns.ip(["addr", "del", &format!("{a}/24"), "dev", ifname])?;
        }
        if let Some(gw) = self.gateway() {
            ns.ip(["route", "replace", "default", "via", &gw.to_string()])?;
        }
        Ok(new)
    }

    fn next_lan_addr(&self) -> Result<Ipv4Addr> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        if host > 250 {
            return Err(LabError::Invalid(format!(
                "the LAN of {} is full",
                self.name
            )));
        }
        Ok(host_addr(self.lan, host))
    }
}

fn host_addr(subnet: Ipv4Addr, host: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet) + host)
}

/// The IPv4 addresses on `ifname` in `ns`.
fn ipv4_addrs(ns: &Netns, ifname: &str) -> Result<Vec<Ipv4Addr>> {
    // "3: eth0    inet 198.18.4.2/24 scope global eth0\..."
    let out = ns.ip(["-o", "-4", "addr", "show", "dev", ifname])?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_has_the_ruleset_it_claims() {
        assert_eq!(NatKind::NoNat.ruleset(), None);
        let easy = NatKind::Easy.ruleset().unwrap();
        assert!(easy.contains("oifname \"ul0\" masquerade\n"), "{easy}");
        assert!(
            easy.contains("iifname \"ul0\" ct state new counter drop"),
            "{easy}"
        );
        assert!(!easy.contains("l4proto udp"), "{easy}");
        let hard = NatKind::Hard.ruleset().unwrap();
        assert!(hard.contains("masquerade fully-random"), "{hard}");
        let blocked = NatKind::UdpBlocked.ruleset().unwrap();
        assert!(
            blocked.contains("meta l4proto udp counter drop"),
            "{blocked}"
        );
        assert!(blocked.contains("masquerade\n"), "{blocked}");
    }
}
