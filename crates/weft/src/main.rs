//! `weft`, the Weft command-line client.
//!
//! A thin layer over weftd's LocalAPI (`weft-localapi`): every command parses
//! its flags, makes one or a few typed calls through [`LocalClient`], and
//! prints. It never reads the daemon's state files. Output the user asked for
//! goes to stdout (tables, JSON, addresses, pongs); progress, hints and
//! warnings go to stderr. Exit codes: 0 success, 1 failure, 2 usage error.
//!
//! [`LocalClient`]: weft_localapi::LocalClient
// Output goes through `out` (escaping, quiet exit on a closed pipe) only.
#![deny(clippy::print_stdout, clippy::print_stderr)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

mod cli;
mod cmd;
mod ctx;
mod known_hosts;
mod out;
mod prefs;
mod render;
mod resolve;
mod spinner;
mod upflow;
mod watch;

use std::process::ExitCode;

fn main() -> ExitCode {
    let (cli, ctx) = cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            out::errln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cmd::run(cli.command, &ctx)) {
        Ok(code) => code,
        Err(e) => {
            out::errln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
