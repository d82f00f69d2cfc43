//! `weft ssh [user@]host [args…]`: run the system ssh to a peer with its host
//! key pinned from the netmap.
//!
//! It writes every node's SSH host keys to a known_hosts file
//! (`$XDG_CONFIG_HOME/weft/ssh_known_hosts`, else
//! `~/.config/weft/ssh_known_hosts`, mode 0600) under the node's short name,
//! full name and addresses, then execs ssh (`$WEFT_SSH`, else
//! `/usr/bin/ssh`, else `ssh` on PATH) with that file and strict host key
//! checking, connecting to the peer's tailnet address. Plain `ssh` works
//! too; the first run (and `--print-config`) explains how.
//!
//! Before handing over to ssh it opens (and closes) one TCP connection to
//! the peer's port 22, so a peer the tailnet ACL does not let this node
//! reach (its packets are dropped: nothing would answer) fails within
//! [`PROBE_TIMEOUT`] with the `weft-control policy explain` command to run,
//! and a peer whose SSH server is off fails at once saying so, instead of
//! ssh hanging.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::{Context, bail};
use weft_localapi::Status;

use crate::ctx::Ctx;
use crate::known_hosts::{known_hosts, known_hosts_path, write_private};
use crate::out::{err, errln, out};
use crate::resolve::find_node;

#[derive(Debug, clap::Args)]
pub struct SshArgs {
    /// Write the known_hosts file and print how to use plain ssh with it; run nothing
    #[arg(long)]
    pub print_config: bool,
    /// The peer: [user@]name, full name or address
    #[arg(value_name = "[USER@]HOST", required_unless_present = "print_config")]
    pub destination: Option<String>,
    /// Passed on to ssh after the destination (e.g. a remote command)
    #[arg(
        value_name = "ARGS",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub args: Vec<String>,
}

/// Runs `weft ssh`; on success it does not return (ssh replaces the process).
pub async fn run(args: SshArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = ctx.api(ctx.client.status().await)?;
    let path = known_hosts_path()?;
    let first_run = !path.exists();
    write_private(&path, &known_hosts(&status))?;
    let domain = tailnet_domain(&status);
    let Some(destination) = &args.destination else {
        out!("{}", usage_hint(&path, domain.as_deref()));
        return Ok(ExitCode::SUCCESS);
    };
    if first_run {
        err!("{}", usage_hint(&path, domain.as_deref()));
    }
    let (user, host) = match destination.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, destination.as_str()),
    };
    let found = find_node(&status, host)?;
    let ip = match host.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match found.node.addresses.first() {
            Some(ip) => *ip,
            None => bail!("{} has no tailnet address", found.node.name),
        },
    };
    if found.node.ssh_host_keys.is_empty() {
        errln!(
            "warning: {} has no SSH host keys in the netmap (is its SSH server on? \
             'weft set --ssh' there); ssh will refuse to connect",
            found.node.name
        );
    }
    if !found.is_self {
        let me = status.self_node.as_ref().map(|n| n.name.as_str());
        probe(ip, &found.node.name, me).await?;
    }
    let target = match user {
        Some(user) => format!("{user}@{ip}"),
        None => ip.to_string(),
    };
    let program = ssh_program();
    let err = Command::new(&program)
        .args(ssh_argv(&path, &target, &args.args))
        .exec();
    Err(err).with_context(|| format!("running {}", program.display()))
}

/// How long `weft ssh` waits for the peer's port 22 to answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to `ip` port 22 (and closes again); fails with what to do when
/// nothing answers within [`PROBE_TIMEOUT`] or the port is closed.
async fn probe(ip: IpAddr, name: &str, me: Option<&str>) -> anyhow::Result<()> {
    let connect = tokio::net::TcpStream::connect((ip, 22));
    match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
            "{name} ({ip}) refuses connections on port 22: its SSH server is off; \
             turn it on there with 'weft set --ssh'"
        ),
        Ok(Err(e)) => bail!("cannot connect to {name} ({ip}) port 22: {e}"),
        Err(_) => bail!("{}", unanswered(ip, name, me)),
    }
}

