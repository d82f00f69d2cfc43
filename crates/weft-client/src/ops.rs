//! One-shot operations over a [`Channel`], in the shape a daemon with its
//! own state machine wants: one `register` exchange, or a map stream as a
//! `Stream` of raw responses (the caller keeps its own [`MapSession`]).
//!
//! [`MapSession`]: weft_control_proto::MapSession

use std::time::Duration;

use futures::stream::BoxStream;
use tokio::sync::mpsc;
use weft_types::control::{
    ClientMessage, EndpointUpdate, MapRequest, RegisterRequest, RegisterResponse, ServerMessage,
};
use weft_types::{Endpoint, HostInfo, MapResponse};

use crate::{Channel, ClientError, ConnectOptions, Target};

/// One item of a map stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapEvent {
    /// A full map or a batch of deltas.
    Response(MapResponse),
    /// The server is still there.
    KeepAlive,
}

/// Something to tell the server while a map stream is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapUpdate {
    /// The node's endpoints changed (the complete list).
    Endpoints(Vec<Endpoint>),
    /// The node's host info changed.
    HostInfo(HostInfo),
}

/// A map stream: server events until it ends with an error
/// ([`ClientError::Closed`] for a clean close).
pub type MapEvents = BoxStream<'static, Result<MapEvent, ClientError>>;

/// Sends one `register` on a new connection and returns the answer. A
/// follow-up (`auth: followup`) waits here until the user finished at the
/// auth URL or it expired; keep-alives flow meanwhile.
///
/// # Errors
/// Connection errors, [`ClientError::Server`] if the server answered with
/// an error, [`ClientError::Unexpected`] for another message.
pub async fn register(
    target: &Target,
    req: RegisterRequest,
    opts: &ConnectOptions,
) -> Result<RegisterResponse, ClientError> {
    let mut ch = Channel::connect(target, opts).await?;
    ch.send(ClientMessage::Register(req))?;
    loop {
        match ch.recv().await? {
            ServerMessage::KeepAlive(_) => {}
            ServerMessage::Register(resp) => return Ok(resp),
            ServerMessage::Map(_) | ServerMessage::SshCheck(_) | ServerMessage::Error(_) => {
                return Err(ClientError::Unexpected {
                    url: target.url.to_string(),
                    what: "a message other than the register answer",
                });
            }
        }
    }
}

/// Opens a map stream on a new connection. `updates` are sent on it while
/// it is open; the stream ends when the connection does.
///
/// # Errors
/// Connection errors (later errors come through the stream).
pub async fn map(
    target: &Target,
    req: MapRequest,
    updates: mpsc::UnboundedReceiver<MapUpdate>,
    opts: &ConnectOptions,
) -> Result<MapEvents, ClientError> {
    let ch = Channel::connect(target, opts).await?;
    ch.send(ClientMessage::Map(req))?;
    let state = (ch, Some(updates), false);
    let stream = futures::stream::unfold(state, |(mut ch, mut updates, done)| async move {
        if done {
            return None;
        }
        loop {
            let next = tokio::select! {
                m = ch.recv() => Some(m),
                u = recv_update(&mut updates) => {
                    match u {
                        Some(MapUpdate::Endpoints(endpoints)) => {
                            let _ = ch.send(ClientMessage::Endpoints(EndpointUpdate { endpoints }));
                        }
                        Some(MapUpdate::HostInfo(h)) => {
                            let _ = ch.send(ClientMessage::HostInfo(h));
                        }
                        None => updates = None,
                    }
                    None
                }
            };
            match next {
                None => {}
                Some(Ok(ServerMessage::Map(r))) => {
                    return Some((Ok(MapEvent::Response(r)), (ch, updates, false)));
                }
                Some(Ok(ServerMessage::KeepAlive(_))) => {
                    return Some((Ok(MapEvent::KeepAlive), (ch, updates, false)));
                }
                Some(Ok(_)) => {
                    let e = ClientError::Unexpected {
                        url: ch.url().to_owned(),
                        what: "a message other than a map response on the map stream",
                    };
                    return Some((Err(e), (ch, updates, true)));
                }
                Some(Err(e)) => return Some((Err(e), (ch, updates, true))),
            }
        }
    });
    Ok(Box::pin(stream))
}

async fn recv_update(
    updates: &mut Option<mpsc::UnboundedReceiver<MapUpdate>>,
) -> Option<MapUpdate> {
    match updates {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Exponential backoff with jitter for reconnects: 0.5 s doubling up to
/// 30 s, each delay drawn from ±25 % around the nominal value, so a
/// thousand nodes that lost the server at once do not return at once.
#[derive(Debug, Clone)]
pub struct Backoff {
    attempt: u32,
    rng: u64,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// The first delay of [`Backoff::new`].
    pub const MIN: Duration = Duration::from_millis(500);
    /// The longest delay of [`Backoff::new`].
    pub const MAX: Duration = Duration::from_secs(30);

    /// Creates a backoff (0.5 s … 30 s) whose jitter comes from `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_bounds(seed, Self::MIN, Self::MAX)
    }

    /// Creates a backoff between `min` and `max`.
    pub fn with_bounds(seed: u64, min: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            rng: seed | 1,
            min,
            max,
        }
    }

    /// Returns the next delay.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self
            .min
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64: cheap and reproducible from the seed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let frac = (self.rng % 1001) as f64 / 1000.0;
        nominal.mul_f64(0.75 + 0.5 * frac).min(self.max)
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
    fn backoff_grows_to_its_bound_with_jitter_and_resets() {
        let mut b = Backoff::new(7);
        let first = b.next_delay();
        assert!(first >= Backoff::MIN.mul_f64(0.75) && first <= Backoff::MIN.mul_f64(1.25));
        let later: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        assert!(later.iter().all(|d| *d <= Backoff::MAX));
        assert!(
            later
                .iter()
                .rev()
                .take(5)
                .all(|d| *d >= Backoff::MAX.mul_f64(0.75))
        );
        let distinct: std::collections::BTreeSet<_> = later.iter().collect();
        assert!(distinct.len() > 5, "jitter spreads the delays");
        b.reset();
        assert!(b.next_delay() <= Backoff::MIN.mul_f64(1.25));
    }
}
