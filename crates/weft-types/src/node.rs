//! Nodes as the netmap describes them: identity, keys, addresses, where they
//! can be reached, and what they report about themselves.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use ipnet::IpNet;

use crate::ids::{NodeId, StableNodeId, UserId};
use crate::key::{DiscoPublic, MachinePublic, NodePublic};
use crate::names::{DnsName, LoginName, Tag};
use crate::time::UnixMillis;

/// What a node reports about its host, in `RegisterRequest`, `MapRequest`
/// and `host_info` updates; the server passes it on to peers in
/// [`Node::host_info`].
///
/// Every field is plain data from the node and is therefore untrusted: the
/// server bounds it by the message size, sanitizes the hostname into a DNS
/// label and only grants requested tags the policy allows.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct HostInfo {
    /// The OS hostname exactly as the node sees it (any text; the server
    /// derives the node's DNS label with `DnsLabel::sanitize`).
    pub hostname: String,
    /// Operating system family, e.g. `linux`.
    pub os: String,
    /// Operating system version, e.g. `Debian 13` (empty if unknown).
    pub os_version: String,
    /// The weftd version, e.g. `0.1.0`.
    pub weft_version: String,
    /// The node's SSH host public keys, one `authorized_keys`-style line
    /// each (`ssh-ed25519 AAAA… [comment]`); empty when the SSH server is off.
    pub ssh_host_keys: Vec<SshHostKey>,
    /// Tags the node asks for (`weft up --advertise-tags`); granted only if
    /// the policy's `tagOwners` allow the registering user.
    pub requested_tags: BTreeSet<Tag>,
    /// The node refuses all new inbound connections (shields up).
    pub shields_up: bool,
}

/// Bounds on what a node may report in [`HostInfo`]: control refuses a
/// registration or update beyond them, and weftd refuses a pref that would
/// produce one, with the same numbers (docs/PROTOCOL.md §"Limits").
pub mod host_info_limits {
    /// The longest hostname, in bytes (a DNS name; Linux allows 64).
    pub const HOSTNAME_MAX_LEN: usize = 253;
    /// The longest `os`, `os_version` or `weft_version`, in bytes.
    pub const SHORT_FIELD_MAX_LEN: usize = 128;
    /// The most SSH host keys (OpenSSH makes three: ed25519, ecdsa, rsa).
    pub const SSH_HOST_KEYS_MAX: usize = 8;
    /// The most requested tags.
    pub const REQUESTED_TAGS_MAX: usize = 64;
    /// The most bytes of all fields together (JSON-encoded size is a little
    /// larger; control bounds the whole message separately).
    pub const TOTAL_MAX_LEN: usize = 16 * 1024;
}

