//! The identity provider as the server sees it: discovery, the JWKS (fetched
//! again when a token names a key it does not hold), the authorization URL,
//! the code exchange, and ID-token verification — all through the
//! `openidconnect` crate, over reqwest 0.13 ([`HttpClient`]).
//!
//! An ID token is accepted only if its signature verifies against the
//! IdP's keys (RS/PS/ES/EdDSA algorithms; never `none` or HMAC), `iss` is
//! the configured issuer, `aud` holds our client id, `exp` has not passed
//! and `nonce` is the one of this sign-in (all with the configured clock
//! skew), and, for an SSH check, `auth_time` is within the rule's
//! checkPeriod.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreGenderClaim, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AdditionalClaims, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse, IdToken,
    IdTokenClaims, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, TokenResponse as _,
};
use serde_json::{Map, Value};
use weft_types::UnixMillis;

use super::config::OidcConfig;

/// How long one request to the IdP may take.
pub const IDP_TIMEOUT: Duration = Duration::from_secs(10);
/// The shortest time between two JWKS fetches caused by unknown key ids.
pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// The client after discovery: authorization URL set, token URL maybe.
pub(crate) type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// All claims of an ID token, standard and not (the groups claim's name
/// is configured).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct AllClaims {
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}
impl AdditionalClaims for AllClaims {}

type FullIdToken =
    IdToken<AllClaims, CoreGenderClaim, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm>;

/// Why the IdP could not be used, or its answer was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdpError {
    /// Discovery or the JWKS failed (the IdP is down, slow or misconfigured).
    #[error("the identity provider at {issuer} cannot be reached or answered badly: {detail}")]
    Unreachable {
        /// The issuer.
        issuer: String,
        /// What failed.
        detail: String,
    },
    /// The code exchange failed (a used or forged code, a wrong secret).
    #[error("the identity provider refused the sign-in code: {0}")]
    Exchange(String),
    /// The token response had no ID token.
    #[error(
        "the identity provider sent no ID token (is the openid scope allowed for this client?)"
    )]
    NoIdToken,
    /// The ID token failed verification.
    #[error("the ID token was refused: {0}")]
    Token(#[from] TokenError),
}

/// Why an ID token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a JWT.
    #[error("not a well-formed ID token: {0}")]
    Malformed(String),
    /// No key of the IdP verifies the signature, or no key has its id.
    #[error("its signature does not verify with the identity provider's keys: {0}")]
    Signature(String),
    /// `iss` is not the configured issuer.
    #[error("it comes from another issuer: {0}")]
    Issuer(String),
    /// `aud` does not hold our client id.
    #[error("it was issued for another client: {0}")]
    Audience(String),
    /// `exp` has passed.
    #[error("it has expired: {0}")]
    Expired(String),
    /// `nonce` is not this sign-in's.
    #[error("its nonce does not match this sign-in (a replayed or injected token): {0}")]
    Nonce(String),
    /// `auth_time` is older than allowed.
    #[error("the identity provider did not authenticate you again recently enough: {0}")]
    AuthTime(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl TokenError {
    fn from_verification(e: ClaimsVerificationError) -> Self {
        use ClaimsVerificationError as E;
        match e {
            E::Expired(s) => TokenError::Expired(s),
            E::InvalidAudience(s) => TokenError::Audience(s),
            E::InvalidIssuer(s) => TokenError::Issuer(s),
            E::InvalidNonce(s) => TokenError::Nonce(s),
            E::InvalidAuthTime(s) => TokenError::AuthTime(s),
            E::SignatureVerification(s) => TokenError::Signature(s.to_string()),
            other => TokenError::Other(other.to_string()),
        }
    }
}

/// A verified ID token: its claims, and when the user authenticated.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    pub claims: Map<String, Value>,
    pub authenticated: UnixMillis,
}

/// What an ID token is checked against.
pub(crate) struct TokenCheck<'a> {
    pub client_id: &'a str,
    pub issuer: &'a str,
    pub jwks: &'a CoreJsonWebKeySet,
    pub nonce: &'a str,
    pub now: UnixMillis,
    pub skew: Duration,
    /// For SSH checks: the longest time since the user authenticated.
    pub max_age: Option<Duration>,
}

