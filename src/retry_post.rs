//! One JSON `POST`, retried while a retry can help: the loop both outgoing API clients use,
//! [`crate::analytics`] (the scanner's register and scanner-error calls) and
//! [`crate::tracking_api`] (the deployments API).
//!
//! * Every attempt carries the same body with exactly `Content-Type: application/json`,
//!   `User-Agent: imagetrail/<version>`, the same `Idempotency-Key` (so an attempt whose answer
//!   was lost is not recorded twice) and `Authorization: Bearer <token>` when a token is given.
//! * **Retried:** no answer (connection refused, reset, timeout), an answer whose body could not
//!   be read, and 408, 429 and 5xx. **Not retried:** a server certificate the client does not
//!   trust (asking again cannot change it) and every other status.
//! * **Between attempts:** the server's `Retry-After` (seconds or an HTTP date) when it gave
//!   one, else an exponential backoff from [`FIRST_BACKOFF`] with jitter; never more than
//!   [`MAX_WAIT`].
//! * At most [`MAX_ANSWER_BYTES`] of an answer are read.
//!
//! The callers turn a [`Failure`] into their own error type, so each keeps its messages; the
//! helpers here ([`server_words`], [`untrusted_certificate`]) and in [`crate::error`]
//! ([`error_chain`], [`root_cause`](crate::error::root_cause)) are what they word them with.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use url::Url;

use crate::error::error_chain;
use crate::terminal::sanitize;

/// The wait after the first failed attempt is at most this long; each later one doubles.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// The longest wait between two attempts, also when `Retry-After` asks for more.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The most bytes of an answer read: plenty for a summary or a scan report, and a server
/// answering with 100 MB cannot take the client's memory with it.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// One call: where, what, and how many attempts.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The URL posted to (credentials in it are sent as `Authorization: Basic` by reqwest, so
    /// a caller with a token removes them first).
    pub url: &'a Url,
    /// The JSON body, already serialised: the same bytes on every attempt.
    pub body: &'a [u8],
    /// The `Idempotency-Key`, the same on every attempt.
    pub idempotency_key: &'a str,
    /// Sent as `Authorization: Bearer <token>` when given.
    pub bearer: Option<&'a str>,
    /// Attempts at most (0 counts as 1).
    pub attempts: u32,
}

/// An answer the server gave: the accepting one, or the last refusal.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body as text (lossy UTF-8), at most [`MAX_ANSWER_BYTES`] of it.
    pub text: String,
    /// The body was longer than [`MAX_ANSWER_BYTES`] and was cut there.
    pub cut: bool,
    /// Attempts it took.
    pub attempts: u32,
}

/// Why a call failed, after the last attempt or at the first one a retry cannot change.
#[derive(Debug)]
pub enum Failure {
    /// No answer: the transport error of the last attempt (see [`untrusted_certificate`] for
    /// the one that is not retried).
    NoAnswer {
        /// What failed.
        error: reqwest::Error,
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered `status`, but its body could not be read.
    Unreadable {
        /// The status of the answer.
        status: StatusCode,
        /// What failed while reading.
        error: reqwest::Error,
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered with a status other than 2xx.
    Refused(Answer),
}

/// POST `request.body` to `request.url` with `http` until a 2xx answer, a failure a retry
/// cannot change, or the last attempt (see the module documentation for which is which).
pub async fn post(http: &reqwest::Client, request: Request<'_>) -> Result<Answer, Failure> {
    let shown = redacted(request.url);
    let attempts = request.attempts.max(1);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut req = http
            .post(request.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("imagetrail/", env!("CARGO_PKG_VERSION")),
            )
            .header("Idempotency-Key", request.idempotency_key)
            .body(request.body.to_vec());
        if let Some(token) = request.bearer {
            req = req.header(AUTHORIZATION, format!("Bearer {token}"));
        }
        tracing::debug!(url = %shown, attempt, "POST");
        let (failure, hint) = match req.send().await {
            Err(error) => {
                // Asking again cannot change the certificate.
                let retry = untrusted_certificate(&error).is_none();
                let failure = Failure::NoAnswer {
                    error,
                    attempts: attempt,
                };
                if !retry {
                    return Err(failure);
                }
                (failure, None)
            }
            Ok(resp) => {
                let status = resp.status();
                let hint = retry_after(resp.headers());
                match read_capped(resp).await {
                    Err(error) => (
                        Failure::Unreadable {
                            status,
                            error,
                            attempts: attempt,
                        },
                        // The server's hint was for its status, not for a broken body.
                        None,
                    ),
                    Ok((text, cut)) => {
                        let answer = Answer {
                            status,
                            text,
                            cut,
                            attempts: attempt,
                        };
                        if status.is_success() {
                            return Ok(answer);
                        }
                        if !retryable(status) {
                            return Err(Failure::Refused(answer));
                        }
                        (Failure::Refused(answer), hint)
                    }
                }
            }
        };
        if attempt >= attempts {
            return Err(failure);
        }
        tracing::info!(url = %shown, attempt, "retrying: {}", sanitize(&failure.brief()));
        tokio::time::sleep(wait(attempt, hint)).await;
    }
}

impl Failure {
    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        match self {
            Failure::NoAnswer { attempts, .. } | Failure::Unreadable { attempts, .. } => *attempts,
            Failure::Refused(answer) => answer.attempts,
        }
    }

