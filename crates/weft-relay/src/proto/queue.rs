//! [`FrameBuffer`]: the frames waiting to be written to one connection,
//! already encoded, bounded in bytes. Used for a client's send queue on the
//! server and for the outgoing packets of the relay client.
//!
//! Packets are copied in (one `memcpy`, into storage the buffer owns and
//! reuses), so what a connection holds is exactly its own bytes: a slow
//! receiver pins at most `limit` bytes, never the read buffers of the
//! clients that sent to it. When the next packet does not fit, it is
//! dropped and counted (tail drop: the queue is short, the drop rate is what
//! matters), and so is each *overflow*, a run of drops between two moments
//! the buffer had room. Control frames (`Pong`, `PeerGone`, ...) may use a
//! small reserve above the limit, so a full queue of packets does not
//! silence them.
//!
//! The writer takes everything at once with [`FrameBuffer::take_into`],
//! which swaps the storage with the writer's (empty) one: no copy, and once
//! both have grown to their working size, no allocation.

use bytes::BytesMut;

use super::frame::Frame;

/// Bytes above the limit that control frames may use.
pub const CONTROL_RESERVE: usize = 8 << 10;

/// The outcome of [`FrameBuffer::push_packet`].
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Push {
    /// Queued.
    Queued,
    /// Dropped: the buffer was full. `new_overflow` if this drop started an
    /// overflow.
    Dropped {
        /// This drop started a new overflow.
        new_overflow: bool,
    },
}

/// What [`FrameBuffer::take_into`] handed over.
#[derive(Debug, PartialEq, Eq, Clone, Copy, Default)]
pub struct Taken {
    /// Packet frames.
    pub packets: u64,
    /// Their packet bytes (payload, without framing).
    pub packet_bytes: u64,
}

/// Encoded frames for one connection, at most `limit` bytes of packets.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    limit: usize,
    taken: Taken,
    dropped: u64,
    overflows: u64,
    overflowing: bool,
}

impl FrameBuffer {
    /// Creates an empty buffer for at most `limit` bytes of frames (at least
    /// one frame always fits, however large).
    pub fn new(limit: usize) -> Self {
        FrameBuffer {
            buf: BytesMut::new(),
            limit,
            taken: Taken::default(),
            dropped: 0,
            overflows: 0,
            overflowing: false,
        }
    }

    /// Appends a packet frame (`SendPacket` or `RecvPacket`) unless it would
    /// take the buffer past its limit.
    pub fn push_packet(&mut self, frame: &Frame<'_>) -> Push {
        let len = frame.encoded_len();
        if !self.buf.is_empty() && self.buf.len() + len > self.limit {
            self.dropped += 1;
            let new_overflow = !self.overflowing;
            if new_overflow {
                self.overflowing = true;
                self.overflows += 1;
            }
            return Push::Dropped { new_overflow };
        }
        frame.encode(&mut self.buf);
        self.overflowing = false;
        self.taken.packets += 1;
        self.taken.packet_bytes += (len - super::FRAME_HEADER_LEN - super::KEY_LEN) as u64;
        Push::Queued
    }

    /// Appends a control frame, which may use [`CONTROL_RESERVE`] above the
    /// limit. Returns `false` (dropped) if even that is full.
    pub fn push_control(&mut self, frame: &Frame<'_>) -> bool {
        let len = frame.encoded_len();
        if !self.buf.is_empty() && self.buf.len() + len > self.limit + CONTROL_RESERVE {
            return false;
        }
        frame.encode(&mut self.buf);
        true
    }

    /// Hands every queued frame to the writer: swaps the storage with `out`
    /// (which the writer has emptied; its capacity is reused here).
    pub fn take_into(&mut self, out: &mut BytesMut) -> Taken {
        debug_assert!(out.is_empty(), "the writer hands back an empty buffer");
        out.clear();
        std::mem::swap(&mut self.buf, out);
        if !out.is_empty() {
            self.overflowing = false;
        }
        std::mem::take(&mut self.taken)
    }

    /// Discards everything queued; returns how many packets that was.
    pub fn clear(&mut self) -> u64 {
        self.buf.clear();
        std::mem::take(&mut self.taken).packets
    }

