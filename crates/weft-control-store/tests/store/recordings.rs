//! SSH session recordings: stored, read back, listed newest first in
//! pages, replaced only by the node that recorded them, and kept (without
//! their node) when the node is deleted.

use weft_control_store::{NodeId, SshRecording, SshRecordingPage, UnixMillis};

use crate::common::{MINUTE, T0, TestDb, at, register_as, user};

fn recording(id_digit: char, node: Option<NodeId>, started: UnixMillis) -> SshRecording {
    SshRecording {
        id: std::iter::repeat_n(id_digit, 32).collect(),
        node,
        node_name: "server".into(),
        src_user: "alice@example.com".into(),
        src_node: "laptop".into(),
        src_addr: "100.64.0.1".into(),
        ssh_user: "root".into(),
        local_user: "root".into(),
        kind: "exec".into(),
        command: Some("echo hi".into()),
        input: true,
        started,
        ended: Some(UnixMillis(started.0 + 1_000)),
        size_bytes: 321,
        failure: None,
        received: UnixMillis(started.0 + 2_000),
    }
}

fn page(limit: u32, before: Option<&SshRecording>) -> SshRecordingPage {
    SshRecordingPage {
        limit,
        before: before.map(|r| (r.started, r.id.clone())),
    }
}

pub async fn ssh_recordings_are_stored_listed_in_pages_and_outlive_their_node(db: &TestDb) {
    let store = db.store().await;
    let alice = user(&store, "alice").await;
    let server = register_as(&store, &alice, 1, "server", T0).await.node;
    let other = register_as(&store, &alice, 2, "other", T0).await.node;

    let a = recording('a', Some(server.id), T0);
    let mut b = recording('b', Some(server.id), at(MINUTE));
    b.command = None;
    b.kind = "shell".into();
    b.input = false;
    b.failure = Some("cannot write: No space left on device".into());
    // Same start as b: the id breaks the tie.
    let c = recording('c', Some(server.id), at(MINUTE));
    for r in [&a, &b, &c] {
        assert!(store.put_ssh_recording(r).await.unwrap());
    }
    assert_eq!(store.ssh_recording(&b.id).await.unwrap(), Some(b.clone()));
    assert_eq!(store.ssh_recording(&"d".repeat(32)).await.unwrap(), None);

    let all = store.list_ssh_recordings(&page(10, None)).await.unwrap();
    assert_eq!(all, [c.clone(), b.clone(), a.clone()], "newest first");
    let first = store.list_ssh_recordings(&page(2, None)).await.unwrap();
    assert_eq!(first, [c.clone(), b.clone()]);
    let second = store
        .list_ssh_recordings(&page(2, first.last()))
        .await
        .unwrap();
    assert_eq!(
        second,
        std::slice::from_ref(&a),
        "the next page starts after the cursor"
    );
    let none = store
        .list_ssh_recordings(&page(2, second.last()))
        .await
        .unwrap();
    assert!(none.is_empty());

    // The recording node may send it again (a lost answer); another node
    // may not overwrite it.
    let mut again = a.clone();
    again.size_bytes = 999;
    again.received = at(2 * MINUTE);
    assert!(store.put_ssh_recording(&again).await.unwrap());
    assert_eq!(
        store.ssh_recording(&a.id).await.unwrap(),
        Some(again.clone())
    );
    let mut stolen = again.clone();
    stolen.node = Some(other.id);
    stolen.size_bytes = 1;
    assert!(!store.put_ssh_recording(&stolen).await.unwrap());
    assert_eq!(
        store.ssh_recording(&a.id).await.unwrap(),
        Some(again.clone())
    );

    // A bad id is refused by the schema.
    let mut short = recording('e', Some(server.id), T0);
    short.id = "e".repeat(31);
    assert!(store.put_ssh_recording(&short).await.is_err());

    // Deleting the node keeps its recordings, named.
    store.delete_node(server.id).await.unwrap();
    let kept = store.ssh_recording(&a.id).await.unwrap().unwrap();
    assert_eq!(kept.node, None);
    assert_eq!(kept.node_name, "server");
    assert_eq!(
        store
            .list_ssh_recordings(&page(10, None))
            .await
            .unwrap()
            .len(),
        3
    );
}
