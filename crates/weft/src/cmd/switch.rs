//! `weft switch`: list login profiles, or switch to one. Each profile keeps
//! its own node key, so switching needs no new login.

use std::process::ExitCode;

use anyhow::bail;
use weft_localapi::{BackendState, ProfileSummary};

use crate::ctx::Ctx;
use crate::out::{self, errln, out};
use crate::render::Table;
use crate::spinner::spin;

#[derive(Debug, clap::Args)]
pub struct SwitchArgs {
    /// List the profiles: ID (`*` marks the current one), server, tailnet, account, nickname
    #[arg(long, conflicts_with = "target")]
    pub list: bool,
    /// With --list: print the profiles as JSON
    #[arg(long, requires = "list")]
    pub json: bool,
    /// The profile to switch to: its ID, nickname or account (tried in that order)
    #[arg(value_name = "PROFILE", required_unless_present = "list")]
    pub target: Option<String>,
}

/// Runs `weft switch`.
pub async fn run(args: SwitchArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let profiles = ctx.api(ctx.client.profiles().await)?;
    let Some(target) = args.target else {
        if args.json {
            out::json(&profiles)?;
        } else {
            out!("{}", render_list(&profiles));
        }
        return Ok(ExitCode::SUCCESS);
    };
    let profile = pick(&profiles, &target)?;
    let name = profile.display_account();
    if profile.selected {
        errln!("Already on account {name:?}");
        return Ok(ExitCode::SUCCESS);
    }
    errln!("Switching to account {name:?}");
    ctx.api(spin("Switching", ctx.client.switch_profile(&profile.id)).await)?;
    let status = ctx.api(ctx.client.status().await)?;
    if status.backend_state == BackendState::NeedsLogin {
        errln!("Logged out.\nTo log in, run:\n  {} up", ctx.prog());
    } else {
        errln!("Success.");
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the `--list` table: ID (`*` on the current), the login server,
/// the tailnet name from that server, the account and the nickname, each in
/// its own column (`-` when unknown).
pub fn render_list(profiles: &[ProfileSummary]) -> String {
    let mut table = Table::default();
    table.row(["ID", "Server", "Tailnet", "Account", "Nickname"]);
    let or_dash = |v: Option<&str>| v.unwrap_or("-").to_owned();
    for p in profiles {
        let mark = if p.selected { "*" } else { "" };
        table.row([
            format!("{}{mark}", p.id),
            p.control_url.clone(),
            or_dash(p.tailnet.as_deref()),
            or_dash(p.account.as_deref()),
            or_dash(p.nickname.as_deref()),
        ]);
    }
    table.render()
}

/// Returns the profile `target` names: by ID, else nickname, else account.
///
/// # Errors
/// When nothing matches, or several profiles share the matching nickname or
/// account.
pub fn pick<'a>(
    profiles: &'a [ProfileSummary],
    target: &str,
) -> anyhow::Result<&'a ProfileSummary> {
    let by: [&dyn Fn(&ProfileSummary) -> bool; 3] = [
        &|p| p.id.eq_ignore_ascii_case(target),
        &|p| p.nickname.as_deref() == Some(target),
        &|p| p.account.as_deref() == Some(target),
    ];
    for matches in by {
        let found: Vec<&ProfileSummary> = profiles.iter().filter(|p| matches(p)).collect();
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                let ids: Vec<&str> = many.iter().map(|p| p.id.as_str()).collect();
                bail!(
                    "{target:?} matches several profiles ({}); use the ID",
                    ids.join(", ")
                );
            }
        }
    }
    bail!("no profile matches {target:?} (see 'weft switch --list')")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(
        id: &str,
        nick: Option<&str>,
        account: Option<&str>,
        selected: bool,
    ) -> ProfileSummary {
        ProfileSummary {
            id: id.into(),
            nickname: nick.map(Into::into),
            tailnet: account.map(|_| "example.weft.internal".into()),
            account: account.map(Into::into),
            control_url: "http://127.0.0.1:8080".into(),
            selected,
            registered: account.is_some(),
        }
    }

    fn sample() -> Vec<ProfileSummary> {
        vec![
            profile("a1b2", None, Some("alice@example.com"), true),
            profile("c3d4", Some("work"), Some("alice@corp.example"), false),
            profile("e5f6", None, None, false),
        ]
    }

    #[test]
    fn the_list_shows_server_tailnet_account_and_nickname_in_their_own_columns() {
        let mut ps = sample();
        ps[1].control_url = "https://ctl.corp.example".into();
        assert_eq!(
            render_list(&ps),
            "ID     Server                    Tailnet                Account             Nickname\n\
             a1b2*  http://127.0.0.1:8080     example.weft.internal  alice@example.com   -\n\
             c3d4   https://ctl.corp.example  example.weft.internal  alice@corp.example  work\n\
             e5f6   http://127.0.0.1:8080     -                      -                   -\n"
        );
    }

    #[test]
    fn targets_match_by_id_then_nickname_then_account() {
        let ps = sample();
        assert_eq!(pick(&ps, "C3D4").unwrap().id, "c3d4");
        assert_eq!(pick(&ps, "work").unwrap().id, "c3d4");
        assert_eq!(pick(&ps, "alice@example.com").unwrap().id, "a1b2");
        let err = pick(&ps, "bob").unwrap_err().to_string();
        assert_eq!(err, "no profile matches \"bob\" (see 'weft switch --list')");
    }

    #[test]
    fn an_id_wins_over_a_nickname_that_looks_like_one() {
        let mut ps = sample();
        ps[0].nickname = Some("c3d4".into());
        assert_eq!(pick(&ps, "c3d4").unwrap().id, "c3d4");
    }
}
