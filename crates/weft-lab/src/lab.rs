//! [`Lab`]: one test's run — its namespaces, links, addresses, temp dir — and its teardown.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::names::{self, RunId};
use crate::netns::Netns;
use crate::process::{Cmd, host_command};
use crate::wait::wait_until;

/// Where namespaces live (`ip netns add` bind-mounts them here).
pub const NETNS_DIR: &str = "/var/run/netns";
/// Where WireGuard UAPI sockets live, shared by all namespaces.
pub const WG_SOCKET_DIR: &str = "/var/run/wireguard";
/// Per-namespace files `ip netns exec` bind-mounts over `/etc` (iproute2).
pub const ETC_NETNS_DIR: &str = "/etc/netns";

/// The underlay pool, RFC 2544's benchmark range 198.18.0.0/15, cut into 512 /24s.
const UNDERLAY_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);
const UNDERLAY_BLOCKS: u32 = 512;

/// The parts of a run that handles ([`Netns`], [`Cmd`]) share with the [`Lab`].
#[derive(Debug)]
pub(crate) struct RunShared {
    pub(crate) id: RunId,
    pub(crate) dir: PathBuf,
    logs: Mutex<Vec<String>>,
}

impl RunShared {
    /// Returns a fresh log path `<dir>/<name>.log` (`<name>-2.log`, ... if taken).
    pub(crate) fn new_log_path(&self, name: &str) -> PathBuf {
        let clean: String = name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let mut candidate = clean.clone();
        let mut n = 1;
        while logs.contains(&candidate) {
            n += 1;
            candidate = format!("{clean}-{n}");
        }
        logs.push(candidate.clone());
        self.dir.join(format!("{candidate}.log"))
    }
}

/// One veth link between two namespaces, on its own /24 of 198.18.0.0/15.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The end in the first namespace given to [`Lab::link`] (address `.1`).
    pub a: LinkEnd,
    /// The end in the second namespace (address `.2`).
    pub b: LinkEnd,
    /// The link's subnet (network address; the prefix is [`Link::PREFIX_LEN`]).
    pub subnet: Ipv4Addr,
}

impl Link {
    /// The prefix length of every link subnet.
    pub const PREFIX_LEN: u8 = 24;
}

/// One end of a [`Link`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkEnd {
    /// Full name of the namespace it is in.
    pub netns: String,
    /// Interface name inside that namespace.
    pub ifname: String,
    /// Its IPv4 address.
    pub addr: Ipv4Addr,
}

/// One test's run: a unique prefix, a temp dir for logs, and everything created through it.
///
/// * `Lab::new` first removes what dead runs left behind (namespaces, UAPI sockets, interfaces in
///   the root namespace, temp dirs — only `weft-`/`wf` names whose PID is dead), then creates
///   `<tmp>/weft-lab/weft-<pid>-<tag>/` for logs.
/// * Dropping the `Lab` stops every process still running in its namespaces (SIGTERM, then
///   SIGKILL), deletes its namespaces (which takes their veths and TUNs along), removes leftover
///   UAPI sockets of the interface names it handed out, and deletes the temp dir — unless the
///   thread is panicking, in which case the logs are kept and their path printed.
///
/// Declare the `Lab` first in a test, so that it is dropped last: the [`Process`](crate::Process)
/// values then stop before their namespaces vanish.
#[derive(Debug)]
pub struct Lab {
    shared: Arc<RunShared>,
    test_name: String,
    namespaces: Mutex<Vec<String>>,
    ifnames: Mutex<Vec<String>>,
    next_veth: AtomicU32,
}

