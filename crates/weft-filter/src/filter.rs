//! [`Filter`]: the sharded connection-tracking table and the decisions made
//! on it. The semantics are in the crate docs.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use weft_types::filter::proto;

use crate::CompiledFilter;
use crate::flow::{Dir, ECHO_IN, ECHO_OUT, Flow, FlowKey, FragEntry, FragKey, KeyHasher, Pair};
use weft_packet::{IpPacket, tcp};

use crate::classify::{self, Frag, Icmp, Inner, L4, Packet, ParseError};
use crate::stats::{Counters, FilterStats};
use crate::table::Lru;
use crate::{Accept, Config, DropReason, Outbound, Policy, Timeouts, Verdict};

/// How many of the least recently used flows eviction looks at.
const EVICT_SCAN: usize = 8;

/// The stateful inbound packet filter. See the crate docs for how to drive
/// it and what it decides.
///
/// Thread-safe (`Send + Sync`): every method takes `&self`. Each packet
/// takes exactly one shard lock and nothing else: the shard holds the
/// flow, the fragment state and a copy of the policy. Policy changes take
/// the shard locks one at a time.
#[derive(Debug)]
pub struct Filter {
    // Set once in `new`.
    hasher: KeyHasher,
    timeouts: Timeouts,
    shortest_timeout: Duration,
    shard_mask: usize,

    // One lock per shard. Each shard holds its own `Arc` of the policy, so a
    // packet finds flow state and policy under the one lock it takes, and a
    // policy change re-judges a shard's flows atomically with installing it.
    shards: Box<[Mutex<Shard>]>,

    // Behind its own lock: the current policy. Held while a change is applied
    // to every shard, which serializes changes.
    policy: Mutex<Arc<Policy>>,

    // Counted before a shard is known.
    malformed: AtomicU64,
    unsupported: AtomicU64,
    outbound_malformed: AtomicU64,
}

#[derive(Debug)]
struct Shard {
    policy: Arc<Policy>,
    flows: Lru<FlowKey, Flow>,
    frags: Lru<FragKey, FragEntry>,
    counters: Counters,
}

impl Filter {
    /// Returns a filter with an empty policy: no rules, no local addresses,
    /// shields down — every inbound packet is dropped until
    /// [`Filter::set_policy`]. `seed` keys the flow hash (use fresh random
    /// bytes in production; a constant in tests).
    #[must_use]
    pub fn new(config: Config, seed: [u8; 32]) -> Self {
        let shard_count = config.shards.clamp(1, 1024).next_power_of_two();
        let flows_per_shard = config.max_flows.div_ceil(shard_count).max(1);
        let frags_per_shard = config.max_fragments.div_ceil(shard_count).max(1);
        let policy = Arc::new(Policy::default());
        let shards = (0..shard_count)
            .map(|_| {
                Mutex::new(Shard {
                    policy: Arc::clone(&policy),
                    flows: Lru::with_capacity(flows_per_shard),
                    frags: Lru::with_capacity(frags_per_shard),
                    counters: Counters::default(),
                })
            })
            .collect();
        Filter {
            hasher: KeyHasher::new(seed),
            timeouts: config.timeouts,
            shortest_timeout: config.timeouts.shortest_flow(),
            shard_mask: shard_count - 1,
            shards,
            policy: Mutex::new(policy),
            malformed: AtomicU64::new(0),
            unsupported: AtomicU64::new(0),
            outbound_malformed: AtomicU64::new(0),
        }
    }

    /// Judges one decrypted inbound packet (peer → this node) given as
    /// bytes: checks it with [`IpPacket::new`], then judges it like
    /// [`Filter::inbound_packet`]. A buffer that is no packet is dropped as
    /// [`DropReason::Malformed`] or [`DropReason::Unsupported`]. Never
    /// panics; allocation-free.
    pub fn inbound(&self, packet: &[u8], now: Instant) -> Verdict {
        match IpPacket::new(packet) {
            Ok(ip) => self.inbound_packet(&ip, now),
            Err(e) => self.unparsed(classify::unparsable(e)),
        }
    }

