//! The settings' defaults, parsing and checks.

use super::*;

#[test]
fn defaults_are_the_documented_ones() {
    let config = Config::from_flags(["forge-gateway"]).unwrap();
    assert_eq!(config.bind.to_string(), "127.0.0.1:8080");
    assert_eq!(config.forge_timeout, Duration::from_secs(180));
    assert_eq!(config.stuck_after, Duration::from_secs(300));
    assert_eq!(config.watchdog_interval, Duration::from_secs(30));
    assert_eq!(config.breaker_failures, 5);
    assert_eq!(config.breaker_open_for, Duration::from_secs(60));
    assert_eq!(config.max_pending_per_user, 20);
    assert_eq!(config.redis_prefix, "fg");
    assert!(config.dev_mode(), "the embedded default is dev mode");
}

#[test]
fn durations_are_human() {
    let config = Config::from_flags([
        "forge-gateway",
        "--forge-timeout",
        "3m",
        "--stuck-after",
        "750ms",
    ])
    .unwrap();
    assert_eq!(config.forge_timeout, Duration::from_secs(180));
    assert_eq!(config.stuck_after, Duration::from_millis(750));
}

#[test]
fn a_bad_setting_is_one_line_naming_it() {
    let err = Config::from_flags(["forge-gateway", "--forge-timeout", "soon"]).unwrap_err();
    assert!(err.to_string().contains("--forge-timeout"), "{err}");
    assert!(!err.to_string().contains('\n'));
    let err = Config::from_flags(["forge-gateway", "--breaker-failures", "0"]).unwrap_err();
    assert!(err.to_string().contains("--breaker-failures"), "{err}");
    let err = Config::from_flags(["forge-gateway", "--forge-urls", "ftp://x"]).unwrap_err();
    assert!(err.to_string().contains("FORGE_URLS"), "{err}");
    let err = Config::from_flags(["forge-gateway", "--ws-outbox-bytes", "lots"]).unwrap_err();
    assert!(err.to_string().contains("WS_OUTBOX_BYTES"), "{err}");
    let err = Config::from_flags(["forge-gateway", "--ws-positions-per-frame", "0"]).unwrap_err();
    assert!(err.to_string().contains("WS_POSITIONS_PER_FRAME"), "{err}");
    for bad in ["", "sqlite://x.db"] {
        let err =
            Config::from_flags(["forge-gateway", "--database-migration-url", bad]).unwrap_err();
        assert!(err.to_string().contains("DATABASE_MIGRATION_URL"), "{err}");
    }
    for bad in ["0s", "1ns", "999ms", "2d", "100y"] {
        let err = Config::from_flags(["forge-gateway", "--job-lease", bad]).unwrap_err();
        assert!(err.to_string().contains("JOB_LEASE"), "{bad}: {err}");
    }
    assert!(Config::from_flags(["forge-gateway", "--job-lease", "1s"]).is_ok());
}

#[test]
fn without_dev_mode_a_secret_is_required() {
    let err =
        Config::from_flags(["forge-gateway", "--database-url", "postgres://x/y"]).unwrap_err();
    assert!(err.to_string().contains("AUTH_JWT_SECRET"), "{err}");
    let config =
        Config::from_flags(["forge-gateway", "--database-url", "postgres://x/y", "--dev"]).unwrap();
    assert!(config.dev_mode());
    let config =
        Config::from_flags(["forge-gateway", "--auth-jwt-secret", SECRET, "--dev=false"]).unwrap();
    assert!(!config.dev_mode());
    let err = Config::from_flags(["forge-gateway", "--auth-jwt-secret", "s3cret"]).unwrap_err();
    assert!(err.to_string().contains("at least 32 bytes"), "{err}");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

const SECRET: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn dev_mode_is_implicit_only_on_a_loopback_address() {
    let err = Config::from_flags(["forge-gateway", "--bind", "0.0.0.0:8080"]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("not a loopback address"), "{text}");
    assert!(
        text.contains("AUTH_JWT_SECRET") && text.contains("DEV_MODE=true"),
        "{text}"
    );
    assert!(!text.contains('\n'));
    let explicit =
        Config::from_flags(["forge-gateway", "--bind", "0.0.0.0:8080", "--dev"]).unwrap();
    assert!(explicit.dev_mode(), "DEV_MODE=true is taken at its word");
    let production = Config::from_flags([
        "forge-gateway",
        "--bind",
        "0.0.0.0:8080",
        "--auth-jwt-secret",
        SECRET,
    ])
    .unwrap();
    assert!(!production.dev_mode());
    let local = Config::from_flags(["forge-gateway", "--bind", "[::1]:0"]).unwrap();
    assert!(local.dev_mode());
}

#[test]
fn credentials_stay_out_of_errors_and_help() {
    let err = Config::from_flags([
        "forge-gateway",
        "--forge-urls",
        "ftp://u:hunter2@x/",
        "--dev",
    ])
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(err.to_string().contains("FORGE_URLS"), "{err}");
    let err = Config::from_flags([
        "forge-gateway",
        "--forge-urls",
        "http://u:hunter2@",
        "--dev",
    ])
    .unwrap_err();
    assert!(!err.to_string().contains("hunter2"), "{err}");
    // `--help` shows an environment variable's value unless told not to.
    let command = Config::command();
    for secret_setting in [
        "FORGE_URLS",
        "DATABASE_URL",
        "REDIS_URL",
        "AUTH_JWT_SECRET",
        "ADMIN_TOKEN",
    ] {
        let arg = command
            .get_arguments()
            .find(|arg| arg.get_env().is_some_and(|env| env == secret_setting))
            .expect("the setting exists");
        assert!(
            arg.is_hide_env_values_set(),
            "{secret_setting} would show its value in --help"
        );
    }
}

#[test]
fn forge_urls_split_on_commas() {
    let config = Config::from_flags([
        "forge-gateway",
        "--forge-urls",
        "http://a:7860,http://u:p@b:7861",
        "--dev",
    ])
    .unwrap();
    assert_eq!(config.forge_urls.len(), 2);
    assert_eq!(config.forge_urls[1].0.username(), "u");
}

#[test]
fn debug_output_shows_no_secret() {
    let config = Config::from_flags([
        "forge-gateway",
        "--auth-jwt-secret",
        "jwt-secret-jwt-secret-jwt-secret-0",
        "--admin-token",
        "admin-token-hunter2",
        "--database-url",
        "postgres://gw:db-password@db/gw",
        "--redis-url",
        "redis://:redis-password@redis:6379",
        "--forge-urls",
        "http://u:forge-password@gpu1:7860",
    ])
    .unwrap();
    let shown = format!("{config:?}");
    for secret in [
        "jwt-secret-jwt",
        "hunter2",
        "db-password",
        "redis-password",
        "forge-password",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(
        shown.contains("gpu1:7860"),
        "the backend is still named: {shown}"
    );
}
