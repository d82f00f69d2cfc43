//! SSH check mode on the node's side: one check on a connection of its own
//! (docs/PROTOCOL.md §"SSH check").
//!
//! The check runs on a [`Session::for_checks`]: the same conversation and
//! driver as the map stream's, on a connection of its own. Why not the map
//! stream's connection: the map reconnects on its own schedule, while a
//! check may wait minutes for a person, and control holds one waiting check
//! per connection. A connection per check keeps the two independent (a map
//! reconnect does not lose a pending approval, a slow approval does not
//! hold up the map) and ends the check when its SSH login goes away:
//! dropping the [`SshCheckWait`] closes the connection and control forgets
//! the check.

use weft_control_proto::{CheckProgress, CheckResult, SshCheckCall};
use weft_types::control::SshCheckRequest;

use crate::driver::{now, unix_now};
use crate::{ClientError, ConnectOptions, Session, SessionEvent, Target};

/// A check in flight: its connection and its conversation.
#[derive(Debug)]
pub struct SshCheckWait {
    session: Session,
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
    let session = Session::for_checks(target, opts).await?;
    let call = SshCheckCall::new(req.clone(), now());
    session.send_ssh_check(req);
    Ok(SshCheckWait { session, call })
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
                    url: self.session.url().to_owned(),
                    what: "a check that is already decided",
                });
            };
            let event = tokio::select! {
                e = self.session.next_event() => e?,
                () = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    if let Some(r) = self.call.handle_timeout(now()) {
                        return Ok(CheckProgress::Done(r));
                    }
                    continue;
                }
            };
            let SessionEvent::SshCheck(d) = event else {
                return Err(ClientError::Unexpected {
                    url: self.session.url().to_owned(),
                    what: "a message other than an ssh check decision",
                });
            };
            return self
                .call
                .handle_decision(d, now(), unix_now())
                .map_err(|_| ClientError::Unexpected {
                    url: self.session.url().to_owned(),
                    what: "an ssh check decision that does not fit the request",
                });
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
