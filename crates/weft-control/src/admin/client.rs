//! A typed client of the admin API, over the admin socket or over HTTP
//! with an API key. The `weft-control` CLI, the tests and the load
//! generator use it. One connection per request: admin traffic is light.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::types::*;

/// Where the admin API is.
#[derive(Debug, Clone)]
pub enum AdminTarget {
    /// The admin socket of a local server.
    Socket(PathBuf),
    /// A server's REST API (`http://HOST:PORT`) with an API key.
    Http {
        /// The server URL (without `/api/v1`).
        url: String,
        /// The API key text.
        api_key: String,
    },
}

impl std::fmt::Display for AdminTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdminTarget::Socket(p) => write!(f, "the admin socket {}", p.display()),
            AdminTarget::Http { url, .. } => write!(f, "{url}"),
        }
    }
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// The server could not be reached.
    #[error("cannot reach {target}: {cause}{hint}")]
    Connect {
        /// Where.
        target: String,
        /// The OS error.
        cause: String,
        /// What to check.
        hint: &'static str,
    },
    /// The server refused the request.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Error code (`not_found`, `conflict`, `invalid`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("unexpected answer from {target}: {detail}")]
    Protocol {
        /// Where.
        target: String,
        /// What was wrong.
        detail: String,
    },
}

/// A client of one server's admin API.
///
/// How long it waits follows the operation: connecting is bounded by
/// [`CONNECT_TIMEOUT`]; an ordinary request's answer by [`ANSWER_TIMEOUT`];
/// an operation whose work grows with the tailnet (`policy set`, which
/// returns once every node's new filter is computed and queued) waits as
/// long as the server holds the connection open, so a large tailnet gets no
/// fixed cliff, while a server that dies or restarts still ends the wait
/// (the connection closes).
#[derive(Debug, Clone)]
pub struct AdminClient {
    target: AdminTarget,
    timeout: Duration,
}

/// How long connecting to the server may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ordinary request's answer may take.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a request waits for its answer.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// At most this long.
    Bounded(Duration),
    /// As long as the server holds the connection open (its work grows
    /// with the tailnet).
    WhileConnected,
}

impl AdminClient {
    /// Creates a client.
    pub fn new(target: AdminTarget) -> Self {
        Self {
            target,
            timeout: ANSWER_TIMEOUT,
        }
    }

    /// Bounds ordinary requests' answers by `limit` instead of
    /// [`ANSWER_TIMEOUT`] (operations that grow with the tailnet stay unbounded).
    #[must_use]
    pub fn with_answer_timeout(mut self, limit: Duration) -> Self {
        self.timeout = limit;
        self
    }

    /// Returns where it connects.
    pub fn target(&self) -> &AdminTarget {
        &self.target
    }

    async fn request<B: Serialize, T: DeserializeOwned>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AdminClientError> {
        let bytes = self.raw(method, path, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| AdminClientError::Protocol {
            target: self.target.to_string(),
            detail: e.to_string(),
        })
    }

    async fn raw<B: Serialize>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Bytes, AdminClientError> {
        self.raw_waiting(method, path, body, Wait::Bounded(self.timeout))
            .await
    }

