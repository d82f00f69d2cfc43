//! Weft SSH end to end: real `weft-control`, `weftd` and `weft`, each node in its own network
//! namespace (`weft_lab::tailnet`), and Debian's stock OpenSSH client tools (`ssh`, `scp`,
//! `sftp`, `ssh-agent`, `tmux` for a terminal).
//!
//! The tailnet: user `alice@example.com` owns node `a` (the client); node `b` is tagged
//! `tag:server` and runs `weft up --ssh`; in the policy test node `c` is tagged `tag:ci`, which the
//! ACL lets reach `b` on TCP 8080 only. The namespaces share `/etc/passwd` and the file system, so
//! the local accounts the test creates (unique names, removed at the end) exist on every node:
//! the client account runs ssh on `a` and has no `~/.ssh` at all; host keys come only from
//! `weft ssh`'s known_hosts file.
//!
//! Needs root, `runuser`, `setpriv`, `ssh`, `scp`, `sftp`, `ssh-agent`, `ssh-add`, `ssh-keygen`,
//! `tmux`, `useradd` and `/dev/net/tun` (no `sftp-server`: SFTP is built into weftd); skips without them
//! unless `WEFT_E2E=1`. Every scenario is its own test (they run in parallel); every wait is
//! bounded; a failure carries each daemon's status and log.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Control, Node, Tailnet, peer};
use weft_lab::{Lab, Output, Process, e2e_lab, wait_for, wait_until, with_diagnostics};

use crate::ssh_common::{
    self, ALICE, SECS, alice_key, as_user, host_keys, ok, tailnet_and_control, wait_ssh_ready,
};

macro_rules! lab {
    () => {
        e2e_lab!(
            "runuser",
            "setpriv",
            "ss",
            "ssh",
            "scp",
            "sftp",
            "ssh-agent",
            "ssh-add",
            "ssh-keygen",
            "tmux",
            "useradd",
            "/dev/net/tun"
        )
    };
}

#[path = "ssh_sftp_e2e.rs"]
mod sftp;
#[path = "ssh_vscode_e2e.rs"]
mod vscode;
#[path = "ssh_x11_e2e.rs"]
mod x11;

// ---- local accounts ------------------------------------------------------------------------

use weft_lab::account::LocalAccount;

// ---- the tailnet ---------------------------------------------------------------------------

const POLICY_HEAD: &str = r#"{
  "tagOwners": {"tag:server": ["alice@example.com"], "tag:ci": ["alice@example.com"]},
  "acls": [
    {"action": "accept", "src": ["autogroup:member"], "dst": ["*:*"]},
    {"action": "accept", "src": ["tag:server"], "dst": ["*:*"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["tag:server:8080"]},
  ],"#;

/// The policy with `ssh_rules` (HuJSON list items).
fn policy(ssh_rules: &str) -> String {
    format!("{POLICY_HEAD}\n  \"ssh\": [{ssh_rules}],\n}}\n")
}

/// Members may log in to `tag:server` as any non-root user; `tag:ci` as `ci_user`.
fn nonroot_policy(ci_user: &str) -> String {
    policy(&format!(
        r#"{{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["autogroup:nonroot"]}},
           {{"action": "accept", "src": ["tag:ci"], "dst": ["tag:server"], "users": ["{ci_user}"]}}"#
    ))
}

struct Net<'l> {
    _tailnet: Tailnet<'l>,
    control: Control,
    a: Node,
    b: Node,
    c: Option<Node>,
    b_ip: Ipv4Addr,
}

impl Net<'_> {
    fn report(&self) -> String {
        let mut s = format!("=== control ===\n{}\n", self.control.log());
        for n in [Some(&self.a), Some(&self.b), self.c.as_ref()]
            .into_iter()
            .flatten()
        {
            s.push_str(&n.report());
            s.push('\n');
        }
        s
    }
}

/// Control with `policy`, `a` (alice's), `b` (`tag:server`, `--ssh`) and, if asked, `c`
/// (`tag:ci`); returns once `a` has `b`'s host keys and `b` listens on 22.
fn tailnet<'l>(lab: &'l Lab, policy: &str, with_c: bool) -> anyhow::Result<Net<'l>> {
    let (tailnet, control) = tailnet_and_control(lab, &[ALICE], policy)?;
    let key = |tags: &[&str]| alice_key(&control, tags);
    let a = tailnet.node("a")?;
    a.up(&control, &key(&[])?).run()?;
    let b = tailnet.node("b")?;
    b.up(&control, &key(&["tag:server"])?).arg("--ssh").run()?;
    let c = if with_c {
        let c = tailnet.node("c")?;
        c.up(&control, &key(&["tag:ci"])?).run()?;
        Some(c)
    } else {
        None
    };
    let b_ip = b.ip4()?;
    let net = Net {
        _tailnet: tailnet,
        control,
        a,
        b,
        c,
        b_ip,
    };
    with_diagnostics(|| wait_ssh_ready(&net.a, &net.b), || net.report())?;
    Ok(net)
}

