//! A fixed-capacity hash table that keeps its entries in least-recently-used
//! order, allocating only in [`Lru::with_capacity`].
//!
//! Entries live in a slab of slots linked into one list, most recently used
//! at the head. An open-addressing index (linear probing, deletion by
//! backward shift, so no tombstones) maps a key's precomputed hash to its
//! slot. Each index entry is 8 bytes — 32 bits of the hash and the slot
//! number — and the index has at least twice as many entries as the table
//! has slots, so a lookup usually reads one index cache line and then the
//! one slot it names.

const NIL: u32 = u32::MAX;
const EMPTY: u64 = u64::MAX;

/// A key that carries its own (keyed) hash.
pub(crate) trait Keyed: Copy + Eq {
    fn hash64(&self) -> u64;
}

#[derive(Debug, Clone, Copy)]
struct Slot<K, V> {
    key: K,
    value: V,
    /// Towards the head (more recently used).
    newer: u32,
    /// Towards the tail (less recently used).
    older: u32,
}

/// The table. Slot numbers (`u32`) stay valid until that entry is removed.
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    /// `(low 32 bits of the hash) << 32 | slot`, or [`EMPTY`].
    index: Box<[u64]>,
    mask: usize,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    len: usize,
    head: u32,
    tail: u32,
    capacity: usize,
}

#[allow(clippy::cast_possible_truncation)] // the low half is the point
fn low32(h: u64) -> u32 {
    h as u32
}