    /// Judges one decrypted inbound packet (peer → this node), already
    /// validated (by WireGuard's decapsulation in the data path). Write it
    /// to TUN only on [`Verdict::Accept`]. Never panics; allocation-free.
    pub fn inbound_packet(&self, packet: &IpPacket<'_>, now: Instant) -> Verdict {
        let p = match classify::classify(packet) {
            Ok(p) => p,
            Err(e) => return self.unparsed(e),
        };
        let verdict = match p.l4 {
            L4::Icmp(Icmp::Error { inner }) => self.inbound_icmp_error(&p, inner, now),
            L4::Absent => self.inbound_later_fragment(&p, now),
            L4::Tcp { .. } | L4::Ports { .. } | L4::Other | L4::Icmp(_) => {
                self.inbound_flow(&p, now)
            }
        };
        if let Verdict::Drop(reason) = verdict {
            tracing::trace!(src = %p.src, dst = %p.dst, proto = p.proto, %reason, "Inbound packet dropped");
        }
        verdict
    }

    /// Tells the filter about one packet read from TUN (this node → peer)
    /// given as bytes: checks it with [`IpPacket::new`], then tracks it like
    /// [`Filter::outbound_packet`]. A buffer that is no packet is counted in
    /// [`FilterStats::outbound_malformed`]. Never panics; allocation-free.
    pub fn outbound(&self, packet: &[u8], now: Instant) -> Outbound {
        match IpPacket::new(packet) {
            Ok(ip) => self.outbound_packet(&ip, now),
            Err(_) => {
                self.outbound_malformed.fetch_add(1, Ordering::Relaxed);
                Outbound::Untracked
            }
        }
    }

