//! Policy errors: one message, one position, one field path.

use std::fmt;

/// Everything that can be wrong with a policy file, positioned at the
/// offending value.
///
/// Displays as `FILE:LINE:COLUMN: PATH: MESSAGE`, for example
/// `policy.hujson:12:17: acls[2].dst[0]: unknown group "group:eng" (groups defined: group:admin, group:ops)`.
/// `line` and `column` are 1-based; columns count characters. `path` is
/// empty for errors that belong to no field (syntax errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file name shown in messages (`policy.hujson` unless the caller set one).
    pub source_name: String,
    /// 1-based line of the offending value.
    pub line: u32,
    /// 1-based column (in characters) of the offending value.
    pub column: u32,
    /// Field path such as `acls[2].dst[0]`, or empty.
    pub path: String,
    /// What is wrong.
    pub kind: ErrorKind,
}

impl PolicyError {
    /// Returns the error with `name` as its file name in messages.
    #[must_use]
    pub fn with_source_name(mut self, name: &str) -> Self {
        self.source_name = name.to_string();
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.source_name, self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for PolicyError {}

/// The kinds of policy error. Each carries what a person needs to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text is not HuJSON.
    #[error("{0}")]
    Syntax(String),
    /// A value of the wrong JSON type.
    #[error("expected {expected}, found {found}")]
    WrongType {
        /// What the field takes.
        expected: &'static str,
        /// What the file has.
        found: &'static str,
    },
    /// A field this object does not take.
    #[error("unknown field \"{field}\"{}; expected one of: {}", suggest(.field, .expected), .expected.join(", "))]
    UnknownField {
        /// The field as written.
        field: String,
        /// The fields this object takes.
        expected: Vec<&'static str>,
    },
    /// A Tailscale policy feature Weft does not implement.
    #[error("\"{field}\" is not supported by Weft; {hint}")]
    Unsupported {
        /// The key as written.
        field: String,
        /// What to do instead.
        hint: &'static str,
    },
    /// A required field is absent.
    #[error("missing field \"{0}\"")]
    MissingField(&'static str),
    /// A list that must not be empty is.
    #[error("{0} must not be empty")]
    Empty(&'static str),
    /// A group reference to an undefined group.
    #[error("unknown group {}{}", quoted(.name), defined_list("groups", .defined))]
    UnknownGroup {
        /// The reference.
        name: String,
        /// Groups the policy defines.
        defined: Vec<String>,
    },
    /// A tag used without an entry in `tagOwners`.
    #[error("tag {} has no owner: add it to \"tagOwners\"{}", quoted(.name), defined_list("tags defined", .defined))]
    UnknownTag {
        /// The tag.
        name: String,
        /// Tags the policy defines.
        defined: Vec<String>,
    },
    /// A name that is neither a host alias nor anything else we know.
    #[error("unknown host {}{}", quoted(.name), defined_list("hosts defined", .defined))]
    UnknownHost {
        /// The name.
        name: String,
        /// Hosts the policy defines.
        defined: Vec<String>,
    },
    /// An autogroup that does not exist.
    #[error("unknown autogroup {}; Weft knows {}", quoted(.name), .known.join(", "))]
    UnknownAutogroup {
        /// The autogroup as written.
        name: String,
        /// The autogroups valid in this place.
        known: Vec<&'static str>,
    },
    /// A selector valid elsewhere but not here.
    #[error("{} cannot be used here: {reason}", quoted(.name))]
    NotAllowedHere {
        /// The selector.
        name: String,
        /// Why, and what to use instead.
        reason: &'static str,
    },
    /// A source that cannot be paired with an `autogroup:self` destination
    /// (Tailscale's rule: "autogroup:self can only be used with users,
    /// groups, or supported autogroups").
    #[error("{} cannot be a source of a rule whose dst has autogroup:self: autogroup:self can only be used with users, groups, or supported autogroups ({why}); use {allowed}, or give autogroup:self a rule of its own", quoted(.name))]
    SelfNeedsUserSource {
        /// The source as written.
        name: String,
        /// Why this source does not fit.
        why: &'static str,
        /// The sources allowed in this kind of rule.
        allowed: &'static str,
    },
    /// A group listing another group.
    #[error("groups cannot contain other groups: list the members of {} here instead", quoted(.0))]
    NestedGroup(String),
    /// A malformed name (group, tag, host, user).
    #[error("invalid {what} {}: {reason}", quoted(.text))]
    BadName {
        /// What kind of name.
        what: &'static str,
        /// The text.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A port specification that is not `*`, a port, a range or a list.
    #[error("invalid port {}: {reason}", quoted(.text))]
    BadPort {
        /// The port text.
        text: String,
        /// What is wrong.
        reason: String,
    },
    /// `first-last` with `first > last`.
    #[error("port range {first}-{last} is reversed: write {last}-{first}")]
    PortRangeReversed {
        /// The first port as written.
        first: u16,
        /// The last port as written.
        last: u16,
    },
    /// An IP address or CIDR that does not parse.
    #[error("invalid IP address or CIDR {}: {reason}", quoted(.text))]
    BadAddress {
        /// The text.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An `action` other than those allowed.
    #[error("invalid action {}: expected {}", quoted(.found), .allowed.iter().map(|a| quoted(a)).collect::<Vec<_>>().join(" or "))]
    BadAction {
        /// The action as written.
        found: String,
        /// The actions allowed here.
        allowed: &'static [&'static str],
    },
    /// A `checkPeriod` that does not parse or is out of bounds.
    #[error("invalid checkPeriod {}: {reason}", quoted(.text))]
    BadCheckPeriod {
        /// The text.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A protocol name or number we do not know.
    #[error("unknown protocol {}: expected a name (tcp, udp, icmp, ipv6-icmp, sctp, igmp, gre, esp, ah, ipv4, egp, igp) or a number 0-255", quoted(.0))]
    BadProto(String),
    /// An SSH `users` entry that is not valid.
    #[error("invalid SSH user {}: {reason}", quoted(.text))]
    BadSshUser {
        /// The entry.
        text: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Anything else, with its explanation.
    #[error("{0}")]
    Invalid(String),
}

fn quoted(s: &str) -> String {
    crate::hujson::quote(s)
}

fn defined_list(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        format!(" (no {} are defined)", what.trim_end_matches(" defined"))
    } else {
        format!(" ({what}: {})", names.join(", "))
    }
}

fn suggest(field: &str, expected: &[&'static str]) -> String {
    expected
        .iter()
        .map(|e| {
            (
                edit_distance(&field.to_ascii_lowercase(), &e.to_ascii_lowercase()),
                *e,
            )
        })
        .filter(|(d, e)| *d <= 2.max(e.len() / 4))
        .min()
        .map(|(_, e)| format!(" (did you mean \"{e}\"?)"))
        .unwrap_or_default()
}

/// Levenshtein distance, for "did you mean" hints.
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Errors in a tailnet description (NODES.json or the control server's view).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TailnetError {
    /// NODES.json is not valid; positioned like a policy error.
    #[error("{0}")]
    Json(PolicyError),
    /// Two nodes share an id.
    #[error("duplicate node id {0}")]
    DuplicateId(weft_types::NodeId),
    /// Two nodes share a name.
    #[error("duplicate node name \"{0}\"")]
    DuplicateName(weft_types::DnsLabel),
    /// Two nodes share an address.
    #[error("address {addr} is used by both \"{first}\" and \"{second}\"")]
    DuplicateAddress {
        /// The address.
        addr: std::net::IpAddr,
        /// First node.
        first: weft_types::DnsLabel,
        /// Second node.
        second: weft_types::DnsLabel,
    },
    /// Two users share a login.
    #[error("duplicate user \"{0}\"")]
    DuplicateUser(weft_types::LoginName),
    /// A node names a user that is not in the user list.
    #[error("node \"{node}\" belongs to unknown user \"{user}\"")]
    UnknownUser {
        /// The node.
        node: weft_types::DnsLabel,
        /// The user it names.
        user: weft_types::LoginName,
    },
    /// A node with neither a user nor tags.
    #[error("node \"{0}\" has neither a user nor tags")]
    NoOwner(weft_types::DnsLabel),
}
