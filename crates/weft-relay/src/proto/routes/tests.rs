use super::*;

fn key(b: u8) -> NodePublic {
    NodePublic::from_bytes([b; 32])
}

/// Handles are plain names here.
type R = Routes<&'static str>;

#[test]
fn a_registered_key_routes_to_its_connection() {
    let mut r = R::new();
    let ch = r.register(1, key(1), "a");
    assert_eq!(ch.active, vec![(key(1), Some("a"))]);
    assert!(ch.duplicate.is_empty());
    assert_eq!(r.lookup(&key(1)), Lookup::Active(&"a"));
    assert_eq!(r.lookup(&key(2)), Lookup::Absent);
    assert_eq!((r.connection_count(), r.key_count()), (1, 1));
}

#[test]
fn a_peer_that_leaves_is_announced_to_those_who_heard_from_it() {
    let mut r = R::new();
    r.register(1, key(1), "a");
    r.register(2, key(2), "b");
    r.register(3, key(3), "c");
    // b and c received packets from a; b twice (noted once).
    assert!(r.note_heard_from(2, key(1)));
    assert!(!r.note_heard_from(2, key(1)));
    assert!(r.note_heard_from(3, key(1)));
    let ch = r.unregister(1);
    assert_eq!(ch.active, vec![(key(1), None)]);
    assert_eq!(ch.peer_gone, vec![("b", key(1)), ("c", key(1))]);
    assert_eq!(r.lookup(&key(1)), Lookup::Absent);
    // A second departure of the same key announces nothing new.
    assert!(r.unregister(1).is_empty());
}

#[test]
fn a_listener_that_left_first_is_not_told() {
    let mut r = R::new();
    r.register(1, key(1), "a");
    r.register(2, key(2), "b");
    r.note_heard_from(2, key(1));
    r.unregister(2);
    assert!(r.unregister(1).peer_gone.is_empty());
}

#[test]
fn a_second_connection_of_a_key_takes_over_and_both_are_marked_duplicate() {
    let mut r = R::new();
    r.register(1, key(1), "old");
    let ch = r.register(2, key(1), "new");
    assert_eq!(ch.active, vec![(key(1), Some("new"))]);
    assert_eq!(ch.duplicate, vec![("old", true), ("new", true)]);
    assert_eq!(r.lookup(&key(1)), Lookup::Active(&"new"));
    assert_eq!(r.duplicated_key_count(), 1);

    // The old one speaks: last writer is active.
    let ch = r.note_activity(1);
    assert_eq!(ch.active, vec![(key(1), Some("old"))]);
    assert!(r.note_activity(1).is_empty(), "already active");

    // The new one leaves: the old one is alone, active, not a duplicate.
    let ch = r.unregister(2);
    assert_eq!(ch.duplicate, vec![("old", false)]);
    assert!(ch.active.is_empty(), "old was already active");
    assert!(ch.peer_gone.is_empty(), "the key is still here");
    assert_eq!(r.lookup(&key(1)), Lookup::Active(&"old"));
    assert_eq!(r.duplicated_key_count(), 0);
}

#[test]
fn when_the_active_duplicate_leaves_the_last_sender_takes_over() {
    let mut r = R::new();
    r.register(1, key(1), "a");
    r.register(2, key(1), "b");
    r.register(3, key(1), "c");
    r.note_activity(1);
    r.note_activity(3);
    // c (active, last sender) leaves; a spoke before it: a takes over.
    let ch = r.unregister(3);
    assert_eq!(ch.active, vec![(key(1), Some("a"))]);
    assert_eq!(r.lookup(&key(1)), Lookup::Active(&"a"));
}

#[test]
fn peer_gone_waits_until_the_last_connection_of_a_key_is_gone() {
    let mut r = R::new();
    r.register(1, key(1), "a1");
    r.register(2, key(1), "a2");
    r.register(9, key(9), "z");
    r.note_heard_from(9, key(1));
    assert!(r.unregister(1).peer_gone.is_empty());
    assert_eq!(r.unregister(2).peer_gone, vec![("z", key(1))]);
}

#[test]
fn revocation_finds_every_connection_of_a_key() {
    let mut r = R::new();
    r.register(1, key(1), "a1");
    r.register(2, key(1), "a2");
    r.register(3, key(3), "c");
    assert_eq!(r.connections_of(&key(1)), vec!["a1", "a2"]);
    assert!(r.connections_of(&key(7)).is_empty());
    assert_eq!(r.keys(), vec![key(1), key(3)]);
    assert_eq!(r.all_connections().len(), 3);
}

#[test]
fn activity_and_listening_of_unknown_connections_change_nothing() {
    let mut r = R::new();
    assert!(r.note_activity(4).is_empty());
    assert!(!r.note_heard_from(4, key(1)));
    r.register(1, key(1), "a");
    assert!(
        r.note_activity(1).is_empty(),
        "a single connection is always active"
    );
}