    /// Returns the queued bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Returns whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Returns the limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Returns how many packets were dropped because the buffer was full.
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
    use crate::proto::frame::{Frame, packet_frame_len};
    use weft_types::NodePublic;

    fn packet(b: u8, len: usize) -> (NodePublic, Vec<u8>) {
        (NodePublic::from_bytes([b; 32]), vec![b; len])
    }

    fn recv<'a>(p: &'a (NodePublic, Vec<u8>)) -> Frame<'a> {
        Frame::RecvPacket {
            src: p.0,
            packet: &p.1,
        }
    }

    #[test]
    fn packets_beyond_the_limit_are_dropped_and_counted() {
        let frame = packet_frame_len(100);
        let mut q = FrameBuffer::new(3 * frame);
        let p = packet(1, 100);
        for _ in 0..3 {
            assert_eq!(q.push_packet(&recv(&p)), Push::Queued);
        }
        assert_eq!(
            q.push_packet(&recv(&p)),
            Push::Dropped { new_overflow: true }
        );
        assert_eq!(
            q.push_packet(&recv(&p)),
            Push::Dropped {
                new_overflow: false
            }
        );
        assert_eq!((q.dropped(), q.overflows(), q.len()), (2, 1, 3 * frame));
    }

    #[test]
    fn the_writer_takes_everything_in_order_and_the_storage_is_reused() {
        let mut q = FrameBuffer::new(1 << 20);
        let (a, b) = (packet(1, 10), packet(2, 20));
        q.push_packet(&recv(&a));
        q.push_control(&Frame::Pong { data: [9; 8] });
        q.push_packet(&recv(&b));
        let mut out = BytesMut::with_capacity(4096);
        let cap = out.capacity();
        let taken = q.take_into(&mut out);
        assert_eq!(
            taken,
            Taken {
                packets: 2,
                packet_bytes: 30
            }
        );
        assert!(q.is_empty());
        let (f1, n1) = Frame::decode(&out, 1 << 20).unwrap().unwrap();
        assert_eq!(f1, recv(&a));
        let (f2, n2) = Frame::decode(&out[n1..], 1 << 20).unwrap().unwrap();
        assert_eq!(f2, Frame::Pong { data: [9; 8] });
        let (f3, _) = Frame::decode(&out[n1 + n2..], 1 << 20).unwrap().unwrap();
        assert_eq!(f3, recv(&b));
        // The writer's old storage is now the queue's: no allocation for the
        // next frames up to its capacity.
        let before = q.buf.capacity();
        assert_eq!(before, cap);
        q.push_packet(&recv(&a));
        assert_eq!(q.buf.capacity(), before);
    }

    #[test]
    fn overflows_count_runs_of_drops_not_drops() {
        let frame = packet_frame_len(100);
        let mut q = FrameBuffer::new(2 * frame);
        let p = packet(1, 100);
        let mut out = BytesMut::new();
        for _ in 0..3 {
            for _ in 0..5 {
                q.push_packet(&recv(&p));
            }
            out.clear();
            q.take_into(&mut out);
        }
        assert_eq!((q.overflows(), q.dropped()), (3, 9));
    }

    #[test]
    fn control_frames_use_a_reserve_above_a_full_queue() {
        let frame = packet_frame_len(100);
        let mut q = FrameBuffer::new(frame);
        let p = packet(1, 100);
        assert_eq!(q.push_packet(&recv(&p)), Push::Queued);
        assert!(matches!(q.push_packet(&recv(&p)), Push::Dropped { .. }));
        let gone = Frame::PeerGone {
            peer: p.0,
            reason: crate::proto::frame::PeerGoneReason::Disconnected,
        };
        let fits = CONTROL_RESERVE / gone.encoded_len();
        for _ in 0..fits {
            assert!(q.push_control(&gone));
        }
        assert!(!q.push_control(&gone), "the reserve is bounded too");
    }

    #[test]
    fn one_frame_larger_than_the_limit_still_goes_through_an_empty_buffer() {
        let mut q = FrameBuffer::new(100);
        let big = packet(3, 1000);
        assert_eq!(q.push_packet(&recv(&big)), Push::Queued);
        assert!(matches!(q.push_packet(&recv(&big)), Push::Dropped { .. }));
        assert_eq!(q.clear(), 1);
        assert!(q.is_empty());
    }
}
