//! The daemon's state file (`--state`, default `/var/lib/weft/weftd.state`).
//!
//! One JSON document, mode 0600, replaced atomically (temp file in the same
//! directory, fsync, rename, fsync the directory), so a crash leaves either
//! the old or the new file, never half of one:
//!
//! ```json
//! {
//!   "version": 1,
//!   "machine_key": "privkey:…",          // one per machine, all profiles
//!   "current_profile": "3f2a",
//!   "profiles": {
//!     "3f2a": {
//!       "id": "3f2a",
//!       "prefs": { …weft_localapi::Prefs… },
//!       "node_key": "privkey:…",          // null before the first login
//!       "control_key": "mkey:…",          // pinned at first contact
//!       "node_id": 12,
//!       "user": { "id": 3, "login_name": "alice@example.com", "display_name": "Alice" },
//!       "tailnet": "example.weft.internal",
//!       "created_ms": 1764000000000
//!     }
//!   }
//! }
//! ```
//!
//! A file that exists but cannot be read, parsed or validated (trailing
//! bytes after the JSON document included) stops the daemon with a message
//! naming the file and the problem; it is never overwritten (deleting it is
//! the user's decision, and makes a new node). A file that group or others
//! may read or write (it holds private keys) is tightened to 0600 at load,
//! with a warning in the log.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weft_localapi::{Prefs, UserInfo};
use weft_types::{MachinePrivate, MachinePublic, NodeId, NodePrivate};

/// The format version this code writes and reads.
pub const VERSION: u32 = 1;

/// Why the state file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("cannot read the state file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid state file; it was left untouched.
    #[error(
        "the state file {path} is corrupt ({problem}); weftd will not overwrite it. \
         Move it away to start as a new node (new keys, new addresses), or restore a backup"
    )]
    Corrupt { path: PathBuf, problem: String },
    /// The file could not be written.
    #[error("cannot write the state file {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Everything the daemon keeps across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateFile {
    pub version: u32,
    pub machine_key: MachinePrivate,
    pub current_profile: String,
    pub profiles: BTreeMap<String, Profile>,
}

/// One login profile: a node identity on one tailnet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Four hex digits, the key in [`StateFile::profiles`].
    pub id: String,
    pub prefs: Prefs,
    /// The node's WireGuard private key; `None` before the first login.
    pub node_key: Option<NodePrivate>,
    /// The control server's key, pinned at first contact.
    pub control_key: Option<MachinePublic>,
    /// The node id control gave us; `None` until registered.
    pub node_id: Option<NodeId>,
    /// The user the node belongs to (none for tagged nodes).
    pub user: Option<UserInfo>,
    /// The tailnet's domain, once a netmap arrived.
    pub tailnet: Option<String>,
    /// When the profile was made (unix ms).
    pub created_ms: i64,
}

impl Profile {
    /// Returns a new, logged-out profile.
    pub fn new(id: String, prefs: Prefs, created_ms: i64) -> Self {
        Self {
            id,
            prefs,
            node_key: None,
            control_key: None,
            node_id: None,
            user: None,
            tailnet: None,
            created_ms,
        }
    }

    /// Returns whether the profile has completed a registration.
    pub fn is_registered(&self) -> bool {
        self.node_key.is_some() && self.node_id.is_some()
    }
}

