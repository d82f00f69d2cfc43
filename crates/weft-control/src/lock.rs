//! The state directory's lock: one server per state directory.
//!
//! [`StateLock::acquire`] takes an exclusive `flock` on `<state-dir>/lock`
//! before anything reads or writes the database, and writes the holder's
//! pid into the file. A second server on the same directory fails at once
//! and names the holder's pid; the kernel drops the lock when the holder
//! exits, however it exits, so a stale file never blocks a restart.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The lock file inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Why the state directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error(
        "another weft-control is running with this state dir ({holder}); stop it first, or give this one its own --state-dir"
    )]
    Held {
        /// `pid N`, or `pid unknown` when the file holds none.
        holder: String,
    },
    /// The lock file could not be opened, locked or written.
    #[error("cannot lock the state directory with {path}: {error}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct StateLock {
    _file: File,
}

impl StateLock {
    /// Takes the lock of `state_dir` without waiting.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the holder's pid, or [`LockError::Io`].
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |error| LockError::Io {
            path: path.clone(),
            error,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = match text.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "pid unknown".to_owned(),
                };
                return Err(LockError::Held { holder });
            }
            Err(TryLockError::Error(error)) => return Err(io(error)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(StateLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_dir_fails_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = StateLock::acquire(dir.path()).unwrap();
        let e = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "another weft-control is running with this state dir (pid {})",
                std::process::id()
            )),
            "{e}"
        );
        drop(held);
        StateLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn a_stale_lock_file_does_not_block() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), "999999\n").unwrap();
        let _held = StateLock::acquire(dir.path()).unwrap();
        let pid = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
    }
}
