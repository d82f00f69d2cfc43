//! OIDC settings: the `[oidc]` table of the configuration file and the
//! `--oidc-*` flags of `serve` (a flag wins over the file, key by key), and
//! the checks that turn them into an [`OidcConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Scopes asked for unless configured: the login and display name come from
/// `email` and `profile`; `groups` is not a standard scope (Keycloak and
/// Authentik send the claim with a mapper, Google not at all), so it is
/// asked only when configured.
pub const DEFAULT_SCOPES: &[&str] = &["openid", "email", "profile"];
/// The claim the groups are read from unless configured.
pub const DEFAULT_GROUPS_CLAIM: &str = "groups";
/// The claim the display name is read from unless configured.
pub const DEFAULT_DISPLAY_NAME_CLAIM: &str = "name";
/// The prefix IdP groups get in the policy unless configured:
/// `engineering` becomes `group:oidc:engineering`.
pub const DEFAULT_GROUP_PREFIX: &str = "oidc:";
/// How far the IdP's clock may be from ours when token times are checked.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// How long a sign-in started at the IdP may take before its `state` expires.
pub const DEFAULT_SIGN_IN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// Which claim becomes the Weft login name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoginClaim {
    /// `email` (refused when `email_verified` is false).
    #[default]
    Email,
    /// `preferred_username`.
    PreferredUsername,
}

impl std::str::FromStr for LoginClaim {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "email" => Ok(LoginClaim::Email),
            "preferred_username" => Ok(LoginClaim::PreferredUsername),
            _ => Err(format!(
                "{s:?} is not a login claim: use email or preferred_username"
            )),
        }
    }
}

/// The `[oidc]` table of the configuration file; `None`: not in the file.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[non_exhaustive]
pub struct OidcFile {
    /// `--oidc-issuer`.
    pub issuer: Option<String>,
    /// `--oidc-client-id`.
    pub client_id: Option<String>,
    /// `--oidc-client-secret-file`.
    pub client_secret_file: Option<PathBuf>,
    /// `--oidc-scopes`.
    pub scopes: Option<Vec<String>>,
    /// `--oidc-allowed-domains`.
    pub allowed_domains: Option<Vec<String>>,
    /// `--oidc-allowed-users`.
    pub allowed_users: Option<Vec<String>>,
    /// `--oidc-allowed-groups`.
    pub allowed_groups: Option<Vec<String>>,
    /// `--oidc-login-claim`.
    pub login_claim: Option<LoginClaim>,
    /// `--oidc-display-name-claim`.
    pub display_name_claim: Option<String>,
    /// `--oidc-groups-claim`.
    pub groups_claim: Option<String>,
    /// `--oidc-group-prefix`.
    pub group_prefix: Option<String>,
    /// `--oidc-clock-skew`.
    #[serde(default, deserialize_with = "duration")]
    pub clock_skew: Option<Duration>,
    /// `--oidc-ca-file`.
    pub ca_file: Option<PathBuf>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    weft_types::time::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// How claims become a Weft identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// The claim of the login name.
    pub login: LoginClaim,
    /// The claim of the display name.
    pub display_name: String,
    /// The claim holding the user's groups (an array of strings).
    pub groups: String,
    /// Put before each group name: `oidc:` makes `engineering`
    /// `group:oidc:engineering`.
    pub group_prefix: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            login: LoginClaim::Email,
            display_name: DEFAULT_DISPLAY_NAME_CLAIM.to_owned(),
            groups: DEFAULT_GROUPS_CLAIM.to_owned(),
            group_prefix: DEFAULT_GROUP_PREFIX.to_owned(),
        }
    }
}

/// Who may log in; each non-empty list must be satisfied (an empty one
/// admits everyone the IdP authenticates).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Email domains (`example.com`), compared case-insensitively.
    pub domains: Vec<String>,
    /// Login names.
    pub users: Vec<String>,
    /// IdP group names as the IdP sends them (before the prefix).
    pub groups: Vec<String>,
}

/// A client secret; its `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(pub(crate) String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(…)")
    }
}

impl ClientSecret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

/// Everything the OIDC authenticator needs.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// The issuer URL (`https://…`; `http://` only on a loopback host).
    pub issuer: String,
    /// The client id registered at the IdP.
    pub client_id: String,
    /// The client secret (`None`: a public client, PKCE only).
    pub client_secret: Option<ClientSecret>,
    /// Scopes asked for (`openid` is always asked).
    pub scopes: Vec<String>,
    /// Who may log in.
    pub allowed: Allowed,
    /// How claims map to the identity.
    pub claims: ClaimMapping,
    /// Tolerance for the IdP's clock.
    pub clock_skew: Duration,
    /// How long a started sign-in may take.
    pub sign_in_lifetime: Duration,
    /// Extra CA certificates (PEM) trusted for the IdP, next to the public roots.
    pub ca_file: Option<PathBuf>,
}

