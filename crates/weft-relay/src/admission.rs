//! Admission: which node keys may use the relay. Deny by default.
//!
//! The server asks its [`Admission`] at every login, after the client proved
//! it holds the key (the `ClientInfo` box opened), and — when
//! [`crate::RelayConfig::reverify_every`] is set — again for every connected
//! key on that period, closing the connections of keys no longer allowed.
//! An owner that learns about changes as they happen (weft-control, from its
//! live state) implements `verify` from that state and calls
//! [`crate::RelayServer::revoke`] when a node is deleted, expires or gets a
//! new key, instead of polling.
//!
//! Implementations here:
//! * [`AllowedKeys`]: a set kept by the owner (`allow`, `disallow`,
//!   `replace`); what weft-control can feed from its state.
//! * [`RestAdmission`]: asks control's admin API, for the standalone binary
//!   (`POST <control>/api/v1/relay/verify`, docs/RELAY.md).
//! * [`AdmitAnyKeyInsecure`]: lets every key in. Only for probing with
//!   Tailscale's `derpprobe`, whose clients use random keys; never a
//!   default.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use weft_types::NodePublic;
use zeroize::Zeroizing;

use crate::net::{self, Target};

/// What [`Admission::verify`] returns: the subset of the asked keys that may
/// use the relay (keys not in it are refused).
pub type Verdict = Result<BTreeSet<NodePublic>, AdmissionError>;

/// The boxed future of [`Admission::verify`] (object-safe, so a server holds
/// an `Arc<dyn Admission>`).
pub type VerifyFuture<'a> = Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;

/// Decides which node keys may use the relay.
pub trait Admission: Send + Sync + 'static {
    /// Returns the subset of `keys` allowed now. An error means "cannot
    /// tell": logins are refused, connected clients stay (a control outage
    /// does not cut the relay).
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> VerifyFuture<'a>;
}

/// Why admission could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// The admission source could not be asked or gave no usable answer.
    #[error("admission check failed: {0}")]
    Unavailable(String),
    /// The admission client is misconfigured.
    #[error("admission configuration: {0}")]
    Config(String),
}

/// Admits every key. For tests with clients whose keys are not in any
/// tailnet (Tailscale's `derpprobe` uses random keys). The name is loud on
/// purpose: a relay with it is open to anyone.
#[derive(Debug, Default, Clone, Copy)]
pub struct AdmitAnyKeyInsecure;

impl Admission for AdmitAnyKeyInsecure {
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> VerifyFuture<'a> {
        Box::pin(std::future::ready(Ok(keys.iter().copied().collect())))
    }
}

/// A set of allowed keys the owner keeps up to date. Cheap to clone (the
/// clones share the set). Removing a key does not close its connections:
/// call [`crate::RelayServer::revoke`] too.
#[derive(Debug, Default, Clone)]
pub struct AllowedKeys {
    set: Arc<RwLock<BTreeSet<NodePublic>>>,
}

impl AllowedKeys {
    /// Creates an empty set (nobody admitted).
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits `key`.
    pub fn allow(&self, key: NodePublic) {
        self.write().insert(key);
    }

    /// Stops admitting `key`.
    pub fn disallow(&self, key: &NodePublic) {
        self.write().remove(key);
    }

    /// Replaces the whole set.
    pub fn replace(&self, keys: impl IntoIterator<Item = NodePublic>) {
        *self.write() = keys.into_iter().collect();
    }

    /// Returns whether `key` is admitted.
    pub fn contains(&self, key: &NodePublic) -> bool {
        self.set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeSet<NodePublic>> {
        self.set
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Admission for AllowedKeys {
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> VerifyFuture<'a> {
        let set = self
            .set
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let allowed = keys.iter().filter(|k| set.contains(k)).copied().collect();
        Box::pin(std::future::ready(Ok(allowed)))
    }
}

/// The path of the verify endpoint under the control URL.
pub const VERIFY_PATH: &str = "/api/v1/relay/verify";

/// At most this many keys per verify request.
const VERIFY_BATCH: usize = 1000;

/// The largest verify answer read (1 MiB).
const MAX_VERIFY_BODY: usize = 1 << 20;

/// The request body of `POST /api/v1/relay/verify`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyRequest {
    /// The keys to check, `nodekey:<hex>`.
    pub node_keys: Vec<NodePublic>,
}

/// The answer of `POST /api/v1/relay/verify`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VerifyResponse {
    /// The asked keys that may use the relay; the others are refused.
    pub allowed: Vec<NodePublic>,
}

