//! SFTP and SCP through weftd's built-in SFTP server (`weftd sftp-server`, run as the login
//! user), with stock OpenSSH clients. weftd never looks for a system `sftp-server` (its
//! `sftp_server_paths` is empty), so this is what a node with only `openssh-client` sees;
//! legacy `scp -O` runs the node's `scp -t/-f`, which `openssh-client` ships.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use super::*;

/// 10 MiB from the OS RNG.
fn random_10mib() -> anyhow::Result<Vec<u8>> {
    let mut data = vec![0u8; 10 << 20];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut data)?;
    Ok(data)
}

/// Runs `program args…` on `a` as `client` and requires success.
fn run_ok(
    net: &Net<'_>,
    client: &LocalAccount,
    program: &str,
    args: Vec<String>,
) -> anyhow::Result<Output> {
    let mut all = ssh_opts(client);
    all.extend(args);
    let out = as_user(&net.a, client, program, &all).run_unchecked()?;
    ok(&out, program)?;
    Ok(out)
}

/// Requires `path` on the node to be the target's, with `want` as its content hash.
fn landed(path: &Path, target: &LocalAccount, want: &str) -> anyhow::Result<std::fs::Metadata> {
    ensure!(
        sha256(path)? == want,
        "{}: checksum differs",
        path.display()
    );
    let md = std::fs::metadata(path)?;
    ensure!(
        md.uid() == target.uid && md.gid() == target.gid,
        "{} written as {}:{}, want {}:{}",
        path.display(),
        md.uid(),
        md.gid(),
        target.uid,
        target.gid
    );
    Ok(md)
}

#[test]
fn scp_both_modes_and_sftp_move_10_mib_both_ways_as_the_target_user_without_a_system_sftp_server()
-> anyhow::Result<()> {
    let lab = lab!();
    let client = LocalAccount::create("wsf", "c")?;
    let target = LocalAccount::create("wsf", "t")?;
    let net = tailnet(&lab, &nonroot_policy("nobody"), false)?;
    with_diagnostics(
        || {
            ok(
                &weft_ssh(&net, &client, &["--print-config"])?,
                "weft ssh --print-config",
            )?;
            let t = &target.name;
            let at = |p: &Path| format!("{t}@{}:{}", net.b_ip, p.display());
            let big = client.write("big", &random_10mib()?)?;
            std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o640))?;
            let mtime = 1_700_000_000;
            let ts = filetime_set(&big, mtime)?;
            let want = sha256(&big)?;

            // scp, SFTP mode (the default since OpenSSH 9), -p keeps mode and times.
            #[allow(clippy::disallowed_methods)] // measuring only
            let started = std::time::Instant::now();
            run_ok(
                &net,
                &client,
                "scp",
                vec![
                    "-p".into(),
                    big.display().to_string(),
                    at(&target.path("s-big")),
                ],
            )?;
            let up = started.elapsed();
            let md = landed(&target.path("s-big"), &target, &want)?;
            ensure!(
                md.mode() & 0o7777 == 0o640,
                "scp -p mode {:o}",
                md.mode() & 0o7777
            );
            ensure!(md.mtime() == ts, "scp -p mtime {} want {ts}", md.mtime());
            #[allow(clippy::disallowed_methods)] // measuring only
            let started = std::time::Instant::now();
            run_ok(
                &net,
                &client,
                "scp",
                vec![
                    at(&target.path("s-big")),
                    client.path("s-back").display().to_string(),
                ],
            )?;
            let down = started.elapsed();
            ensure!(
                sha256(&client.path("s-back"))? == want,
                "scp (sftp) from b: checksum"
            );
            eprintln!("scp (SFTP mode) 10 MiB: up {up:?}, down {down:?}");

            // Legacy scp -O: `scp -t` / `scp -f` run as the user through exec.
            run_ok(
                &net,
                &client,
                "scp",
                vec![
                    "-O".into(),
                    "-p".into(),
                    big.display().to_string(),
                    at(&target.path("o-big")),
                ],
            )?;
            let md = landed(&target.path("o-big"), &target, &want)?;
            ensure!(
                md.mode() & 0o7777 == 0o640,
                "scp -O -p mode {:o}",
                md.mode() & 0o7777
            );
            run_ok(
                &net,
                &client,
                "scp",
                vec![
                    "-O".into(),
                    at(&target.path("o-big")),
                    client.path("o-back").display().to_string(),
                ],
            )?;
            ensure!(
                sha256(&client.path("o-back"))? == want,
                "scp -O from b: checksum"
            );

            // sftp batch: put, get, and the rest of what people type.
            let batch = client.write(
                "batch",
                format!(
                    "put {big} sftp-big\nget sftp-big {back}\nchmod 600 sftp-big\nmkdir dir\n\
                     rename sftp-big dir/moved\nsymlink dir/moved link\nls -l\nls -l dir\n\
                     df .\nrm link\n",
                    big = big.display(),
                    back = client.path("sftp-back").display(),
                )
                .as_bytes(),
            )?;
            let out = run_ok(
                &net,
                &client,
                "sftp",
                vec![
                    "-b".into(),
                    batch.display().to_string(),
                    format!("{t}@{}", net.b_ip),
                ],
            )?;
            ensure!(
                out.stdout.contains("moved") && out.stdout.contains("link"),
                "ls: {}",
                out.stdout
            );
            ensure!(
                sha256(&client.path("sftp-back"))? == want,
                "sftp get: checksum"
            );
            let md = landed(&target.path("dir/moved"), &target, &want)?;
            ensure!(
                md.mode() & 0o7777 == 0o600,
                "sftp chmod: {:o}",
                md.mode() & 0o7777
            );
            ensure!(!target.path("link").exists(), "sftp rm");

            // Bad input, as the user's own permissions allow: /etc/shadow through `..`, a
            // symlink loop; the session survives both (`-` keeps a batch going on errors).
            let batch = client.write(
                "batch-bad",
                format!(
                    "-get ../../../../../../etc/shadow {s1}\n-get /etc/shadow {s2}\n\
                     symlink loop-a loop-b\nsymlink loop-b loop-a\n-get loop-a {s3}\n\
                     -ls loop-a/\nls -l\n",
                    s1 = client.path("stolen1").display(),
                    s2 = client.path("stolen2").display(),
                    s3 = client.path("loop-got").display(),
                )
                .as_bytes(),
            )?;
            let out = run_ok(
                &net,
                &client,
                "sftp",
                vec![
                    "-b".into(),
                    batch.display().to_string(),
                    format!("{t}@{}", net.b_ip),
                ],
            )?;
            ensure!(out.stderr.contains("Permission denied"), "shadow: {out:?}");
            ensure!(
                !client.path("stolen1").exists() && !client.path("stolen2").exists(),
                "/etc/shadow was copied"
            );
            ensure!(
                !client.path("loop-got").exists(),
                "a symlink loop yielded a file"
            );
            ensure!(
                out.stdout.contains("loop-a"),
                "the session ended early: {out:?}"
            );
            Ok(())
        },
        || net.report(),
    )
}

/// Sets `path`'s access and modification times to `secs` (what `scp -p` must carry over).
fn filetime_set(path: &Path, secs: i64) -> anyhow::Result<i64> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs)?);
    std::fs::File::options()
        .write(true)
        .open(path)?
        .set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    Ok(secs)
}
