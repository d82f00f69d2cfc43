//! The `weft-stats=1` UAPI extension and `weftd wg-stats <iface>`.
//!
//! Reply body: `rx_datagrams=N`, `tx_packets=N`, then one
//! `drop_<reason>=N` line for every [`DropReason`] (zeros included, so a
//! test can tell "not counted" from "not reported"), then `errno=0`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use weft_wg::{DeviceStats, DropReason};

use super::uapi;

/// Every drop reason, in the order they are reported.
pub const DROP_REASONS: [DropReason; DropReason::ALL.len()] = DropReason::ALL;

/// Returns the snake_case name of a drop reason. (The match is exhaustive,
/// so a new reason in weft-wg fails to compile here until it is named.)
pub fn reason_name(reason: DropReason) -> &'static str {
    match reason {
        DropReason::Malformed => "malformed",
        DropReason::UnknownPeer => "unknown_peer",
        DropReason::Unauthenticated => "unauthenticated",
        DropReason::Replayed => "replayed",
        DropReason::SpoofedSource => "spoofed_source",
        DropReason::BadInnerPacket => "bad_inner_packet",
        DropReason::NoRoute => "no_route",
        DropReason::NoEndpoint => "no_endpoint",
        DropReason::NoPrivateKey => "no_private_key",
        DropReason::RateLimited => "rate_limited",
        DropReason::Expired => "expired",
        DropReason::BufferTooSmall => "buffer_too_small",
    }
}

/// Renders the reply body.
pub fn render(stats: &DeviceStats) -> String {
    let mut out = format!(
        "rx_datagrams={}\ntx_packets={}\n",
        stats.rx_datagrams, stats.tx_packets
    );
    for reason in DROP_REASONS {
        let n = stats.drops.get(&reason).copied().unwrap_or(0);
        out.push_str(&format!("drop_{}={n}\n", reason_name(reason)));
    }
    out
}

/// Arguments of `weftd wg-stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Interface name of a running `weftd wg`.
    pub iface: String,
    /// Directory of UAPI sockets.
    #[arg(long, default_value = uapi::DEFAULT_DIR)]
    pub uapi_dir: PathBuf,
}

/// Prints the counters of a running `weftd wg`, one `key=value` per line.
///
/// # Errors
/// The daemon is unreachable or refused the request.
pub fn run(args: &StatsArgs) -> anyhow::Result<()> {
    let path = uapi::socket_path(&args.uapi_dir, &args.iface);
    let body = uapi::request(&path, "weft-stats=1\n\n")?;
    std::io::stdout()
        .lock()
        .write_all(body.as_bytes())
        .context("cannot write to stdout")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_reported_with_zeros_included() {
        let mut stats = DeviceStats {
            rx_datagrams: 7,
            tx_packets: 3,
            ..DeviceStats::default()
        };
        stats.drops.insert(DropReason::Replayed, 2);
        let text = render(&stats);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "rx_datagrams=7");
        assert_eq!(lines[1], "tx_packets=3");
        assert_eq!(lines.len(), 2 + DROP_REASONS.len());
        assert!(lines.contains(&"drop_replayed=2"));
        assert!(lines.contains(&"drop_no_route=0"));
        assert!(lines.contains(&"drop_buffer_too_small=0"));
    }

    #[test]
    fn reason_names_are_unique_snake_case() {
        let mut names: Vec<&str> = DROP_REASONS.iter().map(|r| reason_name(*r)).collect();
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        );
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DROP_REASONS.len());
    }
}
