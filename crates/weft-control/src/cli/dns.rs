//! `dns get|set`: the DNS settings every node is given (MagicDNS, global
//! nameservers, search domains, split DNS, extra records).

use std::collections::BTreeMap;

use clap::{ArgAction, Subcommand};
use weft_control::admin::client::AdminClientError;
use weft_control::admin::types::{DnsPatch, DnsRecordView, DnsView};

use super::fmt::relative;
use super::out::outln;
use super::{Conn, now_ms, print_json};

#[derive(Debug, Subcommand)]
pub enum DnsCmd {
    /// Print the DNS settings nodes are given.
    Get,
    /// Change the DNS settings; only what is given changes. Applied in this
    /// order: the --clear-* flags, the --remove-* flags, then the additions.
    /// Refused whole, and nothing changes, if anything is invalid. Nodes get
    /// the new settings before the command returns.
    #[command(after_help = "Examples:\n  \
        weft-control dns set --nameserver 192.0.2.53 --nameserver 192.0.2.54\n  \
        weft-control dns set --route corp.example.com=10.0.0.53,10.0.0.54\n  \
        weft-control dns set --record nas.example.com=192.0.2.9 --search-domain corp.example.com\n  \
        weft-control dns set --magic-dns=false\n  \
        weft-control dns set --clear-nameservers --remove-route corp.example.com")]
    Set(Box<SetArgs>),
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Turn MagicDNS (names of tailnet nodes at 100.100.100.100) on or off.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true",
          action = ArgAction::Set)]
    magic_dns: Option<bool>,
    /// Add a global nameserver (IP; repeatable or comma-separated). Without any,
    /// nodes forward to the resolvers their host had.
    #[arg(long = "nameserver", value_name = "IP", value_delimiter = ',')]
    nameservers: Vec<String>,
    /// Remove a global nameserver (repeatable).
    #[arg(long = "remove-nameserver", value_name = "IP", value_delimiter = ',')]
    remove_nameservers: Vec<String>,
    /// Remove every global nameserver.
    #[arg(long)]
    clear_nameservers: bool,
    /// Add a search domain, searched after the tailnet domain (repeatable).
    #[arg(long = "search-domain", value_name = "DOMAIN", value_delimiter = ',')]
    search_domains: Vec<String>,
    /// Remove a search domain (repeatable).
    #[arg(
        long = "remove-search-domain",
        value_name = "DOMAIN",
        value_delimiter = ','
    )]
    remove_search_domains: Vec<String>,
    /// Remove every extra search domain.
    #[arg(long)]
    clear_search_domains: bool,
    /// Split DNS: send names in DOMAIN to these resolvers (replaces DOMAIN's
    /// route; `DOMAIN=` with no resolver: answered by MagicDNS only, never
    /// forwarded). Repeatable.
    #[arg(long = "route", value_name = "DOMAIN=IP[,IP...]")]
    routes: Vec<String>,
    /// Remove the split-DNS route of DOMAIN (repeatable).
    #[arg(long = "remove-route", value_name = "DOMAIN")]
    remove_routes: Vec<String>,
    /// Remove every split-DNS route.
    #[arg(long)]
    clear_routes: bool,
    /// Add a record: NAME answers with IP (A or AAAA). Repeatable; a name may
    /// have several.
    #[arg(long = "record", value_name = "NAME=IP")]
    records: Vec<String>,
    /// Remove NAME's records, or only NAME=IP (repeatable).
    #[arg(long = "remove-record", value_name = "NAME[=IP]")]
    remove_records: Vec<String>,
    /// Remove every extra record.
    #[arg(long)]
    clear_records: bool,
}

pub async fn run(cmd: DnsCmd, conn: &Conn) -> anyhow::Result<()> {
    let view = match cmd {
        DnsCmd::Get => conn.client()?.dns().await?,
        DnsCmd::Set(a) => {
            let patch = patch(*a)?;
            conn.client()?
                .patch_dns(&patch)
                .await
                .map_err(|e| match e {
                    AdminClientError::Api { message, .. } => {
                        anyhow::anyhow!("DNS settings refused, nothing changed: {message}")
                    }
                    other => other.into(),
                })?
        }
    };
    if conn.json {
        return print_json(&view);
    }
    print_view(&view)
}