    /// One line for the log of a retry.
    fn brief(&self) -> String {
        match self {
            Failure::NoAnswer { error, .. } => error_chain(error),
            Failure::Unreadable { status, error, .. } => {
                format!(
                    "the answer ({status}) could not be read: {}",
                    error_chain(error)
                )
            }
            Failure::Refused(answer) => {
                let words = server_words(&answer.text);
                let (words, _) =
                    crate::terminal::cap(words.as_deref().unwrap_or(&answer.text).trim(), 300);
                format!("answered {}: {words}", answer.status)
            }
        }
    }
}

/// 408, 429 and 5xx: a later attempt may succeed.
pub fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// The wait after failed attempt `attempt` (1-based): the server's `Retry-After` if it gave
/// one, else uniform in `[c/2, c]` with `c = FIRST_BACKOFF * 2^(attempt-1)`, so concurrent
/// clients (many scan targets) spread out; never more than [`MAX_WAIT`].
pub fn wait(attempt: u32, hint: Option<Duration>) -> Duration {
    if let Some(hint) = hint {
        return hint.min(MAX_WAIT);
    }
    let ceiling = FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(MAX_WAIT);
    // The random bits come from a v4 UUID, so no extra dependency is needed.
    let random = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
    ceiling.mul_f64(0.5 + random / 2.0)
}

/// `Retry-After` as seconds or an HTTP date (a date already past: at once).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// Read at most [`MAX_ANSWER_BYTES`] of an answer; says whether there was more (the rest is
/// not read: the connection is dropped).
async fn read_capped(mut resp: reqwest::Response) -> Result<(String, bool), reqwest::Error> {
    let mut buf: Vec<u8> = Vec::new();
    let mut cut = false;
    while let Some(chunk) = resp.chunk().await? {
        let room = MAX_ANSWER_BYTES - buf.len();
        if chunk.len() > room {
            buf.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((String::from_utf8_lossy(&buf).into_owned(), cut))
}

/// The server's own words in an error answer: the `summary`, `error` or `message` string of a
/// JSON body (the first present), `None` when the body has none of them.
pub fn server_words(text: &str) -> Option<String> {
    let v = serde_json::from_str::<serde_json::Value>(text).ok()?;
    ["summary", "error", "message"]
        .iter()
        .find_map(|k| v.get(*k).and_then(|s| s.as_str()))
        .map(str::to_string)
}

/// The URL without user name or password, and without a final `/`, for messages and files.
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string().trim_end_matches('/').to_string()
}

/// Why the server's certificate was refused, when that is what failed: found in the cause
/// chain, where the TLS error sits inside nested `io::Error`s (whose `source` skips the error
/// they wrap, so they are opened with `get_ref`).
pub fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::InvalidCertificate(why)) = err.downcast_ref() {
            return Some(format!("{why:?}"));
        }
        next = match err.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|i| i as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_bounded() {
        for attempt in 1..40 {
            let w = wait(attempt, None);
            assert!(w <= MAX_WAIT, "{attempt}: {w:?}");
            assert!(w >= FIRST_BACKOFF / 2, "{attempt}: {w:?}");
        }
        assert!(wait(1, None) <= FIRST_BACKOFF);
        assert!(wait(4, None) >= FIRST_BACKOFF * 4);
        assert_eq!(
            wait(1, Some(Duration::from_secs(3600))),
            MAX_WAIT,
            "a Retry-After is capped"
        );
        assert_eq!(wait(3, Some(Duration::ZERO)), Duration::ZERO);
    }

    #[test]
    fn reads_retry_after_as_seconds_or_a_date() {
        let header = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(RETRY_AFTER, v.parse().unwrap());
            retry_after(&h)
        };
        assert_eq!(header(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            header("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date already past: at once"
        );
        assert_eq!(header("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retries_only_what_may_change() {
        for s in [408, 429, 500, 502, 503, 504] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }

    #[test]
    fn finds_the_servers_words() {
        assert_eq!(
            server_words(r#"{"error": "token missing", "message": "m"}"#),
            Some("token missing".to_string())
        );
        assert_eq!(
            server_words(r#"{"success": false, "message": "m", "summary": "s\n"}"#),
            Some("s\n".to_string())
        );
        assert_eq!(server_words("<html>oops</html>"), None);
        assert_eq!(
            server_words(r#"{"error": 3, "message": "m"}"#),
            Some("m".to_string())
        );
    }
}
