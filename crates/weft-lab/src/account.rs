//! Local accounts for tests that log in as someone (SSH): created with `useradd`, removed on drop.
//!
//! The lab's namespaces share `/etc/passwd` and the file system with the host, so every account
//! gets a unique name (prefix, PID, counter, tag) and is deleted with its home directory when the
//! value drops, even when the test fails.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};

/// Serializes this process's passwd edits (useradd/userdel take a file lock and fail when busy).
static PASSWD: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// A local account with its own group and one extra supplementary group (`<name>x`).
#[derive(Debug)]
pub struct LocalAccount {
    pub name: String,
    pub extra_group: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Runs a passwd tool, retrying (bounded: 50 × 100 ms) while another process holds the lock.
fn passwd_tool(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut last = String::new();
    for _ in 0..50 {
        let out = std::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{program} {args:?}: {last}")
}

impl LocalAccount {
    /// Creates `<prefix><pid><n><tag>` with a home directory, bash as shell, its own group and
    /// the supplementary group `<name>x`.
    ///
    /// # Errors
    /// When useradd/groupadd fail (not root, passwd locked for 5 s).
    pub fn create(prefix: &str, tag: &str) -> anyhow::Result<LocalAccount> {
        let _g = PASSWD.lock().unwrap_or_else(|e| e.into_inner());
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}{:x}{n}{tag}", std::process::id());
        let extra_group = format!("{name}x");
        passwd_tool("groupadd", &[&extra_group])?;
        passwd_tool(
            "useradd",
            &["-m", "-U", "-s", "/bin/bash", "-G", &extra_group, &name],
        )?;
        let pw =
            nix::unistd::User::from_name(&name)?.context("the new account is not in passwd")?;
        Ok(LocalAccount {
            name,
            extra_group,
            uid: pw.uid.as_raw(),
            gid: pw.gid.as_raw(),
            home: pw.dir,
        })
    }

    /// A path in the home directory.
    #[must_use]
    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.join(rel)
    }

    /// Writes a file in the home directory, owned by the account.
    ///
    /// # Errors
    /// When the file cannot be written or chowned.
    pub fn write(&self, rel: &str, data: &[u8]) -> anyhow::Result<PathBuf> {
        let p = self.path(rel);
        std::fs::write(&p, data)?;
        nix::unistd::chown(&p, Some(self.uid.into()), Some(self.gid.into()))?;
        Ok(p)
    }
}

impl Drop for LocalAccount {
    fn drop(&mut self) {
        let _g = PASSWD.lock().unwrap_or_else(|e| e.into_inner());
        let _ = passwd_tool("userdel", &["-r", "-f", &self.name]);
        let _ = passwd_tool("groupdel", &[&self.extra_group]);
    }
}
