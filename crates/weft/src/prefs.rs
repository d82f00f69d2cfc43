//! The pref flags of `up` and `login`, and the "sticky prefs" rule.
//!
//! Every pref `up` can set persists in the profile. `up` takes its flags as
//! the *complete* desired settings, so a flag left out means "the default".
//! To keep that from silently reverting a setting made earlier, [`plan`]
//! refuses when an unmentioned pref currently holds a non-default value, and
//! the error spells out the full command that keeps everything
//! ([`sticky_message`]). `--reset` instead resets unmentioned prefs to their
//! defaults; a bare `up` (no pref flags at all) keeps the prefs as they are.

use clap::builder::BoolishValueParser;
use weft_localapi::{DEFAULT_CONTROL_URL, Prefs};
use weft_types::names::Tag;

use crate::render::shell_quote;

/// The `up`/`login` flags that set a pref. `None` means "not mentioned".
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrefFlags {
    /// The control server's URL, remembered by the profile [default: $WEFT_LOGIN_SERVER,
    /// else WEFT_LOGIN_SERVER= in /etc/default/weft, else http://127.0.0.1:8080]
    #[arg(long, value_name = "URL", value_parser = parse_login_server)]
    pub login_server: Option<String>,
    /// A PEM CA file to trust for an https:// login server besides the system's roots
    /// (a private CA); kept with the profile (empty: trust the system's roots only)
    #[arg(long, value_name = "FILE", value_parser = parse_ca_file)]
    pub login_server_ca: Option<String>,
    /// The name to use instead of the OS hostname (empty: the OS hostname)
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Run weftd's SSH server on the tailnet addresses
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ssh: Option<bool>,
    /// Let `ssh -X`/`-Y` forward X11 to this node's SSH server [default: false]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ssh_x11: Option<bool>,
    /// Refuse all new inbound connections
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub shields_up: Option<bool>,
    /// Use the tailnet's DNS settings [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub accept_dns: Option<bool>,
    /// Tags to request for this node, comma-separated (`tag:` is added when missing); on a
    /// registered node a change needs --force-reauth (control checks tagOwners at login)
    #[arg(long, value_name = "TAGS", value_parser = parse_tags)]
    pub advertise_tags: Option<TagList>,
}

/// A validated, sorted, de-duplicated list of `tag:…` names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagList(pub Vec<String>);

/// Why `up` refuses to apply its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// Unmentioned prefs hold non-default values; `missing` are the flags
    /// (sorted) that would keep them.
    Sticky { missing: Vec<String> },
    /// A flag would change who the node is at control (its server or its
    /// tags) while it is registered, without `--force-reauth`.
    IdentityChange {
        /// The flag, e.g. `--login-server`.
        flag: &'static str,
        /// The current value, as the user would type it.
        from: String,
        /// The wanted value.
        to: String,
    },
    /// `--advertise-tags` would drop tags control already gave the node: a
    /// new login only adds tags, so only an administrator can take them away.
    TagsRemoved {
        /// The tags that would be dropped, comma-separated.
        dropped: String,
    },
}

impl PlanError {
    /// Returns the one-line refusal for the identity errors (the sticky
    /// error has its own text, [`sticky_message`]).
    pub fn identity_message(&self, prog: &str) -> Option<String> {
        match self {
            PlanError::Sticky { .. } => None,
            PlanError::IdentityChange {
                flag: "--login-server",
                from,
                to,
            } => Some(format!(
                "can't change --login-server from {from} to {to}: this profile is registered at {from}; \
                 re-run with --force-reauth to register this profile at {to} instead, \
                 or keep both with '{prog} login --login-server={to}'"
            )),
            PlanError::IdentityChange { flag, from, to } => Some(format!(
                "can't change {flag} from {from} to {to} on a registered node: control checks tags \
                 against the policy's tagOwners when the node logs in; re-run with --force-reauth \
                 to log in again asking for {to}"
            )),
            PlanError::TagsRemoved { dropped } => Some(format!(
                "can't remove {dropped} from this node with 'weft up' (a login only adds tags): \
                 keep them in --advertise-tags, or have an administrator remove them with \
                 'weft-control nodes tags NODE-ID TAGS' (the node ID is .self.id in \
                 'weft status --json')"
            )),
        }
    }
}

