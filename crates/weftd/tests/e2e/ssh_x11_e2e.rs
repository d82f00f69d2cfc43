//! X11 forwarding through Weft SSH with the stock OpenSSH client and a real X server: Debian's
//! `Xvfb` on the client node (a unix socket only, `-nolisten tcp`), `xdpyinfo` run on the server
//! node through `ssh -X`. The namespaces share the file system, so the display the session gets
//! (TCP `localhost:N` in `b`'s namespace) can only reach the Xvfb through the SSH connection.

use std::os::unix::fs::MetadataExt as _;

use super::*;

/// An Xvfb of a size no other display has, on a free display number (a unix socket only).
fn xvfb(net: &Net<'_>, client: &LocalAccount) -> anyhow::Result<(u32, Process)> {
    let n = (200..900)
        .map(|i| 200 + (std::process::id() + i) % 700)
        .find(|n| {
            !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                && !Path::new(&format!("/tmp/.X{n}-lock")).exists()
        })
        .context("no free X display number")?;
    let args: Vec<String> = [
        format!(":{n}"),
        "-nolisten".into(),
        "tcp".into(),
        "-screen".into(),
        "0".into(),
        "1234x567x24".into(),
    ]
    .into();
    let x = spawn(as_user(&net.a, client, "Xvfb", &args), "xvfb")?;
    let sock = PathBuf::from(format!("/tmp/.X11-unix/X{n}"));
    wait_until(SECS(20), "Xvfb's socket", || {
        x.ensure_running()?;
        Ok(sock.exists())
    })?;
    Ok((n, x))
}

/// The X11 TCP listeners (ports 6010–7009) in `node`'s namespace.
fn x11_listeners(node: &Node) -> anyhow::Result<Vec<String>> {
    let out = node.netns().exec("ss", ["-Hltn"])?;
    Ok(out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(3))
        .filter(|a| {
            a.rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| (6010..7010).contains(&p))
        })
        .map(str::to_owned)
        .collect())
}

