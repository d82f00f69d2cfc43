//! Packing outgoing datagrams for UDP GSO.
//!
//! With `UDP_SEGMENT`, one `sendmsg` carries a run of datagrams to one
//! destination that all have the same size (the *segment*), laid out back to
//! back; only the last may be shorter. [`TxBatch`] is the arena the sealing
//! loop writes into: each datagram lands right after the previous one, and
//! [`TxBatch::commit`] extends the current run or starts a new one. The
//! driver then sends one message per run.
//!
//! Nothing here allocates after [`TxBatch::new`].

use std::net::SocketAddr;

/// Most bytes one GSO `sendmsg` may carry: an IPv4 datagram is at most
/// 65535 bytes including the 20-byte IP and 8-byte UDP headers; keep a margin
/// for IP options.
pub const MAX_GSO_BYTES: usize = 65_000;

/// The kernel's limit on segments per GSO send (`UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;

/// One run of datagrams for one `sendmsg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// Where all datagrams of the run go.
    pub to: SocketAddr,
    start: usize,
    end: usize,
    /// Size of every datagram but the last.
    pub segment: usize,
    /// Number of datagrams.
    pub count: usize,
    /// A shorter datagram ended the run: nothing may follow it.
    closed: bool,
}

/// An arena of outgoing datagrams grouped into GSO runs.
#[derive(Debug)]
pub struct TxBatch {
    buf: Vec<u8>,
    used: usize,
    runs: Vec<Run>,
    max_segments: usize,
}

impl TxBatch {
    /// Creates a batch of `bytes` bytes holding at most `max_runs` runs.
    pub fn new(bytes: usize, max_runs: usize) -> Self {
        Self {
            buf: vec![0; bytes],
            used: 0,
            runs: Vec::with_capacity(max_runs),
            max_segments: 1,
        }
    }

    /// Sets how many datagrams one run may hold (1 = no GSO). Takes effect
    /// for runs started afterwards.
    pub fn set_max_segments(&mut self, n: usize) {
        self.max_segments = n.clamp(1, MAX_GSO_SEGMENTS);
    }

    /// Returns whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Returns the free space for the next datagram if at least `need` bytes
    /// and a run slot are left; `None` means: send and [`Self::clear`] first.
    pub fn tail(&mut self, need: usize) -> Option<&mut [u8]> {
        if self.runs.len() == self.runs.capacity() || self.buf.len() - self.used < need {
            return None;
        }
        self.buf.get_mut(self.used..)
    }

    /// Records a datagram of `len` bytes for `to` that was written into the
    /// slice from [`Self::tail`], starting `offset` bytes into it.
    pub fn commit(&mut self, to: SocketAddr, offset: usize, len: usize) {
        let start = self.used;
        if start + offset + len > self.buf.len() || len == 0 {
            return;
        }
        if offset != 0 {
            self.buf
                .copy_within(start + offset..start + offset + len, start);
        }
        self.used += len;
        let max_segments = self.max_segments;
        if let Some(run) = self.runs.last_mut()
            && !run.closed
            && run.to == to
            && run.count < max_segments
            && run.end - run.start + len <= MAX_GSO_BYTES
            && len <= run.segment
        {
            run.end += len;
            run.count += 1;
            run.closed = len < run.segment;
            return;
        }
        self.runs.push(Run {
            to,
            start,
            end: start + len,
            segment: len,
            count: 1,
            closed: false,
        });
    }

    /// Returns the runs with their bytes, in the order they were queued.
    pub fn runs(&self) -> impl Iterator<Item = (&Run, &[u8])> {
        self.runs
            .iter()
            .map(|r| (r, self.buf.get(r.start..r.end).unwrap_or_default()))
    }

    /// Empties the batch (keeps the memory).
    pub fn clear(&mut self) {
        self.used = 0;
        self.runs.clear();
    }
}

/// The address range of a buffer, remembered before lending it out so a
/// slice returned from it can be located afterwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: usize,
    len: usize,
}

impl Span {
    pub(crate) fn of(buf: &[u8]) -> Self {
        Self {
            start: buf.as_ptr().addr(),
            len: buf.len(),
        }
    }

