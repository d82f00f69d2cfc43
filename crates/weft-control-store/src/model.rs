//! The records the store hands out, and the small validated values they use.
//!
//! Ids, keys, names, tags, roles, endpoints and times are the `weft-types`
//! vocabulary, so records map onto the netmap's types without conversion
//! tables. Times are [`UnixMillis`]; `None` for an expiry means "never".

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

pub use weft_types::Role;
use weft_types::{
    DiscoPublic, DnsLabel, Endpoint, LoginName, MachinePublic, NodeId, NodeOwner, NodePublic,
    StableNodeId, Tag, UnixMillis, UserId,
};

use crate::StoreError;

weft_types::make_id!(
    /// A pre-auth key's row id.
    PreauthKeyId
);
weft_types::make_id!(
    /// An API key's row id.
    ApiKeyId
);
weft_types::make_id!(
    /// A policy version: versions count up from 1; the highest is current.
    PolicyVersionId
);
weft_types::make_id!(
    /// An audit log entry: ids count up, so a higher id is a later entry.
    AuditEntryId
);

/// How long a node key lives after (re-)registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyLifetime {
    /// Use the server's default ([`crate::StoreConfig::node_key_expiry`]).
    #[default]
    ServerDefault,
    /// The key never expires.
    Never,
    /// The key expires this long after registration.
    After(Duration),
}

impl KeyLifetime {
    /// Encodes as the `node_key_lifetime_ms` column: NULL = server default,
    /// 0 = never, n > 0 = n milliseconds.
    pub(crate) fn to_column(self) -> Option<i64> {
        match self {
            KeyLifetime::ServerDefault => None,
            KeyLifetime::Never => Some(0),
            KeyLifetime::After(d) => Some(duration_ms(d).max(1)),
        }
    }

    pub(crate) fn from_column(v: Option<i64>) -> Self {
        match v {
            None => KeyLifetime::ServerDefault,
            Some(n) if n <= 0 => KeyLifetime::Never,
            Some(n) => KeyLifetime::After(Duration::from_millis(n.unsigned_abs())),
        }
    }

    /// Returns the expiry time for a key registered at `now`, given the
    /// server default (`None` = never).
    pub fn expiry_from(
        self,
        now: UnixMillis,
        server_default: Option<Duration>,
    ) -> Option<UnixMillis> {
        let lifetime = match self {
            KeyLifetime::ServerDefault => server_default?,
            KeyLifetime::Never => return None,
            KeyLifetime::After(d) => d,
        };
        Some(now.saturating_add(lifetime))
    }
}

/// Converts a duration to whole milliseconds, saturating at `i64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A user of the tailnet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Row id.
    pub id: UserId,
    /// Unique login name, e.g. `alice` or `alice@example.com`.
    pub login_name: LoginName,
    /// Free-form display name (may be empty).
    pub display_name: String,
    /// Member or admin.
    pub role: Role,
    /// When the user was created.
    pub created: UnixMillis,
    /// The policy groups their identity provider put them in at their last
    /// login (`group:oidc:engineering`); empty without an IdP login.
    pub idp_groups: BTreeSet<String>,
    /// When they last authenticated at the identity provider; `None`: never.
    pub idp_authenticated: Option<UnixMillis>,
}

/// Input for [`crate::Store::create_user`].
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Unique login name.
    pub login_name: LoginName,
    /// Free-form display name.
    pub display_name: String,
    /// Member or admin.
    pub role: Role,
}

/// A change to a user; `None` fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New unique login name.
    pub login_name: Option<LoginName>,
    /// New display name.
    pub display_name: Option<String>,
    /// New role.
    pub role: Option<Role>,
}

