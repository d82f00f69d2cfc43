//! A whole tailnet in namespaces: `weft-control` and `weftd` nodes on one switched underlay,
//! driven through the real CLIs (`weft-control …`, `weft --socket … …`).
//!
//! What it is: the shared fixture of every tailnet e2e test and of `weft-demo`. One
//! [`Tailnet`] per test owns a hub namespace with a bridge on a fresh /24 of 198.19.0.0/16
//! (inside the project's 198.18.0.0/15); every [`Control`] and [`Node`] gets its own namespace
//! with one veth into that bridge (the underlay: everybody there reaches everybody directly).
//! Sites behind NAT routers on the same underlay ("the internet"): [`crate::nat`]. What it is not: an
//! in-process fake.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use weft_lab::tailnet::{KeyOptions, Tailnet};
//! let lab = weft_lab::e2e_lab!("/dev/net/tun");
//! let net = Tailnet::new(&lab)?;                  // binaries next to the test exe
//! let control = net.control("ctl")?;               // weft-control serve on <underlay>.1:8080
//! let nodes = net.join(&control, &["n1", "n2"])?;  // user `alice`, reusable key, `weft up`
//! nodes[0].wait_peers(&["n2"], Duration::from_secs(20))?;
//! let ip = nodes[1].ip4()?;
//! nodes[0].netns().wait_ping(ip.into(), Duration::from_secs(10))?;
//! let pong = nodes[0].weft(["ping", "-c", "1", "n2"]).run()?;
//! assert!(pong.stdout.contains("pong from n2"));
//! # Ok(()) }
//! ```
//!
//! Binaries: [`Binaries::discover`] looks in `$WEFT_BIN_DIR`, else next to the running
//! executable (`target/<profile>/`, one level up from `deps/`). `cargo test --workspace` builds
//! all three (each crate has integration tests); when testing one crate, build the others first:
//! `cargo build -p weft -p weft-control -p weftd`.
//!
//! Teardown is RAII: [`Node`] and [`Control`] stop their process by PID on drop, and the
//! [`Lab`] deletes the namespaces (declare the `Lab` first so it drops last).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::{LabError, Result};
use crate::lab::Lab;
use crate::netns::Netns;
use crate::process::{Cmd, Output, Process};
use crate::wait::{wait_for, wait_until};

/// The control server's HTTP port.
pub const CONTROL_PORT: u16 = 8080;
/// The nodes' UDP port (WireGuard + disco).
pub const NODE_PORT: u16 = 41641;
/// How long a daemon gets to answer after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The `--timeout` given to `weft up` by [`Node::up`].
pub const UP_TIMEOUT: &str = "30s";

/// The three programs of a tailnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binaries {
    /// `weft-control`.
    pub control: PathBuf,
    /// `weftd`.
    pub weftd: PathBuf,
    /// `weft`.
    pub weft: PathBuf,
}

impl Binaries {
    /// Finds the binaries in `$WEFT_BIN_DIR` if set, else next to the running executable (for a
    /// test binary in `target/<profile>/deps/`, in `target/<profile>/`).
    ///
    /// # Errors
    /// When one is missing; the message says how to build them.
    pub fn discover() -> Result<Binaries> {
        if let Some(dir) = std::env::var_os("WEFT_BIN_DIR") {
            return Binaries::in_dir(Path::new(&dir));
        }
        let exe = std::env::current_exe()
            .map_err(|e| LabError::io("finding the running executable", e))?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        Binaries::in_dir(&dir)
    }

    /// Takes the binaries from `dir`.
    ///
    /// # Errors
    /// When one of them is not there.
    pub fn in_dir(dir: &Path) -> Result<Binaries> {
        let bins = Binaries {
            control: dir.join("weft-control"),
            weftd: dir.join("weftd"),
            weft: dir.join("weft"),
        };
        for p in [&bins.control, &bins.weftd, &bins.weft] {
            if !p.is_file() {
                return Err(LabError::Invalid(format!(
                    "{} not found: build the binaries first (`cargo build -p weft -p weft-control -p weftd`, \
                     or set WEFT_BIN_DIR)",
                    p.display()
                )));
            }
        }
        Ok(bins)
    }

