//! The configuration file of `weft-control serve` (TOML, by default
//! [`DEFAULT_CONFIG_FILE`] when it exists): every `serve` flag, under the
//! flag's name without the dashes in front (`listen = "0.0.0.0:8080"`,
//! `node-key-expiry = "90d"`, `no-relay = true`). Flags given on the command
//! line (or in their environment variable) override the file. An unknown key
//! or a bad value is an error naming the file, the line and the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/weft-control/config.toml";

/// The log formats of `log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogFormat {
    /// The name used on the command line.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The settings a configuration file may hold; `None`: not in the file.
/// The keys are the long flags of `serve` (see `weft-control serve --help`).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
#[non_exhaustive]
pub struct ServeFile {
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--metrics-listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// `--no-metrics`.
    pub no_metrics: Option<bool>,
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--server-url`.
    #[serde(default, deserialize_with = "url")]
    pub server_url: Option<String>,
    /// `--db-url`.
    pub db_url: Option<String>,
    /// `--domain`.
    #[serde(default, deserialize_with = "domain")]
    pub domain: Option<String>,
    /// `--node-key-expiry`.
    #[serde(default, deserialize_with = "duration")]
    pub node_key_expiry: Option<Duration>,
    /// `--ephemeral-grace`.
    #[serde(default, deserialize_with = "duration")]
    pub ephemeral_grace: Option<Duration>,
    /// `--batch-delay`.
    #[serde(default, deserialize_with = "duration")]
    pub batch_delay: Option<Duration>,
    /// `--login-expiry`.
    #[serde(default, deserialize_with = "duration")]
    pub login_expiry: Option<Duration>,
    /// `--max-pending-logins`.
    pub max_pending_logins: Option<usize>,
    /// `--max-pending-logins-per-source`.
    pub max_pending_logins_per_source: Option<usize>,
    /// `--max-registrations-in-flight`.
    pub max_registrations_in_flight: Option<usize>,
    /// `--register-timeout`.
    #[serde(default, deserialize_with = "duration")]
    pub register_timeout: Option<Duration>,
    /// `--max-connections`.
    pub max_connections: Option<usize>,
    /// `--max-unregistered-per-source`.
    pub max_unregistered_per_source: Option<usize>,
    /// `--require-device-approval`.
    pub require_device_approval: Option<bool>,
    /// `--no-relay`.
    pub no_relay: Option<bool>,
    /// `--stun-listen` (a list).
    pub stun_listen: Option<Vec<SocketAddr>>,
    /// `--no-stun`.
    pub no_stun: Option<bool>,
    /// `--no-admin-socket`.
    pub no_admin_socket: Option<bool>,
    /// `--packages-dir`.
    pub packages_dir: Option<PathBuf>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// The `[oidc]` table: the `--oidc-*` flags without the `oidc-`
    /// (docs/OIDC.md).
    pub oidc: Option<crate::oidc::config::OidcFile>,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    weft_types::time::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    match text.parse::<weft_types::DnsName>() {
        Ok(_) => Ok(Some(text)),
        Err(_) => Err(serde::de::Error::custom(format!(
            "{text:?} is not a DNS name (lowercase labels of a-z, 0-9 and '-', joined by '.')"
        ))),
    }
}

fn url<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(d)?;
    if text.starts_with("http://") || text.starts_with("https://") {
        Ok(Some(text))
    } else {
        Err(serde::de::Error::custom(format!(
            "{text:?} is not an http:// or https:// URL"
        )))
    }
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigFileError {
    /// The file cannot be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or holds an unknown key or a bad value.
    #[error("{}:{line}: {}{message}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line (from 1) of the fault.
        line: usize,
        /// The key on that line, when there is one.
        key: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// Reads and checks a configuration file.
///
/// # Errors
/// The file cannot be read, is not TOML, or holds an unknown key or a bad value.
pub fn load(path: &Path) -> Result<ServeFile, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Checks the text of a configuration file read from `path`.
///
/// # Errors
/// Not TOML, an unknown key or a bad value.
pub fn parse(path: &Path, text: &str) -> Result<ServeFile, ConfigFileError> {
    toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start.min(text.len()));
        let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
        let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
        let line_text = &text[line_start..line_end];
        let key = line_text
            .split_once('=')
            .map(|(k, _)| k.trim().trim_matches('"').to_owned())
            .filter(|k| !k.is_empty() && !k.starts_with('#') && !k.starts_with('['));
        ConfigFileError::Invalid {
            path: path.to_owned(),
            line: text[..at].matches('\n').count() + 1,
            key,
            message: e.message().to_owned(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/etc/weft-control/config.toml")
    }

    #[test]
    fn every_setting_parses() {
        let f = parse(
            p(),
            r#"
# a comment
state-dir = "/srv/weft"
listen = "198.18.0.1:443"
metrics-listen = "127.0.0.1:9191"
no-metrics = false
tls-cert = "/etc/weft-control/cert.pem"
tls-key = "/etc/weft-control/key.pem"
server-url = "https://weft.example"
db-url = "postgres://weft@localhost/weft"
domain = "corp.internal"
node-key-expiry = "90d"
ephemeral-grace = "10m"
batch-delay = "200ms"
login-expiry = "2h"
max-pending-logins = 50
max-pending-logins-per-source = 5
register-timeout = "20s"
max-connections = 5000
max-unregistered-per-source = 16
require-device-approval = true
no-relay = true
stun-listen = ["198.18.0.1:3478", "[fd7a::1]:3478"]
no-stun = false
no-admin-socket = true
log-format = "json"
packages-dir = "/usr/share/weft-control/packages"
"#,
        )
        .expect("valid");
        assert_eq!(f.listen, Some("198.18.0.1:443".parse().expect("addr")));
        assert_eq!(f.node_key_expiry, Some(Duration::from_secs(90 * 86400)));
        assert_eq!(f.batch_delay, Some(Duration::from_millis(200)));
        assert_eq!(f.stun_listen.as_ref().map(Vec::len), Some(2));
        assert_eq!(f.log_format, Some(LogFormat::Json));
        assert_eq!(f.require_device_approval, Some(true));
        assert_eq!(f.domain.as_deref(), Some("corp.internal"));
        assert_eq!(f.state_dir, Some(PathBuf::from("/srv/weft")));
    }

    #[test]
    fn empty_file_sets_nothing() {
        assert_eq!(parse(p(), "").expect("valid"), ServeFile::default());
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse(p(), "listen = \"127.0.0.1:80\"\n\nlisten_addr = \"x\"\n").unwrap_err();
        let ConfigFileError::Invalid { line, key, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*line, 3);
        assert_eq!(key.as_deref(), Some("listen_addr"));
        let text = e.to_string();
        assert!(
            text.starts_with("/etc/weft-control/config.toml:3: key `listen_addr`: unknown field"),
            "{text}"
        );
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        for (text, line, key) in [
            ("listen = \"nowhere\"\n", 1, "listen"),
            (
                "domain = \"x\"\nnode-key-expiry = \"ten days\"\n",
                2,
                "node-key-expiry",
            ),
            ("\n\nmax-connections = -1\n", 3, "max-connections"),
            ("log-format = \"xml\"\n", 1, "log-format"),
            ("domain = \"Not A Name\"\n", 1, "domain"),
            ("server-url = \"weft.example\"\n", 1, "server-url"),
            ("no-relay = \"yes\"\n", 1, "no-relay"),
        ] {
            let e = parse(p(), text).unwrap_err();
            let ConfigFileError::Invalid {
                line: l, key: k, ..
            } = &e
            else {
                panic!("{e:?}")
            };
            assert_eq!((*l, k.as_deref()), (line, Some(key)), "{text}: {e}");
        }
    }

    #[test]
    fn not_toml_is_refused_with_its_line() {
        let e = parse(p(), "listen = \"127.0.0.1:80\"\nthis is not toml\n").unwrap_err();
        let ConfigFileError::Invalid { line, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(*line, 2);
    }

    #[test]
    fn a_missing_file_is_an_error() {
        let e = load(Path::new("/nonexistent/weft-control.toml")).unwrap_err();
        assert!(matches!(e, ConfigFileError::Read { .. }));
        assert!(e.to_string().contains("/nonexistent/weft-control.toml"));
    }
}
