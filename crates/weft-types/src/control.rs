//! Control protocol messages: what a node and the control server say to each
//! other inside the Noise channel, plus the `GET /key` answer outside it.
//!
//! Each direction has one envelope enum ([`ClientMessage`], [`ServerMessage`])
//! serialized as JSON in externally tagged form: `{"register":{…}}`,
//! `{"map":{"seq":1,"body":{"full":{…}}}}`, `{"keep_alive":{}}`. Unknown
//! fields are ignored (so fields can be added); unknown variants are errors,
//! so a side never sends a variant its peer's `CapabilityVersion` lacks.
//! `docs/PROTOCOL.md` describes the flows.

use std::fmt;

use crate::ids::{NodeId, UserId};
use crate::key::{DiscoPublic, MachinePublic, NodePublic};
use crate::names::Tag;
use crate::netmap::MapResponse;
use crate::node::{Endpoint, HostInfo, UserProfile};
use crate::time::UnixMillis;
use crate::version::CapabilityVersion;
use std::collections::BTreeSet;

/// The JSON body of `GET /key`: the server's static Noise key, which the
/// client pins, and the capability versions the server serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyResponse {
    /// The server's static public key (the Noise IK responder key).
    pub public_key: MachinePublic,
    /// The server's own capability version.
    pub capability_version: CapabilityVersion,
    /// The oldest client capability version the server serves.
    pub min_capability_version: CapabilityVersion,
}

/// Everything a node sends inside the channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientMessage {
    /// Register the node key, log in, rotate the key or log out.
    Register(RegisterRequest),
    /// Ask for the netmap (and with `stream`, for every change after it).
    Map(MapRequest),
    /// The node's endpoints changed (sent while a map stream is open).
    Endpoints(EndpointUpdate),
    /// The node's host info changed (sent while a map stream is open).
    HostInfo(HostInfo),
    /// Nothing to say; proves the node is still there.
    KeepAlive(KeepAlive),
    /// Reserved for SSH check mode (a later capability version).
    SshCheck(SshCheckRequest),
}

/// Everything the server sends inside the channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerMessage {
    /// The answer to the latest [`ClientMessage::Register`].
    Register(RegisterResponse),
    /// One message of the map stream.
    Map(MapResponse),
    /// Nothing to say; proves the server and the stream are alive.
    KeepAlive(KeepAlive),
    /// The answer to an [`ClientMessage::SshCheck`].
    SshCheck(SshCheckDecision),
    /// A fatal error: the server closes the connection after sending it.
    Error(ProtocolError),
}

/// A keep-alive: an empty JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct KeepAlive {}

/// A pre-auth key (`weft up --auth-key`): a secret, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct AuthKey(pub String);

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

/// How a [`RegisterRequest`] proves the user's consent.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterAuth {
    /// No proof: a node key the server already knows and has not expired
    /// registers again (e.g. after a restart); otherwise the server answers
    /// [`RegisterResponse::NeedsAuth`] with a URL for the user.
    None,
    /// A pre-auth key; no browser is involved.
    AuthKey(AuthKey),
    /// Long-poll: answer once the user has finished at this URL (from an
    /// earlier [`RegisterResponse::NeedsAuth`]).
    Followup {
        /// The URL the server handed out.
        auth_url: String,
    },
}

/// What node-key expiry the node asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpiryRequest {
    /// The server's default lifetime (180 days unless configured).
    #[default]
    Default,
    /// Expire at this time (the server may shorten it to its maximum).
    At(UnixMillis),
    /// Expire the node key now: this is logout.
    Now,
}

/// Register (or re-register, rotate, log out) a node key. Sent by the node
/// with the machine key that authenticated the channel; the server binds the
/// node key to that machine key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegisterRequest {
    /// The node's capability version.
    pub version: CapabilityVersion,
    /// The node key to register.
    pub node_key: NodePublic,
    /// The node key being replaced (key rotation: `weft up --force-reauth`
    /// or after expiry). `None`: not a rotation.
    pub old_node_key: Option<NodePublic>,
    /// The proof of consent.
    pub auth: RegisterAuth,
    /// The expiry the node asks for; [`ExpiryRequest::Now`] logs out.
    pub expiry: ExpiryRequest,
    /// Delete the node soon after it goes offline.
    pub ephemeral: bool,
    /// What the node reports about its host.
    pub host_info: HostInfo,
}