/// The entries of an Xauthority file (`xauth -f FILE list`, as root).
fn xauth_list(file: &Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("xauth")
        .arg("-f")
        .arg(file)
        .arg("list")
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn ssh_x_runs_xdpyinfo_against_the_clients_xvfb_with_the_cookie_in_the_users_xauthority()
-> anyhow::Result<()> {
    let lab = e2e_lab!(
        "setpriv",
        "ss",
        "ssh",
        "useradd",
        "Xvfb",
        "xauth",
        "xdpyinfo",
        "/dev/net/tun"
    );
    let client = LocalAccount::create("wx", "c")?;
    let target = LocalAccount::create("wx", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let (n, _xvfb) = xvfb(&net, &client)?;
            let display = format!(":{n}");
            let t = &target.name;
            let remote = "echo \"DISPLAY=$DISPLAY\"; xdpyinfo";

            // Off by default: no DISPLAY, and OpenSSH prints the refusal.
            let out = ssh_cmd(&net, &client, t, &["-X"], &[remote])
                .env("DISPLAY", &display)
                .run_unchecked()?;
            ensure!(
                out.stdout.contains("DISPLAY=\n"),
                "pref off: a DISPLAY was set: {}",
                out.stdout
            );
            ensure!(
                out.stderr.contains("X11 forwarding request failed")
                    && out.stderr.contains("weft set --ssh-x11"),
                "pref off: no refusal on stderr: {}",
                out.stderr
            );
            ensure!(
                x11_listeners(&net.b)?.is_empty(),
                "pref off: an X11 listener"
            );

            // On: xdpyinfo on b talks to a's Xvfb (its odd screen size) through the channel.
            net.b.weft(["set", "--ssh-x11"]).run()?;
            for flag in ["-X", "-Y"] {
                let out = ssh_cmd(&net, &client, t, &[flag], &[remote])
                    .env("DISPLAY", &display)
                    .run_unchecked()?;
                ok(&out, &format!("ssh {flag} xdpyinfo"))?;
                let shown = out
                    .stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("DISPLAY="))
                    .unwrap_or("");
                ensure!(
                    shown.starts_with("localhost:") && shown.ends_with(".0"),
                    "{flag}: DISPLAY={shown}"
                );
                let num: u32 = shown
                    .trim_start_matches("localhost:")
                    .trim_end_matches(".0")
                    .parse()?;
                ensure!(num >= 10, "{flag}: display {num} is below the offset 10");
                ensure!(
                    out.stdout.contains(&format!("name of display:    {shown}"))
                        && out.stdout.contains("dimensions:    1234x567 pixels"),
                    "{flag}: xdpyinfo did not reach the client's Xvfb:\n{}",
                    out.stdout
                );
            }

            // The cookie went into the target's own ~/.Xauthority, written as the target; the
            // session's entry and listener are gone once it ended.
            let xa = target.path(".Xauthority");
            let md = std::fs::metadata(&xa).context("no ~/.Xauthority for the target")?;
            ensure!(
                md.uid() == target.uid && md.gid() == target.gid,
                "~/.Xauthority is {}:{}, want {}:{}",
                md.uid(),
                md.gid(),
                target.uid,
                target.gid
            );
            wait_until(SECS(5), "the session's cookie and listener to go", || {
                Ok(xauth_list(&xa)?.trim().is_empty() && x11_listeners(&net.b)?.is_empty())
            })?;

            // While a session runs, its cookie is there (the fake one OpenSSH sent) and
            // `localhost:N` listens on b's loopback only.
            let out = ssh_cmd(
                &net,
                &client,
                t,
                &["-Y"],
                &["xauth list; ss -Hltn | grep -c ':60[1-9][0-9] ' || true"],
            )
            .env("DISPLAY", &display)
            .run_unchecked()?;
            ok(&out, "ssh -Y xauth list")?;
            ensure!(
                out.stdout.contains("/unix:") && out.stdout.contains("MIT-MAGIC-COOKIE-1"),
                "xauth list in the session: {}",
                out.stdout
            );
            let listeners = x11_listeners(&net.b)?;
            ensure!(
                listeners
                    .iter()
                    .all(|a| a.starts_with("127.0.0.1:") || a.starts_with("[::1]:")),
                "X11 listeners beyond loopback: {listeners:?}"
            );
            Ok(())
        },
        || net.report(),
    )
}

#[test]
fn a_user_the_policy_refuses_gets_no_display_and_no_cookie() -> anyhow::Result<()> {
    let lab = e2e_lab!(
        "setpriv",
        "ss",
        "ssh",
        "useradd",
        "Xvfb",
        "xauth",
        "/dev/net/tun"
    );
    let client = LocalAccount::create("wx", "c")?;
    // tag:ci may log in only as `ci_user`; alice (a member) as any non-root user. `root` is
    // refused for everyone.
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            net.b.weft(["set", "--ssh-x11"]).run()?;
            let (n, _xvfb) = xvfb(&net, &client)?;
            let before = std::fs::metadata("/root/.Xauthority")
                .ok()
                .map(|m| m.mtime_nsec());
            let out = ssh_cmd(&net, &client, "root", &["-X"], &["echo DISPLAY=$DISPLAY"])
                .env("DISPLAY", format!(":{n}"))
                .run_unchecked()?;
            ensure!(!out.status.success(), "root was let in: {}", out.stdout);
            ensure!(
                !out.stdout.contains("DISPLAY=") && out.stderr.contains("weft:"),
                "refusal: stdout {} stderr {}",
                out.stdout,
                out.stderr
            );
            ensure!(
                x11_listeners(&net.b)?.is_empty(),
                "an X11 listener for a refused login"
            );
            let after = std::fs::metadata("/root/.Xauthority")
                .ok()
                .map(|m| m.mtime_nsec());
            ensure!(
                before == after,
                "/root/.Xauthority changed for a refused login"
            );
            Ok(())
        },
        || net.report(),
    )
}
