//! Admission: how many TCP connections the server holds, from where, and
//! which it drops first when it is full (docs/PROTOCOL.md §12).
//!
//! Every accepted connection is admitted or refused before hyper sees it.
//! A connection has a [`Standing`]: it starts out *waiting* for an HTTP
//! request, is *busy* while one is answered, becomes *unregistered* when it
//! upgrades to the control channel, and *registered* once its machine has
//! proven a registration (a `registered` answer, an open map, an SSH check
//! of a registered node). Only registered connections are trusted to stay.
//!
//! Two limits:
//! - **per source address** (an IPv4 address or an IPv6 /64): at most
//!   `max_unregistered_per_source` connections that are not registered.
//!   Registered ones do not count, so any number of nodes behind one NAT
//!   can stay connected.
//! - **in total**: at most `max_connections` (by default the open-file
//!   limit less a reserve, so `accept` never runs out of descriptors).
//!
//! At a limit, a new connection takes the place of the oldest *waiting* or
//! *unregistered* connection, of its own source for the per-source limit,
//! else of the source that holds the most such connections; that one is
//! evicted (closed). If there is none to evict, the new connection is
//! refused (shed): it gets `503` with the reason and is closed. A flood of
//! connections that never register therefore only ever displaces itself,
//! while a node that registers within the [registration
//! deadline](crate::config::ServerConfig::register_timeout) keeps its place.
//!
//! [`Table`] is the bookkeeping, pure and tested alone; [`Admission`] puts
//! it behind a lock and hands out [`Ticket`]s whose drop frees the place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Connections being closed after an eviction, beyond `max_connections`,
/// before new ones are refused outright (evicted connections hold their
/// descriptor until their task has noticed).
const EVICTION_SLACK: usize = 64;

/// Where a connection comes from, as the per-source limit sees it: an IPv4
/// address, or the /64 of an IPv6 address (a host or site is usually given
/// a whole /64, so counting single addresses would not limit anything).
/// IPv4-mapped IPv6 addresses count as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Source {
    /// An IPv4 address.
    V4(u32),
    /// The upper 64 bits of an IPv6 address.
    V6(u64),
}

impl Source {
    /// Returns the source of a peer address.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Source::V4(u32::from(a)),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6((u128::from(a) >> 64) as u64),
            },
        }
    }
}

/// What a connection is doing, as far as admission cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Waiting for an HTTP request (a new connection, or keep-alive
    /// between requests). Evictable.
    Waiting,
    /// An HTTP request is being answered.
    Busy,
    /// A control channel whose machine has proven nothing yet (it may be
    /// waiting for an interactive login). Evictable.
    Unregistered,
    /// A control channel of a registered machine.
    Registered,
}

impl Standing {
    fn evictable(self) -> bool {
        matches!(self, Standing::Waiting | Standing::Unregistered)
    }

    fn counts_per_source(self) -> bool {
        self != Standing::Registered
    }
}

/// The two limits (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Connections held at most.
    pub max_connections: usize,
    /// Connections that are not registered, per source, at most.
    pub max_unregistered_per_source: usize,
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Its source holds its limit of unregistered connections, none of
    /// them evictable.
    SourceFull,
    /// The server holds `max_connections`, none of them evictable.
    ServerFull,
}

impl Refused {
    /// Returns the metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refused::SourceFull => "source_full",
            Refused::ServerFull => "server_full",
        }
    }

    /// Returns what the refused client is told.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refused::SourceFull => {
                "too many connections from your address are not registered yet; try again in a few seconds"
            }
            Refused::ServerFull => {
                "the server is at its connection limit; try again in a few seconds"
            }
        }
    }
}

/// An admitted connection, and the one it displaced, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The new connection's id.
    pub id: u64,
    /// A connection to close now to make room.
    pub evict: Option<u64>,
}

#[derive(Debug)]
struct Entry {
    source: Source,
    standing: Standing,
    /// Chosen for eviction: counts towards the total until it is removed,
    /// but towards nothing else.
    evicting: bool,
}

#[derive(Debug, Default)]
struct PerSource {
    /// Connections of this source that count against its limit.
    unregistered: usize,
    /// Its evictable connections by id, oldest first.
    evictable: BTreeSet<u64>,
}

/// The bookkeeping of admission. Pure: no I/O, no clock.
#[derive(Debug)]
pub(crate) struct Table {
    limits: Limits,
    next_id: u64,
    conns: BTreeMap<u64, Entry>,
    sources: HashMap<Source, PerSource>,
    /// `(evictable connections, source)` for every source with one; the
    /// last is the heaviest.
    heaviest: BTreeSet<(usize, Source)>,
    evicting: usize,
}

