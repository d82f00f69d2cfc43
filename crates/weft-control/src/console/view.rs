//! The console's pages. Every value goes through [`e`] (the server's one
//! escape function, [`crate::pages::escape`]); markup is only ever written
//! here, as literals.

use std::fmt::Write as _;
use std::time::Duration;

use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;

use super::session::Session;
use super::{Console, Notice, diff};
use crate::admin::types::{ExplainAnswer, ExplainQuery};
use crate::pages::escape as e;

/// The pages in the header, in order: (path, title).
const NAV: [(&str, &str); 7] = [
    ("/admin/machines", "Machines"),
    ("/admin/users", "Users"),
    ("/admin/keys", "Pre-auth keys"),
    ("/admin/apikeys", "API keys"),
    ("/admin/policy", "Policy"),
    ("/admin/dns", "DNS"),
    ("/admin/audit", "Audit log"),
];

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · Weft console</title><link rel=\"stylesheet\" href=\"/admin/static/console.css\"><link rel=\"icon\" href=\"/admin/static/favicon.svg\">\
         <script src=\"/admin/static/console.js\" defer></script></head>",
        e(title)
    )
}

/// A page outside a session (errors, refusals).
pub(super) fn bare(status: StatusCode, title: &str, body_html: &str) -> Response {
    let html = format!(
        "{}<body><header><strong>Weft console</strong></header><main><h1>{}</h1>{body_html}</main></body></html>",
        head(title),
        e(title)
    );
    (status, Html(html)).into_response()
}

/// The sign-in page; `csrf` is the form's token, `error` why the last try failed.
pub(super) fn sign_in(status: StatusCode, csrf: &str, error: Option<&str>) -> Response {
    let mut b = String::new();
    if let Some(err) = error {
        let _ = write!(b, "<p class=\"notice err\" id=\"notice\">{}</p>", e(err));
    }
    let _ = write!(
        b,
        "<form method=\"post\" action=\"/admin/signin\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <p><label>Admin API key<br><input type=\"password\" name=\"api_key\" size=\"60\" autocomplete=\"off\" autofocus></label></p>\
         <p><button type=\"submit\">Sign in</button></p></form>\
         <p class=\"muted\">Create a key on the server with <code>weft-control apikeys create</code>.</p>",
        e(csrf)
    );
    bare(status, "Sign in", &b)
}

/// A console page: the header with the navigation and who is signed in,
/// the notice, and `body_html`.
fn page(
    s: &Session,
    here: &str,
    title: &str,
    notice: Option<&Notice>,
    body_html: &str,
) -> Response {
    let mut h = head(title);
    h.push_str("<body><header><strong>Weft</strong>");
    for (path, name) in NAV {
        let class = if path == here { " class=\"here\"" } else { "" };
        let _ = write!(h, "<a href=\"{path}\"{class}>{name}</a>");
    }
    let _ = write!(
        h,
        "<span class=\"who\">{} <form method=\"post\" action=\"/admin/signout\">{}<button type=\"submit\">Sign out</button></form></span></header><main><h1>{}</h1>",
        e(&s.who.name),
        csrf(s),
        e(title)
    );
    let status = match notice {
        Some(n) => {
            h.push_str(&notice_html(n));
            if matches!(n, Notice::Err(_)) {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            }
        }
        None => StatusCode::OK,
    };
    h.push_str(body_html);
    h.push_str("</main></body></html>");
    (status, Html(h)).into_response()
}

fn notice_html(n: &Notice) -> String {
    match n {
        Notice::Ok(m) => format!("<p class=\"notice ok\" id=\"notice\">{}</p>", e(m)),
        Notice::Err(m) => format!(
            "<div class=\"notice err\" id=\"notice\"><pre>{}</pre></div>",
            e(m)
        ),
        Notice::Secret { what, secret } => format!(
            "<div class=\"notice ok\" id=\"notice\"><p>{}</p><p><span class=\"secret\" id=\"secret\">{}</span></p></div>",
            e(what),
            e(secret)
        ),
    }
}

/// The hidden CSRF field of a form.
fn csrf(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        e(&s.csrf)
    )
}

/// A one-button form posting to `action`.
fn button(s: &Session, action: &str, label: &str, danger: bool) -> String {
    format!(
        "<form method=\"post\" action=\"{}\">{}<button type=\"submit\"{}>{}</button></form>",
        e(action),
        csrf(s),
        if danger { " class=\"danger\"" } else { "" },
        e(label)
    )
}

