//! Administration: one service layer ([`Admin`]) used by both doors to it,
//! the admin socket (`<state-dir>/admin.sock`, root only) and the REST API
//! (`/api/v1`, `Authorization: Bearer <api key>`), so every operation exists
//! in both. The `weft-control` CLI talks to either with [`client`].
//!
//! Every change is committed to the database first and then handed to the
//! coordinator, which sends the deltas. Errors name what was wrong and, for
//! unknown things, the id or name that was not found.

pub(crate) mod api;
pub mod client;
pub(crate) mod dns;
mod recordings;
pub(crate) mod socket;
mod ssh;
pub mod types;

/// Every admin route as `(METHOD, path)` under `/api/v1` (docs/openapi.yaml documents them).
pub use api::ROUTES;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use weft_control_store::{
    ApiKey, KeyLifetime, LoginName, NewPreauthKey as StoreNewKey, NewUser as StoreNewUser,
    Node as StoreNode, PreauthKey, Role, StoreError, User,
};
use weft_policy::Policy;
use weft_types::{DnsLabel, DnsName, NodeId, Tag, UnixMillis, UserId};

use crate::auth::CompleteError;
use crate::ctx::Ctx;
use crate::login::{self, Approval};
use crate::state::coordinator::Msg;
use types::*;

/// The default lifetime of a pre-auth key.
pub const DEFAULT_PREAUTH_KEY_EXPIRATION: Duration = Duration::from_secs(60 * 60);

/// Node keys per `POST /api/v1/relay/verify`, at most (what
/// `weft_relay::RestAdmission` sends per request).
pub const MAX_RELAY_VERIFY_KEYS: usize = 1000;
/// What policy errors name as their source when the caller gave no file
/// name (a REST client sending the text itself): not a file that exists.
pub const UNNAMED_POLICY: &str = "policy";

/// An admin operation that failed: an HTTP status, a code for programs and
/// a message for people.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AdminError {
    /// HTTP status.
    pub status: u16,
    /// Machine-readable code (`not_found`, `conflict`, `invalid`, …).
    pub code: &'static str,
    /// What went wrong and what to do.
    pub message: String,
}

impl AdminError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: status.as_u16(),
            code,
            message: message.into(),
        }
    }

    /// A 400 with `message`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<StoreError> for AdminError {
    fn from(e: StoreError) -> Self {
        use StoreError as E;
        let msg = e.to_string();
        match e {
            E::UnknownUser(_)
            | E::UnknownUserId(_)
            | E::UnknownNode(_)
            | E::UnknownNodeKey(_)
            | E::UnknownMachineKey(_)
            | E::UnknownNodeAddress(_)
            | E::UnknownPreauthKeyId(_)
            | E::UnknownApiKeyId(_)
            | E::UnknownAuthRequest(_)
            | E::UnknownPolicyVersion(_) => Self::not_found(msg),
            E::DuplicateUser(_)
            | E::NameTaken(_)
            | E::DuplicateNodeKey(_)
            | E::UserHasNodes { .. }
            | E::NotNodeOwner { .. }
            | E::AuthRequestCompleted(..) => Self::new(StatusCode::CONFLICT, "conflict", msg),
            E::AuthRequestExpired(_) => Self::new(StatusCode::GONE, "expired", msg),
            E::MalformedKey { .. }
            | E::KeyWithoutOwner
            | E::NodeWithoutOwner(_)
            | E::EmptySshApproval { .. }
            | E::UnknownPreauthKey(_)
            | E::UnknownApiKey(_)
            | E::PreauthKeyExpired(_)
            | E::PreauthKeyRevoked(_)
            | E::PreauthKeyUsed(_)
            | E::ApiKeyExpired(_) => Self::invalid(msg),
            E::AddressPoolExhausted(_) | E::Contention { .. } => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", msg)
            }
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", msg),
        }
    }
}

impl From<CompleteError> for AdminError {
    fn from(e: CompleteError) -> Self {
        let e = match e {
            CompleteError::Store(store) => return store.into(),
            other => other,
        };
        let code = match &e {
            CompleteError::UnknownLogin(_) | CompleteError::UnknownUser(_) => "not_found",
            CompleteError::InvalidLogin(_) => "invalid",
            CompleteError::LoginExpired(_) | CompleteError::CheckExpired => "expired",
            CompleteError::AlreadyDecided(..) => "conflict",
            CompleteError::WrongUser { .. } | CompleteError::TagsNotPermitted { .. } => "forbidden",
            CompleteError::Store(_) => "internal",
        };
        Self {
            status: e.status(),
            code,
            message: e.to_string(),
        }
    }
}

