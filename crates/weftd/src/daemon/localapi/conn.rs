//! The LocalAPI's connections: who may hold how many, for how long, and what
//! happens when the daemon runs short of file descriptors.
//!
//! The socket is world-connectable (reads are public by design), so a local
//! account could otherwise hold connections open until weftd runs out of
//! descriptors and can answer neither root nor its control server. So:
//!
//! * **Per-uid limit.** A non-root caller (by `SO_PEERCRED`) may hold at most
//!   [`Limits::per_uid`] connections at once, and all non-root callers
//!   together at most [`Limits::nonroot_total`] (half the descriptor limit),
//!   which leaves the rest to root, control, SSH and the data plane. Root is
//!   never limited. A refused connection gets a one-line 503 saying why and
//!   is closed at once.
//! * **Read deadlines.** The request head must arrive within
//!   [`HEADER_READ_TIMEOUT`] of the connection becoming idle (new, or after
//!   a response), and a body within [`BODY_READ_TIMEOUT`] (`read_body` in
//!   the route table), so an idle or half-sent request is dropped instead
//!   of held.
//! * **Out of descriptors.** If `accept` fails with `EMFILE`/`ENFILE`, a
//!   spare descriptor kept for the purpose is released, the waiting
//!   connection accepted and closed at once, and the spare taken again, so
//!   accept never spins on the same error; the condition is logged once per
//!   [`LOG_INTERVAL`] with how many connections were shed.
//!
//! [`Admission`] is the bookkeeping (pure, unit-tested); [`serve`] is the
//! accept loop that drives it.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{UnixListener, UnixStream};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::Peer;

/// How long a connection may take to send a request head once it is idle.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to send its body.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most connections one non-root uid may hold at once.
pub const PER_UID_MAX: usize = 32;
/// How often a repeated shedding condition is logged.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Connection limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most connections one non-root uid may hold.
    pub per_uid: usize,
    /// The most connections all non-root callers together may hold.
    pub nonroot_total: usize,
    /// How long an idle connection may take to send a request head.
    pub header_read_timeout: Duration,
    /// How long a request may take to send its body.
    pub body_read_timeout: Duration,
}

impl Limits {
    /// Returns the limits for a process whose descriptor limit is
    /// `nofile`: [`PER_UID_MAX`] per uid, half the descriptors for all
    /// non-root callers together, and the standard read deadlines.
    pub fn for_descriptor_limit(nofile: u64) -> Self {
        let half = usize::try_from(nofile / 2).unwrap_or(usize::MAX);
        Limits {
            per_uid: PER_UID_MAX,
            nonroot_total: half.max(PER_UID_MAX),
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_read_timeout: BODY_READ_TIMEOUT,
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// This uid holds its share already.
    #[error(
        "too many LocalAPI connections from uid {uid} (at most {max} at once); \
         close some and try again"
    )]
    PerUid {
        /// The caller's uid.
        uid: u32,
        /// The limit.
        max: usize,
    },
    /// Non-root callers together hold their share of the descriptors.
    #[error(
        "weftd is short of file descriptors for LocalAPI connections from non-root users \
         ({max} are open); try again shortly, or as root"
    )]
    NonRootTotal {
        /// The limit.
        max: usize,
    },
}

/// Who holds how many connections. A caller whose uid is unknown counts as
/// non-root under the key `None`.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    by_uid: BTreeMap<Option<u32>, usize>,
    nonroot: usize,
}

impl Admission {
    /// Returns empty bookkeeping under `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            by_uid: BTreeMap::new(),
            nonroot: 0,
        }
    }

    /// Admits a connection from `uid`, or says why not. Root always gets in.
    ///
    /// # Errors
    /// The limit the caller is at.
    pub fn try_admit(&mut self, uid: Option<u32>) -> Result<(), Shed> {
        if uid == Some(0) {
            return Ok(());
        }
        let held = self.by_uid.get(&uid).copied().unwrap_or(0);
        if held >= self.limits.per_uid {
            return Err(Shed::PerUid {
                uid: uid.unwrap_or(u32::MAX),
                max: self.limits.per_uid,
            });
        }
        if self.nonroot >= self.limits.nonroot_total {
            return Err(Shed::NonRootTotal {
                max: self.limits.nonroot_total,
            });
        }
        *self.by_uid.entry(uid).or_insert(0) += 1;
        self.nonroot += 1;
        Ok(())
    }

    /// Releases a connection [`Admission::try_admit`] let in.
    pub fn release(&mut self, uid: Option<u32>) {
        if uid == Some(0) {
            return;
        }
        if let Some(n) = self.by_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.by_uid.remove(&uid);
            }
            self.nonroot = self.nonroot.saturating_sub(1);
        }
    }

    /// Returns how many connections non-root callers hold.
    pub fn nonroot(&self) -> usize {
        self.nonroot
    }
}

/// Releases an admitted connection when it ends.
struct Ticket {
    admission: Arc<Mutex<Admission>>,
    uid: Option<u32>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .release(self.uid);
    }
}

/// Logs a recurring condition at most once per [`LOG_INTERVAL`], with how
/// many times it happened since the last line (this time included).
#[derive(Debug, Default)]
struct Every {
    last: Option<Instant>,
    unlogged: u64,
}

