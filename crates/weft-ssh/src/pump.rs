//! Moving bytes between SSH channels and local file descriptors without ever
//! wedging a connection.
//!
//! russh delivers each channel's incoming messages into a bounded queue
//! (`channel_buffer_size`) and its session loop *awaits* space there. A
//! channel whose reader stops therefore stops the whole connection, and if
//! that reader is itself waiting for the connection (a process blocked on
//! stdout while its stdin is not being drained), the connection deadlocks.
//! So every channel gets a [`drain`] task that does nothing but move incoming
//! data into an [`InputQueue`], which a separate [`feed`] task writes to the
//! consumer. The queue is bounded by bytes (`channel_input_buffer`); only a
//! consumer that stops reading for that long back-pressures the connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use russh::ChannelMsg;
use russh::server::Msg;
use russh::{ChannelReadHalf, ChannelWriteHalf};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;

/// Size of one read from a local descriptor (and so of one channel packet
/// batch handed to russh).
const READ_CHUNK: usize = 32 * 1024;

/// Client → server bytes of one channel, waiting for their consumer.
#[derive(Debug)]
pub(crate) struct InputQueue {
    state: Mutex<QueueState>,
    /// Wakes the consumer (new data, EOF, close).
    to_consumer: Notify,
    /// Wakes the producer (space freed).
    to_producer: Notify,
    cap: usize,
}

#[derive(Debug, Default)]
struct QueueState {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    eof: bool,
    closed: bool,
}

/// What the consumer gets next.
pub(crate) enum Next {
    Data(Bytes),
    /// The client sent EOF and everything before it was consumed.
    Eof,
    /// The channel is gone.
    Closed,
}

impl InputQueue {
    pub(crate) fn new(cap: usize) -> Arc<Self> {
        Arc::new(InputQueue {
            state: Mutex::default(),
            to_consumer: Notify::new(),
            to_producer: Notify::new(),
            cap: cap.max(READ_CHUNK),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends `data`, waiting while the queue is over its cap.
    async fn push(&self, data: Bytes) {
        loop {
            let wait = self.to_producer.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return;
                }
                if s.bytes < self.cap {
                    s.bytes += data.len();
                    s.chunks.push_back(data);
                    drop(s);
                    self.to_consumer.notify_one();
                    return;
                }
            }
            wait.await;
        }
    }

    fn set_eof(&self) {
        self.lock().eof = true;
        self.to_consumer.notify_one();
    }

    /// Marks the channel closed: the consumer sees [`Next::Closed`] and a
    /// waiting producer gives up.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.to_consumer.notify_one();
        self.to_producer.notify_one();
    }

    /// Returns the next item for the consumer, waiting for one.
    pub(crate) async fn next(&self) -> Next {
        loop {
            let wait = self.to_consumer.notified();
            {
                let mut s = self.lock();
                if s.closed {
                    return Next::Closed;
                }
                if let Some(chunk) = s.chunks.pop_front() {
                    s.bytes -= chunk.len();
                    drop(s);
                    self.to_producer.notify_one();
                    return Next::Data(chunk);
                }
                if s.eof {
                    return Next::Eof;
                }
            }
            wait.await;
        }
    }
}

/// Moves everything the client sends on a channel into `queue` until the
/// channel closes or the connection ends. Holds `permit` (the channel's slot
/// in the per-connection cap) for the channel's lifetime.
pub(crate) async fn drain(
    mut read: ChannelReadHalf,
    queue: Arc<InputQueue>,
    closed: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) {
    let _permit = permit;
    loop {
        let msg = tokio::select! {
            m = read.wait() => m,
            () = closed.cancelled() => None,
        };
        match msg {
            Some(ChannelMsg::Data { data }) => {
                tokio::select! {
                    () = queue.push(data) => {}
                    () = closed.cancelled() => break,
                }
            }
            Some(ChannelMsg::Eof) => queue.set_eof(),
            Some(ChannelMsg::Close) | None => break,
            // Requests are answered by the handler callbacks; extended data
            // from a client has no meaning for a server channel.
            Some(_) => {}
        }
    }
    queue.close();
}

