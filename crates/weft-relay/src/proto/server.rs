//! The server side of one connection, without I/O: the login
//! ([`ServerLogin`]) and what each frame from an admitted client asks for
//! ([`classify`]).

use weft_types::{NodePrivate, NodePublic};

use super::frame::{Frame, FrameType};
use super::login::{self, ClientInfo, LoginError, ServerInfo};
use super::{NONCE_LEN, PROTOCOL_VERSION};

/// The largest `Ping` payload a server accepts (derp: 1000 bytes; the first
/// 8 are echoed).
pub const MAX_PING_LEN: usize = 1000;

/// One connection's login, as the server runs it.
///
/// 1. write [`ServerLogin::server_key_frame`];
/// 2. feed the first frame read to [`ServerLogin::handle_client_info`]: the
///    client's key, proven, and what it says about itself;
/// 3. ask admission about the key; if admitted, write
///    [`ServerLogin::server_info_frame`] before anything else.
pub struct ServerLogin<'k> {
    key: &'k NodePrivate,
    public: NodePublic,
    nonce: [u8; NONCE_LEN],
}

impl<'k> ServerLogin<'k> {
    /// Starts a login for a server holding `key`; `nonce` (random, from the
    /// driver) seals this connection's `ServerInfo`.
    pub fn new(key: &'k NodePrivate, public: NodePublic, nonce: [u8; NONCE_LEN]) -> Self {
        ServerLogin { key, public, nonce }
    }

    /// Returns the `ServerKey` frame to write first.
    pub fn server_key_frame(&self) -> Vec<u8> {
        login::server_key_frame(&self.public)
    }

    /// Checks the client's first frame: a `ClientInfo` whose box opens under
    /// the key it names.
    ///
    /// # Errors
    /// [`LoginError::UnexpectedFrame`] for any other frame, else as
    /// [`login::open_client_info`].
    pub fn handle_client_info(
        &self,
        frame: &Frame<'_>,
    ) -> Result<(NodePublic, ClientInfo), LoginError> {
        let Frame::ClientInfo { key, sealed } = frame else {
            return Err(LoginError::UnexpectedFrame {
                expected: "ClientInfo",
                got: frame.frame_type(),
            });
        };
        let info = login::open_client_info(self.key, key, sealed)?;
        Ok((*key, info))
    }

    /// Returns the `ServerInfo` frame for the admitted `client`.
    ///
    /// # Errors
    /// [`LoginError::WeakKey`] (not for a key that passed
    /// [`ServerLogin::handle_client_info`]).
    pub fn server_info_frame(&self, client: &NodePublic) -> Result<Vec<u8>, LoginError> {
        login::seal_server_info(
            self.key,
            client,
            self.nonce,
            &ServerInfo {
                version: PROTOCOL_VERSION,
                ..ServerInfo::default()
            },
        )
    }
}

/// What an admitted client's frame asks the server to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Deliver `packet` to `dst`.
    Forward {
        /// The destination key.
        dst: NodePublic,
        /// The packet.
        packet: &'a [u8],
    },
    /// Answer with `Pong(data)`.
    Pong([u8; 8]),
    /// Record whether this relay is the client's home.
    Preferred(bool),
    /// Nothing (keep-alives and frames of other types, which derp skips).
    Ignore,
}

/// A frame that ends the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A mesh frame from a client that is not a mesh peer (we run no mesh).
    #[error("{0:?} is for mesh peers only")]
    NotPermitted(FrameType),
    /// A ping with more than [`MAX_PING_LEN`] bytes.
    #[error("ping of {0} bytes is too large")]
    PingTooLarge(usize),
}

