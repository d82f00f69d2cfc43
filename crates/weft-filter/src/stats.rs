//! Counters: kept per shard under the shard's lock (plain integers, no
//! shared cache line on the data path), summed into [`FilterStats`].

use std::collections::BTreeMap;

use crate::DropReason;

/// Counters of one shard.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counters {
    pub dropped: [u64; DropReason::ALL.len()],
    pub new_flows: u64,
    pub stateless: u64,
    pub revoked: u64,
    pub evicted: u64,
    pub expired: u64,
}

impl Counters {
    pub fn drop(&mut self, reason: DropReason) {
        if let Some(n) = self.dropped.get_mut(reason.index()) {
            *n += 1;
        }
    }

    pub fn add_to(&self, stats: &mut FilterStats) {
        for (reason, n) in DropReason::ALL.iter().zip(self.dropped) {
            *stats.dropped.entry(reason.as_str()).or_insert(0) += n;
        }
        stats.accepted_new_flows += self.new_flows;
        stats.accepted_stateless += self.stateless;
        stats.flows_revoked += self.revoked;
        stats.flows_evicted += self.evicted;
        stats.flows_expired += self.expired;
    }
}

/// A snapshot of the filter's counters and state, from [`crate::Filter::stats`].
/// Counters only grow over the filter's life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterStats {
    /// Inbound packets dropped, by [`DropReason::as_str`]; every reason is
    /// present, with 0 if it never happened.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Inbound packets that opened a new flow.
    pub accepted_new_flows: u64,
    /// Inbound one-off ICMP messages admitted without a flow.
    pub accepted_stateless: u64,
    /// Flows currently tracked.
    pub flows: u64,
    /// Inbound-opened flows dropped because a new policy no longer allows them.
    pub flows_revoked: u64,
    /// Flows evicted to make room in a full shard.
    pub flows_evicted: u64,
    /// Flows removed after their idle timeout.
    pub flows_expired: u64,
    /// Outbound packets that did not parse (they were sent regardless).
    pub outbound_malformed: u64,
    /// Rules in the installed packet filter.
    pub rules: usize,
    /// Whether shields are up.
    pub shields_up: bool,
}

impl FilterStats {
    /// Returns the inbound packets dropped for any reason.
    #[must_use]
    pub fn dropped_total(&self) -> u64 {
        self.dropped.values().sum()
    }

    /// Returns the inbound packets dropped for `reason`.
    #[must_use]
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.as_str()).copied().unwrap_or(0)
    }
}
