//! Following weftd's `watch` stream through `start` and a login: the I/O
//! around the pure [`UpWatch`], shared by `weft up` and `weft login`. Login
//! URLs go to stderr; with `--json`, stdout gets one JSON object per line
//! instead.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use tokio::time::Instant;
use weft_localapi::{BackendState, Notify, Prefs, StartRequest, WatchStream};

use crate::ctx::Ctx;
use crate::out::{self, err, errln};
use crate::render::{format_duration, state_word};
use crate::spinner::Spinner;
use crate::upflow::{Action, UpWatch};

/// How long `up` waits by default before a login URL is shown (after one
/// is shown it waits for the user as long as it takes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start and how to wait for it.
#[derive(Debug)]
pub struct Login {
    /// The `start` request (prefs, auth key, force-reauth).
    pub start: StartRequest,
    /// The control server, for messages.
    pub control_url: String,
    /// `--timeout`: `None` for the default, zero for forever.
    pub timeout: Option<Duration>,
    /// `--json`: JSON lines on stdout instead of text on stderr.
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct UpJson<'a> {
    auth_url: Option<&'a str>,
    backend_state: BackendState,
}

/// Reads the first `watch` event, which is always the snapshot.
///
/// # Errors
/// When the stream fails or does not start with a snapshot.
pub async fn snapshot(ctx: &Ctx, watch: &mut WatchStream) -> anyhow::Result<(BackendState, Prefs)> {
    match ctx.api(watch.next().await)? {
        Some(Notify::Snapshot { state, prefs, .. }) => Ok((state, prefs)),
        Some(other) => bail!("weftd's watch stream began with {other:?} instead of a snapshot"),
        None => bail!("weftd closed the watch stream at once (is it shutting down?)"),
    }
}

/// Sends `start` and follows the watch stream until the node runs: shows
/// login URLs, asks for an interactive login when needed, and stops on the
/// daemon's error or the timeout.
///
/// # Errors
/// The daemon's reason (a refused key, an unreachable control server), a
/// timeout naming the control URL, or a broken stream.
pub async fn drive(
    ctx: &Ctx,
    mut watch: WatchStream,
    state: BackendState,
    login: Login,
) -> anyhow::Result<ExitCode> {
    let Login {
        start: req,
        control_url,
        timeout,
        json,
    } = login;
    let started = Instant::now();
    let mut flow = UpWatch::new(state, req.auth_key.is_none(), req.force_reauth);
    let spinner = Spinner::start(format!("Connecting to {control_url}"));
    ctx.api(ctx.client.start(&req).await)?;
    let mut pending: VecDeque<Action> = flow.after_start().into();
    loop {
        while let Some(action) = pending.pop_front() {
            match action {
                Action::ShowUrl(url) => {
                    if json {
                        print_json(Some(&url), flow.state())?;
                    } else {
                        spinner.suspend(|| err!("\nTo authenticate, visit:\n\n\t{url}\n\n"));
                    }
                    spinner.set_message("Waiting for the login to finish");
                }
                Action::RequestLogin => ctx.api(ctx.client.login_interactive().await)?,
                Action::AwaitApproval => spinner.suspend(|| {
                    errln!("Machine is not yet approved by the tailnet admin; waiting.");
                }),
                Action::Done => {
                    drop(spinner);
                    if json {
                        print_json(flow.url_shown(), BackendState::Running)?;
                    } else if flow.url_shown().is_some() {
                        errln!("Success.");
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                Action::Fail(reason) => bail!("{reason}"),
            }
        }
        let limit = match timeout {
            Some(Duration::ZERO) => None,
            Some(t) => Some(t),
            None if flow.url_shown().is_none() => Some(DEFAULT_TIMEOUT),
            None => None,
        };
        let next = match limit {
            Some(limit) => match tokio::time::timeout_at(started + limit, watch.next()).await {
                Ok(next) => next,
                Err(_) => bail!(
                    "timed out after {} waiting for the node to run (control server {control_url}, \
                     state {}); see 'weft status', or give --timeout",
                    format_duration(limit),
                    state_word(flow.state())
                ),
            },
            None => watch.next().await,
        };
        match ctx.api(next)? {
            Some(event) => pending.extend(flow.on_event(event)),
            None => {
                bail!("weftd closed the watch stream before the node was running (did it restart?)")
            }
        }
    }
}

fn print_json(auth_url: Option<&str>, backend_state: BackendState) -> anyhow::Result<()> {
    out::json_line(&UpJson {
        auth_url,
        backend_state,
    })?;
    Ok(())
}
