//! Fixed-size bitsets and interval-to-CIDR conversion (on `ipnet`'s
//! subnet iterators) for the compiler.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

/// A fixed-size set of small integers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bits {
    words: Vec<u64>,
}

impl Bits {
    pub(crate) fn new(len: usize) -> Self {
        Bits {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub(crate) fn set(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w |= 1 << (i % 64);
        }
    }

    pub(crate) fn clear(&mut self, i: usize) {
        if let Some(w) = self.words.get_mut(i / 64) {
            *w &= !(1 << (i % 64));
        }
    }

    pub(crate) fn get(&self, i: usize) -> bool {
        self.words
            .get(i / 64)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    pub(crate) fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub(crate) fn or_assign(&mut self, other: &Bits) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
    }

    pub(crate) fn and(&self, other: &Bits) -> Bits {
        Bits {
            words: self
                .words
                .iter()
                .zip(&other.words)
                .map(|(a, b)| a & b)
                .collect(),
        }
    }

    /// Iterates the members in ascending order.
    pub(crate) fn ones(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as usize;
                w &= w - 1;
                Some(wi * 64 + b)
            })
        })
    }

    /// Maps the even (`v4`) or odd members `2i (+ 1)` to `i` in `0..n`.
    pub(crate) fn project_family(&self, n: usize, v4: bool) -> Bits {
        let mut out = Bits::new(n);
        for s in self.ones() {
            if (s % 2 == 0) == v4 {
                out.set(s / 2);
            }
        }
        out
    }

    /// Maps a set over pairs (`2i`, `2i + 1`) to a set over `i` in `0..n`.
    pub(crate) fn project_pairs(&self, n: usize) -> Bits {
        let mut out = Bits::new(n);
        for s in self.ones() {
            out.set(s / 2);
        }
        out
    }
}

/// An address family's integer form, for merging intervals.
pub(crate) trait Addr: Copy + Ord {
    /// The next address, or this one if it is the last.
    fn saturating_succ(self) -> Self;
}

impl Addr for u32 {
    fn saturating_succ(self) -> Self {
        self.saturating_add(1)
    }
}

impl Addr for u128 {
    fn saturating_succ(self) -> Self {
        self.saturating_add(1)
    }
}

/// Merges sorted inclusive intervals that overlap or touch.
fn merged<A: Addr>(intervals: impl Iterator<Item = (A, A)>) -> Vec<(A, A)> {
    let mut merged: Vec<(A, A)> = Vec::new();
    for (lo, hi) in intervals {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_succ() => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
}

/// Appends the fewest CIDRs covering the union of sorted inclusive IPv4
/// intervals.
pub(crate) fn cidrs_v4(intervals: impl Iterator<Item = (u32, u32)>, out: &mut Vec<IpNet>) {
    for (lo, hi) in merged(intervals) {
        let subnets = Ipv4Subnets::new(Ipv4Addr::from(lo), Ipv4Addr::from(hi), 0);
        out.extend(subnets.map(IpNet::V4));
    }
}

/// Appends the fewest CIDRs covering the union of sorted inclusive IPv6
/// intervals.
pub(crate) fn cidrs_v6(intervals: impl Iterator<Item = (u128, u128)>, out: &mut Vec<IpNet>) {
    for (lo, hi) in merged(intervals) {
        let subnets = Ipv6Subnets::new(Ipv6Addr::from(lo), Ipv6Addr::from(hi), 0);
        out.extend(subnets.map(IpNet::V6));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(lo: &str, hi: &str) -> Vec<String> {
        let p = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        let mut out = Vec::new();
        cidrs_v4([(p(lo), p(hi))].into_iter(), &mut out);
        out.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn ranges_become_the_fewest_cidrs() {
        assert_eq!(v4("100.64.0.0", "100.64.0.255"), ["100.64.0.0/24"]);
        assert_eq!(
            v4("100.64.0.1", "100.64.0.6"),
            [
                "100.64.0.1/32",
                "100.64.0.2/31",
                "100.64.0.4/31",
                "100.64.0.6/32"
            ]
        );
        assert_eq!(v4("0.0.0.0", "255.255.255.255"), ["0.0.0.0/0"]);
        assert_eq!(
            v4("255.255.255.255", "255.255.255.255"),
            ["255.255.255.255/32"]
        );
        let mut out = Vec::new();
        cidrs_v6([(0, u128::MAX)].into_iter(), &mut out);
        assert_eq!(out[0].to_string(), "::/0");
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn overlapping_and_adjacent_intervals_merge() {
        let mut out = Vec::new();
        cidrs_v4([(0, 3), (2, 5), (6, 7)].into_iter(), &mut out);
        assert_eq!(
            out.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["0.0.0.0/29"]
        );
    }

    #[test]
    fn bitsets_iterate_in_order_and_project_pairs() {
        let mut b = Bits::new(200);
        for i in [0, 3, 64, 65, 199] {
            b.set(i);
        }
        assert_eq!(b.ones().collect::<Vec<_>>(), [0, 3, 64, 65, 199]);
        assert_eq!(
            b.project_pairs(100).ones().collect::<Vec<_>>(),
            [0, 1, 32, 99]
        );
        b.clear(3);
        assert!(!b.get(3));
    }
}
