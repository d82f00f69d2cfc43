//! Finding a node of the tailnet by what a user types: an address, the short
//! MagicDNS name, the full name (with or without the final dot), or the
//! hostname the node reported.

use std::net::IpAddr;

use anyhow::bail;
use weft_localapi::{PeerStatus, Status};

/// A node found in `status`.
#[derive(Debug, Clone, Copy)]
pub struct Found<'a> {
    pub node: &'a PeerStatus,
    /// Whether the node is this machine.
    pub is_self: bool,
}

/// Returns the node `query` names: by address if it parses as one, else by
/// short name or full DNS name, else by reported hostname (all
/// case-insensitive).
///
/// # Errors
/// When no node matches, or a hostname matches several nodes.
pub fn find_node<'a>(status: &'a Status, query: &str) -> anyhow::Result<Found<'a>> {
    let nodes: Vec<Found<'a>> = status
        .self_node
        .iter()
        .map(|node| Found {
            node,
            is_self: true,
        })
        .chain(status.peers.iter().map(|node| Found {
            node,
            is_self: false,
        }))
        .collect();
    if let Ok(ip) = query.parse::<IpAddr>() {
        return match nodes.into_iter().find(|f| f.node.addresses.contains(&ip)) {
            Some(found) => Ok(found),
            None => match status.backend_state.not_running_message() {
                Some(why) => bail!(
                    "{why} No peers are known while weft is not running, so {ip} cannot be found."
                ),
                None => bail!("no node in the tailnet has the address {ip} (see 'weft status')"),
            },
        };
    }
    let want = query.trim_end_matches('.').to_ascii_lowercase();
    let by_name = |f: &&Found<'a>| {
        f.node.name.eq_ignore_ascii_case(&want)
            || f.node
                .dns_name
                .trim_end_matches('.')
                .eq_ignore_ascii_case(&want)
    };
    if let Some(found) = nodes.iter().find(by_name) {
        return Ok(*found);
    }
    let by_host: Vec<&Found<'a>> = nodes
        .iter()
        .filter(|f| f.node.hostname.eq_ignore_ascii_case(&want))
        .collect();
    match by_host.as_slice() {
        [one] => Ok(**one),
        [] => match status.backend_state.not_running_message() {
            Some(why) => bail!(
                "{why} No peers are known while weft is not running, so {query:?} cannot be found."
            ),
            None => bail!("no node named {query:?} in the tailnet (see 'weft status')"),
        },
        many => {
            let list: Vec<String> = many.iter().map(|f| describe(f.node)).collect();
            bail!(
                "{query:?} is the hostname of several nodes: {}; use a name or an address",
                list.join(", ")
            )
        }
    }
}

/// Returns `name (first address)` for messages.
pub fn describe(node: &PeerStatus) -> String {
    match node.addresses.first() {
        Some(ip) => format!("{} ({ip})", node.name),
        None => node.name.clone(),
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use weft_localapi::{BackendState, FilterStatus, UdpStatus};
    use weft_types::ids::NodeId;
    use weft_types::key::NodePublic;

    /// Returns a peer with the given short name, hostname and addresses, in
    /// the tailnet `t.weft.internal`.
    pub fn node(id: i64, name: &str, hostname: &str, addrs: &[&str]) -> PeerStatus {
        PeerStatus {
            id: NodeId(id),
            stable_id: format!("n{id:020x}"),
            name: name.into(),
            dns_name: format!("{name}.t.weft.internal."),
            hostname: hostname.into(),
            os: "linux".into(),
            user: Some("alice@example.com".into()),
            tags: vec![],
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            allowed_ips: vec![],
            public_key: NodePublic::from_bytes([id as u8; 32]),
            endpoints: vec![],
            cur_addr: None,
            relay: None,
            online: true,
            last_seen_ms: None,
            last_handshake_ms: None,
            active: false,
            rx_bytes: 0,
            tx_bytes: 0,
            expired: false,
            key_expiry_ms: None,
            ssh_host_keys: vec![],
        }
    }

    /// Returns a running status with `me` as self and the given peers.
    pub fn status(me: PeerStatus, peers: Vec<PeerStatus>) -> Status {
        Status {
            version: "0.1.0".into(),
            backend_state: BackendState::Running,
            auth_url: None,
            tun: "weft0".into(),
            tailnet: None,
            self_node: Some(me),
            user: None,
            peers,
            health: vec![],
            filter: FilterStatus::default(),
            profile: None,
            udp: UdpStatus::default(),
        }
    }

    fn sample() -> Status {
        status(
            node(1, "me", "Me-Laptop", &["100.64.0.1", "fd7a:115c:a1e0::1"]),
            vec![
                node(2, "web", "web", &["100.64.0.2"]),
                node(3, "db", "box", &["100.64.0.3"]),
                node(4, "db-1", "box", &["100.64.0.4"]),
            ],
        )
    }

    #[test]
    fn nodes_are_found_by_address_name_fqdn_or_hostname() {
        let st = sample();
        let name = |q: &str| find_node(&st, q).unwrap().node.name.clone();
        assert_eq!(name("100.64.0.2"), "web");
        assert_eq!(name("fd7a:115c:a1e0::1"), "me");
        assert_eq!(name("WEB"), "web");
        assert_eq!(name("web.t.weft.internal"), "web");
        assert_eq!(name("web.t.weft.internal."), "web");
        assert_eq!(name("me-laptop"), "me");
        assert!(find_node(&st, "me").unwrap().is_self);
        assert!(!find_node(&st, "db").unwrap().is_self);
    }

    #[test]
    fn a_name_beats_a_hostname_and_an_ambiguous_hostname_is_refused() {
        let st = sample();
        let err = find_node(&st, "box").unwrap_err().to_string();
        assert!(err.contains("db (100.64.0.3), db-1 (100.64.0.4)"), "{err}");
    }

    #[test]
    fn a_node_that_is_not_running_says_so_instead_of_no_such_peer() {
        let mut st = sample();
        st.backend_state = BackendState::NeedsLogin;
        st.peers.clear();
        let err = find_node(&st, "web").unwrap_err().to_string();
        assert!(err.starts_with("Logged out. No peers are known"), "{err}");
    }

    #[test]
    fn unknown_names_and_addresses_say_so() {
        let st = sample();
        let err = find_node(&st, "nope").unwrap_err().to_string();
        assert_eq!(
            err,
            "no node named \"nope\" in the tailnet (see 'weft status')"
        );
        let err = find_node(&st, "100.64.0.99").unwrap_err().to_string();
        assert!(err.contains("100.64.0.99"), "{err}");
    }
}
