//! Session recording: a shell or exec session under a rule with a
//! `recorder` writes an asciicast v2 file ([`cast`]) into
//! [`SshConfig::recordings_dir`](crate::SshConfig::recordings_dir) (0700,
//! files 0600), and when it ends the file is handed to the
//! [`RecordingSink`] (weftd uploads it to control).
//!
//! What is recorded: everything the session's process writes (stdout and
//! stderr, or the pty) as `"o"` events, window changes as `"r"` events,
//! and, when the rule says `"input": true`, what the client sends as `"i"`
//! events. SFTP sessions and forwarded connections are not terminals and are
//! not recorded; under an enforcing rule the SFTP subsystem is refused.
//!
//! Fail closed. Under `"enforce": true` a session whose file cannot be
//! created is not started (the client reads why on stderr), and a session
//! whose file can no longer be written (a full disk) is ended: its process
//! group is hung up and the client reads why on its terminal; the other
//! sessions go on. Under `"enforce": false` both only log a warning and the
//! session continues unrecorded.

pub mod cast;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use weft_types::filter::SshRecorder;

use cast::{CastHeader, CastWriter, Stream};

/// What a recording is of; kept with the file and sent to control.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordingMeta {
    /// 32 lowercase hex digits; also the file's name (`<id>.cast`).
    pub id: String,
    /// The SSH connection on this node (the `conn` of its audit lines).
    pub conn_id: u64,
    /// Who logged in: a user login, tags, or `local uid N`.
    pub src_user: String,
    /// The stable id of the node the connection came from.
    pub src_node_id: String,
    /// Its name.
    pub src_node: String,
    /// Its tailnet address.
    pub src_addr: String,
    /// The login name the client asked for.
    pub ssh_user: String,
    /// The local account the session ran as.
    pub local_user: String,
    /// `shell` or `exec`.
    pub kind: String,
    /// The command of an exec session.
    pub command: Option<String>,
    /// Whether input was recorded too.
    pub input: bool,
    /// Unix milliseconds at the start.
    pub started_ms: i64,
    /// Unix milliseconds at the end (`None` while running).
    pub ended_ms: Option<i64>,
    /// Why the recording stopped before the session did, if it did.
    pub failure: Option<String>,
}

/// A recording whose session has ended.
#[derive(Debug, Clone)]
pub struct FinishedRecording {
    /// The `.cast` file.
    pub path: PathBuf,
    /// What it is of.
    pub meta: RecordingMeta,
}

/// Where finished recordings go (weftd: an upload to control).
pub trait RecordingSink: Send + Sync + std::fmt::Debug + 'static {
    /// Takes a finished recording; must not block (spawn the work).
    fn finished(&self, rec: FinishedRecording);
}

