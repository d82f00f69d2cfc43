//! Issue 13, MagicDNS in the OS (direct mode): a node in a namespace with its own
//! `/etc/netns/<ns>/resolv.conf` (which `ip netns exec` bind-mounts over /etc/resolv.conf, so
//! weftd writes it in place). `weft up` puts Weft's file there; `weft down`,
//! `weft set --accept-dns=false`, a restart after `kill -9` (control away, so no netmap comes)
//! and SIGTERM each put the original back byte for byte; a file weftd cannot parse is left
//! untouched and `weft status` says why in one line. The host's /etc/resolv.conf is never
//! touched: only the namespace's file is read and written.
//!
//! Real `weft-control`, `weftd` and `weft` binaries (`weft_lab::tailnet`); needs root and
//! `/dev/net/tun`, skips without them unless `WEFT_E2E=1`. Resolving names through the resolver
//! (`getent hosts`) is tested where the resolver is.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use weft_lab::tailnet::{Binaries, Control, KeyOptions, Node, Tailnet};
use weft_lab::{e2e_lab, wait_until, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
const SECS: fn(u64) -> Duration = Duration::from_secs;
const MARKER: &str = "# Written by weftd (Weft MagicDNS); the original is backed up in ";
const ORIGINAL: &str = "# dns_os_e2e: the namespace's own file\nnameserver 198.18.7.53\nsearch lab.example\noptions edns0 rotate\n";

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Waits until the namespace's resolv.conf is Weft's file for `domain`.
fn wait_ours(n: &Node, domain: &str) -> anyhow::Result<String> {
    let path = n.netns().resolv_conf();
    wait_until(SECS(10), "resolv.conf to be weftd's", || {
        let t = read(&path)?;
        Ok(t.starts_with(MARKER) && t.contains(&format!("\nsearch {domain}\n")))
    })?;
    let t = read(&path)?;
    ensure!(
        t.contains("\nnameserver 100.100.100.100\n") && t.contains("\noptions edns0\n"),
        "{t}"
    );
    // What programs in the namespace see is the same file.
    let seen = n.exec("cat", ["/etc/resolv.conf"])?.stdout;
    ensure!(seen == t, "in the namespace: {seen}\nthe file: {t}");
    Ok(t)
}

/// Waits until the namespace's resolv.conf is `original` again, byte for byte, and weftd's
/// backup is gone.
fn wait_restored(n: &Node, original: &str, what: &str) -> anyhow::Result<()> {
    let path = n.netns().resolv_conf();
    let backup = n.state_path().with_file_name("resolv.conf.weft-backup");
    wait_until(SECS(5), what, || {
        Ok(read(&path)? == original && !backup.exists())
    })?;
    Ok(())
}

fn dns_status(n: &Node) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &n.weft(["dns", "status", "--json"]).run()?.stdout,
    )?)
}

fn report(c: &Control, n: &Node) -> String {
    format!("=== control ===\n{}\n{}", c.log(), n.report())
}

#[test]
fn resolv_conf_is_ours_while_up_and_the_original_comes_back_every_way() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    let n = net.node("dns1")?;
    let rc = n.netns().resolv_conf();
    std::fs::write(&rc, ORIGINAL)?;
    with_diagnostics(
        || -> anyhow::Result<()> {
            // up: ours, with the tailnet domain as search domain.
            n.up_with_key(&control, &key)?;
            let st = n.wait_state("running", SECS(20))?;
            let domain = st["tailnet"]["domain"]
                .as_str()
                .context("no domain")?
                .to_owned();
            wait_ours(&n, &domain)?;
            let s = dns_status(&n)?;
            ensure!(s["mode"] == "direct" && s["managing"] == true, "{s}");
            ensure!(s["os"]["nameservers"][0] == "100.100.100.100", "{s}");
            ensure!(
                s["host_nameservers"] == serde_json::json!(["198.18.7.53"]),
                "{s}"
            );
            let text = n.weft(["dns", "status"]).run()?.stdout;
            ensure!(text.contains("Managed by Weft:    yes"), "{text}");

            // down: the original, byte for byte.
            n.weft(["down"]).run()?;
            wait_restored(&n, ORIGINAL, "the original after weft down")?;

            // --accept-dns=false restores at once; =true applies again.
            n.up_with_key(&control, &key)?;
            wait_ours(&n, &domain)?;
            n.weft(["set", "--accept-dns=false"]).run()?;
            wait_restored(&n, ORIGINAL, "the original after --accept-dns=false")?;
            ensure!(dns_status(&n)?["managing"] == false);
            n.weft(["set", "--accept-dns=true"]).run()?;
            wait_ours(&n, &domain)?;
            // The same through `up`.
            n.weft(["up", "--login-server", &control.url(), "--hostname", "dns1"])
                .arg("--accept-dns=false")
                .run()?;
            wait_restored(&n, ORIGINAL, "the original after up --accept-dns=false")?;
            n.weft(["set", "--accept-dns=true"]).run()?;
            wait_ours(&n, &domain)?;

            // kill -9 leaves ours and the backup; the next start (control away: no netmap)
            // puts the original back by itself.
            n.kill9()?;
            ensure!(read(&rc)?.starts_with(MARKER));
            control.stop()?;
            n.start()?;
            wait_restored(&n, ORIGINAL, "the original at the start after kill -9")?;
            // Control back: ours again; SIGTERM restores.
            control.start()?;
            wait_ours(&n, &domain)?;
            n.stop()?;
            wait_restored(&n, ORIGINAL, "the original after SIGTERM")?;
            Ok(())
        },
        || report(&control, &n),
    )
}

