//! `weft set`: change the preferences you name and nothing else (unlike
//! `up`, whose flags describe the complete settings).

use std::process::ExitCode;

use clap::builder::BoolishValueParser;
use weft_localapi::PrefsPatch;

use crate::ctx::Ctx;
use crate::prefs::parse_hostname;

#[derive(Debug, Default, clap::Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
pub struct SetArgs {
    /// The profile's nickname, shown by 'weft switch --list' (empty clears it)
    #[arg(long, value_name = "NAME", group = "change")]
    pub nickname: Option<String>,
    /// Run weftd's SSH server on the tailnet addresses
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, group = "change",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ssh: Option<bool>,
    /// Let `ssh -X`/`-Y` forward X11 to this node's SSH server
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, group = "change",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub ssh_x11: Option<bool>,
    /// Refuse all new inbound connections
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, group = "change",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub shields_up: Option<bool>,
    /// Use the tailnet's DNS settings
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, group = "change",
          default_missing_value = "true", value_parser = BoolishValueParser::new())]
    pub accept_dns: Option<bool>,
    /// The name to use instead of the OS hostname (empty: the OS hostname)
    #[arg(long, value_name = "NAME", value_parser = parse_hostname, group = "change")]
    pub hostname: Option<String>,
}

impl SetArgs {
    /// Returns the patch that changes exactly the mentioned prefs.
    pub fn patch(&self) -> PrefsPatch {
        let clearable = |v: &Option<String>| v.as_ref().map(|s| (!s.is_empty()).then(|| s.clone()));
        PrefsPatch {
            nickname: clearable(&self.nickname),
            run_ssh: self.ssh,
            ssh_x11: self.ssh_x11,
            shields_up: self.shields_up,
            accept_dns: self.accept_dns,
            hostname: clearable(&self.hostname),
            ..PrefsPatch::default()
        }
    }
}

/// Runs `weft set`.
pub async fn run(args: SetArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let patch = args.patch();
    ensure_expressible(&patch)?;
    ctx.api(ctx.client.edit_prefs(&patch).await)?;
    Ok(ExitCode::SUCCESS)
}

/// Checks that `patch` means the same after a trip through JSON. Clearing
/// (`--hostname=`, `--nickname=`) is `Some(None)`, which the LocalAPI's
/// `PrefsPatch` currently serializes as `null` — the same as "unchanged" —
/// so the daemon would silently ignore it.
///
/// # Errors
/// When the patch would lose a change on the wire.
fn ensure_expressible(patch: &PrefsPatch) -> anyhow::Result<()> {
    let wire: PrefsPatch = serde_json::from_value(serde_json::to_value(patch)?)?;
    if wire != *patch {
        anyhow::bail!(
            "weftd's LocalAPI cannot clear --hostname or --nickname through 'weft set' yet; \
             to go back to the OS hostname use 'weft up --hostname=' (with your other flags)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        set: SetArgs,
    }

    fn parse(args: &[&str]) -> Result<SetArgs, clap::Error> {
        Wrap::try_parse_from(std::iter::once("set").chain(args.iter().copied())).map(|w| w.set)
    }

    #[test]
    fn only_the_mentioned_prefs_are_in_the_patch() {
        let patch = parse(&["--ssh", "--hostname="]).unwrap().patch();
        let want = PrefsPatch {
            run_ssh: Some(true),
            hostname: Some(None),
            ..PrefsPatch::default()
        };
        assert_eq!(patch, want);
        let patch = parse(&["--nickname=work", "--accept-dns=false"])
            .unwrap()
            .patch();
        let want = PrefsPatch {
            nickname: Some(Some("work".into())),
            accept_dns: Some(false),
            ..PrefsPatch::default()
        };
        assert_eq!(patch, want);
    }

    #[test]
    fn patches_that_set_values_survive_the_wire() {
        let patch = parse(&["--ssh=false", "--hostname=box", "--nickname=n"])
            .unwrap()
            .patch();
        assert!(ensure_expressible(&patch).is_ok());
    }

    #[test]
    fn set_without_flags_is_a_usage_error() {
        let err = parse(&[]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
