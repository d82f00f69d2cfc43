//! The DERP login, both sides, without I/O.
//!
//! 1. The server sends `ServerKey`: [`server_key_frame`].
//! 2. The client answers `ClientInfo`: its node key, a nonce and a NaCl box
//!    (X25519 + XSalsa20-Poly1305, tag first, as Go's `nacl/box`) of JSON
//!    `{"version":2,"CanAckPings":true,...}` from its node key to the
//!    server's key ([`seal_client_info`]). Only the holder of the node key's
//!    private half can make a box that opens under that key, so a box that
//!    opens ([`open_client_info`]) proves the key: a relay never needs to see
//!    anything else to know who is connecting.
//! 3. The server answers `ServerInfo`: a nonce and a box of
//!    `{"version":2}` back to the client's key ([`seal_server_info`],
//!    [`open_server_info`]).
//!
//! Nonces come from the caller (the driver's RNG), once per connection and
//! direction. A client key that is a low-order point (which would make the
//! shared secret guessable, so the "proof" proves nothing) is refused.

use crypto_box::SalsaBox;
use crypto_box::aead::generic_array::GenericArray;
use crypto_box::aead::{Aead, AeadCore};
use serde::{Deserialize, Serialize};
use weft_types::{NodePrivate, NodePublic};

use super::frame::Frame;
use super::{NONCE_LEN, PROTOCOL_VERSION};

/// The largest JSON a login box may hold once opened.
const MAX_INFO_JSON: usize = 64 << 10;

/// What a client says about itself at login (derp's `ClientInfo` JSON).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientInfo {
    /// The protocol version the client speaks (2 for current clients).
    pub version: u32,
    /// Whether the client answers the server's pings.
    pub can_ack_pings: bool,
    /// Whether the client says it is a prober (derpprobe).
    pub is_prober: bool,
    /// An opaque application name, for statistics.
    pub app_name: Option<String>,
    /// Whether the client presented a mesh key (we run no mesh; such a
    /// client is treated like any other).
    pub has_mesh_key: bool,
}

/// What a server says about itself at login (derp's `ServerInfo` JSON).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// The protocol version the server speaks.
    pub version: u32,
    /// The rate the server says it accepts, in bytes per second (0 = none
    /// announced).
    pub token_bucket_bytes_per_second: u64,
    /// The burst allowed above that rate.
    pub token_bucket_bytes_burst: u64,
}

/// Why a login step failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The first frame was not the one the login needs.
    #[error("expected a {expected} frame during login, got type {got:#04x}")]
    UnexpectedFrame {
        /// The frame that was expected.
        expected: &'static str,
        /// The type byte received.
        got: u8,
    },
    /// The box does not open: the sender does not hold the key it claims, or
    /// sealed to another key.
    #[error(
        "the login box does not open: the peer does not hold the key it claims, or sealed it to another key"
    )]
    Unauthenticated,
    /// The key is a low-order point.
    #[error("the peer's key is not a usable X25519 public key")]
    WeakKey,
    /// The box opened but does not hold the JSON object of the protocol.
    #[error("malformed login JSON: {0}")]
    BadJson(String),
}

/// Wire form of [`ClientInfo`]; field names as derp's Go struct marshals
/// them.
#[derive(Serialize, Deserialize, Default)]
struct ClientInfoJson {
    #[serde(rename = "meshKey", default, skip_serializing_if = "Option::is_none")]
    mesh_key: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    version: u32,
    #[serde(rename = "CanAckPings", default)]
    can_ack_pings: bool,
    #[serde(rename = "IsProber", default, skip_serializing_if = "is_false")]
    is_prober: bool,
    #[serde(rename = "AppName", default, skip_serializing_if = "Option::is_none")]
    app_name: Option<String>,
}

/// Wire form of [`ServerInfo`].
#[derive(Serialize, Deserialize, Default)]
struct ServerInfoJson {
    #[serde(default, skip_serializing_if = "is_zero")]
    version: u32,
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero64"
    )]
    token_bucket_bytes_per_second: u64,
    #[serde(
        rename = "TokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero64"
    )]
    token_bucket_bytes_burst: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if signature
