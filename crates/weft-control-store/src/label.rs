//! DNS labels for nodes: turning reported hostnames into safe, unique names.
//!
//! A node's *given name* is one DNS label (RFC 1035 §2.3.1 with RFC 1123's
//! leading digits): lowercase `a-z`, `0-9` and `-`, at most 63 bytes, no
//! leading or trailing `-`. MagicDNS serves it as `<label>.<tailnet domain>`,
//! so it must be unique in the tailnet.
//!
//! Reported hostnames are *sanitized* (never refused): `Bob's MacBook.local`
//! becomes `bob-s-macbook`. Names typed by an admin for a rename are
//! *validated* instead, so a typo is not silently changed.

use std::collections::BTreeSet;

use crate::StoreError;
use crate::alloc::SplitMix64;

/// The label used when sanitizing leaves nothing.
pub const FALLBACK_LABEL: &str = "node";

/// The maximum length of a DNS label in bytes (RFC 1035 §2.3.4).
pub const MAX_LABEL_LEN: usize = 63;

/// Returns a DNS-safe label for a reported hostname: the part before the first
/// dot, lowercased, with every run of other characters turned into one `-`,
/// trimmed of dashes and cut to 63 bytes; `node` if nothing is left.
pub fn sanitize_hostname(hostname: &str) -> String {
    let first = hostname.trim().split('.').next().unwrap_or_default();
    let mut out = String::with_capacity(first.len().min(MAX_LABEL_LEN));
    for c in first.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let mut label = truncate_label(out.trim_matches('-'), MAX_LABEL_LEN).to_owned();
    if label.is_empty() {
        label = FALLBACK_LABEL.to_owned();
    }
    label
}

/// Checks that `name` is already a valid label (used for renames).
///
/// # Errors
/// [`StoreError::InvalidName`] naming the rule that `name` breaks.
pub fn validate_label(name: &str) -> Result<(), StoreError> {
    let invalid = |reason| {
        Err(StoreError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("empty");
    }
    if name.len() > MAX_LABEL_LEN {
        return invalid("longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if name.starts_with('-') || name.ends_with('-') {
        return invalid("must not start or end with '-'");
    }
    Ok(())
}

/// Returns `base` with the suffix `-n`, shortening `base` so the result stays
/// within 63 bytes (`n = 0` returns `base` itself).
pub fn with_suffix(base: &str, n: u64) -> String {
    if n == 0 {
        return base.to_owned();
    }
    let suffix = format!("-{n}");
    let head = truncate_label(base, MAX_LABEL_LEN.saturating_sub(suffix.len()));
    format!("{head}{suffix}")
}

/// Returns the text that every candidate of [`unique_label`] for `base`
/// starts with, for a prefix query of the taken names.
pub fn candidate_prefix(base: &str) -> &str {
    // Suffixes up to "-" + 20 digits (u64::MAX) leave at least 42 bytes of base.
    truncate_label(base, MAX_LABEL_LEN - 21)
}

/// Picks a label that is not in `taken`, from `base`, `base-1`, `base-2`, …
///
/// On the first attempt (`spread = 0`) this is the lowest free candidate, so
/// names stay small and predictable. When a registration is retried because a
/// concurrent one took the same name, pass the attempt number: the choice is
/// then random among the lowest `2^spread` free candidates, so a crowd of
/// registrations with the same hostname spreads out instead of colliding again.
pub fn unique_label(
    base: &str,
    taken: &BTreeSet<String>,
    spread: u32,
    rng: &mut SplitMix64,
) -> String {
    let window = 1u64 << spread.min(16);
    let pick = rng.below(window);
    let mut seen_free = 0u64;
    let mut n = 0u64;
    loop {
        let candidate = with_suffix(base, n);
        if !taken.contains(&candidate) {
            if seen_free == pick {
                return candidate;
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

    #[test]
    fn hostnames_are_sanitized_into_dns_labels() {
        let cases = [
            ("laptop", "laptop"),
            ("Bob's MacBook Pro.local", "bob-s-macbook-pro"),
            ("web-01.example.com", "web-01"),
            ("--edge--", "edge"),
            ("", "node"),
            ("...", "node"),
            ("日本語", "node"),
            ("über_box", "ber-box"),
            ("UPPER", "upper"),
            ("a  b", "a-b"),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize_hostname(input), want, "input {input:?}");
            assert!(validate_label(&sanitize_hostname(input)).is_ok());
        }
    }

    #[test]
    fn long_hostnames_are_cut_to_63_bytes_without_a_trailing_dash() {
        let long = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        let label = sanitize_hostname(&long);
        assert_eq!(label, "a".repeat(62));
        assert!(validate_label(&label).is_ok());
    }

    #[test]
    fn suffixes_keep_labels_within_63_bytes() {
        let base = "x".repeat(63);
        let l = with_suffix(&base, 12);
        assert_eq!(l.len(), 63);
        assert!(l.ends_with("-12"));
        assert!(l.starts_with(candidate_prefix(&base)));
        assert!(with_suffix(&base, u64::MAX).starts_with(candidate_prefix(&base)));
    }

    #[test]
    fn the_first_free_suffix_is_chosen_without_spread() {
        let taken: BTreeSet<String> = ["box", "box-1", "box-3"].map(String::from).into();
        let mut rng = SplitMix64::new(0);
        assert_eq!(unique_label("box", &taken, 0, &mut rng), "box-2");
        assert_eq!(unique_label("free", &taken, 0, &mut rng), "free");
    }

    #[test]
    fn spread_chooses_among_free_candidates_only() {
        let taken: BTreeSet<String> = ["box", "box-1", "box-3"].map(String::from).into();
        let mut rng = SplitMix64::new(9);
        let mut seen = BTreeSet::new();
        for _ in 0..200 {
            let l = unique_label("box", &taken, 2, &mut rng);
            assert!(!taken.contains(&l));
            seen.insert(l);
        }
        let want: BTreeSet<String> = ["box-2", "box-4", "box-5", "box-6"]
            .map(String::from)
            .into();
        assert_eq!(seen, want);
    }

    #[test]
    fn renames_are_validated_not_sanitized() {
        assert!(validate_label("db-1").is_ok());
        for bad in ["", "-db", "db-", "DB", "d_b", "d.b", &"a".repeat(64)] {
            let err = validate_label(bad).unwrap_err();
            assert!(matches!(err, StoreError::InvalidName { .. }), "{bad:?}");
        }
    }
}
