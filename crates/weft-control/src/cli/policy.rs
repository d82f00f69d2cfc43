//! `policy check|set|get|explain|history|rollback`, against a server or offline.
//!
//! Exit status of `check` and `explain`: 0 ok / allowed, 1 tests failed /
//! denied, 2 invalid input or an unanswerable question (as docs/POLICY.md
//! says).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;
use weft_control::admin::client::AdminClientError;
use weft_control::admin::types::ExplainQuery;
use weft_policy::offline::{Outcome, Source};

use super::out::{errln, out, outln};
use super::{Conn, fmt, print_json};

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    /// Validate a policy file and run its tests (against the server's
    /// tailnet, or offline against --nodes NODES.json).
    Check {
        /// The policy file (HuJSON).
        file: PathBuf,
        /// Check offline against this tailnet description.
        #[arg(long)]
        nodes: Option<PathBuf>,
    },
    /// Replace the policy; refused (the old one stays) if invalid or a test fails.
    Set {
        /// The policy file (HuJSON).
        file: PathBuf,
    },
    /// Print the policy in force, or with --version an older saved one.
    Get {
        /// A saved version (from `policy history`).
        #[arg(long)]
        version: Option<i64>,
    },
    /// List the saved policy versions, newest first (who saved each, when).
    History {
        /// How many versions to list.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Save an old version again (validated and tested like `set`).
    Rollback {
        /// The version to restore (from `policy history`).
        version: i64,
    },
    /// Explain whether a flow is allowed and which rule decides.
    Explain {
        /// Source: a node name, user login, tag or address.
        #[arg(long)]
        src: String,
        /// Destination: <node|ip>:<port> ([v6]:port for IPv6).
        #[arg(long)]
        dst: String,
        /// Protocol: tcp (default), udp, icmp, …
        #[arg(long)]
        proto: Option<String>,
        /// Explain offline with this policy file (needs --nodes).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The tailnet description for offline use.
        #[arg(long)]
        nodes: Option<PathBuf>,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn exit(outcome: Outcome) -> ExitCode {
    ExitCode::from(u8::try_from(outcome.exit_code()).unwrap_or(2))
}

pub async fn run(cmd: PolicyCmd, conn: &Conn) -> anyhow::Result<ExitCode> {
    match cmd {
        PolicyCmd::Check { file, nodes } => {
            let text = read(&file)?;
            if let Some(nodes) = nodes {
                let nodes_text = read(&nodes)?;
                let report = weft_policy::offline_check(
                    Source {
                        name: &name(&file),
                        text: &text,
                    },
                    Source {
                        name: &name(&nodes),
                        text: &nodes_text,
                    },
                );
                if conn.json {
                    print_json(&report)?;
                } else {
                    out!("{report}")?;
                }
                return Ok(exit(report.outcome));
            }
            // Syntax and validation need no server: report them even when none is running.
            if let Err(e) = weft_policy::Policy::parse_named(&name(&file), &text) {
                if conn.json {
                    print_json(&serde_json::json!({ "ok": false, "error": e.to_string() }))?;
                } else {
                    outln!("{e}")?;
                }
                return Ok(exit(Outcome::Invalid));
            }
            let check = conn
                .client()?
                .check_policy(&text, Some(&name(&file)))
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{e}\nThe file is valid. To run its tests without a server: \
                     weft-control policy check {} --nodes NODES.json (see docs/POLICY.md)",
                        file.display()
                    )
                })?;
            if conn.json {
                print_json(&check)?;
            } else if let Some(e) = &check.error {
                outln!("{e}")?;
            } else if let Some(r) = &check.report {
                outln!("{r}")?;
            }
            Ok(exit(match (check.ok, check.error.is_some()) {
                (true, _) => Outcome::Ok,
                (false, true) => Outcome::Invalid,
                (false, false) => Outcome::Failed,
            }))
        }
        PolicyCmd::Set { file } => {
            let text = read(&file)?;
            // The server parses it again; parsing here first names this file in the errors
            // (the server knows no file name) and sends nothing that cannot apply.
            if let Err(e) = weft_policy::Policy::parse_named(&name(&file), &text) {
                anyhow::bail!("policy refused, the old policy stays in force: {e}");
            }
            let client = conn.client()?;
            let file_name = name(&file);
            let set = client.set_policy(&text, Some(&file_name));
            let v = super::progress::while_waiting(
                set,
                "applying the policy to every node (the server answers once it is in force)",
            )
            .await
            .map_err(|e| match e {
                AdminClientError::Api { message, .. } => anyhow::anyhow!("{message}"),
                other => other.into(),
            })?;
            if conn.json {
                print_json(&v)?;
            } else {
                outln!(
                    "policy version {} is in force; nodes receive their new filters now",
                    v.version.unwrap_or_default()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::History { limit } => {
            let versions = conn.client()?.policy_history(limit).await?;
            if conn.json {
                print_json(&versions)?;
            } else {
                let now = super::now_ms();
                let rows: Vec<Vec<String>> = versions
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.to_string(),
                            fmt::relative(v.created, now),
                            v.author.clone(),
                            if v.current {
                                "in force".into()
                            } else {
                                String::new()
                            },
                        ]
                    })
                    .collect();
                out!("{}", fmt::table(&["VERSION", "SAVED", "BY", ""], &rows))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Rollback { version } => {
            let v = conn
                .client()?
                .rollback_policy(version)
                .await
                .map_err(|e| match e {
                    AdminClientError::Api { message, .. } => anyhow::anyhow!("{message}"),
                    other => other.into(),
                })?;
            if conn.json {
                print_json(&v)?;
            } else {
                outln!(
                    "version {version} saved again as version {}, now in force",
                    v.version.unwrap_or_default()
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Get { version } => {
            let client = conn.client()?;
            let v = match version {
                Some(n) => client.policy_version(n).await?,
                None => client.policy().await?,
            };
            if conn.json {
                print_json(&v)?;
            } else {
                out!("{}", v.policy)?;
                if !v.policy.ends_with('\n') {
                    outln!()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Explain {
            src,
            dst,
            proto,
            policy,
            nodes,
        } => {
            match (policy, nodes) {
                (Some(p), Some(n)) => {
                    let (ptext, ntext) = (read(&p)?, read(&n)?);
                    let report = weft_policy::offline_explain(
                        Source {
                            name: &name(&p),
                            text: &ptext,
                        },
                        Source {
                            name: &name(&n),
                            text: &ntext,
                        },
                        &src,
                        &dst,
                        proto.as_deref(),
                    );
                    if conn.json {
                        print_json(&report)?;
                    } else {
                        out!("{report}")?;
                    }
                    return Ok(exit(report.outcome));
                }
                (Some(_), None) | (None, Some(_)) => {
                    anyhow::bail!(
                        "offline explain needs both --policy FILE and --nodes NODES.json"
                    );
                }
                (None, None) => {}
            }
            let answer = conn
                .client()?
                .explain(&ExplainQuery { src, dst, proto })
                .await;
            match answer {
                Ok(a) => {
                    if conn.json {
                        print_json(&a.explanation)?;
                    } else {
                        out!("{}", a.text)?;
                    }
                    Ok(exit(if a.verdict == "allowed" {
                        Outcome::Ok
                    } else {
                        Outcome::Failed
                    }))
                }
                Err(AdminClientError::Api { message, .. }) => {
                    errln!("weft-control: {message}");
                    Ok(exit(Outcome::Invalid))
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
