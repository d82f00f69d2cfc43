//! A fixed-capacity hash table that keeps its entries in least-recently-used
//! order, allocating only in [`Lru::with_capacity`].
//!
//! Entries live in a slab of slots linked into one list, most recently used
//! at the head; a `HashMap` maps keys to slot numbers. Keys carry their own
//! (keyed) hash, which the map uses as is ([`Prehashed`]).
//!
//! Why the map is sized for twice the capacity: `std`'s hash map leaves a
//! tombstone for each removal and, once tombstones use up its spare room,
//! rehashes. It rehashes in place (no allocation) only while at most half
//! its buckets are full, so with room for `2 × capacity` entries and never
//! more than `capacity` stored, churn never allocates.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

const NIL: u32 = u32::MAX;

/// Uses a key's precomputed hash as is.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Prehashed;

/// The hasher [`Prehashed`] builds: it keeps the last `u64` written.
#[derive(Debug, Default)]
pub(crate) struct PrehashedHasher(u64);

impl BuildHasher for Prehashed {
    type Hasher = PrehashedHasher;
    fn build_hasher(&self) -> PrehashedHasher {
        PrehashedHasher(0)
    }
}

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Keys only call `write_u64`; fold anything else in regardless.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
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
    map: HashMap<K, u32, Prehashed>,
    slots: Vec<Slot<K, V>>,
    free: Vec<u32>,
    head: u32,
    tail: u32,
    capacity: usize,
}

impl<K: Copy + Eq + Hash, V: Copy> Lru<K, V> {
    /// Returns an empty table holding at most `capacity` entries (at least
    /// 1, at most `u32::MAX - 1`).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, (NIL - 1) as usize);
        Lru {
            map: HashMap::with_capacity_and_hasher(capacity.saturating_mul(2), Prehashed),
            slots: Vec::with_capacity(capacity),
            free: Vec::with_capacity(capacity),
            head: NIL,
            tail: NIL,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_full(&self) -> bool {
        self.map.len() >= self.capacity
    }

    /// Returns the slot holding `key`.
    pub fn find(&self, key: &K) -> Option<u32> {
        self.map.get(key).copied()
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
        if self.is_full() || self.map.contains_key(&key) {
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
        self.map.insert(key, n);
        Some(n)
    }

    /// Removes the entry in `slot` and returns it.
    pub fn remove(&mut self, slot: u32) -> Option<(K, V)> {
        let s = *self.slots.get(slot as usize)?;
        if self.map.get(&s.key) != Some(&slot) {
            return None;
        }
        self.unlink(slot);
        self.map.remove(&s.key);
        self.free.push(slot);
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
    impl Hash for K {
        fn hash<H: Hasher>(&self, h: &mut H) {
            h.write_u64(self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
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
}
