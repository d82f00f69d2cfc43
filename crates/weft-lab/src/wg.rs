//! WireGuard devices in namespaces, configured the standard way: with `wg` over the
//! cross-platform UAPI socket `/var/run/wireguard/<iface>.sock`.
//!
//! Any userspace implementation that follows that contract plugs in as a [`WgDaemon`]: it stays
//! in the foreground, creates TUN `<iface>` in the namespace it starts in, and serves the UAPI.
//! `weftd wg <iface>` and `wireguard-go -f <iface>` both do.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::error::{LabError, Result};
use crate::lab::{Lab, wg_socket_path};
use crate::netns::Netns;
use crate::process::{Process, host_command};
use crate::wait::wait_until;

/// How long a daemon gets to create its TUN and socket.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(15);

/// A WireGuard key pair in `wg`'s base64 text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgKeyPair {
    /// Private key (base64).
    pub private: String,
    /// Public key (base64).
    pub public: String,
}

impl WgKeyPair {
    /// Returns a fresh pair from `wg genkey` and `wg pubkey`.
    ///
    /// # Errors
    /// When `wg` fails.
    pub fn generate() -> Result<Self> {
        let private = host_command("wg")
            .arg("genkey")
            .run()?
            .stdout
            .trim()
            .to_owned();
        let public = host_command("wg")
            .arg("pubkey")
            .stdin(format!("{private}\n"))
            .run()?
            .stdout
            .trim()
            .to_owned();
        Ok(WgKeyPair { private, public })
    }

    /// Returns the public key as lower-case hex, the form the UAPI uses.
    ///
    /// # Errors
    /// When the key is not valid base64 of 32 bytes.
    pub fn public_hex(&self) -> Result<String> {
        base64_key_to_hex(&self.public)
    }
}

/// How to start one userspace WireGuard implementation. `{if}` in the arguments is replaced by
/// the interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDaemon {
    /// Short label for logs and messages (`weftd`, `wireguard-go`).
    pub label: String,
    /// Program path or name.
    pub program: String,
    /// Arguments, with `{if}` placeholders.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl WgDaemon {
    /// Returns Debian's `wireguard-go -f {if}` (with `WG_PROCESS_FOREGROUND=1`).
    pub fn wireguard_go() -> Self {
        WgDaemon {
            label: "wireguard-go".into(),
            program: "wireguard-go".into(),
            args: vec!["-f".into(), "{if}".into()],
            env: vec![("WG_PROCESS_FOREGROUND".into(), "1".into())],
        }
    }

    /// Returns `<weftd> wg {if}`, where `weftd` is the path of the binary.
    pub fn weftd(weftd: &str) -> Self {
        WgDaemon {
            label: "weftd".into(),
            program: weftd.into(),
            args: vec!["wg".into(), "{if}".into()],
            env: Vec::new(),
        }
    }
}

/// One running WireGuard device: a daemon process in a namespace, its interface and socket.
/// Dropping it stops the daemon (see [`Process`]).
#[derive(Debug)]
pub struct WgDevice {
    /// The namespace it runs in.
    pub netns: Netns,
    /// Its interface name (machine-wide unique).
    pub ifname: String,
    /// What runs it.
    pub daemon: WgDaemon,
    /// The daemon process.
    pub process: Process,
}

