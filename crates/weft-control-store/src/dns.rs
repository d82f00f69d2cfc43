//! The tailnet's DNS settings: one current value, replaced whole. The store
//! keeps the value as given; validation (loops, name syntax, limits) belongs
//! to the server, before `put_dns_settings` is called.

use weft_types::netmap::DnsConfig;

use crate::db::write_tx;
use crate::rows::{self, dns_columns};
use crate::{DnsSettings, Store, StoreError, UnixMillis};

impl Store {
    /// Stores `config` as the tailnet's DNS settings, replacing the previous
    /// ones, and returns what was stored.
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] if `config` cannot be
    /// encoded (it always can: it holds only validated names and addresses).
    pub async fn put_dns_settings(
        &self,
        config: &DnsConfig,
        author: &str,
        now: UnixMillis,
    ) -> Result<DnsSettings, StoreError> {
        let json = serde_json::to_string(config).map_err(|e| StoreError::Corrupt {
            what: "dns_settings.config",
            detail: e.to_string(),
        })?;
        write_tx!(&self.inner, |conn, _attempt| {
            let sql = concat!(
                "INSERT INTO dns_settings (id, config, updated_ms, author) VALUES (1, $1, $2, $3) ",
                "ON CONFLICT (id) DO UPDATE SET config = excluded.config, ",
                "updated_ms = excluded.updated_ms, author = excluded.author RETURNING ",
                dns_columns!()
            );
            let row = sqlx::query(sql)
                .bind(&json)
                .bind(now.0)
                .bind(author)
                .fetch_one(&mut *conn)
                .await?;
            rows::dns_settings(&row)
        })
    }

    /// Returns the stored DNS settings, or `None` if none were ever stored
    /// (the server then uses its defaults).
    ///
    /// # Errors
    /// [`StoreError::Db`]; [`StoreError::Corrupt`] if the stored JSON does
    /// not parse.
    pub async fn dns_settings(&self) -> Result<Option<DnsSettings>, StoreError> {
        let sql = concat!("SELECT ", dns_columns!(), " FROM dns_settings WHERE id = 1");
        let row = sqlx::query(sql).fetch_optional(&self.inner.pool).await?;
        row.as_ref().map(rows::dns_settings).transpose()
    }
}
