//! Turning `Any` rows into records, and records' structured fields into text.
//! A value that does not decode is reported as [`StoreError::Corrupt`] naming
//! the column, never as a panic.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use sqlx::Row as _;
use sqlx::any::AnyRow;
use weft_types::{Endpoint, NodeId, Tag, UnixMillis, UserId};

use crate::model::{
    ApiKey, ApiKeyId, AuditEntry, AuditEntryId, AuditOutcome, AuthRequest, AuthRequestState,
    DnsSettings, KeyLifetime, Node, PolicyVersion, PolicyVersionId, PreauthKey, PreauthKeyId,
    SshApproval, SshRecording, User,
};
use crate::{Role, StoreError};

macro_rules! user_columns {
    () => {
        "id, login_name, display_name, role, created_ms, idp_groups, idp_auth_ms"
    };
}
pub(crate) use user_columns;

macro_rules! node_columns {
    () => {
        "id, stable_id, machine_key, node_key, disco_key, hostname, \
     given_name, user_id, registered_by, tags, ipv4, ipv6, endpoints, host_info, created_ms, \
     last_seen_ms, online, expiry_ms, authorized, ephemeral, preauth_key_id"
    };
}
pub(crate) use node_columns;

macro_rules! preauth_columns {
    () => {
        "id, prefix, user_id, reusable, ephemeral, tags, \
     node_key_lifetime_ms, created_ms, expires_ms, used_count, revoked_ms"
    };
}
pub(crate) use preauth_columns;

macro_rules! api_key_columns {
    () => {
        "id, prefix, description, created_ms, expires_ms, revoked_ms, last_used_ms"
    };
}
pub(crate) use api_key_columns;

macro_rules! auth_request_columns {
    () => {
        "auth_id, machine_key, node_key, disco_key, \
     hostname, host_info, endpoints, created_ms, expires_ms, state, completed_ms, user_id, node_id"
    };
}
pub(crate) use auth_request_columns;

macro_rules! policy_columns {
    () => {
        "id, text, created_ms, author"
    };
}
pub(crate) use policy_columns;

macro_rules! audit_columns {
    () => {
        "id, created_ms, actor, action, target, outcome, status, detail"
    };
}
pub(crate) use audit_columns;

macro_rules! dns_columns {
    () => {
        "config, updated_ms, author"
    };
}
pub(crate) use dns_columns;

macro_rules! ssh_approval_columns {
    () => {
        "user_id, node_id, approved_ms, expires_ms, approved_by, check_id, dst_node_id, local_user"
    };
}
pub(crate) use ssh_approval_columns;

macro_rules! ssh_recording_columns {
    () => {
        "id, node_id, node_name, src_user, src_node, src_addr, ssh_user, local_user, kind, \
     command, input, started_ms, ended_ms, size_bytes, failure, received_ms"
    };
}
pub(crate) use ssh_recording_columns;

fn parse<T: FromStr>(what: &'static str, s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| StoreError::Corrupt {
        what,
        detail: format!("{s:?}: {e}"),
    })
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        what,
        detail: format!("{s:?}: {e}"),
    })
}

/// Reads a text column.
fn text(row: &AnyRow, col: &str) -> Result<String, StoreError> {
    Ok(row.try_get::<String, _>(col)?)
}

/// Reads an INTEGER 0/1 column.
fn flag(row: &AnyRow, col: &str) -> Result<bool, StoreError> {
    Ok(row.try_get::<i64, _>(col)? != 0)
}

/// Reads a unix-ms column.
fn time(row: &AnyRow, col: &str) -> Result<UnixMillis, StoreError> {
    Ok(UnixMillis(row.try_get(col)?))
}

/// Reads a nullable unix-ms column.
fn opt_time(row: &AnyRow, col: &str) -> Result<Option<UnixMillis>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?.map(UnixMillis))
}

/// Reads a nullable id column.
fn opt_id(row: &AnyRow, col: &str) -> Result<Option<i64>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(col)?)
}

/// Encodes a boolean as the INTEGER 0/1 the schema uses.
pub(crate) fn int_flag(b: bool) -> i64 {
    i64::from(b)
}