impl WgDevice {
    /// Starts `daemon` in `netns` on a fresh machine-wide unique interface name and waits until
    /// the TUN exists, the UAPI socket exists and `wg show` answers.
    ///
    /// # Errors
    /// When the daemon cannot start, exits, or is not ready within [`DAEMON_START_TIMEOUT`]; the
    /// message includes its log.
    pub fn start(lab: &Lab, netns: &Netns, daemon: &WgDaemon) -> Result<WgDevice> {
        let ifname = lab.unique_ifname();
        let args: Vec<String> = daemon
            .args
            .iter()
            .map(|a| a.replace("{if}", &ifname))
            .collect();
        let mut cmd = netns.command(&daemon.program).args(&args);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd = cmd.env("RUST_LOG", "debug");
        }
        for (k, v) in &daemon.env {
            cmd = cmd.env(k, v);
        }
        let process = cmd.spawn(&format!("{}-{}-{ifname}", daemon.label, netns.short()))?;
        let dev = WgDevice {
            netns: netns.clone(),
            ifname,
            daemon: daemon.clone(),
            process,
        };
        let ready = wait_until(
            DAEMON_START_TIMEOUT,
            &format!(
                "{} to create {} and its UAPI socket",
                dev.daemon.label, dev.ifname
            ),
            || {
                dev.process.ensure_running()?;
                Ok(wg_socket_path(&dev.ifname).exists()
                    && dev.netns.has_link(&dev.ifname)
                    && dev.wg(["show", &dev.ifname]).is_ok())
            },
        );
        match ready {
            Ok(()) => Ok(dev),
            Err(e) => Err(LabError::Invalid(format!("{e}\n{}", dev.process.report()))),
        }
    }

    /// Runs `wg args...` in the device's namespace.
    ///
    /// # Errors
    /// See [`Cmd::run`](crate::Cmd::run).
    pub fn wg<I, S>(&self, args: I) -> Result<crate::Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.netns
            .command("wg")
            .args(args)
            .timeout(Duration::from_secs(20))
            .run()
    }

    /// Applies a `wg setconf` configuration (the `[Interface]`/`[Peer]` text).
    ///
    /// # Errors
    /// When `wg setconf` fails.
    pub fn setconf(&self, conf: &str) -> Result<()> {
        // Through a pipe: private keys never touch the disk.
        self.netns
            .command("wg")
            .args(["setconf", &self.ifname, "/dev/stdin"])
            .stdin(conf)
            .timeout(Duration::from_secs(20))
            .run()
            .map(drop)
    }

    /// Adds `cidr` to the interface, sets the MTU and brings it up.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn up(&self, cidr: &str, mtu: u32) -> Result<()> {
        self.netns.add_addr(&self.ifname, cidr)?;
        self.netns.link_up(&self.ifname, Some(mtu))
    }

    /// Returns `wg showconf <iface>`.
    ///
    /// # Errors
    /// When `wg` fails.
    pub fn showconf(&self) -> Result<String> {
        Ok(self.wg(["showconf", &self.ifname])?.stdout)
    }

    /// Returns the parsed `wg show <iface> dump`.
    ///
    /// # Errors
    /// When `wg` fails or prints something unparseable.
    pub fn dump(&self) -> Result<WgDump> {
        let out = self.wg(["show", &self.ifname, "dump"])?;
        parse_wg_dump(&out.stdout).map_err(|e| {
            LabError::Invalid(format!(
                "wg show {} dump: {e}:\n{}",
                self.ifname, out.stdout
            ))
        })
    }

    /// Sends one raw UAPI request (`"set=1\n...\n\n"` or `"get=1\n\n"`) to the device's socket and
    /// returns the raw response; see [`uapi_request`].
    ///
    /// # Errors
    /// See [`uapi_request`].
    pub fn uapi(&self, request: &str) -> Result<String> {
        uapi_request(&self.ifname, request, Duration::from_secs(10))
    }

    /// Returns a block for failure messages: `wg show` and the daemon's log.
    pub fn report(&self) -> String {
        let show = match self.wg(["show", &self.ifname]) {
            Ok(o) => o.stdout,
            Err(e) => format!("(wg show failed: {e})"),
        };
        format!(
            "=== wg show {} ({} in {})\n{show}\n{}",
            self.ifname,
            self.daemon.label,
            self.netns.short(),
            self.process.report()
        )
    }
}

/// `wg show <iface> dump`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgDump {
    /// Interface public key (base64).
    pub public_key: String,
    /// Interface listen port (0 = none).
    pub listen_port: u16,
    /// The peers, in `wg`'s order.
    pub peers: Vec<WgPeerDump>,
}

impl WgDump {
    /// Returns the peer with this public key.
    pub fn peer(&self, public_key: &str) -> Option<&WgPeerDump> {
        self.peers.iter().find(|p| p.public_key == public_key)
    }
}

/// One peer line of `wg show <iface> dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerDump {
    /// Peer public key (base64).
    pub public_key: String,
    /// Endpoint as printed (`None` for `(none)`).
    pub endpoint: Option<String>,
    /// Allowed IPs as printed (`(none)` becomes empty).
    pub allowed_ips: Vec<String>,
    /// Unix time of the latest handshake, 0 = never.
    pub latest_handshake: u64,
    /// Bytes received from this peer.
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
    /// Persistent keepalive in seconds, `None` for `off`.
    pub persistent_keepalive: Option<u16>,
}

/// Parses `wg show <iface> dump`: one tab-separated interface line (private key, public key,
/// listen port, fwmark), then one line per peer (public key, preshared key, endpoint, allowed
/// IPs, latest handshake, rx bytes, tx bytes, persistent keepalive).
///
/// # Errors
/// A description of the first line that does not fit.
pub fn parse_wg_dump(text: &str) -> Result<WgDump, String> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let iface: Vec<&str> = lines.next().ok_or("empty dump")?.split('\t').collect();
    let [_private, public, port, _fwmark] = iface[..] else {
        return Err(format!(
            "interface line has {} fields, expected 4",
            iface.len()
        ));
    };
    let listen_port = port
        .parse()
        .map_err(|_| format!("bad listen port {port:?}"))?;
    let mut peers = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let [public_key, _psk, endpoint, allowed, hs, rx, tx, ka] = f[..] else {
            return Err(format!(
                "peer line has {} fields, expected 8: {line:?}",
                f.len()
            ));
        };
        let num = |what: &str, v: &str| v.parse::<u64>().map_err(|_| format!("bad {what} {v:?}"));
        peers.push(WgPeerDump {
            public_key: public_key.to_owned(),
            endpoint: (endpoint != "(none)").then(|| endpoint.to_owned()),
            allowed_ips: if allowed == "(none)" {
                Vec::new()
            } else {
                allowed.split(',').map(str::to_owned).collect()
            },
            latest_handshake: num("latest handshake", hs)?,
            rx_bytes: num("rx bytes", rx)?,
            tx_bytes: num("tx bytes", tx)?,
            persistent_keepalive: if ka == "off" {
                None
            } else {
                Some(ka.parse().map_err(|_| format!("bad keepalive {ka:?}"))?)
            },
        });
    }
    Ok(WgDump {
        public_key: public.to_owned(),
        listen_port,
        peers,
    })
}

