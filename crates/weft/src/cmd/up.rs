//! `weft up`: connect to the tailnet, logging in if needed.
//!
//! The flow: open `watch` first (so no event is missed), check the flags
//! against the current prefs (the sticky rule, `crate::prefs`), `start`, then
//! follow the events (`crate::upflow`) until the node runs. Login URLs go to
//! stderr; with `--json`, stdout gets one JSON object per line instead.

use std::collections::VecDeque;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::time::Instant;
use weft_localapi::{BackendState, Notify, Prefs, StartRequest, WatchStream};

use crate::ctx::Ctx;
use crate::prefs::{self, PlanError, PrefFlags};
use crate::render::{display_args, format_duration, parse_duration};
use crate::spinner::Spinner;
use crate::upflow::{Action, UpWatch};

/// How long `up` waits by default before a login URL is shown (after one
/// is shown it waits for the user as long as it takes).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub prefs: PrefFlags,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Reset unmentioned settings to their defaults
    #[arg(long)]
    pub reset: bool,
    /// Log in again even if the node key is still valid
    #[arg(long)]
    pub force_reauth: bool,
    /// Print {"auth_url", "backend_state"} JSON lines on stdout instead of text
    #[arg(long)]
    pub json: bool,
}

/// The flags `up` and `login` share that are not prefs.
#[derive(Debug, clap::Args)]
pub struct AuthArgs {
    /// A pre-auth key to log in with, or file:PATH to read it from a file
    #[arg(long, visible_alias = "auth-key", value_name = "KEY")]
    pub authkey: Option<String>,
    /// How long to wait for the node to run; 0 waits forever
    /// [default: 60s until a login URL is shown, then as long as it takes]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct UpJson<'a> {
    auth_url: Option<&'a str>,
    backend_state: BackendState,
}

/// Runs `weft up`.
pub async fn run(args: UpArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let auth_key = args.auth.read_key()?;
    let mut watch = ctx.api(ctx.client.watch().await)?;
    let (state, current) = snapshot(ctx, &mut watch).await?;
    let logged_in = !matches!(state, BackendState::NeedsLogin | BackendState::NoState);
    let desired = match prefs::plan(
        &args.prefs,
        args.reset,
        args.force_reauth,
        logged_in,
        &current,
    ) {
        Ok(desired) => desired,
        Err(PlanError::Sticky { missing }) => {
            bail!(
                "{}",
                prefs::sticky_message(&ctx.prog(), &args.explicit_flags(), &missing)
            )
        }
        Err(PlanError::LoginServerChange { from, to }) => bail!(
            "can't change --login-server from {from} to {to} while logged in without --force-reauth"
        ),
    };
    let control_url = desired.as_ref().unwrap_or(&current).control_url.clone();
    let req = StartRequest {
        prefs: desired,
        auth_key,
        force_reauth: args.force_reauth,
    };
    drive(
        ctx,
        watch,
        state,
        req,
        &control_url,
        args.auth.timeout,
        args.json,
    )
    .await
}

impl UpArgs {
    /// Returns the flags the user gave, canonical and sorted, for the
    /// command the sticky error suggests (a literal auth key is hidden).
    fn explicit_flags(&self) -> Vec<String> {
        let mut out = self.prefs.rendered();
        if let Some(key) = &self.auth.authkey {
            out.push(display_args(&[format!("--authkey={key}")]));
        }
        if self.force_reauth {
            out.push("--force-reauth".to_owned());
        }
        if self.json {
            out.push("--json".to_owned());
        }
        if let Some(t) = self.auth.timeout {
            out.push(format!("--timeout={}", format_duration(t)));
        }
        out.sort();
        out
    }
}

impl AuthArgs {
    /// Returns the auth key, reading `file:PATH` (trimmed).
    ///
    /// # Errors
    /// When the file cannot be read or holds no key.
    pub fn read_key(&self) -> anyhow::Result<Option<String>> {
        let Some(key) = &self.authkey else {
            return Ok(None);
        };
        let Some(path) = key.strip_prefix("file:") else {
            return Ok(Some(key.clone()));
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the auth key from {path}"))?;
        let key = text.trim();
        if key.is_empty() {
            bail!("the auth key file {path} is empty");
        }
        Ok(Some(key.to_owned()))
    }
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
    req: StartRequest,
    control_url: &str,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
                        spinner.suspend(|| eprint!("\nTo authenticate, visit:\n\n\t{url}\n\n"));
                    }
                    spinner.set_message("Waiting for the login to finish");
                }
                Action::RequestLogin => ctx.api(ctx.client.login_interactive().await)?,
                Action::AwaitApproval => spinner.suspend(|| {
                    eprintln!("Machine is not yet approved by the tailnet admin; waiting.");
                }),
                Action::Done => {
                    drop(spinner);
                    if json {
                        print_json(flow.url_shown(), BackendState::Running)?;
                    } else if flow.url_shown().is_some() {
                        eprintln!("Success.");
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
    println!(
        "{}",
        serde_json::to_string(&UpJson {
            auth_url,
            backend_state
        })?
    );
    Ok(())
}

/// Returns the state's JSON name (`needs_login`, …) for messages.
pub fn state_word(state: BackendState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{state:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        up: UpArgs,
    }

    #[test]
    fn the_suggested_command_repeats_prefless_flags_but_not_a_literal_key() {
        let w = Wrap::try_parse_from(["up", "--ssh", "--authkey=k", "--timeout=90s", "--json"])
            .unwrap();
        assert_eq!(
            w.up.explicit_flags(),
            ["--authkey=<KEY>", "--json", "--ssh", "--timeout=1m30s"]
        );
    }

    #[test]
    fn an_auth_key_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "  tskey-123\n").unwrap();
        let args = AuthArgs {
            authkey: Some(format!("file:{}", path.display())),
            timeout: None,
        };
        assert_eq!(args.read_key().unwrap().as_deref(), Some("tskey-123"));
        std::fs::write(&path, "\n").unwrap();
        assert!(
            args.read_key()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
        let missing = AuthArgs {
            authkey: Some("file:/nonexistent/k".into()),
            timeout: None,
        };
        let err = format!("{:#}", missing.read_key().unwrap_err());
        assert!(
            err.contains("reading the auth key from /nonexistent/k"),
            "{err}"
        );
    }

    #[test]
    fn states_are_named_as_in_json() {
        assert_eq!(state_word(BackendState::NeedsLogin), "needs_login");
    }
}
