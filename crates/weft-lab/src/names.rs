//! Names of everything a run creates, and how a later run recognises the leftovers of a dead one.
//!
//! Two naming schemes, both carrying the PID of the test process that made the object, so that
//! "stale" has a precise meaning: *the process that made it no longer exists*.
//!
//! * **Run prefix** `weft-<pid>-<tag>` (`tag`: 4 random hex digits, so that the several tests a
//!   test binary runs at once in one process get distinct prefixes). Namespaces are
//!   `<prefix>-<name>` (`weft-41207-9f3c-a`), the run's temp dir is `<tmp>/weft-lab/<prefix>`.
//! * **Machine-wide interface names** `wf<pid base 36>-<n base 36>` (`wfvsn-0`, at most 15
//!   bytes, the kernel's `IFNAMSIZ - 1`). `/var/run/wireguard/<iface>.sock` is one directory for
//!   all namespaces, so WireGuard interface names must be unique on the machine, not only in their
//!   namespace; `n` is a process-wide counter and the PID separates live processes.
//!
//! The parsers here are pure, so the stale-detection rules are unit-tested without root.

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::{LabError, Result};

/// The prefix of every namespace and temp dir a run creates.
pub const RUN_PREFIX: &str = "weft-";
/// The prefix of every machine-wide unique interface name ([`unique_ifname`]).
pub const IFNAME_PREFIX: &str = "wf";
/// Longest interface name the kernel accepts (`IFNAMSIZ` is 16 including the NUL).
pub const IFNAME_MAX: usize = 15;

/// Identity of one [`Lab`](crate::Lab) run: the test process and a random tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunId {
    /// PID of the test process that owns the run.
    pub pid: u32,
    /// Random 16-bit tag that separates runs of one process.
    pub tag: u16,
}

impl RunId {
    /// Returns a new id for this process with a random tag from `/dev/urandom`.
    ///
    /// # Errors
    /// When `/dev/urandom` cannot be read.
    pub fn generate() -> Result<Self> {
        let bytes = random_bytes::<2>()?;
        Ok(RunId {
            pid: std::process::id(),
            tag: u16::from_be_bytes(bytes),
        })
    }

    /// Returns the run prefix, `weft-<pid>-<tag as 4 hex digits>`.
    pub fn prefix(&self) -> String {
        format!("{RUN_PREFIX}{}-{:04x}", self.pid, self.tag)
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix())
    }
}

/// Parses the [`RunId`] out of a name that starts with a run prefix: `weft-<pid>-<tag>` alone or
/// followed by `-<anything>`. Returns `None` for names that are not ours.
pub fn parse_run_name(name: &str) -> Option<RunId> {
    let rest = name.strip_prefix(RUN_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (tag, tail) = match rest.split_once('-') {
        Some((tag, tail)) => (tag, Some(tail)),
        None => (rest, None),
    };
    // Only what `prefix()` prints: decimal PID, exactly 4 lower-case hex digits.
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if tail == Some("") || !is_decimal(pid) || tag.len() != 4 || !tag.bytes().all(lower_hex) {
        return None;
    }
    let pid = pid.parse().ok()?;
    let tag = u16::from_str_radix(tag, 16).ok()?;
    Some(RunId { pid, tag })
}

/// Returns the PID encoded in a machine-wide interface name made by [`unique_ifname`]
/// (`wf<pid base36>-<n base36>`), or `None` if the name is not of that form. Also accepts the
/// UAPI socket file name `<iface>.sock`.
pub fn parse_ifname_pid(name: &str) -> Option<u32> {
    let name = name.strip_suffix(".sock").unwrap_or(name);
    if name.len() > IFNAME_MAX {
        return None;
    }
    let rest = name.strip_prefix(IFNAME_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    if !is_base36(pid) || !is_base36(n) || pid.len() > 1 && pid.starts_with('0') {
        return None;
    }
    u32::from_str_radix(n, 36).ok()?;
    u32::from_str_radix(pid, 36).ok()
}

/// Returns a new interface name that is unique on the whole machine among live processes:
/// `wf<this pid in base 36>-<process-wide counter in base 36>`, at most 15 bytes.
pub fn unique_ifname() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    ifname_for(std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Formats the interface name for `pid` and counter `n` (see [`unique_ifname`]). Any Linux PID
/// (at most 2^22, five base-36 digits) with any `u32` counter (seven) fits in 15 bytes.
pub fn ifname_for(pid: u32, n: u32) -> String {
    format!("{IFNAME_PREFIX}{}-{}", base36(pid), base36(n))
}

/// Returns which of `names` belong to runs whose process is dead, according to `alive`. Names that
/// are not ours (no run prefix) are never selected, nor are those of live processes: a run only
/// ever cleans up after the dead.
pub fn stale_run_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
    alive: impl Fn(u32) -> bool,
) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| parse_run_name(n).is_some_and(|id| !alive(id.pid)))
        .collect()
}

