//! [`Netns`]: a handle on one of a [`Lab`](crate::Lab)'s network namespaces.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sched::{CloneFlags, setns};

use crate::error::{LabError, Result};
use crate::lab::{NETNS_DIR, RunShared};
use crate::process::{Cmd, Output, Process};
use crate::wait::wait_until;

/// A network namespace of a run, created by [`Lab::netns`](crate::Lab::netns) or
/// [`Lab::router`](crate::Lab::router). Cheap to clone; the namespace itself lives until the
/// [`Lab`](crate::Lab) is dropped.
///
/// Two ways to do things inside it:
/// * programs: [`Netns::exec`], [`Netns::command`] (builder), [`Netns::spawn`] (background);
/// * Rust code: [`Netns::enter`] runs a closure on a thread that has joined the namespace, and
///   sockets made there ([`Netns::udp_socket`], [`Netns::tcp_listener`],
///   [`Netns::tcp_connect`]) stay in the namespace wherever they are used afterwards.
#[derive(Debug, Clone)]
pub struct Netns {
    name: String,
    short: String,
    run: Arc<RunShared>,
}

impl Netns {
    pub(crate) fn new(name: String, short: String, run: Arc<RunShared>) -> Self {
        Netns { name, short, run }
    }

    /// Returns the full namespace name, `weft-<pid>-<tag>-<short>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the file `ip netns exec` bind-mounts over `/etc/resolv.conf` for programs in
    /// this namespace (`/etc/netns/<name>/resolv.conf`, created with the namespace).
    pub fn resolv_conf(&self) -> PathBuf {
        self.etc_dir().join("resolv.conf")
    }

    /// Returns `/etc/netns/<name>`: the files `ip netns exec` bind-mounts over `/etc`.
    fn etc_dir(&self) -> PathBuf {
        Path::new(crate::lab::ETC_NETNS_DIR).join(&self.name)
    }

    /// Returns the short name given at creation.
    pub fn short(&self) -> &str {
        &self.short
    }

