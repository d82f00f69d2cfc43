//! Installing Weft as users do, against a real weft-control serving `/install.sh` and the
//! packages in a namespace:
//!
//! * `curl -fsSL http://SERVER/install.sh | sh -s -- --dry-run` in a node's namespace: the
//!   script names that server, finds the package for this architecture in the server's
//!   SHA256SUMS, downloads and verifies it, and says what it would do; with the server stopped
//!   it stops saying so (a stand-in package: the dry run installs nothing).
//! * The real thing on a fresh Debian 12 booted with systemd-nspawn (weft-lab's
//!   [`Machine`]): install.sh installs the `weft` package built from this tree, systemd runs
//!   weftd.service, `weft up --authkey` joins with no `--login-server`, `apt-get remove` leaves
//!   no interface, route or DNS change behind and a reinstall is the same node with the same IP,
//!   `apt-get purge` + reinstall is a new node with a new IP; the `weft-control` package runs
//!   under the same systemd and `systemd-analyze verify` accepts both installed units.
//!
//! The packages: `$WEFT_TEST_DEBS` when set (`.ci/run` builds them once from the test build's
//! binaries, before the tests, and lints the same files later), else built here by
//! `packaging/build-debs.sh` from the binaries next to this test's weftd.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weft_lab::machine::{DEBIAN12_ROOTFS, Machine};
use weft_lab::tailnet::{Binaries, ControlOptions, KeyOptions, Tailnet};
use weft_lab::{Lab, e2e_lab, host_command, wait_for, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

#[test]
fn install_sh_fetched_from_weft_control_verifies_its_package_and_dry_runs() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun", "curl", "dash", "dpkg");
    let tailnet = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let packages = lab.dir().join("packages");
    std::fs::create_dir_all(&packages)?;
    let arch = String::from_utf8(
        std::process::Command::new("dpkg")
            .arg("--print-architecture")
            .output()?
            .stdout,
    )?
    .trim()
    .to_owned();
    let deb = format!("weft_0.1.0_{arch}.deb");
    std::fs::write(
        packages.join(&deb),
        b"stand-in package: the dry run does not install it",
    )?;
    let control = tailnet.control_with(
        "ctl",
        ControlOptions {
            serve_args: vec!["--packages-dir".into(), packages.display().to_string()],
        },
    )?;
    let node = tailnet.node("n")?;
    let url = control.url();
    let defaults = lab.dir().join("default-weft");
    let script = format!(
        "curl -fsSL {url}/install.sh | WEFT_INSTALL_DEFAULTS={} dash -s -- --dry-run",
        defaults.display()
    );
    let out = node
        .netns()
        .command("sh")
        .args(["-c", &script])
        .run_unchecked()?;
    ensure!(out.status.success(), "{}{}", out.stdout, out.stderr);
    for want in [
        format!("Installing Weft from {url} on "),
        format!("Installing {deb} (sha256 verified)."),
        "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends /".to_owned(),
        format!(
            "Making {url} the default login server ({})",
            defaults.display()
        ),
        "Dry run complete: nothing was changed.".to_owned(),
    ] {
        ensure!(
            out.stdout.contains(&want),
            "missing {want:?} in:\n{}",
            out.stdout
        );
    }
    ensure!(
        !defaults.exists(),
        "the dry run wrote {}",
        defaults.display()
    );

    // The server down: the script (saved) stops at its first download.
    let saved = lab.dir().join("install.sh");
    node.netns()
        .command("curl")
        .args([
            "-fsSL",
            "-o",
            &saved.display().to_string(),
            &format!("{url}/install.sh"),
        ])
        .run()?;
    control.stop()?;
    let out = node
        .netns()
        .command("dash")
        .args([&saved.display().to_string(), "--dry-run"])
        .run_unchecked()?;
    ensure!(
        !out.status.success()
            && out.stderr.contains(&format!(
                "cannot fetch the package list {url}/packages/SHA256SUMS (is the server up?); nothing was changed."
            )),
        "{}{}",
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// Where `.ci/run` puts the packages it built for the tests.
const DEBS_ENV: &str = "WEFT_TEST_DEBS";
/// How long an install, removal or purge may take inside the machine.
const APT_TIMEOUT: Duration = Duration::from_secs(120);

/// Returns the directory holding `weft_*.deb` and `weft-control_*.deb` of this tree: see the
/// module comment. A `$WEFT_TEST_DEBS` package older than the weftd under test is refused (it
/// would test old code).
fn packages(lab: &Lab) -> anyhow::Result<PathBuf> {
    let weftd = Path::new(WEFTD);
    if let Some(dir) = std::env::var_os(DEBS_ENV) {
        let dir = PathBuf::from(dir);
        let built = std::fs::metadata(weftd)?.modified()?;
        let mut found = 0;
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("${DEBS_ENV}={}", dir.display()))?
        {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "deb") {
                found += 1;
                ensure!(
                    std::fs::metadata(&path)?.modified()? >= built,
                    "{} is older than {}: rebuild it (packaging/build-debs.sh target/debug {}) or unset ${DEBS_ENV}",
                    path.display(),
                    weftd.display(),
                    dir.display()
                );
            }
        }
        ensure!(
            found >= 2,
            "${DEBS_ENV}={} holds no weft and weft-control .debs",
            dir.display()
        );
        return Ok(dir);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packaging/build-debs.sh");
    let out = lab.dir().join("debs");
    host_command("sh")
        .arg(script.display().to_string())
        .arg(
            weftd
                .parent()
                .context("weftd's directory")?
                .display()
                .to_string(),
        )
        .arg(out.display().to_string())
        .timeout(Duration::from_secs(300))
        .run()?;
    Ok(out)
}

/// The first `weft_`/`weft-control_` package in `dir` (`prefix` with its underscore).
fn package_file(dir: &Path, prefix: &str) -> anyhow::Result<String> {
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) && name.ends_with(".deb") {
            return Ok(name);
        }
    }
    bail!("no {prefix}*.deb in {}", dir.display())
}