/// Like [`stale_run_names`], for interface names and UAPI socket file names.
pub fn stale_ifnames<'a>(
    names: impl IntoIterator<Item = &'a str>,
    alive: impl Fn(u32) -> bool,
) -> Vec<&'a str> {
    names
        .into_iter()
        .filter(|n| parse_ifname_pid(n).is_some_and(|pid| !alive(pid)))
        .collect()
}

/// Returns whether a process with this PID exists (zombies included: their parent is alive and
/// still owns what they made).
pub fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// Reads `N` bytes from `/dev/urandom`.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    use std::io::Read;
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| LabError::io("reading /dev/urandom", e))?;
    Ok(buf)
}

fn base36(mut v: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
        if v == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

fn is_base36(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_prefix_round_trips_through_the_parser() {
        let id = RunId {
            pid: 41207,
            tag: 0x9f3c,
        };
        assert_eq!(id.prefix(), "weft-41207-9f3c");
        assert_eq!(parse_run_name("weft-41207-9f3c"), Some(id));
        assert_eq!(parse_run_name("weft-41207-9f3c-a"), Some(id));
        assert_eq!(parse_run_name("weft-41207-9f3c-router-1"), Some(id));
        assert_eq!(
            parse_run_name(
                &RunId {
                    pid: 1,
                    tag: 0x000a
                }
                .prefix()
            ),
            Some(RunId { pid: 1, tag: 10 })
        );
    }

    #[test]
    fn names_that_are_not_ours_do_not_parse() {
        for name in [
            "lab-a",
            "weft",
            "weft-",
            "weft-abc-9f3c",
            "weft-12-9f3",
            "weft-12-9f3cc",
            "weft-12-9F3C",
            "weft-12-+f3c",
            "weft-12-9f3c-",
            "weft--9f3c",
            "weft-99999999999-9f3c",
            "xweft-12-9f3c",
        ] {
            assert_eq!(parse_run_name(name), None, "{name}");
        }
    }

    #[test]
    fn generated_run_ids_belong_to_this_process() {
        let id = RunId::generate().unwrap();
        assert_eq!(id.pid, std::process::id());
        assert_eq!(parse_run_name(&id.prefix()), Some(id));
    }

    #[test]
    fn interface_names_fit_ifnamsiz_even_for_the_largest_pid_and_counter() {
        // PID_MAX_LIMIT, the largest pid_max Linux allows, is 2^22.
        let name = ifname_for(1 << 22, u32::MAX);
        assert!(name.len() <= IFNAME_MAX, "{name} is {} bytes", name.len());
        assert_eq!(parse_ifname_pid(&name), Some(1 << 22));
        // Linux's pid_max ceiling is 2^22; such a name is short.
        assert_eq!(ifname_for(4_194_304, 0), "wf2hwcg-0");
    }

    #[test]
    fn interface_names_round_trip_and_are_unique_within_the_process() {
        let a = unique_ifname();
        let b = unique_ifname();
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= IFNAME_MAX);
            assert_eq!(parse_ifname_pid(n), Some(std::process::id()));
            assert_eq!(
                parse_ifname_pid(&format!("{n}.sock")),
                Some(std::process::id())
            );
        }
        assert_eq!(ifname_for(46_000, 35), "wfzhs-z");
    }

    #[test]
    fn foreign_interface_names_do_not_parse() {
        for name in [
            "wg0",
            "labwga",
            "wf",
            "wf-1",
            "wf1-",
            "wfA-1",
            "wf01-1",
            "wf1-1-2",
            "wf1_1",
            "wfzzzzzzzzzz-1",
        ] {
            assert_eq!(parse_ifname_pid(name), None, "{name}");
        }
    }

    #[test]
    fn only_names_of_dead_runs_are_stale() {
        let names = [
            "weft-100-0001-a", // pid 100 dead
            "weft-100-0001-b", // pid 100 dead
            "weft-200-beef-a", // pid 200 alive
            "lab-a",           // not ours
            "weft-300-00zz-a", // malformed: not ours
        ];
        let alive = |pid| pid == 200;
        assert_eq!(
            stale_run_names(names, alive),
            vec!["weft-100-0001-a", "weft-100-0001-b"]
        );

        let ifs = ["wf2s-0.sock", "wf5k-3", "wg0.sock", "wf2s-1"];
        // wf2s = pid 100 (dead), wf5k = pid 200 (alive)
        assert_eq!(stale_ifnames(ifs, alive), vec!["wf2s-0.sock", "wf2s-1"]);
    }

    #[test]
    fn this_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(0));
    }
}
