//! [`Machine`]: a Debian system booted with `systemd-nspawn --boot` in one of the run's network
//! namespaces, its own systemd as PID 1 — for tests of what users do on a real host: install
//! packages, `systemctl`, `apt-get remove`.
//!
//! The root file system is a read-only tree built once per machine (`.ci/run` debootstraps
//! Debian 12 into [`DEBIAN12_ROOTFS`]); each boot gets a fresh writable layer in memory
//! (`--volatile=overlay`), so nothing a test does outlives its machine and the tree stays clean.
//! The machine's only network is the namespace it is given (`--network-namespace-path`): it
//! reaches what the test put on that namespace's links and nothing else.
//!
//! Why nspawn and not systemd as PID 1 of a bare `unshare --pid --mount`: systemd boots there
//! too, but it runs in the host's cgroup hierarchy (it creates `init.scope`, `system.slice`, …
//! at the top of the host's `name=systemd` and cgroup2 trees), sees the host's `/sys` writable
//! and has no `/dev` or console of its own; nspawn sets all of that up (a cgroup namespace,
//! read-only `/sys`, a private `/dev` with `/dev/net/tun`, `container=` for the guest, halt on
//! SIGTERM). The host here has no systemd as PID 1, so nspawn runs unregistered
//! (`--register=no --keep-unit`): [`Machine::boot`] puts it in a cgroup of its own, named after
//! the run, which the teardown and the stale sweep remove.
//!
//! Commands run inside with `nsenter` into the machine's namespaces ([`Machine::sh`]), with a
//! clean environment, so a test sees what a root shell on that host sees.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::netns::Netns;
use crate::process::{Cmd, Process};
use crate::wait::{wait_for, wait_until};
use crate::{Signal, names};

/// The Debian 12 (bookworm) tree `.ci/run` builds with `debootstrap --variant=minbase` (systemd,
/// dbus, curl, iproute2, …; see there).
pub const DEBIAN12_ROOTFS: &str = "/opt/weft-test/debian12";

/// How long a boot may take until `systemctl is-system-running` says `running`.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the machine may take to halt after SIGTERM before it is killed.
const HALT_GRACE: Duration = Duration::from_secs(20);

/// `PATH` and friends for commands inside: a root login's environment, not the test's.
const GUEST_ENV: [&str; 4] = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
];

/// A booted container. Dropping it halts it (SIGTERM to nspawn, which asks the guest's systemd
/// to halt; SIGKILL after a grace period) and removes its cgroups.
#[derive(Debug)]
pub struct Machine {
    name: String,
    leader: u32,
    cgroups: Vec<PathBuf>,
    nspawn: Mutex<Option<Process>>,
}

/// The cgroup trees a container's cgroup is made in: the cgroup2 root on a unified host, else
/// the `name=systemd` hierarchy and the hybrid cgroup2 one (systemd in the guest needs both).
pub fn cgroup_roots() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    ["systemd", "unified"]
        .iter()
        .map(|h| base.join(h))
        .filter(|p| p.join("cgroup.procs").exists())
        .collect()
}

/// Removes the cgroup `dir` and everything under it, deepest first. A cgroup with processes
/// cannot be removed; the error says which.
pub(crate) fn remove_cgroup_tree(dir: &Path) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(LabError::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries.filter_map(std::result::Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LabError::io(
            format!(
                "removing cgroup {} (processes: {})",
                dir.display(),
                std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            e,
        )),
        _ => Ok(()),
    }
}

/// Returns the PIDs in the cgroup `dir` and below.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.filter_map(std::result::Result::ok) {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

