use super::*;

fn tailnet() -> Tailnet {
    Tailnet {
        domain: "weft.internal".parse().unwrap(),
        pool_v4: "100.64.0.0/10".parse().unwrap(),
        pool_v6: "fd7a:115c:a1e0::/48".parse().unwrap(),
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| (*x).to_owned()).collect()
}

fn rec(name: &str, addr: &str) -> DnsRecordView {
    DnsRecordView {
        name: name.into(),
        addr: addr.into(),
    }
}

fn patch(f: impl FnOnce(&mut DnsPatch)) -> DnsPatch {
    let mut p = DnsPatch::default();
    f(&mut p);
    p
}

#[test]
fn a_patch_changes_only_what_it_names() {
    let t = tailnet();
    let cur = apply_patch(
        &default_config(),
        &patch(|p| {
            p.add_nameservers = s(&["192.0.2.53"]);
            p.add_search_domains = s(&["corp.example.com"]);
            p.set_routes = BTreeMap::from([("corp.example.com".into(), s(&["10.0.0.53"]))]);
            p.add_records = vec![rec("printer.weft.internal", "192.0.2.7")];
        }),
        &t,
    )
    .unwrap();

    let off = apply_patch(&cur, &patch(|p| p.magic_dns = Some(false)), &t).unwrap();
    assert!(!off.magic_dns);
    assert_eq!(
        DnsConfig {
            magic_dns: true,
            ..off.clone()
        },
        cur
    );

    let more = apply_patch(
        &off,
        &patch(|p| {
            p.add_nameservers = s(&["192.0.2.54", "192.0.2.53"]);
            p.set_routes =
                BTreeMap::from([("Corp.Example.com.".into(), s(&["10.0.0.53", "10.0.0.54"]))]);
        }),
        &t,
    )
    .unwrap();
    assert_eq!(
        more.nameservers,
        [
            "192.0.2.53".parse::<IpAddr>().unwrap(),
            "192.0.2.54".parse().unwrap()
        ],
        "appended once, in order"
    );
    assert_eq!(
        more.routes.get("corp.example.com").unwrap().len(),
        2,
        "a route for the same domain replaces its resolvers"
    );
    assert_eq!(more.search_domains, off.search_domains);
    assert_eq!(more.extra_records, off.extra_records);
}

#[test]
fn clears_run_before_additions_and_removals_name_one_or_all_records() {
    let t = tailnet();
    let cur = apply_patch(
        &default_config(),
        &patch(|p| {
            p.add_nameservers = s(&["192.0.2.1", "192.0.2.2"]);
            p.add_records = vec![
                rec("a.example.com", "192.0.2.10"),
                rec("a.example.com", "2001:db8::10"),
                rec("b.example.com", "192.0.2.11"),
            ];
        }),
        &t,
    )
    .unwrap();
    let c = apply_patch(
        &cur,
        &patch(|p| {
            p.clear_nameservers = true;
            p.add_nameservers = s(&["192.0.2.3"]);
            p.remove_records = s(&["a.example.com=2001:db8::10", "b.example.com"]);
        }),
        &t,
    )
    .unwrap();
    assert_eq!(c.nameservers, ["192.0.2.3".parse::<IpAddr>().unwrap()]);
    assert_eq!(
        c.extra_records,
        [DnsRecord {
            name: "a.example.com".parse().unwrap(),
            addr: "192.0.2.10".parse().unwrap()
        }]
    );
}

#[test]
fn removing_what_is_not_configured_is_refused() {
    let t = tailnet();
    let c = default_config();
    for (p, want) in [
        (
            patch(|p| p.remove_nameservers = s(&["192.0.2.1"])),
            "nameserver 192.0.2.1 is not configured",
        ),
        (
            patch(|p| p.remove_routes = s(&["corp.example.com"])),
            "no split-DNS route for corp.example.com is configured",
        ),
        (
            patch(|p| p.remove_records = s(&["x.example.com"])),
            "no record for x.example.com is configured",
        ),
    ] {
        assert_eq!(apply_patch(&c, &p, &t).unwrap_err(), want);
    }
}

#[test]
fn resolvers_that_would_loop_are_refused() {
    let t = tailnet();
    for ip in [
        "100.100.100.100",
        "100.64.0.1",
        "100.127.255.254",
        "fd7a:115c:a1e0::53",
        "fd7a:115c:a1e0:ab12:4843:cd96:6258:b240",
    ] {
        let err = apply_patch(
            &default_config(),
            &patch(|p| p.add_nameservers = s(&[ip])),
            &t,
        )
        .unwrap_err();
        assert!(
            err.starts_with(&format!("nameserver {ip} is a Weft address")),
            "{err}"
        );
        let err = apply_patch(
            &default_config(),
            &patch(|p| p.set_routes = BTreeMap::from([("corp.example.com".into(), s(&[ip]))])),
            &t,
        )
        .unwrap_err();
        assert!(
            err.starts_with(&format!(
                "resolver of route corp.example.com {ip} is a Weft address"
            )),
            "{err}"
        );
    }
    // A custom pool is what counts for node addresses.
    let small = Tailnet {
        pool_v4: "100.90.0.0/16".parse().unwrap(),
        ..tailnet()
    };
    assert!(
        apply_patch(
            &default_config(),
            &patch(|p| p.add_nameservers = s(&["100.90.3.4"])),
            &small
        )
        .is_err()
    );
    for ip in ["0.0.0.0", "::", "224.0.0.251"] {
        let err = apply_patch(
            &default_config(),
            &patch(|p| p.add_nameservers = s(&[ip])),
            &t,
        )
        .unwrap_err();
        assert_eq!(err, format!("nameserver {ip} is not a unicast address"));
    }
}

