//! Interactive logins: how a way of logging in plugs into the server.
//!
//! A node without a key gets the URL `<server-url>/a/<auth-id>` and waits;
//! an SSH check gets `<server-url>/a/<check-id>` the same way. The server
//! asks the configured [`Authenticator`] (`ServerConfig::authenticator`)
//! for the page at that URL, and mounts the authenticator's own routes
//! under `/login/<name>/`. Whoever decides a login — an administrator with
//! `weft-control nodes approve|reject`, or the authenticator's routes —
//! decides it through one narrow interface, [`CompleteLogin`]: look up what
//! waits under an id, approve it as a user, or decline it. The node's
//! waiting request (or the SSH check) is answered at once.
//!
//! [`AdminApproval`], the default, has no login of its own: its page tells
//! the user which command to ask an administrator to run.
//!
//! # Plugging in an authenticator (OIDC, for example)
//!
//! An authenticator needs this module and [`crate::pages`], nothing else of
//! the server:
//!
//! 1. Implement [`Authenticator`]. `name` is `"oidc"`; `login_page` renders
//!    `/a/<auth-id>` from its [`LoginContext`] — for a pending login, a page
//!    with a "Log in with …" link to one of its own routes,
//!    `/login/oidc/start/<auth-id>` (the pages' Content-Security-Policy
//!    admits links but no scripts); for the other states,
//!    [`pages::device_login`] says it well. `check_page` does the same for
//!    SSH checks (the default shows the approval command).
//! 2. `routes` receives the server's [`CompleteLogin`] and returns the
//!    router mounted at `/login/oidc/`. The start route checks the id with
//!    [`CompleteLogin::pending`], binds it to the `state`, nonce and PKCE
//!    verifier of an authorization request, and redirects to the identity
//!    provider. The callback route exchanges the code, verifies the ID
//!    token, maps its claims to a login name, optionally creates the user
//!    with [`CompleteLogin::ensure_user`], and calls
//!    [`CompleteLogin::approve`] with the id and the login name. It shows
//!    [`Completed::page`] or [`CompleteError::page`].
//! 3. Set `ServerConfig::authenticator` (and a `serve` flag to choose it).
//!
//! The rules stay on the server's side of the interface: only the user an
//! SSH check is for may approve it, a device's requested tags must be
//! permitted to that user by the policy's `tagOwners`, a login is decided
//! once and not after it expires.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use weft_control_store::StoreError;
use weft_types::{NodeId, UnixMillis};

pub use crate::pages::{CheckInfo, LoginContext, LoginPage};

use crate::pages;

/// A way of completing interactive logins. See the module docs for how one
/// plugs in.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and for the path of its routes (`admin-approval`, `oidc`).
    fn name(&self) -> &'static str;

    /// Renders the page at `/a/<auth-id>` of a device login.
    fn login_page(&self, login: &LoginContext<'_>) -> LoginPage;

    /// Renders the page at `/a/<check-id>` for a pending SSH check (who must
    /// approve what). The default shows the approval command.
    fn check_page(&self, check_id: &str, check: &CheckInfo, now: UnixMillis) -> LoginPage {
        pages::ssh_check(check_id, check, now)
    }

    /// Returns the authenticator's own routes (e.g. an OIDC callback),
    /// mounted under `/login/<name>/`; they decide logins through `logins`.
    fn routes(&self, _logins: Arc<dyn CompleteLogin>) -> Option<axum::Router> {
        None
    }
}

/// What an authenticator (and the admin service) may do with what waits
/// at `/a/<id>`: the one way logins are decided.
pub trait CompleteLogin: Send + Sync + std::fmt::Debug + 'static {
    /// Returns what waits under `id`, or `None` if nothing does (unknown,
    /// already decided, or expired).
    fn pending<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<PendingLogin>, CompleteError>>;

    /// Approves `id` as the user `login`: a device login registers the
    /// device for that user (with the tags and key lifetime it asked for);
    /// an SSH check lets the login go ahead if it is that user's.
    ///
    /// # Errors
    /// [`CompleteError`]: unknown login or user, expired, already decided,
    /// another user's check, tags the user may not apply, the database.
    fn approve<'a>(
        &'a self,
        id: &'a str,
        login: &'a str,
    ) -> BoxFuture<'a, Result<Completed, CompleteError>>;

    /// Declines `id`: the device is refused, or the SSH login.
    ///
    /// # Errors
    /// [`CompleteError`]: unknown login, expired, already decided, the database.
    fn deny<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), CompleteError>>;

    /// Creates the user `login` (a member, named `display_name`) unless it
    /// exists; for authenticators that provision users at their first
    /// login. An existing user is left as it is.
    ///
    /// # Errors
    /// [`CompleteError::InvalidLogin`], the database.
    fn ensure_user<'a>(
        &'a self,
        login: &'a str,
        display_name: &'a str,
    ) -> BoxFuture<'a, Result<(), CompleteError>>;

    /// Records what the identity provider said about user `l.login` at a
    /// login: their policy groups (replacing the previous ones), when they
    /// authenticated, their display name. The policy is recompiled with
    /// the new groups and the changed filters pushed before this returns.
    ///
    /// # Errors
    /// [`CompleteError::UnknownUser`], the database.
    fn record_idp_login<'a>(
        &'a self,
        l: crate::oidc::IdpLogin<'a>,
    ) -> BoxFuture<'a, Result<(), CompleteError>>;
}

