//! The relay's own key: X25519, generated on first start and kept as
//! `privkey:<hex>` in a file of mode 0600 (written to a temporary file and
//! renamed, so a crash never leaves half a key). Clients learn its public
//! half from the `ServerKey` frame; nothing pins it, so losing it costs
//! nothing but a reconnect.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use weft_types::NodePrivate;

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing failed.
    #[error("relay key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "relay key {path} is not a private key (expected privkey:<64 hex digits>); remove it to make a new one"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// Loads the relay key at `path`, or creates one there (0600).
///
/// # Errors
/// [`KeyFileError`].
pub fn load_or_create_key(path: &Path) -> Result<NodePrivate, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), "the relay key is readable by others; chmod 600 it");
            }
            let text = zeroize::Zeroizing::new(text);
            text.trim().parse().map_err(|_| KeyFileError::Malformed {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodePrivate::generate();
            let tmp = path.with_extension("key.tmp");
            let _ = std::fs::remove_file(&tmp);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io)?;
            f.write_all(key.to_text().as_bytes()).map_err(io)?;
            f.write_all(b"\n").map_err(io)?;
            f.sync_all().map_err(io)?;
            std::fs::rename(&tmp, path).map_err(io)?;
            if let Some(dir) = path.parent()
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            tracing::info!(path = %path.display(), public = %key.public(), "generated the relay key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_written_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.key");
        let k = load_or_create_key(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_key(&path).unwrap(), k);
    }

    #[test]
    fn a_file_without_a_key_is_an_error_that_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("relay.key");
        std::fs::write(&path, "hello").unwrap();
        let e = load_or_create_key(&path).unwrap_err().to_string();
        assert!(e.contains("remove it to make a new one"), "{e}");
    }
}
