//! From verified ID-token claims to a Weft identity: the login name, the
//! display name, the policy groups; and who may log in. Pure functions over
//! the claims as JSON, so the rules are tested without an IdP.
//!
//! # Group mapping
//! Each string of the groups claim (an array; a single string counts as
//! one) becomes `group:<prefix><name>`: with the default prefix `oidc:`,
//! `engineering` is `group:oidc:engineering`. A leading `/` (Keycloak's
//! group paths) is dropped and inner `/` become `:` (`/eng/backend` →
//! `group:oidc:eng:backend`). A name that is not a policy group name after
//! that (spaces, other punctuation, not starting with a letter) is skipped
//! and logged at debug. The groups are stored with the user and replaced at
//! every login.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::config::{Allowed, ClaimMapping, LoginClaim};

/// A verified identity from the IdP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The Weft login name (from the `email` or `preferred_username` claim).
    pub login: String,
    /// The display name (may be empty).
    pub display_name: String,
    /// The `email` claim, if any.
    pub email: Option<String>,
    /// The IdP's group names, as it sent them.
    pub idp_groups: Vec<String>,
    /// The policy groups they map to (`group:oidc:engineering`).
    pub groups: BTreeSet<String>,
    /// The `sub` claim.
    pub subject: String,
    /// When the user authenticated at the IdP (`auth_time`, else the
    /// token's issue time), in Unix milliseconds.
    pub authenticated_ms: i64,
}

/// Why a login was refused after the IdP vouched for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAllowed {
    /// The token lacks the claim the login name comes from.
    #[error("the identity provider sent no {claim} claim, which the login name comes from")]
    MissingClaim {
        /// The claim.
        claim: &'static str,
    },
    /// The email is not verified at the IdP.
    #[error("your email address {email} is not verified at the identity provider")]
    EmailNotVerified {
        /// The email.
        email: String,
    },
    /// The login is not a valid login name.
    #[error("{login:?} cannot be a login name (1-254 characters without spaces)")]
    BadLogin {
        /// The claim's value.
        login: String,
    },
    /// The email's domain is not an allowed one.
    #[error("{who} is not in an allowed domain (allowed: {allowed})")]
    Domain {
        /// The login or email.
        who: String,
        /// The allowed domains.
        allowed: String,
    },
    /// The user is not in the allowed users.
    #[error("{login} is not one of the users allowed to log in")]
    User {
        /// The login.
        login: String,
    },
    /// The user is in none of the allowed groups.
    #[error("{login} is in none of the groups allowed to log in (allowed: {allowed})")]
    Group {
        /// The login.
        login: String,
        /// The allowed groups.
        allowed: String,
    },
}

impl NotAllowed {
    /// Returns what the user can do about it.
    #[must_use]
    pub fn advice(&self) -> &'static str {
        match self {
            NotAllowed::MissingClaim { .. } => {
                "Ask the administrator of the identity provider to release this claim to the Weft client (a scope or a mapper), or the Weft administrator to map the login from another claim (oidc login-claim)."
            }
            NotAllowed::EmailNotVerified { .. } => {
                "Verify your email address at the identity provider, then run weft up again."
            }
            NotAllowed::BadLogin { .. } => {
                "Ask the Weft administrator to map the login from another claim (oidc login-claim)."
            }
            NotAllowed::Domain { .. } => {
                "Log in with an account of an allowed domain, or ask the Weft administrator to allow yours (oidc allowed-domains)."
            }
            NotAllowed::User { .. } => {
                "Ask the Weft administrator to add you to oidc allowed-users."
            }
            NotAllowed::Group { .. } => {
                "Ask the administrator of the identity provider to add you to an allowed group, then run weft up again."
            }
        }
    }
}

/// Returns the policy group of IdP group `name` under `prefix`
/// (`group:<prefix><name>`), or `None` if that is not a valid group name
/// (see the module docs).
#[must_use]
pub fn policy_group(prefix: &str, name: &str) -> Option<String> {
    let name = name.strip_prefix('/').unwrap_or(name).replace('/', ":");
    let full = format!("group:{prefix}{name}");
    let body = full.strip_prefix("group:")?;
    let mut chars = body.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    (first_ok && rest_ok && !body.ends_with(':')).then_some(full)
}

