//! The control server's URL: `http://HOST[:PORT][/PATH]` (or `https://`).
//! A path prefix is kept, so a server behind a reverse proxy at
//! `https://example.com/weft` works: the key lives at `/weft/key`.
//! An `https://` URL may carry a CA file to trust besides the system's
//! roots ([`ControlUrl::with_ca_file`], `--login-server-ca`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::ClientError;

/// A parsed control server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlUrl {
    original: String,
    tls: bool,
    host: String,
    port: u16,
    /// Path prefix without a trailing `/` (empty for the root).
    base_path: String,
    /// A PEM CA file trusted besides the system roots (`https://` only).
    ca_file: Option<PathBuf>,
}

impl ControlUrl {
    /// Returns whether the URL is `https://`.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Returns the URL trusting the certificates in `ca_file` (PEM) besides
    /// the system roots when it is `https://`; `None` trusts the system
    /// roots alone. An `http://` URL ignores it.
    #[must_use]
    pub fn with_ca_file(mut self, ca_file: Option<PathBuf>) -> Self {
        self.ca_file = ca_file;
        self
    }

    /// Returns the extra CA file, if any.
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca_file.as_deref()
    }

    /// Returns the host (a name or an IP literal, IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Returns the port (80/443 unless given).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the URL as given (without a trailing `/`).
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// Returns the request target for `path` (which starts with `/`).
    pub fn path(&self, path: &str) -> String {
        format!("{}{path}", self.base_path)
    }

    /// Returns the value of the `Host` header.
    pub fn host_header(&self) -> String {
        let default_port = if self.tls { 443 } else { 80 };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl FromStr for ControlUrl {
    type Err = ClientError;

    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = |reason| ClientError::BadUrl {
            url: s.to_owned(),
            reason,
        };
        let trimmed = s.trim().trim_end_matches('/');
        let uri: http::Uri = trimmed
            .parse()
            .map_err(|_| bad("expected http://HOST[:PORT][/PATH]"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("missing scheme: write http://HOST[:PORT]")),
        };
        let authority = uri.authority().ok_or_else(|| bad("missing host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("user information in the URL is not supported"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query string is not allowed"));
        }
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(ControlUrl {
            original: trimmed.to_owned(),
            tls,
            host: host.to_owned(),
            port,
            base_path: uri.path().trim_end_matches('/').to_owned(),
            ca_file: None,
        })
    }
}

impl fmt::Display for ControlUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_port_and_path_prefix() {
        let u: ControlUrl = "http://198.18.0.1:8080".parse().unwrap();
        assert_eq!(
            (u.host(), u.port(), u.is_tls()),
            ("198.18.0.1", 8080, false)
        );
        assert_eq!(u.path("/key"), "/key");
        assert_eq!(u.host_header(), "198.18.0.1:8080");

        let u: ControlUrl = "https://example.com/weft/".parse().unwrap();
        assert_eq!((u.port(), u.is_tls()), (443, true));
        assert_eq!(u.path("/control"), "/weft/control");
        assert_eq!(u.host_header(), "example.com");
        assert_eq!(u.to_string(), "https://example.com/weft");

        let u: ControlUrl = "http://[fd7a:115c:a1e0::1]:9000".parse().unwrap();
        assert_eq!(u.host(), "fd7a:115c:a1e0::1");
        assert_eq!(u.host_header(), "[fd7a:115c:a1e0::1]:9000");
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, needle) in [
            ("198.18.0.1:8080", "scheme"),
            ("ftp://x", "http or https"),
            ("http://", "http://HOST"),
            ("http://u:p@h", "user information"),
            ("http://h/?a=b", "query"),
        ] {
            let e = url.parse::<ControlUrl>().unwrap_err().to_string();
            assert!(e.contains(needle), "{url}: {e}");
            assert!(e.contains(url.trim_end_matches('/')), "{e}");
        }
    }
}
