//! `users`, `keys`, `nodes`, `apikeys`: thin commands over the admin API.

use std::time::Duration;

use anyhow::Context as _;
use clap::Subcommand;
use weft_control::admin::types::{NewApiKey, NewPreauthKey, NewUser, NodeView, SshCheckApproved};
use weft_types::time::parse_duration;

use super::fmt::{relative, table};
use super::out::{errln, out, outln};
use super::{Conn, now_ms, print_json};

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Create a user.
    Create {
        /// Login name, e.g. alice or alice@example.com.
        login: String,
        /// Display name.
        #[arg(long)]
        display_name: Option<String>,
        /// Make the user an admin (autogroup:admin).
        #[arg(long)]
        admin: bool,
    },
    /// List users.
    List,
    /// Delete a user that owns no nodes.
    Delete {
        /// Login name.
        login: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a pre-auth key (shown once).
    Create {
        /// The user the key registers nodes for.
        #[arg(long)]
        user: Option<String>,
        /// The key may be used more than once.
        #[arg(long)]
        reusable: bool,
        /// Nodes registered with it are deleted soon after going offline.
        #[arg(long)]
        ephemeral: bool,
        /// Tags for registered nodes (tag:a,tag:b); the nodes are then owned by the tags.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// How long the key is accepted.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        expiration: Duration,
        /// Node-key lifetime of registered nodes (default: the server's; 0 = never).
        #[arg(long, value_parser = parse_duration)]
        node_key_expiry: Option<Duration>,
    },
    /// List pre-auth keys.
    List {
        /// Only this user's keys.
        #[arg(long)]
        user: Option<String>,
    },
    /// Expire (revoke) a pre-auth key now.
    Expire {
        /// Key id (from keys list).
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// List nodes.
    List,
    /// Approve an interactive login (the id at the end of the login URL).
    Approve {
        /// The login id (from the URL <server>/a/<auth-id>).
        auth_id: String,
        /// The user the node will belong to.
        #[arg(long)]
        user: String,
    },
    /// Decline an interactive login.
    Reject {
        /// The login id.
        auth_id: String,
    },
    /// Expire a node's key now (it must log in again).
    Expire {
        /// Node id.
        id: i64,
    },
    /// Delete a node.
    Delete {
        /// Node id.
        id: i64,
    },
    /// Rename a node (its DNS name).
    Rename {
        /// Node id.
        id: i64,
        /// New name: lowercase letters, digits and '-'.
        name: String,
    },
    /// Replace a node's tags (tag:x,tag:y; "" gives it back to its user).
    Tags {
        /// Node id.
        id: i64,
        /// Comma-separated tags.
        #[arg(value_delimiter = ',')]
        tags: Vec<String>,
    },
    /// Authorize a node waiting for device approval (or --revoke it).
    Authorize {
        /// Node id.
        id: i64,
        /// Withdraw the authorization.
        #[arg(long)]
        revoke: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCmd {
    /// Create an API key (shown once).
    Create {
        /// What it is for.
        #[arg(long, default_value = "")]
        description: String,
        /// How long it is accepted (default: until expired by hand).
        #[arg(long, value_parser = parse_duration)]
        expiration: Option<Duration>,
    },
    /// List API keys.
    List,
    /// Expire an API key now.
    Expire {
        /// Key id (from apikeys list).
        id: i64,
    },
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub async fn users(cmd: UsersCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        UsersCmd::Create {
            login,
            display_name,
            admin,
        } => {
            let u = conn
                .client()?
                .create_user(&NewUser {
                    login_name: login,
                    display_name,
                    role: Some(if admin { "admin" } else { "member" }.into()),
                })
                .await?;
            if conn.json {
                return print_json(&u);
            }
            outln!("created user {} (id {}, {})", u.login_name, u.id, u.role)?;
        }
        UsersCmd::List => {
            let users = conn.client()?.list_users().await?;
            if conn.json {
                return print_json(&users);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.id.to_string(),
                        u.login_name.clone(),
                        u.display_name.clone(),
                        u.role.clone(),
                        relative(u.created, now),
                    ]
                })
                .collect();
            out!(
                "{}",
                table(&["ID", "LOGIN", "NAME", "ROLE", "CREATED"], &rows)
            )?;
        }
        UsersCmd::Delete { login } => {
            let u = conn.client()?.delete_user(&login).await?;
            if conn.json {
                return print_json(&u);
            }
            outln!("deleted user {}", u.login_name)?;
        }
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        KeysCmd::Create {
            user,
            reusable,
            ephemeral,
            tags,
            expiration,
            node_key_expiry,
        } => {
            if user.is_none() && tags.is_empty() {
                anyhow::bail!(
                    "give --user USER or --tags tag:x (a key needs an owner for its nodes)"
                );
            }
            let k = conn
                .client()?
                .create_preauth_key(&NewPreauthKey {
                    user,
                    reusable,
                    ephemeral,
                    tags,
                    expiration_ms: Some(ms(expiration)),
                    node_key_expiry_ms: node_key_expiry.map(ms),
                })
                .await?;
            if conn.json {
                return print_json(&k);
            }
            outln!("{}", k.secret)?;
            errln!(
                "pre-auth key {} ({}{}), expires {}. It is shown only now: store it safely.\nUse it on a node: weft up --auth-key {}",
                k.key.id,
                if k.key.reusable {
                    "reusable"
                } else {
                    "single-use"
                },
                if k.key.ephemeral { ", ephemeral" } else { "" },
                relative(k.key.expires, now_ms()),
                k.secret
            );
        }
        KeysCmd::List { user } => {
            let keys = conn.client()?.list_preauth_keys(user.as_deref()).await?;
            if conn.json {
                return print_json(&keys);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    let state = if k.revoked.is_some() {
                        "revoked".to_owned()
                    } else if k.expires <= now {
                        "expired".to_owned()
                    } else if !k.usable {
                        "used".to_owned()
                    } else {
                        "usable".to_owned()
                    };
                    vec![
                        k.id.to_string(),
                        format!("weftkey-auth-{}-…", k.prefix),
                        k.user.clone().unwrap_or_else(|| "-".into()),
                        if k.reusable {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        if k.ephemeral {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        if k.tags.is_empty() {
                            "-".into()
                        } else {
                            k.tags.join(",")
                        },
                        k.used_count.to_string(),
                        relative(k.expires, now),
                        state,
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "KEY",
                        "USER",
                        "REUSABLE",
                        "EPHEMERAL",
                        "TAGS",
                        "USED",
                        "EXPIRES",
                        "STATE"
                    ],
                    &rows
                )
            )?;
        }
        KeysCmd::Expire { id } => {
            let k = conn.client()?.expire_preauth_key(id).await?;
            if conn.json {
                return print_json(&k);
            }
            outln!(
                "pre-auth key {} (weftkey-auth-{}-…) is expired",
                k.id,
                k.prefix
            )?;
        }
    }
    Ok(())
}

fn node_rows(nodes: &[NodeView]) -> Vec<Vec<String>> {
    let now = now_ms();
    nodes
        .iter()
        .map(|n| {
            let owner = match (&n.user, n.tags.is_empty()) {
                (_, false) => n.tags.join(","),
                (Some(u), true) => u.clone(),
                (None, true) => "-".into(),
            };
            let state = if !n.authorized {
                "needs approval".to_owned()
            } else if n.expired {
                "expired".to_owned()
            } else if n.online {
                "online".to_owned()
            } else {
                match n.last_seen {
                    Some(t) => format!("offline, seen {}", relative(t, now)),
                    None => "never connected".to_owned(),
                }
            };
            let expiry = match n.key_expiry {
                Some(t) => relative(t, now),
                None => "never".into(),
            };
            vec![
                n.id.to_string(),
                n.name.clone(),
                n.ipv4.clone(),
                owner,
                state,
                expiry,
                if n.ephemeral {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]
        })
        .collect()
}

/// Says what an approved SSH check let through (not registration wording).
fn ssh_check_approved(c: &SshCheckApproved) -> String {
    let period = std::time::Duration::from_millis(c.period_ms);
    let further = if period.is_zero() {
        "the next login asks again".to_owned()
    } else {
        format!(
            "further logins from {} are approved for {}",
            c.src_name,
            weft_control::clock::short_duration(period)
        )
    };
    format!(
        "approved SSH check: {} from {} may log in to {} as {} (local user {}); {further}",
        c.login, c.src_name, c.dst_name, c.ssh_user, c.local_user
    )
}

fn print_node(action: &str, n: &NodeView, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(n);
    }
    outln!("{action} node {} ({}, {})", n.id, n.name, n.ipv4)?;
    Ok(())
}

pub async fn nodes(cmd: NodesCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        NodesCmd::List => {
            let nodes = conn.client()?.list_nodes().await?;
            if conn.json {
                return print_json(&nodes);
            }
            out!(
                "{}",
                table(
                    &[
                        "ID",
                        "NAME",
                        "IPV4",
                        "OWNER",
                        "STATE",
                        "KEY EXPIRY",
                        "EPHEMERAL"
                    ],
                    &node_rows(&nodes)
                )
            )?;
        }
        NodesCmd::Approve { auth_id, user } => {
            let n = conn
                .client()?
                .approve_login(&auth_id, &user)
                .await
                .with_context(|| format!("cannot approve login {auth_id}"))?;
            if conn.json {
                print_json(&n)?;
            } else if let Some(c) = &n.ssh_check {
                outln!("{}", ssh_check_approved(c))?;
            } else {
                print_node(&format!("approved; {user} owns"), &n.node, false)?;
            }
        }
        NodesCmd::Reject { auth_id } => {
            conn.client()?
                .reject_login(&auth_id)
                .await
                .with_context(|| format!("cannot decline login {auth_id}"))?;
            if !conn.json {
                outln!("declined login {auth_id}")?;
            }
        }
        NodesCmd::Expire { id } => {
            let n = conn.client()?.expire_node(id).await?;
            print_node("expired the key of", &n, conn.json)?;
        }
        NodesCmd::Delete { id } => {
            let n = conn.client()?.delete_node(id).await?;
            print_node("deleted", &n, conn.json)?;
        }
        NodesCmd::Rename { id, name } => {
            let n = conn.client()?.rename_node(id, &name).await?;
            print_node("renamed", &n, conn.json)?;
        }
        NodesCmd::Tags { id, tags } => {
            let n = conn.client()?.set_node_tags(id, &tags).await?;
            print_node("tagged", &n, conn.json)?;
        }
        NodesCmd::Authorize { id, revoke } => {
            let n = conn.client()?.authorize_node(id, !revoke).await?;
            print_node(
                if revoke {
                    "withdrew the authorization of"
                } else {
                    "authorized"
                },
                &n,
                conn.json,
            )?;
        }
    }
    Ok(())
}

pub async fn apikeys(cmd: ApiKeysCmd, conn: &Conn) -> anyhow::Result<()> {
    match cmd {
        ApiKeysCmd::Create {
            description,
            expiration,
        } => {
            let k = conn
                .client()?
                .create_api_key(&NewApiKey {
                    description,
                    expiration_ms: expiration.map(ms),
                })
                .await?;
            if conn.json {
                return print_json(&k);
            }
            outln!("{}", k.secret)?;
            errln!(
                "API key {} created. It is shown only now: store it safely.\nUse it: weft-control --server URL --api-key KEY nodes list",
                k.key.id
            );
        }
        ApiKeysCmd::List => {
            let keys = conn.client()?.list_api_keys().await?;
            if conn.json {
                return print_json(&keys);
            }
            let now = now_ms();
            let rows: Vec<Vec<String>> = keys
                .iter()
                .map(|k| {
                    vec![
                        k.id.to_string(),
                        format!("weftkey-api-{}-…", k.prefix),
                        k.description.clone(),
                        k.expires
                            .map_or_else(|| "never".into(), |t| relative(t, now)),
                        k.last_used
                            .map_or_else(|| "never".into(), |t| relative(t, now)),
                        if k.usable {
                            "usable".into()
                        } else {
                            "expired".into()
                        },
                    ]
                })
                .collect();
            out!(
                "{}",
                table(
                    &["ID", "KEY", "DESCRIPTION", "EXPIRES", "LAST USED", "STATE"],
                    &rows
                )
            )?;
        }
        ApiKeysCmd::Expire { id } => {
            let k = conn.client()?.expire_api_key(id).await?;
            if conn.json {
                return print_json(&k);
            }
            outln!("API key {} (weftkey-api-{}-…) is expired", k.id, k.prefix)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approved_ssh_check_says_who_may_log_in_where_as_whom() {
        let mut c = SshCheckApproved {
            login: "alice".into(),
            src_name: "laptop".into(),
            dst_name: "server".into(),
            ssh_user: "bob".into(),
            local_user: "bob".into(),
            period_ms: 3_600_000,
        };
        let line = ssh_check_approved(&c);
        assert!(
            line.starts_with(
                "approved SSH check: alice from laptop may log in to server as bob (local user bob); \
                 further logins from laptop are approved for 1h"
            ),
            "{line}"
        );
        assert!(!line.contains("owns"), "no registration wording: {line}");
        c.period_ms = 0;
        assert!(ssh_check_approved(&c).ends_with("the next login asks again"));
    }
}
