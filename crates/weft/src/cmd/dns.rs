//! `weft dns …`: MagicDNS. `weft dns status` (how the OS's DNS is
//! configured) lives in `dns_status.rs`; this file is the group and `query`.
//!
//! `weft dns query NAME [TYPE]` asks the resolver (through the LocalAPI, the
//! same resolver that answers at 100.100.100.100) and prints the answer
//! records and where they came from: MagicDNS, an extra record, or the
//! upstream it was forwarded to (and through which route). An IP address
//! with type PTR is turned into its reverse name.

use std::process::ExitCode;

use weft_localapi::{DnsAnswerSource, DnsQueryResult};

use crate::cmd::dns_status;
use crate::ctx::Ctx;
use crate::out::{self, escape, out};

#[derive(Debug, clap::Args)]
pub struct DnsArgs {
    #[command(subcommand)]
    pub command: DnsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DnsCommand {
    /// Show how MagicDNS configures this machine's DNS, and what the OS uses now
    Status(dns_status::DnsStatusArgs),
    /// Ask the daemon's resolver for NAME and show where the answer came from
    Query(QueryArgs),
}

#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// Print the LocalAPI's answer as JSON
    #[arg(long)]
    pub json: bool,
    /// The name to look up (or an IP address, for PTR)
    pub name: String,
    /// The record type: A, AAAA, PTR, TXT, MX… (default A; PTR for an IP)
    pub qtype: Option<String>,
}

/// Runs `weft dns`.
pub async fn run(args: DnsArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match args.command {
        DnsCommand::Status(a) => dns_status::run(a, ctx).await,
        DnsCommand::Query(q) => query(q, ctx).await,
    }
}

async fn query(args: QueryArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let qtype = args.qtype.unwrap_or_else(|| {
        if args.name.parse::<std::net::IpAddr>().is_ok() {
            "PTR".to_owned()
        } else {
            "A".to_owned()
        }
    });
    let r = ctx.api(ctx.client.dns_query(&args.name, &qtype).await)?;
    if args.json {
        out::json(&r)?;
    } else {
        out!("{}", render(&r));
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the text form: a header line with the response code and the
/// source, then one line per record.
pub fn render(r: &DnsQueryResult) -> String {
    let mut s = format!(
        "{} {}: {} from {}\n",
        escape(&r.name),
        escape(&r.qtype),
        escape(&r.rcode),
        source(&r.source)
    );
    for rec in &r.records {
        s.push_str(&format!(
            "  {}\t{}\t{}\t{}\n",
            escape(&rec.name),
            rec.ttl,
            escape(&rec.rtype),
            escape(&rec.data)
        ));
    }
    s
}

fn source(s: &DnsAnswerSource) -> String {
    match s {
        DnsAnswerSource::MagicDns => "MagicDNS".to_owned(),
        DnsAnswerSource::ExtraRecord => "an extra record".to_owned(),
        DnsAnswerSource::SplitLocal { domain } => {
            format!(
                "the resolver (split DNS route {} has no resolvers)",
                escape(domain)
            )
        }
        DnsAnswerSource::Forwarded {
            upstream,
            route,
            domain,
        } => match domain {
            Some(d) => format!("{} via split DNS route {}", escape(upstream), escape(d)),
            None => format!("{} via the {} nameservers", escape(upstream), escape(route)),
        },
        DnsAnswerSource::Resolver => "the resolver itself".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_localapi::DnsAnswerRecord;

    #[test]
    fn a_forwarded_answer_names_the_upstream_and_route() {
        let r = DnsQueryResult {
            name: "db.corp.example".into(),
            qtype: "A".into(),
            rcode: "NoError".into(),
            records: vec![DnsAnswerRecord {
                name: "db.corp.example.".into(),
                rtype: "A".into(),
                ttl: 300,
                data: "10.0.0.5".into(),
            }],
            source: DnsAnswerSource::Forwarded {
                upstream: "198.18.5.53:53".into(),
                route: "split".into(),
                domain: Some("corp.example".into()),
            },
        };
        assert_eq!(
            render(&r),
            "db.corp.example A: NoError from 198.18.5.53:53 via split DNS route corp.example\n\
             \x20 db.corp.example.\t300\tA\t10.0.0.5\n"
        );
    }

    #[test]
    fn a_magic_dns_nxdomain_has_no_records() {
        let r = DnsQueryResult {
            name: "nope".into(),
            qtype: "A".into(),
            rcode: "NXDomain".into(),
            records: vec![],
            source: DnsAnswerSource::MagicDns,
        };
        assert_eq!(render(&r), "nope A: NXDomain from MagicDNS\n");
    }
}
