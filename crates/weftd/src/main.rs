//! weftd, the Weft node daemon.
//!
//! `main` only parses the command line, sets up logging and hands over to
//! one module per mode:
//! * `weftd` / `weftd run` ([`daemon`]): the tailnet node daemon.
//! * `weftd wg <iface>` ([`wg`]): a plain userspace WireGuard device
//!   configured with `wg(8)`, interoperable with wireguard-go.
//! * `weftd wg-stats <iface>` ([`wg::stats`]): print that device's counters.
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod clock;
mod daemon;
mod logging;
mod wg;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The Weft node daemon.
#[derive(Debug, Parser)]
#[command(name = "weftd", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Without a subcommand, weftd runs the tailnet daemon.
    #[command(flatten)]
    run: daemon::DaemonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the tailnet node daemon (the default).
    Run(daemon::DaemonArgs),
    /// Run a plain userspace WireGuard interface, configured with `wg`
    /// through /var/run/wireguard/<iface>.sock (stays in the foreground).
    Wg(wg::WgArgs),
    /// Print the counters of a running `weftd wg` (packets, drops by reason).
    WgStats(wg::stats::StatsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = match &cli.command {
        Some(Command::Run(a)) => a.verbose,
        None => cli.run.verbose,
        Some(_) => false,
    };
    logging::init(if verbose { "debug" } else { "info" });
    let result = match &cli.command {
        None => daemon::run(&cli.run),
        Some(Command::Run(args)) => daemon::run(args),
        Some(Command::Wg(args)) => wg::run(args),
        Some(Command::WgStats(args)) => wg::stats::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
