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
    /// Ask whether an SSH login held by a `check` rule may proceed
    /// (capability version 2).
    SshCheck(SshCheckRequest),
    /// A piece of a finished SSH session recording (capability version 3).
    SshRecording(SshRecordingChunk),
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
    /// An answer to a [`ClientMessage::SshCheck`] (`pending`, then final).
    SshCheck(SshCheckDecision),
    /// The answer to every [`ClientMessage::SshRecording`] chunk.
    SshRecording(SshRecordingAck),
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
    /// When to try again, in milliseconds from the answer (set with
    /// [`RefusalReason::ServerBusy`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
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
    /// The server is at its registration capacity; try again after
    /// [`Refusal::retry_after_ms`]. Older clients decode it as `Other`.
    ServerBusy,
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
    /// The node's home relay region, if it has one yet
    /// ([`EndpointUpdate::home_relay`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<u16>,
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
    /// The relay region the node is connected to and can be reached
    /// through (its home relay, chosen by latency); `None` while it has
    /// none. Peers send to it there until a direct path works.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_relay: Option<u16>,
}

/// SSH check mode: the destination node of an SSH login that a `check`
/// rule holds asks control whether the tailnet user has re-authenticated
/// recently enough (capability version 2; docs/PROTOCOL.md §"SSH check").
///
/// The node picks `check_id` (32 random lowercase hex digits) so it can show
/// the URL `<server>/a/<check_id>` to the SSH client before control answers;
/// control registers the check under that id, or refuses an id it already
/// knows. The answer is one [`SshCheckDecision`] with
/// [`SshCheckVerdict::Pending`] and later exactly one with `accept` or
/// `reject`, or a single `accept`/`reject` when control decides at once.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshCheckRequest {
    /// Chosen by the node; echoed in every decision.
    pub request_id: u64,
    /// The node key of the asking (destination) node; control checks it
    /// belongs to the machine that authenticated the channel.
    pub node_key: NodePublic,
    /// The re-authentication id the node shows as `<server>/a/<check_id>`.
    pub check_id: String,
    /// The node the SSH connection comes from.
    pub src_node: NodeId,
    /// The tailnet user behind it, as the asking node's netmap says
    /// (control checks it against its own records).
    pub src_user: UserId,
    /// The login name the SSH client asked for.
    pub ssh_user: String,
    /// The local account the session would run as.
    pub local_user: String,
    /// The rule's `checkPeriod` in milliseconds: an approval this recent
    /// (by the same user, for the same source node) is accepted at once, and
    /// a new one is good for this long. 0: always ask.
    pub check_period_ms: u64,
    /// How long the node holds the SSH connection, in milliseconds; control
    /// gives up (rejects) after the smaller of this and its own bound.
    pub max_wait_ms: u64,
}

/// The answer to an [`SshCheckRequest`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshCheckDecision {
    /// The request's id.
    pub request_id: u64,
    /// Accept, reject, or wait.
    pub verdict: SshCheckVerdict,
}

/// What control says about an SSH check.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SshCheckVerdict {
    /// The user must re-authenticate at `auth_url`; a final `accept` or
    /// `reject` follows on the same connection, at the latest at `expires`.
    Pending {
        /// Where the user approves (`<server>/a/<check_id>`).
        auth_url: String,
        /// When control gives up and rejects.
        expires: UnixMillis,
    },
    /// Accept; the approval backs further logins until `until`.
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

impl SshCheckVerdict {
    /// Returns whether this is the last decision for its request.
    pub fn is_final(&self) -> bool {
        !matches!(self, SshCheckVerdict::Pending { .. })
    }
}

/// The most bytes of a recording one [`SshRecordingChunk`] carries (they
/// travel as base64, so a chunk stays well below the server's 64 KiB
/// message bound).
pub const SSH_RECORDING_CHUNK: usize = 16 << 10;

