//! Node registration: one transaction that authorizes, allocates and writes.
//!
//! In order, inside a single write transaction:
//! 1. authorize: a pre-auth key is looked up by prefix, its secret's hash
//!    compared in constant time, its state checked (revoked, expired, single
//!    use already spent), and its use counted with a guarded `UPDATE` that a
//!    concurrent registration with the same one-off key cannot also pass; or
//!    the approving user is checked to exist;
//! 2. refuse a node key that another machine holds;
//! 3. a known machine key re-authenticates its node (same id, name and
//!    addresses); otherwise pick a unique DNS label (an indexed prefix query)
//!    and a free address pair (from the in-memory used set, see
//!    [`crate::alloc`]) and insert the node. Nothing here reads the whole
//!    table.
//!
//! Losing a race (a concurrent registration took the same address, name or
//! machine key first) aborts the transaction with a unique violation; it is
//! reported as [`StoreError::Contention`], which makes the write loop retry
//! with a fresh view. Retries spread label choices (see
//! [`label::unique_label`]). The result is returned only after COMMIT.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use sqlx::AnyConnection;

use crate::db::write_tx;
use crate::error::{is_unique_violation, violation_detail};
use crate::nodes::{By, node_where_text, taken_names};
use crate::rows::{self, endpoints_json, int_flag, node_columns, preauth_columns, tags_json};
use crate::secret::{self, KeyKind};
use crate::ssh::drop_approvals_of_others;
use crate::{DnsLabel, UnixMillis};
use crate::{
    KeyLifetime, PreauthKeyId, RegisterAuth, RegisterNode, Registered, Store, StoreError, Tag,
    UserId, label,
};

/// What an authorization grants the node.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    owner: Option<UserId>,
    registered_by: Option<UserId>,
    tags: BTreeSet<Tag>,
    ephemeral: bool,
    lifetime: KeyLifetime,
    preauth_key: Option<PreauthKeyId>,
}

/// A [`RegisterAuth`] with the key text already parsed (outside the transaction).
#[derive(Debug, Clone)]
pub(crate) enum Authorizer {
    Key {
        prefix: String,
        hash: String,
    },
    User {
        user: UserId,
        tags: BTreeSet<Tag>,
        ephemeral: bool,
        lifetime: KeyLifetime,
    },
}

impl Authorizer {
    pub(crate) fn parse(auth: RegisterAuth<'_>) -> Result<Self, StoreError> {
        Ok(match auth {
            RegisterAuth::PreauthKey(text) => {
                let (prefix, hash) = secret::parse(KeyKind::Auth, text)?;
                Authorizer::Key { prefix, hash }
            }
            RegisterAuth::User {
                user,
                tags,
                ephemeral,
                key_lifetime,
            } => Authorizer::User {
                user,
                tags: tags.clone(),
                ephemeral,
                lifetime: key_lifetime,
            },
        })
    }
}

impl Store {
    /// Registers a node, or re-authenticates it if its machine key is known.
    ///
    /// A new node gets a DNS label derived from its hostname (made unique with
    /// `-1`, `-2`, … suffixes), a random free IPv4 and the paired IPv6, and a
    /// node-key expiry from the key, approval or server default. Tagged nodes
    /// are owned by their tags (`user = None`).
    ///
    /// # Errors
    /// [`StoreError::MalformedKey`], [`StoreError::UnknownPreauthKey`],
    /// [`StoreError::PreauthKeyExpired`], [`StoreError::PreauthKeyRevoked`],
    /// [`StoreError::PreauthKeyUsed`], [`StoreError::UnknownUserId`],
    /// [`StoreError::DuplicateNodeKey`] (the node key belongs to another
    /// machine), [`StoreError::AddressPoolExhausted`],
    /// [`StoreError::Contention`] if retries ran out.
    pub async fn register_node(
        &self,
        req: &RegisterNode,
        auth: RegisterAuth<'_>,
        now: UnixMillis,
    ) -> Result<Registered, StoreError> {
        let authorizer = Authorizer::parse(auth)?;
        write_tx!(&self.inner, |conn, attempt| {
            let grant = authorize(conn, &authorizer, now).await?;
            self.register_in(conn, req, &grant, now, attempt).await
        })
    }