/// Returns the refusal for a port 22 that does not answer.
pub fn unanswered(ip: IpAddr, name: &str, me: Option<&str>) -> String {
    let src = me.unwrap_or("<this node>");
    format!(
        "{name} ({ip}) did not answer on port 22 within {}s: the tailnet policy may not allow \
         SSH from this node to it; an admin can check with: \
         weft-control policy explain --src {src} --dst {name}:22",
        PROBE_TIMEOUT.as_secs()
    )
}

/// Returns ssh's arguments: the pinning options, the target, the rest.
pub fn ssh_argv(known_hosts: &Path, target: &str, rest: &[String]) -> Vec<String> {
    let mut file = known_hosts.display().to_string();
    if file.contains(char::is_whitespace) {
        file = format!("\"{file}\"");
    }
    let mut argv = vec![
        "-o".to_owned(),
        format!("UserKnownHostsFile={file}"),
        "-o".to_owned(),
        "StrictHostKeyChecking=yes".to_owned(),
        "-o".to_owned(),
        "UpdateHostKeys=no".to_owned(),
        "-o".to_owned(),
        "CanonicalizeHostname=no".to_owned(),
        target.to_owned(),
    ];
    argv.extend(rest.iter().cloned());
    argv
}

fn tailnet_domain(status: &Status) -> Option<String> {
    if let Some(t) = &status.tailnet {
        return Some(t.domain.clone());
    }
    let me = status.self_node.as_ref()?;
    me.dns_name
        .trim_end_matches('.')
        .split_once('.')
        .map(|(_, d)| d.to_owned())
}

/// Returns how to use plain ssh with the pinned keys.
pub fn usage_hint(path: &Path, domain: Option<&str>) -> String {
    let file = path.display();
    let mut s = format!(
        "The tailnet's SSH host keys are in {file}.\n\
         To use plain ssh with the same pinning:\n\n\
         \tssh -o UserKnownHostsFile={file} -o StrictHostKeyChecking=yes USER@HOST\n"
    );
    if let Some(domain) = domain {
        let _ = write!(
            s,
            "\nor add this to ~/.ssh/config:\n\n\
             Host *.{domain}\n\
             \x20   UserKnownHostsFile {file}\n\
             \x20   StrictHostKeyChecking yes\n"
        );
    }
    s.push_str(
        "\n'weft ssh' (or 'weft ssh --print-config') refreshes the file when peers change.\n",
    );
    s
}

fn ssh_program() -> PathBuf {
    if let Some(p) = std::env::var_os("WEFT_SSH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let system = PathBuf::from("/usr/bin/ssh");
    if system.exists() {
        system
    } else {
        PathBuf::from("ssh")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_gets_the_pinning_options_before_the_target() {
        let argv = ssh_argv(
            Path::new("/h/.config/weft/ssh_known_hosts"),
            "bob@100.64.0.2",
            &["uptime".into()],
        );
        assert_eq!(
            argv.join(" "),
            "-o UserKnownHostsFile=/h/.config/weft/ssh_known_hosts -o StrictHostKeyChecking=yes \
             -o UpdateHostKeys=no -o CanonicalizeHostname=no bob@100.64.0.2 uptime"
        );
        let argv = ssh_argv(Path::new("/my home/kh"), "x", &[]);
        assert_eq!(argv[1], "UserKnownHostsFile=\"/my home/kh\"");
    }

    #[test]
    fn an_unanswered_port_names_the_policy_explain_command() {
        let line = unanswered("100.64.0.2".parse().unwrap(), "server", Some("laptop"));
        assert_eq!(
            line,
            "server (100.64.0.2) did not answer on port 22 within 5s: the tailnet policy may not \
             allow SSH from this node to it; an admin can check with: \
             weft-control policy explain --src laptop --dst server:22"
        );
    }

    #[test]
    fn the_hint_shows_plain_ssh_and_a_host_block() {
        let hint = usage_hint(Path::new("/h/kh"), Some("t.weft.internal"));
        assert!(hint.contains(
            "\tssh -o UserKnownHostsFile=/h/kh -o StrictHostKeyChecking=yes USER@HOST\n"
        ));
        assert!(hint.contains(
            "Host *.t.weft.internal\n    UserKnownHostsFile /h/kh\n    StrictHostKeyChecking yes\n"
        ));
    }
}