    /// Replaces the `weftd` path (tests of the weftd crate pass `env!("CARGO_BIN_EXE_weftd")`,
    /// which cargo guarantees is fresh).
    #[must_use]
    pub fn with_weftd(mut self, path: impl Into<PathBuf>) -> Binaries {
        self.weftd = path.into();
        self
    }
}

/// One tailnet lab: a switched underlay (hub namespace with a bridge) that controls and nodes
/// join. Borrows the [`Lab`], which owns the namespaces.
#[derive(Debug)]
pub struct Tailnet<'lab> {
    lab: &'lab Lab,
    hub: Netns,
    subnet: Ipv4Addr,
    next_host: AtomicU32,
    bins: Binaries,
}

/// Options of a [`Control`].
#[derive(Debug, Clone, Default)]
pub struct ControlOptions {
    /// Extra `weft-control serve` arguments (e.g. `["--node-key-expiry", "1h"]`).
    pub serve_args: Vec<String>,
}

/// Options of a [`Node`].
#[derive(Debug, Clone, Default)]
pub struct NodeOptions {
    /// `--operator USER`.
    pub operator: Option<String>,
    /// Extra `weftd` arguments.
    pub weftd_args: Vec<String>,
    /// Extra environment for weftd (e.g. `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Start weftd with this open-file limit, `(soft, hard)` (through
    /// `prlimit`), e.g. a distribution's default `(1024, 4096)`.
    pub nofile: Option<(u64, u64)>,
}

/// Options of a pre-auth key ([`Control::create_key`]).
#[derive(Debug, Clone, Default)]
pub struct KeyOptions {
    /// `--reusable`.
    pub reusable: bool,
    /// `--ephemeral`.
    pub ephemeral: bool,
    /// `--tags tag:a,tag:b` (empty: none).
    pub tags: Vec<String>,
    /// `--expiration` (e.g. `"1h"`).
    pub expiration: Option<String>,
}

impl KeyOptions {
    /// Returns the options of a reusable key with no tags and the default expiry.
    #[must_use]
    pub fn reusable() -> Self {
        KeyOptions {
            reusable: true,
            ..KeyOptions::default()
        }
    }
}

impl<'lab> Tailnet<'lab> {
    /// Creates the underlay (namespace `hub` with bridge `br0`), with binaries from
    /// [`Binaries::discover`].
    ///
    /// # Errors
    /// Binaries missing, or `ip` failing.
    pub fn new(lab: &'lab Lab) -> Result<Tailnet<'lab>> {
        Tailnet::with_binaries(lab, Binaries::discover()?)
    }

    /// Like [`Tailnet::new`] with the given binaries.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn with_binaries(lab: &'lab Lab, bins: Binaries) -> Result<Tailnet<'lab>> {
        static NEXT_SUBNET: AtomicU32 = AtomicU32::new(0);
        let block = NEXT_SUBNET.fetch_add(1, Ordering::Relaxed) % 256;
        let subnet = Ipv4Addr::new(198, 19, u8::try_from(block).unwrap_or(0), 0);
        let hub = lab.netns("hub")?;
        hub.ip(["link", "add", "br0", "type", "bridge"])?;
        hub.ip(["link", "set", "br0", "up"])?;
        Ok(Tailnet {
            lab,
            hub,
            subnet,
            next_host: AtomicU32::new(1),
            bins,
        })
    }

