//! The keys of user tokens and the admin token: configured, or in dev mode generated once and
//! kept in the data folder so tokens survive restarts.
//!
//! No secret the operator supplied is ever logged. A dev-mode admin token is printed once, by
//! the start that generated it; later starts name it by its file and a fingerprint (the start
//! of its SHA-256), enough to tell which one a process uses without showing it again.

use super::StartError;
use crate::config::Config;
use crate::http::auth::TokenRules;
use secrecy::ExposeSecret as _;
use sha2::{Digest, Sha256};

/// What the auth layer is built from.
pub(super) struct Secrets {
    /// How user tokens are checked (and dev tokens made).
    pub rules: TokenRules,
    /// The admin token, if any.
    pub admin_token: Option<String>,
}

/// Reads or makes the secrets `config` calls for.
pub(super) fn secrets(config: &Config) -> Result<Secrets, StartError> {
    let dev = config.dev_mode();
    let dev_secret = if dev {
        Some(dev_file(config, "dev-jwt-secret")?.0.into_bytes())
    } else {
        None
    };
    if config.auth_jwt_secret.is_none() && dev_secret.is_none() {
        return Err(StartError::new(
            "AUTH_JWT_SECRET is required unless dev mode is on",
        ));
    }
    let rules = TokenRules {
        secret: config
            .auth_jwt_secret
            .as_ref()
            .map(|secret| secret.expose_secret().as_bytes().to_vec()),
        dev_secret,
        issuer: config.auth_jwt_issuer.clone(),
        audience: config.auth_jwt_audience.clone(),
    };
    let admin_token = match (&config.admin_token, dev) {
        (Some(token), _) => Some(token.expose_secret().to_owned()),
        (None, true) => {
            let (token, created) = dev_file(config, "dev-admin-token")?;
            let path = config.data_dir.join("dev-admin-token");
            if created {
                // Printed once, the start that made it; later starts name it only.
                tracing::warn!(
                    admin_token = %token,
                    file = %path.display(),
                    "dev mode generated an admin token for /admin/* (kept in the file; it is not printed again)"
                );
            } else {
                tracing::warn!(
                    file = %path.display(),
                    fingerprint = %fingerprint(&token),
                    "dev mode admin token for /admin/* (read it from the file)"
                );
            }
            Some(token)
        }
        (None, false) => {
            tracing::info!("no ADMIN_TOKEN set: /admin/* is closed");
            None
        }
    };
    Ok(Secrets { rules, admin_token })
}

/// The first 8 hex digits of the token's SHA-256.
pub fn fingerprint(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .take(4)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// The contents of the dev secret `name` in the data folder, made now if missing (`true`).
fn dev_file(config: &Config, name: &str) -> Result<(String, bool), StartError> {
    let path = config.data_dir.join(name);
    if let Ok(text) = std::fs::read_to_string(&path)
        && !text.trim().is_empty()
    {
        return Ok((text.trim().to_owned(), false));
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|err| {
        StartError::caused(format!("cannot create {}", config.data_dir.display()), err)
    })?;
    let value: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..32)
            .map(|_| format!("{:02x}", rng.random::<u8>()))
            .collect()
    };
    std::fs::write(&path, &value)
        .map_err(|err| StartError::caused(format!("cannot write {}", path.display()), err))?;
    Ok((value, true))
}