/// The local addresses of TCP listeners on port 22 in `node`'s namespace, sorted.
fn ssh_listeners(node: &Node) -> anyhow::Result<Vec<String>> {
    let out = node.netns().exec("ss", ["-Hltn", "sport = :22"])?;
    let mut v: Vec<String> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .collect();
    v.sort();
    Ok(v)
}

// ---- running the client ----------------------------------------------------------------------

/// The known_hosts file `weft ssh` writes for `client`.
/// UDP queries `node`'s MagicDNS resolver has taken so far (its metrics).
fn magicdns_queries(node: &Node) -> anyhow::Result<u64> {
    let text = crate::policy_e2e::metrics(node)?;
    crate::policy_e2e::sample(&text, r#"weftd_dns_queries_total{transport="udp"}"#)
        .with_context(|| format!("no UDP DNS query counter in the metrics:\n{text}"))
}

fn known_hosts(client: &LocalAccount) -> PathBuf {
    client.path(".config/weft/ssh_known_hosts")
}

/// OpenSSH options pinning host keys through `weft ssh`'s file. Not `BatchMode`: it skips the
/// keyboard-interactive round that shows why a login is refused (the server offers no
/// passwords, so nothing prompts).
fn ssh_opts(client: &LocalAccount) -> Vec<String> {
    [
        format!("UserKnownHostsFile={}", known_hosts(client).display()),
        "StrictHostKeyChecking=yes".into(),
        "ConnectTimeout=5".into(),
        "ServerAliveInterval=5".into(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_owned(), o])
    .collect()
}

/// `ssh <opts> <extra> user@b <remote…>` from `a` as `client`.
fn ssh_cmd(
    net: &Net<'_>,
    client: &LocalAccount,
    user: &str,
    extra: &[&str],
    remote: &[&str],
) -> weft_lab::Cmd {
    ssh_cmd_from(&net.a, net.b_ip, client, user, extra, remote)
}

fn ssh_cmd_from(
    from: &Node,
    to: Ipv4Addr,
    client: &LocalAccount,
    user: &str,
    extra: &[&str],
    remote: &[&str],
) -> weft_lab::Cmd {
    // `extra` first: for a repeated `-o`, ssh keeps the first value.
    let mut args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
    args.extend(ssh_opts(client));
    args.push(format!("{user}@{to}"));
    args.extend(remote.iter().map(|s| (*s).to_owned()));
    as_user(from, client, "ssh", &args)
}

fn ssh(
    net: &Net<'_>,
    client: &LocalAccount,
    user: &str,
    extra: &[&str],
    remote: &[&str],
) -> anyhow::Result<Output> {
    Ok(ssh_cmd(net, client, user, extra, remote).run_unchecked()?)
}

/// `weft ssh` on `a` as `client` (so that known_hosts lands in the client's home).
fn weft_ssh(net: &Net<'_>, client: &LocalAccount, args: &[&str]) -> anyhow::Result<Output> {
    Ok(ssh_common::weft_ssh(&net._tailnet, &net.a, client, args).run_unchecked()?)
}

fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum {}", path.display());
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

/// A TCP echo service on `addr` inside `node`'s namespace (runs until the test process ends).
fn echo_service(node: &Node, addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let l: TcpListener = node.netns().tcp_listener(addr)?;
    let bound = l.local_addr()?;
    std::thread::spawn(move || {
        for s in l.incoming().take(1000) {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut r = match s.try_clone() {
                    Ok(r) => r,
                    Err(_) => return,
                };
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    Ok(bound)
}

/// Writes `msg` to a fresh connection to `addr` from `node` and returns what comes back.
fn echo_roundtrip(node: &Node, addr: SocketAddr, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut s: TcpStream = node.netns().tcp_connect(addr, SECS(5))?;
    s.set_read_timeout(Some(SECS(5)))?;
    s.write_all(msg)?;
    let mut buf = vec![0; msg.len()];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn spawn(cmd: weft_lab::Cmd, name: &str) -> anyhow::Result<Process> {
    Ok(cmd.spawn(name)?)
}

/// Checks that ssh was refused by the policy in one line carrying the reason (who, as whom,
/// `as_whom`, and `why`), a userauth banner OpenSSH prints in every mode, without any password or
/// keyboard-interactive round.
fn refused_in_one_line(out: &Output, as_whom: &str, why: &str) -> anyhow::Result<()> {
    ensure!(out.status.code() == Some(255), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().filter(|l| l.contains("weft:")).collect();
    ensure!(lines.len() == 1, "one line with the reason: {}", out.stderr);
    let line = lines[0];
    ensure!(
        line.starts_with("weft: tailnet policy does not permit ")
            && line.contains(" (node a.")
            && line.contains(") to SSH to this node ")
            && line.contains(as_whom)
            && line.contains(why),
        "{line}"
    );
    ensure!(
        out.stderr.contains("Permission denied (none)."),
        "no method may be offered: {}",
        out.stderr
    );
    let lower = out.stderr.to_lowercase();
    ensure!(
        !lower.contains("password") && !lower.contains("keyboard-interactive"),
        "a prompt or method was offered: {}",
        out.stderr
    );
    Ok(())
}

// ---- the scenarios -------------------------------------------------------------------------

#[test]
fn weft_ssh_logs_in_with_no_keys_and_strict_host_keys_from_the_netmap() -> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wse", "c")?;
    let target = LocalAccount::create("wse", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            // `weft ssh` by name; the first run explains plain ssh and the Host block.
            let out = weft_ssh(
                &net,
                &client,
                &[&format!("{}@b", target.name), "id -un; echo $HOME"],
            )?;
            ok(&out, "weft ssh")?;
            ensure!(
                out.stdout == format!("{}\n{}\n", target.name, target.home.display()),
                "{out:?}"
            );
            let kh = known_hosts(&client);
            ensure!(
                out.stderr
                    .contains(&format!("ssh -o UserKnownHostsFile={}", kh.display())),
                "{}",
                out.stderr
            );
            ensure!(
                out.stderr.contains("Host *.") && out.stderr.contains("StrictHostKeyChecking yes"),
                "{}",
                out.stderr
            );
            let printed = weft_ssh(&net, &client, &["--print-config"])?;
            ok(&printed, "weft ssh --print-config")?;
            ensure!(printed.stdout.contains("Host *."), "{}", printed.stdout);

            // The file pins b by name, full name and address; nothing went into ~/.ssh.
            let text = std::fs::read_to_string(&kh)?;
            for host in ["b ", &format!("{} ", net.b_ip)] {
                ensure!(
                    text.lines()
                        .any(|l| l.starts_with(host) && l.contains("ssh-ed25519")),
                    "{host}: {text}"
                );
                ensure!(
                    text.lines()
                        .any(|l| l.starts_with(host) && l.contains("ecdsa-sha2-nistp256")),
                    "{host}: {text}"
                );
            }
            ensure!(!client.path(".ssh").exists(), "the client has a ~/.ssh");

            // Over IPv6 too (b listens on both of its tailnet addresses, and on nothing else).
            let b6 = net.b.weft(["ip", "-6"]).run()?.stdout.trim().to_owned();
            let out = weft_ssh(&net, &client, &[&format!("{}@{b6}", target.name), "id -un"])?;
            ok(&out, "weft ssh over IPv6")?;
            ensure!(out.stdout.trim() == target.name, "{out:?}");
            let listeners = ssh_listeners(&net.b)?;
            ensure!(
                listeners == [format!("{}:22", net.b_ip), format!("[{b6}]:22")],
                "{listeners:?}"
            );

            // Plain ssh with the same file works; with an empty one strict checking refuses.
            let out = ssh(&net, &client, &target.name, &[], &["id -un"])?;
            ok(&out, "plain ssh")?;
            ensure!(out.stdout.trim() == target.name, "{out:?}");

            // Stock ssh by the peer's short name and full name, resolved by the OS resolver
            // (glibc reads the resolv.conf weftd wrote into a's namespace: nameserver
            // 100.100.100.100 and the tailnet domain to search), i.e. through MagicDNS.
            let conf = std::fs::read_to_string(net.a.netns().resolv_conf())?;
            ensure!(conf.contains("nameserver 100.100.100.100"), "{conf}");
            let st = net.a.status_json()?;
            let b_name = peer(&st, "b").context("a lists b")?["dns_name"]
                .as_str()
                .context("b's dns_name")?
                .trim_end_matches('.')
                .to_owned();
            let found = net.a.netns().exec("getent", ["ahostsv4", "b"])?.stdout;
            ensure!(
                found.starts_with(&net.b_ip.to_string()),
                "getent b: {found}"
            );
            let queries_before = magicdns_queries(&net.a)?;
            for host in ["b", b_name.as_str()] {
                let mut args = ssh_opts(&client);
                args.extend([format!("{}@{host}", target.name), "id -un".into()]);
                let out = as_user(&net.a, &client, "ssh", &args).run_unchecked()?;
                ok(&out, &format!("ssh {}@{host}", target.name))?;
                ensure!(out.stdout.trim() == target.name, "{out:?}");
            }
            let queries = magicdns_queries(&net.a)? - queries_before;
            ensure!(queries >= 2, "ssh by name asked MagicDNS {queries} times");
            let empty = client.write("empty_known_hosts", b"")?;
            let out = ssh(
                &net,
                &client,
                &target.name,
                &["-o", &format!("UserKnownHostsFile={}", empty.display())],
                &["true"],
            )?;
            ensure!(
                !out.status.success() && out.stderr.contains("Host key verification failed"),
                "{out:?}"
            );
            Ok(())
        },
        || net.report(),
    )
}

#[test]
fn sessions_run_as_exactly_the_target_user_with_pty_scp_sftp_forwarding_and_agent()
-> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wse", "c")?;
    let target = LocalAccount::create("wse", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;

            // No escalation: uid, gid and groups are exactly the target's.
            let out = ssh(&net, &client, t, &[], &["id -u; id -g; id -G"])?;
            ok(&out, "id")?;
            let mut groups: Vec<u32> = vec![
                target.gid,
                nix::unistd::Group::from_name(&target.extra_group)?
                    .unwrap()
                    .gid
                    .as_raw(),
            ];
            groups.sort_unstable();
            let lines: Vec<&str> = out.stdout.lines().collect();
            ensure!(lines.len() == 3, "{out:?}");
            ensure!(
                lines[0] == target.uid.to_string() && lines[1] == target.gid.to_string(),
                "{out:?}"
            );
            let mut got: Vec<u32> = lines[2]
                .split_whitespace()
                .map(|g| g.parse().unwrap())
                .collect();
            got.sort_unstable();
            ensure!(got == groups, "groups {got:?}, want {groups:?}");

            pty_session(&net, &client, t)?;

            // scp 10 MiB both ways.
            let mut data = vec![0u8; 10 << 20];
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for b in &mut data {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let big = client.write("big", &data)?;
            let remote = target.path("big");
            let mut scp = ssh_opts(&client);
            scp.extend([
                big.display().to_string(),
                format!("{t}@{}:{}", net.b_ip, remote.display()),
            ]);
            ok(
                &as_user(&net.a, &client, "scp", &scp).run_unchecked()?,
                "scp to b",
            )?;
            let back = client.path("back");
            let mut scp = ssh_opts(&client);
            scp.extend([
                format!("{t}@{}:{}", net.b_ip, remote.display()),
                back.display().to_string(),
            ]);
            ok(
                &as_user(&net.a, &client, "scp", &scp).run_unchecked()?,
                "scp from b",
            )?;
            let want = sha256(&big)?;
            ensure!(
                sha256(&remote)? == want && sha256(&back)? == want,
                "checksums differ"
            );
            let owner =
                std::fs::metadata(&remote).map(|m| std::os::unix::fs::MetadataExt::uid(&m))?;
            ensure!(owner == target.uid, "scp wrote as uid {owner}");

            // sftp -b: put, get, ls; a root-only file stays unreadable.
            let secret_dir = lab.dir().join("secret");
            std::fs::create_dir_all(&secret_dir)?;
            let secret = secret_dir.join("root-only");
            std::fs::write(&secret, "top secret\n")?;
            std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
            client.write("small", b"hello sftp\n")?;
            let batch = client.write(
                "batch",
                format!(
                    "put {small} sftp-up\nget sftp-up {got}\nls -l\n",
                    small = client.path("small").display(),
                    got = client.path("sftp-got").display()
                )
                .as_bytes(),
            )?;
            let mut args = ssh_opts(&client);
            args.extend([
                "-b".into(),
                batch.display().to_string(),
                format!("{t}@{}", net.b_ip),
            ]);
            let out = as_user(&net.a, &client, "sftp", &args).run_unchecked()?;
            ok(&out, "sftp -b")?;
            ensure!(out.stdout.contains("sftp-up"), "ls: {}", out.stdout);
            ensure!(
                std::fs::read(client.path("sftp-got"))? == b"hello sftp\n",
                "sftp get"
            );
            ensure!(
                std::fs::read(target.path("sftp-up"))? == b"hello sftp\n",
                "sftp put"
            );
            let batch = client.write(
                "batch2",
                format!(
                    "get {} {}\n",
                    secret.display(),
                    client.path("stolen").display()
                )
                .as_bytes(),
            )?;
            let mut args = ssh_opts(&client);
            args.extend([
                "-b".into(),
                batch.display().to_string(),
                format!("{t}@{}", net.b_ip),
            ]);
            let out = as_user(&net.a, &client, "sftp", &args).run_unchecked()?;
            ensure!(
                !out.status.success() && out.stderr.contains("Permission denied"),
                "{out:?}"
            );
            ensure!(
                !client.path("stolen").exists(),
                "the root-only file was copied"
            );

            // -L to a TCP service on b's loopback, and -W to it (the VS Code Remote-SSH path).
            let svc = echo_service(&net.b, "127.0.0.1:0".parse()?)?;
            let local: SocketAddr = "127.0.0.1:24022".parse()?;
            let fwd = format!("{local}:{svc}");
            let l = spawn(
                ssh_cmd(
                    &net,
                    &client,
                    t,
                    &["-o", "ExitOnForwardFailure=yes", "-N", "-L", &fwd],
                    &[],
                ),
                "ssh-L",
            )?;
            net.a.netns().wait_tcp_listen(local.port(), SECS(20))?;
            let echoed = echo_roundtrip(&net.a, local, b"through -L\n");
            drop(l);
            ensure!(echoed? == b"through -L\n", "-L echo");
            let out = ssh_cmd(&net, &client, t, &["-W", &svc.to_string()], &[])
                .stdin(b"through -W\n".to_vec())
                .run_unchecked()?;
            ensure!(out.stdout == "through -W\n", "{out:?}");

            agent_forwarding(&net, &client, t)?;
            Ok(())
        },
        || net.report(),
    )
}

/// An interactive session in tmux: a command, a resize, the exit status.
fn pty_session(net: &Net<'_>, client: &LocalAccount, t: &str) -> anyhow::Result<()> {
    let sock = client.path("tmux.sock");
    let status = client.path("pty-status");
    let mut ssh_argv = vec!["ssh".to_owned(), "-tt".into()];
    ssh_argv.extend(ssh_opts(client));
    ssh_argv.push(format!("{t}@{}", net.b_ip));
    let quoted: Vec<String> = ssh_argv.iter().map(|a| format!("'{a}'")).collect();
    let shell = format!("{}; echo $? > {}", quoted.join(" "), status.display());
    let tmux = |args: &[&str]| -> anyhow::Result<String> {
        let mut argv = vec!["-S".to_owned(), sock.display().to_string()];
        argv.extend(args.iter().map(|s| (*s).to_owned()));
        Ok(as_user(&net.a, client, "tmux", &argv)
            .run_unchecked()?
            .stdout)
    };
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "80",
        "-y",
        "24",
        &shell,
    ])?;
    let result = (|| {
        let pane = || tmux(&["capture-pane", "-p", "-t", "t"]);
        tmux(&[
            "send-keys",
            "-t",
            "t",
            "echo T$((6*7)); stty size; tty",
            "Enter",
        ])?;
        wait_until(SECS(20), "the command's output in the pane", || {
            let p = pane()?;
            Ok(p.contains("T42") && p.contains("24 80") && p.contains("/dev/pts/"))
        })?;
        tmux(&["resize-window", "-t", "t", "-x", "100", "-y", "30"])?;
        tmux(&["send-keys", "-t", "t", "clear; stty size", "Enter"])?;
        wait_until(SECS(20), "the new size in the pane", || {
            Ok(pane()?.contains("30 100"))
        })?;
        tmux(&["send-keys", "-t", "t", "exit 3", "Enter"])?;
        let code = wait_for(SECS(20), "ssh's exit status", || {
            Ok(std::fs::read_to_string(&status)
                .ok()
                .filter(|s| !s.trim().is_empty()))
        })?;
        ensure!(code.trim() == "3", "exit status {code:?}");
        Ok(())
    })();
    let _ = tmux(&["kill-server"]);
    result
}

/// `ssh -A` with an agent on `a`: `ssh-add -l` on `b` lists `a`'s key.
fn agent_forwarding(net: &Net<'_>, client: &LocalAccount, t: &str) -> anyhow::Result<()> {
    let key = client.path("agentkey");
    let keygen = ["-q", "-t", "ed25519", "-N", "", "-C", "weft-e2e", "-f"].map(str::to_owned);
    let mut args = keygen.to_vec();
    args.push(key.display().to_string());
    ok(
        &as_user(&net.a, client, "ssh-keygen", &args).run_unchecked()?,
        "ssh-keygen",
    )?;
    let fp = as_user(
        &net.a,
        client,
        "ssh-keygen",
        &["-lf".into(), format!("{}.pub", key.display())],
    )
    .run_unchecked()?;
    let fingerprint = fp
        .stdout
        .split_whitespace()
        .nth(1)
        .context("no fingerprint")?
        .to_owned();
    let sock = client.path("agent.sock");
    let _agent = spawn(
        as_user(
            &net.a,
            client,
            "ssh-agent",
            &["-D".into(), "-a".into(), sock.display().to_string()],
        ),
        "ssh-agent",
    )?;
    // The socket file appears at bind(), a moment before the agent listens:
    // wait until ssh-add gets through, not just for the file.
    let sock_env = sock.display().to_string();
    wait_until(SECS(10), "ssh-add to reach the agent", || {
        Ok(
            as_user(&net.a, client, "ssh-add", &[key.display().to_string()])
                .env("SSH_AUTH_SOCK", &sock_env)
                .run_unchecked()?
                .status
                .success(),
        )
    })?;
    let out = ssh_cmd(
        net,
        client,
        t,
        &["-A"],
        &["ssh-add -l; echo sock=$SSH_AUTH_SOCK"],
    )
    .env("SSH_AUTH_SOCK", &sock_env)
    .run_unchecked()?;
    ok(&out, "ssh -A")?;
    ensure!(
        out.stdout.contains(&fingerprint) && out.stdout.contains("sock=/"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn policy_refuses_root_unlisted_users_and_acl_blocked_nodes_and_a_change_closes_sessions()
-> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wse", "c")?;
    let target = LocalAccount::create("wse", "t")?;
    let other = LocalAccount::create("wse", "o")?;
    let net = tailnet(&lab, &nonroot_policy(&target.name), true)?;
    let c = net.c.as_ref().unwrap();
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;
            // autogroup:nonroot: a non-root login works, root is refused with the reason.
            let out = ssh(&net, &client, t, &[], &["id -un"])?;
            ok(&out, "ssh as the target")?;
            // Refused at once, the reason in a userauth banner, nothing to type
            // (`-tt` would let a prompt reach us; there is none to answer, so one would hang).
            let started = weft_lab::now();
            let out = ssh(&net, &client, "root", &["-tt"], &["id -un"])?;
            let took = started.elapsed();
            ensure!(out.status.code() == Some(255), "{out:?}");
            refused_in_one_line(&out, "as root: ", "only non-root users (autogroup:nonroot)")?;
            ensure!(took < SECS(5), "the refusal took {took:?}");
            ensure!(out.stdout.is_empty(), "{out:?}");
            // The same line for a BatchMode client (it never tries keyboard-interactive).
            let out = ssh(&net, &client, "root", &["-o", "BatchMode=yes"], &["id -un"])?;
            refused_in_one_line(&out, "as root: ", "only non-root users (autogroup:nonroot)")?;

            // c (tag:ci) is allowed by the SSH rules but the ACL gives it only tcp/8080.
            echo_service(&net.b, SocketAddr::new(net.b_ip.into(), 8080))?;
            // (The first packets also set up the WireGuard session between c and b.)
            wait_until(SECS(30), "c to reach b:8080", || {
                Ok(echo_roundtrip(c, SocketAddr::new(net.b_ip.into(), 8080), b"x")? == b"x")
            })?;
            let out = ssh_cmd_from(c, net.b_ip, &client, t, &[], &["true"]).run_unchecked()?;
            ensure!(
                !out.status.success(),
                "c logged in despite the ACL: {out:?}"
            );
            ensure!(
                out.stderr.contains("timed out")
                    || out.stderr.contains("refused")
                    || out.stderr.contains("unreachable"),
                "{}",
                out.stderr
            );
            // `weft ssh` does not hang there: it says why within a few seconds.
            let started = weft_lab::now();
            let out = ssh_common::weft_ssh(&net._tailnet, c, &client, &[&format!("{t}@b"), "true"])
                .run_unchecked()?;
            let took = started.elapsed();
            ensure!(!out.status.success(), "{out:?}");
            ensure!(
                out.stderr.contains("did not answer on port 22")
                    && out
                        .stderr
                        .contains("the tailnet policy may not allow SSH from this node")
                    && out
                        .stderr
                        .contains("weft-control policy explain --src c --dst b:22"),
                "{}",
                out.stderr
            );
            ensure!(took < SECS(8), "weft ssh took {took:?}");

            // A session that the next policy no longer allows is closed when it arrives.
            let long = spawn(
                ssh_cmd(&net, &client, t, &[], &["echo started; sleep 120"]),
                "long-session",
            )?;
            wait_until(SECS(20), "the long session to start", || {
                Ok(long.log().contains("started"))
            })?;
            let only_other = policy(&format!(
                r#"{{"action": "accept", "src": ["autogroup:member"], "dst": ["tag:server"], "users": ["{}"]}}"#,
                other.name
            ));
            net.control.set_policy(&only_other)?;
            let closed = long
                .wait_exit(SECS(30))
                .context("the session outlived the policy change")?;
            ensure!(!closed.success(), "{closed}");
            ensure!(long.log().contains("policy"), "{}", long.log());

            // Now the target is not in `users`; the listed user is.
            let out = ssh(&net, &client, t, &["-tt"], &["true"])?;
            ensure!(out.status.code() == Some(255), "{out:?}");
            refused_in_one_line(&out, &format!("as {t}: "), "lists")?;
            let out = ssh(&net, &client, &other.name, &[], &["id -un"])?;
            ok(&out, "ssh as the listed user")?;
            ensure!(out.stdout.trim() == other.name, "{out:?}");
            Ok(())
        },
        || net.report(),
    )
}

#[test]
fn garbage_long_names_and_channel_floods_hit_limits_and_ssh_off_closes_the_port()
-> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wse", "c")?;
    let target = LocalAccount::create("wse", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;
            let port22 = SocketAddr::new(net.b_ip.into(), 22);

            // Garbage instead of an SSH identification: the server answers and hangs up.
            for i in 0..5u8 {
                let mut s = net.a.netns().tcp_connect(port22, SECS(5))?;
                s.set_read_timeout(Some(SECS(15)))?;
                let junk: Vec<u8> = (0..64 * 1024u32).map(|j| (j as u8) ^ i ^ 0x5a).collect();
                let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
                let _ = s.write_all(&junk);
                let mut sink = Vec::new();
                // Read to EOF or error: either way the server closed it, within the timeout.
                let r = s.read_to_end(&mut sink);
                ensure!(
                    !matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
                    "garbage connection {i} was left open"
                );
                ensure!(
                    sink.starts_with(b"SSH-2.0-"),
                    "no SSH banner: {:?}",
                    String::from_utf8_lossy(&sink)
                );
            }

            // Oversized login names are refused outright.
            let long_name = "x".repeat(4000);
            let out = ssh(&net, &client, &long_name, &[], &["true"])?;
            ensure!(out.status.code() == Some(255), "{out:?}");

            // A channel flood through one connection: 100 simultaneous -L connections; the
            // server's per-connection channel cap refuses the excess, the rest are echoed.
            let svc = echo_service(&net.b, "127.0.0.1:0".parse()?)?;
            let local: SocketAddr = "127.0.0.1:24023".parse()?;
            let fwd = format!("{local}:{svc}");
            let l = spawn(
                ssh_cmd(
                    &net,
                    &client,
                    t,
                    &["-o", "ExitOnForwardFailure=yes", "-N", "-L", &fwd],
                    &[],
                ),
                "ssh-flood",
            )?;
            net.a.netns().wait_tcp_listen(local.port(), SECS(20))?;
            let mut held = Vec::new();
            let mut echoed = 0;
            for _ in 0..100 {
                let Ok(mut s) = net.a.netns().tcp_connect(local, SECS(5)) else {
                    continue;
                };
                s.set_read_timeout(Some(SECS(5)))?;
                let mut buf = [0u8; 4];
                if s.write_all(b"ping").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"ping"
                {
                    echoed += 1;
                }
                held.push(s);
            }
            drop(held);
            drop(l);
            ensure!(
                (1..=64).contains(&echoed),
                "{echoed} forwarded connections echoed (cap 64)"
            );

            // After all that the daemon serves new sessions (past the per-source rate limit).
            wait_until(SECS(30), "a normal session after the abuse", || {
                Ok(ssh(&net, &client, t, &[], &["id -un"])?.stdout.trim() == t.as_str())
            })?;
            ensure!(net.b.backend_state()? == "running", "b is not running");

            // --ssh off closes the port (and unpublishes the keys); on again serves again.
            net.b.weft(["set", "--ssh=false"]).run()?;
            wait_until(SECS(20), "port 22 to close", || {
                Ok(net.a.netns().tcp_connect(port22, SECS(2)).is_err())
            })?;
            net.a
                .wait_status(SECS(30), "b's host keys to go", |v| host_keys(v, "b") == 0)?;
            net.b.weft(["set", "--ssh"]).run()?;
            wait_ssh_ready(&net.a, &net.b)?;
            ok(
                &ssh(&net, &client, t, &[], &["true"])?,
                "ssh after --ssh on again",
            )?;

            // `weft down` stops the server too (the listeners go, not just the tunnel).
            net.b.weft(["down"]).run()?;
            wait_until(SECS(20), "b's SSH listeners to go after down", || {
                Ok(ssh_listeners(&net.b)?.is_empty())
            })?;
            Ok(())
        },
        || net.report(),
    )
}