impl Table {
    /// Creates an empty table.
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            limits: Limits {
                max_connections: limits.max_connections.max(1),
                max_unregistered_per_source: limits.max_unregistered_per_source.max(1),
            },
            next_id: 1,
            conns: BTreeMap::new(),
            sources: HashMap::new(),
            heaviest: BTreeSet::new(),
            evicting: 0,
        }
    }

    /// Admits a new connection from `source` as [`Standing::Waiting`], or
    /// refuses it.
    ///
    /// # Errors
    /// [`Refused`] when a limit is reached and nothing can be evicted.
    pub(crate) fn admit(&mut self, source: Source) -> Result<Admitted, Refused> {
        if self.conns.len() >= self.limits.max_connections + EVICTION_SLACK {
            return Err(Refused::ServerFull);
        }
        let live = self.conns.len() - self.evicting;
        let from_source = self.sources.get(&source).map_or(0, |p| p.unregistered);
        let evict = if from_source >= self.limits.max_unregistered_per_source {
            Some(
                self.oldest_evictable_of(source)
                    .ok_or(Refused::SourceFull)?,
            )
        } else if live >= self.limits.max_connections {
            Some(
                self.oldest_evictable_anywhere()
                    .ok_or(Refused::ServerFull)?,
            )
        } else {
            None
        };
        if let Some(victim) = evict {
            self.mark_evicting(victim);
        }
        let id = self.next_id;
        self.next_id += 1;
        let entry = Entry {
            source,
            standing: Standing::Waiting,
            evicting: false,
        };
        self.link(id, &entry);
        self.conns.insert(id, entry);
        Ok(Admitted { id, evict })
    }

    /// Changes a connection's standing (nothing if it is unknown or being
    /// evicted).
    pub(crate) fn set(&mut self, id: u64, standing: Standing) {
        self.set_if(id, None, standing);
    }

    /// Changes a connection's standing if it is `from` (any, for `None`).
    pub(crate) fn set_if(&mut self, id: u64, from: Option<Standing>, to: Standing) {
        let Some(e) = self.conns.get(&id) else {
            return;
        };
        if e.evicting || e.standing == to || from.is_some_and(|f| f != e.standing) {
            return;
        }
        let (source, old) = (e.source, e.standing);
        self.unlink(
            id,
            &Entry {
                source,
                standing: old,
                evicting: false,
            },
        );
        let new = Entry {
            source,
            standing: to,
            evicting: false,
        };
        self.link(id, &new);
        self.conns.insert(id, new);
    }

    /// Forgets a connection that has closed.
    pub(crate) fn remove(&mut self, id: u64) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        if e.evicting {
            self.evicting -= 1;
        } else {
            self.unlink(id, &e);
        }
    }

    /// Returns how many connections are held (including those being evicted).
    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Returns how many connections of `source` count against its limit.
    #[cfg(test)]
    pub(crate) fn unregistered_from(&self, source: Source) -> usize {
        self.sources.get(&source).map_or(0, |p| p.unregistered)
    }

    fn oldest_evictable_of(&self, source: Source) -> Option<u64> {
        self.sources.get(&source)?.evictable.first().copied()
    }

    fn oldest_evictable_anywhere(&self) -> Option<u64> {
        let (_, source) = self.heaviest.last()?;
        self.oldest_evictable_of(*source)
    }

    fn mark_evicting(&mut self, id: u64) {
        let Some(e) = self.conns.get(&id) else {
            return;
        };
        let snapshot = Entry {
            source: e.source,
            standing: e.standing,
            evicting: false,
        };
        self.unlink(id, &snapshot);
        if let Some(e) = self.conns.get_mut(&id) {
            e.evicting = true;
            self.evicting += 1;
        }
    }

    fn link(&mut self, id: u64, e: &Entry) {
        let per = self.sources.entry(e.source).or_default();
        let before = per.evictable.len();
        if e.standing.counts_per_source() {
            per.unregistered += 1;
        }
        if e.standing.evictable() {
            per.evictable.insert(id);
        }
        let after = per.evictable.len();
        self.reweigh(e.source, before, after);
    }

    fn unlink(&mut self, id: u64, e: &Entry) {
        let Some(per) = self.sources.get_mut(&e.source) else {
            return;
        };
        let before = per.evictable.len();
        if e.standing.counts_per_source() {
            per.unregistered = per.unregistered.saturating_sub(1);
        }
        per.evictable.remove(&id);
        let after = per.evictable.len();
        if per.unregistered == 0 && per.evictable.is_empty() {
            self.sources.remove(&e.source);
        }
        self.reweigh(e.source, before, after);
    }

    fn reweigh(&mut self, source: Source, before: usize, after: usize) {
        if before == after {
            return;
        }
        if before > 0 {
            self.heaviest.remove(&(before, source));
        }
        if after > 0 {
            self.heaviest.insert((after, source));
        }
    }
}

