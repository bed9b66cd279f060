//! Parsing single values, checking settings together, and turning any refusal into one line
//! that names the setting and shows no secret.

use super::{Config, ConfigError};
use clap::CommandFactory;
use clap::error::{ContextKind, ContextValue};
use secrecy::ExposeSecret as _;
use std::error::Error as _;
use std::time::Duration;
use url::Url;

/// Shortest `AUTH_JWT_SECRET`: an HS256 key shorter than its hash is guessable.
pub const MIN_SECRET_BYTES: usize = 32;

/// A human duration: `500ms`, `30s`, `5m`.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|err| format!("{err} (expected a duration such as 500ms, 30s, 5m)"))
}

/// A size: `65536`, `512KiB`, `1MiB`.
pub(super) fn bytes(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" | "k" | "kB" => 1024,
        "MiB" | "M" | "MB" => 1024 * 1024,
        _ => return Err(format!("unknown unit {unit:?} (expected B, KiB or MiB)")),
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|number| number.checked_mul(factor))
        .ok_or_else(|| "expected a size such as 65536, 512KiB or 1MiB".to_owned())
}

/// A Forge base URL: http(s) with a host. The error never repeats the URL (it may carry a
/// password).
pub(super) fn forge_url(text: &str) -> Result<super::BackendUrl, String> {
    let url = Url::parse(text.trim()).map_err(|err| format!("not a URL ({err})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!(
            "{} is not an http(s) URL with a host",
            redact_url(&url)
        ));
    }
    Ok(super::BackendUrl(url))
}

/// A setting that is a secret (a key, a token, a URL with a password): kept so that it never
/// shows in debug output.
pub(super) fn secret(text: &str) -> Result<secrecy::SecretString, String> {
    Ok(secrecy::SecretString::from(text.to_owned()))
}

/// The URL with its user name and password replaced by `***`.
pub fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    if !url.username().is_empty() {
        let _ = shown.set_username("***");
    }
    if url.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

/// `text` with the credentials of every `scheme://user:password@` in it replaced by `***`, for
/// messages that may quote a URL (a driver's error, a setting's value).
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '"' | '\'' | ',' | ')'))
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(credentials_end) => {
                out.push_str("***@");
                rest = &tail[credentials_end + 1..];
            }
            None => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

/// Renders a clap error as one line that names the setting by its variable and flag; the
/// value is shown only for settings that cannot hold a secret.
pub(super) fn one_line(err: &clap::Error) -> ConfigError {
    let command = Config::command();
    let mut secret = false;
    let setting = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => {
            let flag = arg.split_whitespace().next().unwrap_or(arg);
            let found = command.get_arguments().find(|candidate| {
                candidate
                    .get_long()
                    .is_some_and(|long| flag == format!("--{long}"))
            });
            secret = found.is_some_and(|arg| arg.is_hide_env_values_set());
            let env = found
                .and_then(|candidate| candidate.get_env())
                .map(|env| env.to_string_lossy().into_owned());
            match env {
                Some(env) => format!("{env} ({flag})"),
                None => flag.to_owned(),
            }
        }
        _ => String::new(),
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(value)) if !secret => format!(" = {value:?}"),
        _ => String::new(),
    };
    let detail = err
        .source()
        .map(|source| source.to_string())
        .or_else(|| {
            let rendered = err.render().to_string();
            rendered
                .lines()
                .next()
                .map(|line| line.trim_start_matches("error: ").to_owned())
        })
        .unwrap_or_default();
    let message = if setting.is_empty() {
        detail
    } else {
        format!("{setting}{value}: {detail}")
    };
    ConfigError(redact(&message.replace('\n', " ")))
}

