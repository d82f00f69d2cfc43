//! The admin API's JSON bodies, shared by the server and [`super::client`].
//! Times are unix milliseconds; ids are numbers; secrets appear only in the
//! answer to the request that created them.

use serde::{Deserialize, Serialize};

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserView {
    pub id: i64,
    pub login_name: String,
    pub display_name: String,
    /// `member` or `admin`.
    pub role: String,
    pub created: i64,
}

/// `POST /users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewUser {
    pub login_name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// `member` (default) or `admin`.
    #[serde(default)]
    pub role: Option<String>,
}

/// A pre-auth key (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreauthKeyView {
    pub id: i64,
    /// The public part: `weftkey-auth-<prefix>-…`.
    pub prefix: String,
    /// The user it registers nodes for (`None`: tag-only key).
    pub user: Option<String>,
    pub reusable: bool,
    pub ephemeral: bool,
    pub tags: Vec<String>,
    pub created: i64,
    pub expires: i64,
    pub used_count: i64,
    pub revoked: Option<i64>,
    /// Whether it is accepted now.
    pub usable: bool,
}

/// `POST /preauthkeys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewPreauthKey {
    /// Login of the owning user; may be absent when `tags` is not empty.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub reusable: bool,
    #[serde(default)]
    pub ephemeral: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// How long the key is accepted (default 1 hour).
    #[serde(default)]
    pub expiration_ms: Option<u64>,
    /// Node-key lifetime of nodes registered with it (default: the server's).
    #[serde(default)]
    pub node_key_expiry_ms: Option<u64>,
}

/// A created key: shown exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedPreauthKey {
    pub key: PreauthKeyView,
    /// The full key text; not stored by the server and not shown again.
    pub secret: String,
}

/// A node, as administrators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: i64,
    pub stable_id: String,
    /// The DNS label.
    pub name: String,
    /// `<name>.<domain>`.
    pub fqdn: String,
    /// The hostname the node reported.
    pub hostname: String,
    pub user: Option<String>,
    pub tags: Vec<String>,
    pub ipv4: String,
    pub ipv6: String,
    pub machine_key: String,
    pub node_key: String,
    pub online: bool,
    pub last_seen: Option<i64>,
    pub created: i64,
    pub key_expiry: Option<i64>,
    pub expired: bool,
    pub authorized: bool,
    pub ephemeral: bool,
    pub endpoints: Vec<String>,
    pub os: String,
}

/// The answer to `POST /logins/{auth_id}/approve`: the node (the one
/// registered, or for an SSH check the node the login comes from), and what
/// an SSH check let through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    #[serde(flatten)]
    pub node: NodeView,
    /// Set when the id was an SSH check rather than a device login.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_check: Option<SshCheckApproved>,
}

/// An approved SSH check: who may now log in where, as whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshCheckApproved {
    /// The tailnet user who approved (and owns the source node).
    pub login: String,
    /// The node the SSH connection comes from.
    pub src_name: String,
    /// The node being logged in to.
    pub dst_name: String,
    /// The login name asked for.
    pub ssh_user: String,
    /// The local account.
    pub local_user: String,
    /// How long the approval covers further logins, in milliseconds.
    pub period_ms: u64,
}

/// `POST /logins/{auth_id}/approve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Approve {
    /// Login of the user the node will belong to.
    pub user: String,
}

/// `POST /nodes/{id}/rename`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rename {
    pub name: String,
}

/// `POST /nodes/{id}/tags`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetTags {
    pub tags: Vec<String>,
}

/// `POST /nodes/{id}/authorize`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Authorize {
    pub authorized: bool,
}

/// An API key (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyView {
    pub id: i64,
    pub prefix: String,
    pub description: String,
    pub created: i64,
    pub expires: Option<i64>,
    pub revoked: Option<i64>,
    pub last_used: Option<i64>,
    pub usable: bool,
}

/// `POST /apikeys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NewApiKey {
    #[serde(default)]
    pub description: String,
    /// How long the key is accepted (`None`: until expired by hand).
    #[serde(default)]
    pub expiration_ms: Option<u64>,
}

/// A created API key: shown exactly once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedApiKey {
    pub key: ApiKeyView,
    pub secret: String,
}

/// The policy in force.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// The HuJSON text.
    pub policy: String,
    /// Stored version (`None`: the built-in default of a new tailnet).
    pub version: Option<i64>,
    pub author: Option<String>,
    pub created: Option<i64>,
}

/// `PUT /policy`, `POST /policy/check`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyText {
    pub policy: String,
    /// The file the text was read from, named in error locations
    /// (`acl.hujson:12:26: …`); absent: [`super::UNNAMED_POLICY`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The result of checking a policy against the live tailnet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyCheck {
    /// Valid and every test passed.
    pub ok: bool,
    /// The parse error, if invalid.
    pub error: Option<String>,
    /// The test report as text (what `policy check` prints).
    pub report: Option<String>,
    /// The test report as JSON.
    pub tests: Option<serde_json::Value>,
}

/// One saved policy version in `GET /policy/history` (without its text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersionView {
    pub version: i64,
    /// Who saved it (`api key <prefix>`, `console: api key <prefix>`, `file`, …).
    pub author: String,
    pub created: i64,
    /// It is the policy in force.
    pub current: bool,
}

/// `POST /policy/rollback`: save an old version again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyRollback {
    /// The version to restore (from `GET /policy/history`).
    pub version: i64,
}

/// One audited admin action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntryView {
    pub id: i64,
    /// When it happened (unix ms).
    pub created: i64,
    /// Who acted.
    pub actor: String,
    /// The route: `POST /nodes/{id}/rename`.
    pub action: String,
    /// The concrete path: `/nodes/7/rename`.
    pub target: String,
    /// `ok` or `error`.
    pub outcome: String,
    /// The HTTP status the caller got.
    pub status: u16,
    /// The request in short and, for an error, its message.
    pub detail: String,
}

