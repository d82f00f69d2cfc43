//! `weft-relay`: the relay (DERP) and STUN server on its own, admitting the
//! nodes of a tailnet through control's admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use weft_relay::listen::{self, ListenLimits};
use weft_relay::stun::{self, StunStats};
use weft_relay::{
    Admission, AdmitAnyKeyInsecure, RelayConfig, RelayServer, RestAdmission, Restarting,
    load_or_create_key,
};

/// Weft's relay: Tailscale's DERP protocol over HTTP(S), for the nodes of a
/// tailnet, plus a STUN server.
#[derive(Parser, Debug)]
#[command(name = "weft-relay", version)]
struct Args {
    /// TCP address for HTTP(S) (default [::]:443 with --tls-cert, else [::]:80).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM, leaf first).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The relay's own key; created (0600) if missing.
    #[arg(long, default_value = "/var/lib/weft-relay/relay.key")]
    key_file: PathBuf,
    /// UDP addresses for STUN (repeatable; default 0.0.0.0:3478 and [::]:3478).
    #[arg(long = "stun-listen")]
    stun_listen: Vec<SocketAddr>,
    /// Do not run the STUN server.
    #[arg(long, conflicts_with = "stun_listen")]
    no_stun: bool,
    /// Control server URL: admission asks its POST /api/v1/relay/verify.
    #[arg(long, required_unless_present = "admit_any_key_insecure")]
    control: Option<String>,
    /// File holding an admin API key of the control server.
    #[arg(long, requires = "control")]
    api_key_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust for an https:// control URL.
    #[arg(long, requires = "control")]
    control_ca_file: Option<PathBuf>,
    /// Seconds between re-checks of every connected key with control.
    #[arg(long, default_value_t = 5.0)]
    reverify_every: f64,
    /// Admit ANY node key, tailnet or not. For probing with Tailscale's
    /// derpprobe only: the relay is then open to anyone.
    #[arg(long, conflicts_with = "control")]
    admit_any_key_insecure: bool,
    /// Bytes queued per client before its packets are dropped.
    #[arg(long, default_value_t = 256 << 10)]
    queue_bytes: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();

    let admission: Arc<dyn Admission> = if args.admit_any_key_insecure {
        tracing::warn!(
            "--admit-any-key-insecure: ANY node key may use this relay (tests and probes only)"
        );
        Arc::new(AdmitAnyKeyInsecure)
    } else {
        let url = args
            .control
            .as_deref()
            .context("--control URL or --admit-any-key-insecure is required")?;
        let path = args.api_key_file.as_ref().context(
            "--api-key-file is required with --control (an admin API key of the control server)",
        )?;
        let key = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?
                .trim()
                .to_owned(),
        );
        if key.is_empty() {
            bail!("the API key file {} is empty", path.display());
        }
        Arc::new(
            RestAdmission::new(url, key, args.control_ca_file.as_deref())
                .with_context(|| format!("control URL {url}"))?,
        )
    };
    let reverify = Duration::try_from_secs_f64(args.reverify_every)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--reverify-every must be a positive number of seconds")?;

    if let Some(dir) = args.key_file.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the key directory {}", dir.display()))?;
    }
    let key = load_or_create_key(&args.key_file)?;
    let mut config = RelayConfig::new(key, admission);
    config.queue_bytes = args.queue_bytes;
    if !args.admit_any_key_insecure {
        config.reverify_every = Some(reverify);
    }
    let relay = RelayServer::new(config)?;
    tracing::info!(key = %relay.public_key(), "relay key");

    let stop = CancellationToken::new();
    let mut tasks = Vec::new();

    if let Some(addr) = args.metrics_listen {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .context("installing the metrics recorder")?;
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        );
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the metrics address {addr}"))?;
        tracing::info!(%addr, "serving metrics at /metrics");
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }));
    }

    if !args.no_stun {
        let (addrs, explicit) = if args.stun_listen.is_empty() {
            (
                vec![
                    SocketAddr::from(([0, 0, 0, 0], stun::DEFAULT_PORT)),
                    SocketAddr::from(([0u16; 8], stun::DEFAULT_PORT)),
                ],
                false,
            )
        } else {
            (args.stun_listen.clone(), true)
        };
        let stats = Arc::new(StunStats::default());
        for addr in addrs {
            match stun::bind(addr) {
                Ok(sock) => {
                    tracing::info!(%addr, "STUN server listening");
                    tasks.push(tokio::spawn(stun::serve(sock, stats.clone(), stop.clone())));
                }
                Err(e) if !explicit && addr.is_ipv6() => {
                    tracing::warn!(%addr, error = %e, "no IPv6 STUN (IPv6 unavailable?)");
                }
                Err(e) => return Err(e).with_context(|| format!("binding STUN on UDP {addr}")),
            }
        }
    }

    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(weft_relay::tls::server_config(cert, key)?),
        _ => None,
    };
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0u16; 8], if tls.is_some() { 443 } else { 80 })));
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding TCP {listen}"))?;
    tracing::info!(addr = %listen, tls = tls.is_some(), "relay listening");
    let http = tokio::spawn(listen::serve(
        listener,
        relay.router(),
        tls,
        ListenLimits::default(),
        stop.clone(),
    ));

    wait_for_signal().await?;
    tracing::info!("shutting down; clients are told to reconnect");
    stop.cancel();
    relay
        .shutdown(
            Some(Restarting {
                reconnect_in: Duration::from_millis(500),
                try_for: Duration::from_secs(10),
            }),
            Duration::from_secs(3),
        )
        .await;
    let _ = http.await;
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
