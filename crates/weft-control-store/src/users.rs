//! Users: create, read, update, delete.

use std::collections::BTreeSet;

use sqlx::AnyConnection;

use crate::UnixMillis;
use crate::db::write_tx;
use crate::error::is_unique_violation;
use crate::rows::{self, user_columns};
use crate::{NewUser, Store, StoreError, User, UserId, UserPatch};

impl Store {
    /// Creates a user.
    ///
    /// # Errors
    /// [`StoreError::InvalidLoginName`], [`StoreError::DuplicateUser`].
    pub async fn create_user(&self, new: NewUser, now: UnixMillis) -> Result<User, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "INSERT INTO users (login_name, display_name, role, created_ms) \
                 VALUES ($1, $2, $3, $4) RETURNING ",
                user_columns!(),
                ""
            );
            match sqlx::query(sql)
                .bind(new.login_name.as_str())
                .bind(&new.display_name)
                .bind(new.role.as_str())
                .bind(now.0)
                .fetch_one(&mut *conn)
                .await
            {
                Ok(row) => rows::user(&row),
                Err(e) if is_unique_violation(&e) => {
                    Err(StoreError::DuplicateUser(new.login_name.clone()))
                }
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Returns the user with this id.
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`].
    pub async fn user(&self, id: UserId) -> Result<User, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        user_by_id(&mut conn, id).await
    }

    /// Returns the user with this login name.
    ///
    /// # Errors
    /// [`StoreError::UnknownUser`].
    pub async fn user_by_login(&self, login_name: &str) -> Result<User, StoreError> {
        let sql = concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE login_name = $1"
        );
        let row = sqlx::query(sql)
            .bind(login_name)
            .fetch_optional(&self.inner.pool)
            .await?;
        let row = row.ok_or_else(|| StoreError::UnknownUser(login_name.to_owned()))?;
        rows::user(&row)
    }

    /// Returns every user, by id.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users ORDER BY id");
        let all = sqlx::query(sql).fetch_all(&self.inner.pool).await?;
        all.iter().map(rows::user).collect()
    }

    /// Changes a user's login name, display name or role.
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`], [`StoreError::InvalidLoginName`],
    /// [`StoreError::DuplicateUser`].
    pub async fn update_user(&self, id: UserId, patch: UserPatch) -> Result<User, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let current = user_by_id(conn, id).await?;
            let login = patch.login_name.clone().unwrap_or(current.login_name);
            let display = patch.display_name.clone().unwrap_or(current.display_name);
            let role = patch.role.unwrap_or(current.role);
            let sql = concat!(
                "UPDATE users SET login_name = $1, display_name = $2, role = $3 \
                 WHERE id = $4 RETURNING ",
                user_columns!(),
                ""
            );
            match sqlx::query(sql)
                .bind(login.as_str())
                .bind(&display)
                .bind(role.as_str())
                .bind(id.0)
                .fetch_one(&mut *conn)
                .await
            {
                Ok(row) => rows::user(&row),
                Err(e) if is_unique_violation(&e) => Err(StoreError::DuplicateUser(login)),
                Err(e) => Err(e.into()),
            }
        })
    }

    /// Records a login of user `id` through the identity provider: the
    /// groups it put them in (replacing the previous ones), when they
    /// authenticated there, and the display name it gave (unless empty).
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`].
    pub async fn record_idp_login(
        &self,
        id: UserId,
        display_name: &str,
        groups: &BTreeSet<String>,
        authenticated: UnixMillis,
    ) -> Result<User, StoreError> {
        let groups = serde_json::to_string(groups).unwrap_or_else(|_| "[]".to_owned());
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE users SET idp_groups = $1, idp_auth_ms = $2, ",
                "display_name = CASE WHEN $3 = '' THEN display_name ELSE $4 END ",
                "WHERE id = $5 RETURNING ",
                user_columns!()
            );
            let row = sqlx::query(sql)
                .bind(&groups)
                .bind(authenticated.0)
                .bind(display_name)
                .bind(display_name)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            match row {
                Some(row) => rows::user(&row),
                None => Err(StoreError::UnknownUserId(id)),
            }
        })
    }

    /// Deletes a user and their pre-auth keys. Nodes they registered but do
    /// not own (tagged nodes) stay; nodes they own must be deleted first.
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`], [`StoreError::UserHasNodes`].
    pub async fn delete_user(&self, id: UserId) -> Result<User, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let user = user_by_id(conn, id).await?;
            let owned: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE user_id = $1")
                .bind(id.0)
                .fetch_one(&mut *conn)
                .await?;
            if owned > 0 {
                return Err(StoreError::UserHasNodes {
                    login: user.login_name,
                    count: owned,
                });
            }
            sqlx::query("DELETE FROM users WHERE id = $1")
                .bind(id.0)
                .execute(&mut *conn)
                .await?;
            Ok(user)
        })
    }
}

/// Reads a user inside a transaction.
pub(crate) async fn user_by_id(conn: &mut AnyConnection, id: UserId) -> Result<User, StoreError> {
    let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1");
    let row = sqlx::query(sql)
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?;
    rows::user(&row.ok_or(StoreError::UnknownUserId(id))?)
}