fn when(t: Option<i64>, now: i64) -> String {
    let Some(t) = t else {
        return "never".into();
    };
    let d = Duration::from_millis(t.abs_diff(now));
    let short = crate::clock::short_duration(d);
    if t <= now {
        format!("{short} ago")
    } else {
        format!("in {short}")
    }
}

fn error_page(s: &Session, here: &str, title: &str, message: &str) -> Response {
    page(s, here, title, Some(&Notice::Err(message.to_owned())), "")
}

pub(super) async fn machines(c: &Console, s: &Session, notice: Option<Notice>) -> Response {
    const HERE: &str = "/admin/machines";
    let nodes = match c.admin.list_nodes().await {
        Ok(n) => n,
        Err(err) => return error_page(s, HERE, "Machines", &err.message),
    };
    let users = c.admin.list_users().await.unwrap_or_default();
    let now = c.ctx.clock.now().0;
    let mut b = String::new();
    // Interactive logins waiting for a decision.
    let mut pending = Vec::new();
    for id in c.ctx.logins.ids() {
        if let Ok(r) = c.ctx.store.auth_request(&id).await
            && r.state == weft_control_store::AuthRequestState::Pending
            && r.expires.0 > now
        {
            pending.push(r);
        }
    }
    if !pending.is_empty() {
        b.push_str("<h2>Logins waiting for approval</h2><table id=\"pending\"><tr><th>Hostname</th><th>Machine key</th><th>Asked</th><th></th></tr>");
        for r in &pending {
            let mut opts = String::new();
            for u in &users {
                let _ = write!(opts, "<option>{}</option>", e(&u.login_name));
            }
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>\
                 <form method=\"post\" action=\"/admin/logins/{}/approve\">{}<select name=\"user\">{opts}</select><button type=\"submit\">Approve</button></form>{}</td></tr>",
                e(&r.hostname),
                e(&r.machine_key.to_string()),
                e(&when(Some(r.created.0), now)),
                e(&r.auth_id),
                csrf(s),
                button(
                    s,
                    &format!("/admin/logins/{}/reject", r.auth_id),
                    "Decline",
                    true
                ),
            );
        }
        b.push_str("</table>");
    }
    b.push_str("<table id=\"machines\"><tr><th>Machine</th><th>Owner</th><th>Tags</th><th>Addresses</th><th>Status</th><th>Key expiry</th><th>Actions</th></tr>");
    for n in &nodes {
        let status = if n.online {
            "<span class=\"online\">online</span>".to_owned()
        } else {
            format!(
                "<span class=\"offline\">last seen {}</span>",
                e(&when(n.last_seen, now))
            )
        };
        let expiry = match (n.expired, n.key_expiry) {
            (true, _) => "<strong>expired</strong>".to_owned(),
            (false, None) => "never".to_owned(),
            (false, t) => e(&when(t, now)),
        };
        let owner = n.user.clone().unwrap_or_else(|| "tagged".into());
        let id = n.id;
        let _ = write!(
            b,
            "<tr data-node=\"{id}\"><td><strong class=\"name\">{}</strong><br><span class=\"muted\">{}</span>{}</td>\
             <td>{}</td><td>{}</td><td>{}<br>{}</td><td>{status}</td><td>{expiry}</td><td>\
             <form method=\"post\" action=\"/admin/machines/{id}/rename\">{}<input name=\"name\" value=\"{}\" size=\"14\" aria-label=\"new name\"><button type=\"submit\">Rename</button></form>\
             <form method=\"post\" action=\"/admin/machines/{id}/tags\">{}<input name=\"tags\" value=\"{}\" size=\"16\" placeholder=\"tag:a, tag:b\" aria-label=\"tags\"><button type=\"submit\">Set tags</button></form>\
             {}{}{}</td></tr>",
            e(&n.name),
            e(&n.hostname),
            if n.authorized {
                ""
            } else {
                "<br><strong>not authorized</strong>"
            },
            e(&owner),
            e(&n.tags.join(", ")),
            e(&n.ipv4),
            e(&n.ipv6),
            csrf(s),
            e(&n.name),
            csrf(s),
            e(&n.tags.join(", ")),
            if n.authorized {
                String::new()
            } else {
                button(
                    s,
                    &format!("/admin/machines/{id}/authorize"),
                    "Authorize",
                    false,
                )
            },
            button(
                s,
                &format!("/admin/machines/{id}/expire"),
                "Expire key",
                true
            ),
            button(s, &format!("/admin/machines/{id}/delete"), "Delete", true),
        );
    }
    b.push_str("</table>");
    if nodes.is_empty() {
        b.push_str("<p class=\"muted\">No machines yet: create a pre-auth key and run <code>weft up --auth-key KEY</code> on one.</p>");
    }
    page(s, HERE, "Machines", notice.as_ref(), &b)
}