    /// Tells the filter about one validated packet read from TUN (this
    /// node → peer), opening or refreshing its flow. The packet is sent
    /// regardless of the result. Never panics; allocation-free.
    pub fn outbound_packet(&self, packet: &IpPacket<'_>, now: Instant) -> Outbound {
        let Ok(p) = classify::classify(packet) else {
            self.outbound_malformed.fetch_add(1, Ordering::Relaxed);
            return Outbound::Untracked;
        };
        let pair = self.hasher.pair(p.src, p.dst, p.proto);
        let (key, flags, opens) = match p.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => (
                self.hasher.flow(pair, sport, dport),
                flags,
                flags & (tcp::SYN | tcp::ACK) == tcp::SYN,
            ),
            L4::Ports { sport, dport } => (self.hasher.flow(pair, sport, dport), 0, true),
            L4::Other => (self.hasher.flow(pair, 0, 0), 0, true),
            L4::Icmp(Icmp::EchoRequest { id }) => (self.hasher.flow(pair, id, ECHO_OUT), 0, true),
            L4::Icmp(Icmp::EchoReply { id }) => (self.hasher.flow(pair, id, ECHO_IN), 0, false),
            L4::Icmp(Icmp::Error { .. } | Icmp::Other) | L4::Absent => return Outbound::Untracked,
        };
        let mut shard = self.lock(&pair);
        if !shard.policy.is_local(p.src) {
            return Outbound::Untracked;
        }
        match shard.find_live(&key, now, &self.timeouts) {
            Some(slot) => {
                let Some(flow) = shard.flows.value_mut(slot) else {
                    return Outbound::Untracked;
                };
                let result = if p.proto == proto::TCP && flow.is_reopened_by(flags) {
                    *flow = Flow::open(Dir::Outbound, p.proto, now);
                    Outbound::NewFlow
                } else {
                    flow.on_packet(Dir::Outbound, flags, now);
                    Outbound::Flow
                };
                shard.flows.touch(slot);
                result
            }
            None if opens => {
                shard.insert_flow(
                    key,
                    Flow::open(Dir::Outbound, p.proto, now),
                    now,
                    &self.timeouts,
                );
                Outbound::NewFlow
            }
            None => Outbound::Untracked,
        }
    }

    /// Installs a new policy and re-judges every tracked flow against it:
    /// inbound-opened flows it no longer allows are dropped at once, every
    /// other flow continues. Returns how many flows were dropped.
    pub fn set_policy(&self, policy: Policy) -> usize {
        self.update(|p| *p = policy)
    }

    /// Replaces only the packet filter; see [`Filter::set_policy`].
    pub fn set_filter(&self, filter: CompiledFilter) -> usize {
        self.update(|p| p.filter = filter)
    }

    /// Replaces only the node's own addresses; see [`Filter::set_policy`].
    /// Flows of addresses no longer ours are dropped, whoever opened them.
    pub fn set_local_addrs(&self, addrs: Vec<IpAddr>) -> usize {
        self.update(|p| p.local_addrs = addrs)
    }

    /// Raises or lowers shields; see [`Filter::set_policy`]. Raising them
    /// drops every inbound-opened flow.
    pub fn set_shields_up(&self, up: bool) -> usize {
        self.update(|p| p.shields_up = up)
    }

    /// Returns the policy in force.
    #[must_use]
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Frees flows and fragment entries whose idle timeout has passed. Call
    /// about every [`crate::SWEEP_INTERVAL`]; its cost is proportional to the
    /// entries idle longer than the shortest timeout.
    pub fn handle_timeout(&self, now: Instant) {
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.sweep(now, &self.timeouts, self.shortest_timeout);
        }
    }

    /// Returns a snapshot of the counters and the table size.
    #[must_use]
    pub fn stats(&self) -> FilterStats {
        let mut stats = FilterStats::default();
        for shard in &self.shards {
            let shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.counters.add_to(&mut stats);
            stats.flows += shard.flows.len() as u64;
        }
        let pre_shard = [
            (DropReason::Malformed, &self.malformed),
            (DropReason::Unsupported, &self.unsupported),
        ];
        for (reason, n) in pre_shard {
            *stats.dropped.entry(reason.as_str()).or_insert(0) += n.load(Ordering::Relaxed);
        }
        stats.outbound_malformed = self.outbound_malformed.load(Ordering::Relaxed);
        let policy = self.policy();
        stats.rules = policy.filter.rules().len();
        stats.shields_up = policy.shields_up;
        stats
    }

    fn update(&self, change: impl FnOnce(&mut Policy)) -> usize {
        let mut current = self.policy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = Policy::clone(&current);
        change(&mut next);
        let next = Arc::new(next);
        *current = Arc::clone(&next);
        let mut revoked = 0;
        for shard in &self.shards {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            shard.policy = Arc::clone(&next);
            let n = shard
                .flows
                .retain(|key, flow| still_allowed(&next, key, flow));
            shard.counters.revoked += n as u64;
            revoked += n;
        }
        tracing::debug!(
            rules = next.filter.rules().len(),
            shields_up = next.shields_up,
            revoked,
            "Packet filter policy applied"
        );
        revoked
    }

    fn lock(&self, pair: &Pair) -> MutexGuard<'_, Shard> {
        #[allow(clippy::cast_possible_truncation)] // any bits will do
        let i = (pair.hash >> 32) as usize & self.shard_mask;
        // In bounds: `shards.len() == shard_mask + 1`.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn unparsed(&self, e: ParseError) -> Verdict {
        let (counter, reason) = match e {
            ParseError::Malformed => (&self.malformed, DropReason::Malformed),
            ParseError::Unsupported => (&self.unsupported, DropReason::Unsupported),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(%reason, "Inbound packet dropped");
        Verdict::Drop(reason)
    }

    fn inbound_flow(&self, p: &Packet, now: Instant) -> Verdict {
        let pair = self.hasher.pair(p.dst, p.src, p.proto);
        let mut guard = self.lock(&pair);
        let shard = &mut *guard;
        if !shard.policy.is_local(p.dst) {
            return shard.dropped(DropReason::NotForUs);
        }
        let (key, flags, opens) = match p.l4 {
            L4::Tcp {
                sport,
                dport,
                flags,
            } => (
                self.hasher.flow(pair, dport, sport),
                flags,
                flags & (tcp::SYN | tcp::ACK) == tcp::SYN,
            ),
            L4::Ports { sport, dport } => (self.hasher.flow(pair, dport, sport), 0, true),
            L4::Other => (self.hasher.flow(pair, 0, 0), 0, true),
            L4::Icmp(Icmp::EchoRequest { id }) => (self.hasher.flow(pair, id, ECHO_IN), 0, true),
            L4::Icmp(Icmp::EchoReply { id }) => (self.hasher.flow(pair, id, ECHO_OUT), 0, false),
            L4::Icmp(Icmp::Other) => return shard.judge_stateless(p),
            L4::Icmp(Icmp::Error { .. }) | L4::Absent => return shard.dropped(DropReason::NoFlow),
        };
        let verdict = match shard.find_live(&key, now, &self.timeouts) {
            Some(slot) => {
                let reopened = p.proto == proto::TCP
                    && shard
                        .flows
                        .value(slot)
                        .is_some_and(|f| f.is_reopened_by(flags));
                if reopened {
                    shard.open_inbound(p, key, Some(slot), now, &self.timeouts)
                } else {
                    if let Some(flow) = shard.flows.value_mut(slot) {
                        flow.on_packet(Dir::Inbound, flags, now);
                    }
                    shard.flows.touch(slot);
                    Verdict::Accept(Accept::Flow)
                }
            }
            None if opens => shard.open_inbound(p, key, None, now, &self.timeouts),
            None => shard.dropped(DropReason::NoFlow),
        };
        if let (Verdict::Accept(_), Frag::First { id }) = (verdict, p.frag) {
            shard.remember_fragment(self.hasher.frag(pair, id), key, now);
        }
        verdict
    }

    fn inbound_icmp_error(&self, p: &Packet, inner: Option<Inner>, now: Instant) -> Verdict {
        let Some(inner) = inner else {
            let pair = self.hasher.pair(p.dst, p.src, p.proto);
            let mut shard = self.lock(&pair);
            let reason = if shard.policy.is_local(p.dst) {
                DropReason::NoFlow
            } else {
                DropReason::NotForUs
            };
            return shard.dropped(reason);
        };
        // The quoted packet was sent by this node: its source is our side.
        let pair = self.hasher.pair(inner.src, inner.dst, inner.proto);
        let key = if proto::is_icmp(inner.proto) {
            let side = if inner.dport == classify::ECHO_REQUEST {
                ECHO_OUT
            } else {
                ECHO_IN
            };
            self.hasher.flow(pair, inner.sport, side)
        } else {
            self.hasher.flow(pair, inner.sport, inner.dport)
        };
        let mut shard = self.lock(&pair);
        if !shard.policy.is_local(p.dst) {
            return shard.dropped(DropReason::NotForUs);
        }
        match shard.find_live(&key, now, &self.timeouts) {
            Some(_) => Verdict::Accept(Accept::Related),
            None => shard.dropped(DropReason::NoFlow),
        }
    }

    fn inbound_later_fragment(&self, p: &Packet, now: Instant) -> Verdict {
        let (Frag::Later { id } | Frag::First { id }) = p.frag else {
            return Verdict::Drop(DropReason::Malformed);
        };
        let pair = self.hasher.pair(p.dst, p.src, p.proto);
        let fk = self.hasher.frag(pair, id);
        let mut guard = self.lock(&pair);
        let shard = &mut *guard;
        if !shard.policy.is_local(p.dst) {
            return shard.dropped(DropReason::NotForUs);
        }
        let flow = shard.frags.find(&fk).and_then(|slot| {
            let entry = shard.frags.value(slot)?;
            let fresh = now.saturating_duration_since(entry.last_seen) < self.timeouts.fragment;
            fresh.then_some(entry.flow)
        });
        match flow.and_then(|key| shard.find_live(&key, now, &self.timeouts)) {
            Some(_) => Verdict::Accept(Accept::Related),
            None => shard.dropped(DropReason::NoFlow),
        }
    }
}

