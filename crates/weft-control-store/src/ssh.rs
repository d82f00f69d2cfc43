//! SSH check approvals (docs/PROTOCOL.md §9.5): which tailnet user
//! re-authenticated for logins from which source node, and until when.
//! The server looks one up on every check and records one when a user
//! approves; admins list and revoke them.
//!
//! An approval lasts until `expires`; rows past it are ignored by every
//! read and deleted by [`Store::delete_expired_ssh_approvals`]. They also
//! end with their user or node (`ON DELETE CASCADE`), when an admin
//! expires the node's key ([`Store::expire_node`]), and when the node
//! changes owner (tagged, or registered again by another user). A node key
//! rotation keeps them: the same device, the same owner.

use sqlx::AnyConnection;

use crate::db::write_tx;
use crate::model::{SshApproval, SshApprovalFilter};
use crate::nodes::node_by_id;
use crate::rows::{self, ssh_approval_columns};
use crate::{NodeId, Store, StoreError, UnixMillis, UserId};

impl Store {
    /// Records `a`, replacing the approval of the same (user, node), and
    /// returns what was stored.
    ///
    /// # Errors
    /// [`StoreError::EmptySshApproval`] if `a.expires` is not after
    /// `a.approved`; [`StoreError::UnknownNode`] if the node is gone;
    /// [`StoreError::NotNodeOwner`] if `a.user` does not own it;
    /// [`StoreError::UnknownUserId`] if the user is gone.
    pub async fn put_ssh_approval(&self, a: &SshApproval) -> Result<SshApproval, StoreError> {
        if a.expires <= a.approved {
            return Err(StoreError::EmptySshApproval {
                approved: a.approved,
                expires: a.expires,
            });
        }
        write_tx!(&self.inner, |conn, _attempt| {
            let node = node_by_id(conn, a.node).await?;
            if node.user != Some(a.user) {
                return Err(StoreError::NotNodeOwner {
                    node: a.node,
                    user: a.user,
                });
            }
            // The destination may have been deleted meanwhile: keep the approval.
            let dst = match a.dst_node {
                Some(d) => node_exists(conn, d).await?.then_some(d),
                None => None,
            };
            let sql = concat!(
                "INSERT INTO ssh_approvals (user_id, node_id, approved_ms, expires_ms, ",
                "approved_by, check_id, dst_node_id, local_user) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ",
                "ON CONFLICT (user_id, node_id) DO UPDATE SET ",
                "approved_ms = excluded.approved_ms, expires_ms = excluded.expires_ms, ",
                "approved_by = excluded.approved_by, check_id = excluded.check_id, ",
                "dst_node_id = excluded.dst_node_id, local_user = excluded.local_user ",
                "RETURNING ",
                ssh_approval_columns!()
            );
            let row = sqlx::query(sql)
                .bind(a.user.0)
                .bind(a.node.0)
                .bind(a.approved.0)
                .bind(a.expires.0)
                .bind(&a.approved_by)
                .bind(&a.check_id)
                .bind(dst.map(|d| d.0))
                .bind(&a.local_user)
                .fetch_one(&mut *conn)
                .await?;
            rows::ssh_approval(&row)
        })
    }

    /// Returns the approval of `user` for logins from `node` if it has not
    /// expired at `now`.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn ssh_approval(
        &self,
        user: UserId,
        node: NodeId,
        now: UnixMillis,
    ) -> Result<Option<SshApproval>, StoreError> {
        let sql = concat!(
            "SELECT ",
            ssh_approval_columns!(),
            " FROM ssh_approvals WHERE user_id = $1 AND node_id = $2 AND expires_ms > $3"
        );
        let row = sqlx::query(sql)
            .bind(user.0)
            .bind(node.0)
            .bind(now.0)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(rows::ssh_approval).transpose()
    }

    /// Lists the approvals `filter` selects that have not expired at `now`,
    /// by user and node.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn list_ssh_approvals(
        &self,
        filter: SshApprovalFilter,
        now: UnixMillis,
    ) -> Result<Vec<SshApproval>, StoreError> {
        let sql = concat!(
            "SELECT ",
            ssh_approval_columns!(),
            " FROM ssh_approvals WHERE expires_ms > $1 ",
            "AND ($2 = 0 OR user_id = $3) AND ($4 = 0 OR node_id = $5) ",
            "ORDER BY user_id, node_id"
        );
        let (has_user, user) = bind_filter(filter.user.map(|u| u.0));
        let (has_node, node) = bind_filter(filter.node.map(|n| n.0));
        sqlx::query(sql)
            .bind(now.0)
            .bind(has_user)
            .bind(user)
            .bind(has_node)
            .bind(node)
            .fetch_all(&self.inner.pool)
            .await?
            .iter()
            .map(rows::ssh_approval)
            .collect()
    }

    /// Deletes the approvals `filter` selects that have not expired at
    /// `now` (expired ones are deleted too, but not returned) and returns
    /// them: from then on the users they named are asked again.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn revoke_ssh_approvals(
        &self,
        filter: SshApprovalFilter,
        now: UnixMillis,
    ) -> Result<Vec<SshApproval>, StoreError> {
        let (has_user, user) = bind_filter(filter.user.map(|u| u.0));
        let (has_node, node) = bind_filter(filter.node.map(|n| n.0));
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "DELETE FROM ssh_approvals ",
                "WHERE ($1 = 0 OR user_id = $2) AND ($3 = 0 OR node_id = $4) RETURNING ",
                ssh_approval_columns!()
            );
            let mut gone = sqlx::query(sql)
                .bind(has_user)
                .bind(user)
                .bind(has_node)
                .bind(node)
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(rows::ssh_approval)
                .collect::<Result<Vec<_>, _>>()?;
            gone.retain(|a| a.expires > now);
            gone.sort_by_key(|a| (a.user, a.node));
            Ok(gone)
        })
    }

    /// Deletes approvals that expired at or before `now`; returns how many.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn delete_expired_ssh_approvals(&self, now: UnixMillis) -> Result<u64, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let done = sqlx::query("DELETE FROM ssh_approvals WHERE expires_ms <= $1")
                .bind(now.0)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

/// A filter value as two binds: a 0/1 "given" flag and the value (0 when
/// not given), so one statement serves every filter on both databases.
fn bind_filter(v: Option<i64>) -> (i64, i64) {
    v.map_or((0, 0), |v| (1, v))
}

async fn node_exists(conn: &mut AnyConnection, id: NodeId) -> Result<bool, StoreError> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE id = $1")
        .bind(id.0)
        .fetch_one(&mut *conn)
        .await?;
    Ok(n > 0)
}

/// Deletes the approvals for logins from `node` that are not `owner`'s
/// (all of them when the node has no user owner): inside the transaction
/// that changed the node's owner.
pub(crate) async fn drop_approvals_of_others(
    conn: &mut AnyConnection,
    node: NodeId,
    owner: Option<UserId>,
) -> Result<(), StoreError> {
    match owner {
        Some(u) => {
            sqlx::query("DELETE FROM ssh_approvals WHERE node_id = $1 AND user_id <> $2")
                .bind(node.0)
                .bind(u.0)
                .execute(&mut *conn)
                .await?
        }
        None => {
            sqlx::query("DELETE FROM ssh_approvals WHERE node_id = $1")
                .bind(node.0)
                .execute(&mut *conn)
                .await?
        }
    };
    Ok(())
}
