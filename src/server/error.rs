//! The one shape of every error answer: `{"success": false, "error": CODE, "summary": TEXT}`.
//! `summary` is the key the analytics server (and so the scanner) uses for its message; `error`
//! is a stable code a client can branch on.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer: a status, a stable code and a sentence that says what to do.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code, e.g. `tag-only-image`.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub summary: String,
}

impl ApiError {
    /// Any error answer.
    pub fn new(status: StatusCode, code: &'static str, summary: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            summary: summary.into(),
        }
    }

    /// 400: the request itself is wrong.
    pub fn bad_request(code: &'static str, summary: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, summary)
    }

    /// 500: the server could not do its part; the details are logged, not sent.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> ApiError {
        tracing::error!("{context}: {err}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}; try again later (the server log has the cause)"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = self.code, "{}", self.summary);
        } else {
            tracing::debug!(status = %self.status, code = self.code, "{}", self.summary);
        }
        let mut response = (
            self.status,
            Json(json!({"success": false, "error": self.code, "summary": self.summary})),
        )
            .into_response();
        if self.code == "database-unavailable" {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(super::records::RETRY_AFTER_SECONDS),
            );
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: say which scheme the server wants.
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"imagetrail\""),
            );
        }
        response
    }
}

/// The answer for a path no route serves.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not-found",
        format!(
            "no endpoint at {}; the API is under /api/v1 (register, scanner-error, deployments, environments, admission)",
            uri.path()
        ),
    )
}

/// The answer for a known path called with the wrong method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

impl From<crate::records::RecordsError> for ApiError {
    fn from(err: crate::records::RecordsError) -> ApiError {
        use crate::records::RecordsError;
        match err {
            RecordsError::InvalidName { .. } => {
                ApiError::bad_request("invalid-name", err.to_string())
            }
            RecordsError::InvalidField { .. } => {
                ApiError::bad_request("invalid-field", err.to_string())
            }
            RecordsError::OutOfOrder { .. } => {
                ApiError::new(StatusCode::CONFLICT, "out-of-order", err.to_string())
            }
            RecordsError::Malformed { .. } => {
                tracing::error!("{err}");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "malformed-records",
                    format!("the stored records cannot be read: {err}"),
                )
            }
            RecordsError::NameTaken { .. } => {
                ApiError::new(StatusCode::CONFLICT, "duplicate-name", err.to_string())
            }
            RecordsError::NameRequired { env, repo, example } => ApiError::new(
                StatusCode::CONFLICT,
                "name-required",
                format!(
                    "{repo} runs in environment {env:?} as named instances (e.g. {example:?}); send image.name to say which instance this deployment is"
                ),
            ),
            RecordsError::TornTail(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "torn-history",
                err.to_string(),
            ),
            RecordsError::Io { .. } => {
                ApiError::internal("cannot read or write the deployment records", &err)
            }
            RecordsError::Database(e) => (*e).into(),
        }
    }
}
