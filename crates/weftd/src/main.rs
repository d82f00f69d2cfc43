//! weftd, the Weft node daemon.
//!
//! `main` only parses the command line, sets up logging and hands over to
//! one module per mode:
//! * `weftd` / `weftd run` ([`daemon`]): the tailnet node daemon.
//! * `weftd wg <iface>` ([`wg`]): a plain userspace WireGuard device
//!   configured with `wg(8)`, interoperable with wireguard-go.
//! * `weftd wg-stats <iface>` ([`wg::stats`]): print that device's counters.
//! * `weftd sftp-server` (hidden): the built-in SFTP server that Weft SSH runs
//!   as the login user, after the privilege drop, for each `sftp` subsystem
//!   ([`weft_ssh::sftp`]); it speaks SFTP on stdin/stdout.
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
    /// Serve SFTP on stdin/stdout as the calling user (run by Weft SSH for
    /// each `sftp` session; not for interactive use).
    #[command(hide = true)]
    SftpServer,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::SftpServer) = cli.command {
        // No logging: stdout is the SFTP stream and stderr reaches the client.
        return sftp_server();
    }
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
        Some(Command::SftpServer) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the built-in SFTP server on stdin/stdout until the client leaves.
fn sftp_server() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weftd sftp-server: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(weft_ssh::sftp::serve_stdio());
    ExitCode::SUCCESS
}
