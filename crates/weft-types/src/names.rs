//! Validated names: DNS labels and names, login names and tags.
//!
//! Each type can only hold valid text: it is built through `FromStr` (and
//! serde goes through `FromStr` too, via `try_from = "String"`), so a value
//! that came off the wire or out of a file has been checked.
//!
//! Node names are made from whatever the operating system calls the machine.
//! [`DnsLabel::sanitize`] turns any such text into a valid label, and
//! [`DnsLabel::unique_among`] adds a `-N` suffix when the label is taken.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// The longest DNS label (RFC 1035 §2.3.4).
pub const LABEL_MAX_LEN: usize = 63;
/// The longest DNS name in text form without the trailing dot (RFC 1035 §2.3.4).
pub const NAME_MAX_LEN: usize = 253;
/// The longest login name.
pub const LOGIN_NAME_MAX_LEN: usize = 254;
/// The longest tag name after the `tag:` prefix.
pub const TAG_NAME_MAX_LEN: usize = 63;
/// The label [`DnsLabel::sanitize`] falls back to when nothing usable is left.
pub const FALLBACK_LABEL: &str = "node";

/// Why a name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not a DNS label: 1–63 of `a-z`, `0-9`, `-`, not starting or ending with `-`.
    #[error("{0:?} is not a DNS label (1-63 of a-z, 0-9, '-', not starting or ending with '-')")]
    BadLabel(String),
    /// Not a DNS name: dot-separated labels, at most 253 characters, no trailing dot.
    #[error("{0:?} is not a DNS name (lowercase labels separated by dots, at most 253 characters)")]
    BadName(String),
    /// Not a login name: 1–254 characters without whitespace or control characters.
    #[error("{0:?} is not a login name (1-254 characters, no whitespace or control characters)")]
    BadLoginName(String),
    /// Not a tag: `tag:` then 1–63 letters, digits or dashes, starting with a letter.
    #[error("{0:?} is not a tag (tag: then 1-63 letters, digits or '-', starting with a letter)")]
    BadTag(String),
}

