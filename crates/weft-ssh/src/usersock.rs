//! Unix sockets bound, connected and removed with the login user's own
//! permissions, never root's.
//!
//! weftd runs as root, so a `bind(2)` or `connect(2)` made by the daemon
//! itself would let a user create a socket in `/root`, replace a file only
//! root may write, or reach a root-only socket (`/run/docker.sock`). Every
//! file-system step of `ssh -R /path:…` (`streamlocal-forward@openssh.com`)
//! and `ssh -L port:/path` (`direct-streamlocal@openssh.com`) therefore runs
//! in a short-lived child: the daemon forks, the child drops to the user
//! exactly as a session does ([`PrivDrop`]: groups, gid, uid, verified),
//! sets the umask to OpenSSH's `StreamLocalBindMask` (0177, so the socket is
//! 0600), makes the one system call, hands the resulting descriptor back
//! over a socket pair (`SCM_RIGHTS`) and exits; the kernel decides every
//! permission against the user's uid and groups. The child runs no code but
//! raw system calls on buffers prepared before `fork` (the rules of a
//! multi-threaded fork: no allocation, no locks), and reports a failure as
//! its exit status (the `errno`).

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::user::{LocalUser, PrivDrop};

/// `connect(2)` to a socket whose listener does not accept gives up after
/// this long (the child must not hang on a full backlog).
const CONNECT_TIMEOUT_SECS: libc::time_t = 10;
/// OpenSSH's `StreamLocalBindMask` default: sockets are created 0600.
const BIND_UMASK: libc::mode_t = 0o177;
/// The listen backlog of a `-R` socket.
const BACKLOG: libc::c_int = 128;

/// One file-system step on a unix socket path, done as the user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SockOp {
    /// Create a listening socket at the path. With `unlink_first`, an
    /// existing *socket* at the path is removed first (OpenSSH's
    /// `StreamLocalBindUnlink yes`); any other existing file is an error.
    Bind { unlink_first: bool },
    /// Connect to the listening socket at the path.
    Connect,
    /// Remove the socket at the path (the end of a `-R` forward); a path
    /// that no longer holds a socket is left alone.
    Unlink,
}

/// Why a unix socket path is refused before anything is tried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PathError {
    #[error("the socket path must be absolute")]
    NotAbsolute,
    #[error("the socket path is longer than the {max} bytes a unix socket address holds")]
    TooLong { max: usize },
    #[error("the socket path contains a NUL byte")]
    Nul,
}

/// Checks that `path` can be a unix socket address: absolute, no NUL, and
/// short enough for `sun_path` (107 bytes and the NUL).
///
/// # Errors
/// The [`PathError`] that names what is wrong.
pub(crate) fn check_path(path: &str) -> Result<(), PathError> {
    // SAFETY: a zeroed `sockaddr_un` is a valid value.
    let max = unsafe { zeroed::<libc::sockaddr_un>() }.sun_path.len() - 1;
    if path.as_bytes().contains(&0) {
        return Err(PathError::Nul);
    }
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.len() > max {
        return Err(PathError::TooLong { max });
    }
    Ok(())
}

/// Performs `op` on the unix socket `path` as `user` (in a forked child that
/// dropped privileges) and returns the socket for `Bind` (listening) and
/// `Connect` (connected), `None` for `Unlink`. The descriptor is blocking
/// and close-on-exec.
///
/// # Errors
/// The error the kernel gave the user (`EACCES`, `EADDRINUSE`, `ENOENT`,
/// `ECONNREFUSED`…), a refused path ([`check_path`]), or a failed fork or
/// privilege drop.
pub(crate) async fn as_user(
    user: &LocalUser,
    path: &str,
    op: SockOp,
) -> io::Result<Option<OwnedFd>> {
    check_path(path).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let job = Job::new(user, Path::new(path), op)?;
    tokio::task::spawn_blocking(move || job.run())
        .await
        .map_err(io::Error::other)?
}

/// Everything the child needs, prepared before `fork`.
struct Job {
    drop: PrivDrop,
    path: CString,
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
    op: SockOp,
}