pub(super) async fn users(c: &Console, s: &Session, notice: Option<Notice>) -> Response {
    const HERE: &str = "/admin/users";
    let users = match c.admin.list_users().await {
        Ok(u) => u,
        Err(err) => return error_page(s, HERE, "Users", &err.message),
    };
    let now = c.ctx.clock.now().0;
    let mut b = String::from(
        "<table id=\"users\"><tr><th>Login</th><th>Name</th><th>Role</th><th>Created</th><th></th></tr>",
    );
    for u in &users {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e(&u.login_name),
            e(&u.display_name),
            e(&u.role),
            e(&when(Some(u.created), now)),
            button(
                s,
                &format!("/admin/users/{}/delete", super::urlencode(&u.login_name)),
                "Delete",
                true
            )
        );
    }
    let _ = write!(
        b,
        "</table><h2>New user</h2><form method=\"post\" action=\"/admin/users\">{}\
         <input name=\"login_name\" placeholder=\"alice@example.com\" aria-label=\"login name\"> \
         <input name=\"display_name\" placeholder=\"Alice\" aria-label=\"display name\"> \
         <select name=\"role\"><option>member</option><option>admin</option></select> \
         <button type=\"submit\">Create</button></form>",
        csrf(s)
    );
    page(s, HERE, "Users", notice.as_ref(), &b)
}

pub(super) async fn keys(c: &Console, s: &Session, notice: Option<Notice>) -> Response {
    const HERE: &str = "/admin/keys";
    let keys = match c.admin.list_preauth_keys(None).await {
        Ok(k) => k,
        Err(err) => return error_page(s, HERE, "Pre-auth keys", &err.message),
    };
    let users = c.admin.list_users().await.unwrap_or_default();
    let now = c.ctx.clock.now().0;
    let mut b = String::new();
    let mut opts = String::from("<option value=\"\">(none: tagged)</option>");
    for u in &users {
        let _ = write!(opts, "<option>{}</option>", e(&u.login_name));
    }
    let _ = write!(
        b,
        "<h2>New pre-auth key</h2><form method=\"post\" action=\"/admin/keys\" id=\"new-key\">{}\
         <label>User <select name=\"user\">{opts}</select></label> \
         <label>Tags <input name=\"tags\" placeholder=\"tag:server\" size=\"14\"></label> \
         <label><input type=\"checkbox\" name=\"reusable\"> reusable</label> \
         <label><input type=\"checkbox\" name=\"ephemeral\"> ephemeral</label> \
         <label>Valid for <input name=\"expiration\" value=\"1h\" size=\"5\"></label> \
         <label>Node key expiry <input name=\"node_key_expiry\" placeholder=\"default, 90d, never\" size=\"14\"></label> \
         <button type=\"submit\">Create</button></form><h2>Keys</h2>",
        csrf(s)
    );
    b.push_str("<table id=\"keys\"><tr><th>Id</th><th>Prefix</th><th>User</th><th>Tags</th><th>Kind</th><th>Created</th><th>Expires</th><th>Used</th><th>State</th><th></th></tr>");
    for k in &keys {
        let kind = match (k.reusable, k.ephemeral) {
            (true, true) => "reusable, ephemeral",
            (true, false) => "reusable",
            (false, true) => "one-off, ephemeral",
            (false, false) => "one-off",
        };
        let state = if k.revoked.is_some() {
            "revoked"
        } else if k.usable {
            "usable"
        } else {
            "expired or used"
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{kind}</td><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td></tr>",
            k.id,
            e(&k.prefix),
            e(k.user.as_deref().unwrap_or("")),
            e(&k.tags.join(", ")),
            e(&when(Some(k.created), now)),
            e(&when(Some(k.expires), now)),
            k.used_count,
            if k.usable {
                button(s, &format!("/admin/keys/{}/revoke", k.id), "Revoke", true)
            } else {
                String::new()
            }
        );
    }
    b.push_str("</table>");
    page(s, HERE, "Pre-auth keys", notice.as_ref(), &b)
}

