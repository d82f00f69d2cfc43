//! The policy model: what a validated policy file says.
//!
//! Every rule, selector and test keeps its [`Loc`] (line, column and byte
//! span in the source) so that evaluation results and test failures can
//! name the line that decided them.

use std::collections::BTreeMap;
use std::fmt;

use ipnet::IpNet;
use weft_types::filter::{CheckPeriod, PortRange, SshRecorder};

use crate::error::PolicyError;

/// The file name used in messages when the caller gives none.
pub const DEFAULT_SOURCE_NAME: &str = "policy.hujson";

/// The policy a new tailnet starts with: every device may reach every
/// device, and (as in Tailscale) Weft SSH is off until `ssh` rules exist.
pub const DEFAULT_POLICY: &str = r#"// Weft access policy (HuJSON: JSON with comments and trailing commas).
// A new tailnet allows all traffic between all of its devices. Tighten it with
// groups, tags and rules; see docs/POLICY.md. Everything not allowed is denied.
{
  // Groups of users, e.g. "group:eng": ["alice@example.com", "bob@example.com"],
  "groups": {},

  // Who may apply each tag to a device, e.g. "tag:server": ["group:eng"],
  "tagOwners": {},

  // Names for addresses, e.g. "nas": "100.64.0.10",
  "hosts": {},

  "acls": [
    // Allow all traffic between all devices.
    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
  ],

  // Weft SSH is denied until you add rules here, for example letting members
  // log in to their own devices as any non-root user:
  // {"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot"]},
  "ssh": [],

  // Tests run on every save; a failing test rejects the policy, e.g.
  // {"src": "alice@example.com", "accept": ["tag:server:22"], "deny": ["tag:db:5432"]},
  "tests": [],
}
"#;

/// Where something is in the policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    /// 1-based line.
    pub line: u32,
    /// 1-based column, in characters.
    pub column: u32,
    /// Byte offset where it starts in [`Policy::text`].
    pub start: usize,
    /// Byte offset just past its end.
    pub end: usize,
}

/// A parsed value with the text it was written as and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item<T> {
    /// The meaning.
    pub value: T,
    /// The string as written in the file (without quotes).
    pub text: String,
    /// Where it is.
    pub loc: Loc,
}

/// The autogroups that select devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Autogroup {
    /// `autogroup:member`: devices of users (untagged devices).
    Member,
    /// `autogroup:tagged`: devices with at least one tag.
    Tagged,
    /// `autogroup:admin`: untagged devices of users with the admin role.
    Admin,
    /// `autogroup:self` (destinations only): the source user's own untagged devices.
    SelfDevices,
}

impl Autogroup {
    /// Returns the spelling in policy files.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Autogroup::Member => "autogroup:member",
            Autogroup::Tagged => "autogroup:tagged",
            Autogroup::Admin => "autogroup:admin",
            Autogroup::SelfDevices => "autogroup:self",
        }
    }
}

/// Who or what a `src`/`dst` entry names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Selector {
    /// `*`: every device and every address.
    Any,
    /// A user login such as `alice@example.com`: that user's untagged devices.
    User(String),
    /// `group:name`: the untagged devices of the group's users.
    Group(String),
    /// `tag:name`: devices carrying the tag.
    Tag(String),
    /// `autogroup:…`.
    Autogroup(Autogroup),
    /// A host alias from `hosts`, with its prefix.
    Host(String, IpNet),
    /// An IP address (as a /32 or /128) or CIDR.
    Prefix(IpNet),
}

impl Selector {
    /// Returns whether the selector is matched by address rather than identity.
    #[must_use]
    pub fn is_address(&self) -> bool {
        matches!(self, Selector::Host(..) | Selector::Prefix(_))
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::User(s) | Selector::Group(s) | Selector::Tag(s) | Selector::Host(s, _) => {
                f.write_str(s)
            }
            Selector::Autogroup(a) => f.write_str(a.as_str()),
            Selector::Prefix(n) => {
                if n.prefix_len() == n.max_prefix_len() {
                    write!(f, "{}", n.addr())
                } else {
                    write!(f, "{n}")
                }
            }
        }
    }
}

/// One `dst` entry of an ACL rule: a target and its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DstEntry {
    /// What the entry reaches.
    pub target: Selector,
    /// Port ranges; `*` is [`PortRange::ALL`].
    pub ports: Vec<PortRange>,
}

