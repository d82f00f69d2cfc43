//! The profile store: the state file in memory, and every change to it
//! written through before it is acknowledged.

use std::path::{Path, PathBuf};

use weft_localapi::{PeerStatus, Prefs, ProfileSummary};
use weft_types::MachinePrivate;

use super::state_file::{Profile, StateError, StateFile, valid_profile_id};

/// Why a profile operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// No profile has this id.
    #[error("no profile with id {0:?} (see weft switch --list)")]
    Unknown(String),
    /// Writing the state failed; nothing changed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Owns the state file.
#[derive(Debug)]
pub struct ProfileStore {
    path: PathBuf,
    state: StateFile,
}

impl ProfileStore {
    /// Loads the state at `path`, or creates (and writes) a fresh one with a
    /// new machine key if there is none.
    ///
    /// # Errors
    /// A [`StateError`]; a corrupt file is never overwritten.
    pub fn open(path: &Path, now_ms: i64) -> Result<Self, StateError> {
        let state = match StateFile::load(path)? {
            Some(s) => s,
            None => {
                let s = StateFile::fresh(MachinePrivate::generate(), new_id(&[]), now_ms);
                s.save(path)?;
                tracing::info!(path = %path.display(), machine = %s.machine_key.public().short(), "New state file");
                s
            }
        };
        Ok(Self {
            path: path.to_owned(),
            state,
        })
    }

    /// Returns the machine key.
    pub fn machine_key(&self) -> &MachinePrivate {
        &self.state.machine_key
    }

    /// Returns the current profile.
    pub fn current(&self) -> &Profile {
        // `validate` (load) and every mutation keep the current id present.
        self.state
            .current()
            .unwrap_or_else(|| unreachable!("current profile always exists"))
    }

    /// Changes the current profile with `f` and writes the state; on a write
    /// error the change is undone.
    ///
    /// # Errors
    /// [`StateError::Write`].
    pub fn update_current<R>(
        &mut self,
        f: impl FnOnce(&mut Profile) -> R,
    ) -> Result<R, StateError> {
        let before = self.state.clone();
        let id = self.state.current_profile.clone();
        let Some(p) = self.state.profiles.get_mut(&id) else {
            unreachable!("current profile always exists")
        };
        let r = f(p);
        if self.state.profiles.get(&id) == before.profiles.get(&id) {
            return Ok(r);
        }
        self.commit(before).map(|()| r)
    }

    /// Makes a new empty profile with `prefs` and switches to it.
    ///
    /// # Errors
    /// [`StateError::Write`]; nothing changed then.
    pub fn create(&mut self, prefs: Prefs, now_ms: i64) -> Result<&Profile, StateError> {
        let before = self.state.clone();
        let taken: Vec<&str> = self.state.profiles.keys().map(String::as_str).collect();
        let id = new_id(&taken);
        self.state
            .profiles
            .insert(id.clone(), Profile::new(id.clone(), prefs, now_ms));
        self.state.current_profile.clone_from(&id);
        self.commit(before)?;
        Ok(self.current())
    }

    /// Switches to profile `id`.
    ///
    /// # Errors
    /// [`ProfileError::Unknown`] or a write error.
    pub fn switch(&mut self, id: &str) -> Result<&Profile, ProfileError> {
        if !valid_profile_id(id) || !self.state.profiles.contains_key(id) {
            return Err(ProfileError::Unknown(id.to_owned()));
        }
        let before = self.state.clone();
        id.clone_into(&mut self.state.current_profile);
        self.commit(before)?;
        Ok(self.current())
    }

