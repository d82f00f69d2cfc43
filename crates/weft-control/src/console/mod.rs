//! The web admin console at `/admin`: server-rendered pages for machines,
//! users, pre-auth keys, API keys, the policy (editor, check, tests,
//! explain, diff, history and rollback), DNS settings and the audit log.
//!
//! What it is not: a second admin API. Every change a console form makes is
//! sent through the admin API's own routes ([`crate::admin::api`]) with the
//! signed-in admin as the actor, so validation (tagOwners, policy tests)
//! and the audit log are the API's, once. Reads call [`Admin`] directly.
//!
//! # Security
//! - Sign-in: an admin proves who they are through a [`ConsoleSignIn`]
//!   (today an API key; OIDC `autogroup:admin` plugs in the same way), which
//!   yields an [`AdminIdentity`]; [`Console::start_session`] turns that into
//!   a session. Failed sign-ins are limited per source address
//!   ([`session::Throttle`]).
//! - The session cookie is `__Host-weft-console`, `Secure; HttpOnly;
//!   SameSite=Strict; Path=/`, and the session expires after
//!   [`session::SESSION_IDLE`] unused or [`session::SESSION_LIFETIME`]
//!   after sign-in. Because the cookie is always `Secure`, the console is
//!   served only over https (`serve --tls-cert`) or to a loopback client
//!   (browsers treat `http://localhost` and `127.0.0.1` as secure; reach a
//!   remote server through `ssh -L`). docs/SECURITY.md says the same.
//! - Every state-changing form carries the session's CSRF token (the
//!   sign-in form a token of its own, double-submitted in a cookie); a
//!   missing or wrong one is refused with 403.
//! - Every response carries [`CONSOLE_CSP`]: scripts, styles and images
//!   only from this server (the two assets below, compiled in), forms
//!   only to it, no framing. Every value on a page goes through
//!   [`crate::pages::escape`].

mod diff;
mod session;
mod view;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Form, Router};
use http::{HeaderValue, Method, StatusCode, header};

pub use session::AdminIdentity;
use session::{Session, Sessions, Throttle};

use crate::admin::Admin;
use crate::admin::api::Actor;
use crate::admin::types::ErrorBody;
use crate::ctx::Ctx;
use crate::http::RemoteAddr;

/// The Content-Security-Policy of every console response.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-weft-console";
/// The sign-in form's CSRF cookie (double submit: no session exists yet).
pub const SIGN_IN_COOKIE: &str = "__Host-weft-signin";

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");
const ICON: &str = include_str!("assets/favicon.svg");

/// A way for an admin to prove who they are. The console asks it to check a
/// sign-in form; an OIDC sign-in instead ends in its own callback route,
/// which calls [`Console::start_session`] with the identity it established.
pub(crate) trait ConsoleSignIn: Send + Sync {
    /// Checks the submitted form; returns the admin, or why not (shown on
    /// the sign-in page).
    fn sign_in<'a>(
        &'a self,
        form: &'a BTreeMap<String, String>,
    ) -> futures::future::BoxFuture<'a, Result<AdminIdentity, String>>;
}

/// Sign-in with an admin API key (`weft-control apikeys create`).
struct ApiKeySignIn {
    admin: Admin,
}

impl ConsoleSignIn for ApiKeySignIn {
    fn sign_in<'a>(
        &'a self,
        form: &'a BTreeMap<String, String>,
    ) -> futures::future::BoxFuture<'a, Result<AdminIdentity, String>> {
        Box::pin(async move {
            let key = form.get("api_key").map_or("", |k| k.trim());
            if key.is_empty() {
                return Err(
                    "enter an API key (create one on the server with weft-control apikeys create)"
                        .into(),
                );
            }
            self.admin
                .verify_api_key(key)
                .await
                .map(|name| AdminIdentity { name })
                .map_err(|e| e.message)
        })
    }
}

/// The console's state. Cheap to share (`Arc`).
pub(crate) struct Console {
    ctx: Arc<Ctx>,
    admin: Admin,
    /// The admin API's routes, through which every change is made.
    api: Router,
    sign_in: Box<dyn ConsoleSignIn>,
    sessions: Sessions,
    throttle: Throttle,
}

type C = State<Arc<Console>>;

