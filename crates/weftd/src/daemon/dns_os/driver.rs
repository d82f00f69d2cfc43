//! The I/O side of OS DNS: reads and writes resolv.conf and its backup
//! ([`super::direct`] decides the steps), calls systemd-resolved
//! ([`super::resolved`]), and keeps what `weft dns status` and `weft status`
//! report. Owned by the coordinator, which calls [`OsDns::set`] with what it
//! wants after every change of prefs, state or netmap, and with `None` when
//! it stops.
//!
//! Every call is short and bounded (a few small files, or busctl calls with
//! a timeout), so it runs on the coordinator task.

use std::io::Write as _;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use tokio::sync::watch;

use super::direct::{self, Observed, Step, Want};
use super::resolv_conf::{ResolvConf, is_ours};
use super::resolved::{self, Busctl};
use super::{FileKind, Mode, OsDnsConfig, Paths, detect, without_service_addrs};

/// What `weft dns status` shows of the OS side.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    pub mode: Mode,
    /// Weft's configuration is in the OS now.
    pub managing: bool,
    /// What Weft put there (while `managing`).
    pub applied: Option<OsDnsConfig>,
    /// What the OS uses now: resolv.conf (direct, unsupported) or
    /// resolved's upstream list (resolved), parsed; `None` if unreadable.
    pub os: Option<ResolvConf>,
    /// The host's own resolvers, which Weft's resolver forwards to.
    pub host_nameservers: Vec<IpAddr>,
    /// Why the OS could not be configured, if it could not.
    pub health: Option<String>,
}

/// The OS DNS manager. See the module docs.
pub struct OsDns {
    // ---- set once in `start` -----------------------------------------------
    paths: Paths,
    tun: String,
    busctl: Busctl,
    // ---- owned by the coordinator --------------------------------------------
    mode: Mode,
    /// The last config asked for (`set` with the same one does nothing).
    wanted: Option<OsDnsConfig>,
    /// What is in the OS now; `None`: the host's own.
    applied: Option<OsDnsConfig>,
    /// The resolved link index `applied` was set on.
    link: Option<u32>,
    health: Option<String>,
    host_ns: watch::Sender<Vec<IpAddr>>,
}

impl OsDns {
    /// Detects the mode and, in direct mode, puts back an original left
    /// behind by a crash or `kill -9` (a backup next to our file).
    pub fn start(paths: Paths, tun: &str) -> Self {
        let mut me = OsDns {
            paths,
            tun: tun.to_owned(),
            busctl: Busctl::default(),
            mode: Mode::Direct,
            wanted: None,
            applied: None,
            link: None,
            health: None,
            host_ns: watch::Sender::new(Vec::new()),
        };
        me.mode = me.detect();
        tracing::info!(mode = me.mode.name(), "OS DNS mode");
        if me.mode == Mode::Direct
            && let Err(e) = me.drive_direct(None)
        {
            tracing::warn!(error = %e, "Cannot restore resolv.conf left by an earlier run");
            me.health = Some(e);
        }
        me.refresh_host_nameservers();
        me
    }

    /// Makes the OS use `want` (or its own configuration again, for `None`).
    /// The mode is detected again first; a failure is kept for
    /// [`OsDns::health`] and the files are left as they were. The same
    /// `want` twice in a row does nothing (a failure is retried on the next
    /// change: prefs, netmap, `up`).
    pub fn set(&mut self, want: Option<OsDnsConfig>) {
        if want == self.wanted {
            return;
        }
        self.wanted.clone_from(&want);
        let mode = self.detect();
        if mode != self.mode {
            tracing::info!(
                from = self.mode.name(),
                to = mode.name(),
                "OS DNS mode changed"
            );
            // Undo what the old mode did, where it can be undone.
            let old = std::mem::replace(&mut self.mode, mode);
            if self.applied.is_some() {
                let undone = match old {
                    Mode::Direct => self.drive_direct(None),
                    Mode::Resolved => self.revert_link(),
                    Mode::Unsupported(_) => Ok(()),
                };
                if let Err(e) = undone {
                    tracing::warn!(error = %e, "Cannot undo DNS of the previous mode");
                }
                self.applied = None;
            }
        }
        let result = match (&self.mode, &want) {
            (Mode::Unsupported(why), Some(_)) => Err(why.clone()),
            (Mode::Unsupported(_), None) => Ok(()),
            (Mode::Direct, _) => self.drive_direct(want.as_ref()),
            (Mode::Resolved, Some(cfg)) => self.set_link(cfg),
            (Mode::Resolved, None) => self.revert_link(),
        };
        match result {
            Ok(()) => {
                if want.is_some() != self.applied.is_some() {
                    tracing::info!(managing = want.is_some(), mode = self.mode.name(), "OS DNS");
                }
                self.applied = want;
                self.health = None;
            }
            Err(e) => {
                tracing::warn!(error = %e, mode = self.mode.name(), "Cannot configure the OS's DNS");
                if want.is_some() && self.mode == Mode::Direct {
                    // Leave the host as it was, not half-done.
                    let _ = self.drive_direct(None);
                }
                self.applied = None;
                self.health = Some(e);
            }
        }
        self.refresh_host_nameservers();
    }

