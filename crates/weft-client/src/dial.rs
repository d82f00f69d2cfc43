//! How the client reaches the control server: the [`Dialer`] seam.
//!
//! The protocol has two HTTP exchanges before the byte stream (`GET /key`
//! and the `POST /control` upgrade, docs/PROTOCOL.md §3–4). [`TcpDialer`]
//! does them over TCP; it is what [`crate::ConnectOptions`] uses unless told
//! otherwise. A test puts an in-memory control server behind its own
//! dialer, so everything above the byte stream (the Noise channel, the
//! conversation, the driver) is the real code.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};
use weft_control_proto::UpgradeRequest;
use weft_types::control::KeyResponse;

use crate::{ClientError, ControlUrl, http};

/// A byte stream to the control server after the upgrade.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// An upgraded connection: the stream after `101 Switching Protocols`,
/// and whatever bytes the HTTP layer already read past the answer.
pub struct Upgraded {
    /// The byte stream.
    pub io: Box<dyn Io>,
    /// Bytes read past the `101` (the start of the handshake response).
    pub leftover: Bytes,
}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

/// The two HTTP exchanges with a control server.
pub trait Dialer: Send + Sync + 'static {
    /// `GET /key`: the server's static key and capability versions.
    fn fetch_key<'a>(
        &'a self,
        url: &'a ControlUrl,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<KeyResponse, ClientError>>;

    /// `POST /control`: the upgrade carrying Noise message 1.
    fn upgrade<'a>(
        &'a self,
        url: &'a ControlUrl,
        request: &'a UpgradeRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Upgraded, ClientError>>;
}

/// HTTP/1.1 over TCP (`http://` URLs) or TLS (`https://`).
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn fetch_key<'a>(
        &'a self,
        url: &'a ControlUrl,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<KeyResponse, ClientError>> {
        Box::pin(http::fetch_key(url, timeout))
    }

    fn upgrade<'a>(
        &'a self,
        url: &'a ControlUrl,
        request: &'a UpgradeRequest,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Upgraded, ClientError>> {
        Box::pin(async move {
            let (io, leftover) = http::upgrade(url, request, timeout).await?;
            Ok(Upgraded { io, leftover })
        })
    }
}

/// A shared dialer, as [`crate::ConnectOptions`] holds it.
#[derive(Clone)]
pub struct SharedDialer(pub Arc<dyn Dialer>);

impl Default for SharedDialer {
    fn default() -> Self {
        SharedDialer(Arc::new(TcpDialer))
    }
}

impl std::fmt::Debug for SharedDialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedDialer")
    }
}