    /// Deletes profile `id`. Deleting the current profile switches to a new
    /// empty one that keeps its control URL (so `weft up` goes back to the
    /// same server). Returns whether the current profile changed.
    ///
    /// # Errors
    /// [`ProfileError::Unknown`] or a write error.
    pub fn delete(&mut self, id: &str, now_ms: i64) -> Result<bool, ProfileError> {
        let Some(victim) = self.state.profiles.get(id) else {
            return Err(ProfileError::Unknown(id.to_owned()));
        };
        let was_current = self.state.current_profile == id;
        let keep_url = victim.prefs.control_url.clone();
        let before = self.state.clone();
        self.state.profiles.remove(id);
        if was_current {
            let taken: Vec<&str> = self.state.profiles.keys().map(String::as_str).collect();
            let new = new_id(&taken);
            let prefs = Prefs {
                control_url: keep_url,
                ..Prefs::default()
            };
            self.state
                .profiles
                .insert(new.clone(), Profile::new(new.clone(), prefs, now_ms));
            self.state.current_profile = new;
        }
        self.commit(before)?;
        Ok(was_current)
    }

    /// Returns every profile's summary, empty ones included, sorted by id.
    #[cfg(test)]
    pub fn summaries(&self) -> Vec<ProfileSummary> {
        self.state
            .profiles
            .values()
            .map(|p| self.summary(p))
            .collect()
    }

    /// Returns the profiles `switch --list` shows: [`Self::summaries`]
    /// without empty ones (never registered, no tailnet, account or
    /// nickname), such as the slot `logout` leaves behind or a fresh
    /// install's first profile.
    pub fn listed(&self) -> Vec<ProfileSummary> {
        self.state
            .profiles
            .values()
            .filter(|p| {
                p.is_registered()
                    || p.tailnet.is_some()
                    || p.user.is_some()
                    || p.prefs.nickname.is_some()
            })
            .map(|p| self.summary(p))
            .collect()
    }

    /// Returns one profile's summary.
    pub fn summary(&self, p: &Profile) -> ProfileSummary {
        ProfileSummary {
            id: p.id.clone(),
            nickname: p.prefs.nickname.clone(),
            tailnet: p.tailnet.clone(),
            account: p.user.as_ref().map(|u| u.login_name.clone()),
            control_url: p.prefs.control_url.clone(),
            selected: p.id == self.state.current_profile,
            registered: p.is_registered(),
        }
    }

    fn commit(&mut self, before: StateFile) -> Result<(), StateError> {
        if let Err(e) = self.state.save(&self.path) {
            self.state = before;
            return Err(e);
        }
        Ok(())
    }
}

/// Returns what `status` shows as this node while a registered profile has
/// no netmap yet (right after `switch`, a restart or `up`): its identity
/// from the state file, no addresses yet, offline. The backend state
/// (`Starting`, `NeedsMachineAuth`, …) says what it waits for. `None` for a
/// profile that never registered: there is no node to show.
pub fn self_before_netmap(p: &Profile, os_hostname: &str) -> Option<PeerStatus> {
    let (Some(key), Some(id)) = (&p.node_key, p.node_id) else {
        return None;
    };
    Some(PeerStatus {
        id,
        stable_id: String::new(),
        name: String::new(),
        dns_name: String::new(),
        hostname: p
            .prefs
            .hostname
            .clone()
            .unwrap_or_else(|| os_hostname.to_owned()),
        os: "linux".into(),
        user: p.user.as_ref().map(|u| u.login_name.clone()),
        tags: Vec::new(),
        addresses: Vec::new(),
        allowed_ips: Vec::new(),
        public_key: key.public(),
        endpoints: Vec::new(),
        cur_addr: None,
        relay: None,
        online: false,
        last_seen_ms: None,
        last_handshake_ms: None,
        active: false,
        rx_bytes: 0,
        tx_bytes: 0,
        expired: false,
        key_expiry_ms: None,
        ssh_host_keys: Vec::new(),
    })
}

