//! `weft status`: this node and its peers, one aligned row each.
//!
//! Columns: first tailnet IP, short name (or `("hostname")` when the node has
//! no DNS name), owner (`alice@`, `tagged-devices`, or `-`), OS, status. Self
//! comes first with status `-`; peers follow sorted by name. A peer's status
//! field is one of:
//!
//! | field | meaning |
//! |---|---|
//! | `-` | online, no traffic with it yet |
//! | `idle, tx N rx M` | online, traffic earlier but not recently |
//! | `active; direct IP:PORT, tx N rx M` | traffic now, over a direct UDP path |
//! | `active; relay "NAME", tx N rx M` | traffic now, through a relay |
//! | `offline` / `offline, last seen 5m ago` | control sees it offline (`42s`, `5m`, `3h`, `2d`) |
//! | `expired` | its node key expired; it must log in again |
//!
//! (`, tx N rx M`, byte counts, appears once any traffic has flowed.) Health
//! problems follow as a `# Health check:` footer. When the backend is not
//! running, it prints why (and the pending login URL) and exits 1.

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::ArgAction;
use weft_localapi::{PeerStatus, Status};

use crate::ctx::Ctx;
use crate::out::{self, escape, out, outln};
use crate::render::{Table, format_age};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print the full status as JSON (the LocalAPI's Status; fields are only ever added)
    #[arg(long)]
    pub json: bool,
    /// Show this node
    #[arg(long = "self", value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub show_self: bool,
    /// Show peers
    #[arg(long, value_name = "BOOL", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = ArgAction::Set)]
    pub peers: bool,
    /// Show only peers with traffic right now
    #[arg(long)]
    pub active: bool,
    /// Print a header row
    #[arg(long)]
    pub header: bool,
}

/// Runs `weft status`.
pub async fn run(args: StatusArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = ctx.api(ctx.client.status().await)?;
    if args.json {
        out::json(&status)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(why) = status.backend_state.not_running_message() {
        outln!("{why}");
        // Why it stopped, when the daemon knows (key expired, deleted at control, …).
        for problem in &status.health {
            outln!("# {}", escape(problem));
        }
        if let Some(url) = &status.auth_url {
            outln!("\nLog in at: {}", escape(url));
        }
        return Ok(ExitCode::FAILURE);
    }
    #[allow(clippy::disallowed_methods)] // wall time enters here, for "last seen … ago"
    let now = SystemTime::now();
    let now_ms = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    out!("{}", render(&status, &args, now_ms));
    Ok(ExitCode::SUCCESS)
}

/// Returns the status table (and health footer) as text; `now_ms` is the
/// wall clock in unix milliseconds.
pub fn render(status: &Status, args: &StatusArgs, now_ms: i64) -> String {
    let mut table = Table::default();
    if args.header {
        table.row(["IP", "Name", "Owner", "OS", "Status"]);
    }
    if args.show_self
        && let Some(me) = &status.self_node
    {
        table.row(row(me, "-".to_owned()));
    }
    if args.peers {
        let mut peers: Vec<&PeerStatus> = status
            .peers
            .iter()
            .filter(|p| p.active || !args.active)
            .collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        for p in peers {
            table.row(row(p, peer_field(p, now_ms)));
        }
    }
    let mut out = table.render();
    if !status.health.is_empty() {
        out.push_str("# Health check:\n");
        for problem in &status.health {
            out.push_str(&format!("#     - {}\n", escape(problem)));
        }
    }
    out
}

fn row(p: &PeerStatus, field: String) -> [String; 5] {
    let ip = p
        .addresses
        .first()
        .map_or_else(|| "-".to_owned(), ToString::to_string);
    let name = if p.name.is_empty() {
        format!("({:?})", p.hostname)
    } else {
        p.name.clone()
    };
    let os = if p.os.is_empty() {
        "-".to_owned()
    } else {
        p.os.clone()
    };
    [ip, name, owner(p), os, field]
}

/// Returns the owner column: the login cut after the `@`, `tagged-devices`
/// for tagged nodes, `-` when unknown.
fn owner(p: &PeerStatus) -> String {
    match &p.user {
        Some(login) => match login.find('@') {
            Some(at) => login.get(..=at).unwrap_or(login).to_owned(),
            None => login.clone(),
        },
        None if !p.tags.is_empty() => "tagged-devices".to_owned(),
        None => "-".to_owned(),
    }
}

/// Returns a peer's status field (see the module doc for the grammar).
pub fn peer_field(p: &PeerStatus, now_ms: i64) -> String {
    if p.expired {
        return "expired".to_owned();
    }
    if !p.online {
        return match p.last_seen_ms {
            Some(seen) => {
                let ago =
                    Duration::from_millis(u64::try_from(now_ms.saturating_sub(seen)).unwrap_or(0));
                format!("offline, last seen {} ago", format_age(ago))
            }
            None => "offline".to_owned(),
        };
    }
    let traffic = p.tx_bytes > 0 || p.rx_bytes > 0;
    let mut field = if p.active {
        match (&p.cur_addr, &p.relay) {
            (Some(addr), _) => format!("active; direct {addr}"),
            (None, Some(relay)) => format!("active; relay {relay:?}"),
            (None, None) => "active".to_owned(),
        }
    } else if traffic {
        "idle".to_owned()
    } else {
        return "-".to_owned();
    };
    if traffic {
        field.push_str(&format!(", tx {} rx {}", p.tx_bytes, p.rx_bytes));
    }
    field
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
