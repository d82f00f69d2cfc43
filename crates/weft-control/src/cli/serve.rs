//! `weft-control serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use weft_control::config::{
    DEFAULT_DOMAIN, DEFAULT_LISTEN, DEFAULT_MAX_PENDING_LOGINS,
    DEFAULT_MAX_PENDING_LOGINS_PER_SOURCE, DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
    DEFAULT_MAX_UNREGISTERED_PER_SOURCE, DEFAULT_METRICS_LISTEN,
};
use weft_control::config_file::{self, DEFAULT_CONFIG_FILE};
use weft_control::{Server, ServerConfig};
use weft_types::time::parse_duration;

use super::Conn;

/// Options of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys: the long flags below, e.g. `listen = "0.0.0.0:8080"`;
    /// flags override it). Default: /etc/weft-control/config.toml when it exists.
    #[arg(long, env = "WEFT_CONTROL_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for HTTP (control protocol, login pages, REST API, relay).
    #[arg(long, default_value = DEFAULT_LISTEN, env = "WEFT_CONTROL_LISTEN")]
    listen: SocketAddr,
    /// Address to serve Prometheus metrics on (GET /metrics), apart from --listen.
    #[arg(long, default_value = DEFAULT_METRICS_LISTEN, env = "WEFT_CONTROL_METRICS_LISTEN")]
    metrics_listen: SocketAddr,
    /// Do not serve metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Serve HTTPS on --listen with this certificate chain (PEM, leaf first; needs --tls-key).
    /// The relay at /derp is served over it too.
    #[arg(long, requires = "tls_key", env = "WEFT_CONTROL_TLS_CERT")]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, requires = "tls_cert", env = "WEFT_CONTROL_TLS_KEY")]
    tls_key: Option<std::path::PathBuf>,
    /// The URL nodes use and login links show (default: http://<listen>, https:// with --tls-cert).
    #[arg(long, env = "WEFT_CONTROL_SERVER_URL")]
    server_url: Option<String>,
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB (default: <state-dir>/weft.db).
    #[arg(long, env = "WEFT_CONTROL_DB_URL", hide_env_values = true)]
    db_url: Option<String>,
    /// The tailnet's DNS domain: node names are <name>.<domain>. Give each
    /// server its own when one machine may join several (e.g. office.weft.internal).
    #[arg(long, default_value = DEFAULT_DOMAIN, env = "WEFT_CONTROL_DOMAIN")]
    domain: String,
    /// Node-key lifetime (e.g. 180d; 0 = keys never expire).
    #[arg(long, default_value = "180d", value_parser = parse_duration)]
    node_key_expiry: Duration,
    /// How long an ephemeral node may be offline before it is deleted.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    ephemeral_grace: Duration,
    /// How long changes are collected into one delta.
    #[arg(long, default_value = "150ms", value_parser = parse_duration)]
    batch_delay: Duration,
    /// How long an interactive login URL stays valid.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    login_expiry: Duration,
    /// Interactive logins waiting for approval, at most, in all.
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING_LOGINS)]
    max_pending_logins: usize,
    /// Interactive logins waiting for approval, at most, per source address
    /// (an IPv4 address or an IPv6 /64).
    #[arg(long, default_value_t = DEFAULT_MAX_PENDING_LOGINS_PER_SOURCE)]
    max_pending_logins_per_source: usize,
    /// Registrations worked on at once, at most; beyond it a registration is
    /// refused with a retry delay (`server_busy`), which nodes honour.
    #[arg(long, default_value_t = DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT)]
    max_registrations_in_flight: usize,
    /// Time a new control connection has to register (or start a login).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    register_timeout: Duration,
    /// Connections held at most (default: the open-file limit less 128).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections not registered yet, at most, per source address (an IPv4
    /// address or an IPv6 /64). Registered nodes do not count, so a NAT with
    /// many nodes behind it is not limited.
    #[arg(long, default_value_t = DEFAULT_MAX_UNREGISTERED_PER_SOURCE)]
    max_unregistered_per_source: usize,
    /// New nodes wait for an administrator (weft-control nodes authorize ID).
    #[arg(long)]
    require_device_approval: bool,
    /// Do not serve the embedded relay (DERP) at /derp.
    #[arg(long)]
    no_relay: bool,
    /// Where STUN listens (UDP), repeatable (default: the --listen IP, port 3478).
    #[arg(long, env = "WEFT_CONTROL_STUN_LISTEN", value_delimiter = ',')]
    stun_listen: Vec<SocketAddr>,
    /// Do not serve STUN.
    #[arg(long, conflicts_with = "stun_listen")]
    no_stun: bool,
    /// Do not serve the admin socket.
    #[arg(long)]
    no_admin_socket: bool,
    /// Serve the .deb files of this directory at /packages/ (with their SHA256SUMS) for
    /// /install.sh: `curl -fsSL <server-url>/install.sh | sh` installs a node from them.
    #[arg(long, env = "WEFT_CONTROL_PACKAGES_DIR")]
    packages_dir: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(flatten)]
    oidc: OidcArgs,
}

