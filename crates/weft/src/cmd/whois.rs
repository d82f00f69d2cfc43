//! `weft whois [--json] <ip|name>`: which node and user own a tailnet
//! address. A name is looked up in `status` the way `weft ping` and `weft ip`
//! do (short name, full DNS name or reported hostname).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;

use weft_localapi::WhoIs;

use crate::ctx::Ctx;
use crate::out::{self, escape, out};
use crate::resolve::find_node;

#[derive(Debug, clap::Args)]
pub struct WhoisArgs {
    /// Print the LocalAPI's WhoIs as JSON
    #[arg(long)]
    pub json: bool,
    /// A tailnet address (IP or IP:PORT) or a node's name
    #[arg(value_name = "IP|NAME")]
    pub target: String,
}

/// Runs `weft whois`.
pub async fn run(args: WhoisArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let addr = match parse_addr(&args.target) {
        Ok(ip) => ip,
        Err(_) => {
            let status = ctx.api(ctx.client.status().await)?;
            let found = find_node(&status, &args.target)?;
            *found.node.addresses.first().ok_or_else(|| {
                anyhow::anyhow!(
                    "{:?} has no tailnet address yet (see 'weft status')",
                    args.target
                )
            })?
        }
    };
    let who = ctx.api(ctx.client.whois(addr).await)?;
    if args.json {
        out::json(&who)?;
    } else {
        out!("{}", render(&who));
    }
    Ok(ExitCode::SUCCESS)
}

/// Returns the text form: a `Machine:` block, then a `User:` block for
/// user-owned nodes (tagged nodes list their tags instead).
pub fn render(who: &WhoIs) -> String {
    let n = &who.node;
    let mut out = String::from("Machine:\n");
    let mut field = |label: &str, value: String| {
        let _ = writeln!(out, "  {:<12}{}", format!("{label}:"), escape(&value));
    };
    field("Name", n.dns_name.trim_end_matches('.').to_owned());
    field("ID", n.id.to_string());
    field("Addresses", list(n.addresses.iter()));
    let routes: Vec<_> = n
        .allowed_ips
        .iter()
        .filter(|net| {
            !(net.prefix_len() == net.max_prefix_len() && n.addresses.contains(&net.addr()))
        })
        .collect();
    if !routes.is_empty() {
        field("AllowedIPs", list(routes.into_iter()));
    }
    if !n.tags.is_empty() {
        field("Tags", n.tags.join(", "));
    }
    if let Some(user) = &who.user {
        let _ = writeln!(out, "User:");
        let _ = writeln!(out, "  {:<12}{}", "Name:", escape(&user.login_name));
        let _ = writeln!(out, "  {:<12}{}", "ID:", user.id);
    }
    out
}

fn list<T: ToString>(items: impl Iterator<Item = T>) -> String {
    format!(
        "[{}]",
        items.map(|i| i.to_string()).collect::<Vec<_>>().join(" ")
    )
}

fn parse_addr(s: &str) -> Result<IpAddr, String> {
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|sa| sa.ip()))
        .map_err(|_| format!("{s:?} is not an IP address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::tests::node;
    use weft_localapi::UserInfo;
    use weft_types::ids::UserId;

    #[test]
    fn a_user_node_shows_machine_and_user_blocks() {
        let mut n = node(3, "web", "web", &["100.64.0.3", "fd7a:115c:a1e0::3"]);
        n.allowed_ips = vec![
            "100.64.0.3/32".parse().unwrap(),
            "198.18.5.0/24".parse().unwrap(),
        ];
        let user = UserInfo {
            id: UserId(7),
            login_name: "alice@example.com".into(),
            display_name: "A".into(),
        };
        let out = render(&WhoIs {
            node: n,
            user: Some(user),
        });
        assert_eq!(
            out,
            "Machine:\n\
             \x20 Name:       web.t.weft.internal\n\
             \x20 ID:         3\n\
             \x20 Addresses:  [100.64.0.3 fd7a:115c:a1e0::3]\n\
             \x20 AllowedIPs: [198.18.5.0/24]\n\
             User:\n\
             \x20 Name:       alice@example.com\n\
             \x20 ID:         7\n"
        );
    }

    #[test]
    fn a_tagged_node_lists_its_tags_and_no_user() {
        let mut n = node(4, "db", "db", &["100.64.0.4"]);
        n.tags = vec!["tag:db".into(), "tag:prod".into()];
        let out = render(&WhoIs {
            node: n,
            user: None,
        });
        assert!(out.contains("  Tags:       tag:db, tag:prod\n"), "{out}");
        assert!(!out.contains("User:"), "{out}");
    }

    #[test]
    fn an_address_with_a_port_is_accepted() {
        assert_eq!(
            parse_addr("100.64.0.1:22"),
            Ok("100.64.0.1".parse().unwrap())
        );
        assert!(parse_addr("web").is_err());
    }
}