    /// Returns the lab.
    pub fn lab(&self) -> &'lab Lab {
        self.lab
    }

    /// Returns the binaries in use.
    pub fn binaries(&self) -> &Binaries {
        &self.bins
    }

    /// Returns the underlay subnet (a /24).
    pub fn subnet(&self) -> Ipv4Addr {
        self.subnet
    }

    /// Creates namespace `short` with interface `ul0` bridged into the underlay and returns it
    /// with its underlay address (`.1`, `.2`, … in creation order).
    ///
    /// # Errors
    /// When `ip` fails or the /24 is full.
    pub fn attach(&self, short: &str) -> Result<(Netns, Ipv4Addr)> {
        let addr = self.new_underlay_addr()?;
        let host = u32::from(addr) - u32::from(self.subnet);
        let ns = self.lab.netns(short)?;
        let hub_if = format!("p{host}");
        crate::process::host_command("ip")
            .args(["link", "add", "ul0", "netns", ns.name(), "type", "veth"])
            .args(["peer", "name", &hub_if, "netns", self.hub.name()])
            .run()?;
        self.hub
            .ip(["link", "set", &hub_if, "master", "br0", "up"])?;
        ns.ip(["addr", "add", &format!("{addr}/24"), "dev", "ul0"])?;
        ns.ip(["link", "set", "ul0", "up"])?;
        wait_until(
            Duration::from_secs(5),
            &format!("ul0 in {short} to be up"),
            || {
                Ok(ns
                    .ip(["-o", "link", "show", "dev", "ul0"])?
                    .stdout
                    .contains("LOWER_UP"))
            },
        )?;
        Ok((ns, addr))
    }

    /// Hands out the next free underlay address (`.1`, `.2`, …), for [`Tailnet::attach`] and for
    /// a namespace that moves to a new address on the underlay (roaming, see
    /// [`crate::nat::Site::roam`]).
    ///
    /// # Errors
    /// When the /24 is full.
    pub fn new_underlay_addr(&self) -> Result<Ipv4Addr> {
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        if host > 250 {
            return Err(LabError::Invalid("the underlay /24 is full".into()));
        }
        Ok(Ipv4Addr::from(u32::from(self.subnet) + host))
    }

    /// Starts `weft-control serve` in a new namespace `short` (listening on its underlay
    /// address, port [`CONTROL_PORT`], state dir `<run dir>/<short>`), waits until it listens.
    ///
    /// # Errors
    /// When it does not start.
    pub fn control(&self, short: &str) -> Result<Control> {
        self.control_with(short, ControlOptions::default())
    }

    /// [`Tailnet::control`] with options.
    ///
    /// # Errors
    /// When it does not start.
    pub fn control_with(&self, short: &str, opts: ControlOptions) -> Result<Control> {
        let (ns, addr) = self.attach(short)?;
        let control = Control {
            name: short.to_owned(),
            ns,
            addr,
            state_dir: self.lab.dir().join(short),
            bin: self.bins.control.clone(),
            opts,
            process: Mutex::new(None),
        };
        control.start()?;
        Ok(control)
    }

    /// Starts `weftd` in a new namespace `short` (state `<run dir>/<short>/weftd.state`, socket
    /// `<run dir>/<short>/weftd.sock`, TUN `weft0`, port [`NODE_PORT`]) and waits until its
    /// LocalAPI answers. The node is not logged in.
    ///
    /// # Errors
    /// When it does not start.
    pub fn node(&self, short: &str) -> Result<Node> {
        self.node_with(short, NodeOptions::default())
    }

    /// [`Tailnet::node`] with options.
    ///
    /// # Errors
    /// When it does not start.
    pub fn node_with(&self, short: &str, opts: NodeOptions) -> Result<Node> {
        let (ns, addr) = self.attach(short)?;
        self.node_in(ns, addr, opts)
    }

    /// Starts `weftd` (as [`Tailnet::node_with`]) in an existing namespace `ns` whose address
    /// is `addr` — e.g. a host behind a NAT router ([`crate::nat::Site::node`]). The node is
    /// named after the namespace's short name.
    ///
    /// # Errors
    /// When it does not start.
    pub fn node_in(&self, ns: Netns, addr: Ipv4Addr, opts: NodeOptions) -> Result<Node> {
        let short = ns.short().to_owned();
        let short = short.as_str();
        let dir = self.lab.dir().join(short);
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::io(format!("creating {}", dir.display()), e))?;
        // A non-root CLI must reach the socket: the run dir is 0755, keep ours so too.
        let node = Node {
            name: short.to_owned(),
            ns,
            addr,
            state: dir.join("weftd.state"),
            statedir: dir.clone(),
            socket: dir.join("weftd.sock"),
            bins: self.bins.clone(),
            opts,
            process: Mutex::new(None),
            starts: AtomicU32::new(0),
        };
        node.start()?;
        Ok(node)
    }

    /// The common start: user `alice` on `control`, one reusable pre-auth key, a node per name
    /// logged in with it (`--hostname <name>`), and every node seeing all the others in
    /// `status --json`.
    ///
    /// # Errors
    /// When a step fails; the message holds the CLI output.
    pub fn join(&self, control: &Control, names: &[&str]) -> Result<Vec<Node>> {
        control.ensure_user("alice")?;
        let key = control.create_key("alice", &KeyOptions::reusable())?;
        let mut nodes = Vec::new();
        for name in names {
            let node = self.node(name)?;
            node.up_with_key(control, &key)?;
            nodes.push(node);
        }
        for node in &nodes {
            let others: Vec<&str> = names
                .iter()
                .copied()
                .filter(|n| *n != node.name())
                .collect();
            node.wait_peers_online(&others, Duration::from_secs(30))?;
        }
        Ok(nodes)
    }
}

