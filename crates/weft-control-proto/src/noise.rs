//! The Noise handshake: `Noise_IK_25519_ChaChaPoly_BLAKE2s` (Noise spec rev 34
//! §7.5 pattern IK), built on `snow` with a resolver of our own.
//!
//! IK fits a client that knows the server's static key in advance (pinned
//! from `GET /key`): the first message already authenticates the client's
//! static key (the machine key) to the server, and the second completes the
//! key exchange, so the channel costs one round trip, and that round trip
//! rides on the HTTP upgrade.
//!
//! ```text
//! IK:
//!   <- s                      (pre-message: the client knows the server key)
//!   ...
//!   -> e, es, s, ss           (message 1: 32 + 48 + 16 = 96 bytes, empty payload)
//!   <- e, ee, se              (message 2: 32 + 16 = 48 bytes, empty payload)
//! ```
//!
//! The prologue is `"Weft Control Protocol v<N>"` with `<N>` the client's
//! capability version in decimal, so the version header of the upgrade
//! request is authenticated by the handshake.
//!
//! The resolver takes ChaChaPoly from `ring` (the fast AEAD, §2 of
//! crates.md), BLAKE2s and X25519 from snow's RustCrypto defaults, and
//! randomness from a caller-provided seed ([`SeedRng`]): cores never read the
//! OS RNG, and a fixed seed reproduces the handshake bytes exactly, which is
//! how the test vectors in `docs/PROTOCOL.md` are made.

use blake2::Blake2sMac256;
use blake2::digest::{KeyInit, Mac};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver, RingResolver};
use snow::types::{Cipher, Dh, Hash, Random};
use weft_types::CapabilityVersion;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The prologue text before the version number.
pub const PROLOGUE_PREFIX: &str = "Weft Control Protocol v";
/// The length of handshake message 1 (client → server) with an empty payload.
pub const INITIATION_LEN: usize = 96;
/// The length of handshake message 2 (server → client) with an empty payload.
pub const RESPONSE_LEN: usize = 48;
/// The AEAD tag length (ChaCha20-Poly1305).
pub const TAG_LEN: usize = 16;
/// The largest Noise message (Noise spec §3).
pub const MAX_NOISE_MESSAGE: usize = 65535;
/// The label mixed into [`SeedRng`] output blocks.
pub const SEED_RNG_LABEL: &[u8] = b"weft-control ephemeral";

/// Returns the prologue for a client of capability version `v`.
pub fn prologue(v: CapabilityVersion) -> Vec<u8> {
    format!("{PROLOGUE_PREFIX}{}", v.0).into_bytes()
}

/// Returns a snow builder with our resolver seeded by `seed`.
///
/// # Errors
/// Only if [`NOISE_PARAMS`] failed to parse, which no build of snow we use does.
pub(crate) fn builder<'a>(seed: [u8; 32]) -> Result<snow::Builder<'a>, snow::Error> {
    let params: snow::params::NoiseParams = NOISE_PARAMS.parse()?;
    Ok(snow::Builder::with_resolver(
        params,
        Box::new(SeededResolver { seed }),
    ))
}

/// Derives the ephemeral private key a handshake seeded with `seed` uses
/// (the first 32 bytes of [`SeedRng`]). For test vectors and docs.
pub fn ephemeral_private_from_seed(seed: [u8; 32]) -> [u8; 32] {
    let mut rng = SeedRng::new(seed);
    let mut out = [0u8; 32];
    rng.fill(&mut out);
    out
}

/// snow's crypto resolver for the control channel.
struct SeededResolver {
    seed: [u8; 32],
}

impl CryptoResolver for SeededResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(SeedRng::new(self.seed)))
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

/// A deterministic generator: block `i` (32 bytes) is
/// `BLAKE2s-256-MAC(key = seed, "weft-control ephemeral" || i as u64 LE)`.
/// With a seed from the OS CSPRNG its output is as good as the OS's; with a
/// fixed seed it reproduces a handshake.
pub struct SeedRng {
    seed: [u8; 32],
    counter: u64,
}

impl SeedRng {
    /// Starts the stream at block 0.
    pub fn new(seed: [u8; 32]) -> Self {
        Self { seed, counter: 0 }
    }

    fn fill(&mut self, dest: &mut [u8]) {
        for chunk in dest.chunks_mut(32) {
            let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(&self.seed)
                .expect("BLAKE2s takes keys of up to 32 bytes; the seed is 32");
            mac.update(SEED_RNG_LABEL);
            mac.update(&self.counter.to_le_bytes());
            let block = mac.finalize().into_bytes();
            self.counter += 1;
            // `chunks_mut(32)` of a 32-byte block: the zip covers the chunk.
            for (d, s) in chunk.iter_mut().zip(block.iter()) {
                *d = *s;
            }
        }
    }
}

impl Random for SeedRng {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        self.fill(dest);
        Ok(())
    }
}

impl Drop for SeedRng {
    fn drop(&mut self) {
        self.seed = [0; 32];
    }
}
