//! An authenticator of its own plugged into the server, the way an OIDC
//! one will be: its login page links to its own route, and that route
//! decides the login through `CompleteLogin` alone. The "identity
//! provider" is a query parameter naming the user, standing in for the
//! claims of a verified ID token; everything after that is the server's.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::ssh_check::{next, request, send, tailnet_with};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use common::{TestNode, TestServer};
use weft_client::{CheckProgress, CheckResult, SessionEvent, check_id_from};
use weft_control::auth::{Authenticator, CompleteLogin, LoginContext, LoginPage, PendingLogin};
use weft_control::pages;
use weft_control_store::AuthRequestState;
use weft_types::control::{RefusalReason, RegisterAuth};

/// A single-sign-on authenticator in miniature.
#[derive(Debug)]
struct Sso;

impl Authenticator for Sso {
    fn name(&self) -> &'static str {
        "sso"
    }

    fn login_page(&self, login: &LoginContext<'_>) -> LoginPage {
        match login.request {
            Some(r) if r.state == AuthRequestState::Pending && login.now < r.expires => {
                pages::page(
                    200,
                    "Log in",
                    &format!(
                        "<p><a href=\"/login/sso/callback?id={id}\">Log in with SSO</a> to add {host}.</p>",
                        id = pages::escape(login.auth_id),
                        host = pages::escape(&r.hostname),
                    ),
                )
            }
            _ => pages::device_login(login),
        }
    }

    fn routes(&self, logins: Arc<dyn CompleteLogin>) -> Option<Router> {
        Some(
            Router::new()
                .route("/callback", get(callback))
                .route("/decline", get(decline))
                .with_state(logins),
        )
    }
}

#[derive(Debug, serde::Deserialize)]
struct Callback {
    id: String,
    /// Who the identity provider says logged in.
    user: String,
    /// Create the user at its first login.
    #[serde(default)]
    provision: bool,
}

fn html(page: LoginPage) -> Response {
    let status = http::StatusCode::from_u16(page.status).unwrap();
    (status, Html(page.html)).into_response()
}

async fn callback(
    State(logins): State<Arc<dyn CompleteLogin>>,
    Query(q): Query<Callback>,
) -> Response {
    match logins.pending(&q.id).await {
        Ok(Some(PendingLogin::Device { .. } | PendingLogin::SshCheck(_))) => {}
        Ok(None) => return html(pages::failed(404, "nothing waits under this id")),
        Err(e) => return html(e.page()),
    }
    if q.provision
        && let Err(e) = logins.ensure_user(&q.user, "From SSO").await
    {
        return html(e.page());
    }
    match logins.approve(&q.id, &q.user).await {
        Ok(done) => html(done.page()),
        Err(e) => html(e.page()),
    }
}

async fn decline(
    State(logins): State<Arc<dyn CompleteLogin>>,
    Query(q): Query<std::collections::BTreeMap<String, String>>,
) -> Response {
    match logins.deny(q.get("id").map_or("", String::as_str)).await {
        Ok(()) => html(pages::declined()),
        Err(e) => html(e.page()),
    }
}

async fn with_sso() -> TestServer {
    TestServer::start_with(|c| c.authenticator = Arc::new(Sso)).await
}

/// Starts an interactive login; returns the login id.
async fn login_id(n: &mut TestNode) -> String {
    n.start(n.params(RegisterAuth::None)).await;
    match n.next().await {
        SessionEvent::NeedsAuth { auth_url } => auth_url.rsplit('/').next().unwrap().to_owned(),
        other => panic!("expected an auth URL, got {other:?}"),
    }
}

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response}"))
}