/// The signature algorithms accepted: asymmetric only.
const ALGS: &[CoreJwsSigningAlgorithm] = &[
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

fn to_utc(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Verifies `token` (see the module docs).
///
/// # Errors
/// [`TokenError`].
pub(crate) fn verify_id_token(token: &str, c: &TokenCheck<'_>) -> Result<Verified, TokenError> {
    let parsed: FullIdToken = token
        .parse()
        .map_err(|e: serde_json::Error| TokenError::Malformed(e.to_string()))?;
    let skew_ms = i64::try_from(c.skew.as_millis()).unwrap_or(i64::MAX);
    // `exp` is compared with this time: `skew` of lateness is forgiven.
    let lenient_now = to_utc(c.now.0.saturating_sub(skew_ms));
    let max_age = c.max_age;
    let now_ms = c.now.0;
    let verifier = CoreIdTokenVerifier::new_public_client(
        ClientId::new(c.client_id.to_owned()),
        IssuerUrl::new(c.issuer.to_owned()).map_err(|e| TokenError::Other(e.to_string()))?,
        c.jwks.clone(),
    )
    .set_allowed_algs(ALGS.iter().cloned())
    .set_time_fn(move || lenient_now)
    .set_issue_time_verifier_fn(move |iat| {
        if iat.timestamp_millis() > now_ms.saturating_add(skew_ms) {
            Err(format!("issued in the future ({iat})"))
        } else {
            Ok(())
        }
    })
    .set_auth_time_verifier_fn(move |auth_time| {
        let Some(max) = max_age else { return Ok(()) };
        let Some(at) = auth_time else {
            return Err("no auth_time in the token, which a check needs".into());
        };
        let max_ms = i64::try_from(max.as_millis()).unwrap_or(i64::MAX);
        if at.timestamp_millis() < now_ms.saturating_sub(max_ms).saturating_sub(skew_ms) {
            Err(format!(
                "authenticated at {at}, longer ago than the check period of {}s",
                max.as_secs()
            ))
        } else {
            Ok(())
        }
    });
    let nonce = Nonce::new(c.nonce.to_owned());
    let claims: &IdTokenClaims<AllClaims, CoreGenderClaim> = parsed
        .claims(&verifier, &nonce)
        .map_err(TokenError::from_verification)?;
    let authenticated = claims
        .auth_time()
        .unwrap_or_else(|| claims.issue_time())
        .timestamp_millis();
    let claims = match serde_json::to_value(claims) {
        Ok(Value::Object(m)) => m,
        _ => return Err(TokenError::Other("cannot read the token's claims".into())),
    };
    Ok(Verified {
        claims,
        authenticated: UnixMillis(authenticated),
    })
}

/// reqwest 0.13 as `openidconnect`'s HTTP client: no redirects (a
/// redirecting discovery or token endpoint is an error, not a hop to
/// another host), [`IDP_TIMEOUT`] per request, rustls on ring.
#[derive(Debug, Clone)]
pub(crate) struct HttpClient(reqwest::Client);

/// An HTTP failure talking to the IdP.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    #[error(transparent)]
    Reqwest(#[from] reqwest::Error),
    #[error(transparent)]
    Http(#[from] http::Error),
}

impl HttpClient {
    /// Builds the client, trusting the public roots and `extra_ca` (PEM).
    pub(crate) fn new(extra_ca: Option<&std::path::Path>) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = extra_ca {
            use rustls::pki_types::pem::PemObject as _;
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read the OIDC CA file {}: {e}", path.display()))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("bad certificate in {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(IDP_TIMEOUT)
            .connect_timeout(IDP_TIMEOUT / 2)
            .no_proxy()
            .build()
            .map_err(|e| format!("cannot build the HTTP client for the identity provider: {e}"))?;
        Ok(Self(client))
    }
}

impl<'c> openidconnect::AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = reqwest::Request::try_from(request)?;
            let response = self.0.execute(request).await?;
            let mut out = http::Response::builder().status(response.status());
            for (k, v) in response.headers() {
                out = out.header(k, v);
            }
            let body = response.bytes().await?;
            Ok(out.body(body.to_vec())?)
        })
    }
}

/// The IdP's metadata, once discovered, and when its keys were last fetched.
#[derive(Debug)]
struct Discovered {
    metadata: CoreProviderMetadata,
    jwks_fetched: UnixMillis,
}

/// The identity provider: discovered lazily (the server starts while the
/// IdP is down; a login then says so), then kept.
#[derive(Debug)]
pub(crate) struct Provider {
    config: OidcConfig,
    redirect: String,
    http: HttpClient,
    discovered: RwLock<Option<Arc<Discovered>>>,
    discovery: tokio::sync::Mutex<()>,
}

/// An authorization request: where to send the browser, and what the
/// callback must match.
pub(crate) struct AuthRequest {
    pub url: String,
    pub nonce: String,
    pub pkce_verifier: String,
}

impl Provider {
    pub(crate) fn new(config: OidcConfig, redirect: String) -> Result<Self, String> {
        let http = HttpClient::new(config.ca_file.as_deref())?;
        Ok(Self {
            config,
            redirect,
            http,
            discovered: RwLock::new(None),
            discovery: tokio::sync::Mutex::new(()),
        })
    }

    pub(crate) fn config(&self) -> &OidcConfig {
        &self.config
    }

