//! TLS for `https://` control servers and relays (rustls on ring).
//!
//! Trust: the system's root store (`rustls-native-certs`: on Debian
//! `/etc/ssl/certs`, so a private CA installed with
//! `update-ca-certificates` is trusted like it is by curl), falling back to
//! the Mozilla roots compiled in (`webpki-roots`) when the system has none
//! (a minimal container). The system store is chosen first because a
//! self-hosted server is often behind a company CA that the machine already
//! trusts, and because it follows the distribution's updates; the compiled
//! roots keep a bare system working with public certificates. A CA file
//! (`--login-server-ca`, PEM) adds to either.
//!
//! TLS authenticates the server's name; the control channel's Noise
//! handshake still checks the pinned server key, so a CA that vouches for
//! the wrong server cannot take over a node that already pinned its key.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no usable certificate.
    #[error("CA file {path}: {detail}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Returns the system's roots, or the compiled-in Mozilla roots when the
/// system store is empty or unreadable (read once per process).
fn system_roots() -> &'static RootCertStore {
    static ROOTS: OnceLock<RootCertStore> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let mut roots = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "reading the system's CA certificates");
        }
        let (added, ignored) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::debug!(
                ignored,
                "no system CA certificates; using the compiled-in Mozilla roots"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        roots
    })
}

/// Reads the certificates of a PEM CA file.
///
/// # Errors
/// [`TlsError::CaFile`] naming the file.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::CaFile {
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// Returns a client configuration trusting the system roots (see the module
/// docs) and, if given, the certificates in `ca_file` (PEM), HTTP/1.1 only.
///
/// # Errors
/// [`TlsError`] naming the CA file.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = system_roots().clone();
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| TlsError::CaFile {
                path: path.to_owned(),
                detail: e.to_string(),
            })?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let dir = std::env::temp_dir().join(format!("weft-client-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        let e = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("CA file {}", missing.display())),
            "{e}"
        );
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty)).unwrap_err().to_string();
        assert!(e.contains("no PEM CERTIFICATE block"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_ca_file_the_system_or_compiled_roots_are_trusted() {
        let config = client_config(None).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert!(!system_roots().is_empty());
    }
}
