//! Identifiers: node, user and stable node ids, made by one macro.
//!
//! Numeric ids are database row ids (`i64`, never reused) and travel as JSON
//! numbers. [`StableNodeId`] is text that stays the same for a node's whole
//! life; clients that keep references across re-registrations use it.
//!
//! Other crates that need a new numeric id use [`make_id!`](crate::make_id)
//! so every id type has the same derives, text form and serde shape.

use std::fmt;
use std::str::FromStr;

/// Defines a numeric id newtype over `i64`.
///
/// The type is `Copy + Ord + Hash`, serializes as a bare JSON number,
/// displays as the number, and parses from decimal text.
///
/// ```
/// weft_types::make_id!(
///     /// A widget's row id.
///     WidgetId
/// );
/// let id: WidgetId = "42".parse().unwrap();
/// assert_eq!(id, WidgetId(42));
/// assert_eq!(id.to_string(), "42");
/// ```
#[macro_export]
macro_rules! make_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(::serde::Serialize, ::serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                ::std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse::<i64>().map($name)
            }
        }

        impl From<i64> for $name {
            fn from(v: i64) -> Self {
                $name(v)
            }
        }
    };
}

make_id!(
    /// A node's id: the control server's row id for the node. Short, numeric,
    /// never reused; the netmap keys peers by it.
    NodeId
);
make_id!(
    /// A user's id: the control server's row id for the user.
    UserId
);

/// The longest [`StableNodeId`] accepted.
pub const STABLE_ID_MAX_LEN: usize = 64;

/// A node's stable id: opaque text (the server uses `n` + 20 hex digits) that
/// never changes for the node's life, unlike its name, keys or addresses.
///
/// Valid text is 1–64 ASCII letters, digits, `-` or `_`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct StableNodeId(String);

/// Why a [`StableNodeId`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a stable node id is 1–64 ASCII letters, digits, '-' or '_'")]
pub struct StableIdError;

impl StableNodeId {
    /// Returns the id text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for StableNodeId {
    type Err = StableIdError;
    fn from_str(s: &str) -> Result<Self, StableIdError> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if s.is_empty() || s.len() > STABLE_ID_MAX_LEN || !s.chars().all(ok_char) {
            return Err(StableIdError);
        }
        Ok(Self(s.to_owned()))
    }
}

impl TryFrom<String> for StableNodeId {
    type Error = StableIdError;
    fn try_from(s: String) -> Result<Self, StableIdError> {
        s.parse()
    }
}

impl From<StableNodeId> for String {
    fn from(id: StableNodeId) -> String {
        id.0
    }
}

impl fmt::Display for StableNodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_are_bare_json_numbers() {
        assert_eq!(serde_json::to_string(&NodeId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<UserId>("12").unwrap(), UserId(12));
        assert_eq!("99".parse::<NodeId>().unwrap(), NodeId(99));
    }

    #[test]
    fn stable_ids_deserialize_through_validation() {
        let id: StableNodeId = serde_json::from_str("\"n0123456789abcdef0123\"").unwrap();
        assert_eq!(id.as_str(), "n0123456789abcdef0123");
        assert!(serde_json::from_str::<StableNodeId>("\"\"").is_err());
        assert!(serde_json::from_str::<StableNodeId>("\"a b\"").is_err());
        assert!("x".repeat(65).parse::<StableNodeId>().is_err());
    }
}