/// A registered node (a machine in the tailnet).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Node {
    /// Row id (short, numeric, never reused).
    pub id: NodeId,
    /// Random text id that never changes.
    pub stable_id: StableNodeId,
    /// The machine key that authenticates the control channel (unique).
    pub machine_key: MachinePublic,
    /// The current WireGuard node key (unique).
    pub node_key: NodePublic,
    /// The disco key of the running daemon, once reported.
    pub disco_key: Option<DiscoPublic>,
    /// The hostname as the node reported it (unsanitized).
    pub hostname: String,
    /// The node's DNS label: unique in the tailnet.
    pub given_name: DnsLabel,
    /// The owning user; `None` for tagged nodes (owned by their tags). See
    /// [`Node::owner`].
    pub user: Option<UserId>,
    /// The user whose key or approval registered the node, if still present.
    pub registered_by: Option<UserId>,
    /// Tags; non-empty exactly when `user` is `None`.
    pub tags: BTreeSet<Tag>,
    /// Tailnet IPv4 address (unique).
    pub ipv4: Ipv4Addr,
    /// Tailnet IPv6 address (unique).
    pub ipv6: Ipv6Addr,
    /// Endpoints the node last reported (local and STUN-discovered).
    pub endpoints: Vec<Endpoint>,
    /// Host info as the node last reported it: a serialized
    /// `weft_types::HostInfo`, kept as JSON so that a record written by an
    /// older or newer server always reads back.
    pub host_info: serde_json::Value,
    /// When the node was first registered.
    pub created: UnixMillis,
    /// When the server last saw the node (`None`: never).
    pub last_seen: Option<UnixMillis>,
    /// Whether the server last recorded the node as connected.
    pub online: bool,
    /// When the node key expires (`None`: never).
    pub key_expiry: Option<UnixMillis>,
    /// Whether an administrator authorized the node (device approval; new
    /// nodes are authorized unless the server says otherwise).
    pub authorized: bool,
    /// Ephemeral nodes are deleted after being offline for a grace period.
    pub ephemeral: bool,
    /// The pre-auth key used for the latest registration, if any.
    pub preauth_key: Option<PreauthKeyId>,
}

impl Node {
    /// Returns whether the node key has expired at `now`.
    pub fn is_expired(&self, now: UnixMillis) -> bool {
        self.key_expiry.is_some_and(|e| e <= now)
    }

    /// Returns who owns the node, in the netmap's terms.
    pub fn owner(&self) -> NodeOwner {
        match self.user {
            Some(user) => NodeOwner::User(user),
            None => NodeOwner::Tags(self.tags.clone()),
        }
    }

    /// Returns both tailnet addresses.
    pub fn addresses(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// What a node reports about itself when it registers.
#[derive(Debug, Clone)]
pub struct RegisterNode {
    /// The machine key of the control channel.
    pub machine_key: MachinePublic,
    /// The node key to register.
    pub node_key: NodePublic,
    /// The disco key, if the daemon already has one.
    pub disco_key: Option<DiscoPublic>,
    /// The hostname as reported; sanitized into the node's DNS label.
    pub hostname: String,
    /// Host info: a serialized `weft_types::HostInfo` (opaque to the store).
    pub host_info: serde_json::Value,
    /// Endpoints reported with the registration.
    pub endpoints: Vec<Endpoint>,
}

/// How a registration was authorized.
#[derive(Debug, Clone, Copy)]
pub enum RegisterAuth<'a> {
    /// A pre-auth key in its full text form (`weftkey-auth-…`). The store
    /// validates it and counts the use in the registration's transaction.
    PreauthKey(&'a str),
    /// A user the server already authenticated (interactive approval, OIDC).
    User {
        /// The user who approved; owner unless `tags` is non-empty.
        user: UserId,
        /// Tags to apply (the node is then owned by its tags).
        tags: &'a BTreeSet<Tag>,
        /// Whether the node is ephemeral.
        ephemeral: bool,
        /// Node-key lifetime.
        key_lifetime: KeyLifetime,
    },
}

/// The result of a registration.
#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    /// The node as committed.
    pub node: Node,
    /// `true` if a new node was created; `false` if the machine key was
    /// already registered and this re-authenticated it (same id, name and
    /// addresses; new node key, owner, tags and expiry).
    pub created: bool,
}

/// A change to a node's self-reported state; `None` fields stay as they are.
/// Applying it also sets `last_seen`.
#[derive(Debug, Clone, Default)]
pub struct NodeStatusUpdate {
    /// New disco key (a daemon restart makes a new one).
    pub disco_key: Option<DiscoPublic>,
    /// New endpoint list.
    pub endpoints: Option<Vec<Endpoint>>,
    /// New host info.
    pub host_info: Option<serde_json::Value>,
    /// New reported hostname (the DNS label does not follow; see `rename_node`).
    pub hostname: Option<String>,
}

/// A pre-auth key. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PreauthKey {
    /// Row id.
    pub id: PreauthKeyId,
    /// The public part of the key text (`weftkey-auth-<prefix>-…`), for lookups and listings.
    pub prefix: String,
    /// The user the key registers nodes for; `None` for tag-only keys.
    pub user: Option<UserId>,
    /// Whether the key may be used more than once.
    pub reusable: bool,
    /// Whether nodes registered with it are ephemeral.
    pub ephemeral: bool,
    /// Tags applied to nodes registered with it.
    pub tags: BTreeSet<Tag>,
    /// Node-key lifetime for nodes registered with it.
    #[serde(skip)]
    pub node_key_lifetime: KeyLifetime,
    /// When the key was created.
    pub created: UnixMillis,
    /// When the key stops being accepted.
    pub expires: UnixMillis,
    /// How many registrations used it.
    pub used_count: i64,
    /// When it was revoked (expired by hand), if it was.
    pub revoked: Option<UnixMillis>,
}

