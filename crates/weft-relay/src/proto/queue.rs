//! A client's send queue on the server: bounded, and when full it drops the
//! oldest packet to make room for the newest (derp's "queue head" drop),
//! because a fresh packet is worth more to WireGuard and to real-time
//! traffic than a stale one. Every drop is counted, and so is every
//! *overflow*: a run of drops between two moments the queue had room.
//!
//! Storage is allocated once, at the capacity; pushing and draining never
//! allocate.

use std::collections::VecDeque;

/// The outcome of [`BoundedQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    /// Queued; nothing was dropped.
    Queued,
    /// The queue was full: the oldest item was dropped (returned, for
    /// accounting) and the new one queued.
    DroppedOldest(T),
}

/// A bounded FIFO that drops its oldest item when full.
#[derive(Debug)]
pub struct BoundedQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    dropped: u64,
    overflows: u64,
    /// Whether the last push dropped; a new overflow starts at the next drop
    /// after the queue had room again.
    overflowing: bool,
}

impl<T> BoundedQueue<T> {
    /// Creates a queue holding at most `capacity` items (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        BoundedQueue {
            items: VecDeque::with_capacity(capacity),
            capacity,
            dropped: 0,
            overflows: 0,
            overflowing: false,
        }
    }

    /// Appends `item`, dropping the oldest item if the queue is full.
    pub fn push(&mut self, item: T) -> Push<T> {
        if self.items.len() < self.capacity {
            self.items.push_back(item);
            self.overflowing = false;
            return Push::Queued;
        }
        self.dropped += 1;
        if !self.overflowing {
            self.overflowing = true;
            self.overflows += 1;
        }
        let oldest = self.items.pop_front();
        self.items.push_back(item);
        match oldest {
            Some(old) => Push::DroppedOldest(old),
            // capacity >= 1 and the queue was full, so it held an item.
            None => Push::Queued,
        }
    }

    /// Moves up to `max` items, oldest first, to the end of `out`.
    pub fn drain_into(&mut self, out: &mut Vec<T>, max: usize) {
        let n = max.min(self.items.len());
        out.extend(self.items.drain(..n));
        if n > 0 {
            self.overflowing = false;
        }
    }

    /// Removes and returns every queued item (at close, to count them).
    pub fn take_all(&mut self) -> impl Iterator<Item = T> + '_ {
        self.items.drain(..)
    }

    /// Returns the number of queued items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Returns whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Returns the capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Returns how many items were dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Returns how many overflows (runs of drops) there were.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_its_oldest_item_and_counts_it() {
        let mut q = BoundedQueue::new(3);
        for i in 0..3 {
            assert_eq!(q.push(i), Push::Queued);
        }
        assert_eq!(q.push(3), Push::DroppedOldest(0));
        assert_eq!(q.push(4), Push::DroppedOldest(1));
        assert_eq!((q.dropped(), q.overflows()), (2, 1));
        let mut out = Vec::new();
        q.drain_into(&mut out, 10);
        assert_eq!(out, vec![2, 3, 4], "the newest packets survive, in order");
    }

    #[test]
    fn overflows_count_runs_of_drops_not_drops() {
        let mut q = BoundedQueue::new(2);
        let mut out = Vec::new();
        for round in 0..3 {
            for i in 0..5 {
                q.push(round * 10 + i);
            }
            q.drain_into(&mut out, 1);
        }
        // Each round: 3 drops (the first round fills 2, the later ones find
        // 1 slot free after draining one).
        assert_eq!(q.overflows(), 3);
        assert_eq!(q.dropped(), 3 + 4 + 4);
    }

    #[test]
    fn draining_is_bounded_and_ordered() {
        let mut q = BoundedQueue::new(8);
        for i in 0..8 {
            q.push(i);
        }
        let mut out = Vec::new();
        q.drain_into(&mut out, 3);
        assert_eq!(out, vec![0, 1, 2]);
        assert_eq!(q.len(), 5);
        assert_eq!(q.take_all().collect::<Vec<_>>(), vec![3, 4, 5, 6, 7]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_zero_capacity_is_one() {
        let mut q = BoundedQueue::new(0);
        assert_eq!(q.capacity(), 1);
        assert_eq!(q.push('a'), Push::Queued);
        assert_eq!(q.push('b'), Push::DroppedOldest('a'));
    }
}
