//! Direct mode, the pure part: which single step brings resolv.conf and its
//! backup closer to what is wanted, decided from what is on disk now. The
//! driver ([`super::driver`]) reads both files, asks [`next_step`], does the
//! step, and asks again until the answer is `None`. Nothing is remembered
//! between steps, so a crash (or `kill -9`) after any step, or in the middle
//! of an in-place write, is recovered by the same loop at the next start.
//!
//! The backup lives in the state dir and is written atomically (temp file,
//! fsync, rename, fsync of the dir); resolv.conf itself is replaced by
//! rename where it can be and written in place where it is a mount point
//! (`ip netns exec`), so a crash can leave it torn: a prefix of what was
//! being written.
//!
//! What the target is, judged against the backup:
//! * **ours**: it starts with [`MARKER`];
//! * **torn**: it is a prefix of the backup (or equal to it) or a prefix of
//!   the marker line: a write of ours or a restore that did not finish, or
//!   a restore that finished before the backup was removed;
//! * **foreign**: anything else: someone (DHCP client, NetworkManager, an
//!   admin) wrote the file while Weft managed it.
//!
//! The rule for foreign content: **their content wins.** On restore it is
//! left alone and the stale backup removed; on apply it becomes the new
//! original (backed up first, then replaced by ours). Weft never puts back a
//! file over content it did not write. (A foreign write that happens to be a
//! prefix of the original, e.g. an empty file, is taken as a torn restore.)

use super::resolv_conf::{MARKER, is_ours};

/// What the driver found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// resolv.conf's bytes.
    pub target: Vec<u8>,
    /// The backup's bytes, if there is one.
    pub backup: Option<Vec<u8>>,
}

/// What the caller wants.
pub enum Want<'a> {
    /// Weft's file; the closure renders it from the original's bytes (to
    /// keep its options).
    Managed(&'a dyn Fn(&[u8]) -> Vec<u8>),
    /// The original back, and no backup left.
    Restored,
}

/// One step for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Save these bytes as the backup (atomically).
    WriteBackup(Vec<u8>),
    /// Write these bytes to resolv.conf.
    WriteTarget(Vec<u8>),
    /// Remove the backup.
    RemoveBackup,
}

/// How the target relates to the backup (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Ours,
    Torn,
    Foreign,
}

/// The most steps [`next_step`] asks for in a row from any state; the
/// driver stops (and reports) if it ever needs more.
pub const MAX_STEPS: usize = 3;

/// Returns how `target` relates to `backup`.
pub fn classify(target: &[u8], backup: &[u8]) -> Class {
    if is_ours(target) {
        Class::Ours
    } else if backup.starts_with(target) || MARKER.as_bytes().starts_with(target) {
        Class::Torn
    } else {
        Class::Foreign
    }
}

/// Returns the next step towards `want`, or `None` when it is reached.
pub fn next_step(obs: &Observed, want: &Want<'_>) -> Option<Step> {
    let target = &obs.target;
    match (want, &obs.backup) {
        (Want::Managed(render), None) => {
            if is_ours(target) {
                // Ours with no backup (the state dir was wiped): keep ours
                // current; there is nothing to restore later.
                let ours = render(target);
                (ours != *target).then_some(Step::WriteTarget(ours))
            } else {
                Some(Step::WriteBackup(target.clone()))
            }
        }
        (Want::Managed(render), Some(backup)) => match classify(target, backup) {
            Class::Ours | Class::Torn => {
                let ours = render(backup);
                (ours != *target).then_some(Step::WriteTarget(ours))
            }
            Class::Foreign => Some(Step::WriteBackup(target.clone())),
        },
        (Want::Restored, None) => None,
        (Want::Restored, Some(backup)) => match classify(target, backup) {
            Class::Ours | Class::Torn if target != backup => {
                Some(Step::WriteTarget(backup.clone()))
            }
            Class::Ours | Class::Torn | Class::Foreign => Some(Step::RemoveBackup),
        },
    }
}

/// Returns whether resolv.conf holds Weft's file with no backup to restore
/// (the state dir was wiped while Weft managed it): restore cannot help.
pub fn original_lost(obs: &Observed) -> bool {
    obs.backup.is_none() && is_ours(&obs.target)
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
