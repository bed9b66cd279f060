//! Bearer tokens: HS256 JWTs whose `sub` is the user, and the admin token.

use crate::domain::catalogue::ApiError;
use jsonwebtoken::{
    Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, encode, errors::ErrorKind,
};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Longest user id (`sub`).
pub const MAX_USER_CHARS: usize = 255;
/// Lifetime of a dev-mode token.
pub const DEV_TOKEN_LIFETIME: chrono::Duration = chrono::Duration::days(7);

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iat: Option<i64>,
}

/// Verifies (and in dev mode issues) user tokens; checks the admin token.
#[derive(Clone)]
pub struct Auth {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
    admin_token: Option<String>,
}

impl Auth {
    /// Tokens signed with `secret`; `/admin/*` opened by `admin_token`.
    pub fn new(secret: &[u8], admin_token: Option<String>) -> Result<Auth, String> {
        let decoding =
            DecodingKey::from_secret(secret).map_err(|err| format!("bad JWT secret: {err}"))?;
        let encoding =
            EncodingKey::from_secret(secret).map_err(|err| format!("bad JWT secret: {err}"))?;
        let mut validation = Validation::new(Algorithm::HS256);
        // `exp` is checked whenever a token carries one; `sub` is what a token must carry.
        validation.required_spec_claims = HashSet::from(["sub".to_owned()]);
        validation.validate_exp = true;
        validation.leeway = 5;
        Ok(Auth {
            decoding,
            encoding,
            validation,
            admin_token,
        })
    }

    /// The user of a bearer token.
    pub fn user_of(&self, token: &str) -> Result<String, ApiError> {
        let data =
            decode::<Claims>(token.trim(), &self.decoding, &self.validation).map_err(|err| {
                ApiError::Unauthorized {
                    expired: matches!(err.kind(), ErrorKind::ExpiredSignature),
                }
            })?;
        let user = data.claims.sub;
        if !valid_user(&user) {
            return Err(ApiError::Unauthorized { expired: false });
        }
        Ok(user)
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
        constant_time_eq(given.trim().as_bytes(), expected.as_bytes())
    }

    /// A token for `user`, valid for `lifetime` (dev mode).
    pub fn issue(
        &self,
        user: &str,
        lifetime: chrono::Duration,
    ) -> Result<(String, chrono::DateTime<chrono::Utc>), ApiError> {
        let now = chrono::Utc::now();
        let expires = now + lifetime;
        let claims = Claims {
            sub: user.to_owned(),
            exp: Some(expires.timestamp()),
            iat: Some(now.timestamp()),
        };
        let token = encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
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

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Auth {
        Auth::new(b"test-secret-test-secret", Some("admin-token".into())).unwrap()
    }

    #[test]
    fn issued_tokens_verify_and_others_do_not() {
        let auth = auth();
        let (token, _) = auth.issue("alice", chrono::Duration::hours(1)).unwrap();
        assert_eq!(auth.user_of(&token).unwrap(), "alice");
        let other = Auth::new(b"another-secret-another", None).unwrap();
        assert_eq!(
            other.user_of(&token),
            Err(ApiError::Unauthorized { expired: false })
        );
        assert!(auth.user_of("not.a.token").is_err());
        assert!(auth.user_of_header(Some("Basic abc")).is_err());
        assert_eq!(
            auth.user_of_header(Some(&format!("Bearer {token}")))
                .unwrap(),
            "alice"
        );
    }

    #[test]
    fn expired_tokens_say_so() {
        let auth = auth();
        let (token, _) = auth.issue("alice", chrono::Duration::hours(-1)).unwrap();
        assert_eq!(
            auth.user_of(&token),
            Err(ApiError::Unauthorized { expired: true })
        );
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
