//! Limits on what a client can make the server do: the body size (a layer in the router plus
//! the 413 answer here), the content type, the time one request may take to arrive, and what
//! all requests together may hold: open connections ([`ConnectionLimit`]) and body bytes in
//! flight ([`BodyBudget`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Cut off a request whose body is not complete within `timeout`: a client that sends its
/// body slowly or never finishes it. Slow headers are cut off by hyper's header read timeout,
/// set to the same value. The connection is closed so the client cannot keep it.
///
/// Only the receiving is timed: once the whole body is in, the handler runs to its end however
/// long the disk takes, so a request is never answered 408 after its deployment was recorded
/// (a retry would record it again), and the 408's words ("nothing was recorded") stay true.
/// Each answered request is logged at `info` (method, path, status, milliseconds): `-v` or
/// `RUST_LOG=imagetrail=info` shows them.
pub async fn request_timeout(timeout: Duration, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let received = Arc::new(AtomicBool::new(req.body().is_end_stream()));
    let req = req.map(|inner| {
        axum::body::Body::new(Watched {
            inner,
            received: received.clone(),
        })
    });
    let answer = next.run(req);
    tokio::pin!(answer);
    let response = tokio::select! {
        response = &mut answer => Some(response),
        () = tokio::time::sleep(timeout) => None,
    };
    let response = match response {
        Some(response) => response,
        // The body is in: the work it asked for is under way, let it finish.
        None if received.load(Ordering::Acquire) => answer.await,
        None => {
            tracing::warn!(
                %method,
                path,
                "request cut off after {:?}: the client did not send its whole body",
                timeout
            );
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request-timeout",
                format!(
                    "the request body was not complete after {} s, so nothing was recorded; send the whole body at once and try again",
                    timeout.as_secs_f64()
                ),
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}

/// A request body that says when its last frame has been read.
struct Watched {
    inner: axum::body::Body,
    received: Arc<AtomicBool>,
}

impl http_body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// What all requests in flight may hold together: the bytes of their bodies. Each request
/// that has a body reserves its `Content-Length` (a chunked one: `--max-body-bytes`) before its
/// handler runs and gives it back when answered; when the budget is spent the request is
/// answered 503 with `Retry-After` at once, before a byte of its body is read. Connections are
/// bounded by [`ConnectionLimit`].
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    max_body: usize,
}

impl BodyBudget {
    /// A budget of `total` bytes for bodies of at most `max_body` bytes each (the budget is
    /// raised to `max_body` if smaller, so one largest body always fits).
    pub fn new(total: usize, max_body: usize) -> BodyBudget {
        let total = total.max(max_body).min(u32::MAX as usize);
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            max_body,
        }
    }
}

/// The middleware that applies [`BodyBudget`].
pub async fn body_budget(budget: BodyBudget, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let wants = match declared {
        // Larger than one body may be: the handler answers 413 without reading it.
        Some(n) if n > budget.max_body as u64 => 0,
        Some(n) => n as usize,
        None if req.body().is_end_stream() => 0,
        None => budget.max_body,
    };
    if wants == 0 {
        return next.run(req).await;
    }
    let Ok(permit) = budget.bytes.clone().try_acquire_many_owned(wants as u32) else {
        tracing::warn!(
            wants,
            total = budget.total,
            "request refused: the bodies in flight use the whole budget"
        );
        return busy(&format!(
            "the server is receiving {} bytes of request bodies already (its ceiling, --max-pending-body-bytes); try again in a second",
            budget.total
        ));
    };
    let response = next.run(req).await;
    drop(permit);
    response
}

/// 503 with `Retry-After: 1`.
fn busy(summary: &str) -> Response {
    let mut response =
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server-busy", summary).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// An acceptor that bounds the open connections: past the limit a new connection is answered
/// `503` with `Retry-After: 1` (on plain HTTP; a TLS one is closed) and closed before anything
/// is read from it, so a flood of connections costs a socket each for a moment, not buffers.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
    plain: bool,
    refusal: Arc<[u8]>,
}

impl ConnectionLimit {
    /// At most `max` connections; `plain` when the server speaks HTTP without TLS.
    pub fn new(max: usize, plain: bool) -> ConnectionLimit {
        ConnectionLimit {
            permits: Arc::new(Semaphore::new(max)),
            max,
            plain,
            refusal: connections_full().into(),
        }
    }
}

impl<S: Send + 'static> axum_server::accept::Accept<TcpStream, S> for ConnectionLimit {
    type Stream = Limited;
    type Service = S;
    type Future = std::future::Ready<std::io::Result<(Limited, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        std::future::ready(match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok((
                Limited {
                    stream,
                    _permit: permit,
                },
                service,
            )),
            Err(_) => {
                if self.plain {
                    // Best effort, without waiting: the socket buffer of a new connection
                    // takes this whole answer.
                    let _ = stream.try_write(&self.refusal);
                }
                tracing::warn!(
                    max = self.max,
                    "connection refused: --max-connections are open"
                );
                Err(std::io::Error::other("too many open connections"))
            }
        })
    }
}

/// The answer written to a connection past the limit.
fn connections_full() -> Vec<u8> {
    let body = serde_json::json!({
        "success": false,
        "error": "server-busy",
        "summary": "the server has its most connections open (--max-connections); try again in a second",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A connection holding its place under the [`ConnectionLimit`] until it is closed.
pub struct Limited {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
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
