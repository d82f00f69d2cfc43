use std::collections::BTreeMap;

use weft_control_store::StoreError;
use weft_types::netmap::{DnsConfig, DnsRecord};

use crate::common::{T0, TestDb, at};

fn full_config() -> DnsConfig {
    DnsConfig {
        magic_dns: false,
        nameservers: vec![
            "192.0.2.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ],
        search_domains: vec!["corp.example.com".parse().unwrap()],
        routes: BTreeMap::from([
            (
                "corp.example.com".parse().unwrap(),
                vec!["10.0.0.53".parse().unwrap(), "10.0.0.54".parse().unwrap()],
            ),
            ("local.example".parse().unwrap(), vec![]),
        ]),
        extra_records: vec![DnsRecord {
            name: "printer.weft.internal".parse().unwrap(),
            addr: "192.0.2.7".parse().unwrap(),
        }],
    }
}

pub async fn dns_settings_start_empty_are_replaced_whole_and_survive_reopening(db: &TestDb) {
    let store = db.store().await;
    assert_eq!(store.dns_settings().await.unwrap(), None);

    let first = store
        .put_dns_settings(&full_config(), "alice", T0)
        .await
        .unwrap();
    assert_eq!(
        (&first.config, first.author.as_str(), first.updated),
        (&full_config(), "alice", T0)
    );
    assert_eq!(store.dns_settings().await.unwrap(), Some(first));

    // A second put replaces everything, including lists that got shorter.
    let smaller = DnsConfig {
        magic_dns: true,
        ..DnsConfig::default()
    };
    let second = store
        .put_dns_settings(&smaller, "api key 0123456789ab", at(5))
        .await
        .unwrap();
    assert_eq!(second.config, smaller);
    assert_eq!(second.updated, at(5));
    store.close().await;

    let again = db.store().await;
    assert_eq!(again.dns_settings().await.unwrap(), Some(second));
}

pub async fn stored_dns_settings_that_do_not_parse_are_reported_as_corrupt(db: &TestDb) {
    let store = db.store().await;
    store
        .put_dns_settings(&full_config(), "alice", T0)
        .await
        .unwrap();
    store.close().await;

    // Someone edits the row by hand.
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("UPDATE dns_settings SET config = '{\"magic_dns\": \"yes\"}' WHERE id = 1")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;

    let again = db.store().await;
    let err = again.dns_settings().await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Corrupt {
                what: "dns_settings.config",
                ..
            }
        ),
        "{err:?}"
    );
}