/// Returns the console's routes (`/admin…`).
pub(crate) fn routes(ctx: Arc<Ctx>, admin: Admin) -> Router {
    let console = Arc::new(Console {
        api: crate::admin::api::routes(admin.clone()),
        sign_in: Box::new(ApiKeySignIn {
            admin: admin.clone(),
        }),
        ctx,
        admin,
        sessions: Sessions::default(),
        throttle: Throttle::default(),
    });
    let signed_in = Router::new()
        .route("/admin", get(|| async { redirect("/admin/machines") }))
        .route("/admin/", get(|| async { redirect("/admin/machines") }))
        .route("/admin/machines", get(machines))
        .route("/admin/machines/{id}/{action}", post(machine_action))
        .route("/admin/logins/{auth_id}/{action}", post(login_action))
        .route("/admin/users", get(users).post(create_user))
        .route("/admin/users/{login}/delete", post(delete_user))
        .route("/admin/keys", get(keys).post(create_key))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/apikeys", get(api_keys).post(create_api_key))
        .route("/admin/apikeys/{id}/revoke", post(revoke_api_key))
        .route("/admin/policy", get(policy))
        .route("/admin/policy/preview", post(policy_preview))
        .route("/admin/policy/save", post(policy_save))
        .route("/admin/policy/rollback", post(policy_rollback))
        .route("/admin/policy/explain", post(policy_explain))
        .route("/admin/dns", get(dns).post(dns_save))
        .route("/admin/audit", get(audit))
        .route("/admin/signout", post(sign_out))
        .route_layer(axum::middleware::from_fn_with_state(
            console.clone(),
            require_session,
        ));
    Router::new()
        .route("/admin/signin", get(sign_in_page).post(sign_in))
        .route(
            "/admin/static/console.css",
            get(|| async { asset("text/css", CSS) }),
        )
        .route(
            "/admin/static/console.js",
            get(|| async { asset("text/javascript", JS) }),
        )
        .route(
            "/admin/static/favicon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .merge(signed_in)
        .layer(axum::middleware::from_fn_with_state(console.clone(), guard))
        .with_state(console)
}

/// Runs on every console request: refuses plain http from a non-loopback
/// client (the cookie could not be kept safe), and sets [`CONSOLE_CSP`].
async fn guard(State(c): C, req: Request, next: Next) -> Response {
    let remote = req.extensions().get::<RemoteAddr>().map(|r| r.0.ip());
    let mut resp = if may_serve(c.ctx.config.tls.is_some(), remote) {
        next.run(req).await
    } else {
        view::bare(
            StatusCode::FORBIDDEN,
            "The console needs https",
            "<p>This server speaks plain http, which would expose the console's session cookie. \
             Start weft-control with <code>--tls-cert</code> and <code>--tls-key</code>, or open the \
             console through an SSH tunnel: <code>ssh -L 8080:127.0.0.1:8080 SERVER</code>, then \
             <code>http://127.0.0.1:8080/admin</code>.</p>",
        )
    };
    resp.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    resp
}

/// Returns whether the console may be served on this connection: over TLS,
/// or in plain http to a loopback client (a browser keeps a `Secure`
/// cookie for `http://localhost` and `127.0.0.1`, and nothing crosses a
/// network). `remote` is `None` for a request that came from no socket.
fn may_serve(tls: bool, remote: Option<IpAddr>) -> bool {
    tls || remote.is_some_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback())
}

/// Lets a request in only with a live session, which it adds as an
/// extension; a `POST` also needs the session's CSRF token (checked by
/// [`checked_form`]). Without a session: to the sign-in page.
async fn require_session(State(c): C, mut req: Request, next: Next) -> Response {
    let now = c.ctx.clock.now();
    let session = cookie(req.headers(), SESSION_COOKIE).and_then(|t| c.sessions.get(&t, now));
    let Some(session) = session else {
        if req.method() == Method::GET {
            return redirect("/admin/signin");
        }
        return view::bare(
            StatusCode::FORBIDDEN,
            "Signed out",
            "<p>Your console session has ended (signed out, expired, or the server restarted). \
             <a href=\"/admin/signin\">Sign in</a> again and repeat the change.</p>",
        );
    };
    req.extensions_mut().insert(session);
    next.run(req).await
}

