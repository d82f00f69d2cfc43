//! Relay throughput, one way: client A sends packets of `--size` bytes to
//! client B through the DERP server at `--addr` for `--seconds`; B counts
//! what arrives. Both clients live in this process, so A can pace itself on
//! B's count without any traffic back through the relay: at most
//! `--window` packets in flight (DERP has no flow control of its own; a
//! sender that outruns the receiver only fills the relay's queue, which
//! drops). `--window 0` sends open loop, as fast as A's buffer drains.
//! Prints one JSON line. Run by bench/relay-bench.sh, which starts the
//! server and measures its CPU.
//!
//! ```text
//! relay-bench --addr 127.0.0.1:8443 [--tls-name derp.test --ca ca.pem] [--seconds 10] [--size 1280] [--window 256]
//! relay-bench --make-certs DIR --tls-name derp.test   # a test CA and a leaf for the server
//! ```
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::sync::Notify;
use tokio::time::Instant;
use weft_relay::{ClientConfig, Event, RelayClient, RelayNode, SendError};
use weft_types::NodePrivate;

struct Args {
    addr: Option<SocketAddr>,
    tls_name: Option<String>,
    ca: Option<PathBuf>,
    seconds: f64,
    size: usize,
    window: u64,
    make_certs: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        addr: None,
        tls_name: None,
        ca: None,
        seconds: 10.0,
        size: 1280,
        window: 256,
        make_certs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = Some(value()?.parse()?),
            "--tls-name" => a.tls_name = Some(value()?),
            "--ca" => a.ca = Some(value()?.into()),
            "--seconds" => a.seconds = value()?.parse()?,
            "--size" => a.size = value()?.parse()?,
            "--window" => a.window = value()?.parse()?,
            "--make-certs" => a.make_certs = Some(value()?.into()),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

fn make_certs(dir: &std::path::Path, name: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft relay bench CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![name.to_owned()])?.signed_by(&leaf_key, &ca)?;
    std::fs::write(dir.join("ca.pem"), ca.pem())?;
    std::fs::write(dir.join(format!("{name}.crt")), leaf.pem())?;
    std::fs::write(dir.join(format!("{name}.key")), leaf_key.serialize_pem())?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    if let Some(dir) = &args.make_certs {
        let name = args.tls_name.as_deref().unwrap_or("derp.test");
        return make_certs(dir, name);
    }
    let addr = args.addr.context("--addr is required")?;
    let relay = RelayNode {
        host_name: args
            .tls_name
            .clone()
            .unwrap_or_else(|| addr.ip().to_string()),
        port: addr.port(),
        tls: args.tls_name.is_some(),
        addrs: vec![addr],
    };
    let config = |k: &NodePrivate| {
        let mut c = ClientConfig::new(k.clone(), relay.clone());
        c.ca_file = args.ca.clone();
        c.send_buffer = 4 << 20;
        c
    };
    let (ka, kb) = (NodePrivate::generate(), NodePrivate::generate());
    let (a, mut ea) = RelayClient::start(config(&ka))?;
    let (_b, mut eb) = RelayClient::start(config(&kb))?;
    for ev in [&mut ea, &mut eb] {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), ev.recv()).await {
                Ok(Some(Event::Connected { .. })) => break,
                Ok(Some(Event::Disconnected { error, .. })) => bail!("cannot connect: {error}"),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => bail!("no login within 10 s"),
            }
        }
    }

    // Every packet B got, and those of the measured window.
    let arrived = Arc::new(AtomicU64::new(0));
    let received = Arc::new(AtomicU64::new(0));
    let counting = Arc::new(AtomicBool::new(false));
    let sender_waits = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(Notify::new());
    let rx = {
        let (arrived, received, counting) = (arrived.clone(), received.clone(), counting.clone());
        let (sender_waits, progress) = (sender_waits.clone(), progress.clone());
        tokio::spawn(async move {
            while let Some(ev) = eb.recv().await {
                if let Event::Packet { .. } = ev {
                    arrived.fetch_add(1, Ordering::Relaxed);
                    if counting.load(Ordering::Relaxed) {
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    if sender_waits.swap(false, Ordering::AcqRel) {
                        progress.notify_one();
                    }
                }
            }
        })
    };
    let payload = vec![0xabu8; args.size];
    let dst = kb.public();
    // One second of warm-up, then the measured window.
    let warmup = Duration::from_secs(1);
    let window = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut sent_in_window = 0u64;
    let mut sent_total = 0u64;
    let mut started = false;
    loop {
        if args.window > 0 {
            // Closed loop: wait while `window` packets are in flight.
            while sent_total.saturating_sub(arrived.load(Ordering::Acquire)) >= args.window {
                sender_waits.store(true, Ordering::Release);
                if sent_total.saturating_sub(arrived.load(Ordering::Acquire)) < args.window {
                    break;
                }
                // A lost packet never arrives: do not wait for it forever.
                if tokio::time::timeout(Duration::from_millis(50), progress.notified())
                    .await
                    .is_err()
                {
                    sent_total = arrived.load(Ordering::Acquire);
                }
            }
        }
        let now = Instant::now();
        if !started && now >= start + warmup {
            started = true;
            counting.store(true, Ordering::Relaxed);
        }
        if now >= start + warmup + window {
            break;
        }
        match a.send(&dst, &payload) {
            Ok(()) => {
                sent_total += 1;
                sent_in_window += u64::from(started);
            }
            Err(SendError::BufferFull) => a.writable().await,
            Err(e) => bail!("send: {e}"),
        }
    }
    counting.store(false, Ordering::Relaxed);
    let packets = received.load(Ordering::Relaxed);
    rx.abort();
    let secs = window.as_secs_f64();
    let pps = packets as f64 / secs;
    let gbps = pps * args.size as f64 * 8.0 / 1e9;
    println!(
        "{{\"size\":{},\"window\":{},\"seconds\":{secs},\"sent\":{sent_in_window},\"received\":{packets},\"pps\":{pps:.0},\"gbit_per_s\":{gbps:.3},\"delivered\":{:.4}}}",
        args.size,
        args.window,
        if sent_in_window == 0 {
            0.0
        } else {
            packets as f64 / sent_in_window as f64
        }
    );
    Ok(())
}