/// Counts events and says when to log them: at most once per interval,
/// with how many happened since the last line. Pure: `now` is passed in.
#[derive(Debug)]
pub(crate) struct LogEvery {
    every: Duration,
    next: Option<Instant>,
    count: u64,
}

impl LogEvery {
    /// Creates a limiter that logs at most once per `every`.
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every,
            next: None,
            count: 0,
        }
    }

    /// Records one event; returns how many to report if a line is due now.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.count += 1;
        if self.next.is_some_and(|n| now < n) {
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.count))
    }
}

/// How often shedding and accept failures are logged.
pub(crate) const LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Inner {
    table: Table,
    /// Cancelled to evict a connection.
    evict: HashMap<u64, CancellationToken>,
}

/// The running server's admission: the [`Table`] behind a lock.
#[derive(Debug)]
pub(crate) struct Admission {
    inner: Mutex<Inner>,
    shed_log: Mutex<LogEvery>,
}

/// An admitted connection's place; dropping the last clone frees it. The
/// HTTP connection and, after an upgrade, the control channel share it.
#[derive(Debug)]
pub(crate) struct Ticket {
    admission: Arc<Admission>,
    id: u64,
    evicted: CancellationToken,
}

impl Admission {
    /// Creates the admission state with these limits.
    pub(crate) fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                table: Table::new(limits),
                evict: HashMap::new(),
            }),
            shed_log: Mutex::new(LogEvery::new(LOG_EVERY)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a connection from `ip` (evicting another if that makes room).
    ///
    /// # Errors
    /// [`Refused`]; the caller answers 503 and closes.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Ticket, Refused> {
        let result = {
            let mut inner = self.lock();
            match inner.table.admit(Source::of(ip)) {
                Ok(a) => {
                    if let Some(victim) = a.evict
                        && let Some(token) = inner.evict.remove(&victim)
                    {
                        token.cancel();
                    }
                    let evicted = CancellationToken::new();
                    inner.evict.insert(a.id, evicted.clone());
                    metrics::gauge!("weft_control_tcp_connections").set(inner.table.len() as f64);
                    Ok((a, evicted))
                }
                Err(r) => Err(r),
            }
        };
        match result {
            Ok((a, evicted)) => {
                if a.evict.is_some() {
                    metrics::counter!("weft_control_connections_evicted_total").increment(1);
                }
                Ok(Ticket {
                    admission: self.clone(),
                    id: a.id,
                    evicted,
                })
            }
            Err(r) => {
                metrics::counter!("weft_control_connections_shed_total", "reason" => r.label())
                    .increment(1);
                let due = self
                    .shed_log
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .hit(now);
                if let Some(shed) = due {
                    tracing::warn!(
                        shed,
                        reason = r.label(),
                        "shedding new connections: {}",
                        r.message()
                    );
                }
                Err(r)
            }
        }
    }
}

impl Ticket {
    /// Changes this connection's standing.
    pub(crate) fn set(&self, standing: Standing) {
        self.admission.lock().table.set(self.id, standing);
    }

    /// Changes this connection's standing if it is `from`.
    pub(crate) fn set_if(&self, from: Standing, to: Standing) {
        self.admission.lock().table.set_if(self.id, Some(from), to);
    }

