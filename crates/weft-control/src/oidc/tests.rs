//! ID-token verification against a local JWKS, with tokens signed here
//! (ES256, ring): the forgeries an attacker could send are refused.

use std::time::Duration;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Value, json};
use weft_types::UnixMillis;

use super::provider::{TokenCheck, TokenError, verify_id_token};
use openidconnect::core::CoreJsonWebKeySet;

const ISS: &str = "http://127.0.0.1:9/idp";
const AUD: &str = "weft";
const NOW_S: i64 = 1_800_000_000;
const NOW: UnixMillis = UnixMillis(NOW_S * 1000);

struct Key {
    pair: EcdsaKeyPair,
    kid: &'static str,
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl Key {
    #[allow(clippy::disallowed_methods)] // test keys from the OS RNG
    fn new(kid: &'static str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Key { pair, kid }
    }

    fn jwk(&self) -> Value {
        let p = self.pair.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": self.kid,
               "x": b64(&p[1..33]), "y": b64(&p[33..65])})
    }

    #[allow(clippy::disallowed_methods)] // test signatures from the OS RNG
    fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }

    fn token(&self, claims: &Value) -> String {
        self.sign(
            &json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }
}

fn jwks(keys: &[&Key]) -> CoreJsonWebKeySet {
    let v = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    serde_json::from_value(v).unwrap()
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "sub": "alice", "iat": NOW_S - 5, "exp": NOW_S + 300,
           "auth_time": NOW_S - 30, "nonce": "n-1", "email": "alice@example.com",
           "groups": ["engineering"]})
}

fn check<'a>(set: &'a CoreJsonWebKeySet) -> TokenCheck<'a> {
    TokenCheck {
        client_id: AUD,
        issuer: ISS,
        jwks: set,
        nonce: "n-1",
        now: NOW,
        skew: Duration::from_secs(60),
        max_age: None,
    }
}

fn with(mut c: Value, k: &str, v: Value) -> Value {
    c[k] = v;
    c
}

#[test]
fn a_valid_token_gives_its_claims_and_auth_time() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let v = verify_id_token(&k.token(&claims()), &check(&set)).unwrap();
    assert_eq!(v.claims["groups"], json!(["engineering"]));
    assert_eq!(v.claims["email"], "alice@example.com");
    assert_eq!(v.authenticated, UnixMillis((NOW_S - 30) * 1000));
}

#[test]
fn a_nonce_mismatch_is_refused() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let t = k.token(&with(claims(), "nonce", json!("someone-else")));
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Nonce(_))
    ));
    let t = k.token(&{
        let mut c = claims();
        c.as_object_mut().unwrap().remove("nonce");
        c
    });
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Nonce(_))
    ));
}

#[test]
fn a_token_of_another_issuer_is_refused() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let t = k.token(&with(claims(), "iss", json!("http://127.0.0.1:9/evil")));
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Issuer(_))
    ));
}

#[test]
fn a_token_for_another_client_is_refused() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let t = k.token(&with(claims(), "aud", json!("other-app")));
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Audience(_))
    ));
    let t = k.token(&with(claims(), "aud", json!(["other-app", "weft"])));
    assert!(
        verify_id_token(&t, &check(&set)).is_err(),
        "an untrusted second audience is refused"
    );
}

#[test]
fn a_token_signed_by_another_key_is_refused() {
    let real = Key::new("k1");
    let forger = Key::new("k1");
    let set = jwks(&[&real]);
    let t = forger.token(&claims());
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Signature(_))
    ));
}

#[test]
fn a_token_with_an_unknown_key_id_says_so_so_the_keys_are_fetched_again() {
    let old = Key::new("k1");
    let rotated = Key::new("k2");
    let set = jwks(&[&old]);
    let t = rotated.token(&claims());
    match verify_id_token(&t, &check(&set)) {
        Err(TokenError::Signature(why)) => assert!(super::provider::is_unknown_key(&why), "{why}"),
        other => panic!("{other:?}"),
    }
    let set = jwks(&[&old, &rotated]);
    assert!(verify_id_token(&t, &check(&set)).is_ok());
}

#[test]
fn an_unsigned_or_hmac_token_is_refused() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none"}).to_string().as_bytes()),
        b64(claims().to_string().as_bytes())
    );
    assert!(verify_id_token(&none, &check(&set)).is_err());
    let hs = k.sign(&json!({"alg": "HS256", "kid": "k1"}), &claims());
    assert!(verify_id_token(&hs, &check(&set)).is_err());
    assert!(matches!(
        verify_id_token("not a token", &check(&set)),
        Err(TokenError::Malformed(_))
    ));
}

#[test]
fn expiry_is_checked_with_the_clock_skew() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let t = k.token(&with(claims(), "exp", json!(NOW_S - 30)));
    assert!(
        verify_id_token(&t, &check(&set)).is_ok(),
        "30 s late is within 60 s of skew"
    );
    let t = k.token(&with(claims(), "exp", json!(NOW_S - 61)));
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Expired(_))
    ));
    let t = k.token(&with(claims(), "iat", json!(NOW_S + 120)));
    assert!(matches!(
        verify_id_token(&t, &check(&set)),
        Err(TokenError::Expired(_))
    ));
}

#[test]
fn an_ssh_check_needs_an_authentication_within_its_period() {
    let k = Key::new("k1");
    let set = jwks(&[&k]);
    let mut c = check(&set);
    c.max_age = Some(Duration::from_secs(600));
    let t = k.token(&with(claims(), "auth_time", json!(NOW_S - 500)));
    assert!(verify_id_token(&t, &c).is_ok());
    let t = k.token(&with(claims(), "auth_time", json!(NOW_S - 3600)));
    assert!(matches!(
        verify_id_token(&t, &c),
        Err(TokenError::AuthTime(_))
    ));
    let t = k.token(&{
        let mut c = claims();
        c.as_object_mut().unwrap().remove("auth_time");
        c
    });
    assert!(matches!(
        verify_id_token(&t, &c),
        Err(TokenError::AuthTime(_))
    ));
}

#[tokio::test]
async fn a_sign_in_returns_only_to_a_path_on_this_server() {
    let clock: std::sync::Arc<dyn crate::clock::Clock> =
        std::sync::Arc::new(crate::clock::SystemClock);
    let oidc = super::Oidc::new(
        super::OidcConfig::new("http://127.0.0.1:9/idp", "weft"),
        "http://127.0.0.1:8080",
        clock,
    )
    .unwrap();
    for bad in [
        "https://evil.example/x",
        "//evil.example/x",
        "/\\evil.example",
        "admin",
    ] {
        let e = oidc.start_sign_in(bad, None).await.unwrap_err();
        assert!(
            e.to_string().contains("not a path on this server"),
            "{bad}: {e}"
        );
    }
    assert!(oidc.redeem("no-such-ticket").is_none());
}
