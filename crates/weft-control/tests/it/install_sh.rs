//! packaging/install.sh (the script `GET /install.sh` serves) run by dash
//! with a test PATH: the real coreutils, grep and dpkg, and recording stand-ins
//! for the commands that would change the system (apt-get, install, sudo,
//! systemctl) and for curl (it copies files from a directory standing for the
//! server). Each stand-in that changes something appends its command line to
//! `changes.log`, so "nothing was changed" is checked, not assumed.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Output;

use weft_control::install::install_script;

const SERVER: &str = "http://weft.test:8080";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A test PATH with `real` tools linked in and stand-ins for the rest;
    /// `without`: tools left out.
    fn new(without: &[&str]) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let web = dir.path().join("web/packages");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&web).unwrap();
        for tool in [
            "dpkg",
            "id",
            "mktemp",
            "rm",
            "grep",
            "sort",
            "tail",
            "cut",
            "sha256sum",
            "chmod",
            "cat",
            "cp",
            "env",
            "setpriv",
        ] {
            if without.contains(&tool) {
                continue;
            }
            let real = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(tool))
                .find(|p| p.exists())
                .unwrap_or_else(|| panic!("{tool} is not installed"));
            std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
        }
        let log = dir.path().join("changes.log");
        let record = format!("#!/bin/sh\necho \"${{0##*/}} $*\" >> '{}'\n", log.display());
        let web_root = dir.path().join("web");
        let fakes: Vec<(&str, String)> = vec![
            ("apt-get", record.clone()),
            ("install", record.clone()),
            ("systemctl", record.clone()),
            // sudo runs the command (a recording stand-in) after recording itself.
            ("sudo", format!("{record}exec \"$@\"\n")),
            // Nothing is installed.
            ("dpkg-query", "#!/bin/sh\nexit 1\n".to_owned()),
            // curl -fsSL --retry 2 -o FILE URL: copies <web>/<path of URL> to FILE.
            (
                "curl",
                format!(
                    "#!/bin/sh\nout=\"\"\nwhile [ $# -gt 1 ]; do [ \"$1\" = -o ] && out=$2; shift; done\n\
                     p=${{1#{SERVER}/}}\n[ -f '{}'/\"$p\" ] || {{ echo \"curl: (22) 404 $1\" >&2; exit 22; }}\n\
                     cp '{}'/\"$p\" \"$out\"\n",
                    web_root.display(),
                    web_root.display()
                ),
            ),
        ];
        for (name, text) in fakes {
            if without.contains(&name) {
                continue;
            }
            let p = bin.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        // Writable by the unprivileged runs too.
        std::fs::write(&log, "").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = Env { dir };
        e.os_release(
            "ID=debian\nVERSION_ID=\"12\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
        );
        std::fs::write(e.dir.path().join("install.sh"), install_script(SERVER)).unwrap();
        e
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn os_release(&self, text: &str) {
        std::fs::write(self.path("os-release"), text).unwrap();
    }

    /// Publishes `content` as the weft package for this machine's
    /// architecture, with `listed` as the checksum file's line for it.
    fn publish(&self, content: &[u8], listed_sum_of: &[u8]) -> String {
        let arch = arch();
        let name = format!("weft_0.1.0_{arch}.deb");
        std::fs::write(self.path("web/packages").join(&name), content).unwrap();
        let sum = ring::digest::digest(&ring::digest::SHA256, listed_sum_of);
        let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            self.path("web/packages/SHA256SUMS"),
            format!("{hex}  {name}\n"),
        )
        .unwrap();
        name
    }

    fn changes(&self) -> String {
        std::fs::read_to_string(self.path("changes.log")).unwrap_or_default()
    }

    /// Runs install.sh with dash; `as_nobody`: as uid 65534 (via setpriv when root).
    fn run(&self, args: &[&str], as_nobody: bool) -> Output {
        let mut cmd = if as_nobody && nix_is_root() {
            let mut c = std::process::Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/bin/dash",
            ]);
            c
        } else {
            std::process::Command::new("/bin/dash")
        };
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        cmd.arg(self.path("install.sh"))
            .args(args)
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("TMPDIR", "/tmp")
            .env("WEFT_INSTALL_OS_RELEASE", self.path("os-release"))
            .env("WEFT_INSTALL_DEFAULTS", self.path("default-weft"))
            .output()
            .unwrap()
    }
}

fn nix_is_root() -> bool {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() == 0 }
}

fn arch() -> String {
    let out = std::process::Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn installs_the_verified_package_sets_the_login_server_and_runs_again_harmlessly() {
    if !nix_is_root() {
        return; // the non-root path (sudo) is the next test's
    }
    let e = Env::new(&[]);
    let deb = e.publish(b"a package", b"a package");
    let o = e.run(&[], false);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.ends_with(
            "Installation complete! Log in to start using Weft by running: sudo weft up\n"
        ),
        "{out}"
    );
    let changes = e.changes();
    assert!(
        changes.contains("apt-get install -y -q --no-install-recommends /tmp/")
            && changes.contains(&deb),
        "{changes}"
    );
    assert!(changes.contains("install -m 0644 "), "{changes}");
    assert!(
        changes.contains(&e.path("default-weft").display().to_string()),
        "{changes}"
    );

    // The defaults file names this server already: not written again.
    std::fs::write(
        e.path("default-weft"),
        format!("# kept\nWEFT_LOGIN_SERVER={SERVER}\n"),
    )
    .unwrap();
    std::fs::remove_file(e.path("changes.log")).unwrap();
    let o = e.run(&[], false);
    assert!(o.status.success());
    assert!(!e.changes().contains("install -m"), "{}", e.changes());
}

