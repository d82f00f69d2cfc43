//! Tailnet address allocation: pure logic, no I/O.
//!
//! **IPv4.** A node gets a random free address of the pool (default
//! `100.64.0.0/10`, the CGNAT range of RFC 6598). Never handed out:
//! - `100.115.92.0/23`, which ChromeOS uses for its own containers;
//! - `100.100.100.100`, the MagicDNS service address;
//! - the first and last address of the pool (`100.64.0.0` and
//!   `100.127.255.255` by default), which some stacks treat as network and
//!   broadcast addresses. Other `.0` and `.255` addresses are ordinary hosts
//!   inside a /10 and are used.
//!
//! Random choice (rather than "next free") keeps addresses from being
//! predictable and makes two servers racing on one database unlikely to pick
//! the same address. The picker tries a few random addresses first and then
//! scans from a random start, so it finds the last free address of a full pool
//! and reports exhaustion only when there is none.
//!
//! **IPv6.** Derived from the IPv4: the pool's IPv6 prefix (default the project
//! ULA `fd7a:115c:a1e0::/48`) with the IPv4 address in the low 32 bits, so
//! `100.64.0.1` pairs with `fd7a:115c:a1e0::6440:1`. Unique IPv4 addresses
//! therefore give unique IPv6 addresses, and the pair is easy to read.
//!
//! **The used set lives in memory** ([`UsedAddresses`]): it is read from the
//! database once, by the first registration after the store opens, and kept
//! current by the registrations and deletions of this process, so a
//! registration costs O(log N) here instead of a read of every node's address
//! (issue 17). The database stays the source of truth: its unique constraints
//! on both columns are the final guard. A pick that races with a concurrent
//! registration (another server process on the same PostgreSQL database, or
//! an address the set does not know of) fails to insert, and the retried
//! registration reloads the set from the database first.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};

use ipnet::{Ipv4Net, Ipv6Net};

use crate::StoreError;

/// The address ranges nodes are numbered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    v4: Ipv4Net,
    v6: Ipv6Net,
    /// Inclusive `u32` ranges inside `v4` that are never handed out.
    reserved: Vec<(u32, u32)>,
}

/// ChromeOS uses this range for its own VMs and containers.
pub const CHROMEOS_RESERVED: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 115, 92, 0), 23);

/// The MagicDNS service address.
pub const MAGICDNS_V4: Ipv4Addr = Ipv4Addr::new(100, 100, 100, 100);

/// The tailnet's IPv4 range (RFC 6598 shared address space).
pub const TAILNET_V4: Ipv4Net = Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10);

/// The project ULA (RFC 4193), see the project decisions.
pub const TAILNET_V6: Ipv6Net =
    Ipv6Net::new_assert(Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);

/// How many random addresses are tried before scanning.
const RANDOM_TRIES: u32 = 32;

impl AddressPool {
    /// Returns the tailnet's default pool: `100.64.0.0/10` and `fd7a:115c:a1e0::/48`.
    pub fn tailnet_default() -> Self {
        Self::build(TAILNET_V4, TAILNET_V6)
    }

    /// Builds a pool from explicit ranges (a smaller IPv4 range is useful in tests).
    ///
    /// # Errors
    /// [`StoreError::InvalidPool`] if the IPv6 prefix is longer than /96 (the
    /// IPv4 address must fit in its host bits) or the IPv4 range has no
    /// address left after the reserved ones.
    pub fn new(v4: Ipv4Net, v6: Ipv6Net) -> Result<Self, StoreError> {
        if v6.prefix_len() > 96 {
            return Err(StoreError::InvalidPool(format!(
                "IPv6 prefix {v6} is longer than /96; the IPv4 address must fit in its host bits"
            )));
        }
        let pool = Self::build(v4.trunc(), v6.trunc());
        if pool.usable_count() == 0 {
            return Err(StoreError::InvalidPool(format!(
                "{v4} has no usable address"
            )));
        }
        Ok(pool)
    }

    fn build(v4: Ipv4Net, v6: Ipv6Net) -> Self {
        let (lo, hi) = (u32::from(v4.network()), u32::from(v4.broadcast()));
        let mut reserved = Vec::new();
        let mut reserve = |a: u32, b: u32| {
            let (a, b) = (a.max(lo), b.min(hi));
            if a <= b {
                reserved.push((a, b));
            }
        };
        reserve(
            u32::from(CHROMEOS_RESERVED.network()),
            u32::from(CHROMEOS_RESERVED.broadcast()),
        );
        reserve(u32::from(MAGICDNS_V4), u32::from(MAGICDNS_V4));
        if v4.prefix_len() <= 30 {
            reserve(lo, lo);
            reserve(hi, hi);
        }
        reserved.sort_unstable();
        // Merge overlaps so counting and scanning see each address once.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(reserved.len());
        for (a, b) in reserved {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        let reserved = merged;
        Self { v4, v6, reserved }
    }

    /// Returns the IPv4 range.
    pub fn v4(&self) -> Ipv4Net {
        self.v4
    }

    /// Returns the IPv6 prefix.
    pub fn v6(&self) -> Ipv6Net {
        self.v6
    }

    /// Returns whether `ip` is never handed out (reserved or outside the pool).
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        !self.v4.contains(&ip) || self.reserved_range_at(x).is_some()
    }