/// A piece of a finished SSH session recording, uploaded by the node that
/// recorded it (capability version 3; docs/PROTOCOL.md §"SSH recordings").
///
/// The node sends the file in order, one chunk at a time, each answered by
/// an [`SshRecordingAck`]; the last chunk carries `done`, and control then
/// keeps the file and indexes it. A chunk at offset 0 starts the upload
/// over (a retry after a lost connection).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshRecordingChunk {
    /// The node key of the recording node; control checks it belongs to
    /// the machine that authenticated the channel.
    pub node_key: NodePublic,
    /// The recording's id (32 lowercase hex digits).
    pub id: String,
    /// Where `data` goes in the file; must be what control holds so far.
    pub offset: u64,
    /// At most [`SSH_RECORDING_CHUNK`] bytes, base64 in JSON.
    #[serde(with = "b64")]
    pub data: Vec<u8>,
    /// On the last chunk: what the recording is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<SshRecordingInfo>,
}

/// What a recording is of, as the recording node saw it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshRecordingInfo {
    /// Who logged in: a user login, tags, or `local uid N`.
    pub src_user: String,
    /// The source node's name.
    pub src_node: String,
    /// The source node's tailnet address.
    pub src_addr: String,
    /// The login name the client asked for.
    pub ssh_user: String,
    /// The local account the session ran as.
    pub local_user: String,
    /// `shell` or `exec`.
    pub kind: String,
    /// The command of an exec session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Whether input was recorded too.
    pub input: bool,
    /// When the session started.
    pub started: UnixMillis,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<UnixMillis>,
    /// Why the recording stopped before the session did, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Control's answer to an [`SshRecordingChunk`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SshRecordingAck {
    /// The recording's id.
    pub id: String,
    /// How many bytes control holds (the next chunk's offset).
    pub received: u64,
    /// The whole recording is stored (the answer to the `done` chunk).
    #[serde(default)]
    pub stored: bool,
    /// Refused (and nothing kept); for people. Sending it again will not
    /// help unless what the message names changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// Returns whether `id` has the form of a login or check id: 32 lowercase
/// hex digits.
pub fn is_auth_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_recording_chunks_carry_base64_data_and_refuse_bad_base64() {
        let chunk = SshRecordingChunk {
            node_key: crate::key::NodePrivate::from_bytes([3; 32]).public(),
            id: "0123456789abcdef0123456789abcdef".into(),
            offset: 5,
            data: b"{\"o\"}\n\xff".to_vec(),
            done: None,
        };
        let json = serde_json::to_string(&ClientMessage::SshRecording(chunk.clone())).unwrap();
        assert!(
            json.contains(r#""offset":5,"data":"eyJvIn0K/w==""#),
            "{json}"
        );
        assert!(!json.contains("done"), "{json}");
        let back: ClientMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, ClientMessage::SshRecording(chunk));
        let bad = json.replace("eyJvIn0K/w==", "not base64!");
        let e = serde_json::from_str::<ClientMessage>(&bad).unwrap_err();
        assert!(e.to_string().contains("invalid base64"), "{e}");
        let ack: ServerMessage =
            serde_json::from_str(r#"{"ssh_recording":{"id":"x","received":7}}"#).unwrap();
        assert_eq!(
            ack,
            ServerMessage::SshRecording(SshRecordingAck {
                id: "x".into(),
                received: 7,
                stored: false,
                refused: None,
            })
        );
    }

    #[test]
    fn ssh_check_decisions_have_a_stable_json_shape() {
        let pending = ServerMessage::SshCheck(SshCheckDecision {
            request_id: 7,
            verdict: SshCheckVerdict::Pending {
                auth_url: "http://h/a/0123456789abcdef0123456789abcdef".into(),
                expires: UnixMillis(5),
            },
        });
        let json = serde_json::to_string(&pending).unwrap();
        assert_eq!(
            json,
            r#"{"ssh_check":{"request_id":7,"verdict":{"pending":{"auth_url":"http://h/a/0123456789abcdef0123456789abcdef","expires":5}}}}"#
        );
        let back: ServerMessage = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pending);
        let accept = SshCheckVerdict::Accept {
            until: UnixMillis(9),
        };
        assert!(accept.is_final());
        assert!(
            !SshCheckVerdict::Pending {
                auth_url: String::new(),
                expires: UnixMillis(0)
            }
            .is_final()
        );
    }

    #[test]
    fn auth_ids_are_32_lowercase_hex_digits() {
        assert!(is_auth_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_auth_id("0123456789ABCDEF0123456789abcdef"));
        assert!(!is_auth_id("0123456789abcdef"));
        assert!(!is_auth_id("../../etc/passwd0123456789abcdef0"));
    }
}
