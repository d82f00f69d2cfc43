//! `weft up`: connect to the tailnet, logging in if needed.
//!
//! The flow: open `watch` first (so no event is missed), check the flags
//! against the current prefs (the sticky rule, `crate::prefs`), `start`, then
//! follow the events (`crate::upflow`) until the node runs. Login URLs go to
//! stderr; with `--json`, stdout gets one JSON object per line instead.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use weft_localapi::StartRequest;
use weft_types::time::parse_duration;

use crate::ctx::Ctx;
use crate::prefs::{self, PlanError, PrefFlags};
use crate::render::{display_args, format_duration};
use crate::watch::{self, Login};

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

/// Runs `weft up`.
pub async fn run(args: UpArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let auth_key = args.auth.read_key()?;
    let mut watch = ctx.api(ctx.client.watch().await)?;
    let (state, current) = watch::snapshot(ctx, &mut watch).await?;
    let status = ctx.api(ctx.client.status().await)?;
    let registered = status.profile.as_ref().is_some_and(|p| p.registered);
    // Self from a netmap (it has addresses) carries the tags control applied.
    let applied_tags = status
        .self_node
        .as_ref()
        .filter(|me| !me.addresses.is_empty())
        .map(|me| me.tags.as_slice());
    let default_server = prefs::system_login_server()?;
    let plan_ctx = prefs::Context {
        current: &current,
        registered,
        default_server: default_server.as_deref(),
        applied_tags,
    };
    let desired = match prefs::plan(&args.prefs, args.reset, args.force_reauth, plan_ctx) {
        Ok(desired) => desired,
        Err(PlanError::Sticky { missing }) => {
            bail!(
                "{}",
                prefs::sticky_message(&ctx.prog(), &args.explicit_flags(), &missing)
            )
        }
        Err(e) => bail!("{}", e.identity_message(&ctx.prog()).unwrap_or_default()),
    };
    let control_url = desired.as_ref().unwrap_or(&current).control_url.clone();
    let start = StartRequest {
        prefs: desired,
        auth_key,
        force_reauth: args.force_reauth,
    };
    let login = Login {
        start,
        control_url,
        timeout: args.auth.timeout,
        json: args.json,
    };
    watch::drive(ctx, watch, state, login).await
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
}