impl Job {
    fn new(user: &LocalUser, path: &Path, op: SockOp) -> io::Result<Self> {
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: a zeroed `sockaddr_un` is a valid value.
        let mut addr: libc::sockaddr_un = unsafe { zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let addr_len = (size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
        Ok(Job {
            drop: PrivDrop::new(user, false),
            path: CString::new(bytes).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
            addr,
            addr_len,
            op,
        })
    }

    /// Forks, lets the child do the work, and collects the descriptor.
    fn run(mut self) -> io::Result<Option<OwnedFd>> {
        let mut pair = [0 as RawFd; 2];
        // SAFETY: socketpair writes two descriptors into `pair`.
        if unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        } != 0
        {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are ours.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        let mut cmsg_buf = [0u8; 64];
        // SAFETY: fork(2); the child only calls `child_main`, which makes raw
        // system calls on memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: in the child; see `child_main`.
            unsafe { self.child_main(theirs.as_raw_fd()) }
        }
        drop(theirs);
        let fd = recv_fd(&ours, &mut cmsg_buf);
        let status = wait(pid)?;
        if status != 0 {
            return Err(io::Error::from_raw_os_error(status));
        }
        match (self.op, fd) {
            (SockOp::Unlink, _) => Ok(None),
            (_, Some(fd)) => Ok(Some(fd)),
            (_, None) => Err(io::Error::other("the socket helper sent no descriptor")),
        }
    }

    /// The child: drop to the user, do `op`, send the descriptor, exit with
    /// 0 or the `errno` of the step that failed.
    ///
    /// # Safety
    /// Only in the child of `fork`: async-signal-safe system calls on
    /// buffers allocated before the fork.
    unsafe fn child_main(&mut self, chan: RawFd) -> ! {
        let fail = || -> ! {
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            // SAFETY: _exit is async-signal-safe.
            unsafe { libc::_exit(e.clamp(1, 255)) }
        };
        if self.drop.apply().is_err() {
            // SAFETY: as above.
            unsafe { libc::_exit(libc::EPERM) }
        }
        // SAFETY (rest): raw system calls on prepared buffers.
        unsafe {
            libc::umask(BIND_UMASK);
            let addr = (&raw const self.addr).cast::<libc::sockaddr>();
            match self.op {
                SockOp::Unlink => {
                    if is_socket(&self.path) && libc::unlink(self.path.as_ptr()) != 0 {
                        fail();
                    }
                    libc::_exit(0);
                }
                SockOp::Bind { unlink_first } => {
                    let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        fail();
                    }
                    if unlink_first && is_socket(&self.path) {
                        libc::unlink(self.path.as_ptr());
                    }
                    if libc::bind(s, addr, self.addr_len) != 0 || libc::listen(s, BACKLOG) != 0 {
                        fail();
                    }
                    send_fd(chan, s);
                }
                SockOp::Connect => {
                    let s = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
                    if s < 0 {
                        fail();
                    }
                    let tv = libc::timeval {
                        tv_sec: CONNECT_TIMEOUT_SECS,
                        tv_usec: 0,
                    };
                    libc::setsockopt(
                        s,
                        libc::SOL_SOCKET,
                        libc::SO_SNDTIMEO,
                        (&raw const tv).cast(),
                        size_of::<libc::timeval>() as libc::socklen_t,
                    );
                    if libc::connect(s, addr, self.addr_len) != 0 {
                        fail();
                    }
                    send_fd(chan, s);
                }
            }
        }
    }
}

/// Whether `path` is a socket (lstat: a symlink is not followed).
///
/// # Safety
/// Async-signal-safe: one `lstat` into a stack buffer.
unsafe fn is_socket(path: &CString) -> bool {
    // SAFETY: lstat fills the zeroed stat buffer.
    unsafe {
        let mut st: libc::stat = zeroed();
        libc::lstat(path.as_ptr(), &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFSOCK
    }
}

/// Sends `fd` over `chan` and exits (0 when sent).
///
/// # Safety
/// Child only; raw system calls on stack buffers.
unsafe fn send_fd(chan: RawFd, fd: RawFd) -> ! {
    // SAFETY: a one-descriptor SCM_RIGHTS message built on the stack.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut buf = [0u64; 8];
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null() {
            libc::_exit(libc::EIO);
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(chan, &raw const msg, 0) != 1 {
            let e = io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO);
            libc::_exit(e.clamp(1, 255));
        }
        libc::_exit(0)
    }
}

/// Receives the descriptor the child sent, if any (none when it failed).
fn recv_fd(chan: &OwnedFd, cmsg_buf: &mut [u8; 64]) -> Option<OwnedFd> {
    // SAFETY: recvmsg into our buffers; the control data is read only
    // through the CMSG macros within `msg_controllen`.
    unsafe {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut msg: libc::msghdr = zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg_buf.as_mut_ptr().cast();
        msg.msg_controllen = cmsg_buf.len() as _;
        let n = loop {
            let n = libc::recvmsg(chan.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC);
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        };
        if n <= 0 {
            return None;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&raw const msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>());
        (fd >= 0).then(|| OwnedFd::from_raw_fd(fd))
    }
}

/// Reaps the child; returns its exit status (0, or the errno it reported).
fn wait(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(io::Error::other("the socket helper was killed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_paths_must_be_absolute_short_and_nul_free() {
        assert_eq!(check_path("/run/user/1000/gnupg/S.gpg-agent"), Ok(()));
        assert_eq!(check_path("relative.sock"), Err(PathError::NotAbsolute));
        assert_eq!(check_path(""), Err(PathError::NotAbsolute));
        assert_eq!(check_path("/a\0b"), Err(PathError::Nul));
        let long = format!("/{}", "x".repeat(107));
        assert_eq!(check_path(&long), Err(PathError::TooLong { max: 107 }));
        assert_eq!(check_path(&long[..107]), Ok(()));
    }

    /// As root (the daemon's case): a socket bound as root's own account,
    /// connected to, refused when the path exists, and removed.
    #[tokio::test]
    async fn bind_connect_and_unlink_round_trip() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let me = LocalUser::lookup("root").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let p = path.to_str().unwrap();
        let l = as_user(
            &me,
            p,
            SockOp::Bind {
                unlink_first: false,
            },
        )
        .await
        .unwrap()
        .unwrap();
        let mode = std::fs::metadata(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
        let again = as_user(
            &me,
            p,
            SockOp::Bind {
                unlink_first: false,
            },
        )
        .await;
        assert_eq!(
            again.unwrap_err().raw_os_error(),
            Some(libc::EADDRINUSE),
            "an existing path is refused"
        );
        let c = as_user(&me, p, SockOp::Connect).await.unwrap().unwrap();
        drop((l, c));
        assert!(as_user(&me, p, SockOp::Unlink).await.unwrap().is_none());
        assert!(!path.exists());
        let gone = as_user(&me, p, SockOp::Connect).await.unwrap_err();
        assert_eq!(gone.raw_os_error(), Some(libc::ENOENT));
    }
}
