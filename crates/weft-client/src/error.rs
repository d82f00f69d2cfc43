//! The client's error type. Every variant that involves the network names
//! the control server's URL, so a log line or a CLI message says where the
//! problem is ("cannot reach control server http://198.18.0.1:8080:
//! connection refused").

use weft_control_proto::{ChannelError, MapError, UpgradeRefused};
use weft_types::control::{ErrorCode, ProtocolError};

/// Why talking to the control server failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The URL is not `http://HOST[:PORT][/PATH]` or `https://…`.
    #[error("invalid control server URL {url:?}: {reason}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TCP connection could not be made (refused, unreachable, DNS,
    /// timeout) or broke at the HTTP stage.
    #[error("cannot reach control server {url}: {cause}")]
    Unreachable {
        /// The control server URL.
        url: String,
        /// The OS or HTTP error.
        cause: String,
    },
    /// TLS to an `https://` server failed: the CA file could not be read,
    /// or the handshake failed (most often a certificate that the system
    /// roots and the `--login-server-ca` file do not vouch for).
    #[error("control server {url}: {detail}")]
    Tls {
        /// The control server URL.
        url: String,
        /// What failed, and what to do about it.
        detail: String,
    },
    /// An HTTP answer that is not what the protocol says (`GET /key` not
    /// 200, a body that is not the key document).
    #[error("control server {url} answered {what}: {detail}")]
    BadHttp {
        /// The control server URL.
        url: String,
        /// Which request (`GET /key`).
        what: &'static str,
        /// Status and body, or the parse error.
        detail: String,
    },
    /// The upgrade to the control channel was refused; the server's reason
    /// is in the message.
    #[error("control server {url}: {source}")]
    Upgrade {
        /// The control server URL.
        url: String,
        /// Status and reason.
        source: UpgradeRefused,
    },
    /// The channel failed (handshake, authentication, framing, timeouts).
    #[error("control channel to {url} failed: {source}")]
    Channel {
        /// The control server URL.
        url: String,
        /// The protocol error.
        source: ChannelError,
    },
    /// The map stream broke (out-of-sequence response, a delta that does
    /// not fit, a stall). Reconnect for a fresh full map.
    #[error("map stream from {url} broke: {source}")]
    Map {
        /// The control server URL.
        url: String,
        /// Why.
        source: MapError,
    },
    /// The server sent a fatal error and closed the channel.
    #[error("control server {url} said ({code:?}): {message}")]
    Server {
        /// The control server URL.
        url: String,
        /// For programs to branch on.
        code: ErrorCode,
        /// For people.
        message: String,
    },
    /// The server sent a message that does not fit the conversation.
    #[error("control server {url} sent an unexpected message: {what}")]
    Unexpected {
        /// The control server URL.
        url: String,
        /// What came.
        what: &'static str,
    },
    /// The server closed the channel cleanly.
    #[error("control server {url} closed the connection")]
    Closed {
        /// The control server URL.
        url: String,
    },
}

impl ClientError {
    /// Returns the server's error code, if the server sent one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Returns whether trying again later (with backoff) may help: the
    /// network, the channel, a broken stream or a server that is going away.
    /// A bad URL, a refused upgrade (wrong key, too old) or an error about
    /// this node's registration needs something else to change first.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. }
            | ClientError::Channel { .. }
            | ClientError::Map { .. }
            | ClientError::Closed { .. }
            | ClientError::Unexpected { .. } => true,
            ClientError::Server { code, .. } => matches!(
                code,
                ErrorCode::ShuttingDown | ErrorCode::Internal | ErrorCode::Replaced
            ),
            ClientError::BadUrl { .. }
            | ClientError::Tls { .. }
            | ClientError::BadHttp { .. }
            | ClientError::Upgrade { .. } => false,
        }
    }

    pub(crate) fn server(url: &str, e: ProtocolError) -> Self {
        ClientError::Server {
            url: url.to_owned(),
            code: e.code,
            message: e.message,
        }
    }

    pub(crate) fn channel(url: &str, source: ChannelError) -> Self {
        ClientError::Channel {
            url: url.to_owned(),
            source,
        }
    }

    pub(crate) fn unreachable(url: &str, cause: impl std::fmt::Display) -> Self {
        ClientError::Unreachable {
            url: url.to_owned(),
            cause: cause.to_string(),
        }
    }
}