// ---- connections from the node itself ------------------------------------------------------

/// Members may log in to their own nodes as any non-root user and as root (issue 10's policy):
/// a login from the node's own address must still be attributed to the local account that
/// opened it, not to the node's owner.
fn own_nodes_policy() -> String {
    policy(
        r#"{"action": "accept", "src": ["autogroup:member"], "dst": ["autogroup:self"], "users": ["autogroup:nonroot", "root"]}"#,
    )
}

/// Control with [`own_nodes_policy`], alice's `a` running `--ssh` and alice's `b` (a peer).
fn own_nodes_tailnet(lab: &Lab) -> anyhow::Result<(Tailnet<'_>, Control, Node, Node)> {
    let (tailnet, control) = tailnet_and_control(lab, &[ALICE], &own_nodes_policy())?;
    let a = tailnet.node("a")?;
    a.up(&control, &alice_key(&control, &[])?)
        .arg("--ssh")
        .run()?;
    let b = tailnet.node("b")?;
    b.up(&control, &alice_key(&control, &[])?).run()?;
    a.netns().wait_tcp_listen(22, SECS(20))?;
    Ok((tailnet, control, a, b))
}

/// OpenSSH options for a login whose host key is not pinned by `weft ssh` (the node itself):
/// no user config, the key remembered in `known_hosts` on first use.
fn self_ssh_opts(known_hosts: &Path) -> Vec<String> {
    [
        "-F".to_owned(),
        "/dev/null".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known_hosts.display()),
        "-o".into(),
        "StrictHostKeyChecking=accept-new".into(),
        "-o".into(),
        "ConnectTimeout=5".into(),
    ]
    .into()
}