fn is_zero(v: &u32) -> bool {
    *v == 0
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero64(v: &u64) -> bool {
    *v == 0
}
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(v: &bool) -> bool {
    !*v
}

impl ClientInfo {
    /// Returns the info a Weft client sends: protocol version 2, answers
    /// pings, app name `weft`.
    pub fn weft() -> Self {
        ClientInfo {
            version: PROTOCOL_VERSION,
            can_ack_pings: true,
            is_prober: false,
            app_name: Some("weft".to_owned()),
            has_mesh_key: false,
        }
    }
}

/// The box between one private and one public X25519 key.
struct LoginBox(SalsaBox);

impl LoginBox {
    fn new(ours: &NodePrivate, theirs: &NodePublic) -> Result<Self, LoginError> {
        let shared = ours
            .to_static_secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(theirs.to_bytes()));
        if !shared.was_contributory() {
            return Err(LoginError::WeakKey);
        }
        let secret = crypto_box::SecretKey::from(*ours.as_bytes());
        let public = crypto_box::PublicKey::from(theirs.to_bytes());
        Ok(LoginBox(SalsaBox::new(&public, &secret)))
    }

    /// Returns `nonce || box(plain)`.
    fn seal(&self, nonce: [u8; NONCE_LEN], plain: &[u8]) -> Vec<u8> {
        // Encryption into a Vec cannot fail for login-sized messages.
        let boxed = self
            .0
            .encrypt(GenericArray::from_slice(&nonce), plain)
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + boxed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&boxed);
        out
    }

    /// Opens `nonce || box`.
    fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, LoginError> {
        let (nonce, boxed) = sealed
            .split_at_checked(NONCE_LEN)
            .ok_or(LoginError::Unauthenticated)?;
        if boxed.len() > MAX_INFO_JSON + 16 {
            return Err(LoginError::BadJson("longer than 64 KiB".into()));
        }
        debug_assert_eq!(nonce.len(), <SalsaBox as AeadCore>::NonceSize::to_usize());
        self.0
            .decrypt(GenericArray::from_slice(nonce), boxed)
            .map_err(|_| LoginError::Unauthenticated)
    }
}

use crypto_box::aead::generic_array::typenum::Unsigned as _;

/// Returns the `ServerKey` frame of a server whose public key is `server`.
pub fn server_key_frame(server: &NodePublic) -> Vec<u8> {
    Frame::ServerKey { key: *server }.to_vec()
}

/// Returns the whole `ClientInfo` frame: `client`'s public key, `nonce` and
/// `info` sealed from `client` to `server`.
///
/// # Errors
/// [`LoginError::WeakKey`] if `server` is a low-order point.
pub fn seal_client_info(
    client: &NodePrivate,
    server: &NodePublic,
    nonce: [u8; NONCE_LEN],
    info: &ClientInfo,
) -> Result<Vec<u8>, LoginError> {
    let json = ClientInfoJson {
        // We never send a mesh key; the field exists for the other side.
        mesh_key: None,
        version: info.version,
        can_ack_pings: info.can_ack_pings,
        is_prober: info.is_prober,
        app_name: info.app_name.clone(),
    };
    let plain = serde_json::to_vec(&json).map_err(|e| LoginError::BadJson(e.to_string()))?;
    let sealed = LoginBox::new(client, server)?.seal(nonce, &plain);
    Ok(Frame::ClientInfo {
        key: client.public(),
        sealed: &sealed,
    }
    .to_vec())
}

/// Opens a `ClientInfo` frame's box with the server's private key: the
/// client's proof that it holds `client`.
///
/// # Errors
/// [`LoginError::WeakKey`], [`LoginError::Unauthenticated`] (sealed by
/// another key or to another server), [`LoginError::BadJson`].
pub fn open_client_info(
    server: &NodePrivate,
    client: &NodePublic,
    sealed: &[u8],
) -> Result<ClientInfo, LoginError> {
    let plain = LoginBox::new(server, client)?.open(sealed)?;
    let json: ClientInfoJson =
        serde_json::from_slice(&plain).map_err(|e| LoginError::BadJson(e.to_string()))?;
    Ok(ClientInfo {
        version: json.version,
        can_ack_pings: json.can_ack_pings,
        is_prober: json.is_prober,
        app_name: json.app_name,
        has_mesh_key: json.mesh_key.is_some_and(|k| !k.is_empty()),
    })
}

/// Returns the whole `ServerInfo` frame for `client`: `info` sealed from the
/// server's key under `nonce`.
///
/// # Errors
/// [`LoginError::WeakKey`] if `client` is a low-order point (open_client_info
/// refuses those first).
pub fn seal_server_info(
    server: &NodePrivate,
    client: &NodePublic,
    nonce: [u8; NONCE_LEN],
    info: &ServerInfo,
) -> Result<Vec<u8>, LoginError> {
    let json = ServerInfoJson {
        version: info.version,
        token_bucket_bytes_per_second: info.token_bucket_bytes_per_second,
        token_bucket_bytes_burst: info.token_bucket_bytes_burst,
    };
    let plain = serde_json::to_vec(&json).map_err(|e| LoginError::BadJson(e.to_string()))?;
    let sealed = LoginBox::new(server, client)?.seal(nonce, &plain);
    Ok(Frame::ServerInfo { sealed: &sealed }.to_vec())
}

/// Opens a `ServerInfo` frame's box: proof that the server holds the key it
/// announced in `ServerKey`.
///
/// # Errors
/// As [`open_client_info`].
pub fn open_server_info(
    client: &NodePrivate,
    server: &NodePublic,
    sealed: &[u8],
) -> Result<ServerInfo, LoginError> {
    let plain = LoginBox::new(client, server)?.open(sealed)?;
    let json: ServerInfoJson =
        serde_json::from_slice(&plain).map_err(|e| LoginError::BadJson(e.to_string()))?;
    Ok(ServerInfo {
        version: json.version,
        token_bucket_bytes_per_second: json.token_bucket_bytes_per_second,
        token_bucket_bytes_burst: json.token_bucket_bytes_burst,
    })
}

#[cfg(test)]
mod tests;