impl Lab {
    /// Starts a run for the test called `test_name` (used in messages only).
    ///
    /// # Errors
    /// When the temp dir cannot be created or `/dev/urandom` cannot be read. Stale-cleanup
    /// problems are printed, not returned: they must not fail an unrelated test.
    pub fn new(test_name: &str) -> Result<Lab> {
        static CLEANUP: Once = Once::new();
        CLEANUP.call_once(|| {
            for problem in cleanup_stale() {
                eprintln!("weft-lab: stale cleanup: {problem}");
            }
        });
        let id = RunId::generate()?;
        let dir = runs_root().join(id.prefix());
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        Ok(Lab {
            shared: Arc::new(RunShared {
                id,
                dir,
                logs: Mutex::new(Vec::new()),
            }),
            test_name: test_name.to_owned(),
            namespaces: Mutex::new(Vec::new()),
            ifnames: Mutex::new(Vec::new()),
            next_veth: AtomicU32::new(0),
        })
    }

    /// Returns the run's identity.
    pub fn id(&self) -> RunId {
        self.shared.id
    }

    /// Returns the run prefix `weft-<pid>-<tag>`.
    pub fn prefix(&self) -> String {
        self.shared.id.prefix()
    }

    /// Returns the test name given to [`Lab::new`].
    pub fn test_name(&self) -> &str {
        &self.test_name
    }

