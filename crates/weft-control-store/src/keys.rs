//! Pre-auth keys and API keys. Only the SHA-256 of a key's secret is stored;
//! the full key text is returned once, by the `create_*` call.

use sqlx::{AnyConnection, Row as _};

use crate::UnixMillis;
use crate::db::write_tx;
use crate::error::is_unique_violation;
use crate::rows::{self, api_key_columns, int_flag, preauth_columns, tags_json};
use crate::secret::{self, KeyKind, KeySecret};
use crate::{ApiKey, ApiKeyId, NewPreauthKey, PreauthKey, PreauthKeyId, Store, StoreError, UserId};

/// `last_used` of an API key is refreshed at most this often (ms), so that
/// verifying a key on every admin request does not write every time.
const API_KEY_TOUCH_INTERVAL_MS: i64 = 60_000;

impl Store {
    /// Creates a pre-auth key and returns it with its full text, which is
    /// shown only this once.
    ///
    /// # Errors
    /// [`StoreError::KeyWithoutOwner`] if there is neither a user nor a tag;
    /// [`StoreError::UnknownUserId`].
    pub async fn create_preauth_key(
        &self,
        new: NewPreauthKey,
        now: UnixMillis,
    ) -> Result<(PreauthKey, KeySecret), StoreError> {
        if new.user.is_none() && new.tags.is_empty() {
            return Err(StoreError::KeyWithoutOwner);
        }
        let tags = tags_json(&new.tags);
        write_tx!(&self.inner, |conn, _attempt| {
            if let Some(user) = new.user {
                crate::users::user_by_id(conn, user).await?;
            }
            let generated = secret::generate(KeyKind::Auth)?;
            let sql = concat!(
                "INSERT INTO preauth_keys (prefix, secret_sha256, user_id, reusable, ephemeral, ",
                "tags, node_key_lifetime_ms, created_ms, expires_ms, used_count) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0) RETURNING ",
                preauth_columns!()
            );
            let row = sqlx::query(sql)
                .bind(&generated.prefix)
                .bind(&generated.hash)
                .bind(new.user.map(|u| u.0))
                .bind(int_flag(new.reusable))
                .bind(int_flag(new.ephemeral))
                .bind(&tags)
                .bind(new.node_key_lifetime.to_column())
                .bind(now.0)
                .bind(new.expires.0)
                .fetch_one(&mut *conn)
                .await
                .map_err(prefix_clash)?;
            Ok((rows::preauth_key(&row)?, generated.text))
        })
    }

