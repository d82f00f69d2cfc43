use super::*;
use crate::resolve::tests::{node, status};

const NOW: i64 = 1_700_000_000_000;
const MINUTE: i64 = 60_000;

fn args(extra: &[&str]) -> StatusArgs {
    use clap::Parser;
    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        status: StatusArgs,
    }
    Wrap::try_parse_from(std::iter::once("status").chain(extra.iter().copied()))
        .unwrap()
        .status
}

fn peer(edit: impl FnOnce(&mut PeerStatus)) -> PeerStatus {
    let mut p = node(2, "web", "web", &["100.64.0.2"]);
    edit(&mut p);
    p
}

#[test]
fn each_peer_state_has_its_own_status_field() {
    let cases: Vec<(PeerStatus, &str)> = vec![
        (peer(|_| {}), "-"),
        (
            peer(|p| (p.tx_bytes, p.rx_bytes) = (10, 0)),
            "idle, tx 10 rx 0",
        ),
        (
            peer(|p| {
                p.active = true;
                p.cur_addr = Some("198.18.0.2:41641".parse().unwrap());
                (p.tx_bytes, p.rx_bytes) = (1024, 2048);
            }),
            "active; direct 198.18.0.2:41641, tx 1024 rx 2048",
        ),
        (
            peer(|p| {
                p.active = true;
                p.relay = Some("lab".into());
                (p.tx_bytes, p.rx_bytes) = (1, 2);
            }),
            "active; relay \"lab\", tx 1 rx 2",
        ),
        (peer(|p| p.active = true), "active"),
        (peer(|p| p.online = false), "offline"),
        (
            peer(|p| {
                p.online = false;
                p.last_seen_ms = Some(NOW - 5 * MINUTE - 20_000);
            }),
            "offline, last seen 5m ago",
        ),
        (
            peer(|p| {
                p.online = false;
                p.last_seen_ms = Some(NOW - 3 * 60 * MINUTE);
            }),
            "offline, last seen 3h ago",
        ),
        (
            peer(|p| {
                p.online = false;
                p.last_seen_ms = Some(NOW - 2 * 24 * 60 * MINUTE - 1);
            }),
            "offline, last seen 2d ago",
        ),
        (peer(|p| (p.expired, p.online) = (true, false)), "expired"),
    ];
    for (p, want) in cases {
        assert_eq!(peer_field(&p, NOW), want);
    }
}

fn sample() -> Status {
    let mut me = node(1, "me", "me", &["100.64.0.1", "fd7a:115c:a1e0::1"]);
    me.user = Some("alice@example.com".into());
    let mut web = node(3, "web", "web", &["100.64.0.3"]);
    web.active = true;
    web.cur_addr = Some("198.18.0.2:41641".parse().unwrap());
    (web.tx_bytes, web.rx_bytes) = (1024, 2048);
    let mut db = node(2, "db", "db", &["100.64.0.2"]);
    db.user = None;
    db.tags = vec!["tag:db".into()];
    db.os = "freebsd".into();
    let mut old = node(4, "", "Old Box", &[]);
    old.user = Some("bob".into());
    old.online = false;
    old.last_seen_ms = Some(NOW - 5 * MINUTE);
    let mut st = status(me, vec![web, db, old]);
    st.health = vec!["control server unreachable since 5m".into()];
    st
}

#[test]
fn the_table_puts_self_first_then_peers_by_name_with_a_health_footer() {
    let out = render(&sample(), &args(&[]), NOW);
    assert_eq!(
        out,
        "100.64.0.1  me           alice@          linux    -\n\
         -           (\"Old Box\")  bob             linux    offline, last seen 5m ago\n\
         100.64.0.2  db           tagged-devices  freebsd  -\n\
         100.64.0.3  web          alice@          linux    active; direct 198.18.0.2:41641, tx 1024 rx 2048\n\
         # Health check:\n\
         #     - control server unreachable since 5m\n"
    );
}

#[test]
fn self_and_peers_can_be_left_out_and_a_header_added() {
    let mut st = sample();
    st.health.clear();
    assert_eq!(
        render(&st, &args(&["--peers=false"]), NOW),
        "100.64.0.1  me  alice@  linux  -\n"
    );
    let out = render(&st, &args(&["--self=false", "--active", "--header"]), NOW);
    assert_eq!(
        out,
        "IP          Name  Owner   OS     Status\n\
         100.64.0.3  web   alice@  linux  active; direct 198.18.0.2:41641, tx 1024 rx 2048\n"
    );
}
