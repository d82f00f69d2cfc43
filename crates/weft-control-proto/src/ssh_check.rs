//! One SSH check, sans-IO, on the node's side: the request to send, what
//! each [`SshCheckDecision`] from control means, and the node's own bound on
//! how long it waits (docs/PROTOCOL.md §"SSH check").
//!
//! The conversation is short: the node sends one `ssh_check`; control
//! answers either with a final `accept`/`reject` at once, or with `pending`
//! (the user must approve at the URL) followed by exactly one final answer.
//! Control promises a final answer by the `expires` it names; the node
//! stops waiting at the earlier of that (plus a little slack for the
//! network) and its own `max_wait`, and then treats the check as refused.
//!
//! Driving it: [`SshCheckCall::new`] with the request and `now`; send
//! [`SshCheckCall::message`]; feed every `ssh_check` decision that arrives
//! to [`SshCheckCall::handle_decision`]; sleep until
//! [`SshCheckCall::poll_timeout`] and call [`SshCheckCall::handle_timeout`].
//! The call is over once either returns a [`CheckResult`].

use std::time::{Duration, Instant};

use weft_types::UnixMillis;
use weft_types::control::{ClientMessage, SshCheckDecision, SshCheckRequest, SshCheckVerdict};

/// How much later than control's own `expires` the node still waits for the
/// final answer (clock skew and the trip back).
pub const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// The final answer to a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckResult {
    /// The login may proceed; the approval holds until `until`.
    Accepted {
        /// When control wants to be asked again.
        until: UnixMillis,
    },
    /// The login is refused; `message` is meant for the SSH user.
    Rejected {
        /// For people.
        message: String,
    },
}

/// What a decision from control meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckProgress {
    /// The user must approve at `auth_url`; keep waiting.
    Pending {
        /// The URL control registered (the one the node already shows).
        auth_url: String,
        /// When control will give up.
        expires: UnixMillis,
    },
    /// The check is over.
    Done(CheckResult),
}

/// A decision that does not fit the conversation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The decision is for another request.
    #[error("ssh check decision for request {got}, expected {expected}")]
    WrongRequest {
        /// The id this call sent.
        expected: u64,
        /// The id in the decision.
        got: u64,
    },
    /// A second `pending`, or anything after the final answer.
    #[error("unexpected ssh check decision: {0}")]
    OutOfOrder(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Sent,
    Pending,
    Done,
}

/// One check in flight. See the module docs.
#[derive(Debug, Clone)]
pub struct SshCheckCall {
    request: SshCheckRequest,
    state: State,
    started: Instant,
    deadline: Instant,
}

impl SshCheckCall {
    /// Starts a check at `now`; the node gives up at `now + max_wait_ms`
    /// (plus [`EXPIRY_SLACK`]) unless control decides first.
    pub fn new(request: SshCheckRequest, now: Instant) -> Self {
        let wait = Duration::from_millis(request.max_wait_ms).saturating_add(EXPIRY_SLACK);
        let deadline = now.checked_add(wait).unwrap_or(now);
        Self {
            request,
            state: State::Sent,
            started: now,
            deadline,
        }
    }

    /// Returns the message to send.
    pub fn message(&self) -> ClientMessage {
        ClientMessage::SshCheck(self.request.clone())
    }

    /// Returns the request.
    pub fn request(&self) -> &SshCheckRequest {
        &self.request
    }

    /// Returns whether the call is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Interprets one decision from control.
    ///
    /// `now_unix` is the current wall-clock time, used only to pull the
    /// deadline in when control's `expires` is earlier than the node's bound.
    ///
    /// # Errors
    /// [`CheckError`] for a decision that does not belong to this call or
    /// comes out of order; the caller should treat the check as refused.
    pub fn handle_decision(
        &mut self,
        decision: SshCheckDecision,
        now: Instant,
        now_unix: UnixMillis,
    ) -> Result<CheckProgress, CheckError> {
        if decision.request_id != self.request.request_id {
            return Err(CheckError::WrongRequest {
                expected: self.request.request_id,
                got: decision.request_id,
            });
        }
        match (self.state, decision.verdict) {
            (State::Done, _) => Err(CheckError::OutOfOrder("a decision after the final one")),
            (State::Pending, SshCheckVerdict::Pending { .. }) => {
                Err(CheckError::OutOfOrder("a second pending"))
            }
            (State::Sent, SshCheckVerdict::Pending { auth_url, expires }) => {
                self.state = State::Pending;
                let left = Duration::from_millis(
                    u64::try_from(expires.0.saturating_sub(now_unix.0)).unwrap_or(0),
                );
                let theirs = now
                    .checked_add(left.saturating_add(EXPIRY_SLACK))
                    .unwrap_or(now);
                self.deadline = self.deadline.min(theirs);
                Ok(CheckProgress::Pending { auth_url, expires })
            }
            (_, SshCheckVerdict::Accept { until }) => {
                self.state = State::Done;
                Ok(CheckProgress::Done(CheckResult::Accepted { until }))
            }
            (_, SshCheckVerdict::Reject { message }) => {
                self.state = State::Done;
                Ok(CheckProgress::Done(CheckResult::Rejected { message }))
            }
        }
    }

    /// Returns when [`SshCheckCall::handle_timeout`] is due (`None` once done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state != State::Done).then_some(self.deadline)
    }

    /// Gives up once the deadline has passed: returns the refusal to show.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<CheckResult> {
        if self.state == State::Done || now < self.deadline {
            return None;
        }
        let waited = now.saturating_duration_since(self.started).as_secs();
        let message = match self.state {
            State::Pending => format!("the re-authentication was not approved within {waited} s"),
            _ => format!("the control server did not answer the check within {waited} s"),
        };
        self.state = State::Done;
        Some(CheckResult::Rejected { message })
    }
}

