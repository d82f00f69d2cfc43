//! Curve25519 keys with typed, prefixed text forms.
//!
//! Each kind of key is its own type so a node key is never mistaken for a
//! machine key: public keys print as `nodekey:<hex>`, `mkey:<hex>` or
//! `discokey:<hex>`; private keys as `privkey:<hex>` (only where a private key
//! must be stored, e.g. the state file). Private keys zeroize on drop, compare
//! in constant time and redact themselves in `Debug`.
//!
//! WireGuard tools use other encodings of the same 32 bytes: base64 in
//! `wg(8)` configs and lowercase hex in the UAPI protocol. Both are available.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The text prefix of every serialized private key.
pub const PRIVATE_PREFIX: &str = "privkey:";

/// Why a key could not be parsed from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    /// The text did not start with the prefix this key type requires.
    #[error("expected a key starting with {expected:?}")]
    WrongPrefix {
        /// The prefix that was expected, e.g. `nodekey:`.
        expected: &'static str,
    },
    /// The body was not 64 hex digits.
    #[error("expected 64 hex digits after the prefix")]
    BadHex,
    /// The text was not 32 bytes of base64.
    #[error("expected 44 characters of base64 encoding 32 bytes")]
    BadBase64,
}

fn parse_hex32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return Err(KeyParseError::BadHex);
    }
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyParseError::BadHex)?;
    Ok(out)
}

fn parse_base64_32(s: &str) -> Result<[u8; 32], KeyParseError> {
    let v = Zeroizing::new(
        BASE64
            .decode(s.trim())
            .map_err(|_| KeyParseError::BadBase64)?,
    );
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| KeyParseError::BadBase64)
}

macro_rules! public_key {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name([u8; 32]);

        impl $name {
            /// The text prefix of this key type.
            pub const PREFIX: &'static str = $prefix;

            /// Wraps raw key bytes.
            pub const fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }

            /// Returns the raw key bytes.
            pub const fn to_bytes(&self) -> [u8; 32] {
                self.0
            }

            /// Returns the raw key bytes by reference.
            pub const fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Returns the key as lowercase hex without prefix (the UAPI form).
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// Parses 64 hex digits without prefix (the UAPI form).
            ///
            /// # Errors
            /// [`KeyParseError::BadHex`] unless the text is exactly 64 hex digits.
            pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
                parse_hex32(s).map(Self)
            }

            /// Returns the key in base64 (the `wg(8)` form).
            pub fn to_base64(&self) -> String {
                BASE64.encode(self.0)
            }

            /// Parses the base64 form used by `wg(8)`.
            ///
            /// # Errors
            /// [`KeyParseError::BadBase64`] unless the text decodes to 32 bytes.
            pub fn from_base64(s: &str) -> Result<Self, KeyParseError> {
                parse_base64_32(s).map(Self)
            }

            /// Returns a short form for logs and tables: the prefix and 8 hex digits.
            pub fn short(&self) -> String {
                format!("{}{}", $prefix, &hex::encode(&self.0[..4]))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.short())
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let body = s
                    .strip_prefix($prefix)
                    .ok_or(KeyParseError::WrongPrefix { expected: $prefix })?;
                parse_hex32(body).map(Self)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