pub(super) async fn api_keys(c: &Console, s: &Session, notice: Option<Notice>) -> Response {
    const HERE: &str = "/admin/apikeys";
    let keys = match c.admin.list_api_keys().await {
        Ok(k) => k,
        Err(err) => return error_page(s, HERE, "API keys", &err.message),
    };
    let now = c.ctx.clock.now().0;
    let mut b = format!(
        "<h2>New API key</h2><form method=\"post\" action=\"/admin/apikeys\">{}\
         <label>Description <input name=\"description\" size=\"24\"></label> \
         <label>Expires after <input name=\"expiration\" placeholder=\"90d (empty: never)\" size=\"14\"></label> \
         <button type=\"submit\">Create</button></form><h2>Keys</h2>",
        csrf(s)
    );
    b.push_str("<table id=\"apikeys\"><tr><th>Id</th><th>Prefix</th><th>Description</th><th>Created</th><th>Expires</th><th>Last used</th><th>State</th><th></th></tr>");
    for k in &keys {
        let _ = write!(
            b,
            "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            k.id,
            e(&k.prefix),
            e(&k.description),
            e(&when(Some(k.created), now)),
            e(&when(k.expires, now)),
            e(&when(k.last_used, now)),
            if k.usable {
                "usable"
            } else {
                "revoked or expired"
            },
            if k.usable {
                button(
                    s,
                    &format!("/admin/apikeys/{}/revoke", k.id),
                    "Revoke",
                    true,
                )
            } else {
                String::new()
            }
        );
    }
    b.push_str("</table>");
    page(s, HERE, "API keys", notice.as_ref(), &b)
}

/// What the policy page shows besides the editor.
#[derive(Default)]
pub(super) struct PolicyState {
    /// The edited text (`None`: the policy in force).
    pub draft: Option<String>,
    /// Check the draft and show its diff against the policy in force.
    pub preview: bool,
    pub notice: Option<Notice>,
    pub explain: Option<(ExplainQuery, Result<ExplainAnswer, String>)>,
}

pub(super) async fn policy(c: &Console, s: &Session, st: PolicyState) -> Response {
    const HERE: &str = "/admin/policy";
    let current = match c.admin.policy().await {
        Ok(p) => p,
        Err(err) => return error_page(s, HERE, "Policy", &err.message),
    };
    let base = current
        .version
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    let draft = st.draft.clone().unwrap_or_else(|| current.policy.clone());
    let mut b = String::new();
    let _ = write!(
        b,
        "<p class=\"muted\">In force: version {} {}</p>",
        e(&base),
        current
            .author
            .as_deref()
            .map(|a| format!("by {}", e(a)))
            .unwrap_or_default()
    );
    if st.preview {
        b.push_str(&preview(c, s, &current.policy, &draft, &base));
    }
    let _ = write!(
        b,
        "<h2>Edit</h2><form method=\"post\" action=\"/admin/policy/preview\" id=\"editor-form\">{}\
         <div class=\"editor\"><pre class=\"hl\" aria-hidden=\"true\"></pre>\
         <textarea name=\"policy\" id=\"policy\" spellcheck=\"false\" rows=\"24\">{}</textarea></div>\
         <p><button type=\"submit\" id=\"check\">Check and show changes</button></p></form>",
        csrf(s),
        e(&draft)
    );
    b.push_str("<div class=\"row\"><section>");
    b.push_str(&explain_form(s, st.explain.as_ref()));
    b.push_str("</section><section>");
    b.push_str(&history(c, s).await);
    b.push_str("</section></div>");
    page(s, HERE, "Policy", st.notice.as_ref(), &b)
}