/// `GET /audit`: a page of the audit log, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub entries: Vec<AuditEntryView>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<i64>,
}

/// `POST /policy/explain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainQuery {
    /// A node name, user login, tag or address.
    pub src: String,
    /// `<node|ip>:<port>`.
    pub dst: String,
    /// `tcp` (default), `udp`, `icmp`, …
    #[serde(default)]
    pub proto: Option<String>,
}

/// The answer of `policy explain`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExplainAnswer {
    /// `allowed` or `denied`.
    pub verdict: String,
    /// What `policy explain` prints.
    pub text: String,
    /// The structured explanation.
    pub explanation: serde_json::Value,
}

/// The body of every error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// An error: a code for programs, a message for people.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET`/`PUT /relay-map`: the relay map as a list of regions (ids must be
/// unique, which a JSON object keyed by id could not show).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayMapConfig {
    pub regions: Vec<weft_types::netmap::RelayRegion>,
}

/// `GET /dns` and the answer of `PUT`/`PATCH /dns`: the DNS settings every
/// node is given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsView {
    /// The tailnet domain (node names are `<name>.<domain>`); set on
    /// `serve --domain`, read-only here. Implicitly the first search domain
    /// while `magic_dns` is on.
    pub domain: String,
    /// Nodes answer tailnet names at their resolver (100.100.100.100).
    pub magic_dns: bool,
    /// Global upstream resolvers; empty: each node's own (the host's).
    pub nameservers: Vec<std::net::IpAddr>,
    /// Search domains after the tailnet domain.
    pub search_domains: Vec<String>,
    /// Split DNS: domain -> resolvers (empty: answered by MagicDNS only).
    pub routes: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    /// Fixed A/AAAA records.
    pub extra_records: Vec<DnsRecordView>,
    /// When the settings were last changed (unix ms); `None`: the defaults.
    pub updated: Option<i64>,
    /// Who changed them last (`api key <prefix>`, `admin socket (uid N)`).
    pub author: Option<String>,
}

/// One extra record: `name` -> `addr`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DnsRecordView {
    pub name: String,
    pub addr: String,
}

/// `PUT /dns`: the whole settings (what is left out is emptied; `magic_dns`
/// defaults to on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsSettingsBody {
    #[serde(default = "default_true")]
    pub magic_dns: bool,
    #[serde(default)]
    pub nameservers: Vec<String>,
    #[serde(default)]
    pub search_domains: Vec<String>,
    #[serde(default)]
    pub routes: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub extra_records: Vec<DnsRecordView>,
}

fn default_true() -> bool {
    true
}

/// `PATCH /dns`: changes only what is given. Applied in this order: the
/// `clear_*` flags, then the removals, then the additions, then `magic_dns`;
/// the result is validated whole, and refused whole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsPatch {
    /// Turn MagicDNS on or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magic_dns: Option<bool>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_nameservers: bool,
    /// Appended unless present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_search_domains: bool,
    /// Appended unless present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_search_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_search_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_routes: bool,
    /// Domain -> resolvers, replacing that domain's route (an empty list:
    /// answered by MagicDNS only).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub set_routes: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_routes: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub clear_records: bool,
    /// Added unless present.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add_records: Vec<DnsRecordView>,
    /// `name` (all its records) or `name=addr` (that one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_records: Vec<String>,
}

/// An SSH check approval: `user` re-authenticated for logins from `node`;
/// checks from that node are accepted without asking until `expires`
/// (docs/PROTOCOL.md §9.5).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshApprovalView {
    /// The tailnet user's login name.
    pub user: String,
    /// The source node's id.
    pub node_id: i64,
    /// The source node's name.
    pub node: String,
    /// When the user approved.
    pub approved: i64,
    /// When it stops vouching: `approved` + `period_ms`.
    pub expires: i64,
    /// The `checkPeriod` of the rule it was approved under.
    pub period_ms: u64,
    /// Who approved (login name).
    pub approved_by: String,
    /// The check that was approved.
    pub check_id: String,
    /// The node that login went to (`None` once deleted).
    pub dst_node_id: Option<i64>,
    /// Its name (`None` once deleted).
    pub dst_node: Option<String>,
    /// The local account that login asked for.
    pub local_user: String,
}

/// `POST /ssh/approvals/revoke`: which approvals to revoke. At least one of
/// `user` and `node`, or `all`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RevokeSshApprovals {
    /// Only this user's (login name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Only those for logins from this node (id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<i64>,
    /// Every approval (neither `user` nor `node` may be given then).
    #[serde(default)]
    pub all: bool,
}

/// A recorded SSH session (an asciicast v2 file a node uploaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSessionView {
    /// 32 lowercase hex digits.
    pub id: String,
    /// The node that recorded it (the destination); `None` once deleted.
    pub node_id: Option<i64>,
    /// Its name.
    pub node: String,
    /// Who logged in (login name, tags, or `local uid N`).
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
    /// Whether input was recorded.
    pub input: bool,
    /// Start (unix ms).
    pub started: i64,
    /// End (unix ms).
    pub ended: Option<i64>,
    /// Size of the cast file.
    pub size_bytes: i64,
    /// Why the recording stopped before the session did.
    pub failure: Option<String>,
    /// When control stored it (unix ms).
    pub received: i64,
}

/// One page of recorded SSH sessions, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshSessionList {
    /// This page.
    pub sessions: Vec<SshSessionView>,
    /// Pass as `before` for the next page; `None` on the last page.
    pub next: Option<String>,
}
