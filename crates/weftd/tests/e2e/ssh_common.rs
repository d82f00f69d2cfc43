//! Set-up shared by the SSH suites (`ssh_e2e`, `ssh_check_e2e`): the control server with its
//! users and policy, pre-auth keys for alice, the wait until a client node knows the server
//! node's host keys, and commands run as a local account through `setpriv`.

use std::time::Duration;

use anyhow::ensure;
use weft_lab::account::LocalAccount;
use weft_lab::tailnet::{Binaries, Control, KeyOptions, Node, Tailnet, peer};
use weft_lab::{Cmd, Lab, Output};

pub const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
pub const SECS: fn(u64) -> Duration = Duration::from_secs;
pub const ALICE: &str = "alice@example.com";

/// A tailnet running this build's weftd, with a control server `ctl` that has `users` and
/// `policy`.
pub fn tailnet_and_control<'l>(
    lab: &'l Lab,
    users: &[&str],
    policy: &str,
) -> anyhow::Result<(Tailnet<'l>, Control)> {
    let tailnet = Tailnet::with_binaries(lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = tailnet.control("ctl")?;
    for user in users {
        control.create_user(user)?;
    }
    control.set_policy(policy)?;
    Ok((tailnet, control))
}

/// A single-use pre-auth key of alice's with `tags`.
pub fn alice_key(control: &Control, tags: &[&str]) -> anyhow::Result<String> {
    Ok(control.create_key(
        ALICE,
        &KeyOptions {
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            ..KeyOptions::default()
        },
    )?)
}

/// Returns how many SSH host keys `status` lists for peer `name`.
pub fn host_keys(status: &serde_json::Value, name: &str) -> usize {
    peer(status, name)
        .and_then(|p| p["ssh_host_keys"].as_array())
        .map_or(0, Vec::len)
}

/// Waits until `client` has both of `server`'s host keys (ed25519 + ecdsa) and `server`
/// listens on 22.
pub fn wait_ssh_ready(client: &Node, server: &Node) -> anyhow::Result<()> {
    let what = format!("{}'s SSH host keys (ed25519 + ecdsa)", server.name());
    client.wait_status(SECS(30), &what, |v| host_keys(v, server.name()) >= 2)?;
    server.netns().wait_tcp_listen(22, SECS(20))?;
    Ok(())
}

/// `program args…` on `node` as `client` (exec'd by setpriv, so the PID is the program's), with
/// the account's HOME and no agent unless the caller sets `SSH_AUTH_SOCK` again.
pub fn as_user(node: &Node, client: &LocalAccount, program: &str, args: &[String]) -> Cmd {
    let home = client.home.display().to_string();
    node.netns()
        .command("setpriv")
        .args([
            "--reuid",
            &client.name,
            "--regid",
            &client.name,
            "--init-groups",
            "--",
        ])
        .arg(program)
        .args(args)
        .env("HOME", &home)
        .env("USER", &client.name)
        .env("LOGNAME", &client.name)
        .env("XDG_CONFIG_HOME", format!("{home}/.config"))
        .env("SSH_AUTH_SOCK", "")
        .env("TERM", "xterm")
        .timeout(SECS(60))
}

/// `weft ssh <args…>` on `node` as `client` (so that known_hosts lands in the client's home),
/// with Debian's OpenSSH client.
pub fn weft_ssh(tailnet: &Tailnet<'_>, node: &Node, client: &LocalAccount, args: &[&str]) -> Cmd {
    let weft = tailnet.binaries().weft.display().to_string();
    let mut argv = vec![
        "--socket".to_owned(),
        node.socket().display().to_string(),
        "ssh".into(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    as_user(node, client, &weft, &argv).env("WEFT_SSH", "/usr/bin/ssh")
}

/// Fails with the output unless `out` is a success.
pub fn ok(out: &Output, what: &str) -> anyhow::Result<()> {
    ensure!(
        out.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout,
        out.stderr
    );
    Ok(())
}
