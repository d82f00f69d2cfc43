//! TLS for the relay (rustls on ring): the server's certificate from PEM
//! files, and the client's trust (the control client's: system roots, else
//! the Mozilla roots, plus a CA file for private certificates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {detail}")]
    File {
        /// What the file should hold ("certificate", "private key", "CA file").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// rustls refused the configuration (e.g. the key does not match).
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bad = |detail: String| TlsError::File {
        what,
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

/// Returns a server configuration serving the chain in `cert_file` (PEM,
/// leaf first) with the key in `key_file` (PEM, PKCS#8, SEC1 or PKCS#1),
/// HTTP/1.1 only.
///
/// # Errors
/// [`TlsError`] naming the file, or the mismatch.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs("certificate", cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| TlsError::File {
        what: "private key",
        path: key_file.to_owned(),
        detail: e.to_string(),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Returns a client configuration trusting the system roots (else the
/// Mozilla roots) and, if given, the certificates in `ca_file` (PEM) — for
/// relays with private certificates. The same trust as the control client
/// ([`weft_client::tls`]).
///
/// # Errors
/// [`TlsError`] naming the CA file.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    weft_client::tls::client_config(ca_file).map_err(|e| match e {
        weft_client::tls::TlsError::CaFile { path, detail } => TlsError::File {
            what: "CA file",
            path,
            detail,
        },
        weft_client::tls::TlsError::Rustls(e) => TlsError::Rustls(e),
    })
}