/// Returns what `frame`, from an admitted client, asks for. `payload_len` is
/// the frame's payload length (a `Ping` may carry up to [`MAX_PING_LEN`]
/// bytes, of which the first 8 are echoed).
///
/// # Errors
/// [`ProtocolError`]: the connection must be closed.
pub fn classify<'a>(frame: Frame<'a>, payload_len: usize) -> Result<Action<'a>, ProtocolError> {
    Ok(match frame {
        Frame::SendPacket { dst, packet } => Action::Forward { dst, packet },
        Frame::Ping { data } => {
            if payload_len > MAX_PING_LEN {
                return Err(ProtocolError::PingTooLarge(payload_len));
            }
            Action::Pong(data)
        }
        Frame::NotePreferred { preferred } => Action::Preferred(preferred),
        Frame::WatchConns => return Err(ProtocolError::NotPermitted(FrameType::WatchConns)),
        Frame::ClosePeer { .. } => return Err(ProtocolError::NotPermitted(FrameType::ClosePeer)),
        Frame::ForwardPacket { .. } => {
            return Err(ProtocolError::NotPermitted(FrameType::ForwardPacket));
        }
        Frame::ServerKey { .. }
        | Frame::ClientInfo { .. }
        | Frame::ServerInfo { .. }
        | Frame::RecvPacket { .. }
        | Frame::KeepAlive
        | Frame::PeerGone { .. }
        | Frame::PeerPresent { .. }
        | Frame::Pong { .. }
        | Frame::Health { .. }
        | Frame::Restarting { .. }
        | Frame::Unknown { .. } => Action::Ignore,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::login::seal_client_info;

    fn server() -> NodePrivate {
        NodePrivate::from_bytes([1; 32])
    }

    #[test]
    fn a_client_that_holds_its_key_is_let_in_and_gets_server_info() {
        let s = server();
        let login = ServerLogin::new(&s, s.public(), [5; NONCE_LEN]);
        let client = NodePrivate::from_bytes([2; 32]);
        let frame =
            seal_client_info(&client, &s.public(), [6; NONCE_LEN], &ClientInfo::weft()).unwrap();
        let (parsed, _) = Frame::decode(&frame, 1 << 20).unwrap().unwrap();
        let (key, info) = login.handle_client_info(&parsed).unwrap();
        assert_eq!(key, client.public());
        assert_eq!(info, ClientInfo::weft());
        let si = login.server_info_frame(&key).unwrap();
        let (Frame::ServerInfo { sealed }, _) = Frame::decode(&si, 1 << 20).unwrap().unwrap()
        else {
            panic!("not ServerInfo");
        };
        let back = login::open_server_info(&client, &s.public(), sealed).unwrap();
        assert_eq!(back.version, 2);
    }

    #[test]
    fn a_client_info_sealed_to_another_server_is_refused() {
        let s = server();
        let login = ServerLogin::new(&s, s.public(), [5; NONCE_LEN]);
        let client = NodePrivate::from_bytes([2; 32]);
        let other = NodePrivate::from_bytes([3; 32]).public();
        let frame = seal_client_info(&client, &other, [6; NONCE_LEN], &ClientInfo::weft()).unwrap();
        let (parsed, _) = Frame::decode(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(
            login.handle_client_info(&parsed),
            Err(LoginError::Unauthenticated)
        );
    }

    #[test]
    fn a_client_claiming_a_key_it_does_not_hold_is_refused() {
        // Sealed by key 2 but naming key 4 as its own.
        let s = server();
        let login = ServerLogin::new(&s, s.public(), [5; NONCE_LEN]);
        let holder = NodePrivate::from_bytes([2; 32]);
        let victim = NodePrivate::from_bytes([4; 32]).public();
        let mut frame =
            seal_client_info(&holder, &s.public(), [6; NONCE_LEN], &ClientInfo::weft()).unwrap();
        frame[5..37].copy_from_slice(victim.as_bytes());
        let (parsed, _) = Frame::decode(&frame, 1 << 20).unwrap().unwrap();
        assert_eq!(
            login.handle_client_info(&parsed),
            Err(LoginError::Unauthenticated)
        );
    }

    #[test]
    fn a_low_order_client_key_is_refused_before_any_box_is_opened() {
        let s = server();
        let login = ServerLogin::new(&s, s.public(), [5; NONCE_LEN]);
        // The all-zero point: the shared secret would be all zeros.
        let frame = Frame::ClientInfo {
            key: NodePublic::from_bytes([0; 32]),
            sealed: &[0; 80],
        };
        assert_eq!(login.handle_client_info(&frame), Err(LoginError::WeakKey));
    }

    #[test]
    fn any_frame_but_client_info_first_is_refused() {
        let s = server();
        let login = ServerLogin::new(&s, s.public(), [5; NONCE_LEN]);
        let frame = Frame::SendPacket {
            dst: s.public(),
            packet: b"hi",
        };
        assert_eq!(
            login.handle_client_info(&frame),
            Err(LoginError::UnexpectedFrame {
                expected: "ClientInfo",
                got: 0x04
            })
        );
    }

    #[test]
    fn frames_of_an_admitted_client_are_classified_as_derp_does() {
        let k = NodePublic::from_bytes([9; 32]);
        assert_eq!(
            classify(
                Frame::SendPacket {
                    dst: k,
                    packet: b"x"
                },
                33
            ),
            Ok(Action::Forward {
                dst: k,
                packet: b"x"
            })
        );
        assert_eq!(
            classify(Frame::Ping { data: [1; 8] }, 8),
            Ok(Action::Pong([1; 8]))
        );
        assert_eq!(
            classify(Frame::Ping { data: [1; 8] }, 1001),
            Err(ProtocolError::PingTooLarge(1001))
        );
        assert_eq!(
            classify(Frame::NotePreferred { preferred: true }, 1),
            Ok(Action::Preferred(true))
        );
        assert_eq!(
            classify(Frame::WatchConns, 0),
            Err(ProtocolError::NotPermitted(FrameType::WatchConns))
        );
        assert_eq!(
            classify(Frame::ClosePeer { peer: k }, 32),
            Err(ProtocolError::NotPermitted(FrameType::ClosePeer))
        );
        assert_eq!(classify(Frame::KeepAlive, 0), Ok(Action::Ignore));
        assert_eq!(
            classify(Frame::Unknown { frame_type: 0x77 }, 12),
            Ok(Action::Ignore)
        );
    }
}