    /// Returns the run's temp dir (logs, and any files a test wants to keep next to them).
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Creates namespace `<prefix>-<short>` with `lo` up, and returns its handle.
    ///
    /// # Errors
    /// When `short` is not 1–20 of `[a-z0-9-]`, or `ip netns add` fails (not root?).
    pub fn netns(&self, short: &str) -> Result<Netns> {
        let valid = (1..=20).contains(&short.len())
            && short
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !valid {
            return Err(LabError::Invalid(format!(
                "namespace name {short:?}: use 1-20 characters of [a-z0-9-]"
            )));
        }
        let name = format!("{}-{short}", self.prefix());
        // Each namespace gets its own resolv.conf before anything runs there: a weftd with
        // MagicDNS rewrites /etc/resolv.conf, and without this file that would be the host's.
        let etc = Path::new(ETC_NETNS_DIR).join(&name);
        std::fs::create_dir_all(&etc)
            .and_then(|()| {
                std::fs::write(
                    etc.join("resolv.conf"),
                    format!("# weft-lab: {name}'s own resolv.conf\nnameserver 127.0.0.1\n"),
                )
            })
            .map_err(|e| LabError::io(format!("creating {}/resolv.conf", etc.display()), e))?;
        if let Err(e) = host_command("ip").args(["netns", "add", &name]).run() {
            let _ = std::fs::remove_dir_all(&etc);
            return Err(e);
        }
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        let ns = Netns::new(name, short.to_owned(), self.shared.clone());
        ns.ip(["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Creates a namespace like [`Lab::netns`] that forwards IPv4 and IPv6 between its
    /// interfaces. NAT is added on top with [`Netns::masquerade`].
    ///
    /// # Errors
    /// As for [`Lab::netns`], or when the sysctls cannot be set.
    pub fn router(&self, short: &str) -> Result<Netns> {
        let ns = self.netns(short)?;
        ns.sysctl("net.ipv4.ip_forward", "1")?;
        ns.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        Ok(ns)
    }

    /// Joins namespaces `a` and `b` with a veth pair on a fresh /24 of 198.18.0.0/15: `a` gets
    /// `.1`, `b` gets `.2`, both ends are up. Interfaces are named `to-<other short name>` when
    /// that fits and is free, else `veth<n>`. The pair is created directly inside the namespaces,
    /// so nothing ever appears in the root namespace.
    ///
    /// Subnets come from one process-wide counter, so concurrent tests in one test binary never
    /// share a subnet (namespaces would isolate them anyway; it keeps captures readable).
    ///
    /// # Errors
    /// When `ip link add` or addressing fails, or the link does not come up within 5 s.
    pub fn link(&self, a: &Netns, b: &Netns) -> Result<Link> {
        let subnet = next_subnet();
        let host = |n: u32| Ipv4Addr::from(u32::from(subnet) + n);
        let n = self.next_veth.fetch_add(1, Ordering::Relaxed);
        let name_for = |ns: &Netns, other: &Netns| {
            let pretty = format!("to-{}", other.short());
            if pretty.len() <= names::IFNAME_MAX && !ns.has_link(&pretty) {
                pretty
            } else {
                format!("veth{n}")
            }
        };
        let (if_a, if_b) = (name_for(a, b), name_for(b, a));
        host_command("ip")
            .args([
                "link",
                "add",
                &if_a,
                "netns",
                a.name(),
                "type",
                "veth",
                "peer",
                "name",
                &if_b,
            ])
            .args(["netns", b.name()])
            .run()?;
        let link = Link {
            a: LinkEnd {
                netns: a.name().to_owned(),
                ifname: if_a,
                addr: host(1),
            },
            b: LinkEnd {
                netns: b.name().to_owned(),
                ifname: if_b,
                addr: host(2),
            },
            subnet,
        };
        for (ns, end) in [(a, &link.a), (b, &link.b)] {
            ns.ip([
                "addr",
                "add",
                &format!("{}/{}", end.addr, Link::PREFIX_LEN),
                "dev",
                &end.ifname,
            ])?;
            ns.ip(["link", "set", &end.ifname, "up"])?;
        }
        for (ns, end) in [(a, &link.a), (b, &link.b)] {
            wait_until(
                Duration::from_secs(5),
                &format!("{} in {} to be up", end.ifname, ns.name()),
                || {
                    let out = ns.ip(["-o", "link", "show", "dev", &end.ifname])?;
                    Ok(out.stdout.contains("LOWER_UP"))
                },
            )?;
        }
        Ok(link)
    }

    /// Returns a new interface name that is unique on the machine (`wf<pid>-<n>`, ≤ 15 bytes),
    /// for devices whose name must not clash across namespaces — WireGuard devices, whose UAPI
    /// socket `/var/run/wireguard/<name>.sock` is one directory for all namespaces. Any leftover
    /// socket of that name (from a dead process that had our PID) is removed first; the Lab
    /// removes the socket again at teardown if the daemon left it behind.
    pub fn unique_ifname(&self) -> String {
        let name = names::unique_ifname();
        let _ = std::fs::remove_file(wg_socket_path(&name));
        self.ifnames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name.clone());
        name
    }

    /// Returns a [`Cmd`] for the root namespace that can also be spawned as a background
    /// [`Process`](crate::Process) with its log in this run's dir.
    pub fn host_command(&self, program: &str) -> Cmd {
        Cmd::new(None, program, Some(self.shared.clone()))
    }

    /// Returns the names of the namespaces created so far.
    pub fn namespaces(&self) -> Vec<String> {
        self.namespaces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let namespaces =
            std::mem::take(&mut *self.namespaces.lock().unwrap_or_else(|e| e.into_inner()));
        for ns in namespaces.iter().rev() {
            if let Err(e) = delete_netns(ns, Duration::from_secs(3)) {
                eprintln!("weft-lab: teardown of {ns}: {e}");
            }
        }
        for name in self
            .ifnames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = std::fs::remove_file(wg_socket_path(name));
        }
        if std::thread::panicking() || std::env::var_os("WEFT_LAB_KEEP_LOGS").is_some() {
            eprintln!(
                "weft-lab: {}: logs kept in {}",
                self.test_name,
                self.shared.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.shared.dir);
        }
    }
}

/// Returns `/var/run/wireguard/<ifname>.sock`.
pub fn wg_socket_path(ifname: &str) -> PathBuf {
    Path::new(WG_SOCKET_DIR).join(format!("{ifname}.sock"))
}

/// Returns the directory that holds every run's temp dir: `$TMPDIR/weft-lab`.
pub fn runs_root() -> PathBuf {
    std::env::temp_dir().join("weft-lab")
}

fn next_subnet() -> Ipv4Addr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let block = NEXT.fetch_add(1, Ordering::Relaxed) % UNDERLAY_BLOCKS;
    Ipv4Addr::from(UNDERLAY_BASE + block * 256)
}

