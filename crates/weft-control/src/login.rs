//! Deciding logins: the server's side of [`CompleteLogin`], used by the
//! admin service (`weft-control nodes approve|reject`) and handed to the
//! authenticator's routes ([`crate::auth`]).
//!
//! Approving an id decides whichever waits under it: a pending SSH check
//! ([`crate::check::approve`]; only its user may approve it, and the
//! approval is stored before the node hears it) or else an
//! interactive device login (the store registers the node for the user,
//! with the tags and key lifetime the device asked for, if the policy lets
//! that user apply those tags). Either way the node's waiting request is
//! answered at once: the check's verdict channel, or the login's wake-up
//! ([`crate::waiting::Logins::decided`]); a new node goes to the
//! coordinator first.

use std::sync::Arc;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use weft_control_store::{
    AuthRequestState, LoginName, NewUser, Node as StoreNode, RegisterAuth, Role, StoreError,
};
use weft_types::control::is_auth_id;

use crate::auth::{CompleteError, CompleteLogin, Completed, PendingLogin};
use crate::check::{self, ApproveFailed};
use crate::ctx::Ctx;
use crate::registration::{denied_tags, lifetime_of};
use crate::state::coordinator::Msg;
use crate::waiting::{ApproveError, ApprovedCheck};

/// What an approval decided.
#[derive(Debug)]
pub(crate) enum Approval {
    /// A device login: the node registered for `user`.
    Device { node: Box<StoreNode>, user: String },
    /// An SSH check.
    Check(ApprovedCheck),
}

impl From<Approval> for Completed {
    fn from(a: Approval) -> Self {
        match a {
            Approval::Device { node, user } => Completed::Device {
                node: node.id,
                name: node.given_name.to_string(),
                user,
            },
            Approval::Check(c) => Completed::SshCheck {
                src_node: c.src_node,
                info: c.info,
                period: c.period,
            },
        }
    }
}

/// Approves what waits under `id` as the user `login` (see the module docs).
///
/// # Errors
/// [`CompleteError`].
pub(crate) async fn approve(ctx: &Ctx, id: &str, login: &str) -> Result<Approval, CompleteError> {
    let user = ctx.store.user_by_login(login).await.map_err(refused)?;
    let login = user.login_name.to_string();
    let now = ctx.clock.now();
    if let Some(r) = check::approve(ctx, id, user.id, &login, now).await {
        return match r {
            Ok(c) => Ok(Approval::Check(c)),
            Err(ApproveFailed::Refused(ApproveError::WrongUser {
                owner,
                src,
                approver,
            })) => Err(CompleteError::WrongUser {
                owner,
                src,
                approver,
            }),
            Err(ApproveFailed::Refused(ApproveError::Expired)) => Err(CompleteError::CheckExpired),
            Err(ApproveFailed::Store(e)) => Err(CompleteError::Store(e)),
        };
    }
    let wish = ctx.logins.wish(id);
    let denied = denied_tags(ctx, &wish.requested_tags, Some(&login));
    if !denied.is_empty() {
        return Err(CompleteError::TagsNotPermitted {
            login,
            tags: denied.join(", "),
        });
    }
    let (_, reg) = ctx
        .store
        .complete_auth_request(
            id,
            RegisterAuth::User {
                user: user.id,
                tags: &wish.requested_tags,
                ephemeral: wish.ephemeral,
                key_lifetime: lifetime_of(wish.expiry, now),
            },
            now,
        )
        .await
        .map_err(refused)?;
    tracing::info!(node = %reg.node.id, user = %login, "interactive login approved");
    ctx.coord.send(Msg::NodeUpsert(Box::new(reg.node.clone())));
    ctx.logins.decided(id);
    Ok(Approval::Device {
        node: Box::new(reg.node),
        user: login,
    })
}

/// Declines what waits under `id`.
///
/// # Errors
/// [`CompleteError`]: unknown, expired or decided login; the database.
pub(crate) async fn deny(ctx: &Ctx, id: &str) -> Result<(), CompleteError> {
    if ctx.checks.reject(id) {
        return Ok(());
    }
    ctx.store
        .reject_auth_request(id, ctx.clock.now())
        .await
        .map_err(refused)?;
    tracing::info!(login = id, "interactive login declined");
    ctx.logins.decided(id);
    Ok(())
}