impl Console {
    /// Starts a session for an admin whose identity a [`ConsoleSignIn`]
    /// established, and sends them to the machines page with the cookie.
    pub(crate) fn start_session(&self, who: AdminIdentity) -> Response {
        let (token, _) = self.sessions.start(who, self.ctx.clock.now());
        let mut resp = redirect("/admin/machines");
        set_cookie(
            &mut resp,
            SESSION_COOKIE,
            &token,
            session::SESSION_LIFETIME.as_secs(),
        );
        set_cookie(&mut resp, SIGN_IN_COOKIE, "", 0);
        resp
    }

    /// Sends a change through the admin API as the signed-in admin; returns
    /// the answer's JSON, or the API's error message.
    async fn call(
        &self,
        s: &Session,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        let body = body.map_or_else(String::new, |b| b.to_string());
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .extension(Actor(format!("console: {}", s.who.name)))
            .body(axum::body::Body::from(body))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = match tower::ServiceExt::oneshot(self.api.clone(), req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 4 << 20)
            .await
            .map_err(|e| format!("cannot read the answer: {e}"))?;
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null));
        }
        Err(serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
            |_| String::from_utf8_lossy(&bytes).into_owned(),
            |b| b.error.message,
        ))
    }
}

// --- sign-in ---------------------------------------------------------------------------------

async fn sign_in_page() -> Response {
    let token = session::random_token();
    let mut resp = view::sign_in(StatusCode::OK, &token, None);
    set_cookie(&mut resp, SIGN_IN_COOKIE, &token, 600);
    resp
}

async fn sign_in(State(c): C, remote: Option<Extension<RemoteAddr>>, req: Request) -> Response {
    let ip: IpAddr = remote.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(r)| r.0.ip());
    let now = c.ctx.clock.now();
    let expected = cookie(req.headers(), SIGN_IN_COOKIE);
    let form = match read_form(req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let given = form.get("csrf").map_or("", String::as_str);
    if !expected.is_some_and(|e| !e.is_empty() && session::same_token(&e, given)) {
        return csrf_refused();
    }
    if let Some(wait) = c.throttle.wait(ip, now) {
        let secs = u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
        let mut resp = view::sign_in(
            StatusCode::TOO_MANY_REQUESTS,
            given,
            Some(&format!(
                "Too many failed sign-ins from your address; try again in {secs} seconds."
            )),
        );
        if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    match c.sign_in.sign_in(&form).await {
        Ok(who) => {
            c.throttle.succeeded(ip);
            tracing::info!(admin = %who.name, "console sign-in");
            c.start_session(who)
        }
        Err(why) => {
            c.throttle.failed(ip, now);
            tracing::debug!(%ip, "console sign-in refused");
            view::sign_in(StatusCode::UNAUTHORIZED, given, Some(&why))
        }
    }
}

async fn sign_out(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let token = cookie(req.headers(), SESSION_COOKIE);
    if let Err(resp) = checked_form(&s, req).await {
        return resp;
    }
    if let Some(t) = token {
        c.sessions.end(&t);
    }
    let mut resp = redirect("/admin/signin");
    set_cookie(&mut resp, SESSION_COOKIE, "", 0);
    resp
}

// --- pages -----------------------------------------------------------------------------------

/// What a page says above its content after a form was sent.
pub(crate) enum Notice {
    Ok(String),
    Err(String),
    /// A secret shown this once.
    Secret {
        what: String,
        secret: String,
    },
}

async fn machines(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::machines(&c, &s, None).await
}

async fn machine_action(
    State(c): C,
    Extension(s): Extension<Session>,
    Path((id, action)): Path<(i64, String)>,
    req: Request,
) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let field = |k: &str| form.get(k).map_or("", |v| v.trim()).to_owned();
    let (method, path, body, done) = match action.as_str() {
        "rename" => (
            Method::POST,
            format!("/nodes/{id}/rename"),
            Some(serde_json::json!({ "name": field("name") })),
            format!("machine {id} renamed to {}", field("name")),
        ),
        "tags" => {
            let tags: Vec<String> = field("tags")
                .split([',', ' '])
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            (
                Method::POST,
                format!("/nodes/{id}/tags"),
                Some(serde_json::json!({ "tags": tags })),
                format!("machine {id} tags set"),
            )
        }
        "expire" => (
            Method::POST,
            format!("/nodes/{id}/expire"),
            None,
            format!("machine {id}'s key expired; it must log in again"),
        ),
        "delete" => (
            Method::DELETE,
            format!("/nodes/{id}"),
            None,
            format!("machine {id} deleted"),
        ),
        "authorize" => (
            Method::POST,
            format!("/nodes/{id}/authorize"),
            Some(serde_json::json!({ "authorized": true })),
            format!("machine {id} authorized"),
        ),
        _ => return not_found(),
    };
    let notice = outcome(c.call(&s, method, &path, body).await, done);
    view::machines(&c, &s, Some(notice)).await
}