/// How [`feed`] ends its writer when the client sends EOF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnEof {
    /// Shut the writer down (close a pipe, half-close a socket).
    Shutdown,
    /// Keep it open (a pty: EOF is the user's ^D, sent as data).
    Ignore,
}

/// Writes queued client input to `sink` until EOF, close or cancellation.
pub(crate) async fn feed<W: AsyncWrite + Unpin>(
    queue: Arc<InputQueue>,
    mut sink: W,
    on_eof: OnEof,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            n = queue.next() => n,
            () = cancel.cancelled() => return,
        };
        match next {
            Next::Data(d) => {
                let ok = tokio::select! {
                    r = sink.write_all(&d) => r.is_ok(),
                    () = cancel.cancelled() => return,
                };
                if !ok {
                    // The consumer is gone (process exited, socket reset):
                    // keep draining so the channel never backs up.
                    discard(&queue, &cancel).await;
                    return;
                }
            }
            Next::Eof => {
                if on_eof == OnEof::Shutdown {
                    let _ = sink.shutdown().await;
                    drop(sink);
                }
                return;
            }
            Next::Closed => return,
        }
    }
}

async fn discard(queue: &InputQueue, cancel: &CancellationToken) {
    loop {
        let next = tokio::select! {
            n = queue.next() => n,
            () = cancel.cancelled() => return,
        };
        if !matches!(next, Next::Data(_)) {
            return;
        }
    }
}

/// Copies `source` to the channel (stdout as data, `ext = Some(1)` as
/// stderr) until EOF, a read error or cancellation. Returns the bytes sent.
/// Waiting for the client's window happens here, in this task only.
pub(crate) async fn pump_out<R: AsyncRead + Unpin>(
    mut source: R,
    write: &ChannelWriteHalf<Msg>,
    ext: Option<u32>,
    cancel: &CancellationToken,
) -> u64 {
    let mut total = 0u64;
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = tokio::select! {
            r = source.read(&mut buf) => match r {
                Ok(0) | Err(_) => return total,
                Ok(n) => n,
            },
            () = cancel.cancelled() => return total,
        };
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or(&[]));
        let sent = tokio::select! {
            r = async {
                match ext {
                    None => write.data_bytes(chunk).await,
                    Some(e) => write.extended_data_bytes(e, chunk).await,
                }
            } => r.is_ok(),
            () = cancel.cancelled() => false,
        };
        if !sent {
            return total;
        }
        total += n as u64;
    }
}

/// Joins a channel and a local byte stream (a forwarded TCP connection or an
/// agent socket) in both directions, then closes the channel. Returns the
/// bytes sent to the client. Ends early when the client closes the channel
/// or `closed` (the connection) is cancelled.
pub(crate) async fn bridge<S>(
    stream: S,
    read: ChannelReadHalf,
    write: ChannelWriteHalf<Msg>,
    input_cap: usize,
    closed: CancellationToken,
    permit: Option<OwnedSemaphorePermit>,
) -> u64
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let queue = InputQueue::new(input_cap);
    let done = closed.child_token();
    let drain_task = tokio::spawn({
        let (queue, done) = (queue.clone(), done.clone());
        async move {
            drain(read, queue, done.clone(), permit).await;
            // The client closed the channel: stop the other direction too.
            done.cancel();
        }
    });
    let feed_task = tokio::spawn(feed(queue, wr, OnEof::Shutdown, done.clone()));
    let sent = pump_out(rd, &write, None, &done).await;
    if !done.is_cancelled() {
        let _ = write.eof().await;
        // The other direction ends when the client sends EOF or closes.
        tokio::select! {
            _ = feed_task => {}
            () = done.cancelled() => {}
        }
        let _ = write.close().await;
    }
    done.cancel();
    let _ = drain_task.await;
    sent
}
