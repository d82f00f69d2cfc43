//! Console sessions and sign-in throttling: in memory (a restart signs
//! everyone out), keyed by a random token that only the session cookie
//! carries. Each session has its own CSRF token, which every state-changing
//! form repeats.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use weft_types::UnixMillis;

/// How long a session lives after sign-in, however active.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 60 * 60);
/// How long a session lives without a request.
pub const SESSION_IDLE: Duration = Duration::from_secs(60 * 60);
/// Failed sign-ins allowed per source address within [`SIGN_IN_WINDOW`].
pub const SIGN_IN_FAILURES: u32 = 5;
/// The window [`SIGN_IN_FAILURES`] is counted in.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);
/// Sessions held at once, at most (the oldest goes first).
const MAX_SESSIONS: usize = 1000;
/// Source addresses tracked by the throttle, at most.
const MAX_THROTTLED: usize = 10_000;

/// Who a session belongs to: an admin, however they proved it
/// ([`super::ConsoleSignIn`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminIdentity {
    /// How the admin appears in the audit log and policy authors
    /// (`api key 0123abcd…`, later an OIDC login name).
    pub name: String,
}

/// A signed-in admin's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub who: AdminIdentity,
    /// The token every state-changing form must carry.
    pub csrf: String,
    started: UnixMillis,
    last_seen: UnixMillis,
}

/// The sessions, behind one lock (a handful of admins).
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<BTreeMap<String, Session>>,
}

impl Sessions {
    /// Starts a session for `who`; returns its cookie token and the session.
    pub fn start(&self, who: AdminIdentity, now: UnixMillis) -> (String, Session) {
        let token = random_token();
        let session = Session {
            who,
            csrf: random_token(),
            started: now,
            last_seen: now,
        };
        let mut map = self.lock();
        map.retain(|_, s| s.live(now));
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.started)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token.clone(), session.clone());
        (token, session)
    }

    /// Returns the live session of `token` and marks it used, or `None`
    /// (unknown, expired, idle too long; an expired one is dropped).
    pub fn get(&self, token: &str, now: UnixMillis) -> Option<Session> {
        let mut map = self.lock();
        let live = map.get(token).is_some_and(|s| s.live(now));
        if !live {
            map.remove(token);
            return None;
        }
        let s = map.get_mut(token)?;
        s.last_seen = now;
        Some(s.clone())
    }

    /// Ends the session of `token`.
    pub fn end(&self, token: &str) {
        self.lock().remove(token);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Session>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Session {
    fn live(&self, now: UnixMillis) -> bool {
        now < self.started.saturating_add(SESSION_LIFETIME)
            && now < self.last_seen.saturating_add(SESSION_IDLE)
    }
}

/// Counts failed sign-ins per source address.
#[derive(Debug, Default)]
pub struct Throttle {
    inner: Mutex<BTreeMap<IpAddr, (UnixMillis, u32)>>,
}

impl Throttle {
    /// Returns how long `ip` must wait before it may try again, if it has
    /// failed [`SIGN_IN_FAILURES`] times in the current window.
    pub fn wait(&self, ip: IpAddr, now: UnixMillis) -> Option<Duration> {
        let map = self.lock();
        let (start, n) = *map.get(&ip)?;
        let end = start.saturating_add(SIGN_IN_WINDOW);
        (n >= SIGN_IN_FAILURES && now < end)
            .then(|| Duration::from_millis((end.0 - now.0).unsigned_abs()))
    }

    /// Records a failed sign-in from `ip`.
    pub fn failed(&self, ip: IpAddr, now: UnixMillis) {
        let mut map = self.lock();
        if map.len() >= MAX_THROTTLED {
            map.retain(|_, (start, _)| now < start.saturating_add(SIGN_IN_WINDOW));
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now >= e.0.saturating_add(SIGN_IN_WINDOW) {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    /// Forgets `ip`'s failures (after a successful sign-in).
    pub fn succeeded(&self, ip: IpAddr) {
        self.lock().remove(&ip);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<IpAddr, (UnixMillis, u32)>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Returns 32 random bytes from the OS CSPRNG as hex.
pub fn random_token() -> String {
    let b: [u8; 32] = weft_types::entropy::bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares two tokens in constant time.
pub fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: u64) -> UnixMillis {
        UnixMillis(1_800_000_000_000).saturating_add(Duration::from_secs(s))
    }

    #[test]
    fn sessions_expire_when_idle_and_after_their_lifetime() {
        let s = Sessions::default();
        let who = AdminIdentity {
            name: "api key x".into(),
        };
        let (t, first) = s.start(who.clone(), at(0));
        assert_eq!(first.csrf.len(), 64);
        assert!(s.get(&t, at(59 * 60)).is_some());
        assert!(s.get(&t, at(2 * 59 * 60)).is_some(), "use keeps it alive");
        assert!(s.get(&t, at(4 * 60 * 60)).is_none(), "idle over an hour");
        let (t, _) = s.start(who, at(0));
        for h in 1..8 {
            assert!(s.get(&t, at(h * 55 * 60)).is_some());
        }
        assert!(
            s.get(&t, at(8 * 60 * 60 + 1)).is_none(),
            "past its lifetime"
        );
        s.end(&t);
    }

    #[test]
    fn sign_in_is_throttled_per_address_for_one_window() {
        let th = Throttle::default();
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        for _ in 0..SIGN_IN_FAILURES {
            assert_eq!(th.wait(a, at(1)), None);
            th.failed(a, at(1));
        }
        assert_eq!(th.wait(a, at(1)), Some(Duration::from_secs(60)));
        assert_eq!(th.wait(b, at(1)), None, "other addresses are not held");
        assert_eq!(th.wait(a, at(61)), None, "the window passed");
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let (x, y) = (random_token(), random_token());
        assert_ne!(x, y);
        assert!(same_token(&x, &x.clone()));
        assert!(!same_token(&x, &y));
        assert!(!same_token(&x, &x[..63]));
    }
}
