//! Turning `Any` rows into records, and records' structured fields into text.
//! A value that does not decode is reported as [`StoreError::Corrupt`] naming
//! the column, never as a panic.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use sqlx::Row as _;
use sqlx::any::AnyRow;

use crate::model::{
    ApiKey, ApiKeyId, AuthRequest, AuthRequestState, KeyLifetime, Node, NodeId, PolicyVersion,
    PolicyVersionId, PreauthKey, PreauthKeyId, StableNodeId, Tag, User, UserId,
};
use crate::{Role, StoreError};

macro_rules! user_columns {
    () => {
        "id, login_name, display_name, role, created_ms"
    };
}
pub(crate) use user_columns;

macro_rules! node_columns {
    () => {
        "id, stable_id, machine_key, node_key, disco_key, hostname, \
     given_name, user_id, registered_by, tags, ipv4, ipv6, endpoints, host_info, created_ms, \
     last_seen_ms, online, expiry_ms, ephemeral, preauth_key_id"
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

fn flag(v: i64) -> bool {
    v != 0
}

/// Encodes a boolean as the INTEGER 0/1 the schema uses.
pub(crate) fn int_flag(b: bool) -> i64 {
    i64::from(b)
}

/// Encodes tags as a sorted JSON array of strings.
pub(crate) fn tags_json(tags: &[Tag]) -> String {
    let mut v: Vec<&str> = tags.iter().map(Tag::as_str).collect();
    v.sort_unstable();
    v.dedup();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_owned())
}

fn tags_from(what: &'static str, s: &str) -> Result<Vec<Tag>, StoreError> {
    let raw: Vec<String> = json(what, s)?;
    raw.iter().map(|t| parse(what, t)).collect()
}

/// Encodes endpoints as a JSON array of `ip:port` strings.
pub(crate) fn endpoints_json(eps: &[SocketAddr]) -> String {
    let v: Vec<String> = eps.iter().map(ToString::to_string).collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".to_owned())
}

fn endpoints_from(what: &'static str, s: &str) -> Result<Vec<SocketAddr>, StoreError> {
    let raw: Vec<String> = json(what, s)?;
    raw.iter().map(|e| parse(what, e)).collect()
}

pub(crate) fn user(row: &AnyRow) -> Result<User, StoreError> {
    Ok(User {
        id: UserId(row.try_get("id")?),
        login_name: row.try_get("login_name")?,
        display_name: row.try_get("display_name")?,
        role: row.try_get::<String, _>("role")?.parse::<Role>()?,
        created_ms: row.try_get("created_ms")?,
    })
}

pub(crate) fn node(row: &AnyRow) -> Result<Node, StoreError> {
    let disco: Option<String> = row.try_get("disco_key")?;
    Ok(Node {
        id: NodeId(row.try_get("id")?),
        stable_id: StableNodeId(row.try_get("stable_id")?),
        machine_key: parse(
            "nodes.machine_key",
            &row.try_get::<String, _>("machine_key")?,
        )?,
        node_key: parse("nodes.node_key", &row.try_get::<String, _>("node_key")?)?,
        disco_key: disco.map(|d| parse("nodes.disco_key", &d)).transpose()?,
        hostname: row.try_get("hostname")?,
        given_name: row.try_get("given_name")?,
        user: row.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        registered_by: row.try_get::<Option<i64>, _>("registered_by")?.map(UserId),
        tags: tags_from("nodes.tags", &row.try_get::<String, _>("tags")?)?,
        ipv4: parse::<Ipv4Addr>("nodes.ipv4", &row.try_get::<String, _>("ipv4")?)?,
        ipv6: parse::<Ipv6Addr>("nodes.ipv6", &row.try_get::<String, _>("ipv6")?)?,
        endpoints: endpoints_from("nodes.endpoints", &row.try_get::<String, _>("endpoints")?)?,
        host_info: json("nodes.host_info", &row.try_get::<String, _>("host_info")?)?,
        created_ms: row.try_get("created_ms")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        online: flag(row.try_get("online")?),
        expiry_ms: row.try_get("expiry_ms")?,
        ephemeral: flag(row.try_get("ephemeral")?),
        preauth_key: row
            .try_get::<Option<i64>, _>("preauth_key_id")?
            .map(PreauthKeyId),
    })
}

pub(crate) fn preauth_key(row: &AnyRow) -> Result<PreauthKey, StoreError> {
    Ok(PreauthKey {
        id: PreauthKeyId(row.try_get("id")?),
        prefix: row.try_get("prefix")?,
        user: row.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        reusable: flag(row.try_get("reusable")?),
        ephemeral: flag(row.try_get("ephemeral")?),
        tags: tags_from("preauth_keys.tags", &row.try_get::<String, _>("tags")?)?,
        node_key_lifetime: KeyLifetime::from_column(row.try_get("node_key_lifetime_ms")?),
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        used_count: row.try_get("used_count")?,
        revoked_ms: row.try_get("revoked_ms")?,
    })
}

pub(crate) fn api_key(row: &AnyRow) -> Result<ApiKey, StoreError> {
    Ok(ApiKey {
        id: ApiKeyId(row.try_get("id")?),
        prefix: row.try_get("prefix")?,
        description: row.try_get("description")?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        revoked_ms: row.try_get("revoked_ms")?,
        last_used_ms: row.try_get("last_used_ms")?,
    })
}

/// Decodes an auth request, plus the endpoints it was created with (kept for
/// the registration that approval performs).
pub(crate) fn auth_request(row: &AnyRow) -> Result<(AuthRequest, Vec<SocketAddr>), StoreError> {
    let disco: Option<String> = row.try_get("disco_key")?;
    let req = AuthRequest {
        auth_id: row.try_get("auth_id")?,
        machine_key: parse(
            "auth_requests.machine_key",
            &row.try_get::<String, _>("machine_key")?,
        )?,
        node_key: parse(
            "auth_requests.node_key",
            &row.try_get::<String, _>("node_key")?,
        )?,
        disco_key: disco
            .map(|d| parse("auth_requests.disco_key", &d))
            .transpose()?,
        hostname: row.try_get("hostname")?,
        host_info: json(
            "auth_requests.host_info",
            &row.try_get::<String, _>("host_info")?,
        )?,
        created_ms: row.try_get("created_ms")?,
        expires_ms: row.try_get("expires_ms")?,
        state: AuthRequestState::parse(&row.try_get::<String, _>("state")?)?,
        completed_ms: row.try_get("completed_ms")?,
        user: row.try_get::<Option<i64>, _>("user_id")?.map(UserId),
        node: row.try_get::<Option<i64>, _>("node_id")?.map(NodeId),
    };
    let eps = endpoints_from(
        "auth_requests.endpoints",
        &row.try_get::<String, _>("endpoints")?,
    )?;
    Ok((req, eps))
}

pub(crate) fn policy(row: &AnyRow) -> Result<PolicyVersion, StoreError> {
    Ok(PolicyVersion {
        id: PolicyVersionId(row.try_get("id")?),
        text: row.try_get("text")?,
        created_ms: row.try_get("created_ms")?,
        author: row.try_get("author")?,
    })
}
