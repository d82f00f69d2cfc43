//! The command line: argument definitions and dispatch. Each noun has its
//! own module; output the user asked for goes to stdout, logs to stderr,
//! both through [`out`] (a closed pipe ends a command quietly).

mod admin;
mod audit;
mod dns;
mod fmt;
mod out;
mod policy;
mod progress;
mod relay_map;
mod serve;
mod sessions;
mod ssh;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use weft_control::admin::client::{AdminClient, AdminTarget};
use weft_control::config::{ADMIN_SOCKET_FILE, DEFAULT_STATE_DIR};

use out::{errln, outln};

/// weft-control: the Weft coordination server.
#[derive(Debug, Parser)]
#[command(name = "weft-control", version, about = "weft-control: the Weft coordination server and its administration", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<serve::ServeArgs>),
    /// Manage users.
    #[command(subcommand)]
    Users(admin::UsersCmd),
    /// Manage pre-auth keys (register nodes without a browser).
    #[command(subcommand)]
    Keys(admin::KeysCmd),
    /// Manage nodes and approve interactive logins.
    #[command(subcommand)]
    Nodes(admin::NodesCmd),
    /// Manage API keys for the REST API.
    #[command(subcommand)]
    Apikeys(admin::ApiKeysCmd),
    /// Check, set, show and explain the access policy.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Set and show the relay map nodes are given.
    #[command(subcommand)]
    RelayMap(relay_map::RelayMapCmd),
    /// Get and set the DNS settings nodes are given (MagicDNS, nameservers,
    /// search domains, split DNS, extra records).
    #[command(subcommand)]
    Dns(dns::DnsCmd),
    /// The audit log of admin actions (who changed what, when, with what outcome).
    #[command(subcommand)]
    Audit(audit::AuditCmd),
    /// Weft SSH: list and revoke SSH check approvals.
    #[command(subcommand)]
    Ssh(ssh::SshCmd),
}

/// Where the server keeps its state and how admin commands reach it.
/// Global: accepted before or after the subcommand
/// (`weft-control --json nodes list` and `weft-control nodes list --json`).
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The server's state directory: database (SQLite), server key, admin socket (<state-dir>/admin.sock).
    #[arg(long, global = true, default_value = DEFAULT_STATE_DIR, env = "WEFT_CONTROL_STATE_DIR")]
    state_dir: PathBuf,
    /// The admin socket (default: <state-dir>/admin.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// A remote server's URL (uses the REST API; needs --api-key).
    #[arg(long, global = true, env = "WEFT_CONTROL_SERVER")]
    server: Option<String>,
    /// API key for --server.
    #[arg(
        long,
        global = true,
        env = "WEFT_CONTROL_API_KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    /// Returns a client for the chosen target.
    ///
    /// # Errors
    /// `--server` without `--api-key`.
    fn client(&self) -> anyhow::Result<AdminClient> {
        let target = match (&self.server, &self.api_key) {
            (Some(url), Some(key)) => AdminTarget::Http {
                url: url.clone(),
                api_key: key.clone(),
            },
            (Some(url), None) => anyhow::bail!(
                "--server {url} needs --api-key (or WEFT_CONTROL_API_KEY); create one on the server with: weft-control apikeys create"
            ),
            (None, _) => AdminTarget::Socket(
                self.socket
                    .clone()
                    .unwrap_or_else(|| self.state_dir.join(ADMIN_SOCKET_FILE)),
            ),
        };
        Ok(AdminClient::new(target))
    }
}

/// The admin-client flags: what `serve` refuses when given on its command
/// line (`serve --server URL` is a slip for `--server-url`). The same
/// settings in the environment are for admin commands and do not stop
/// `serve`.
const CLIENT_FLAGS: [(&str, &str); 4] = [
    ("socket", "--socket"),
    ("server", "--server"),
    ("api_key", "--api-key"),
    ("json", "--json"),
];

/// Parses the command line, runs the command, and maps errors to exit codes.
pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let client_flag = CLIENT_FLAGS
        .into_iter()
        .find(|(id, _)| matches.value_source(id) == Some(ValueSource::CommandLine))
        .map(|(_, flag)| flag);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            errln!("weft-control: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let conn = &cli.conn;
        match cli.command {
            Command::Serve(a) => serve::run(
                *a,
                conn,
                client_flag,
                matches.subcommand_matches("serve").unwrap_or(&matches),
            )
            .await
            .map(|()| ExitCode::SUCCESS),
            Command::Users(c) => admin::users(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Keys(c) => admin::keys(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Nodes(c) => admin::nodes(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Apikeys(c) => admin::apikeys(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Policy(c) => policy::run(c, conn).await,
            Command::RelayMap(c) => relay_map::run(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Dns(c) => dns::run(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Audit(c) => audit::run(c, conn).await.map(|()| ExitCode::SUCCESS),
            Command::Ssh(c) => ssh::run(c, conn).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("weft-control: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints a value as pretty JSON.
fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?)
}

/// Returns the wall-clock time in unix milliseconds (for relative times).
fn now_ms() -> i64 {
    use weft_control::clock::Clock as _;
    weft_control::clock::SystemClock.now().0
}
