//! `weft dns …`: MagicDNS. Each subcommand lives in its own file
//! (`dns_status.rs`, …); this is only the group.

use std::process::ExitCode;

use crate::cmd::dns_status;
use crate::ctx::Ctx;

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    #[command(subcommand)]
    pub command: DnsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DnsCommand {
    /// Show how MagicDNS configures this machine's DNS, and what the OS uses now
    Status(dns_status::DnsStatusArgs),
}

/// Runs `weft dns …`.
pub async fn run(args: DnsArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match args.command {
        DnsCommand::Status(a) => dns_status::run(a, ctx).await,
    }
}