/// Turns the flags into a `PATCH /dns` body.
///
/// # Errors
/// No flag at all, or a `--route`/`--record` without `=`.
fn patch(a: SetArgs) -> anyhow::Result<DnsPatch> {
    let mut set_routes = BTreeMap::new();
    for r in &a.routes {
        let Some((domain, list)) = r.split_once('=') else {
            anyhow::bail!(
                "--route {r:?}: use DOMAIN=IP[,IP...] (DOMAIN= alone: answered by MagicDNS only)"
            );
        };
        let resolvers: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        set_routes.insert(domain.to_owned(), resolvers);
    }
    let mut add_records = Vec::new();
    for r in &a.records {
        let Some((name, addr)) = r.split_once('=') else {
            anyhow::bail!("--record {r:?}: use NAME=IP, e.g. nas.example.com=192.0.2.9");
        };
        add_records.push(DnsRecordView {
            name: name.to_owned(),
            addr: addr.to_owned(),
        });
    }
    let p = DnsPatch {
        magic_dns: a.magic_dns,
        clear_nameservers: a.clear_nameservers,
        add_nameservers: a.nameservers,
        remove_nameservers: a.remove_nameservers,
        clear_search_domains: a.clear_search_domains,
        add_search_domains: a.search_domains,
        remove_search_domains: a.remove_search_domains,
        clear_routes: a.clear_routes,
        set_routes,
        remove_routes: a.remove_routes,
        clear_records: a.clear_records,
        add_records,
        remove_records: a.remove_records,
    };
    if p == DnsPatch::default() {
        anyhow::bail!("nothing to change; see weft-control dns set --help");
    }
    Ok(p)
}

fn print_view(v: &DnsView) -> anyhow::Result<()> {
    let join = |ips: &[std::net::IpAddr]| {
        ips.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    outln!("tailnet domain  {}", v.domain)?;
    outln!(
        "MagicDNS        {}",
        if v.magic_dns {
            "on"
        } else {
            "off (tailnet names are not answered)"
        }
    )?;
    if v.nameservers.is_empty() {
        outln!("nameservers     (none: each node's own resolvers)")?;
    } else {
        outln!("nameservers     {}", join(&v.nameservers))?;
    }
    let mut search: Vec<String> = Vec::new();
    if v.magic_dns {
        search.push(format!("{} (implicit)", v.domain));
    }
    search.extend(v.search_domains.iter().cloned());
    if search.is_empty() {
        outln!("search domains  (none)")?;
    } else {
        outln!("search domains  {}", search.join(", "))?;
    }
    if v.routes.is_empty() {
        outln!("split DNS       (none)")?;
    }
    for (i, (d, ips)) in v.routes.iter().enumerate() {
        let head = if i == 0 { "split DNS" } else { "" };
        let to = if ips.is_empty() {
            "(MagicDNS only, never forwarded)".to_owned()
        } else {
            join(ips)
        };
        outln!("{head:<16}{d} -> {to}")?;
    }
    if v.extra_records.is_empty() {
        outln!("records         (none)")?;
    }
    for (i, r) in v.extra_records.iter().enumerate() {
        let head = if i == 0 { "records" } else { "" };
        outln!("{head:<16}{} -> {}", r.name, r.addr)?;
    }
    match (v.updated, &v.author) {
        (Some(t), Some(who)) => outln!("changed         {} by {who}", relative(t, now_ms()))?,
        _ => outln!("changed         never (the defaults)")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<DnsPatch> {
        let mut argv = vec!["weft-control", "dns", "set"];
        argv.extend_from_slice(args);
        let cli = crate::cli::Cli::try_parse_from(argv)?;
        let crate::cli::Command::Dns(DnsCmd::Set(a)) = cli.command else {
            anyhow::bail!("not dns set");
        };
        patch(*a)
    }

    #[test]
    fn flags_become_a_patch_of_only_what_was_given() {
        let p = parse(&[
            "--magic-dns=false",
            "--nameserver",
            "192.0.2.1,192.0.2.2",
            "--route",
            "corp.example.com=10.0.0.53,10.0.0.54",
            "--route",
            "local.example=",
            "--record",
            "nas.example.com=192.0.2.9",
            "--remove-record",
            "old.example.com",
        ])
        .unwrap();
        assert_eq!(p.magic_dns, Some(false));
        assert_eq!(p.add_nameservers, ["192.0.2.1", "192.0.2.2"]);
        assert_eq!(p.set_routes["corp.example.com"], ["10.0.0.53", "10.0.0.54"]);
        assert!(p.set_routes["local.example"].is_empty());
        assert_eq!(p.add_records[0].name, "nas.example.com");
        assert_eq!(p.remove_records, ["old.example.com"]);
        assert!(!p.clear_nameservers && p.add_search_domains.is_empty());
        assert_eq!(parse(&["--magic-dns"]).unwrap().magic_dns, Some(true));
    }

    #[test]
    fn set_without_flags_or_with_a_bad_pair_is_refused() {
        let e = parse(&[]).unwrap_err().to_string();
        assert_eq!(e, "nothing to change; see weft-control dns set --help");
        let e = parse(&["--route", "corp.example.com"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("use DOMAIN=IP[,IP...]"), "{e}");
        let e = parse(&["--record", "nas.example.com"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("use NAME=IP"), "{e}");
    }
}
