//! The daemon's view of the control server: a small trait the session task
//! is written against, so it runs the same over the real client
//! (`weft-client`, once it lands) and over the scripted fake in tests.

use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use tokio::sync::mpsc;
use weft_types::control::{ErrorCode, MapRequest, RegisterRequest, RegisterResponse};
use weft_types::{Endpoint, HostInfo, MachinePrivate, MachinePublic, MapResponse};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
#[cfg_attr(not(test), allow(dead_code))] // read by client implementations (the test fake; weft-client next)
pub struct ControlTarget {
    /// The control server's URL (`--login-server`).
    pub url: String,
    /// Our machine key (the Noise static key).
    pub machine_key: MachinePrivate,
    /// The server's key, pinned at first contact.
    pub server_key: MachinePublic,
}

/// Why talking to control failed.
#[cfg_attr(not(test), allow(dead_code))] // `Server` is built by client implementations
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The server could not be reached or the connection broke.
    #[error("cannot reach control server {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The server sent a protocol error (and closed the channel).
    #[error("control server {url} said: {message}")]
    Server { url: String, code: ErrorCode, message: String },
}

impl ControlError {
    /// Returns the server's error code, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ControlError::Server { code, .. } => Some(*code),
            ControlError::Unreachable { .. } => None,
        }
    }
}

/// One item of a map stream.
#[cfg_attr(not(test), allow(dead_code))] // built by client implementations
#[derive(Debug, Clone, PartialEq)]
pub enum MapEvent {
    /// A full map or deltas.
    Response(MapResponse),
    /// The server is still there.
    KeepAlive,
}

/// Something to tell control while a map stream is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapUpdate {
    /// Our endpoints changed (the complete list).
    Endpoints(Vec<Endpoint>),
    /// Our host info changed.
    HostInfo(HostInfo),
}

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

/// The control client of a build without `weft-client`: every call fails
/// with a message saying so. Replaced by `weft-client` when it lands.
#[derive(Debug, Default)]
pub struct NotLinked;

impl NotLinked {
    fn err(url: &str) -> ControlError {
        ControlError::Unreachable {
            url: url.to_owned(),
            cause: "this weftd has no control client linked yet (weft-client)".into(),
        }
    }
}

impl ControlClient for NotLinked {
    fn server_key(&self, url: &str) -> BoxFuture<'_, Result<MachinePublic, ControlError>> {
        let e = Self::err(url);
        Box::pin(async move { Err(e) })
    }

    fn register(&self, target: &ControlTarget, _req: RegisterRequest) -> BoxFuture<'_, Result<RegisterResponse, ControlError>> {
        let e = Self::err(&target.url);
        Box::pin(async move { Err(e) })
    }

    fn map(
        &self,
        target: &ControlTarget,
        _req: MapRequest,
        _updates: mpsc::UnboundedReceiver<MapUpdate>,
    ) -> BoxFuture<'_, Result<MapStream, ControlError>> {
        let e = Self::err(&target.url);
        Box::pin(async move { Err(e) })
    }
}

/// Exponential backoff with jitter for reconnects: 0.5 s doubling up to
/// 30 s, each delay drawn from ±25 % around the nominal value.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    rng: u64,
}

/// The first retry delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// The longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl Backoff {
    /// Creates a backoff whose jitter comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self { attempt: 0, rng: seed | 1 }
    }

    /// Returns the next delay.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = BACKOFF_MIN.saturating_mul(1 << self.attempt.min(16)).min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: cheap, deterministic from the seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 1001) as f64 / 1000.0; // 0..=1
        nominal.mul_f64(0.75 + 0.5 * frac).min(BACKOFF_MAX)
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_bound_with_jitter_and_resets() {
        let mut b = Backoff::new(42);
        let first = b.next_delay();
        assert!(first >= BACKOFF_MIN.mul_f64(0.75) && first <= BACKOFF_MIN.mul_f64(1.25));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= BACKOFF_MAX));
        assert!(delays.last().is_some_and(|d| *d >= BACKOFF_MAX.mul_f64(0.75)));
        let distinct: std::collections::BTreeSet<_> = delays[10..].iter().collect();
        assert!(distinct.len() > 1, "jitter spreads the capped delays");
        b.reset();
        assert!(b.next_delay() <= BACKOFF_MIN.mul_f64(1.25));
    }
}
