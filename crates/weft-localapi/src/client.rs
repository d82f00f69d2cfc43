//! The typed LocalAPI client (HTTP/1.1 over the daemon's unix socket).

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::PREFIX;
use crate::types::{
    DebugPrefs, DnsQueryResult, DnsStatus, ErrorBody, NetcheckReport, Notify, PingRequest,
    PingResult, Prefs, PrefsPatch, ProfileSummary, StartRequest, Status, WhoIs,
};

/// The longest single `watch` line accepted (a defensive bound).
const MAX_WATCH_LINE: usize = 1 << 20;

/// Why a LocalAPI call failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// The socket could not be reached: the daemon is not running, or the
    /// path is wrong, or permissions forbid it.
    #[error(
        "cannot connect to weftd at {path}: {source} (is weftd running? set --socket or WEFT_SOCKET to choose another daemon)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon answered with an error status.
    #[error("{message}")]
    Daemon { status: u16, message: String },
    /// The HTTP exchange failed midway.
    #[error("talking to weftd failed: {0}")]
    Transport(String),
    /// The daemon's answer was not what this client understands.
    #[error("unexpected answer from weftd: {0}")]
    Decode(String),
}

impl LocalApiError {
    /// Returns the HTTP status for daemon errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            LocalApiError::Daemon { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// A client for one daemon's LocalAPI.
#[derive(Debug, Clone)]
pub struct LocalClient {
    socket: PathBuf,
}

impl LocalClient {
    /// Creates a client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        LocalClient {
            socket: socket.into(),
        }
    }

    /// Returns the socket path this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET status`.
    ///
    /// # Errors
    /// [`LocalApiError`] if the daemon is unreachable or answers with an error.
    pub async fn status(&self) -> Result<Status, LocalApiError> {
        self.call(Method::GET, "status", None::<&()>).await
    }

    /// `GET prefs`.
    ///
    /// # Errors
    /// As [`LocalClient::status`].
    pub async fn prefs(&self) -> Result<Prefs, LocalApiError> {
        self.call(Method::GET, "prefs", None::<&()>).await
    }

    /// `PATCH prefs`: changes only the fields set in `patch`; returns the result.
    ///
    /// # Errors
    /// As [`LocalClient::status`]; 403 for callers who may only read.
    pub async fn edit_prefs(&self, patch: &PrefsPatch) -> Result<Prefs, LocalApiError> {
        self.call(Method::PATCH, "prefs", Some(patch)).await
    }

    /// `POST start`.
    ///
    /// # Errors
    /// As [`LocalClient::edit_prefs`].
    pub async fn start(&self, req: &StartRequest) -> Result<(), LocalApiError> {
        self.call_empty(Method::POST, "start", Some(req)).await
    }

    /// `POST login-interactive`: asks control for an auth URL (it arrives on `watch`).
    ///
    /// # Errors
    /// As [`LocalClient::edit_prefs`].
    pub async fn login_interactive(&self) -> Result<(), LocalApiError> {
        self.call_empty(Method::POST, "login-interactive", None::<&()>)
            .await
    }

    /// `POST logout`: expires the node key at control and removes the profile.
    ///
    /// # Errors
    /// As [`LocalClient::edit_prefs`].
    pub async fn logout(&self) -> Result<(), LocalApiError> {
        self.call_empty(Method::POST, "logout", None::<&()>).await
    }

    /// `GET profiles`.
    ///
    /// # Errors
    /// As [`LocalClient::status`].
    pub async fn profiles(&self) -> Result<Vec<ProfileSummary>, LocalApiError> {
        self.call(Method::GET, "profiles", None::<&()>).await
    }

    /// `PUT profiles`: creates a new empty profile and makes it current.
    ///
    /// # Errors
    /// As [`LocalClient::edit_prefs`].
    pub async fn new_profile(&self) -> Result<ProfileSummary, LocalApiError> {
        self.call(Method::PUT, "profiles", None::<&()>).await
    }

    /// `POST profiles/{id}`: switches to another profile (no re-auth).
    ///
    /// # Errors
    /// As [`LocalClient::edit_prefs`]; 404 for an unknown id.
    pub async fn switch_profile(&self, id: &str) -> Result<ProfileSummary, LocalApiError> {
        self.call(Method::POST, &format!("profiles/{id}"), None::<&()>)
            .await
    }

    /// `DELETE profiles/{id}`.
    ///
    /// # Errors
    /// As [`LocalClient::switch_profile`].
    pub async fn delete_profile(&self, id: &str) -> Result<(), LocalApiError> {
        self.call_empty(Method::DELETE, &format!("profiles/{id}"), None::<&()>)
            .await
    }

    /// `POST ping`: one disco ping.
    ///
    /// # Errors
    /// As [`LocalClient::status`]; a timeout is a daemon error with status 504.
    pub async fn ping(&self, req: &PingRequest) -> Result<PingResult, LocalApiError> {
        self.call(Method::POST, "ping", Some(req)).await
    }

    /// `GET netcheck`: runs netcheck and returns its report.
    ///
    /// # Errors
    /// As [`LocalClient::status`]; 409 while the node has no netmap (no
    /// relay map to measure), 504 when the run does not finish in time.
    pub async fn netcheck(&self) -> Result<NetcheckReport, LocalApiError> {
        self.call(Method::GET, "netcheck", None::<&()>).await
    }

    /// `GET whois?addr=IP`.
    ///
    /// # Errors
    /// As [`LocalClient::status`]; 404 when no node has the address.
    pub async fn whois(&self, addr: IpAddr) -> Result<WhoIs, LocalApiError> {
        self.call(Method::GET, &format!("whois?addr={addr}"), None::<&()>)
            .await
    }

    /// `GET dns/status`: MagicDNS and the OS's DNS configuration.
    ///
    /// # Errors
    /// As [`LocalClient::status`].
    pub async fn dns_status(&self) -> Result<DnsStatus, LocalApiError> {
        self.call(Method::GET, "dns/status", None::<&()>).await
    }

    /// `GET dns/query?name=NAME&type=TYPE`: asks the daemon's MagicDNS
    /// resolver.
    ///
    /// # Errors
    /// As [`LocalClient::status`]; 400 for a name or type that does not
    /// parse, 503 when the resolver is not running.
    pub async fn dns_query(
        &self,
        name: &str,
        qtype: &str,
    ) -> Result<DnsQueryResult, LocalApiError> {
        let path = format!(
            "dns/query?name={}&type={}",
            form_escape(name),
            form_escape(qtype)
        );
        self.call(Method::GET, &path, None::<&()>).await
    }

    /// `GET debug/prefs`.
    ///
    /// # Errors
    /// As [`LocalClient::status`].
    pub async fn debug_prefs(&self) -> Result<DebugPrefs, LocalApiError> {
        self.call(Method::GET, "debug/prefs", None::<&()>).await
    }

    /// `GET watch`: the event stream; the first event is a snapshot.
    ///
    /// # Errors
    /// As [`LocalClient::status`].
    pub async fn watch(&self) -> Result<WatchStream, LocalApiError> {
        let resp = self.send(Method::GET, "watch", None).await?;
        let resp = check_status(resp).await?;
        Ok(WatchStream {
            body: resp.into_body(),
            buf: BytesMut::new(),
        })
    }

    async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R, LocalApiError> {
        let bytes = body.map(encode).transpose()?;
        let resp = check_status(self.send(method, path, bytes).await?).await?;
        let body = collect(resp).await?;
        serde_json::from_slice(&body).map_err(|e| LocalApiError::Decode(e.to_string()))
    }

    async fn call_empty<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<(), LocalApiError> {
        let bytes = body.map(encode).transpose()?;
        check_status(self.send(method, path, bytes).await?).await?;
        Ok(())
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, LocalApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| LocalApiError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| LocalApiError::Transport(e.to_string()))?;
        tokio::spawn(async move {
            // The connection future ends when the response body is done; its
            // error (if any) already surfaced through the request.
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(format!("{PREFIX}{path}"))
            .header(hyper::header::HOST, "local-weftd.sock")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| LocalApiError::Transport(e.to_string()))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| LocalApiError::Transport(e.to_string()))
    }
}

