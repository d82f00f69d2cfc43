//! Server configuration: limits, timeouts and the few host paths the server uses.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::recording::RecordingSink;
use std::time::Duration;

/// Configuration of an [`SshServer`](crate::SshServer). [`SshConfig::default`]
/// holds the production defaults; every field may be changed before `new`.
#[derive(Debug, Clone)]
pub struct SshConfig {
    // --- identity ---
    /// The software version after `SSH-2.0-` in the identification string.
    pub server_id: String,
    /// This node's own tailnet addresses: `ssh -R` may bind them (besides
    /// loopback), never any other address.
    pub tailnet_addrs: Vec<IpAddr>,

    // --- admission (per TCP source address) ---
    /// Connections a single source may hold open at once.
    pub max_conns_per_source: u32,
    /// Connections the server holds open at once, over all sources.
    pub max_conns_total: u32,
    /// Burst of new connections a source may open before being rate limited.
    pub conn_burst: u32,
    /// Sustained new connections per second per source after the burst.
    pub conn_rate_per_sec: f64,

    // --- protocol limits ---
    /// Longest login name accepted (bytes). Linux allows 32 for useradd and
    /// 256 for `LOGIN_NAME_MAX`; longer names are refused outright.
    pub max_username_len: usize,
    /// Channels (sessions and forwards) a connection may have open at once.
    pub max_channels_per_conn: usize,
    /// Remote forwards (`ssh -R`) a connection may hold.
    pub max_remote_forwards_per_conn: usize,
    /// Bytes of client input buffered per channel while the consumer (a
    /// process's stdin, a forwarded socket) is slower than the client. Past
    /// this the connection is back-pressured at the TCP level.
    pub channel_input_buffer: usize,

    // --- timeouts ---
    /// From TCP accept until the SSH identification line has been exchanged.
    pub handshake_timeout: Duration,
    /// From TCP accept until authentication succeeds (not counting the time
    /// a `check` rule holds the login).
    pub auth_timeout: Duration,
    /// How long a `check` rule may hold a login waiting for re-authentication.
    pub check_timeout: Duration,
    /// A connection with no traffic at all for this long is dropped.
    pub inactivity_timeout: Duration,
    /// Keepalive probe interval once authenticated (3 missed probes close).
    pub keepalive_interval: Duration,
    /// Timeout for connecting to the target of `ssh -L`/`-W`.
    pub forward_connect_timeout: Duration,

    // --- host paths ---
    /// The program run as the user for the `sftp` subsystem: weftd sets its
    /// own built-in server (`weftd sftp-server`, see [`crate::sftp`]). When
    /// `None`, the first existing path of `sftp_server_paths` is run.
    pub sftp_command: Option<SftpCommand>,
    /// Candidates for a system SFTP server binary (OpenSSH's `sftp-server`),
    /// used only without `sftp_command`; first existing one wins.
    pub sftp_server_paths: Vec<PathBuf>,
    /// Parent directory for per-connection agent socket directories.
    pub agent_socket_parent: PathBuf,

    // --- X11 and unix-socket forwarding ---
    /// Whether `ssh -X`/`-Y` is served at start ([`crate::SshServer::set_x11_forwarding`]
    /// changes it later). Off by default, as OpenSSH's `X11Forwarding`.
    pub x11_forwarding: bool,
    /// The `xauth` program run as the user to add the session's cookie.
    pub xauth_program: PathBuf,
    /// `ssh -R /path:…` removes an existing *socket* at the path before
    /// binding (OpenSSH's `StreamLocalBindUnlink`); off: an existing path is
    /// refused.
    pub streamlocal_bind_unlink: bool,
    // --- recording ---
    /// Where sessions under a rule with a `recorder` are written
    /// (`<id>.cast`; created 0700). weftd: `<statedir>/recordings`.
    pub recordings_dir: PathBuf,
    /// Takes each finished recording (weftd uploads it to control); `None`:
    /// recordings stay in `recordings_dir` only.
    pub recording_sink: Option<Arc<dyn RecordingSink>>,
}

/// A program that speaks SFTP on its stdin and stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SftpCommand {
    /// The executable (it must be executable by every login user).
    pub program: PathBuf,
    /// Its arguments (`argv[1..]`).
    pub args: Vec<OsString>,
}

impl Default for SshConfig {
    fn default() -> Self {
        SshConfig {
            server_id: "Weft".to_owned(),
            tailnet_addrs: Vec::new(),
            max_conns_per_source: 32,
            max_conns_total: 512,
            conn_burst: 20,
            conn_rate_per_sec: 2.0,
            max_username_len: 256,
            max_channels_per_conn: 64,
            max_remote_forwards_per_conn: 16,
            channel_input_buffer: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(60),
            check_timeout: Duration::from_secs(15 * 60),
            inactivity_timeout: Duration::from_secs(3600),
            keepalive_interval: Duration::from_secs(60),
            forward_connect_timeout: Duration::from_secs(10),
            sftp_command: None,
            sftp_server_paths: vec![
                PathBuf::from("/usr/lib/openssh/sftp-server"),
                PathBuf::from("/usr/libexec/openssh/sftp-server"),
                PathBuf::from("/usr/libexec/sftp-server"),
                PathBuf::from("/usr/lib/ssh/sftp-server"),
            ],
            agent_socket_parent: PathBuf::from("/tmp"),
            x11_forwarding: false,
            xauth_program: PathBuf::from("/usr/bin/xauth"),
            streamlocal_bind_unlink: false,
            recordings_dir: PathBuf::from("/var/lib/weft/recordings"),
            recording_sink: None,
        }
    }
}
