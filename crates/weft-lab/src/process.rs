//! Running programs: one-shot commands with a time limit ([`Cmd::run`]) and background processes
//! that are stopped by PID when dropped ([`Process`]).
//!
//! Inside a namespace a command runs as `ip netns exec <ns> <program> <args>`. `ip` *execs* the
//! program (it does not fork), so the PID we hold is the program's own: signals reach the daemon,
//! not a wrapper, and per-PID CPU accounting works. `ip netns exec` also remounts `/sys` for the
//! namespace, so tools that read `/sys/class/net` see the namespace's devices.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::de::DeserializeOwned;

use crate::error::{CommandError, LabError, Result, shell_quote, tail};
use crate::lab::RunShared;
use crate::wait::now;

/// Time limit of a [`Cmd`] unless [`Cmd::timeout`] says otherwise.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a [`Process`] gets between SIGTERM and SIGKILL when it is stopped or dropped.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a finished command printed and how it ended.
#[derive(Debug, Clone)]
pub struct Output {
    /// How it ended.
    pub status: ExitStatus,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

/// A command line to run on the host or in a namespace: a small builder over
/// [`std::process::Command`] that adds the namespace, a time limit and error messages that tell
/// the whole story. Get one from [`Netns::command`](crate::Netns::command) or [`host_command`].
#[derive(Debug, Clone)]
pub struct Cmd {
    netns: Option<String>,
    program: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    run: Option<Arc<RunShared>>,
}

/// Returns a [`Cmd`] that runs `program` in the test's own (root) network namespace. Use it for
/// commands that need no namespace, such as `wg genkey`.
pub fn host_command(program: &str) -> Cmd {
    Cmd::new(None, program, None)
}

impl Cmd {
    pub(crate) fn new(netns: Option<String>, program: &str, run: Option<Arc<RunShared>>) -> Self {
        Cmd {
            netns,
            program: program.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            stdin: None,
            timeout: DEFAULT_CMD_TIMEOUT,
            run,
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<str>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the program (the rest of the environment is inherited).
    pub fn env(mut self, key: &str, value: impl AsRef<str>) -> Self {
        self.env.push((key.to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Feeds these bytes on standard input ([`Cmd::run`] only; spawned processes get none).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Sets the time limit of [`Cmd::run`] (default [`DEFAULT_CMD_TIMEOUT`]).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// Returns the command line as it will be shown in messages, including `ip netns exec`.
    pub fn cmdline(&self) -> String {
        shell_quote(&self.argv())
    }

    fn argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend([
                "ip".to_owned(),
                "netns".to_owned(),
                "exec".to_owned(),
                ns.clone(),
            ]);
        }
        argv.push(self.program.clone());
        argv.extend(self.args.iter().cloned());
        argv
    }

    fn command(&self) -> Command {
        let argv = self.argv();
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    fn spawn_error(&self, source: std::io::Error) -> LabError {
        LabError::Spawn {
            cmdline: self.cmdline(),
            netns: self.netns.clone(),
            source,
        }
    }

    /// Runs the command to completion and returns its output; fails unless it exits with 0.
    ///
    /// # Errors
    /// [`LabError::Command`] with the command line, exit status, stdout and stderr;
    /// [`LabError::CommandTimeout`] when it runs past its time limit (it is killed);
    /// [`LabError::Spawn`] when it cannot be started.
    pub fn run(&self) -> Result<Output> {
        let out = self.run_unchecked()?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(self.failed(out))
        }
    }

    /// Runs the command like [`Cmd::run`] and parses its stdout as JSON into `T` (use
    /// `serde_json::Value` for ad-hoc access). The command must print JSON by itself: add the
    /// program's `--json` flag to the arguments.
    ///
    /// # Errors
    /// As for [`Cmd::run`]; [`LabError::Invalid`] with the command line and stdout when stdout
    /// does not parse as `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let out = self.run()?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            LabError::Invalid(format!(
                "`{}`: stdout is not the expected JSON ({e}): {}",
                self.cmdline(),
                tail(&out.stdout, 4096)
            ))
        })
    }

    /// Turns the output of a run into a [`CommandError`], for callers that inspect the output of
    /// [`Cmd::run_unchecked`] and then decide it is a failure after all.
    pub fn failed(&self, out: Output) -> LabError {
        LabError::Command(Box::new(CommandError {
            cmdline: self.cmdline(),
            netns: self.netns.clone(),
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        }))
    }

    /// Runs the command to completion and returns its output whatever its exit status, for
    /// commands that are expected to fail.
    ///
    /// # Errors
    /// [`LabError::CommandTimeout`] and [`LabError::Spawn`] as for [`Cmd::run`].
    pub fn run_unchecked(&self) -> Result<Output> {
        let mut cmd = self.command();
        cmd.stdin(if self.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        // Feed stdin and drain both pipes on threads so that no pipe buffer can fill up and
        // stall the child while we wait for it.
        let stdin_thread = match (self.stdin.clone(), child.stdin.take()) {
            (Some(input), Some(mut pipe)) => Some(std::thread::spawn(move || {
                use std::io::Write;
                // A child that exits without reading all of stdin is its own business.
                let _ = pipe.write_all(&input);
            })),
            _ => None,
        };
        let stdout = child.stdout.take().map(drain);
        let stderr = child.stderr.take().map(drain);
        let start = now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if start.elapsed() >= self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(LabError::io(format!("waiting for `{}`", self.cmdline()), e)),
            }
        };
        if let Some(t) = stdin_thread {
            let _ = t.join();
        }
        let stdout = stdout.map(join_drain).unwrap_or_default();
        let stderr = stderr.map(join_drain).unwrap_or_default();
        match status {
            Some(status) => Ok(Output {
                status,
                stdout,
                stderr,
            }),
            None => Err(LabError::CommandTimeout {
                cmdline: self.cmdline(),
                netns: self.netns.clone(),
                limit: self.timeout,
                output: format!(
                    "--- stdout ---\n{}\n--- stderr ---\n{}",
                    tail(&stdout, 4096),
                    tail(&stderr, 4096)
                ),
            }),
        }
    }

    /// Starts the command in the background as a [`Process`] called `name`; its stdout and
    /// stderr both go to `<run dir>/<name>.log`. The process is stopped when the returned value
    /// is dropped.
    ///
    /// # Errors
    /// [`LabError::Spawn`] when it cannot be started; [`LabError::Invalid`] for a command that was
    /// not made from a [`Lab`](crate::Lab) (it would have no place for its log).
    pub fn spawn(&self, name: &str) -> Result<Process> {
        let Some(run) = &self.run else {
            return Err(LabError::Invalid(format!(
                "`{}`: background processes need a Lab (use Netns::command or Lab::host_command)",
                self.cmdline()
            )));
        };
        let log_path = run.new_log_path(name);
        let log = File::create(&log_path)
            .map_err(|e| LabError::io(format!("creating {}", log_path.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| LabError::io("duplicating a log file handle", e))?;
        let mut cmd = self.command();
        cmd.stdin(Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(|e| self.spawn_error(e))?;
        let process = Process {
            name: name.to_owned(),
            cmdline: self.cmdline(),
            netns: self.netns.clone(),
            pid: child.id(),
            child: Mutex::new(child),
            log_path,
        };
        if let Some(ns) = &self.netns {
            process.wait_inside(ns)?;
        }
        Ok(process)
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

fn join_drain(h: std::thread::JoinHandle<Vec<u8>>) -> String {
    String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
}

/// A background program started by [`Cmd::spawn`]. Dropping it stops it: SIGTERM, up to
/// [`STOP_GRACE`] to exit, then SIGKILL — always by the PID we started, never by name. If the
/// thread is panicking (a failed test), the drop also prints the tail of the log to stderr.
#[derive(Debug)]
pub struct Process {
    name: String,
    cmdline: String,
    netns: Option<String>,
    pid: u32,
    // Behind a mutex so every method takes `&self`: diagnostics closures can look at a process
    // while the test body also uses it.
    child: Mutex<Child>,
    log_path: PathBuf,
}

impl Process {
    /// Returns the name given at spawn (also the log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the PID of the program itself (`ip netns exec` execs it).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns the command line it was started with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// Returns the path of its log (stdout and stderr together).
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Returns its whole log so far (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Returns a block for failure messages: who it is, whether it runs, and its last 16 KiB
    /// of log.
    pub fn report(&self) -> String {
        let state = match self.try_status() {
            Ok(None) => "running".to_owned(),
            Ok(Some(s)) => format!("exited: {s}"),
            Err(e) => format!("unknown: {e}"),
        };
        format!(
            "=== process {} (pid {}, {state}){}\n$ {}\n{}",
            self.name,
            self.pid(),
            self.netns
                .as_deref()
                .map(|n| format!(" in {n}"))
                .unwrap_or_default(),
            self.cmdline,
            tail(&self.log(), 16 * 1024)
        )
    }

    /// Waits until the process has joined namespace `ns` (or exited), so that a teardown that
    /// sweeps the namespace right after `spawn` cannot miss a process still on its way in.
    fn wait_inside(&self, ns: &str) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let target = format!("{}/{ns}", crate::lab::NETNS_DIR);
        let id = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let want = id(&target).map_err(|e| LabError::io(format!("stat {target}"), e))?;
        let what = format!("{} (pid {}) to enter {ns}", self.name, self.pid);
        crate::wait::wait_until(Duration::from_secs(5), &what, || {
            Ok(self.try_status()?.is_some() || id(&format!("/proc/{}/ns/net", self.pid))? == want)
        })
    }

    /// Returns `Ok(None)` while it runs and its exit status once it has ended.
    ///
    /// # Errors
    /// When the OS cannot tell (should not happen for our own child).
    pub fn try_status(&self) -> Result<Option<ExitStatus>> {
        // `Child::try_wait` remembers the status once reaped, so this can be asked again.
        self.child()
            .try_wait()
            .map_err(|e| LabError::io(format!("checking on {}", self.name), e))
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns whether it still runs.
    pub fn is_running(&self) -> bool {
        matches!(self.try_status(), Ok(None))
    }

    /// Fails with its log if it is no longer running; for "did the daemon survive?" checks.
    ///
    /// # Errors
    /// [`LabError::Invalid`] carrying the exit status and log tail.
    pub fn ensure_running(&self) -> Result<()> {
        match self.try_status()? {
            None => Ok(()),
            Some(_) => Err(LabError::Invalid(format!(
                "{} is not running:\n{}",
                self.name,
                self.report()
            ))),
        }
    }

    /// Sends `signal` to it (only if it has not been reaped, so the PID is still ours).
    ///
    /// # Errors
    /// When it has already exited, or `kill` fails.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        // Hold the lock from the check to the kill, so the PID cannot be reaped (and reused) in
        // between.
        let mut child = self.child();
        let status = child
            .try_wait()
            .map_err(|e| LabError::io(format!("checking on {}", self.name), e))?;
        if let Some(s) = status {
            return Err(LabError::Invalid(format!(
                "cannot send {signal} to {}: it already exited ({s})",
                self.name
            )));
        }
        let pid = Pid::from_raw(
            i32::try_from(self.pid).map_err(|_| LabError::Invalid("pid out of range".into()))?,
        );
        kill(pid, signal)
            .map_err(|e| LabError::io(format!("kill -{signal} {}", self.pid), e.into()))
    }

    /// Waits up to `timeout` for it to exit and returns its exit status.
    ///
    /// # Errors
    /// [`LabError::Timeout`] if it is still running then (it is left running).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.name, self.pid());
        crate::wait::wait_for(timeout, &what, || Ok(self.try_status()?))
    }

    /// Stops it: SIGTERM, up to [`STOP_GRACE`], then SIGKILL. Returns how it ended. Calling it on
    /// a process that already exited just returns the status.
    ///
    /// # Errors
    /// Only if the OS refuses to tell us about our own child.
    pub fn stop(&self) -> Result<ExitStatus> {
        if let Some(s) = self.try_status()? {
            return Ok(s);
        }
        let _ = self.signal(Signal::SIGTERM);
        if let Ok(s) = self.wait_exit(STOP_GRACE) {
            return Ok(s);
        }
        let mut child = self.child();
        let _ = child.kill();
        child
            .wait()
            .map_err(|e| LabError::io(format!("reaping {}", self.name), e))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
        let _ = self.stop();
    }
}
