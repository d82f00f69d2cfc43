//! The tailnet a policy is evaluated against: users and nodes, in the
//! `weft-types` vocabulary (node ids, DNS-label node names, login names,
//! tags, roles), so control hands its records over without conversion.
//!
//! A node belongs to a user or carries tags. **A tagged node has no user
//! identity**: it never matches a user, a group, `autogroup:member` or
//! `autogroup:self`, whoever registered it. Its `user` is kept only as a
//! record.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

pub use weft_types::{DnsLabel, LoginName, NodeId, Role, Tag};

use crate::error::{ErrorKind, PolicyError, TailnetError};
use crate::hujson::{self, Kind, Value};
use crate::parse::{Fail, Lines, R, as_array, as_object, as_str, fail, fields};
use crate::syntax;

/// A user of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login, e.g. `alice@example.com`.
    pub login: LoginName,
    /// Member or admin.
    pub role: Role,
    /// The groups the user's identity provider puts them in, as policy
    /// group names (`group:oidc:engineering`), refreshed at each login.
    /// A policy selector `group:x` matches the user if `group:x` lists the
    /// login in the policy's `groups` or is one of these.
    pub groups: BTreeSet<String>,
}

/// A node (device) of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The control server's id.
    pub id: NodeId,
    /// Machine name (its MagicDNS label), unique in the tailnet.
    pub name: DnsLabel,
    /// The user who owns it; ignored for matching when `tags` is non-empty.
    pub user: Option<LoginName>,
    /// Tags; a node with any has no user identity.
    pub tags: BTreeSet<Tag>,
    /// Tailnet IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Tailnet IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
}

impl Node {
    /// Returns the user identity of the node: its user if untagged, `None`
    /// if tagged.
    #[must_use]
    pub fn owner(&self) -> Option<&LoginName> {
        if self.tags.is_empty() {
            self.user.as_ref()
        } else {
            None
        }
    }

    /// Returns [`Node::owner`] as text, the form policy selectors compare.
    pub(crate) fn owner_name(&self) -> Option<&str> {
        self.owner().map(LoginName::as_str)
    }

    /// Returns the tags as text, the form policy selectors compare.
    pub(crate) fn tag_names(&self) -> Vec<String> {
        self.tags.iter().map(ToString::to_string).collect()
    }

    /// Returns the node's addresses, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.ipv4
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.ipv6.map(IpAddr::V6))
    }

    /// Returns the address of the given family.
    #[must_use]
    pub fn address(&self, v4: bool) -> Option<IpAddr> {
        if v4 {
            self.ipv4.map(IpAddr::V4)
        } else {
            self.ipv6.map(IpAddr::V6)
        }
    }

    /// Describes the identity for people: `alice@example.com` or `tag:a, tag:b`.
    #[must_use]
    pub fn identity_label(&self) -> String {
        match self.owner() {
            Some(u) => u.to_string(),
            None if !self.tags.is_empty() => {
                let tags: Vec<&str> = self.tags.iter().map(Tag::as_str).collect();
                tags.join(", ")
            }
            None => "no identity".to_string(),
        }
    }
}

/// Users and nodes, indexed for policy evaluation.
#[derive(Debug, Clone, Default)]
pub struct Tailnet {
    users: BTreeMap<LoginName, User>,
    nodes: Vec<Node>,
    by_id: BTreeMap<NodeId, usize>,
    by_name: BTreeMap<DnsLabel, usize>,
    by_addr: BTreeMap<IpAddr, usize>,
    by_user: BTreeMap<LoginName, Vec<usize>>,
    by_tag: BTreeMap<Tag, Vec<usize>>,
    /// Identity-provider group → member logins ([`User::groups`]).
    by_idp_group: BTreeMap<String, Vec<String>>,
}