/// What waits for a decision under an id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingLogin {
    /// A device that asks to join the tailnet.
    Device {
        /// The hostname the device reported.
        hostname: String,
        /// When the login link expires.
        expires: UnixMillis,
    },
    /// An SSH login under a `check` rule.
    SshCheck(CheckInfo),
}

/// A login that was approved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completed {
    /// The device joined the tailnet.
    Device {
        /// The new node.
        node: NodeId,
        /// Its name in the tailnet (DNS label).
        name: String,
        /// The user who owns it.
        user: String,
    },
    /// The SSH login goes ahead.
    SshCheck {
        /// The node the login comes from.
        src_node: NodeId,
        /// What was approved.
        info: CheckInfo,
        /// How long logins from the same node need no new approval.
        period: Duration,
    },
}

impl Completed {
    /// Renders the page that tells the user their login went through.
    pub fn page(&self) -> LoginPage {
        match self {
            Completed::Device { name, user, .. } => pages::device_approved(name, user),
            Completed::SshCheck { info, period, .. } => pages::check_approved(info, *period),
        }
    }
}

/// Why a login could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum CompleteError {
    /// Nothing waits under this id (or it was cleaned up after expiring).
    #[error("unknown auth request {0:?}")]
    UnknownLogin(String),
    /// No user has this login name.
    #[error("unknown user {0:?}")]
    UnknownUser(String),
    /// The text is not a login name.
    #[error(
        "invalid login name {0:?}: use 1-254 characters without spaces, e.g. alice or alice@example.com"
    )]
    InvalidLogin(String),
    /// The device login's time ran out.
    #[error("auth request {0:?} has expired")]
    LoginExpired(String),
    /// The SSH check's time ran out (the SSH login was refused).
    #[error("this SSH check has expired; the login was refused")]
    CheckExpired,
    /// The login was approved or declined before.
    #[error("auth request {0:?} was already {1}")]
    AlreadyDecided(String, &'static str),
    /// An SSH check may be approved only by the user it is for.
    #[error(
        "this SSH check is for {owner}'s login from {src}; only {owner} may approve it, not {approver}"
    )]
    WrongUser {
        /// The user the check is for.
        owner: String,
        /// The source node's name.
        src: String,
        /// Who tried to approve it.
        approver: String,
    },
    /// The device asked for tags the policy's `tagOwners` do not let this
    /// user apply.
    #[error("the policy's tagOwners do not let {login} apply {tags} (requested by the device)")]
    TagsNotPermitted {
        /// The approving user.
        login: String,
        /// The tags denied, comma-separated.
        tags: String,
    },
    /// The database failed (try again).
    #[error(transparent)]
    Store(StoreError),
}

impl CompleteError {
    /// Returns the HTTP status that fits: 404 unknown, 400 invalid, 410
    /// expired, 409 already decided, 403 not this user's, 503 the database.
    pub fn status(&self) -> u16 {
        match self {
            CompleteError::UnknownLogin(_) | CompleteError::UnknownUser(_) => 404,
            CompleteError::InvalidLogin(_) => 400,
            CompleteError::LoginExpired(_) | CompleteError::CheckExpired => 410,
            CompleteError::AlreadyDecided(..) => 409,
            CompleteError::WrongUser { .. } | CompleteError::TagsNotPermitted { .. } => 403,
            CompleteError::Store(_) => 503,
        }
    }

    /// Renders the page that tells the user why their login did not go
    /// through.
    pub fn page(&self) -> LoginPage {
        pages::failed(self.status(), &self.to_string())
    }
}

/// The default authenticator: an administrator approves each login with
/// `weft-control nodes approve <auth-id> --user <login>`.
#[derive(Debug, Default, Clone, Copy)]
pub struct AdminApproval;

impl Authenticator for AdminApproval {
    fn name(&self) -> &'static str {
        "admin-approval"
    }

    fn login_page(&self, login: &LoginContext<'_>) -> LoginPage {
        pages::device_login(login)
    }
}