#[test]
fn a_user_without_root_goes_through_sudo() {
    let e = Env::new(&[]);
    e.publish(b"a package", b"a package");
    let o = e.run(&[], true);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    let changes = e.changes();
    assert!(
        changes.contains("sudo env DEBIAN_FRONTEND=noninteractive apt-get install"),
        "{changes}"
    );
}

#[test]
fn a_user_without_root_or_sudo_is_told_so_and_nothing_changes() {
    let e = Env::new(&["sudo"]);
    e.publish(b"a package", b"a package");
    let o = e.run(&[], true);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err,
        "weft install: installing needs root: run this as root, or install sudo and run it as a user who may use it.\n"
    );
    assert_eq!(e.changes(), "");
}

#[test]
fn unsupported_systems_get_one_sentence_and_nothing_changes() {
    for (os, want) in [
        (
            "ID=fedora\nVERSION_ID=40\nPRETTY_NAME=\"Fedora Linux 40\"\n",
            "Fedora Linux 40 is not supported: this installer supports Debian and Ubuntu (and their derivatives) only.",
        ),
        (
            "ID=debian\nVERSION_ID=\"11\"\nPRETTY_NAME=\"Debian GNU/Linux 11 (bullseye)\"\n",
            "Debian GNU/Linux 11 (bullseye) is too old: Weft needs Debian 12 or later.",
        ),
        (
            "ID=ubuntu\nVERSION_ID=\"20.04\"\nPRETTY_NAME=\"Ubuntu 20.04.6 LTS\"\n",
            "Ubuntu 20.04.6 LTS is too old: Weft needs Ubuntu 22.04 or later.",
        ),
    ] {
        let e = Env::new(&[]);
        e.publish(b"a package", b"a package");
        e.os_release(os);
        let o = e.run(&[], false);
        let (_, err) = text(&o);
        assert_eq!(o.status.code(), Some(1), "{os}");
        assert_eq!(err, format!("weft install: {want}\n"));
        assert_eq!(e.changes(), "");
    }
    // A new Ubuntu release and Debian testing (no VERSION_ID) pass the check.
    for os in [
        "ID=ubuntu\nVERSION_ID=\"26.04\"\nPRETTY_NAME=\"Ubuntu 26.04\"\n",
        "ID=debian\nPRETTY_NAME=\"Debian GNU/Linux forky/sid\"\n",
        "ID=linuxmint\nID_LIKE=\"ubuntu debian\"\nVERSION_ID=\"22\"\nPRETTY_NAME=\"Linux Mint 22\"\n",
    ] {
        let e = Env::new(&[]);
        e.publish(b"a package", b"a package");
        e.os_release(os);
        let o = e.run(&["--dry-run"], false);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{os}: {out}{err}");
    }
}

#[test]
fn missing_curl_is_named_and_nothing_changes() {
    let e = Env::new(&["curl"]);
    let o = e.run(&[], false);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        err,
        "weft install: curl is needed to download Weft: install it with 'apt-get install curl' and run this again.\n"
    );
    assert_eq!(e.changes(), "");
}

#[test]
fn a_corrupt_or_partial_download_stops_before_anything_changes() {
    let e = Env::new(&[]);
    let deb = e.publish(b"a pack", b"a package"); // cut short
    let o = e.run(&[], false);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        err.starts_with(&format!(
            "weft install: the download of {deb} is corrupt or incomplete (sha256 "
        )) && err.ends_with("; nothing was changed.\n"),
        "{err}"
    );
    assert_eq!(e.changes(), "", "apt-get, install or systemctl ran");
}

#[test]
fn a_server_that_is_down_or_has_no_package_for_this_architecture_changes_nothing() {
    let e = Env::new(&[]);
    let o = e.run(&[], false);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.ends_with(&format!(
        "weft install: cannot fetch the package list {SERVER}/packages/SHA256SUMS (is the server up?); nothing was changed.\n"
    )), "{err}");
    std::fs::write(
        e.path("web/packages/SHA256SUMS"),
        format!("{}  weft_0.1.0_s390x.deb\n", "0".repeat(64)),
    )
    .unwrap();
    let o = e.run(&[], false);
    let (_, err) = text(&o);
    assert_eq!(
        err,
        format!(
            "weft install: {SERVER} has no weft package for {} (none in its packages/SHA256SUMS); nothing was changed.\n",
            arch()
        )
    );
    assert_eq!(e.changes(), "");
}

#[test]
fn dry_run_downloads_and_verifies_but_changes_nothing() {
    let e = Env::new(&[]);
    let deb = e.publish(b"a package", b"a package");
    let o = e.run(&["--dry-run"], false);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}{err}");
    assert!(
        out.contains(&format!("Installing {deb} (sha256 verified).")),
        "{out}"
    );
    assert!(out.contains("would run: "), "{out}");
    assert!(
        out.ends_with("Dry run complete: nothing was changed.\n"),
        "{out}"
    );
    assert_eq!(e.changes(), "");
}

#[test]
fn the_template_without_a_server_asks_for_one() {
    let e = Env::new(&[]);
    std::fs::write(
        e.path("install.sh"),
        weft_control::install::INSTALL_SH_TEMPLATE,
    )
    .unwrap();
    let o = e.run(&[], false);
    let (_, err) = text(&o);
    assert!(err.contains("does not know its server"), "{err}");
    let o = e.run(&["--dry-run", "--server", SERVER], false);
    assert!(
        o.status.success() || text(&o).1.contains("package list"),
        "{:?}",
        text(&o)
    );
}
