//! The daemon's view of the control server: a small trait the session task
//! is written against, so it runs the same over the real client
//! ([`super::client::WeftClient`]) and over the scripted fake in tests.

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use weft_types::control::{ErrorCode, MapRequest, RegisterRequest, RegisterResponse};
use weft_types::{MachinePrivate, MachinePublic};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ControlTarget {
    /// The control server's URL (`--login-server`).
    pub url: String,
    /// Our machine key (the Noise static key).
    pub machine_key: MachinePrivate,
    /// The server's key, pinned at first contact.
    pub server_key: MachinePublic,
}

/// Why talking to control failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach control server {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The server sent a protocol error (and closed the channel).
    #[error("control server {url} said: {message}")]
    Server {
        url: String,
        code: ErrorCode,
        message: String,
    },
    /// Anything else the client reports; the message names the server.
    #[error("{0}")]
    Client(String),
}

impl ControlError {
    /// Returns the server's error code, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ControlError::Server { code, .. } => Some(*code),
            ControlError::Unreachable { .. } | ControlError::Client(_) => None,
        }
    }
}

/// The map stream's items and updates are the client library's own.
pub use weft_client::{MapEvent, MapUpdate};

/// A map stream: server events until it ends (`None`) or fails.
pub type MapStream = BoxStream<'static, Result<MapEvent, ControlError>>;

/// The control operations the daemon needs.
pub trait ControlClient: Send + Sync + 'static {
    /// `GET /key`: the server's static key, to pin.
    fn server_key(&self, url: &str) -> BoxFuture<'_, Result<MachinePublic, ControlError>>;

    /// One `register` exchange (a follow-up long-polls until the user
    /// finished at the auth URL).
    fn register(
        &self,
        target: &ControlTarget,
        req: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, ControlError>>;

    /// Opens a map stream; `updates` are sent on it while it is open.
    fn map(
        &self,
        target: &ControlTarget,
        req: MapRequest,
        updates: mpsc::UnboundedReceiver<MapUpdate>,
    ) -> BoxFuture<'_, Result<MapStream, ControlError>>;
}

/// Reconnect pacing (0.5 s doubling to 30 s, ±25 % jitter) is the client
/// library's.
pub use weft_client::Backoff;
