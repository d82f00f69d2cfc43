//! A lean simulated node: the control protocol written out by hand on top
//! of `snow`, so thousands fit in one process and the load generator
//! measures the server, not itself.
//!
//! It speaks the real protocol (docs/PROTOCOL.md: upgrade, Noise IK,
//! records, fragments) with two shortcuts while the initial full maps
//! stream in ([`Mode::Lean`]): it decrypts only the first record of each
//! message (to learn what it is) and the last (short) one, and skips the
//! full-size records in between by advancing the receive nonce. Those
//! records are therefore not authenticated; a real node pays for that
//! decryption on its own CPU, not on the server's. Messages are classified
//! by their first bytes (`{"map":{"seq":…,"body":{"full"` / `"delta"`).
//! After the initial maps ([`Mode::Full`]) every record is decrypted and
//! every delta parsed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use snow::StatelessTransportState;
use snow::resolvers::{DefaultResolver, FallbackResolver, RingResolver};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc};
use weft_client::ControlUrl;
use weft_control_proto::UpgradeRequest;
use weft_types::control::{ClientMessage, KeepAlive, MapRequest, ServerMessage};
use weft_types::netmap::{Delta, MapBody, PeerDelta};
use weft_types::{CapabilityVersion, Endpoint, HostInfo, MachinePrivate, MachinePublic, NodeId};

const MAX_RECORD_BODY: usize = 65535;
const TAG: usize = 16;
const FIN: u8 = 0x01;

/// What a receiver reports to the controller.
#[derive(Debug)]
pub enum Ev {
    /// A full map arrived.
    Full { idx: usize, at: Instant },
    /// The round's endpoint change arrived.
    Endpoint { idx: usize, round: u64, at: Instant },
    /// A packet-filter delta arrived.
    Filter { idx: usize, at: Instant },
    /// The connection ended.
    Closed { idx: usize, reason: String },
}

/// What receivers look for in deltas (set by the controller).
#[derive(Debug, Default)]
pub struct Watch {
    /// The node whose endpoints change in the current round.
    pub changer: AtomicU64,
    /// The port of its new endpoint (identifies the round).
    pub port: AtomicU64,
    /// The current round number.
    pub round: AtomicU64,
    /// Decrypt and parse everything (after the initial maps).
    pub full_decrypt: AtomicBool,
    /// Map and error messages received, all nodes (for quiescence; keep-alives not counted).
    pub messages: AtomicU64,
    /// Bytes received, all nodes.
    pub bytes: AtomicU64,
}

/// The sending half of a lean connection.
pub struct Sender {
    half: OwnedWriteHalf,
    nonce: u64,
    ts: Arc<StatelessTransportState>,
    buf: Vec<u8>,
}

impl Sender {
    /// Encrypts and writes one message (one record; messages here are small).
    pub async fn send(&mut self, msg: &ClientMessage) -> anyhow::Result<()> {
        let mut plain = vec![FIN];
        serde_json::to_writer(&mut plain, msg)?;
        anyhow::ensure!(
            plain.len() + TAG <= MAX_RECORD_BODY,
            "message too large for one record"
        );
        self.buf.resize(3 + plain.len() + TAG, 0);
        let n = self
            .ts
            .write_message(self.nonce, &plain, &mut self.buf[3..])
            .map_err(|e| anyhow::anyhow!("encrypt: {e}"))?;
        self.nonce += 1;
        let len = u16::try_from(n)?;
        self.buf[0] = 0x02;
        self.buf[1..3].copy_from_slice(&len.to_be_bytes());
        self.half.write_all(&self.buf[..3 + n]).await?;
        Ok(())
    }
}

/// Reads whole frames from the socket, with bytes the HTTP layer already read.
struct Frames {
    half: OwnedReadHalf,
    pending: Vec<u8>,
    start: usize,
}

