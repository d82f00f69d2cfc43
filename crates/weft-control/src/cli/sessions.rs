//! `ssh sessions list|show|play`: recorded SSH sessions (asciicast v2 files
//! nodes uploaded), and replaying one in the terminal.

use std::io::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use weft_control::admin::types::SshSessionView;

use super::fmt::{relative, table};
use super::out::{out, outln};
use super::{Conn, now_ms, print_json};

/// The longest pause `play` makes between two events unless told.
const DEFAULT_MAX_IDLE: f64 = 2.0;

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List recorded sessions, newest first.
    List {
        /// At most this many (1-500; default 50).
        #[arg(long)]
        limit: Option<u32>,
        /// The page after this cursor (the `next` of a `--json` listing).
        #[arg(long)]
        before: Option<String>,
    },
    /// Show one recorded session's details.
    Show {
        /// The session id (from `list`).
        id: String,
    },
    /// Replay a recorded session's output in this terminal.
    #[command(after_help = "Examples:\n  \
        weft-control ssh sessions play 0123456789abcdef0123456789abcdef\n  \
        weft-control ssh sessions play ID --speed 4\n  \
        weft-control ssh sessions play ID --no-wait > session.txt")]
    Play {
        /// The session id (from `list`).
        id: String,
        /// Play this many times faster (0.01-1000).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print all output at once, without the pauses.
        #[arg(long)]
        no_wait: bool,
        /// Never pause longer than this many seconds between two events.
        #[arg(long, default_value_t = DEFAULT_MAX_IDLE)]
        max_idle: f64,
    },
}

pub async fn run(cmd: SessionsCmd, conn: &Conn) -> anyhow::Result<()> {
    let client = conn.client()?;
    match cmd {
        SessionsCmd::List { limit, before } => {
            let page = client
                .list_ssh_sessions(limit, before.as_deref())
                .await
                .context("cannot list recorded SSH sessions")?;
            if conn.json {
                return print_json(&page);
            }
            if page.sessions.is_empty() {
                return outln!("no recorded SSH sessions");
            }
            out!(
                "{}",
                table(
                    &[
                        "ID", "STARTED", "DURATION", "USER", "FROM", "TO", "AS", "KIND"
                    ],
                    &rows(&page.sessions)
                )
            )?;
            if let Some(next) = page.next {
                outln!("more: weft-control ssh sessions list --before {next}")?;
            }
            Ok(())
        }
        SessionsCmd::Show { id } => {
            let s = client
                .ssh_session(&id)
                .await
                .with_context(|| format!("cannot show the recorded SSH session {id}"))?;
            if conn.json {
                return print_json(&s);
            }
            let now = now_ms();
            outln!("id:          {}", s.id)?;
            outln!(
                "node:        {} ({})",
                s.node,
                s.node_id
                    .map_or_else(|| "deleted".to_owned(), |n| n.to_string())
            )?;
            outln!(
                "user:        {} from {} ({})",
                s.src_user,
                s.src_node,
                s.src_addr
            )?;
            outln!("login:       {} as local user {}", s.ssh_user, s.local_user)?;
            match &s.command {
                Some(c) => outln!("kind:        {} {c:?}", s.kind)?,
                None => outln!("kind:        {}", s.kind)?,
            }
            outln!("started:     {} ({})", s.started, relative(s.started, now))?;
            match s.ended {
                Some(e) => outln!("ended:       {e} ({})", duration(s.started, Some(e)))?,
                None => outln!("ended:       -")?,
            }
            outln!(
                "input:       {}",
                if s.input { "recorded" } else { "not recorded" }
            )?;
            outln!("size:        {} bytes", s.size_bytes)?;
            if let Some(f) = &s.failure {
                outln!("failure:     {f}")?;
            }
            outln!("play:        weft-control ssh sessions play {}", s.id)
        }
        SessionsCmd::Play {
            id,
            speed,
            no_wait,
            max_idle,
        } => {
            if !(0.01..=1000.0).contains(&speed) {
                anyhow::bail!("--speed must be between 0.01 and 1000 (got {speed})");
            }
            if !(0.0..=3600.0).contains(&max_idle) {
                anyhow::bail!("--max-idle must be between 0 and 3600 seconds (got {max_idle})");
            }
            let cast = client
                .ssh_session_cast(&id)
                .await
                .with_context(|| format!("cannot fetch the recording of SSH session {id}"))?;
            let events = output_events(&cast).with_context(|| {
                format!("the recording of SSH session {id} is not asciicast v2")
            })?;
            play(&events, speed, no_wait, max_idle).await
        }
    }
}

/// Returns the `"o"` events of an asciicast v2 file: (seconds, text).
fn output_events(cast: &[u8]) -> anyhow::Result<Vec<(f64, String)>> {
    let text = std::str::from_utf8(cast).context("not UTF-8")?;
    let mut lines = text.lines().enumerate();
    let (_, header) = lines.next().context("empty file")?;
    let header: serde_json::Value =
        serde_json::from_str(header).context("line 1: the header is not JSON")?;
    if header.get("version").and_then(serde_json::Value::as_u64) != Some(2) {
        anyhow::bail!("line 1: the header does not say version 2");
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        if line.trim().is_empty() {
            continue;
        }
        let (t, kind, data): (f64, String, String) = serde_json::from_str(line)
            .with_context(|| format!("line {}: not an event [time, code, data]", i + 1))?;
        if kind == "o" {
            out.push((t, data));
        }
    }
    Ok(out)
}

async fn play(
    events: &[(f64, String)],
    speed: f64,
    no_wait: bool,
    max_idle: f64,
) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let mut prev = 0.0f64;
    for (t, data) in events {
        if !no_wait {
            let gap = ((t - prev).max(0.0) / speed).min(max_idle);
            if gap > 0.0 {
                stdout.flush().ok();
                tokio::time::sleep(Duration::from_secs_f64(gap)).await;
            }
        }
        prev = *t;
        if stdout.write_all(data.as_bytes()).is_err() {
            // The reader went away (a pager quit).
            return Ok(());
        }
    }
    stdout.flush().ok();
    Ok(())
}

fn duration(start: i64, end: Option<i64>) -> String {
    match end {
        Some(e) => weft_control::clock::short_duration(Duration::from_millis(
            u64::try_from(e.saturating_sub(start)).unwrap_or(0),
        )),
        None => "-".into(),
    }
}

fn rows(list: &[SshSessionView]) -> Vec<Vec<String>> {
    let now = now_ms();
    list.iter()
        .map(|s| {
            vec![
                s.id.clone(),
                relative(s.started, now),
                duration(s.started, s.ended),
                s.src_user.clone(),
                s.src_node.clone(),
                s.node.clone(),
                s.local_user.clone(),
                match &s.command {
                    Some(c) => format!("{} {c:?}", s.kind),
                    None => s.kind.clone(),
                },
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_events_are_read_and_bad_lines_named() {
        let cast = b"{\"version\":2,\"width\":80,\"height\":24}\n[0.1,\"o\",\"hi\\r\\n\"]\n[0.2,\"i\",\"x\"]\n[0.3,\"r\",\"80x25\"]\n[1.5,\"o\",\"bye\"]\n";
        let ev = output_events(cast).unwrap();
        assert_eq!(ev, [(0.1, "hi\r\n".to_owned()), (1.5, "bye".to_owned())]);
        let e = output_events(b"{\"version\":1}\n").unwrap_err();
        assert!(e.to_string().contains("version 2"), "{e}");
        let e = output_events(b"{\"version\":2}\n[0.1,\"o\"]\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
