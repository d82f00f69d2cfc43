//! SSH host keys: reuse the system's OpenSSH keys when running as root, else
//! keep our own ed25519 and ECDSA P-256 keys in a state directory.
//!
//! Reusing `/etc/ssh` keys means clients that already know the machine
//! through OpenSSH see the same fingerprint on the tailnet address. The public
//! halves are published to control (authorized_keys format) so peers can pin
//! them through the netmap.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, EcdsaCurve, PrivateKey};

/// Where host keys come from.
#[derive(Debug, Clone)]
pub struct HostKeyOptions {
    /// Directory holding OpenSSH's `ssh_host_*_key` files (`/etc/ssh`).
    pub system_dir: PathBuf,
    /// Our own key directory (`/var/lib/weft/ssh`), created 0700.
    pub state_dir: PathBuf,
    /// Reuse the system keys when readable. Defaults to "running as root";
    /// a non-root daemon never borrows keys it could not protect.
    pub reuse_system_keys: bool,
}

impl Default for HostKeyOptions {
    fn default() -> Self {
        HostKeyOptions {
            system_dir: PathBuf::from("/etc/ssh"),
            state_dir: PathBuf::from("/var/lib/weft/ssh"),
            reuse_system_keys: nix::unistd::geteuid().is_root(),
        }
    }
}

/// Errors loading or creating host keys.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    /// The key directory or a key file could not be created or written.
    #[error("cannot write host key {path}: {source}")]
    Write {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A key file in our own directory exists but cannot be read or parsed.
    #[error("cannot read host key {path}: {reason} (remove it to generate a new one)")]
    Read {
        /// The offending file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Key generation or encoding failed.
    #[error("cannot generate host key: {0}")]
    Generate(String),
}

/// Where a host key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Reused from the system's OpenSSH directory.
    System,
    /// Loaded from our state directory.
    State,
    /// Generated now and written to our state directory.
    Generated,
}

/// The server's host keys (ed25519 first, then ECDSA P-256).
#[derive(Clone)]
pub struct HostKeys {
    keys: Vec<(PrivateKey, KeySource, PathBuf)>,
}

impl std::fmt::Debug for HostKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKeys")
            .field("public", &self.public_lines())
            .finish()
    }
}

/// The two key kinds we serve, with OpenSSH's file names.
const KINDS: [(&str, KeyKind); 2] = [("ed25519", KeyKind::Ed25519), ("ecdsa", KeyKind::EcdsaP256)];

#[derive(Debug, Clone, Copy)]
enum KeyKind {
    Ed25519,
    EcdsaP256,
}

impl KeyKind {
    fn algorithm(self) -> Algorithm {
        match self {
            KeyKind::Ed25519 => Algorithm::Ed25519,
            KeyKind::EcdsaP256 => Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
        }
    }
}

impl HostKeys {
    /// Loads the host keys per `opts`: for each kind, the system key if
    /// allowed and readable, else ours from the state directory, else a new
    /// one written there (directory 0700, key 0600, public key 0644).
    ///
    /// # Errors
    /// Returns an error if our own key file is unreadable or corrupt, or if a
    /// new key cannot be written. An unusable *system* key is skipped, not an
    /// error: OpenSSH's files are not ours to judge.
    pub fn load_or_generate(opts: &HostKeyOptions) -> Result<Self, HostKeyError> {
        let mut keys = Vec::new();
        for (name, kind) in KINDS {
            let file = format!("ssh_host_{name}_key");
            if opts.reuse_system_keys {
                let path = opts.system_dir.join(&file);
                if let Some(key) = read_key(&path)
                    .ok()
                    .filter(|k| k.algorithm() == kind.algorithm())
                {
                    keys.push((key, KeySource::System, path));
                    continue;
                }
            }
            let path = opts.state_dir.join(&file);
            if path.exists() {
                let key = read_key(&path).map_err(|reason| HostKeyError::Read {
                    path: path.clone(),
                    reason,
                })?;
                keys.push((key, KeySource::State, path));
                continue;
            }
            let key = generate(kind)?;
            write_key(&opts.state_dir, &path, &key)?;
            keys.push((key, KeySource::Generated, path));
        }
        Ok(HostKeys { keys })
    }

    /// Returns fresh in-memory keys that are never written anywhere (tests,
    /// ephemeral nodes).
    ///
    /// # Errors
    /// Returns an error if key generation fails.
    pub fn ephemeral() -> Result<Self, HostKeyError> {
        let mut keys = Vec::new();
        for (_, kind) in KINDS {
            keys.push((generate(kind)?, KeySource::Generated, PathBuf::new()));
        }
        Ok(HostKeys { keys })
    }

