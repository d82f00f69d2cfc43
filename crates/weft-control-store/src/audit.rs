//! The audit log of admin actions: appended to, read newest first a page at
//! a time, never changed. What counts as an admin action and how it is
//! described is the server's business; the store keeps the entries as given.

use crate::db::write_tx;
use crate::rows::{self, audit_columns};
use crate::{AuditEntry, AuditEntryId, NewAuditEntry, Store, StoreError, UnixMillis};

/// The most entries [`Store::list_audit`] returns at once.
pub const MAX_AUDIT_PAGE: u32 = 500;

impl Store {
    /// Appends an entry to the audit log and returns it.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn record_audit(
        &self,
        entry: &NewAuditEntry,
        now: UnixMillis,
    ) -> Result<AuditEntry, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "INSERT INTO audit_log (created_ms, actor, action, target, outcome, status, detail) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING ",
                audit_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(&entry.actor)
                .bind(&entry.action)
                .bind(&entry.target)
                .bind(entry.outcome.as_str())
                .bind(i64::from(entry.status))
                .bind(&entry.detail)
                .fetch_one(&mut *conn)
                .await?;
            rows::audit(&row)
        })
    }

    /// Returns up to `limit` entries (at most [`MAX_AUDIT_PAGE`]), newest
    /// first, older than `before` when given: the next page starts before
    /// the last id of this one.
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] for a row that does not read back.
    pub async fn list_audit(
        &self,
        before: Option<AuditEntryId>,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let sql = concat!(
            "SELECT ",
            audit_columns!(),
            " FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2"
        );
        let rows = sqlx::query(sql)
            .bind(before.map_or(i64::MAX, |b| b.0))
            .bind(i64::from(limit.min(MAX_AUDIT_PAGE)))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter().map(rows::audit).collect()
    }
}
