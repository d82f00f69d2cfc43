//! Secrets handed to people: pre-auth keys and API keys.
//!
//! A key reads `weftkey-<kind>-<prefix>-<secret>`: `kind` is `auth` or `api`,
//! `prefix` is 12 hex digits (6 random bytes) that identify the row and are
//! safe to show in listings and logs, `secret` is 48 hex digits (24 random
//! bytes from the OS CSPRNG). The database stores the prefix and the SHA-256
//! of the secret, never the secret itself; the full text is shown once, when
//! the key is created.
//!
//! A fast hash is enough here because the secret has 192 bits of entropy:
//! there is nothing to brute-force that a slow password hash would protect.
//! Hashes are compared in constant time.

use std::fmt;

use subtle::ConstantTimeEq as _;

use crate::StoreError;

const PREFIX_BYTES: usize = 6;
const SECRET_BYTES: usize = 24;

/// The kind of a key, which is also its text tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// A pre-auth key, `weftkey-auth-…`.
    Auth,
    /// An API key, `weftkey-api-…`.
    Api,
}

impl KeyKind {
    pub(crate) const fn tag(self) -> &'static str {
        match self {
            KeyKind::Auth => "auth",
            KeyKind::Api => "api",
        }
    }
}

/// A freshly created key in full text form. Show it to the user once; it
/// cannot be recovered from the store. `Debug` redacts the secret part.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySecret(String);

impl KeySecret {
    /// Returns the full key text to hand to the user.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for KeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Everything up to and including the prefix is public.
        let public_len = self.0.rfind('-').unwrap_or(0);
        write!(
            f,
            "KeySecret({}-<redacted>)",
            self.0.get(..public_len).unwrap_or_default()
        )
    }
}

/// A generated key: the text for the user, and what the store keeps.
pub(crate) struct Generated {
    pub(crate) text: KeySecret,
    pub(crate) prefix: String,
    pub(crate) hash: String,
}

/// Generates a new key of `kind`.
pub(crate) fn generate(kind: KeyKind) -> Result<Generated, StoreError> {
    let prefix = random_hex(PREFIX_BYTES)?;
    let secret = random_hex(SECRET_BYTES)?;
    let hash = hash_secret(&secret);
    let text = KeySecret(format!("weftkey-{}-{prefix}-{secret}", kind.tag()));
    Ok(Generated { text, prefix, hash })
}

/// Splits a key text into its prefix and the SHA-256 of its secret.
///
/// # Errors
/// [`StoreError::MalformedKey`] if the text is not a well-formed key of `kind`.
pub(crate) fn parse(kind: KeyKind, text: &str) -> Result<(String, String), StoreError> {
    let malformed = || StoreError::MalformedKey { kind: kind.tag() };
    let rest = text
        .trim()
        .strip_prefix("weftkey-")
        .and_then(|r| r.strip_prefix(kind.tag()))
        .and_then(|r| r.strip_prefix('-'))
        .ok_or_else(malformed)?;
    let (prefix, secret) = rest.split_once('-').ok_or_else(malformed)?;
    let is_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !is_hex(prefix, PREFIX_BYTES * 2) || !is_hex(secret, SECRET_BYTES * 2) {
        return Err(malformed());
    }
    Ok((prefix.to_owned(), hash_secret(secret)))
}

/// Compares two hex hashes in constant time.
pub(crate) fn hashes_match(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Returns `n` random bytes from the OS CSPRNG as lowercase hex (a failed
/// RNG aborts the process: [`weft_types::entropy`]).
pub(crate) fn random_hex(n: usize) -> Result<String, StoreError> {
    let mut buf = vec![0u8; n];
    weft_types::entropy::fill(&mut buf);
    Ok(hex::encode(buf))
}

/// Returns 64 random bits from the OS CSPRNG (to seed the address picker).
pub(crate) fn random_u64() -> Result<u64, StoreError> {
    let h = random_hex(8)?;
    u64::from_str_radix(&h, 16).map_err(|e| StoreError::Corrupt {
        what: "random seed",
        detail: e.to_string(),
    })
}

fn hash_secret(secret: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA256,
        secret.as_bytes(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_back_to_its_prefix_and_hash() {
        let g = generate(KeyKind::Auth).unwrap();
        assert!(g.text.expose().starts_with("weftkey-auth-"));
        let (prefix, hash) = parse(KeyKind::Auth, g.text.expose()).unwrap();
        assert_eq!(prefix, g.prefix);
        assert!(hashes_match(&hash, &g.hash));
        assert_eq!(g.hash.len(), 64);
        assert!(
            !g.hash.contains(&g.text.expose()[26..]),
            "the stored hash is not the secret"
        );
    }

    #[test]
    fn a_key_of_the_other_kind_or_damaged_text_is_malformed() {
        let g = generate(KeyKind::Api).unwrap();
        assert!(matches!(
            parse(KeyKind::Auth, g.text.expose()),
            Err(StoreError::MalformedKey { kind: "auth" })
        ));
        let text = g.text.expose();
        for bad in [
            &text[..text.len() - 1],
            "weftkey-api-",
            "",
            "weftkey-api-zz-yy",
        ] {
            assert!(parse(KeyKind::Api, bad).is_err(), "{bad:?}");
        }
        let upper = text.to_uppercase().replace("WEFTKEY-API", "weftkey-api");
        assert!(parse(KeyKind::Api, &upper).is_err());
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let g = generate(KeyKind::Auth).unwrap();
        let dbg = format!("{:?}", g.text);
        assert!(dbg.contains(&g.prefix));
        let secret = g.text.expose().rsplit('-').next().unwrap();
        assert!(!dbg.contains(secret));
    }
}