#[tokio::test]
async fn a_device_login_is_completed_by_the_authenticators_own_route() {
    let t = with_sso().await;
    let mut n = TestNode::new(&t, "carols-laptop");
    let id = login_id(&mut n).await;

    // The page at /a/<id> is the authenticator's; it leads to its route.
    let page = t.http_get(&format!("/a/{id}")).await;
    assert!(
        page.contains(&format!("/login/sso/callback?id={id}")) && page.contains("carols-laptop"),
        "{page}"
    );

    // An unknown user is refused unless the authenticator provisions it.
    let r = t
        .http_get(&format!("/login/sso/callback?id={id}&user=carol"))
        .await;
    assert_eq!(status(&r), 404, "{r}");
    assert!(r.contains("unknown user &quot;carol&quot;"), "{r}");
    let r = t
        .http_get(&format!(
            "/login/sso/callback?id={id}&user=carol&provision=true"
        ))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        r.contains("Device approved") && r.contains("carol") && r.contains("carols-laptop"),
        "{r}"
    );
    assert!(
        r.to_ascii_lowercase()
            .contains("content-security-policy: default-src 'none'"),
        "the authenticator's routes carry the server's headers: {r}"
    );

    // The node's waiting request is answered: it belongs to carol.
    match n.next().await {
        SessionEvent::Registered(r) => {
            assert_eq!(r.user.unwrap().login_name.to_string(), "carol");
        }
        other => panic!("expected Registered, got {other:?}"),
    }
    let users = t.server.admin().list_users().await.unwrap();
    assert_eq!(users.len(), 1);
    assert_eq!(
        (users[0].login_name.as_str(), users[0].role.as_str()),
        ("carol", "member")
    );
    n.wait_map(|m| m.self_node.name.to_string() == "carols-laptop.weft.internal")
        .await;

    // Decided once: nothing waits any more, and a second approval is refused.
    let r = t
        .http_get(&format!("/login/sso/callback?id={id}&user=carol"))
        .await;
    assert_eq!(status(&r), 404, "{r}");
    let err = t
        .server
        .admin()
        .approve_login(&id, "carol")
        .await
        .unwrap_err();
    assert!(err.message.contains("already approved"), "{err}");
    t.server.shutdown().await;
}

#[tokio::test]
async fn a_device_login_declined_by_the_authenticator_is_refused() {
    let t = with_sso().await;
    let mut n = TestNode::new(&t, "x");
    let id = login_id(&mut n).await;
    let r = t.http_get(&format!("/login/sso/decline?id={id}")).await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("Login declined"), "{r}");
    match n.next().await {
        SessionEvent::Refused(r) => assert_eq!(r.reason, RefusalReason::AccessDenied),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let r = t.http_get(&format!("/login/sso/decline?id={id}")).await;
    assert_eq!(status(&r), 409, "declined once: {r}");
    t.server.shutdown().await;
}

#[tokio::test]
async fn an_ssh_check_is_approved_through_the_authenticator_only_as_its_user() {
    let (t, laptop, server, _bob) = tailnet_with(|c| c.authenticator = Arc::new(Sso)).await;
    let hour = Duration::from_secs(3600);
    let mut w = send(
        &server,
        request(&server, &laptop, 7, hour, Duration::from_secs(600)),
    )
    .await;
    assert!(matches!(next(&mut w).await, CheckProgress::Pending { .. }));
    let id = check_id_from([7; 16]);

    // Bob is who the identity provider vouches for: not alice's login.
    let r = t
        .http_get(&format!("/login/sso/callback?id={id}&user=bob"))
        .await;
    assert_eq!(status(&r), 403, "{r}");
    assert!(r.contains("only alice may approve it"), "{r}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), w.next())
            .await
            .is_err(),
        "still pending"
    );

    let r = t
        .http_get(&format!("/login/sso/callback?id={id}&user=alice"))
        .await;
    assert_eq!(status(&r), 200, "{r}");
    assert!(
        r.contains("SSH login approved")
            && r.contains("alice-laptop")
            && r.contains("60 minute(s)"),
        "{r}"
    );
    let CheckProgress::Done(CheckResult::Accepted { .. }) = next(&mut w).await else {
        panic!("expected accept")
    };
    // The approval is remembered like any other: the next login from the
    // laptop within the period goes ahead at once.
    let mut again = send(
        &server,
        request(&server, &laptop, 8, hour, Duration::from_secs(600)),
    )
    .await;
    assert!(
        matches!(
            next(&mut again).await,
            CheckProgress::Done(CheckResult::Accepted { .. })
        ),
        "approved within the period"
    );
    t.server.shutdown().await;
}
