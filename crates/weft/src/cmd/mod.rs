//! One file per command. Each exposes its clap `…Args` and an async `run`
//! that returns the exit code for outcomes that are not errors (e.g. `status`
//! of a stopped node exits 1 after printing why).

pub mod debug;
pub mod dns;
pub mod dns_status;
pub mod down;
pub mod ip;
pub mod login;
pub mod logout;
pub mod netcheck;
pub mod ping;
pub mod set;
pub mod ssh;
pub mod status;
pub mod switch;
pub mod up;
pub mod version;
pub mod whois;

use std::process::ExitCode;

use crate::cli::Command;
use crate::ctx::Ctx;

/// Runs one command.
///
/// # Errors
/// Whatever the command reports; `main` prints it and exits 1.
pub async fn run(command: Command, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match command {
        Command::Up(args) => up::run(args, ctx).await,
        Command::Down => down::run(ctx).await,
        Command::Set(args) => set::run(args, ctx).await,
        Command::Login(args) => login::run(args, ctx).await,
        Command::Logout => logout::run(ctx).await,
        Command::Switch(args) => switch::run(args, ctx).await,
        Command::Status(args) => status::run(args, ctx).await,
        Command::Ip(args) => ip::run(args, ctx).await,
        Command::Whois(args) => whois::run(args, ctx).await,
        Command::Ping(args) => ping::run(args, ctx).await,
        Command::Netcheck(args) => netcheck::run(args, ctx).await,
        Command::Ssh(args) => ssh::run(args, ctx).await,
        Command::Version(args) => version::run(args, ctx).await,
        Command::Dns(args) => dns::run(args, ctx).await,
        Command::Debug(args) => debug::run(args, ctx).await,
    }
}