impl Tailnet {
    /// Builds a tailnet, ordering nodes by id.
    ///
    /// # Errors
    /// Duplicate ids, names, addresses or logins; a node of an unknown user;
    /// a node with neither user nor tags.
    pub fn new(users: Vec<User>, mut nodes: Vec<Node>) -> Result<Tailnet, TailnetError> {
        let mut t = Tailnet::default();
        for u in users {
            if t.users.contains_key(&u.login) {
                return Err(TailnetError::DuplicateUser(u.login));
            }
            for g in &u.groups {
                t.by_idp_group
                    .entry(g.clone())
                    .or_default()
                    .push(u.login.to_string());
            }
            t.users.insert(u.login.clone(), u);
        }
        nodes.sort_by_key(|n| n.id);
        for (i, n) in nodes.into_iter().enumerate() {
            if t.by_id.insert(n.id, i).is_some() {
                return Err(TailnetError::DuplicateId(n.id));
            }
            if t.by_name.insert(n.name.clone(), i).is_some() {
                return Err(TailnetError::DuplicateName(n.name));
            }
            for a in n.addresses() {
                if let Some(first) = t.by_addr.get(&a).and_then(|&other| t.nodes.get(other)) {
                    return Err(TailnetError::DuplicateAddress {
                        addr: a,
                        first: first.name.clone(),
                        second: n.name.clone(),
                    });
                }
                t.by_addr.insert(a, i);
            }
            if let Some(u) = &n.user {
                if !t.users.contains_key(u) {
                    return Err(TailnetError::UnknownUser {
                        node: n.name,
                        user: u.clone(),
                    });
                }
            } else if n.tags.is_empty() {
                return Err(TailnetError::NoOwner(n.name));
            }
            if let Some(u) = n.owner() {
                t.by_user.entry(u.clone()).or_default().push(i);
            }
            for tag in &n.tags {
                t.by_tag.entry(tag.clone()).or_default().push(i);
            }
            t.nodes.push(n);
        }
        Ok(t)
    }

    /// Reads the offline tailnet description (`NODES.json`, see
    /// docs/POLICY.md); messages name the file `nodes.json`.
    ///
    /// # Errors
    /// Syntax and shape errors with line:column, and the checks of [`Tailnet::new`].
    pub fn from_nodes_json(text: &str) -> Result<Tailnet, TailnetError> {
        Self::from_nodes_json_named("nodes.json", text)
    }

    /// Like [`Tailnet::from_nodes_json`], naming the file `source_name`.
    ///
    /// # Errors
    /// As [`Tailnet::from_nodes_json`].
    pub fn from_nodes_json_named(source_name: &str, text: &str) -> Result<Tailnet, TailnetError> {
        let lines = Lines::new(text);
        let to_err = |f: Fail| TailnetError::Json(lines.error(source_name, f));
        let root = hujson::parse(text).map_err(|e| {
            to_err(Fail {
                offset: e.offset,
                path: String::new(),
                kind: ErrorKind::Syntax(e.message),
            })
        })?;
        let (users, nodes) = nodes_json(&root).map_err(to_err)?;
        Tailnet::new(users, nodes)
    }

    /// Returns the users by login.
    #[must_use]
    pub fn users(&self) -> &BTreeMap<LoginName, User> {
        &self.users
    }