/// Admission by control's admin REST API: `POST <control>/api/v1/relay/verify`
/// with `Authorization: Bearer <api key>` and `{"node_keys":[…]}`, answered
/// `200 {"allowed":[…]}`. Over `https://` with the system's roots or a CA
/// file.
pub struct RestAdmission {
    target: Target,
    path: String,
    api_key: Zeroizing<String>,
    timeout: Duration,
}

impl std::fmt::Debug for RestAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestAdmission")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RestAdmission {
    /// Creates the client for control at `control_url` (`http://` or
    /// `https://`, with an optional path prefix), authenticating with
    /// `api_key`, trusting `ca_file` in addition to the usual roots.
    ///
    /// # Errors
    /// [`AdmissionError::Config`] for a bad URL or CA file.
    pub fn new(
        control_url: &str,
        api_key: Zeroizing<String>,
        ca_file: Option<&Path>,
    ) -> Result<Self, AdmissionError> {
        let url: weft_client::ControlUrl = control_url
            .parse()
            .map_err(|e: weft_client::ClientError| AdmissionError::Config(e.to_string()))?;
        let tls = if url.is_tls() {
            Some(
                crate::tls::client_config(ca_file)
                    .map_err(|e| AdmissionError::Config(e.to_string()))?,
            )
        } else {
            None
        };
        Ok(RestAdmission {
            target: Target {
                host: url.host().to_owned(),
                port: url.port(),
                addrs: Vec::new(),
                tls,
            },
            path: url.path(VERIFY_PATH),
            api_key,
            timeout: Duration::from_secs(5),
        })
    }

    /// Sets the time allowed per request (default 5 s).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn ask(&self, keys: &[NodePublic]) -> Verdict {
        let unavailable = |what: &str, e: &dyn std::fmt::Display| {
            AdmissionError::Unavailable(format!(
                "{what} {}:{}{}: {e}",
                self.target.host, self.target.port, self.path
            ))
        };
        let body = serde_json::to_vec(&VerifyRequest {
            node_keys: keys.to_vec(),
        })
        .map_err(|e| unavailable("encoding the request for", &e))?;
        let req = http::Request::post(&self.path)
            .header(http::header::HOST, self.target.host_header())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.api_key.as_str()),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unavailable("building the request for", &e))?;
        let work = async {
            let stream = net::connect(&self.target, self.timeout)
                .await
                .map_err(|e| unavailable("connecting to", &e))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| unavailable("HTTP to", &e))?;
            tokio::spawn(async move {
                // The connection ends with the request; its error is the request's.
                let _ = conn.await;
            });
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| unavailable("POST", &e))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_VERIFY_BODY)
                .collect()
                .await
                .map_err(|e| unavailable("reading the answer of", &e))?
                .to_bytes();
            if status != http::StatusCode::OK {
                let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
                return Err(unavailable(
                    "POST",
                    &format!("HTTP {status}: {}", text.trim()),
                ));
            }
            let answer: VerifyResponse =
                serde_json::from_slice(&body).map_err(|e| unavailable("the answer of", &e))?;
            let asked: BTreeSet<&NodePublic> = keys.iter().collect();
            Ok(answer
                .allowed
                .into_iter()
                .filter(|k| asked.contains(k))
                .collect())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| unavailable("POST", &"timed out"))?
    }
}

impl Admission for RestAdmission {
    fn verify<'a>(&'a self, keys: &'a [NodePublic]) -> VerifyFuture<'a> {
        Box::pin(async move {
            let mut allowed = BTreeSet::new();
            for chunk in keys.chunks(VERIFY_BATCH) {
                allowed.extend(self.ask(chunk).await?);
            }
            Ok(allowed)
        })
    }
}
