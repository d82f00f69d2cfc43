//! What every part of the running server shares: settings, the store, the
//! server key, the coordinator handle, connection admission and the
//! interactive logins waiting for approval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_control_store::Store;
use weft_types::control::ExpiryRequest;
use weft_types::{MachinePrivate, Tag, UnixMillis};

use crate::admission::{Admission, Source};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::state::coordinator::CoordHandle;

/// The shared state of a running server.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub config: ServerConfig,
    /// The URL nodes use; login links start with it.
    pub server_url: String,
    pub store: Store,
    pub server_key: MachinePrivate,
    pub coord: CoordHandle,
    pub logins: Logins,
    /// Which connections are held (limits per source and in total).
    pub admission: Arc<Admission>,
    /// SSH checks waiting for approval, and recent approvals.
    pub checks: crate::check::Checks,
    pub clock: Arc<dyn Clock>,
    /// Bounds how many full maps are built and written at once.
    pub full_maps: Semaphore,
    /// Cancelled when the server shuts down.
    pub stop: CancellationToken,
    /// Connection tasks, awaited at shutdown.
    pub tasks: TaskTracker,
}

/// What a node asked for when it started an interactive login, applied
/// when the login is approved.
#[derive(Debug, Clone, Default)]
pub(crate) struct LoginWish {
    pub ephemeral: bool,
    pub expiry: ExpiryRequest,
    pub requested_tags: BTreeSet<Tag>,
}

#[derive(Debug, Default)]
struct LoginState {
    notify: Arc<Notify>,
    wish: LoginWish,
    /// The source address that started the login, and when it expires:
    /// what the per-source cap counts. `None`: not known (a login from
    /// before a restart, or a follow-up seen first).
    origin: Option<(Source, UnixMillis)>,
}

/// Interactive logins in progress: what each asked for, where it came
/// from, and a wake-up for the follow-up requests waiting on it.
#[derive(Debug, Default)]
pub(crate) struct Logins {
    inner: Mutex<BTreeMap<String, LoginState>>,
    /// Held while a new login is counted against the caps and created, so
    /// two requests cannot both take the last place.
    pub creating: tokio::sync::Mutex<()>,
}

impl Logins {
    /// Records what a login asked for, and where it came from unless that
    /// is known already.
    pub fn remember(&self, auth_id: &str, wish: LoginWish, origin: Option<(Source, UnixMillis)>) {
        let mut inner = self.lock();
        let state = inner.entry(auth_id.to_owned()).or_default();
        state.wish = wish;
        if state.origin.is_none() {
            state.origin = origin;
        }
    }

    /// Returns how many logins started from `source` are unexpired at `now`.
    pub fn pending_from(&self, source: Source, now: UnixMillis) -> usize {
        self.lock()
            .values()
            .filter(|s| {
                s.origin
                    .is_some_and(|(src, exp)| src == source && exp > now)
            })
            .count()
    }

    /// Returns what a login asked for (defaults after a server restart).
    pub fn wish(&self, auth_id: &str) -> LoginWish {
        self.lock()
            .get(auth_id)
            .map(|s| s.wish.clone())
            .unwrap_or_default()
    }

    /// Returns the wake-up of a login.
    pub fn notifier(&self, auth_id: &str) -> Arc<Notify> {
        self.lock()
            .entry(auth_id.to_owned())
            .or_default()
            .notify
            .clone()
    }

    /// Wakes every follow-up waiting on a login that was decided.
    pub fn decided(&self, auth_id: &str) {
        if let Some(s) = self.lock().remove(auth_id) {
            s.notify.notify_waiters();
        }
    }

    /// Forgets a login the store does not know (a follow-up for a made-up
    /// or long-expired URL created its entry; it must not stay).
    pub fn forget(&self, auth_id: &str) {
        self.lock().remove(auth_id);
    }

    /// Returns the ids of the logins in progress.
    pub fn ids(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Forgets logins that are not in `keep` (expired ones).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, LoginState>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
