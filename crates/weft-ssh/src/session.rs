//! Session channels: running a shell, a command or the SFTP server as the
//! local user, with or without a pty, and reporting how it ended.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use russh::ChannelWriteHalf;
use russh::server::{Handle, Msg};
use russh::{ChannelId, Sig};
use tokio_util::sync::CancellationToken;

use crate::pump::{InputQueue, OnEof, feed, pump_out};
use crate::recording::{self, Recording, TapRead, TapWrite};
use crate::user::{LocalUser, PrivDrop};

/// How long output may keep flowing after the process exited (background
/// jobs still holding the pipes or the pty) before the channel is closed.
const OUTPUT_GRACE: Duration = Duration::from_secs(2);
/// How long a hung-up process group gets before SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// What a session channel runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Program {
    /// The user's login shell, interactive.
    Shell,
    /// `shell -c command` (bytes as sent; commands need not be UTF-8).
    Exec(OsString),
    /// An SFTP server program and its arguments.
    Sftp(PathBuf, Vec<OsString>),
}

impl Program {
    /// Returns the audit name of what runs (`shell`, `exec`, `sftp`).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Program::Shell => "shell",
            Program::Exec(_) => "exec",
            Program::Sftp(..) => "sftp",
        }
    }
}

/// A client's `pty-req`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PtyReq {
    pub(crate) term: String,
    pub(crate) cols: u16,
    pub(crate) rows: u16,
}

/// Names for the audit log lines of one connection.
#[derive(Debug, Clone)]
pub(crate) struct Audit {
    pub(crate) conn_id: u64,
    pub(crate) peer_user: String,
    pub(crate) peer_node: String,
    pub(crate) local_user: String,
}

/// A started process and its plumbing.
pub(crate) struct Spawned {
    child: tokio::process::Child,
    pgid: i32,
    io: SpawnedIo,
}

enum SpawnedIo {
    Pipes {
        stdin: tokio::process::ChildStdin,
        stdout: tokio::process::ChildStdout,
        stderr: tokio::process::ChildStderr,
    },
    Pty(pty_process::Pty),
}

impl Spawned {
    /// Returns the process group of the job (the child leads its own session).
    pub(crate) fn pgid(&self) -> i32 {
        self.pgid
    }

    /// Returns a duplicate of the pty master for window-size changes.
    pub(crate) fn resize_handle(&self) -> Option<OwnedFd> {
        match &self.io {
            SpawnedIo::Pty(p) => p.as_fd().try_clone_to_owned().ok(),
            SpawnedIo::Pipes { .. } => None,
        }
    }
}

/// Starts `program` as `user` with exactly `env`, on a new pty when `pty` is
/// given. Privileges are dropped in the child before exec (see [`PrivDrop`]).
///
/// # Errors
/// Returns the spawn error (missing shell, privilege drop refused, no ptys).
pub(crate) fn spawn(
    program: &Program,
    user: &LocalUser,
    env: &[(String, String)],
    pty: Option<&PtyReq>,
) -> io::Result<Spawned> {
    let shell = user.shell.as_path();
    let (path, argv0, args): (&Path, OsString, Vec<OsString>) = match program {
        // A leading '-' in argv[0] asks the shell to act as a login shell.
        Program::Shell => (shell, login_argv0(shell), Vec::new()),
        Program::Exec(cmd) => (
            shell,
            base_name(shell),
            vec![OsString::from("-c"), cmd.clone()],
        ),
        Program::Sftp(p, args) => (p.as_path(), base_name(p), args.clone()),
    };
    match pty {
        Some(req) => {
            let (master, pts) = pty_process::open().map_err(io::Error::other)?;
            master
                .resize(pty_process::Size::new(req.rows, req.cols))
                .map_err(io::Error::other)?;
            give_tty_to(&pts, user)?;
            let mut drop = PrivDrop::new(user, false);
            let cmd = pty_process::Command::new(path)
                .arg0(&argv0)
                .args(&args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)));
            // SAFETY: `apply` makes only async-signal-safe syscalls on buffers
            // prepared before fork (see `PrivDrop`).
            let cmd = unsafe { cmd.pre_exec(move || drop.apply()) };
            let child = cmd.spawn(pts).map_err(io::Error::other)?;
            let pgid = child_pid(&child)?;
            Ok(Spawned {
                child,
                pgid,
                io: SpawnedIo::Pty(master),
            })
        }
        None => {
            let mut drop = PrivDrop::new(user, true);
            let mut cmd = tokio::process::Command::new(path);
            cmd.arg0(&argv0)
                .args(&args)
                .env_clear()
                .envs(env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            // SAFETY: as above.
            unsafe { cmd.pre_exec(move || drop.apply()) };
            let mut child = cmd.spawn()?;
            let pgid = child_pid(&child)?;
            let (Some(stdin), Some(stdout), Some(stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err(io::Error::other("child stdio missing"));
            };
            Ok(Spawned {
                child,
                pgid,
                io: SpawnedIo::Pipes {
                    stdin,
                    stdout,
                    stderr,
                },
            })
        }
    }
}

