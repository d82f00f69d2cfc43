//! OIDC single sign-on (docs/OIDC.md): an [`Authenticator`] that sends the
//! user to the identity provider (authorization code + PKCE) and decides
//! the login with the identity it vouches for.
//!
//! - A device login: `weft up` prints `<server>/a/<auth-id>`; that page
//!   redirects to `/login/oidc/start/<auth-id>`, which redirects to the IdP;
//!   the IdP redirects back to `/login/oidc/callback`, which exchanges the
//!   code, verifies the ID token ([`provider`]), maps its claims to a login
//!   name and policy groups ([`claims`]), checks the allowed domains, users
//!   and groups, creates the user at their first login, records their
//!   groups and the time they authenticated (replacing the previous ones,
//!   so a group removed at the IdP is gone from the policy at the next
//!   login), and registers the device to them.
//! - An SSH check (`/a/<check-id>`): the same round trip with `max_age` set
//!   to the rule's checkPeriod (and `prompt=login` for a zero period), so
//!   the IdP authenticates the user again if their session there is older;
//!   the token's `auth_time` must be within it. Only the check's user may
//!   approve it.
//! - Any other part of the server (the admin console) signs a browser in
//!   with [`Oidc::start_sign_in`]: the browser comes back to the given
//!   path with `?oidc_ticket=<ticket>`, and [`Oidc::redeem`] gives the
//!   verified [`Identity`] once.
//!
//! Every refusal is a page that says why and what to do: the IdP's error,
//! an unknown, missing or expired `state`, a token that fails verification,
//! a user outside the allowed domains, users or groups.

pub mod claims;
pub mod config;
pub mod flows;
pub mod provider;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use weft_types::UnixMillis;

pub use claims::{Identity, NotAllowed};
pub use config::OidcConfig;
pub use flows::Purpose;
pub use provider::IdpError;

use crate::auth::{Authenticator, CheckInfo, CompleteLogin, LoginContext, LoginPage, PendingLogin};
use crate::clock::Clock;
use crate::http::html;
use crate::pages::{self, escape};
use flows::{Flow, Flows};
use provider::Provider;

/// The query parameter that carries a ticket back to a sign-in's return path.
pub const TICKET_PARAM: &str = "oidc_ticket";
/// The path of the callback, which the IdP must allow as redirect URI
/// (`<server-url>/login/oidc/callback`).
pub const CALLBACK_PATH: &str = "/login/oidc/callback";

/// What a successful login through the IdP leaves with the user record.
#[derive(Debug, Clone)]
pub struct IdpLogin<'a> {
    /// The login name.
    pub login: &'a str,
    /// The display name from the IdP (empty: keep the stored one).
    pub display_name: &'a str,
    /// The policy groups (replacing the previous ones).
    pub groups: &'a std::collections::BTreeSet<String>,
    /// When the user authenticated at the IdP.
    pub authenticated: UnixMillis,
}

/// The OIDC authenticator. See the module docs.
#[derive(Debug)]
pub struct Oidc {
    provider: Provider,
    flows: Flows,
    clock: Arc<dyn Clock>,
    server_url: String,
}