    /// Writes this namespace's own `/etc/<file>` (e.g. `hosts` or `resolv.conf`): programs the
    /// lab starts in it (`ip netns exec`) see it over the host's, which stays untouched. The
    /// directory goes with the namespace.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_etc(&self, file: &str, contents: &str) -> Result<PathBuf> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(file);
        std::fs::write(&path, contents)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        Ok(path)
    }

    /// Returns a [`Cmd`] that runs `program` in this namespace.
    pub fn command(&self, program: &str) -> Cmd {
        Cmd::new(Some(self.name.clone()), program, Some(self.run.clone()))
    }

    /// Runs `program args...` in this namespace, waits (at most
    /// [`DEFAULT_CMD_TIMEOUT`](crate::DEFAULT_CMD_TIMEOUT)) and returns its output.
    ///
    /// # Errors
    /// See [`Cmd::run`]: a non-zero exit is an error whose message has the command line,
    /// namespace, status, stdout and stderr.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(program).args(args).run()
    }

    /// Starts `program args...` in this namespace in the background; see [`Cmd::spawn`].
    ///
    /// # Errors
    /// See [`Cmd::spawn`].
    pub fn spawn<I, S>(&self, name: &str, program: &str, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.command(program).args(args).spawn(name)
    }

    /// Runs `ip -n <this namespace> args...`.
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn ip<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Cmd::new(None, "ip", None)
            .args(["-n", &self.name])
            .args(args)
            .run()
    }

    /// Returns whether an interface of that name exists in this namespace.
    pub fn has_link(&self, ifname: &str) -> bool {
        self.ip(["link", "show", "dev", ifname]).is_ok()
    }

    /// Sets a sysctl inside this namespace (`net.*` keys are per namespace).
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", ["-qw", &format!("{key}={value}")])
            .map(drop)
    }

    /// Turns IPv6 off in this namespace (no link-local chatter on veths and tunnels).
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn disable_ipv6(&self) -> Result<()> {
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    }

    /// Adds an address (`"100.64.0.1/24"`) to an interface.
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn add_addr(&self, ifname: &str, cidr: &str) -> Result<()> {
        self.ip(["addr", "add", cidr, "dev", ifname]).map(drop)
    }

    /// Brings an interface up, optionally setting its MTU.
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn link_up(&self, ifname: &str, mtu: Option<u32>) -> Result<()> {
        match mtu {
            Some(mtu) => self.ip(["link", "set", "dev", ifname, "mtu", &mtu.to_string(), "up"]),
            None => self.ip(["link", "set", "dev", ifname, "up"]),
        }
        .map(drop)
    }

    /// Adds a route to `dest` (`"198.18.5.0/24"` or `"default"`) via `gateway`.
    ///
    /// # Errors
    /// See [`Cmd::run`].
    pub fn add_route(&self, dest: &str, gateway: IpAddr) -> Result<()> {
        self.ip(["route", "add", dest, "via", &gateway.to_string()])
            .map(drop)
    }

    /// Loads an nftables script (`nft -f -`) into this namespace.
    ///
    /// # Errors
    /// See [`Cmd::run`]; nft's message names the line it did not like.
    pub fn nft(&self, script: &str) -> Result<()> {
        self.command("nft")
            .args(["-f", "-"])
            .stdin(script)
            .run()
            .map(drop)
    }

    /// Drops all UDP between this namespace and `other`, both ways (a firewall between two
    /// hosts; everything else passes): peers then have no direct path and use the relay.
    ///
    /// # Errors
    /// See [`Netns::nft`].
    pub fn drop_udp_with(&self, other: IpAddr) -> Result<()> {
        let family = if other.is_ipv4() { "ip" } else { "ip6" };
        self.nft(&format!(
            "table inet weft-nodirect {{\n  chain out {{ type filter hook output priority 0; {family} daddr {other} meta l4proto udp drop; }}\n  chain in {{ type filter hook input priority 0; {family} saddr {other} meta l4proto udp drop; }}\n}}\n"
        ))
    }

    /// Makes this namespace a NAT router: traffic leaving through `out_ifname` is masqueraded
    /// (source address rewritten to that interface's, ports kept where possible: the common
    /// "endpoint-independent mapping" home router). Needs forwarding ([`Lab::router`](crate::Lab::router)).
    ///
    /// # Errors
    /// See [`Netns::nft`].
    pub fn masquerade(&self, out_ifname: &str) -> Result<()> {
        self.nft(&format!(
            "table ip weft-nat {{\n  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    oifname \"{out_ifname}\" masquerade\n  }}\n}}\n"
        ))
    }

    /// Pings `addr` `count` times (0.2 s apart, 1 s reply timeout each); fails unless every
    /// echo is answered.
    ///
    /// # Errors
    /// The ping's command error, with its statistics.
    pub fn ping(&self, addr: IpAddr, count: u32) -> Result<Output> {
        let out = self
            .command("ping")
            .args([
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.2",
                "-W",
                "1",
                &addr.to_string(),
            ])
            .timeout(Duration::from_secs(u64::from(count) + 10))
            .run()?;
        if out.stdout.contains(&format!("{count} received")) {
            Ok(out)
        } else {
            Err(self.command("ping").arg(addr.to_string()).failed(out))
        }
    }

    /// Waits until `addr` answers one ping (each attempt waits 1 s for the reply).
    ///
    /// # Errors
    /// [`LabError::Timeout`] with ping's last output.
    pub fn wait_ping(&self, addr: IpAddr, timeout: Duration) -> Result<()> {
        wait_until(
            timeout,
            &format!("{addr} to answer a ping from {}", self.short),
            || {
                self.command("ping")
                    .args(["-n", "-c", "1", "-W", "1", &addr.to_string()])
                    .timeout(Duration::from_secs(5))
                    .run()?;
                Ok(true)
            },
        )
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns its result. Sockets
    /// created inside belong to the namespace for good, so they can be returned and used from
    /// any thread. Panics in `f` propagate.
    ///
    /// # Errors
    /// When the namespace cannot be opened or joined.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        let path = format!("{NETNS_DIR}/{}", self.name);
        let file =
            std::fs::File::open(&path).map_err(|e| LabError::io(format!("opening {path}"), e))?;
        std::thread::scope(|s| {
            let handle = s.spawn(move || {
                // setns(CLONE_NEWNET) moves only this thread, which ends with the scope.
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| LabError::io(format!("joining {path}"), e.into()))?;
                Ok(f())
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Returns a UDP socket bound to `addr` in this namespace.
    ///
    /// # Errors
    /// When joining the namespace or binding fails.
    pub fn udp_socket(&self, addr: SocketAddr) -> Result<UdpSocket> {
        self.enter(|| UdpSocket::bind(addr))?
            .map_err(|e| LabError::io(format!("binding UDP {addr} in {}", self.name), e))
    }

    /// Returns a TCP listener on `addr` in this namespace.
    ///
    /// # Errors
    /// When joining the namespace or binding fails.
    pub fn tcp_listener(&self, addr: SocketAddr) -> Result<TcpListener> {
        self.enter(|| TcpListener::bind(addr))?
            .map_err(|e| LabError::io(format!("listening on TCP {addr} in {}", self.name), e))
    }

    /// Connects to `addr` over TCP from this namespace, giving up after `timeout`.
    ///
    /// # Errors
    /// When joining the namespace fails or the connection is not made in time.
    pub fn tcp_connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        self.enter(|| TcpStream::connect_timeout(&addr, timeout))?
            .map_err(|e| LabError::io(format!("connecting to TCP {addr} from {}", self.name), e))
    }

    /// Returns this namespace's SNMP counters from `/proc/net/snmp` as `"Udp.InDatagrams"` →
    /// value (see [`parse_snmp`]).
    ///
    /// # Errors
    /// When the file cannot be read inside the namespace.
    pub fn snmp(&self) -> Result<BTreeMap<String, i64>> {
        Ok(parse_snmp(&self.exec("cat", ["/proc/net/snmp"])?.stdout))
    }

    /// Waits for a TCP listener on `port` to exist in this namespace (`ss -Hltn`).
    ///
    /// # Errors
    /// [`LabError::Timeout`].
    pub fn wait_tcp_listen(&self, port: u16, timeout: Duration) -> Result<()> {
        wait_until(
            timeout,
            &format!("a TCP listener on port {port} in {}", self.short),
            || {
                let out = self.exec("ss", ["-Hltn", &format!("sport = :{port}")])?;
                Ok(!out.stdout.trim().is_empty())
            },
        )
    }
}

/// Parses `/proc/net/snmp` (pairs of lines `Proto: names...` / `Proto: values...`) into
/// `"Proto.Name"` → value. Lines that do not pair up are skipped.
pub fn parse_snmp(text: &str) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [head, values] = pair else { continue };
        let (Some((p1, names)), Some((p2, vals))) = (head.split_once(':'), values.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(vals.split_whitespace()) {
            if let Ok(v) = v.parse() {
                out.insert(format!("{p1}.{n}"), v);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snmp_counters_are_keyed_by_protocol_and_name() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 2 64\nUdp: InDatagrams NoPorts RcvbufErrors\nUdp: 10010 3 -1\n";
        let m = parse_snmp(text);
        assert_eq!(m.get("Udp.InDatagrams"), Some(&10010));
        assert_eq!(m.get("Udp.NoPorts"), Some(&3));
        assert_eq!(m.get("Udp.RcvbufErrors"), Some(&-1));
        assert_eq!(m.get("Ip.DefaultTTL"), Some(&64));
        assert_eq!(m.len(), 5);
    }

    #[test]
    fn snmp_lines_that_do_not_pair_up_are_ignored() {
        let m = parse_snmp("Ip: A B\nUdp: 1 2\nTcp: X\n");
        assert!(m.is_empty(), "{m:?}");
    }
}
