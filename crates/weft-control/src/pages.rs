//! The server's HTML, and the headers every response carries.
//!
//! A leaf: it uses nothing else of this crate, so whatever shows a page
//! (the [`crate::auth::AdminApproval`] authenticator, an OIDC one, the HTTP
//! layer) depends on it and not on the services behind the pages.
//!
//! - [`device_login`]: the page at `/a/<auth-id>` of an interactive device
//!   login, in each state (waiting, approved, declined, expired, unknown).
//! - [`ssh_check`]: the page at `/a/<check-id>` of an SSH check.
//! - [`device_approved`], [`check_approved`], [`declined`], [`failed`]: what
//!   an authenticator shows once it has completed a login itself.
//! - [`page`]: the frame of all of them, for an authenticator's own pages.
//! - [`set_security_headers`]: the Content-Security-Policy that admits
//!   exactly the pages' inline style ([`PAGE_STYLE`]) and nothing else, and
//!   the other headers of every response.
//!
//! Every piece of text that comes from a node or a user (hostnames, login
//! names, ids) goes through [`escape`].

use std::time::Duration;

use http::HeaderMap;
use weft_control_store::{AuthRequest, AuthRequestState};
use weft_types::UnixMillis;

/// The path prefix of login URLs: `<server-url>/a/<id>`.
pub const LOGIN_PATH: &str = "/a/";

/// Returns the login URL of `id` on the server at `server_url`.
pub fn login_url(server_url: &str, id: &str) -> String {
    format!("{server_url}{LOGIN_PATH}{id}")
}

/// A rendered page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPage {
    /// HTTP status.
    pub status: u16,
    /// The HTML document.
    pub html: String,
    /// Where to send the browser (`Location`, with a 3xx status); `None`:
    /// the page is the answer.
    pub location: Option<String>,
}

impl LoginPage {
    /// Returns a redirect to `to` whose body is `page` (for a browser
    /// that does not follow it).
    #[must_use]
    pub fn redirect(to: &str, page: LoginPage) -> LoginPage {
        LoginPage {
            status: 303,
            location: Some(to.to_owned()),
            html: page.html,
        }
    }
}

/// What the page of a device login is rendered from.
#[derive(Debug, Clone, Copy)]
pub struct LoginContext<'a> {
    /// The login id from the URL.
    pub auth_id: &'a str,
    /// The login, if the id is known.
    pub request: Option<&'a AuthRequest>,
    /// The current time.
    pub now: UnixMillis,
    /// The server URL (for commands the page shows).
    pub server_url: &'a str,
}

/// What the page of a pending SSH check shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckInfo {
    /// The tailnet user who must approve.
    pub login: String,
    /// The node the SSH connection comes from.
    pub src_name: String,
    /// The node being logged in to.
    pub dst_name: String,
    /// The login name asked for.
    pub ssh_user: String,
    /// The local account.
    pub local_user: String,
    /// When the check gives up.
    pub expires: UnixMillis,
    /// The rule's checkPeriod: how recently the user must have
    /// authenticated (an OIDC authenticator asks the IdP for this `max_age`).
    pub period: Duration,
}

