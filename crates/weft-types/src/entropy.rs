//! The one place any Weft binary reads the operating system's random number
//! generator: key generation, Noise ephemeral seeds, check ids, jitter seeds
//! and every other seed go through [`fill`] (or its shorthands).
//!
//! A failed OS RNG aborts the process: there is no safe way on without
//! randomness (an all-zero Noise seed gives a predictable ephemeral key), and
//! a panic would only end the task that asked. On Linux `getrandom(2)`
//! fails only before the kernel pool is initialized in early boot, or under
//! a seccomp policy that forbids the call.
//!
//! Cores never call this: they take seeds as arguments, so tests replay
//! them. The root `clippy.toml` bans every other entry point to the OS RNG
//! (`rand::rng`, `rand::random`, `getrandom::fill`, ring's `SystemRandom`,
//! x25519's `StaticSecret::random`); the one `allow` is here.

/// Fills `buf` from the OS CSPRNG.
///
/// # Panics
/// Never: if the OS RNG fails, the process aborts (see the module docs).
pub fn fill(buf: &mut [u8]) {
    #[allow(clippy::disallowed_methods)] // the one door to the OS RNG
    fill_or_abort(buf, getrandom::fill);
}

/// Returns a 32-byte seed (a key, a Noise ephemeral, a core's RNG seed).
pub fn seed() -> [u8; 32] {
    bytes()
}

/// Returns `N` random bytes.
pub fn bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    fill(&mut b);
    b
}

/// Returns a random `u64` (ids, jitter seeds).
pub fn u64() -> u64 {
    u64::from_le_bytes(bytes())
}

/// Returns a random `u16`.
pub fn u16() -> u16 {
    u16::from_le_bytes(bytes())
}

/// The message written to stderr before the abort.
const FAILED: &str = "weft: the operating system's random number generator failed";

fn fill_or_abort<E: std::fmt::Display>(
    buf: &mut [u8],
    source: impl FnOnce(&mut [u8]) -> Result<(), E>,
) {
    if let Err(e) = source(buf) {
        use std::io::Write as _;
        // Written directly: logging may not be set up, and nothing after
        // this line runs.
        let _ = writeln!(
            std::io::stderr().lock(),
            "{FAILED} ({e}); aborting rather than continue without randomness"
        );
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the child process of [`a_failed_rng_aborts_the_process`].
    const CHILD: &str = "WEFT_ENTROPY_ABORT_CHILD";
    /// SIGABRT on Linux (every architecture Weft builds for).
    const SIGABRT: i32 = 6;

    #[test]
    fn seeds_differ_and_fill_every_byte_position() {
        let (a, b) = (seed(), seed());
        assert_ne!(a, b);
        // Over 64 seeds, a position that is always zero means it is never
        // written (the chance of that by luck is 2^-512).
        let mut seen = [0u8; 32];
        for _ in 0..64 {
            for (s, b) in seen.iter_mut().zip(seed()) {
                *s |= b;
            }
        }
        assert!(seen.iter().all(|b| *b != 0), "{seen:?}");
    }

    #[test]
    #[ignore = "run by a_failed_rng_aborts_the_process in a child process"]
    fn abort_child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let mut buf = [0u8; 32];
        fill_or_abort(&mut buf, |_| Err("injected failure"));
        // Not reached: a return here is a test failure in the parent.
    }

    #[test]
    fn a_failed_rng_aborts_the_process() {
        use std::os::unix::process::ExitStatusExt as _;
        let exe = std::env::current_exe().unwrap();
        let out = std::process::Command::new(exe)
            .args([
                "entropy::tests::abort_child",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(SIGABRT),
            "{:?}: {stderr}",
            out.status
        );
        assert!(
            stderr.contains(FAILED) && stderr.contains("injected failure"),
            "{stderr}"
        );
    }
}