/// The check result of `draft` (its error at its line, or its tests), the
/// diff against `current`, and the save button when it would be accepted.
fn preview(c: &Console, s: &Session, current: &str, draft: &str, base: &str) -> String {
    let mut b = String::from("<h2>Check</h2>");
    if let Err(err) = weft_policy::Policy::parse_named(crate::admin::UNNAMED_POLICY, draft) {
        let _ = write!(
            b,
            "<p class=\"notice err\" id=\"check-result\">Not valid: {}. Nothing was saved.</p><ol class=\"code\" id=\"listing\">",
            e(&err.to_string())
        );
        for (i, line) in draft.lines().enumerate() {
            let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
            if n == err.line {
                let col = usize::try_from(err.column.saturating_sub(1)).unwrap_or(0);
                let _ = write!(
                    b,
                    "<li class=\"bad\" id=\"policy-error\" data-line=\"{n}\" data-column=\"{}\">{}<div class=\"marker\">{}^ {}</div></li>",
                    err.column,
                    e(line),
                    " ".repeat(col.min(500)),
                    e(&err.to_string())
                );
            } else {
                let _ = write!(b, "<li>{}</li>", e(line));
            }
        }
        b.push_str("</ol>");
        return b;
    }
    let check = c.admin.check_policy(draft, None);
    if check.ok {
        b.push_str("<p class=\"notice ok\" id=\"check-result\">Valid; every test passes.</p>");
    } else {
        b.push_str("<p class=\"notice err\" id=\"check-result\">Valid, but tests fail: it cannot be saved.</p>");
    }
    if let Some(r) = &check.report {
        let _ = write!(b, "<pre id=\"tests\">{}</pre>", e(r));
    }
    b.push_str("<h2>Changes against the policy in force</h2><div class=\"diff\" id=\"diff\">");
    match diff::lines(current, draft) {
        Some(lines) if lines.iter().any(|l| !matches!(l, diff::Line::Same(_))) => {
            for l in lines {
                let (class, mark, text) = match l {
                    diff::Line::Same(t) => ("", ' ', t),
                    diff::Line::Removed(t) => (" class=\"del\"", '-', t),
                    diff::Line::Added(t) => (" class=\"add\"", '+', t),
                };
                let _ = write!(b, "<div{class}>{mark} {}</div>", e(text));
            }
        }
        Some(_) => b.push_str("<div>(no changes)</div>"),
        None => b.push_str("<div>(too large to compare line by line)</div>"),
    }
    b.push_str("</div>");
    if check.ok {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/admin/policy/save\">{}<input type=\"hidden\" name=\"base\" value=\"{}\">\
             <input type=\"hidden\" name=\"policy\" value=\"{}\"><p><button type=\"submit\" id=\"save\">Save this policy</button></p></form>",
            csrf(s),
            e(base),
            e(draft)
        );
    }
    b
}

fn explain_form(
    s: &Session,
    explain: Option<&(ExplainQuery, Result<ExplainAnswer, String>)>,
) -> String {
    let (src, dst, proto) = explain.map_or(("", "", ""), |(q, _)| {
        (
            q.src.as_str(),
            q.dst.as_str(),
            q.proto.as_deref().unwrap_or(""),
        )
    });
    let mut b = format!(
        "<h2>Explain</h2><form method=\"post\" action=\"/admin/policy/explain\" id=\"explain\">{}\
         <label>From <input name=\"src\" value=\"{}\" placeholder=\"node, user or tag\" size=\"14\"></label> \
         <label>To <input name=\"dst\" value=\"{}\" placeholder=\"node:port\" size=\"14\"></label> \
         <label>Protocol <input name=\"proto\" value=\"{}\" placeholder=\"tcp\" size=\"5\"></label> \
         <button type=\"submit\">Explain</button></form>",
        csrf(s),
        e(src),
        e(dst),
        e(proto)
    );
    match explain.map(|(_, a)| a) {
        Some(Ok(a)) => {
            let _ = write!(
                b,
                "<p id=\"verdict\" class=\"verdict-{}\">{}</p><pre id=\"explanation\">{}</pre>",
                e(&a.verdict),
                e(&a.verdict),
                e(&a.text)
            );
        }
        Some(Err(m)) => {
            let _ = write!(b, "<p class=\"notice err\" id=\"verdict\">{}</p>", e(m));
        }
        None => {}
    }
    b
}

/// How many versions the policy page lists.
const HISTORY: usize = 10;

