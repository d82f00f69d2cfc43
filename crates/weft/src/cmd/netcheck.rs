//! `weft netcheck [--json]`: what this node's network allows — UDP, its
//! public addresses as STUN sees them, hard NAT or not, each relay's latency
//! and the preferred (home) relay. Like `tailscale netcheck`, but from the
//! running daemon's own UDP socket, so the addresses are the WireGuard
//! socket's real mappings.

use std::fmt::Write as _;
use std::process::ExitCode;

use weft_localapi::NetcheckReport;

use crate::cmd::ping::latency;
use crate::ctx::Ctx;
use crate::out::{self, escape, out};

#[derive(Debug, clap::Args)]
pub struct NetcheckArgs {
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `weft netcheck`.
pub async fn run(args: NetcheckArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let report = ctx.api(ctx.client.netcheck().await)?;
    if args.json {
        out::json(&report)?;
    } else {
        out!("{}", render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the text form (the layout of `tailscale netcheck`).
pub fn render(r: &NetcheckReport) -> String {
    let mut s = String::from("Report:\n");
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let _ = writeln!(s, "\t* UDP: {}", r.udp);
    if let Some(ms) = r.udp_retry_in_ms.filter(|_| !r.udp) {
        let _ = writeln!(
            s,
            "\t  (blocked: traffic goes through the relay over TCP; UDP is tried again in {} s)",
            ms.div_ceil(1000)
        );
    }
    let addr = |a: Option<std::net::SocketAddr>| match a {
        Some(a) => format!("yes, {a}"),
        None => "no".to_owned(),
    };
    let _ = writeln!(s, "\t* IPv4: {}", addr(r.global_v4));
    let _ = writeln!(s, "\t* IPv6: {}", addr(r.global_v6));
    let _ = writeln!(
        s,
        "\t* MappingVariesByDestIP: {}",
        r.mapping_varies_by_dest_ip
            .map_or("unknown (fewer than two STUN answers)", yes_no_word)
    );
    let _ = writeln!(
        s,
        "\t* PortMapping: {}",
        r.port_mapping
            .map_or("not probed (weftd does not map ports yet)", |b| yes_no(b))
    );
    let preferred = r
        .preferred_region
        .and_then(|id| r.regions.iter().find(|g| g.id == id));
    let _ = writeln!(
        s,
        "\t* Nearest relay: {}",
        preferred.map_or_else(
            || "none".to_owned(),
            |g| format!("{} ({})", escape(&g.name), escape(&g.code))
        )
    );
    let _ = writeln!(s, "\t* Relay latency:");
    let mut regions: Vec<_> = r.regions.iter().collect();
    regions.sort_by(|a, b| {
        let key = |g: &&weft_localapi::NetcheckRegion| g.latency_ms.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b)).then(a.id.cmp(&b.id))
    });
    for g in regions {
        let lat = g
            .latency_ms
            .map_or_else(|| "unreachable".to_owned(), latency);
        let _ = writeln!(
            s,
            "\t\t- {}: {} ({})",
            escape(&g.code),
            lat,
            escape(&g.name)
        );
    }
    s.trim_end().to_owned()
}

fn yes_no_word(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_localapi::NetcheckRegion;

    fn region(id: u16, code: &str, latency_ms: Option<f64>) -> NetcheckRegion {
        NetcheckRegion {
            id,
            code: code.into(),
            name: format!("Region {code}"),
            latency_ms,
        }
    }

    #[test]
    fn a_report_shows_udp_addresses_nat_kind_and_relays_nearest_first() {
        let r = NetcheckReport {
            udp: true,
            global_v4: Some("198.18.5.1:41641".parse().unwrap()),
            global_v6: None,
            mapping_varies_by_dest_ip: Some(true),
            port_mapping: None,
            regions: vec![
                region(900, "weft", Some(0.42)),
                region(901, "far", Some(31.0)),
                region(902, "gone", None),
            ],
            preferred_region: Some(900),
            udp_retry_in_ms: None,
        };
        let text = render(&r);
        assert!(text.contains("UDP: true"), "{text}");
        assert!(text.contains("IPv4: yes, 198.18.5.1:41641"), "{text}");
        assert!(text.contains("IPv6: no"), "{text}");
        assert!(text.contains("MappingVariesByDestIP: true"), "{text}");
        assert!(text.contains("Nearest relay: Region weft (weft)"), "{text}");
        let (weft, far, gone) = (
            text.find("- weft: 0.4ms").unwrap(),
            text.find("- far: 31ms").unwrap(),
            text.find("- gone: unreachable").unwrap(),
        );
        assert!(weft < far && far < gone, "{text}");
    }

    #[test]
    fn blocked_udp_says_so_and_when_it_is_tried_again() {
        let r = NetcheckReport {
            udp: false,
            global_v4: None,
            global_v6: None,
            mapping_varies_by_dest_ip: None,
            port_mapping: None,
            regions: vec![region(900, "weft", Some(1.5))],
            preferred_region: Some(900),
            udp_retry_in_ms: Some(29_500),
        };
        let text = render(&r);
        assert!(text.contains("UDP: false"), "{text}");
        assert!(text.contains("tried again in 30 s"), "{text}");
        assert!(text.contains("MappingVariesByDestIP: unknown"), "{text}");
    }
}
