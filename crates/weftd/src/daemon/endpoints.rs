//! Our own endpoints: the addresses of local interfaces (not loopback, not
//! the TUN, not link-local) with the bound UDP port. Peers on the same
//! network reach us directly on them; STUN-learned endpoints come with NAT
//! traversal later.

use std::net::{IpAddr, SocketAddr};

use weft_types::{Endpoint, EndpointKind};

/// Returns our local endpoints for `port`, sorted, skipping interface `tun`.
pub fn local(tun: &str, port: u16) -> Vec<Endpoint> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<Endpoint> = addrs
        .filter(|a| a.interface_name != tun)
        .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
        .filter_map(|a| {
            let sa = a.address?;
            let ip: IpAddr = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(sa.as_sockaddr_in6()?.ip())
            };
            usable(ip).then_some(Endpoint {
                addr: SocketAddr::new(ip, port),
                kind: EndpointKind::Local,
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Returns whether a local address can be offered to peers.
pub fn usable(ip: IpAddr) -> bool {
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    };
    !ip.is_loopback()
        && !ip.is_unspecified()
        && !ip.is_multicast()
        && !link_local
        && !super::netlink::in_tailnet(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_link_local_and_tailnet_addresses_are_not_offered() {
        for bad in [
            "127.0.0.1",
            "::1",
            "169.254.1.1",
            "fe80::1",
            "100.64.0.5",
            "fd7a:115c:a1e0::5",
            "0.0.0.0",
        ] {
            assert!(!usable(bad.parse().unwrap()), "{bad}");
        }
        for good in ["198.18.0.1", "fd00::1", "10.0.0.1"] {
            assert!(usable(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn local_endpoints_never_include_loopback_or_the_tun() {
        let eps = local("lo", 41641);
        assert!(
            eps.iter()
                .all(|e| !e.addr.ip().is_loopback() && e.addr.port() == 41641)
        );
    }
}
