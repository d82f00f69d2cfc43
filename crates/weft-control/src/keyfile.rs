//! The server's Noise static key: generated on first start and kept in the
//! state directory as `server.key` (`privkey:<hex>`, mode 0600). Nodes pin
//! its public half, so losing it means every node must log in again.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use weft_types::MachinePrivate;

/// Why the key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing failed.
    #[error("server key {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error(
        "server key {path} is not a private key (expected privkey:<64 hex digits>); restore it from a backup or remove it to make a new one (every node must then log in again)"
    )]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// Loads the key at `path`, or creates one there (0600, written to a
/// temporary file and renamed, so a crash never leaves half a key).
///
/// # Errors
/// [`KeyFileError`].
pub fn load_or_create(path: &Path) -> Result<MachinePrivate, KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            if let Ok(meta) = std::fs::metadata(path)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(path = %path.display(), "the server key is readable by others; chmod 600 it");
            }
            text.trim().parse().map_err(|_| KeyFileError::Malformed {
                path: path.to_owned(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = MachinePrivate::generate();
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
            tracing::info!(path = %path.display(), public = %key.public(), "generated the server key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_with_mode_0600_and_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        let a = load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.public(), b.public());
        std::fs::write(&path, "garbage").unwrap();
        let e = load_or_create(&path).unwrap_err().to_string();
        assert!(e.contains("not a private key"), "{e}");
    }
}
