//! `ssh approvals list|revoke`: the SSH check approvals in force (who
//! re-authenticated for logins from which node, until when), and taking
//! them back so the next login asks again. Approving is
//! `nodes approve <check-id> --user <login>`.

use anyhow::Context as _;
use clap::Subcommand;
use weft_control::admin::client::AdminClient;
use weft_control::admin::types::{RevokeSshApprovals, SshApprovalView};

use super::fmt::{relative, table};
use super::out::{out, outln};
use super::{Conn, now_ms, print_json};

#[derive(Debug, Subcommand)]
pub enum SshCmd {
    /// SSH check approvals: list and revoke them.
    #[command(subcommand)]
    Approvals(ApprovalsCmd),
    /// Recorded SSH sessions: list, show and play them.
    #[command(subcommand)]
    Sessions(super::sessions::SessionsCmd),
}

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List the approvals in force: logins from NODE by USER under a
    /// `check` rule are let through without asking until EXPIRES.
    List {
        /// Only this user's (login name).
        #[arg(long)]
        user: Option<String>,
        /// Only those for logins from this node (id or name).
        #[arg(long)]
        node: Option<String>,
    },
    /// Revoke approvals: the next login they covered asks again.
    #[command(after_help = "Examples:\n  \
        weft-control ssh approvals revoke --user alice --node laptop\n  \
        weft-control ssh approvals revoke --user alice\n  \
        weft-control ssh approvals revoke --all")]
    Revoke {
        /// Only this user's (login name).
        #[arg(long)]
        user: Option<String>,
        /// Only those for logins from this node (id or name).
        #[arg(long)]
        node: Option<String>,
        /// Every approval.
        #[arg(long, conflicts_with_all = ["user", "node"])]
        all: bool,
    },
}

pub async fn run(cmd: SshCmd, conn: &Conn) -> anyhow::Result<()> {
    let cmd = match cmd {
        SshCmd::Approvals(c) => c,
        SshCmd::Sessions(c) => return super::sessions::run(c, conn).await,
    };
    let client = conn.client()?;
    match cmd {
        ApprovalsCmd::List { user, node } => {
            let node = node_id(&client, node.as_deref()).await?;
            let list = client
                .list_ssh_approvals(user.as_deref(), node)
                .await
                .context("cannot list SSH check approvals")?;
            if conn.json {
                return print_json(&list);
            }
            if list.is_empty() {
                return outln!("no SSH check approvals in force");
            }
            out!(
                "{}",
                table(
                    &["USER", "NODE", "APPROVED", "EXPIRES", "BY", "LAST LOGIN TO"],
                    &rows(&list)
                )
            )
        }
        ApprovalsCmd::Revoke { user, node, all } => {
            let node = node_id(&client, node.as_deref()).await?;
            let gone = client
                .revoke_ssh_approvals(&RevokeSshApprovals { user, node, all })
                .await
                .context("cannot revoke SSH check approvals")?;
            if conn.json {
                return print_json(&gone);
            }
            for a in &gone {
                outln!(
                    "revoked: {} from {} (node {}); control asks again at the next check",
                    a.user,
                    a.node,
                    a.node_id
                )?;
            }
            if gone.is_empty() {
                outln!("no SSH check approvals were in force")?;
            }
            Ok(())
        }
    }
}

/// Returns the id of the node `arg` names (an id, or a node name).
async fn node_id(client: &AdminClient, arg: Option<&str>) -> anyhow::Result<Option<i64>> {
    let Some(arg) = arg else {
        return Ok(None);
    };
    if let Ok(id) = arg.parse() {
        return Ok(Some(id));
    }
    let nodes = client.list_nodes().await.context("cannot list nodes")?;
    nodes
        .iter()
        .find(|n| n.name == arg || n.fqdn.trim_end_matches('.') == arg.trim_end_matches('.'))
        .map(|n| Some(n.id))
        .with_context(|| {
            format!("no node is named {arg:?}; see the names and ids with: weft-control nodes list")
        })
}

fn rows(list: &[SshApprovalView]) -> Vec<Vec<String>> {
    let now = now_ms();
    list.iter()
        .map(|a| {
            vec![
                a.user.clone(),
                format!("{} ({})", a.node, a.node_id),
                relative(a.approved, now),
                relative(a.expires, now),
                a.approved_by.clone(),
                match &a.dst_node {
                    Some(d) => format!("{d} as {}", a.local_user),
                    None => format!("(deleted node) as {}", a.local_user),
                },
            ]
        })
        .collect()
}