    /// Returns the pre-auth key with this id.
    ///
    /// # Errors
    /// [`StoreError::UnknownPreauthKeyId`].
    pub async fn preauth_key(&self, id: PreauthKeyId) -> Result<PreauthKey, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        preauth_key_by_id(&mut conn, id).await
    }

    /// Returns the pre-auth keys, all or one user's, by id.
    ///
    /// # Errors
    /// [`StoreError::UnknownUserId`] if `user` does not exist.
    pub async fn list_preauth_keys(
        &self,
        user: Option<UserId>,
    ) -> Result<Vec<PreauthKey>, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        let all = match user {
            Some(u) => {
                crate::users::user_by_id(&mut conn, u).await?;
                let sql = concat!(
                    "SELECT ",
                    preauth_columns!(),
                    " FROM preauth_keys WHERE user_id = $1 ORDER BY id"
                );
                sqlx::query(sql).bind(u.0).fetch_all(&mut *conn).await?
            }
            None => {
                let sql = concat!(
                    "SELECT ",
                    preauth_columns!(),
                    " FROM preauth_keys ORDER BY id"
                );
                sqlx::query(sql).fetch_all(&mut *conn).await?
            }
        };
        all.iter().map(rows::preauth_key).collect()
    }

    /// Revokes a pre-auth key: it is refused from now on. Nodes registered
    /// with it stay. Revoking twice keeps the first time.
    ///
    /// # Errors
    /// [`StoreError::UnknownPreauthKeyId`].
    pub async fn expire_preauth_key(
        &self,
        id: PreauthKeyId,
        now: UnixMillis,
    ) -> Result<PreauthKey, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE preauth_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2 ",
                "RETURNING ",
                preauth_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            rows::preauth_key(&row.ok_or(StoreError::UnknownPreauthKeyId(id))?)
        })
    }

    /// Checks a pre-auth key's text without using it up: returns the key if a
    /// registration with it would be accepted at `now`.
    ///
    /// # Errors
    /// [`StoreError::MalformedKey`], [`StoreError::UnknownPreauthKey`],
    /// [`StoreError::PreauthKeyRevoked`], [`StoreError::PreauthKeyExpired`],
    /// [`StoreError::PreauthKeyUsed`].
    pub async fn validate_preauth_key(
        &self,
        text: &str,
        now: UnixMillis,
    ) -> Result<PreauthKey, StoreError> {
        let (prefix, hash) = secret::parse(KeyKind::Auth, text)?;
        let sql = concat!(
            "SELECT ",
            preauth_columns!(),
            ", secret_sha256 FROM preauth_keys WHERE prefix = $1"
        );
        let row = sqlx::query(sql)
            .bind(&prefix)
            .fetch_optional(&self.inner.pool)
            .await?;
        let unknown = || StoreError::UnknownPreauthKey(prefix.clone());
        let row = row.ok_or_else(unknown)?;
        if !secret::hashes_match(&row.try_get::<String, _>("secret_sha256")?, &hash) {
            return Err(unknown());
        }
        let key = rows::preauth_key(&row)?;
        if key.revoked.is_some() {
            return Err(StoreError::PreauthKeyRevoked(key.prefix));
        }
        if now >= key.expires {
            return Err(StoreError::PreauthKeyExpired(key.prefix));
        }
        if !key.reusable && key.used_count > 0 {
            return Err(StoreError::PreauthKeyUsed(key.prefix));
        }
        Ok(key)
    }

    /// Creates an API key and returns it with its full text, which is shown
    /// only this once. `expires = None` makes a key that never expires.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn create_api_key(
        &self,
        description: &str,
        expires: Option<UnixMillis>,
        now: UnixMillis,
    ) -> Result<(ApiKey, KeySecret), StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let generated = secret::generate(KeyKind::Api)?;
            let sql = concat!(
                "INSERT INTO api_keys (prefix, secret_sha256, description, created_ms, expires_ms) ",
                "VALUES ($1, $2, $3, $4, $5) RETURNING ",
                api_key_columns!()
            );
            let row = sqlx::query(sql)
                .bind(&generated.prefix)
                .bind(&generated.hash)
                .bind(description)
                .bind(now.0)
                .bind(expires.map(|t| t.0))
                .fetch_one(&mut *conn)
                .await
                .map_err(prefix_clash)?;
            Ok((rows::api_key(&row)?, generated.text))
        })
    }

    /// Returns every API key, by id.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let sql = concat!("SELECT ", api_key_columns!(), " FROM api_keys ORDER BY id");
        let all = sqlx::query(sql).fetch_all(&self.inner.pool).await?;
        all.iter().map(rows::api_key).collect()
    }

    /// Revokes an API key. Revoking twice keeps the first time.
    ///
    /// # Errors
    /// [`StoreError::UnknownApiKeyId`].
    pub async fn expire_api_key(
        &self,
        id: ApiKeyId,
        now: UnixMillis,
    ) -> Result<ApiKey, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE id = $2 RETURNING ",
                api_key_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
            rows::api_key(&row.ok_or(StoreError::UnknownApiKeyId(id))?)
        })
    }

    /// Checks an API key's text and returns the key if it is accepted at
    /// `now`. Refreshes `last_used` (at most once a minute).
    ///
    /// # Errors
    /// [`StoreError::MalformedKey`], [`StoreError::UnknownApiKey`] (unknown
    /// prefix or wrong secret), [`StoreError::ApiKeyExpired`].
    pub async fn verify_api_key(&self, text: &str, now: UnixMillis) -> Result<ApiKey, StoreError> {
        let (prefix, hash) = secret::parse(KeyKind::Api, text)?;
        let sql = concat!(
            "SELECT ",
            api_key_columns!(),
            ", secret_sha256 FROM api_keys WHERE prefix = $1"
        );
        let row = sqlx::query(sql)
            .bind(&prefix)
            .fetch_optional(&self.inner.pool)
            .await?;
        let unknown = || StoreError::UnknownApiKey(prefix.clone());
        let row = row.ok_or_else(unknown)?;
        if !secret::hashes_match(&row.try_get::<String, _>("secret_sha256")?, &hash) {
            return Err(unknown());
        }
        let mut key = rows::api_key(&row)?;
        if key.revoked.is_some() || key.expires.is_some_and(|e| now >= e) {
            return Err(StoreError::ApiKeyExpired(key.prefix));
        }
        if key
            .last_used
            .is_none_or(|t| now.0.saturating_sub(t.0) >= API_KEY_TOUCH_INTERVAL_MS)
        {
            let id = key.id;
            write_tx!(&self.inner, |conn, _attempt| {
                sqlx::query("UPDATE api_keys SET last_used_ms = $1 WHERE id = $2")
                    .bind(now.0)
                    .bind(id.0)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })?;
            key.last_used = Some(now);
        }
        Ok(key)
    }
}

async fn preauth_key_by_id(
    conn: &mut AnyConnection,
    id: PreauthKeyId,
) -> Result<PreauthKey, StoreError> {
    let sql = concat!(
        "SELECT ",
        preauth_columns!(),
        " FROM preauth_keys WHERE id = $1"
    );
    let row = sqlx::query(sql)
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await?;
    rows::preauth_key(&row.ok_or(StoreError::UnknownPreauthKeyId(id))?)
}

/// Two random 48-bit prefixes colliding is a lost race like any other: retry
/// with a new key.
fn prefix_clash(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Contention {
            what: "key prefix".to_owned(),
            attempts: 1,
        }
    } else {
        e.into()
    }
}
