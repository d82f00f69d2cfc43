//! The capability version: one number that says what a peer of the control
//! protocol understands.

use std::fmt;

/// The capability version of a client or server: a single `u32` that grows by
/// one with every change to the control protocol that either side must know
/// about (a new message, field, delta variant or behaviour).
///
/// The client sends its version in the upgrade request (the
/// `X-Weft-Capability` header, which also enters the Noise prologue, so it
/// cannot be changed in transit) and again in `RegisterRequest` and
/// `MapRequest`. The server answers every client it supports in the terms
/// that client's version understands; one older than
/// [`CapabilityVersion::MIN_SUPPORTED`] is refused at the upgrade with
/// HTTP 400 and a message telling the user to upgrade.
///
/// # History
/// Add a line for every bump, newest last, with the date and what changed.
///
/// - **1** (2026-11-27): the first protocol. `GET /key`; Noise IK upgrade at
///   `POST /control`; framed records with fragmentation; `register` (auth key,
///   interactive with follow-up, key rotation, logout), `map` (full netmap
///   then deltas with `seq`; peer added/removed/changed/endpoints/online;
///   self, user profiles, DNS, relay map, packet filter, SSH policy),
///   `endpoints`, `host_info`, `keep_alive`; `ssh_check` is reserved and
///   answered with a `reject` decision.
/// - **2** (2026-11-27): SSH check mode. `ssh_check` carries the asking node's
///   key, a node-chosen check id, the source node and user, the login, the
///   rule's `checkPeriod` and how long the node waits; control answers
///   `accept` at once (a fresh approval), or `pending` with the URL and later
///   `accept`/`reject` (approved by that user, declined, or expired).
/// - **3** (2026-12-08): SSH session recordings. `ssh_recording` carries a
///   finished recording from the node that made it, in chunks of at most
///   16 KiB (base64), each answered by an `ssh_recording` ack; the last
///   chunk says what the recording is of.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct CapabilityVersion(pub u32);

impl CapabilityVersion {
    /// The version this build speaks.
    pub const CURRENT: CapabilityVersion = CapabilityVersion(3);
    /// The oldest client version this build's server still serves.
    pub const MIN_SUPPORTED: CapabilityVersion = CapabilityVersion(1);

    /// Returns whether a server of this build serves a client of `self`.
    pub fn is_supported(self) -> bool {
        self >= Self::MIN_SUPPORTED
    }
}

impl fmt::Display for CapabilityVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::str::FromStr for CapabilityVersion {
    type Err = std::num::ParseIntError;
    /// Parses the decimal form used in the `X-Weft-Capability` header.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<u32>().map(CapabilityVersion)
    }
}
