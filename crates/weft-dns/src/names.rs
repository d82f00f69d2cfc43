//! The name table: what the resolver answers itself, built from a netmap.

use std::collections::BTreeMap;
use std::net::IpAddr;

use weft_types::NetMap;

/// Where a locally known name comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NameSource {
    /// A tailnet node (this node or a peer in the netmap).
    Node,
    /// An admin-configured extra record ([`weft_types::netmap::DnsConfig::extra_records`]).
    ExtraRecord,
}

/// Names and addresses the resolver answers for, keyed by lower-case names
/// without the trailing dot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    /// The tailnet domain (lower case, no trailing dot); `None` before the
    /// first netmap.
    pub(crate) domain: Option<String>,
    /// Node FQDN → its addresses.
    pub(crate) nodes: BTreeMap<String, Vec<IpAddr>>,
    /// A node's first label → its FQDN (the short name).
    pub(crate) short: BTreeMap<String, String>,
    /// A node address → its FQDN (PTR).
    pub(crate) reverse: BTreeMap<IpAddr, String>,
    /// Extra record name → its addresses.
    pub(crate) extra: BTreeMap<String, Vec<IpAddr>>,
}

impl NameTable {
    /// Builds the table from a netmap: this node, every peer the netmap
    /// holds (the netmap is already cut to what policy lets this node see),
    /// and the extra records.
    pub fn from_netmap(nm: &NetMap) -> Self {
        let mut t = NameTable {
            domain: Some(key(nm.domain.as_str())),
            ..NameTable::default()
        };
        for node in std::iter::once(&nm.self_node).chain(nm.peers.values()) {
            let fqdn = key(node.name.as_str());
            let addrs: Vec<IpAddr> = node.addresses.iter().map(|n| n.addr()).collect();
            for a in &addrs {
                t.reverse.entry(*a).or_insert_with(|| fqdn.clone());
            }
            if let Some((label, _)) = fqdn.split_once('.') {
                t.short
                    .entry(label.to_owned())
                    .or_insert_with(|| fqdn.clone());
            }
            t.nodes.entry(fqdn).or_default().extend(addrs);
        }
        for r in &nm.dns.extra_records {
            t.extra
                .entry(key(r.name.as_str()))
                .or_default()
                .push(r.addr);
        }
        t
    }

    /// Returns how many node names the table holds.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Returns the table key of a name: lower case, no trailing dot.
pub(crate) fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Returns whether `name` is `zone` or a name under it (both keys).
pub(crate) fn is_under(name: &str, zone: &str) -> bool {
    name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes().get(name.len() - zone.len() - 1) == Some(&b'.'))
}

#[cfg(test)]
mod tests {
    use super::is_under;

    #[test]
    fn is_under_matches_whole_labels_only() {
        assert!(is_under("a.corp.example", "corp.example"));
        assert!(is_under("corp.example", "corp.example"));
        assert!(!is_under("xcorp.example", "corp.example"));
        assert!(!is_under("example", "corp.example"));
    }
}