/// The admin service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    ctx: Arc<Ctx>,
}

impl Admin {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }

    fn now(&self) -> UnixMillis {
        self.ctx.clock.now()
    }

    // --- users -------------------------------------------------------------------------

    /// Creates a user.
    ///
    /// # Errors
    /// `invalid` login name or role, `conflict` if it exists.
    pub async fn create_user(&self, req: NewUser) -> Result<UserView, AdminError> {
        let login: LoginName = req.login_name.parse().map_err(|_| {
            AdminError::invalid(format!(
                "invalid login name {:?}: use 1-254 characters without spaces, e.g. alice or alice@example.com",
                req.login_name
            ))
        })?;
        let role = parse_role(req.role.as_deref())?;
        let user = self
            .ctx
            .store
            .create_user(
                StoreNewUser {
                    login_name: login,
                    display_name: req.display_name.unwrap_or_default(),
                    role,
                },
                self.now(),
            )
            .await?;
        self.ctx.coord.send(Msg::UserUpsert(Box::new(user.clone())));
        // Policy checks and tag permissions read the published snapshot.
        let _ = self.ctx.coord.flush().await;
        Ok(user_view(&user))
    }

    /// Lists users by id.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_users(&self) -> Result<Vec<UserView>, AdminError> {
        Ok(self
            .ctx
            .store
            .list_users()
            .await?
            .iter()
            .map(user_view)
            .collect())
    }

    /// Deletes a user that owns no nodes.
    ///
    /// # Errors
    /// `not_found`, `conflict` while it owns nodes.
    pub async fn delete_user(&self, login: &str) -> Result<UserView, AdminError> {
        let user = self.ctx.store.user_by_login(login).await?;
        let user = self.ctx.store.delete_user(user.id).await.map_err(|e| match e {
            StoreError::UserHasNodes { login, count } => AdminError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("user {login:?} still owns {count} node(s); delete them or move them to tags first (weft-control nodes list)"),
            ),
            other => other.into(),
        })?;
        self.ctx.coord.send(Msg::UserDeleted(user.id));
        let _ = self.ctx.coord.flush().await;
        Ok(user_view(&user))
    }

    // --- pre-auth keys ---------------------------------------------------------------------

    /// Creates a pre-auth key; the answer holds the secret, shown only here.
    ///
    /// # Errors
    /// `invalid` tags, unknown user, a key with neither user nor tags.
    pub async fn create_preauth_key(
        &self,
        req: NewPreauthKey,
    ) -> Result<CreatedPreauthKey, AdminError> {
        let user = match &req.user {
            Some(login) => Some(self.ctx.store.user_by_login(login).await?),
            None => None,
        };
        let tags = parse_tags(&req.tags)?;
        if user.is_none() && tags.is_empty() {
            return Err(AdminError::invalid(
                "a pre-auth key needs a user (--user) or at least one tag (--tags tag:x)",
            ));
        }
        let now = self.now();
        let expiration = req
            .expiration_ms
            .map_or(DEFAULT_PREAUTH_KEY_EXPIRATION, Duration::from_millis);
        let lifetime = match req.node_key_expiry_ms {
            None => KeyLifetime::ServerDefault,
            Some(0) => KeyLifetime::Never,
            Some(ms) => KeyLifetime::After(Duration::from_millis(ms)),
        };
        let (key, secret) = self
            .ctx
            .store
            .create_preauth_key(
                StoreNewKey {
                    user: user.as_ref().map(|u| u.id),
                    reusable: req.reusable,
                    ephemeral: req.ephemeral,
                    tags,
                    expires: now.saturating_add(expiration),
                    node_key_lifetime: lifetime,
                },
                now,
            )
            .await?;
        Ok(CreatedPreauthKey {
            key: preauth_view(&key, user.as_ref().map(|u| u.login_name.to_string()), now),
            secret: secret.expose().to_owned(),
        })
    }

    /// Lists pre-auth keys, optionally of one user.
    ///
    /// # Errors
    /// `not_found` for an unknown user.
    pub async fn list_preauth_keys(
        &self,
        user: Option<&str>,
    ) -> Result<Vec<PreauthKeyView>, AdminError> {
        let uid = match user {
            Some(login) => Some(self.ctx.store.user_by_login(login).await?.id),
            None => None,
        };
        let logins = self.logins().await?;
        let now = self.now();
        Ok(self
            .ctx
            .store
            .list_preauth_keys(uid)
            .await?
            .iter()
            .map(|k| preauth_view(k, k.user.and_then(|u| logins.get(&u).cloned()), now))
            .collect())
    }

    /// Expires (revokes) a pre-auth key now.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn expire_preauth_key(&self, id: i64) -> Result<PreauthKeyView, AdminError> {
        let now = self.now();
        let k = self
            .ctx
            .store
            .expire_preauth_key(weft_control_store::PreauthKeyId(id), now)
            .await?;
        let logins = self.logins().await?;
        Ok(preauth_view(
            &k,
            k.user.and_then(|u| logins.get(&u).cloned()),
            now,
        ))
    }

    // --- nodes --------------------------------------------------------------------------

    /// Lists nodes by id, with their live state.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, AdminError> {
        let logins = self.logins().await?;
        let now = self.now();
        let snap = self.ctx.coord.snapshot();
        Ok(self
            .ctx
            .store
            .list_nodes()
            .await?
            .iter()
            .map(|n| self.node_view(n, &logins, now, &snap))
            .collect())
    }

    /// Returns one node.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn node(&self, id: i64) -> Result<NodeView, AdminError> {
        let n = self.ctx.store.node(NodeId(id)).await?;
        self.view_one(&n).await
    }

    /// Approves an interactive login: registers its node for `user`. If
    /// `auth_id` is a pending SSH check ([`crate::check`]), approves that
    /// instead (only as the user it is for) and returns its source node.
    /// The same decision an authenticator makes (`login.rs`).
    ///
    /// # Errors
    /// `not_found` (login or user), `expired`, `conflict` if already decided,
    /// `forbidden` for an SSH check of another user or tags the user may not
    /// apply.
    pub async fn approve_login(&self, auth_id: &str, user: &str) -> Result<NodeView, AdminError> {
        self.approve(auth_id, user).await.map(|a| a.node)
    }

    /// Approves like [`Admin::approve_login`] and also says what an SSH
    /// check let through.
    ///
    /// # Errors
    /// As [`Admin::approve_login`].
    pub async fn approve(&self, auth_id: &str, user: &str) -> Result<ApprovalView, AdminError> {
        match login::approve(&self.ctx, auth_id, user).await? {
            Approval::Device { node, .. } => Ok(ApprovalView {
                node: self.view_one(&node).await?,
                ssh_check: None,
            }),
            Approval::Check(c) => Ok(ApprovalView {
                node: self.node(c.src_node.0).await?,
                ssh_check: Some(SshCheckApproved {
                    login: c.info.login,
                    src_name: c.info.src_name,
                    dst_name: c.info.dst_name,
                    ssh_user: c.info.ssh_user,
                    local_user: c.info.local_user,
                    period_ms: u64::try_from(c.period.as_millis()).unwrap_or(u64::MAX),
                }),
            }),
        }
    }

    /// Declines an interactive login or an SSH check.
    ///
    /// # Errors
    /// `not_found`, `expired`, `conflict` if already decided.
    pub async fn reject_login(&self, auth_id: &str) -> Result<(), AdminError> {
        Ok(login::deny(&self.ctx, auth_id).await?)
    }

    /// Expires a node's key now: peers see it expired, its stream ends.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn expire_node(&self, id: i64) -> Result<NodeView, AdminError> {
        let n = self.ctx.store.expire_node(NodeId(id), self.now()).await?;
        self.revoking(n).await
    }

    /// Deletes a node.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn delete_node(&self, id: i64) -> Result<NodeView, AdminError> {
        let n = self.ctx.store.delete_node(NodeId(id)).await?;
        self.ctx.coord.send(Msg::NodeDeleted(n.id));
        // Published at once: peers and relays drop the node without waiting
        // for the batch delay.
        let _ = self.ctx.coord.flush().await;
        self.view_one_offline(&n).await
    }

    /// Returns the subset of `keys` that may use a relay now: current node
    /// keys of authorized nodes that are not expired (what the embedded
    /// relay admits too).
    ///
    /// # Errors
    /// `invalid` for more than [`MAX_RELAY_VERIFY_KEYS`] keys.
    pub fn relay_verify(
        &self,
        keys: &[weft_types::NodePublic],
    ) -> Result<weft_relay::VerifyResponse, AdminError> {
        if keys.len() > MAX_RELAY_VERIFY_KEYS {
            return Err(AdminError::invalid(format!(
                "{} node keys asked at once; at most {MAX_RELAY_VERIFY_KEYS} per request",
                keys.len()
            )));
        }
        Ok(weft_relay::VerifyResponse {
            allowed: self.ctx.relay_keys.allowed(keys).into_iter().collect(),
        })
    }

    /// Returns the relay map nodes are given.
    ///
    /// # Errors
    /// `internal` if the published map cannot be read back (a bug).
    pub fn relay_map(&self) -> Result<RelayMapConfig, AdminError> {
        let snap = self.ctx.coord.snapshot();
        let map: weft_types::netmap::RelayMap = serde_json::from_slice(snap.relay_map.as_bytes())
            .map_err(|e| {
            AdminError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        Ok(RelayMapConfig {
            regions: map.regions.into_values().collect(),
        })
    }

    /// Replaces the relay map (stored in the state directory, replacing the
    /// default one) and sends it to every streamed node.
    ///
    /// # Errors
    /// `invalid` with what is wrong; `internal` if it cannot be stored.
    pub async fn set_relay_map(&self, m: RelayMapConfig) -> Result<RelayMapConfig, AdminError> {
        let map = crate::relay::validate_map(m.regions).map_err(AdminError::invalid)?;
        let path = self.ctx.config.state_dir.join(crate::relay::RELAY_MAP_FILE);
        crate::relay::store_map(&path, &map).map_err(|e| {
            AdminError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("cannot store the relay map in {}: {e}", path.display()),
            )
        })?;
        self.ctx.coord.send(Msg::RelayMap(Box::new(map)));
        let _ = self.ctx.coord.flush().await;
        self.relay_map()
    }

    // --- DNS -----------------------------------------------------------------------------

    /// Returns the DNS settings nodes are given.
    ///
    /// # Errors
    /// Database errors (a stored value that does not parse among them).
    pub async fn dns(&self) -> Result<DnsView, AdminError> {
        let domain = &self.ctx.config.domain;
        Ok(match self.ctx.store.dns_settings().await? {
            Some(s) => dns::view(&s.config, domain, Some(s.updated.0), Some(s.author)),
            None => dns::view(&dns::default_config(), domain, None, None),
        })
    }

    /// Replaces the DNS settings whole (`PUT /dns`).
    ///
    /// # Errors
    /// `invalid` with a one-line reason; nothing changes then.
    pub async fn put_dns(&self, b: &DnsSettingsBody, author: &str) -> Result<DnsView, AdminError> {
        let _edit = self.ctx.dns_edit.lock().await;
        let config = dns::from_body(b, &self.dns_tailnet()).map_err(AdminError::invalid)?;
        self.publish_dns(&config, author).await
    }

    /// Changes the parts of the DNS settings `p` names (`PATCH /dns`).
    ///
    /// # Errors
    /// `invalid` with a one-line reason; nothing changes then.
    pub async fn patch_dns(&self, p: &DnsPatch, author: &str) -> Result<DnsView, AdminError> {
        let _edit = self.ctx.dns_edit.lock().await;
        let current = match self.ctx.store.dns_settings().await? {
            Some(s) => s.config,
            None => dns::default_config(),
        };
        let config =
            dns::apply_patch(&current, p, &self.dns_tailnet()).map_err(AdminError::invalid)?;
        self.publish_dns(&config, author).await
    }

    fn dns_tailnet(&self) -> dns::Tailnet {
        let pool = &self.ctx.store.config().pool;
        dns::Tailnet {
            domain: self.ctx.config.domain.clone(),
            pool_v4: pool.v4(),
            pool_v6: pool.v6(),
        }
    }

    /// Stores `config` and publishes it before returning: every streamed
    /// node has its `Delta::Dns` queued when the caller hears back.
    async fn publish_dns(
        &self,
        config: &weft_types::netmap::DnsConfig,
        author: &str,
    ) -> Result<DnsView, AdminError> {
        let s = self
            .ctx
            .store
            .put_dns_settings(config, author, self.now())
            .await?;
        tracing::info!(%author, magic_dns = config.magic_dns, "DNS settings replaced");
        self.ctx.coord.send(Msg::Dns(Box::new(s.config.clone())));
        let _ = self.ctx.coord.flush().await;
        Ok(dns::view(
            &s.config,
            &self.ctx.config.domain,
            Some(s.updated.0),
            Some(s.author),
        ))
    }

    /// Renames a node (its DNS label).
    ///
    /// # Errors
    /// `invalid` name, `not_found`, `conflict` if taken.
    pub async fn rename_node(&self, id: i64, name: &str) -> Result<NodeView, AdminError> {
        let label: DnsLabel = name.parse().map_err(|_| {
            AdminError::invalid(format!(
                "invalid name {name:?}: use 1-63 lowercase letters, digits and '-', not starting or ending with '-' (e.g. {})",
                DnsLabel::sanitize(name)
            ))
        })?;
        let n = self.ctx.store.rename_node(NodeId(id), &label).await?;
        self.changed(n).await
    }

    /// Replaces a node's tags (empty: back to its user). An admin may apply
    /// any tag the policy declares in `tagOwners`, and no other.
    ///
    /// # Errors
    /// `invalid` tags, `forbidden` for an undeclared tag, `not_found`.
    pub async fn set_node_tags(&self, id: i64, tags: &[String]) -> Result<NodeView, AdminError> {
        let tags = parse_tags(tags)?;
        let undeclared: Vec<&str> = {
            let snap = self.ctx.coord.snapshot();
            tags.iter()
                .map(Tag::as_str)
                .filter(|t| !snap.policy.policy.declares_tag(t))
                .collect()
        };
        if !undeclared.is_empty() {
            return Err(AdminError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{} not declared in the policy's tagOwners; declare it there first (weft-control policy set)",
                    undeclared.join(", ")
                ),
            ));
        }
        let n = self.ctx.store.set_node_tags(NodeId(id), &tags).await?;
        self.changed(n).await
    }

    /// Authorizes a node (device approval) or withdraws it.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn authorize_node(&self, id: i64, authorized: bool) -> Result<NodeView, AdminError> {
        let n = self
            .ctx
            .store
            .set_node_authorized(NodeId(id), authorized)
            .await?;
        if authorized {
            self.changed(n).await
        } else {
            self.revoking(n).await
        }
    }

    async fn changed(&self, n: StoreNode) -> Result<NodeView, AdminError> {
        self.ctx.coord.send(Msg::NodeUpsert(Box::new(n.clone())));
        self.view_one(&n).await
    }

    /// A change that takes access away (expiry, withdrawn approval):
    /// published at once, like a delete, so the relay refuses the key and
    /// peers drop the node before the call returns, not at the next batch.
    async fn revoking(&self, n: StoreNode) -> Result<NodeView, AdminError> {
        self.ctx.coord.send(Msg::NodeUpsert(Box::new(n.clone())));
        let _ = self.ctx.coord.flush().await;
        self.view_one(&n).await
    }

    // --- API keys -----------------------------------------------------------------------

    /// Creates an API key; the answer holds the secret, shown only here.
    ///
    /// # Errors
    /// Database errors.
    pub async fn create_api_key(&self, req: NewApiKey) -> Result<CreatedApiKey, AdminError> {
        let now = self.now();
        let expires = req
            .expiration_ms
            .map(|ms| now.saturating_add(Duration::from_millis(ms)));
        let (key, secret) = self
            .ctx
            .store
            .create_api_key(&req.description, expires, now)
            .await?;
        Ok(CreatedApiKey {
            key: api_key_view(&key, now),
            secret: secret.expose().to_owned(),
        })
    }

    /// Lists API keys.
    ///
    /// # Errors
    /// Database errors.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyView>, AdminError> {
        let now = self.now();
        Ok(self
            .ctx
            .store
            .list_api_keys()
            .await?
            .iter()
            .map(|k| api_key_view(k, now))
            .collect())
    }

    /// Expires an API key now.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn expire_api_key(&self, id: i64) -> Result<ApiKeyView, AdminError> {
        let now = self.now();
        let k = self
            .ctx
            .store
            .expire_api_key(weft_control_store::ApiKeyId(id), now)
            .await?;
        Ok(api_key_view(&k, now))
    }

    /// Checks an API key's text; returns a description of the caller.
    pub(crate) async fn verify_api_key(&self, text: &str) -> Result<String, AdminError> {
        match self.ctx.store.verify_api_key(text, self.now()).await {
            Ok(k) => Ok(format!("api key {}", k.prefix)),
            Err(
                e @ (StoreError::MalformedKey { .. }
                | StoreError::UnknownApiKey(_)
                | StoreError::ApiKeyExpired(_)),
            ) => Err(AdminError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{e}; create one with weft-control apikeys create on the server"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    // --- policy -------------------------------------------------------------------------

    /// Returns the policy in force.
    ///
    /// # Errors
    /// Database errors.
    pub async fn policy(&self) -> Result<PolicyView, AdminError> {
        Ok(match self.ctx.store.current_policy().await? {
            Some(p) => PolicyView {
                policy: p.text,
                version: Some(p.id.0),
                author: Some(p.author),
                created: Some(p.created.0),
            },
            None => PolicyView {
                policy: weft_policy::DEFAULT_POLICY.to_owned(),
                version: None,
                author: None,
                created: None,
            },
        })
    }

    /// Validates a policy and runs its tests against the live tailnet.
    /// Errors are located as `<name>:line:column`, `name` being the file
    /// the caller read it from ([`UNNAMED_POLICY`] when it says none).
    pub fn check_policy(&self, text: &str, name: Option<&str>) -> PolicyCheck {
        let policy = match Policy::parse_named(name.unwrap_or(UNNAMED_POLICY), text) {
            Ok(p) => p,
            Err(e) => {
                return PolicyCheck {
                    ok: false,
                    error: Some(e.to_string()),
                    report: None,
                    tests: None,
                };
            }
        };
        let snap = self.ctx.coord.snapshot();
        let report = policy.run_tests(&snap.policy.tailnet);
        PolicyCheck {
            ok: report.passed(),
            error: None,
            report: Some(report.to_string()),
            tests: serde_json::to_value(&report).ok(),
        }
    }

    /// Replaces the policy if it is valid and all its tests pass; otherwise
    /// the old policy stays in force.
    ///
    /// # Errors
    /// `invalid` with the parse error or the failed tests.
    pub async fn set_policy(
        &self,
        text: &str,
        name: Option<&str>,
        author: &str,
    ) -> Result<PolicyView, AdminError> {
        let check = self.check_policy(text, name);
        if !check.ok {
            let detail = check.error.or(check.report).unwrap_or_default();
            return Err(AdminError::invalid(format!(
                "policy refused, the old policy stays in force:\n{detail}"
            )));
        }
        let policy = Policy::parse(text).map_err(|e| AdminError::invalid(e.to_string()))?;
        let v = self.ctx.store.put_policy(text, author, self.now()).await?;
        tracing::info!(version = %v.id, %author, "policy replaced");
        self.ctx.coord.send(Msg::Policy {
            policy: Arc::new(policy),
            version: Some(v.id),
        });
        // Returns once the policy is in force (published; deltas queued).
        let _ = self.ctx.coord.flush().await;
        Ok(PolicyView {
            policy: v.text,
            version: Some(v.id.0),
            author: Some(v.author),
            created: Some(v.created.0),
        })
    }

    /// Returns the newest `limit` saved policy versions, newest first.
    ///
    /// # Errors
    /// Database errors.
    pub async fn policy_history(&self, limit: usize) -> Result<Vec<PolicyVersionView>, AdminError> {
        let all = self.ctx.store.list_policies().await?;
        let current = all.first().map(|v| v.id);
        Ok(all
            .iter()
            .take(limit)
            .map(|v| PolicyVersionView {
                version: v.id.0,
                author: v.author.clone(),
                created: v.created.0,
                current: Some(v.id) == current,
            })
            .collect())
    }

    /// Returns one saved policy version with its text.
    ///
    /// # Errors
    /// `not_found`.
    pub async fn policy_version(&self, version: i64) -> Result<PolicyView, AdminError> {
        let v = self
            .ctx
            .store
            .policy_version(weft_control_store::PolicyVersionId(version))
            .await
            .map_err(|e| match e {
                StoreError::UnknownPolicyVersion(_) => AdminError::not_found(format!(
                    "no policy version {version}; list them with weft-control policy history"
                )),
                other => other.into(),
            })?;
        Ok(PolicyVersionText(v).into())
    }

    /// Saves an old policy version again, as a new version by `author`:
    /// validated and tested like [`Admin::set_policy`], so a version that
    /// no longer passes its tests against today's tailnet is refused.
    ///
    /// # Errors
    /// `not_found`, or `invalid` as [`Admin::set_policy`].
    pub async fn rollback_policy(
        &self,
        version: i64,
        author: &str,
    ) -> Result<PolicyView, AdminError> {
        let old = self.policy_version(version).await?;
        self.set_policy(&old.policy, Some(&format!("version {version}")), author)
            .await
    }

    // --- audit log ----------------------------------------------------------------------

    /// Appends an admin action to the audit log. A failure is logged, not
    /// returned: the change it describes has happened already.
    pub(crate) async fn record(&self, entry: weft_control_store::NewAuditEntry) {
        if let Err(e) = self.ctx.store.record_audit(&entry, self.now()).await {
            tracing::error!(error = %e, action = %entry.action, "cannot record an admin action in the audit log");
        }
    }

    /// Returns a page of the audit log, newest first: up to `limit`
    /// entries older than `before`.
    ///
    /// # Errors
    /// Database errors.
    pub async fn audit(&self, before: Option<i64>, limit: u32) -> Result<AuditPage, AdminError> {
        let limit = limit.clamp(1, weft_control_store::MAX_AUDIT_PAGE);
        let entries = self
            .ctx
            .store
            .list_audit(before.map(weft_control_store::AuditEntryId), limit)
            .await?;
        let next_before = (entries.len() == limit as usize)
            .then(|| entries.last().map(|e| e.id.0))
            .flatten();
        Ok(AuditPage {
            entries: entries
                .into_iter()
                .map(|e| AuditEntryView {
                    id: e.id.0,
                    created: e.created.0,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    outcome: e.outcome.as_str().to_owned(),
                    status: e.status,
                    detail: e.detail,
                })
                .collect(),
            next_before,
        })
    }

    /// Explains whether a flow is allowed by the policy in force.
    ///
    /// # Errors
    /// `invalid` when the question names nothing in the tailnet.
    pub fn explain(&self, q: &ExplainQuery) -> Result<ExplainAnswer, AdminError> {
        let snap = self.ctx.coord.snapshot();
        let p = &snap.policy;
        let x =
            weft_policy::explain_query(&p.policy, &p.tailnet, &q.src, &q.dst, q.proto.as_deref())
                .map_err(|e| AdminError::invalid(e.to_string()))?;
        Ok(ExplainAnswer {
            verdict: match x.verdict {
                weft_policy::Verdict::Allowed => "allowed".into(),
                weft_policy::Verdict::Denied => "denied".into(),
            },
            text: x.to_string(),
            explanation: serde_json::to_value(&x).unwrap_or_default(),
        })
    }

    /// Ends the coordinator's current batch and waits until it is
    /// published (tests and tools use it to wait for a change to go out).
    pub async fn flush(&self) {
        let _ = self.ctx.coord.flush().await;
    }

    // --- helpers ------------------------------------------------------------------------

    async fn logins(&self) -> Result<std::collections::BTreeMap<UserId, String>, AdminError> {
        Ok(self
            .ctx
            .store
            .list_users()
            .await?
            .into_iter()
            .map(|u| (u.id, u.login_name.to_string()))
            .collect())
    }

    async fn view_one(&self, n: &StoreNode) -> Result<NodeView, AdminError> {
        let logins = self.logins().await?;
        let snap = self.ctx.coord.snapshot();
        Ok(self.node_view(n, &logins, self.now(), &snap))
    }

    async fn view_one_offline(&self, n: &StoreNode) -> Result<NodeView, AdminError> {
        let logins = self.logins().await?;
        let mut v = node_view(n, &logins, self.now(), &self.ctx.config.domain);
        v.online = false;
        Ok(v)
    }

    fn node_view(
        &self,
        n: &StoreNode,
        logins: &std::collections::BTreeMap<UserId, String>,
        now: UnixMillis,
        snap: &crate::state::Snapshot,
    ) -> NodeView {
        let mut v = node_view(n, logins, now, &self.ctx.config.domain);
        if let Some(live) = snap.nodes.get(&n.id) {
            // Runtime state is the server's live view; the database follows.
            v.online = live.rec.online;
            v.last_seen = live.rec.last_seen.map(|t| t.0);
            v.endpoints = live
                .rec
                .endpoints
                .iter()
                .map(|e| e.addr.to_string())
                .collect();
        }
        v
    }
}

/// A stored policy version as the API shows it.
struct PolicyVersionText(weft_control_store::PolicyVersion);

impl From<PolicyVersionText> for PolicyView {
    fn from(PolicyVersionText(v): PolicyVersionText) -> Self {
        PolicyView {
            policy: v.text,
            version: Some(v.id.0),
            author: Some(v.author),
            created: Some(v.created.0),
        }
    }
}

fn parse_role(role: Option<&str>) -> Result<Role, AdminError> {
    match role.unwrap_or("member") {
        "member" => Ok(Role::Member),
        "admin" => Ok(Role::Admin),
        other => Err(AdminError::invalid(format!(
            "invalid role {other:?}: use member or admin"
        ))),
    }
}

fn parse_tags(tags: &[String]) -> Result<BTreeSet<Tag>, AdminError> {
    tags.iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.trim().parse::<Tag>().map_err(|_| {
                AdminError::invalid(format!(
                    "invalid tag {t:?}: write tag:NAME, NAME starting with a letter (letters, digits, '-')"
                ))
            })
        })
        .collect()
}

