//! Structure-aware: a peer that completed the Noise handshake and then
//! sends arbitrary record plaintexts (flags byte and fragment), raw bytes,
//! corrupted records, EOF and time. The fuzzer gets past the AEAD and
//! reaches record flags, fragment reassembly, the message size bound and
//! the JSON decoding of `ServerMessage` (client side) or `ClientMessage`
//! (server side).
#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use weft_control_proto::frame::{FRAME_HANDSHAKE, FRAME_RECORD};
use weft_control_proto::noise::{NOISE_PARAMS, SeedRng, prologue};
use weft_control_proto::{
    ChannelConfig, ClientConnection, Event, ServerConnection, UpgradeHeaders,
};
use weft_fuzz::base_instant;
use weft_types::{CapabilityVersion, MachinePrivate};

#[derive(Arbitrary, Debug)]
enum Step {
    /// One record: plaintext `flags ‖ fragment`.
    Record { flags: u8, fragment: Vec<u8> },
    /// A whole message in one record with FIN.
    Message(Vec<u8>),
    /// A record whose ciphertext has one byte flipped.
    Corrupt { at: u16, fragment: Vec<u8> },
    /// Bytes outside the encryption (frame headers, junk).
    Raw(Vec<u8>),
    /// The peer closes its side.
    Eof,
    /// Time passes.
    Advance(u16),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Test the server's end (the peer is a client) instead of the client's.
    server_side: bool,
    steps: Vec<Step>,
}

/// snow with a deterministic RNG (the peer's ephemeral key), as the
/// channel's own builder does: an input reproduces byte for byte.
struct Seeded([u8; 32]);

impl CryptoResolver for Seeded {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeedRng::new(self.0)))
    }
    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        RingResolver.resolve_cipher(choice)
    }
}

enum Under {
    Client(ClientConnection),
    Server(ServerConnection),
}

impl Under {
    fn input(&mut self, bytes: &[u8], now: std::time::Instant) -> bool {
        match self {
            Under::Client(c) => {
                let ok = c.handle_input(bytes, now).is_ok();
                while let Some(e) = c.poll_event() {
                    std::hint::black_box(matches!(e, Event::Message(_)));
                }
                ok
            }
            Under::Server(c) => {
                let ok = c.handle_input(bytes, now).is_ok();
                while c.poll_event().is_some() {}
                ok
            }
        }
    }
    fn eof(&mut self) -> bool {
        match self {
            Under::Client(c) => c.handle_eof().is_ok(),
            Under::Server(c) => c.handle_eof().is_ok(),
        }
    }
    fn timeout(&mut self, now: std::time::Instant) -> bool {
        match self {
            Under::Client(c) => c.handle_timeout(now).is_ok(),
            Under::Server(c) => c.handle_timeout(now).is_ok(),
        }
    }
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    f.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    f.extend_from_slice(body);
    f
}

/// Sets up the connection under test and the peer's transport state.
fn connect(server_side: bool, now: std::time::Instant) -> (Under, snow::TransportState) {
    let client_key = MachinePrivate::from_bytes([1; 32]);
    let server_key = MachinePrivate::from_bytes([2; 32]);
    let v = CapabilityVersion::CURRENT;
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse().expect("valid params");
    let mut buf = vec![0u8; 1024];
    let server_public = server_key.public();
    let prologue = prologue(v);
    if server_side {
        let mut hs = snow::Builder::with_resolver(params.clone(), Box::new(Seeded([5; 32])))
            .local_private_key(client_key.as_bytes())
            .and_then(|b| b.remote_public_key(server_public.as_bytes()))
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_initiator())
            .expect("an initiator");
        let n = hs.write_message(&[], &mut buf).expect("message 1");
        let b64 = base64::engine::general_purpose::STANDARD.encode(&buf[..n]);
        let capability = v.0.to_string();
        let headers = UpgradeHeaders {
            upgrade: Some(weft_control_proto::upgrade::UPGRADE_PROTOCOL),
            capability: Some(&capability),
            handshake: Some(&b64),
        };
        let accepted = ServerConnection::accept(
            &server_key,
            &headers,
            ChannelConfig::for_server(),
            [4; 32],
            now,
        )
        .expect("the server accepts a valid message 1");
        let mut conn = accepted.connection;
        let out = conn.poll_transmit().expect("message 2");
        hs.read_message(&out[3..], &mut buf)
            .expect("message 2 authenticates");
        (
            Under::Server(conn),
            hs.into_transport_mode().expect("transport"),
        )
    } else {
        let (mut conn, request) = ClientConnection::client(
            &client_key,
            &server_public,
            v,
            ChannelConfig::default(),
            [3; 32],
            now,
        )
        .expect("a client");
        let msg1 = base64::engine::general_purpose::STANDARD
            .decode(&request.handshake)
            .expect("base64");
        let mut hs = snow::Builder::with_resolver(params, Box::new(Seeded([6; 32])))
            .local_private_key(server_key.as_bytes())
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .expect("a responder");
        hs.read_message(&msg1, &mut buf)
            .expect("message 1 authenticates");
        let n = hs.write_message(&[], &mut buf).expect("message 2");
        conn.handle_input(&frame(FRAME_HANDSHAKE, &buf[..n]), now)
            .expect("the client accepts message 2");
        assert!(conn.is_established());
        while conn.poll_transmit().is_some() {}
        (
            Under::Client(conn),
            hs.into_transport_mode().expect("transport"),
        )
    }
}

fn record(t: &mut snow::TransportState, flags: u8, fragment: &[u8]) -> Option<Vec<u8>> {
    let mut plain = Vec::with_capacity(1 + fragment.len());
    plain.push(flags);
    plain.extend_from_slice(fragment);
    let mut ct = vec![0u8; plain.len() + 16];
    let n = t.write_message(&plain, &mut ct).ok()?;
    Some(ct[..n].to_vec())
}

fuzz_target!(|input: Input| {
    let mut now = base_instant();
    let (mut under, mut peer) = connect(input.server_side, now);
    let mut in_sync = true;
    if std::env::var_os("WEFT_FUZZ_DEBUG").is_some() {
        eprintln!("{input:#?}");
    }
    for step in input.steps.iter().take(64) {
        let alive = match step {
            Step::Record { flags, fragment } => match record(&mut peer, *flags, fragment) {
                Some(ct) => under.input(&frame(FRAME_RECORD, &ct), now),
                None => true,
            },
            Step::Message(m) => match record(&mut peer, 1, m) {
                Some(ct) => under.input(&frame(FRAME_RECORD, &ct), now),
                None => true,
            },
            Step::Corrupt { at, fragment } => match record(&mut peer, 1, fragment) {
                Some(mut ct) => {
                    let i = usize::from(*at) % ct.len();
                    ct[i] ^= 0x80;
                    let ok = under.input(&frame(FRAME_RECORD, &ct), now);
                    // (After raw bytes the frame boundaries are the fuzzer's.)
                    assert!(!ok || !in_sync, "a corrupted record never authenticates");
                    ok
                }
                None => true,
            },
            Step::Raw(bytes) => {
                in_sync &= bytes.is_empty();
                under.input(bytes, now)
            }
            Step::Eof => under.eof(),
            Step::Advance(s) => {
                now += Duration::from_secs(u64::from(*s));
                under.timeout(now)
            }
        };
        if !alive {
            break;
        }
    }
});