/// Stops every process in namespace `name` (SIGTERM, up to `grace`, SIGKILL) and deletes it.
/// Only ever called on namespaces of our own runs, so every process in them is one we started.
fn delete_netns(name: &str, grace: Duration) -> Result<()> {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pids = || -> Vec<i32> {
        host_command("ip")
            .args(["netns", "pids", name])
            .timeout(Duration::from_secs(10))
            .run()
            .map(|o| {
                o.stdout
                    .split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let first = pids();
    if !first.is_empty() {
        for &p in &first {
            let _ = kill(Pid::from_raw(p), Signal::SIGTERM);
        }
        let gone = wait_until(grace, "processes to leave", || Ok(pids().is_empty()));
        if gone.is_err() {
            for p in pids() {
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            // SIGKILL is not refused; give the kernel a moment to reap.
            let _ = wait_until(Duration::from_secs(2), "killed processes to go", || {
                Ok(pids().is_empty())
            });
        }
    }
    host_command("ip")
        .args(["netns", "del", name])
        .timeout(Duration::from_secs(10))
        .run()?;
    let etc = Path::new(ETC_NETNS_DIR).join(name);
    match std::fs::remove_dir_all(&etc) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LabError::io(format!("removing {}", etc.display()), e))
        }
        _ => Ok(()),
    }
}

/// Removes what dead runs left: their namespaces (and processes in them), UAPI sockets and
/// root-namespace interfaces with `wf<pid>-` names, the cgroups of their machines
/// ([`crate::machine`]), and temp dirs. Returns the problems met.
pub fn cleanup_stale() -> Vec<String> {
    let mut problems = Vec::new();
    let alive = names::pid_alive;

    match host_command("ip")
        .args(["netns", "list"])
        .timeout(Duration::from_secs(10))
        .run()
    {
        Ok(out) => {
            let listed: Vec<&str> = out
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            for ns in names::stale_run_names(listed, alive) {
                if let Err(e) = delete_netns(ns, Duration::from_millis(500)) {
                    problems.push(format!("{ns}: {e}"));
                }
            }
        }
        Err(e) => problems.push(format!("ip netns list: {e}")),
    }

    for name in names::stale_ifnames(
        dir_names(Path::new(WG_SOCKET_DIR))
            .iter()
            .map(String::as_str),
        alive,
    ) {
        if let Err(e) = std::fs::remove_file(Path::new(WG_SOCKET_DIR).join(name)) {
            problems.push(format!("{WG_SOCKET_DIR}/{name}: {e}"));
        }
    }

    if let Ok(out) = host_command("ip")
        .args(["-o", "link", "show"])
        .timeout(Duration::from_secs(10))
        .run()
    {
        // "7: wfab-0: <POINTOPOINT,...> mtu ..." or "8: veth0@if9: ..."
        let links: Vec<&str> = out
            .stdout
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n))
            .collect();
        for link in names::stale_ifnames(links, alive) {
            if let Err(e) = host_command("ip").args(["link", "del", link]).run() {
                problems.push(format!("link {link}: {e}"));
            }
        }
    }

    let etc = Path::new(ETC_NETNS_DIR);
    for name in names::stale_run_names(dir_names(etc).iter().map(String::as_str), alive) {
        if let Err(e) = std::fs::remove_dir_all(etc.join(name)) {
            problems.push(format!("{}: {e}", etc.join(name).display()));
        }
    }

    // Containers of dead runs (crate::machine): their processes were in the namespaces above.
    problems.extend(crate::machine::cleanup_stale_cgroups(alive));

    let root = runs_root();
    for name in names::stale_run_names(dir_names(&root).iter().map(String::as_str), alive) {
        if let Err(e) = std::fs::remove_dir_all(root.join(name)) {
            problems.push(format!("{}: {e}", root.join(name).display()));
        }
    }
    problems
}

fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}