    /// Returns the signal that this connection was evicted.
    pub(crate) fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut inner = self.admission.lock();
        inner.table.remove(self.id);
        inner.evict.remove(&self.id);
        metrics::gauge!("weft_control_tcp_connections").set(inner.table.len() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Source = Source::V4(0x0a00_0001);
    const B: Source = Source::V4(0x0a00_0002);
    const C: Source = Source::V4(0x0a00_0003);

    fn table(max_connections: usize, per_source: usize) -> Table {
        Table::new(Limits {
            max_connections,
            max_unregistered_per_source: per_source,
        })
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64_bit_prefix() {
        let a = Source::of("2001:db8:1:2::1".parse().unwrap());
        let b = Source::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = Source::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Source::of("::ffff:198.18.0.1".parse().unwrap()),
            Source::of("198.18.0.1".parse().unwrap())
        );
    }

    #[test]
    fn a_source_at_its_limit_displaces_its_own_oldest_unregistered_connection() {
        let mut t = table(100, 3);
        let ids: Vec<u64> = (0..3).map(|_| t.admit(A).unwrap().id).collect();
        let b = t.admit(B).unwrap();
        assert_eq!(b.evict, None);
        let fourth = t.admit(A).unwrap();
        assert_eq!(fourth.evict, Some(ids[0]), "the oldest of A goes");
        assert_eq!(t.unregistered_from(A), 3);
        assert_eq!(t.len(), 5, "the evicted one holds its place until removed");
        t.remove(ids[0]);
        assert_eq!(t.len(), 4);
    }

    #[test]
    fn registered_connections_do_not_count_against_their_source() {
        let mut t = table(100, 2);
        for _ in 0..10 {
            let a = t.admit(A).unwrap();
            assert_eq!(a.evict, None);
            t.set(a.id, Standing::Unregistered);
            t.set(a.id, Standing::Registered);
        }
        assert_eq!(t.unregistered_from(A), 0);
        assert_eq!(t.len(), 10);
    }

    #[test]
    fn busy_and_registered_connections_are_never_evicted() {
        let mut t = table(100, 2);
        let x = t.admit(A).unwrap().id;
        let y = t.admit(A).unwrap().id;
        t.set(x, Standing::Busy);
        t.set(y, Standing::Busy);
        assert_eq!(t.admit(A), Err(Refused::SourceFull));
        t.set_if(x, Some(Standing::Busy), Standing::Waiting);
        assert_eq!(t.admit(A).unwrap().evict, Some(x));

        let mut t = table(3, 10);
        for s in [A, B, C] {
            let id = t.admit(s).unwrap().id;
            t.set(id, Standing::Registered);
        }
        assert_eq!(t.admit(A), Err(Refused::ServerFull));
    }

    #[test]
    fn a_full_server_evicts_from_the_source_holding_the_most() {
        let mut t = table(6, 10);
        let b_ids: Vec<u64> = (0..4).map(|_| t.admit(B).unwrap().id).collect();
        let a1 = t.admit(A).unwrap().id;
        let c1 = t.admit(C).unwrap().id;
        t.set(c1, Standing::Unregistered);
        let new = t.admit(A).unwrap();
        assert_eq!(new.evict, Some(b_ids[0]), "B holds the most");
        t.remove(b_ids[0]);
        // B still holds the most (3) until it is down to A's and C's count.
        assert_eq!(t.admit(C).unwrap().evict, Some(b_ids[1]));
        t.remove(b_ids[1]);
        assert!(t.len() <= 6);
        // A registered connection is safe even at the limit.
        t.set(a1, Standing::Registered);
        for _ in 0..20 {
            let a = t.admit(B).unwrap();
            assert_ne!(a.evict, Some(a1));
            if let Some(v) = a.evict {
                t.remove(v);
            }
        }
        assert!(t.len() <= 6);
    }

    #[test]
    fn a_changed_standing_is_ignored_once_eviction_is_chosen() {
        let mut t = table(1, 10);
        let x = t.admit(A).unwrap().id;
        let y = t.admit(B).unwrap();
        assert_eq!(y.evict, Some(x));
        t.set(x, Standing::Registered);
        // x is on its way out: it protects nobody and counts only in len.
        let z = t.admit(C).unwrap();
        assert_eq!(z.evict, Some(y.id));
        t.remove(x);
        t.remove(y.id);
        assert_eq!(t.len(), 1);
        assert_eq!(t.unregistered_from(A), 0);
    }

    #[test]
    fn evictions_in_flight_are_bounded() {
        let mut t = table(1, 1_000_000);
        let mut admitted = 0;
        for _ in 0..1000 {
            if t.admit(A).is_ok() {
                admitted += 1;
            }
        }
        assert_eq!(admitted, 1 + EVICTION_SLACK);
        assert_eq!(t.admit(B), Err(Refused::ServerFull));
    }

    #[test]
    fn the_log_limiter_reports_at_most_once_per_interval_with_the_count() {
        let t0 = crate::now();
        let mut l = LogEvery::new(Duration::from_secs(10));
        assert_eq!(l.hit(t0), Some(1));
        for i in 1..100 {
            assert_eq!(l.hit(t0 + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(l.hit(t0 + Duration::from_secs(10)), Some(100));
        assert_eq!(l.hit(t0 + Duration::from_secs(11)), None);
    }
}
