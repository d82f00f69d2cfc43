//! Policy versions: every saved policy is kept; the highest id is current.
//! The store keeps the text verbatim and does not parse it: validation and
//! compilation belong to `weft-policy`, before `put_policy` is called.

use crate::UnixMillis;
use crate::db::write_tx;
use crate::rows::{self, policy_columns};
use crate::{PolicyVersion, PolicyVersionId, Store, StoreError};

impl Store {
    /// Stores a new policy version, which becomes current, and returns it.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn put_policy(
        &self,
        text: &str,
        author: &str,
        now: UnixMillis,
    ) -> Result<PolicyVersion, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "INSERT INTO policies (text, created_ms, author) VALUES ($1, $2, $3) RETURNING ",
                policy_columns!()
            );
            let row = sqlx::query(sql)
                .bind(text)
                .bind(now.0)
                .bind(author)
                .fetch_one(&mut *conn)
                .await?;
            rows::policy(&row)
        })
    }

    /// Returns the current policy, or `None` if none was ever stored.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn current_policy(&self) -> Result<Option<PolicyVersion>, StoreError> {
        let sql = concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies ORDER BY id DESC LIMIT 1"
        );
        let row = sqlx::query(sql).fetch_optional(&self.inner.pool).await?;
        row.as_ref().map(rows::policy).transpose()
    }

    /// Returns one policy version.
    ///
    /// # Errors
    /// [`StoreError::UnknownPolicyVersion`].
    pub async fn policy_version(&self, id: PolicyVersionId) -> Result<PolicyVersion, StoreError> {
        let sql = concat!("SELECT ", policy_columns!(), " FROM policies WHERE id = $1");
        let row = sqlx::query(sql)
            .bind(id.0)
            .fetch_optional(&self.inner.pool)
            .await?;
        rows::policy(&row.ok_or(StoreError::UnknownPolicyVersion(id))?)
    }

    /// Returns every policy version, newest first.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn list_policies(&self) -> Result<Vec<PolicyVersion>, StoreError> {
        let sql = concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies ORDER BY id DESC"
        );
        let all = sqlx::query(sql).fetch_all(&self.inner.pool).await?;
        all.iter().map(rows::policy).collect()
    }
}
