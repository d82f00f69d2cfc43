//! `weft logout`: expire this node's key at the control server and remove
//! the current login profile.

use std::process::ExitCode;

use crate::ctx::Ctx;
use crate::out::errln;
use crate::spinner::spin;

/// Runs `weft logout`.
pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    ctx.api(spin("Logging out", ctx.client.logout()).await)?;
    errln!("Logged out.");
    Ok(ExitCode::SUCCESS)
}