macro_rules! private_key {
    ($(#[$doc:meta])* $name:ident, $public:ident) => {
        $(#[$doc])*
        ///
        /// Zeroized on drop, compared in constant time, redacted in `Debug`.
        #[derive(Clone)]
        pub struct $name(Zeroizing<[u8; 32]>);

        impl $name {
            /// Generates a new key from the operating system's CSPRNG
            /// ([`crate::entropy`]; X25519 clamps any 32 bytes into a key).
            pub fn generate() -> Self {
                let mut key = Zeroizing::new([0u8; 32]);
                crate::entropy::fill(&mut key[..]);
                Self(key)
            }

            /// Wraps raw key bytes (clamping happens when the key is used).
            pub fn from_bytes(bytes: [u8; 32]) -> Self {
                Self(Zeroizing::new(bytes))
            }

            /// Returns the raw secret bytes. Keep the copy short-lived.
            pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
                self.0.clone()
            }

            /// Returns the raw secret bytes by reference.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Returns the matching public key.
            pub fn public(&self) -> $public {
                let secret = x25519_dalek::StaticSecret::from(*self.0);
                $public(x25519_dalek::PublicKey::from(&secret).to_bytes())
            }

            /// Returns the secret as an x25519-dalek `StaticSecret`.
            pub fn to_static_secret(&self) -> x25519_dalek::StaticSecret {
                x25519_dalek::StaticSecret::from(*self.0)
            }

            /// Returns the secret in hex without prefix (the UAPI form).
            pub fn to_hex(&self) -> Zeroizing<String> {
                Zeroizing::new(hex::encode(*self.0))
            }

            /// Parses 64 hex digits without prefix (the UAPI form).
            ///
            /// # Errors
            /// [`KeyParseError::BadHex`] unless the text is exactly 64 hex digits.
            pub fn from_hex(s: &str) -> Result<Self, KeyParseError> {
                parse_hex32(s).map(Self::from_bytes)
            }

            /// Parses the base64 form used by `wg(8)`.
            ///
            /// # Errors
            /// [`KeyParseError::BadBase64`] unless the text decodes to 32 bytes.
            pub fn from_base64(s: &str) -> Result<Self, KeyParseError> {
                parse_base64_32(s).map(Self::from_bytes)
            }

            /// Returns the `privkey:<hex>` text form for storage.
            pub fn to_text(&self) -> Zeroizing<String> {
                Zeroizing::new(format!("{PRIVATE_PREFIX}{}", hex::encode(*self.0)))
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&*other.0).into()
            }
        }
        impl Eq for $name {}

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted>, public {})", stringify!($name), self.public().short())
            }
        }

        impl FromStr for $name {
            type Err = KeyParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let body = s
                    .strip_prefix(PRIVATE_PREFIX)
                    .ok_or(KeyParseError::WrongPrefix { expected: PRIVATE_PREFIX })?;
                parse_hex32(body).map(Self::from_bytes)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_text())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = Zeroizing::new(String::deserialize(d)?);
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

public_key!(
    /// A node's public key: its WireGuard static key, one per login profile.
    NodePublic,
    "nodekey:"
);
public_key!(
    /// A machine's public key: authenticates the control channel.
    MachinePublic,
    "mkey:"
);
public_key!(
    /// A disco public key: seals path-discovery messages; new at each daemon start.
    DiscoPublic,
    "discokey:"
);

private_key!(
    /// A node's private key (the WireGuard static private key).
    NodePrivate,
    NodePublic
);
private_key!(
    /// A machine's private key (the control channel's Noise static key).
    MachinePrivate,
    MachinePublic
);
private_key!(
    /// A disco private key.
    DiscoPrivate,
    DiscoPublic
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_keys_round_trip_through_text_forms() {
        let k = NodePrivate::from_bytes([7; 32]).public();
        let text = k.to_string();
        assert!(text.starts_with("nodekey:"));
        assert_eq!(text.parse::<NodePublic>().unwrap(), k);
        assert_eq!(NodePublic::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(NodePublic::from_hex(&k.to_hex()).unwrap(), k);
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<NodePublic>(&json).unwrap(), k);
    }

    #[test]
    fn a_node_key_is_not_accepted_as_a_machine_key() {
        let k = NodePrivate::from_bytes([7; 32]).public().to_string();
        assert_eq!(
            k.parse::<MachinePublic>(),
            Err(KeyParseError::WrongPrefix { expected: "mkey:" })
        );
    }

    #[test]
    fn private_keys_are_redacted_in_debug() {
        let k = NodePrivate::from_bytes([9; 32]);
        let dbg = format!("{k:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&hex::encode([9u8; 32])));
    }

    #[test]
    fn private_key_text_round_trips() {
        let k = MachinePrivate::generate();
        let back: MachinePrivate = k.to_text().parse().unwrap();
        assert_eq!(back, k);
        assert_eq!(back.public(), k.public());
    }

    #[test]
    fn bad_key_text_is_rejected() {
        assert_eq!(
            "nodekey:abc".parse::<NodePublic>(),
            Err(KeyParseError::BadHex)
        );
        assert_eq!(NodePublic::from_base64("!!"), Err(KeyParseError::BadBase64));
    }
}