/// The variable (in the environment, or in [`DEFAULTS_FILE`]) that names the
/// login server a profile gets when nobody chose one; without it, weftd's
/// built-in default applies ([`default_login_server`]).
pub const LOGIN_SERVER_ENV: &str = "WEFT_LOGIN_SERVER";

/// The system-wide defaults file (shell-style `KEY=value` lines, as
/// Debian's `/etc/default/*`).
pub const DEFAULTS_FILE: &str = "/etc/default/weft";

/// Returns the system-wide default login server, from the environment
/// (`env`) or the defaults file's text (`file`, `None` when absent).
///
/// # Errors
/// When the value found is not an `http://` or `https://` URL; the message
/// names where it came from.
pub fn default_login_server(
    env: Option<&str>,
    file: Option<&str>,
) -> Result<Option<String>, String> {
    if let Some(v) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return parse_login_server(v)
            .map(Some)
            .map_err(|e| format!("${LOGIN_SERVER_ENV}: {e}"));
    }
    let Some(text) = file else {
        return Ok(None);
    };
    let mut found = None;
    for line in text.lines().map(str::trim) {
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some(value) = line
            .strip_prefix(LOGIN_SERVER_ENV)
            .and_then(|r| r.strip_prefix('='))
        else {
            continue;
        };
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        // The last assignment wins, as when the shell sources the file.
        found = (!value.is_empty()).then(|| value.to_owned());
    }
    match found {
        Some(v) => parse_login_server(&v)
            .map(Some)
            .map_err(|e| format!("{DEFAULTS_FILE}: {LOGIN_SERVER_ENV}: {e}")),
        None => Ok(None),
    }
}

/// Reads [`default_login_server`] from this process's environment and
/// [`DEFAULTS_FILE`].
///
/// # Errors
/// An unreadable defaults file (other than a missing one), or a bad URL.
pub fn system_login_server() -> anyhow::Result<Option<String>> {
    let env = std::env::var(LOGIN_SERVER_ENV).ok();
    let file = match std::fs::read_to_string(DEFAULTS_FILE) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => anyhow::bail!("cannot read {DEFAULTS_FILE}: {e}"),
    };
    default_login_server(env.as_deref(), file.as_deref()).map_err(|e| anyhow::anyhow!(e))
}

/// What `up` knows besides its flags.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The current profile's prefs.
    pub current: &'a Prefs,
    /// Whether control accepted a registration of the current profile (a
    /// profile that never registered may move to another server freely).
    pub registered: bool,
    /// The system-wide default login server ([`system_login_server`]).
    pub default_server: Option<&'a str>,
    /// The tags control gave the node (from its netmap), when known; else
    /// the profile's `advertise_tags` stand for them.
    pub applied_tags: Option<&'a [String]>,
}

