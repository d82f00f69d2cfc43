//! SSH session recordings as the admin sees them (`GET /ssh/sessions`,
//! `GET /ssh/sessions/{id}`, `GET /ssh/sessions/{id}/cast`;
//! `weft-control ssh sessions list|show|play`).

use weft_control_store::{SshRecording, SshRecordingPage};
use weft_types::UnixMillis;
use weft_types::control::is_auth_id;

use super::types::{SshSessionList, SshSessionView};
use super::{Admin, AdminError};
use crate::recordings::cast_path;

/// Sessions per page unless asked otherwise.
pub const DEFAULT_PAGE: u32 = 50;
/// The most sessions one page holds.
pub const MAX_PAGE: u32 = 500;

impl Admin {
    /// Lists recorded SSH sessions, newest first: `limit` of them (default
    /// [`DEFAULT_PAGE`], at most [`MAX_PAGE`]) after the cursor `before`
    /// (the `next` of the previous page).
    ///
    /// # Errors
    /// `invalid` for a bad limit or cursor.
    pub async fn list_ssh_sessions(
        &self,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<SshSessionList, AdminError> {
        let limit = limit.unwrap_or(DEFAULT_PAGE);
        if limit == 0 || limit > MAX_PAGE {
            return Err(AdminError::invalid(format!(
                "limit must be 1 to {MAX_PAGE}"
            )));
        }
        let before = before.map(parse_cursor).transpose()?;
        let rows = self
            .ctx
            .store
            .list_ssh_recordings(&SshRecordingPage { limit, before })
            .await?;
        let next = (rows.len() == limit as usize)
            .then(|| rows.last().map(|r| format!("{}.{}", r.started.0, r.id)))
            .flatten();
        Ok(SshSessionList {
            sessions: rows.iter().map(view).collect(),
            next,
        })
    }

    /// Returns one recorded session's metadata.
    ///
    /// # Errors
    /// `invalid` for a malformed id, `not_found` for an unknown one.
    pub async fn ssh_session(&self, id: &str) -> Result<SshSessionView, AdminError> {
        self.recording(id).await.map(|r| view(&r))
    }

    /// Returns one recorded session's asciicast file.
    ///
    /// # Errors
    /// As [`Admin::ssh_session`]; `not_found` when the file is gone.
    pub async fn ssh_session_cast(&self, id: &str) -> Result<Vec<u8>, AdminError> {
        let r = self.recording(id).await?;
        let path = cast_path(&self.ctx.config.state_dir, &r.id);
        tokio::fs::read(&path).await.map_err(|e| {
            AdminError::not_found(format!(
                "the recording file {} cannot be read ({e}); the index still lists it",
                path.display()
            ))
        })
    }

    async fn recording(&self, id: &str) -> Result<SshRecording, AdminError> {
        if !is_auth_id(id) {
            return Err(AdminError::invalid(format!(
                "invalid session id {id:?}: expected 32 lowercase hex digits (see weft-control ssh sessions list)"
            )));
        }
        self.ctx.store.ssh_recording(id).await?.ok_or_else(|| {
            AdminError::not_found(format!(
                "no recorded SSH session {id}; see them with: weft-control ssh sessions list"
            ))
        })
    }
}

fn parse_cursor(s: &str) -> Result<(UnixMillis, String), AdminError> {
    s.split_once('.')
        .and_then(|(t, id)| Some((UnixMillis(t.parse().ok()?), id)))
        .filter(|(_, id)| is_auth_id(id))
        .map(|(t, id)| (t, id.to_owned()))
        .ok_or_else(|| {
            AdminError::invalid(format!(
                "invalid cursor {s:?}: pass the `next` of the previous page"
            ))
        })
}

fn view(r: &SshRecording) -> SshSessionView {
    SshSessionView {
        id: r.id.clone(),
        node_id: r.node.map(|n| n.0),
        node: r.node_name.clone(),
        src_user: r.src_user.clone(),
        src_node: r.src_node.clone(),
        src_addr: r.src_addr.clone(),
        ssh_user: r.ssh_user.clone(),
        local_user: r.local_user.clone(),
        kind: r.kind.clone(),
        command: r.command.clone(),
        input: r.input,
        started: r.started.0,
        ended: r.ended.map(|t| t.0),
        size_bytes: r.size_bytes,
        failure: r.failure.clone(),
        received: r.received.0,
    }
}