#[test]
fn bad_names_and_names_magicdns_owns_are_refused_in_one_line() {
    let t = tailnet();
    let cases: Vec<(DnsPatch, &str)> = vec![
        (
            patch(|p| p.add_records = vec![rec("bad_name.example.com", "192.0.2.1")]),
            "record name \"bad_name.example.com\" is not a DNS name",
        ),
        (
            patch(|p| p.add_records = vec![rec("ok.example.com", "not-an-ip")]),
            "address of record ok.example.com \"not-an-ip\" is not an IP address",
        ),
        (
            patch(|p| p.set_routes = BTreeMap::from([("-x.example".into(), vec![])])),
            "route domain \"-x.example\" is not a DNS name",
        ),
        (
            patch(|p| p.set_routes = BTreeMap::from([("db.weft.internal".into(), vec![])])),
            "split-DNS route db.weft.internal is inside the tailnet domain weft.internal",
        ),
        (
            patch(|p| p.add_search_domains = s(&["Weft.Internal."])),
            "search domain weft.internal is the tailnet domain",
        ),
        (
            patch(|p| p.add_nameservers = s(&["ns.example.com"])),
            "nameserver \"ns.example.com\" is not an IP address",
        ),
    ];
    for (p, want) in cases {
        let err = apply_patch(&default_config(), &p, &t).unwrap_err();
        assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
    // A name that merely ends in the domain's text is not under it.
    let ok = apply_patch(
        &default_config(),
        &patch(|p| p.set_routes = BTreeMap::from([("notweft.internal".into(), vec![])])),
        &t,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn counts_are_limited() {
    let t = tailnet();
    let many: Vec<String> = (1..=MAX_NAMESERVERS + 1)
        .map(|i| format!("192.0.2.{i}"))
        .collect();
    let err = apply_patch(&default_config(), &patch(|p| p.add_nameservers = many), &t).unwrap_err();
    assert_eq!(
        err,
        format!(
            "{} nameservers; at most {MAX_NAMESERVERS}",
            MAX_NAMESERVERS + 1
        )
    );
    let resolvers: Vec<String> = (1..=MAX_ROUTE_RESOLVERS + 1)
        .map(|i| format!("10.0.0.{i}"))
        .collect();
    let err = apply_patch(
        &default_config(),
        &patch(|p| p.set_routes = BTreeMap::from([("corp.example.com".into(), resolvers)])),
        &t,
    )
    .unwrap_err();
    assert!(
        err.contains(&format!("at most {MAX_ROUTE_RESOLVERS}")),
        "{err}"
    );
    let records: Vec<DnsRecordView> = (0..=MAX_RECORDS)
        .map(|i| rec(&format!("h{i}.example.com"), "192.0.2.1"))
        .collect();
    let err = apply_patch(&default_config(), &patch(|p| p.add_records = records), &t).unwrap_err();
    assert_eq!(
        err,
        format!("{} extra records; at most {MAX_RECORDS}", MAX_RECORDS + 1)
    );
}

#[test]
fn a_put_body_replaces_everything_and_is_validated_the_same_way() {
    let t = tailnet();
    let body = DnsSettingsBody {
        magic_dns: false,
        nameservers: s(&["192.0.2.53"]),
        search_domains: s(&["corp.example.com"]),
        routes: BTreeMap::from([("10.in-addr.arpa".into(), s(&["10.0.0.53"]))]),
        extra_records: vec![rec("NAS.example.com", "192.0.2.9")],
    };
    let c = from_body(&body, &t).unwrap();
    assert!(!c.magic_dns);
    assert_eq!(c.extra_records[0].name.as_str(), "nas.example.com");
    let v = view(&c, &t.domain, Some(5), Some("alice".into()));
    assert_eq!(v.domain, "weft.internal");
    assert_eq!(
        v.routes["10.in-addr.arpa"],
        ["10.0.0.53".parse::<IpAddr>().unwrap()]
    );
    let bad = DnsSettingsBody {
        nameservers: s(&["100.100.100.100"]),
        ..body
    };
    assert!(from_body(&bad, &t).is_err());
}