/// Encodes tags as a sorted JSON array of strings.
pub(crate) fn tags_json(tags: &BTreeSet<Tag>) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".to_owned())
}

/// Encodes endpoints as a JSON array of `{"addr": "ip:port", "kind": …}`.
pub(crate) fn endpoints_json(eps: &[Endpoint]) -> String {
    serde_json::to_string(eps).unwrap_or_else(|_| "[]".to_owned())
}

pub(crate) fn user(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        login_name: parse("users.login_name", &text(row, "login_name")?)?,
        display_name: text(row, "display_name")?,
        role: {
            let role = text(row, "role")?;
            role.parse::<Role>().map_err(|_| StoreError::Corrupt {
                what: "users.role",
                detail: role,
            })?
        },
        created: time(row, "created_ms")?,
        idp_groups: {
            let json = text(row, "idp_groups")?;
            serde_json::from_str(&json).map_err(|_| StoreError::Corrupt {
                what: "users.idp_groups",
                detail: json,
            })?
        },
        idp_authenticated: row
            .try_get::<Option<i64>, _>("idp_auth_ms")?
            .map(UnixMillis),
    })
}

pub(crate) fn node(row: &AnyRow) -> Result<Node, StoreError> {
    let disco: Option<String> = row.try_get("disco_key")?;
    Ok(Node {
        id: NodeId(row.try_get("id")?),
        stable_id: parse("nodes.stable_id", &text(row, "stable_id")?)?,
        machine_key: parse("nodes.machine_key", &text(row, "machine_key")?)?,
        node_key: parse("nodes.node_key", &text(row, "node_key")?)?,
        disco_key: disco.map(|d| parse("nodes.disco_key", &d)).transpose()?,
        hostname: text(row, "hostname")?,
        given_name: parse("nodes.given_name", &text(row, "given_name")?)?,
        user: opt_id(row, "user_id")?.map(UserId),
        registered_by: opt_id(row, "registered_by")?.map(UserId),
        tags: json("nodes.tags", &text(row, "tags")?)?,
        ipv4: parse::<Ipv4Addr>("nodes.ipv4", &text(row, "ipv4")?)?,
        ipv6: parse::<Ipv6Addr>("nodes.ipv6", &text(row, "ipv6")?)?,
        endpoints: json("nodes.endpoints", &text(row, "endpoints")?)?,
        host_info: json("nodes.host_info", &text(row, "host_info")?)?,
        created: time(row, "created_ms")?,
        last_seen: opt_time(row, "last_seen_ms")?,
        online: flag(row, "online")?,
        key_expiry: opt_time(row, "expiry_ms")?,
        authorized: flag(row, "authorized")?,
        ephemeral: flag(row, "ephemeral")?,
        preauth_key: opt_id(row, "preauth_key_id")?.map(PreauthKeyId),
    })
}

pub(crate) fn preauth_key(row: &AnyRow) -> Result<PreauthKey, StoreError> {
    Ok(PreauthKey {
        id: PreauthKeyId(row.try_get("id")?),
        prefix: text(row, "prefix")?,
        user: opt_id(row, "user_id")?.map(UserId),
        reusable: flag(row, "reusable")?,
        ephemeral: flag(row, "ephemeral")?,
        tags: json("preauth_keys.tags", &text(row, "tags")?)?,
        node_key_lifetime: KeyLifetime::from_column(opt_id(row, "node_key_lifetime_ms")?),
        created: time(row, "created_ms")?,
        expires: time(row, "expires_ms")?,
        used_count: row.try_get("used_count")?,
        revoked: opt_time(row, "revoked_ms")?,
    })
}

pub(crate) fn api_key(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: ApiKeyId(row.try_get("id")?),
        prefix: text(row, "prefix")?,
        description: text(row, "description")?,
        created: time(row, "created_ms")?,
        expires: opt_time(row, "expires_ms")?,
        revoked: opt_time(row, "revoked_ms")?,
        last_used: opt_time(row, "last_used_ms")?,
    })
}

