//! Nodes after registration: lookups, key rotation, status, expiry, names,
//! tags, deletion and the ephemeral-node garbage collector's query.
//! Registration itself is in `register.rs`.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use sqlx::AnyConnection;
use weft_types::{MachinePublic, NodePublic};

use crate::UnixMillis;
use crate::db::write_tx;
use crate::error::is_unique_violation;
use crate::label;
use crate::rows::{self, endpoints_json, int_flag, node_columns, tags_json};
use crate::ssh::drop_approvals_of_others;
use crate::{DnsLabel, Node, NodeId, NodeStatusUpdate, Store, StoreError, Tag, UserId};

impl Store {
    /// Returns the node with this id.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn node(&self, id: NodeId) -> Result<Node, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        node_by_id(&mut conn, id).await
    }

    /// Returns the node with this node key.
    ///
    /// # Errors
    /// [`StoreError::UnknownNodeKey`].
    pub async fn node_by_node_key(&self, key: &NodePublic) -> Result<Node, StoreError> {
        self.node_where(By::NodeKey, key.to_string())
            .await?
            .ok_or(StoreError::UnknownNodeKey(*key))
    }

    /// Returns the node with this machine key.
    ///
    /// # Errors
    /// [`StoreError::UnknownMachineKey`].
    pub async fn node_by_machine_key(&self, key: &MachinePublic) -> Result<Node, StoreError> {
        self.node_where(By::MachineKey, key.to_string())
            .await?
            .ok_or(StoreError::UnknownMachineKey(*key))
    }

    /// Returns the node with this tailnet address (IPv4 or IPv6).
    ///
    /// # Errors
    /// [`StoreError::UnknownNodeAddress`].
    pub async fn node_by_ip(&self, ip: IpAddr) -> Result<Node, StoreError> {
        let found = match ip.to_canonical() {
            IpAddr::V4(v4) => self.node_where(By::Ipv4, v4.to_string()).await?,
            IpAddr::V6(v6) => self.node_where(By::Ipv6, v6.to_string()).await?,
        };
        found.ok_or(StoreError::UnknownNodeAddress(ip))
    }

    /// Returns every node, by id.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn list_nodes(&self) -> Result<Vec<Node>, StoreError> {
        let sql = concat!("SELECT ", node_columns!(), " FROM nodes ORDER BY id");
        let all = sqlx::query(sql).fetch_all(&self.inner.pool).await?;
        all.iter().map(rows::node).collect()
    }

    /// Returns the nodes a user owns, by id.
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`].
    pub async fn list_nodes_of_user(&self, user: UserId) -> Result<Vec<Node>, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        crate::users::user_by_id(&mut conn, user).await?;
        let sql = concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE user_id = $1 ORDER BY id"
        );
        let all = sqlx::query(sql).bind(user.0).fetch_all(&mut *conn).await?;
        all.iter().map(rows::node).collect()
    }

    /// Replaces a node's key: the node that holds `old` gets `new`. Expiry,
    /// addresses and name stay.
    ///
    /// # Errors
    /// [`StoreError::UnknownNodeKey`] if no node holds `old`;
    /// [`StoreError::DuplicateNodeKey`] if another node holds `new`.
    pub async fn rotate_node_key(
        &self,
        old: &NodePublic,
        new: &NodePublic,
        now: UnixMillis,
    ) -> Result<Node, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let Some(node) = node_where_text(conn, By::NodeKey, &old.to_string()).await? else {
                return Err(StoreError::UnknownNodeKey(*old));
            };
            if old == new {
                return Ok(node);
            }
            if let Some(other) = node_where_text(conn, By::NodeKey, &new.to_string()).await?
                && other.id != node.id
            {
                return Err(StoreError::DuplicateNodeKey(*new));
            }
            let sql = concat!(
                "UPDATE nodes SET node_key = $1, last_seen_ms = $2 WHERE id = $3 \
                 RETURNING ",
                node_columns!(),
                ""
            );
            match sqlx::query(sql)
                .bind(new.to_string())
                .bind(now.0)
                .bind(node.id.0)
                .fetch_one(&mut *conn)
                .await
            {
                Ok(row) => rows::node(&row),
                Err(e) if is_unique_violation(&e) => Err(StoreError::DuplicateNodeKey(*new)),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Applies what a node reported about itself and sets `last_seen` to `now`.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn update_node_status(
        &self,
        id: NodeId,
        update: NodeStatusUpdate,
        now: UnixMillis,
    ) -> Result<Node, StoreError> {
        let disco = update.disco_key.map(|k| k.to_string());
        let endpoints = update.endpoints.as_deref().map(endpoints_json);
        let host_info = update.host_info.as_ref().map(serde_json::Value::to_string);
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE nodes SET disco_key = COALESCE($1, disco_key), \
                 endpoints = COALESCE($2, endpoints), host_info = COALESCE($3, host_info), \
                 hostname = COALESCE($4, hostname), last_seen_ms = $5 \
                 WHERE id = $6 RETURNING ",
                node_columns!(),
                ""
            );
            let row = sqlx::query(sql)
                .bind(disco.clone())
                .bind(endpoints.clone())
                .bind(host_info.clone())
                .bind(update.hostname.clone())
                .bind(now.0)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            rows::node(&row.ok_or(StoreError::UnknownNode(id))?)
        })
    }

    /// Records that a node connected (`online = true`) or disconnected, and
    /// sets `last_seen` to `now`.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn set_online(
        &self,
        id: NodeId,
        online: bool,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let done = sqlx::query("UPDATE nodes SET online = $1, last_seen_ms = $2 WHERE id = $3")
                .bind(int_flag(online))
                .bind(now.0)
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::UnknownNode(id));
            }
            Ok(())
        })
    }

    /// Sets `last_seen` of the given (connected) nodes to `now`, in one
    /// transaction; unknown ids are skipped. Returns how many rows changed.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn touch_last_seen(
        &self,
        ids: &[NodeId],
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let mut n = 0;
            for id in ids {
                n += sqlx::query("UPDATE nodes SET last_seen_ms = $1 WHERE id = $2")
                    .bind(now.0)
                    .bind(id.0)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
            }
            Ok(n)
        })
    }

    /// Marks every node offline, setting `last_seen` to `now` for those
    /// that were online. Call it when the server starts: connections did not
    /// survive the restart, and the ephemeral GC skips nodes marked online.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn mark_all_offline(&self, now: UnixMillis) -> Result<u64, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let done =
                sqlx::query("UPDATE nodes SET online = 0, last_seen_ms = $1 WHERE online = 1")
                    .bind(now.0)
                    .execute(&mut *conn)
                    .await?;
            Ok(done.rows_affected())
        })
    }

    /// Expires a node's key now (it must re-authenticate) and deletes the
    /// SSH check approvals for logins from it: an admin logging a device
    /// out withdraws what its user approved on it.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn expire_node(&self, id: NodeId, now: UnixMillis) -> Result<Node, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE nodes SET expiry_ms = $1 WHERE id = $2 RETURNING ",
                node_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            let node = rows::node(&row.ok_or(StoreError::UnknownNode(id))?)?;
            drop_approvals_of_others(conn, id, None).await?;
            Ok(node)
        })
    }

    /// Sets when a node's key expires (`None`: never).
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn set_node_expiry(
        &self,
        id: NodeId,
        expiry: Option<UnixMillis>,
    ) -> Result<Node, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE nodes SET expiry_ms = $1 WHERE id = $2 RETURNING ",
                node_columns!()
            );
            let row = sqlx::query(sql)
                .bind(expiry.map(|t| t.0))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            rows::node(&row.ok_or(StoreError::UnknownNode(id))?)
        })
    }

    /// Authorizes a node (device approval) or withdraws the authorization.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn set_node_authorized(
        &self,
        id: NodeId,
        authorized: bool,
    ) -> Result<Node, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE nodes SET authorized = $1 WHERE id = $2 RETURNING ",
                node_columns!()
            );
            let row = sqlx::query(sql)
                .bind(int_flag(authorized))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            rows::node(&row.ok_or(StoreError::UnknownNode(id))?)
        })
    }

    /// Deletes a node and returns it. Its addresses and name become free.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`].
    pub async fn delete_node(&self, id: NodeId) -> Result<Node, StoreError> {
        let node = write_tx!(&self.inner, |conn, _attempt| {
            let node = node_by_id(conn, id).await?;
            sqlx::query("DELETE FROM nodes WHERE id = $1")
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            Ok(node)
        })?;
        self.used.release(node.ipv4);
        Ok(node)
    }

    /// Gives a node a new DNS name. Names typed by people are parsed into a
    /// [`DnsLabel`] by the caller (refused if invalid, not sanitized).
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`], [`StoreError::NameTaken`].
    pub async fn rename_node(&self, id: NodeId, name: &DnsLabel) -> Result<Node, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let node = node_by_id(conn, id).await?;
            if node.given_name == *name {
                return Ok(node);
            }
            let sql = concat!(
                "UPDATE nodes SET given_name = $1 WHERE id = $2 RETURNING ",
                node_columns!()
            );
            match sqlx::query(sql)
                .bind(name.as_str())
                .bind(id.0)
                .fetch_one(&mut *conn)
                .await
            {
                Ok(row) => rows::node(&row),
                Err(e) if is_unique_violation(&e) => Err(StoreError::NameTaken(name.clone())),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Replaces a node's tags. Non-empty tags make the node tag-owned (no
    /// user); removing all tags gives it back to the user who registered it.
    ///
    /// # Errors
    /// [`StoreError::UnknownNode`]; [`StoreError::NodeWithoutOwner`] if the
    /// tags would be emptied and the registering user is gone.
    pub async fn set_node_tags(
        &self,
        id: NodeId,
        tags: &BTreeSet<Tag>,
    ) -> Result<Node, StoreError> {
        let tags_text = tags_json(tags);
        write_tx!(&self.inner, |conn, _attempt| {
            let node = node_by_id(conn, id).await?;
            let owner = if tags.is_empty() {
                Some(
                    node.user
                        .or(node.registered_by)
                        .ok_or(StoreError::NodeWithoutOwner(id))?,
                )
            } else {
                None
            };
            let sql = concat!(
                "UPDATE nodes SET tags = $1, user_id = $2 WHERE id = $3 RETURNING ",
                node_columns!(),
                ""
            );
            let row = sqlx::query(sql)
                .bind(&tags_text)
                .bind(owner.map(|u| u.0))
                .bind(id.0)
                .fetch_one(&mut *conn)
                .await?;
            drop_approvals_of_others(conn, id, owner).await?;
            rows::node(&row)
        })
    }

    /// Returns the ephemeral nodes that are offline and were last seen (or,
    /// if never seen, created) at or before `now - grace`, by id.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn ephemeral_gc_candidates(
        &self,
        grace: Duration,
        now: UnixMillis,
    ) -> Result<Vec<Node>, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        gc_candidates(&mut conn, grace, now).await
    }

    /// Deletes what [`Store::ephemeral_gc_candidates`] selects, in one
    /// transaction, and returns the deleted nodes (to announce their removal).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn delete_ephemeral_offline(
        &self,
        grace: Duration,
        now: UnixMillis,
    ) -> Result<Vec<Node>, StoreError> {
        let doomed = write_tx!(&self.inner, |conn, _attempt| {
            let doomed = gc_candidates(conn, grace, now).await?;
            for node in &doomed {
                sqlx::query("DELETE FROM nodes WHERE id = $1")
                    .bind(node.id.0)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(doomed)
        })?;
        for node in &doomed {
            self.used.release(node.ipv4);
        }
        Ok(doomed)
    }

    async fn node_where(&self, by: By, value: String) -> Result<Option<Node>, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        node_where_text(&mut conn, by, &value).await
    }
}

async fn gc_candidates(
    conn: &mut AnyConnection,
    grace: Duration,
    now: UnixMillis,
) -> Result<Vec<Node>, StoreError> {
    let cutoff = UnixMillis(now.0.saturating_sub(crate::model::duration_ms(grace)));
    let sql = concat!(
        "SELECT ",
        node_columns!(),
        " FROM nodes WHERE ephemeral = 1 AND online = 0 \
         AND COALESCE(last_seen_ms, created_ms) <= $1 ORDER BY id"
    );
    let all = sqlx::query(sql)
        .bind(cutoff.0)
        .fetch_all(&mut *conn)
        .await?;
    all.iter().map(rows::node).collect()
}

/// Reads a node by id inside a transaction.
pub(crate) async fn node_by_id(conn: &mut AnyConnection, id: NodeId) -> Result<Node, StoreError> {
    let sql = concat!("SELECT ", node_columns!(), " FROM nodes WHERE id = $1");
    let row = sqlx::query(sql)
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?;
    rows::node(&row.ok_or(StoreError::UnknownNode(id))?)
}

/// A unique text column of `nodes` to look a node up by.
#[derive(Debug, Clone, Copy)]
pub(crate) enum By {
    NodeKey,
    MachineKey,
    Ipv4,
    Ipv6,
}

/// Reads a node by a unique text column.
pub(crate) async fn node_where_text(
    conn: &mut AnyConnection,
    by: By,
    value: &str,
) -> Result<Option<Node>, StoreError> {
    let sql = match by {
        By::NodeKey => concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE node_key = $1"
        ),
        By::MachineKey => concat!(
            "SELECT ",
            node_columns!(),
            " FROM nodes WHERE machine_key = $1"
        ),
        By::Ipv4 => concat!("SELECT ", node_columns!(), " FROM nodes WHERE ipv4 = $1"),
        By::Ipv6 => concat!("SELECT ", node_columns!(), " FROM nodes WHERE ipv6 = $1"),
    };
    let row = sqlx::query(sql)
        .bind(value)
        .fetch_optional(&mut *conn)
        .await?;
    row.as_ref().map(rows::node).transpose()
}

/// Returns the names in use that a label derived from `base` could collide with.
pub(crate) async fn taken_names(
    conn: &mut AnyConnection,
    base: &DnsLabel,
) -> Result<BTreeSet<String>, StoreError> {
    // Labels contain only [a-z0-9-], so the prefix has no LIKE wildcards.
    let pattern = format!("{}%", label::candidate_prefix(base));
    let names: Vec<String> =
        sqlx::query_scalar("SELECT given_name FROM nodes WHERE given_name LIKE $1")
            .bind(pattern)
            .fetch_all(&mut *conn)
            .await?;
    Ok(names.into_iter().collect())
}
