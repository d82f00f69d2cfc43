//! `relay-map set|show`: the relay map nodes are given.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Subcommand;
use weft_control::admin::client::AdminClientError;
use weft_control::admin::types::RelayMapConfig;

use super::out::outln;
use super::{Conn, print_json};

#[derive(Debug, Subcommand)]
pub enum RelayMapCmd {
    /// Replace the relay map (JSON: {"regions":[{"id","code","name","nodes":[{"name","host",
    /// "relay_port","stun_port"}]}]}); refused, and nothing changes, if invalid.
    Set {
        /// The relay map file (JSON).
        file: PathBuf,
    },
    /// Print the relay map in force.
    Show,
}

pub async fn run(cmd: RelayMapCmd, conn: &Conn) -> anyhow::Result<()> {
    let map = match cmd {
        RelayMapCmd::Set { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let map: RelayMapConfig = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a relay map (JSON with \"regions\": a list of regions)",
                    file.display()
                )
            })?;
            conn.client()?
                .set_relay_map(&map)
                .await
                .map_err(|e| match e {
                    AdminClientError::Api { message, .. } => anyhow::anyhow!("{message}"),
                    other => other.into(),
                })?
        }
        RelayMapCmd::Show => conn.client()?.relay_map().await?,
    };
    if conn.json {
        return print_json(&map);
    }
    for r in &map.regions {
        outln!("region {} {} ({})", r.id, r.code, r.name)?;
        for n in &r.nodes {
            let scheme = if n.insecure_for_tests {
                "http"
            } else {
                "https"
            };
            let stun = if n.stun_port == 0 {
                "no STUN".to_owned()
            } else {
                format!("STUN {}", n.stun_port)
            };
            outln!(
                "  {}  {scheme}://{}:{}  {stun}",
                n.name,
                n.host,
                n.relay_port
            )?;
        }
    }
    if map.regions.is_empty() {
        outln!("no relays")?;
    }
    Ok(())
}