    /// The registration steps after authorization, inside the caller's transaction.
    pub(crate) async fn register_in(
        &self,
        conn: &mut AnyConnection,
        req: &RegisterNode,
        grant: &Grant,
        now: UnixMillis,
        attempt: u32,
    ) -> Result<Registered, StoreError> {
        let existing = node_where_text(conn, By::MachineKey, &req.machine_key.to_string()).await?;
        if let Some(holder) = node_where_text(conn, By::NodeKey, &req.node_key.to_string()).await?
            && existing.as_ref().map(|n| n.id) != Some(holder.id)
        {
            return Err(StoreError::DuplicateNodeKey(req.node_key));
        }
        let expiry = grant.lifetime.expiry_from(now, self.config.node_key_expiry);
        let tags = tags_json(&grant.tags);
        let endpoints = endpoints_json(&req.endpoints);
        let host_info = req.host_info.to_string();
        let disco = req.disco_key.map(|k| k.to_string());

        if let Some(node) = existing {
            let sql = concat!(
                "UPDATE nodes SET node_key = $1, disco_key = COALESCE($2, disco_key), ",
                "hostname = $3, host_info = $4, endpoints = $5, user_id = $6, ",
                "registered_by = $7, tags = $8, expiry_ms = $9, ephemeral = $10, ",
                "preauth_key_id = $11, last_seen_ms = $12 WHERE id = $13 RETURNING ",
                node_columns!()
            );
            let row = sqlx::query(sql)
                .bind(req.node_key.to_string())
                .bind(disco)
                .bind(&req.hostname)
                .bind(host_info)
                .bind(endpoints)
                .bind(grant.owner.map(|u| u.0))
                .bind(grant.registered_by.map(|u| u.0))
                .bind(tags)
                .bind(expiry.map(|t| t.0))
                .bind(int_flag(grant.ephemeral))
                .bind(grant.preauth_key.map(|k| k.0))
                .bind(now.0)
                .bind(node.id.0)
                .fetch_one(&mut *conn)
                .await
                .map_err(contention)?;
            // Registered again by another user (or as tagged): what the
            // previous owner approved on it does not carry over.
            drop_approvals_of_others(conn, node.id, grant.owner).await?;
            return Ok(Registered {
                node: rows::node(&row)?,
                created: false,
            });
        }

        let base = DnsLabel::sanitize(&req.hostname);
        let taken = taken_names(conn, &base).await?;
        let given_name = self.with_rng(|rng| label::unique_label(&base, &taken, attempt, rng))?;
        // The first registration, and every retry (a lost race may mean an
        // address this process does not know of), reads the used set once.
        if attempt > 0 || !self.used.is_loaded() {
            self.used.load(used_ipv4(conn).await?);
        }
        let pool = &self.config.pool;
        let ipv4 = self
            .with_rng(|rng| self.used.reserve(pool, rng))
            .ok_or(StoreError::AddressPoolExhausted(pool.v4()))?;
        let ipv6 = pool.ipv6_for(ipv4);
        let stable_id = format!("n{}", secret::random_hex(10)?);

        let sql = concat!(
            "INSERT INTO nodes (stable_id, machine_key, node_key, disco_key, hostname, ",
            "given_name, user_id, registered_by, tags, ipv4, ipv6, endpoints, host_info, ",
            "created_ms, last_seen_ms, online, expiry_ms, ephemeral, preauth_key_id, authorized) ",
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 0, ",
            "$16, $17, $18, $19) RETURNING ",
            node_columns!()
        );
        let row = sqlx::query(sql)
            .bind(stable_id)
            .bind(req.machine_key.to_string())
            .bind(req.node_key.to_string())
            .bind(disco)
            .bind(&req.hostname)
            .bind(given_name.as_str())
            .bind(grant.owner.map(|u| u.0))
            .bind(grant.registered_by.map(|u| u.0))
            .bind(tags)
            .bind(ipv4.to_string())
            .bind(ipv6.to_string())
            .bind(endpoints)
            .bind(host_info)
            .bind(now.0)
            .bind(now.0)
            .bind(expiry.map(|t| t.0))
            .bind(int_flag(grant.ephemeral))
            .bind(grant.preauth_key.map(|k| k.0))
            .bind(int_flag(!self.config.require_device_approval))
            .fetch_one(&mut *conn)
            .await
            .map_err(contention)?;
        Ok(Registered {
            node: rows::node(&row)?,
            created: true,
        })
    }
}