/// Removes the cgroups of dead runs (named `weft-<pid>-<tag>-…`); returns the problems met. What
/// still runs in them is that run's nspawn and its guest (the guest's processes were also in the
/// run's namespaces, which the sweep emptied before): killed, by PID, then the cgroups go.
pub(crate) fn cleanup_stale_cgroups(alive: impl Fn(u32) -> bool + Copy) -> Vec<String> {
    let mut problems = Vec::new();
    for root in cgroup_roots() {
        let dirs: Vec<String> = std::fs::read_dir(&root)
            .map(|rd| {
                rd.filter_map(std::result::Result::ok)
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        for name in names::stale_run_names(dirs.iter().map(String::as_str), alive) {
            let dir = root.join(name);
            for pid in cgroup_pids(&dir).into_iter().filter(|&p| p > 0) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            let removed = wait_until(
                Duration::from_secs(5),
                &format!("stale cgroup {} to empty", dir.display()),
                || Ok(remove_cgroup_tree(&dir).is_ok()),
            );
            if removed.is_err()
                && let Err(e) = remove_cgroup_tree(&dir)
            {
                problems.push(e.to_string());
            }
        }
    }
    problems
}

impl Machine {
    /// Boots `rootfs` (a Debian tree with systemd, e.g. [`DEBIAN12_ROOTFS`]) as machine
    /// `<prefix>-<short>` (also its host name) in namespace `netns`, and waits up to
    /// [`BOOT_TIMEOUT`] until its systemd reports `running`.
    ///
    /// # Errors
    /// When nspawn cannot start, the boot does not finish in time, or it ends `degraded` (the
    /// message lists the failed units and the boot log).
    pub fn boot(lab: &Lab, netns: &Netns, short: &str, rootfs: &Path) -> Result<Machine> {
        if !rootfs.join("sbin/init").exists() {
            return Err(LabError::Invalid(format!(
                "{} has no sbin/init: build the Debian tree first (the packages phase of .ci/run \
                 debootstraps it)",
                rootfs.display()
            )));
        }
        let name = format!("{}-{short}", lab.prefix());
        let roots = cgroup_roots();
        if roots.is_empty() {
            return Err(LabError::Invalid(
                "no cgroup hierarchy under /sys/fs/cgroup to put the container in".into(),
            ));
        }
        let mut cgroups = Vec::new();
        for root in &roots {
            let dir = root.join(&name);
            std::fs::create_dir_all(&dir)
                .map_err(|e| LabError::io(format!("creating cgroup {}", dir.display()), e))?;
            cgroups.push(dir);
        }
        // nspawn moves itself into the cgroup of its own (`--keep-unit`: the one it starts in),
        // so `sh` joins ours first and then becomes nspawn.
        let join: String = cgroups
            .iter()
            .map(|d| {
                format!(
                    "echo $$ >{}/cgroup.procs && ",
                    crate::shell_quote(&[d.display().to_string()])
                )
            })
            .collect();
        let netns_path = Path::new(crate::NETNS_DIR).join(netns.name());
        let spawned = lab
            .host_command("sh")
            .args(["-c", &format!("{join}exec \"$@\""), "sh", "systemd-nspawn"])
            .args([
                "--quiet",
                "--boot",
                "--directory",
                &rootfs.display().to_string(),
                "--volatile=overlay",
                "--register=no",
                "--keep-unit",
                "--link-journal=no",
                // A network namespace of its own, but nspawn (v252) grants CAP_NET_ADMIN only
                // with --private-network: weftd needs it for its TUN device and routes.
                "--capability=CAP_NET_ADMIN",
                "--resolv-conf=off",
                "--timezone=off",
                "--console=pipe",
                "--machine",
                &name,
            ])
            .arg(format!("--network-namespace-path={}", netns_path.display()))
            .spawn(&format!("{short}-nspawn"));
        let nspawn = match spawned {
            Ok(p) => p,
            Err(e) => {
                for d in &cgroups {
                    let _ = remove_cgroup_tree(d);
                }
                return Err(e);
            }
        };
        let nspawn_pid = nspawn.pid();
        let mut machine = Machine {
            name,
            leader: 0,
            cgroups,
            nspawn: Mutex::new(Some(nspawn)),
        };
        // The guest's PID 1 is nspawn's child.
        machine.leader = wait_for(
            Duration::from_secs(10),
            &format!("the init of {} to start", machine.name),
            || {
                machine.ensure_nspawn_running()?;
                let children = std::fs::read_to_string(format!(
                    "/proc/{nspawn_pid}/task/{nspawn_pid}/children"
                ))
                .unwrap_or_default();
                Ok(children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .find(|p| {
                        std::fs::read_to_string(format!("/proc/{p}/comm"))
                            .is_ok_and(|c| c.trim() == "systemd")
                    }))
            },
        )
        .map_err(|e| machine.with_report(e))?;
        // `is-system-running --wait` says "offline" until systemd listens on its socket; then it
        // waits for the boot to finish and exits non-zero for anything but "running".
        let state = wait_for(
            BOOT_TIMEOUT,
            &format!("{} to finish booting", machine.name),
            || {
                machine.ensure_nspawn_running()?;
                let out = machine
                    .command("systemctl")
                    .args(["is-system-running", "--wait"])
                    .timeout(BOOT_TIMEOUT)
                    .run_unchecked()?;
                let state = out.stdout.trim().to_owned();
                if state.is_empty() || state == "offline" {
                    Err(crate::wait::observed(format!(
                        "{state:?} {}",
                        out.stderr.trim()
                    )))
                } else {
                    Ok(Some(state))
                }
            },
        )
        .map_err(|e| machine.with_report(e))?;
        if state != "running" {
            return Err(machine.with_report(LabError::Invalid(format!(
                "{} booted {state:?}, not \"running\"",
                machine.name
            ))));
        }
        Ok(machine)
    }

    /// Returns the machine's name (`<prefix>-<short>`), also its host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the host PID of the guest's PID 1 (its systemd).
    pub fn leader(&self) -> u32 {
        self.leader
    }

    /// Returns a [`Cmd`] that runs `program` inside the machine as root, with a root login's
    /// `PATH` and nothing of the test's environment.
    pub fn command(&self, program: &str) -> Cmd {
        crate::process::host_command("nsenter")
            .args([
                "--target",
                &self.leader.to_string(),
                "--mount",
                "--uts",
                "--ipc",
                "--net",
                "--pid",
                "--cgroup",
                "--root",
                "--wd",
                "--",
                "env",
                "-i",
            ])
            .args(GUEST_ENV)
            .arg(program)
    }

    /// Runs `program args…` inside and fails on a non-zero exit; see [`Machine::command`].
    ///
    /// # Errors
    /// As [`Cmd::run`].
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<crate::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(program).args(args).run()
    }

    /// Returns a [`Cmd`] for `sh -c script` inside (dash, Debian's `/bin/sh`).
    pub fn sh(&self, script: &str) -> Cmd {
        self.command("sh").args(["-c", script])
    }

    fn ensure_nspawn_running(&self) -> Result<()> {
        match &*self.nspawn.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(p) => p.ensure_running(),
            None => Err(LabError::Invalid(format!("{} was halted", self.name))),
        }
    }

    fn with_report(&self, e: LabError) -> LabError {
        LabError::Invalid(format!("{e}\n{}", self.report()))
    }

    /// Returns what helps when a test fails: failed units and the end of the journal (asked
    /// inside while it runs), and nspawn's own log.
    pub fn report(&self) -> String {
        let mut s = format!("--- machine {}\n", self.name);
        if self.leader != 0 && self.ensure_nspawn_running().is_ok() {
            for script in [
                "systemctl --no-pager --failed",
                "journalctl --no-pager -b -n 150",
            ] {
                let out = self
                    .sh(script)
                    .timeout(Duration::from_secs(10))
                    .run_unchecked();
                match out {
                    Ok(o) => s.push_str(&format!("$ {script}\n{}{}", o.stdout, o.stderr)),
                    Err(e) => s.push_str(&format!("$ {script}\n{e}\n")),
                }
            }
        }
        if let Some(p) = &*self.nspawn.lock().unwrap_or_else(|e| e.into_inner()) {
            s.push_str(&p.report());
        }
        s
    }

    /// Halts the machine (SIGTERM to nspawn: the guest's systemd shuts down; SIGKILL after
    /// 20 s) and removes its cgroups. Later calls do nothing.
    ///
    /// # Errors
    /// When a cgroup cannot be removed (a process of the guest survived).
    pub fn halt(&self) -> Result<()> {
        let Some(nspawn) = self.nspawn.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return Ok(());
        };
        if nspawn.is_running() {
            let _ = nspawn.signal(Signal::SIGTERM);
            if nspawn.wait_exit(HALT_GRACE).is_err() {
                // nspawn forwards a second SIGTERM as "terminate now"; the drop then kills it.
                let _ = nspawn.signal(Signal::SIGTERM);
                if let Ok(leader) = i32::try_from(self.leader)
                    && leader != 0
                {
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(leader), Signal::SIGKILL);
                }
            }
        }
        drop(nspawn);
        let mut problem = None;
        for dir in &self.cgroups {
            // The guest's last processes may take a moment to be reaped.
            let removed = wait_until(
                Duration::from_secs(5),
                &format!("cgroup {} to empty", dir.display()),
                || Ok(remove_cgroup_tree(dir).is_ok()),
            );
            if removed.is_err() {
                problem = Some(remove_cgroup_tree(dir));
            }
        }
        problem.unwrap_or(Ok(()))
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        if let Err(e) = self.halt() {
            eprintln!("weft-lab: halting {}: {e}", self.name);
        }
    }
}
