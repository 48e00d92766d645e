//! The one error type of every HTTP answer the dashboard gives, in the shape
//! of the API that gives it: the page's API (`/api/...`) answers
//! `{"error": "kind", "message": ...}` (docs/dashboard.md), the HTTP API
//! (`/api/v1/...`, `/api/openapi.json`) answers
//! `{"error": {"kind": "Kind", "message": ...}}` (docs/http-api.md), and
//! so do its unknown paths, wrong methods and bodies too large.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::wire::protocol::{ErrorKind, ErrorReply};

/// Which API answers, and so the error's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The page's: `{"error": "snake_kind", "message"}`.
    Page,
    /// The HTTP API v1's: `{"error": {"kind": "PascalKind", "message"}}`.
    V1,
}

/// A refused or failed request, answered as JSON with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: String,
    message: String,
    shape: Shape,
    /// Whether to ask for a bearer token (`WWW-Authenticate`).
    bearer: bool,
    /// Whether to ask the client to retry in a second (`Retry-After`).
    retry_after: bool,
    /// Whether to close the connection after it (`Connection: close`).
    close: bool,
}

/// Whether `path` belongs to the HTTP API v1 (and so to its error shape).
pub(crate) fn is_v1(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/v1/") || path == "/api/openapi.json"
}

impl ApiError {
    /// An error of the page's API; `kind` in snake case (`bad_task_id`).
    pub(crate) fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind: kind.to_string(),
            message: message.into(),
            shape: Shape::Page,
            bearer: false,
            retry_after: false,
            close: false,
        }
    }

    /// An error of the HTTP API v1; `kind` in Pascal case (`BadArguments`).
    pub(crate) fn v1(status: StatusCode, kind: &str, message: impl Into<String>) -> ApiError {
        ApiError { shape: Shape::V1, ..ApiError::new(status, kind, message) }
    }

    /// A v1 `400 BadRequest`.
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::v1(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// A v1 `500 Internal`: the control plane answered what it should not have.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        ApiError::v1(StatusCode::INTERNAL_SERVER_ERROR, "Internal", message)
    }

    /// A refusal of the control plane, in v1's shape, with the status its
    /// kind calls for.
    pub(crate) fn refused(refusal: ErrorReply) -> ApiError {
        let (status, retry_after) = match refusal.kind {
            ErrorKind::UnknownTask | ErrorKind::UnknownTaskId | ErrorKind::UnknownWorkflowId => {
                (StatusCode::NOT_FOUND, false)
            }
            ErrorKind::ExpiredTaskId => (StatusCode::GONE, false),
            ErrorKind::AlreadyFinished | ErrorKind::IdConflict => (StatusCode::CONFLICT, false),
            ErrorKind::BadRequest | ErrorKind::MalformedFrame | ErrorKind::FrameTooLarge => {
                (StatusCode::BAD_REQUEST, false)
            }
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, false),
            ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, false),
            ErrorKind::Busy | ErrorKind::NotYetProvided => (StatusCode::SERVICE_UNAVAILABLE, true),
            ErrorKind::ShuttingDown | ErrorKind::NoWorker => (StatusCode::SERVICE_UNAVAILABLE, false),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, false),
        };
        ApiError { retry_after, ..ApiError::v1(status, &format!("{:?}", refusal.kind), refusal.message) }
    }

    /// The same error, asking for a bearer token.
    pub(crate) fn asking_bearer(self) -> ApiError {
        ApiError { bearer: true, ..self }
    }

    /// The same error, asking the client to retry in a second.
    pub(crate) fn retry_later(self) -> ApiError {
        ApiError { retry_after: true, ..self }
    }

    /// The same error, closing the connection after it.
    pub(crate) fn closing(self) -> ApiError {
        ApiError { close: true, ..self }
    }

    /// The same error in the shape of the API `path` belongs to: a page
    /// error about a v1 path (refused by a middleware or a fallback, which
    /// serve both) takes v1's shape, its kind in Pascal case.
    pub(crate) fn for_path(self, path: &str) -> ApiError {
        if self.shape == Shape::V1 || !is_v1(path) {
            return self;
        }
        ApiError { kind: pascal_case(&self.kind), shape: Shape::V1, ..self }
    }

    /// One refused entry of a v1 batch: the error with its status.
    pub(crate) fn batch_entry(&self) -> Value {
        json!({ "error": { "kind": self.kind, "message": self.message, "status": self.status.as_u16() } })
    }
}

/// `not_found` as `NotFound`.
fn pascal_case(snake: &str) -> String {
    snake
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| first.to_ascii_uppercase().to_string() + chars.as_str())
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.shape {
            Shape::Page => json!({ "error": self.kind, "message": self.message }),
            Shape::V1 => json!({ "error": { "kind": self.kind, "message": self.message } }),
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if self.bearer {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON error response of the page's API.
pub(crate) fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Response {
    ApiError::new(status, kind, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_error_about_a_v1_path_takes_v1s_shape() {
        let page = ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint");
        assert_eq!(page.for_path("/api/nope").kind, "not_found");
        let v1 = ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "no").for_path("/api/v1/tasks");
        assert_eq!((v1.kind.as_str(), v1.shape), ("MethodNotAllowed", Shape::V1));
        assert!(is_v1("/api/openapi.json") && is_v1("/api/v1") && !is_v1("/api/v10") && !is_v1("/api/tasks"));
    }
}