/// Checks the authorization and, for a pre-auth key, counts its use.
pub(crate) async fn authorize(
    conn: &mut AnyConnection,
    auth: &Authorizer,
    now: UnixMillis,
) -> Result<Grant, StoreError> {
    match auth {
        Authorizer::User {
            user,
            tags,
            ephemeral,
            lifetime,
        } => {
            crate::users::user_by_id(conn, *user).await?;
            Ok(Grant {
                owner: tags.is_empty().then_some(*user),
                registered_by: Some(*user),
                tags: tags.clone(),
                ephemeral: *ephemeral,
                lifetime: *lifetime,
                preauth_key: None,
            })
        }
        Authorizer::Key { prefix, hash } => {
            let sql = concat!(
                "SELECT ",
                preauth_columns!(),
                ", secret_sha256 FROM preauth_keys WHERE prefix = $1"
            );
            let row = sqlx::query(sql)
                .bind(prefix)
                .fetch_optional(&mut *conn)
                .await?;
            let unknown = || StoreError::UnknownPreauthKey(prefix.clone());
            let row = row.ok_or_else(unknown)?;
            let stored_hash: String = sqlx::Row::try_get(&row, "secret_sha256")?;
            if !secret::hashes_match(&stored_hash, hash) {
                return Err(unknown());
            }
            let key = rows::preauth_key(&row)?;
            if key.revoked.is_some() {
                return Err(StoreError::PreauthKeyRevoked(key.prefix));
            }
            if now >= key.expires {
                return Err(StoreError::PreauthKeyExpired(key.prefix));
            }
            // The guard in WHERE makes a concurrent use of a one-off key fail
            // here even if both transactions passed the checks above.
            let counted = sqlx::query(
                "UPDATE preauth_keys SET used_count = used_count + 1 \
                 WHERE id = $1 AND revoked_ms IS NULL AND (reusable = 1 OR used_count = 0)",
            )
            .bind(key.id.0)
            .execute(&mut *conn)
            .await?;
            if counted.rows_affected() == 0 {
                return Err(StoreError::PreauthKeyUsed(key.prefix));
            }
            Ok(Grant {
                owner: if key.tags.is_empty() { key.user } else { None },
                registered_by: key.user,
                tags: key.tags,
                ephemeral: key.ephemeral,
                lifetime: key.node_key_lifetime,
                preauth_key: Some(key.id),
            })
        }
    }
}

/// Maps a unique violation (a lost race) to the retryable [`StoreError::Contention`].
fn contention(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Contention {
            what: violation_detail(&e),
            attempts: 1,
        }
    } else {
        e.into()
    }
}

async fn used_ipv4(conn: &mut AnyConnection) -> Result<BTreeSet<Ipv4Addr>, StoreError> {
    let all: Vec<String> = sqlx::query_scalar("SELECT ipv4 FROM nodes")
        .fetch_all(&mut *conn)
        .await?;
    all.iter()
        .map(|s| {
            s.parse().map_err(|_| StoreError::Corrupt {
                what: "nodes.ipv4",
                detail: s.clone(),
            })
        })
        .collect()
}
