//! SSH session recordings on the server (docs/PROTOCOL.md §"SSH
//! recordings"): a node uploads each finished recording in chunks on a
//! connection of its own; control writes it to
//! `<state_dir>/recordings/<id>.cast.part` (the directory 0700, files 0600),
//! renames it to `<id>.cast` once the last chunk is in, and indexes it in
//! the database (`ssh_recordings`, migration 0006).
//!
//! Rules:
//! - Only a node registered to the machine that authenticated the channel
//!   (and not expired) may upload, and the row names that node: a node
//!   cannot upload for another, and cannot replace another node's
//!   recording of the same id.
//! - A recording is at most [`MAX_RECORDING_BYTES`]; past that the upload
//!   is refused and its partial file removed (the node keeps its copy).
//! - One upload at a time per connection, chunks in order; offset 0 starts
//!   it over. A connection that closes mid-upload leaves a `.part` file
//!   that the next upload of that id overwrites.

use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt as _;
use weft_control_store::{SshRecording, StoreError};
use weft_types::control::{
    SSH_RECORDING_CHUNK, SshRecordingAck, SshRecordingChunk, SshRecordingInfo, is_auth_id,
};
use weft_types::{MachinePublic, NodeId};

use crate::ctx::Ctx;

/// The largest recording control keeps, in bytes (64 MiB).
pub const MAX_RECORDING_BYTES: u64 = 64 << 20;

/// The longest name field (user, node, login) in a recording's metadata.
const MAX_NAME_LEN: usize = 256;

/// The longest exec command or failure text kept.
const MAX_TEXT_LEN: usize = 4096;

/// The directory under the state directory that holds the cast files.
pub const RECORDINGS_DIR: &str = "recordings";

/// Returns the path of recording `id`'s cast file.
pub fn cast_path(state_dir: &Path, id: &str) -> PathBuf {
    state_dir.join(RECORDINGS_DIR).join(format!("{id}.cast"))
}

/// An upload in progress on one connection.
#[derive(Debug)]
pub(crate) struct Upload {
    id: String,
    node: NodeId,
    node_name: String,
    part: PathBuf,
    file: tokio::fs::File,
    received: u64,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Unfinished (the connection closed or the upload was refused).
        let _ = std::fs::remove_file(&self.part);
    }
}

/// Handles one chunk from the machine `mk`; `cur` is the connection's
/// upload in progress.
pub(crate) async fn chunk(
    ctx: &Ctx,
    mk: MachinePublic,
    cur: &mut Option<Upload>,
    c: SshRecordingChunk,
) -> SshRecordingAck {
    let id = c.id.clone();
    let offset = c.offset;
    match handle(ctx, mk, cur, c).await {
        Ok((received, stored)) => SshRecordingAck {
            id,
            received,
            stored,
            refused: None,
        },
        Err(why) => {
            *cur = None;
            tracing::warn!(recording = %id, offset, reason = %why, "ssh recording upload refused");
            metrics::counter!("weft_ssh_recordings_total", "result" => "refused").increment(1);
            SshRecordingAck {
                id,
                received: 0,
                stored: false,
                refused: Some(why),
            }
        }
    }
}