impl Every {
    /// Counts one occurrence; returns the count to log if a line is due.
    fn due(&mut self, now: Instant) -> Option<u64> {
        self.unlogged += 1;
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < LOG_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then waits for
/// open connections to finish (the caller bounds that wait).
///
/// # Errors
/// Never today: accept failures are handled and logged.
pub async fn serve(
    listener: UnixListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: Limits,
) -> io::Result<()> {
    let admission = Arc::new(Mutex::new(Admission::new(limits)));
    let graceful = GracefulShutdown::new();
    // Held only to be given up when accept runs out of descriptors.
    let mut spare = File::open("/dev/null").ok();
    let (mut out_of_fds, mut refused, mut failed) =
        (Every::default(), Every::default(), Every::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) if is_out_of_descriptors(&e) => {
                // Make room for one, take the waiting connection, close it.
                spare = None;
                let shed = listener.accept().await;
                drop(shed);
                spare = spare.or_else(|| File::open("/dev/null").ok());
                if let Some(n) = out_of_fds.due(Instant::now()) {
                    tracing::warn!(
                        shed = n,
                        error = %e,
                        "Out of file descriptors: LocalAPI connections are closed at once"
                    );
                }
                continue;
            }
            Err(e) => {
                if let Some(n) = failed.due(Instant::now()) {
                    tracing::warn!(times = n, error = %e, "LocalAPI accept failed");
                }
                // Not a descriptor shortage: do not spin on it.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let uid = stream.peer_cred().ok().map(|c| c.uid());
        let admitted = {
            let mut a = admission.lock().unwrap_or_else(PoisonError::into_inner);
            a.try_admit(uid).map_err(|why| (why, a.nonroot()))
        };
        if let Err((why, held)) = admitted {
            refuse(&stream, &why);
            if let Some(n) = refused.due(Instant::now()) {
                tracing::warn!(uid = ?uid, refused = n, nonroot_held = held, reason = %why, "LocalAPI connections refused");
            }
            continue;
        }
        let ticket = Ticket {
            admission: Arc::clone(&admission),
            uid,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
            req.extensions_mut().insert(ConnectInfo(Peer { uid }));
            router.clone().oneshot(req)
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ticket = ticket;
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "LocalAPI connection ended");
            }
        });
    }
    drop(listener);
    drop(spare);
    graceful.shutdown().await;
    Ok(())
}

fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Tells a refused caller why (a complete HTTP 503 with the LocalAPI's JSON
/// error body), without waiting for it to read; the stream is then closed.
fn refuse(stream: &UnixStream, why: &Shed) {
    let body = serde_json::to_string(&weft_localapi::ErrorBody {
        error: why.to_string(),
    })
    .unwrap_or_default();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    // A few hundred bytes fit in any socket buffer; if not, the caller just
    // sees the connection close.
    let _ = stream.try_write(response.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        per_uid: 3,
        nonroot_total: 5,
        header_read_timeout: HEADER_READ_TIMEOUT,
        body_read_timeout: BODY_READ_TIMEOUT,
    };

    #[test]
    fn a_non_root_uid_holds_at_most_its_share_and_root_is_never_limited() {
        let mut a = Admission::new(LIMITS);
        for _ in 0..3 {
            a.try_admit(Some(1000)).unwrap();
        }
        assert_eq!(
            a.try_admit(Some(1000)),
            Err(Shed::PerUid { uid: 1000, max: 3 })
        );
        // Another user still gets in; root always does.
        a.try_admit(Some(1001)).unwrap();
        for _ in 0..1000 {
            a.try_admit(Some(0)).unwrap();
        }
        // A connection closed makes room again.
        a.release(Some(1000));
        a.try_admit(Some(1000)).unwrap();
        assert_eq!(a.nonroot(), 4);
    }

    #[test]
    fn non_root_callers_together_leave_descriptors_for_everyone_else() {
        let mut a = Admission::new(LIMITS);
        for uid in 1000..1005 {
            a.try_admit(Some(uid)).unwrap();
        }
        assert_eq!(a.try_admit(Some(2000)), Err(Shed::NonRootTotal { max: 5 }));
        // Unknown callers count as non-root.
        assert!(a.try_admit(None).is_err());
        a.try_admit(Some(0)).unwrap();
        a.release(Some(1003));
        a.try_admit(None).unwrap();
        // Releasing what was never admitted changes nothing.
        a.release(Some(4242));
        assert_eq!(a.nonroot(), 5);
    }

    #[test]
    fn the_limits_follow_the_descriptor_limit() {
        let l = Limits::for_descriptor_limit(1024);
        assert_eq!((l.per_uid, l.nonroot_total), (PER_UID_MAX, 512));
        assert_eq!(Limits::for_descriptor_limit(10).nonroot_total, PER_UID_MAX);
    }

    #[test]
    fn a_recurring_condition_is_logged_once_per_interval_with_its_count() {
        let t0 = Instant::now();
        let mut e = Every::default();
        assert_eq!(e.due(t0), Some(1));
        for i in 1..100 {
            assert_eq!(e.due(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(e.due(t0 + LOG_INTERVAL), Some(100));
    }

    #[test]
    fn refusals_say_why_and_what_to_do() {
        let msg = Shed::PerUid { uid: 1000, max: 32 }.to_string();
        assert!(
            msg.contains("uid 1000") && msg.contains("at most 32") && msg.contains("close some"),
            "{msg}"
        );
    }
}
