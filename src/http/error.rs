//! The one mapping from errors to HTTP answers: `{"error": {"code", "message"}}` with the status
//! codes of API.md, and `Retry-After` on 429 and 503. One code is chime's own, in the same
//! shape: `REQUEST_TIMEOUT` (408), a body not received within `http.body_read_timeout`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The stable error code of an answer (serialized as in [`Code::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Code {
    InvalidArgument,
    InvalidTopic,
    DelayOutOfRange,
    MessageTooLarge,
    RequestTimeout,
    NotFound,
    MethodNotAllowed,
    AlreadyDelivered,
    Unauthorized,
    LimitExceeded,
    Busy,
    Unavailable,
    TransactionResolved,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::InvalidTopic => "INVALID_TOPIC",
            Code::DelayOutOfRange => "DELAY_OUT_OF_RANGE",
            Code::MessageTooLarge => "MESSAGE_TOO_LARGE",
            Code::RequestTimeout => "REQUEST_TIMEOUT",
            Code::NotFound => "NOT_FOUND",
            Code::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            Code::AlreadyDelivered => "ALREADY_DELIVERED",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::LimitExceeded => "LIMIT_EXCEEDED",
            Code::Busy => "BUSY",
            Code::Unavailable => "UNAVAILABLE",
            Code::TransactionResolved => "TRANSACTION_RESOLVED",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Code::InvalidArgument | Code::InvalidTopic | Code::DelayOutOfRange => StatusCode::BAD_REQUEST,
            Code::MessageTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Code::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Code::AlreadyDelivered | Code::TransactionResolved => StatusCode::CONFLICT,
            Code::Unauthorized => StatusCode::UNAUTHORIZED,
            Code::LimitExceeded => StatusCode::FORBIDDEN,
            Code::Busy => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// The code of an error answer, left in the response's extensions for the metrics middleware.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// The body of every non-2xx answer: `{"error": {"code", "message"}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code; the status code follows from it.
    pub code: Code,
    /// Human-readable explanation, naming the offending field or limit.
    #[schema(min_length = 1)]
    pub message: String,
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: Code,
    pub message: String,
    /// Seconds, for 429 and 503.
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let retry_after = matches!(code, Code::Busy | Code::Unavailable).then_some(1);
        Self { code, message: message.into(), retry_after }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Code::NotFound, message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        // A quota is the request's: 403, retrying does not help. Every other store error is the
        // server's state, not the request's fault: 503, retry later. `StoreError::DiskFull`
        // already reads "disk full: …".
        let code = match e {
            StoreError::LimitExceeded { .. } => Code::LimitExceeded,
            _ => Code::Unavailable,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<crate::service::ServiceError> for ApiError {
    fn from(e: crate::service::ServiceError) -> Self {
        use crate::service::ServiceError as E;
        match e {
            E::NotFound(m) => ApiError::not_found(m),
            e @ E::AlreadyDelivered(_) => ApiError::new(Code::AlreadyDelivered, e.to_string()),
            E::Busy(m) => ApiError::new(Code::Busy, m),
            E::Store(e) => e.into(),
            E::Unavailable(m) => ApiError::new(Code::Unavailable, m),
            E::Invalid(m) => ApiError::invalid(m),
            E::LimitExceeded(m) => ApiError::new(Code::LimitExceeded, m),
            E::Conflict(m) => ApiError::new(Code::TransactionResolved, m),
        }
    }
}

impl From<crate::group::GroupError> for ApiError {
    fn from(e: crate::group::GroupError) -> Self {
        let code = match e {
            crate::group::GroupError::LimitExceeded { .. } => Code::LimitExceeded,
            _ => Code::Unavailable,
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: self.message } };
        let mut resp = (self.code.status(), axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        resp.extensions_mut().insert(ErrorCode(self.code.as_str()));

        if self.code == Code::RequestTimeout {
            // The rest of the body may still be on its way: do not read it as the next request.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_code_is_as_str() {
        for code in [
            Code::InvalidArgument,
            Code::InvalidTopic,
            Code::DelayOutOfRange,
            Code::MessageTooLarge,
            Code::RequestTimeout,
            Code::NotFound,
            Code::MethodNotAllowed,
            Code::AlreadyDelivered,
            Code::Unauthorized,
            Code::LimitExceeded,
            Code::Busy,
            Code::Unavailable,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }
}