async fn login_action(
    State(c): C,
    Extension(s): Extension<Session>,
    Path((auth_id, action)): Path<(String, String)>,
    req: Request,
) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let id = urlencode(&auth_id);
    let result = match action.as_str() {
        "approve" => {
            let user = form.get("user").map_or("", |u| u.trim());
            c.call(
                &s,
                Method::POST,
                &format!("/logins/{id}/approve"),
                Some(serde_json::json!({ "user": user })),
            )
            .await
            .map(|_| format!("login approved for {user}"))
        }
        "reject" => c
            .call(&s, Method::POST, &format!("/logins/{id}/reject"), None)
            .await
            .map(|_| "login declined".to_owned()),
        _ => return not_found(),
    };
    let notice = match result {
        Ok(m) => Notice::Ok(m),
        Err(e) => Notice::Err(e),
    };
    view::machines(&c, &s, Some(notice)).await
}

async fn users(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::users(&c, &s, None).await
}

async fn create_user(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let login = form.get("login_name").map_or("", |v| v.trim()).to_owned();
    let body = serde_json::json!({
        "login_name": login,
        "display_name": form.get("display_name").map(|v| v.trim()),
        "role": form.get("role").map(|v| v.trim()),
    });
    let notice = outcome(
        c.call(&s, Method::POST, "/users", Some(body)).await,
        format!("user {login} created"),
    );
    view::users(&c, &s, Some(notice)).await
}

async fn delete_user(
    State(c): C,
    Extension(s): Extension<Session>,
    Path(login): Path<String>,
    req: Request,
) -> Response {
    if let Err(resp) = checked_form(&s, req).await {
        return resp;
    }
    let notice = outcome(
        c.call(
            &s,
            Method::DELETE,
            &format!("/users/{}", urlencode(&login)),
            None,
        )
        .await,
        format!("user {login} deleted"),
    );
    view::users(&c, &s, Some(notice)).await
}

async fn keys(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::keys(&c, &s, None).await
}

async fn create_key(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let notice = match key_request(&form) {
        Err(e) => Notice::Err(e),
        Ok(body) => match c.call(&s, Method::POST, "/preauthkeys", Some(body)).await {
            Ok(v) => Notice::Secret {
                what: "Pre-auth key created. Copy it now: it is shown only this once.".into(),
                secret: v["secret"].as_str().unwrap_or_default().to_owned(),
            },
            Err(e) => Notice::Err(e),
        },
    };
    view::keys(&c, &s, Some(notice)).await
}

