//! End-to-end: the real OpenSSH client against the server, sessions and
//! file transfer. Needs root (throwaway users); skips otherwise unless
//! WEFT_E2E=1.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

use crate::common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_as_the_user_with_home_clean_env_and_exit_status() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("x");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;

    let out = run(srv.ssh(&user.name, &[], &["id -un; echo $HOME; pwd"])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("{n}\n{h}\n{h}\n", n = user.name, h = user.home.display())
    );

    // No escalation: ids and groups are exactly the user's.
    let out = run(srv.ssh(
        &user.name,
        &[],
        &["id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups)' /proc/self/status"],
    ))
    .await;
    let t = text(&out.stdout);
    let mut lines = t.lines();
    assert_eq!(lines.next().unwrap(), user.uid.to_string());
    assert_eq!(lines.next().unwrap(), user.gid.to_string());
    let group_gid = nix::unistd::Group::from_name(&user.group)
        .unwrap()
        .unwrap()
        .gid
        .as_raw();
    let mut groups: Vec<u32> = lines
        .next()
        .unwrap()
        .split(' ')
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort_unstable();
    let mut want = vec![user.gid, group_gid];
    want.sort_unstable();
    assert_eq!(groups, want);
    let u = user.uid;
    assert!(t.contains(&format!("Uid:\t{u}\t{u}\t{u}\t{u}")), "{t}");

    // Exit status comes back; stdin EOF reaches the command.
    let out = run(srv.ssh(&user.name, &[], &["exit 7"])).await;
    assert_eq!(out.status.code(), Some(7));
    let mut c = srv.ssh(&user.name, &[], &["wc -c"]);
    c.stdin(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&[b'z'; 100_000]).await.unwrap();
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text(&out.stdout).trim(), "100000");

    // Clean environment: only allowlisted client variables get through.
    let mut c = srv.ssh(
        &user.name,
        &["-o", "SendEnv=LANG WEFT_SECRET"],
        &["echo \"$LANG|$WEFT_SECRET|$PATH|$USER|$SHELL\"; env | grep -c ^LD_ || true"],
    );
    c.env("LANG", "C.UTF-8").env("WEFT_SECRET", "leak");
    let out = run(c).await;
    assert_eq!(
        text(&out.stdout),
        format!(
            "C.UTF-8||/usr/local/bin:/usr/bin:/bin:/usr/games|{}|/bin/bash\n0\n",
            user.name
        )
    );

    // A signal-killed command is reported as such (ssh exits 255).
    let out = run(srv.ssh(&user.name, &[], &["kill -TERM $$"])).await;
    assert_eq!(out.status.code(), Some(255), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_pty_session_resizes_and_returns_the_exit_status() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("p");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;
    let sock = srv.dir.path().join("tmux.sock");
    let status_file = srv.dir.path().join("status");
    let ssh_cmd = {
        let mut args = vec!["/usr/bin/ssh".to_owned(), "-tt".to_owned()];
        args.extend(srv.opts());
        args.extend([
            "-o".into(),
            "IdentityAgent=none".into(),
            "-p".into(),
            srv.addr.port().to_string(),
        ]);
        args.push(format!("{}@127.0.0.1", user.name));
        let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        format!("{}; echo $? > {}", quoted.join(" "), status_file.display())
    };
    let tmux = |args: &[&str]| {
        let out = std::process::Command::new("/usr/bin/tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .output()
            .unwrap();
        text(&out.stdout)
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
        &ssh_cmd,
    ]);
    let pane = || tmux(&["capture-pane", "-p", "-t", "t"]);

    tmux(&[
        "send-keys",
        "-t",
        "t",
        "echo T$((6*7)); stty size; stat -c %U $(tty)",
        "Enter",
    ]);
    let p = wait_for(Duration::from_secs(20), || {
        pane().contains("T42").then(pane)
    })
    .await;
    wait_for(Duration::from_secs(10), || {
        let p = pane();
        (p.contains("24 80") && p.contains(&user.name)).then_some(())
    })
    .await;
    let _ = p;

    tmux(&["resize-window", "-t", "t", "-x", "100", "-y", "30"]);
    tmux(&["send-keys", "-t", "t", "clear; stty size", "Enter"]);
    wait_for(Duration::from_secs(20), || {
        pane().contains("30 100").then_some(())
    })
    .await;

    tmux(&["send-keys", "-t", "t", "exit 3", "Enter"]);
    let status = wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(&status_file)
            .ok()
            .filter(|s| !s.is_empty())
    })
    .await;
    assert_eq!(status.trim(), "3");
    tmux(&["kill-server"]);
}

async fn sha256(path: &std::path::Path) -> String {
    let out = tokio::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .await
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_and_sftp_move_files_both_ways_as_the_user() {
    if !e2e_ready() {
        return;
    }
    let user = TestUser::create("f");
    let srv = start(FakeAuthz::new().with(&user.name, Rule::Accept(user.name.clone()))).await;
    let local = srv.dir.path().join("ten.bin");
    let data: Vec<u8> = (0..10 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&local, &data).unwrap();
    let want = sha256(&local).await;
    let port = srv.addr.port().to_string();

    for (mode, flag) in [("sftp-protocol", None), ("legacy-scp", Some("-O"))] {
        let remote = format!("{}@127.0.0.1:up-{mode}.bin", user.name);
        let mut up = tokio::process::Command::new("/usr/bin/scp");
        up.args(srv.opts())
            .args(["-P", &port])
            .args(flag)
            .arg(&local)
            .arg(&remote);
        let out = run(up).await;
        assert!(out.status.success(), "{mode} upload: {}", text(&out.stderr));
        let on_server = user.home.join(format!("up-{mode}.bin"));
        assert_eq!(sha256(&on_server).await, want, "{mode}");
        let meta = std::fs::metadata(&on_server).unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&meta),
            user.uid,
            "files are created as the user"
        );

        let back = srv.dir.path().join(format!("down-{mode}.bin"));
        let mut down = tokio::process::Command::new("/usr/bin/scp");
        down.args(srv.opts())
            .args(["-P", &port])
            .args(flag)
            .arg(&remote)
            .arg(&back);
        let out = run(down).await;
        assert!(
            out.status.success(),
            "{mode} download: {}",
            text(&out.stderr)
        );
        assert_eq!(sha256(&back).await, want, "{mode}");
    }

    // sftp -b: put, get, ls.
    let batch = srv.dir.path().join("batch");
    let got = srv.dir.path().join("got.bin");
    std::fs::write(
        &batch,
        format!(
            "put {} put.bin\nget put.bin {}\nls -l\n",
            local.display(),
            got.display()
        ),
    )
    .unwrap();
    let mut c = tokio::process::Command::new("/usr/bin/sftp");
    c.args(srv.opts())
        .args(["-P", &port, "-b"])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", user.name));
    let out = run(c).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("put.bin"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(sha256(&got).await, want);

    // SFTP runs as the user: a root-only file stays unreadable.
    let secret = srv.dir.path().join("root-only");
    std::fs::write(&secret, "top secret").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let stolen = srv.dir.path().join("stolen");
    std::fs::write(
        &batch,
        format!("get {} {}\n", secret.display(), stolen.display()),
    )
    .unwrap();
    let mut c = tokio::process::Command::new("/usr/bin/sftp");
    c.args(srv.opts())
        .args(["-P", &port, "-b"])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", user.name));
    let out = run(c).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("Permission denied"),
        "{}",
        text(&out.stderr)
    );
    assert!(!stolen.exists());
}
