//! The error catalogue: every code the gateway shows a user, with its exact Turkish message.
//!
//! Job errors (stored on a message, sent in `job.error`) quote the requirements word for word
//! (R5.1, R9.1–R9.4); API errors (the `{"error": {...}}` body of a `4xx`/`5xx`) are ours.

use crate::domain::client_json::ClientJsonError;
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
}

impl JobFailure {
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

/// Errors the REST API and WebSocket commands answer, each with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// A field failed validation (`field` names it).
    Validation {
        /// The offending field (dotted for nested ones).
        field: String,
        /// The exact message.
        message: String,
    },
    /// The body is not JSON, or not the expected JSON shape.
    InvalidJson {
        /// What is wrong, in Turkish.
        message: String,
    },
    /// The body is over the limit.
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// No such message for this user (another user's message answers this too).
    NotFound,
    /// No such route.
    RouteNotFound,
    /// The route exists but not with this method.
    MethodNotAllowed {
        /// The methods the route takes, for the `Allow` header.
        allow: &'static str,
    },
    /// Missing, malformed, badly signed or expired token.
    Unauthorized {
        /// Whether the token had expired (a different message).
        expired: bool,
    },
    /// The admin token is required.
    Forbidden,
    /// The user already has the maximum number of pending messages.
    TooManyPending {
        /// `MAX_PENDING_PER_USER`.
        limit: u32,
    },
    /// A client patch named a server-owned field.
    ServerOwnedField {
        /// The field.
        field: String,
    },
    /// The message is already terminal (cancel) or still pending (retry).
    Conflict {
        /// The exact message.
        message: String,
    },
    /// The user sent commands faster than `WS_COMMANDS_PER_SECOND` allows.
    RateLimited {
        /// Commands allowed per second.
        per_second: u32,
    },
    /// A new WebSocket would pass `MAX_SESSIONS_PER_USER` (`per_user`) or `MAX_SESSIONS`.
    TooManySessions {
        /// The cap that was hit.
        limit: u32,
        /// Whether it is the user's own cap (else the server's total).
        per_user: bool,
    },
    /// The request body did not arrive within `HTTP_BODY_TIMEOUT`.
    RequestTimeout {
        /// The timeout in whole seconds (rounded up).
        seconds: u64,
    },
    /// The server holds `MAX_CONNECTIONS` connections already.
    TooManyConnections,
    /// A dependency (database, queue store) did not answer; try again.
    Unavailable,
    /// A bug: never expected.
    Internal,
}

impl From<ClientJsonError> for ApiError {
    fn from(err: ClientJsonError) -> Self {
        let message = match err {
            ClientJsonError::Empty => "İstek gövdesi boş; bir JSON nesnesi bekleniyor.".to_owned(),
            ClientJsonError::Syntax { line, column } => format!(
                "İstek gövdesi geçerli bir JSON değil (satır {line}, sütun {column})."
            ),
            ClientJsonError::IntegerOutOfRange => "Tam sayılar 64 bite sığmalıdır (-9223372036854775808 ile 18446744073709551615 arası); daha büyük sayıları metin olarak gönderin.".to_owned(),
        };
        ApiError::InvalidJson { message }
    }
}

