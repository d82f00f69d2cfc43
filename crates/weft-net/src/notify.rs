//! Waking threads that sleep in `poll(2)`.
//!
//! Every engine thread sleeps in `poll` on its data descriptor (TUN or UDP)
//! plus one or more [`Notify`]s. A `Notify` is an `eventfd`: once
//! [`Notify::notify`] has been called it stays readable until
//! [`Notify::clear`], so a stop signal reaches every thread that polls it,
//! whenever that thread next looks.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// A level-triggered, shareable wake-up flag backed by an `eventfd`.
#[derive(Debug)]
pub struct Notify {
    fd: EventFd,
    set: AtomicBool,
}

impl Notify {
    /// Creates a notifier in the cleared state.
    ///
    /// # Errors
    /// The `eventfd(2)` error (e.g. `EMFILE`).
    pub fn new() -> io::Result<Self> {
        let fd = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(io::Error::from)?;
        Ok(Self {
            fd,
            set: AtomicBool::new(false),
        })
    }

    /// Sets the flag and makes the descriptor readable. Idempotent.
    pub fn notify(&self) {
        if !self.set.swap(true, Ordering::AcqRel) {
            // Cannot fail short of counter overflow, which one write per
            // set/clear cycle never reaches.
            let _ = self.fd.write(1);
        }
    }

    /// Returns whether the flag is set (cheap: one atomic load).
    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Drains the descriptor, then clears the flag.
    ///
    /// In this order, so that a [`Notify::notify`] racing with it is never
    /// lost: one that found the flag still set (and so wrote nothing)
    /// happened before the flag was cleared, so whatever it announced is
    /// visible to the caller after `clear` returns; one that comes later
    /// sets the flag and writes, and wakes the next `poll`. (Clearing the
    /// flag first let a racing `notify` write between the two steps, the
    /// read then swallowed that write, and the flag stayed set with the
    /// descriptor empty: every later `notify` saw the flag set and wrote
    /// nothing, and a thread polling the descriptor slept for good.)
    /// A racing `notify` may leave the descriptor readable with the flag
    /// clear; a waiter then wakes once for nothing and must call `clear`
    /// on any wake-up it sees from this notifier.
    pub fn clear(&self) {
        // EAGAIN when already drained is fine.
        let _ = self.fd.read();
        self.set.store(false, Ordering::Release);
    }
}

impl AsFd for Notify {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// What [`wait`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ready {
    /// The data descriptor is ready for the requested direction (or has an
    /// error/hangup pending, which the next I/O call will report).
    pub io: bool,
    /// Which of the notifiers are readable, by position.
    pub notified: [bool; MAX_NOTIFIERS],
}

/// The most notifiers one [`wait`] watches (more are a programming error
/// and panic in debug builds; release builds ignore the extra ones).
pub(crate) const MAX_NOTIFIERS: usize = 3;

