//! `weft login`: add a new login profile and log it in. The other profiles
//! keep their node keys, so `weft switch` goes back without a new login.

use std::process::ExitCode;

use weft_localapi::StartRequest;

use crate::cmd::up::AuthArgs;
use crate::ctx::Ctx;
use crate::out::errln;
use crate::prefs::{self, PrefFlags};
use crate::spinner::spin;
use crate::watch::{self, Login};

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub prefs: PrefFlags,
    #[command(flatten)]
    pub auth: AuthArgs,
    /// A short name for the new profile (shown by 'weft switch --list')
    #[arg(long, value_name = "NAME")]
    pub nickname: Option<String>,
}

/// Runs `weft login`.
pub async fn run(args: LoginArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let auth_key = args.auth.read_key()?;
    // Read before the profile is made, so a bad default changes nothing.
    let default_server = prefs::system_login_server()?;
    let profile = ctx.api(spin("Creating a profile", ctx.client.new_profile()).await)?;
    errln!("Created profile {}.", profile.id);
    let mut watch = ctx.api(ctx.client.watch().await)?;
    let (state, current) = watch::snapshot(ctx, &mut watch).await?;
    // A new profile starts from defaults, so the flags are the whole story:
    // plan as with --reset (which cannot hit the sticky rule).
    let plan_ctx = prefs::Context {
        current: &current,
        registered: false,
        default_server: default_server.as_deref(),
        applied_tags: None,
    };
    let mut desired = match prefs::plan(&args.prefs, true, false, plan_ctx) {
        Ok(Some(desired)) => desired,
        Ok(None) => current.clone(),
        Err(e) => anyhow::bail!("cannot plan the new profile's settings: {e:?}"),
    };
    desired.want_running = true;
    if let Some(nick) = &args.nickname {
        desired.nickname = (!nick.is_empty()).then(|| nick.clone());
    }
    let control_url = desired.control_url.clone();
    let start = StartRequest {
        prefs: Some(desired),
        auth_key,
        force_reauth: false,
    };
    let login = Login {
        start,
        control_url,
        timeout: args.auth.timeout,
        json: false,
    };
    watch::drive(ctx, watch, state, login).await
}