/// Returns whether `id` is a valid profile id (four lowercase hex digits).
pub fn valid_profile_id(id: &str) -> bool {
    id.len() == 4
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Makes the state file `file` (at `path`) private to its owner (0600) if
/// group or others have any access, and says so in the log.
fn tighten_mode(file: &File, path: &Path) -> std::io::Result<()> {
    let mode = file.metadata()?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "The state file holds private keys but others could access it; made it 0600"
        );
        file.set_permissions(fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

impl StateFile {
    /// Returns a fresh state: a new machine key and one empty profile.
    pub fn fresh(machine_key: MachinePrivate, profile_id: String, created_ms: i64) -> Self {
        let profile = Profile::new(profile_id.clone(), Prefs::default(), created_ms);
        Self {
            version: VERSION,
            machine_key,
            current_profile: profile_id.clone(),
            profiles: BTreeMap::from([(profile_id, profile)]),
        }
    }

    /// Reads the state at `path`: `Ok(None)` if there is no file.
    ///
    /// # Errors
    /// [`StateError::Read`] or [`StateError::Corrupt`]; the file is untouched.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let read_err = |source| StateError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(read_err(source)),
        };
        tighten_mode(&file, path).map_err(read_err)?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut bytes).map_err(read_err)?;
        Self::parse(&bytes)
            .map(Some)
            .map_err(|problem| StateError::Corrupt {
                path: path.to_owned(),
                problem,
            })
    }

    /// Parses and checks the bytes of a state file (the pure half of
    /// [`StateFile::load`], and the fuzz target's entry point).
    ///
    /// # Errors
    /// What is wrong with the bytes, in words for [`StateError::Corrupt`].
    pub fn parse(bytes: &[u8]) -> Result<Self, String> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err("it is empty".into());
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let state: StateFile = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            if at == "." {
                inner.to_string()
            } else {
                format!("at {at}: {inner}")
            }
        })?;
        // One document and nothing after it (whitespace aside): anything
        // else is not a file this daemon wrote.
        de.end().map_err(|e| {
            format!(
                "there is more after the JSON document ({e}); the file was changed by something \
                 other than weftd"
            )
        })?;
        state.validate()?;
        Ok(state)
    }

    fn validate(&self) -> Result<(), String> {
        if self.version != VERSION {
            return Err(format!(
                "format version {} is not {VERSION}, the one this weftd reads",
                self.version
            ));
        }
        for (key, p) in &self.profiles {
            if !valid_profile_id(key) {
                return Err(format!("profile id {key:?} is not four hex digits"));
            }
            if *key != p.id {
                return Err(format!("profile {key:?} says its id is {:?}", p.id));
            }
        }
        if !self.profiles.contains_key(&self.current_profile) {
            return Err(format!(
                "current profile {:?} is not among the profiles",
                self.current_profile
            ));
        }
        Ok(())
    }

    /// Writes the state to `path` atomically with mode 0600.
    ///
    /// # Errors
    /// [`StateError::Write`]; the previous file is then still in place.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: path.to_owned(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| write_err(std::io::Error::other(e)))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(write_err)?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).map_err(write_err)?;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            File::open(&dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(write_err)
    }

    /// Returns the current profile.
    pub fn current(&self) -> Option<&Profile> {
        self.profiles.get(&self.current_profile)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StateFile {
        let mut s = StateFile::fresh(
            MachinePrivate::from_bytes([1; 32]),
            "ab12".into(),
            1_700_000_000_000,
        );
        let p = s.profiles.get_mut("ab12").unwrap();
        p.node_key = Some(NodePrivate::from_bytes([2; 32]));
        p.node_id = Some(NodeId(7));
        p.prefs.want_running = true;
        p.user = Some(UserInfo {
            id: weft_types::UserId(3),
            login_name: "alice@example.com".into(),
            display_name: "Alice".into(),
        });
        s
    }

    #[test]
    fn a_saved_state_loads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/weftd.state");
        let s = sample();
        s.save(&path).unwrap();
        let back = StateFile::load(&path).unwrap().unwrap();
        assert_eq!(back.profiles, s.profiles);
        assert_eq!(back.machine_key, s.machine_key);
        assert_eq!(back.current_profile, "ab12");
    }

    #[test]
    fn the_state_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.state");
        sample().save(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_missing_file_is_a_fresh_start() {
        let dir = tempfile::tempdir().unwrap();
        assert!(StateFile::load(&dir.path().join("nope")).unwrap().is_none());
    }

    #[test]
    fn a_corrupt_file_is_refused_with_its_name_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.state");
        for (bad, expect) in [
            ("{\"version\":1,", "EOF"),
            ("", "empty"),
            (
                "{\"version\":1,\"machine_key\":\"privkey:zz\",\"current_profile\":\"ab12\",\"profiles\":{}}",
                "machine_key",
            ),
            (
                "{\"version\":9,\"machine_key\":\"privkey:0101010101010101010101010101010101010101010101010101010101010101\",\"current_profile\":\"ab12\",\"profiles\":{}}",
                "version 9",
            ),
            (
                "{\"version\":1,\"machine_key\":\"privkey:0101010101010101010101010101010101010101010101010101010101010101\",\"current_profile\":\"ab12\",\"profiles\":{}}",
                "current profile",
            ),
        ] {
            fs::write(&path, bad).unwrap();
            let err = StateFile::load(&path).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains(expect), "{err} should mention {expect}");
            assert!(err.contains("will not overwrite"), "{err}");
            assert_eq!(fs::read_to_string(&path).unwrap(), bad);
        }
    }

    #[test]
    fn trailing_bytes_after_the_document_are_refused_like_other_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.state");
        sample().save(&path).unwrap();
        let good = fs::read_to_string(&path).unwrap();
        // Whitespace after the document is fine (save writes a newline).
        StateFile::load(&path).unwrap().unwrap();
        for junk in ["x", "{}", "\u{0}", "{\"version\":1}"] {
            let bad = format!("{good}{junk}");
            fs::write(&path, &bad).unwrap();
            let err = StateFile::load(&path).unwrap_err().to_string();
            assert!(
                err.contains(&path.display().to_string())
                    && err.contains("more after the JSON document")
                    && err.contains("will not overwrite"),
                "{err}"
            );
            assert_eq!(fs::read_to_string(&path).unwrap(), bad, "left untouched");
        }
    }

    #[test]
    fn a_state_file_others_can_read_is_made_private_when_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.state");
        sample().save(&path).unwrap();
        for loose in [0o644, 0o640, 0o606, 0o666] {
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).unwrap();
            let back = StateFile::load(&path).unwrap().unwrap();
            assert_eq!(back.profiles, sample().profiles);
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{loose:o}");
        }
        // A private file is left as it is (0400 stays read-only).
        fs::set_permissions(&path, fs::Permissions::from_mode(0o400)).unwrap();
        StateFile::load(&path).unwrap().unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o400);
    }

    #[test]
    fn private_keys_are_stored_but_never_debug_printed() {
        let s = sample();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains(&hex::encode([2u8; 32])), "{dbg}");
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("privkey:"));
    }

    #[test]
    fn profile_ids_are_four_hex_digits() {
        assert!(valid_profile_id("00af"));
        assert!(!valid_profile_id("00AF"));
        assert!(!valid_profile_id("abc"));
        assert!(!valid_profile_id("../x"));
    }
}
