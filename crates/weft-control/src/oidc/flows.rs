//! Sign-ins in progress at the IdP, keyed by their `state`: what each is
//! for, its nonce and PKCE verifier, and when it started. A callback takes
//! its sign-in out exactly once, so a replayed callback (the same `state`,
//! and so the same code) is refused; a sign-in older than its lifetime is
//! refused as expired. Time comes from the caller.
//!
//! Also the one-time tickets of [`Purpose::SignIn`]: the verified identity
//! waits under a random ticket until the page at the return URL redeems it.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use weft_types::UnixMillis;

use super::claims::Identity;

/// Sign-ins kept at most; the oldest go first beyond it.
pub const MAX_FLOWS: usize = 10_000;
/// How long a ticket of a finished sign-in may wait to be redeemed.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(120);

/// What a sign-in is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purpose {
    /// A device login waiting at `/a/<id>`.
    DeviceLogin(String),
    /// An SSH check waiting at `/a/<id>`, whose rule's checkPeriod bounds
    /// how long ago the user may have authenticated at the IdP.
    SshCheck {
        /// The check id.
        id: String,
        /// The rule's checkPeriod.
        max_age: Duration,
    },
    /// Another part of the server (e.g. the admin console) wants the
    /// verified identity: the callback redirects to `return_to` with a
    /// ticket ([`super::Oidc::redeem`]).
    SignIn {
        /// Where the browser goes back to (a path on this server).
        return_to: String,
    },
}

/// A sign-in in progress.
#[derive(Debug, Clone)]
pub struct Flow {
    /// What it is for.
    pub purpose: Purpose,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The PKCE verifier of the code.
    pub pkce_verifier: String,
    /// When it started.
    pub started: UnixMillis,
}

/// Why a callback's `state` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The callback has no `state`.
    #[error("the answer from the identity provider has no state parameter")]
    Missing,
    /// No sign-in has this `state`: forged, or already used.
    #[error(
        "this sign-in is not known to the server: it was already completed (a page reloaded or a link used twice), or the link did not come from this server"
    )]
    Unknown,
    /// The sign-in took longer than its lifetime.
    #[error("this sign-in took too long and expired")]
    Expired,
}

/// The sign-ins in progress and the tickets waiting.
#[derive(Debug)]
pub struct Flows {
    lifetime: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    flows: BTreeMap<String, Flow>,
    tickets: BTreeMap<String, (Identity, UnixMillis)>,
}

impl Flows {
    /// Returns an empty set whose sign-ins expire after `lifetime`.
    #[must_use]
    pub fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records a sign-in under `state`, dropping expired ones (and the
    /// oldest beyond [`MAX_FLOWS`]).
    pub fn insert(&self, state: String, flow: Flow, now: UnixMillis) {
        let mut g = self.lock();
        let lifetime = self.lifetime;
        g.flows
            .retain(|_, f| now < f.started.saturating_add(lifetime));
        while g.flows.len() >= MAX_FLOWS {
            let oldest = g
                .flows
                .iter()
                .min_by_key(|(_, f)| f.started)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    g.flows.remove(&k);
                }
                None => break,
            }
        }
        g.flows.insert(state, flow);
    }

    /// Takes the sign-in of `state` out (once).
    ///
    /// # Errors
    /// [`StateError`].
    pub fn take(&self, state: Option<&str>, now: UnixMillis) -> Result<Flow, StateError> {
        let state = state.filter(|s| !s.is_empty()).ok_or(StateError::Missing)?;
        let flow = self.lock().flows.remove(state).ok_or(StateError::Unknown)?;
        if now >= flow.started.saturating_add(self.lifetime) {
            return Err(StateError::Expired);
        }
        Ok(flow)
    }

    /// Returns how many sign-ins are in progress.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lock().flows.len()
    }

    /// Returns whether no sign-in is in progress.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps `id` under `ticket` for [`TICKET_LIFETIME`].
    pub fn put_ticket(&self, ticket: String, id: Identity, now: UnixMillis) {
        let mut g = self.lock();
        g.tickets.retain(|_, (_, exp)| now < *exp);
        if g.tickets.len() < MAX_FLOWS {
            g.tickets
                .insert(ticket, (id, now.saturating_add(TICKET_LIFETIME)));
        }
    }

    /// Takes the identity of `ticket` out (once), unless it expired.
    pub fn redeem(&self, ticket: &str, now: UnixMillis) -> Option<Identity> {
        let (id, exp) = self.lock().tickets.remove(ticket)?;
        (now < exp).then_some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(at: i64) -> Flow {
        Flow {
            purpose: Purpose::DeviceLogin("a".repeat(32)),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            started: UnixMillis(at),
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn a_state_is_taken_once() {
        let f = Flows::new(Duration::from_secs(600));
        f.insert("s1".into(), flow(0), UnixMillis(0));
        assert!(f.take(Some("s1"), UnixMillis(MIN)).is_ok());
        assert_eq!(
            f.take(Some("s1"), UnixMillis(MIN)).unwrap_err(),
            StateError::Unknown
        );
    }

    #[test]
    fn a_missing_or_forged_state_is_refused() {
        let f = Flows::new(Duration::from_secs(600));
        f.insert("s1".into(), flow(0), UnixMillis(0));
        assert_eq!(
            f.take(None, UnixMillis(0)).unwrap_err(),
            StateError::Missing
        );
        assert_eq!(
            f.take(Some(""), UnixMillis(0)).unwrap_err(),
            StateError::Missing
        );
        assert_eq!(
            f.take(Some("forged"), UnixMillis(0)).unwrap_err(),
            StateError::Unknown
        );
        assert_eq!(f.len(), 1, "a forged state leaves the real one in place");
    }

    #[test]
    fn a_sign_in_expires_after_its_lifetime() {
        let f = Flows::new(Duration::from_secs(600));
        f.insert("s1".into(), flow(0), UnixMillis(0));
        f.insert("s2".into(), flow(0), UnixMillis(0));
        assert!(f.take(Some("s1"), UnixMillis(10 * MIN - 1)).is_ok());
        assert_eq!(
            f.take(Some("s2"), UnixMillis(10 * MIN)).unwrap_err(),
            StateError::Expired
        );
    }

    #[test]
    fn expired_sign_ins_are_swept_when_a_new_one_starts() {
        let f = Flows::new(Duration::from_secs(600));
        f.insert("old".into(), flow(0), UnixMillis(0));
        f.insert("new".into(), flow(11 * MIN), UnixMillis(11 * MIN));
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_ticket_is_redeemed_once_within_its_lifetime() {
        let f = Flows::new(Duration::from_secs(600));
        let id = Identity {
            login: "a@b".into(),
            display_name: String::new(),
            email: None,
            idp_groups: vec![],
            groups: Default::default(),
            subject: "s".into(),
            authenticated_ms: 0,
        };
        f.put_ticket("t".into(), id.clone(), UnixMillis(0));
        f.put_ticket("t2".into(), id.clone(), UnixMillis(0));
        assert_eq!(f.redeem("t", UnixMillis(1)), Some(id));
        assert_eq!(f.redeem("t", UnixMillis(1)), None);
        assert_eq!(f.redeem("t2", UnixMillis(2 * MIN)), None, "expired");
    }
}