/// Sends one raw request to `/var/run/wireguard/<ifname>.sock` and returns the response up to
/// and including its terminating empty line (or EOF). Use it to hand a device input that `wg`
/// would refuse to send.
///
/// # Errors
/// When the socket cannot be reached or does not answer within `timeout`.
pub fn uapi_request(ifname: &str, request: &str, timeout: Duration) -> Result<String> {
    let path = wg_socket_path(ifname);
    let io = |what: &str, e| LabError::io(format!("UAPI {}: {what}", path.display()), e);
    let mut s = UnixStream::connect(&path).map_err(|e| io("connect", e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| io("set timeout", e))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| io("set timeout", e))?;
    s.write_all(request.as_bytes())
        .map_err(|e| io("write", e))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                resp.extend_from_slice(&buf[..n]);
                if resp.ends_with(b"\n\n") {
                    break;
                }
            }
            Err(e) => {
                return Err(io(
                    &format!("read (got so far: {:?})", String::from_utf8_lossy(&resp)),
                    e,
                ));
            }
        }
    }
    Ok(String::from_utf8_lossy(&resp).into_owned())
}

/// Returns the value of the `errno=N` line of a UAPI response, if there is one.
pub fn uapi_errno(response: &str) -> Option<i64> {
    response
        .lines()
        .find_map(|l| l.strip_prefix("errno="))
        .and_then(|v| v.trim().parse().ok())
}

/// Converts a base64 WireGuard key to the lower-case hex of the UAPI.
///
/// # Errors
/// When it is not base64 of exactly 32 bytes.
pub fn base64_key_to_hex(key: &str) -> Result<String> {
    let bytes = decode_base64(key.trim())
        .ok_or_else(|| LabError::Invalid(format!("not base64: {key:?}")))?;
    if bytes.len() != 32 {
        return Err(LabError::Invalid(format!(
            "key {key:?} is {} bytes, expected 32",
            bytes.len()
        )));
    }
    Ok(crate::traffic::hex(&bytes))
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s = s.trim_end_matches('=');
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(val(c)?);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "cHJpdg==\tcHViA=\t51820\toff\n\
        cGVlcjE=\t(none)\t198.18.0.2:51820\t100.64.0.2/32,fd7a:115c:a1e0::2/128\t1764230000\t67174400\t2400000\toff\n\
        cGVlcjI=\t(none)\t(none)\t(none)\t0\t0\t0\t25\n";

    #[test]
    fn a_dump_parses_into_interface_and_peers() {
        let d = parse_wg_dump(DUMP).unwrap();
        assert_eq!(d.public_key, "cHViA=");
        assert_eq!(d.listen_port, 51820);
        assert_eq!(d.peers.len(), 2);
        let p = d.peer("cGVlcjE=").unwrap();
        assert_eq!(p.endpoint.as_deref(), Some("198.18.0.2:51820"));
        assert_eq!(p.allowed_ips, ["100.64.0.2/32", "fd7a:115c:a1e0::2/128"]);
        assert_eq!(
            (p.latest_handshake, p.rx_bytes, p.tx_bytes),
            (1_764_230_000, 67_174_400, 2_400_000)
        );
        assert_eq!(p.persistent_keepalive, None);
        let q = d.peer("cGVlcjI=").unwrap();
        assert_eq!(
            (
                q.endpoint.as_ref(),
                q.allowed_ips.len(),
                q.persistent_keepalive
            ),
            (None, 0, Some(25))
        );
    }

    #[test]
    fn a_dump_with_missing_fields_is_rejected_with_the_line() {
        assert!(parse_wg_dump("").is_err());
        assert!(parse_wg_dump("a\tb\t1\n").unwrap_err().contains("4"));
        let err = parse_wg_dump("a\tb\t1\toff\npeer\t(none)\n").unwrap_err();
        assert!(err.contains("peer\\t(none)"), "{err}");
        assert!(parse_wg_dump("a\tb\t1\toff\np\t(none)\t(none)\t(none)\tx\t0\t0\toff\n").is_err());
    }

    #[test]
    fn uapi_errno_is_read_from_the_response() {
        assert_eq!(uapi_errno("errno=0\n\n"), Some(0));
        assert_eq!(uapi_errno("protocol_version=1\nerrno=-22\n\n"), Some(-22));
        assert_eq!(uapi_errno("private_key=00\n\n"), None);
    }

    #[test]
    fn base64_keys_convert_to_uapi_hex() {
        // 32 bytes 0x00..0x1f
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert_eq!(
            base64_key_to_hex(key).unwrap(),
            (0u8..32).map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert!(base64_key_to_hex("AAEC").is_err());
        assert!(base64_key_to_hex("!!!").is_err());
    }
}