#[test]
fn a_resolv_conf_weftd_cannot_parse_is_untouched_and_status_says_so() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    let n = net.node("dns2")?;
    let rc = n.netns().resolv_conf();
    let bad = "# hand-edited\nnameserver resolver.corp.example\n";
    std::fs::write(&rc, bad)?;
    with_diagnostics(
        || -> anyhow::Result<()> {
            n.up_with_key(&control, &key)?;
            n.wait_state("running", SECS(20))?;
            let st = n.wait_status(SECS(10), "a DNS health line", |v| {
                v["health"].as_array().is_some_and(|h| {
                    h.iter()
                        .any(|l| l.as_str().is_some_and(|l| l.contains("MagicDNS")))
                })
            })?;
            let line = st["health"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|l| l.as_str())
                .find(|l| l.contains("MagicDNS"))
                .unwrap()
                .to_owned();
            ensure!(
                line.contains("cannot parse")
                    && line.contains("not touched")
                    && !line.contains('\n'),
                "{line}"
            );
            ensure!(read(&rc)? == bad, "the file changed");
            ensure!(
                !n.state_path()
                    .with_file_name("resolv.conf.weft-backup")
                    .exists()
            );
            let text = n.weft(["status"]).run_unchecked()?;
            ensure!(
                text.stdout.contains(&line) || text.stderr.contains(&line),
                "{text:?}"
            );
            let s = dns_status(&n)?;
            ensure!(s["managing"] == false && s["health"].is_string(), "{s}");
            Ok(())
        },
        || report(&control, &n),
    )
}

/// systemd-resolved, unpacked (not installed: its postinst replaces the host's resolv.conf) by
/// `.ci/run` from the Debian package matching the installed systemd.
const RESOLVED: &str = "/opt/weft-test/systemd-resolved/lib/systemd/systemd-resolved";

/// Starts a private system bus and systemd-resolved in `ns`, in a private mount namespace (a
/// tmpfs on /run, so resolved's files never reach the host's /run; a `systemd-resolve` user
/// through a bind-mounted passwd copy if the host has none). Returns the bus address.
fn start_resolved(
    lab: &weft_lab::Lab,
    ns: &weft_lab::Netns,
) -> anyhow::Result<(String, weft_lab::Process)> {
    let dir = lab.dir();
    let bus = dir.join("resolved-bus");
    std::fs::write(
        dir.join("bus.conf"),
        format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/><allow own="*"/><allow send_destination="*"/><allow receive_sender="*"/>
  </policy>
</busconfig>
"#,
            bus.display()
        ),
    )?;
    let mut passwd = read(Path::new("/etc/passwd"))?;
    let mut group = read(Path::new("/etc/group"))?;
    if !passwd.lines().any(|l| l.starts_with("systemd-resolve:")) {
        passwd.push_str("systemd-resolve:x:64991:64991:resolved:/:/usr/sbin/nologin\n");
        group.push_str("systemd-resolve:x:64991:\n");
    }
    std::fs::write(dir.join("passwd"), passwd)?;
    std::fs::write(dir.join("group"), group)?;
    let d = dir.display();
    let script = format!(
        "set -e\nmount -t tmpfs tmpfs /run\nmkdir -p /run/systemd\nmount --bind {d}/passwd /etc/passwd\n\
         mount --bind {d}/group /etc/group\ndbus-daemon --config-file={d}/bus.conf --nofork &\n\
         export DBUS_SYSTEM_BUS_ADDRESS=unix:path={bus}\n\
         while [ ! -S {bus} ]; do sleep 0.05; done\nexec {RESOLVED}\n",
        bus = bus.display()
    );
    let p = ns.spawn(
        "resolved",
        "unshare",
        ["-m", "--propagation", "private", "sh", "-c", &script],
    )?;
    let address = format!("unix:path={}", bus.display());
    wait_until(SECS(10), "systemd-resolved on the private bus", || {
        Ok(ns
            .command("busctl")
            .args([
                &format!("--address={address}"),
                "call",
                "org.freedesktop.resolve1",
            ])
            .args([
                "/org/freedesktop/resolve1",
                "org.freedesktop.DBus.Peer",
                "Ping",
            ])
            .run_unchecked()?
            .status
            .success())
    })?;
    Ok((address, p))
}