fn child_pid(child: &tokio::process::Child) -> io::Result<i32> {
    child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .ok_or_else(|| io::Error::other("child exited before its pid was read"))
}

fn base_name(p: &Path) -> OsString {
    p.file_name()
        .map(OsString::from)
        .unwrap_or_else(|| p.as_os_str().to_owned())
}

fn login_argv0(shell: &Path) -> OsString {
    let mut s = OsString::from("-");
    s.push(base_name(shell));
    s
}

/// Makes the pty slave belong to the user (group `tty`, mode 0620), as login
/// does, so tools that reopen their terminal by name work.
fn give_tty_to(pts: &pty_process::Pts, user: &LocalUser) -> io::Result<()> {
    static TTY_GID: OnceLock<Option<u32>> = OnceLock::new();
    let tty_gid = TTY_GID
        .get_or_init(|| {
            nix::unistd::Group::from_name("tty")
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        })
        .unwrap_or(user.gid);
    let fd = pts.as_raw_fd();
    // SAFETY: plain syscalls on a descriptor we own.
    unsafe {
        if libc::fchown(fd, user.uid, tty_gid) != 0 || libc::fchmod(fd, 0o620) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets the window size of the pty behind `fd`.
pub(crate) fn resize(fd: &OwnedFd, cols: u32, rows: u32) {
    let ws = libc::winsize {
        ws_row: u16::try_from(rows).unwrap_or(u16::MAX),
        ws_col: u16::try_from(cols).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one `winsize` from the pointer we pass.
    unsafe {
        libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// Sends `sig` to the job's process group.
pub(crate) fn signal_group(pgid: i32, sig: &Sig) {
    let Some(signo) = signal_number(sig) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid targets the process group.
    unsafe {
        libc::kill(-pgid, signo);
    }
}

fn signal_number(sig: &Sig) -> Option<i32> {
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => libc::SIGUSR2,
            "WINCH" => libc::SIGWINCH,
            _ => return None,
        },
    })
}

fn sig_from_number(n: i32) -> Sig {
    match n {
        libc::SIGABRT => Sig::ABRT,
        libc::SIGALRM => Sig::ALRM,
        libc::SIGFPE => Sig::FPE,
        libc::SIGHUP => Sig::HUP,
        libc::SIGILL => Sig::ILL,
        libc::SIGINT => Sig::INT,
        libc::SIGKILL => Sig::KILL,
        libc::SIGPIPE => Sig::PIPE,
        libc::SIGQUIT => Sig::QUIT,
        libc::SIGSEGV => Sig::SEGV,
        libc::SIGTERM => Sig::TERM,
        libc::SIGUSR1 => Sig::USR1,
        libc::SIGUSR2 => Sig::Custom("USR2".to_owned()),
        other => Sig::Custom(format!("SIG{other}")),
    }
}

/// Waits for the child; on `cancel`, hangs up its process group and kills it
/// if it lingers.
async fn wait_child(
    child: &mut tokio::process::Child,
    pgid: i32,
    cancel: &CancellationToken,
) -> Option<ExitStatus> {
    tokio::select! {
        s = child.wait() => return s.ok(),
        () = cancel.cancelled() => {}
    }
    // SAFETY (both kills): signals to the job's own process group.
    unsafe {
        libc::kill(-pgid, libc::SIGHUP);
    }
    if let Ok(s) = tokio::time::timeout(KILL_GRACE, child.wait()).await {
        return s.ok();
    }
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
    child.wait().await.ok()
}

/// Runs a started job to its end: feeds client input, streams output, then
/// reports the exit status (or signal) and closes the channel.
///
/// `cancel` ends the job (hang-up, then kill) when the channel or the
/// connection goes away. With a `recording`, output (and input, if asked)
/// passes through it, and a recording that breaks under an enforcing rule
/// ends the job too, with a message to the client.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    spawned: Spawned,
    input: Arc<InputQueue>,
    write: ChannelWriteHalf<Msg>,
    handle: Handle,
    channel: ChannelId,
    cancel: CancellationToken,
    what: &'static str,
    audit: Audit,
    recording: Option<Arc<Recording>>,
) {
    let Spawned {
        mut child,
        pgid,
        io,
    } = spawned;
    // The job ends with the channel, or when its recording breaks.
    let job = cancel.child_token();
    let watcher = recording.as_ref().map(|rec| {
        let (broken, job) = (rec.broken().clone(), job.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = broken.cancelled() => job.cancel(),
                () = job.cancelled() => {}
            }
        })
    });
    let out_cancel = job.child_token();
    let feed_cancel = job.child_token();
    let is_pty = matches!(io, SpawnedIo::Pty(_));
    let (outputs, feeder) = match io {
        SpawnedIo::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let stdin = TapWrite::new(stdin, recording.clone());
            let (stdout, stderr) = (
                TapRead::new(stdout, recording.clone()),
                TapRead::new(stderr, recording.clone()),
            );
            let feeder = tokio::spawn(feed(input, stdin, OnEof::Shutdown, feed_cancel.clone()));
            let w = &write;
            let oc = &out_cancel;
            let outputs: std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + '_>> =
                Box::pin(async move {
                    let (a, b) = tokio::join!(
                        pump_out(stdout, w, None, oc),
                        pump_out(stderr, w, Some(1), oc)
                    );
                    a + b
                });
            (outputs, feeder)
        }
        SpawnedIo::Pty(master) => {
            let (rd, wr) = master.into_split();
            let (rd, wr) = (
                TapRead::new(rd, recording.clone()),
                TapWrite::new(wr, recording.clone()),
            );
            let feeder = tokio::spawn(feed(input, wr, OnEof::Ignore, feed_cancel.clone()));
            let w = &write;
            let oc = &out_cancel;
            let outputs: std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send + '_>> =
                Box::pin(async move { pump_out(rd, w, None, oc).await });
            (outputs, feeder)
        }
    };
    let mut outputs = outputs;
    let wait = wait_child(&mut child, pgid, &job);
    tokio::pin!(wait);
    let mut sent = None;
    let early = tokio::select! {
        n = &mut outputs => { sent = Some(n); None }
        s = &mut wait => Some(s),
    };
    let status = match early {
        Some(s) => s,
        None => wait.await,
    };
    if sent.is_none() {
        sent = match tokio::time::timeout(OUTPUT_GRACE, &mut outputs).await {
            Ok(n) => Some(n),
            Err(_) => {
                out_cancel.cancel();
                Some(outputs.await)
            }
        };
    }
    feed_cancel.cancel();
    let _ = feeder.await;

    if let Some(w) = watcher {
        w.abort();
    }
    let (exit_code, exit_signal) = match status {
        Some(s) => (s.code(), s.signal()),
        None => (None, None),
    };
    let broken = recording
        .as_ref()
        .filter(|r| r.broken().is_cancelled())
        .and_then(|r| r.failure());
    if let (false, Some(why)) = (cancel.is_cancelled(), &broken) {
        let msg = recording::refusal("the recording can no longer be written", why);
        let _ = if is_pty {
            write.data_bytes(format!("\r\n{msg}\r\n")).await
        } else {
            write.extended_data_bytes(1, format!("{msg}\n")).await
        };
        let _ = write.exit_status(255).await;
        let _ = write.eof().await;
        let _ = write.close().await;
    } else if !cancel.is_cancelled() {
        match (exit_code, exit_signal) {
            (Some(code), _) => {
                let _ = write.exit_status(u32::try_from(code).unwrap_or(255)).await;
            }
            (None, Some(signo)) => {
                let core = status.is_some_and(|s| s.core_dumped());
                let _ = handle
                    .exit_signal_request(
                        channel,
                        sig_from_number(signo),
                        core,
                        String::new(),
                        String::new(),
                    )
                    .await;
            }
            (None, None) => {}
        }
        let _ = write.eof().await;
        let _ = write.close().await;
    }
    let recording_id = recording.as_ref().map(|r| r.id());
    if let Some(rec) = &recording {
        rec.finish(crate::server::now().1);
    }
    // Audit line (info on purpose; see `server` module docs).
    tracing::info!(
        conn = audit.conn_id,
        recording = ?recording_id,
        recording_broken = broken.is_some(),
        peer_user = %audit.peer_user,
        peer_node = %audit.peer_node,
        local_user = %audit.local_user,
        what,
        exit_code,
        exit_signal,
        bytes_out = sent.unwrap_or(0),
        cancelled = cancel.is_cancelled(),
        "ssh session ended"
    );
}
