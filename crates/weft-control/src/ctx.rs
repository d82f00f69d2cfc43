//! What every part of the running server shares: settings, the store, the
//! server key, the coordinator handle and the interactive logins waiting
//! for approval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use weft_control_store::Store;
use weft_types::control::ExpiryRequest;
use weft_types::{MachinePrivate, Tag};

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
}

/// Interactive logins in progress: what each asked for, and a wake-up for
/// the follow-up requests waiting on it.
#[derive(Debug, Default)]
pub(crate) struct Logins {
    inner: Mutex<BTreeMap<String, LoginState>>,
}

impl Logins {
    /// Records what a login asked for.
    pub fn remember(&self, auth_id: &str, wish: LoginWish) {
        self.lock().entry(auth_id.to_owned()).or_default().wish = wish;
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