/// Returns resolved's Manager property `prop` (`DNS`, `Domains`) as busctl prints it.
fn resolved_property(ns: &weft_lab::Netns, address: &str, prop: &str) -> anyhow::Result<String> {
    Ok(ns
        .command("busctl")
        .args([
            &format!("--address={address}"),
            "get-property",
            "org.freedesktop.resolve1",
        ])
        .args([
            "/org/freedesktop/resolve1",
            "org.freedesktop.resolve1.Manager",
            prop,
        ])
        .run()?
        .stdout
        .trim()
        .to_owned())
}

#[test]
fn with_systemd_resolved_the_weft_link_gets_our_dns_and_is_reverted() -> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun", RESOLVED, "dbus-daemon", "busctl", "unshare");
    let net = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = net.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    // weftd's resolv.conf: a symlink into resolved's files, as on a resolved host.
    let link = lab.dir().join("resolv.conf");
    std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", &link)?;
    let bus = format!("unix:path={}", lab.dir().join("resolved-bus").display());
    let n = net.node_with(
        "dnsr",
        weft_lab::tailnet::NodeOptions {
            weftd_args: vec!["--resolv-conf".into(), link.display().to_string()],
            env: vec![("DBUS_SYSTEM_BUS_ADDRESS".into(), bus)],
            ..Default::default()
        },
    )?;
    let (address, _resolved) = start_resolved(&lab, n.netns())?;
    let ns = n.netns();
    let ifindex = ns
        .exec("cat", ["/sys/class/net/weft0/ifindex"])?
        .stdout
        .trim()
        .to_owned();
    // `a(iiay) 1 <ifindex> 2 4 100 100 100 100`: our resolver on our link.
    let ours_dns = format!("{ifindex} 2 4 100 100 100 100");
    let has_ours = |want: bool| -> anyhow::Result<()> {
        wait_until(SECS(10), &format!("resolved DNS on weft0 = {want}"), || {
            Ok(resolved_property(ns, &address, "DNS")?.contains(&ours_dns) == want)
        })?;
        Ok(())
    };
    with_diagnostics(
        || -> anyhow::Result<()> {
            n.up_with_key(&control, &key)?;
            let st = n.wait_state("running", SECS(20))?;
            let domain = st["tailnet"]["domain"]
                .as_str()
                .context("no domain")?
                .to_owned();
            has_ours(true)?;
            let domains = resolved_property(ns, &address, "Domains")?;
            ensure!(
                domains.contains(&format!("{ifindex} \"{domain}\" false")),
                "{domains}"
            );
            let s = dns_status(&n)?;
            ensure!(s["mode"] == "resolved" && s["managing"] == true, "{s}");
            ensure!(
                !domains.contains(&format!("{ifindex} \"corp.test\"")),
                "{domains}"
            );

            // A split route becomes a routing domain (`~corp.test`) on our link; global
            // nameservers add the root routing domain (`~.`): resolved then sends every name
            // to 100.100.100.100, which forwards to them.
            control
                .admin(["dns", "set", "--route", "corp.test=198.18.0.54"])
                .run()?;
            wait_until(SECS(10), "~corp.test on weft0", || {
                Ok(resolved_property(ns, &address, "Domains")?
                    .contains(&format!("{ifindex} \"corp.test\" true")))
            })?;
            let domains = resolved_property(ns, &address, "Domains")?;
            ensure!(
                !domains.contains(&format!("{ifindex} \".\" true")),
                "~. without global nameservers: {domains}"
            );
            control
                .admin(["dns", "set", "--nameserver", "198.18.0.53"])
                .run()?;
            wait_until(SECS(10), "~. on weft0", || {
                Ok(resolved_property(ns, &address, "Domains")?
                    .contains(&format!("{ifindex} \".\" true")))
            })?;
            control
                .admin(["dns", "set", "--clear-routes", "--clear-nameservers"])
                .run()?;
            wait_until(SECS(10), "the routing domains gone from weft0", || {
                let d = resolved_property(ns, &address, "Domains")?;
                Ok(!d.contains("\"corp.test\"") && !d.contains(&format!("{ifindex} \".\"")))
            })?;
            ensure!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());

            n.weft(["set", "--accept-dns=false"]).run()?;
            has_ours(false)?;
            n.weft(["set", "--accept-dns=true"]).run()?;
            has_ours(true)?;
            n.weft(["down"]).run()?;
            has_ours(false)?;
            n.up_with_key(&control, &key)?;
            has_ours(true)?;
            n.stop()?;
            has_ours(false)?;
            ensure!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
            Ok(())
        },
        || report(&control, &n),
    )
}
