//! `weft down`: disconnect. The choice persists: weftd stays down across
//! restarts until `weft up`.

use std::process::ExitCode;

use weft_localapi::{BackendState, PrefsPatch};

use crate::ctx::Ctx;
use crate::out::errln;

/// Runs `weft down`.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = ctx.api(ctx.client.status().await)?;
    if status.backend_state == BackendState::Stopped {
        errln!("Weft was already stopped.");
        return Ok(ExitCode::SUCCESS);
    }
    let patch = PrefsPatch {
        want_running: Some(false),
        ..PrefsPatch::default()
    };
    ctx.api(ctx.client.edit_prefs(&patch).await)?;
    Ok(ExitCode::SUCCESS)
}
