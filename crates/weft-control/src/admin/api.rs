//! The admin API's routes (JSON over HTTP), served under `/api/v1` with an
//! API key and on the admin socket without one. `docs/openapi.yaml`
//! describes them.

use axum::extract::{Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use http::StatusCode;
use serde::Deserialize;

use super::types::*;
use super::{Admin, AdminError};

/// Who is calling (for the policy's author field and logs).
#[derive(Debug, Clone)]
pub(crate) struct Actor(pub String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

type R<T> = Result<Json<T>, AdminError>;

/// Declares the admin routes once: [`ROUTES`] (what `docs/openapi.yaml`
/// must document; `tests/openapi.rs` checks both directions) and the
/// router built from exactly that list, so the two cannot drift apart.
macro_rules! admin_routes {
    ($($path:literal => $($method:ident($handler:ident)),+;)*) => {
        /// Every admin route as `(METHOD, path)`, paths relative to `/api/v1`
        /// (and to the admin socket's root) in axum's `{param}` syntax.
        pub const ROUTES: &[(&str, &str)] = &[$($((method_name!($method), $path),)+)*];

        fn route_table() -> Router<Admin> {
            Router::new()$(.route($path, axum::routing::MethodRouter::new()$(.$method($handler))+))*
        }
    };
}

macro_rules! method_name {
    (get) => {
        "GET"
    };
    (post) => {
        "POST"
    };
    (put) => {
        "PUT"
    };
    (delete) => {
        "DELETE"
    };
    (patch) => {
        "PATCH"
    };
}

admin_routes! {
    "/users" => get(list_users), post(create_user);
    "/users/{login}" => delete(delete_user);
    "/preauthkeys" => get(list_keys), post(create_key);
    "/preauthkeys/{id}/expire" => post(expire_key);
    "/nodes" => get(list_nodes);
    "/nodes/{id}" => get(node), delete(delete_node);
    "/nodes/{id}/expire" => post(expire_node);
    "/nodes/{id}/rename" => post(rename_node);
    "/nodes/{id}/tags" => post(tag_node);
    "/nodes/{id}/authorize" => post(authorize_node);
    "/logins/{auth_id}/approve" => post(approve_login);
    "/logins/{auth_id}/reject" => post(reject_login);
    "/apikeys" => get(list_api_keys), post(create_api_key);
    "/apikeys/{id}/expire" => post(expire_api_key);
    "/policy" => get(get_policy), put(set_policy);
    "/policy/check" => post(check_policy);
    "/policy/explain" => post(explain);
    "/policy/history" => get(policy_history);
    "/policy/history/{version}" => get(policy_version);
    "/policy/rollback" => post(rollback_policy);
    "/audit" => get(audit_log);
    "/relay/verify" => post(relay_verify);
    "/relay-map" => get(get_relay_map), put(set_relay_map);
    "/dns" => get(get_dns), put(put_dns), patch(patch_dns);
    "/ssh/approvals" => get(list_ssh_approvals);
    "/ssh/approvals/revoke" => post(revoke_ssh_approvals);
    "/ssh/sessions" => get(list_ssh_sessions);
    "/ssh/sessions/{id}" => get(ssh_session);
    "/ssh/sessions/{id}/cast" => get(ssh_session_cast);
}

/// Returns the admin routes (without authentication; see [`require_api_key`]),
/// every state change recorded in the audit log ([`audit`]).
pub(crate) fn routes(admin: Admin) -> Router {
    route_table()
        .route_layer(axum::middleware::from_fn_with_state(admin.clone(), audit))
        .fallback(|| async {
            AdminError {
                status: 404,
                code: "not_found",
                message: "no such admin API route; see docs/openapi.yaml".into(),
            }
        })
        .with_state(admin)
}

/// Middleware for `/api/v1`: `Authorization: Bearer <api key>`.
pub(crate) async fn require_api_key(
    State(admin): State<Admin>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return AdminError {
            status: 401,
            code: "unauthorized",
            message: "missing Authorization: Bearer <api key>; create one on the server with weft-control apikeys create".into(),
        }
        .into_response();
    };
    match admin.verify_api_key(token).await {
        Ok(actor) => {
            req.extensions_mut().insert(Actor(actor));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Routes that take a `POST` but change nothing (not audited).
const READ_ONLY_POSTS: &[&str] = &["/policy/check", "/policy/explain", "/relay/verify"];

/// Request bodies up to this size are recorded whole in the audit log;
/// larger ones (a policy) by their size.
const AUDIT_BODY_MAX: usize = 512;

/// The largest request body an admin route accepts (a policy file, with room).
const BODY_LIMIT: usize = 1 << 20;

/// The one place admin actions are recorded: every request that may change
/// state (all but `GET` and [`READ_ONLY_POSTS`]), whoever sent it (an API
/// key over REST, the admin socket, the web console, which sends its
/// changes through these routes too), with its outcome. Secrets are never
/// recorded: no route takes one in its request, and answers are not kept.
async fn audit(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().trim_start_matches("/api/v1").to_owned())
        .unwrap_or_default();
    if req.method() == http::Method::GET || READ_ONLY_POSTS.contains(&route.as_str()) {
        return next.run(req).await;
    }
    let actor = req
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "unknown".to_owned(), |a| a.0.clone());
    let action = format!("{} {route}", req.method());
    let target = req.uri().path().trim_start_matches("/api/v1").to_owned();
    let (parts, body) = req.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, BODY_LIMIT).await else {
        return AdminError::invalid(format!(
            "the request body is over {BODY_LIMIT} bytes or could not be read"
        ))
        .into_response();
    };
    let summary = if bytes.len() <= AUDIT_BODY_MAX {
        String::from_utf8_lossy(&bytes).into_owned()
    } else {
        format!("<{} bytes>", bytes.len())
    };
    let resp = next
        .run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await;
    let status = resp.status();
    let (outcome, detail, resp) = if status.is_success() {
        (weft_control_store::AuditOutcome::Ok, summary, resp)
    } else {
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&bytes).map_or_else(
            |_| String::from_utf8_lossy(&bytes).into_owned(),
            |b| b.error.message,
        );
        (
            weft_control_store::AuditOutcome::Error,
            format!("{summary} → {message}"),
            Response::from_parts(parts, axum::body::Body::from(bytes)),
        )
    };
    admin
        .record(weft_control_store::NewAuditEntry {
            actor,
            action,
            target,
            outcome,
            status: status.as_u16(),
            detail,
        })
        .await;
    resp
}