impl Frames {
    async fn fill(&mut self, need: usize) -> std::io::Result<()> {
        while self.pending.len() - self.start < need {
            if self.start > 0 {
                self.pending.drain(..self.start);
                self.start = 0;
            }
            let mut chunk = [0u8; 16 << 10];
            let n = self.half.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    }

    /// Returns the next frame's type and body length.
    async fn header(&mut self) -> std::io::Result<(u8, usize)> {
        self.fill(3).await?;
        let h = &self.pending[self.start..self.start + 3];
        let r = (h[0], usize::from(u16::from_be_bytes([h[1], h[2]])));
        self.start += 3;
        Ok(r)
    }

    /// Reads a body into `out`.
    async fn body(&mut self, len: usize, out: &mut Vec<u8>) -> std::io::Result<()> {
        self.fill(len).await?;
        out.clear();
        out.extend_from_slice(&self.pending[self.start..self.start + len]);
        self.start += len;
        Ok(())
    }

    /// Skips a body without keeping it.
    async fn skip(&mut self, mut len: usize) -> std::io::Result<()> {
        let buffered = (self.pending.len() - self.start).min(len);
        self.start += buffered;
        len -= buffered;
        let mut chunk = [0u8; 16 << 10];
        while len > 0 {
            let want = len.min(chunk.len());
            let n = self.half.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            len -= n;
        }
        Ok(())
    }
}

fn resolver() -> Box<dyn snow::resolvers::CryptoResolver + Send> {
    Box::new(FallbackResolver::new(
        Box::new(RingResolver),
        Box::new(DefaultResolver),
    ))
}

/// Connects, upgrades, completes the handshake and opens the map stream.
/// Returns the sender; the receiver runs as a task reporting to `events`.
pub async fn open_stream(
    idx: usize,
    url: &ControlUrl,
    server_key: MachinePublic,
    machine: &MachinePrivate,
    map: MapRequest,
    watch: Arc<Watch>,
    events: mpsc::UnboundedSender<Ev>,
) -> anyhow::Result<Sender> {
    let params: snow::params::NoiseParams = weft_control_proto::noise::NOISE_PARAMS.parse()?;
    let prologue = weft_control_proto::noise::prologue(CapabilityVersion::CURRENT);
    let mut hs = snow::Builder::with_resolver(params, resolver())
        .local_private_key(machine.as_bytes())?
        .remote_public_key(server_key.as_bytes())?
        .prologue(&prologue)?
        .build_initiator()?;
    let mut m1 = [0u8; 96];
    let n = hs.write_message(&[], &mut m1)?;
    let request = UpgradeRequest {
        handshake: base64::engine::general_purpose::STANDARD.encode(&m1[..n]),
        capability: CapabilityVersion::CURRENT,
    };
    let (tcp, leftover) =
        weft_client::http::upgrade(url, &request, Duration::from_secs(60)).await?;
    let (read, write) = tcp.into_split();
    let mut frames = Frames {
        half: read,
        pending: leftover.to_vec(),
        start: 0,
    };
    let (kind, len) = frames.header().await?;
    anyhow::ensure!(
        kind == 0x01 && len == 48,
        "expected the handshake response, got frame {kind:#x}/{len}"
    );
    let mut body = Vec::new();
    frames.body(len, &mut body).await?;
    let mut payload = [0u8; 48];
    hs.read_message(&body, &mut payload)?;
    let ts = Arc::new(hs.into_stateless_transport_mode()?);
    let mut sender = Sender {
        half: write,
        nonce: 0,
        ts: ts.clone(),
        buf: Vec::new(),
    };
    sender.send(&ClientMessage::Map(map)).await?;
    tokio::spawn(async move {
        let reason = match receive(idx, &mut frames, &ts, &watch, &events).await {
            Ok(()) => "closed".to_owned(),
            Err(e) => e.to_string(),
        };
        let _ = events.send(Ev::Closed { idx, reason });
    });
    Ok(sender)
}

/// Sends a keep-alive (the server drops a node silent for 150 s).
pub async fn keep_alive(s: &Mutex<Sender>) -> anyhow::Result<()> {
    s.lock()
        .await
        .send(&ClientMessage::KeepAlive(KeepAlive {}))
        .await
}

#[allow(clippy::disallowed_methods)] // the load generator's clock
fn now() -> Instant {
    Instant::now()
}

async fn receive(
    idx: usize,
    frames: &mut Frames,
    ts: &StatelessTransportState,
    watch: &Watch,
    events: &mpsc::UnboundedSender<Ev>,
) -> anyhow::Result<()> {
    let mut nonce = 0u64;
    let mut rec = Vec::new();
    let mut plain = vec![0u8; MAX_RECORD_BODY];
    // The message being received: the start of its first fragment, whether
    // it is read lean, and its bytes (when read in full, or one record long).
    let mut in_message = false;
    let mut lean = false;
    let mut head = Vec::new();
    let mut message = Vec::new();
    loop {
        let (kind, len) = frames.header().await?;
        anyhow::ensure!(kind == 0x02, "unexpected frame type {kind:#x}");
        watch.bytes.fetch_add(len as u64 + 3, Ordering::Relaxed);
        if in_message && lean && len == MAX_RECORD_BODY {
            frames.skip(len).await?;
            nonce += 1;
            continue;
        }
        frames.body(len, &mut rec).await?;
        let n = ts
            .read_message(nonce, &rec, &mut plain)
            .map_err(|_| anyhow::anyhow!("record {nonce} failed authentication"))?;
        nonce += 1;
        let (flags, fragment) = plain[..n]
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("empty record"))?;
        let fin = flags & FIN != 0;
        if in_message && lean && starts_message(fragment) {
            // The previous message ended with a full-size record we skipped
            // (its length was a multiple of the fragment size).
            finish(idx, &head, &[], watch, events)?;
            in_message = false;
        }
        if !in_message {
            in_message = true;
            lean = !watch.full_decrypt.load(Ordering::Relaxed);
            head.clear();
            head.extend_from_slice(&fragment[..fragment.len().min(64)]);
            message.clear();
            if !lean || fin {
                message.extend_from_slice(fragment);
            }
        } else if !lean {
            message.extend_from_slice(fragment);
        }
        if fin {
            in_message = false;
            finish(idx, &head, &message, watch, events)?;
        }
    }
}

