//! The web console over plain HTTP (no browser): sign-in, cookies, CSRF,
//! CSP, escaping of hostile names on every page, the sign-in rate limit,
//! and the audit log and policy history the console and the API share.
//! The browser walk-through is `console_browser.rs`.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Duration;

use common::{TestNode, TestServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_control::admin::types::NewApiKey;

const EVIL: &str = "<img src=x onerror=alert(1)>";
const EVIL_ESCAPED: &str = "&lt;img src=x onerror=alert(1)&gt;";
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   form-action 'self'; frame-ancestors 'none'; base-uri 'none'";
const PAGES: [&str; 7] = [
    "/admin/machines",
    "/admin/users",
    "/admin/keys",
    "/admin/apikeys",
    "/admin/policy",
    "/admin/dns",
    "/admin/audit",
];

/// An HTTP answer: status, lower-cased header lines, body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn cookies(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the first `name="csrf" value="…"` on the page.
    fn csrf(&self) -> String {
        let at = self.body.find("name=\"csrf\" value=\"").unwrap() + 19;
        self.body[at..].split('"').next().unwrap().to_owned()
    }
}

async fn send(
    t: &TestServer,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut s = tokio::net::TcpStream::connect(t.server.local_addr())
        .await
        .unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v): &(String, String)| k == "transfer-encoding" && v == "chunked");
    let body = if chunked {
        unchunk(body)
    } else {
        body.to_owned()
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// Decodes a chunked body.
fn unchunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

/// Opens the sign-in page; returns its CSRF cookie header and token.
async fn sign_in_form(t: &TestServer) -> (String, String) {
    let page = send(t, "GET", "/admin/signin", &[], "").await;
    assert_eq!(page.status, 200);
    let cookie = page
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-weft-signin="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    (cookie, page.csrf())
}

async fn sign_in_with(t: &TestServer, key: &str) -> Answer {
    let (cookie, token) = sign_in_form(t).await;
    send(
        t,
        "POST",
        "/admin/signin",
        &[FORM, ("Cookie", &cookie)],
        &form(&[("csrf", &token), ("api_key", key)]),
    )
    .await
}

/// Signs in; returns the session cookie (`name=value`).
async fn sign_in(t: &TestServer, key: &str) -> String {
    let a = sign_in_with(t, key).await;
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), Some("/admin/machines"));
    a.cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-weft-console="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned()
}

async fn api_key(t: &TestServer) -> String {
    t.server
        .admin()
        .create_api_key(NewApiKey {
            description: "console test".into(),
            expiration_ms: None,
        })
        .await
        .unwrap()
        .secret
}

