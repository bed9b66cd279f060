//! Job errors: why a generation failed, stored on its message and sent in `job.error`. The
//! messages of R5.1 and R9.1–R9.4 quote the requirements word for word.

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A job error as stored on the message and sent to the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// Machine-readable code, e.g. `forge_timeout`.
    pub code: String,
    /// The exact user-facing message.
    pub message: String,
}

/// Why a job failed. Each variant maps to one code and one exact message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobFailure {
    /// Connection refused, reset, closed early or DNS failure talking to Forge (R9.1).
    ForgeConnection,
    /// The txt2img call ran past its configured deadline (R5.1).
    ForgeTimeout {
        /// The configured `FORGE_TIMEOUT`, shown in the message's parentheses.
        timeout: Duration,
    },
    /// Any other deadline ran out (R9.2).
    Timeout,
    /// The watchdog found the job inactive past `STUCK_AFTER` (R9.3).
    StuckJob,
    /// Anything we cannot name better (R9.4): a 5xx, an answer that is not the expected JSON, no decodable PNG.
    Unknown,
    /// Forge refused the request with a 4xx other than 401/403.
    ForgeRejected {
        /// The HTTP status Forge answered.
        status: u16,
    },
    /// Forge answered 401/403: the gateway's credentials for it are wrong.
    ForgeAuth,
    /// The owner cancelled the job.
    Cancelled,
    /// Forge generated with another checkpoint than the one asked for (it ignores one it
    /// does not have): the picture is not shown.
    WrongModel,
}

impl JobFailure {
    /// One of each kind, in the order the documents list them: what the contract tests check
    /// against `assets/asyncapi.json` and `docs/api.md`. A new kind does not compile until it
    /// is added to the match below, which sits beside the list it must join.
    pub fn every() -> Vec<JobFailure> {
        let every = vec![
            JobFailure::ForgeConnection,
            JobFailure::ForgeTimeout {
                timeout: Duration::from_secs(180),
            },
            JobFailure::Timeout,
            JobFailure::StuckJob,
            JobFailure::Unknown,
            JobFailure::ForgeRejected { status: 422 },
            JobFailure::ForgeAuth,
            JobFailure::Cancelled,
            JobFailure::WrongModel,
        ];
        for kind in &every {
            match kind {
                JobFailure::ForgeConnection
                | JobFailure::ForgeTimeout { .. }
                | JobFailure::Timeout
                | JobFailure::StuckJob
                | JobFailure::Unknown
                | JobFailure::ForgeRejected { .. }
                | JobFailure::ForgeAuth
                | JobFailure::Cancelled
                | JobFailure::WrongModel => {}
            }
        }
        every
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            JobFailure::ForgeConnection => "forge_connection",
            JobFailure::ForgeTimeout { .. } => "forge_timeout",
            JobFailure::Timeout => "timeout",
            JobFailure::StuckJob => "stuck_job",
            JobFailure::Unknown => "unknown",
            JobFailure::ForgeRejected { .. } => "forge_rejected",
            JobFailure::ForgeAuth => "forge_auth",
            JobFailure::Cancelled => "cancelled",
            JobFailure::WrongModel => "wrong_model",
        }
    }

    /// The exact user-facing message.
    pub fn message(&self) -> String {
        match self {
            JobFailure::ForgeConnection => {
                "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin.".to_owned()
            }
            JobFailure::ForgeTimeout { timeout } => format!(
                "Forge API zaman aşımına uğradı ({}). Lütfen tekrar deneyin.",
                seconds_label(*timeout)
            ),
            JobFailure::Timeout => "İşlem zaman aşımına uğradı. Lütfen tekrar deneyin.".to_owned(),
            JobFailure::StuckJob => {
                "İşlem zaman aşımına uğradı (Stuck Job Guard). Lütfen tekrar deneyin.".to_owned()
            }
            JobFailure::Unknown => "Bilinmeyen bir hata oluştu. Lütfen tekrar deneyin.".to_owned(),
            JobFailure::ForgeRejected { status } => format!(
                "Forge API isteği reddetti (HTTP {status}). Lütfen istek parametrelerini kontrol edip tekrar deneyin."
            ),
            JobFailure::ForgeAuth => {
                "Forge API kimlik doğrulaması başarısız. Lütfen sistem yöneticisine bildirin."
                    .to_owned()
            }
            JobFailure::Cancelled => "İstek kullanıcı tarafından iptal edildi.".to_owned(),
            JobFailure::WrongModel => "Görsel istenen modelle üretilemedi; başka bir modelle üretilen görsel gösterilmedi. Lütfen tekrar deneyin.".to_owned(),
        }
    }

    /// The error as stored and sent.
    pub fn to_error(&self) -> JobError {
        JobError {
            code: self.code().to_owned(),
            message: self.message(),
        }
    }
}

/// Code and message telling the user why a job got the placeholder image (R8.2).
pub const PLACEHOLDER_NOTICE_CODE: &str = "forge_unavailable";
/// See [`PLACEHOLDER_NOTICE_CODE`].
pub const PLACEHOLDER_NOTICE_MESSAGE: &str = "Görüntü servisi şu anda yanıt vermiyor; geçici bir görsel gösteriliyor. Lütfen daha sonra tekrar deneyin.";

/// `180s`, `2s`, `1.5s`, `0.25s`: the configured timeout as the R5.1 message shows it.
pub fn seconds_label(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        let text = format!("{:.3}", duration.as_secs_f64());
        format!("{}s", text.trim_end_matches('0').trim_end_matches('.'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_messages_are_quoted_exactly() {
        assert_eq!(
            JobFailure::ForgeTimeout {
                timeout: Duration::from_secs(180)
            }
            .message(),
            "Forge API zaman aşımına uğradı (180s). Lütfen tekrar deneyin."
        );
        assert_eq!(
            JobFailure::ForgeConnection.message(),
            "Forge API bağlantı hatası. Lütfen sistem yöneticisine bildirin."
        );
        assert_eq!(
            JobFailure::Timeout.message(),
            "İşlem zaman aşımına uğradı. Lütfen tekrar deneyin."
        );
        assert_eq!(
            JobFailure::StuckJob.message(),
            "İşlem zaman aşımına uğradı (Stuck Job Guard). Lütfen tekrar deneyin."
        );
        assert_eq!(
            JobFailure::Unknown.message(),
            "Bilinmeyen bir hata oluştu. Lütfen tekrar deneyin."
        );
    }

    #[test]
    fn forge_timeout_shows_the_configured_timeout() {
        let message = |d| JobFailure::ForgeTimeout { timeout: d }.message();
        assert!(message(Duration::from_secs(2)).contains("(2s)"));
        assert!(message(Duration::from_millis(1500)).contains("(1.5s)"));
        assert!(message(Duration::from_millis(250)).contains("(0.25s)"));
        assert!(message(Duration::from_secs(600)).contains("(600s)"));
    }

    #[test]
    fn codes_are_the_documented_ones() {
        let codes: Vec<_> = JobFailure::every().iter().map(JobFailure::code).collect();
        assert_eq!(
            codes,
            [
                "forge_connection",
                "forge_timeout",
                "timeout",
                "stuck_job",
                "unknown",
                "forge_rejected",
                "forge_auth",
                "cancelled",
                "wrong_model"
            ]
        );
    }
}