/// Sleeps until `fd` is ready for `events`, one of `notifiers` is set, or
/// `timeout` passes (`None` = no limit). `EINTR` counts as a spurious wake-up.
pub(crate) fn wait(
    fd: BorrowedFd<'_>,
    events: PollFlags,
    notifiers: &[&Notify],
    timeout: Option<Duration>,
) -> io::Result<Ready> {
    debug_assert!(notifiers.len() <= MAX_NOTIFIERS, "too many notifiers");
    let mut fds: [PollFd<'_>; 1 + MAX_NOTIFIERS] =
        std::array::from_fn(|i| PollFd::new(fd, if i == 0 { events } else { PollFlags::empty() }));
    let count = 1 + notifiers.len().min(MAX_NOTIFIERS);
    for (slot, n) in fds[1..].iter_mut().zip(notifiers) {
        *slot = PollFd::new(n.as_fd(), PollFlags::POLLIN);
    }
    let timeout = match timeout {
        None => PollTimeout::NONE,
        Some(t) => PollTimeout::try_from(t).unwrap_or(PollTimeout::MAX),
    };
    let mut ready = Ready {
        io: false,
        notified: [false; MAX_NOTIFIERS],
    };
    match nix::poll::poll(&mut fds[..count], timeout) {
        Ok(_) => {}
        Err(nix::errno::Errno::EINTR) => return Ok(ready),
        Err(e) => return Err(e.into()),
    }
    let revents = |p: &PollFd<'_>| p.revents().unwrap_or(PollFlags::empty());
    ready.io = !revents(&fds[0]).is_empty();
    for i in 0..count - 1 {
        ready.notified[i] = !revents(&fds[i + 1]).is_empty();
    }
    Ok(ready)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_notifier_wakes_a_poller_and_stays_set_until_cleared() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let stop = Notify::new().unwrap();
        let r = wait(a.as_fd(), PollFlags::POLLIN, &[&stop], Some(Duration::ZERO)).unwrap();
        assert_eq!(r.notified, [false; MAX_NOTIFIERS]);
        stop.notify();
        stop.notify();
        assert!(stop.is_set());
        for _ in 0..2 {
            let r = wait(a.as_fd(), PollFlags::POLLIN, &[&stop], None).unwrap();
            assert!(r.notified[0]);
            assert!(!r.io);
        }
        stop.clear();
        assert!(!stop.is_set());
        let r = wait(a.as_fd(), PollFlags::POLLIN, &[&stop], Some(Duration::ZERO)).unwrap();
        assert!(!r.notified[0]);
    }

    /// A producer publishes a counter and notifies; a consumer waits,
    /// clears, then reads the counter. Every notify must either wake a
    /// later wait or be visible after the `clear` before it: the consumer
    /// reaches the final value without a wait that times out. (With the
    /// flag cleared before draining, a notify racing with `clear` was
    /// swallowed and the consumer slept for good: the relay's receive path
    /// stalled under load.)
    #[test]
    fn a_notify_racing_with_clear_is_never_lost() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicU64;
        const N: u64 = 200_000;
        let (idle, _peer) = UnixDatagram::pair().unwrap();
        let n = Arc::new(Notify::new().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let producer = {
            let (n, count) = (Arc::clone(&n), Arc::clone(&count));
            std::thread::spawn(move || {
                for i in 1..=N {
                    count.store(i, Ordering::Release);
                    n.notify();
                }
            })
        };
        let mut woke = false;
        loop {
            if woke || n.is_set() {
                n.clear();
            }
            if count.load(Ordering::Acquire) == N {
                break;
            }
            let r = wait(
                idle.as_fd(),
                PollFlags::POLLIN,
                &[&*n],
                Some(Duration::from_secs(2)),
            )
            .unwrap();
            woke = r.notified[0];
            // We only wait while the producer has more to publish, and each
            // of its notifies comes after we read the count: a wait that
            // timed out missed one.
            assert!(
                woke,
                "a notify was lost: slept 2 s at {} of {N}",
                count.load(Ordering::Acquire)
            );
        }
        producer.join().unwrap();
    }

    #[test]
    fn data_on_the_descriptor_is_reported_as_io() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let stop = Notify::new().unwrap();
        let wake = Notify::new().unwrap();
        let third = Notify::new().unwrap();
        b.send(b"x").unwrap();
        wake.notify();
        let r = wait(a.as_fd(), PollFlags::POLLIN, &[&stop, &wake, &third], None).unwrap();
        assert!(r.io);
        assert_eq!(r.notified, [false, true, false]);
        // The third notifier alone wakes a waiter too.
        let _ = a.recv(&mut [0u8; 8]).unwrap();
        wake.clear();
        third.notify();
        let r = wait(a.as_fd(), PollFlags::POLLIN, &[&stop, &wake, &third], None).unwrap();
        assert!(!r.io);
        assert_eq!(r.notified, [false, false, true]);
    }
}