impl PreauthKey {
    /// Returns whether the key is still accepted at `now`.
    pub fn is_usable(&self, now: UnixMillis) -> bool {
        self.revoked.is_none() && now < self.expires && (self.reusable || self.used_count == 0)
    }
}

/// Input for [`crate::Store::create_preauth_key`].
#[derive(Debug, Clone)]
pub struct NewPreauthKey {
    /// The user to register nodes for; may be `None` only if `tags` is non-empty.
    pub user: Option<UserId>,
    /// Whether the key may be used more than once.
    pub reusable: bool,
    /// Whether registered nodes are ephemeral.
    pub ephemeral: bool,
    /// Tags applied to registered nodes.
    pub tags: BTreeSet<Tag>,
    /// When the key stops being accepted.
    pub expires: UnixMillis,
    /// Node-key lifetime for nodes registered with it.
    pub node_key_lifetime: KeyLifetime,
}

/// An admin API key. The secret itself is never stored, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// Row id.
    pub id: ApiKeyId,
    /// The public part of the key text (`weftkey-api-<prefix>-…`).
    pub prefix: String,
    /// Free-form description.
    pub description: String,
    /// When the key was created.
    pub created: UnixMillis,
    /// When the key stops being accepted (`None`: never).
    pub expires: Option<UnixMillis>,
    /// When it was revoked, if it was.
    pub revoked: Option<UnixMillis>,
    /// When it was last verified successfully (refreshed at most once a minute).
    pub last_used: Option<UnixMillis>,
}

/// The state of an interactive login.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthRequestState {
    /// Waiting for a user or admin to approve it.
    Pending,
    /// Approved; the node is registered.
    Approved,
    /// Rejected by an admin.
    Rejected,
}

impl AuthRequestState {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            AuthRequestState::Pending => "pending",
            AuthRequestState::Approved => "approved",
            AuthRequestState::Rejected => "rejected",
        }
    }

    pub(crate) fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(AuthRequestState::Pending),
            "approved" => Ok(AuthRequestState::Approved),
            "rejected" => Ok(AuthRequestState::Rejected),
            other => Err(StoreError::Corrupt {
                what: "auth_requests.state",
                detail: other.to_owned(),
            }),
        }
    }
}

/// An interactive login: a node asked to register without a key, and the
/// server showed it a URL containing `auth_id`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AuthRequest {
    /// Random token (32 hex digits) that names the request in the login URL.
    pub auth_id: String,
    /// The requesting machine.
    pub machine_key: MachinePublic,
    /// The node key it wants registered.
    pub node_key: NodePublic,
    /// Its disco key, if reported.
    pub disco_key: Option<DiscoPublic>,
    /// Reported hostname.
    pub hostname: String,
    /// Reported host info.
    pub host_info: serde_json::Value,
    /// When it was created.
    pub created: UnixMillis,
    /// When it stops being approvable.
    pub expires: UnixMillis,
    /// Pending, approved or rejected.
    pub state: AuthRequestState,
    /// When it was approved or rejected.
    pub completed: Option<UnixMillis>,
    /// The approving user (owner of the node).
    pub user: Option<UserId>,
    /// The node registered on approval.
    pub node: Option<NodeId>,
}

/// Input for [`crate::Store::create_auth_request`].
#[derive(Debug, Clone)]
pub struct NewAuthRequest {
    /// The registration the node asked for.
    pub register: RegisterNode,
    /// When the request stops being approvable.
    pub expires: UnixMillis,
}