impl<K: Keyed, V: Copy> Lru<K, V> {
    /// Returns an empty table holding at most `capacity` entries (at least
    /// 1, at most 2^30).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, 1 << 30);
        let index_len = (capacity * 2).next_power_of_two();
        Lru {
            index: vec![EMPTY; index_len].into_boxed_slice(),
            mask: index_len - 1,
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            len: 0,
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// Returns the slot holding `key`.
    pub fn find(&self, key: &K) -> Option<u32> {
        let h = low32(key.hash64());
        let mut i = h as usize & self.mask;
        // At most half the index is in use, so an empty entry ends the probe.
        for _ in 0..=self.mask {
            let e = *self.index.get(i)?;
            if e == EMPTY {
                return None;
            }
            if (e >> 32) as u32 == h {
                let slot = low32(e);
                if self.slots.get(slot as usize).is_some_and(|s| s.key == *key) {
                    return Some(slot);
                }
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    #[cfg(test)]
    pub fn key(&self, slot: u32) -> Option<&K> {
        self.slots.get(slot as usize).map(|s| &s.key)
    }

    pub fn value(&self, slot: u32) -> Option<&V> {
        self.slots.get(slot as usize).map(|s| &s.value)
    }

    pub fn value_mut(&mut self, slot: u32) -> Option<&mut V> {
        self.slots.get_mut(slot as usize).map(|s| &mut s.value)
    }

    /// Returns the least recently used slot.
    pub fn oldest(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    /// Returns the slot used just after `slot` (towards the head).
    pub fn newer(&self, slot: u32) -> Option<u32> {
        self.slots
            .get(slot as usize)
            .map(|s| s.newer)
            .filter(|&n| n != NIL)
    }

    /// Marks `slot` as the most recently used.
    pub fn touch(&mut self, slot: u32) {
        if self.head != slot && (slot as usize) < self.slots.len() {
            self.unlink(slot);
            self.push_front(slot);
        }
    }

    /// Inserts `key`, which must be absent, as the most recently used entry
    /// and returns its slot; returns `None` when the table is full (make
    /// room first) or `key` is already present.
    pub fn insert(&mut self, key: K, value: V) -> Option<u32> {
        if self.is_full() || self.find(&key).is_some() {
            return None;
        }
        let slot = Slot {
            key,
            value,
            newer: NIL,
            older: NIL,
        };
        let n = match self.free.pop() {
            Some(n) => {
                *self.slots.get_mut(n as usize)? = slot;
                n
            }
            None => {
                let n = u32::try_from(self.slots.len()).ok()?;
                self.slots.push(slot);
                n
            }
        };
        self.push_front(n);
        self.index_insert(key.hash64(), n);
        self.len += 1;
        Some(n)
    }

    /// Removes the entry in `slot` and returns it.
    pub fn remove(&mut self, slot: u32) -> Option<(K, V)> {
        let s = *self.slots.get(slot as usize)?;
        if !self.index_remove(s.key.hash64(), slot) {
            return None;
        }
        self.unlink(slot);
        self.free.push(slot);
        self.len -= 1;
        Some((s.key, s.value))
    }

    /// Keeps the entries for which `keep` returns true; returns how many
    /// were removed. Visits from most to least recently used.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &mut V) -> bool) -> usize {
        let mut removed = 0;
        let mut cursor = self.head;
        while let Some(s) = self.slots.get_mut(cursor as usize) {
            let next = s.older;
            if !keep(&s.key, &mut s.value) {
                self.remove(cursor);
                removed += 1;
            }
            cursor = next;
        }
        removed
    }

    fn index_insert(&mut self, hash: u64, slot: u32) {
        let h = low32(hash);
        let mut i = h as usize & self.mask;
        for _ in 0..=self.mask {
            if let Some(e) = self.index.get_mut(i)
                && *e == EMPTY
            {
                *e = (u64::from(h) << 32) | u64::from(slot);
                return;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Removes the index entry for `slot`; returns whether there was one.
    fn index_remove(&mut self, hash: u64, slot: u32) -> bool {
        let wanted = (u64::from(low32(hash)) << 32) | u64::from(slot);
        let mut hole = low32(hash) as usize & self.mask;
        let mut found = false;
        for _ in 0..=self.mask {
            match self.index.get(hole) {
                Some(&e) if e == wanted => {
                    found = true;
                    break;
                }
                Some(&EMPTY) | None => break,
                Some(_) => hole = (hole + 1) & self.mask,
            }
        }
        if !found {
            return false;
        }
        // Backward shift: pull later entries of the probe run into the hole
        // when the hole lies between their home and where they sit.
        let mut j = hole;
        for _ in 0..self.mask {
            j = (j + 1) & self.mask;
            let Some(&e) = self.index.get(j) else { break };
            if e == EMPTY {
                break;
            }
            let home = (e >> 32) as usize & self.mask;
            if j.wrapping_sub(hole) & self.mask <= j.wrapping_sub(home) & self.mask {
                if let Some(h) = self.index.get_mut(hole) {
                    *h = e;
                }
                hole = j;
            }
        }
        if let Some(h) = self.index.get_mut(hole) {
            *h = EMPTY;
        }
        true
    }

    fn unlink(&mut self, n: u32) {
        let Some(&Slot { newer, older, .. }) = self.slots.get(n as usize) else {
            return;
        };
        match self.slots.get_mut(newer as usize) {
            Some(s) => s.older = older,
            None => self.head = older,
        }
        match self.slots.get_mut(older as usize) {
            Some(s) => s.newer = newer,
            None => self.tail = newer,
        }
    }

    fn push_front(&mut self, n: u32) {
        let old_head = self.head;
        if let Some(s) = self.slots.get_mut(n as usize) {
            s.newer = NIL;
            s.older = old_head;
        }
        match self.slots.get_mut(old_head as usize) {
            Some(s) => s.newer = n,
            None => self.tail = n,
        }
        self.head = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct K(u64);
    impl Keyed for K {
        fn hash64(&self) -> u64 {
            self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        }
    }

    /// Keys whose hashes collide in the index in clusters of `n`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct Clustered(u64, u64);
    impl Keyed for Clustered {
        fn hash64(&self) -> u64 {
            self.0 / self.1
        }
    }

    fn order(t: &Lru<K, u32>) -> Vec<u64> {
        let mut out = Vec::new();
        let mut c = t.oldest();
        while let Some(n) = c {
            out.push(t.key(n).unwrap().0);
            c = t.newer(n);
        }
        out
    }

    #[test]
    fn entries_are_kept_in_least_recently_used_order() {
        let mut t = Lru::with_capacity(4);
        let a = t.insert(K(1), 10).unwrap();
        t.insert(K(2), 20).unwrap();
        t.insert(K(3), 30).unwrap();
        assert_eq!(order(&t), [1, 2, 3]);
        t.touch(a);
        assert_eq!(order(&t), [2, 3, 1]);
        let oldest = t.oldest().unwrap();
        assert_eq!(t.remove(oldest), Some((K(2), 20)));
        assert_eq!(order(&t), [3, 1]);
        assert_eq!(t.find(&K(2)), None);
        assert_eq!(t.value(t.find(&K(1)).unwrap()), Some(&10));
    }

    #[test]
    fn a_full_table_refuses_inserts_until_room_is_made() {
        let mut t = Lru::with_capacity(2);
        t.insert(K(1), 1).unwrap();
        t.insert(K(2), 2).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(K(3), 3), None);
        t.remove(t.oldest().unwrap());
        assert!(t.insert(K(3), 3).is_some());
        assert_eq!(order(&t), [2, 3]);
        assert_eq!(
            t.insert(K(3), 4),
            None,
            "a present key is not inserted twice"
        );
    }

    #[test]
    fn retain_removes_what_it_is_told_and_keeps_the_order() {
        let mut t = Lru::with_capacity(8);
        for i in 0..8 {
            t.insert(K(i), u32::try_from(i).unwrap()).unwrap();
        }
        let removed = t.retain(|k, v| {
            *v += 100;
            k.0 % 2 == 0
        });
        assert_eq!(removed, 4);
        assert_eq!(order(&t), [0, 2, 4, 6]);
        assert_eq!(t.value(t.find(&K(4)).unwrap()), Some(&104));
        for i in 10..14 {
            t.insert(K(i), 0).unwrap();
        }
        assert_eq!(t.len(), 8);
        assert_eq!(order(&t), [0, 2, 4, 6, 10, 11, 12, 13]);
    }

    #[test]
    fn a_removed_slot_number_no_longer_names_an_entry() {
        let mut t = Lru::with_capacity(2);
        let a = t.insert(K(1), 1).unwrap();
        assert!(t.remove(a).is_some());
        assert_eq!(t.remove(a), None);
        assert_eq!(t.len(), 0);
        assert_eq!(t.oldest(), None);
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Insert(u64),
        Remove(u64),
        Touch(u64),
        EvictOldest,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u64..96).prop_map(Op::Insert),
            2 => (0u64..96).prop_map(Op::Remove),
            1 => (0u64..96).prop_map(Op::Touch),
            1 => Just(Op::EvictOldest),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_table_agrees_with_a_plain_list_under_colliding_hashes(
            ops in proptest::collection::vec(op(), 1..400),
            cluster in 1u64..6,
        ) {
            let mut t: Lru<Clustered, u64> = Lru::with_capacity(32);
            // Least recently used first.
            let mut model: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(k) => {
                        let inserted = t.insert(Clustered(k, cluster), k).is_some();
                        let expect = !model.contains(&k) && model.len() < 32;
                        proptest::prop_assert_eq!(inserted, expect);
                        if expect {
                            model.push(k);
                        }
                    }
                    Op::Remove(k) => {
                        let removed = t.find(&Clustered(k, cluster)).and_then(|n| t.remove(n));
                        let pos = model.iter().position(|&m| m == k);
                        proptest::prop_assert_eq!(removed.map(|(_, v)| v), pos.map(|_| k));
                        if let Some(p) = pos {
                            model.remove(p);
                        }
                    }
                    Op::Touch(k) => {
                        if let Some(n) = t.find(&Clustered(k, cluster)) {
                            t.touch(n);
                        }
                        if let Some(p) = model.iter().position(|&m| m == k) {
                            model.remove(p);
                            model.push(k);
                        }
                    }
                    Op::EvictOldest => {
                        let evicted = t.oldest().and_then(|n| t.remove(n)).map(|(_, v)| v);
                        let expect = (!model.is_empty()).then(|| model.remove(0));
                        proptest::prop_assert_eq!(evicted, expect);
                    }
                }
                proptest::prop_assert_eq!(t.len(), model.len());
                let mut order = Vec::new();
                let mut c = t.oldest();
                while let Some(n) = c {
                    order.push(t.value(n).copied().unwrap());
                    c = t.newer(n);
                }
                proptest::prop_assert_eq!(&order, &model);
                for k in 0..96 {
                    let found = t.find(&Clustered(k, cluster)).and_then(|n| t.value(n).copied());
                    proptest::prop_assert_eq!(found, model.contains(&k).then_some(k));
                }
            }
        }
    }
}
