//! The cryptokey routing table: AllowedIPs with longest-prefix match.
//!
//! WireGuard's whitepaper (§2, "Cryptokey Routing") ties each peer to a set of
//! IP prefixes. Outbound, the longest prefix containing a packet's destination
//! names the peer to encrypt for; inbound, a decrypted packet is accepted only
//! if the longest prefix containing its *source* belongs to the peer that sent
//! it. A prefix belongs to exactly one peer: inserting it for peer B takes it
//! from peer A. Host bits of an inserted prefix are masked off, so
//! `10.1.2.3/8` and `10.0.0.0/8` are the same entry.
//!
//! # Layout
//! Each address family keeps one sorted vector per prefix length, plus a
//! bitmap of the lengths in use. A lookup walks the lengths in use from the
//! longest down and binary-searches the masked address in each, so it costs
//! `O(L · log n)` for `L` distinct lengths in use (typically one or two: /32
//! and /128 host routes, maybe a subnet) and never allocates. Updates shift a
//! vector (`O(n)`), which is fine for configuration-rate changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A longest-prefix-match table from IPv4/IPv6 prefixes to values of type `T`
/// (in a [`crate::Device`], the peers).
#[derive(Debug, Clone)]
pub struct AllowedIps<T> {
    v4: Family<u32, T>,
    v6: Family<u128, T>,
}

impl<T> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> AllowedIps<T> {
    /// Returns an empty table.
    pub fn new() -> Self {
        Self {
            v4: Family::new(),
            v6: Family::new(),
        }
    }

    /// Inserts `net` (host bits masked) for `value`, returning the value that
    /// owned exactly this prefix before, if any.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.insert(u32::from(n.addr()), n.prefix_len(), value),
            IpNet::V6(n) => self.v6.insert(u128::from(n.addr()), n.prefix_len(), value),
        }
    }

    /// Removes exactly the prefix `net` (host bits masked), returning its value.
    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        match net {
            IpNet::V4(n) => self.v4.remove(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.remove(u128::from(n.addr()), n.prefix_len()),
        }
    }

    /// Removes every prefix whose value matches `pred`; returns how many.
    pub fn remove_value(&mut self, mut pred: impl FnMut(&T) -> bool) -> usize {
        self.v4.remove_value(&mut pred) + self.v6.remove_value(&mut pred)
    }

    /// Returns the value of the longest prefix containing `addr`.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => self.lookup_v4(a),
            IpAddr::V6(a) => self.lookup_v6(a),
        }
    }

    /// Returns the value of the longest IPv4 prefix containing `addr`.
    #[inline]
    pub fn lookup_v4(&self, addr: Ipv4Addr) -> Option<&T> {
        self.v4.lookup(u32::from(addr))
    }

    /// Returns the value of the longest IPv6 prefix containing `addr`.
    #[inline]
    pub fn lookup_v6(&self, addr: Ipv6Addr) -> Option<&T> {
        self.v6.lookup(u128::from(addr))
    }

    /// Returns the value stored for exactly the prefix `net` (host bits masked).
    pub fn get(&self, net: &IpNet) -> Option<&T> {
        match net {
            IpNet::V4(n) => self.v4.get(u32::from(n.addr()), n.prefix_len()),
            IpNet::V6(n) => self.v6.get(u128::from(n.addr()), n.prefix_len()),
        }
    }

    /// Iterates over every entry: IPv4 before IPv6, then by prefix length,
    /// then by address. Prefixes come out masked.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &T)> + '_ {
        let v4 = self.v4.iter().filter_map(|(k, len, v)| {
            Ipv4Net::new(Ipv4Addr::from(k), len)
                .ok()
                .map(|n| (IpNet::V4(n), v))
        });
        let v6 = self.v6.iter().filter_map(|(k, len, v)| {
            Ipv6Net::new(Ipv6Addr::from(k), len)
                .ok()
                .map(|n| (IpNet::V6(n), v))
        });
        v4.chain(v6)
    }

    /// Iterates over the prefixes whose value matches `pred`, in [`Self::iter`] order.
    pub fn prefixes_where<'a>(
        &'a self,
        mut pred: impl FnMut(&T) -> bool + 'a,
    ) -> impl Iterator<Item = IpNet> + 'a {
        self.iter()
            .filter_map(move |(net, v)| pred(v).then_some(net))
    }

    /// Returns the number of prefixes in the table.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Returns true when the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4 = Family::new();
        self.v6 = Family::new();
    }
}

/// An address as an unsigned integer, most significant bit first.
trait Bits: Copy + Ord {
    const BITS: u8;
    /// Returns the address with all but the first `len` bits cleared.
    fn masked(self, len: u8) -> Self;
}

impl Bits for u32 {
    const BITS: u8 = 32;
    #[inline]
    fn masked(self, len: u8) -> Self {
        self & u32::MAX
            .checked_shl(u32::from(32 - len.min(32)))
            .unwrap_or(0)
    }
}