    /// Returns the nodes, ordered by id.
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Returns the node with this id.
    #[must_use]
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.by_id.get(&id).and_then(|&i| self.nodes.get(i))
    }

    /// Returns the node with this name.
    #[must_use]
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.by_name.get(name).and_then(|&i| self.nodes.get(i))
    }

    /// Returns the node that owns this address.
    #[must_use]
    pub fn node_by_addr(&self, addr: IpAddr) -> Option<&Node> {
        self.by_addr.get(&addr).and_then(|&i| self.nodes.get(i))
    }

    /// Returns whether `login` has the admin role.
    #[must_use]
    pub fn is_admin(&self, login: &str) -> bool {
        self.users.get(login).is_some_and(|u| u.role == Role::Admin)
    }

    /// Returns the logins the identity provider puts in `group`
    /// ([`User::groups`]), by login.
    #[must_use]
    pub fn idp_group_members(&self, group: &str) -> &[String] {
        self.by_idp_group.get(group).map_or(&[], Vec::as_slice)
    }

    /// Returns whether the identity provider puts `login` in `group`.
    #[must_use]
    pub fn in_idp_group(&self, login: &str, group: &str) -> bool {
        self.users
            .get(login)
            .is_some_and(|u| u.groups.contains(group))
    }

    pub(crate) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.by_id.get(&id).copied()
    }

    /// Indices of the untagged nodes of `login`.
    pub(crate) fn user_nodes(&self, login: &str) -> &[usize] {
        self.by_user.get(login).map_or(&[], Vec::as_slice)
    }

    /// Indices of the nodes carrying `tag`.
    pub(crate) fn tag_nodes(&self, tag: &str) -> &[usize] {
        self.by_tag.get(tag).map_or(&[], Vec::as_slice)
    }

    /// Nodes whose addresses lie in `net`, with the matching address.
    pub(crate) fn nodes_in(
        &self,
        net: &ipnet::IpNet,
    ) -> impl Iterator<Item = (IpAddr, usize)> + '_ {
        self.by_addr
            .range(net.network()..=net.broadcast())
            .map(|(a, i)| (*a, *i))
    }

    /// Resolves a `--src`/`--dst` string: a node name, a user login, or an
    /// address (which becomes that node when one owns it).
    ///
    /// # Errors
    /// Names nothing in this tailnet; the message lists what exists.
    pub fn resolve(&self, s: &str) -> Result<Endpoint, String> {
        if let Some(n) = self.node_by_name(s) {
            return Ok(Endpoint::Node {
                id: n.id,
                addr: None,
            });
        }
        if let Ok(ip) = s
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(match self.node_by_addr(ip) {
                Some(n) => Endpoint::Node {
                    id: n.id,
                    addr: Some(ip),
                },
                None => Endpoint::Address(ip),
            });
        }
        if s.contains('@') {
            if let Some(u) = self.users.get(s) {
                return Ok(Endpoint::User(u.login.clone()));
            }
            let known: Vec<&str> = self.users.keys().map(LoginName::as_str).collect();
            return Err(format!(
                "no user \"{s}\" in the tailnet (users: {})",
                list_or_none(&known)
            ));
        }
        if s.starts_with("tag:") {
            return Tag::from_str(s)
                .map(Endpoint::Tag)
                .map_err(|e| e.to_string());
        }
        let names: Vec<&str> = self.by_name.keys().map(DnsLabel::as_str).collect();
        Err(format!(
            "\"{s}\" is not a node name, user login or IP address (nodes: {})",
            list_or_none(&names)
        ))
    }

    /// Resolves `TARGET:PORT` (IPv6 as `[addr]:port`); the port may be
    /// omitted for protocols without ports, giving `None`.
    ///
    /// # Errors
    /// An unknown target or a malformed port.
    pub fn resolve_with_port(&self, s: &str) -> Result<(Endpoint, Option<u16>), String> {
        let (target, port) = if let Some(rest) = s.strip_prefix('[') {
            match rest.split_once(']') {
                Some((addr, "")) => (addr, None),
                Some((addr, p)) => (
                    addr,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| format!("expected [address]:port, got \"{s}\""))?,
                    ),
                ),
                None => return Err(format!("missing `]` in \"{s}\"")),
            }
        } else if s.parse::<IpAddr>().is_ok() {
            (s, None)
        } else {
            match s.rsplit_once(':') {
                Some((t, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                    (t, Some(p))
                }
                _ => (s, None),
            }
        };
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .map_err(|_| format!("\"{p}\" is not a port number (0-65535)"))?,
            ),
            None => None,
        };
        Ok((self.resolve(target)?, port))
    }

    /// Describes an endpoint for output.
    #[must_use]
    pub fn describe(&self, e: &Endpoint) -> String {
        match e {
            Endpoint::Node { id, addr } => match self.node(*id) {
                Some(n) => {
                    let addrs: Vec<String> = match addr {
                        Some(a) => vec![a.to_string()],
                        None => n.addresses().map(|a| a.to_string()).collect(),
                    };
                    format!("{} ({}, {})", n.name, n.identity_label(), addrs.join(", "))
                }
                None => format!("node {id}"),
            },
            Endpoint::User(u) => format!("{u} (user)"),
            Endpoint::Tag(t) => format!("{t} (tag)"),
            Endpoint::Address(a) => format!("{a} (not a node of this tailnet)"),
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none".to_string()
    } else {
        items.join(", ")
    }
}

