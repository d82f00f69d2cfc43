//! TUN addresses and tailnet routes through rtnetlink (no `ip` shell-outs).
//!
//! A worker task owns the netlink socket and applies [`AddrChange`]s in the
//! order they come: addresses first, then the routes for the
//! tailnet ranges (100.64.0.0/10 and the project ULA) through the TUN. The
//! node's own addresses need no route: the kernel's local table has them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt as _;
use ipnet::IpNet;
use rtnetlink::{Handle, RouteMessageBuilder};
use tokio::sync::mpsc;

/// The tailnet's IPv4 range.
pub const TAILNET_V4: (Ipv4Addr, u8) = (Ipv4Addr::new(100, 64, 0, 0), 10);
/// The project ULA.
pub const TAILNET_V6: (Ipv6Addr, u8) = (Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0), 48);

/// Addresses to add to and remove from the TUN.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddrChange {
    pub add: Vec<IpNet>,
    pub remove: Vec<IpNet>,
}

/// Starts the worker for interface `tun`.
///
/// # Errors
/// The netlink socket could not be opened.
pub fn spawn(tun: String) -> std::io::Result<mpsc::UnboundedSender<AddrChange>> {
    let (conn, handle, _) = rtnetlink::new_connection()?;
    tokio::spawn(conn);
    let (tx, mut rx) = mpsc::unbounded_channel::<AddrChange>();
    tokio::spawn(async move {
        let mut routed = false;
        while let Some(change) = rx.recv().await {
            if let Err(e) = apply(&handle, &tun, &change, &mut routed).await {
                tracing::error!(interface = %tun, error = %e, "Cannot program the TUN addresses/routes");
            }
        }
    });
    Ok(tx)
}

fn link_index(tun: &str) -> Result<u32, String> {
    nix::net::if_::if_nametoindex(tun).map_err(|e| format!("no interface {tun}: {e}"))
}

async fn apply(
    handle: &Handle,
    tun: &str,
    change: &AddrChange,
    routed: &mut bool,
) -> Result<(), String> {
    let index = link_index(tun)?;
    for net in &change.remove {
        let mut msgs = handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute();
        while let Some(msg) = msgs
            .try_next()
            .await
            .map_err(|e| format!("listing addresses: {e}"))?
        {
            handle
                .address()
                .del(msg)
                .execute()
                .await
                .map_err(|e| format!("removing {net}: {e}"))?;
        }
        tracing::debug!(interface = %tun, address = %net, "Address removed");
    }
    for net in &change.add {
        ignore_exists(
            handle
                .address()
                .add(index, net.addr(), net.prefix_len())
                .execute()
                .await,
        )
        .map_err(|e| format!("adding {net}: {e}"))?;
        tracing::debug!(interface = %tun, address = %net, "Address added");
    }
    // Every time addresses are added: removing the last address of a family
    // (a cleared data plane, a profile switch) makes the kernel drop the
    // routes through the interface too.
    if !change.add.is_empty() {
        let v4 = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(TAILNET_V4.0, TAILNET_V4.1)
            .output_interface(index)
            .build();
        ignore_exists(handle.route().add(v4).execute().await)
            .map_err(|e| format!("adding the route to 100.64.0.0/10: {e}"))?;
        let v6 = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(TAILNET_V6.0, TAILNET_V6.1)
            .output_interface(index)
            .build();
        ignore_exists(handle.route().add(v6).execute().await)
            .map_err(|e| format!("adding the route to fd7a:115c:a1e0::/48: {e}"))?;
        if !*routed {
            tracing::info!(interface = %tun, "Tailnet routes installed");
        }
        *routed = true;
    }
    Ok(())
}

fn ignore_exists(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(m)) if m.raw_code() == -libc::EEXIST => Ok(()),
        other => other,
    }
}

/// Returns whether `ip` is in a tailnet range.
pub fn in_tailnet(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            ipnet::Ipv4Net::new(TAILNET_V4.0, TAILNET_V4.1).is_ok_and(|n| n.contains(&v4))
        }
        IpAddr::V6(v6) => {
            ipnet::Ipv6Net::new(TAILNET_V6.0, TAILNET_V6.1).is_ok_and(|n| n.contains(&v6))
        }
    }
}