/// One `acls` rule. Every rule is an accept rule: there are no deny rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclRule {
    /// Where the rule object is.
    pub loc: Loc,
    /// Sources.
    pub src: Vec<Item<Selector>>,
    /// Destinations with ports.
    pub dst: Vec<Item<DstEntry>>,
    /// IP protocol numbers; empty means TCP, UDP, ICMPv4 and ICMPv6.
    pub protos: Vec<u8>,
}

/// What an `ssh` rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshRuleAction {
    /// `"action": "accept"`.
    Accept,
    /// `"action": "check"`, with `checkPeriod` (default 12 h).
    Check(CheckPeriod),
}

/// One entry of an `ssh` rule's `users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshUser {
    /// `root`.
    Root,
    /// `autogroup:nonroot`: any requested name except a uid-0 account.
    NonRoot,
    /// `localpart:*@domain`: a user of that domain logs in as the local
    /// part of their login (never as a uid-0 account).
    Localpart {
        /// The domain after `@`.
        domain: String,
    },
    /// A specific local user name.
    Named(String),
}

/// One `ssh` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRuleSpec {
    /// Where the rule object is.
    pub loc: Loc,
    /// Accept or check.
    pub action: SshRuleAction,
    /// Who may connect.
    pub src: Vec<Item<Selector>>,
    /// Which devices they may connect to.
    pub dst: Vec<Item<Selector>>,
    /// As which local users.
    pub users: Vec<Item<SshUser>>,
    /// `recorder`: record the sessions this rule admits; `None`: do not.
    pub recorder: Option<SshRecorder>,
}

/// One destination of an ACL test: a target and one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestDst {
    /// What is reached.
    pub target: Selector,
    /// The port tried (0 for protocols without ports).
    pub port: u16,
}

/// One entry of `tests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclTest {
    /// Where the test object is.
    pub loc: Loc,
    /// The identity the traffic comes from.
    pub src: Item<Selector>,
    /// The protocol tried (TCP unless `proto` says otherwise).
    pub proto: u8,
    /// Destinations that must be allowed.
    pub accept: Vec<Item<TestDst>>,
    /// Destinations that must be denied.
    pub deny: Vec<Item<TestDst>>,
}

/// One entry of `sshTests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTest {
    /// Where the test object is.
    pub loc: Loc,
    /// The identity connecting.
    pub src: Item<Selector>,
    /// The devices connected to.
    pub dst: Vec<Item<Selector>>,
    /// Logins that must be accepted (by an accept or a check rule).
    pub accept: Vec<Item<String>>,
    /// Logins that must need a check.
    pub check: Vec<Item<String>>,
    /// Logins that must be refused.
    pub deny: Vec<Item<String>>,
}

/// What a tag owner entry names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagOwner {
    /// A user login.
    User(String),
    /// A group.
    Group(String),
    /// Another tag: devices with it may apply this tag.
    Tag(String),
    /// `autogroup:admin`.
    Admins,
    /// `autogroup:member`.
    Members,
}

/// A parsed and validated policy file.
///
/// Build one with [`Policy::parse`]; nothing partial ever comes out of a
/// file with an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(crate) text: String,
    pub(crate) source_name: String,
    /// `groups`: group name (`group:x`) → member logins.
    pub groups: BTreeMap<String, Vec<String>>,
    /// `tagOwners`: tag (`tag:x`) → who may apply it.
    pub tag_owners: BTreeMap<String, Vec<TagOwner>>,
    /// `hosts`: alias → prefix.
    pub hosts: BTreeMap<String, IpNet>,
    /// `acls`, in file order.
    pub acls: Vec<AclRule>,
    /// `ssh`, in file order (first match wins).
    pub ssh: Vec<SshRuleSpec>,
    /// `tests`.
    pub tests: Vec<AclTest>,
    /// `sshTests`.
    pub ssh_tests: Vec<SshTest>,
}

