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
use weft_localapi::Prefs;
use weft_types::names::Tag;

use crate::render::shell_quote;

/// The `up`/`login` flags that set a pref. `None` means "not mentioned".
#[derive(Debug, Clone, Default, clap::Args)]
pub struct PrefFlags {
    /// The control server's URL
    #[arg(long, value_name = "URL", value_parser = parse_login_server)]
    pub login_server: Option<String>,
    /// A PEM CA file to trust for an https:// login server besides the system's roots
    /// (a private CA); kept with the profile
    #[arg(long, value_name = "FILE", value_parser = parse_ca_file)]
    pub login_server_ca: Option<String>,
    /// The name to use instead of the OS hostname (empty: the OS hostname)
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    pub hostname: Option<String>,
    /// Run weftd's SSH server on the tailnet addresses
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ssh: Option<bool>,
    /// Refuse all new inbound connections
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub shields_up: Option<bool>,
    /// Use the tailnet's DNS settings [default: true]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub accept_dns: Option<bool>,
    /// Tags to request for this node, comma-separated (`tag:` is added when missing)
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
    /// The control server would change while the node is logged in.
    LoginServerChange { from: String, to: String },
}

/// Computes the prefs `up` should send to `start`: `None` keeps the current
/// prefs (a bare `up`), `Some` is the complete desired prefs.
///
/// # Errors
/// [`PlanError::Sticky`] when leaving a non-default pref unmentioned would
/// revert it (and `reset` is off); [`PlanError::LoginServerChange`] when the
/// control URL would change on a logged-in node without `force_reauth`.
pub fn plan(
    flags: &PrefFlags,
    reset: bool,
    force_reauth: bool,
    logged_in: bool,
    current: &Prefs,
) -> Result<Option<Prefs>, PlanError> {
    let mentioned: Vec<PrefField> = PrefField::ALL
        .into_iter()
        .filter(|f| f.mentioned(flags))
        .collect();
    if mentioned.is_empty() && !reset {
        return Ok(None);
    }
    if !reset {
        let mut missing: Vec<String> = PrefField::ALL
            .into_iter()
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
            ..Prefs::default()
        }
    } else {
        current.clone()
    };
    flags.apply_to(&mut desired);
    desired.want_running = true;
    desired.logged_out = false;
    let (from, to) = (
        normalize_url(&current.control_url),
        normalize_url(&desired.control_url),
    );
    if logged_in && !force_reauth && from != to {
        return Err(PlanError::LoginServerChange {
            from: from.to_owned(),
            to: to.to_owned(),
        });
    }
    Ok(Some(desired))
}

/// Returns the error text for [`PlanError::Sticky`]: the rule, then the
/// command to run — `prog up`, the user's own flags, then the missing ones.
pub fn sticky_message(prog: &str, explicit: &[String], missing: &[String]) -> String {
    let mut cmd = format!("{prog} up");
    for arg in explicit.iter().chain(missing) {
        cmd.push(' ');
        cmd.push_str(arg);
    }
    format!(
        "changing settings via 'weft up' requires mentioning all\n\
         non-default flags. To proceed, either re-run your command with --reset or\n\
         use the command below to explicitly mention the current value of\n\
         all non-default settings:\n\n\t{cmd}"
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
            prefs.control_ca_file = Some(ca.clone());
        }
        if let Some(h) = &self.hostname {
            prefs.hostname = (!h.is_empty()).then(|| h.clone());
        }
        if let Some(v) = self.ssh {
            prefs.run_ssh = v;
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
}

impl PrefField {
    const ALL: [PrefField; 6] = [
        PrefField::AcceptDns,
        PrefField::AdvertiseTags,
        PrefField::Hostname,
        PrefField::LoginServer,
        PrefField::ShieldsUp,
        PrefField::Ssh,
    ];

    fn mentioned(self, f: &PrefFlags) -> bool {
        match self {
            PrefField::AcceptDns => f.accept_dns.is_some(),
            PrefField::AdvertiseTags => f.advertise_tags.is_some(),
            PrefField::Hostname => f.hostname.is_some(),
            PrefField::LoginServer => f.login_server.is_some(),
            PrefField::ShieldsUp => f.shields_up.is_some(),
            PrefField::Ssh => f.ssh.is_some(),
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
    let path = std::path::absolute(s).map_err(|e| format!("{s:?}: {e}"))?;
    std::fs::metadata(&path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
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
