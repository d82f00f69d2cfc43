//! The HTTP side of the channel: `GET /key`, and the `POST /control` upgrade
//! request and its answers. Drivers do the HTTP; this module names the
//! parts and decides the answers.
//!
//! ```text
//! POST /control HTTP/1.1
//! Host: control.example
//! Upgrade: weft-control
//! Connection: Upgrade
//! X-Weft-Capability: 1
//! X-Weft-Handshake: <base64 of Noise message 1, 128 characters>
//! Content-Length: 0
//!
//! HTTP/1.1 101 Switching Protocols
//! Upgrade: weft-control
//! Connection: Upgrade
//!
//! <frame 0x01: Noise message 2><frame 0x02: records…>
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use weft_types::CapabilityVersion;

/// The path of the key endpoint (`GET`).
pub const KEY_PATH: &str = "/key";
/// The path of the upgrade endpoint (`POST`).
pub const CONTROL_PATH: &str = "/control";
/// The protocol token in the `Upgrade` header.
pub const UPGRADE_PROTOCOL: &str = "weft-control";
/// The header carrying Noise message 1 in standard base64 (with padding).
pub const HANDSHAKE_HEADER: &str = "X-Weft-Handshake";
/// The header carrying the client's capability version in decimal.
pub const CAPABILITY_HEADER: &str = "X-Weft-Capability";
/// The query parameter of `GET /key` carrying the client's capability version.
pub const KEY_VERSION_PARAM: &str = "v";

/// The header values of an upgrade request, as the server received them
/// (`None` for a missing header). Drivers fill it from their HTTP library.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeHeaders<'a> {
    /// The `Upgrade` header.
    pub upgrade: Option<&'a str>,
    /// The [`CAPABILITY_HEADER`].
    pub capability: Option<&'a str>,
    /// The [`HANDSHAKE_HEADER`].
    pub handshake: Option<&'a str>,
}

/// The header values a client sends with its upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Noise message 1 in standard base64: the [`HANDSHAKE_HEADER`] value.
    pub handshake: String,
    /// The client's version: the [`CAPABILITY_HEADER`] value.
    pub capability: CapabilityVersion,
}

impl UpgradeRequest {
    /// Returns every header the request needs besides `Host`, as
    /// `(name, value)` pairs in the order of `docs/PROTOCOL.md`.
    pub fn headers(&self) -> [(&'static str, String); 4] {
        [
            ("Upgrade", UPGRADE_PROTOCOL.to_owned()),
            ("Connection", "Upgrade".to_owned()),
            (CAPABILITY_HEADER, self.capability.to_string()),
            (HANDSHAKE_HEADER, self.handshake.clone()),
        ]
    }
}

/// Why the server refused an upgrade request. Each maps to an HTTP status
/// ([`UpgradeError::status`]) and a plain-text body ([`UpgradeError`]'s
/// `Display`), both meant for whoever reads the client's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// No `Upgrade: weft-control` header (426, with `Upgrade: weft-control`).
    #[error("this endpoint needs `Upgrade: weft-control`")]
    NotAnUpgrade,
    /// The capability header is missing or not a decimal number (400).
    #[error("missing or malformed X-Weft-Capability header")]
    BadCapability,
    /// The client is older than the server serves (400).
    #[error(
        "client capability version {client} is too old: this server needs at least {min}; upgrade weft"
    )]
    UnsupportedVersion {
        /// The client's version.
        client: CapabilityVersion,
        /// The oldest version served.
        min: CapabilityVersion,
    },
    /// The handshake header is missing or not base64 (400).
    #[error("missing or malformed X-Weft-Handshake header")]
    BadHandshakeEncoding,
    /// Noise message 1 has the wrong length or failed to decrypt (400).
    /// The usual cause is a client that pinned another server key.
    #[error(
        "Noise handshake failed: the client may have pinned a different server key (fetch /key again if the server was reinstalled)"
    )]
    HandshakeFailed,
}

impl UpgradeError {
    /// Returns the HTTP status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            UpgradeError::NotAnUpgrade => 426,
            UpgradeError::BadCapability
            | UpgradeError::UnsupportedVersion { .. }
            | UpgradeError::BadHandshakeEncoding
            | UpgradeError::HandshakeFailed => 400,
        }
    }
}

/// Why a client's upgrade request did not get `101 Switching Protocols`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeRefused {
    /// The server answered with another status; `message` is its body (cut
    /// to 512 bytes), which says why for every refusal of §4.
    #[error("control server refused the upgrade with HTTP {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The response body, for the log.
        message: String,
    },
    /// The server switched to another protocol (something in between
    /// answered, not a weft-control server).
    #[error("the server switched to {0:?} instead of weft-control")]
    WrongProtocol(String),
}

/// Checks the server's answer to the upgrade request (client side).
///
/// # Errors
/// [`UpgradeRefused`] unless the answer is `101` with `Upgrade: weft-control`.
pub fn check_response(
    status: u16,
    upgrade: Option<&str>,
    body: &str,
) -> Result<(), UpgradeRefused> {
    if status != 101 {
        let mut message = body.trim().to_owned();
        if message.len() > 512 {
            let mut cut = 512;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        return Err(UpgradeRefused::Status { status, message });
    }
    match upgrade {
        Some(u) if u.trim().eq_ignore_ascii_case(UPGRADE_PROTOCOL) => Ok(()),
        other => Err(UpgradeRefused::WrongProtocol(
            other.unwrap_or_default().to_owned(),
        )),
    }
}

/// The parts of a valid upgrade request.
pub(crate) struct CheckedUpgrade {
    pub(crate) version: CapabilityVersion,
    pub(crate) initiation: Vec<u8>,
}

/// Checks the headers of an upgrade request (everything but the Noise
/// message's cryptography).
pub(crate) fn check_headers(h: &UpgradeHeaders<'_>) -> Result<CheckedUpgrade, UpgradeError> {
    let upgrade_ok = h.upgrade.is_some_and(|u| {
        u.split(',')
            .any(|p| p.trim().eq_ignore_ascii_case(UPGRADE_PROTOCOL))
    });
    if !upgrade_ok {
        return Err(UpgradeError::NotAnUpgrade);
    }
    let cap = h
        .capability
        .map(str::trim)
        .ok_or(UpgradeError::BadCapability)?;
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        return Err(UpgradeError::BadCapability);
    }
    let version: CapabilityVersion = cap.parse().map_err(|_| UpgradeError::BadCapability)?;
    if !version.is_supported() {
        return Err(UpgradeError::UnsupportedVersion {
            client: version,
            min: CapabilityVersion::MIN_SUPPORTED,
        });
    }
    let b64 = h
        .handshake
        .map(str::trim)
        .ok_or(UpgradeError::BadHandshakeEncoding)?;
    // 96 bytes encode to 128 characters; refuse anything much longer before decoding.
    if b64.len() > 256 {
        return Err(UpgradeError::BadHandshakeEncoding);
    }
    let initiation = BASE64
        .decode(b64)
        .map_err(|_| UpgradeError::BadHandshakeEncoding)?;
    Ok(CheckedUpgrade {
        version,
        initiation,
    })
}

/// Encodes Noise message 1 for the [`HANDSHAKE_HEADER`].
pub(crate) fn encode_initiation(msg: &[u8]) -> String {
    BASE64.encode(msg)
}
