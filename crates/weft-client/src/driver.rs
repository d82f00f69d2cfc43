//! The one I/O loop of the crate: a task per connection that moves bytes
//! between the upgraded stream and a sans-IO core (the conversation of
//! [`crate::Session`], or the bare channel of [`crate::Channel`]), sleeps
//! until the core's next timer, and hands the core's outputs to the owner
//! over a bounded channel (so a slow owner slows down reading instead of
//! growing a queue).

use std::time::Instant;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::ClientError;
use crate::dial::Io;
use crate::http::io_cause;

/// Reads the clock; the only place the client does. It is tokio's clock,
/// so a test on paused time moves the cores' timers too.
pub(crate) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Returns wall time in Unix milliseconds (an SSH check's `accept until`);
/// the only place the client reads wall time.
#[allow(clippy::disallowed_methods)] // the driver is where time enters
pub(crate) fn unix_now() -> weft_types::UnixMillis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    weft_types::UnixMillis(ms)
}

/// Returns the 32-byte seed of a Noise ephemeral key.
pub(crate) fn seed() -> [u8; 32] {
    weft_types::entropy::seed()
}

/// A sans-IO core the loop drives.
pub(crate) trait Core: Send + 'static {
    /// What the owner asks for.
    type Cmd: Send + 'static;
    /// What the core reports.
    type Out: Send + 'static;

    fn url(&self) -> &str;
    fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ClientError>;
    fn handle_eof(&mut self) -> Result<(), ClientError>;
    fn handle_cmd(&mut self, cmd: Self::Cmd, now: Instant) -> Result<(), ClientError>;
    fn poll_transmit(&mut self) -> Option<Vec<u8>>;
    fn poll_output(&mut self) -> Option<Self::Out>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError>;
}

/// Runs `core` over `tcp` until the connection ends, the core fails, or
/// the owner drops its command sender. The last item sent to `out` is the
/// error that ended it (or [`ClientError::Closed`] for a clean close).
/// Returns the core, so the owner can take state out of it.
pub(crate) async fn drive<C: Core>(
    mut core: C,
    mut tcp: Box<dyn Io>,
    mut cmds: mpsc::UnboundedReceiver<C::Cmd>,
    out: mpsc::Sender<Result<C::Out, ClientError>>,
) -> C {
    let mut buf = vec![0u8; 64 << 10];
    let ended: Option<ClientError> = loop {
        while let Some(bytes) = core.poll_transmit() {
            if let Err(e) = tcp.write_all(&bytes).await {
                break_with_io(&core, &e);
                let _ = out
                    .send(Err(ClientError::unreachable(core.url(), io_cause(&e))))
                    .await;
                return core;
            }
        }
        let mut owner_gone = false;
        while let Some(o) = core.poll_output() {
            if out.send(Ok(o)).await.is_err() {
                owner_gone = true;
                break;
            }
        }
        if owner_gone {
            break None;
        }
        let deadline = core.poll_timeout().map(tokio::time::Instant::from_std);
        let step = tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) => match core.handle_eof() {
                    Ok(()) => Err(ClientError::Closed { url: core.url().to_owned() }),
                    Err(e) => Err(e),
                },
                Ok(n) => core.handle_input(buf.get(..n).expect(READ_WITHIN_BUFFER), now()),
                Err(e) => Err(ClientError::unreachable(core.url(), io_cause(&e))),
            },
            cmd = cmds.recv() => match cmd {
                Some(cmd) => core.handle_cmd(cmd, now()),
                None => break None,
            },
            () = sleep_until(deadline) => core.handle_timeout(now()),
        };
        if let Err(e) = step {
            break Some(e);
        }
    };
    if let Some(e) = ended {
        // Whatever the core said last (e.g. an error message to the server
        // before closing) still goes out, best effort.
        while let Some(bytes) = core.poll_transmit() {
            if tcp.write_all(&bytes).await.is_err() {
                break;
            }
        }
        while let Some(o) = core.poll_output() {
            if out.send(Ok(o)).await.is_err() {
                break;
            }
        }
        tracing::debug!(url = core.url(), error = %e, "control connection ended");
        let _ = out.send(Err(e)).await;
    }
    let _ = tcp.shutdown().await;
    core
}

/// `read` returns at most the buffer's length.
const READ_WITHIN_BUFFER: &str = "read returned more bytes than the buffer holds";

fn break_with_io<C: Core>(core: &C, e: &std::io::Error) {
    tracing::debug!(url = core.url(), error = %e, "write to the control server failed");
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped (the owner of a connection going away ends it).
#[derive(Debug)]
pub(crate) struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    pub(crate) fn new(task: tokio::task::JoinHandle<T>) -> Self {
        Self(Some(task))
    }

    /// Waits for the task to end on its own.
    pub(crate) async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        let task = self.0.take().expect("the handle is taken only here");
        task.await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}
