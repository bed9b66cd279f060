//! Bearer tokens: HS256 JWTs whose `sub` is the user, and the admin token.
//!
//! A user token must carry `sub` and `exp` (a token without an expiry would be valid forever),
//! and, when configured, the `iss` and `aud` the deployment expects. Dev tokens (dev mode only)
//! are signed with a key of their own, never with `AUTH_JWT_SECRET`, so turning dev mode on in
//! a deployment does not let anyone mint production tokens.

mod hs256;

pub use hs256::install as install_jwt_crypto;

use crate::domain::catalogue::ApiError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Longest user id (`sub`).
pub const MAX_USER_CHARS: usize = 255;
/// Lifetime of a dev-mode token.
pub const DEV_TOKEN_LIFETIME: chrono::Duration = chrono::Duration::days(7);

/// How long past `exp` (and before `nbf`) a token is still taken: clocks differ a little.
pub const LEEWAY_SECONDS: u64 = 5;

/// The claims of a dev token this server issues.
#[derive(Debug, Serialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: i64,
}

/// The claims read from a token. `exp` and `nbf` are NumericDates, which RFC 7519 lets be
/// fractional (`1796204310.9`): they are read as numbers and checked here, not by the JWT
/// library (which takes whole seconds only).
#[derive(Debug, Deserialize)]
struct ReadClaims {
    sub: String,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

impl ReadClaims {
    /// Whether the token is in its validity window at `now` (seconds since the epoch), with
    /// the leeway; `Err(true)` when it expired.
    fn check_times(&self, now: f64) -> Result<(), bool> {
        let leeway = LEEWAY_SECONDS as f64;
        let exp = self.exp.filter(|exp| exp.is_finite()).ok_or(false)?;
        if now > exp + leeway {
            return Err(true);
        }
        match self.nbf {
            Some(nbf) if !nbf.is_finite() || nbf > now + leeway => Err(false),
            _ => Ok(()),
        }
    }
}

/// Who a valid token names, and until when it is valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The user (`sub`).
    pub user: String,
    /// The first second (since the epoch) the token is refused: past its `exp` and the
    /// leeway. A WebSocket opened with it ends then.
    pub valid_until: i64,
}

/// How user tokens are checked.
#[derive(Clone, Debug, Default)]
pub struct TokenRules {
    /// `AUTH_JWT_SECRET`: the key of real user tokens.
    pub secret: Option<Vec<u8>>,
    /// The dev-mode key (dev tokens only).
    pub dev_secret: Option<Vec<u8>>,
    /// `AUTH_JWT_ISSUER`.
    pub issuer: Option<String>,
    /// `AUTH_JWT_AUDIENCE`.
    pub audience: Option<String>,
}

/// One key and what a token signed with it must carry.
#[derive(Clone)]
struct Verifier {
    decoding: DecodingKey,
    validation: Validation,
}