/// A `weft-control serve` in its own namespace. Stopped on drop; [`Control::stop`] and
/// [`Control::start`] keep its state dir (database, server key).
#[derive(Debug)]
pub struct Control {
    name: String,
    ns: Netns,
    addr: Ipv4Addr,
    state_dir: PathBuf,
    bin: PathBuf,
    opts: ControlOptions,
    process: Mutex<Option<Process>>,
}

impl Control {
    /// Returns the short name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the namespace it runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Returns its underlay address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Returns the URL nodes log in with, `http://<addr>:8080`.
    pub fn url(&self) -> String {
        format!("http://{}:{CONTROL_PORT}", self.addr)
    }

    /// Returns its state dir.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Starts the server (no-op if running) and waits until it listens and its admin socket
    /// answers.
    ///
    /// # Errors
    /// When it exits or does not get there within [`START_TIMEOUT`].
    pub fn start(&self) -> Result<()> {
        let mut guard = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(Process::is_running) {
            return Ok(());
        }
        let listen = format!("{}:{CONTROL_PORT}", self.addr);
        let process = self
            .ns
            .command(&self.bin.display().to_string())
            .args(["serve", "--listen", &listen, "--state-dir"])
            .arg(self.state_dir.display().to_string())
            .args(&self.opts.serve_args)
            .spawn(&format!("{}-control", self.name))?;
        let ready = wait_until(START_TIMEOUT, &format!("{} to serve", self.name), || {
            process.ensure_running()?;
            Ok(self.state_dir.join("admin.sock").exists()
                && self
                    .admin(["users", "list"])
                    .run_unchecked()?
                    .status
                    .success())
        });
        if let Err(e) = ready {
            return Err(LabError::Invalid(format!("{e}\n{}", process.report())));
        }
        self.ns.wait_tcp_listen(CONTROL_PORT, START_TIMEOUT)?;
        *guard = Some(process);
        Ok(())
    }

