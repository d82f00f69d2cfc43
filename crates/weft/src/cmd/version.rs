//! `weft version`: the CLI's version, and the daemon's when it answers.

use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;

use crate::ctx::Ctx;
use crate::out::{self, errln, outln};

/// How long to wait for the daemon's answer.
const DAEMON_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Print {"cli", "daemon"} as JSON (daemon is null when unreachable)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct VersionJson<'a> {
    cli: &'a str,
    daemon: Option<&'a str>,
}

/// Runs `weft version`; succeeds even when the daemon is not reachable.
pub async fn run(args: VersionArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let cli = env!("CARGO_PKG_VERSION");
    let daemon = match tokio::time::timeout(DAEMON_WAIT, ctx.client.status()).await {
        Ok(Ok(status)) => Ok(status.version),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", DAEMON_WAIT.as_secs())),
    };
    if args.json {
        let daemon = daemon.as_deref().ok();
        out::json(&VersionJson { cli, daemon })?;
        return Ok(ExitCode::SUCCESS);
    }
    outln!("weft {cli}");
    match daemon {
        Ok(v) => outln!("weftd {v}"),
        Err(why) => errln!("weftd: not reachable ({why})"),
    }
    Ok(ExitCode::SUCCESS)
}