fn encode<B: Serialize>(body: &B) -> Result<Bytes, LocalApiError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| LocalApiError::Decode(e.to_string()))
}

async fn collect(resp: Response<Incoming>) -> Result<Bytes, LocalApiError> {
    resp.into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| LocalApiError::Transport(e.to_string()))
}

async fn check_status(resp: Response<Incoming>) -> Result<Response<Incoming>, LocalApiError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = collect(resp).await?;
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| default_message(status, &body));
    Err(LocalApiError::Daemon {
        status: status.as_u16(),
        message,
    })
}

fn default_message(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

/// The `watch` event stream.
pub struct WatchStream {
    body: Incoming,
    buf: BytesMut,
}

impl WatchStream {
    /// Returns the next event, or `None` when the daemon closed the stream.
    ///
    /// # Errors
    /// [`LocalApiError::Transport`] if the stream broke, [`LocalApiError::Decode`]
    /// for a line this client does not understand.
    pub async fn next(&mut self) -> Result<Option<Notify>, LocalApiError> {
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let line = self.buf.split_to(pos + 1);
                let line = &line[..pos];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return serde_json::from_slice(line)
                    .map(Some)
                    .map_err(|e| LocalApiError::Decode(e.to_string()));
            }
            if self.buf.len() > MAX_WATCH_LINE {
                return Err(LocalApiError::Decode("watch line too long".into()));
            }
            let Some(frame) = self.body.frame().await else {
                return Ok(None);
            };
            let frame = frame.map_err(|e| LocalApiError::Transport(e.to_string()))?;
            if let Ok(mut data) = frame.into_data() {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    self.buf.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            }
        }
    }
}