/// Renders the page of a device login for an administrator's approval:
/// what state it is in and, while it waits, the command an administrator
/// runs (`weft-control nodes approve <auth-id> --user <login>`).
pub fn device_login(login: &LoginContext<'_>) -> LoginPage {
    let id = escape(login.auth_id);
    let Some(req) = login.request else {
        return page(
            404,
            "Unknown login link",
            "<p>This login link is not known to this server. It may have expired and been cleaned up, or been copied incompletely.</p>\
             <p>On the device, run <code>weft up</code> again to get a new link.</p>",
        );
    };
    let device = escape(&req.hostname);
    match req.state {
        AuthRequestState::Approved => page(
            200,
            "Device approved",
            &format!(
                "<p>The device <b>{device}</b> is now part of the tailnet. It connects by itself; you can close this page.</p>"
            ),
        ),
        AuthRequestState::Rejected => page(
            403,
            "Login declined",
            &format!(
                "<p>An administrator declined the login of <b>{device}</b>. Ask them why, then run <code>weft up</code> again.</p>"
            ),
        ),
        AuthRequestState::Pending if login.now >= req.expires => page(
            410,
            "Login link expired",
            "<p>This login link has expired. On the device, run <code>weft up</code> again to get a new one.</p>",
        ),
        AuthRequestState::Pending => {
            let minutes = req.expires.saturating_since(login.now).as_secs() / 60;
            page(
                200,
                "Waiting for approval",
                &format!(
                    "<p>The device <b>{device}</b> asks to join the tailnet of <code>{server}</code>.</p>\
                     <p>An administrator of this tailnet must approve it. Send them this command, with your login name in place of <code>YOUR-LOGIN</code>:</p>\
                     <pre>weft-control nodes approve {id} --user YOUR-LOGIN</pre>\
                     <p>As soon as it is approved, the device connects by itself: leave <code>weft up</code> running. \
                     This link stays valid for about {minutes} more minute(s); after that, run <code>weft up</code> again.</p>\
                     <p>If you did not start this login, ignore this page: nothing happens without an administrator.</p>",
                    server = escape(login.server_url),
                ),
            )
        }
    }
}

/// Renders the page of a pending SSH check `id`: who must approve what, and
/// the command to do it (or to decline it).
pub fn ssh_check(id: &str, info: &CheckInfo, now: UnixMillis) -> LoginPage {
    let login = escape(&info.login);
    let src = escape(&info.src_name);
    if now >= info.expires {
        return page(
            410,
            "SSH login expired",
            &format!(
                "<p>The SSH login of <b>{login}</b> from <b>{src}</b> was not approved in time and was refused. Log in again to get a new link.</p>"
            ),
        );
    }
    let minutes = info.expires.saturating_since(now).as_secs().div_ceil(60);
    page(
        200,
        "Approve an SSH login",
        &format!(
            "<p><b>{login}</b> is logging in from <b>{src}</b> to <b>{dst}</b> as <b>{ssh_user}</b> \
             (local account <code>{local}</code>). The tailnet policy asks {login} to confirm it.</p>\
             <p>To approve, {login} (or an administrator on their behalf) runs:</p>\
             <pre>weft-control nodes approve {id} --user {login}</pre>\
             <p>Only {login} can approve this login. It is refused in about {minutes} minute(s) otherwise. \
             If you did not start it, decline it: <code>weft-control nodes reject {id}</code>.</p>",
            dst = escape(&info.dst_name),
            ssh_user = escape(&info.ssh_user),
            local = escape(&info.local_user),
            id = escape(id),
        ),
    )
}

/// Renders the page shown once a device login was approved for `user`:
/// the device `name` is part of the tailnet.
pub fn device_approved(name: &str, user: &str) -> LoginPage {
    page(
        200,
        "Device approved",
        &format!(
            "<p>The device <b>{name}</b> is now part of the tailnet, owned by <b>{user}</b>. It connects by itself; you can close this page.</p>",
            name = escape(name),
            user = escape(user),
        ),
    )
}

/// Renders the page shown once an SSH check was approved: the login goes
/// ahead, and logins from the same device need no approval for `period`.
pub fn check_approved(info: &CheckInfo, period: Duration) -> LoginPage {
    let minutes = period.as_secs() / 60;
    page(
        200,
        "SSH login approved",
        &format!(
            "<p>The SSH login of <b>{login}</b> from <b>{src}</b> to <b>{dst}</b> goes ahead. \
             Logins from {src} need no new approval for {minutes} minute(s). You can close this page.</p>",
            login = escape(&info.login),
            src = escape(&info.src_name),
            dst = escape(&info.dst_name),
        ),
    )
}

/// Renders the page shown once a login was declined.
pub fn declined() -> LoginPage {
    page(
        403,
        "Login declined",
        "<p>The login was declined; the device (or SSH connection) is refused. Start it again if this was a mistake.</p>",
    )
}

/// Renders a page saying a login could not be completed: `status` and
/// `why` (plain text; escaped here).
pub fn failed(status: u16, why: &str) -> LoginPage {
    page(
        status,
        "Login not completed",
        &format!("<p>{}</p>", escape(why)),
    )
}