impl Oidc {
    /// Builds the authenticator for the server at `server_url` (the
    /// callback is `<server_url>/login/oidc/callback`). The IdP is
    /// contacted at the first login, not here.
    ///
    /// # Errors
    /// Invalid settings, or a CA file that cannot be read.
    pub fn new(
        config: OidcConfig,
        server_url: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, String> {
        config.validate()?;
        if config.allowed == config::Allowed::default() {
            tracing::warn!(issuer = %config.issuer, "OIDC: no allowed domains, users or groups: everyone the identity provider authenticates may join the tailnet");
        }
        let server_url = server_url.trim_end_matches('/').to_owned();
        let redirect = format!("{server_url}{CALLBACK_PATH}");
        Ok(Self {
            flows: Flows::new(config.sign_in_lifetime),
            provider: Provider::new(config, redirect)?,
            clock,
            server_url,
        })
    }

    /// Returns the settings.
    pub fn config(&self) -> &OidcConfig {
        self.provider.config()
    }

    /// Starts a sign-in for another part of the server: returns the IdP URL
    /// to redirect the browser to. After the IdP, the browser comes back to
    /// `return_to` (a path on this server, e.g. `/admin/oidc`) with
    /// `?oidc_ticket=<ticket>` (`&` if it has a query); pass the ticket to
    /// [`Oidc::redeem`]. `max_age` asks the IdP to authenticate the user
    /// again if their session there is older.
    ///
    /// # Errors
    /// [`IdpError::Unreachable`]; a `return_to` that is not a local path
    /// (`/…`, not `//…`) is refused as [`IdpError::Exchange`].
    pub async fn start_sign_in(
        &self,
        return_to: &str,
        max_age: Option<Duration>,
    ) -> Result<String, IdpError> {
        if !return_to.starts_with('/') || return_to.starts_with("//") || return_to.contains('\\') {
            return Err(IdpError::Exchange(format!(
                "the return path {return_to:?} is not a path on this server"
            )));
        }
        self.begin(
            Purpose::SignIn {
                return_to: return_to.to_owned(),
            },
            max_age,
        )
        .await
    }

    /// Returns the identity a finished [`Oidc::start_sign_in`] left under
    /// `ticket`, once, within two minutes.
    pub fn redeem(&self, ticket: &str) -> Option<Identity> {
        self.flows.redeem(ticket, self.clock.now())
    }

    async fn begin(&self, purpose: Purpose, max_age: Option<Duration>) -> Result<String, IdpError> {
        let now = self.clock.now();
        let state = random_token();
        let req = self.provider.authorize(state.clone(), max_age, now).await?;
        self.flows.insert(
            state,
            Flow {
                purpose,
                nonce: req.nonce,
                pkce_verifier: req.pkce_verifier,
                started: now,
            },
            now,
        );
        Ok(req.url)
    }

    fn start_path(&self, id: &str) -> String {
        format!("{}/login/oidc/start/{}", self.server_url, escape(id))
    }
}

/// 32 random bytes as hex, for `state` and tickets.
fn random_token() -> String {
    hex_encode(&weft_types::entropy::seed())
}

fn hex_encode(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

impl Authenticator for Oidc {
    fn name(&self) -> &'static str {
        "oidc"
    }

    fn login_page(&self, login: &LoginContext<'_>) -> LoginPage {
        match login.request {
            Some(r)
                if r.state == weft_control_store::AuthRequestState::Pending
                    && login.now < r.expires =>
            {
                let to = self.start_path(login.auth_id);
                LoginPage::redirect(
                    &to,
                    pages::page(
                        303,
                        "Log in",
                        &format!(
                            "<p>The device <b>{}</b> asks to join the tailnet. <a href=\"{to}\">Log in with your identity provider</a> to add it to your account.</p>",
                            escape(&r.hostname)
                        ),
                    ),
                )
            }
            _ => pages::device_login(login),
        }
    }

    fn check_page(&self, check_id: &str, check: &CheckInfo, now: UnixMillis) -> LoginPage {
        if now >= check.expires {
            return pages::ssh_check(check_id, check, now);
        }
        let to = self.start_path(check_id);
        LoginPage::redirect(
            &to,
            pages::page(
                303,
                "Confirm an SSH login",
                &format!(
                    "<p><b>{}</b> is logging in from <b>{}</b> to <b>{}</b>. <a href=\"{to}\">Confirm it with your identity provider</a>.</p>",
                    escape(&check.login),
                    escape(&check.src_name),
                    escape(&check.dst_name),
                ),
            ),
        )
    }

    fn routes(&self, _logins: Arc<dyn CompleteLogin>) -> Option<axum::Router> {
        None
    }
}

/// The routes of an [`Oidc`] (mounted at `/login/oidc/`); needs the
/// authenticator as an `Arc`, so the server calls this rather than
/// [`Authenticator::routes`].
pub(crate) fn routes(oidc: Arc<Oidc>, logins: Arc<dyn CompleteLogin>) -> axum::Router {
    axum::Router::new()
        .route("/start/{id}", get(start))
        .route("/callback", get(callback))
        .with_state(Routes { oidc, logins })
}

#[derive(Clone)]
struct Routes {
    oidc: Arc<Oidc>,
    logins: Arc<dyn CompleteLogin>,
}

/// A refusal page: `status`, a title, why, and what to do.
pub fn refusal(status: u16, title: &str, why: &str, todo: &str) -> LoginPage {
    pages::page(
        status,
        title,
        &format!(
            "<p class=\"why\">{}</p><p class=\"todo\">{}</p>",
            escape(why),
            escape(todo)
        ),
    )
}

fn idp_down(e: &IdpError) -> LoginPage {
    refusal(
        503,
        "Identity provider unavailable",
        &e.to_string(),
        "The device keeps waiting: reload this page in a minute. If it persists, tell the Weft administrator (the issuer URL, the network, or the identity provider itself).",
    )
}

async fn start(State(r): State<Routes>, Path(id): Path<String>) -> Response {
    let pending = match r.logins.pending(&id).await {
        Ok(p) => p,
        Err(e) => return html(e.page()),
    };
    let purpose = match pending {
        Some(PendingLogin::Device { .. }) => (Purpose::DeviceLogin(id), None),
        Some(PendingLogin::SshCheck(info)) => (
            Purpose::SshCheck {
                id,
                max_age: info.period,
            },
            Some(info.period),
        ),
        None => {
            return html(refusal(
                410,
                "Login link expired",
                "This login link is not waiting for a login: it expired, was completed already, or was never issued by this server.",
                "On the device, run weft up again to get a new link.",
            ));
        }
    };
    match r.oidc.begin(purpose.0, purpose.1).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "OIDC: cannot start a sign-in");
            html(idp_down(&e))
        }
    }
}