/// Escapes a query-string value (unreserved characters pass; everything
/// else is percent-encoded).
fn form_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_socket_names_the_path_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.sock");
        let err = LocalClient::new(&path).status().await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("is weftd running?"), "{msg}");
    }

    #[test]
    fn a_patch_changes_only_the_fields_it_names() {
        let prefs = Prefs {
            run_ssh: true,
            hostname: Some("a".into()),
            ..Prefs::default()
        };
        let patch = PrefsPatch {
            shields_up: Some(true),
            ..PrefsPatch::default()
        };
        let out = patch.apply_to(&prefs);
        assert!(out.shields_up && out.run_ssh);
        assert_eq!(out.hostname.as_deref(), Some("a"));
        let clear = PrefsPatch {
            hostname: Some(None),
            ..PrefsPatch::default()
        };
        assert_eq!(clear.apply_to(&prefs).hostname, None);
    }

    #[test]
    fn a_patch_carries_only_what_it_changes_and_null_clears() {
        let clear = PrefsPatch {
            hostname: Some(None),
            ..PrefsPatch::default()
        };
        let json = serde_json::to_string(&clear).unwrap();
        assert_eq!(json, r#"{"hostname":null}"#);
        assert_eq!(serde_json::from_str::<PrefsPatch>(&json).unwrap(), clear);
        let none: PrefsPatch = serde_json::from_str("{}").unwrap();
        assert!(none.is_empty());
        let set: PrefsPatch = serde_json::from_str(r#"{"nickname":"work"}"#).unwrap();
        assert_eq!(set.nickname, Some(Some("work".into())));
    }

    #[test]
    fn notify_events_are_tagged_json_lines() {
        let n = Notify::BrowseToUrl {
            url: "http://x/a/1".into(),
        };
        let s = serde_json::to_string(&n).unwrap();
        assert_eq!(s, r#"{"kind":"browse_to_url","url":"http://x/a/1"}"#);
        assert_eq!(serde_json::from_str::<Notify>(&s).unwrap(), n);
    }
}