    async fn raw_waiting<B: Serialize>(
        &self,
        method: http::Method,
        path: &str,
        body: Option<&B>,
        wait: Wait,
    ) -> Result<Bytes, AdminClientError> {
        let target = self.target.to_string();
        let payload = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| AdminClientError::Protocol {
                target: target.clone(),
                detail: e.to_string(),
            })?,
            None => Vec::new(),
        };
        let (authority, prefix, bearer) = match &self.target {
            AdminTarget::Socket(_) => ("localhost".to_owned(), String::new(), None),
            AdminTarget::Http { url, api_key } => {
                let uri: http::Uri = url.parse().map_err(|_| AdminClientError::Connect {
                    target: target.clone(),
                    cause: "not an http:// URL".into(),
                    hint: "",
                })?;
                if uri.scheme_str() != Some("http") {
                    return Err(AdminClientError::Connect {
                        target,
                        cause: "only http:// is supported by this client (put a TLS proxy in front and use it locally, or use the admin socket)".into(),
                        hint: "",
                    });
                }
                let authority = uri.authority().map(ToString::to_string).unwrap_or_default();
                (
                    authority,
                    uri.path().trim_end_matches('/').to_owned(),
                    Some(api_key.clone()),
                )
            }
        };
        let mut req = http::Request::builder()
            .method(method)
            .uri(format!(
                "{prefix}{}{path}",
                if matches!(self.target, AdminTarget::Http { .. }) {
                    "/api/v1"
                } else {
                    ""
                }
            ))
            .header(http::header::HOST, authority.clone())
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = bearer {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req =
            req.body(Full::new(Bytes::from(payload)))
                .map_err(|e| AdminClientError::Protocol {
                    target: target.clone(),
                    detail: e.to_string(),
                })?;
        let connect_err = |cause: String, hint| AdminClientError::Connect {
            target: target.clone(),
            cause,
            hint,
        };
        let no_answer = |what: &str, limit: Duration| AdminClientError::Connect {
            target: self.target.to_string(),
            cause: format!("no {what} within {limit:?}"),
            hint: "",
        };
        let work = async {
            let resp = match &self.target {
                AdminTarget::Socket(path) => {
                    let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                        .await
                        .map_err(|_| no_answer("connection", CONNECT_TIMEOUT))?
                        .map_err(|e| {
                            connect_err(
                                e.to_string(),
                                " (is weft-control serve running with this --state-dir, and are you root?)",
                            )
                        })?;
                    send(TokioIo::new(s), req).await
                }
                AdminTarget::Http { .. } => {
                    let s = tokio::time::timeout(
                        CONNECT_TIMEOUT,
                        tokio::net::TcpStream::connect(&authority),
                    )
                    .await
                    .map_err(|_| no_answer("connection", CONNECT_TIMEOUT))?
                    .map_err(|e| connect_err(e.to_string(), ""))?;
                    send(TokioIo::new(s), req).await
                }
            }
            .map_err(|e| connect_err(e.to_string(), ""))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| connect_err(e.to_string(), ""))?
                .to_bytes();
            if status.is_success() {
                return Ok(body);
            }
            Err(match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(e) => AdminClientError::Api {
                    status: status.as_u16(),
                    code: e.error.code,
                    message: e.error.message,
                },
                Err(_) => AdminClientError::Api {
                    status: status.as_u16(),
                    code: "http".into(),
                    message: format!("HTTP {status}: {}", String::from_utf8_lossy(&body).trim()),
                },
            })
        };
        match wait {
            Wait::Bounded(limit) => tokio::time::timeout(limit, work)
                .await
                .map_err(|_| no_answer("answer", limit))?,
            Wait::WhileConnected => work.await,
        }
    }

    // --- users ---

    /// `POST /users`.
    pub async fn create_user(&self, req: &NewUser) -> Result<UserView, AdminClientError> {
        self.request(http::Method::POST, "/users", Some(req)).await
    }
    /// `GET /users`.
    pub async fn list_users(&self) -> Result<Vec<UserView>, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/users", None)
            .await
    }
    /// `DELETE /users/{login}`.
    pub async fn delete_user(&self, login: &str) -> Result<UserView, AdminClientError> {
        self.request::<(), _>(
            http::Method::DELETE,
            &format!("/users/{}", encode(login)),
            None,
        )
        .await
    }

    // --- pre-auth keys ---

    /// `POST /preauthkeys`.
    pub async fn create_preauth_key(
        &self,
        req: &NewPreauthKey,
    ) -> Result<CreatedPreauthKey, AdminClientError> {
        self.request(http::Method::POST, "/preauthkeys", Some(req))
            .await
    }
    /// `GET /preauthkeys`.
    pub async fn list_preauth_keys(
        &self,
        user: Option<&str>,
    ) -> Result<Vec<PreauthKeyView>, AdminClientError> {
        let path = match user {
            Some(u) => format!("/preauthkeys?user={}", encode(u)),
            None => "/preauthkeys".to_owned(),
        };
        self.request::<(), _>(http::Method::GET, &path, None).await
    }
    /// `POST /preauthkeys/{id}/expire`.
    pub async fn expire_preauth_key(&self, id: i64) -> Result<PreauthKeyView, AdminClientError> {
        self.request::<(), _>(
            http::Method::POST,
            &format!("/preauthkeys/{id}/expire"),
            None,
        )
        .await
    }

    // --- nodes ---

    /// `GET /nodes`.
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/nodes", None)
            .await
    }
    /// `POST /logins/{auth_id}/approve`.
    pub async fn approve_login(
        &self,
        auth_id: &str,
        user: &str,
    ) -> Result<ApprovalView, AdminClientError> {
        let body = Approve {
            user: user.to_owned(),
        };
        self.request(
            http::Method::POST,
            &format!("/logins/{}/approve", encode(auth_id)),
            Some(&body),
        )
        .await
    }
    /// `POST /logins/{auth_id}/reject`.
    pub async fn reject_login(&self, auth_id: &str) -> Result<(), AdminClientError> {
        self.raw::<()>(
            http::Method::POST,
            &format!("/logins/{}/reject", encode(auth_id)),
            None,
        )
        .await
        .map(|_| ())
    }
    /// `POST /nodes/{id}/expire`.
    pub async fn expire_node(&self, id: i64) -> Result<NodeView, AdminClientError> {
        self.request::<(), _>(http::Method::POST, &format!("/nodes/{id}/expire"), None)
            .await
    }
    /// `DELETE /nodes/{id}`.
    pub async fn delete_node(&self, id: i64) -> Result<NodeView, AdminClientError> {
        self.request::<(), _>(http::Method::DELETE, &format!("/nodes/{id}"), None)
            .await
    }
    /// `POST /nodes/{id}/rename`.
    pub async fn rename_node(&self, id: i64, name: &str) -> Result<NodeView, AdminClientError> {
        let body = Rename {
            name: name.to_owned(),
        };
        self.request(
            http::Method::POST,
            &format!("/nodes/{id}/rename"),
            Some(&body),
        )
        .await
    }
    /// `POST /nodes/{id}/tags`.
    pub async fn set_node_tags(
        &self,
        id: i64,
        tags: &[String],
    ) -> Result<NodeView, AdminClientError> {
        let body = SetTags {
            tags: tags.to_vec(),
        };
        self.request(
            http::Method::POST,
            &format!("/nodes/{id}/tags"),
            Some(&body),
        )
        .await
    }
    /// `POST /nodes/{id}/authorize`.
    pub async fn authorize_node(
        &self,
        id: i64,
        authorized: bool,
    ) -> Result<NodeView, AdminClientError> {
        let body = Authorize { authorized };
        self.request(
            http::Method::POST,
            &format!("/nodes/{id}/authorize"),
            Some(&body),
        )
        .await
    }

    // --- API keys ---

    /// `POST /apikeys`.
    pub async fn create_api_key(&self, req: &NewApiKey) -> Result<CreatedApiKey, AdminClientError> {
        self.request(http::Method::POST, "/apikeys", Some(req))
            .await
    }
    /// `GET /apikeys`.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyView>, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/apikeys", None)
            .await
    }
    /// `POST /apikeys/{id}/expire`.
    pub async fn expire_api_key(&self, id: i64) -> Result<ApiKeyView, AdminClientError> {
        self.request::<(), _>(http::Method::POST, &format!("/apikeys/{id}/expire"), None)
            .await
    }

    // --- relay map ---

    /// `GET /relay-map`.
    pub async fn relay_map(&self) -> Result<RelayMapConfig, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/relay-map", None)
            .await
    }
    /// `PUT /relay-map`.
    pub async fn set_relay_map(
        &self,
        map: &RelayMapConfig,
    ) -> Result<RelayMapConfig, AdminClientError> {
        self.request(http::Method::PUT, "/relay-map", Some(map))
            .await
    }

    // --- DNS ---

    /// `GET /dns`.
    pub async fn dns(&self) -> Result<DnsView, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/dns", None).await
    }
    /// `PUT /dns`: replaces the settings whole.
    pub async fn put_dns(&self, b: &DnsSettingsBody) -> Result<DnsView, AdminClientError> {
        self.request(http::Method::PUT, "/dns", Some(b)).await
    }
    /// `PATCH /dns`: changes only what `p` names.
    pub async fn patch_dns(&self, p: &DnsPatch) -> Result<DnsView, AdminClientError> {
        self.request(http::Method::PATCH, "/dns", Some(p)).await
    }

    // --- SSH check approvals ---

    /// `GET /ssh/approvals`: all, one user's, or those for one source node.
    pub async fn list_ssh_approvals(
        &self,
        user: Option<&str>,
        node: Option<i64>,
    ) -> Result<Vec<SshApprovalView>, AdminClientError> {
        let mut query = Vec::new();
        if let Some(u) = user {
            query.push(format!("user={}", encode(u)));
        }
        if let Some(n) = node {
            query.push(format!("node={n}"));
        }
        let path = if query.is_empty() {
            "/ssh/approvals".to_owned()
        } else {
            format!("/ssh/approvals?{}", query.join("&"))
        };
        self.request::<(), _>(http::Method::GET, &path, None).await
    }
    /// `GET /ssh/sessions`: one page of recorded sessions, newest first.
    pub async fn list_ssh_sessions(
        &self,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<SshSessionList, AdminClientError> {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(b) = before {
            query.push(format!("before={}", encode(b)));
        }
        let path = if query.is_empty() {
            "/ssh/sessions".to_owned()
        } else {
            format!("/ssh/sessions?{}", query.join("&"))
        };
        self.request::<(), _>(http::Method::GET, &path, None).await
    }
    /// `GET /ssh/sessions/{id}`.
    pub async fn ssh_session(&self, id: &str) -> Result<SshSessionView, AdminClientError> {
        let path = format!("/ssh/sessions/{}", encode(id));
        self.request::<(), _>(http::Method::GET, &path, None).await
    }
    /// `GET /ssh/sessions/{id}/cast`: the asciicast v2 file.
    pub async fn ssh_session_cast(&self, id: &str) -> Result<Bytes, AdminClientError> {
        let path = format!("/ssh/sessions/{}/cast", encode(id));
        self.raw::<()>(http::Method::GET, &path, None).await
    }
    /// `POST /ssh/approvals/revoke`.
    pub async fn revoke_ssh_approvals(
        &self,
        r: &RevokeSshApprovals,
    ) -> Result<Vec<SshApprovalView>, AdminClientError> {
        self.request(http::Method::POST, "/ssh/approvals/revoke", Some(r))
            .await
    }

    // --- policy ---

    /// `GET /policy`.
    pub async fn policy(&self) -> Result<PolicyView, AdminClientError> {
        self.request::<(), _>(http::Method::GET, "/policy", None)
            .await
    }
    /// `PUT /policy`.
    pub async fn set_policy(
        &self,
        text: &str,
        name: Option<&str>,
    ) -> Result<PolicyView, AdminClientError> {
        let body = PolicyText {
            policy: text.to_owned(),
            name: name.map(str::to_owned),
        };
        let bytes = self
            .raw_waiting(
                http::Method::PUT,
                "/policy",
                Some(&body),
                Wait::WhileConnected,
            )
            .await?;
        serde_json::from_slice(&bytes).map_err(|e| AdminClientError::Protocol {
            target: self.target.to_string(),
            detail: e.to_string(),
        })
    }
    /// `POST /policy/check`.
    pub async fn check_policy(
        &self,
        text: &str,
        name: Option<&str>,
    ) -> Result<PolicyCheck, AdminClientError> {
        let body = PolicyText {
            policy: text.to_owned(),
            name: name.map(str::to_owned),
        };
        self.request(http::Method::POST, "/policy/check", Some(&body))
            .await
    }
    /// `GET /policy/history?limit=`.
    pub async fn policy_history(
        &self,
        limit: usize,
    ) -> Result<Vec<PolicyVersionView>, AdminClientError> {
        self.request::<(), _>(
            http::Method::GET,
            &format!("/policy/history?limit={limit}"),
            None,
        )
        .await
    }

    /// `GET /policy/history/{version}`.
    pub async fn policy_version(&self, version: i64) -> Result<PolicyView, AdminClientError> {
        self.request::<(), _>(
            http::Method::GET,
            &format!("/policy/history/{version}"),
            None,
        )
        .await
    }

    /// `POST /policy/rollback`.
    pub async fn rollback_policy(&self, version: i64) -> Result<PolicyView, AdminClientError> {
        self.request(
            http::Method::POST,
            "/policy/rollback",
            Some(&PolicyRollback { version }),
        )
        .await
    }

    /// `GET /audit?before=&limit=`.
    pub async fn audit(
        &self,
        before: Option<i64>,
        limit: u32,
    ) -> Result<AuditPage, AdminClientError> {
        let path = match before {
            Some(b) => format!("/audit?before={b}&limit={limit}"),
            None => format!("/audit?limit={limit}"),
        };
        self.request::<(), _>(http::Method::GET, &path, None).await
    }

    /// `POST /policy/explain`.
    pub async fn explain(&self, q: &ExplainQuery) -> Result<ExplainAnswer, AdminClientError> {
        self.request(http::Method::POST, "/policy/explain", Some(q))
            .await
    }
}

