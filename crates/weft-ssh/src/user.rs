//! Local accounts: resolving the target user and dropping privileges in the
//! child before any of the user's code runs.
//!
//! Everything that may allocate, lock or consult NSS (`getpwnam`,
//! `getgrouplist`) happens in the parent, before `fork`. Between `fork` and
//! `exec` of a multi-threaded process only async-signal-safe calls are
//! allowed, so [`PrivDrop::apply`] makes raw syscalls on data prepared in
//! advance: `setsid`, `setgroups`, `setgid`, `setuid`, then it verifies the
//! result (fail closed) and changes to the home directory.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// A resolved local account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalUser {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory from passwd.
    pub home: PathBuf,
    /// Login shell from passwd (`/bin/sh` when empty).
    pub shell: PathBuf,
    /// Every group the user is in, the primary one included.
    pub groups: Vec<u32>,
}

/// Errors resolving a local account.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// No such account on this machine.
    #[error("local user \"{0}\" does not exist on this node")]
    NotFound(String),
    /// The name cannot be a user name (embedded NUL).
    #[error("invalid local user name")]
    InvalidName,
    /// The passwd or group database could not be read.
    #[error("cannot look up local user \"{name}\": {source}")]
    Lookup {
        /// The name looked up.
        name: String,
        /// The underlying error.
        source: nix::Error,
    },
}

impl LocalUser {
    /// Looks `name` up in the passwd and group databases. This may block on
    /// NSS; call it from `spawn_blocking`.
    ///
    /// # Errors
    /// Returns [`UserError::NotFound`] when the account does not exist.
    pub fn lookup(name: &str) -> Result<Self, UserError> {
        let cname = CString::new(name).map_err(|_| UserError::InvalidName)?;
        let lookup_err = |source| UserError::Lookup {
            name: name.to_owned(),
            source,
        };
        let pw = nix::unistd::User::from_name(name)
            .map_err(lookup_err)?
            .ok_or_else(|| UserError::NotFound(name.to_owned()))?;
        let mut groups: Vec<u32> = nix::unistd::getgrouplist(&cname, pw.gid)
            .map_err(lookup_err)?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let shell = if pw.shell.as_os_str().is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            pw.shell
        };
        Ok(LocalUser {
            name: pw.name,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            home: pw.dir,
            shell,
            groups,
        })
    }

    /// Returns the default `PATH` for this user, as Debian's login does.
    pub fn default_path(&self) -> &'static str {
        if self.uid == 0 {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        } else {
            "/usr/local/bin:/usr/bin:/bin:/usr/games"
        }
    }
}

/// The privilege change to perform in a child between `fork` and `exec`,
/// with every buffer allocated beforehand.
pub(crate) struct PrivDrop {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
    /// Scratch space for reading the groups back; capacity fixed before fork.
    readback: Vec<libc::gid_t>,
    home: CString,
    /// Start a new session (non-pty children; pty-process already does it).
    setsid: bool,
}

const NO_HOME_MSG: &[u8] = b"weft-ssh: could not chdir to home directory, using /\r\n";

impl PrivDrop {
    /// Prepares a drop to `user`. `setsid` makes the child a session (and
    /// process group) leader so that signals can reach the whole job.
    pub(crate) fn new(user: &LocalUser, setsid: bool) -> Self {
        let groups: Vec<libc::gid_t> = user.groups.clone();
        // One slot more than expected, so that an unexpected extra group makes
        // `getgroups` fail (EINVAL) instead of going unnoticed.
        let readback = vec![0; groups.len() + 1];
        let home =
            CString::new(user.home.as_os_str().as_bytes()).unwrap_or_else(|_| c"/".to_owned());
        PrivDrop {
            uid: user.uid,
            gid: user.gid,
            groups,
            readback,
            home,
            setsid,
        }
    }

    /// Runs in the child after `fork`: only raw syscalls on prepared data.
    ///
    /// # Errors
    /// Any failed or unverifiable step aborts the spawn (fail closed).
    pub(crate) fn apply(&mut self) -> io::Result<()> {
        // SAFETY (whole function): plain syscalls on buffers owned by `self`
        // and allocated before fork; no allocation, locking or NSS here.
        unsafe {
            if self.setsid && libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgroups(self.groups.len(), self.groups.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setgid(self.gid) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::setuid(self.uid) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Verify that every id took, real and effective.
            if libc::getuid() != self.uid
                || libc::geteuid() != self.uid
                || libc::getgid() != self.gid
                || libc::getegid() != self.gid
            {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            let cap = libc::c_int::try_from(self.readback.len()).unwrap_or(libc::c_int::MAX);
            let n = libc::getgroups(cap, self.readback.as_mut_ptr());
            let Ok(n) = usize::try_from(n) else {
                return Err(io::Error::last_os_error());
            };
            let got = self.readback.get(..n).unwrap_or(&[]);
            let same = got.iter().all(|g| self.groups.contains(g))
                && self.groups.iter().all(|g| got.contains(g));
            if !same {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            // A dropped process must not be able to take root back.
            if self.uid != 0 && libc::setuid(0) == 0 {
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            if libc::chdir(self.home.as_ptr()) != 0 {
                libc::write(2, NO_HOME_MSG.as_ptr().cast(), NO_HOME_MSG.len());
                if libc::chdir(c"/".as_ptr()) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_groups_and_the_sbin_path() {
        let root = LocalUser::lookup("root").unwrap();
        assert_eq!(root.uid, 0);
        assert_eq!(root.gid, 0);
        assert!(root.groups.contains(&0));
        assert!(root.default_path().contains("/usr/sbin"));
    }

    #[test]
    fn a_missing_user_is_a_clear_error() {
        let err = LocalUser::lookup("weft-no-such-user-x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "local user \"weft-no-such-user-x\" does not exist on this node"
        );
        assert!(matches!(
            LocalUser::lookup("a\0b"),
            Err(UserError::InvalidName)
        ));
    }
}