/// The `POST /preauthkeys` body of the console's form.
fn key_request(form: &BTreeMap<String, String>) -> Result<serde_json::Value, String> {
    let get = |k: &str| form.get(k).map_or("", |v| v.trim());
    let ms = |k: &str, what: &str| -> Result<Option<u64>, String> {
        let v = get(k);
        if v.is_empty() {
            return Ok(None);
        }
        if v == "never" {
            return Ok(Some(0));
        }
        weft_types::time::parse_duration(v)
            .map(|d| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
            .map_err(|e| format!("{what}: {e}"))
    };
    let tags: Vec<&str> = get("tags")
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .collect();
    let user = get("user");
    Ok(serde_json::json!({
        "user": (!user.is_empty()).then_some(user),
        "reusable": form.contains_key("reusable"),
        "ephemeral": form.contains_key("ephemeral"),
        "tags": tags,
        "expiration_ms": ms("expiration", "key validity")?,
        "node_key_expiry_ms": ms("node_key_expiry", "node key expiry")?,
    }))
}

async fn revoke_key(
    State(c): C,
    Extension(s): Extension<Session>,
    Path(id): Path<i64>,
    req: Request,
) -> Response {
    if let Err(resp) = checked_form(&s, req).await {
        return resp;
    }
    let notice = outcome(
        c.call(&s, Method::POST, &format!("/preauthkeys/{id}/expire"), None)
            .await,
        format!("pre-auth key {id} revoked"),
    );
    view::keys(&c, &s, Some(notice)).await
}

async fn api_keys(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::api_keys(&c, &s, None).await
}

async fn create_api_key(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let expiration = match form.get("expiration").map_or("", |v| v.trim()) {
        "" => None,
        v => match weft_types::time::parse_duration(v) {
            Ok(d) => Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            Err(e) => {
                let notice = Notice::Err(format!("expiration: {e}"));
                return view::api_keys(&c, &s, Some(notice)).await;
            }
        },
    };
    let body = serde_json::json!({
        "description": form.get("description").map_or("", |v| v.trim()),
        "expiration_ms": expiration,
    });
    let notice = match c.call(&s, Method::POST, "/apikeys", Some(body)).await {
        Ok(v) => Notice::Secret {
            what: "API key created. Copy it now: it is shown only this once.".into(),
            secret: v["secret"].as_str().unwrap_or_default().to_owned(),
        },
        Err(e) => Notice::Err(e),
    };
    view::api_keys(&c, &s, Some(notice)).await
}

async fn revoke_api_key(
    State(c): C,
    Extension(s): Extension<Session>,
    Path(id): Path<i64>,
    req: Request,
) -> Response {
    if let Err(resp) = checked_form(&s, req).await {
        return resp;
    }
    let notice = outcome(
        c.call(&s, Method::POST, &format!("/apikeys/{id}/expire"), None)
            .await,
        format!("API key {id} revoked"),
    );
    view::api_keys(&c, &s, Some(notice)).await
}

async fn policy(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::policy(&c, &s, view::PolicyState::default()).await
}

async fn policy_preview(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let draft = form.get("policy").cloned().unwrap_or_default();
    view::policy(
        &c,
        &s,
        view::PolicyState {
            preview: true,
            draft: Some(draft),
            ..Default::default()
        },
    )
    .await
}

async fn policy_save(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let draft = form.get("policy").cloned().unwrap_or_default();
    let base = form.get("base").map_or("", String::as_str);
    let current = c.admin.policy().await.ok().and_then(|p| p.version);
    let current_text = current.map_or_else(|| "none".to_owned(), |v| v.to_string());
    if base != current_text {
        let state = view::PolicyState {
            preview: true,
            draft: Some(draft),
            notice: Some(Notice::Err(format!(
                "the policy changed since your preview (now version {current_text}); review the new diff and save again"
            ))),
            ..Default::default()
        };
        return view::policy(&c, &s, state).await;
    }
    let body = serde_json::json!({ "policy": draft });
    let state = match c.call(&s, Method::PUT, "/policy", Some(body)).await {
        Ok(v) => view::PolicyState {
            notice: Some(Notice::Ok(format!(
                "policy version {} saved and in force",
                v["version"].as_i64().unwrap_or_default()
            ))),
            ..Default::default()
        },
        Err(e) => view::PolicyState {
            preview: true,
            draft: Some(draft),
            notice: Some(Notice::Err(e)),
            ..Default::default()
        },
    };
    view::policy(&c, &s, state).await
}

async fn policy_rollback(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let version: i64 = form
        .get("version")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-1);
    let body = serde_json::json!({ "version": version });
    let notice = match c
        .call(&s, Method::POST, "/policy/rollback", Some(body))
        .await
    {
        Ok(v) => Notice::Ok(format!(
            "version {version} saved again as version {}, now in force",
            v["version"].as_i64().unwrap_or_default()
        )),
        Err(e) => Notice::Err(e),
    };
    let state = view::PolicyState {
        notice: Some(notice),
        ..Default::default()
    };
    view::policy(&c, &s, state).await
}