    /// Returns the server's PID, if running (its relay runs in the same process).
    pub fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Process::pid)
    }

    /// Stops the server (SIGTERM, then SIGKILL), keeping its state.
    ///
    /// # Errors
    /// When it cannot be signalled.
    pub fn stop(&self) -> Result<()> {
        stop_current(&self.process)
    }

    /// Returns the server's log so far.
    pub fn log(&self) -> String {
        current_log(&self.process, &self.name)
    }

    /// Returns the admin command `weft-control <args…> --state-dir <dir>` (every admin
    /// subcommand takes the state dir) with a 30 s limit. Run it with [`Cmd::run`] (fails on a
    /// non-zero exit), [`Cmd::run_unchecked`] (for commands expected to fail) or
    /// [`Cmd::json`] (with `--json` among `args`).
    pub fn admin<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ns
            .command(&self.bin.display().to_string())
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir.display().to_string())
            .timeout(Duration::from_secs(30))
    }

    /// Creates user `login`.
    ///
    /// # Errors
    /// On failure (also when it exists; see [`Control::ensure_user`]).
    pub fn create_user(&self, login: &str) -> Result<()> {
        self.admin(["users", "create", login]).run().map(drop)
    }

    /// Creates user `login` unless it exists.
    ///
    /// # Errors
    /// On failure.
    pub fn ensure_user(&self, login: &str) -> Result<()> {
        let users: serde_json::Value = self.admin(["users", "list", "--json"]).json()?;
        let exists = users.as_array().is_some_and(|a| {
            a.iter().any(|u| {
                u["login_name"].as_str() == Some(login) || u["login"].as_str() == Some(login)
            })
        });
        if exists {
            Ok(())
        } else {
            self.create_user(login)
        }
    }

    /// Creates a pre-auth key for `user` and returns it.
    ///
    /// # Errors
    /// On failure.
    pub fn create_key(&self, user: &str, opts: &KeyOptions) -> Result<String> {
        let mut args = vec![
            "keys".to_owned(),
            "create".into(),
            "--user".into(),
            user.into(),
        ];
        if opts.reusable {
            args.push("--reusable".into());
        }
        if opts.ephemeral {
            args.push("--ephemeral".into());
        }
        if !opts.tags.is_empty() {
            args.push("--tags".into());
            args.push(opts.tags.join(","));
        }
        if let Some(e) = &opts.expiration {
            args.push("--expiration".into());
            args.push(e.clone());
        }
        args.push("--json".into());
        let v: serde_json::Value = self.admin(&args).json()?;
        v["secret"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| LabError::Invalid(format!("keys create --json: no secret in {v}")))
    }

    /// Returns `nodes list --json` (an array of node objects).
    ///
    /// # Errors
    /// On failure.
    pub fn nodes(&self) -> Result<Vec<serde_json::Value>> {
        let v = self.admin(["nodes", "list", "--json"]).json()?;
        match v {
            serde_json::Value::Array(a) => Ok(a),
            other => other
                .get("nodes")
                .and_then(|n| n.as_array())
                .cloned()
                .ok_or_else(|| LabError::Invalid(format!("nodes list: unexpected JSON {other}"))),
        }
    }

    /// Returns the id of the node whose hostname (or name) is `hostname`.
    ///
    /// # Errors
    /// When there is none or more than one.
    pub fn node_id(&self, hostname: &str) -> Result<String> {
        let nodes = self.nodes()?;
        let matching: Vec<&serde_json::Value> = nodes
            .iter()
            .filter(|n| {
                n["hostname"].as_str() == Some(hostname) || n["name"].as_str() == Some(hostname)
            })
            .collect();
        match matching.as_slice() {
            [one] => Ok(json_id(&one["id"])),
            _ => Err(LabError::Invalid(format!(
                "expected one node named {hostname} at control, found {}: {nodes:?}",
                matching.len()
            ))),
        }
    }

    /// `nodes delete <id>`.
    ///
    /// # Errors
    /// On failure.
    pub fn delete_node(&self, id: &str) -> Result<()> {
        self.admin(["nodes", "delete", id]).run().map(drop)
    }

    /// `nodes expire <id>`.
    ///
    /// # Errors
    /// On failure.
    pub fn expire_node(&self, id: &str) -> Result<()> {
        self.admin(["nodes", "expire", id]).run().map(drop)
    }

    /// `nodes approve --user <user> <auth_id>` (the id is the last path segment of the login
    /// URL; a whole URL is accepted too).
    ///
    /// # Errors
    /// On failure.
    pub fn approve(&self, auth_url_or_id: &str, user: &str) -> Result<()> {
        let id = auth_url_or_id
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or(auth_url_or_id);
        self.admin(["nodes", "approve", "--user", user, id])
            .run()
            .map(drop)
    }

    /// `policy set` with `hujson` as the policy file.
    ///
    /// # Errors
    /// On failure (the output says why the server refused it).
    pub fn set_policy(&self, hujson: &str) -> Result<Output> {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = self.state_dir.join(format!(
            "policy-{}.hujson",
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, hujson)
            .map_err(|e| LabError::io(format!("writing {}", path.display()), e))?;
        self.admin(["policy", "set", &path.display().to_string()])
            .run()
    }

    /// `policy explain --src <src> --dst <dst> [--proto <proto>]`.
    ///
    /// # Errors
    /// On failure.
    pub fn explain(&self, src: &str, dst: &str, proto: Option<&str>) -> Result<Output> {
        let mut args = vec!["policy", "explain", "--src", src, "--dst", dst];
        if let Some(p) = proto {
            args.extend(["--proto", p]);
        }
        self.admin(args).run()
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Stops the process in `slot` (SIGTERM, then SIGKILL after [`crate::STOP_GRACE`]), if any,
/// and empties the slot.
fn stop_current(slot: &Mutex<Option<Process>>) -> Result<()> {
    let process = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(p) = process {
        p.stop()?;
    }
    Ok(())
}

/// Returns the report of the process in `slot`, or that `name` is not running.
fn current_log(slot: &Mutex<Option<Process>>, name: &str) -> String {
    slot.lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(Process::report)
        .unwrap_or_else(|| format!("{name}: not running"))
}

fn json_id(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A `weftd` in its own namespace, with its own state file and LocalAPI socket. Stopped on drop.
#[derive(Debug)]
pub struct Node {
    name: String,
    ns: Netns,
    addr: Ipv4Addr,
    state: PathBuf,
    statedir: PathBuf,
    socket: PathBuf,
    bins: Binaries,
    opts: NodeOptions,
    process: Mutex<Option<Process>>,
    starts: AtomicU32,
}

impl Node {
    /// Returns the short name (also the `--hostname` [`Node::up_with_key`] uses).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the namespace it runs in.
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    /// Returns its underlay address.
    pub fn underlay_addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Returns the state file path.
    pub fn state_path(&self) -> &Path {
        &self.state
    }

    /// Returns the state directory (`--statedir`: host keys, recordings).
    pub fn statedir(&self) -> &Path {
        &self.statedir
    }

    /// Returns the LocalAPI socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Returns the weftd PID, if running.
    pub fn pid(&self) -> Option<u32> {
        self.process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(Process::pid)
    }

    /// Starts weftd (no-op if running) and waits until its LocalAPI answers.
    ///
    /// # Errors
    /// When it exits or does not answer within [`START_TIMEOUT`].
    pub fn start(&self) -> Result<()> {
        let mut guard = self.process.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(Process::is_running) {
            return Ok(());
        }
        let n = self.starts.fetch_add(1, Ordering::Relaxed) + 1;
        let weftd = self.bins.weftd.display().to_string();
        let mut cmd = match self.opts.nofile {
            // prlimit execs weftd: the PID stays weftd's.
            Some((soft, hard)) => self
                .ns
                .command("prlimit")
                .arg(format!("--nofile={soft}:{hard}"))
                .arg("--")
                .arg(&weftd),
            None => self.ns.command(&weftd),
        }
        .arg("--state")
        .arg(self.state.display().to_string())
        .arg("--statedir")
        .arg(self.statedir.display().to_string())
        .arg("--socket")
        .arg(self.socket.display().to_string())
        .args(["--tun", "weft0", "--port", &NODE_PORT.to_string()]);
        if let Some(op) = &self.opts.operator {
            cmd = cmd.args(["--operator", op]);
        }
        cmd = cmd.args(&self.opts.weftd_args);
        for (k, v) in &self.opts.env {
            cmd = cmd.env(k, v);
        }
        let process = cmd.spawn(&format!("{}-weftd-{n}", self.name))?;
        let ready = wait_until(
            START_TIMEOUT,
            &format!("weftd {} to answer", self.name),
            || {
                process.ensure_running()?;
                let out = self.weft(["status", "--json"]).run_unchecked()?;
                Ok(serde_json::from_str::<serde_json::Value>(&out.stdout).is_ok())
            },
        );
        if let Err(e) = ready {
            return Err(LabError::Invalid(format!("{e}\n{}", process.report())));
        }
        *guard = Some(process);
        Ok(())
    }

    /// Stops weftd gracefully (SIGTERM, then SIGKILL after the grace).
    ///
    /// # Errors
    /// When it cannot be signalled.
    pub fn stop(&self) -> Result<()> {
        stop_current(&self.process)
    }

    /// Kills weftd with SIGKILL and waits for it to be gone (its TUN goes with it).
    ///
    /// # Errors
    /// When it cannot be signalled or does not exit.
    pub fn kill9(&self) -> Result<()> {
        let process = self
            .process
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(p) = process {
            p.signal(Signal::SIGKILL)?;
            p.wait_exit(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// `kill -9` and start again with the same state file.
    ///
    /// # Errors
    /// As for [`Node::kill9`] and [`Node::start`].
    pub fn restart(&self) -> Result<()> {
        self.kill9()?;
        self.start()
    }

    /// Returns weftd's log so far (all of its starts are separate logs; this is the current one).
    pub fn log(&self) -> String {
        current_log(&self.process, &format!("weftd {}", self.name))
    }

    /// Returns the command `weft --socket <socket> <args…>` in the node's namespace, run as
    /// root, with a 90 s limit. Run it with [`Cmd::run`] (fails on a non-zero exit),
    /// [`Cmd::run_unchecked`] (for commands expected to fail) or [`Cmd::json`] (with `--json`
    /// among `args`).
    pub fn weft<I, S>(&self, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ns
            .command(&self.bins.weft.display().to_string())
            .arg("--socket")
            .arg(self.socket.display().to_string())
            .args(args)
            .timeout(Duration::from_secs(90))
    }

    /// Returns the command `weft --socket <socket> <args…>` run as the (non-root) user `user`
    /// through `runuser`, with a 60 s limit; run it as [`Node::weft`]'s.
    pub fn weft_as<I, S>(&self, user: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let socket = self.socket.display().to_string();
        self.exec_as(
            user,
            &self.bins.weft.display().to_string(),
            ["--socket", &socket],
        )
        .args(args)
    }

    /// Runs `program args…` in the node's namespace (fails on non-zero exit).
    ///
    /// # Errors
    /// On failure.
    pub fn exec<I, S>(&self, program: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ns.exec(program, args)
    }

    /// Returns the command `program args…` in the node's namespace run as user `user`
    /// (`runuser -u`), with a 60 s limit.
    pub fn exec_as<I, S>(&self, user: &str, program: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.ns
            .command("runuser")
            .args(["-u", user, "--", program])
            .args(args)
            .timeout(Duration::from_secs(60))
    }

    /// Returns `weft status --json` parsed (also when the command exits 1 because the node is
    /// not running, as long as it printed JSON).
    ///
    /// # Errors
    /// When the output is not JSON.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let out = self.weft(["status", "--json"]).run_unchecked()?;
        serde_json::from_str(&out.stdout).map_err(|e| {
            LabError::Invalid(format!(
                "weft status --json on {}: not JSON ({e}); stdout: {} stderr: {}",
                self.name, out.stdout, out.stderr
            ))
        })
    }

    /// Returns `backend_state` from `status --json` (e.g. `"running"`, `"needs_login"`).
    ///
    /// # Errors
    /// As for [`Node::status_json`].
    pub fn backend_state(&self) -> Result<String> {
        let v = self.status_json()?;
        Ok(v["backend_state"].as_str().unwrap_or_default().to_owned())
    }

    /// Returns the command `weft up --login-server <control> --authkey <key> --hostname <name>
    /// --timeout 30s`; further flags (`--ssh`, …) go on with [`Cmd::arg`].
    pub fn up(&self, control: &Control, key: &str) -> Cmd {
        self.weft([
            "up",
            "--login-server",
            &control.url(),
            "--authkey",
            key,
            "--hostname",
            &self.name,
            "--timeout",
            UP_TIMEOUT,
        ])
    }

    /// Runs [`Node::up`], failing unless it exits 0.
    ///
    /// # Errors
    /// On failure (the error holds the CLI's output).
    pub fn up_with_key(&self, control: &Control, key: &str) -> Result<Output> {
        self.up(control, key).run()
    }

    /// Returns this node's tailnet IPv4 address (`weft ip -4`).
    ///
    /// # Errors
    /// When the command fails or prints no address.
    pub fn ip4(&self) -> Result<Ipv4Addr> {
        let out = self.weft(["ip", "-4"]).run()?;
        out.stdout.trim().parse().map_err(|e| {
            LabError::Invalid(format!(
                "weft ip -4 on {}: {e}: {:?}",
                self.name, out.stdout
            ))
        })
    }

    /// Waits until `predicate(status --json)` holds.
    ///
    /// # Errors
    /// [`LabError::Timeout`] with the last status seen.
    pub fn wait_status(
        &self,
        timeout: Duration,
        what: &str,
        mut predicate: impl FnMut(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        wait_for(timeout, &format!("{} on {}", what, self.name), || {
            let v = self.status_json()?;
            if predicate(&v) {
                Ok(Some(v))
            } else {
                Err(crate::wait::observed(brief_status(&v)))
            }
        })
    }

    /// Waits until the backend state is `state` (`"running"`, `"needs_login"`, `"stopped"`, …).
    ///
    /// # Errors
    /// [`LabError::Timeout`].
    pub fn wait_state(&self, state: &str, timeout: Duration) -> Result<serde_json::Value> {
        self.wait_status(timeout, &format!("backend state {state}"), |v| {
            v["backend_state"].as_str() == Some(state)
        })
    }

    /// Waits until `status --json` lists exactly the peers `names` (by hostname), all with
    /// addresses.
    ///
    /// # Errors
    /// [`LabError::Timeout`].
    pub fn wait_peers(&self, names: &[&str], timeout: Duration) -> Result<serde_json::Value> {
        let mut want: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        self.wait_status(timeout, &format!("peers {want:?}"), |v| {
            peer_hostnames(v) == want
        })
    }

    /// Waits until `status --json` lists exactly the peers `names`, each online at control
    /// (so its disco key and endpoints are known: `weft ping` and direct paths work).
    ///
    /// # Errors
    /// [`LabError::Timeout`].
    pub fn wait_peers_online(
        &self,
        names: &[&str],
        timeout: Duration,
    ) -> Result<serde_json::Value> {
        let mut want: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        self.wait_status(timeout, &format!("peers {want:?} online"), |v| {
            peer_hostnames(v) == want
                && want.iter().all(|n| {
                    peer(v, n).is_some_and(|p| {
                        p["online"] == true
                            && p["endpoints"].as_array().is_some_and(|e| !e.is_empty())
                    })
                })
        })
    }

    /// Returns a report for failure messages: the status and the log tail.
    pub fn report(&self) -> String {
        let status = self
            .weft(["status"])
            .run_unchecked()
            .map(|o| format!("{}{}", o.stdout, o.stderr))
            .unwrap_or_else(|e| e.to_string());
        format!("=== node {} ===\n{status}\n{}", self.name, self.log())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Returns the hostnames of the peers in a `status --json` value, sorted.
pub fn peer_hostnames(status: &serde_json::Value) -> Vec<String> {
    let mut names: Vec<String> = status["peers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["hostname"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Returns the peer with hostname `name` in a `status --json` value.
pub fn peer<'a>(status: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    status["peers"]
        .as_array()?
        .iter()
        .find(|p| p["hostname"].as_str() == Some(name))
}

/// One line about a status, for timeout messages.
fn brief_status(v: &serde_json::Value) -> String {
    format!(
        "backend_state={} peers={:?} health={}",
        v["backend_state"],
        peer_hostnames(v),
        v["health"]
    )
}
