//! The UAPI server: `/var/run/wireguard/<iface>.sock`, the way `wg(8)`
//! finds and configures userspace WireGuard implementations.
//!
//! One thread accepts; each connection gets its own thread (at most
//! [`MAX_CONNECTIONS`]), which reads requests with [`framing`], asks the
//! [`Handler`], and writes the reply. Sockets use short read timeouts so
//! every thread notices shutdown promptly; idle connections are closed.

use std::io::{self, BufReader, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::stat::{Mode, umask};
use weft_net::Notify;

use super::framing::{self, Event, Framer, Line, LineReader, Request};

/// Where `wg(8)` looks for userspace devices.
pub const DEFAULT_DIR: &str = "/var/run/wireguard";
/// Concurrent connections served; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 32;
/// How often blocked threads look at the stop flag.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// An idle connection (no request in flight) is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A refused `set`: the errno for the reply (either sign; it is sent
/// negative, as wireguard-go does) and a reason for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errno: i32,
    pub reason: String,
}

/// What the server asks the device to do.
pub trait Handler: Send + Sync + 'static {
    /// Returns the `get=1` body: `key=value` lines, each ending in `\n`.
    fn get(&self) -> String;
    /// Applies a `set=1` body atomically.
    ///
    /// # Errors
    /// A [`Refusal`]; the device must then be unchanged.
    fn set(&self, body: &str) -> Result<(), Refusal>;
    /// Returns the `weft-stats=1` body, lines ending in `\n`.
    fn stats(&self) -> String;
}

/// The socket file; removed on drop if it is still the one we created.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    /// Device, inode and change time: inode numbers get reused at once on
    /// some filesystems, so the time tells a replacement apart.
    identity: (u64, u64, i64, i64),
}

fn identity(m: &std::fs::Metadata) -> (u64, u64, i64, i64) {
    (m.dev(), m.ino(), m.ctime(), m.ctime_nsec())
}

impl SocketFile {
    /// Returns the socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if identity(&m) == self.identity => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot remove UAPI socket");
                }
            }
            // Replaced by someone else, or already gone: not ours to remove.
            _ => {}
        }
    }
}

/// Returns the socket path for `iface` in `dir`.
pub fn socket_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.sock"))
}

/// Fails if a live process serves `path`; removes a stale socket left by a
/// dead one.
///
/// # Errors
/// The path is live, is not a socket, or cannot be removed.
pub fn clear_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "{} exists and is not a socket; remove it if nothing uses it",
            path.display()
        );
    }
    match UnixStream::connect(path) {
        Ok(_) => bail!(
            "{} is served by a running process: is another daemon running for this interface?",
            path.display()
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale UAPI socket");
            std::fs::remove_file(path)
                .with_context(|| format!("cannot remove stale socket {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot probe {}", path.display())),
    }
}

/// Creates `dir` (0755) if needed and binds `path` with mode 0600.
///
/// # Errors
/// Directory or bind failures, with the path.
pub fn bind(dir: &Path, path: &Path) -> anyhow::Result<(UnixListener, SocketFile)> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot set permissions of {}", dir.display()))?;
    }
    clear_stale(path)?;
    // No window in which the socket is reachable with looser permissions.
    let old = umask(Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    umask(old);
    let listener = bound.with_context(|| format!("cannot bind UAPI socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod {}", path.display()))?;
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("cannot stat {}", path.display()))?;
    let file = SocketFile {
        path: path.to_owned(),
        identity: identity(&meta),
    };
    listener
        .set_nonblocking(true)
        .context("cannot make the UAPI socket non-blocking")?;
    Ok((listener, file))
}