/// The query of the callback (RFC 6749 §4.1.2 and §4.1.2.1).
#[derive(Debug, serde::Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

async fn callback(State(r): State<Routes>, Query(q): Query<CallbackQuery>) -> Response {
    html(decide(&r, q).await)
}

async fn decide(r: &Routes, q: CallbackQuery) -> LoginPage {
    let oidc = &r.oidc;
    let now = oidc.clock.now();
    let flow = match oidc.flows.take(q.state.as_deref(), now) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(error = %e, "OIDC callback refused: state");
            let status = if e == flows::StateError::Expired {
                410
            } else {
                400
            };
            return refusal(
                status,
                "Sign-in not accepted",
                &e.to_string(),
                "Start again from the beginning: run weft up (or open the login link) again. Do not reload or bookmark this page.",
            );
        }
    };
    if let Some(err) = q.error {
        let desc = q.error_description.unwrap_or_default();
        tracing::warn!(error = %err, description = %desc, "OIDC: the identity provider returned an error");
        let why = if desc.is_empty() {
            format!("The identity provider did not sign you in: {err}.")
        } else {
            format!("The identity provider did not sign you in: {err} ({desc}).")
        };
        return refusal(
            403,
            "Sign-in failed at the identity provider",
            &why,
            "Run weft up again and complete the sign-in; if the identity provider keeps refusing, ask its administrator (is the Weft client allowed for you?).",
        );
    }
    let Some(code) = q.code.filter(|c| !c.is_empty()) else {
        return refusal(
            400,
            "Sign-in not accepted",
            "The answer from the identity provider has no code.",
            "Run weft up again and complete the sign-in.",
        );
    };
    let max_age = match &flow.purpose {
        Purpose::SshCheck { max_age, .. } => Some(*max_age),
        _ => None,
    };
    let verified = match oidc
        .provider
        .exchange(code, flow.pkce_verifier, &flow.nonce, max_age, now)
        .await
    {
        Ok(v) => v,
        Err(e @ IdpError::Unreachable { .. }) => {
            tracing::warn!(error = %e, "OIDC: the identity provider cannot be reached");
            return idp_down(&e);
        }
        Err(e) => {
            tracing::warn!(error = %e, "OIDC: sign-in refused");
            return refusal(
                403,
                "Sign-in not accepted",
                &e.to_string(),
                "Nothing was changed. Run weft up again; if this repeats, tell the Weft administrator (the identity provider's keys, issuer or client settings may not match).",
            );
        }
    };
    let cfg = oidc.config();
    let identity = match claims::identity(&cfg.claims, &verified.claims, verified.authenticated.0)
        .and_then(|id| claims::check_allowed(&cfg.allowed, &id).map(|()| id))
    {
        Ok(id) => id,
        Err(e) => {
            tracing::warn!(reason = %e, "OIDC: login not allowed");
            return refusal(
                403,
                "Not allowed to join this tailnet",
                &format!("{e}."),
                e.advice(),
            );
        }
    };
    tracing::info!(user = %identity.login, groups = identity.groups.len(), "OIDC: identity verified");
    match flow.purpose {
        Purpose::SignIn { return_to } => {
            let ticket = random_token();
            oidc.flows.put_ticket(ticket.clone(), identity, now);
            let sep = if return_to.contains('?') { '&' } else { '?' };
            LoginPage::redirect(
                &format!("{return_to}{sep}{TICKET_PARAM}={ticket}"),
                pages::page(303, "Signed in", "<p>Signed in.</p>"),
            )
        }
        Purpose::DeviceLogin(id) => {
            if let Err(e) = r
                .logins
                .ensure_user(&identity.login, &identity.display_name)
                .await
            {
                return e.page();
            }
            if let Err(e) = record(r, &identity).await {
                return e.page();
            }
            match r.logins.approve(&id, &identity.login).await {
                Ok(done) => done.page(),
                Err(e) => e.page(),
            }
        }
        Purpose::SshCheck { id, .. } => {
            // Only an existing user can own the source node; no user is created here.
            if let Err(e) = record(r, &identity).await {
                return e.page();
            }
            match r.logins.approve(&id, &identity.login).await {
                Ok(done) => done.page(),
                Err(e) => e.page(),
            }
        }
    }
}

async fn record(r: &Routes, id: &Identity) -> Result<(), crate::auth::CompleteError> {
    r.logins
        .record_idp_login(IdpLogin {
            login: &id.login,
            display_name: &id.display_name,
            groups: &id.groups,
            authenticated: UnixMillis(id.authenticated_ms),
        })
        .await
}

/// Boxed future of [`CompleteLogin::record_idp_login`].
pub type RecordFuture<'a> = BoxFuture<'a, Result<(), crate::auth::CompleteError>>;

#[cfg(test)]
mod tests;