/// Turns 16 random bytes (from the caller's RNG) into a check id: 32
/// lowercase hex digits, the form of every `/a/<id>` link.
pub fn check_id_from(random: [u8; 16]) -> String {
    use std::fmt::Write as _;
    random.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_types::{NodeId, NodePrivate, UserId};

    fn request(max_wait_ms: u64) -> SshCheckRequest {
        SshCheckRequest {
            request_id: 3,
            node_key: NodePrivate::from_bytes([1; 32]).public(),
            check_id: check_id_from([0xab; 16]),
            src_node: NodeId(2),
            src_user: UserId(1),
            ssh_user: "alice".into(),
            local_user: "alice".into(),
            check_period_ms: 60_000,
            max_wait_ms,
        }
    }

    fn decision(verdict: SshCheckVerdict) -> SshCheckDecision {
        SshCheckDecision {
            request_id: 3,
            verdict,
        }
    }

    fn t0() -> Instant {
        // A fixed origin for virtual time; no clock is read by the core.
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        now
    }

    #[test]
    fn an_immediate_accept_ends_the_call() {
        let now = t0();
        let mut c = SshCheckCall::new(request(60_000), now);
        assert!(matches!(c.message(), ClientMessage::SshCheck(r) if r.request_id == 3));
        let p = c
            .handle_decision(
                decision(SshCheckVerdict::Accept {
                    until: UnixMillis(9),
                }),
                now,
                UnixMillis(0),
            )
            .unwrap();
        assert_eq!(
            p,
            CheckProgress::Done(CheckResult::Accepted {
                until: UnixMillis(9)
            })
        );
        assert!(c.is_done());
        assert_eq!(c.poll_timeout(), None);
        assert_eq!(c.handle_timeout(now + Duration::from_secs(3600)), None);
    }

    #[test]
    fn pending_then_reject_reports_the_url_then_the_message() {
        let now = t0();
        let mut c = SshCheckCall::new(request(60_000), now);
        let url = "http://h/a/abababababababababababababababab".to_owned();
        let p = c
            .handle_decision(
                decision(SshCheckVerdict::Pending {
                    auth_url: url.clone(),
                    expires: UnixMillis(1_000),
                }),
                now,
                UnixMillis(0),
            )
            .unwrap();
        assert_eq!(
            p,
            CheckProgress::Pending {
                auth_url: url,
                expires: UnixMillis(1_000)
            }
        );
        let p = c
            .handle_decision(
                decision(SshCheckVerdict::Reject {
                    message: "no".into(),
                }),
                now,
                UnixMillis(0),
            )
            .unwrap();
        assert_eq!(
            p,
            CheckProgress::Done(CheckResult::Rejected {
                message: "no".into()
            })
        );
        let late = c.handle_decision(
            decision(SshCheckVerdict::Accept {
                until: UnixMillis(1),
            }),
            now,
            UnixMillis(0),
        );
        assert_eq!(
            late,
            Err(CheckError::OutOfOrder("a decision after the final one"))
        );
    }

    #[test]
    fn the_node_gives_up_at_its_own_bound_when_control_is_silent() {
        let now = t0();
        let mut c = SshCheckCall::new(request(10_000), now);
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_secs(10) + EXPIRY_SLACK);
        assert_eq!(c.handle_timeout(due - Duration::from_millis(1)), None);
        let Some(CheckResult::Rejected { message }) = c.handle_timeout(due) else {
            panic!()
        };
        assert!(message.contains("did not answer"), "{message}");
        assert!(c.is_done());
    }

    #[test]
    fn an_earlier_expiry_from_control_pulls_the_deadline_in() {
        let now = t0();
        let mut c = SshCheckCall::new(request(600_000), now);
        c.handle_decision(
            decision(SshCheckVerdict::Pending {
                auth_url: "u".into(),
                expires: UnixMillis(100_000 + 20_000),
            }),
            now,
            UnixMillis(100_000),
        )
        .unwrap();
        let due = c.poll_timeout().unwrap();
        assert_eq!(due, now + Duration::from_secs(20) + EXPIRY_SLACK);
        let Some(CheckResult::Rejected { message }) = c.handle_timeout(due) else {
            panic!()
        };
        assert!(message.contains("not approved within 25 s"), "{message}");
    }

    #[test]
    fn decisions_for_other_requests_or_a_second_pending_are_errors() {
        let now = t0();
        let mut c = SshCheckCall::new(request(60_000), now);
        let other = SshCheckDecision {
            request_id: 4,
            verdict: SshCheckVerdict::Accept {
                until: UnixMillis(1),
            },
        };
        assert_eq!(
            c.handle_decision(other, now, UnixMillis(0)),
            Err(CheckError::WrongRequest {
                expected: 3,
                got: 4
            })
        );
        let pending = || {
            decision(SshCheckVerdict::Pending {
                auth_url: "u".into(),
                expires: UnixMillis(5),
            })
        };
        c.handle_decision(pending(), now, UnixMillis(0)).unwrap();
        assert_eq!(
            c.handle_decision(pending(), now, UnixMillis(0)),
            Err(CheckError::OutOfOrder("a second pending"))
        );
    }

    #[test]
    fn check_ids_are_auth_ids() {
        let id = check_id_from([0x0f; 16]);
        assert_eq!(id, "0f".repeat(16));
        assert!(weft_types::control::is_auth_id(&id));
    }
}