    /// Returns where `inner` starts inside the buffer, if it lies within it.
    pub(crate) fn offset_of(self, inner: &[u8]) -> Option<usize> {
        let i = inner.as_ptr().addr();
        (i >= self.start && i + inner.len() <= self.start + self.len).then(|| i - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, 2], port))
    }

    fn push(b: &mut TxBatch, to: SocketAddr, len: usize, fill: u8) {
        let tail = b.tail(len).unwrap();
        tail[..len].fill(fill);
        b.commit(to, 0, len);
    }

    fn shape(b: &TxBatch) -> Vec<(u16, usize, usize, usize)> {
        b.runs()
            .map(|(r, bytes)| (r.to.port(), r.segment, r.count, bytes.len()))
            .collect()
    }

    #[test]
    fn equal_datagrams_to_one_peer_form_one_run() {
        let mut b = TxBatch::new(1 << 20, 64);
        b.set_max_segments(64);
        for _ in 0..10 {
            push(&mut b, addr(1), 1452, 7);
        }
        assert_eq!(shape(&b), vec![(1, 1452, 10, 14520)]);
    }

    #[test]
    fn a_shorter_datagram_ends_a_run_and_a_longer_one_starts_a_new_one() {
        let mut b = TxBatch::new(1 << 20, 64);
        b.set_max_segments(64);
        push(&mut b, addr(1), 100, 1);
        push(&mut b, addr(1), 100, 1);
        push(&mut b, addr(1), 60, 2); // short tail joins the run, closes it
        push(&mut b, addr(1), 60, 3); // cannot follow a short tail
        push(&mut b, addr(1), 80, 4); // longer than the run's segment
        assert_eq!(
            shape(&b),
            vec![(1, 100, 3, 260), (1, 60, 1, 60), (1, 80, 1, 80)]
        );
        let bytes: Vec<u8> = b.runs().next().unwrap().1.to_vec();
        assert_eq!(&bytes[200..], &[2u8; 60][..]);
    }

    #[test]
    fn a_new_destination_starts_a_new_run() {
        let mut b = TxBatch::new(1 << 20, 64);
        b.set_max_segments(64);
        push(&mut b, addr(1), 100, 1);
        push(&mut b, addr(2), 100, 1);
        push(&mut b, addr(1), 100, 1);
        assert_eq!(
            shape(&b),
            vec![(1, 100, 1, 100), (2, 100, 1, 100), (1, 100, 1, 100)]
        );
    }

    #[test]
    fn runs_respect_the_segment_and_byte_limits() {
        let mut b = TxBatch::new(1 << 20, 64);
        b.set_max_segments(64);
        for _ in 0..100 {
            push(&mut b, addr(1), 1452, 0);
        }
        let runs = shape(&b);
        assert!(runs.iter().all(|r| r.3 <= MAX_GSO_BYTES && r.2 <= 64));
        assert_eq!(runs.iter().map(|r| r.2).sum::<usize>(), 100);
        assert_eq!(runs[0].2, MAX_GSO_BYTES / 1452);

        let mut b = TxBatch::new(1 << 20, 64);
        b.set_max_segments(64);
        for _ in 0..100 {
            push(&mut b, addr(1), 100, 0);
        }
        assert_eq!(shape(&b)[0].2, 64);
    }

    #[test]
    fn without_gso_every_datagram_is_its_own_run() {
        let mut b = TxBatch::new(1 << 20, 64);
        push(&mut b, addr(1), 100, 1);
        push(&mut b, addr(1), 100, 1);
        assert_eq!(shape(&b), vec![(1, 100, 1, 100), (1, 100, 1, 100)]);
    }

    #[test]
    fn the_batch_reports_full_when_bytes_or_run_slots_run_out() {
        let mut b = TxBatch::new(300, 2);
        push(&mut b, addr(1), 100, 1);
        push(&mut b, addr(2), 100, 1);
        assert!(b.tail(10).is_none(), "no run slot left");
        b.clear();
        assert!(b.is_empty());
        push(&mut b, addr(1), 250, 1);
        assert!(b.tail(100).is_none(), "not enough bytes left");
        assert!(b.tail(50).is_some());
    }

    #[test]
    fn a_datagram_written_at_an_offset_is_moved_into_place() {
        let mut b = TxBatch::new(1000, 4);
        let tail = b.tail(200).unwrap();
        tail[16..20].copy_from_slice(&[1, 2, 3, 4]);
        let off = Span::of(tail).offset_of(&tail[16..20]).unwrap();
        b.commit(addr(1), off, 4);
        assert_eq!(b.runs().next().unwrap().1, &[1, 2, 3, 4]);
    }

    #[test]
    fn a_span_locates_only_slices_of_its_own_buffer() {
        let a = [0u8; 10];
        let c = [0u8; 10];
        assert_eq!(Span::of(&a).offset_of(&a[3..5]), Some(3));
        assert_eq!(Span::of(&a).offset_of(&c[..]), None);
    }
}