impl Policy {
    /// Parses and validates a HuJSON policy; messages name the file
    /// [`DEFAULT_SOURCE_NAME`].
    ///
    /// # Errors
    /// The first problem in the file (by position), with line, column and
    /// field path.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        Self::parse_named(DEFAULT_SOURCE_NAME, text)
    }

    /// Like [`Policy::parse`], naming the file `source_name` in messages.
    ///
    /// # Errors
    /// As [`Policy::parse`].
    pub fn parse_named(source_name: &str, text: &str) -> Result<Policy, PolicyError> {
        crate::parse::parse_policy(source_name, text)
    }

    /// Returns the policy a new tailnet starts with ([`DEFAULT_POLICY`]).
    #[must_use]
    pub fn default_allow_all() -> Policy {
        match Self::parse(DEFAULT_POLICY) {
            Ok(p) => p,
            // The constant is covered by a test; an empty policy (deny all)
            // is the safe fallback should it ever break.
            Err(_) => Policy {
                text: String::new(),
                source_name: DEFAULT_SOURCE_NAME.to_string(),
                groups: BTreeMap::new(),
                tag_owners: BTreeMap::new(),
                hosts: BTreeMap::new(),
                acls: Vec::new(),
                ssh: Vec::new(),
                tests: Vec::new(),
                ssh_tests: Vec::new(),
            },
        }
    }

    /// Returns whether a node may carry `tag` when registered by `login`
    /// (`None` for a node registered by an auth key without a user) and
    /// already holding `node_tags`, according to `tagOwners`: the tag must be
    /// declared, and the user is an admin, is listed, is in a listed group,
    /// is a member while `autogroup:member` is listed, or the node holds a
    /// listed owner tag.
    #[must_use]
    pub fn may_apply_tag(
        &self,
        tailnet: &crate::Tailnet,
        tag: &str,
        login: Option<&str>,
        node_tags: &[String],
    ) -> bool {
        let Some(owners) = self.tag_owners.get(tag) else {
            return false;
        };
        if login.is_some_and(|l| tailnet.is_admin(l)) {
            return true;
        }
        owners.iter().any(|o| match (o, login) {
            (TagOwner::User(u), Some(l)) => u == l,
            (TagOwner::Group(g), Some(l)) => self.is_group_member(tailnet, g, l),
            (TagOwner::Admins, Some(l)) => tailnet.is_admin(l),
            (TagOwner::Members, Some(l)) => tailnet.users().contains_key(l),
            (TagOwner::Tag(t), _) => node_tags.contains(t),
            _ => false,
        })
    }

    /// Returns whether `login` is in `group`: listed in the policy's
    /// `groups`, or put there by the identity provider
    /// ([`crate::User::groups`]).
    #[must_use]
    pub fn is_group_member(&self, tailnet: &crate::Tailnet, group: &str, login: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|m| m.iter().any(|x| x == login))
            || tailnet.in_idp_group(login, group)
    }

    /// Returns whether `tag` is declared in `tagOwners` (what an admin may
    /// apply to any node).
    #[must_use]
    pub fn declares_tag(&self, tag: &str) -> bool {
        self.tag_owners.contains_key(tag)
    }

    /// Returns the source text, exactly as parsed (comments included).
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Returns the file name used in messages.
    #[must_use]
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// Returns the source text at `loc` (for example a whole rule).
    #[must_use]
    pub fn snippet(&self, loc: &Loc) -> &str {
        self.text.get(loc.start..loc.end).unwrap_or("")
    }

    /// Returns the snippet at `loc` on one line with runs of whitespace and
    /// comments collapsed, shortened to about `max` characters.
    #[must_use]
    pub fn snippet_one_line(&self, loc: &Loc, max: usize) -> String {
        one_line(self.snippet(loc), max)
    }
}

/// Collapses whitespace (and drops comments) so a rule prints on one line.
pub(crate) fn one_line(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut in_string = false;
    let mut pending_space = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                pending_space = true;
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
                pending_space = true;
            }
            c if c.is_whitespace() => pending_space = true,
            c => {
                if pending_space
                    && !out.is_empty()
                    && !matches!(c, ']' | '}' | ',' | ':')
                    && !out.ends_with(['[', '{'])
                {
                    out.push(' ');
                }
                pending_space = false;
                if c == '"' {
                    in_string = true;
                }
                out.push(c);
            }
        }
    }
    // Trailing commas read oddly on one line.
    let out = out.replace(",]", "]").replace(",}", "}");
    if out.chars().count() > max {
        let cut: String = out.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    } else {
        out
    }
}
