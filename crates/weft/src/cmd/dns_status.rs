//! `weft dns status [--json]`: the OS side of MagicDNS (mode, whether Weft
//! manages the OS's DNS now, what it pushed, what the OS uses now, split
//! routes, health), from LocalAPI `GET dns/status`.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use weft_localapi::DnsStatus;

use crate::ctx::Ctx;
use crate::out::{self, escape, out};

#[derive(Debug, clap::Args)]
pub struct DnsStatusArgs {
    /// Print the LocalAPI's DnsStatus as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `weft dns status`.
pub async fn run(args: DnsStatusArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let s = ctx.api(ctx.client.dns_status().await)?;
    if args.json {
        out::json(&s)?;
    } else {
        out!("{}", render(&s));
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the text form.
pub fn render(s: &DnsStatus) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &str| {
        let _ = writeln!(out, "{:<20}{}", format!("{label}:"), escape(value));
    };
    let mode = match &s.mode_reason {
        Some(why) => format!("{} ({why})", s.mode),
        None => s.mode.clone(),
    };
    line("OS DNS mode", &mode);
    line("Accept DNS", yes_no(s.accept_dns));
    line("Managed by Weft", yes_no(s.managing));
    line("MagicDNS", if s.magic_dns { "on" } else { "off" });
    if let Some(d) = &s.domain {
        line("Tailnet domain", d);
    }
    if s.managing {
        line("Resolvers pushed", &ips(&s.resolvers));
        line("Search domains", &words(&s.search_domains));
        if s.mode == "resolved" {
            let mut routed: Vec<String> = s.match_domains.iter().map(|d| format!("~{d}")).collect();
            if s.default_route {
                routed.push("~.".into());
            }
            line("Routing domains", &routed.join(" "));
        }
    }
    if !s.global_nameservers.is_empty() {
        line("Global nameservers", &ips(&s.global_nameservers));
    }
    for (domain, servers) in &s.split_routes {
        let to = if servers.is_empty() {
            "answered by MagicDNS only".to_owned()
        } else {
            ips(servers)
        };
        line(&format!("Split DNS {domain}"), &to);
    }
    match &s.os {
        Some(os) => {
            line("OS nameservers", &ips(&os.nameservers));
            line("OS search domains", &words(&os.search));
            if !os.options.is_empty() {
                line("OS options", &os.options.join(" "));
            }
        }
        None => line("OS nameservers", "(cannot read the OS's configuration)"),
    }
    line("Host resolvers", &ips(&s.host_nameservers));
    if let Some(h) = &s.health {
        line("Health", h);
    }
    out
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn ips(v: &[IpAddr]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

fn words(v: &[String]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.join(" ")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn managed() -> DnsStatus {
        DnsStatus {
            mode: "direct".into(),
            mode_reason: None,
            accept_dns: true,
            managing: true,
            magic_dns: true,
            domain: Some("t.weft.internal".into()),
            resolvers: vec!["100.100.100.100".parse().unwrap()],
            search_domains: vec!["t.weft.internal".into()],
            match_domains: vec!["t.weft.internal".into()],
            default_route: false,
            global_nameservers: vec![],
            split_routes: [(
                "corp.example".to_owned(),
                vec!["10.0.0.53".parse().unwrap()],
            )]
            .into_iter()
            .collect(),
            os: Some(weft_localapi::OsResolvers {
                nameservers: vec!["100.100.100.100".parse().unwrap()],
                search: vec!["t.weft.internal".into()],
                options: vec![],
            }),
            host_nameservers: vec!["192.0.2.1".parse().unwrap()],
            health: None,
        }
    }

    #[test]
    fn text_shows_mode_pushed_config_os_view_and_split_routes() {
        let t = render(&managed());
        for want in [
            "OS DNS mode:        direct\n",
            "Managed by Weft:    yes\n",
            "Resolvers pushed:   100.100.100.100\n",
            "Search domains:     t.weft.internal\n",
            "Split DNS corp.example:10.0.0.53\n",
            "OS nameservers:     100.100.100.100\n",
            "Host resolvers:     192.0.2.1\n",
        ] {
            assert!(t.contains(want), "{want:?} missing from:\n{t}");
        }
        assert!(!t.contains("Health"));
    }

    #[test]
    fn an_unsupported_mode_says_why_and_the_health_problem() {
        let mut s = managed();
        s.mode = "unsupported".into();
        s.mode_reason = Some("/etc/resolv.conf is managed by resolvconf; not touched".into());
        s.managing = false;
        s.health = Some("cannot parse /etc/resolv.conf".into());
        let t = render(&s);
        assert!(t.contains("OS DNS mode:        unsupported (/etc/resolv.conf is managed by resolvconf; not touched)\n"), "{t}");
        assert!(!t.contains("Resolvers pushed"));
        assert!(
            t.contains("Health:             cannot parse /etc/resolv.conf\n"),
            "{t}"
        );
    }
}