/// Returns a random 4-hex-digit id not in `taken`.
fn new_id(taken: &[&str]) -> String {
    loop {
        let id = format!("{:04x}", weft_types::entropy::u16());
        if !taken.contains(&id.as_str()) {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, ProfileStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = ProfileStore::open(&dir.path().join("weftd.state"), 1).unwrap();
        (dir, s)
    }

    #[test]
    fn a_fresh_store_has_one_logged_out_profile_and_is_written_at_once() {
        let (dir, s) = store();
        assert_eq!(s.summaries().len(), 1);
        assert!(!s.current().is_registered());
        assert!(dir.path().join("weftd.state").exists());
        let again = ProfileStore::open(&dir.path().join("weftd.state"), 2).unwrap();
        assert_eq!(again.machine_key(), s.machine_key());
    }

    #[test]
    fn profiles_are_created_switched_and_deleted_with_the_state_written_each_time() {
        let (dir, mut s) = store();
        let first = s.current().id.clone();
        s.update_current(|p| p.prefs.nickname = Some("home".into()))
            .unwrap();
        let second = s
            .create(
                Prefs {
                    control_url: "http://198.18.0.2:8080".into(),
                    ..Prefs::default()
                },
                3,
            )
            .unwrap()
            .id
            .clone();
        assert_ne!(first, second);
        let list = s.summaries();
        assert_eq!(list.iter().filter(|p| p.selected).count(), 1);
        assert!(list.iter().any(|p| p.id == second && p.selected));
        s.switch(&first).unwrap();
        let reread = ProfileStore::open(&dir.path().join("weftd.state"), 4).unwrap();
        assert_eq!(reread.current().id, first);
        assert_eq!(reread.current().prefs.nickname.as_deref(), Some("home"));
        assert!(matches!(s.switch("ffff"), Err(ProfileError::Unknown(_))) || second == "ffff");
        // Deleting another profile leaves the current one.
        assert!(!s.delete(&second, 5).unwrap());
        assert_eq!(s.summaries().len(), 1);
    }

    #[test]
    fn deleting_the_current_profile_makes_a_new_one_on_the_same_server() {
        let (_dir, mut s) = store();
        s.update_current(|p| p.prefs.control_url = "http://198.18.0.9:8080".into())
            .unwrap();
        let old = s.current().id.clone();
        assert!(s.delete(&old, 5).unwrap());
        assert_ne!(s.current().id, old);
        assert_eq!(s.current().prefs.control_url, "http://198.18.0.9:8080");
        assert!(!s.current().prefs.want_running);
    }

    #[test]
    fn the_list_leaves_out_empty_profiles_such_as_the_slot_a_logout_leaves() {
        let (_dir, mut s) = store();
        assert!(s.listed().is_empty(), "a fresh install lists nothing");
        s.update_current(|p| {
            p.tailnet = Some("t.weft.internal".into());
            p.node_id = Some(weft_types::ids::NodeId(3));
            p.node_key = Some(weft_types::NodePrivate::generate());
        })
        .unwrap();
        let home = s.current().id.clone();
        assert_eq!(s.listed().len(), 1);
        assert!(s.listed()[0].registered && s.listed()[0].selected);
        s.create(Prefs::default(), 3).unwrap();
        let listed = s.listed();
        assert_eq!(listed.len(), 1, "the new empty profile is not listed");
        assert!(!listed[0].selected);
        s.switch(&home).unwrap();
        assert!(
            s.delete(&home, 4).unwrap(),
            "logout deletes the current one"
        );
        assert!(s.listed().is_empty(), "{:?}", s.listed());
        assert_eq!(s.summaries().len(), 2, "two empty slots remain internally");
    }

    #[test]
    fn a_registered_profile_has_a_self_before_its_netmap_and_an_empty_one_has_none() {
        let (_dir, mut s) = store();
        assert!(self_before_netmap(s.current(), "box").is_none());
        let key = weft_types::NodePrivate::generate();
        let public = key.public();
        s.update_current(|p| {
            p.node_id = Some(weft_types::ids::NodeId(3));
            p.node_key = Some(key);
        })
        .unwrap();
        let me = self_before_netmap(s.current(), "box").unwrap();
        assert_eq!(
            (me.id, me.public_key, me.hostname.as_str(), me.online),
            (weft_types::ids::NodeId(3), public, "box", false)
        );
        assert!(me.addresses.is_empty());
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weftd.state");
        let mut s = ProfileStore::open(&path, 1).unwrap();
        // Make the directory unwritable by replacing it with a file path
        // whose parent is a file.
        s.path = dir.path().join("weftd.state/child");
        let err = s.update_current(|p| p.prefs.want_running = true);
        assert!(err.is_err());
        assert!(!s.current().prefs.want_running);
    }
}
