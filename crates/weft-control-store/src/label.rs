//! Unique DNS labels for nodes.
//!
//! A node's *given name* is one DNS label ([`DnsLabel`]); MagicDNS serves it
//! as `<label>.<tailnet domain>`, so it must be unique in the tailnet.
//! Reported hostnames are sanitized with [`DnsLabel::sanitize`] (never
//! refused: `Bob's MacBook.local` becomes `bobs-macbook`), then made unique
//! here with `-1`, `-2`, … suffixes, the same candidates as
//! [`DnsLabel::unique_among`]. Names typed by an admin for a rename are
//! parsed into a [`DnsLabel`] by the caller, so a typo is refused rather
//! than silently changed.

use std::collections::BTreeSet;

use weft_types::DnsLabel;
use weft_types::names::LABEL_MAX_LEN;

use crate::StoreError;
use crate::alloc::SplitMix64;

/// Returns `base` with the suffix `-n`, shortening `base` so the result stays
/// within 63 bytes (`n = 0` returns `base` itself).
pub fn with_suffix(base: &DnsLabel, n: u64) -> String {
    if n == 0 {
        return base.as_str().to_owned();
    }
    let suffix = format!("-{n}");
    let head = truncate_label(base.as_str(), LABEL_MAX_LEN.saturating_sub(suffix.len()));
    format!("{head}{suffix}")
}

/// Returns the text that every candidate of [`unique_label`] for `base`
/// starts with, for a prefix query of the taken names.
pub fn candidate_prefix(base: &DnsLabel) -> &str {
    // Suffixes up to "-" + 20 digits (u64::MAX) leave at least 42 bytes of base.
    truncate_label(base.as_str(), LABEL_MAX_LEN - 21)
}

/// Picks a label that is not in `taken`, from `base`, `base-1`, `base-2`, …
///
/// On the first attempt (`spread = 0`) this is the lowest free candidate, so
/// names stay small and predictable. When a registration is retried because a
/// concurrent one took the same name, pass the attempt number: the choice is
/// then random among the lowest `2^spread` free candidates, so a crowd of
/// registrations with the same hostname spreads out instead of colliding again.
///
/// # Errors
/// [`StoreError::Corrupt`] only if a candidate were not a label, which the
/// construction rules out (a valid base, cut and trimmed, plus `-<digits>`).
pub fn unique_label(
    base: &DnsLabel,
    taken: &BTreeSet<String>,
    spread: u32,
    rng: &mut SplitMix64,
) -> Result<DnsLabel, StoreError> {
    let window = 1u64 << spread.min(16);
    let pick = rng.below(window);
    let mut seen_free = 0u64;
    let mut n = 0u64;
    loop {
        let candidate = with_suffix(base, n);
        if !taken.contains(&candidate) {
            if seen_free == pick {
                return candidate
                    .parse()
                    .map_err(|e: weft_types::NameError| StoreError::Corrupt {
                        what: "generated node name",
                        detail: e.to_string(),
                    });
            }
            seen_free += 1;
        }
        n += 1;
    }
}

/// Cuts `s` (ASCII) to at most `max` bytes and drops dashes left at the end.
fn truncate_label(s: &str, max: usize) -> &str {
    let cut = s.get(..max.min(s.len())).unwrap_or(s);
    cut.trim_end_matches('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(s: &str) -> DnsLabel {
        s.parse().unwrap()
    }

    fn names(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn suffixes_keep_labels_within_63_bytes() {
        let base = label(&"x".repeat(63));
        let l = with_suffix(&base, 12);
        assert_eq!(l.len(), 63);
        assert!(l.ends_with("-12"));
        assert!(l.starts_with(candidate_prefix(&base)));
        assert!(with_suffix(&base, u64::MAX).starts_with(candidate_prefix(&base)));
    }

    #[test]
    fn the_first_free_suffix_is_chosen_without_spread() {
        let taken = names(&["box", "box-1", "box-3"]);
        let mut rng = SplitMix64::new(0);
        assert_eq!(
            unique_label(&label("box"), &taken, 0, &mut rng).unwrap(),
            label("box-2")
        );
        assert_eq!(
            unique_label(&label("free"), &taken, 0, &mut rng).unwrap(),
            label("free")
        );
    }

    #[test]
    fn without_spread_the_choice_matches_weft_types_unique_among() {
        let long = "y".repeat(63);
        for base in ["box", "a-b", long.as_str(), "x1"] {
            let base = label(base);
            for k in 0..12u64 {
                let taken: BTreeSet<String> = (0..k).map(|n| with_suffix(&base, n)).collect();
                let typed: BTreeSet<DnsLabel> = taken.iter().map(|s| label(s)).collect();
                let mine = unique_label(&base, &taken, 0, &mut SplitMix64::new(k)).unwrap();
                assert_eq!(mine, base.unique_among(&typed), "base {base}, {k} taken");
            }
        }
    }

    #[test]
    fn spread_chooses_among_free_candidates_only() {
        let taken = names(&["box", "box-1", "box-3"]);
        let mut rng = SplitMix64::new(9);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let l = unique_label(&label("box"), &taken, 2, &mut rng).unwrap();
            assert!(!taken.contains(l.as_str()));
            seen.insert(l.as_str().to_owned());
        }
        assert_eq!(seen, names(&["box-2", "box-4", "box-5", "box-6"]));
    }
}