    /// Returns how many addresses the pool can hand out in total.
    pub fn usable_count(&self) -> u64 {
        let total = 1u64 << (32 - u32::from(self.v4.prefix_len()));
        let reserved: u64 = self
            .reserved
            .iter()
            .map(|&(a, b)| u64::from(b - a) + 1)
            .sum();
        total.saturating_sub(reserved)
    }

    /// Returns the IPv6 address paired with `v4`: the pool's IPv6 prefix with
    /// the IPv4 address in the low 32 bits.
    pub fn ipv6_for(&self, v4: Ipv4Addr) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.v6.network()) | u128::from(u32::from(v4)))
    }

    /// Returns a random address of the pool that is neither reserved nor in
    /// `used`, or `None` if there is none.
    pub fn pick_v4(&self, used: &BTreeSet<Ipv4Addr>, rng: &mut SplitMix64) -> Option<Ipv4Addr> {
        let lo = u32::from(self.v4.network());
        let size = 1u64 << (32 - u32::from(self.v4.prefix_len()));
        let offset = |rng: &mut SplitMix64| u32::try_from(rng.below(size)).unwrap_or(0);
        for _ in 0..RANDOM_TRIES {
            let ip = Ipv4Addr::from(lo.wrapping_add(offset(rng)));
            if !self.is_reserved(ip) && !used.contains(&ip) {
                return Some(ip);
            }
        }
        let start = lo.wrapping_add(offset(rng));
        let hi = u32::from(self.v4.broadcast());
        self.first_free(start, hi, used)
            .or_else(|| self.first_free(lo, start, used))
    }

    /// Returns the lowest free address in `from..=to`. Each step skips a whole
    /// reserved range or one used address, so the cost is bounded by the
    /// number of used addresses, not by the size of the pool.
    fn first_free(&self, from: u32, to: u32, used: &BTreeSet<Ipv4Addr>) -> Option<Ipv4Addr> {
        let mut c = from;
        let mut used_iter = used
            .range(Ipv4Addr::from(from)..)
            .map(|ip| u32::from(*ip))
            .peekable();
        while c <= to {
            if let Some((_, end)) = self.reserved_range_at(c) {
                c = end.checked_add(1)?;
                continue;
            }
            while used_iter.peek().is_some_and(|&u| u < c) {
                used_iter.next();
            }
            if used_iter.peek() == Some(&c) {
                c = c.checked_add(1)?;
                continue;
            }
            return Some(Ipv4Addr::from(c));
        }
        None
    }

    fn reserved_range_at(&self, x: u32) -> Option<(u32, u32)> {
        self.reserved
            .iter()
            .copied()
            .find(|&(a, b)| a <= x && x <= b)
    }
}

/// The IPv4 addresses in use, kept in memory (see the module docs).
///
/// It may hold more than the database (an address picked by a registration
/// that then failed stays taken until the next reload), never knowingly
/// less: every pick is recorded before its row is written, and an address is
/// released only after the deletion of its node committed. A superset only
/// skips a free address; an address missing from the set is caught by the
/// unique constraint and leads to a reload.
#[derive(Debug, Default)]
pub(crate) struct UsedAddresses {
    /// `None` until loaded from the database.
    set: Mutex<Option<BTreeSet<Ipv4Addr>>>,
}

impl UsedAddresses {
    /// Whether the set was loaded from the database.
    pub(crate) fn is_loaded(&self) -> bool {
        self.lock().is_some()
    }

    /// Replaces the set with what the database holds.
    pub(crate) fn load(&self, used: BTreeSet<Ipv4Addr>) {
        *self.lock() = Some(used);
    }

    /// Picks a free address of `pool` and records it as used, in one step,
    /// so two registrations in this process never pick the same. `None` if
    /// the pool is full or the set was not loaded.
    pub(crate) fn reserve(&self, pool: &AddressPool, rng: &mut SplitMix64) -> Option<Ipv4Addr> {
        let mut guard = self.lock();
        let set = guard.as_mut()?;
        let ip = pool.pick_v4(set, rng)?;
        set.insert(ip);
        Some(ip)
    }

    /// Makes `ip` free again (its node's deletion committed).
    pub(crate) fn release(&self, ip: Ipv4Addr) {
        if let Some(set) = self.lock().as_mut() {
            set.remove(&ip);
        }
    }

