//! [`ControlClient`] over `weft-client`: TCP, the HTTP upgrade and the
//! Noise channel to a real control server.

use std::time::Duration;

use futures::StreamExt as _;
use futures::future::BoxFuture;
use tokio::sync::mpsc;
use weft_client::{ClientError, ConnectOptions, ControlUrl, Target};
use weft_types::MachinePublic;
use weft_types::control::{MapRequest, RegisterRequest, RegisterResponse};

use super::control::{ControlClient, ControlError, ControlTarget, MapStream, MapUpdate};

/// How long `GET /key` may take.
const KEY_TIMEOUT: Duration = Duration::from_secs(10);

/// The real control client.
#[derive(Debug, Clone, Default)]
pub struct WeftClient {
    opts: ConnectOptions,
}

impl WeftClient {
    /// Creates a client with the library's default timeouts.
    pub fn new() -> Self {
        Self::default()
    }
}

fn convert(e: ClientError) -> ControlError {
    match e {
        ClientError::Server { url, code, message } => ControlError::Server { url, code, message },
        other => ControlError::Client(other.to_string()),
    }
}

fn target(t: &ControlTarget) -> Result<Target, ControlError> {
    let url: ControlUrl = t.url.parse().map_err(convert)?;
    Ok(Target {
        url,
        machine_key: t.machine_key.clone(),
        server_key: t.server_key,
    })
}

impl ControlClient for WeftClient {
    fn server_key(&self, url: &str) -> BoxFuture<'_, Result<MachinePublic, ControlError>> {
        let parsed: Result<ControlUrl, _> = url.parse();
        Box::pin(async move {
            let url = parsed.map_err(convert)?;
            let key = weft_client::fetch_key(&url, KEY_TIMEOUT)
                .await
                .map_err(convert)?;
            Ok(key.public_key)
        })
    }

    fn register(
        &self,
        t: &ControlTarget,
        req: RegisterRequest,
    ) -> BoxFuture<'_, Result<RegisterResponse, ControlError>> {
        let target = target(t);
        Box::pin(async move {
            weft_client::register(&target?, req, &self.opts)
                .await
                .map_err(convert)
        })
    }

    fn map(
        &self,
        t: &ControlTarget,
        req: MapRequest,
        updates: mpsc::UnboundedReceiver<MapUpdate>,
    ) -> BoxFuture<'_, Result<MapStream, ControlError>> {
        let target = target(t);
        Box::pin(async move {
            let events = weft_client::map(&target?, req, updates, &self.opts)
                .await
                .map_err(convert)?;
            let stream: MapStream = Box::pin(events.map(|r| r.map_err(convert)));
            Ok(stream)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_server_is_named_with_the_cause() {
        // A port on loopback where nothing listens.
        let sock = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = sock.local_addr().unwrap().port();
        drop(sock);
        let url = format!("http://127.0.0.1:{port}");
        let err = WeftClient::new()
            .server_key(&url)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&url), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
    }

    #[tokio::test]
    async fn a_bad_url_is_refused_with_a_message() {
        let err = WeftClient::new()
            .server_key("ftp://x")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("ftp://x"), "{err}");
    }
}
