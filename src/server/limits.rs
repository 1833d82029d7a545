//! Limits on what a client can make the server do: the body size (a layer in the router plus
//! the 413 answer here), the content type, and the time one request may take.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Cut off a request that is not answered within `timeout`, typically a client that sends its
/// body slowly or never finishes it. Slow headers are cut off by hyper's header read timeout,
/// set to the same value. The connection is closed so the client cannot keep it.
/// Each answered request is logged at `info` (method, path, status, milliseconds): `-v` or
/// `RUST_LOG=imagetrail=info` shows them.
pub async fn request_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => {
            tracing::info!(
                %method,
                path,
                status = response.status().as_u16(),
                ms = started.elapsed().as_secs_f64() * 1000.0,
                "request"
            );
            response
        }
        Err(_) => {
            tracing::warn!(
                %method,
                path,
                "request cut off after {:?}: the client did not finish it",
                timeout
            );
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!(
                    "the request was not complete after {} s; send the whole body at once",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            response
        }
    }
}

/// How strictly the `Content-Type` is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// Exactly `application/json`, as the real analytics server compares it (a `charset`
    /// parameter is refused there, so it is refused here too).
    Exact,
    /// Any `application/json`, parameters allowed.
    Json,
}

/// Check the content type, read the body (bounded by the router's limit) and parse it.
pub fn json_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    content_type: ContentType,
) -> Result<T, ApiError> {
    check_content_type(headers, content_type)?;
    let body = body.map_err(body_error)?;
    parse_json(&body)
}

/// Parse JSON with an answer that quotes serde's line and column.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data => ApiError::bad_request(
                "invalid-body",
                format!("the JSON body does not have the expected shape: {e}"),
            ),
            _ => ApiError::bad_request(
                "malformed-json",
                format!("the body is not valid JSON: {e}; send one JSON object"),
            ),
        }
    })
}

/// The content type check alone.
pub fn check_content_type(headers: &HeaderMap, mode: ContentType) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match mode {
        ContentType::Exact if given == "application/json" => Ok(()),
        // The real server's own words (fabric8-gemini `rest_api.py`), so clients that match on
        // them keep working.
        ContentType::Exact => Err(ApiError::bad_request(
            "content-type",
            "Set content type to application/json",
        )),
        ContentType::Json => {
            let essence = given.split(';').next().unwrap_or("").trim();
            if essence.eq_ignore_ascii_case("application/json") {
                Ok(())
            } else {
                Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "content-type",
                    format!(
                        "the body must be JSON with Content-Type: application/json (got {:?})",
                        given
                    ),
                ))
            }
        }
    }
}

/// The answer when the body could not be read: too large (413) or cut (400).
fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "the body is larger than this server accepts (--max-body-bytes); send a smaller one",
        )
    } else {
        ApiError::bad_request(
            "unreadable-body",
            format!("the body could not be read: {rejection}"),
        )
    }
}