impl Bits for u128 {
    const BITS: u8 = 128;
    #[inline]
    fn masked(self, len: u8) -> Self {
        self & u128::MAX
            .checked_shl(u32::from(128 - len.min(128)))
            .unwrap_or(0)
    }
}

/// One address family: `tables[len]` holds the prefixes of length `len`,
/// sorted by masked address; bit `len` of `present` is set iff that table is
/// non-empty.
#[derive(Debug, Clone)]
struct Family<K, T> {
    tables: Vec<Vec<(K, T)>>,
    present: [u64; 3],
}

impl<K: Bits, T> Family<K, T> {
    fn new() -> Self {
        Self {
            tables: (0..=K::BITS).map(|_| Vec::new()).collect(),
            present: [0; 3],
        }
    }

    fn set_present(&mut self, len: u8, on: bool) {
        let (word, bit) = (usize::from(len / 64), len % 64);
        if let Some(w) = self.present.get_mut(word) {
            if on {
                *w |= 1 << bit;
            } else {
                *w &= !(1 << bit);
            }
        }
    }

    fn insert(&mut self, addr: K, len: u8, value: T) -> Option<T> {
        let len = len.min(K::BITS);
        let key = addr.masked(len);
        let table = self.tables.get_mut(usize::from(len))?;
        let old = match table.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(i) => table
                .get_mut(i)
                .map(|slot| std::mem::replace(&mut slot.1, value)),
            Err(i) => {
                table.insert(i, (key, value));
                None
            }
        };
        self.set_present(len, true);
        old
    }

    fn remove(&mut self, addr: K, len: u8) -> Option<T> {
        let len = len.min(K::BITS);
        let key = addr.masked(len);
        let table = self.tables.get_mut(usize::from(len))?;
        let i = table.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
        let (_, value) = table.remove(i);
        let now_empty = table.is_empty();
        if now_empty {
            self.set_present(len, false);
        }
        Some(value)
    }

    fn remove_value(&mut self, pred: &mut impl FnMut(&T) -> bool) -> usize {
        let mut removed = 0;
        for (len, table) in self.tables.iter_mut().enumerate() {
            let before = table.len();
            table.retain(|(_, v)| !pred(v));
            removed += before - table.len();
            if table.is_empty() {
                let (word, bit) = (len / 64, len % 64);
                if let Some(w) = self.present.get_mut(word) {
                    *w &= !(1 << bit);
                }
            }
        }
        removed
    }

    fn get(&self, addr: K, len: u8) -> Option<&T> {
        let len = len.min(K::BITS);
        let key = addr.masked(len);
        let table = self.tables.get(usize::from(len))?;
        let i = table.binary_search_by(|(k, _)| k.cmp(&key)).ok()?;
        table.get(i).map(|(_, v)| v)
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<&T> {
        for word in (0..self.present.len()).rev() {
            let mut bits = self.present.get(word).copied().unwrap_or(0);
            while bits != 0 {
                let bit = 63 - bits.leading_zeros();
                bits &= !(1u64 << bit);
                let len = word * 64 + bit as usize;
                let Some(table) = self.tables.get(len) else {
                    continue;
                };
                // `len` ≤ K::BITS ≤ 128 because only valid lengths are ever marked.
                let key = addr.masked(u8::try_from(len).unwrap_or(K::BITS));
                if let Ok(i) = table.binary_search_by(|(k, _)| k.cmp(&key)) {
                    return table.get(i).map(|(_, v)| v);
                }
            }
        }
        None
    }

    fn iter(&self) -> impl Iterator<Item = (K, u8, &T)> + '_ {
        self.tables.iter().enumerate().flat_map(|(len, table)| {
            let len = u8::try_from(len).unwrap_or(K::BITS);
            table.iter().map(move |(k, v)| (*k, len, v))
        })
    }

    fn len(&self) -> usize {
        self.tables.iter().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_matching_prefix_wins() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), 'd');
        t.insert(net("100.64.0.0/10"), 'a');
        t.insert(net("100.64.0.7/32"), 'b');
        t.insert(net("::/0"), 'x');
        t.insert(net("fd7a:115c:a1e0::/48"), 'y');
        t.insert(net("fd7a:115c:a1e0::7/128"), 'z');
        assert_eq!(t.lookup(ip("100.64.0.7")), Some(&'b'));
        assert_eq!(t.lookup(ip("100.64.0.8")), Some(&'a'));
        assert_eq!(t.lookup(ip("198.18.0.1")), Some(&'d'));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::7")), Some(&'z'));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::8")), Some(&'y'));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some(&'x'));
    }

    #[test]
    fn an_empty_table_matches_nothing() {
        let t: AllowedIps<u8> = AllowedIps::new();
        assert_eq!(t.lookup(ip("100.64.0.1")), None);
        assert_eq!(t.lookup(ip("::1")), None);
        assert!(t.is_empty());
    }

    #[test]
    fn host_bits_of_an_inserted_prefix_are_masked() {
        let mut t = AllowedIps::new();
        t.insert(net("100.64.1.2/16"), 1);
        assert_eq!(t.iter().next().map(|(n, _)| n), Some(net("100.64.0.0/16")));
        assert_eq!(t.insert(net("100.64.0.0/16"), 2), Some(1));
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(&net("100.64.9.9/16")), Some(2));
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("100.64.1.2")), None);
    }

    #[test]
    fn inserting_a_prefix_for_another_value_moves_it() {
        let mut t = AllowedIps::new();
        t.insert(net("100.64.0.2/32"), "a");
        assert_eq!(t.insert(net("100.64.0.2/32"), "b"), Some("a"));
        assert_eq!(t.lookup(ip("100.64.0.2")), Some(&"b"));
        assert_eq!(t.prefixes_where(|v| *v == "a").count(), 0);
    }

    #[test]
    fn removing_a_value_removes_all_its_prefixes_and_nothing_else() {
        let mut t = AllowedIps::new();
        t.insert(net("100.64.0.2/32"), 1);
        t.insert(net("fd7a:115c:a1e0::2/128"), 1);
        t.insert(net("100.64.0.0/24"), 2);
        assert_eq!(t.remove_value(|v| *v == 1), 2);
        assert_eq!(t.lookup(ip("100.64.0.2")), Some(&2));
        assert_eq!(t.lookup(ip("fd7a:115c:a1e0::2")), None);
        assert_eq!(
            t.prefixes_where(|v| *v == 2).collect::<Vec<_>>(),
            vec![net("100.64.0.0/24")]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(IpNet, u8),
        Remove(IpNet),
        RemoveValue(u8),
    }

    /// Addresses cluster around a few bases so prefixes overlap often.
    fn addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            (0u8..3, any::<u16>(), any::<u8>()).prop_map(|(b, mid, low)| {
                let base = [[100u8, 64], [198, 18], [10, 0]][usize::from(b)];
                let [m0, _] = mid.to_be_bytes();
                IpAddr::from([base[0], base[1] ^ (m0 & 0x3), (mid & 0xff) as u8 & 0x7, low])
            }),
            (0u8..2, any::<u16>(), any::<u16>()).prop_map(|(b, mid, low)| {
                let base: u128 = if b == 0 {
                    0xfd7a_115c_a1e0 << 80
                } else {
                    0x2001_0db8 << 96
                };
                IpAddr::from(Ipv6Addr::from(
                    base | (u128::from(mid & 0x3) << 64) | u128::from(low & 0x1ff),
                ))
            }),
        ]
    }

    fn prefix() -> impl Strategy<Value = IpNet> {
        (
            addr(),
            any::<u8>(),
            prop::sample::select(vec![0u8, 1, 8, 16, 24, 30, 32, 48, 64, 120, 128]),
        )
            .prop_map(|(a, r, pick)| {
                let max = if a.is_ipv4() { 32 } else { 128 };
                let len = if r % 3 == 0 {
                    r % (max + 1)
                } else {
                    pick.min(max)
                };
                IpNet::new(a, len).unwrap()
            })
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (prefix(), 0u8..4).prop_map(|(n, v)| Op::Insert(n, v)),
            2 => prefix().prop_map(Op::Remove),
            1 => (0u8..4).prop_map(Op::RemoveValue),
        ]
    }

    /// The naive reference: a list of (masked prefix, value), scanned linearly.
    #[derive(Default)]
    struct Naive(Vec<(IpNet, u8)>);

    impl Naive {
        fn apply(&mut self, op: &Op) {
            match op {
                Op::Insert(n, v) => {
                    let n = n.trunc();
                    self.0.retain(|(m, _)| *m != n);
                    self.0.push((n, *v));
                }
                Op::Remove(n) => self.0.retain(|(m, _)| *m != n.trunc()),
                Op::RemoveValue(v) => self.0.retain(|(_, w)| w != v),
            }
        }
        fn lookup(&self, a: IpAddr) -> Option<u8> {
            self.0
                .iter()
                .filter(|(n, _)| n.contains(&a))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn lookups_agree_with_a_linear_scan(
            ops in prop::collection::vec(op(), 0..60),
            probes in prop::collection::vec(addr(), 1..40),
        ) {
            let mut t = AllowedIps::new();
            let mut naive = Naive::default();
            for op in &ops {
                naive.apply(op);
                match op {
                    Op::Insert(n, v) => { t.insert(*n, *v); }
                    Op::Remove(n) => { t.remove(n); }
                    Op::RemoveValue(v) => { t.remove_value(|w| w == v); }
                }
                prop_assert_eq!(t.len(), naive.0.len());
            }
            // Probe the table's own prefixes' network addresses too, so the
            // host routes and /0 edges are always exercised.
            let edges = naive.0.iter().flat_map(|(n, _)| [n.network(), n.broadcast()]);
            for a in probes.into_iter().chain(edges) {
                prop_assert_eq!(t.lookup(a).copied(), naive.lookup(a), "address {}", a);
            }
            let mut listed: Vec<_> = t.iter().map(|(n, v)| (n, *v)).collect();
            let mut expected = naive.0.clone();
            listed.sort();
            expected.sort();
            prop_assert_eq!(listed, expected);
        }
    }
}