/// Something traffic comes from or goes to, as named on a command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// A node, optionally one specific address of it.
    Node {
        /// The node.
        id: NodeId,
        /// The address named, if an address was given.
        addr: Option<IpAddr>,
    },
    /// A user, as an identity (any of their untagged devices, or a new one).
    User(LoginName),
    /// A tag, as an identity (a device carrying it).
    Tag(Tag),
    /// An address that belongs to no node.
    Address(IpAddr),
}

fn nodes_json(root: &Value) -> R<(Vec<User>, Vec<Node>)> {
    let obj = as_object(root, "")?;
    let top = fields(obj, "", &["users", "nodes"], &[])?;
    let mut users = Vec::new();
    let mut nodes = Vec::new();
    let mut seen_users: BTreeSet<LoginName> = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    let mut seen_addrs = BTreeMap::new();
    for (k, v) in &top {
        for (i, item) in as_array(v, k)?.iter().enumerate() {
            let path = format!("{k}[{i}]");
            let m = as_object(item, &path)?;
            if *k == "users" {
                users.push(user_json(item, m, &path, &mut seen_users)?);
            } else {
                let n = node_json(item, m, &path, i, &mut seen_names, &mut seen_addrs)?;
                nodes.push(n);
            }
        }
    }
    // Unknown users are reported at the node that names them.
    for (k, v) in &top {
        if *k != "nodes" {
            continue;
        }
        for (i, item) in as_array(v, k)?.iter().enumerate() {
            if let (Some(n), Kind::Object(m)) = (nodes.get(i), &item.kind)
                && let Some(u) = n.user.as_ref().filter(|u| !seen_users.contains(*u))
            {
                {
                    let span = m
                        .iter()
                        .find(|(k, _)| k.name == "user")
                        .map_or(item.span, |(_, v)| v.span);
                    let known: Vec<&str> = seen_users.iter().map(LoginName::as_str).collect();
                    return Err(fail(
                        span,
                        &format!("nodes[{i}].user"),
                        ErrorKind::Invalid(format!(
                            "unknown user \"{u}\": add {{\"login\": \"{u}\"}} to \"users\" (users: {})",
                            list_or_none(&known)
                        )),
                    ));
                }
            }
        }
    }
    Ok((users, nodes))
}

fn user_json(
    item: &Value,
    m: &[(hujson::Key, Value)],
    path: &str,
    seen: &mut BTreeSet<LoginName>,
) -> R<User> {
    let mut login = None;
    let mut role = Role::Member;
    let mut groups = BTreeSet::new();
    for (k, v) in fields(m, path, &["login", "role", "groups"], &[])? {
        let p = format!("{path}.{k}");
        if k == "groups" {
            for (j, g) in as_array(v, &p)?.iter().enumerate() {
                let gp = format!("{p}[{j}]");
                let s = as_str(g, &gp)?;
                syntax::group_name(s).map_err(|e| fail(g.span, &gp, e))?;
                groups.insert(s.to_string());
            }
            continue;
        }
        let s = as_str(v, &p)?;
        if k == "login" {
            syntax::user_login(s).map_err(|e| fail(v.span, &p, e))?;
            let name = LoginName::from_str(s)
                .map_err(|e| fail(v.span, &p, ErrorKind::Invalid(e.to_string())))?;
            if !seen.insert(name.clone()) {
                return Err(fail(
                    v.span,
                    &p,
                    ErrorKind::Invalid(format!("duplicate user \"{s}\"")),
                ));
            }
            login = Some(name);
        } else {
            role = Role::from_str(s)
                .map_err(|e| fail(v.span, &p, ErrorKind::Invalid(e.to_string())))?;
        }
    }
    let login = login.ok_or_else(|| fail(item.span, path, ErrorKind::MissingField("login")))?;
    Ok(User {
        login,
        role,
        groups,
    })
}

