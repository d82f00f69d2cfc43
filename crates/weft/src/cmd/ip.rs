//! `weft ip [-4|-6] [peer]`: this node's tailnet addresses, or a peer's, one
//! per line.

use std::process::ExitCode;

use anyhow::{anyhow, bail};

use crate::ctx::Ctx;
use crate::out::outln;
use crate::render::state_word;
use crate::resolve::find_node;

#[derive(Debug, clap::Args)]
pub struct IpArgs {
    /// Only the IPv4 address
    #[arg(short = '4', conflicts_with = "v6")]
    pub v4: bool,
    /// Only the IPv6 address
    #[arg(short = '6')]
    pub v6: bool,
    /// A peer's name or address (default: this node)
    #[arg(value_name = "PEER")]
    pub peer: Option<String>,
}

/// Runs `weft ip`.
pub async fn run(args: IpArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = ctx.api(ctx.client.status().await)?;
    let node = match &args.peer {
        Some(query) => find_node(&status, query)?.node,
        // Before its netmap, self has its identity but no addresses yet.
        None => status
            .self_node
            .as_ref()
            .filter(|me| !me.addresses.is_empty())
            .ok_or_else(|| {
                anyhow!(
                    "no current Weft IPs; state: {}",
                    state_word(status.backend_state)
                )
            })?,
    };
    let addrs: Vec<_> = node
        .addresses
        .iter()
        .filter(|a| (!args.v4 || a.is_ipv4()) && (!args.v6 || a.is_ipv6()))
        .collect();
    if addrs.is_empty() {
        let family = if args.v4 {
            "IPv4 "
        } else if args.v6 {
            "IPv6 "
        } else {
            ""
        };
        bail!("{} has no {family}tailnet address", node.name);
    }
    for a in addrs {
        outln!("{a}");
    }
    Ok(ExitCode::SUCCESS)
}