    /// Returns the public keys as authorized_keys / known_hosts lines without
    /// a comment (`ssh-ed25519 AAAA…`), the form published to control.
    pub fn public_lines(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|(k, _, _)| {
                let mut public = k.public_key().clone();
                public.set_comment("");
                public.to_openssh().ok()
            })
            .collect()
    }

    /// Returns where each key came from, in serving order.
    pub fn sources(&self) -> Vec<(KeySource, PathBuf)> {
        self.keys.iter().map(|(_, s, p)| (*s, p.clone())).collect()
    }

    pub(crate) fn private_keys(&self) -> Vec<PrivateKey> {
        self.keys.iter().map(|(k, _, _)| k.clone()).collect()
    }
}

fn read_key(path: &Path) -> Result<PrivateKey, String> {
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    russh::keys::decode_secret_key(&text, None).map_err(|e| e.to_string())
}

fn generate(kind: KeyKind) -> Result<PrivateKey, HostKeyError> {
    use rand::SeedableRng as _;
    // A CSPRNG seeded from the OS RNG's one door (`weft_types::entropy`).
    let mut rng = rand::rngs::StdRng::from_seed(weft_types::entropy::seed());
    PrivateKey::random(&mut rng, kind.algorithm())
        .map_err(|e| HostKeyError::Generate(e.to_string()))
}

fn write_key(dir: &Path, path: &Path, key: &PrivateKey) -> Result<(), HostKeyError> {
    let werr = |p: &Path| {
        let p = p.to_owned();
        move |source| HostKeyError::Write { path: p, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(werr(dir))?;
    // `mode` applies only to directories it creates; tighten an existing one too.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(werr(dir))?;
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| HostKeyError::Generate(e.to_string()))?;
    // Write to a temporary name and rename, so a crash never leaves half a key.
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    f.write_all(pem.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(werr(&tmp))?;
    fs::rename(&tmp, path).map_err(werr(path))?;
    if let Ok(public) = key.public_key().to_openssh() {
        let pub_path = path.with_extension("pub");
        let _ = fs::write(&pub_path, format!("{public}\n"));
        let _ = fs::set_permissions(&pub_path, fs::Permissions::from_mode(0o644));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(system: &Path, state: &Path, reuse: bool) -> HostKeyOptions {
        HostKeyOptions {
            system_dir: system.to_owned(),
            state_dir: state.to_owned(),
            reuse_system_keys: reuse,
        }
    }

    #[test]
    fn keys_are_generated_once_with_private_permissions_and_then_reloaded() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("weft/ssh");
        let o = opts(&tmp.path().join("nosys"), &state, true);
        let first = HostKeys::load_or_generate(&o).unwrap();
        assert_eq!(
            first.sources().iter().map(|s| s.0).collect::<Vec<_>>(),
            [KeySource::Generated; 2]
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("ssh_host_ed25519_key")), 0o600);
        assert_eq!(mode(&state.join("ssh_host_ecdsa_key")), 0o600);

        let second = HostKeys::load_or_generate(&o).unwrap();
        assert_eq!(
            second.sources().iter().map(|s| s.0).collect::<Vec<_>>(),
            [KeySource::State; 2]
        );
        assert_eq!(first.public_lines(), second.public_lines());
        let lines = first.public_lines();
        assert!(lines[0].starts_with("ssh-ed25519 "), "{lines:?}");
        assert!(lines[1].starts_with("ecdsa-sha2-nistp256 "), "{lines:?}");
    }

    #[test]
    fn system_keys_are_reused_only_when_allowed() {
        let tmp = tempfile::tempdir().unwrap();
        let sys = tmp.path().join("etc-ssh");
        // Make "system" keys by generating into a directory used as the system dir.
        let sys_keys =
            HostKeys::load_or_generate(&opts(&tmp.path().join("none"), &sys, false)).unwrap();

        let reused = HostKeys::load_or_generate(&opts(&sys, &tmp.path().join("a"), true)).unwrap();
        assert_eq!(
            reused.sources().iter().map(|s| s.0).collect::<Vec<_>>(),
            [KeySource::System; 2]
        );
        assert_eq!(reused.public_lines(), sys_keys.public_lines());
        assert!(
            !tmp.path().join("a").exists(),
            "nothing is written when system keys are reused"
        );

        let own = HostKeys::load_or_generate(&opts(&sys, &tmp.path().join("b"), false)).unwrap();
        assert_ne!(own.public_lines(), sys_keys.public_lines());
    }

    #[test]
    fn a_corrupt_key_of_our_own_is_an_error_not_silently_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ssh_host_ed25519_key"), "garbage").unwrap();
        let err = HostKeys::load_or_generate(&opts(&tmp.path().join("x"), tmp.path(), false))
            .unwrap_err();
        assert!(matches!(err, HostKeyError::Read { .. }), "{err}");
    }
}
