//! Shared fixtures for the integration tests.
#![allow(dead_code, clippy::unwrap_used)]

use weft_filter::CompiledFilter;
use weft_policy::{CompiledTailnet, Node, NodeId, Policy, Role, Tailnet, User};

/// A small tailnet: alice (admin) and bob are users; carol has no devices.
/// `server` is tagged by alice and so has no user identity.
pub const NODES: &str = r#"{
  "users": [
    {"login": "alice@example.com", "role": "admin"},
    {"login": "bob@example.com"},
    {"login": "carol@example.com"}
  ],
  "nodes": [
    {"name": "alice-laptop", "user": "alice@example.com", "ipv4": "100.64.0.1", "ipv6": "fd7a:115c:a1e0::1"},
    {"name": "alice-phone", "user": "alice@example.com", "ipv4": "100.64.0.2", "ipv6": "fd7a:115c:a1e0::2"},
    {"name": "bob-laptop", "user": "bob@example.com", "ipv4": "100.64.0.3", "ipv6": "fd7a:115c:a1e0::3"},
    {"name": "server", "user": "alice@example.com", "tags": ["tag:server"], "ipv4": "100.64.0.10", "ipv6": "fd7a:115c:a1e0::10"},
    {"name": "db", "user": null, "tags": ["tag:db"], "ipv4": "100.64.0.11", "ipv6": "fd7a:115c:a1e0::11"}
  ]
}"#;

pub fn tailnet() -> Tailnet {
    Tailnet::from_nodes_json(NODES).unwrap()
}

pub fn policy(text: &str) -> Policy {
    Policy::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

pub fn id(t: &Tailnet, name: &str) -> NodeId {
    t.node_by_name(name).unwrap().id
}

/// Returns the node's packet filter compiled into the matcher the node runs.
pub fn matcher(c: &CompiledTailnet, node: NodeId) -> CompiledFilter {
    CompiledFilter::new(&c.packet_filter(node).unwrap().rules)
}

pub fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

pub fn node(id: i64, name: &str, user: Option<&str>, tags: &[&str], v4: &str, v6: &str) -> Node {
    Node {
        id: NodeId(id),
        name: name.parse().unwrap(),
        user: user.map(|u| u.parse().unwrap()),
        tags: tags.iter().map(|t| t.parse().unwrap()).collect(),
        ipv4: Some(v4.parse().unwrap()),
        ipv6: Some(v6.parse().unwrap()),
    }
}

pub fn user(login: &str, admin: bool) -> User {
    User {
        login: login.parse().unwrap(),
        role: if admin { Role::Admin } else { Role::Member },
        groups: Default::default(),
    }
}