/// Returns whether a tracked flow survives `policy`.
fn still_allowed(policy: &Policy, key: &FlowKey, flow: &Flow) -> bool {
    if !policy.is_local(key.local) {
        return false;
    }
    match flow.origin {
        Dir::Outbound => true,
        Dir::Inbound => {
            !policy.shields_up
                && policy
                    .filter
                    .allows(key.remote, key.local, key.proto, key.judged_port())
                    .is_some()
        }
    }
}

impl Shard {
    fn dropped(&mut self, reason: DropReason) -> Verdict {
        self.counters.drop(reason);
        Verdict::Drop(reason)
    }

    /// Finds `key`'s flow, removing it instead if it has expired.
    fn find_live(&mut self, key: &FlowKey, now: Instant, t: &Timeouts) -> Option<u32> {
        let slot = self.flows.find(key)?;
        if self.flows.value(slot)?.expired(now, t) {
            self.flows.remove(slot);
            self.counters.expired += 1;
            return None;
        }
        Some(slot)
    }

    /// Judges a packet that would open an inbound flow and, if the policy
    /// admits it, tracks the flow (in `existing`'s slot when the tuple is
    /// being reused).
    fn open_inbound(
        &mut self,
        p: &Packet,
        key: FlowKey,
        existing: Option<u32>,
        now: Instant,
        t: &Timeouts,
    ) -> Verdict {
        if self.policy.shields_up {
            return self.dropped(DropReason::ShieldsUp);
        }
        let Some(rule) = self
            .policy
            .filter
            .allows(p.src, p.dst, p.proto, key.judged_port())
        else {
            return self.dropped(DropReason::NotAllowed);
        };
        let origin = self.policy.filter.rule(rule).and_then(|r| r.origin);
        let flow = Flow::open(Dir::Inbound, p.proto, now);
        match existing.and_then(|slot| Some((slot, self.flows.value_mut(slot)?))) {
            Some((slot, f)) => {
                *f = flow;
                self.flows.touch(slot);
            }
            None => self.insert_flow(key, flow, now, t),
        }
        self.counters.new_flows += 1;
        tracing::trace!(src = %p.src, dst = %p.dst, proto = p.proto, port = key.judged_port(), ?origin, "Inbound flow admitted");
        Verdict::Accept(Accept::NewFlow { rule: origin })
    }

