//! The command line: the global `--socket` and one subcommand per noun.

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use weft_localapi::{DEFAULT_SOCKET, SOCKET_ENV};

use crate::cmd::{
    debug, dns, ip, login, netcheck, ping, set, ssh, status, switch, up, version, whois,
};
use crate::ctx::Ctx;

/// Weft: join a tailnet, see its peers, reach them.
#[derive(Debug, Parser)]
#[command(name = "weft", version, propagate_version = true)]
pub struct Cli {
    /// The weftd LocalAPI socket to talk to (run several daemons side by side
    /// by giving each its own socket).
    #[arg(long, global = true, env = SOCKET_ENV, hide_env_values = true,
          default_value = DEFAULT_SOCKET, value_name = "PATH")]
    pub socket: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

/// Every `weft` subcommand, in help order.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Connect to the tailnet, logging in if needed
    Up(up::UpArgs),
    /// Disconnect from the tailnet (stays down across restarts)
    Down,
    /// Change specified preferences (only the flags you mention)
    Set(set::SetArgs),
    /// Add a new login profile and log it in
    Login(login::LoginArgs),
    /// Expire this node's key at control and remove the current profile
    Logout,
    /// List login profiles or switch to another one (no re-auth)
    Switch(switch::SwitchArgs),
    /// Show this node's state and its peers
    Status(status::StatusArgs),
    /// Print this node's (or a peer's) tailnet addresses
    Ip(ip::IpArgs),
    /// Show which node and user own a tailnet address
    Whois(whois::WhoisArgs),
    /// Ping a peer over the data plane's UDP path (not ICMP)
    Ping(ping::PingArgs),
    /// Report what the network allows: UDP, public addresses, NAT kind, relay latencies
    Netcheck(netcheck::NetcheckArgs),
    /// Run the system ssh to a peer, pinning the tailnet's SSH host keys
    Ssh(ssh::SshArgs),
    /// Print the CLI's and the daemon's versions
    Version(version::VersionArgs),
    /// MagicDNS: how this machine's DNS is configured; ask the daemon's resolver
    Dns(dns::DnsArgs),
    /// Debugging aids
    Debug(debug::DebugArgs),
}

/// Parses the process arguments (exiting with status 2 on a usage error) and
/// builds the context every command runs in.
pub fn parse() -> (Cli, Ctx) {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let socket_in_argv = matches.value_source("socket") == Some(ValueSource::CommandLine);
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let ctx = Ctx::new(cli.socket.clone(), socket_in_argv, argv);
    (cli, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_socket_can_follow_the_subcommand() {
        let cli = Cli::try_parse_from(["weft", "status", "--socket", "/tmp/a.sock"]).unwrap();
        assert_eq!(cli.socket, PathBuf::from("/tmp/a.sock"));
    }

    #[test]
    fn unknown_flags_are_usage_errors() {
        let err = Cli::try_parse_from(["weft", "up", "--bogus"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["weft", "up", "--ssh=maybe"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let err = Cli::try_parse_from(["weft", "up", "--timeout=ten"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
