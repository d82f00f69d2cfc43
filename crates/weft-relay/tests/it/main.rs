//! weft-relay's integration tests: the server and client drivers over real
//! sockets on loopback (`server`, `admission`, `slow_client`, `stun`), and
//! the interop suite against Tailscale's own programs in network namespaces
//! (`interop`, gated by root and `WEFT_E2E=1`).
#![allow(clippy::unwrap_used)]

mod admission;
mod binary;
mod interop;
mod server;
mod slow_client;
mod stun;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weft_relay::listen::{self, ListenLimits};
use weft_relay::proto::frame::Frame;
use weft_relay::proto::login::{self, ClientInfo};
use weft_relay::{ClientConfig, Event, RelayClient, RelayConfig, RelayNode, RelayServer};
use weft_types::{NodePrivate, NodePublic};

/// Generous bound for anything that should take milliseconds.
pub const WAIT: Duration = Duration::from_secs(10);

/// A relay server on a loopback port, stopped on drop.
pub struct TestRelay {
    pub server: RelayServer,
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts `config` on 127.0.0.1 (TLS if `tls`).
pub async fn start_relay(config: RelayConfig, tls: Option<Arc<rustls::ServerConfig>>) -> TestRelay {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = RelayServer::new(config).unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(listen::serve(
        listener,
        server.router(),
        tls,
        ListenLimits::default(),
        stop.clone(),
    ));
    TestRelay { server, addr, stop }
}

/// A client of `relay` over plain HTTP.
pub fn client_config(relay: &TestRelay, key: &NodePrivate) -> ClientConfig {
    ClientConfig::new(
        key.clone(),
        RelayNode {
            host_name: "127.0.0.1".into(),
            port: relay.addr.port(),
            tls: false,
            addrs: vec![relay.addr],
        },
    )
}

/// Starts a client and waits for its login.
pub async fn connected(config: ClientConfig) -> (RelayClient, mpsc::Receiver<Event>) {
    let (client, mut events) = RelayClient::start(config).unwrap();
    wait_event(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    (client, events)
}

/// Waits for the first event matching `want` (others are skipped).
pub async fn wait_event(
    events: &mut mpsc::Receiver<Event>,
    want: impl Fn(&Event) -> bool,
) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("event channel closed");
            if want(&ev) {
                return ev;
            }
        }
    })
    .await
    .expect("the awaited event did not come")
}

/// Waits for the next packet.
pub async fn next_packet(events: &mut mpsc::Receiver<Event>) -> (NodePublic, Bytes) {
    match wait_event(events, |e| matches!(e, Event::Packet { .. })).await {
        Event::Packet { src, data } => (src, data),
        _ => unreachable!(),
    }
}

/// A test CA and a certificate for `name` it signed, as PEM files in `dir`:
/// `ca.pem`, `<name>.crt`, `<name>.key`.
pub fn make_certs(dir: &Path, name: &str) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "weft relay test CA");
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let leaf_cert = leaf.signed_by(&leaf_key, &ca).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), leaf_key.serialize_pem()).unwrap();
}

/// A hand-driven DERP client on a raw socket: upgrade, login, then frames
/// as the test likes (for clients that misbehave on purpose).
pub struct RawClient {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl RawClient {
    /// Connects, upgrades and sends `ClientInfo`; returns before reading
    /// `ServerInfo` (the server may refuse instead).
    pub async fn login(addr: SocketAddr, key: &NodePrivate) -> RawClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(b"GET /derp HTTP/1.1\r\nHost: relay\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
            .await
            .unwrap();
        let mut raw = RawClient {
            stream,
            buf: Vec::new(),
        };
        // The response head.
        while !raw.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            raw.read_more().await;
        }
        let head_end = raw.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&raw.buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..head_end);
        let server = match raw.frame().await {
            (1, payload) => match Frame::parse(1, &payload).unwrap() {
                Frame::ServerKey { key } => key,
                _ => unreachable!(),
            },
            (t, _) => panic!("first frame of type {t}"),
        };
        let info = login::seal_client_info(
            key,
            &server,
            weft_types::entropy::bytes(),
            &ClientInfo::weft(),
        )
        .unwrap();
        raw.stream.write_all(&info).await.unwrap();
        raw
    }

    async fn read_more(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// Reads one frame: (type, payload).
    pub async fn frame(&mut self) -> (u8, Vec<u8>) {
        loop {
            if let Some(h) = weft_relay::proto::frame::peek_header(&self.buf, 1 << 20).unwrap() {
                let payload = self.buf[5..h.total_len()].to_vec();
                self.buf.drain(..h.total_len());
                return (h.frame_type, payload);
            }
            self.read_more().await;
        }
    }

    /// Reads until the connection closes; returns the frame types seen.
    pub async fn frames_until_closed(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut frames = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok(Some(h)) = weft_relay::proto::frame::peek_header(&self.buf, 1 << 20) {
                frames.push((h.frame_type, self.buf[5..h.total_len()].to_vec()));
                self.buf.drain(..h.total_len());
            }
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("the server did not close the connection")
                .unwrap_or(0);
            if n == 0 {
                return frames;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Returns a fresh random node key.
pub fn node_key() -> NodePrivate {
    NodePrivate::generate()
}