#[test]
fn install_sh_on_debian12_under_systemd_joins_survives_remove_and_purge_starts_over()
-> anyhow::Result<()> {
    let lab = e2e_lab!(
        "/dev/net/tun",
        "systemd-nspawn",
        "nsenter",
        "dpkg-deb",
        "/opt/weft-test/debian12/sbin/init",
    );
    let debs = packages(&lab)?;
    let tailnet = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = tailnet.control_with(
        "ctl",
        ControlOptions {
            serve_args: vec!["--packages-dir".into(), debs.display().to_string()],
        },
    )?;
    control.create_user("alice@example.com")?;
    let key = control.create_key("alice@example.com", &KeyOptions::reusable())?;
    // The machine's only network: one veth on the tailnet's underlay.
    let (ns, _) = tailnet.attach("deb")?;
    let machine = Machine::boot(&lab, &ns, "deb", Path::new(DEBIAN12_ROOTFS))?;
    with_diagnostics(
        || {
            let url = control.url();
            let sh = |script: &str| machine.sh(script).timeout(APT_TIMEOUT).run();
            let install = || -> anyhow::Result<()> {
                let out = sh(&format!("curl -fsSL {url}/install.sh | sh"))?;
                ensure!(
                    out.stdout.contains(
                        "Installation complete! Log in to start using Weft by running: sudo weft up"
                    ),
                    "install.sh:\n{}{}",
                    out.stdout,
                    out.stderr
                );
                for (check, want) in [("is-enabled", "enabled"), ("is-active", "active")] {
                    let got = machine
                        .command("systemctl")
                        .args([check, "weftd.service"])
                        .run_unchecked()?;
                    ensure!(
                        got.stdout.trim() == want,
                        "systemctl {check} weftd: {:?} (want {want})",
                        got.stdout.trim()
                    );
                }
                Ok(())
            };
            let status = || -> anyhow::Result<serde_json::Value> {
                Ok(serde_json::from_str(
                    &machine.exec("weft", ["status", "--json"])?.stdout,
                )?)
            };
            // Running, with an IPv4 address: returns it.
            let wait_running = || -> anyhow::Result<String> {
                Ok(wait_for(
                    Duration::from_secs(30),
                    "weftd in the machine to be running with an address",
                    || {
                        let v = status()?;
                        let ip = v["self"]["addresses"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|a| a.as_str())
                            .find(|a| a.starts_with("100."))
                            .map(str::to_owned);
                        if v["backend_state"] == "running" && ip.is_some() {
                            Ok(ip)
                        } else {
                            Err(weft_lab::observed(format!("{} {ip:?}", v["backend_state"])))
                        }
                    },
                )?)
            };
            // The node's (id, ipv4) at the control server, by the machine's host name.
            let hostname = machine
                .exec("cat", ["/proc/sys/kernel/hostname"])?
                .stdout
                .trim()
                .to_owned();
            let at_control = || -> anyhow::Result<(serde_json::Value, String)> {
                let nodes = control.nodes()?;
                let mine: Vec<_> = nodes
                    .iter()
                    .filter(|n| n["hostname"] == hostname.as_str() && n["authorized"] == true)
                    .collect();
                ensure!(!mine.is_empty(), "no node {hostname} at control: {nodes:?}");
                // The newest registration.
                let n = mine.iter().max_by_key(|n| n["id"].as_i64()).unwrap();
                Ok((
                    n["id"].clone(),
                    n["ipv4"].as_str().unwrap_or_default().to_owned(),
                ))
            };
            // Nothing of weftd left in the machine's network and DNS.
            let resolv_before = machine.exec("cat", ["/etc/resolv.conf"])?.stdout;
            let nothing_left = |after: &str| -> anyhow::Result<()> {
                let links = machine.exec("ip", ["-o", "link", "show"])?.stdout;
                ensure!(
                    !links.contains("weft0"),
                    "after {after}, weft0 is still there:\n{links}"
                );
                for family in ["-4", "-6"] {
                    let routes = machine
                        .exec("ip", [family, "route", "show", "table", "all"])?
                        .stdout;
                    ensure!(
                        !routes.contains("weft0") && !routes.contains("100.64."),
                        "after {after}, routes of weftd are left:\n{routes}"
                    );
                }
                let resolv = machine.exec("cat", ["/etc/resolv.conf"])?.stdout;
                ensure!(
                    resolv == resolv_before,
                    "after {after}, /etc/resolv.conf is {resolv:?}, was {resolv_before:?}"
                );
                let procs = sh("grep -lx weftd /proc/[0-9]*/comm || true")?.stdout;
                ensure!(
                    procs.trim().is_empty(),
                    "after {after}, weftd still runs: {procs}"
                );
                Ok(())
            };

            // 1. Install, join with the login server install.sh configured.
            install()?;
            let up = machine.exec("weft", ["up", "--authkey", &key, "--timeout", "30s"])?;
            let ip1 = wait_running()?;
            let (id1, control_ip1) = at_control()?;
            ensure!(
                control_ip1 == ip1,
                "control says {control_ip1}, the node {ip1}; weft up: {}",
                up.stdout
            );
            let text = machine.exec("weft", ["status"])?.stdout;
            ensure!(
                text.contains(&ip1) && text.contains(&hostname),
                "weft status does not show {ip1} and {hostname}:\n{text}"
            );
            ensure!(
                machine.exec("ip", ["-o", "link", "show", "weft0"]).is_ok(),
                "no weft0 while up"
            );

            // 2. Remove: programs gone, state kept, nothing left in the network.
            sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q weft")?;
            nothing_left("apt-get remove weft")?;
            let state = sh(
                "dpkg-query -W -f='${Status}' weft; echo; test -s /var/lib/weft/weftd.state && echo state-kept; command -v weftd weft || true",
            )?;
            ensure!(
                state.stdout == "deinstall ok config-files\nstate-kept\n",
                "after apt-get remove: {:?}",
                state.stdout
            );

            // 3. Reinstall: the same node, the same address, no `weft up` needed.
            install()?;
            let ip2 = wait_running()?;
            let (id2, control_ip2) = at_control()?;
            ensure!(
                (id2.clone(), ip2.clone(), control_ip2.clone())
                    == (id1.clone(), ip1.clone(), ip1.clone()),
                "reinstall: node {id2} with {ip2} (control: {control_ip2}), was node {id1} with {ip1}"
            );

            // 4. Purge: keys and configuration gone; reinstall + up is a new node, new address.
            sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q weft")?;
            nothing_left("apt-get purge weft")?;
            let left = sh(
                "dpkg-query -W -f='${Status}' weft 2>/dev/null; echo; ls -d /var/lib/weft /etc/default/weft /etc/default/weftd 2>/dev/null || true",
            )?;
            ensure!(
                left.stdout.trim() == "" || left.stdout.trim() == "unknown ok not-installed",
                "after apt-get purge: {:?}",
                left.stdout
            );
            install()?;
            machine.exec("weft", ["up", "--authkey", &key, "--timeout", "30s"])?;
            let ip3 = wait_running()?;
            let (id3, control_ip3) = at_control()?;
            ensure!(
                id3 != id1 && ip3 != ip1 && control_ip3 == ip3,
                "after purge + reinstall: node {id3} with {ip3} (control: {control_ip3}); before: node {id1} with {ip1}"
            );

            // 5. The server's package under the same systemd, and both units as installed.
            let server_deb = package_file(&debs, "weft-control_")?;
            sh(&format!(
                "cd /tmp && curl -fsSLO {url}/packages/{server_deb} && \
                 DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ./{server_deb}"
            ))?;
            wait_for(
                Duration::from_secs(20),
                "weft-control.service to be active",
                || {
                    let out = machine
                        .command("systemctl")
                        .args(["is-active", "weft-control.service"])
                        .run_unchecked()?;
                    let state = out.stdout.trim().to_owned();
                    if state == "active" {
                        Ok(Some(()))
                    } else {
                        Err(weft_lab::observed(state))
                    }
                },
            )?;
            let verify = machine
                .command("systemd-analyze")
                .args([
                    "verify",
                    "/lib/systemd/system/weftd.service",
                    "/lib/systemd/system/weft-control.service",
                ])
                .run()?;
            ensure!(
                verify.stderr.trim().is_empty(),
                "systemd-analyze verify warns:\n{}",
                verify.stderr
            );
            Ok(())
        },
        || format!("{}\n{}", machine.report(), control.log()),
    )
}