/// Creates `dir` if needed and makes it 0700, owned by us.
///
/// # Errors
/// The directory cannot be created or is not a directory.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let md = std::fs::metadata(dir)?;
    if !md.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    if md.permissions().mode() & 0o777 != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Checks that a recording can be created in `dir` now (the directory is
/// prepared, and a probe file created and removed), so that a login under an
/// enforcing rule is refused at authentication, with its reason, when nothing
/// could be recorded. The session start checks again (the disk may fill in
/// between) and fails closed there too.
///
/// # Errors
/// What stands in the way, with the path.
pub fn probe_dir(dir: &Path) -> Result<(), String> {
    let at = |e: io::Error, p: &Path| format!("{}: {e}", p.display());
    prepare_dir(dir).map_err(|e| at(e, dir))?;
    let probe = dir.join(format!(".probe-{}", new_id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&probe)
        .map_err(|e| at(e, &probe))?;
    std::fs::remove_file(&probe).map_err(|e| at(e, &probe))
}

/// One session's recording. Shared by the output and input taps and the
/// window-change handler; the first write error under an enforcing rule
/// cancels [`Recording::broken`].
#[derive(Debug)]
pub(crate) struct Recording {
    // --- set once in `create` ---
    start: Instant,
    spec: SshRecorder,
    path: PathBuf,
    broken: CancellationToken,
    sink: Option<Arc<dyn RecordingSink>>,
    // --- behind the lock (never held across an await) ---
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `None` once finished or failed.
    writer: Option<CastWriter<File>>,
    meta: RecordingMeta,
}

impl Recording {
    /// Creates `<dir>/<meta.id>.cast` (0600, never an existing file) and
    /// writes the header.
    ///
    /// # Errors
    /// The directory or the file cannot be created, or the header written.
    pub(crate) fn create(
        dir: &Path,
        spec: SshRecorder,
        meta: RecordingMeta,
        header: &CastHeader,
        start: Instant,
        sink: Option<Arc<dyn RecordingSink>>,
    ) -> io::Result<Arc<Recording>> {
        prepare_dir(dir).map_err(|e| with_path(e, dir))?;
        let path = dir.join(format!("{}.cast", meta.id));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| with_path(e, &path))?;
        let writer = match CastWriter::new(file, header) {
            Ok(w) => w,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(with_path(e, &path));
            }
        };
        Ok(Arc::new(Recording {
            start,
            spec,
            path,
            broken: CancellationToken::new(),
            sink,
            inner: Mutex::new(Inner {
                writer: Some(writer),
                meta,
            }),
        }))
    }

    /// Cancelled when the recording failed under an enforcing rule: the
    /// session must end.
    pub(crate) fn broken(&self) -> &CancellationToken {
        &self.broken
    }

    /// Returns why the recording failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        self.lock().meta.failure.clone()
    }

    /// Records output.
    pub(crate) fn output(&self, data: &[u8]) {
        self.write(|w, t| w.data(Stream::Output, t, data));
    }

    /// Records input, if the rule asks for it.
    pub(crate) fn input(&self, data: &[u8]) {
        if self.spec.input {
            self.write(|w, t| w.data(Stream::Input, t, data));
        }
    }

    /// Records a window change.
    pub(crate) fn resize(&self, cols: u32, rows: u32) {
        self.write(|w, t| w.resize(t, cols, rows));
    }

    /// Closes the file (once) and hands it to the sink.
    pub(crate) fn finish(&self, ended_ms: i64) {
        let Some(done) = self.close(ended_ms) else {
            return;
        };
        tracing::info!(
            recording = %done.meta.id,
            conn = done.meta.conn_id,
            path = %done.path.display(),
            failure = ?done.meta.failure,
            "ssh session recording finished"
        );
        if let Some(sink) = &self.sink {
            sink.finished(done);
        }
    }

    /// Returns the recording's id.
    pub(crate) fn id(&self) -> String {
        self.lock().meta.id.clone()
    }

    /// Closes the file and returns what to hand to the sink (once).
    fn close(&self, ended_ms: i64) -> Option<FinishedRecording> {
        let mut inner = self.lock();
        if inner.meta.ended_ms.is_some() {
            return None;
        }
        inner.meta.ended_ms = Some(ended_ms);
        if let Some(w) = inner.writer.take()
            && let Err(e) = w.finish(self.start.elapsed()).and_then(|f| f.sync_all())
        {
            inner.meta.failure.get_or_insert_with(|| e.to_string());
        }
        Some(FinishedRecording {
            path: self.path.clone(),
            meta: inner.meta.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, f: impl FnOnce(&mut CastWriter<File>, Duration) -> io::Result<()>) {
        let t = self.start.elapsed();
        let mut inner = self.lock();
        let Some(w) = inner.writer.as_mut() else {
            return;
        };
        let Err(e) = f(w, t) else {
            return;
        };
        inner.writer = None;
        let why = format!("cannot write {}: {e}", self.path.display());
        tracing::warn!(
            recording = %inner.meta.id,
            conn = inner.meta.conn_id,
            enforce = self.spec.enforce,
            error = %e,
            "ssh session recording failed"
        );
        inner.meta.failure = Some(why);
        drop(inner);
        if self.spec.enforce {
            self.broken.cancel();
        }
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// An [`AsyncRead`] that records what passes through it as output.
/// Without a recording it only passes the bytes on.
pub(crate) struct TapRead<R> {
    inner: R,
    rec: Option<Arc<Recording>>,
}

impl<R> TapRead<R> {
    pub(crate) fn new(inner: R, rec: Option<Arc<Recording>>) -> Self {
        TapRead { inner, rec }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for TapRead<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(rec)) = (&polled, &self.rec)
            && let Some(new) = buf.filled().get(before..).filter(|b| !b.is_empty())
        {
            rec.output(new);
        }
        polled
    }
}

/// An [`AsyncWrite`] that records what is written through it as input.
/// Without a recording it only passes the bytes on.
pub(crate) struct TapWrite<W> {
    inner: W,
    rec: Option<Arc<Recording>>,
}

impl<W> TapWrite<W> {
    pub(crate) fn new(inner: W, rec: Option<Arc<Recording>>) -> Self {
        TapWrite { inner, rec }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TapWrite<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(rec)) = (&polled, &self.rec)
            && let Some(done) = buf.get(..*n).filter(|b| !b.is_empty())
        {
            rec.input(done);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Returns a fresh recording id: 32 lowercase hex digits.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    weft_types::entropy::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Returns the line a client reads when its session cannot be recorded.
pub(crate) fn refusal(what: &str, why: &str) -> String {
    format!(
        "weft: tailnet policy requires this SSH session to be recorded, but {what}: {why}; \
         the session is closed. Ask the node's admin to free space or fix the recordings \
         directory, or ask a tailnet admin about the rule's \"recorder\"."
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> RecordingMeta {
        RecordingMeta {
            id: new_id(),
            conn_id: 7,
            src_user: "alice@example.com".into(),
            src_node_id: "n1".into(),
            src_node: "laptop".into(),
            src_addr: "100.64.0.2".into(),
            ssh_user: "alice".into(),
            local_user: "alice".into(),
            kind: "shell".into(),
            command: None,
            input: false,
            started_ms: 1,
            ended_ms: None,
            failure: None,
        }
    }

    fn header() -> CastHeader {
        CastHeader {
            version: 2,
            width: 80,
            height: 24,
            timestamp: 0,
            command: None,
            title: None,
            env: Default::default(),
        }
    }

    #[test]
    fn files_are_0600_in_a_0700_directory_and_input_is_kept_only_when_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("recordings");
        let spec = SshRecorder {
            input: false,
            enforce: true,
        };
        let rec =
            Recording::create(&dir, spec, meta(), &header(), crate::server::now().0, None).unwrap();
        rec.output(b"hello\r\n");
        rec.input(b"secret\r");
        rec.resize(100, 30);
        let done = rec.close(2).unwrap();
        assert!(rec.close(3).is_none(), "finished once");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&done.path), 0o600);
        let text = std::fs::read_to_string(&done.path).unwrap();
        assert!(text.contains("hello"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("\"r\", \"100x30\""), "{text}");
        assert_eq!(done.meta.ended_ms, Some(2));
        assert!(!rec.broken().is_cancelled());
    }

    #[test]
    fn an_unwritable_directory_refuses_the_recording() {
        let tmp = tempfile::tempdir().unwrap();
        let not_dir = tmp.path().join("file");
        std::fs::write(&not_dir, b"").unwrap();
        let spec = SshRecorder {
            input: true,
            enforce: true,
        };
        let err = Recording::create(
            &not_dir,
            spec,
            meta(),
            &header(),
            crate::server::now().0,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&*not_dir.to_string_lossy()), "{err}");
    }
}
