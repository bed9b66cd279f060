//! API errors: the `{"error": {...}}` body of a `4xx`/`5xx` and the `error` frame of a refused
//! WebSocket command, each with its status, code and exact Turkish message.

use super::invalid::Invalid;
use crate::domain::client_json::ClientJsonError;
use crate::domain::status::JobStatus;

/// Errors the REST API and WebSocket commands answer, each with its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiError {
    /// A field failed validation (`field` names it).
    Validation {
        /// The offending field (dotted for nested ones).
        field: String,
        /// What is wrong with it.
        reason: Invalid,
    },
    /// The body (or a WebSocket frame) is not JSON, or not the expected JSON shape.
    InvalidJson(BadJson),
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
    Conflict(StateConflict),
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
        ApiError::InvalidJson(match err {
            ClientJsonError::Empty => BadJson::Empty,
            ClientJsonError::Syntax { line, column } => BadJson::Syntax { line, column },
            ClientJsonError::IntegerOutOfRange => BadJson::IntegerOutOfRange,
        })
    }
}

impl ApiError {
    /// A validation error: `field` is wrong for `reason`.
    pub fn invalid(field: impl Into<String>, reason: Invalid) -> Self {
        ApiError::Validation {
            field: field.into(),
            reason,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Validation { .. } => 422,
            ApiError::InvalidJson(_) => 400,
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
            ApiError::Conflict(_) => 409,
            ApiError::Unavailable => 503,
            ApiError::Internal => 500,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation",
            ApiError::InvalidJson(_) => "invalid_json",
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
            ApiError::Conflict(_) => "conflict",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }

    /// The exact user-facing message.
    pub fn message(&self) -> String {
        match self {
            ApiError::Validation { field, reason } => reason.message(field),
            ApiError::InvalidJson(reason) => reason.message(),
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
            ApiError::Conflict(conflict) => conflict.message(),
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

/// An error as a client reads it: the `error` of a REST answer's body and of an `error`
/// frame. Made only from an [`ApiError`], so both say the same.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable code (`validation`, `not_found`, `too_many_pending`, …; docs/api.md
    /// lists them all).
    pub code: String,
    /// The exact Turkish message.
    pub message: String,
    /// The field it is about (dotted for nested ones), or null.
    pub field: Option<String>,
}

impl From<&ApiError> for ErrorDetail {
    fn from(err: &ApiError) -> Self {
        ErrorDetail {
            code: err.code().to_owned(),
            message: err.message(),
            field: err.field().map(str::to_owned),
        }
    }
}

/// `{"error": {...}}`: the body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

impl From<&ApiError> for ErrorBody {
    fn from(err: &ApiError) -> Self {
        ErrorBody {
            error: ErrorDetail::from(err),
        }
    }
}

/// Why a body or a WebSocket frame could not be read as the JSON expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadJson {
    /// An empty body.
    Empty,
    /// Not JSON: where the parser stopped.
    Syntax {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// An integer past 64 bits (no store keeps it exactly).
    IntegerOutOfRange,
    /// JSON, but not an object.
    NotAnObject,
    /// A WebSocket frame that is JSON but not an object.
    FrameNotAnObject,
    /// A binary WebSocket frame.
    BinaryFrame,
    /// The body broke off while it was read.
    UnreadableBody,
    /// A request no route could read (a rejection we did not expect).
    UnreadableRequest,
}

impl BadJson {
    /// The exact user-facing message.
    pub fn message(&self) -> String {
        match self {
            BadJson::Empty => "İstek gövdesi boş; bir JSON nesnesi bekleniyor.".to_owned(),
            BadJson::Syntax { line, column } => format!(
                "İstek gövdesi geçerli bir JSON değil (satır {line}, sütun {column})."
            ),
            BadJson::IntegerOutOfRange => "Tam sayılar 64 bite sığmalıdır (-9223372036854775808 ile 18446744073709551615 arası); daha büyük sayıları metin olarak gönderin.".to_owned(),
            BadJson::NotAnObject => "İstek gövdesi bir JSON nesnesi olmalıdır.".to_owned(),
            BadJson::FrameNotAnObject => "Mesaj bir JSON nesnesi olmalıdır.".to_owned(),
            BadJson::BinaryFrame => {
                "İkili (binary) çerçeveler desteklenmiyor; JSON metin gönderin.".to_owned()
            }
            BadJson::UnreadableBody => "İstek gövdesi okunamadı.".to_owned(),
            BadJson::UnreadableRequest => "İstek okunamadı.".to_owned(),
        }
    }
}

/// A command that does not fit the message's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateConflict {
    /// Cancel of a message that already finished.
    AlreadyFinished {
        /// Its status.
        status: JobStatus,
    },
    /// Retry of a message still waiting or running.
    StillPending,
}

impl StateConflict {
    /// The exact user-facing message.
    pub fn message(&self) -> String {
        match self {
            StateConflict::AlreadyFinished { status } => {
                format!("Mesaj zaten sonuçlandı ({status}); iptal edilemez.")
            }
            StateConflict::StillPending => {
                "Mesaj hâlâ işleniyor; yeniden denemek için sonuçlanmasını bekleyin.".to_owned()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            ApiError::invalid("width", Invalid::NotText).field(),
            Some("width")
        );
        assert_eq!(
            ApiError::invalid("width", Invalid::NotText).message(),
            "width bir metin (string) olmalıdır."
        );
    }
}