/// The URL-ish host part for `ssh user@host` (IPv6 needs no brackets there).
fn ssh_login(user: &str, ip: &std::net::IpAddr) -> String {
    format!("{user}@{ip}")
}

#[test]
fn a_local_user_cannot_become_root_or_another_user_through_the_nodes_own_address()
-> anyhow::Result<()> {
    let lab = lab!();
    let local = LocalAccount::create("wse", "l")?;
    let other = LocalAccount::create("wse", "o")?;
    let (_tailnet, control, a, b) = own_nodes_tailnet(&lab)?;
    let report = || {
        format!(
            "=== control ===\n{}\n{}\n{}",
            control.log(),
            a.report(),
            b.report()
        )
    };
    with_diagnostics(
        || {
            let a4: std::net::IpAddr = a.ip4()?.into();
            let a6: std::net::IpAddr = a.weft(["ip", "-6"]).run()?.stdout.trim().parse()?;
            let kh = local.write("self_known_hosts", b"")?;
            let as_local = |login: &str| -> anyhow::Result<Output> {
                let mut args = self_ssh_opts(&kh);
                args.push(login.to_owned());
                args.push("id -un".to_owned());
                Ok(as_user(&a, &local, "ssh", &args).run_unchecked()?)
            };
            for ip in [a4, a6] {
                // The escalation: a non-root account asks for root, or for someone else.
                for target in ["root", other.name.as_str()] {
                    let out = as_local(&ssh_login(target, &ip))?;
                    ensure!(
                        out.status.code() == Some(255) && out.stdout.is_empty(),
                        "uid {} logged in as {target} over {ip}: {out:?}",
                        local.uid
                    );
                    ensure!(
                        out.stderr.contains(&format!("local uid {}", local.uid))
                            && out.stderr.contains(&format!("as {target}")),
                        "the refusal does not say why ({target} over {ip}): {}",
                        out.stderr
                    );
                }
                // As itself: allowed (the policy allows any non-root user here).
                let out = as_local(&ssh_login(&local.name, &ip))?;
                ok(&out, &format!("ssh to itself over {ip}"))?;
                ensure!(out.stdout.trim() == local.name, "{out:?}");
            }

            // Root on the node may log in as root and as anyone.
            let root_kh = lab.dir().join("root_known_hosts");
            for (login, want) in [
                (ssh_login("root", &a4), "root"),
                (ssh_login("root", &a6), "root"),
                (ssh_login(&other.name, &a4), other.name.as_str()),
            ] {
                let mut args = self_ssh_opts(&root_kh);
                args.extend([login.clone(), "id -un".to_owned()]);
                let out = a
                    .netns()
                    .command("ssh")
                    .args(&args)
                    .timeout(SECS(60))
                    .run_unchecked()?;
                ok(&out, &format!("root: ssh {login}"))?;
                ensure!(out.stdout.trim() == want, "{out:?}");
            }

            // The log names the local uid of every self-connection, accepted or refused.
            let log = a.log();
            for uid in [local.uid, 0] {
                ensure!(
                    log.contains(&format!("client_uid={uid}")),
                    "no log line with client_uid={uid}"
                );
            }

            // A peer (alice's b) still logs in under the same policy, as root even.
            let b_kh = lab.dir().join("b_known_hosts");
            let mut args = self_ssh_opts(&b_kh);
            args.extend([ssh_login("root", &a4), "id -un".to_owned()]);
            wait_until(SECS(30), "b's SSH login to a", || {
                let out = b
                    .netns()
                    .command("ssh")
                    .args(&args)
                    .timeout(SECS(60))
                    .run_unchecked()?;
                Ok(out.status.success() && out.stdout.trim() == "root")
            })?;
            Ok(())
        },
        report,
    )
}
