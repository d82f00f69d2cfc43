//! `curl -fsSL http://SERVER/install.sh | sh -s -- --dry-run` in a node's namespace against a
//! real weft-control serving a package directory: the script it serves names that server, finds
//! the package for this architecture in the server's SHA256SUMS, downloads and verifies it, and
//! says what it would do; with the server stopped it stops saying so. Real curl, dash and dpkg;
//! the dry run changes nothing, so the package's contents are a stand-in (the test does not
//! install it).
#![allow(clippy::unwrap_used)]

use anyhow::ensure;
use weft_lab::e2e_lab;
use weft_lab::tailnet::{Binaries, ControlOptions, Tailnet};

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