    /// Returns the one-line problem for `weft status`, if any.
    pub fn health(&self) -> Option<String> {
        self.health
            .as_ref()
            .map(|h| format!("MagicDNS cannot configure the OS's DNS: {h}"))
    }

    /// Returns the resolvers the host had before Weft touched its DNS
    /// (never Weft's own service addresses).
    pub fn host_nameservers(&self) -> Vec<IpAddr> {
        self.host_ns.borrow().clone()
    }

    /// Returns a receiver of [`OsDns::host_nameservers`] that sees every
    /// change (for the resolver's `set_host_nameservers`).
    pub fn subscribe_host_nameservers(&self) -> watch::Receiver<Vec<IpAddr>> {
        self.host_ns.subscribe()
    }

    /// Returns what `weft dns status` shows.
    pub fn report(&self) -> Report {
        let os_file = match self.mode {
            Mode::Resolved => &self.paths.resolved_upstreams,
            _ => &self.paths.resolv_conf,
        };
        Report {
            mode: self.mode.clone(),
            managing: self.applied.is_some(),
            applied: self.applied.clone(),
            os: std::fs::read(os_file)
                .ok()
                .and_then(|b| ResolvConf::parse(&b).ok()),
            host_nameservers: self.host_nameservers(),
            health: self.health.clone(),
        }
    }

    // ---- detection ------------------------------------------------------------

    fn detect(&self) -> Mode {
        let path = &self.paths.resolv_conf;
        let kind = match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(path) {
                Ok(to) => FileKind::Symlink(to),
                Err(e) => FileKind::Other(format!("an unreadable symlink ({e})")),
            },
            Ok(m) if m.is_file() => FileKind::Regular,
            Ok(_) => FileKind::Other("not a regular file".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileKind::Missing,
            Err(e) => FileKind::Other(format!("unreadable ({e})")),
        };
        let answers = matches!(kind, FileKind::Symlink(_)) && self.busctl.resolved_answers();
        detect(path, &kind, answers)
    }

    fn refresh_host_nameservers(&mut self) {
        let source = match (&self.mode, self.paths.backup.exists()) {
            // resolved's own list of the uplinks' servers.
            (Mode::Resolved, _) => self.paths.resolved_upstreams.clone(),
            // While ours is in place, the original is in the backup.
            (_, true) => self.paths.backup.clone(),
            (_, false) => self.paths.resolv_conf.clone(),
        };
        let servers = std::fs::read(&source)
            .ok()
            .filter(|b| !is_ours(b))
            .and_then(|b| ResolvConf::parse(&b).ok())
            .map(|rc| without_service_addrs(rc.nameservers))
            .unwrap_or_default();
        self.host_ns.send_if_modified(|cur| {
            let changed = *cur != servers;
            if changed {
                tracing::debug!(?servers, "Host nameservers");
                cur.clone_from(&servers);
            }
            changed
        });
    }

    // ---- direct mode ------------------------------------------------------------

