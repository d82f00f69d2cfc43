//! Prerequisites of end-to-end tests, and the skip-or-fail policy.
//!
//! An e2e test needs root and some programs. Where they are missing (a developer's laptop, a
//! container without `CAP_NET_ADMIN`), the test **skips** and says why on stderr (uncaptured, so
//! the reason shows in a normal `cargo test` run). With `WEFT_E2E=1` — which `.ci/run` sets — a
//! missing prerequisite **fails** the test instead, so CI can never go green by skipping.
//!
//! Each test starts with one line:
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let lab = weft_lab::e2e_lab!("wg", "wireguard-go", "/dev/net/tun");
//! # Ok(()) }
//! ```

use std::io::Write;
use std::path::Path;

use crate::lab::Lab;

/// The environment variable that turns skips into failures (`WEFT_E2E=1`).
pub const E2E_ENV: &str = "WEFT_E2E";

/// Returns whether missing prerequisites must fail tests (`WEFT_E2E=1`).
pub fn e2e_strict() -> bool {
    std::env::var(E2E_ENV).is_ok_and(|v| v == "1")
}

/// Returns `Err(reason)` unless the effective user is root.
///
/// # Errors
/// The reason, for a skip message.
pub fn require_root() -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)".into())
    }
}

/// Returns `Err(reason)` unless `program` is an executable file on `PATH` (or, if it contains a
/// `/`, at that path).
///
/// # Errors
/// The reason, for a skip message.
pub fn require_cmd(program: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if program.contains('/') {
        executable(Path::new(program))
    } else {
        std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).any(|dir| executable(&dir.join(program))))
            .unwrap_or(false)
    };
    if found {
        Ok(())
    } else {
        Err(format!(
            "`{program}` not found on PATH (see .ci/run for the packages)"
        ))
    }
}

/// Returns `Err(reason)` unless `path` exists (for device nodes such as `/dev/net/tun`).
///
/// # Errors
/// The reason, for a skip message.
pub fn require_path(path: &str) -> Result<(), String> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        Err(format!("{path} does not exist"))
    }
}

/// Checks root, `ip`, and each requirement — a program name, or an absolute path that must
/// exist — and returns the reasons of all that are missing.
pub fn missing_prereqs(requirements: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    missing.extend(require_root().err());
    for req in std::iter::once(&"ip").chain(requirements) {
        let r = if req.starts_with('/') {
            require_path(req)
        } else {
            require_cmd(req)
        };
        missing.extend(r.err());
    }
    missing
}

/// Applies the policy for the test `test_name`: returns a fresh [`Lab`] when everything is
/// there; prints `SKIP` and returns `None` when something is missing (not strict).
///
/// # Panics
/// When something is missing and `WEFT_E2E=1`, or when the [`Lab`] cannot be created although
/// everything is there: both are failures, not skips.
pub fn e2e_lab(test_name: &str, requirements: &[&str]) -> Option<Lab> {
    let missing = missing_prereqs(requirements);
    if !missing.is_empty() {
        let reasons = missing.join("; ");
        if e2e_strict() {
            panic!("{test_name}: {E2E_ENV}=1 but prerequisites are missing: {reasons}");
        }
        // Straight to the stderr handle: libtest captures eprintln! of passing tests, and a skip
        // must be visible.
        let _ = writeln!(
            std::io::stderr(),
            "SKIP {test_name}: {reasons} (set {E2E_ENV}=1 to fail instead)"
        );
        return None;
    }
    match Lab::new(test_name) {
        Ok(lab) => Some(lab),
        Err(e) => panic!("{test_name}: could not set up the lab: {e}"),
    }
}

/// Returns the running test's name: libtest names each test's thread after the test.
pub fn current_test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("unnamed-test")
        .to_owned()
}

/// What a skipped test returns: `()` or `Ok(())`, so that [`e2e_lab!`](crate::e2e_lab!) works in
/// tests of either shape.
pub trait Skipped {
    /// Returns the value of a skipped test.
    fn skipped() -> Self;
}

impl Skipped for () {
    fn skipped() -> Self {}
}

impl<E> Skipped for Result<(), E> {
    fn skipped() -> Self {
        Ok(())
    }
}

/// First line of an e2e test: checks root, `ip` and the given requirements (program names, or
/// absolute paths such as `"/dev/net/tun"`), then evaluates to a new [`Lab`]. If something is
/// missing it returns from the test (skip, with the reason on stderr) — or panics under
/// `WEFT_E2E=1`. Works in tests returning `()` or `Result<(), E>`.
#[macro_export]
macro_rules! e2e_lab {
    ($($req:expr),* $(,)?) => {
        match $crate::e2e_lab(&$crate::current_test_name(), &[$($req),*]) {
            ::core::option::Option::Some(lab) => lab,
            ::core::option::Option::None => return $crate::Skipped::skipped(),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_exists_is_found_and_one_that_does_not_is_named() {
        assert!(require_cmd("sh").is_ok());
        assert!(require_cmd("/bin/sh").is_ok());
        let err = require_cmd("weft-no-such-program-xyz").unwrap_err();
        assert!(err.contains("weft-no-such-program-xyz"), "{err}");
        assert!(require_cmd("/etc/hostname-not-here").is_err());
    }

    #[test]
    fn paths_and_programs_are_told_apart() {
        let missing = missing_prereqs(&["/weft/no/such/path", "weft-no-such-program-xyz", "sh"]);
        assert!(
            missing
                .iter()
                .any(|m| m.contains("/weft/no/such/path does not exist")),
            "{missing:?}"
        );
        assert!(
            missing
                .iter()
                .any(|m| m.contains("`weft-no-such-program-xyz` not found")),
            "{missing:?}"
        );
        assert!(!missing.iter().any(|m| m.contains("`sh`")), "{missing:?}");
    }

    #[test]
    fn the_test_name_comes_from_the_test_thread() {
        let name = current_test_name();
        assert!(
            name.ends_with("the_test_name_comes_from_the_test_thread"),
            "{name}"
        );
    }

    #[test]
    fn skipped_tests_return_success() {
        <() as Skipped>::skipped();
        assert!(<Result<(), String> as Skipped>::skipped().is_ok());
    }
}