/// One stored version of the policy file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVersion {
    /// Version number; the highest is current.
    pub id: PolicyVersionId,
    /// The policy text exactly as submitted (HuJSON).
    pub text: String,
    /// When it was stored.
    pub created: UnixMillis,
    /// Who stored it (login name, `api key <prefix>`, `file`, …).
    pub author: String,
}

/// How an audited admin action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditOutcome {
    /// The change was made.
    Ok,
    /// The change was refused or failed; nothing changed.
    Error,
}

impl AuditOutcome {
    /// Returns the stored text: `ok` or `error`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Ok => "ok",
            AuditOutcome::Error => "error",
        }
    }
}

/// An admin action to append to the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEntry {
    /// Who acted (`api key <prefix>`, `admin socket (uid 0)`, `console: api key <prefix>`).
    pub actor: String,
    /// What was done, as the route (`POST /nodes/{id}/rename`).
    pub action: String,
    /// What it was done to, as the concrete path (`/nodes/7/rename`).
    pub target: String,
    /// Whether it took effect.
    pub outcome: AuditOutcome,
    /// The HTTP status the caller was given.
    pub status: u16,
    /// A short description: the error message, or empty.
    pub detail: String,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// The entry's id (higher = later).
    pub id: AuditEntryId,
    /// When it was recorded.
    pub created: UnixMillis,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// Whether it took effect.
    pub outcome: AuditOutcome,
    /// The HTTP status the caller was given.
    pub status: u16,
    /// The error message, or empty.
    pub detail: String,
}

/// The tailnet's DNS settings as stored, with who changed them last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// The settings every node is given.
    pub config: weft_types::netmap::DnsConfig,
    /// When they were stored.
    pub updated: UnixMillis,
    /// Who stored them (login name, `api key <prefix>`, …).
    pub author: String,
}

/// An SSH check approval: `user` re-authenticated at control for logins
/// from the source node `node` (docs/PROTOCOL.md §9.5). One per
/// (user, node); a newer one replaces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshApproval {
    /// The tailnet user who approved.
    pub user: UserId,
    /// The source node the approval vouches for.
    pub node: NodeId,
    /// When the user approved.
    pub approved: UnixMillis,
    /// When it stops vouching: `approved` + the approving rule's
    /// `checkPeriod`. Always after `approved`.
    pub expires: UnixMillis,
    /// Who approved (login name), for the audit trail.
    pub approved_by: String,
    /// The check that was approved.
    pub check_id: String,
    /// The node the login went to (`None` once it is deleted).
    pub dst_node: Option<NodeId>,
    /// The local account the login asked for.
    pub local_user: String,
}

/// Which SSH check approvals an operation selects: all of them, one user's,
/// one source node's, or one (user, node) pair.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SshApprovalFilter {
    /// Only this user's (`None`: any user).
    pub user: Option<UserId>,
    /// Only those for this source node (`None`: any node).
    pub node: Option<NodeId>,
}

/// One SSH session recording a node uploaded (migration 0006): what it is
/// of; the asciicast file is kept by weft-control in its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRecording {
    /// 32 lowercase hex digits, chosen by the recording node.
    pub id: String,
    /// The node that recorded the session (the destination); `None` once
    /// it is deleted.
    pub node: Option<NodeId>,
    /// Its name when the recording arrived.
    pub node_name: String,
    /// Who logged in (a login name, tags, or `local uid N`).
    pub src_user: String,
    /// The source node's name.
    pub src_node: String,
    /// The source node's tailnet address.
    pub src_addr: String,
    /// The login name the client asked for.
    pub ssh_user: String,
    /// The local account the session ran as.
    pub local_user: String,
    /// `shell` or `exec`.
    pub kind: String,
    /// The command of an exec session.
    pub command: Option<String>,
    /// Whether input was recorded too.
    pub input: bool,
    /// When the session started.
    pub started: UnixMillis,
    /// When it ended.
    pub ended: Option<UnixMillis>,
    /// The size of the asciicast file.
    pub size_bytes: i64,
    /// Why the recording stopped before the session did, if it did.
    pub failure: Option<String>,
    /// When control received the whole file.
    pub received: UnixMillis,
}

/// One page of [`Store::list_ssh_recordings`](crate::Store::list_ssh_recordings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshRecordingPage {
    /// At most this many rows.
    pub limit: u32,
    /// Only rows after this one in the listing order (newest first):
    /// the `(started, id)` of the last row of the previous page.
    pub before: Option<(UnixMillis, String)>,
}