    /// Runs the direct machine to `want`; the error is a message for the user.
    fn drive_direct(&self, want: Option<&OsDnsConfig>) -> Result<(), String> {
        let rc_path = self.paths.resolv_conf.display().to_string();
        let backup_path = self.paths.backup.display().to_string();
        let render = |original: &[u8]| {
            let cfg = want.expect("render is only called for Want::Managed");
            let original = ResolvConf::parse(original).unwrap_or_default();
            ResolvConf::render_ours(&cfg.nameservers, &cfg.search, &original, &backup_path)
        };
        let want_sm = match want {
            Some(_) => Want::Managed(&render),
            None => Want::Restored,
        };
        for _ in 0..=direct::MAX_STEPS {
            let obs = self.observe()?;
            if want.is_some() {
                // Weft replaces only a file it understands.
                let becomes_original = !is_ours(&obs.target)
                    && obs
                        .backup
                        .as_ref()
                        .is_none_or(|b| direct::classify(&obs.target, b) == direct::Class::Foreign);
                if becomes_original && let Err(e) = ResolvConf::parse(&obs.target) {
                    return Err(format!("cannot parse {rc_path} ({e}); not touched"));
                }
            } else if direct::original_lost(&obs) {
                return Err(format!(
                    "{rc_path} holds weftd's file but the backup {backup_path} is gone; restore it by hand"
                ));
            }
            let Some(step) = direct::next_step(&obs, &want_sm) else {
                return Ok(());
            };
            tracing::debug!(?step, "resolv.conf step");
            self.do_step(&step)?;
        }
        Err(format!(
            "{rc_path} keeps changing under weftd; not touched further"
        ))
    }

    fn observe(&self) -> Result<Observed, String> {
        let rc = &self.paths.resolv_conf;
        let target = std::fs::read(rc).map_err(|e| format!("cannot read {}: {e}", rc.display()))?;
        let backup = match std::fs::read(&self.paths.backup) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(format!(
                    "cannot read the backup {}: {e}",
                    self.paths.backup.display()
                ));
            }
        };
        Ok(Observed { target, backup })
    }

    fn do_step(&self, step: &Step) -> Result<(), String> {
        let rc = &self.paths.resolv_conf;
        let backup = &self.paths.backup;
        match step {
            Step::WriteBackup(bytes) => {
                let mode = file_mode(rc).unwrap_or(0o644);
                write_atomic(backup, bytes, mode)
                    .map_err(|e| format!("cannot write the backup {}: {e}", backup.display()))
            }
            Step::WriteTarget(bytes) => {
                write_target(rc, bytes).map_err(|e| format!("cannot write {}: {e}", rc.display()))
            }
            Step::RemoveBackup => std::fs::remove_file(backup)
                .and_then(|()| sync_parent(backup))
                .map_err(|e| format!("cannot remove the backup {}: {e}", backup.display())),
        }
    }

    // ---- resolved mode ----------------------------------------------------------

    fn set_link(&mut self, cfg: &OsDnsConfig) -> Result<(), String> {
        let idx = nix::net::if_::if_nametoindex(self.tun.as_str())
            .map_err(|e| format!("no interface {}: {e}", self.tun))?;
        for call in resolved::calls(idx, cfg) {
            if let Err(e) = self.busctl.call(&call) {
                let _ = self.busctl.call(&resolved::revert(idx));
                return Err(e.to_string());
            }
        }
        self.link = Some(idx);
        Ok(())
    }

    fn revert_link(&mut self) -> Result<(), String> {
        let Some(idx) = self.link.take() else {
            return Ok(());
        };
        self.busctl
            .call(&resolved::revert(idx))
            .map_err(|e| e.to_string())
    }
}

/// Returns the permission bits of `path`.
fn file_mode(path: &Path) -> Option<u32> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// Writes `bytes` to `path` by a temp file next to it (mode `mode`), fsync,
/// rename and fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("weftd-{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_parent(path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes resolv.conf: atomically by rename where it can, in place
/// (truncate, write, fsync) where it is a mount point (`ip netns exec`
/// bind-mounts `/etc/netns/<ns>/resolv.conf` over it) or the rename is
/// refused as crossing a mount.
fn write_target(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if !is_mount_point(path) {
        let mode = file_mode(path).unwrap_or(0o644);
        match write_atomic(path, bytes, mode) {
            Ok(()) => return Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EXDEV)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Returns whether `path` is a mount point (in /proc/self/mountinfo).
fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mountinfo(mp) == want)
}

/// Undoes mountinfo's octal escapes (`\040` for a space…).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        if b[i] == b'\\'
            && let Some(v) = octal
        {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::File::open(dir)?.sync_all(),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