async fn history(c: &Console, s: &Session) -> String {
    let now = c.ctx.clock.now().0;
    let mut b = String::from("<h2>History</h2>");
    let versions = match c.admin.policy_history(HISTORY).await {
        Ok(v) => v,
        Err(err) => return format!("{b}<p class=\"notice err\">{}</p>", e(&err.message)),
    };
    if versions.is_empty() {
        b.push_str("<p class=\"muted\">No saved versions: the built-in default is in force.</p>");
        return b;
    }
    b.push_str("<table id=\"history\"><tr><th>Version</th><th>Saved</th><th>By</th><th></th></tr>");
    for v in &versions {
        let action = if v.current {
            "in force".to_owned()
        } else {
            format!(
                "<form method=\"post\" action=\"/admin/policy/rollback\">{}<input type=\"hidden\" name=\"version\" value=\"{}\"><button type=\"submit\">Roll back to this</button></form>",
                csrf(s),
                v.version
            )
        };
        let _ = write!(
            b,
            "<tr data-version=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            v.version,
            v.version,
            e(&when(Some(v.created), now)),
            e(&v.author)
        );
    }
    b.push_str("</table>");
    b
}

pub(super) async fn dns(c: &Console, s: &Session, notice: Option<Notice>) -> Response {
    const HERE: &str = "/admin/dns";
    let d = match c.admin.dns().await {
        Ok(d) => d,
        Err(err) => return error_page(s, HERE, "DNS", &err.message),
    };
    let join = |v: &[String]| v.join(" ");
    let ns: Vec<String> = d.nameservers.iter().map(ToString::to_string).collect();
    let mut b = format!(
        "<p>Tailnet domain: <code>{}</code>{}</p>\
         <form method=\"post\" action=\"/admin/dns\">{}\
         <p><label><input type=\"checkbox\" name=\"magic_dns\"{}> MagicDNS (nodes answer tailnet names at 100.100.100.100)</label></p>\
         <p><label>Nameservers<br><input name=\"nameservers\" value=\"{}\" size=\"50\" placeholder=\"empty: each node's own\"></label></p>\
         <p><label>Search domains<br><input name=\"search_domains\" value=\"{}\" size=\"50\"></label></p>\
         <p><button type=\"submit\">Save</button></p></form>",
        e(&d.domain),
        d.author
            .as_deref()
            .map(|a| format!(" · last changed by {}", e(a)))
            .unwrap_or_default(),
        csrf(s),
        if d.magic_dns { " checked" } else { "" },
        e(&join(&ns)),
        e(&join(&d.search_domains)),
    );
    if !d.routes.is_empty() || !d.extra_records.is_empty() {
        b.push_str("<h2>Split DNS and records</h2><p class=\"muted\">Changed with <code>weft-control dns</code>; kept as they are by this form.</p><table><tr><th>Domain / name</th><th>Resolvers / address</th></tr>");
        for (dom, rs) in &d.routes {
            let rs: Vec<String> = rs.iter().map(ToString::to_string).collect();
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td></tr>",
                e(dom),
                e(&rs.join(" "))
            );
        }
        for r in &d.extra_records {
            let _ = write!(b, "<tr><td>{}</td><td>{}</td></tr>", e(&r.name), e(&r.addr));
        }
        b.push_str("</table>");
    }
    page(s, HERE, "DNS", notice.as_ref(), &b)
}

/// Audit entries per page.
const AUDIT_PAGE: u32 = 50;

pub(super) async fn audit(c: &Console, s: &Session, before: Option<i64>) -> Response {
    const HERE: &str = "/admin/audit";
    let p = match c.admin.audit(before, AUDIT_PAGE).await {
        Ok(p) => p,
        Err(err) => return error_page(s, HERE, "Audit log", &err.message),
    };
    let now = c.ctx.clock.now().0;
    let mut b = String::from(
        "<table id=\"audit\"><tr><th>When</th><th>Who</th><th>What</th><th>Target</th><th>Outcome</th><th>Detail</th></tr>",
    );
    for a in &p.entries {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td><code>{}</code></td><td>{} {}</td><td>{}</td></tr>",
            e(&when(Some(a.created), now)),
            e(&a.actor),
            e(&a.action),
            e(&a.target),
            e(&a.outcome),
            a.status,
            e(&a.detail)
        );
    }
    b.push_str("</table>");
    if let Some(next) = p.next_before {
        let _ = write!(
            b,
            "<p><a href=\"/admin/audit?before={next}\">Older entries</a></p>"
        );
    }
    page(s, HERE, "Audit log", None, &b)
}