/// Why a [`HostInfo`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostInfoError {
    /// A text field is longer than its limit.
    #[error("host info field {field} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// The field's name.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A text field holds control characters (terminal escapes, newlines).
    #[error("host info field {field} contains control characters")]
    ControlCharacters {
        /// The field's name.
        field: &'static str,
    },
    /// A list has more entries than allowed.
    #[error("host info field {field} has {count} entries; at most {max} are allowed")]
    TooMany {
        /// The field's name.
        field: &'static str,
        /// How many entries it has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// All fields together are larger than allowed.
    #[error("host info is {len} bytes in all; at most {max} are allowed")]
    TooLarge {
        /// The sum of the fields' lengths.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl HostInfo {
    /// Checks every field against [`host_info_limits`]: lengths, entry
    /// counts, the total, and no control characters in text fields.
    ///
    /// # Errors
    /// The first field that breaks a limit.
    pub fn validate(&self) -> Result<(), HostInfoError> {
        use host_info_limits::*;
        let text = |field, s: &str, max| {
            if s.len() > max {
                Err(HostInfoError::TooLong {
                    field,
                    len: s.len(),
                    max,
                })
            } else if s.chars().any(char::is_control) {
                Err(HostInfoError::ControlCharacters { field })
            } else {
                Ok(s.len())
            }
        };
        let count = |field, count, max| {
            if count > max {
                Err(HostInfoError::TooMany { field, count, max })
            } else {
                Ok(())
            }
        };
        let mut total = text("hostname", &self.hostname, HOSTNAME_MAX_LEN)?;
        total += text("os", &self.os, SHORT_FIELD_MAX_LEN)?;
        total += text("os_version", &self.os_version, SHORT_FIELD_MAX_LEN)?;
        total += text("weft_version", &self.weft_version, SHORT_FIELD_MAX_LEN)?;
        count("ssh_host_keys", self.ssh_host_keys.len(), SSH_HOST_KEYS_MAX)?;
        count(
            "requested_tags",
            self.requested_tags.len(),
            REQUESTED_TAGS_MAX,
        )?;
        total += self
            .ssh_host_keys
            .iter()
            .map(|k| k.as_str().len())
            .sum::<usize>();
        total += self
            .requested_tags
            .iter()
            .map(|t| t.as_str().len())
            .sum::<usize>();
        if total > TOTAL_MAX_LEN {
            return Err(HostInfoError::TooLarge {
                len: total,
                max: TOTAL_MAX_LEN,
            });
        }
        Ok(())
    }
}

/// One SSH public key in `authorized_keys` form: `<algorithm> <base64> [comment]`
/// on one line (no control characters, at most 8 KiB).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct SshHostKey(String);

/// The longest [`SshHostKey`] line accepted (RSA-16384 keys fit).
pub const SSH_HOST_KEY_MAX_LEN: usize = 8192;

/// Why an SSH host key line was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an SSH public key line (\"<algorithm> <base64> [comment]\", one line, at most 8 KiB)")]
pub struct SshHostKeyError;

impl SshHostKey {
    /// Returns the line.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Returns the algorithm, e.g. `ssh-ed25519`.
    pub fn algorithm(&self) -> &str {
        self.0.split(' ').next().unwrap_or_default()
    }
}

impl FromStr for SshHostKey {
    type Err = SshHostKeyError;
    fn from_str(s: &str) -> Result<Self, SshHostKeyError> {
        let mut parts = s.split(' ');
        let alg = parts.next().unwrap_or_default();
        let blob = parts.next().unwrap_or_default();
        let alg_ok = !alg.is_empty()
            && alg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-@._".contains(&b));
        let blob_ok = !blob.is_empty()
            && blob
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
        let line_ok = s.len() <= SSH_HOST_KEY_MAX_LEN && !s.chars().any(char::is_control);
        if alg_ok && blob_ok && line_ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(SshHostKeyError)
        }
    }
}

impl TryFrom<String> for SshHostKey {
    type Error = SshHostKeyError;
    fn try_from(s: String) -> Result<Self, SshHostKeyError> {
        s.parse()
    }
}

impl From<SshHostKey> for String {
    fn from(k: SshHostKey) -> String {
        k.0
    }
}

impl fmt::Display for SshHostKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a node learned one of its own endpoints (mirrors Tailscale's
/// `EndpointType`; peers try them all, the kind is a hint and for display).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    /// An address of a local interface.
    Local,
    /// The public address a STUN server saw.
    Stun,
    /// A port mapping made with UPnP, NAT-PMP or PCP.
    PortMapped,
    /// The STUN-observed IPv4 address with the local port (for hard NATs
    /// that keep the port).
    Stun4LocalPort,
    /// Configured explicitly by the administrator.
    Explicit,
}

/// One address where a node may receive WireGuard/disco UDP, as the node
/// reports it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Endpoint {
    /// The UDP address.
    pub addr: SocketAddr,
    /// How the node learned it.
    pub kind: EndpointKind,
}

/// Who owns a node: a user, or (for servers and the like) a set of tags.
/// A tagged node has no user identity on the tailnet; the policy grants
/// access by its tags.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeOwner {
    /// Owned by this user (whose profile is in the netmap's user profiles).
    User(UserId),
    /// Owned by these tags (never empty).
    Tags(BTreeSet<Tag>),
}

