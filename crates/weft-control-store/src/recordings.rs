//! SSH session recordings (migration 0006): the index of the asciicast files
//! nodes uploaded; the files themselves are kept by weft-control in its state
//! directory. Rows outlive their node (`ON DELETE SET NULL`, name kept).

use crate::db::write_tx;
use crate::model::{SshRecording, SshRecordingPage};
use crate::rows::{self, ssh_recording_columns};
use crate::{Store, StoreError};

impl Store {
    /// Records `r`. A second upload of the same id from the same node
    /// replaces the first (a node that retries after a lost answer); one
    /// from another node (or for a recording whose node is gone) is not
    /// stored and `false` is returned.
    ///
    /// # Errors
    /// [`StoreError::Db`] (an id that is not 32 characters violates a check).
    pub async fn put_ssh_recording(&self, r: &SshRecording) -> Result<bool, StoreError> {
        let sql = concat!(
            "INSERT INTO ssh_recordings (",
            ssh_recording_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) ",
            "ON CONFLICT (id) DO UPDATE SET ended_ms = excluded.ended_ms, ",
            "size_bytes = excluded.size_bytes, failure = excluded.failure, ",
            "received_ms = excluded.received_ms ",
            "WHERE ssh_recordings.node_id = excluded.node_id"
        );
        write_tx!(&self.inner, |conn, _attempt| {
            let done = sqlx::query(sql)
                .bind(&r.id)
                .bind(r.node.map(|n| n.0))
                .bind(&r.node_name)
                .bind(&r.src_user)
                .bind(&r.src_node)
                .bind(&r.src_addr)
                .bind(&r.ssh_user)
                .bind(&r.local_user)
                .bind(&r.kind)
                .bind(r.command.as_deref())
                .bind(rows::int_flag(r.input))
                .bind(r.started.0)
                .bind(r.ended.map(|t| t.0))
                .bind(r.size_bytes)
                .bind(r.failure.as_deref())
                .bind(r.received.0)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Returns the recording `id`, if stored.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn ssh_recording(&self, id: &str) -> Result<Option<SshRecording>, StoreError> {
        let sql = concat!(
            "SELECT ",
            ssh_recording_columns!(),
            " FROM ssh_recordings WHERE id = $1"
        );
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(&self.inner.pool)
            .await?;
        row.as_ref().map(rows::ssh_recording).transpose()
    }

    /// Lists recordings newest first (by start, then id): at most
    /// `page.limit`, those after the cursor `page.before` (the last row of
    /// the previous page) when given.
    ///
    /// # Errors
    /// [`StoreError::Db`], [`StoreError::Corrupt`].
    pub async fn list_ssh_recordings(
        &self,
        page: &SshRecordingPage,
    ) -> Result<Vec<SshRecording>, StoreError> {
        let limit = i64::from(page.limit);
        let rows = match &page.before {
            None => {
                let sql = concat!(
                    "SELECT ",
                    ssh_recording_columns!(),
                    " FROM ssh_recordings ORDER BY started_ms DESC, id DESC LIMIT $1"
                );
                sqlx::query(sql)
                    .bind(limit)
                    .fetch_all(&self.inner.pool)
                    .await?
            }
            Some((started, id)) => {
                let sql = concat!(
                    "SELECT ",
                    ssh_recording_columns!(),
                    " FROM ssh_recordings WHERE started_ms < $1 OR (started_ms = $1 AND id < $2) ",
                    "ORDER BY started_ms DESC, id DESC LIMIT $3"
                );
                sqlx::query(sql)
                    .bind(started.0)
                    .bind(id)
                    .bind(limit)
                    .fetch_all(&self.inner.pool)
                    .await?
            }
        };
        rows.iter().map(rows::ssh_recording).collect()
    }
}