#[tokio::test]
async fn the_console_needs_a_valid_sign_in_and_refuses_forms_without_the_csrf_token() {
    let t = TestServer::start().await;
    let key = api_key(&t).await;

    // Not signed in: every page sends to the sign-in page; a form is refused.
    for p in PAGES {
        let a = send(&t, "GET", p, &[], "").await;
        assert_eq!(
            (a.status, a.header("location")),
            (303, Some("/admin/signin")),
            "{p}"
        );
        assert_eq!(a.header("content-security-policy"), Some(CSP), "{p}");
    }
    let a = send(&t, "POST", "/admin/machines/1/delete", &[FORM], "csrf=x").await;
    assert_eq!(a.status, 403);

    // The sign-in form: its own CSRF token, double-submitted in a cookie.
    let page = send(&t, "GET", "/admin/signin", &[], "").await;
    assert_eq!(page.header("content-security-policy"), Some(CSP));
    let c = page.cookies()[0];
    for flag in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(c.split("; ").any(|f| f == flag), "{flag} missing in {c}");
    }
    let (cookie, token) = sign_in_form(&t).await;
    let body = form(&[("csrf", &token), ("api_key", &key)]);
    let no_cookie = send(&t, "POST", "/admin/signin", &[FORM], &body).await;
    assert_eq!(no_cookie.status, 403, "a sign-in without the form's cookie");
    let wrong = send(
        &t,
        "POST",
        "/admin/signin",
        &[FORM, ("Cookie", &cookie)],
        &form(&[("csrf", "0000"), ("api_key", &key)]),
    )
    .await;
    assert_eq!(wrong.status, 403, "a sign-in with another token");
    assert!(wrong.cookies().is_empty());

    // A wrong or malformed key is refused and starts no session.
    for bad in ["", "weft-api-0123456789abcdef", "not a key"] {
        let a = sign_in_with(&t, bad).await;
        assert_eq!(a.status, 401, "{bad:?}: {}", a.body);
        assert!(
            a.cookies()
                .iter()
                .all(|c| !c.starts_with("__Host-weft-console"))
        );
    }

    // The session cookie.
    let a = sign_in_with(&t, &key).await;
    assert_eq!(a.status, 303);
    let session = a
        .cookies()
        .into_iter()
        .find(|c| c.starts_with("__Host-weft-console="))
        .unwrap()
        .to_owned();
    for flag in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Strict",
        "Max-Age=28800",
    ] {
        assert!(
            session.split("; ").any(|f| f == flag),
            "{flag} missing in {session}"
        );
    }
    let cookie = session.split(';').next().unwrap().to_owned();
    let page = send(&t, "GET", "/admin/machines", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();

    // A node to act on.
    t.user("alice").await;
    let k = t.reusable_key("alice").await;
    let _n = TestNode::joined(&t, "laptop", &k).await;
    let id = t.server.admin().list_nodes().await.unwrap()[0].id;
    let rename = format!("/admin/machines/{id}/rename");
    let headers = [FORM, ("Cookie", cookie.as_str())];
    for bad in [
        form(&[("name", "stolen")]),
        form(&[("csrf", "f00"), ("name", "stolen")]),
    ] {
        let a = send(&t, "POST", &rename, &headers, &bad).await;
        assert_eq!(a.status, 403, "{bad}");
        assert!(a.body.contains("Nothing was changed"));
    }
    // From another session's page: that token is not this session's.
    let other = sign_in(&t, &key).await;
    let other_csrf = send(&t, "GET", "/admin/users", &[("Cookie", &other)], "")
        .await
        .csrf();
    assert_ne!(other_csrf, csrf);
    let a = send(
        &t,
        "POST",
        &rename,
        &headers,
        &form(&[("csrf", &other_csrf), ("name", "stolen")]),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(t.server.admin().node(id).await.unwrap().name, "laptop");
    let a = send(
        &t,
        "POST",
        &rename,
        &headers,
        &form(&[("csrf", &csrf), ("name", "renamed")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(t.server.admin().node(id).await.unwrap().name, "renamed");

    // Tags: the API's rule, an admin applies only tags declared in tagOwners.
    let tags = format!("/admin/machines/{id}/tags");
    let set = form(&[("csrf", &csrf), ("tags", "tag:server")]);
    let a = send(&t, "POST", &tags, &headers, &set).await;
    assert_eq!(a.status, 400);
    assert!(
        a.body
            .contains("tag:server not declared in the policy&#39;s tagOwners"),
        "{}",
        a.body
    );
    assert!(t.server.admin().node(id).await.unwrap().tags.is_empty());
    t.server
        .admin()
        .set_policy(
            "{\"tagOwners\": {\"tag:server\": []}, \"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}",
            None,
            "test",
        )
        .await
        .unwrap();
    let a = send(&t, "POST", &tags, &headers, &set).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        t.server.admin().node(id).await.unwrap().tags,
        ["tag:server"]
    );

    // Sign-out ends the session.
    let a = send(
        &t,
        "POST",
        "/admin/signout",
        &headers,
        &form(&[("csrf", &csrf)]),
    )
    .await;
    assert_eq!(
        (a.status, a.header("location")),
        (303, Some("/admin/signin"))
    );
    assert!(a.cookies()[0].contains("Max-Age=0"));
    let a = send(&t, "GET", "/admin/machines", &[("Cookie", &cookie)], "").await;
    assert_eq!(a.status, 303);
    let a = send(
        &t,
        "POST",
        &rename,
        &headers,
        &form(&[("csrf", &csrf), ("name", "again")]),
    )
    .await;
    assert_eq!(a.status, 403);
    assert_eq!(t.server.admin().node(id).await.unwrap().name, "renamed");
}

#[tokio::test]
async fn sign_in_is_rate_limited_per_source_address() {
    let t = TestServer::start().await;
    let key = api_key(&t).await;
    for _ in 0..5 {
        assert_eq!(sign_in_with(&t, "weft-api-wrong").await.status, 401);
    }
    // Even the right key waits out the window.
    let a = sign_in_with(&t, &key).await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
    assert!((55..=60).contains(&retry), "{retry}");
    assert!(a.body.contains("Too many failed sign-ins"));
    t.clock.advance(Duration::from_secs(61));
    sign_in(&t, &key).await;
}

#[tokio::test]
async fn every_page_escapes_hostile_names_and_carries_the_csp() {
    let t = TestServer::start().await;
    let key = api_key(&t).await;
    let admin = t.server.admin();
    admin
        .create_user(weft_control::admin::types::NewUser {
            login_name: "mallory".into(),
            display_name: Some(EVIL.into()),
            role: None,
        })
        .await
        .unwrap();
    let k = t.reusable_key("mallory").await;
    // The hostname as the node reports it.
    let _n = TestNode::joined(&t, EVIL, &k).await;
    assert_eq!(admin.list_nodes().await.unwrap()[0].hostname, EVIL);
    let cookie = sign_in(&t, &key).await;
    let page = send(&t, "GET", "/admin/machines", &[("Cookie", &cookie)], "").await;
    let csrf = page.csrf();
    let id = admin.list_nodes().await.unwrap()[0].id;
    // Hostile input sent back in an error, and recorded in the audit log.
    let a = send(
        &t,
        "POST",
        &format!("/admin/machines/{id}/rename"),
        &[FORM, ("Cookie", &cookie)],
        &form(&[("csrf", &csrf), ("name", EVIL)]),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(!a.body.contains(EVIL), "{}", a.body);
    assert!(a.body.contains(EVIL_ESCAPED));
    // The policy editor shows a hostile draft escaped.
    let a = send(
        &t,
        "POST",
        "/admin/policy/preview",
        &[FORM, ("Cookie", &cookie)],
        &form(&[
            ("csrf", &csrf),
            ("policy", &format!("{{\"acls\": [\"{EVIL}\"]}}")),
        ]),
    )
    .await;
    assert!(
        !a.body.contains(EVIL) && a.body.contains(EVIL_ESCAPED),
        "{}",
        a.body
    );

    for p in PAGES {
        let a = send(&t, "GET", p, &[("Cookie", &cookie)], "").await;
        assert_eq!(a.status, 200, "{p}: {}", a.body);
        assert_eq!(a.header("content-security-policy"), Some(CSP), "{p}");
        assert_eq!(a.header("x-frame-options"), Some("DENY"), "{p}");
        assert!(!a.body.contains(EVIL), "{p} has the raw name:\n{}", a.body);
        assert!(
            !a.body.contains("<script>") && !a.body.contains("style="),
            "{p}"
        );
        if ["/admin/machines", "/admin/users", "/admin/audit"].contains(&p) {
            assert!(a.body.contains(EVIL_ESCAPED), "{p} does not show the name");
        }
    }
    // The assets the CSP admits are served by the server itself.
    for (p, ty) in [
        ("/admin/static/console.css", "text/css"),
        ("/admin/static/console.js", "text/javascript"),
    ] {
        let a = send(&t, "GET", p, &[], "").await;
        assert_eq!((a.status, a.header("content-type")), (200, Some(ty)), "{p}");
    }
}

/// `GET` with the API key, JSON back.
async fn api(
    t: &TestServer,
    key: &str,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {key}");
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let a = send(
        t,
        method,
        &format!("/api/v1{path}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    let json = serde_json::from_str(&a.body).unwrap_or(serde_json::Value::Null);
    (a.status, json)
}

#[tokio::test]
async fn policy_history_rollback_and_the_audit_log_over_the_api() {
    let t = TestServer::start().await;
    let key = api_key(&t).await;
    let v1 = "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}\n";
    let v2 = "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:22\"]}]}\n";
    let (s, a) = api(
        &t,
        &key,
        "PUT",
        "/policy",
        Some(serde_json::json!({ "policy": v1 })),
    )
    .await;
    assert_eq!(s, 200, "{a}");
    let first = a["version"].as_i64().unwrap();
    let (s, _) = api(
        &t,
        &key,
        "PUT",
        "/policy",
        Some(serde_json::json!({ "policy": v2 })),
    )
    .await;
    assert_eq!(s, 200);
    let (s, bad) = api(
        &t,
        &key,
        "PUT",
        "/policy",
        Some(serde_json::json!({ "policy": "{\"acls\": 3}" })),
    )
    .await;
    assert_eq!(s, 400, "{bad}");

    let (_, h) = api(&t, &key, "GET", "/policy/history", None).await;
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2, "the refused policy is not a version: {h:?}");
    assert_eq!(h[0]["current"], true);
    assert_eq!(h[1]["version"], first);
    assert!(h[1]["author"].as_str().unwrap().starts_with("api key "));
    let (_, old) = api(&t, &key, "GET", &format!("/policy/history/{first}"), None).await;
    assert_eq!(old["policy"], v1);
    let (s, _) = api(&t, &key, "GET", "/policy/history/999", None).await;
    assert_eq!(s, 404);

    let (s, r) = api(
        &t,
        &key,
        "POST",
        "/policy/rollback",
        Some(serde_json::json!({ "version": first })),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["version"].as_i64().unwrap() > first + 1);
    let (_, now) = api(&t, &key, "GET", "/policy", None).await;
    assert_eq!(
        (now["policy"].as_str(), &now["version"]),
        (Some(v1), &r["version"])
    );
    let (s, _) = api(
        &t,
        &key,
        "POST",
        "/policy/rollback",
        Some(serde_json::json!({ "version": 999 })),
    )
    .await;
    assert_eq!(s, 404);
    // A read-only POST is not an admin action.
    let (s, _) = api(
        &t,
        &key,
        "POST",
        "/policy/check",
        Some(serde_json::json!({ "policy": v1 })),
    )
    .await;
    assert_eq!(s, 200);

    let (_, page) = api(&t, &key, "GET", "/audit?limit=3", None).await;
    let e = page["entries"].as_array().unwrap();
    assert_eq!(e.len(), 3);
    assert_eq!(e[0]["action"], "POST /policy/rollback");
    assert_eq!(
        (e[0]["outcome"].as_str(), e[0]["status"].as_u64()),
        (Some("error"), Some(404))
    );
    assert_eq!(e[1]["action"], "POST /policy/rollback");
    assert_eq!(e[1]["outcome"], "ok");
    assert!(e[1]["actor"].as_str().unwrap().starts_with("api key "));
    assert_eq!(e[2]["action"], "PUT /policy");
    assert_eq!(e[2]["outcome"], "error");
    assert!(
        e[2]["detail"].as_str().unwrap().contains("policy refused"),
        "{}",
        e[2]
    );
    let before = page["next_before"].as_i64().unwrap();
    let (_, rest) = api(&t, &key, "GET", &format!("/audit?before={before}"), None).await;
    let rest = rest["entries"].as_array().unwrap();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert!(
        rest.iter()
            .all(|e| e["action"] == "PUT /policy" && e["outcome"] == "ok")
    );
    // Small bodies are recorded whole.
    assert_eq!(
        rest[1]["detail"].as_str().unwrap(),
        serde_json::json!({ "policy": v1 }).to_string()
    );
}

#[tokio::test]
async fn the_cli_lists_history_rolls_back_and_reads_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let p = common::ServerProcess::start(dir.path(), common::free_port()).await;
    let v1 = "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:*\"]}]}\n";
    let v2 = "{\"acls\": [{\"action\": \"accept\", \"src\": [\"*\"], \"dst\": [\"*:443\"]}]}\n";
    for (name, text) in [("v1.hujson", v1), ("v2.hujson", v2)] {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let (code, out, err) = p.cli(&["policy", "set", file.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = p.cli(&["policy", "history", "--json"]);
    assert_eq!(code, 0, "{err}");
    let h: Vec<weft_control::admin::types::PolicyVersionView> = serde_json::from_str(&out).unwrap();
    assert_eq!(h.len(), 2);
    assert!(h[0].current && !h[1].current);
    let (_, table, _) = p.cli(&["policy", "history"]);
    assert!(
        table.starts_with("VERSION") && table.contains("in force"),
        "{table}"
    );
    let old = h[1].version.to_string();
    let (code, out, _) = p.cli(&["policy", "get", "--version", &old]);
    assert_eq!((code, out.as_str()), (0, v1));
    let (code, out, err) = p.cli(&["policy", "rollback", &old]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("version {old} saved again as version 3")),
        "{out}"
    );
    let (_, now, _) = p.cli(&["policy", "get"]);
    assert_eq!(now, v1);
    let (code, _, err) = p.cli(&["policy", "rollback", "99"]);
    assert_eq!(code, 1);
    assert!(err.contains("no policy version 99"), "{err}");

    let (code, out, err) = p.cli(&["audit", "list"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("OUTCOME"),
        "{out}"
    );
    assert!(
        lines[1].contains("POST /policy/rollback") && lines[1].contains("error 404"),
        "{out}"
    );
    assert!(lines[1].contains("admin socket (uid"), "{out}");
    assert!(
        lines[2].contains("POST /policy/rollback") && lines[2].contains("ok 200"),
        "{out}"
    );
    let (_, out, _) = p.cli(&["audit", "list", "--json", "--limit", "2"]);
    let page: weft_control::admin::types::AuditPage = serde_json::from_str(&out).unwrap();
    assert_eq!(page.entries.len(), 2);
    let before = page.next_before.unwrap().to_string();
    let (_, out, _) = p.cli(&["audit", "list", "--json", "--before", &before]);
    let rest: weft_control::admin::types::AuditPage = serde_json::from_str(&out).unwrap();
    assert_eq!(rest.entries.len(), 2, "{out}");
    assert!(rest.entries.iter().all(|e| e.action == "PUT /policy"));
    assert_eq!(rest.next_before, None);
}

#[tokio::test]
async fn a_pending_login_is_approved_and_dns_settings_saved_from_the_console() {
    let t = TestServer::start().await;
    let key = api_key(&t).await;
    t.user("bob").await;
    let mut n = TestNode::new(&t, "bob-laptop");
    n.start(n.params(weft_types::control::RegisterAuth::None))
        .await;
    let weft_client::SessionEvent::NeedsAuth { auth_url } = n.next().await else {
        panic!("no login URL");
    };
    let auth_id = auth_url.rsplit('/').next().unwrap().to_owned();
    let cookie = sign_in(&t, &key).await;
    let page = send(&t, "GET", "/admin/machines", &[("Cookie", &cookie)], "").await;
    assert!(
        page.body.contains("Logins waiting for approval"),
        "{}",
        page.body
    );
    assert!(page.body.contains("bob-laptop"));
    let csrf = page.csrf();
    let a = send(
        &t,
        "POST",
        &format!("/admin/logins/{auth_id}/approve"),
        &[FORM, ("Cookie", &cookie)],
        &form(&[("csrf", &csrf), ("user", "bob")]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(a.body.contains("login approved for bob"));
    assert!(matches!(
        n.next().await,
        weft_client::SessionEvent::Registered(_)
    ));
    let nodes = t.server.admin().list_nodes().await.unwrap();
    assert_eq!(nodes[0].user.as_deref(), Some("bob"));

    let a = send(
        &t,
        "POST",
        "/admin/dns",
        &[FORM, ("Cookie", &cookie)],
        &form(&[
            ("csrf", &csrf),
            ("nameservers", "192.0.2.53 192.0.2.54"),
            ("search_domains", "corp.example.com"),
        ]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let d = t.server.admin().dns().await.unwrap();
    assert!(!d.magic_dns, "the box was left unticked");
    assert_eq!(d.nameservers.len(), 2);
    assert_eq!(d.search_domains, ["corp.example.com"]);
    assert!(d.author.unwrap().starts_with("console: api key "));
    // Refused input: the reason shown, nothing changed.
    let a = send(
        &t,
        "POST",
        "/admin/dns",
        &[FORM, ("Cookie", &cookie)],
        &form(&[
            ("csrf", &csrf),
            ("magic_dns", "on"),
            ("nameservers", "not-an-ip"),
        ]),
    )
    .await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert_eq!(t.server.admin().dns().await.unwrap().nameservers.len(), 2);
    n.close().await;
}