/// Returns the group names of `claim` in `claims`: an array of strings
/// (other items skipped) or one string; none if absent.
#[must_use]
pub fn idp_groups(claims: &Map<String, Value>, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// Maps verified claims to an identity.
///
/// # Errors
/// [`NotAllowed`]: the login claim is missing, unverified or not a login name.
pub fn identity(
    m: &ClaimMapping,
    claims: &Map<String, Value>,
    authenticated_ms: i64,
) -> Result<Identity, NotAllowed> {
    let str_claim = |c: &str| claims.get(c).and_then(Value::as_str).map(str::to_owned);
    let email = str_claim("email");
    let login = match m.login {
        LoginClaim::Email => {
            let e = email
                .clone()
                .ok_or(NotAllowed::MissingClaim { claim: "email" })?;
            if claims.get("email_verified").and_then(Value::as_bool) == Some(false) {
                return Err(NotAllowed::EmailNotVerified { email: e });
            }
            e.to_ascii_lowercase()
        }
        LoginClaim::PreferredUsername => {
            str_claim("preferred_username").ok_or(NotAllowed::MissingClaim {
                claim: "preferred_username",
            })?
        }
    };
    if login.parse::<weft_types::LoginName>().is_err() {
        return Err(NotAllowed::BadLogin { login });
    }
    let idp = idp_groups(claims, &m.groups);
    let mut groups = BTreeSet::new();
    for g in &idp {
        match policy_group(&m.group_prefix, g) {
            Some(pg) => {
                groups.insert(pg);
            }
            None => tracing::debug!(group = %g, "IdP group skipped: not a policy group name"),
        }
    }
    Ok(Identity {
        display_name: str_claim(&m.display_name).unwrap_or_default(),
        email,
        idp_groups: idp,
        groups,
        subject: str_claim("sub").unwrap_or_default(),
        authenticated_ms,
        login,
    })
}

/// Checks `id` against `allowed`: each non-empty list must be satisfied.
///
/// # Errors
/// The first list that refuses.
pub fn check_allowed(allowed: &Allowed, id: &Identity) -> Result<(), NotAllowed> {
    if !allowed.domains.is_empty() {
        let addr = id.email.as_deref().unwrap_or(&id.login);
        let domain = addr.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase());
        let ok = domain.as_deref().is_some_and(|d| {
            allowed
                .domains
                .iter()
                .any(|a| a.trim_start_matches('@').eq_ignore_ascii_case(d))
        });
        if !ok {
            return Err(NotAllowed::Domain {
                who: addr.to_owned(),
                allowed: allowed.domains.join(", "),
            });
        }
    }
    if !allowed.users.is_empty()
        && !allowed
            .users
            .iter()
            .any(|u| u.eq_ignore_ascii_case(&id.login))
    {
        return Err(NotAllowed::User {
            login: id.login.clone(),
        });
    }
    if !allowed.groups.is_empty() && !allowed.groups.iter().any(|g| id.idp_groups.contains(g)) {
        return Err(NotAllowed::Group {
            login: id.login.clone(),
            allowed: allowed.groups.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn alice() -> Map<String, Value> {
        claims(json!({
            "sub": "u1", "email": "Alice@Example.com", "email_verified": true,
            "name": "Alice A.", "preferred_username": "alice",
            "groups": ["engineering", "/ops/oncall", "Has Space", 7]
        }))
    }

    #[test]
    fn groups_map_to_prefixed_policy_groups_and_bad_names_are_skipped() {
        let id = identity(&ClaimMapping::default(), &alice(), 5).unwrap();
        assert_eq!(id.login, "alice@example.com");
        assert_eq!(id.display_name, "Alice A.");
        assert_eq!(
            id.groups.iter().map(String::as_str).collect::<Vec<_>>(),
            ["group:oidc:engineering", "group:oidc:ops:oncall"]
        );
        assert_eq!(id.idp_groups, ["engineering", "/ops/oncall", "Has Space"]);
        assert_eq!(id.authenticated_ms, 5);
    }

    #[test]
    fn an_empty_prefix_maps_groups_to_plain_policy_groups() {
        let m = ClaimMapping {
            group_prefix: String::new(),
            ..ClaimMapping::default()
        };
        let id = identity(&m, &alice(), 0).unwrap();
        assert!(id.groups.contains("group:engineering"));
        assert_eq!(policy_group("", "1abc"), None);
        assert_eq!(policy_group("idp-", "x"), Some("group:idp-x".into()));
    }

    #[test]
    fn the_login_comes_from_the_configured_claim() {
        let m = ClaimMapping {
            login: LoginClaim::PreferredUsername,
            groups: "roles".into(),
            ..ClaimMapping::default()
        };
        let id = identity(&m, &alice(), 0).unwrap();
        assert_eq!(id.login, "alice");
        assert!(id.groups.is_empty(), "no roles claim: no groups");
        let mut c = alice();
        c.remove("preferred_username");
        assert_eq!(
            identity(&m, &c, 0),
            Err(NotAllowed::MissingClaim {
                claim: "preferred_username"
            })
        );
    }

    #[test]
    fn an_unverified_email_is_refused() {
        let mut c = alice();
        c.insert("email_verified".into(), json!(false));
        let e = identity(&ClaimMapping::default(), &c, 0).unwrap_err();
        assert!(matches!(e, NotAllowed::EmailNotVerified { .. }));
    }

    #[test]
    fn each_configured_list_must_admit_the_user() {
        let id = identity(&ClaimMapping::default(), &alice(), 0).unwrap();
        assert!(check_allowed(&Allowed::default(), &id).is_ok());
        let domains = Allowed {
            domains: vec!["example.com".into()],
            ..Allowed::default()
        };
        assert!(check_allowed(&domains, &id).is_ok());
        let other = Allowed {
            domains: vec!["corp.example".into()],
            ..Allowed::default()
        };
        let e = check_allowed(&other, &id).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Alice@Example.com is not in an allowed domain (allowed: corp.example)"
        );
        let users = Allowed {
            domains: vec!["example.com".into()],
            users: vec!["bob@example.com".into()],
            ..Allowed::default()
        };
        assert!(matches!(
            check_allowed(&users, &id),
            Err(NotAllowed::User { .. })
        ));
        let groups = Allowed {
            groups: vec!["sales".into()],
            ..Allowed::default()
        };
        assert!(matches!(
            check_allowed(&groups, &id),
            Err(NotAllowed::Group { .. })
        ));
        let groups = Allowed {
            groups: vec!["sales".into(), "engineering".into()],
            ..Allowed::default()
        };
        assert!(check_allowed(&groups, &id).is_ok());
    }

    #[test]
    fn a_lookalike_domain_is_not_allowed() {
        let c = claims(json!({"sub": "x", "email": "eve@example.com.evil.test"}));
        let id = identity(&ClaimMapping::default(), &c, 0).unwrap();
        let a = Allowed {
            domains: vec!["example.com".into()],
            ..Allowed::default()
        };
        assert!(check_allowed(&a, &id).is_err());
    }
}
