//! The store's error type. Every refusal names the id, key or name it refers
//! to, so the server can pass the message to the user unchanged. Secrets never
//! appear in a message: keys are named by their public prefix.

use std::net::IpAddr;

use weft_types::{DnsLabel, LoginName, MachinePublic, NodeId, NodePublic, UserId};

use crate::model::{ApiKeyId, PolicyVersionId, PreauthKeyId};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    // --- unknown things -------------------------------------------------------------------
    /// No user has this login name.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// No user has this id.
    #[error("unknown user id {0}")]
    UnknownUserId(UserId),
    /// No node has this id.
    #[error("unknown node id {0}")]
    UnknownNode(NodeId),
    /// No node has this node key.
    #[error("unknown node key {0}")]
    UnknownNodeKey(NodePublic),
    /// No node has this machine key.
    #[error("unknown machine key {0}")]
    UnknownMachineKey(MachinePublic),
    /// No node has this tailnet address.
    #[error("no node has address {0}")]
    UnknownNodeAddress(IpAddr),
    /// No pre-auth key has this id.
    #[error("unknown pre-auth key id {0}")]
    UnknownPreauthKeyId(PreauthKeyId),
    /// No pre-auth key has this prefix, or the secret did not match.
    #[error("invalid pre-auth key {0:?}")]
    UnknownPreauthKey(String),
    /// No API key has this id.
    #[error("unknown API key id {0}")]
    UnknownApiKeyId(ApiKeyId),
    /// No API key has this prefix, or the secret did not match.
    #[error("invalid API key {0:?}")]
    UnknownApiKey(String),
    /// No interactive login has this id.
    #[error("unknown auth request {0:?}")]
    UnknownAuthRequest(String),
    /// No policy version has this id.
    #[error("unknown policy version {0}")]
    UnknownPolicyVersion(PolicyVersionId),

    // --- refusals -------------------------------------------------------------------------
    /// The key text is not of the form `weftkey-<kind>-<prefix>-<secret>`.
    #[error("malformed {kind} key: expected weftkey-{kind}-<12 hex>-<48 hex>")]
    MalformedKey {
        /// `auth` or `api`.
        kind: &'static str,
    },
    /// The pre-auth key expired (by time).
    #[error("pre-auth key {0:?} has expired")]
    PreauthKeyExpired(String),
    /// The pre-auth key was revoked by an admin.
    #[error("pre-auth key {0:?} was revoked")]
    PreauthKeyRevoked(String),
    /// A one-off pre-auth key was already used.
    #[error("pre-auth key {0:?} is single-use and was already used")]
    PreauthKeyUsed(String),
    /// The API key expired or was revoked.
    #[error("API key {0:?} has expired or was revoked")]
    ApiKeyExpired(String),
    /// The auth request's time ran out before it was approved.
    #[error("auth request {0:?} has expired")]
    AuthRequestExpired(String),
    /// The auth request was already approved or rejected.
    #[error("auth request {0:?} was already {1}")]
    AuthRequestCompleted(String, &'static str),
    /// Another node already uses this node key.
    #[error("node key {0} is already registered to another node")]
    DuplicateNodeKey(NodePublic),
    /// Another user already has this login name.
    #[error("a user named \"{0}\" already exists")]
    DuplicateUser(LoginName),
    /// Another node already uses this DNS name.
    #[error("the name \"{0}\" is already taken by another node")]
    NameTaken(DnsLabel),
    /// A pre-auth key needs a user or at least one tag to own its nodes.
    #[error("a pre-auth key needs a user or at least one tag")]
    KeyWithoutOwner,
    /// Removing the node's tags would leave it without an owner.
    #[error("node id {0} would have neither tags nor a user to own it")]
    NodeWithoutOwner(NodeId),
    /// The user still owns nodes; delete or re-own them first.
    #[error("user \"{login}\" still owns {count} node(s)")]
    UserHasNodes {
        /// The user's login name.
        login: LoginName,
        /// How many nodes it owns.
        count: i64,
    },
    /// An SSH approval names a source node that the user does not own
    /// (anymore).
    #[error(
        "node id {node} is not owned by user id {user}; only its owner can approve logins from it"
    )]
    NotNodeOwner {
        /// The source node.
        node: NodeId,
        /// The user who approved.
        user: UserId,
    },
    /// An SSH approval that would expire the moment it is given (a
    /// `checkPeriod` of zero approves only the login at hand).
    #[error(
        "an SSH approval must end after it was given (approved at {approved}, expires at {expires})"
    )]
    EmptySshApproval {
        /// When it was given.
        approved: weft_types::UnixMillis,
        /// When it would end.
        expires: weft_types::UnixMillis,
    },
    /// Every address of the pool is in use.
    #[error("address pool {0} is exhausted")]
    AddressPoolExhausted(ipnet::Ipv4Net),

    // --- configuration and environment ----------------------------------------------------
    /// The database URL is neither `sqlite:` nor `postgres:`/`postgresql:`.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The address pool configuration is unusable.
    #[error("invalid address pool: {0}")]
    InvalidPool(String),
    /// Creating the state directory or database file failed.
    #[error("cannot prepare database file {path}: {source}")]
    Io {
        /// The path concerned.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Concurrent writers kept colliding; the operation was retried and gave up.
    #[error("gave up after {attempts} attempts: concurrent writes kept colliding ({what})")]
    Contention {
        /// What collided (a constraint or lock).
        what: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// A stored value could not be decoded (the database was edited by hand or is damaged).
    #[error("stored {what} is invalid: {detail}")]
    Corrupt {
        /// Table and column.
        what: &'static str,
        /// The offending value or parse error.
        detail: String,
    },
    /// Running the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database reported an error.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

impl StoreError {
    /// Returns whether retrying the whole transaction may succeed: a lock or
    /// serialization conflict, or a uniqueness race inside a registration.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            StoreError::Contention { .. } => true,
            StoreError::Db(e) => db_is_transient(e),
            _ => false,
        }
    }
}

/// SQLite `BUSY`/`LOCKED` (and their extended codes) and PostgreSQL
/// serialization failures and deadlocks can succeed when retried.
pub(crate) fn db_is_transient(e: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = e else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    // PostgreSQL SQLSTATEs are text; SQLite codes are decimal extended result codes
    // whose low byte is the primary code (5 = BUSY, 6 = LOCKED).
    if code == "40001" || code == "40P01" {
        return true;
    }
    code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Returns whether `e` is a unique-constraint violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation)
}

/// Returns a short description of a unique-constraint violation (which constraint).
pub(crate) fn violation_detail(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => match db.constraint() {
            Some(c) => c.to_owned(),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    }
}