/// One node as the netmap shows it, to itself (the netmap's self node) and
/// to its peers. Everything a node needs to reach another node and to decide
/// what it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// The server's id for the node; the netmap keys peers by it.
    pub id: NodeId,
    /// An id that never changes for the node's life.
    pub stable_id: StableNodeId,
    /// The node's MagicDNS name (FQDN without the trailing dot):
    /// `<label>.<tailnet domain>`.
    pub name: DnsName,
    /// A user, or tags.
    pub owner: NodeOwner,
    /// The node's current node key: its WireGuard public key.
    pub node_key: NodePublic,
    /// The machine key the node authenticates to control with.
    pub machine_key: MachinePublic,
    /// The disco key of the node's running daemon. `None`: the node has not
    /// opened a map stream since it registered (no daemon has announced one),
    /// so disco cannot reach it yet.
    pub disco_key: Option<DiscoPublic>,
    /// The node's tailnet addresses: an IPv4 /32 from 100.64.0.0/10 and an
    /// IPv6 /128 from the project ULA.
    pub addresses: Vec<IpNet>,
    /// The prefixes a peer routes to this node (WireGuard AllowedIPs): the
    /// addresses plus any approved routes.
    pub allowed_ips: Vec<IpNet>,
    /// Where the node last said it can be reached (empty: nowhere known yet;
    /// peers then use the relay).
    pub endpoints: Vec<Endpoint>,
    /// The relay region the node last said it is reachable through (its
    /// home relay); `None`: unknown (it has not reported one since control
    /// started, or it has no relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<u16>,
    /// What the node reported about its host.
    pub host_info: HostInfo,
    /// When the node registered.
    pub created: UnixMillis,
    /// When the node was last connected to control. `None`: never; while
    /// `online` it is the time the current stream opened.
    pub last_seen: Option<UnixMillis>,
    /// The node has a map stream open to control right now.
    pub online: bool,
    /// When the node key expires. `None`: never (expiry disabled).
    pub key_expiry: Option<UnixMillis>,
    /// The node key has expired (or the node logged out). An expired node
    /// stays in the netmap so it can be shown, but is not a usable peer.
    pub expired: bool,
    /// An administrator has approved the node (device approval). Peers only
    /// receive authorized nodes; a node sees its own state here.
    pub machine_authorized: bool,
}

impl Node {
    /// Returns whether this node may be used as a WireGuard peer at wall
    /// time `now`: not marked expired, key not past its expiry, and authorized.
    pub fn is_usable_at(&self, now: UnixMillis) -> bool {
        let key_live = self.key_expiry.is_none_or(|t| t > now);
        !self.expired && key_live && self.machine_authorized
    }

    /// Returns the tags that own the node (empty for a user-owned node).
    pub fn tags(&self) -> impl Iterator<Item = &Tag> {
        let tags = match &self.owner {
            NodeOwner::Tags(t) => Some(t),
            NodeOwner::User(_) => None,
        };
        tags.into_iter().flatten()
    }
}

/// A user's role in the tailnet. Admins are `autogroup:admin` in the policy
/// and may administer the tailnet. Serializes as `"member"` / `"admin"`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May register nodes and reach what the policy allows.
    #[default]
    Member,
    /// May also administer the tailnet (users, keys, policy, approvals).
    Admin,
}

impl Role {
    /// Returns the role's text form, as stored and serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }
}

/// Why a [`Role`] did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {0:?}: expected \"admin\" or \"member\"")]
pub struct RoleError(pub String);

impl FromStr for Role {
    type Err = RoleError;
    fn from_str(s: &str) -> Result<Self, RoleError> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(RoleError(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A user as peers see them, referenced from [`NodeOwner::User`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UserProfile {
    /// The user's id.
    pub id: UserId,
    /// The unique login name, e.g. `alice@example.com`.
    pub login_name: LoginName,
    /// A display name (may be empty).
    pub display_name: String,
    /// A URL of a profile picture. `None`: none known.
    pub profile_pic_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_have_one_text_form_for_json_storage_and_parsing() {
        for (role, text) in [(Role::Member, "member"), (Role::Admin, "admin")] {
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{text}\""));
            assert_eq!(
                serde_json::from_str::<Role>(&format!("\"{text}\"")).unwrap(),
                role
            );
            assert_eq!(text.parse::<Role>().unwrap(), role);
            assert_eq!(role.as_str(), text);
        }
        assert_eq!(Role::default(), Role::Member);
        let err = "owner".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"owner\": expected \"admin\" or \"member\""
        );
        assert!(serde_json::from_str::<Role>("\"Admin\"").is_err());
    }
}
