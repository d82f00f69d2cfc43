//! The two HTTP exchanges of the protocol: `GET /key` and the
//! `POST /control` upgrade (docs/PROTOCOL.md §3–4), over TCP for `http://`
//! and over TLS ([`crate::tls`]) for `https://`. After the upgrade the
//! connection is a plain byte stream, handed back with whatever bytes the
//! HTTP layer already read past the `101` answer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use weft_control_proto::UpgradeRequest;
use weft_control_proto::upgrade::{self, CONTROL_PATH, KEY_PATH, KEY_VERSION_PARAM};
use weft_types::CapabilityVersion;
use weft_types::control::KeyResponse;

use crate::{ClientError, ControlUrl, Io};

/// The default time allowed for the TCP connection and each HTTP exchange.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest `GET /key` body or refusal body read (64 KiB).
const MAX_BODY: usize = 64 << 10;

/// Fetches the server's static key and capability versions (`GET /key`).
///
/// Over `http://` the answer is not authenticated; pin it only on first
/// contact (trust on first use) or fetch it over `https://`.
///
/// # Errors
/// [`ClientError::Unreachable`], [`ClientError::BadHttp`] for another
/// status or a body that is not the key document, [`ClientError::Tls`]
/// when TLS fails.
pub async fn fetch_key(url: &ControlUrl, timeout: Duration) -> Result<KeyResponse, ClientError> {
    let target = format!(
        "{}?{KEY_VERSION_PARAM}={}",
        url.path(KEY_PATH),
        CapabilityVersion::CURRENT
    );
    let req = http::Request::get(target)
        .header(http::header::HOST, url.host_header())
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::unreachable(url.as_str(), e))?;
    let work = async {
        let mut sender = handshake(url).await?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::unreachable(url.as_str(), e))?;
        let status = resp.status();
        let body = read_body(url, resp.into_body()).await?;
        let bad = |detail: String| ClientError::BadHttp {
            url: url.to_string(),
            what: "GET /key",
            detail,
        };
        if status != http::StatusCode::OK {
            return Err(bad(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            )));
        }
        serde_json::from_slice::<KeyResponse>(&body).map_err(|e| {
            bad(format!(
                "not a key document ({e}); is this a weft-control server?"
            ))
        })
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        ClientError::unreachable(url.as_str(), format!("no answer within {timeout:?}"))
    })?
}

/// Sends the upgrade request and returns the raw connection after `101
/// Switching Protocols`, with the bytes already read past the answer (the
/// start of the handshake response frame, if it came in the same segment).
///
/// # Errors
/// [`ClientError::Unreachable`], [`ClientError::Upgrade`] with the
/// server's reason when it refused.
pub async fn upgrade(
    url: &ControlUrl,
    request: &UpgradeRequest,
    timeout: Duration,
) -> Result<(Box<dyn Io>, Bytes), ClientError> {
    let mut builder = http::Request::post(url.path(CONTROL_PATH))
        .header(http::header::HOST, url.host_header())
        .header(http::header::CONTENT_LENGTH, "0");
    for (name, value) in request.headers() {
        builder = builder.header(name, value);
    }
    let req = builder
        .body(Empty::<Bytes>::new())
        .map_err(|e| ClientError::unreachable(url.as_str(), e))?;
    let work = async {
        let (mut sender, conn) = handshake_parts(url).await?;
        let conn_task = tokio::spawn(conn.with_upgrades());
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::unreachable(url.as_str(), e))?;
        let status = resp.status().as_u16();
        let upgrade_header = resp
            .headers()
            .get(http::header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status != 101 {
            let body = read_body(url, resp.into_body()).await.unwrap_or_default();
            let text = String::from_utf8_lossy(&body);
            let refused = upgrade::check_response(status, upgrade_header.as_deref(), &text);
            conn_task.abort();
            return Err(refusal(url, refused));
        }
        upgrade::check_response(status, upgrade_header.as_deref(), "").map_err(|source| {
            ClientError::Upgrade {
                url: url.to_string(),
                source,
            }
        })?;
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::unreachable(url.as_str(), e))?;
        let parts = upgraded
            .downcast::<TokioIo<Box<dyn Io>>>()
            .map_err(|_| ClientError::unreachable(url.as_str(), "upgrade lost the TCP stream"))?;
        Ok((parts.io.into_inner(), parts.read_buf))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| {
        ClientError::unreachable(url.as_str(), format!("no answer within {timeout:?}"))
    })?
}

fn refusal(url: &ControlUrl, r: Result<(), weft_control_proto::UpgradeRefused>) -> ClientError {
    match r {
        Err(source) => ClientError::Upgrade {
            url: url.to_string(),
            source,
        },
        Ok(()) => ClientError::unreachable(url.as_str(), "upgrade refused"),
    }
}

/// Opens the TCP connection (and TLS for `https://`, trusting the system
/// roots and the URL's CA file).
///
/// # Errors
/// [`ClientError::Unreachable`] for TCP, [`ClientError::Tls`] for TLS.
pub async fn connect(url: &ControlUrl) -> Result<Box<dyn Io>, ClientError> {
    let tcp = connect_tcp(url).await?;
    if !url.is_tls() {
        return Ok(Box::new(tcp));
    }
    let tls_error = |detail: String| ClientError::Tls {
        url: url.to_string(),
        detail,
    };
    let config = crate::tls::client_config(url.ca_file()).map_err(|e| tls_error(e.to_string()))?;
    let name = rustls_pki_types::ServerName::try_from(url.host().to_owned())
        .map_err(|e| tls_error(format!("{:?} is not a TLS server name: {e}", url.host())))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| {
            let hint = match url.ca_file() {
                Some(ca) => format!(
                    "; the server's certificate must be for {} and issued by a system CA or the one in {}",
                    url.host(),
                    ca.display()
                ),
                None => " (for a server with a private CA, pass the CA with --login-server-ca FILE)"
                    .to_owned(),
            };
            tls_error(format!("TLS handshake failed: {e}{hint}"))
        })?;
    Ok(Box::new(stream))
}

/// Opens the TCP connection.
async fn connect_tcp(url: &ControlUrl) -> Result<TcpStream, ClientError> {
    let tcp = TcpStream::connect((url.host(), url.port()))
        .await
        .map_err(|e| ClientError::unreachable(url.as_str(), io_cause(&e)))?;
    // Small control messages should not wait for Nagle.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;
type Conn = hyper::client::conn::http1::Connection<TokioIo<Box<dyn Io>>, Empty<Bytes>>;

async fn handshake_parts(url: &ControlUrl) -> Result<(Sender, Conn), ClientError> {
    let io = connect(url).await?;
    hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ClientError::unreachable(url.as_str(), e))
}

async fn handshake(url: &ControlUrl) -> Result<Sender, ClientError> {
    let (sender, conn) = handshake_parts(url).await?;
    tokio::spawn(async move {
        // The connection ends with the request; its error is the request's.
        let _ = conn.await;
    });
    Ok(sender)
}

async fn read_body(url: &ControlUrl, body: hyper::body::Incoming) -> Result<Bytes, ClientError> {
    Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|e| ClientError::unreachable(url.as_str(), e))
}

/// Describes an I/O error the way people know it ("connection refused").
pub(crate) fn io_cause(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        std::io::ErrorKind::TimedOut => "timed out".to_owned(),
        std::io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        _ => e.to_string(),
    }
}
