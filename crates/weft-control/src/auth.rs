//! The login step of interactive registration, behind a trait so another
//! way of logging in (OIDC) can replace it.
//!
//! A node without a key gets the URL `<server-url>/a/<auth-id>`; the user
//! opens it. The [`Authenticator`] renders that page and, in the end, the
//! login is completed by calling [`crate::admin::Admin::approve_login`]
//! with the user who logged in (or declined with
//! [`crate::admin::Admin::reject_login`]). Whoever completes it, the node's
//! waiting follow-up request returns at once.
//!
//! [`AdminApproval`], the default, has no login of its own: the page tells
//! the user which command to ask an administrator to run.

use weft_control_store::{AuthRequest, AuthRequestState};
use weft_types::UnixMillis;

/// What the login page is rendered from.
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

/// A rendered page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginPage {
    /// HTTP status.
    pub status: u16,
    /// The HTML document.
    pub html: String,
}

/// A way of completing interactive logins.
pub trait Authenticator: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs (`admin-approval`, `oidc`).
    fn name(&self) -> &'static str;

    /// Renders the page at `/a/<auth-id>`.
    fn login_page(&self, login: &LoginContext<'_>) -> LoginPage;

    /// Renders the page at `/a/<check-id>` for a pending SSH check (who must
    /// approve what). The default shows the approval command; an
    /// authenticator with its own login completes the check through
    /// [`crate::admin::Admin::approve_login`] as the user who logged in.
    fn check_page(
        &self,
        check_id: &str,
        check: &crate::check::CheckInfo,
        now: UnixMillis,
    ) -> LoginPage {
        crate::check::default_page(check_id, check, now)
    }

    /// Routes of the authenticator's own (e.g. an OIDC callback), mounted
    /// under `/login/<name>/`; they complete logins through the admin
    /// service they are given.
    fn routes(&self, _admin: crate::admin::Admin) -> Option<axum::Router> {
        None
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
}

/// The style sheet of the server's pages, inline: the Content-Security-Policy
/// admits exactly this text by its hash ([`content_security_policy`]).
pub(crate) const PAGE_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}\
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

fn page(status: u16, title: &str, body: &str) -> LoginPage {
    LoginPage {
        status,
        html: format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Weft</title>\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
             <style>{PAGE_STYLE}</style></head>\
             <body><h1>{title}</h1>{body}</body></html>"
        ),
    }
}

/// Escapes text for HTML.
pub(crate) fn escape(s: &str) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_escaped_on_the_login_page() {
        assert_eq!(escape("<b>&'\""), "&lt;b&gt;&amp;&#39;&quot;");
    }

    #[test]
    fn an_unknown_login_says_to_start_again() {
        let p = AdminApproval.login_page(&LoginContext {
            auth_id: "x",
            request: None,
            now: UnixMillis(0),
            server_url: "http://h",
        });
        assert_eq!(p.status, 404);
        assert!(p.html.contains("weft up"));
    }
}
