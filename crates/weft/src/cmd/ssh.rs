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

use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use weft_localapi::{PeerStatus, Status};

use crate::ctx::Ctx;
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
        print!("{}", usage_hint(&path, domain.as_deref()));
        return Ok(ExitCode::SUCCESS);
    };
    if first_run {
        eprint!("{}", usage_hint(&path, domain.as_deref()));
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
        eprintln!(
            "warning: {} has no SSH host keys in the netmap (is its SSH server on? \
             'weft set --ssh' there); ssh will refuse to connect",
            found.node.name
        );
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

/// Returns the known_hosts text: for every node's host key, one line each
/// under its short name, full name and addresses. Names or keys that could
/// break the file's syntax (whitespace, commas, control characters) are
/// skipped.
pub fn known_hosts(status: &Status) -> String {
    let mut out = String::new();
    for node in status.self_node.iter().chain(&status.peers) {
        let names = host_names(node);
        for key in node.ssh_host_keys.iter().map(|k| k.trim()) {
            let fields = key.split_whitespace().count();
            if fields < 2 || key.chars().any(char::is_control) {
                continue;
            }
            for name in &names {
                let _ = writeln!(out, "{name} {key}");
            }
        }
    }
    out
}

fn host_names(node: &PeerStatus) -> Vec<String> {
    let fqdn = node.dns_name.trim_end_matches('.');
    let mut names: Vec<String> = [node.name.as_str(), fqdn]
        .into_iter()
        .filter(|n| {
            !n.is_empty() && !n.contains(|c: char| c.is_whitespace() || c.is_control() || c == ',')
        })
        .map(str::to_owned)
        .collect();
    names.dedup();
    names.extend(node.addresses.iter().map(ToString::to_string));
    names
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

/// Returns the known_hosts path: `$XDG_CONFIG_HOME/weft/ssh_known_hosts`,
/// else `$HOME/.config/weft/ssh_known_hosts`.
///
/// # Errors
/// When neither variable holds an absolute path.
pub fn known_hosts_path() -> anyhow::Result<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let config = match absolute("XDG_CONFIG_HOME") {
        Some(dir) => dir,
        None => match absolute("HOME") {
            Some(home) => home.join(".config"),
            None => bail!("cannot find a config directory: set HOME or XDG_CONFIG_HOME"),
        },
    };
    Ok(config.join("weft").join("ssh_known_hosts"))
}

/// Writes `text` to `path` atomically with mode 0600 (the directory 0700).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .context("the known_hosts path has no directory")?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".ssh_known_hosts.{}", std::process::id()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
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
    use crate::resolve::tests::{node, status};

    #[test]
    fn every_host_key_is_listed_under_name_fqdn_and_each_address() {
        let mut me = node(1, "me", "me", &["100.64.0.1"]);
        me.ssh_host_keys = vec!["ssh-ed25519 AAAAme".into()];
        let mut web = node(2, "web", "web", &["100.64.0.2", "fd13:b027:8801::2"]);
        web.ssh_host_keys = vec![
            "ssh-ed25519 AAAAweb root@web\n".into(),
            "ssh-rsa AAAArsa".into(),
        ];
        let db = node(3, "db", "db", &["100.64.0.3"]);
        let text = known_hosts(&status(me, vec![web, db]));
        assert_eq!(
            text,
            "me ssh-ed25519 AAAAme\n\
             me.t.weft.internal ssh-ed25519 AAAAme\n\
             100.64.0.1 ssh-ed25519 AAAAme\n\
             web ssh-ed25519 AAAAweb root@web\n\
             web.t.weft.internal ssh-ed25519 AAAAweb root@web\n\
             100.64.0.2 ssh-ed25519 AAAAweb root@web\n\
             fd13:b027:8801::2 ssh-ed25519 AAAAweb root@web\n\
             web ssh-rsa AAAArsa\n\
             web.t.weft.internal ssh-rsa AAAArsa\n\
             100.64.0.2 ssh-rsa AAAArsa\n\
             fd13:b027:8801::2 ssh-rsa AAAArsa\n"
        );
    }

    #[test]
    fn keys_or_names_that_could_inject_lines_are_skipped() {
        let mut evil = node(2, "a b", "x", &["100.64.0.2"]);
        evil.dns_name = "ok.t.weft.internal.".into();
        evil.ssh_host_keys = vec![
            "ssh-ed25519 AAAA\n* ssh-ed25519 EVIL".into(),
            "onlyonefield".into(),
            "ssh-ed25519 GOOD".into(),
        ];
        let text = known_hosts(&status(node(1, "me", "me", &[]), vec![evil]));
        assert_eq!(
            text,
            "ok.t.weft.internal ssh-ed25519 GOOD\n100.64.0.2 ssh-ed25519 GOOD\n"
        );
    }

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
    fn the_file_is_private_and_replaced_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cfg/weft/ssh_known_hosts");
        write_private(&path, "a k1\n").unwrap();
        write_private(&path, "b k2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b k2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
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