/// A running UAPI server.
pub struct Server {
    stop: Arc<Notify>,
    acceptor: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts serving `listener` (from [`bind`]) with `handler`.
    ///
    /// # Errors
    /// Thread or eventfd creation failures.
    pub fn start<H: Handler>(listener: UnixListener, handler: Arc<H>) -> anyhow::Result<Self> {
        let stop = Arc::new(Notify::new().context("cannot create an eventfd")?);
        let stop2 = Arc::clone(&stop);
        let acceptor = std::thread::Builder::new()
            .name("weft-uapi".into())
            .spawn(move || accept_loop(&listener, &handler, &stop2))
            .context("cannot spawn the UAPI thread")?;
        Ok(Self {
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// Stops accepting, ends every connection and waits for the threads.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.notify();
        if let Some(t) = self.acceptor.take()
            && t.join().is_err()
        {
            tracing::error!("UAPI thread panicked");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn accept_loop<H: Handler>(listener: &UnixListener, handler: &Arc<H>, stop: &Arc<Notify>) {
    let active = Arc::new(AtomicUsize::new(0));
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !stop.is_set() {
        connections.retain(|c| !c.is_finished());
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            let _ = wait_readable(stop.as_fd(), POLL_INTERVAL);
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => {
                active.fetch_add(1, Ordering::AcqRel);
                let (handler, stop, active2) =
                    (Arc::clone(handler), Arc::clone(stop), Arc::clone(&active));
                let spawned = std::thread::Builder::new()
                    .name("weft-uapi-conn".into())
                    .spawn(move || {
                        if let Err(e) = serve(stream, &*handler, &stop) {
                            tracing::debug!(error = %e, "UAPI connection ended with an error");
                        }
                        active2.fetch_sub(1, Ordering::AcqRel);
                    });
                match spawned {
                    Ok(t) => connections.push(t),
                    Err(e) => {
                        active.fetch_sub(1, Ordering::AcqRel);
                        tracing::warn!(error = %e, "cannot spawn a UAPI connection thread");
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Sleep until a client connects or we are stopped.
                let mut fds = [
                    PollFd::new(listener.as_fd(), PollFlags::POLLIN),
                    PollFd::new(stop.as_fd(), PollFlags::POLLIN),
                ];
                let _ = nix::poll::poll(&mut fds, PollTimeout::NONE);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "UAPI accept failed");
                let _ = wait_readable(stop.as_fd(), POLL_INTERVAL);
            }
        }
    }
    for c in connections {
        let _ = c.join();
    }
}

fn wait_readable(fd: std::os::fd::BorrowedFd<'_>, timeout: Duration) -> nix::Result<i32> {
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    nix::poll::poll(
        &mut fds,
        PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX),
    )
}

/// Serves one connection until the peer hangs up, misbehaves, idles out or
/// the server stops.
fn serve<H: Handler + ?Sized>(stream: UnixStream, handler: &H, stop: &Notify) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut lines = LineReader::new();
    let mut framer = Framer::new();
    let mut idle = Duration::ZERO;
    loop {
        if stop.is_set() {
            return Ok(());
        }
        let event = match lines.next_line(&mut reader) {
            Ok(Line::Text(l)) => {
                idle = Duration::ZERO;
                framer.line(l)
            }
            Ok(Line::Overlong) => framer.overlong_line(),
            Ok(Line::Eof) => {
                if !framer.is_idle() {
                    tracing::warn!("UAPI client hung up in the middle of a request; ignored");
                }
                return Ok(());
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                idle += POLL_INTERVAL;
                if idle >= IDLE_TIMEOUT {
                    tracing::debug!("closing idle UAPI connection");
                    return Ok(());
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let Some(event) = event else { continue };
        let reply = match event {
            Event::Request(Request::Get) => with_errno(handler.get(), 0),
            Event::Request(Request::WeftStats) => with_errno(handler.stats(), 0),
            Event::Request(Request::Set(body)) => match handler.set(&body) {
                Ok(()) => errno_only(0),
                Err(r) => {
                    tracing::warn!(errno = r.errno, reason = %r.reason, "UAPI set refused");
                    errno_only(r.errno)
                }
            },
            Event::Reject { errno, reason } => {
                tracing::warn!(errno, %reason, "malformed UAPI request");
                errno_only(errno)
            }
            Event::Close { errno, reason } => {
                tracing::warn!(%reason, "malformed UAPI request; closing the connection");
                if let Some(errno) = errno {
                    writer.write_all(errno_only(errno).as_bytes())?;
                }
                return Ok(());
            }
        };
        writer.write_all(reply.as_bytes())?;
    }
}

fn with_errno(mut body: String, errno: i32) -> String {
    if !body.is_empty() && !body.ends_with('\n') {
        body.push('\n');
    }
    body.push_str(&errno_only(errno));
    body
}

/// Formats the status line. wireguard-go sends errors as negative errnos
/// (`errno=-22`) and `wg(8)` negates the number to report it; a positive
/// value from the core is normalized to that convention.
fn errno_only(errno: i32) -> String {
    format!("errno={}\n\n", -errno.saturating_abs())
}

/// Sends one request and returns the reply body (without the errno line).
///
/// # Errors
/// Connection failures, a malformed reply, or a non-zero errno.
pub fn request(path: &Path, request: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "cannot connect to {}: is the daemon running?",
            path.display()
        )
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .context("cannot set a read timeout")?;
    stream
        .write_all(request.as_bytes())
        .context("cannot send the request")?;
    let mut reader = BufReader::new(stream);
    let mut lines = LineReader::new();
    let mut body = String::new();
    loop {
        match lines
            .next_line(&mut reader)
            .context("cannot read the reply")?
        {
            Line::Text(l) => {
                let l = std::str::from_utf8(l).context("reply is not UTF-8")?;
                if let Some(errno) = l.strip_prefix("errno=") {
                    let errno: i32 = errno.parse().context("malformed errno line")?;
                    if errno != 0 {
                        bail!(
                            "the daemon refused the request: {} (errno={errno})",
                            io::Error::from_raw_os_error(errno.saturating_abs())
                        );
                    }
                    return Ok(body);
                }
                body.push_str(l);
                body.push('\n');
            }
            Line::Overlong => bail!("reply line longer than {} bytes", framing::MAX_LINE),
            Line::Eof => bail!("the daemon closed the connection without a reply"),
        }
    }
}

#[cfg(test)]
mod tests;