fn starts_message(fragment: &[u8]) -> bool {
    fragment.starts_with(b"{\"map\":{\"seq\":")
        || fragment.starts_with(b"{\"keep_alive\":{}}")
        || fragment.starts_with(b"{\"error\":")
}

/// Reports what a complete message means. `message` is empty when it was
/// received lean (only its start is known).
fn finish(
    idx: usize,
    head: &[u8],
    message: &[u8],
    watch: &Watch,
    events: &mpsc::UnboundedSender<Ev>,
) -> anyhow::Result<()> {
    let at = now();
    let head = String::from_utf8_lossy(head);
    if head.starts_with("{\"keep_alive\"") {
        // Not counted: with thousands of streams the server's keep-alives never pause for a
        // second, and `quiesce` waits for a second without map traffic.
        return Ok(());
    }
    watch.messages.fetch_add(1, Ordering::Relaxed);
    if head.starts_with("{\"error\"") {
        anyhow::bail!("server error: {}", String::from_utf8_lossy(message));
    }
    if head.contains("\"body\":{\"full\"") {
        let _ = events.send(Ev::Full { idx, at });
        return Ok(());
    }
    if message.is_empty() {
        // A large delta received lean: not parsed.
        return Ok(());
    }
    let Ok(ServerMessage::Map(resp)) = serde_json::from_slice::<ServerMessage>(message) else {
        anyhow::bail!("a message that is not a map response: {}", head);
    };
    let MapBody::Delta(deltas) = resp.body else {
        return Ok(());
    };
    let changer = NodeId(i64::try_from(watch.changer.load(Ordering::Relaxed)).unwrap_or(-1));
    let port = u16::try_from(watch.port.load(Ordering::Relaxed)).unwrap_or(0);
    let round = watch.round.load(Ordering::Relaxed);
    let has_port = |eps: &[Endpoint]| eps.iter().any(|e| e.addr.port() == port);
    for d in &deltas {
        match d {
            Delta::Peer(PeerDelta::Endpoints { id, endpoints, .. })
                if *id == changer && has_port(endpoints) =>
            {
                let _ = events.send(Ev::Endpoint { idx, round, at });
            }
            Delta::Peer(PeerDelta::Changed(n) | PeerDelta::Added(n))
                if n.id == changer && has_port(&n.endpoints) =>
            {
                let _ = events.send(Ev::Endpoint { idx, round, at });
            }
            Delta::PacketFilter(_) => {
                let _ = events.send(Ev::Filter { idx, at });
            }
            _ => {}
        }
    }
    Ok(())
}

/// The host info every simulated node reports (one SSH key, as real nodes do).
pub fn host_info(idx: usize) -> HostInfo {
    HostInfo {
        hostname: format!("load-{idx}"),
        os: "linux".into(),
        os_version: "Debian 13".into(),
        weft_version: "0.1.0".into(),
        ssh_host_keys: vec![
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@load"
                .parse()
                .expect("a valid SSH key line"),
        ],
        ..HostInfo::default()
    }
}
