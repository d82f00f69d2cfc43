//! weft-control serving TLS itself (`--tls-cert/--tls-key`) with a private
//! CA made here: the control client fetches the key, registers and gets its
//! map over https with the CA given (`--login-server-ca`); without it the
//! handshake fails saying what to pass; the relay at /derp on the same
//! listener works over TLS; a wrong pinned key is still refused on top.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_client::{ClientError, ControlUrl};
use weft_control::config::TlsFiles;
use weft_relay::{ClientConfig, Event, RelayClient, RelayNode};
use weft_types::MachinePrivate;

use crate::common::{TestNode, TestServer};

/// A test CA and a certificate for 127.0.0.1 it signed, as PEM files in
/// `dir`; returns (CA file, the server's files).
fn make_certs(dir: &Path) -> (PathBuf, TlsFiles) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft control test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();
    let files = TlsFiles {
        cert: dir.join("control.crt"),
        key: dir.join("control.key"),
    };
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(&files.cert, leaf_cert.pem()).unwrap();
    std::fs::write(&files.key, leaf_key.serialize_pem()).unwrap();
    (dir.join("ca.pem"), files)
}

async fn tls_server() -> (TestServer, PathBuf, tempfile::TempDir) {
    let certs = tempfile::tempdir().unwrap();
    let (ca, files) = make_certs(certs.path());
    let t = TestServer::start_with(|c| c.tls = Some(files)).await;
    (t, ca, certs)
}

#[tokio::test]
async fn a_node_joins_over_https_with_the_private_ca_and_is_told_what_to_pass_without_it() {
    let (t, ca, certs) = tls_server().await;
    assert!(
        t.server.url().starts_with("https://127.0.0.1:"),
        "{}",
        t.server.url()
    );
    let url: ControlUrl = t.server.url().parse().unwrap();

    // Without the CA: the handshake fails, naming the flag to use; not retried as if transient.
    let err = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("--login-server-ca FILE"), "{err}");
    assert!(!err.is_transient());
    // Plain HTTP to the TLS listener gets nothing usable.
    let plain: ControlUrl = t
        .server
        .url()
        .replace("https://", "http://")
        .parse()
        .unwrap();
    assert!(
        weft_client::fetch_key(&plain, Duration::from_secs(5))
            .await
            .is_err()
    );

    // With it: the key, then a registration and a map over TLS.
    let url = url.with_ca_file(Some(ca));
    let key = weft_client::fetch_key(&url, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(key.public_key, t.server.public_key());
    t.user("alice").await;
    let authkey = t.reusable_key("alice").await;
    let mut a = TestNode::for_server(url.clone(), t.server.public_key(), "a");
    a.join(&authkey).await;
    let mut b = TestNode::for_server(url.clone(), t.server.public_key(), "b");
    b.join(&authkey).await;
    a.wait_map(|m| TestNode::peer(m, "b").is_some()).await;

    // The pinned key is still checked on top of TLS: a wrong one never gets a channel.
    let wrong = weft_client::Target {
        url,
        machine_key: MachinePrivate::generate(),
        server_key: MachinePrivate::generate().public(),
    };
    let err = weft_client::Channel::connect(&wrong, &weft_client::ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(!matches!(err, ClientError::Tls { .. }), "{err}");

    // The relay on the same listener, over TLS with the same CA.
    let relay = RelayNode::from_url(t.server.url()).unwrap();
    let mut config = ClientConfig::new(a.node_key.clone(), relay);
    config.ca_file = Some(certs.path().join("ca.pem"));
    let (_client, mut events) = RelayClient::start(config).unwrap();
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Some(Event::Connected { .. }) => return true,
                Some(Event::Disconnected { error, .. }) => panic!("relay over TLS: {error}"),
                Some(_) => {}
                None => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(connected);
    t.server.shutdown().await;
}
