//! SSH check mode on the node's side: one check on a connection of its own
//! (docs/PROTOCOL.md §"SSH check").
//!
//! Why a connection per check rather than the map stream's: weftd drives its
//! map stream as a raw stream of responses ([`crate::map`]) that reconnects
//! on its own schedule, while a check may wait minutes for a person. A
//! one-shot connection keeps the two independent (a map reconnect does not
//! lose a pending approval, a slow approval does not hold up the map) and
//! ends the check when its SSH login goes away: dropping the
//! [`SshCheckWait`] closes the connection and control forgets the check.
//! The same conversation also runs on a [`crate::Session`]'s connection
//! through the protocol's `ControlClient::send_ssh_check`.

use std::time::SystemTime;

use weft_control_proto::{CheckProgress, CheckResult, SshCheckCall};
use weft_types::UnixMillis;
use weft_types::control::{ServerMessage, SshCheckRequest};

use crate::driver::now;
use crate::{Channel, ClientError, ConnectOptions, Target};

/// A check in flight: its connection and its conversation.
#[derive(Debug)]
pub struct SshCheckWait {
    ch: Channel,
    call: SshCheckCall,
}

/// Sends `req` on a new connection and returns the call, to be awaited
/// with [`SshCheckWait::next`].
///
/// # Errors
/// Connection errors.
pub async fn ssh_check(
    target: &Target,
    req: SshCheckRequest,
    opts: &ConnectOptions,
) -> Result<SshCheckWait, ClientError> {
    let ch = Channel::connect(target, opts).await?;
    let call = SshCheckCall::new(req, now());
    ch.send(call.message())?;
    Ok(SshCheckWait { ch, call })
}

#[allow(clippy::disallowed_methods)] // the driver is where time enters
fn unix_now() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMillis(ms)
}

impl SshCheckWait {
    /// Returns the next step: [`CheckProgress::Pending`] (at most once),
    /// then [`CheckProgress::Done`]. Gives up with a refusal at the call's
    /// deadline. Call again only after `Pending`.
    ///
    /// # Errors
    /// The connection failed or the server said something that does not fit
    /// (the caller should refuse the login).
    pub async fn next(&mut self) -> Result<CheckProgress, ClientError> {
        loop {
            let Some(deadline) = self.call.poll_timeout() else {
                return Err(ClientError::Unexpected {
                    url: self.ch.url().to_owned(),
                    what: "a check that is already decided",
                });
            };
            let msg = tokio::select! {
                m = self.ch.recv() => m?,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    if let Some(r) = self.call.handle_timeout(now()) {
                        return Ok(CheckProgress::Done(r));
                    }
                    continue;
                }
            };
            match msg {
                ServerMessage::KeepAlive(_) => {}
                ServerMessage::SshCheck(d) => {
                    return self
                        .call
                        .handle_decision(d, now(), unix_now())
                        .map_err(|_| ClientError::Unexpected {
                            url: self.ch.url().to_owned(),
                            what: "an ssh check decision that does not fit the request",
                        });
                }
                _ => {
                    return Err(ClientError::Unexpected {
                        url: self.ch.url().to_owned(),
                        what: "a message other than an ssh check decision",
                    });
                }
            }
        }
    }

    /// Waits for the final answer, skipping the `pending` step.
    ///
    /// # Errors
    /// As [`SshCheckWait::next`].
    pub async fn result(mut self) -> Result<CheckResult, ClientError> {
        loop {
            if let CheckProgress::Done(r) = self.next().await? {
                return Ok(r);
            }
        }
    }
}
