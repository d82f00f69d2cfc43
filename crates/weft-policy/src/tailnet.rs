//! The tailnet a policy is evaluated against: users and nodes.
//!
//! A node belongs to a user or carries tags. **A tagged node has no user
//! identity**: it never matches a user, a group, `autogroup:member` or
//! `autogroup:self`, whoever registered it. Its `user` is kept only as a
//! record.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::error::{ErrorKind, PolicyError, TailnetError};
use crate::hujson::{self, Kind, Value};
use crate::parse::{Fail, Lines, R, as_array, as_object, as_str, fail, fields};
use crate::syntax;

/// A node's stable identifier in the control server.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A user's role; admins are `autogroup:admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Role {
    /// An ordinary member.
    #[default]
    Member,
    /// A tailnet administrator.
    Admin,
}

/// A user of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login, e.g. `alice@example.com`.
    pub login: String,
    /// Member or admin.
    pub role: Role,
}

/// A node (device) of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Stable id.
    pub id: NodeId,
    /// Machine name, unique in the tailnet.
    pub name: String,
    /// The user who owns it; ignored for matching when `tags` is non-empty.
    pub user: Option<String>,
    /// Tags (`tag:x`), sorted and unique.
    pub tags: Vec<String>,
    /// Tailnet IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Tailnet IPv6 address.
    pub ipv6: Option<Ipv6Addr>,
}

impl Node {
    /// Returns the user identity of the node: its user if untagged, `None`
    /// if tagged.
    #[must_use]
    pub fn owner(&self) -> Option<&str> {
        if self.tags.is_empty() {
            self.user.as_deref()
        } else {
            None
        }
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
            None if !self.tags.is_empty() => self.tags.join(", "),
            None => "no identity".to_string(),
        }
    }
}

/// Users and nodes, indexed for policy evaluation.
#[derive(Debug, Clone, Default)]
pub struct Tailnet {
    users: BTreeMap<String, User>,
    nodes: Vec<Node>,
    by_id: BTreeMap<NodeId, usize>,
    by_name: BTreeMap<String, usize>,
    by_addr: BTreeMap<IpAddr, usize>,
    by_user: BTreeMap<String, Vec<usize>>,
    by_tag: BTreeMap<String, Vec<usize>>,
}