impl Verifier {
    fn new(
        secret: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Verifier, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` (required) and `nbf` are checked by `ReadClaims::check_times`.
        validation.required_spec_claims = HashSet::from(["sub".to_owned()]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = LEEWAY_SECONDS;
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        match audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".to_owned());
            }
            None => validation.validate_aud = false,
        }
        Ok(Verifier {
            decoding: DecodingKey::from_secret(secret)
                .map_err(|err| format!("bad JWT secret: {err}"))?,
            validation,
        })
    }
}

/// Verifies (and in dev mode issues) user tokens; checks the admin token.
#[derive(Clone)]
pub struct Auth {
    verifiers: Vec<Verifier>,
    dev_encoding: Option<EncodingKey>,
    admin_token: Option<String>,
}

impl Auth {
    /// Tokens checked by `rules`; `/admin/*` opened by `admin_token`.
    pub fn new(rules: &TokenRules, admin_token: Option<String>) -> Result<Auth, String> {
        hs256::install();
        let mut verifiers = Vec::new();
        if let Some(secret) = &rules.secret {
            verifiers.push(Verifier::new(
                secret,
                rules.issuer.as_deref(),
                rules.audience.as_deref(),
            )?);
        }
        if let Some(dev) = &rules.dev_secret {
            verifiers.push(Verifier::new(dev, None, None)?);
        }
        if verifiers.is_empty() {
            return Err("no key to check user tokens with".into());
        }
        Ok(Auth {
            verifiers,
            dev_encoding: rules
                .dev_secret
                .as_deref()
                .map(EncodingKey::from_secret)
                .transpose()
                .map_err(|err| format!("bad dev secret: {err}"))?,
            admin_token,
        })
    }

    /// The user of a bearer token.
    pub fn user_of(&self, token: &str) -> Result<String, ApiError> {
        self.verify(token).map(|identity| identity.user)
    }

    /// The user of a bearer token and until when the token is valid.
    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let claims = self
            .verifiers
            .iter()
            .find_map(|verifier| {
                decode::<ReadClaims>(token.trim(), &verifier.decoding, &verifier.validation).ok()
            })
            .map(|data| data.claims)
            .ok_or(ApiError::Unauthorized { expired: false })?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_secs_f64())
            .unwrap_or_default();
        claims
            .check_times(now)
            .map_err(|expired| ApiError::Unauthorized { expired })?;
        if !valid_user(&claims.sub) {
            return Err(ApiError::Unauthorized { expired: false });
        }
        // A float past i64's range saturates: such a token is valid as long as the server runs.
        let exp = claims.exp.unwrap_or_default().floor() as i64;
        Ok(Identity {
            user: claims.sub,
            valid_until: exp.saturating_add(LEEWAY_SECONDS as i64 + 1),
        })
    }

    /// The user of an `Authorization: Bearer …` header value.
    pub fn user_of_header(&self, header: Option<&str>) -> Result<String, ApiError> {
        let token = header
            .and_then(|value| {
                value
                    .strip_prefix("Bearer ")
                    .or_else(|| value.strip_prefix("bearer "))
            })
            .ok_or(ApiError::Unauthorized { expired: false })?;
        self.user_of(token)
    }

    /// Whether the header carries the admin token.
    pub fn is_admin(&self, header: Option<&str>) -> bool {
        let (Some(expected), Some(value)) = (&self.admin_token, header) else {
            return false;
        };
        let Some(given) = value.strip_prefix("Bearer ") else {
            return false;
        };
        use subtle::ConstantTimeEq as _;
        bool::from(given.trim().as_bytes().ct_eq(expected.as_bytes()))
    }

    /// A dev token for `user`, valid for `lifetime`, signed with the dev key (dev mode only).
    pub fn issue(
        &self,
        user: &str,
        lifetime: chrono::Duration,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
        let encoding = self.dev_encoding.as_ref().ok_or(ApiError::Internal)?;
        let now = chrono::Utc::now();
        let expires = now + lifetime;
        let claims = Claims {
            sub: user.to_owned(),
            exp: expires.timestamp(),
            iat: now.timestamp(),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, encoding)
            .map_err(|_| ApiError::Internal)?;
        Ok((token, expires))
    }
}

/// A user id: 1..=255 characters, no control characters.
pub fn valid_user(user: &str) -> bool {
    !user.trim().is_empty()
        && user.chars().count() <= MAX_USER_CHARS
        && !user.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const DEV: &[u8] = b"dev-dev-dev-dev-dev-dev-dev-dev-dev";

    fn auth() -> Auth {
        Auth::new(
            &TokenRules {
                secret: Some(SECRET.to_vec()),
                dev_secret: Some(DEV.to_vec()),
                ..TokenRules::default()
            },
            Some("admin-token".into()),
        )
        .unwrap()
    }

    fn sign(secret: &[u8], claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    }

    fn later() -> i64 {
        chrono::Utc::now().timestamp() + 3600
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let auth = auth();
        let (token, _) = auth.issue("alice", chrono::Duration::hours(1)).unwrap();
        assert_eq!(auth.user_of(&token).unwrap(), "alice");
        let prod_only = Auth::new(
            &TokenRules {
                secret: Some(SECRET.to_vec()),
                ..TokenRules::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(
            prod_only.user_of(&token),
            Err(ApiError::Unauthorized { expired: false }),
            "a dev token is never signed with AUTH_JWT_SECRET"
        );
        assert!(
            prod_only
                .issue("alice", chrono::Duration::hours(1))
                .is_err()
        );
        assert!(auth.user_of("not.a.token").is_err());
        assert!(auth.user_of_header(Some("Basic abc")).is_err());
        assert_eq!(
            auth.user_of_header(Some(&format!("Bearer {token}")))
                .unwrap(),
            "alice"
        );
        let real = sign(SECRET, json!({"sub": "bob", "exp": later()}));
        assert_eq!(prod_only.user_of(&real).unwrap(), "bob");
    }

    #[test]
    fn a_token_without_exp_or_past_it_is_refused() {
        let auth = auth();
        let forever = sign(SECRET, json!({"sub": "mallory"}));
        assert_eq!(
            auth.user_of(&forever),
            Err(ApiError::Unauthorized { expired: false })
        );
        let (token, _) = auth.issue("alice", chrono::Duration::hours(-1)).unwrap();
        assert_eq!(
            auth.user_of(&token),
            Err(ApiError::Unauthorized { expired: true })
        );
    }

    #[test]
    fn a_token_not_valid_yet_is_refused_and_exp_is_told() {
        let auth = auth();
        let now = chrono::Utc::now().timestamp();
        let early = sign(
            SECRET,
            json!({"sub": "a", "exp": later(), "nbf": now + 3600}),
        );
        assert_eq!(
            auth.user_of(&early),
            Err(ApiError::Unauthorized { expired: false })
        );
        let within_leeway = sign(SECRET, json!({"sub": "a", "exp": later(), "nbf": now + 2}));
        assert_eq!(auth.user_of(&within_leeway).unwrap(), "a");
        let exp = now + 60;
        let token = sign(SECRET, json!({"sub": "a", "exp": exp}));
        assert_eq!(
            auth.verify(&token).unwrap(),
            Identity {
                user: "a".into(),
                valid_until: exp + LEEWAY_SECONDS as i64 + 1
            }
        );
    }

    #[test]
    fn fractional_numeric_dates_are_taken_as_rfc_7519_allows() {
        let auth = auth();
        let now = chrono::Utc::now().timestamp() as f64;
        let token = sign(SECRET, json!({"sub": "a", "exp": now + 60.9}));
        assert_eq!(
            auth.verify(&token).unwrap().valid_until,
            (now + 60.9).floor() as i64 + LEEWAY_SECONDS as i64 + 1
        );
        let expired = sign(SECRET, json!({"sub": "a", "exp": now - 60.5}));
        assert_eq!(
            auth.user_of(&expired),
            Err(ApiError::Unauthorized { expired: true })
        );
        let early = sign(
            SECRET,
            json!({"sub": "a", "exp": now + 600.0, "nbf": now + 60.5}),
        );
        assert_eq!(
            auth.user_of(&early),
            Err(ApiError::Unauthorized { expired: false })
        );
        for exp in [json!("soon"), json!(null)] {
            let bad = sign(SECRET, json!({"sub": "a", "exp": exp}));
            assert_eq!(
                auth.user_of(&bad),
                Err(ApiError::Unauthorized { expired: false }),
                "{exp}"
            );
        }
        let none = sign(SECRET, json!({"sub": "a"}));
        assert!(auth.user_of(&none).is_err(), "exp is required");
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let auth = Auth::new(
            &TokenRules {
                secret: Some(SECRET.to_vec()),
                issuer: Some("chat".into()),
                audience: Some("forge-gateway".into()),
                ..TokenRules::default()
            },
            None,
        )
        .unwrap();
        let good = sign(
            SECRET,
            json!({"sub": "a", "exp": later(), "iss": "chat", "aud": "forge-gateway"}),
        );
        assert_eq!(auth.user_of(&good).unwrap(), "a");
        for claims in [
            json!({"sub": "a", "exp": later(), "iss": "other", "aud": "forge-gateway"}),
            json!({"sub": "a", "exp": later(), "iss": "chat", "aud": "billing"}),
            json!({"sub": "a", "exp": later()}),
        ] {
            assert!(
                auth.user_of(&sign(SECRET, claims.clone())).is_err(),
                "{claims}"
            );
        }
    }

    #[test]
    fn the_admin_token_is_separate() {
        let auth = auth();
        assert!(auth.is_admin(Some("Bearer admin-token")));
        assert!(!auth.is_admin(Some("Bearer admin-token2")));
        assert!(!auth.is_admin(None));
        let (token, _) = auth.issue("admin", chrono::Duration::hours(1)).unwrap();
        assert!(!auth.is_admin(Some(&format!("Bearer {token}"))));
    }
}
