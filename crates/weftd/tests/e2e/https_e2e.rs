//! An `https://` login server: weft-control serving TLS itself with a certificate from a private
//! CA made here; `weft up --login-server https://… --login-server-ca ca.pem` joins two nodes
//! that then see each other online, and a node without the CA is refused in one line naming
//! the flag. Real binaries, real TUNs, the tailnet fixture.
#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::ensure;
use weft_lab::tailnet::{Binaries, KeyOptions, Tailnet};
use weft_lab::{e2e_lab, with_diagnostics};

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");
/// The TLS port (the fixture's plain server is stopped first: one server per state dir).
const TLS_PORT: u16 = 8443;

/// Writes a test CA and a certificate for `ip` it signed into `dir`; returns (CA file, cert
/// file, key file).
fn make_certs(dir: &Path, ip: Ipv4Addr) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft e2e test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec![ip.to_string()])?;
    let leaf_cert = leaf.signed_by(&leaf_key, &ca)?;
    let (ca_file, cert, key) = (
        dir.join("ca.pem"),
        dir.join("control.crt"),
        dir.join("control.key"),
    );
    std::fs::write(&ca_file, ca.pem())?;
    std::fs::write(&cert, leaf_cert.pem())?;
    std::fs::write(&key, leaf_key.serialize_pem())?;
    Ok((ca_file, cert, key))
}

#[test]
fn nodes_join_an_https_login_server_with_a_private_ca_and_without_it_are_told_the_flag()
-> anyhow::Result<()> {
    let lab = e2e_lab!("/dev/net/tun");
    let tailnet = Tailnet::with_binaries(&lab, Binaries::discover()?.with_weftd(WEFTD))?;
    let control = tailnet.control("ctl")?;
    control.ensure_user("alice")?;
    let key = control.create_key("alice", &KeyOptions::reusable())?;
    control.stop()?;

    let (ca, cert, tls_key) = make_certs(lab.dir(), control.addr())?;
    let url = format!("https://{}:{TLS_PORT}", control.addr());
    let server = control
        .netns()
        .command(&tailnet.binaries().control.display().to_string())
        .args([
            "serve",
            "--listen",
            &format!("{}:{TLS_PORT}", control.addr()),
        ])
        .args(["--server-url", &url, "--state-dir"])
        .arg(control.state_dir().display().to_string())
        .arg("--tls-cert")
        .arg(cert.display().to_string())
        .arg("--tls-key")
        .arg(tls_key.display().to_string())
        .spawn("ctl-tls")?;
    control
        .netns()
        .wait_tcp_listen(TLS_PORT, Duration::from_secs(20))?;

    let a = tailnet.node("a")?;
    let b = tailnet.node("b")?;
    let c = tailnet.node("c")?;
    // No UDP between a and b: their traffic must take control's relay, over TLS with the
    // profile's private CA.
    a.netns().drop_udp_with(b.underlay_addr().into())?;
    with_diagnostics(
        || {
            let ca = ca.display().to_string();
            for n in [&a, &b] {
                n.weft(["up", "--login-server", &url, "--login-server-ca", &ca])
                    .args([
                        "--authkey",
                        &key,
                        "--hostname",
                        n.name(),
                        "--timeout",
                        "30s",
                    ])
                    .run()?;
            }
            a.wait_peers_online(&["b"], Duration::from_secs(30))?;
            b.wait_peers_online(&["a"], Duration::from_secs(30))?;
            let relayed = a.weft(["ping", "-c", "5", "b"]).run_unchecked()?;
            ensure!(
                relayed.stdout.contains("pong from b") && relayed.stdout.contains("via relay("),
                "a -> b through the TLS relay with the private CA: {}{}",
                relayed.stdout,
                relayed.stderr
            );

            // Without the CA: refused, saying which flag to pass.
            let out = c
                .weft(["up", "--login-server", &url, "--authkey", &key])
                .args(["--hostname", "c", "--timeout", "10s"])
                .run_unchecked()?;
            ensure!(!out.status.success(), "{out:?}");
            ensure!(
                out.stderr.contains("--login-server-ca"),
                "the refusal does not name the flag: {}",
                out.stderr
            );
            // A CA file that does not exist is refused by the CLI before anything is sent.
            let out = c
                .weft([
                    "up",
                    "--login-server",
                    &url,
                    "--login-server-ca",
                    "/nonexistent.pem",
                ])
                .args(["--authkey", &key, "--hostname", "c", "--timeout", "10s"])
                .run_unchecked()?;
            ensure!(
                !out.status.success() && out.stderr.contains("cannot read the CA file"),
                "{out:?}"
            );
            Ok(())
        },
        || format!("{}\n{}\n{}", server.report(), a.log(), c.log()),
    )
}