fn node_json(
    item: &Value,
    m: &[(hujson::Key, Value)],
    path: &str,
    index: usize,
    seen_names: &mut BTreeSet<DnsLabel>,
    seen_addrs: &mut BTreeMap<IpAddr, String>,
) -> R<Node> {
    let default_id = i64::try_from(index + 1)
        .map_err(|_| fail(item.span, path, ErrorKind::Invalid("too many nodes".into())))?;
    let mut id = NodeId(default_id);
    let mut name = None;
    let mut user = None;
    let mut tags = BTreeSet::new();
    let (mut ipv4, mut ipv6) = (None, None);
    for (k, v) in fields(
        m,
        path,
        &["id", "name", "user", "tags", "ipv4", "ipv6"],
        &[],
    )? {
        let p = format!("{path}.{k}");
        match k {
            "id" => {
                let parsed = match &v.kind {
                    Kind::Number(s) => s.parse::<i64>().ok().filter(|n| *n >= 0),
                    _ => None,
                };
                let Some(n) = parsed else {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid("expected a non-negative integer id".into()),
                    ));
                };
                id = NodeId(n);
            }
            "name" => {
                let s = as_str(v, &p)?;
                let label = DnsLabel::from_str(s)
                    .map_err(|e| fail(v.span, &p, ErrorKind::Invalid(e.to_string())))?;
                if !seen_names.insert(label.clone()) {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid(format!("duplicate node name \"{s}\"")),
                    ));
                }
                name = Some(label);
            }
            "user" => {
                if v.kind != Kind::Null {
                    let s = as_str(v, &p)?;
                    let login = LoginName::from_str(s)
                        .map_err(|e| fail(v.span, &p, ErrorKind::Invalid(e.to_string())))?;
                    user = Some(login);
                }
            }
            "tags" => {
                for (j, tv) in as_array(v, &p)?.iter().enumerate() {
                    let tp = format!("{p}[{j}]");
                    let t = as_str(tv, &tp)?;
                    syntax::tag_name(t).map_err(|e| fail(tv.span, &tp, e))?;
                    let tag = Tag::from_str(t)
                        .map_err(|e| fail(tv.span, &tp, ErrorKind::Invalid(e.to_string())))?;
                    tags.insert(tag);
                }
            }
            _ => {
                let s = as_str(v, &p)?;
                let addr = match (k, s.parse::<IpAddr>()) {
                    ("ipv4", Ok(a @ IpAddr::V4(v4))) => {
                        ipv4 = Some(v4);
                        a
                    }
                    ("ipv6", Ok(a @ IpAddr::V6(v6))) => {
                        ipv6 = Some(v6);
                        a
                    }
                    _ => {
                        let want = if k == "ipv4" {
                            "an IPv4 address such as 100.64.0.5"
                        } else {
                            "an IPv6 address such as fd7a:115c:a1e0::5"
                        };
                        return Err(fail(
                            v.span,
                            &p,
                            ErrorKind::Invalid(format!("expected {want}")),
                        ));
                    }
                };
                if let Some(other) = seen_addrs.insert(addr, path.to_string()) {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid(format!("address {addr} is already used by {other}")),
                    ));
                }
            }
        }
    }
    let Some(name) = name else {
        return Err(fail(item.span, path, ErrorKind::MissingField("name")));
    };
    if user.is_none() && tags.is_empty() {
        return Err(fail(
            item.span,
            path,
            ErrorKind::Invalid("a node needs a \"user\" or \"tags\"".into()),
        ));
    }
    if ipv4.is_none() && ipv6.is_none() {
        return Err(fail(
            item.span,
            path,
            ErrorKind::Invalid("a node needs an \"ipv4\" and/or an \"ipv6\" address".into()),
        ));
    }
    Ok(Node {
        id,
        name,
        user,
        tags,
        ipv4,
        ipv6,
    })
}

