#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;

fn netmap(magic: bool, nameservers: &[&str], routes: &[&str], search: &[&str]) -> NetMap {
    let mut nm = crate::daemon::config::tests::netmap(1, &[2]);
    nm.domain = "t.weft.internal".parse().unwrap();
    nm.dns.magic_dns = magic;
    nm.dns.nameservers = nameservers.iter().map(|s| s.parse().unwrap()).collect();
    nm.dns.routes = routes
        .iter()
        .map(|r| (r.parse().unwrap(), vec!["10.0.0.53".parse().unwrap()]))
        .collect::<BTreeMap<_, _>>();
    nm.dns.search_domains = search.iter().map(|s| s.parse().unwrap()).collect();
    nm
}

#[test]
fn magic_dns_pushes_our_resolver_and_the_tailnet_domain_first() {
    let nm = netmap(true, &[], &["corp.example"], &["extra.example"]);
    let cfg = desired(true, true, Some(&nm)).unwrap();
    assert_eq!(cfg.nameservers, vec![SERVICE_V4]);
    assert_eq!(cfg.search, vec!["t.weft.internal", "extra.example"]);
    assert_eq!(cfg.match_domains, vec!["t.weft.internal", "corp.example"]);
    assert!(!cfg.default_route);
    let global = netmap(true, &["192.0.2.53"], &[], &[]);
    assert!(desired(true, true, Some(&global)).unwrap().default_route);
}

#[test]
fn the_host_keeps_its_dns_without_accept_dns_running_netmap_or_anything_to_push() {
    let nm = netmap(true, &[], &[], &[]);
    assert_eq!(desired(false, true, Some(&nm)), None);
    assert_eq!(desired(true, false, Some(&nm)), None);
    assert_eq!(desired(true, true, None), None);
    assert_eq!(
        desired(true, true, Some(&netmap(false, &[], &[], &[]))),
        None
    );
    assert!(desired(true, true, Some(&netmap(false, &["192.0.2.53"], &[], &[]))).is_some());
}

#[test]
fn modes_follow_what_resolv_conf_is() {
    let p = Path::new("/etc/resolv.conf");
    let stub = FileKind::Symlink("../run/systemd/resolve/stub-resolv.conf".into());
    assert_eq!(detect(p, &FileKind::Regular, false), Mode::Direct);
    assert_eq!(detect(p, &stub, true), Mode::Resolved);
    assert!(
        matches!(detect(p, &stub, false), Mode::Unsupported(m) if m.contains("does not answer"))
    );
    let rc = FileKind::Symlink("/run/resolvconf/resolv.conf".into());
    assert!(matches!(detect(p, &rc, false), Mode::Unsupported(m) if m.contains("resolvconf")));
    assert!(matches!(
        detect(p, &FileKind::Missing, false),
        Mode::Unsupported(_)
    ));
}

#[test]
fn our_own_addresses_are_never_host_nameservers() {
    let got = without_service_addrs(vec![SERVICE_V4, "192.0.2.1".parse().unwrap(), SERVICE_V6]);
    assert_eq!(got, vec!["192.0.2.1".parse::<IpAddr>().unwrap()]);
}
