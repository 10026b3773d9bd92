//! The one place where core errors become HTTP status codes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::Json;
use bunker_sdk::LogicalError;
use serde_json::json;

pub fn status_of(e: &LogicalError) -> StatusCode {
    match e {
        LogicalError::InvalidRequest(_)
        | LogicalError::InvalidRequestMulti(_)
        | LogicalError::Conflict(_)
        | LogicalError::NotInitialized
        | LogicalError::DrSecondary => StatusCode::BAD_REQUEST,
        LogicalError::PermissionDenied | LogicalError::Forbidden(_) => StatusCode::FORBIDDEN,
        LogicalError::UnsupportedPath(_) | LogicalError::NotFound(_) => StatusCode::NOT_FOUND,
        LogicalError::UnsupportedOperation => StatusCode::METHOD_NOT_ALLOWED,
        LogicalError::Sealed | LogicalError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        LogicalError::Standby(Some(_)) => StatusCode::TEMPORARY_REDIRECT,
        // Vault's answer when a standby knows no active node.
        LogicalError::Standby(None) => StatusCode::INTERNAL_SERVER_ERROR,
        LogicalError::AuditFailed(_) | LogicalError::Internal(_) => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
    }
}

pub fn error_response(status: StatusCode, errors: Vec<String>) -> HttpResponse {
    (status, Json(json!({ "errors": errors }))).into_response()
}

pub fn from_error(e: &LogicalError) -> HttpResponse {
    let status = status_of(e);
    let errors = match e {
        LogicalError::InvalidRequestMulti(msgs) => msgs.clone(),
        LogicalError::NotFound(m) if m.is_empty() => vec![],
        LogicalError::UnsupportedOperation => vec![],
        other => vec![other.to_string()],
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(error = %e, "request failed");
    }
    error_response(status, errors)
}

/// A body that could not be read: too large (413), too slow (408) or cut off (400).
pub(crate) fn body_error(e: crate::body::BodyError) -> HttpResponse {
    use crate::body::BodyError;
    let (status, message) = match e {
        BodyError::TooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "http: request body too large",
        ),
        BodyError::TimedOut => (
            StatusCode::REQUEST_TIMEOUT,
            "http: request body not received within http_read_timeout",
        ),
        BodyError::Broken => (StatusCode::BAD_REQUEST, "http: error reading request body"),
    };
    error_response(status, vec![message.into()])
}
