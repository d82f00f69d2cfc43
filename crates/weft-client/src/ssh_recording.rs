//! Uploading a finished SSH session recording to control
//! (docs/PROTOCOL.md §"SSH recordings"): on a connection of its own, like an
//! SSH check, so a large file never delays the map stream.
//!
//! The file is read from disk one [`SSH_RECORDING_CHUNK`] at a time and each
//! chunk waits for control's ack before the next is read: at most one chunk
//! is in memory or in flight, whatever the file's size. Every upload starts
//! at offset 0 (control starts the file over), so a broken connection costs
//! a retry of the whole file, which is the node's to schedule.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;
use weft_types::NodePublic;
use weft_types::control::{SSH_RECORDING_CHUNK, SshRecordingChunk, SshRecordingInfo};

use crate::{ClientError, ConnectOptions, Session, SessionEvent, Target};

/// How long one chunk waits for its ack.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(30);

/// How an upload ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Control keeps the recording; this many bytes.
    Stored {
        /// The file's size.
        bytes: u64,
    },
    /// Control refused it; retrying does not help until the reason changes.
    Refused {
        /// Control's reason.
        message: String,
    },
}

/// What went wrong on the node's side of an upload.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The connection or the conversation failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The recording file cannot be read.
    #[error("cannot read the recording {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Control did not answer a chunk in time.
    #[error("the control server did not acknowledge a recording chunk within {0:?}")]
    Timeout(Duration),
}

/// Uploads the finished recording `id` from `path` for the node `node_key`.
///
/// # Errors
/// [`UploadError`]; the caller keeps the file and tries again later.
pub async fn upload_ssh_recording(
    target: &Target,
    opts: &ConnectOptions,
    node_key: NodePublic,
    id: &str,
    path: &Path,
    info: SshRecordingInfo,
) -> Result<UploadOutcome, UploadError> {
    let file_err = |source| UploadError::File {
        path: path.display().to_string(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(file_err)?;
    let len = file.metadata().await.map_err(file_err)?.len();
    let mut session = Session::for_checks(target, opts).await?;
    let mut offset = 0u64;
    let mut buf = vec![0u8; SSH_RECORDING_CHUNK];
    let mut info = Some(info);
    loop {
        let want = usize::try_from((len - offset).min(SSH_RECORDING_CHUNK as u64))
            .unwrap_or(SSH_RECORDING_CHUNK);
        file.read_exact(&mut buf[..want]).await.map_err(file_err)?;
        let last = offset + want as u64 == len;
        session.send_ssh_recording(SshRecordingChunk {
            node_key,
            id: id.to_owned(),
            offset,
            data: buf[..want].to_vec(),
            done: if last { info.take() } else { None },
        });
        let ack = loop {
            let ev = tokio::time::timeout(ACK_TIMEOUT, session.next_event())
                .await
                .map_err(|_| UploadError::Timeout(ACK_TIMEOUT))??;
            match ev {
                SessionEvent::SshRecording(a) if a.id == id => break a,
                SessionEvent::SshRecording(_) => {
                    return Err(ClientError::Unexpected {
                        url: session.url().to_owned(),
                        what: "an ack for another recording",
                    }
                    .into());
                }
                _ => continue,
            }
        };
        if let Some(message) = ack.refused {
            return Ok(UploadOutcome::Refused { message });
        }
        offset += want as u64;
        if ack.received != offset {
            return Err(ClientError::Unexpected {
                url: session.url().to_owned(),
                what: "a recording ack for another offset",
            }
            .into());
        }
        if last {
            if !ack.stored {
                return Err(ClientError::Unexpected {
                    url: session.url().to_owned(),
                    what: "no confirmation that the recording is stored",
                }
                .into());
            }
            let _ = session.close().await;
            return Ok(UploadOutcome::Stored { bytes: len });
        }
    }
}
