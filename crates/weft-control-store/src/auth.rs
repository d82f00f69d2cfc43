//! Interactive logins ("auth requests"): a node without a key asks to
//! register, the server shows a URL naming the request, and a user or admin
//! approves it. Approval registers the node in the same transaction that
//! marks the request approved, so the two can never disagree.

use sqlx::AnyConnection;
use weft_types::MachinePublic;

use crate::UnixMillis;
use crate::db::write_tx;
use crate::register::{Authorizer, authorize};
use crate::rows::{self, auth_request_columns, endpoints_json};
use crate::secret;
use crate::{
    AuthRequest, AuthRequestState, NewAuthRequest, RegisterAuth, RegisterNode, Registered, Store,
    StoreError,
};

impl Store {
    /// Records a pending login and returns it; `auth_id` is 32 random hex
    /// digits, unguessable, for the login URL.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn create_auth_request(
        &self,
        new: NewAuthRequest,
        now: UnixMillis,
    ) -> Result<AuthRequest, StoreError> {
        let r = &new.register;
        let host_info = r.host_info.to_string();
        let endpoints = endpoints_json(&r.endpoints);
        write_tx!(&self.inner, |conn, _attempt| {
            let auth_id = secret::random_hex(16)?;
            let sql = concat!(
                "INSERT INTO auth_requests (auth_id, machine_key, node_key, disco_key, hostname, ",
                "host_info, endpoints, created_ms, expires_ms, state) ",
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending') RETURNING ",
                auth_request_columns!()
            );
            let row = sqlx::query(sql)
                .bind(auth_id)
                .bind(r.machine_key.to_string())
                .bind(r.node_key.to_string())
                .bind(r.disco_key.map(|k| k.to_string()))
                .bind(&r.hostname)
                .bind(&host_info)
                .bind(&endpoints)
                .bind(now.0)
                .bind(new.expires.0)
                .fetch_one(&mut *conn)
                .await?;
            Ok(rows::auth_request(&row)?.0)
        })
    }

    /// Returns the login with this id.
    ///
    /// # Errors
    /// [`StoreError::UnknownAuthRequest`].
    pub async fn auth_request(&self, auth_id: &str) -> Result<AuthRequest, StoreError> {
        let mut conn = self.inner.pool.acquire().await?;
        Ok(auth_request_by_id(&mut conn, auth_id).await?.0)
    }

    /// Returns the newest login of this machine that is still pending and
    /// unexpired at `now`, so a client that asks again gets the same URL.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn pending_auth_request_for(
        &self,
        machine_key: &MachinePublic,
        now: UnixMillis,
    ) -> Result<Option<AuthRequest>, StoreError> {
        let sql = concat!(
            "SELECT ",
            auth_request_columns!(),
            " FROM auth_requests WHERE machine_key = $1 AND state = 'pending' ",
            "AND expires_ms > $2 ORDER BY created_ms DESC, auth_id LIMIT 1"
        );
        let row = sqlx::query(sql)
            .bind(machine_key.to_string())
            .bind(now.0)
            .fetch_optional(&self.inner.pool)
            .await?;
        Ok(row
            .as_ref()
            .map(rows::auth_request)
            .transpose()?
            .map(|(r, _)| r))
    }

    /// Returns how many logins are pending and unexpired at `now` (what the
    /// server's cap on pending logins counts).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn count_pending_auth_requests(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM auth_requests WHERE state = 'pending' AND expires_ms > $1",
        )
        .bind(now.0)
        .fetch_one(&self.inner.pool)
        .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes a login that is still pending (a machine that starts a new
    /// login replaces its old one). Returns whether one was deleted; an
    /// approved or rejected login is kept.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn delete_pending_auth_request(&self, auth_id: &str) -> Result<bool, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let done =
                sqlx::query("DELETE FROM auth_requests WHERE auth_id = $1 AND state = 'pending'")
                    .bind(auth_id)
                    .execute(&mut *conn)
                    .await?;
            Ok(done.rows_affected() > 0)
        })
    }

    /// Approves a pending login: registers the node it asked for under
    /// `approval` (normally [`RegisterAuth::User`]) and records the approving
    /// user and the node, in one transaction.
    ///
    /// # Errors
    /// [`StoreError::UnknownAuthRequest`], [`StoreError::AuthRequestExpired`],
    /// [`StoreError::AuthRequestCompleted`], and every error of
    /// [`Store::register_node`].
    pub async fn complete_auth_request(
        &self,
        auth_id: &str,
        approval: RegisterAuth<'_>,
        now: UnixMillis,
    ) -> Result<(AuthRequest, Registered), StoreError> {
        let authorizer = Authorizer::parse(approval)?;
        write_tx!(&self.inner, |conn, attempt| {
            let (req, endpoints) = pending(conn, auth_id, now).await?;
            let grant = authorize(conn, &authorizer, now).await?;
            let register = RegisterNode {
                machine_key: req.machine_key,
                node_key: req.node_key,
                disco_key: req.disco_key,
                hostname: req.hostname.clone(),
                host_info: req.host_info.clone(),
                endpoints,
            };
            let registered = self
                .register_in(conn, &register, &grant, now, attempt)
                .await?;
            let approver = match &authorizer {
                Authorizer::User { user, .. } => Some(*user),
                Authorizer::Key { .. } => registered.node.registered_by,
            };
            let sql = concat!(
                "UPDATE auth_requests SET state = 'approved', completed_ms = $1, user_id = $2, ",
                "node_id = $3 WHERE auth_id = $4 RETURNING ",
                auth_request_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(approver.map(|u| u.0))
                .bind(registered.node.id.0)
                .bind(auth_id)
                .fetch_one(&mut *conn)
                .await?;
            Ok((rows::auth_request(&row)?.0, registered))
        })
    }

    /// Rejects a pending login.
    ///
    /// # Errors
    /// [`StoreError::UnknownAuthRequest`], [`StoreError::AuthRequestExpired`],
    /// [`StoreError::AuthRequestCompleted`].
    pub async fn reject_auth_request(
        &self,
        auth_id: &str,
        now: UnixMillis,
    ) -> Result<AuthRequest, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            pending(conn, auth_id, now).await?;
            let sql = concat!(
                "UPDATE auth_requests SET state = 'rejected', completed_ms = $1 ",
                "WHERE auth_id = $2 RETURNING ",
                auth_request_columns!()
            );
            let row = sqlx::query(sql)
                .bind(now.0)
                .bind(auth_id)
                .fetch_one(&mut *conn)
                .await?;
            Ok(rows::auth_request(&row)?.0)
        })
    }

    /// Deletes logins whose time ran out at or before `now`, whatever their
    /// state (approved ones are already reflected in their node). Returns how
    /// many were deleted.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub async fn delete_expired_auth_requests(&self, now: UnixMillis) -> Result<u64, StoreError> {
        write_tx!(&self.inner, |conn, _attempt| {
            let done = sqlx::query("DELETE FROM auth_requests WHERE expires_ms <= $1")
                .bind(now.0)
                .execute(&mut *conn)
                .await?;
            Ok(done.rows_affected())
        })
    }
}

async fn auth_request_by_id(
    conn: &mut AnyConnection,
    auth_id: &str,
) -> Result<(AuthRequest, Vec<weft_types::Endpoint>), StoreError> {
    let sql = concat!(
        "SELECT ",
        auth_request_columns!(),
        " FROM auth_requests WHERE auth_id = $1"
    );
    let row = sqlx::query(sql)
        .bind(auth_id)
        .fetch_optional(&mut *conn)
        .await?;
    rows::auth_request(&row.ok_or_else(|| StoreError::UnknownAuthRequest(auth_id.to_owned()))?)
}

/// Reads a login that can still be approved or rejected.
async fn pending(
    conn: &mut AnyConnection,
    auth_id: &str,
    now: UnixMillis,
) -> Result<(AuthRequest, Vec<weft_types::Endpoint>), StoreError> {
    let (req, eps) = auth_request_by_id(conn, auth_id).await?;
    match req.state {
        AuthRequestState::Pending if now >= req.expires => {
            Err(StoreError::AuthRequestExpired(auth_id.to_owned()))
        }
        AuthRequestState::Pending => Ok((req, eps)),
        done => Err(StoreError::AuthRequestCompleted(
            auth_id.to_owned(),
            done.as_str(),
        )),
    }
}
