//! Uploading SSH session recordings to control (docs/PROTOCOL.md §"SSH
//! recordings", docs/ARCHITECTURE.md "SSH session recording").
//!
//! The file on the node is the source of truth; the upload may lag. When a
//! recording ends, [`UploadSink::finished`] writes `<id>.upload.json` (its
//! metadata, 0600) next to `<id>.cast` and wakes the uploader; the marker
//! is what is still to be sent. The uploader sends one recording at a time
//! ([`weft_client::upload_ssh_recording`]: its own connection, one 16 KiB
//! chunk in flight) and removes the marker once control has stored it (or
//! refused it for good, e.g. too large: logged; the node keeps the file).
//!
//! Bounded: a session never waits for control (the sink only writes the
//! marker); memory holds no queue (the markers on disk are the queue, read
//! [`MAX_PER_PASS`] at a time); when control is slow or away, the uploader
//! retries with backoff from 1 s up to [`MAX_BACKOFF`], and after a restart
//! it picks up the markers left behind. Uploaded `.cast` files stay on the
//! node (the operator prunes them).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use weft_client::{ConnectOptions, UploadOutcome};
use weft_ssh::{FinishedRecording, RecordingMeta, RecordingSink};
use weft_types::UnixMillis;
use weft_types::control::SshRecordingInfo;

use super::ssh_check::ControlCheckHook;

/// The marker of a recording still to be uploaded.
const MARKER_SUFFIX: &str = ".upload.json";

/// The most markers one pass reads (the rest wait for the next pass).
pub const MAX_PER_PASS: usize = 64;

/// The longest wait between attempts while control is unreachable.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// The [`RecordingSink`] weftd gives the SSH server.
#[derive(Debug)]
pub struct UploadSink {
    wake: Arc<Notify>,
}

impl RecordingSink for UploadSink {
    fn finished(&self, rec: FinishedRecording) {
        let marker = marker_path(&rec.path);
        let write = serde_json::to_vec(&rec.meta)
            .map_err(std::io::Error::other)
            .and_then(|json| write_private(&marker, &json));
        match write {
            Ok(()) => self.wake.notify_one(),
            Err(e) => tracing::warn!(
                recording = %rec.meta.id,
                path = %marker.display(),
                error = %e,
                "cannot queue the ssh recording for upload to control; it stays on this node only"
            ),
        }
    }
}

fn marker_path(cast: &Path) -> PathBuf {
    cast.with_extension(&MARKER_SUFFIX[1..])
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Starts the uploader for `dir`; it ends when `stop` becomes true.
pub fn spawn(dir: PathBuf, hook: ControlCheckHook, mut stop: watch::Receiver<bool>) -> UploadSink {
    let wake = Arc::new(Notify::new());
    let waker = Arc::clone(&wake);
    tokio::spawn(async move {
        let opts = ConnectOptions::default();
        let mut backoff = Duration::from_secs(1);
        loop {
            let wait = match pass(&dir, &hook, &opts).await {
                Ok(more) if more => Duration::ZERO,
                Ok(_) => {
                    backoff = Duration::from_secs(1);
                    Duration::MAX
                }
                Err(()) => {
                    let w = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    w
                }
            };
            let sleep = async {
                if wait == Duration::MAX {
                    std::future::pending::<()>().await;
                } else {
                    tokio::time::sleep(wait).await;
                }
            };
            tokio::select! {
                () = waker.notified() => {}
                () = sleep => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
    UploadSink { wake }
}

/// Uploads what the markers in `dir` name. `Ok(true)`: more are waiting;
/// `Err`: control could not be reached (try again later).
async fn pass(dir: &Path, hook: &ControlCheckHook, opts: &ConnectOptions) -> Result<bool, ()> {
    let markers = match markers(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot read the ssh recordings directory");
            return Err(());
        }
    };
    let more = markers.len() >= MAX_PER_PASS;
    for marker in markers {
        let Some(id) = marker
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(MARKER_SUFFIX))
            .map(str::to_owned)
        else {
            continue;
        };
        let meta: RecordingMeta = match std::fs::read(&marker)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(path = %marker.display(), error = %e, "unreadable ssh recording upload marker; removing it (the recording stays on this node)");
                let _ = std::fs::remove_file(&marker);
                continue;
            }
        };
        let Some((target, node_key)) = hook.control_target() else {
            tracing::debug!("ssh recording upload waits for the control connection");
            return Err(());
        };
        let cast = dir.join(format!("{id}.cast"));
        let info = info(&meta);
        match weft_client::upload_ssh_recording(&target, opts, node_key, &id, &cast, info).await {
            Ok(UploadOutcome::Stored { bytes }) => {
                tracing::info!(recording = %id, bytes, "ssh recording uploaded to control");
                let _ = std::fs::remove_file(&marker);
            }
            Ok(UploadOutcome::Refused { message }) => {
                tracing::warn!(recording = %id, %message, "control refused the ssh recording; it stays on this node only");
                let _ = std::fs::remove_file(&marker);
            }
            Err(weft_client::UploadError::File { path, source }) => {
                tracing::warn!(recording = %id, %path, error = %source, "cannot read the ssh recording to upload it; giving up on it");
                let _ = std::fs::remove_file(&marker);
            }
            Err(e) => {
                tracing::info!(recording = %id, error = %e, "ssh recording upload to control failed; will retry");
                return Err(());
            }
        }
    }
    Ok(more)
}

/// Returns up to [`MAX_PER_PASS`] markers in `dir`, oldest name first.
fn markers(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(MARKER_SUFFIX))
        {
            out.push(p);
            if out.len() >= MAX_PER_PASS {
                break;
            }
        }
    }
    out.sort();
    Ok(out)
}

fn info(m: &RecordingMeta) -> SshRecordingInfo {
    SshRecordingInfo {
        src_user: m.src_user.clone(),
        src_node: m.src_node.clone(),
        src_addr: m.src_addr.clone(),
        ssh_user: m.ssh_user.clone(),
        local_user: m.local_user.clone(),
        kind: m.kind.clone(),
        command: m.command.clone(),
        input: m.input,
        started: UnixMillis(m.started_ms),
        ended: m.ended_ms.map(UnixMillis),
        failure: m.failure.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_sits_next_to_the_cast_file() {
        assert_eq!(
            marker_path(Path::new("/s/recordings/0123.cast")),
            PathBuf::from("/s/recordings/0123.upload.json")
        );
    }
}