impl From<PolicyError> for TailnetError {
    fn from(e: PolicyError) -> Self {
        TailnetError::Json(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes_error(nodes: &str) -> String {
        let text = format!(
            "{{\"users\": [{{\"login\": \"alice@example.com\", \"role\": \"admin\"}}],\n\"nodes\": [\n{nodes}\n]}}"
        );
        Tailnet::from_nodes_json(&text).unwrap_err().to_string()
    }

    #[test]
    fn nodes_json_reads_into_the_weft_types_vocabulary() {
        let t = Tailnet::from_nodes_json(
            r#"{"users": [{"login": "alice@example.com", "role": "admin"}, {"login": "bob@example.com"}],
                "nodes": [
                  {"name": "laptop", "user": "alice@example.com", "ipv4": "100.64.0.1"},
                  {"id": 40, "name": "db", "user": null, "tags": ["tag:db", "tag:db", "tag:x-1"], "ipv6": "fd7a:115c:a1e0::4"}
                ]}"#,
        )
        .unwrap();
        let laptop = t.node_by_name("laptop").unwrap();
        assert_eq!(laptop.id, NodeId(1), "the default id is the position + 1");
        assert_eq!(
            laptop.owner().map(LoginName::as_str),
            Some("alice@example.com")
        );
        let db = t.node(NodeId(40)).unwrap();
        assert_eq!(db.name.as_str(), "db");
        assert_eq!(db.identity_label(), "tag:db, tag:x-1");
        assert_eq!(db.owner(), None);
        assert!(t.is_admin("alice@example.com"));
        assert!(!t.is_admin("bob@example.com"));
        assert_eq!(t.users()["bob@example.com"].role, Role::Member);
    }

    #[test]
    fn bad_nodes_json_values_are_refused_with_their_position() {
        let cases = [
            (
                r#"{"name": "Alice_Laptop", "user": "alice@example.com", "ipv4": "100.64.0.1"}"#,
                "nodes.json:3:10: nodes[0].name: \"Alice_Laptop\" is not a DNS label",
            ),
            (
                r#"{"id": -1, "name": "a", "user": "alice@example.com", "ipv4": "100.64.0.1"}"#,
                "nodes.json:3:8: nodes[0].id: expected a non-negative integer id",
            ),
            (
                r#"{"id": 9223372036854775808, "name": "a", "user": "alice@example.com", "ipv4": "100.64.0.1"}"#,
                "nodes.json:3:8: nodes[0].id: expected a non-negative integer id",
            ),
            (
                r#"{"name": "a", "tags": ["tag:a_b"], "ipv4": "100.64.0.1"}"#,
                "nodes.json:3:24: nodes[0].tags[0]: invalid tag \"tag:a_b\": use letters, digits and `-` only",
            ),
            (
                r#"{"name": "a", "user": "alice @example.com", "ipv4": "100.64.0.1"}"#,
                "nodes.json:3:23: nodes[0].user: \"alice @example.com\" is not a login name",
            ),
        ];
        for (node, want) in cases {
            let got = nodes_error(node);
            assert!(got.starts_with(want), "{node}\n got: {got}\nwant: {want}…");
        }
        let role = Tailnet::from_nodes_json(
            r#"{"users": [{"login": "alice@example.com", "role": "owner"}], "nodes": []}"#,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            role,
            "nodes.json:1:51: users[0].role: unknown role \"owner\": expected \"admin\" or \"member\""
        );
    }
}
