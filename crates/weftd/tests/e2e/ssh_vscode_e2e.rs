//! The SSH patterns of VS Code's Remote-SSH extension and of agent-style socket forwarding, with
//! the stock OpenSSH client: `ssh -T -D PORT host bash` with a script on stdin and SOCKS
//! connections through the same connection, `ControlMaster`/`ControlPersist` reuse,
//! `RemoteCommand`, keep-alives on an idle session, and unix-socket forwarding both ways
//! (`-R /remote.sock:/local.sock`, `-L PORT:/remote.sock`), done on the node with the login
//! user's permissions.

use std::io::BufRead as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::{UnixListener, UnixStream};

use super::*;

/// A port nothing listens on in `node`'s namespace.
fn free_port(node: &Node) -> anyhow::Result<u16> {
    let l = node
        .netns()
        .tcp_listener(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
    Ok(l.local_addr()?.port())
}

/// A directory only root may enter or write (0700 root:root), removed on drop.
struct RootOnlyDir(PathBuf);

impl RootOnlyDir {
    fn new(tag: &str) -> anyhow::Result<Self> {
        let p = PathBuf::from(format!("/tmp/weft-e2e-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o700))?;
        Ok(RootOnlyDir(p))
    }
}

impl Drop for RootOnlyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn vscode_remote_ssh_sequence_bash_on_stdin_socks_controlmaster_remotecommand_keepalive()
-> anyhow::Result<()> {
    let lab = e2e_lab!("setpriv", "ss", "ssh", "nc", "useradd", "/dev/net/tun");
    let client = LocalAccount::create("wv", "c")?;
    let target = LocalAccount::create("wv", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;
            let echo = echo_service(&net.b, SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
            let socks = free_port(&net.a)?;
            let done = client.path("vscode-done");

            // 1. `ssh -T -D PORT host bash`, the script on stdin, as VS Code starts its server;
            //    the session stays until the SOCKS part below is over.
            let script = format!(
                "set -e\necho \"weft-vsc-start $(id -un) $HOME\"\nuname -s\n\
                 for i in $(seq 3); do echo \"line $i\"; done\n\
                 for i in $(seq 300); do [ -e {done} ] && break; sleep 0.1; done\n\
                 echo weft-vsc-end\n",
                done = done.display()
            );
            let session = ssh_cmd(
                &net,
                &client,
                t,
                &["-T", "-D", &format!("127.0.0.1:{socks}")],
                &["bash"],
            )
            .stdin(script)
            .timeout(SECS(60));
            let (out, socks_out) = std::thread::scope(|s| -> anyhow::Result<_> {
                let h = s.spawn(|| session.run_unchecked());
                let socks_part = (|| -> anyhow::Result<Output> {
                    net.a.netns().wait_tcp_listen(socks, SECS(20))?;
                    // 2. 100 short connections through the client's SOCKS5 proxy (`-D`, so
                    //    direct-tcpip channels) to a TCP service on b's loopback.
                    let lp = format!(
                        "ok=0; for i in $(seq 100); do r=$(echo m$i | timeout 5 nc -N -X 5 -x \
                         127.0.0.1:{socks} 127.0.0.1 {port}); [ \"$r\" = m$i ] && ok=$((ok+1)); \
                         done; echo ok=$ok",
                        port = echo.port()
                    );
                    #[allow(clippy::disallowed_methods)] // measuring only
                    let started = std::time::Instant::now();
                    let out = as_user(&net.a, &client, "bash", &["-c".into(), lp]).run_unchecked();
                    eprintln!("100 SOCKS connections through -D: {:?}", started.elapsed());
                    Ok(out?)
                })();
                client.write("vscode-done", b"")?;
                let out = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("ssh thread panicked"))??;
                Ok((out, socks_part?))
            })?;
            ok(&out, "ssh -T -D bash")?;
            ensure!(
                out.stdout
                    .contains(&format!("weft-vsc-start {t} {}", target.home.display()))
                    && out.stdout.contains("Linux\nline 1\nline 2\nline 3\n")
                    && out.stdout.contains("weft-vsc-end"),
                "bash script output: {}",
                out.stdout
            );
            ensure!(
                socks_out.stdout.trim() == "ok=100",
                "SOCKS connections: {} {}",
                socks_out.stdout,
                socks_out.stderr
            );

            // 3. ControlMaster/ControlPersist: a master, then a second ssh through its socket
            //    (ProxyCommand=false: a fresh connection could not even start).
            let cp = format!("ControlPath={}", client.path("cm-%C").display());
            let out = ssh(
                &net,
                &client,
                t,
                &[
                    "-o",
                    "ControlMaster=auto",
                    "-o",
                    &cp,
                    "-o",
                    "ControlPersist=30",
                ],
                &["echo master-up"],
            )?;
            ok(&out, "ssh ControlMaster")?;
            ensure!(out.stdout.contains("master-up"), "master: {}", out.stdout);
            let out = ssh(
                &net,
                &client,
                t,
                &[
                    "-o",
                    "ControlMaster=no",
                    "-o",
                    &cp,
                    "-o",
                    "ProxyCommand=false",
                ],
                &["echo via-master $(id -un)"],
            )?;
            ok(&out, "ssh through the control socket")?;
            ensure!(
                out.stdout.contains(&format!("via-master {t}")),
                "mux: {}",
                out.stdout
            );
            let out = ssh(&net, &client, t, &["-o", &cp, "-O", "exit"], &[])?;
            ok(&out, "ssh -O exit")?;

            // 4. RemoteCommand from the configuration, as VS Code users set it.
            let out = ssh(
                &net,
                &client,
                t,
                &[
                    "-o",
                    "RemoteCommand=echo remote-command-ran",
                    "-o",
                    "RequestTTY=no",
                ],
                &[],
            )?;
            ok(&out, "ssh RemoteCommand")?;
            ensure!(
                out.stdout.contains("remote-command-ran"),
                "RemoteCommand: {}",
                out.stdout
            );

            // 5. An idle session kept alive: a keepalive@openssh.com every second, two missed
            //    would end it ("Timeout, server … not responding").
            let out = ssh(
                &net,
                &client,
                t,
                &["-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=2"],
                &["sleep 5; echo still-here"],
            )?;
            ok(&out, "idle ssh with ServerAliveInterval=1")?;
            ensure!(
                out.stdout.contains("still-here"),
                "keepalive: {}",
                out.stdout
            );
            Ok(())
        },
        || net.report(),
    )
}

#[test]
fn unix_socket_forwarding_both_ways_as_the_login_user() -> anyhow::Result<()> {
    let lab = e2e_lab!("setpriv", "ss", "ssh", "useradd", "/dev/net/tun");
    let client = LocalAccount::create("wu", "c")?;
    let target = LocalAccount::create("wu", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    let root_only = RootOnlyDir::new("unix")?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;
            let fwd_opts = ["-o", "ExitOnForwardFailure=yes", "-N"];

            // -R: a socket on the client (the test's listener, reachable by the client account)
            // gets what is written to the forwarded socket on b.
            let local = client.path("local.sock");
            let listener = UnixListener::bind(&local)?;
            std::fs::set_permissions(&local, std::fs::Permissions::from_mode(0o666))?;
            let remote = target.path("remote.sock");
            let spec = format!("{}:{}", remote.display(), local.display());
            let mut args: Vec<&str> = fwd_opts.to_vec();
            args.extend(["-R", &spec]);
            let fwd = spawn(ssh_cmd(&net, &client, t, &args, &[]), "ssh-R-unix")?;
            wait_until(SECS(20), "the -R socket on b", || {
                fwd.ensure_running()?;
                Ok(remote.exists())
            })?;
            let md = std::fs::symlink_metadata(&remote)?;
            ensure!(
                md.uid() == target.uid && md.gid() == target.gid,
                "-R socket is {}:{}, want the target's {}:{}",
                md.uid(),
                md.gid(),
                target.uid,
                target.gid
            );
            ensure!(
                md.mode() & 0o777 == 0o600,
                "-R socket mode {:o}",
                md.mode() & 0o777
            );
            let mut conn = UnixStream::connect(&remote)?;
            conn.write_all(b"through -R unix\n")?;
            listener.set_nonblocking(false)?;
            let (accepted, _) =
                wait_for(SECS(10), "the forwarded connection on the client", || {
                    listener.set_nonblocking(true)?;
                    match listener.accept() {
                        Ok(x) => Ok(Some(x)),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
                        Err(e) => Err(e.into()),
                    }
                })?;
            accepted.set_nonblocking(false)?;
            accepted.set_read_timeout(Some(SECS(5)))?;
            let mut line = String::new();
            std::io::BufReader::new(&accepted).read_line(&mut line)?;
            ensure!(line == "through -R unix\n", "-R unix delivered {line:?}");
            drop((conn, accepted));
            fwd.stop()?;
            wait_until(SECS(10), "the -R socket to be removed", || {
                Ok(!remote.exists())
            })?;

            // The same forward added and cancelled through a control master
            // (`cancel-streamlocal-forward@openssh.com`): the socket goes at once.
            let cp = format!("ControlPath={}", client.path("cm-%C").display());
            let master = spawn(
                ssh_cmd(
                    &net,
                    &client,
                    t,
                    &["-o", "ControlMaster=yes", "-o", &cp, "-N"],
                    &[],
                ),
                "ssh-master",
            )?;
            wait_until(SECS(20), "the control master", || {
                master.ensure_running()?;
                Ok(ssh(&net, &client, t, &["-o", &cp, "-O", "check"], &[])?
                    .status
                    .success())
            })?;
            let out = ssh(
                &net,
                &client,
                t,
                &["-o", &cp, "-O", "forward", "-R", &spec],
                &[],
            )?;
            ok(&out, "ssh -O forward -R unix")?;
            wait_until(SECS(10), "the -R socket via the master", || {
                Ok(remote.exists())
            })?;
            let out = ssh(
                &net,
                &client,
                t,
                &["-o", &cp, "-O", "cancel", "-R", &spec],
                &[],
            )?;
            ok(&out, "ssh -O cancel -R unix")?;
            wait_until(SECS(10), "the cancelled socket to be removed", || {
                Ok(!remote.exists())
            })?;
            ensure!(master.is_running(), "the master ended with the cancel");
            drop(master);

            // -R where the user may not create files (a root-only directory), and onto an
            // existing path: both refused, nothing created.
            for (path, what) in [
                (root_only.0.join("x.sock"), "a root-only directory"),
                (
                    target.write("exists.sock", b"not a socket")?,
                    "an existing path",
                ),
            ] {
                let spec = format!("{}:{}", path.display(), local.display());
                let mut args: Vec<&str> = fwd_opts.to_vec();
                args.extend(["-R", &spec]);
                let out = ssh_cmd(&net, &client, t, &args, &[])
                    .timeout(SECS(30))
                    .run_unchecked()?;
                ensure!(
                    !out.status.success() && out.stderr.contains("remote port forwarding failed"),
                    "-R into {what}: {} {}",
                    out.status,
                    out.stderr
                );
            }
            ensure!(
                !root_only.0.join("x.sock").exists(),
                "a socket appeared in the root-only directory"
            );
            ensure!(
                std::fs::read(target.path("exists.sock"))? == b"not a socket",
                "the existing file was replaced"
            );

            // -L PORT:/path: reaches the target's own socket on b (0600, the target's) ...
            let svc = target.path("svc.sock");
            let svc_l = UnixListener::bind(&svc)?;
            std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o600))?;
            nix::unistd::chown(&svc, Some(target.uid.into()), Some(target.gid.into()))?;
            std::thread::spawn(move || {
                for s in svc_l.incoming().take(4) {
                    let Ok(mut s) = s else { return };
                    let Ok(mut r) = s.try_clone() else { return };
                    let _ = std::io::copy(&mut r, &mut s);
                }
            });
            let port = free_port(&net.a)?;
            let spec = format!("127.0.0.1:{port}:{}", svc.display());
            let mut args: Vec<&str> = fwd_opts.to_vec();
            args.extend(["-L", &spec]);
            let fwd = spawn(ssh_cmd(&net, &client, t, &args, &[]), "ssh-L-unix")?;
            net.a.netns().wait_tcp_listen(port, SECS(20))?;
            let local_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let echoed = echo_roundtrip(&net.a, local_addr, b"through -L unix\n")?;
            ensure!(echoed == b"through -L unix\n", "-L unix echo");
            drop(fwd);

            // ... but not a socket only root may reach (0600 root in a root-only directory).
            let secret = root_only.0.join("root.sock");
            let secret_l = UnixListener::bind(&secret)?;
            secret_l.set_nonblocking(true)?;
            let port = free_port(&net.a)?;
            let spec = format!("127.0.0.1:{port}:{}", secret.display());
            let mut args: Vec<&str> = fwd_opts.to_vec();
            args.extend(["-L", &spec]);
            let fwd = spawn(ssh_cmd(&net, &client, t, &args, &[]), "ssh-L-root")?;
            net.a.netns().wait_tcp_listen(port, SECS(20))?;
            let mut s = net
                .a
                .netns()
                .tcp_connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), SECS(5))?;
            s.set_read_timeout(Some(SECS(10)))?;
            let _ = s.write_all(b"let me in\n");
            let mut buf = [0u8; 16];
            let n = s.read(&mut buf).unwrap_or(0);
            ensure!(n == 0, "a root-only socket answered through -L");
            ensure!(
                matches!(secret_l.accept(), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock),
                "the root-only socket accepted a connection"
            );
            drop(fwd);
            let log = net.b.log();
            ensure!(
                log.contains("direct-streamlocal refused")
                    && log.contains("streamlocal-forward refused"),
                "no refusal lines in b's log"
            );
            Ok(())
        },
        || net.report(),
    )
}