impl ApiError {
    /// A validation error for `field`.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Validation { .. } => 422,
            ApiError::InvalidJson { .. } => 400,
            ApiError::PayloadTooLarge { .. } => 413,
            ApiError::NotFound | ApiError::RouteNotFound => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::Unauthorized { .. } => 401,
            ApiError::Forbidden => 403,
            ApiError::TooManyPending { .. } => 429,
            ApiError::RateLimited { .. } | ApiError::TooManySessions { .. } => 429,
            ApiError::RequestTimeout { .. } => 408,
            ApiError::TooManyConnections => 503,
            ApiError::ServerOwnedField { .. } => 422,
            ApiError::Conflict { .. } => 409,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation",
            ApiError::InvalidJson { .. } => "invalid_json",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::NotFound => "not_found",
            ApiError::RouteNotFound => "route_not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Unauthorized { expired: false } => "unauthorized",
            ApiError::Unauthorized { expired: true } => "token_expired",
            ApiError::Forbidden => "forbidden",
            ApiError::TooManyPending { .. } => "too_many_pending",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::TooManySessions { .. } => "too_many_sessions",
            ApiError::RequestTimeout { .. } => "request_timeout",
            ApiError::TooManyConnections => "too_many_connections",
            ApiError::ServerOwnedField { .. } => "server_owned_field",
            ApiError::Conflict { .. } => "conflict",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The exact user-facing message.
    pub fn message(&self) -> String {
        match self {
            ApiError::Validation { message, .. } | ApiError::InvalidJson { message } => {
                message.clone()
            }
            ApiError::PayloadTooLarge { limit } => format!(
                "İstek gövdesi çok büyük (en fazla {} KiB).",
                limit.div_ceil(1024)
            ),
            ApiError::NotFound => "Mesaj bulunamadı.".to_owned(),
            ApiError::RouteNotFound => "İstenen adres bulunamadı.".to_owned(),
            ApiError::MethodNotAllowed { .. } => {
                "Bu adres bu HTTP yöntemini desteklemiyor.".to_owned()
            }
            ApiError::Unauthorized { expired: false } => {
                "Kimlik doğrulanamadı. Lütfen geçerli bir oturum anahtarıyla tekrar deneyin."
                    .to_owned()
            }
            ApiError::Unauthorized { expired: true } => {
                "Oturumun süresi doldu. Lütfen tekrar giriş yapın.".to_owned()
            }
            ApiError::Forbidden => "Bu işlem için yönetici yetkisi gerekiyor.".to_owned(),
            ApiError::TooManyPending { limit } => format!(
                "Aynı anda en fazla {limit} bekleyen isteğiniz olabilir. Lütfen mevcut isteklerinizin tamamlanmasını bekleyin."
            ),
            ApiError::ServerOwnedField { field } => {
                format!("'{field}' alanı yalnızca sunucu tarafından yazılabilir.")
            }
            ApiError::RateLimited { per_second } => format!(
                "Çok hızlı komut gönderiyorsunuz (saniyede en fazla {per_second}). Bu komut uygulanmadı; lütfen yavaşlayın."
            ),
            ApiError::TooManySessions {
                limit,
                per_user: true,
            } => format!(
                "Aynı anda en fazla {limit} canlı bağlantınız olabilir. Lütfen kullanmadığınız bir sekmeyi kapatın."
            ),
            ApiError::TooManySessions {
                per_user: false, ..
            } => "Sunucu şu anda yeni canlı bağlantı kabul edemiyor. Lütfen biraz sonra tekrar deneyin."
                .to_owned(),
            ApiError::RequestTimeout { seconds } => format!(
                "İstek gövdesi {seconds} saniye içinde tamamlanmadı. Lütfen tekrar deneyin."
            ),
            ApiError::TooManyConnections => {
                "Sunucu şu anda çok yoğun. Lütfen biraz sonra tekrar deneyin.".to_owned()
            }
            ApiError::Conflict { message } => message.clone(),
            ApiError::Unavailable => {
                "Servis geçici olarak kullanılamıyor. Lütfen biraz sonra tekrar deneyin.".to_owned()
            }
            ApiError::Internal => {
                "Beklenmeyen bir sunucu hatası oluştu. Lütfen tekrar deneyin.".to_owned()
            }
        }
    }

    /// The field the error is about, if any.
    pub fn field(&self) -> Option<&str> {
        match self {
            ApiError::Validation { field, .. } | ApiError::ServerOwnedField { field } => {
                Some(field)
            }
            _ => None,
        }
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
        let codes: Vec<_> = [
            JobFailure::ForgeConnection,
            JobFailure::ForgeTimeout {
                timeout: Duration::from_secs(1),
            },
            JobFailure::Timeout,
            JobFailure::StuckJob,
            JobFailure::Unknown,
            JobFailure::ForgeRejected { status: 422 },
            JobFailure::ForgeAuth,
            JobFailure::Cancelled,
        ]
        .iter()
        .map(JobFailure::code)
        .collect();
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
                "cancelled"
            ]
        );
    }

    #[test]
    fn api_errors_have_statuses_and_turkish_messages() {
        assert_eq!(ApiError::TooManyPending { limit: 20 }.status(), 429);
        assert!(
            ApiError::TooManyPending { limit: 20 }
                .message()
                .contains("20")
        );
        assert_eq!(
            ApiError::PayloadTooLarge { limit: 65536 }.message(),
            "İstek gövdesi çok büyük (en fazla 64 KiB)."
        );
        assert_eq!(ApiError::NotFound.status(), 404);
        assert_eq!(ApiError::validation("width", "x").field(), Some("width"));
    }
}