macro_rules! validated_string {
    ($name:ident, $check:path) => {
        impl $name {
            /// Returns the text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                $check(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                $check(&s)?;
                Ok(Self(s))
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        // Ordering, equality and hashing are the text's, so maps keyed by
        // names can be searched with a `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// One DNS label in canonical (lowercase) form: 1–63 of `a-z`, `0-9` and
/// `-`, neither starting nor ending with `-` (RFC 1123 §2.1 host names).
/// A node's short name, the first label of its MagicDNS name, is one.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DnsLabel(String);

/// A node's short name; the same thing as a [`DnsLabel`].
pub type Hostname = DnsLabel;

validated_string!(DnsLabel, check_label);

fn check_label(s: &str) -> Result<(), NameError> {
    let ok_char = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    let ok = !s.is_empty()
        && s.len() <= LABEL_MAX_LEN
        && s.bytes().all(ok_char)
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NameError::BadLabel(s.to_owned()))
    }
}

impl DnsLabel {
    /// Turns arbitrary text (an OS hostname such as `"Bob's MacBook Pro.local"`)
    /// into a valid label (`"bobs-macbook-pro"`). Never fails.
    ///
    /// The rules, in order: keep only the text before the first `.`
    /// (unless that is empty); lowercase ASCII letters; drop apostrophes;
    /// keep `-`; turn every other character that is not `a-z`/`0-9` (spaces,
    /// `_`, non-ASCII, …) into one `-` unless one precedes it; trim `-` at
    /// both ends (so valid labels, `xn--` ones too, come out unchanged);
    /// cut to 63 characters (and trim again). If nothing is left the label
    /// is [`FALLBACK_LABEL`].
    pub fn sanitize(raw: &str) -> DnsLabel {
        let first = match raw.split('.').next() {
            Some(f) if !f.trim().is_empty() => f,
            _ => raw,
        };
        let mut out = String::with_capacity(first.len().min(LABEL_MAX_LEN));
        for c in first.chars() {
            if out.len() >= LABEL_MAX_LEN {
                break;
            }
            match c {
                'a'..='z' | '0'..='9' => out.push(c),
                '-' if !out.is_empty() => out.push(c),
                'A'..='Z' => out.push(c.to_ascii_lowercase()),
                '\'' | '\u{2019}' => {}
                _ if out.ends_with('-') || out.is_empty() => {}
                _ => out.push('-'),
            }
        }
        let trimmed = out.trim_matches('-');
        if trimmed.is_empty() {
            return DnsLabel(FALLBACK_LABEL.to_owned());
        }
        DnsLabel(trimmed.to_owned())
    }

    /// Returns this label if it is not in `taken`, otherwise the first of
    /// `<label>-1`, `<label>-2`, … that is not (cutting the label so the
    /// result stays within 63 characters).
    ///
    /// Terminates after at most `taken.len() + 1` candidates: the candidates
    /// are pairwise distinct (the number after the last `-` tells them apart).
    pub fn unique_among(&self, taken: &BTreeSet<DnsLabel>) -> DnsLabel {
        if !taken.contains(self) {
            return self.clone();
        }
        let mut n: u64 = 1;
        loop {
            let suffix = format!("-{n}");
            let keep = LABEL_MAX_LEN - suffix.len();
            let base = self.0.get(..keep).unwrap_or(&self.0).trim_end_matches('-');
            let candidate = DnsLabel(format!("{base}{suffix}"));
            if !taken.contains(&candidate) {
                return candidate;
            }
            n += 1;
        }
    }
}

/// A DNS name in canonical form: lowercase [`DnsLabel`]s joined by `.`,
/// at most 253 characters, written **without** the trailing dot
/// (`laptop.example.weft.internal`). Used for the tailnet's domain and node
/// names (FQDNs).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct DnsName(String);

validated_string!(DnsName, check_name);

fn check_name(s: &str) -> Result<(), NameError> {
    let ok =
        !s.is_empty() && s.len() <= NAME_MAX_LEN && s.split('.').all(|l| check_label(l).is_ok());
    if ok {
        Ok(())
    } else {
        Err(NameError::BadName(s.to_owned()))
    }
}

impl DnsName {
    /// Returns `<label>.<domain>`.
    ///
    /// # Errors
    /// [`NameError::BadName`] if the result would exceed 253 characters.
    pub fn with_label(label: &DnsLabel, domain: &DnsName) -> Result<DnsName, NameError> {
        format!("{label}.{domain}").parse()
    }

    /// Returns the first label (a node name's short name).
    pub fn first_label(&self) -> DnsLabel {
        let first = self.0.split('.').next().unwrap_or(&self.0);
        DnsLabel(first.to_owned())
    }

    /// Returns the name with the trailing dot of a fully qualified name.
    pub fn to_fqdn_with_dot(&self) -> String {
        format!("{}.", self.0)
    }
}

/// A user's login name, e.g. `alice` or `alice@example.com`: 1–254
/// characters, no whitespace or control characters. Compared exactly (the
/// server decides any case folding before it hands one out).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LoginName(String);

validated_string!(LoginName, check_login);

fn check_login(s: &str) -> Result<(), NameError> {
    let n = s.chars().count();
    let ok = (1..=LOGIN_NAME_MAX_LEN).contains(&n)
        && !s.chars().any(|c| c.is_whitespace() || c.is_control());
    if ok {
        Ok(())
    } else {
        Err(NameError::BadLoginName(s.to_owned()))
    }
}

/// A node tag such as `tag:server`: `tag:` then 1–63 ASCII letters, digits
/// or dashes, starting with a letter. A tagged node is owned by its tags, not
/// by a user.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

validated_string!(Tag, check_tag);

/// The prefix every [`Tag`] starts with.
pub const TAG_PREFIX: &str = "tag:";

fn check_tag(s: &str) -> Result<(), NameError> {
    let bad = || NameError::BadTag(s.to_owned());
    let name = s.strip_prefix(TAG_PREFIX).ok_or_else(bad)?;
    let first_is_letter = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let all_ok = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if first_is_letter && all_ok && name.len() <= TAG_NAME_MAX_LEN {
        Ok(())
    } else {
        Err(bad())
    }
}

impl Tag {
    /// Returns the part after `tag:`.
    pub fn name(&self) -> &str {
        self.0.get(TAG_PREFIX.len()..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn label(s: &str) -> DnsLabel {
        s.parse().unwrap()
    }

    #[test]
    fn sanitize_turns_os_hostnames_into_labels() {
        let cases = [
            ("Bob's MacBook Pro.local", "bobs-macbook-pro"),
            ("web-01", "web-01"),
            ("my_host", "my-host"),
            ("--edge--", "edge"),
            ("Ünïcødé box", "n-c-d-box"),
            ("", "node"),
            ("...", "node"),
            (".hidden", "hidden"),
            ("  x  ", "x"),
            ("UPPER", "upper"),
        ];
        for (raw, want) in cases {
            assert_eq!(DnsLabel::sanitize(raw).as_str(), want, "sanitize({raw:?})");
        }
    }

    #[test]
    fn sanitize_cuts_long_names_to_63_without_a_trailing_dash() {
        let raw = format!("{}-{}", "a".repeat(62), "b".repeat(10));
        let l = DnsLabel::sanitize(&raw);
        assert_eq!(l.as_str(), "a".repeat(62));
    }

    #[test]
    fn unique_among_appends_the_first_free_number() {
        let taken: BTreeSet<_> = ["web", "web-1", "web-2"].into_iter().map(label).collect();
        assert_eq!(label("web").unique_among(&taken), label("web-3"));
        assert_eq!(label("db").unique_among(&taken), label("db"));
    }

    #[test]
    fn unique_among_keeps_long_labels_within_63_characters() {
        let long = label(&"x".repeat(63));
        let taken = BTreeSet::from([long.clone()]);
        let u = long.unique_among(&taken);
        assert_eq!(u.as_str().len(), 63);
        assert!(u.as_str().ends_with("-1"));
    }

    #[test]
    fn labels_names_logins_and_tags_reject_bad_text() {
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(bad.parse::<DnsLabel>().is_err(), "{bad:?}");
        }
        assert!("a.b-c.d".parse::<DnsName>().is_ok());
        for bad in [
            "",
            "a..b",
            "a.",
            ".a",
            "A.b",
            &format!("{}.b", "a".repeat(64)),
        ] {
            assert!(bad.parse::<DnsName>().is_err(), "{bad:?}");
        }
        assert!("alice@example.com".parse::<LoginName>().is_ok());
        for bad in ["", "a b", "a\u{7}", &"a".repeat(255)] {
            assert!(bad.parse::<LoginName>().is_err(), "{bad:?}");
        }
        assert_eq!("tag:server".parse::<Tag>().unwrap().name(), "server");
        for bad in ["server", "tag:", "tag:1x", "tag:a_b", "tag:a b"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn json_cannot_bypass_validation() {
        assert!(serde_json::from_str::<Tag>("\"server\"").is_err());
        assert!(serde_json::from_str::<DnsLabel>("\"Bad\"").is_err());
        assert_eq!(
            serde_json::from_str::<Tag>("\"tag:ok\"").unwrap().as_str(),
            "tag:ok"
        );
        let n = DnsName::with_label(&label("laptop"), &"example.weft".parse().unwrap()).unwrap();
        assert_eq!(
            serde_json::to_string(&n).unwrap(),
            "\"laptop.example.weft\""
        );
        assert_eq!(n.first_label(), label("laptop"));
        assert_eq!(n.to_fqdn_with_dot(), "laptop.example.weft.");
    }

    proptest! {
        #[test]
        fn sanitize_always_yields_a_valid_label(raw in any::<String>()) {
            let l = DnsLabel::sanitize(&raw);
            prop_assert!(l.as_str().parse::<DnsLabel>().is_ok(), "{:?} -> {:?}", raw, l);
        }

        #[test]
        fn sanitize_keeps_valid_labels_unchanged(s in "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?") {
            let l = DnsLabel::sanitize(&s);
            prop_assert_eq!(l.as_str(), s.as_str());
        }

        #[test]
        fn unique_among_returns_a_valid_label_not_in_the_taken_set(
            raw in any::<String>(),
            extra in proptest::collection::vec(0u64..40, 0..40),
        ) {
            let base = DnsLabel::sanitize(&raw);
            let mut taken = BTreeSet::from([base.clone()]);
            for n in extra {
                let suffix = format!("-{n}");
                let keep = LABEL_MAX_LEN - suffix.len();
                let b = base.as_str().get(..keep).unwrap_or(base.as_str()).trim_end_matches('-');
                taken.insert(label(&format!("{b}{suffix}")));
            }
            let u = base.unique_among(&taken);
            prop_assert!(!taken.contains(&u));
            prop_assert!(u.as_str().parse::<DnsLabel>().is_ok());
        }
    }
}