    /// Returns how many addresses are recorded as used (`None`: not loaded).
    #[cfg(test)]
    pub(crate) fn len(&self) -> Option<usize> {
        self.lock().as_ref().map(BTreeSet::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<BTreeSet<Ipv4Addr>>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for AddressPool {
    fn default() -> Self {
        Self::tailnet_default()
    }
}

/// A small, seedable, non-cryptographic generator (SplitMix64) for address
/// and name choices. Secrets never come from it.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// Creates a generator from a seed.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Returns the next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Returns a value in `0..n` (0 if `n` is 0), by multiply-shift.
    pub fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        u64::try_from(wide >> 64).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(v4: &str) -> AddressPool {
        AddressPool::new(v4.parse().unwrap(), "fd7a:115c:a1e0::/48".parse().unwrap()).unwrap()
    }

    #[test]
    fn default_pool_never_hands_out_reserved_addresses() {
        let p = AddressPool::tailnet_default();
        assert!(p.is_reserved(MAGICDNS_V4));
        assert!(p.is_reserved(Ipv4Addr::new(100, 115, 92, 0)));
        assert!(p.is_reserved(Ipv4Addr::new(100, 115, 93, 255)));
        assert!(p.is_reserved(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(p.is_reserved(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(p.is_reserved(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!p.is_reserved(Ipv4Addr::new(100, 115, 94, 0)));
        assert!(!p.is_reserved(Ipv4Addr::new(100, 64, 0, 1)));
        assert_eq!(p.usable_count(), (1 << 22) - 512 - 1 - 2);
    }

    #[test]
    fn ipv6_carries_the_ipv4_in_its_low_bits() {
        let p = AddressPool::tailnet_default();
        let v6 = p.ipv6_for(Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(v6.to_string(), "fd7a:115c:a1e0::6440:1");
    }

    #[test]
    fn picks_are_spread_over_the_pool_and_avoid_used_addresses() {
        let p = AddressPool::tailnet_default();
        let mut rng = SplitMix64::new(7);
        let mut used = BTreeSet::new();
        for _ in 0..2000 {
            let ip = p.pick_v4(&used, &mut rng).unwrap();
            assert!(!p.is_reserved(ip));
            assert!(used.insert(ip), "{ip} handed out twice");
        }
        let distinct_second_octets: BTreeSet<u8> = used.iter().map(|ip| ip.octets()[1]).collect();
        assert!(
            distinct_second_octets.len() > 50,
            "picks are not random: {distinct_second_octets:?}"
        );
    }

    #[test]
    fn a_small_pool_fills_up_completely_then_reports_exhaustion() {
        let p = pool("100.64.0.0/29");
        assert_eq!(p.usable_count(), 6);
        let mut rng = SplitMix64::new(1);
        let mut used = BTreeSet::new();
        for _ in 0..6 {
            used.insert(p.pick_v4(&used, &mut rng).unwrap());
        }
        let expected: BTreeSet<Ipv4Addr> = (1..=6).map(|i| Ipv4Addr::new(100, 64, 0, i)).collect();
        assert_eq!(used, expected);
        assert_eq!(p.pick_v4(&used, &mut rng), None);
    }

    #[test]
    fn the_scan_skips_reserved_ranges_inside_the_pool() {
        // A pool that is mostly the ChromeOS range: only 100.115.94.0-3 are usable
        // apart from what lies before the reserved /23.
        let p = pool("100.115.92.0/22");
        let mut used: BTreeSet<Ipv4Addr> = BTreeSet::new();
        let mut rng = SplitMix64::new(3);
        for _ in 0..p.usable_count() {
            let ip = p.pick_v4(&used, &mut rng).unwrap();
            assert!(!p.is_reserved(ip), "{ip}");
            used.insert(ip);
        }
        assert_eq!(used.len(), 511);
        assert!(used.iter().all(|ip| ip.octets()[2] >= 94));
        assert_eq!(p.pick_v4(&used, &mut rng), None);
    }

    #[test]
    fn an_ipv6_prefix_too_long_for_the_ipv4_is_refused() {
        let err = AddressPool::new(
            "100.64.0.0/10".parse().unwrap(),
            "fd7a:115c:a1e0::/112".parse().unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/96"), "{err}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(0);
        for n in [1u64, 2, 3, 1000, 1 << 22] {
            for _ in 0..1000 {
                assert!(rng.below(n) < n);
            }
        }
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn the_in_memory_set_hands_out_each_address_once_under_concurrent_reserves() {
        // A /22 (1,022 usable) filled by 8 threads at once, with releases and
        // re-reserves mixed in: no address is held twice, and a full pool
        // answers None instead of repeating one.
        let p = pool("100.64.0.0/22");
        let used = std::sync::Arc::new(UsedAddresses::default());
        assert!(
            used.reserve(&p, &mut SplitMix64::new(1)).is_none(),
            "not loaded yet"
        );
        used.load(BTreeSet::new());
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (p, used) = (p.clone(), used.clone());
                std::thread::spawn(move || {
                    let mut rng = SplitMix64::new(t);
                    let mut mine = Vec::new();
                    let mut reserves = 0u32;
                    while let Some(ip) = used.reserve(&p, &mut rng) {
                        mine.push(ip);
                        reserves += 1;
                        if reserves.is_multiple_of(7) {
                            let back = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            used.release(back);
                        }
                    }
                    mine
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().unwrap());
        }
        let distinct: BTreeSet<_> = all.iter().copied().collect();
        assert_eq!(distinct.len(), all.len(), "an address was handed out twice");
        assert_eq!(
            all.len() as u64,
            p.usable_count(),
            "the pool is full at the end"
        );
        assert_eq!(used.len(), Some(all.len()));
        assert!(all.iter().all(|ip| !p.is_reserved(*ip)));
    }
}
