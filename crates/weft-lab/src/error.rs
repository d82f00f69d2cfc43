//! The errors of the harness. Every message carries what a reader of a failed CI log needs to act:
//! the command line, where it ran, its exit status and output, or what was awaited and for how long.

use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

/// `Result` with [`LabError`].
pub type Result<T, E = LabError> = std::result::Result<T, E>;

/// Everything that can go wrong in the harness.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran but failed (non-zero exit or killed by a signal).
    #[error(transparent)]
    Command(#[from] Box<CommandError>),
    /// A command could not be started at all (not found, not executable, ...).
    #[error("could not start `{cmdline}`{}: {source}", in_ns(.netns))]
    Spawn {
        /// The command line, shell-quoted.
        cmdline: String,
        /// The namespace it was meant to run in (`None`: the test's own).
        netns: Option<String>,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// A command did not finish within its time limit and was killed.
    #[error("`{cmdline}`{} did not finish within {limit:?} and was killed; output so far:\n{output}", in_ns(.netns))]
    CommandTimeout {
        /// The command line, shell-quoted.
        cmdline: String,
        /// The namespace it ran in.
        netns: Option<String>,
        /// The limit it exceeded.
        limit: Duration,
        /// Whatever it printed before it was killed.
        output: String,
    },
    /// A [`wait_until`](crate::wait_until) condition did not become true in time.
    #[error("timed out after {waited:?} waiting for {what}; last observation: {last}")]
    Timeout {
        /// What was awaited, as the caller described it.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last error returned by the probe, or what it saw.
        last: String,
    },
    /// A file-system or OS call failed.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The caller asked for something the harness cannot provide (a name too long, an address
    /// pool exhausted, a namespace that was already torn down, ...).
    #[error("{0}")]
    Invalid(String),
}

impl LabError {
    /// Builds an [`LabError::Io`] with a description of what was being done.
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

fn in_ns(netns: &Option<String>) -> String {
    match netns {
        Some(ns) => format!(" in netns {ns}"),
        None => String::new(),
    }
}

/// A command that ran and failed. Its `Display` is the whole story: command line, namespace, exit
/// status, stdout and stderr (each cut to its last 8 KiB).
#[derive(Debug)]
pub struct CommandError {
    /// The command line, shell-quoted.
    pub cmdline: String,
    /// The namespace it ran in (`None`: the test's own).
    pub netns: Option<String>,
    /// How it ended.
    pub status: ExitStatus,
    /// What it printed on stdout.
    pub stdout: String,
    /// What it printed on stderr.
    pub stderr: String,
}

impl std::error::Error for CommandError {}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "`{}`{} failed: {}",
            self.cmdline,
            in_ns(&self.netns),
            self.status
        )?;
        writeln!(f, "--- stdout ---\n{}", tail(&self.stdout, 8192))?;
        write!(f, "--- stderr ---\n{}", tail(&self.stderr, 8192))
    }
}

/// Returns at most the last `max` bytes of `s` (on a char boundary), marking the cut.
pub(crate) fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("[... {start} bytes cut ...]\n{}", &s[start..])
}

/// Quotes a command line for messages and for `sh -c` (single quotes where needed).
pub fn shell_quote<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| {
            let w = w.as_ref();
            let plain = !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b));
            if plain {
                w.to_owned()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(
            shell_quote(&["ip", "-n", "weft-1-ab-a", "addr"]),
            "ip -n weft-1-ab-a addr"
        );
        assert_eq!(
            shell_quote(&["sh", "-c", "echo 'hi' there"]),
            r"sh -c 'echo '\''hi'\'' there'"
        );
        assert_eq!(shell_quote(&[""]), "''");
    }

    #[test]
    fn tail_keeps_the_end_and_says_how_much_was_cut() {
        assert_eq!(tail("short", 10), "short");
        let t = tail("0123456789abcdef", 4);
        assert!(t.ends_with("\ncdef"), "{t}");
        assert!(t.starts_with("[... 12 bytes cut ...]"), "{t}");
        // Never splits a multi-byte character.
        let t = tail("ééé", 3);
        assert!(t.ends_with('é'), "{t}");
    }
}
