//! `audit list`: the audit log of admin actions, newest first.

use clap::Subcommand;

use super::fmt::{relative, table};
use super::out::out;
use super::{Conn, now_ms, print_json};

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// List admin actions, newest first (who, what, when, target, outcome).
    List {
        /// How many entries (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Only entries older than this id (the `next_before` of a previous page).
        #[arg(long)]
        before: Option<i64>,
    },
}

pub async fn run(cmd: AuditCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        AuditCmd::List { limit, before } => {
            let page = conn.client()?.audit(before, limit).await?;
            if conn.json {
                return print_json(&page);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = page
                .entries
                .iter()
                .map(|e| {
                    vec![
                        e.id.to_string(),
                        relative(e.created, now),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        format!("{} {}", e.outcome, e.status),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(&["ID", "WHEN", "WHO", "WHAT", "TARGET", "OUTCOME"], &rows)
            )?;
            if let Some(b) = page.next_before {
                out!("more: weft-control audit list --before {b}\n")?;
            }
            Ok(())
        }
    }
}