impl Tailnet {
    /// Builds a tailnet, ordering nodes by id.
    ///
    /// # Errors
    /// Duplicate ids, names, addresses or logins; a node of an unknown user;
    /// a node with neither user nor tags; a malformed tag.
    pub fn new(users: Vec<User>, mut nodes: Vec<Node>) -> Result<Tailnet, TailnetError> {
        let mut t = Tailnet::default();
        for u in users {
            if t.users.contains_key(&u.login) {
                return Err(TailnetError::DuplicateUser(u.login));
            }
            t.users.insert(u.login.clone(), u);
        }
        nodes.sort_by_key(|n| n.id);
        for (i, mut n) in nodes.into_iter().enumerate() {
            n.tags.sort();
            n.tags.dedup();
            if t.by_id.insert(n.id, i).is_some() {
                return Err(TailnetError::DuplicateId(n.id.0));
            }
            if t.by_name.insert(n.name.clone(), i).is_some() {
                return Err(TailnetError::DuplicateName(n.name));
            }
            for a in n.addresses() {
                if let Some(&other) = t.by_addr.get(&a) {
                    let first = t
                        .nodes
                        .get(other)
                        .map(|o| o.name.clone())
                        .unwrap_or_default();
                    return Err(TailnetError::DuplicateAddress {
                        addr: a,
                        first,
                        second: n.name.clone(),
                    });
                }
                t.by_addr.insert(a, i);
            }
            if let Some(tag) = n.tags.iter().find(|tag| syntax::tag_name(tag).is_err()) {
                return Err(TailnetError::BadTag {
                    node: n.name.clone(),
                    tag: tag.clone(),
                });
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
                t.by_user.entry(u.to_string()).or_default().push(i);
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
    pub fn users(&self) -> &BTreeMap<String, User> {
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
            if self.users.contains_key(s) {
                return Ok(Endpoint::User(s.to_string()));
            }
            let known: Vec<&str> = self.users.keys().map(String::as_str).collect();
            return Err(format!(
                "no user \"{s}\" in the tailnet (users: {})",
                list_or_none(&known)
            ));
        }
        if s.starts_with("tag:") {
            return Ok(Endpoint::Tag(s.to_string()));
        }
        let names: Vec<&str> = self.by_name.keys().map(String::as_str).collect();
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
    User(String),
    /// A tag, as an identity (a device carrying it).
    Tag(String),
    /// An address that belongs to no node.
    Address(IpAddr),
}

fn nodes_json(root: &Value) -> R<(Vec<User>, Vec<Node>)> {
    let obj = as_object(root, "")?;
    let top = fields(obj, "", &["users", "nodes"], &[])?;
    let mut users = Vec::new();
    let mut nodes = Vec::new();
    let mut seen_users = BTreeSet::new();
    let mut seen_names = BTreeMap::new();
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
                    let known: Vec<&str> = seen_users.iter().map(String::as_str).collect();
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
    seen: &mut BTreeSet<String>,
) -> R<User> {
    let mut login = None;
    let mut role = Role::Member;
    for (k, v) in fields(m, path, &["login", "role"], &[])? {
        let p = format!("{path}.{k}");
        let s = as_str(v, &p)?;
        if k == "login" {
            syntax::user_login(s).map_err(|e| fail(v.span, &p, e))?;
            if !seen.insert(s.to_string()) {
                return Err(fail(
                    v.span,
                    &p,
                    ErrorKind::Invalid(format!("duplicate user \"{s}\"")),
                ));
            }
            login = Some(s.to_string());
        } else {
            role = match s {
                "admin" => Role::Admin,
                "member" => Role::Member,
                _ => {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid(format!(
                            "unknown role \"{s}\": expected \"admin\" or \"member\""
                        )),
                    ));
                }
            };
        }
    }
    let login = login.ok_or_else(|| fail(item.span, path, ErrorKind::MissingField("login")))?;
    Ok(User { login, role })
}

fn node_json(
    item: &Value,
    m: &[(hujson::Key, Value)],
    path: &str,
    index: usize,
    seen_names: &mut BTreeMap<String, ()>,
    seen_addrs: &mut BTreeMap<IpAddr, String>,
) -> R<Node> {
    let mut n = Node {
        id: NodeId(index as u64 + 1),
        name: String::new(),
        user: None,
        tags: Vec::new(),
        ipv4: None,
        ipv6: None,
    };
    let mut has_name = false;
    for (k, v) in fields(
        m,
        path,
        &["id", "name", "user", "tags", "ipv4", "ipv6"],
        &[],
    )? {
        let p = format!("{path}.{k}");
        match k {
            "id" => match &v.kind {
                Kind::Number(s) if s.parse::<u64>().is_ok() => {
                    n.id = NodeId(s.parse::<u64>().unwrap_or(0))
                }
                _ => {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid("expected a non-negative integer id".into()),
                    ));
                }
            },
            "name" => {
                let s = as_str(v, &p)?;
                if s.is_empty() || s.contains(char::is_whitespace) {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid("node names are non-empty, without spaces".into()),
                    ));
                }
                if seen_names.insert(s.to_string(), ()).is_some() {
                    return Err(fail(
                        v.span,
                        &p,
                        ErrorKind::Invalid(format!("duplicate node name \"{s}\"")),
                    ));
                }
                n.name = s.to_string();
                has_name = true;
            }
            "user" => {
                if v.kind != Kind::Null {
                    n.user = Some(as_str(v, &p)?.to_string());
                }
            }
            "tags" => {
                for (j, tv) in as_array(v, &p)?.iter().enumerate() {
                    let tp = format!("{p}[{j}]");
                    let t = as_str(tv, &tp)?;
                    syntax::tag_name(t).map_err(|e| fail(tv.span, &tp, e))?;
                    n.tags.push(t.to_string());
                }
            }
            _ => {
                let s = as_str(v, &p)?;
                let addr = match (k, s.parse::<IpAddr>()) {
                    ("ipv4", Ok(a @ IpAddr::V4(v4))) => {
                        n.ipv4 = Some(v4);
                        a
                    }
                    ("ipv6", Ok(a @ IpAddr::V6(v6))) => {
                        n.ipv6 = Some(v6);
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
    if !has_name {
        return Err(fail(item.span, path, ErrorKind::MissingField("name")));
    }
    if n.user.is_none() && n.tags.is_empty() {
        return Err(fail(
            item.span,
            path,
            ErrorKind::Invalid("a node needs a \"user\" or \"tags\"".into()),
        ));
    }
    if n.ipv4.is_none() && n.ipv6.is_none() {
        return Err(fail(
            item.span,
            path,
            ErrorKind::Invalid("a node needs an \"ipv4\" and/or an \"ipv6\" address".into()),
        ));
    }
    Ok(n)
}

impl From<PolicyError> for TailnetError {
    fn from(e: PolicyError) -> Self {
        TailnetError::Json(e)
    }
}