/// Computes the prefs `up` should send to `start`: `None` keeps the current
/// prefs (a bare `up`), `Some` is the complete desired prefs.
///
/// The login server belongs to the profile: leaving `--login-server` out
/// keeps it (even with `reset`), so it never counts for the sticky rule. A
/// profile that never registered and still has the built-in server takes
/// `ctx.default_server`.
///
/// # Errors
/// [`PlanError::Sticky`] when leaving a non-default pref unmentioned would
/// revert it (and `reset` is off); [`PlanError::IdentityChange`] when the
/// server or the tags would change on a registered node without
/// `force_reauth`; [`PlanError::TagsRemoved`] when tags would be dropped
/// from a registered node.
pub fn plan(
    flags: &PrefFlags,
    reset: bool,
    force_reauth: bool,
    ctx: Context<'_>,
) -> Result<Option<Prefs>, PlanError> {
    let current = ctx.current;
    let from_default = match ctx.default_server {
        Some(url)
            if flags.login_server.is_none()
                && !ctx.registered
                && normalize_url(&current.control_url) == DEFAULT_CONTROL_URL
                && normalize_url(url) != DEFAULT_CONTROL_URL =>
        {
            Some(url)
        }
        _ => None,
    };
    let mentioned = PrefField::ALL.into_iter().any(|f| f.mentioned(flags));
    if !mentioned && !reset && from_default.is_none() {
        return Ok(None);
    }
    if !reset {
        let mut missing: Vec<String> = PrefField::ALL
            .into_iter()
            .filter(|f| *f != PrefField::LoginServer)
            .filter(|f| !f.mentioned(flags) && f.differs_from_default(current))
            .map(|f| f.as_flag(current))
            .collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(PlanError::Sticky { missing });
        }
    }
    let mut desired = if reset {
        Prefs {
            nickname: current.nickname.clone(),
            control_url: current.control_url.clone(),
            ..Prefs::default()
        }
    } else {
        current.clone()
    };
    flags.apply_to(&mut desired);
    if let Some(url) = from_default {
        desired.control_url = normalize_url(url).to_owned();
    }
    desired.want_running = true;
    desired.logged_out = false;
    if !ctx.registered {
        return Ok(Some(desired));
    }
    let old_tags = sorted(ctx.applied_tags.unwrap_or(&current.advertise_tags));
    let new_tags = sorted(&desired.advertise_tags);
    let dropped: Vec<&str> = old_tags
        .iter()
        .filter(|t| !new_tags.contains(t))
        .map(String::as_str)
        .collect();
    if !dropped.is_empty() {
        return Err(PlanError::TagsRemoved {
            dropped: dropped.join(","),
        });
    }
    if force_reauth {
        return Ok(Some(desired));
    }
    let (from, to) = (
        normalize_url(&current.control_url),
        normalize_url(&desired.control_url),
    );
    if from != to {
        return Err(PlanError::IdentityChange {
            flag: "--login-server",
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    if old_tags != new_tags {
        let show = |t: &[String]| {
            if t.is_empty() {
                "(none)".to_owned()
            } else {
                t.join(",")
            }
        };
        return Err(PlanError::IdentityChange {
            flag: "--advertise-tags",
            from: show(&old_tags),
            to: show(&new_tags),
        });
    }
    Ok(Some(desired))
}

/// Returns the one-line error for [`PlanError::Sticky`]: what leaving the
/// flags out would revert, then the command that keeps them — `prog up`,
/// the user's own flags, then the missing ones — or `--reset`.
pub fn sticky_message(prog: &str, explicit: &[String], missing: &[String]) -> String {
    let mut cmd = format!("{prog} up");
    for arg in explicit.iter().chain(missing) {
        cmd.push(' ');
        cmd.push_str(arg);
    }
    let it = if missing.len() == 1 { "it" } else { "them" };
    format!(
        "'weft up' takes the complete settings, and leaving out {} would reset {it} to the \
         default; to keep {it} run: {cmd} (or add --reset to reset {it}, or use 'weft set')",
        missing.join(" ")
    )
}

impl PrefFlags {
    /// Returns the mentioned flags in canonical `--flag=value` form, sorted.
    pub fn rendered(&self) -> Vec<String> {
        let mut p = Prefs::default();
        self.apply_to(&mut p);
        let mut out: Vec<String> = PrefField::ALL
            .into_iter()
            .filter(|f| f.mentioned(self))
            .map(|f| f.as_flag(&p))
            .collect();
        out.sort();
        out
    }

    /// Sets every mentioned pref in `prefs`.
    pub fn apply_to(&self, prefs: &mut Prefs) {
        if let Some(url) = &self.login_server {
            prefs.control_url.clone_from(url);
        }
        if let Some(ca) = &self.login_server_ca {
            prefs.control_ca_file = (!ca.is_empty()).then(|| ca.clone());
        }
        if let Some(h) = &self.hostname {
            prefs.hostname = (!h.is_empty()).then(|| h.clone());
        }
        if let Some(v) = self.ssh {
            prefs.run_ssh = v;
        }
        if let Some(v) = self.ssh_x11 {
            prefs.ssh_x11 = v;
        }
        if let Some(v) = self.shields_up {
            prefs.shields_up = v;
        }
        if let Some(v) = self.accept_dns {
            prefs.accept_dns = v;
        }
        if let Some(TagList(tags)) = &self.advertise_tags {
            prefs.advertise_tags.clone_from(tags);
        }
    }
}

/// The prefs `up` has a flag for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrefField {
    AcceptDns,
    AdvertiseTags,
    Hostname,
    LoginServer,
    ShieldsUp,
    Ssh,
    SshX11,
}

impl PrefField {
    const ALL: [PrefField; 7] = [
        PrefField::AcceptDns,
        PrefField::AdvertiseTags,
        PrefField::Hostname,
        PrefField::LoginServer,
        PrefField::ShieldsUp,
        PrefField::Ssh,
        PrefField::SshX11,
    ];

    fn mentioned(self, f: &PrefFlags) -> bool {
        match self {
            PrefField::AcceptDns => f.accept_dns.is_some(),
            PrefField::AdvertiseTags => f.advertise_tags.is_some(),
            PrefField::Hostname => f.hostname.is_some(),
            PrefField::LoginServer => f.login_server.is_some(),
            PrefField::ShieldsUp => f.shields_up.is_some(),
            PrefField::Ssh => f.ssh.is_some(),
            PrefField::SshX11 => f.ssh_x11.is_some(),
        }
    }

    fn differs_from_default(self, p: &Prefs) -> bool {
        let d = Prefs::default();
        match self {
            PrefField::AcceptDns => p.accept_dns != d.accept_dns,
            PrefField::AdvertiseTags => sorted(&p.advertise_tags) != sorted(&d.advertise_tags),
            PrefField::Hostname => !p.hostname.as_deref().unwrap_or("").is_empty(),
            PrefField::LoginServer => {
                normalize_url(&p.control_url) != normalize_url(&d.control_url)
            }
            PrefField::ShieldsUp => p.shields_up != d.shields_up,
            PrefField::Ssh => p.run_ssh != d.run_ssh,
            PrefField::SshX11 => p.ssh_x11 != d.ssh_x11,
        }
    }

    /// Returns the flag that sets this pref to its value in `p`.
    fn as_flag(self, p: &Prefs) -> String {
        let boolean = |name: &str, v: bool| {
            if v {
                format!("--{name}")
            } else {
                format!("--{name}=false")
            }
        };
        match self {
            PrefField::AcceptDns => boolean("accept-dns", p.accept_dns),
            PrefField::ShieldsUp => boolean("shields-up", p.shields_up),
            PrefField::Ssh => boolean("ssh", p.run_ssh),
            PrefField::SshX11 => boolean("ssh-x11", p.ssh_x11),
            PrefField::AdvertiseTags => shell_quote(&format!(
                "--advertise-tags={}",
                sorted(&p.advertise_tags).join(",")
            )),
            PrefField::Hostname => shell_quote(&format!(
                "--hostname={}",
                p.hostname.as_deref().unwrap_or("")
            )),
            PrefField::LoginServer => shell_quote(&format!("--login-server={}", p.control_url)),
        }
    }
}

fn sorted(v: &[String]) -> Vec<String> {
    let mut v = v.to_vec();
    v.sort();
    v.dedup();
    v
}

fn normalize_url(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// Parses `--login-server`: an `http://` or `https://` URL with a host.
fn parse_login_server(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .ok_or_else(|| format!("{s:?} is not an http:// or https:// URL"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} is not a URL with a host, e.g. https://control.example.com"
        ));
    }
    Ok(normalize_url(s).to_owned())
}