/// The `--oidc-*` options of `serve` (also the `[oidc]` table of the
/// configuration file; docs/OIDC.md).
#[derive(Debug, Args, Default)]
pub struct OidcArgs {
    /// Log in through this OpenID Connect issuer (https://…; discovery at
    /// <issuer>/.well-known/openid-configuration). Unset: administrators approve logins.
    #[arg(long, env = "WEFT_CONTROL_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The client id registered at the identity provider (redirect URI: <server-url>/login/oidc/callback).
    #[arg(long, env = "WEFT_CONTROL_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// A file holding the client secret (mode 0600). Or set WEFT_CONTROL_OIDC_CLIENT_SECRET.
    #[arg(long)]
    oidc_client_secret_file: Option<PathBuf>,
    /// Scopes to ask for, comma-separated (default: openid,email,profile; add groups if your IdP needs it).
    #[arg(long, value_delimiter = ',')]
    oidc_scopes: Option<Vec<String>>,
    /// Only users with an email in these domains may log in (comma-separated).
    #[arg(long, value_delimiter = ',')]
    oidc_allowed_domains: Option<Vec<String>>,
    /// Only these login names may log in (comma-separated).
    #[arg(long, value_delimiter = ',')]
    oidc_allowed_users: Option<Vec<String>>,
    /// Only members of one of these IdP groups may log in (comma-separated, as the IdP names them).
    #[arg(long, value_delimiter = ',')]
    oidc_allowed_groups: Option<Vec<String>>,
    /// The claim the login name comes from: email or preferred_username (default: email).
    #[arg(long)]
    oidc_login_claim: Option<weft_control::oidc::config::LoginClaim>,
    /// The claim the display name comes from (default: name).
    #[arg(long)]
    oidc_display_name_claim: Option<String>,
    /// The claim holding the user's groups (default: groups).
    #[arg(long)]
    oidc_groups_claim: Option<String>,
    /// Put before IdP group names in the policy (default: "oidc:", so engineering is group:oidc:engineering).
    #[arg(long)]
    oidc_group_prefix: Option<String>,
    /// How far the IdP's clock may be off (default: 60s).
    #[arg(long, value_parser = parse_duration)]
    oidc_clock_skew: Option<Duration>,
    /// Extra CA certificates (PEM) to trust for the IdP, next to the public roots.
    #[arg(long)]
    oidc_ca_file: Option<PathBuf>,
}

/// Builds the OIDC settings from the flags over the `[oidc]` table, or
/// `None` when no issuer is set in either.
fn oidc_config(
    a: OidcArgs,
    file: Option<weft_control::oidc::config::OidcFile>,
) -> anyhow::Result<Option<weft_control::oidc::OidcConfig>> {
    use weft_control::oidc::config::{self as oc, OidcConfig};
    let f = file.unwrap_or_default();
    let Some(issuer) = a.oidc_issuer.or(f.issuer) else {
        return Ok(None);
    };
    let client_id = a.oidc_client_id.or(f.client_id).context(
        "OIDC needs a client id: set oidc client-id in the configuration file or --oidc-client-id",
    )?;
    let mut c = OidcConfig::new(issuer, client_id);
    c.client_secret = match a.oidc_client_secret_file.or(f.client_secret_file) {
        Some(path) => Some(oc::read_secret_file(&path).map_err(anyhow::Error::msg)?),
        None => std::env::var("WEFT_CONTROL_OIDC_CLIENT_SECRET")
            .ok()
            .filter(|s| !s.is_empty())
            .map(oc::ClientSecret::new),
    };
    if let Some(s) = a.oidc_scopes.or(f.scopes) {
        c.scopes = s;
    }
    c.allowed.domains = a
        .oidc_allowed_domains
        .or(f.allowed_domains)
        .unwrap_or_default();
    c.allowed.users = a.oidc_allowed_users.or(f.allowed_users).unwrap_or_default();
    c.allowed.groups = a
        .oidc_allowed_groups
        .or(f.allowed_groups)
        .unwrap_or_default();
    if let Some(v) = a.oidc_login_claim.or(f.login_claim) {
        c.claims.login = v;
    }
    if let Some(v) = a.oidc_display_name_claim.or(f.display_name_claim) {
        c.claims.display_name = v;
    }
    if let Some(v) = a.oidc_groups_claim.or(f.groups_claim) {
        c.claims.groups = v;
    }
    if let Some(v) = a.oidc_group_prefix.or(f.group_prefix) {
        c.claims.group_prefix = v;
    }
    if let Some(v) = a.oidc_clock_skew.or(f.clock_skew) {
        c.clock_skew = v;
    }
    c.ca_file = a.oidc_ca_file.or(f.ca_file);
    c.validate().map_err(anyhow::Error::msg)?;
    Ok(Some(c))
}