fn user_view(u: &User) -> UserView {
    UserView {
        id: u.id.0,
        login_name: u.login_name.to_string(),
        display_name: u.display_name.clone(),
        role: u.role.as_str().to_owned(),
        created: u.created.0,
    }
}

fn preauth_view(k: &PreauthKey, user: Option<String>, now: UnixMillis) -> PreauthKeyView {
    PreauthKeyView {
        id: k.id.0,
        prefix: k.prefix.clone(),
        user,
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        tags: k.tags.iter().map(ToString::to_string).collect(),
        created: k.created.0,
        expires: k.expires.0,
        used_count: k.used_count,
        revoked: k.revoked.map(|t| t.0),
        usable: k.is_usable(now),
    }
}

fn api_key_view(k: &ApiKey, now: UnixMillis) -> ApiKeyView {
    ApiKeyView {
        id: k.id.0,
        prefix: k.prefix.clone(),
        description: k.description.clone(),
        created: k.created.0,
        expires: k.expires.map(|t| t.0),
        revoked: k.revoked.map(|t| t.0),
        last_used: k.last_used.map(|t| t.0),
        usable: k.revoked.is_none() && k.expires.is_none_or(|e| now < e),
    }
}

fn node_view(
    n: &StoreNode,
    logins: &std::collections::BTreeMap<UserId, String>,
    now: UnixMillis,
    domain: &DnsName,
) -> NodeView {
    let os = n
        .host_info
        .get("os")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    NodeView {
        id: n.id.0,
        stable_id: n.stable_id.to_string(),
        name: n.given_name.to_string(),
        fqdn: DnsName::with_label(&n.given_name, domain)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        hostname: n.hostname.clone(),
        user: n.user.and_then(|u| logins.get(&u).cloned()),
        tags: n.tags.iter().map(ToString::to_string).collect(),
        ipv4: n.ipv4.to_string(),
        ipv6: n.ipv6.to_string(),
        machine_key: n.machine_key.to_string(),
        node_key: n.node_key.to_string(),
        online: n.online,
        last_seen: n.last_seen.map(|t| t.0),
        created: n.created.0,
        key_expiry: n.key_expiry.map(|t| t.0),
        expired: n.is_expired(now),
        authorized: n.authorized,
        ephemeral: n.ephemeral,
        endpoints: n.endpoints.iter().map(|e| e.addr.to_string()).collect(),
        os,
    }
}
