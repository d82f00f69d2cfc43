//! What waits for a decision, in memory: interactive device logins (what
//! each asked for, where it came from, a wake-up for its follow-up request)
//! and SSH checks (who must approve, and the channel of the verdict).
//!
//! Both registries sit in [`crate::ctx::Ctx`]; registration and the SSH
//! check handler fill them, completing a login ([`crate::login`]) decides
//! them. They use nothing else of this crate but the page types and
//! admission's `Source`.
//!
//! Only what waits is here: a pending check lives as long as the node's
//! connection that asked, so a restart ends it anyway. Granted SSH check
//! approvals are in the database (`ssh_approvals`, [`crate::check`]), so a
//! restart does not ask everyone again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, oneshot};
use weft_types::control::{ExpiryRequest, SshCheckVerdict};
use weft_types::{NodeId, Tag, UnixMillis, UserId};

use crate::admission::Source;
use crate::pages::CheckInfo;

// --- interactive device logins -----------------------------------------------------------

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

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, LoginState>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// --- SSH checks --------------------------------------------------------------------------

/// A check waiting for its user.
#[derive(Debug)]
pub(crate) struct PendingCheck {
    /// The user who must approve.
    pub user: UserId,
    /// The source node the approval vouches for.
    pub src_node: NodeId,
    /// The node being logged in to (for the approval's audit fields).
    pub dst_node: NodeId,
    /// How long an approval is remembered for `(user, src_node)`.
    pub period: Duration,
    /// What the page shows (and when the check gives up).
    pub info: CheckInfo,
    /// Where the verdict goes.
    pub tx: oneshot::Sender<SshCheckVerdict>,
}

/// A check that its user may approve now: what the approval records.
#[derive(Debug, Clone)]
pub(crate) struct ApprovableCheck {
    pub user: UserId,
    pub src_node: NodeId,
    pub dst_node: NodeId,
    pub info: CheckInfo,
    pub period: Duration,
}

/// An approved check.
#[derive(Debug, Clone)]
pub(crate) struct ApprovedCheck {
    pub src_node: NodeId,
    pub info: CheckInfo,
    pub period: Duration,
}

/// Why an approval of a check was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ApproveError {
    /// Someone other than the user it is for.
    WrongUser {
        owner: String,
        src: String,
        approver: String,
    },
    /// Too late.
    Expired,
}

/// The SSH checks in progress.
#[derive(Debug, Default)]
pub(crate) struct Checks {
    pending: Mutex<BTreeMap<String, PendingCheck>>,
}

impl Checks {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, PendingCheck>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds check `id` unless one with that id is pending; returns whether
    /// it was added.
    pub fn add(&self, id: &str, check: PendingCheck) -> bool {
        let mut pending = self.lock();
        if pending.contains_key(id) {
            return false;
        }
        pending.insert(id.to_owned(), check);
        true
    }

    /// Returns what the page of a pending check shows, if `id` is one.
    pub fn info(&self, id: &str) -> Option<CheckInfo> {
        self.lock().get(id).map(|p| p.info.clone())
    }

    /// Returns whether `user` (`approver`) may approve check `id` at `now`,
    /// and if so what the approval records; the check stays pending until
    /// [`Checks::accept`]. Returns `None` if `id` is not a pending check.
    pub fn approvable(
        &self,
        id: &str,
        user: UserId,
        approver: &str,
        now: UnixMillis,
    ) -> Option<Result<ApprovableCheck, ApproveError>> {
        let pending = self.lock();
        let p = pending.get(id)?;
        if now >= p.info.expires {
            return Some(Err(ApproveError::Expired));
        }
        if p.user != user {
            return Some(Err(ApproveError::WrongUser {
                owner: p.info.login.clone(),
                src: p.info.src_name.clone(),
                approver: approver.to_owned(),
            }));
        }
        Some(Ok(ApprovableCheck {
            user: p.user,
            src_node: p.src_node,
            dst_node: p.dst_node,
            info: p.info.clone(),
            period: p.period,
        }))
    }

    /// Ends check `id` with `verdict` (an approval that was recorded).
    /// Returns whether it was still pending (it may have been given up
    /// meanwhile).
    pub fn accept(&self, id: &str, verdict: SshCheckVerdict) -> bool {
        let Some(p) = self.lock().remove(id) else {
            return false;
        };
        let i = &p.info;
        tracing::info!(check = id, user = %i.login, src = %i.src_name, dst = %i.dst_name, ssh_user = %i.ssh_user, "ssh check approved");
        let _ = p.tx.send(verdict);
        true
    }

    /// Declines check `id`. Returns whether it was one.
    pub fn reject(&self, id: &str) -> bool {
        let Some(p) = self.lock().remove(id) else {
            return false;
        };
        tracing::info!(check = id, user = %p.info.login, src = %p.info.src_name, "ssh check declined");
        let _ = p.tx.send(SshCheckVerdict::Reject {
            message: "an administrator declined this login".into(),
        });
        true
    }

    /// Forgets pending check `id` (its connection went away).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}
