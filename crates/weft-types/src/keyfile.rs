//! Private keys kept in files: `privkey:<hex>`, mode 0600, created on first
//! use. One implementation for every key a binary keeps on disk (control's
//! Noise key, a relay's key).
//!
//! A new key is written to a temporary file, synced and renamed (then the
//! directory is synced), so a crash never leaves half a key. The caller
//! logs: [`Loaded`] says whether the key was made now and whether the file
//! was readable by others.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use zeroize::Zeroizing;

use crate::key::{DiscoPrivate, MachinePrivate, NodePrivate};

/// A private key type that can live in a key file.
pub trait StoredKey: FromStr + Sized {
    /// Makes a new key from the OS random number generator.
    fn generate() -> Self;
    /// The `privkey:<hex>` form.
    fn to_text(&self) -> Zeroizing<String>;
}

macro_rules! stored_key {
    ($($t:ty),*) => {$(
        impl StoredKey for $t {
            fn generate() -> Self {
                <$t>::generate()
            }
            fn to_text(&self) -> Zeroizing<String> {
                <$t>::to_text(self)
            }
        }
    )*};
}
stored_key!(NodePrivate, MachinePrivate, DiscoPrivate);

/// What [`load_or_create`] found.
#[derive(Debug)]
pub struct Loaded<K> {
    /// The key.
    pub key: K,
    /// It did not exist and was made now.
    pub created: bool,
    /// The existing file is readable or writable by group or others
    /// (it is still used; the caller should warn).
    pub loose_permissions: bool,
}

/// Why a key file could not be used. `what` names the key ("server key",
/// "relay key") and `remedy` says what to do about a malformed file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading, creating or writing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// Which key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not hold a key.
    #[error("{what} {path} is not a private key (expected privkey:<64 hex digits>); {remedy}")]
    Malformed {
        /// Which key.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the user can do.
        remedy: &'static str,
    },
}

/// Loads the key at `path`, or creates one there (0600).
///
/// # Errors
/// [`KeyFileError`]; a file that exists but holds no key is never replaced.
pub fn load_or_create<K: StoredKey>(
    path: &Path,
    what: &'static str,
    remedy: &'static str,
) -> Result<Loaded<K>, KeyFileError> {
    let io = |source| KeyFileError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let loose_permissions =
                std::fs::metadata(path).is_ok_and(|meta| meta.permissions().mode() & 0o077 != 0);
            let key = text.trim().parse().map_err(|_| KeyFileError::Malformed {
                what,
                path: path.to_owned(),
                remedy,
            })?;
            Ok(Loaded {
                key,
                created: false,
                loose_permissions,
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = K::generate();
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
            Ok(Loaded {
                key,
                created: true,
                loose_permissions: false,
            })
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "weft-keyfile-{}-{:x}",
            std::process::id(),
            crate::entropy::u64()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_key_is_made_once_with_mode_0600_and_then_reused() {
        let d = dir();
        let path = d.join("server.key");
        let a: Loaded<MachinePrivate> = load_or_create(&path, "server key", "-").unwrap();
        assert!(a.created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let b: Loaded<MachinePrivate> = load_or_create(&path, "server key", "-").unwrap();
        assert!(!b.created && !b.loose_permissions);
        assert_eq!(a.key, b.key);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c: Loaded<MachinePrivate> = load_or_create(&path, "server key", "-").unwrap();
        assert!(c.loose_permissions);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_without_a_key_is_refused_with_the_remedy_and_kept() {
        let d = dir();
        let path = d.join("relay.key");
        std::fs::write(&path, "garbage").unwrap();
        let e = load_or_create::<NodePrivate>(&path, "relay key", "remove it to make a new one")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("relay key "), "{e}");
        assert!(e.contains("not a private key"), "{e}");
        assert!(e.ends_with("remove it to make a new one"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "garbage");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
