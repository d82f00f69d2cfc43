//! weftd, the Weft node daemon.
//!
//! `main` only parses the command line, sets up logging and hands over to
//! one module per mode:
//! * `weftd wg <iface>` ([`wg`]): a plain userspace WireGuard device
//!   configured with `wg(8)`, interoperable with wireguard-go.
//! * `weftd wg-stats <iface>` ([`wg::stats`]): print that device's counters.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod logging;
mod wg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Weft node daemon.
#[derive(Debug, Parser)]
#[command(name = "weftd", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a plain userspace WireGuard interface, configured with `wg`
    /// through /var/run/wireguard/<iface>.sock (stays in the foreground).
    Wg(wg::WgArgs),
    /// Print the counters of a running `weftd wg` (packets, drops by reason).
    WgStats(wg::stats::StatsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    let result = match &cli.command {
        Command::Wg(args) => wg::run(args),
        Command::WgStats(args) => wg::stats::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