fn parse_id(what: &str, s: &str) -> Result<i64, AdminError> {
    s.parse()
        .map_err(|_| AdminError::invalid(format!("invalid {what} id {s:?}: expected a number")))
}

async fn list_users(State(a): State<Admin>) -> R<Vec<UserView>> {
    a.list_users().await.map(Json)
}

async fn create_user(
    State(a): State<Admin>,
    Json(req): Json<NewUser>,
) -> Result<(StatusCode, Json<UserView>), AdminError> {
    a.create_user(req)
        .await
        .map(|u| (StatusCode::CREATED, Json(u)))
}

async fn delete_user(State(a): State<Admin>, Path(login): Path<String>) -> R<UserView> {
    a.delete_user(&login).await.map(Json)
}

#[derive(Debug, Deserialize)]
struct ApprovalFilter {
    user: Option<String>,
    node: Option<i64>,
}

async fn list_ssh_approvals(
    State(a): State<Admin>,
    Query(f): Query<ApprovalFilter>,
) -> R<Vec<SshApprovalView>> {
    a.list_ssh_approvals(f.user.as_deref(), f.node)
        .await
        .map(Json)
}

async fn revoke_ssh_approvals(
    State(a): State<Admin>,
    Json(r): Json<RevokeSshApprovals>,
) -> R<Vec<SshApprovalView>> {
    a.revoke_ssh_approvals(&r).await.map(Json)
}