async fn send<IO>(
    io: IO,
    req: http::Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await
}

/// Percent-encodes a path segment or query value.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~@:".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An admin socket that answers every request after `delay`.
    fn slow_server(path: &std::path::Path, delay: Duration) {
        let l = tokio::net::UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    let _ = s.read(&mut buf).await;
                    tokio::time::sleep(delay).await;
                    let body = r#"{"policy":"{}","version":2,"author":"a","created":1}"#;
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
    }

    #[tokio::test]
    async fn policy_set_waits_as_long_as_the_server_works_while_other_requests_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        slow_server(&path, Duration::from_millis(1500));
        let client = AdminClient::new(AdminTarget::Socket(path))
            .with_answer_timeout(Duration::from_millis(300));
        let err = client.policy().await.unwrap_err();
        assert!(err.to_string().contains("no answer within 300ms"), "{err}");
        // The same server, slower than the answer timeout: policy set waits.
        let v = client.set_policy("{}", None).await.unwrap();
        assert_eq!(v.version, Some(2));
    }

    #[tokio::test]
    async fn policy_set_ends_when_the_server_goes_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.sock");
        let l = tokio::net::UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            // Read the request, then close without answering (a crash).
            if let Ok((mut s, _)) = l.accept().await {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let client = AdminClient::new(AdminTarget::Socket(path));
        let r = tokio::time::timeout(Duration::from_secs(10), client.set_policy("{}", None)).await;
        assert!(r.expect("ended with the connection").is_err());
    }
}