/// The server's answer to a [`RegisterRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegisterResponse {
    /// The node key is registered; the node may open a map stream (once
    /// `machine_authorized`).
    Registered(Registered),
    /// The user must authenticate at `auth_url`; then send a follow-up
    /// request ([`RegisterAuth::Followup`]) that waits for it.
    NeedsAuth {
        /// Where the user goes (`<server>/a/<token>`).
        auth_url: String,
    },
    /// The node key has expired: make a new one and register it with this
    /// one as `old_node_key`.
    NodeKeyExpired,
    /// The node key was expired as asked ([`ExpiryRequest::Now`]).
    LoggedOut,
    /// Registration refused; `message` is meant for the user.
    Refused(Refusal),
}

/// A successful registration.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registered {
    /// The node's id.
    pub node_id: NodeId,
    /// The user the node belongs to. `None`: the node is owned by `tags`.
    pub user: Option<UserProfile>,
    /// The node's tags (empty for a user-owned node).
    pub tags: BTreeSet<Tag>,
    /// An administrator has approved the machine. `false`: registered but
    /// waiting for approval; the map stream shows no peers until then.
    pub machine_authorized: bool,
    /// When the node key expires. `None`: never.
    pub key_expiry: Option<UnixMillis>,
}

/// Why a registration was refused, and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// For programs to branch on.
    pub reason: RefusalReason,
    /// For people: what happened and what to do.
    pub message: String,
}

/// Why a registration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalReason {
    /// The auth key is unknown, used up, revoked or expired.
    InvalidAuthKey,
    /// The node key is registered to another machine.
    NodeKeyInUse,
    /// `old_node_key` is not this machine's current key.
    OldNodeKeyMismatch,
    /// The follow-up URL is unknown or expired; start again.
    AuthUrlExpired,
    /// The user declined, or is not allowed on this tailnet.
    AccessDenied,
    /// The requested tags are not allowed for this user or key.
    TagsNotPermitted,
    /// Something else (also what newer, unknown reasons decode as).
    #[serde(other)]
    Other,
}

/// Ask for the netmap. With `stream`, the server keeps sending changes on
/// the channel until it closes; without, it sends one full map.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MapRequest {
    /// The node's capability version.
    pub version: CapabilityVersion,
    /// The registered node key the map is for.
    pub node_key: NodePublic,
    /// The daemon's disco key (new at each start).
    pub disco_key: DiscoPublic,
    /// Where the node can be reached.
    pub endpoints: Vec<Endpoint>,
    /// What the node reports about its host.
    pub host_info: HostInfo,
    /// Keep the stream open and send deltas.
    pub stream: bool,
}

/// The node's endpoints changed. Replaces the whole list.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointUpdate {
    /// The complete new list.
    pub endpoints: Vec<Endpoint>,
}

/// Reserved for SSH check mode (asks control whether a recent interactive
/// login backs an SSH session); not used by capability version 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshCheckRequest {
    /// Chosen by the node; echoed in the decision.
    pub request_id: u64,
    /// The node the SSH connection comes from.
    pub src_node: NodeId,
    /// The tailnet user behind it.
    pub src_user: UserId,
    /// The local account requested.
    pub local_user: String,
}

/// The answer to an [`SshCheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshCheckDecision {
    /// The request's id.
    pub request_id: u64,
    /// Accept or reject.
    pub verdict: SshCheckVerdict,
}

/// Accept or reject an SSH check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshCheckVerdict {
    /// Accept; ask again after `until`.
    Accept {
        /// When the check must be made again.
        until: UnixMillis,
    },
    /// Reject; `message` is shown to the SSH user.
    Reject {
        /// For people.
        message: String,
    },
}

/// A fatal error; the sender closes the connection after it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProtocolError {
    /// For programs to branch on.
    pub code: ErrorCode,
    /// For logs and people.
    pub message: String,
}

/// What went wrong, for a [`ProtocolError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A message could not be parsed or was not allowed at this point.
    BadRequest,
    /// The client's capability version is too old.
    UnsupportedVersion,
    /// The node key is not registered to this machine (register first).
    NotRegistered,
    /// The node key has expired (register a new one).
    NodeKeyExpired,
    /// The machine is waiting for an administrator's approval.
    NotAuthorized,
    /// Another map stream for this node replaced this one.
    Replaced,
    /// The server is shutting down; reconnect later.
    ShuttingDown,
    /// The server failed; reconnect later.
    Internal,
    /// Anything else (also what newer, unknown codes decode as).
    #[serde(other)]
    Other,
}