/// Applies the configuration file (`--config`, or the default file when it
/// exists) under the flags: a setting given on the command line or in its
/// environment variable wins over the file, the file over the default.
fn apply_config_file(
    a: &mut ServeArgs,
    state_dir: &mut PathBuf,
    matches: &ArgMatches,
) -> anyhow::Result<Option<weft_control::oidc::config::OidcFile>> {
    let path = match &a.config {
        Some(p) => p.clone(),
        None => {
            let p = PathBuf::from(DEFAULT_CONFIG_FILE);
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    let file = config_file::load(&path)?;
    let given = |id: &str| {
        matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        )
    };
    // `set!(field)`: a plain flag; `set!(opt field)`: an optional one.
    macro_rules! set {
        ($f:ident) => {
            if let Some(v) = file.$f
                && !given(stringify!($f))
            {
                a.$f = v;
            }
        };
        (opt $f:ident) => {
            if file.$f.is_some() && !given(stringify!($f)) {
                a.$f = file.$f;
            }
        };
    }
    if let Some(v) = file.state_dir
        && !given("state_dir")
    {
        *state_dir = v;
    }
    set!(listen);
    set!(metrics_listen);
    set!(no_metrics);
    set!(opt tls_cert);
    set!(opt tls_key);
    set!(opt server_url);
    set!(opt db_url);
    set!(domain);
    set!(node_key_expiry);
    set!(ephemeral_grace);
    set!(batch_delay);
    set!(login_expiry);
    set!(max_pending_logins);
    set!(max_pending_logins_per_source);
    set!(max_registrations_in_flight);
    set!(register_timeout);
    set!(opt max_connections);
    set!(max_unregistered_per_source);
    set!(require_device_approval);
    set!(no_relay);
    set!(stun_listen);
    set!(no_stun);
    set!(no_admin_socket);
    set!(opt packages_dir);
    if let Some(v) = file.log_format
        && !given("log_format")
    {
        a.log_format = v.as_str().to_owned();
    }
    if a.tls_cert.is_some() != a.tls_key.is_some() {
        anyhow::bail!(
            "{}: tls-cert and tls-key go together (set both, in the file or as flags)",
            path.display()
        );
    }
    if a.no_stun && !a.stun_listen.is_empty() {
        anyhow::bail!(
            "{}: no-stun and stun-listen exclude each other (one from the file, one from a flag?)",
            path.display()
        );
    }
    Ok(file.oidc)
}

/// Runs the server until SIGINT or SIGTERM, with its state in
/// `--state-dir` (a global flag). `client_flag` is an admin-client flag
/// given on the command line, which `serve` refuses.
///
/// # Errors
/// An admin-client flag, bad settings, or a server that cannot start.
pub async fn run(
    mut a: ServeArgs,
    conn: &Conn,
    client_flag: Option<&str>,
    matches: &ArgMatches,
) -> anyhow::Result<()> {
    if let Some(flag) = client_flag {
        anyhow::bail!(
            "{flag} is for the admin commands (users, keys, nodes, apikeys, policy), not serve; \
             serve takes --state-dir, and --server-url for the URL nodes use"
        );
    }
    let mut state_dir = conn.state_dir.clone();
    let oidc_file = apply_config_file(&mut a, &mut state_dir, matches)?;
    let oidc = oidc_config(std::mem::take(&mut a.oidc), oidc_file)?;
    let state_dir = &state_dir;
    init_logging(&a.log_format);
    raise_fd_limit();
    let mut config = ServerConfig::new(state_dir);
    config.listen = a.listen;
    config.metrics_listen = (!a.no_metrics).then_some(a.metrics_listen);
    config.tls = match (a.tls_cert, a.tls_key) {
        (Some(cert), Some(key)) => Some(weft_control::config::TlsFiles { cert, key }),
        _ => None,
    };
    config.server_url = a.server_url;
    config.db_url = a.db_url;
    let domain = a.domain.trim();
    let domain = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    config.domain = domain.parse().with_context(|| {
        format!(
            "--domain {:?} is not a DNS name (lowercase labels of a-z, 0-9 and '-', joined by '.')",
            a.domain
        )
    })?;
    config.node_key_expiry = (!a.node_key_expiry.is_zero()).then_some(a.node_key_expiry);
    config.ephemeral_grace = a.ephemeral_grace;
    config.batch_delay = a.batch_delay;
    config.auth_request_lifetime = a.login_expiry;
    config.require_device_approval = a.require_device_approval;
    config.max_pending_logins = a.max_pending_logins;
    config.max_pending_logins_per_source = a.max_pending_logins_per_source;
    config.max_registrations_in_flight = a.max_registrations_in_flight;
    config.register_timeout = a.register_timeout;
    config.max_connections = a.max_connections;
    config.max_unregistered_per_source = a.max_unregistered_per_source;
    config.admin_socket = !a.no_admin_socket;
    config.relay = !a.no_relay;
    config.stun = !a.no_stun;
    config.stun_listen = a.stun_listen;
    config.packages_dir = a.packages_dir;
    config.oidc = oidc;
    let server = Server::start(config)
        .await
        .with_context(|| format!("cannot start with --state-dir {}", state_dir.display()))?;
    // systemd `Type=notify`: the listeners are bound and the store is open.
    // Without NOTIFY_SOCKET this does nothing.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd that weft-control is ready");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Raises the open-file limit to its hard maximum: every node keeps a TCP
/// connection open, and the connection limit is derived from it.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "the open-file limit is at its maximum"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}
