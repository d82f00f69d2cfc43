//! `weft debug`: views for debugging. `debug prefs` prints the current
//! profile's prefs and persisted identity as JSON, private keys redacted by
//! the daemon.

use std::process::ExitCode;

use crate::ctx::Ctx;
use crate::out;

#[derive(Debug, clap::Args)]
pub struct DebugArgs {
    #[command(subcommand)]
    pub command: DebugCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DebugCommand {
    /// Print the current profile's prefs as JSON (private keys redacted)
    Prefs,
}

/// Runs `weft debug …`.
pub async fn run(args: DebugArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match args.command {
        DebugCommand::Prefs => {
            let prefs = ctx.api(ctx.client.debug_prefs().await)?;
            out::json(&prefs)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