#[derive(Debug, Deserialize)]
struct SessionPage {
    limit: Option<u32>,
    before: Option<String>,
}

async fn list_ssh_sessions(
    State(a): State<Admin>,
    Query(p): Query<SessionPage>,
) -> R<SshSessionList> {
    a.list_ssh_sessions(p.limit, p.before.as_deref())
        .await
        .map(Json)
}

async fn ssh_session(State(a): State<Admin>, Path(id): Path<String>) -> R<SshSessionView> {
    a.ssh_session(&id).await.map(Json)
}

async fn ssh_session_cast(
    State(a): State<Admin>,
    Path(id): Path<String>,
) -> Result<Response, AdminError> {
    let body = a.ssh_session_cast(&id).await?;
    Ok((
        [(http::header::CONTENT_TYPE, "application/x-asciicast")],
        body,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
struct UserFilter {
    user: Option<String>,
}

async fn list_keys(State(a): State<Admin>, Query(f): Query<UserFilter>) -> R<Vec<PreauthKeyView>> {
    a.list_preauth_keys(f.user.as_deref()).await.map(Json)
}

async fn create_key(
    State(a): State<Admin>,
    Json(req): Json<NewPreauthKey>,
) -> Result<(StatusCode, Json<CreatedPreauthKey>), AdminError> {
    a.create_preauth_key(req)
        .await
        .map(|k| (StatusCode::CREATED, Json(k)))
}

async fn expire_key(State(a): State<Admin>, Path(id): Path<String>) -> R<PreauthKeyView> {
    a.expire_preauth_key(parse_id("pre-auth key", &id)?)
        .await
        .map(Json)
}

async fn list_nodes(State(a): State<Admin>) -> R<Vec<NodeView>> {
    a.list_nodes().await.map(Json)
}

async fn node(State(a): State<Admin>, Path(id): Path<String>) -> R<NodeView> {
    a.node(parse_id("node", &id)?).await.map(Json)
}

async fn delete_node(State(a): State<Admin>, Path(id): Path<String>) -> R<NodeView> {
    a.delete_node(parse_id("node", &id)?).await.map(Json)
}

/// `POST /relay/verify`: which node keys may use a relay (the contract of
/// `weft_relay::RestAdmission`, docs/RELAY.md).
async fn relay_verify(
    State(a): State<Admin>,
    Json(r): Json<weft_relay::VerifyRequest>,
) -> R<weft_relay::VerifyResponse> {
    a.relay_verify(&r.node_keys).map(Json)
}

async fn get_relay_map(State(a): State<Admin>) -> R<RelayMapConfig> {
    a.relay_map().map(Json)
}

async fn set_relay_map(State(a): State<Admin>, Json(m): Json<RelayMapConfig>) -> R<RelayMapConfig> {
    a.set_relay_map(m).await.map(Json)
}

async fn get_dns(State(a): State<Admin>) -> R<DnsView> {
    a.dns().await.map(Json)
}

async fn put_dns(
    State(a): State<Admin>,
    actor: Option<Extension<Actor>>,
    Json(b): Json<DnsSettingsBody>,
) -> R<DnsView> {
    let author = actor.map_or_else(|| "admin".to_owned(), |Extension(a)| a.0);
    a.put_dns(&b, &author).await.map(Json)
}

async fn patch_dns(
    State(a): State<Admin>,
    actor: Option<Extension<Actor>>,
    Json(p): Json<DnsPatch>,
) -> R<DnsView> {
    let author = actor.map_or_else(|| "admin".to_owned(), |Extension(a)| a.0);
    a.patch_dns(&p, &author).await.map(Json)
}

async fn expire_node(State(a): State<Admin>, Path(id): Path<String>) -> R<NodeView> {
    a.expire_node(parse_id("node", &id)?).await.map(Json)
}

async fn rename_node(
    State(a): State<Admin>,
    Path(id): Path<String>,
    Json(r): Json<Rename>,
) -> R<NodeView> {
    a.rename_node(parse_id("node", &id)?, &r.name)
        .await
        .map(Json)
}

async fn tag_node(
    State(a): State<Admin>,
    Path(id): Path<String>,
    Json(t): Json<SetTags>,
) -> R<NodeView> {
    a.set_node_tags(parse_id("node", &id)?, &t.tags)
        .await
        .map(Json)
}

async fn authorize_node(
    State(a): State<Admin>,
    Path(id): Path<String>,
    Json(r): Json<Authorize>,
) -> R<NodeView> {
    a.authorize_node(parse_id("node", &id)?, r.authorized)
        .await
        .map(Json)
}

async fn approve_login(
    State(a): State<Admin>,
    Path(auth_id): Path<String>,
    Json(r): Json<Approve>,
) -> R<ApprovalView> {
    a.approve(&auth_id, &r.user).await.map(Json)
}

async fn reject_login(
    State(a): State<Admin>,
    Path(auth_id): Path<String>,
) -> Result<StatusCode, AdminError> {
    a.reject_login(&auth_id)
        .await
        .map(|()| StatusCode::NO_CONTENT)
}

async fn list_api_keys(State(a): State<Admin>) -> R<Vec<ApiKeyView>> {
    a.list_api_keys().await.map(Json)
}

async fn create_api_key(
    State(a): State<Admin>,
    Json(req): Json<NewApiKey>,
) -> Result<(StatusCode, Json<CreatedApiKey>), AdminError> {
    a.create_api_key(req)
        .await
        .map(|k| (StatusCode::CREATED, Json(k)))
}

async fn expire_api_key(State(a): State<Admin>, Path(id): Path<String>) -> R<ApiKeyView> {
    a.expire_api_key(parse_id("API key", &id)?).await.map(Json)
}

async fn get_policy(State(a): State<Admin>) -> R<PolicyView> {
    a.policy().await.map(Json)
}

async fn set_policy(
    State(a): State<Admin>,
    actor: Option<Extension<Actor>>,
    Json(p): Json<PolicyText>,
) -> R<PolicyView> {
    let author = actor.map_or_else(|| "admin".to_owned(), |Extension(a)| a.0);
    a.set_policy(&p.policy, p.name.as_deref(), &author)
        .await
        .map(Json)
}

async fn check_policy(State(a): State<Admin>, Json(p): Json<PolicyText>) -> Json<PolicyCheck> {
    Json(a.check_policy(&p.policy, p.name.as_deref()))
}

async fn explain(State(a): State<Admin>, Json(q): Json<ExplainQuery>) -> R<ExplainAnswer> {
    a.explain(&q).map(Json)
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// How many versions `GET /policy/history` lists without a `limit`.
const DEFAULT_HISTORY: usize = 20;

async fn policy_history(
    State(a): State<Admin>,
    Query(q): Query<HistoryQuery>,
) -> R<Vec<PolicyVersionView>> {
    a.policy_history(q.limit.unwrap_or(DEFAULT_HISTORY))
        .await
        .map(Json)
}

async fn policy_version(State(a): State<Admin>, Path(v): Path<String>) -> R<PolicyView> {
    a.policy_version(parse_id("policy version", &v)?)
        .await
        .map(Json)
}

async fn rollback_policy(
    State(a): State<Admin>,
    actor: Option<Extension<Actor>>,
    Json(r): Json<PolicyRollback>,
) -> R<PolicyView> {
    let author = actor.map_or_else(|| "admin".to_owned(), |Extension(a)| a.0);
    a.rollback_policy(r.version, &author).await.map(Json)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

/// How many entries `GET /audit` returns without a `limit`.
const DEFAULT_AUDIT_PAGE: u32 = 50;

async fn audit_log(State(a): State<Admin>, Query(q): Query<AuditQuery>) -> R<AuditPage> {
    a.audit(q.before, q.limit.unwrap_or(DEFAULT_AUDIT_PAGE))
        .await
        .map(Json)
}