impl Config {
    /// Checks settings that depend on each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_auth()?;
        self.check_stores()?;
        self.check_durations()?;
        self.check_sessions()
    }

    /// Secrets, token claims, and dev mode against the bind address.
    fn check_auth(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if let Some(secret) = &self.auth_jwt_secret
            && secret.expose_secret().len() < MIN_SECRET_BYTES
        {
            return fail(format!(
                "AUTH_JWT_SECRET (--auth-jwt-secret) must be at least {MIN_SECRET_BYTES} bytes (it has {})",
                secret.expose_secret().len()
            ));
        }
        for (name, value) in [
            ("AUTH_JWT_ISSUER (--auth-jwt-issuer)", &self.auth_jwt_issuer),
            (
                "AUTH_JWT_AUDIENCE (--auth-jwt-audience)",
                &self.auth_jwt_audience,
            ),
        ] {
            if value.as_ref().is_some_and(|value| value.trim().is_empty()) {
                return fail(format!("{name} must not be empty when set"));
            }
        }
        if let Some(token) = &self.admin_token
            && token.expose_secret().len() < 8
        {
            return fail("ADMIN_TOKEN (--admin-token) must be at least 8 characters".into());
        }
        if !self.dev_mode() && self.auth_jwt_secret.is_none() {
            return fail(if self.bind.ip().is_loopback() {
                "AUTH_JWT_SECRET (--auth-jwt-secret) is required unless dev mode is on (DEV_MODE=true)".into()
            } else {
                format!(
                    "BIND {} is not a loopback address and no AUTH_JWT_SECRET is set: set AUTH_JWT_SECRET ({MIN_SECRET_BYTES}+ bytes) for real user tokens, or DEV_MODE=true to serve dev tokens on this address on purpose",
                    self.bind
                )
            });
        }
        Ok(())
    }

    /// The database and Redis URLs, schema, prefix and pool.
    fn check_stores(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if let Some(url) = self.database_url.as_ref().map(|url| url.expose_secret())
            && !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
        {
            return fail(format!(
                "DATABASE_URL (--database-url) must start with postgres:// or sqlite: (got {:?})",
                url.split(':').next().unwrap_or_default()
            ));
        }
        if let Some(url) = self
            .database_migration_url
            .as_ref()
            .map(|url| url.expose_secret())
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            return fail(
                "DATABASE_MIGRATION_URL (--database-migration-url) must be a postgres:// URL when set"
                    .into(),
            );
        }
        if self.database_pooler == super::DatabasePooler::Transaction
            && !self.database_url().starts_with("postgres")
        {
            return fail(
                "DATABASE_POOLER=transaction (--database-pooler) is for a PostgreSQL DATABASE_URL"
                    .into(),
            );
        }
        if let Some(schema) = &self.database_schema
            && (schema.is_empty()
                || schema.len() > 63
                || !schema
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                || schema.starts_with(|c: char| c.is_ascii_digit()))
        {
            return fail(format!(
                "DATABASE_SCHEMA (--database-schema) must be a plain identifier (letters, digits, _), got {schema:?}"
            ));
        }
        if let Some(url) = self.redis_url.as_ref().map(|url| url.expose_secret())
            && ![
                "redis://",
                "rediss://",
                "redis-cluster://",
                "rediss-cluster://",
            ]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            return fail(
                "REDIS_URL (--redis-url) must start with redis://, rediss://, redis-cluster:// or rediss-cluster://".into(),
            );
        }
        if self.redis_prefix.is_empty()
            || !self
                .redis_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_:.".contains(c))
        {
            return fail(format!(
                "REDIS_PREFIX (--redis-prefix) must be letters, digits or -_:. (got {:?})",
                self.redis_prefix
            ));
        }
        if self.database_max_connections == 0 {
            return fail(
                "DATABASE_MAX_CONNECTIONS (--database-max-connections) must be at least 1".into(),
            );
        }
        Ok(())
    }

    /// Durations that must be positive, and the job lease's range.
    fn check_durations(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        let positive = [
            ("FORGE_TIMEOUT (--forge-timeout)", self.forge_timeout),
            (
                "FORGE_CONNECT_TIMEOUT (--forge-connect-timeout)",
                self.forge_connect_timeout,
            ),
            (
                "FORGE_PROGRESS_INTERVAL (--forge-progress-interval)",
                self.forge_progress_interval,
            ),
            ("MODELS_REFRESH (--models-refresh)", self.models_refresh),
            ("STUCK_AFTER (--stuck-after)", self.stuck_after),
            (
                "WATCHDOG_INTERVAL (--watchdog-interval)",
                self.watchdog_interval,
            ),
            (
                "BREAKER_OPEN_FOR (--breaker-open-for)",
                self.breaker_open_for,
            ),
            ("WS_HEARTBEAT (--ws-heartbeat)", self.ws_heartbeat),
            ("WS_IDLE_TIMEOUT (--ws-idle-timeout)", self.ws_idle_timeout),
            (
                "HTTP_HEADER_TIMEOUT (--http-header-timeout)",
                self.http_header_timeout,
            ),
            (
                "HTTP_BODY_TIMEOUT (--http-body-timeout)",
                self.http_body_timeout,
            ),
            (
                "HTTP_IDLE_TIMEOUT (--http-idle-timeout)",
                self.http_idle_timeout,
            ),
        ];
        for (name, value) in positive {
            if value.is_zero() {
                return fail(format!("{name} must be longer than 0"));
            }
        }
        // Below a second, ordinary delays of the renewal (a busy database, a pause of the
        // process) take live jobs from healthy processes; past a day, a dead process's job
        // would wait longer than any user.
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&self.job_lease) {
            return fail("JOB_LEASE (--job-lease) must be between 1s and 1d".into());
        }
        Ok(())
    }

    /// WebSocket and session limits.
    fn check_sessions(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        if self.ws_idle_timeout <= self.ws_heartbeat {
            return fail(
                "WS_IDLE_TIMEOUT (--ws-idle-timeout) must be longer than WS_HEARTBEAT".into(),
            );
        }
        if self.ws_outbox_bytes < 1024 {
            return fail("WS_OUTBOX_BYTES (--ws-outbox-bytes) must be at least 1KiB".into());
        }
        if self.max_sessions_per_user > self.max_sessions {
            return fail(
                "MAX_SESSIONS_PER_USER (--max-sessions-per-user) must not exceed MAX_SESSIONS"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_human() {
        assert_eq!(bytes("65536"), Ok(65536));
        assert_eq!(bytes("512KiB"), Ok(512 * 1024));
        assert_eq!(bytes("1MiB"), Ok(1 << 20));
        assert!(bytes("1GiB").is_err());
        assert!(bytes("lots").is_err());
    }

    #[test]
    fn credentials_never_show() {
        let url = Url::parse("http://user:s3cret@gpu1:7860/").unwrap();
        assert_eq!(redact_url(&url), "http://***:***@gpu1:7860/");
        assert_eq!(
            redact(
                "cannot reach postgres://app:pw@db:5432/x and redis://:pw@r:6379, nor http://plain/"
            ),
            "cannot reach postgres://***@db:5432/x and redis://***@r:6379, nor http://plain/"
        );
        let err = forge_url("ftp://user:s3cret@gpu1/").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }
}
