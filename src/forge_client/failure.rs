//! Every way a call to Forge can fail, what each means for the job (the error catalogue's
//! code and message) and for the backend's circuit breaker.
//!
//! A call that never reached Forge (DNS, refused, no answer to the connect within
//! `FORGE_CONNECT_TIMEOUT`, TLS) is R9.1 `forge_connection`, whatever the clock says; only the
//! txt2img deadline itself is R5.1 `forge_timeout`, with that deadline in its text.

use crate::domain::breaker::CallOutcome;
use crate::domain::catalogue::JobFailure;
use std::error::Error;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The error under a failure (reqwest's, serde's, base64's, png's), kept as the failure's
/// source; shared, since a failure is cloned to every place that reports it.
pub type Cause = Arc<dyn Error + Send + Sync>;

/// How a call to Forge failed. The technical detail goes to the log (`ForgeFailure::detail`),
/// never to the user.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ForgeFailure {
    /// Refused, reset, closed early, DNS, TLS.
    #[error("connection failed")]
    Connection(#[source] Cause),
    /// The call ran past its deadline.
    #[error("timed out")]
    Timeout,
    /// Forge answered an HTTP error.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status code.
        status: u16,
        /// The start of the answer's body.
        body: String,
    },
    /// Forge generated with another checkpoint than the one asked for.
    #[error("generated with checkpoint {got:?}, not {asked:?}")]
    WrongModel {
        /// The checkpoint asked for.
        asked: String,
        /// The one Forge's `info.sd_model_name` names.
        got: String,
    },
    /// The answer is not the expected JSON, or holds no decodable PNG.
    #[error("unexpected answer: {what}")]
    BadAnswer {
        /// What was wrong with it.
        what: String,
        /// The parser's error, when one said so.
        #[source]
        cause: Option<Cause>,
    },
}

impl ForgeFailure {
    /// An answer that is wrong in itself (no parser error under it).
    pub fn bad_answer(what: impl fmt::Display) -> Self {
        ForgeFailure::BadAnswer {
            what: what.to_string(),
            cause: None,
        }
    }

    /// An answer a parser refused, with the parser's error as the cause.
    pub fn unparsable(what: &str, cause: impl Error + Send + Sync + 'static) -> Self {
        ForgeFailure::BadAnswer {
            what: what.to_owned(),
            cause: Some(Arc::new(cause)),
        }
    }

    /// The failure and every cause under it, for the log.
    pub fn detail(&self) -> String {
        let mut text = self.to_string();
        let mut source = self.source();
        while let Some(cause) = source {
            text.push_str(": ");
            text.push_str(&cause.to_string());
            source = cause.source();
        }
        text
    }
}

impl ForgeFailure {
    /// The user-facing failure (code and exact message).
    pub fn job_failure(&self, forge_timeout: Duration) -> JobFailure {
        match self {
            ForgeFailure::Connection(_) => JobFailure::ForgeConnection,
            ForgeFailure::Timeout => JobFailure::ForgeTimeout {
                timeout: forge_timeout,
            },
            ForgeFailure::Status {
                status: 401 | 403, ..
            } => JobFailure::ForgeAuth,
            ForgeFailure::Status { status, .. } if (400..500).contains(status) => {
                JobFailure::ForgeRejected { status: *status }
            }
            ForgeFailure::Status { .. } | ForgeFailure::BadAnswer { .. } => JobFailure::Unknown,
            ForgeFailure::WrongModel { .. } => JobFailure::WrongModel,
        }
    }

    /// What the failure says about the backend's health (R8.1: connection errors, timeouts
    /// and 5xx count; a refused request or an odd answer does not).
    pub fn breaker_outcome(&self) -> CallOutcome {
        match self {
            ForgeFailure::Connection(_) | ForgeFailure::Timeout => CallOutcome::Failure,
            ForgeFailure::Status { status, .. } if *status >= 500 => CallOutcome::Failure,
            _ => CallOutcome::Neutral,
        }
    }

    /// Whether the call failed before Forge generated anything, so the job may run on another
    /// backend: the connection failed or Forge answered a 5xx. Not a timeout (R5.1 is owed),
    /// not a 4xx (the request itself was refused), not a bad answer (Forge did generate).
    pub fn may_run_elsewhere(&self) -> bool {
        match self {
            ForgeFailure::Connection(_) => true,
            ForgeFailure::Status { status, .. } => *status >= 500,
            ForgeFailure::Timeout
            | ForgeFailure::BadAnswer { .. }
            | ForgeFailure::WrongModel { .. } => false,
        }
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ForgeFailure::Connection(_) => "connection",
            ForgeFailure::Timeout => "timeout",
            ForgeFailure::Status { status, .. } if *status >= 500 => "http_5xx",
            ForgeFailure::Status { .. } => "http_4xx",
            ForgeFailure::BadAnswer { .. } => "bad_answer",
            ForgeFailure::WrongModel { .. } => "wrong_model",
        }
    }
}

pub(super) fn classify(err: reqwest::Error) -> ForgeFailure {
    // A connect that timed out is a connection failure: Forge never got the request.
    if err.is_connect() {
        ForgeFailure::Connection(Arc::new(err))
    } else if err.is_timeout() {
        ForgeFailure::Timeout
    } else if err.is_decode() && !err.is_body() {
        ForgeFailure::unparsable("the answer does not decode", err)
    } else {
        // Request and body errors, and anything else reqwest reports: the connection broke.
        ForgeFailure::Connection(Arc::new(err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_codes_and_breaker_outcomes() {
        let timeout = Duration::from_secs(180);
        let cases = [
            (
                ForgeFailure::Connection(Arc::new(std::io::Error::from(
                    std::io::ErrorKind::ConnectionRefused,
                ))),
                "forge_connection",
                CallOutcome::Failure,
            ),
            (ForgeFailure::Timeout, "forge_timeout", CallOutcome::Failure),
            (
                ForgeFailure::Status {
                    status: 500,
                    body: String::new(),
                },
                "unknown",
                CallOutcome::Failure,
            ),
            (
                ForgeFailure::Status {
                    status: 503,
                    body: String::new(),
                },
                "unknown",
                CallOutcome::Failure,
            ),
            (
                ForgeFailure::Status {
                    status: 422,
                    body: String::new(),
                },
                "forge_rejected",
                CallOutcome::Neutral,
            ),
            (
                ForgeFailure::Status {
                    status: 401,
                    body: String::new(),
                },
                "forge_auth",
                CallOutcome::Neutral,
            ),
            (
                ForgeFailure::bad_answer("x"),
                "unknown",
                CallOutcome::Neutral,
            ),
        ];
        for (failure, code, outcome) in cases {
            assert_eq!(failure.job_failure(timeout).code(), code, "{failure}");
            assert_eq!(failure.breaker_outcome(), outcome, "{failure}");
        }
        let refused = ForgeFailure::Connection(Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused by 10.0.0.7:7860",
        )));
        assert_eq!(
            refused.detail(),
            "connection failed: refused by 10.0.0.7:7860",
            "the log keeps the cause"
        );
        let bad = ForgeFailure::unparsable("images[0] is not base64", std::fmt::Error);
        assert!(bad.source().is_some() && bad.detail().ends_with(&std::fmt::Error.to_string()));
        assert_eq!(
            ForgeFailure::Timeout.job_failure(timeout).message(),
            "Forge API zaman aşımına uğradı (180s). Lütfen tekrar deneyin."
        );
    }
}