/// Returns what waits under `id`, if anything still does.
///
/// # Errors
/// [`CompleteError::Store`].
pub(crate) async fn pending(ctx: &Ctx, id: &str) -> Result<Option<PendingLogin>, CompleteError> {
    let now = ctx.clock.now();
    if let Some(info) = ctx.checks.info(id) {
        return Ok((now < info.expires).then_some(PendingLogin::SshCheck(info)));
    }
    if !is_auth_id(id) {
        return Ok(None);
    }
    match ctx.store.auth_request(id).await {
        Ok(r) if r.state == AuthRequestState::Pending && now < r.expires => {
            Ok(Some(PendingLogin::Device {
                hostname: r.hostname,
                expires: r.expires,
            }))
        }
        Ok(_) | Err(StoreError::UnknownAuthRequest(_)) => Ok(None),
        Err(e) => Err(CompleteError::Store(e)),
    }
}

/// Creates the member `login` unless a user of that name exists.
///
/// # Errors
/// [`CompleteError::InvalidLogin`], [`CompleteError::Store`].
pub(crate) async fn ensure_user(
    ctx: &Ctx,
    login: &str,
    display_name: &str,
) -> Result<(), CompleteError> {
    let name: LoginName = login
        .parse()
        .map_err(|_| CompleteError::InvalidLogin(login.to_owned()))?;
    match ctx.store.user_by_login(name.as_str()).await {
        Ok(_) => return Ok(()),
        Err(StoreError::UnknownUser(_)) => {}
        Err(e) => return Err(CompleteError::Store(e)),
    }
    let new = NewUser {
        login_name: name,
        display_name: display_name.to_owned(),
        role: Role::Member,
    };
    match ctx.store.create_user(new, ctx.clock.now()).await {
        Ok(user) => {
            tracing::info!(user = %user.login_name, "user created at its first login");
            ctx.coord.send(Msg::UserUpsert(Box::new(user)));
            // Tag permissions at the approval that follows read the published snapshot.
            let _ = ctx.coord.flush().await;
            Ok(())
        }
        // Created meanwhile by another login of the same user.
        Err(StoreError::DuplicateUser(_)) => Ok(()),
        Err(e) => Err(CompleteError::Store(e)),
    }
}

/// Records a login through the identity provider (see
/// [`CompleteLogin::record_idp_login`]).
///
/// # Errors
/// [`CompleteError::UnknownUser`], [`CompleteError::Store`].
pub(crate) async fn record_idp_login(
    ctx: &Ctx,
    l: crate::oidc::IdpLogin<'_>,
) -> Result<(), CompleteError> {
    let user = ctx.store.user_by_login(l.login).await.map_err(refused)?;
    let changed = user.idp_groups != *l.groups;
    let user = ctx
        .store
        .record_idp_login(user.id, l.display_name, l.groups, l.authenticated)
        .await
        .map_err(refused)?;
    if changed {
        tracing::info!(user = %user.login_name, groups = ?user.idp_groups, "groups from the identity provider changed");
    }
    ctx.coord.send(Msg::UserUpsert(Box::new(user)));
    // The approval that follows compiles tag permissions and filters from the published snapshot.
    let _ = ctx.coord.flush().await;
    Ok(())
}

/// Names the store's refusals of a decision; other errors stay store errors.
fn refused(e: StoreError) -> CompleteError {
    match e {
        StoreError::UnknownAuthRequest(id) => CompleteError::UnknownLogin(id),
        StoreError::UnknownUser(login) => CompleteError::UnknownUser(login),
        StoreError::AuthRequestExpired(id) => CompleteError::LoginExpired(id),
        StoreError::AuthRequestCompleted(id, how) => CompleteError::AlreadyDecided(id, how),
        other => CompleteError::Store(other),
    }
}

/// The server's [`CompleteLogin`], as authenticators get it.
#[derive(Debug, Clone)]
pub(crate) struct Completer {
    ctx: Arc<Ctx>,
}

impl Completer {
    pub(crate) fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

impl CompleteLogin for Completer {
    fn pending<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, CompleteError>> {
        pending(&self.ctx, id).boxed()
    }

    fn approve<'a>(
        &'a self,
        id: &'a str,
        login: &'a str,
    ) -> BoxFuture<'a, Result<Completed, CompleteError>> {
        async move { approve(&self.ctx, id, login).await.map(Completed::from) }.boxed()
    }

    fn deny<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CompleteError>> {
        deny(&self.ctx, id).boxed()
    }

    fn ensure_user<'a>(
        &'a self,
        login: &'a str,
        display_name: &'a str,
    ) -> BoxFuture<'a, Result<(), CompleteError>> {
        ensure_user(&self.ctx, login, display_name).boxed()
    }

    fn record_idp_login<'a>(
        &'a self,
        l: crate::oidc::IdpLogin<'a>,
    ) -> BoxFuture<'a, Result<(), CompleteError>> {
        record_idp_login(&self.ctx, l).boxed()
    }
}
