//! The direct-mode machine on an in-memory disk, crashed after every step
//! and in the middle of every write.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use super::*;

/// The disk: resolv.conf and the backup.
#[derive(Debug, Clone)]
struct Disk {
    target: Vec<u8>,
    backup: Option<Vec<u8>>,
}

impl Disk {
    fn observed(&self) -> Observed {
        Observed {
            target: self.target.clone(),
            backup: self.backup.clone(),
        }
    }

    /// Does `step`; `torn`: the process dies during it. An atomic step
    /// (backup written by rename, backup removed) then happened or not
    /// (`cut` odd: it did); an in-place write leaves a prefix of `cut` bytes.
    fn apply(&mut self, step: &Step, torn: Option<usize>) {
        match (step, torn) {
            (Step::WriteBackup(b), None) => self.backup = Some(b.clone()),
            (Step::WriteBackup(b), Some(cut)) => {
                if cut % 2 == 1 {
                    self.backup = Some(b.clone());
                }
            }
            (Step::RemoveBackup, None) => self.backup = None,
            (Step::RemoveBackup, Some(cut)) => {
                if cut % 2 == 1 {
                    self.backup = None;
                }
            }
            (Step::WriteTarget(t), None) => self.target = t.clone(),
            (Step::WriteTarget(t), Some(cut)) => self.target = t[..cut.min(t.len())].to_vec(),
        }
    }
}

/// Weft's file for config `cfg`, depending on the original as the real one
/// does (options are kept).
fn ours(cfg: u8, original: &[u8]) -> Vec<u8> {
    format!(
        "{MARKER}\nnameserver 100.100.100.100\n# cfg {cfg} orig {}\n",
        original.len()
    )
    .into_bytes()
}

/// Drives to `want` the way the driver does; with `crash = Some((k, cut))`
/// the process dies in step `k` (if there is one). Returns whether it died.
fn drive(disk: &mut Disk, want: &Want<'_>, crash: Option<(usize, usize)>) -> bool {
    for i in 0..=MAX_STEPS {
        let Some(step) = next_step(&disk.observed(), want) else {
            return false;
        };
        assert!(i < MAX_STEPS, "more than {MAX_STEPS} steps from {disk:?}");
        match crash {
            Some((k, cut)) if k == i => {
                disk.apply(&step, Some(cut));
                return true;
            }
            _ => disk.apply(&step, None),
        }
    }
    false
}

#[derive(Debug, Clone)]
enum Op {
    Apply(u8),
    Restore,
    /// Someone else writes the file (unique content).
    Foreign,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3).prop_map(Op::Apply),
        Just(Op::Restore),
        Just(Op::Foreign),
    ]
}

fn original() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"nameserver 192.0.2.1\nsearch lan\noptions edns0\n".to_vec()),
        Just(Vec::new()),
        proptest::collection::vec(any::<u8>(), 0..64),
    ]
    .prop_filter("someone else's file never starts with our marker", |o| {
        !is_ours(o)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Every sequence of applies, restores and foreign writes, with a crash
    /// anywhere (followed by a restart, which restores): after a clean
    /// apply the file is ours for the current original; at the end a
    /// restore brings the original back byte for byte and no backup stays.
    #[test]
    fn the_original_comes_back_byte_for_byte_after_any_crash(
        first in original(),
        ops in proptest::collection::vec(
            (op(), proptest::option::of((0usize..MAX_STEPS, 0usize..200))), 1..8),
    ) {
        let mut disk = Disk { target: first.clone(), backup: None };
        let mut expected = first;
        let mut foreign = 0u32;
        for (op, crash) in ops {
            let died = match op {
                Op::Apply(cfg) => {
                    let render = move |o: &[u8]| ours(cfg, o);
                    let died = drive(&mut disk, &Want::Managed(&render), crash);
                    if !died {
                        prop_assert_eq!(&disk.target, &ours(cfg, &expected));
                        prop_assert_eq!(disk.backup.as_ref(), Some(&expected));
                    }
                    died
                }
                Op::Restore => {
                    let died = drive(&mut disk, &Want::Restored, crash);
                    if !died {
                        prop_assert_eq!(&disk.target, &expected);
                        prop_assert_eq!(&disk.backup, &None);
                    }
                    died
                }
                Op::Foreign => {
                    foreign += 1;
                    disk.target = format!("# foreign write {foreign}\nnameserver 192.0.2.{foreign}\n").into_bytes();
                    expected = disk.target.clone();
                    false
                }
            };
            if died {
                // The restart: weftd restores first.
                prop_assert!(!drive(&mut disk, &Want::Restored, None));
                prop_assert_eq!(&disk.target, &expected);
                prop_assert_eq!(&disk.backup, &None);
            }
        }
        prop_assert!(!drive(&mut disk, &Want::Restored, None));
        prop_assert_eq!(&disk.target, &expected);
        prop_assert_eq!(disk.backup, None);
    }
}

#[test]
fn apply_backs_up_first_then_writes_ours() {
    let obs = Observed {
        target: b"nameserver 192.0.2.1\n".to_vec(),
        backup: None,
    };
    let render = |o: &[u8]| ours(0, o);
    assert_eq!(
        next_step(&obs, &Want::Managed(&render)),
        Some(Step::WriteBackup(obs.target.clone()))
    );
}

#[test]
fn restore_leaves_a_file_someone_else_wrote_and_drops_the_stale_backup() {
    let obs = Observed {
        target: b"# Generated by NetworkManager\nnameserver 192.0.2.9\n".to_vec(),
        backup: Some(b"nameserver 192.0.2.1\n".to_vec()),
    };
    assert_eq!(next_step(&obs, &Want::Restored), Some(Step::RemoveBackup));
}

#[test]
fn a_torn_restore_is_finished_from_the_backup() {
    let backup = b"nameserver 192.0.2.1\nsearch lan\n".to_vec();
    let obs = Observed {
        target: backup[..7].to_vec(),
        backup: Some(backup.clone()),
    };
    assert_eq!(
        next_step(&obs, &Want::Restored),
        Some(Step::WriteTarget(backup))
    );
}

#[test]
fn ours_without_a_backup_is_reported_lost_and_left() {
    let obs = Observed {
        target: ours(1, b""),
        backup: None,
    };
    assert!(original_lost(&obs));
    assert_eq!(next_step(&obs, &Want::Restored), None);
}
