//! netcheck, sans-IO: what the network lets us do, measured with STUN.
//!
//! [`Netcheck`] plans STUN Binding requests to every relay region's STUN
//! servers, takes the answers (transaction id, the reflexive address the
//! server saw, when it arrived) and produces a [`Report`]: does UDP work at
//! all, our public IPv4/IPv6 address and port, whether our NAT maps each
//! destination differently (`MappingVariesByDestIP`: a "hard" NAT that hole
//! punching rarely beats), and each region's round trip. It encodes no
//! STUN: the driver turns each [`StunProbe`] into a Binding request with
//! the given transaction id (see the `stun` codec), sends it from the
//! WireGuard socket (so the reflexive address is that socket's mapping) and
//! hands back what the response says. Follows Tailscale's `net/netcheck`
//! (its initial probe plan, its `probeWouldHelp`, its timeouts).
//!
//! **A run**: for each region and address family with servers, up to
//! [`TRIES`] requests [`RETRANSMIT`] apart, rotating over the region's
//! servers; a try is skipped when it could not tell us anything new (the
//! region has an answer in that family, and for IPv4 the mapping question
//! is settled or this server already answered). The run ends when every
//! region has answered in every family it was probed in and no pending
//! answer could still settle the mapping, or after [`STUN_PROBE_TIMEOUT`].
//!
//! **The schedule**: a run at once when servers are first set (and on
//! [`Netcheck::start`], e.g. when our addresses change), then every 20–26 s
//! (random, so nodes do not probe in step; STUN also keeps the NAT's
//! mapping for the socket alive, and NATs drop idle mappings after ~30 s).
//! When a run gets **no answer at all**, UDP is blocked: the report says
//! `udp: false`, the node goes relay-only, and the next run waits
//! [`UDP_RETRY_MIN`], doubling after each blocked run up to
//! [`UDP_RETRY_MAX`] — a quiet retry instead of endless noise.
//!
//! A response whose transaction id is not in flight, or that comes from
//! another address than the request went to, is ignored and counted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, RngExt as _, SeedableRng as _};

use crate::path::RegionId;

/// How long a run waits for STUN answers (Tailscale's `stunProbeTimeout`).
pub const STUN_PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Requests per region and family in one run.
pub const TRIES: u32 = 3;
/// Delay between the tries of one region and family (Tailscale's
/// `defaultInitialRetransmitTime`).
pub const RETRANSMIT: Duration = Duration::from_millis(100);
/// Shortest time between two runs while UDP works.
pub const INTERVAL_MIN: Duration = Duration::from_secs(20);
/// Longest time between two runs while UDP works.
pub const INTERVAL_MAX: Duration = Duration::from_secs(26);
/// Wait after the first run with no UDP answer.
pub const UDP_RETRY_MIN: Duration = Duration::from_secs(30);
/// The longest wait between runs while UDP stays blocked.
pub const UDP_RETRY_MAX: Duration = Duration::from_secs(5 * 60);

/// A STUN transaction id (RFC 8489 §5: 96 bits, random).
pub type StunTxId = [u8; 12];

/// One STUN Binding request for the driver to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StunProbe {
    /// The relay region whose server this is.
    pub region: RegionId,
    /// The STUN server.
    pub server: SocketAddr,
    /// The transaction id to put in the request.
    pub tx_id: StunTxId,
}

/// What one netcheck run found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// A STUN round trip completed.
    pub udp: bool,
    /// Our public IPv4 address and port (the first IPv4 answer).
    pub global_v4: Option<SocketAddr>,
    /// Our public IPv6 address and port.
    pub global_v6: Option<SocketAddr>,
    /// Whether STUN servers at different addresses saw us at different
    /// IPv4 addresses or ports (a hard NAT). `None`: fewer than two
    /// servers answered over IPv4, so it is unknown.
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Each region's round trip: the STUN answer when UDP works; for a
    /// region without one, the latest measured over its relay connection
    /// (see `Disco::handle_relay_latency`), if any.
    pub region_latency: BTreeMap<RegionId, Duration>,
    /// The home relay region after this report (see [`crate::home_relay`]).
    pub preferred_region: Option<RegionId>,
    /// When UDP is blocked: how long until the next try.
    pub udp_retry_in: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Family {
    V4,
    V6,
}