/// Decodes an auth request, plus the endpoints it was created with (kept for
/// the registration that approval performs).
pub(crate) fn auth_request(row: &AnyRow) -> Result<(AuthRequest, Vec<Endpoint>), StoreError> {
    let disco: Option<String> = row.try_get("disco_key")?;
    let req = AuthRequest {
        auth_id: text(row, "auth_id")?,
        machine_key: parse("auth_requests.machine_key", &text(row, "machine_key")?)?,
        node_key: parse("auth_requests.node_key", &text(row, "node_key")?)?,
        disco_key: disco
            .map(|d| parse("auth_requests.disco_key", &d))
            .transpose()?,
        hostname: text(row, "hostname")?,
        host_info: json("auth_requests.host_info", &text(row, "host_info")?)?,
        created: time(row, "created_ms")?,
        expires: time(row, "expires_ms")?,
        state: AuthRequestState::parse(&text(row, "state")?)?,
        completed: opt_time(row, "completed_ms")?,
        user: opt_id(row, "user_id")?.map(UserId),
        node: opt_id(row, "node_id")?.map(NodeId),
    };
    let eps = json("auth_requests.endpoints", &text(row, "endpoints")?)?;
    Ok((req, eps))
}

pub(crate) fn policy(row: &AnyRow) -> Result<PolicyVersion, StoreError> {
    Ok(PolicyVersion {
        id: PolicyVersionId(row.try_get("id")?),
        text: text(row, "text")?,
        created: time(row, "created_ms")?,
        author: text(row, "author")?,
    })
}

pub(crate) fn audit(row: &AnyRow) -> Result<AuditEntry, StoreError> {
    let outcome = match text(row, "outcome")?.as_str() {
        "ok" => AuditOutcome::Ok,
        "error" => AuditOutcome::Error,
        other => {
            return Err(StoreError::Corrupt {
                what: "audit_log.outcome",
                detail: format!("{other:?} is neither ok nor error"),
            });
        }
    };
    let status: i64 = row.try_get("status")?;
    Ok(AuditEntry {
        id: AuditEntryId(row.try_get("id")?),
        created: time(row, "created_ms")?,
        actor: text(row, "actor")?,
        action: text(row, "action")?,
        target: text(row, "target")?,
        outcome,
        status: u16::try_from(status).map_err(|_| StoreError::Corrupt {
            what: "audit_log.status",
            detail: format!("{status} is not an HTTP status"),
        })?,
        detail: text(row, "detail")?,
    })
}

pub(crate) fn dns_settings(row: &AnyRow) -> Result<DnsSettings, StoreError> {
    Ok(DnsSettings {
        config: json("dns_settings.config", &text(row, "config")?)?,
        updated: time(row, "updated_ms")?,
        author: text(row, "author")?,
    })
}

pub(crate) fn ssh_approval(row: &AnyRow) -> Result<SshApproval, StoreError> {
    Ok(SshApproval {
        user: UserId(row.try_get("user_id")?),
        node: NodeId(row.try_get("node_id")?),
        approved: time(row, "approved_ms")?,
        expires: time(row, "expires_ms")?,
        approved_by: text(row, "approved_by")?,
        check_id: text(row, "check_id")?,
        dst_node: opt_id(row, "dst_node_id")?.map(NodeId),
        local_user: text(row, "local_user")?,
    })
}

pub(crate) fn ssh_recording(row: &AnyRow) -> Result<SshRecording, StoreError> {
    Ok(SshRecording {
        id: text(row, "id")?,
        node: opt_id(row, "node_id")?.map(NodeId),
        node_name: text(row, "node_name")?,
        src_user: text(row, "src_user")?,
        src_node: text(row, "src_node")?,
        src_addr: text(row, "src_addr")?,
        ssh_user: text(row, "ssh_user")?,
        local_user: text(row, "local_user")?,
        kind: text(row, "kind")?,
        command: row.try_get::<Option<String>, _>("command")?,
        input: flag(row, "input")?,
        started: time(row, "started_ms")?,
        ended: opt_time(row, "ended_ms")?,
        size_bytes: row.try_get("size_bytes")?,
        failure: row.try_get::<Option<String>, _>("failure")?,
        received: time(row, "received_ms")?,
    })
}