    fn cached(&self) -> Option<Arc<Discovered>> {
        self.discovered
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn store(&self, d: Discovered) -> Arc<Discovered> {
        let d = Arc::new(d);
        *self
            .discovered
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(d.clone());
        d
    }

    fn unreachable(&self, detail: impl std::fmt::Display) -> IdpError {
        IdpError::Unreachable {
            issuer: self.config.issuer.clone(),
            detail: detail.to_string(),
        }
    }

    /// Returns the metadata, discovering it (and its keys) on first use.
    async fn metadata(&self, now: UnixMillis) -> Result<Arc<Discovered>, IdpError> {
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        let _one = self.discovery.lock().await;
        if let Some(d) = self.cached() {
            return Ok(d);
        }
        let issuer = IssuerUrl::new(self.config.issuer.clone()).map_err(|e| self.unreachable(e))?;
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        tracing::info!(issuer = %self.config.issuer, keys = metadata.jwks().keys().len(), "OIDC provider discovered");
        Ok(self.store(Discovered {
            metadata,
            jwks_fetched: now,
        }))
    }

    /// Fetches the IdP's keys again (a token named a key id we do not
    /// hold: the IdP rotated its keys), at most every
    /// [`JWKS_REFRESH_INTERVAL`]. Returns whether new keys were fetched.
    async fn refresh_jwks(&self, now: UnixMillis) -> Result<bool, IdpError> {
        let d = self.metadata(now).await?;
        if now < d.jwks_fetched.saturating_add(JWKS_REFRESH_INTERVAL) {
            return Ok(false);
        }
        let _one = self.discovery.lock().await;
        let jwks = CoreJsonWebKeySet::fetch_async(d.metadata.jwks_uri(), &self.http)
            .await
            .map_err(|e| self.unreachable(error_chain(&e)))?;
        tracing::info!(
            keys = jwks.keys().len(),
            "OIDC provider keys fetched again (unknown key id)"
        );
        let metadata = d.metadata.clone().set_jwks(jwks);
        self.store(Discovered {
            metadata,
            jwks_fetched: now,
        });
        Ok(true)
    }

    fn client(&self, d: &Discovered) -> Result<Client, IdpError> {
        let redirect = RedirectUrl::new(self.redirect.clone()).map_err(|e| self.unreachable(e))?;
        Ok(CoreClient::from_provider_metadata(
            d.metadata.clone(),
            ClientId::new(self.config.client_id.clone()),
            self.config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.0.clone())),
        )
        .set_redirect_uri(redirect))
    }

    /// Builds an authorization request with `state`, a fresh nonce and
    /// PKCE challenge; `max_age` asks the IdP to authenticate the user
    /// again if their session there is older (zero: always).
    pub(crate) async fn authorize(
        &self,
        state: String,
        max_age: Option<Duration>,
        now: UnixMillis,
    ) -> Result<AuthRequest, IdpError> {
        let d = self.metadata(now).await?;
        let client = self.client(&d)?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(state),
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in &self.config.scopes {
            if s != "openid" {
                req = req.add_scope(Scope::new(s.clone()));
            }
        }
        if let Some(age) = max_age {
            req = req.set_max_age(age);
            if age.is_zero() {
                req = req.add_prompt(openidconnect::core::CoreAuthPrompt::Login);
            }
        }
        let (url, _state, nonce) = req.url();
        Ok(AuthRequest {
            url: url.to_string(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
        })
    }

    /// Exchanges `code` (with the PKCE verifier) and verifies the ID token
    /// against `nonce`; fetches the keys again once if the token's key id
    /// is unknown.
    pub(crate) async fn exchange(
        &self,
        code: String,
        pkce_verifier: String,
        nonce: &str,
        max_age: Option<Duration>,
        now: UnixMillis,
    ) -> Result<Verified, IdpError> {
        let d = self.metadata(now).await?;
        let client = self.client(&d)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| IdpError::Exchange(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier))
            .request_async(&self.http)
            .await
            .map_err(|e| IdpError::Exchange(error_chain(&e)))?;
        let token = response.id_token().ok_or(IdpError::NoIdToken)?.to_string();
        let check = |d: &Discovered| -> Result<Verified, TokenError> {
            verify_id_token(
                &token,
                &TokenCheck {
                    client_id: &self.config.client_id,
                    issuer: &self.config.issuer,
                    jwks: d.metadata.jwks(),
                    nonce,
                    now,
                    skew: self.config.clock_skew,
                    max_age,
                },
            )
        };
        match check(&d) {
            Err(TokenError::Signature(why)) if is_unknown_key(&why) => {
                if self.refresh_jwks(now).await? {
                    let d = self.metadata(now).await?;
                    return Ok(check(&d)?);
                }
                Err(TokenError::Signature(why).into())
            }
            other => Ok(other?),
        }
    }
}

pub(crate) fn is_unknown_key(why: &str) -> bool {
    why == SignatureVerificationError::NoMatchingKey.to_string()
}

/// Joins an error and its sources into one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