impl OidcConfig {
    /// Returns settings with the defaults for `issuer` and `client_id`.
    #[must_use]
    pub fn new(issuer: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            client_id: client_id.into(),
            client_secret: None,
            scopes: DEFAULT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
            allowed: Allowed::default(),
            claims: ClaimMapping::default(),
            clock_skew: DEFAULT_CLOCK_SKEW,
            sign_in_lifetime: DEFAULT_SIGN_IN_LIFETIME,
            ca_file: None,
        }
    }

    /// Checks the settings: an `https` issuer (or `http` on a loopback
    /// host), a client id, a valid group prefix.
    ///
    /// # Errors
    /// What is wrong and how to fix it.
    pub fn validate(&self) -> Result<(), String> {
        check_issuer(&self.issuer)?;
        if self.client_id.trim().is_empty() {
            return Err("the OIDC client id is empty: set oidc client-id (--oidc-client-id) to the id registered at the identity provider".into());
        }
        let p = &self.claims.group_prefix;
        if !p.is_empty() && crate::oidc::claims::policy_group(p, "x").is_none() {
            return Err(format!(
                "the OIDC group prefix {p:?} cannot start a policy group name: use letters, digits, '-', '_', '.' and ':', starting with a letter (e.g. \"oidc:\")"
            ));
        }
        Ok(())
    }
}

/// Checks that the issuer is `https://`, or `http://` on a loopback host
/// (tests, or an IdP on the same machine).
///
/// # Errors
/// Why the issuer is refused.
pub fn check_issuer(issuer: &str) -> Result<(), String> {
    let Ok(url) = openidconnect::url::Url::parse(issuer) else {
        return Err(format!(
            "the OIDC issuer {issuer:?} is not a URL: use e.g. https://idp.example.com/realms/main"
        ));
    };
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(&url) => Ok(()),
        "http" => Err(format!(
            "the OIDC issuer {issuer:?} is plain http: tokens and the client secret would cross the network unprotected; use https (http is accepted only on a loopback address)"
        )),
        _ => Err(format!("the OIDC issuer {issuer:?} is not an https URL")),
    }
}

fn is_loopback_host(url: &openidconnect::url::Url) -> bool {
    match url.host() {
        Some(openidconnect::url::Host::Ipv4(a)) => a.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(a)) => a.is_loopback(),
        Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

/// Reads a client secret file: it must be readable by its owner only
/// (mode 0600 or stricter), like the server's keys.
///
/// # Errors
/// The file cannot be read, is open to others, or is empty.
pub fn read_secret_file(path: &Path) -> Result<ClientSecret, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "cannot read the OIDC client secret file {}: {e}",
            path.display()
        )
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "the OIDC client secret file {} has mode {mode:04o}, readable by others: run chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "cannot read the OIDC client secret file {}: {e}",
            path.display()
        )
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!(
            "the OIDC client secret file {} is empty: put the client secret from the identity provider in it",
            path.display()
        ));
    }
    Ok(ClientSecret(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_http_issuer_is_refused_unless_it_is_loopback() {
        assert!(check_issuer("https://idp.example.com").is_ok());
        assert!(check_issuer("http://127.0.0.1:9000").is_ok());
        assert!(check_issuer("http://localhost:9000/x").is_ok());
        let e = check_issuer("http://idp.example.com").unwrap_err();
        assert!(e.contains("use https"), "{e}");
        assert!(check_issuer("idp.example.com").is_err());
    }

    #[test]
    fn a_secret_file_open_to_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secret_file(&p).unwrap_err();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&p).unwrap().0, "s3cret");
        std::fs::write(&p, "\n").unwrap();
        assert!(read_secret_file(&p).unwrap_err().contains("empty"));
    }

    #[test]
    fn a_bad_group_prefix_is_refused() {
        let mut c = OidcConfig::new("https://idp.example.com", "weft");
        assert!(c.validate().is_ok());
        c.claims.group_prefix = "1 bad".into();
        assert!(c.validate().is_err());
        c.claims.group_prefix = String::new();
        assert!(c.validate().is_ok());
    }
}