    /// Judges a one-off ICMP message (neither echo nor error).
    fn judge_stateless(&mut self, p: &Packet) -> Verdict {
        if self.policy.shields_up {
            return self.dropped(DropReason::ShieldsUp);
        }
        match self.policy.filter.allows(p.src, p.dst, p.proto, 0) {
            Some(rule) => {
                self.counters.stateless += 1;
                let rule = self.policy.filter.rule(rule).and_then(|r| r.origin);
                Verdict::Accept(Accept::Stateless { rule })
            }
            None => self.dropped(DropReason::NotAllowed),
        }
    }

    fn insert_flow(&mut self, key: FlowKey, flow: Flow, now: Instant, t: &Timeouts) {
        if self.flows.is_full() {
            self.evict_one(now, t);
        }
        let inserted = self.flows.insert(key, flow);
        debug_assert!(inserted.is_some(), "room was made and the key was absent");
    }

    /// Frees one slot: among the [`EVICT_SCAN`] least recently used flows an
    /// expired one, else one not yet two-way, else the least recently used.
    fn evict_one(&mut self, now: Instant, t: &Timeouts) {
        let mut unassured = None;
        let mut cursor = self.flows.oldest();
        for _ in 0..EVICT_SCAN {
            let Some(slot) = cursor else { break };
            let Some(flow) = self.flows.value(slot) else {
                break;
            };
            if flow.expired(now, t) {
                self.flows.remove(slot);
                self.counters.expired += 1;
                return;
            }
            if unassured.is_none() && !flow.assured() {
                unassured = Some(slot);
            }
            cursor = self.flows.newer(slot);
        }
        if let Some(slot) = unassured.or(self.flows.oldest()) {
            self.flows.remove(slot);
            self.counters.evicted += 1;
        }
    }

    fn remember_fragment(&mut self, fk: FragKey, flow: FlowKey, now: Instant) {
        let entry = FragEntry {
            flow,
            last_seen: now,
        };
        if let Some(slot) = self.frags.find(&fk) {
            if let Some(e) = self.frags.value_mut(slot) {
                *e = entry;
            }
            self.frags.touch(slot);
            return;
        }
        if self.frags.is_full()
            && let Some(oldest) = self.frags.oldest()
        {
            self.frags.remove(oldest);
        }
        let _ = self.frags.insert(fk, entry);
    }

    fn sweep(&mut self, now: Instant, t: &Timeouts, shortest: Duration) {
        let mut cursor = self.flows.oldest();
        while let Some(slot) = cursor {
            let Some(flow) = self.flows.value(slot) else {
                break;
            };
            if now.saturating_duration_since(flow.last_seen) < shortest {
                // Everything nearer the head was used later, so it cannot
                // have expired either (up to the skew between the callers'
                // clocks, which the next sweep or a lookup catches).
                break;
            }
            let expired = flow.expired(now, t);
            cursor = self.flows.newer(slot);
            if expired {
                self.flows.remove(slot);
                self.counters.expired += 1;
            }
        }
        while let Some(slot) = self.frags.oldest() {
            let Some(e) = self.frags.value(slot) else {
                break;
            };
            if now.saturating_duration_since(e.last_seen) < t.fragment {
                break;
            }
            self.frags.remove(slot);
        }
    }
}