/// Returns the frame of every page: `title` as title and heading, the
/// shared style, and `body` (HTML, escaped by the caller).
pub fn page(status: u16, title: &str, body: &str) -> LoginPage {
    LoginPage {
        status,
        location: None,
        html: format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Weft</title>\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <style>{PAGE_STYLE}</style></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        ),
    }
}

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The style sheet of the server's pages, inline: the Content-Security-Policy
/// admits exactly this text by its hash ([`content_security_policy`]).
pub const PAGE_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}\
     pre,code{background:#f3f3f3;padding:.1em .3em}pre{padding:.8em;overflow-x:auto}";

/// Returns the Content-Security-Policy of every response of the server:
/// nothing may load or run (no scripts, images, fonts, frames, plugins),
/// except the inline [`PAGE_STYLE`] by its SHA-256; forms may only post back
/// to this server; no other site may frame the pages (clickjacking).
pub fn content_security_policy() -> &'static str {
    static CSP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        use base64::Engine as _;
        let digest = ring::digest::digest(&ring::digest::SHA256, PAGE_STYLE.as_bytes());
        let hash = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
        format!(
            "default-src 'none'; style-src 'sha256-{hash}'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    });
    &CSP
}

/// Sets the headers every response carries: [`content_security_policy`],
/// no MIME sniffing, no framing, no `Referer` (login URLs carry the login
/// id), and for an HTML response (`html`) `Cache-Control: no-store`.
pub fn set_security_headers(h: &mut HeaderMap, html: bool) {
    use http::header::{
        CACHE_CONTROL, CONTENT_SECURITY_POLICY, HeaderValue, REFERRER_POLICY,
        X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
    };
    // A response that set its own policy (the console's) keeps it.
    if !h.contains_key(CONTENT_SECURITY_POLICY)
        && let Ok(csp) = HeaderValue::from_str(content_security_policy())
    {
        h.insert(CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if html {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_escaped_on_the_login_page() {
        assert_eq!(escape("<b>&'\""), "&lt;b&gt;&amp;&#39;&quot;");
    }

    #[test]
    fn an_unknown_login_says_to_start_again() {
        let p = device_login(&LoginContext {
            auth_id: "x",
            request: None,
            now: UnixMillis(0),
            server_url: "http://h",
        });
        assert_eq!(p.status, 404);
        assert!(p.html.contains("weft up"));
    }

    fn check() -> CheckInfo {
        CheckInfo {
            login: "alice".into(),
            src_name: "<laptop>".into(),
            dst_name: "server".into(),
            ssh_user: "root".into(),
            local_user: "root".into(),
            expires: UnixMillis(600_000),
            period: Duration::from_secs(3600),
        }
    }

    #[test]
    fn an_ssh_check_page_names_who_approves_until_it_expires() {
        let id = "0123456789abcdef0123456789abcdef";
        let p = ssh_check(id, &check(), UnixMillis(0));
        assert_eq!(p.status, 200);
        assert!(
            p.html
                .contains(&format!("weft-control nodes approve {id} --user alice")),
            "{}",
            p.html
        );
        assert!(p.html.contains("&lt;laptop&gt;") && !p.html.contains("<laptop>"));
        assert!(p.html.contains("about 10 minute(s)"), "{}", p.html);
        let late = ssh_check(id, &check(), UnixMillis(600_000));
        assert_eq!(late.status, 410);
        assert!(!late.html.contains("nodes approve"), "{}", late.html);
    }

    #[test]
    fn every_page_carries_the_style_the_policy_admits() {
        for p in [
            device_approved("laptop", "alice"),
            check_approved(&check(), Duration::from_secs(3600)),
            declined(),
            failed(403, "<nope>"),
            ssh_check("x", &check(), UnixMillis(0)),
        ] {
            assert!(
                p.html.contains(&format!("<style>{PAGE_STYLE}</style>")),
                "{}",
                p.html
            );
            assert!(!p.html.contains("<nope>") && !p.html.contains("<script"));
        }
    }
}
