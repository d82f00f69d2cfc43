use weft_control_store::{AuditEntryId, AuditOutcome, NewAuditEntry};

use crate::common::{T0, TestDb, at};

fn entry(n: usize, outcome: AuditOutcome) -> NewAuditEntry {
    NewAuditEntry {
        actor: format!("api key {n:012}"),
        action: "POST /nodes/{id}/rename".into(),
        target: format!("/nodes/{n}/rename"),
        outcome,
        status: if outcome == AuditOutcome::Ok {
            200
        } else {
            409
        },
        detail: if outcome == AuditOutcome::Ok {
            String::new()
        } else {
            "name \"<img src=x>\" is taken".into()
        },
    }
}

pub async fn audit_entries_are_appended_and_paged_newest_first(db: &TestDb) {
    let store = db.store().await;
    assert!(store.list_audit(None, 10).await.unwrap().is_empty());

    let mut ids = Vec::new();
    for n in 0..7 {
        let outcome = if n % 3 == 2 {
            AuditOutcome::Error
        } else {
            AuditOutcome::Ok
        };
        let e = store
            .record_audit(&entry(n, outcome), at(n as i64))
            .await
            .unwrap();
        assert_eq!(e.actor, format!("api key {n:012}"));
        assert_eq!(e.created, at(n as i64));
        assert_eq!((e.outcome, e.status), (outcome, entry(n, outcome).status));
        ids.push(e.id);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

    let first = store.list_audit(None, 3).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[6], ids[5], ids[4]]
    );
    let second = store.list_audit(Some(ids[4]), 3).await.unwrap();
    assert_eq!(
        second.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[3], ids[2], ids[1]]
    );
    assert_eq!(second[1].outcome, AuditOutcome::Error);
    assert_eq!(second[1].detail, "name \"<img src=x>\" is taken");
    let last = store.list_audit(Some(ids[1]), 3).await.unwrap();
    assert_eq!(last.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[0]]);
    assert_eq!(last[0].created, T0);
    assert!(store.list_audit(Some(ids[0]), 3).await.unwrap().is_empty());
    // A page never exceeds the cap, whatever is asked for.
    assert_eq!(store.list_audit(None, u32::MAX).await.unwrap().len(), 7);
    assert!(
        store
            .list_audit(Some(AuditEntryId(i64::MIN)), 5)
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;

    // Entries survive reopening.
    let again = db.store().await;
    assert_eq!(again.list_audit(None, 100).await.unwrap().len(), 7);
}