async fn handle(
    ctx: &Ctx,
    mk: MachinePublic,
    cur: &mut Option<Upload>,
    c: SshRecordingChunk,
) -> Result<(u64, bool), String> {
    if !is_auth_id(&c.id) {
        return Err("the recording id is not 32 lowercase hex digits".into());
    }
    if c.data.len() > SSH_RECORDING_CHUNK {
        return Err(format!(
            "a recording chunk holds at most {SSH_RECORDING_CHUNK} bytes"
        ));
    }
    if c.offset == 0 {
        *cur = None;
        *cur = Some(begin(ctx, mk, &c).await?);
    }
    let Some(up) = cur
        .as_mut()
        .filter(|u| u.id == c.id && u.received == c.offset)
    else {
        return Err(format!(
            "chunk at offset {} of recording {} does not continue an upload on this connection; \
             start again at offset 0",
            c.offset, c.id
        ));
    };
    let len = c.data.len() as u64;
    if up.received + len > MAX_RECORDING_BYTES {
        return Err(format!(
            "the recording is larger than control keeps ({} MiB); the node keeps its copy",
            MAX_RECORDING_BYTES >> 20
        ));
    }
    up.file
        .write_all(&c.data)
        .await
        .map_err(|e| server_err(&up.part, &e))?;
    up.received += len;
    let Some(info) = c.done else {
        return Ok((up.received, false));
    };
    check_info(&info)?;
    up.file
        .sync_all()
        .await
        .map_err(|e| server_err(&up.part, &e))?;
    let Some(up) = cur.take() else {
        return Err("no upload in progress".into());
    };
    let received = up.received;
    let dest = cast_path(&ctx.config.state_dir, &up.id);
    let row = SshRecording {
        id: up.id.clone(),
        node: Some(up.node),
        node_name: up.node_name.clone(),
        src_user: info.src_user,
        src_node: info.src_node,
        src_addr: info.src_addr,
        ssh_user: info.ssh_user,
        local_user: info.local_user,
        kind: info.kind,
        command: info.command,
        input: info.input,
        started: info.started,
        ended: info.ended,
        size_bytes: i64::try_from(received).unwrap_or(i64::MAX),
        failure: info.failure,
        received: ctx.clock.now(),
    };
    tokio::fs::rename(&up.part, &dest)
        .await
        .map_err(|e| server_err(&dest, &e))?;
    match ctx.store.put_ssh_recording(&row).await {
        Ok(true) => {}
        Ok(false) => {
            return Err("a recording with this id belongs to another node".into());
        }
        Err(e) => return Err(store_err(&e)),
    }
    tracing::info!(recording = %row.id, node = %row.node_name, src_user = %row.src_user, local_user = %row.local_user, bytes = received, "ssh recording stored");
    metrics::counter!("weft_ssh_recordings_total", "result" => "stored").increment(1);
    Ok((received, true))
}

/// Checks the node and opens the partial file.
async fn begin(ctx: &Ctx, mk: MachinePublic, c: &SshRecordingChunk) -> Result<Upload, String> {
    let node = match ctx.store.node_by_node_key(&c.node_key).await {
        Ok(n) if n.machine_key == mk && !n.is_expired(ctx.clock.now()) => n,
        Ok(_) | Err(StoreError::UnknownNodeKey(_)) => {
            return Err(
                "the node sending this recording is not registered to its machine (or its key expired)"
                    .into(),
            );
        }
        Err(e) => return Err(store_err(&e)),
    };
    match ctx.store.ssh_recording(&c.id).await {
        Ok(Some(r)) if r.node != Some(node.id) => {
            return Err("a recording with this id belongs to another node".into());
        }
        Ok(_) => {}
        Err(e) => return Err(store_err(&e)),
    }
    let dir = ctx.config.state_dir.join(RECORDINGS_DIR);
    prepare_dir(&dir).map_err(|e| server_err(&dir, &e))?;
    let part = dir.join(format!("{}.cast.part", c.id));
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&part)
        .map_err(|e| server_err(&part, &e))?;
    Ok(Upload {
        id: c.id.clone(),
        node: node.id,
        node_name: node.given_name.to_string(),
        part,
        file: tokio::fs::File::from_std(file),
        received: 0,
    })
}

fn check_info(i: &SshRecordingInfo) -> Result<(), String> {
    let bad = |s: &str, max: usize| s.len() > max || s.chars().any(char::is_control);
    for (what, v) in [
        ("src_user", &i.src_user),
        ("src_node", &i.src_node),
        ("src_addr", &i.src_addr),
        ("ssh_user", &i.ssh_user),
        ("local_user", &i.local_user),
        ("kind", &i.kind),
    ] {
        if bad(v, MAX_NAME_LEN) {
            return Err(format!(
                "the recording's {what} is longer than {MAX_NAME_LEN} bytes or holds control characters"
            ));
        }
    }
    for (what, v) in [("command", &i.command), ("failure", &i.failure)] {
        if v.as_deref().is_some_and(|v| v.len() > MAX_TEXT_LEN) {
            return Err(format!(
                "the recording's {what} is longer than {MAX_TEXT_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// Creates `dir` (0700) if needed and makes it 0700.
pub(crate) fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

fn server_err(path: &Path, e: &io::Error) -> String {
    tracing::error!(path = %path.display(), error = %e, "cannot store an ssh recording");
    format!("the control server cannot store the recording: {e}")
}

fn store_err(e: &StoreError) -> String {
    tracing::error!(error = %e, "cannot index an ssh recording");
    format!("the control server cannot store the recording: {e}")
}
