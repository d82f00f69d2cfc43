//! A fake weftd LocalAPI for running the real `weft` binary against: hyper
//! over a unix socket in a temp dir, serving canned `weft-localapi` types,
//! recording every request, and pushing scripted `watch` events when a
//! route is hit (e.g. `login-interactive` → a URL, then `running`).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::sync::broadcast;
use weft_localapi::*;
use weft_types::ids::UserId;

type Body = BoxBody<Bytes, Infallible>;

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    /// The path after `/localapi/v0/`, with the query.
    pub path: String,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

/// A canned answer to `POST ping`.
#[derive(Debug, Clone)]
pub enum PingReply {
    Pong(PingResult),
    Timeout,
}

/// The fake daemon's state; tests edit it before running `weft`.
#[derive(Debug)]
pub struct State {
    pub status: Status,
    pub prefs: Prefs,
    pub profiles: Vec<ProfileSummary>,
    /// Answer every non-GET with 403, like weftd for a non-root caller.
    pub read_only: bool,
    pub pings: VecDeque<PingReply>,
    /// Events pushed to every open `watch` when the route (e.g. `start`,
    /// `login-interactive`) is hit, after the state change it makes.
    pub script: BTreeMap<&'static str, Vec<Notify>>,
    pub requests: Vec<Recorded>,
}

struct Shared {
    state: Mutex<State>,
    events: broadcast::Sender<Notify>,
}

/// A running fake; dropping it stops the server and removes the socket.
pub struct Fake {
    pub socket: PathBuf,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Fake {
    /// Starts a fake serving `state`.
    pub fn start(state: State) -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("weftd.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (events, _) = broadcast::channel(64);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            events,
        });
        let server = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = server.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(req, shared.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Fake {
            socket,
            shared,
            task,
            _dir: dir,
        }
    }

    /// Runs `f` on the state (to inspect or edit it).
    pub fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.shared.state.lock().unwrap())
    }

    /// Returns the recorded requests other than `GET`s.
    pub fn changes(&self) -> Vec<Recorded> {
        self.with(|s| {
            s.requests
                .iter()
                .filter(|r| r.method != Method::GET)
                .cloned()
                .collect()
        })
    }
}

async fn handle(req: Request<Incoming>, shared: Arc<Shared>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req
        .uri()
        .path()
        .strip_prefix(PREFIX)
        .unwrap_or("")
        .to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let full_path = if query.is_empty() {
        path.clone()
    } else {
        format!("{path}?{query}")
    };
    let record = Recorded {
        method: method.clone(),
        path: full_path,
        body: body.clone(),
    };
    let read_only = {
        let mut st = shared.state.lock().unwrap();
        st.requests.push(record);
        st.read_only
    };
    if read_only && method != Method::GET {
        return Ok(error(
            StatusCode::FORBIDDEN,
            "access denied: read-only LocalAPI caller",
        ));
    }
    if method == Method::GET && path == "watch" {
        return Ok(watch(&shared));
    }
    let mut st = shared.state.lock().unwrap();
    let route = path.split('/').next().unwrap_or("");
    let answer = match (method, route) {
        (Method::GET, "status") => json(&st.status),
        (Method::GET, "prefs") => json(&st.prefs),
        (Method::PATCH, "prefs") => {
            let patch: PrefsPatch = serde_json::from_value(body).unwrap();
            st.prefs = patch.apply_to(&st.prefs);
            json(&st.prefs)
        }
        (Method::POST, "start") => {
            let start: StartRequest = serde_json::from_value(body).unwrap();
            match start.prefs {
                Some(p) => st.prefs = p,
                None => st.prefs.want_running = true,
            }
            json(&Value::Object(Default::default()))
        }
        (Method::POST, "login-interactive") => json(&Value::Object(Default::default())),
        (Method::POST, "logout") => {
            st.status.backend_state = BackendState::NeedsLogin;
            json(&Value::Object(Default::default()))
        }
        (Method::GET, "profiles") => json(&st.profiles),
        (Method::PUT, "profiles") => {
            for p in &mut st.profiles {
                p.selected = false;
            }
            let new = ProfileSummary {
                id: "ffff".into(),
                nickname: None,
                tailnet: None,
                account: None,
                control_url: DEFAULT_CONTROL_URL.into(),
                selected: true,
                registered: false,
            };
            st.profiles.push(new.clone());
            st.prefs = Prefs::default();
            st.status.backend_state = BackendState::NeedsLogin;
            json(&new)
        }
        (Method::POST, "profiles") => {
            let id = path.trim_start_matches("profiles/").to_owned();
            for p in &mut st.profiles {
                p.selected = p.id == id;
            }
            match st.profiles.iter().find(|p| p.selected) {
                Some(p) => json(p),
                None => error(StatusCode::NOT_FOUND, "no such profile"),
            }
        }
        (Method::POST, "ping") => match st.pings.pop_front() {
            Some(PingReply::Pong(p)) => json(&p),
            Some(PingReply::Timeout) | None => error(StatusCode::GATEWAY_TIMEOUT, "ping timed out"),
        },
        (Method::GET, "whois") => {
            let addr: Option<IpAddr> = query.strip_prefix("addr=").and_then(|a| a.parse().ok());
            let node = st
                .status
                .self_node
                .iter()
                .chain(&st.status.peers)
                .find(|n| addr.is_some_and(|a| n.addresses.contains(&a)));
            match node {
                Some(n) => {
                    let user = n.user.clone().map(|login| UserInfo {
                        id: UserId(7),
                        display_name: login.clone(),
                        login_name: login,
                    });
                    json(&WhoIs {
                        node: n.clone(),
                        user,
                    })
                }
                None => error(StatusCode::NOT_FOUND, "no node has that address"),
            }
        }
        (Method::GET, "debug") => json(&DebugPrefs {
            profile_id: "a1b2".into(),
            prefs: st.prefs.clone(),
            node_key: None,
            private_node_key: Some("<redacted>".into()),
            node_id: None,
            user: Some("alice@example.com".into()),
            control_key: None,
        }),
        _ => error(StatusCode::NOT_FOUND, "no such route"),
    };
    let script = st.script.get(route).cloned().unwrap_or_default();
    for event in script {
        match &event {
            Notify::State { state } => st.status.backend_state = *state,
            Notify::Prefs { prefs } => st.prefs = prefs.clone(),
            _ => {}
        }
        let _ = shared.events.send(event);
    }
    Ok(answer)
}

/// The `watch` stream: the snapshot, then every event sent from now on.
fn watch(shared: &Shared) -> Response<Body> {
    let rx = shared.events.subscribe();
    let snapshot = {
        let st = shared.state.lock().unwrap();
        Notify::Snapshot {
            state: st.status.backend_state,
            auth_url: st.status.auth_url.clone(),
            prefs: st.prefs.clone(),
        }
    };
    let first = futures::stream::once(async move { Ok(Frame::data(line(&snapshot))) });
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(event) => return Some((Ok(Frame::data(line(&event))), rx)),
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Response::new(BodyExt::boxed(StreamBody::new(first.chain(rest))))
}

fn line(event: &Notify) -> Bytes {
    let mut text = serde_json::to_vec(event).unwrap();
    text.push(b'\n');
    Bytes::from(text)
}

fn json<T: Serialize>(value: &T) -> Response<Body> {
    let body = Full::new(Bytes::from(serde_json::to_vec(value).unwrap()));
    Response::new(BodyExt::boxed(body))
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    let mut resp = json(&ErrorBody {
        error: message.into(),
    });
    *resp.status_mut() = status;
    resp
}