async fn policy_explain(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let get = |k: &str| form.get(k).map_or("", |v| v.trim()).to_owned();
    let q = crate::admin::types::ExplainQuery {
        src: get("src"),
        dst: get("dst"),
        proto: Some(get("proto")).filter(|p| !p.is_empty()),
    };
    let answer = c.admin.explain(&q).map_err(|e| e.message);
    let state = view::PolicyState {
        explain: Some((q, answer)),
        ..Default::default()
    };
    view::policy(&c, &s, state).await
}

async fn dns(State(c): C, Extension(s): Extension<Session>) -> Response {
    view::dns(&c, &s, None).await
}

async fn dns_save(State(c): C, Extension(s): Extension<Session>, req: Request) -> Response {
    let form = match checked_form(&s, req).await {
        Ok(f) => f,
        Err(resp) => return resp,
    };
    let list = |k: &str| -> Vec<String> {
        form.get(k)
            .map_or("", String::as_str)
            .split([',', ' ', '\n', '\r'])
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let notice = match c.admin.dns().await {
        Err(e) => Notice::Err(e.message),
        Ok(cur) => {
            // The form edits the common settings; split DNS and records stay as they are.
            let body = serde_json::json!({
                "magic_dns": form.contains_key("magic_dns"),
                "nameservers": list("nameservers"),
                "search_domains": list("search_domains"),
                "routes": cur.routes,
                "extra_records": cur.extra_records,
            });
            outcome(
                c.call(&s, Method::PUT, "/dns", Some(body)).await,
                "DNS settings saved; nodes get them now".into(),
            )
        }
    };
    view::dns(&c, &s, Some(notice)).await
}

#[derive(Debug, serde::Deserialize)]
struct AuditQuery {
    before: Option<i64>,
}

async fn audit(
    State(c): C,
    Extension(s): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> Response {
    view::audit(&c, &s, q.before).await
}

// --- helpers ---------------------------------------------------------------------------------

fn outcome(r: Result<serde_json::Value, String>, done: String) -> Notice {
    match r {
        Ok(_) => Notice::Ok(done),
        Err(e) => Notice::Err(e),
    }
}

/// Reads a form and checks its CSRF token against the session's.
async fn checked_form(s: &Session, req: Request) -> Result<BTreeMap<String, String>, Response> {
    let form = read_form(req).await?;
    let given = form.get("csrf").map_or("", String::as_str);
    if session::same_token(&s.csrf, given) {
        Ok(form)
    } else {
        Err(csrf_refused())
    }
}

async fn read_form(req: Request) -> Result<BTreeMap<String, String>, Response> {
    match <Form<BTreeMap<String, String>> as axum::extract::FromRequest<()>>::from_request(req, &())
        .await
    {
        Ok(Form(f)) => Ok(f),
        Err(e) => Err(view::bare(
            StatusCode::BAD_REQUEST,
            "Bad form",
            &format!("<p>{}</p>", crate::pages::escape(&e.body_text())),
        )),
    }
}

fn csrf_refused() -> Response {
    view::bare(
        StatusCode::FORBIDDEN,
        "Form refused",
        "<p>This form carried no valid security token: it is stale or was sent from another \
         site. Nothing was changed. Reload the page and try again.</p>",
    )
}

fn not_found() -> Response {
    view::bare(
        StatusCode::NOT_FOUND,
        "Not found",
        "<p>No such console page. <a href=\"/admin\">Back to the console</a>.</p>",
    )
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// Adds a `Secure; HttpOnly; SameSite=Strict` cookie valid for `max_age`
/// seconds (0: delete it).
fn set_cookie(resp: &mut Response, name: &str, value: &str, max_age: u64) {
    let v = format!("{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Returns the value of cookie `name`.
fn cookie(headers: &http::HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// Percent-encodes a path segment.
fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_served_only_to_loopback_clients() {
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for local in ["127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"] {
            assert!(may_serve(false, ip(local)), "{local}");
        }
        for remote in ["198.18.0.7", "100.64.0.1", "fd7a:115c:a1e0::1", "0.0.0.0"] {
            assert!(!may_serve(false, ip(remote)), "{remote}");
            assert!(may_serve(true, ip(remote)), "{remote} over TLS");
        }
        assert!(!may_serve(false, None));
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = http::HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-weft-console-x=2"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-weft-console=3"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("3"));
        assert_eq!(cookie(&h, "b"), None);
    }
}