fn family(addr: &SocketAddr) -> Family {
    if addr.is_ipv4() {
        Family::V4
    } else {
        Family::V6
    }
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Instant,
    region: RegionId,
    server: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    region: RegionId,
    server: SocketAddr,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Run {
    started: Instant,
    /// Not yet sent, in order of `at`.
    plan: Vec<Planned>,
    in_flight: BTreeMap<StunTxId, Sent>,
    latency: BTreeMap<(RegionId, Family), Duration>,
    /// IPv4 servers that answered, and what they saw.
    v4_seen: BTreeMap<SocketAddr, SocketAddr>,
    global_v4: Option<SocketAddr>,
    global_v6: Option<SocketAddr>,
    mapping_varies: Option<bool>,
}

impl Run {
    fn helps(&self, region: RegionId, server: SocketAddr) -> bool {
        match family(&server) {
            Family::V6 => !self.latency.contains_key(&(region, Family::V6)),
            Family::V4 => {
                !self.latency.contains_key(&(region, Family::V4))
                    || (self.mapping_varies.is_none() && !self.v4_seen.contains_key(&server))
            }
        }
    }
}

/// The netcheck planner (see the module docs). Driving: call
/// [`Netcheck::handle_timeout`] at [`Netcheck::poll_timeout`], send what
/// [`Netcheck::poll_probe`] returns, feed answers to
/// [`Netcheck::handle_response`]; finished runs come back as [`Report`]s.
#[derive(Debug)]
pub struct Netcheck {
    servers: BTreeSet<(RegionId, SocketAddr)>,
    run: Option<Run>,
    next_run: Option<Instant>,
    /// Runs in a row that got no answer.
    blocked_runs: u32,
    last: Option<Report>,
    rng: StdRng,
    probes: VecDeque<StunProbe>,
    unexpected: u64,
}

impl Netcheck {
    /// Creates a planner with no servers; `seed` makes transaction ids and
    /// the run schedule's jitter.
    pub fn new(seed: [u8; 32]) -> Self {
        Self {
            servers: BTreeSet::new(),
            run: None,
            next_run: None,
            blocked_runs: 0,
            last: None,
            rng: StdRng::from_seed(seed),
            probes: VecDeque::new(),
            unexpected: 0,
        }
    }

    /// Replaces the STUN servers (region, address). A change starts a run at
    /// once (a running one is abandoned); no servers stops netcheck.
    pub fn set_servers(
        &mut self,
        servers: impl IntoIterator<Item = (RegionId, SocketAddr)>,
        now: Instant,
    ) {
        let servers: BTreeSet<(RegionId, SocketAddr)> = servers.into_iter().collect();
        if servers == self.servers {
            return;
        }
        self.servers = servers;
        self.run = None;
        self.probes.clear();
        self.blocked_runs = 0;
        self.next_run = (!self.servers.is_empty()).then_some(now);
    }

    /// Asks for a run now (our addresses changed, or someone wants a
    /// report), also while UDP is blocked. Returns `false` when there are no
    /// servers or a run is under way (its report will come).
    pub fn start(&mut self, now: Instant) -> bool {
        if self.servers.is_empty() {
            return false;
        }
        if self.run.is_some() {
            return true;
        }
        self.next_run = Some(now);
        true
    }

    /// Returns whether a run is under way.
    pub fn running(&self) -> bool {
        self.run.is_some()
    }

    /// Returns the last finished report.
    pub fn last_report(&self) -> Option<&Report> {
        self.last.as_ref()
    }

    /// Returns whether the last report found no UDP at all.
    pub fn udp_blocked(&self) -> bool {
        self.last.as_ref().is_some_and(|r| !r.udp)
    }

    /// Returns how many STUN responses were ignored (unknown transaction,
    /// or from an address we did not ask).
    pub fn unexpected(&self) -> u64 {
        self.unexpected
    }

    /// Returns the next request to send.
    pub fn poll_probe(&mut self) -> Option<StunProbe> {
        self.probes.pop_front()
    }

    /// Takes a STUN success response: transaction `tx_id`, the reflexive
    /// address it carries, the address it came `from`. Returns the report
    /// if this answer completed the run.
    pub fn handle_response(
        &mut self,
        tx_id: StunTxId,
        mapped: SocketAddr,
        from: SocketAddr,
        now: Instant,
    ) -> Option<Report> {
        let Some(run) = self.run.as_mut() else {
            self.unexpected += 1;
            return None;
        };
        let Some(sent) = run.in_flight.get(&tx_id).copied() else {
            self.unexpected += 1;
            return None;
        };
        if sent.server != from {
            tracing::trace!(
                ?tx_id,
                "STUN response from another address than asked; ignored"
            );
            self.unexpected += 1;
            return None;
        }
        run.in_flight.remove(&tx_id);
        let rtt = now.saturating_duration_since(sent.at);
        let fam = family(&sent.server);
        run.latency
            .entry((sent.region, fam))
            .and_modify(|d| *d = (*d).min(rtt))
            .or_insert(rtt);
        match fam {
            Family::V4 => {
                match run.global_v4 {
                    None => run.global_v4 = Some(mapped),
                    Some(first) if !run.v4_seen.contains_key(&sent.server) => {
                        if first != mapped {
                            run.mapping_varies = Some(true);
                        } else if run.mapping_varies.is_none() {
                            run.mapping_varies = Some(false);
                        }
                    }
                    Some(_) => {}
                }
                run.v4_seen.insert(sent.server, mapped);
            }
            Family::V6 => {
                run.global_v6.get_or_insert(mapped);
            }
        }
        if self.complete() {
            return self.finish(now);
        }
        None
    }

    /// Starts a due run, sends due tries, ends the run at its timeout.
    /// Returns the report of a run that ended.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Report> {
        if self.run.is_none() && self.next_run.is_some_and(|t| now >= t) {
            self.begin(now);
        }
        let run = self.run.as_mut()?;
        let due = run.plan.iter().take_while(|p| p.at <= now).count();
        let tries: Vec<Planned> = run.plan.drain(..due).collect();
        for p in tries {
            let Some(run) = self.run.as_ref() else {
                break;
            };
            if !run.helps(p.region, p.server) {
                continue;
            }
            let mut tx_id = [0u8; 12];
            self.rng.fill_bytes(&mut tx_id);
            if let Some(run) = self.run.as_mut() {
                run.in_flight.insert(
                    tx_id,
                    Sent {
                        region: p.region,
                        server: p.server,
                        at: now,
                    },
                );
            }
            self.probes.push_back(StunProbe {
                region: p.region,
                server: p.server,
                tx_id,
            });
        }
        let timed_out = self
            .run
            .as_ref()
            .is_some_and(|r| now >= r.started + STUN_PROBE_TIMEOUT);
        if timed_out || self.complete() {
            return self.finish(now);
        }
        None
    }

    /// Returns when [`Netcheck::handle_timeout`] next has work, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        match &self.run {
            Some(run) => {
                let next_try = run.plan.first().map(|p| p.at);
                let end = run.started + STUN_PROBE_TIMEOUT;
                Some((next_try.map_or(end, |t| t.min(end)), "netcheck probe"))
            }
            None => self.next_run.map(|t| (t, "netcheck run")),
        }
    }

    fn begin(&mut self, now: Instant) {
        let mut by_set: BTreeMap<(RegionId, Family), Vec<SocketAddr>> = BTreeMap::new();
        for (region, addr) in &self.servers {
            by_set
                .entry((*region, family(addr)))
                .or_default()
                .push(*addr);
        }
        let mut plan = Vec::new();
        for ((region, _), servers) in by_set {
            for try_no in 0..TRIES {
                let server = servers[try_no as usize % servers.len()];
                plan.push(Planned {
                    at: now + RETRANSMIT * try_no,
                    region,
                    server,
                });
            }
        }
        plan.sort_by_key(|p| p.at);
        self.next_run = None;
        self.run = Some(Run {
            started: now,
            plan,
            in_flight: BTreeMap::new(),
            latency: BTreeMap::new(),
            v4_seen: BTreeMap::new(),
            global_v4: None,
            global_v6: None,
            mapping_varies: None,
        });
    }

    /// Whether nothing left in the run could add to the report.
    fn complete(&self) -> bool {
        let Some(run) = &self.run else {
            return false;
        };
        let all_answered = self
            .servers
            .iter()
            .all(|(region, addr)| run.latency.contains_key(&(*region, family(addr))));
        if !all_answered {
            return false;
        }
        if run.mapping_varies.is_some() {
            return true;
        }
        // Could a pending answer from another IPv4 server still settle it?
        let pending = run
            .plan
            .iter()
            .map(|p| p.server)
            .chain(run.in_flight.values().map(|s| s.server));
        !pending
            .filter(|s| s.is_ipv4())
            .any(|s| !run.v4_seen.contains_key(&s))
    }

    fn finish(&mut self, now: Instant) -> Option<Report> {
        let run = self.run.take()?;
        let udp = !run.latency.is_empty();
        let mut region_latency: BTreeMap<RegionId, Duration> = BTreeMap::new();
        for ((region, _), d) in &run.latency {
            region_latency
                .entry(*region)
                .and_modify(|x| *x = (*x).min(*d))
                .or_insert(*d);
        }
        let wait = if udp {
            self.blocked_runs = 0;
            let lo = INTERVAL_MIN.as_millis() as u64;
            let hi = INTERVAL_MAX.as_millis() as u64;
            Duration::from_millis(self.rng.random_range(lo..=hi))
        } else {
            self.blocked_runs = self.blocked_runs.saturating_add(1);
            let doublings = self.blocked_runs.saturating_sub(1).min(16);
            UDP_RETRY_MIN
                .saturating_mul(1 << doublings)
                .min(UDP_RETRY_MAX)
        };
        self.next_run = Some(now + wait);
        let report = Report {
            udp,
            global_v4: run.global_v4,
            global_v6: run.global_v6,
            mapping_varies_by_dest_ip: run.mapping_varies,
            region_latency,
            preferred_region: None,
            udp_retry_in: (!udp).then_some(wait),
        };
        self.last = Some(report.clone());
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        #[allow(clippy::disallowed_methods)] // the tests' one base instant
        Instant::now()
    }
    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn drain(n: &mut Netcheck) -> Vec<StunProbe> {
        std::iter::from_fn(|| n.poll_probe()).collect()
    }

    const R1: RegionId = RegionId(1);
    const R2: RegionId = RegionId(2);

    /// A STUN server that answers with `mapped` after `rtt`.
    fn answer(n: &mut Netcheck, p: &StunProbe, mapped: &str, at: Instant) -> Option<Report> {
        n.handle_response(p.tx_id, a(mapped), p.server, at)
    }

    #[test]
    fn an_easy_nat_is_reported_with_its_address_and_latencies() {
        let now = t0();
        let mut n = Netcheck::new([1; 32]);
        n.set_servers(
            [(R1, a("198.18.100.1:3478")), (R2, a("198.18.200.1:3478"))],
            now,
        );
        assert_eq!(n.poll_timeout(), Some((now, "netcheck run")));
        assert_eq!(n.handle_timeout(now), None);
        let first = drain(&mut n);
        assert_eq!(first.len(), 2, "one request per region at once");
        assert_ne!(first[0].tx_id, first[1].tx_id);
        // Both servers see the same public address: endpoint-independent
        // mapping.
        assert_eq!(
            answer(&mut n, &first[0], "203.0.113.7:41641", now + ms(8)),
            None
        );
        let report = answer(&mut n, &first[1], "203.0.113.7:41641", now + ms(30)).unwrap();
        assert!(report.udp);
        assert_eq!(report.global_v4, Some(a("203.0.113.7:41641")));
        assert_eq!(report.global_v6, None);
        assert_eq!(report.mapping_varies_by_dest_ip, Some(false));
        assert_eq!(
            report.region_latency,
            BTreeMap::from([(R1, ms(8)), (R2, ms(30))])
        );
        assert_eq!(report.udp_retry_in, None);
        // No retries were needed.
        n.handle_timeout(now + ms(300));
        assert!(drain(&mut n).is_empty());
        // The next run comes 20-26 s later.
        let (next, _) = n.poll_timeout().unwrap();
        assert!(next >= now + ms(30) + INTERVAL_MIN && next <= now + ms(30) + INTERVAL_MAX);
    }

    #[test]
    fn a_hard_nat_shows_a_different_port_to_each_server() {
        let now = t0();
        let mut n = Netcheck::new([2; 32]);
        // One region with two STUN addresses.
        n.set_servers(
            [(R1, a("198.18.100.1:3478")), (R1, a("198.18.100.2:3478"))],
            now,
        );
        n.handle_timeout(now);
        let first = drain(&mut n);
        assert_eq!(first.len(), 1);
        assert_eq!(
            answer(&mut n, &first[0], "203.0.113.7:1024", now + ms(5)),
            None
        );
        // The region answered, but the second address still has something
        // to tell: the retry goes there.
        n.handle_timeout(now + RETRANSMIT);
        let second = drain(&mut n);
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].server, first[0].server);
        let report = answer(&mut n, &second[0], "203.0.113.7:2048", now + ms(105)).unwrap();
        assert_eq!(report.mapping_varies_by_dest_ip, Some(true));
        assert_eq!(report.global_v4, Some(a("203.0.113.7:1024")));
        assert_eq!(report.region_latency[&R1], ms(5));
    }

    #[test]
    fn a_single_server_cannot_tell_the_mapping() {
        let now = t0();
        let mut n = Netcheck::new([3; 32]);
        n.set_servers([(R1, a("198.18.100.1:3478"))], now);
        n.handle_timeout(now);
        let p = drain(&mut n);
        let report = answer(&mut n, &p[0], "203.0.113.7:1024", now + ms(5)).unwrap();
        assert_eq!(report.mapping_varies_by_dest_ip, None);
    }

    #[test]
    fn lost_requests_are_retried_and_ipv6_is_probed_apart() {
        let now = t0();
        let mut n = Netcheck::new([4; 32]);
        n.set_servers(
            [(R1, a("198.18.100.1:3478")), (R1, a("[2001:db8::1]:3478"))],
            now,
        );
        n.handle_timeout(now);
        assert_eq!(drain(&mut n).len(), 2, "one per family");
        // Nothing answers: the tries follow 100 ms apart.
        n.handle_timeout(now + RETRANSMIT);
        let retry = drain(&mut n);
        assert_eq!(retry.len(), 2);
        let v6 = retry.iter().find(|p| p.server.is_ipv6()).unwrap();
        assert_eq!(
            answer(&mut n, v6, "[2001:db8:1::5]:41641", now + ms(150)),
            None
        );
        let v4 = retry.iter().find(|p| p.server.is_ipv4()).unwrap();
        let report = answer(&mut n, v4, "203.0.113.7:41641", now + ms(160)).unwrap();
        assert_eq!(report.global_v6, Some(a("[2001:db8:1::5]:41641")));
        assert_eq!(report.region_latency[&R1], ms(50));
    }

    #[test]
    fn udp_blocked_is_reported_and_retried_with_backoff() {
        let now = t0();
        let mut n = Netcheck::new([5; 32]);
        n.set_servers([(R1, a("198.18.100.1:3478"))], now);
        let mut t = now;
        let mut sent = 0;
        let mut waits = Vec::new();
        // Nothing ever answers. Drive for an hour (and to the end of the
        // run under way then).
        while t < now + Duration::from_secs(3600) || n.running() {
            let Some((next, _)) = n.poll_timeout() else {
                break;
            };
            t = next;
            if let Some(report) = n.handle_timeout(t) {
                assert!(!report.udp);
                assert!(n.udp_blocked());
                assert_eq!(report.global_v4, None);
                waits.push(report.udp_retry_in.unwrap());
            }
            sent += drain(&mut n).len();
        }
        let secs: Vec<u64> = waits.iter().map(|d| d.as_secs()).collect();
        assert_eq!(secs[..6], [30, 60, 120, 240, 300, 300]);
        // An hour costs about 16 runs of 3 requests, not one every few
        // seconds.
        assert!(sent <= 3 * 16, "sent {sent}");
        // A change of our addresses tries again at once, and an answer
        // ends the blocked state and the backoff.
        assert!(n.start(t));
        n.handle_timeout(t);
        let p = drain(&mut n);
        let report = answer(&mut n, &p[0], "203.0.113.7:1", t + ms(3)).unwrap();
        assert!(report.udp);
        assert!(!n.udp_blocked());
        let (next, _) = n.poll_timeout().unwrap();
        assert!(next <= t + INTERVAL_MAX + ms(3));
    }

    #[test]
    fn unknown_and_misaddressed_responses_are_ignored_and_counted() {
        let now = t0();
        let mut n = Netcheck::new([6; 32]);
        n.set_servers([(R1, a("198.18.100.1:3478"))], now);
        n.handle_timeout(now);
        let p = drain(&mut n).remove(0);
        // Someone else answers our transaction.
        assert_eq!(
            n.handle_response(p.tx_id, a("198.51.100.1:1"), a("198.18.9.9:3478"), now),
            None
        );
        // A transaction we never started.
        assert_eq!(
            n.handle_response([9; 12], a("198.51.100.1:1"), p.server, now),
            None
        );
        assert_eq!(n.unexpected(), 2);
        // The real answer still counts.
        let report = n
            .handle_response(p.tx_id, a("203.0.113.7:1"), p.server, now + ms(2))
            .unwrap();
        assert_eq!(report.global_v4, Some(a("203.0.113.7:1")));
        // A late duplicate after the run is unexpected too.
        assert_eq!(
            n.handle_response(p.tx_id, a("203.0.113.7:1"), p.server, now + ms(3)),
            None
        );
        assert_eq!(n.unexpected(), 3);
    }

    #[test]
    fn a_region_that_never_answers_ends_the_run_at_the_timeout() {
        let now = t0();
        let mut n = Netcheck::new([7; 32]);
        n.set_servers(
            [(R1, a("198.18.100.1:3478")), (R2, a("198.18.200.1:3478"))],
            now,
        );
        n.handle_timeout(now);
        let p = drain(&mut n);
        let r1 = p.iter().find(|p| p.region == R1).unwrap();
        assert_eq!(answer(&mut n, r1, "203.0.113.7:1", now + ms(4)), None);
        let (t, report) = loop {
            let (t, _) = n.poll_timeout().unwrap();
            drain(&mut n);
            if let Some(r) = n.handle_timeout(t) {
                break (t, r);
            }
        };
        assert_eq!(t, now + STUN_PROBE_TIMEOUT);
        assert!(report.udp);
        assert_eq!(
            report.region_latency.keys().copied().collect::<Vec<_>>(),
            vec![R1]
        );
    }
}