/// Parses `--login-server-ca`: a readable file, made absolute (weftd reads
/// it from its own working directory).
fn parse_ca_file(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Ok(String::new()); // forget the profile's CA file
    }
    let path = std::path::absolute(s).map_err(|e| format!("{s:?}: {e}"))?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "the CA file {} is not a file; give a PEM file",
            path.display()
        ));
    }
    path.to_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("{}: the path is not UTF-8", path.display()))
}

/// Parses `--hostname`: empty (the OS hostname) or up to 63 printable
/// characters; weftd turns it into a DNS label.
pub fn parse_hostname(s: &str) -> Result<String, String> {
    if s.chars().count() > 63 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?}: a hostname is at most 63 characters without spaces"
        ));
    }
    Ok(s.to_owned())
}

/// Parses `--advertise-tags`: `tag:a,tag:b` or `a,b`; empty means none.
fn parse_tags(s: &str) -> Result<TagList, String> {
    let mut tags = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let full = if part.starts_with("tag:") {
            part.to_owned()
        } else {
            format!("tag:{part}")
        };
        let tag: Tag = full.parse().map_err(|e| format!("{e}"))?;
        tags.push(tag.to_string());
    }
    Ok(TagList(sorted(&tags)))
}

#[cfg(test)]
#[path = "prefs_tests.rs"]
mod tests;
