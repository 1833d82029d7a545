//! The analytics server client: the register and scanner-error calls (and the tracking API's
//! deployments call for the `deploy` scan type), with timeouts, bounded retries and idempotency.
//!
//! Every call is `POST <server path><api prefix>/<name>` with exactly
//! `Content-Type: application/json` (the real server compares the string), a
//! `User-Agent: imagetrail/<version>`, `Authorization: Bearer` when a token is given, and an
//! `Idempotency-Key` that stays the same across the retries of one call.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, USER_AGENT};
use thiserror::Error;
use url::Url;

use crate::terminal::{cap, sanitize};

/// The first retry waits about this long; each later one twice as long (plus jitter).
const BACKOFF_BASE: Duration = Duration::from_millis(250);

/// The longest wait between two attempts, whatever `Retry-After` asks for.
const MAX_WAIT: Duration = Duration::from_secs(30);

/// The most bytes of a server's answer quoted in a message.
const QUOTE_BYTES: usize = 300;

/// The most bytes of a server's answer read: plenty for a summary or a scan report, and a
/// server answering with 100 MB cannot take the scanner's memory with it.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// What can go wrong calling the analytics server.
#[derive(Debug, Error)]
pub enum AnalyticsError {
    /// The server URL is not usable.
    #[error("invalid server URL {url:?}: {reason}; give it as http(s)://host[:port][/path]")]
    BadUrl {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The HTTP client could not be set up (TLS roots, ...).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// The server could not be reached or did not answer in time, after every attempt.
    #[error("could not reach {url} after {attempts} attempt(s): {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// Why the last attempt failed.
        reason: String,
    },
    /// The server answered with a status other than 2xx.
    #[error("{url} answered {status}{}", quote(.message))]
    Rejected {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's `summary`, `error` or `message`, or the start of its body.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered 2xx with a body that is not JSON (often a web page: a wrong URL).
    #[error(
        "{url} answered {status} but not with JSON{}; check that the server URL points at the analytics API",
        quote(.excerpt)
    )]
    NotJson {
        /// The URL called.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        excerpt: String,
    },
}

fn quote(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl AnalyticsError {
    /// The HTTP status the server answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            AnalyticsError::Rejected { status, .. } | AnalyticsError::NotJson { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// How to reach the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// The server's base URL; its path is kept as a prefix.
    pub server: Url,
    /// The API prefix, e.g. `/api/v1`.
    pub api_prefix: String,
    /// The Bearer token, when one is given.
    pub token: Option<String>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Attempts per call (at least 1).
    pub attempts: u32,
}

/// A 2xx answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The parsed body (`None` for an empty body).
    pub body: Option<serde_json::Value>,
    /// Attempts it took.
    pub attempts: u32,
    /// The answer was longer than [`MAX_ANSWER_BYTES`]: only that much was read, and the
    /// body (which could not be parsed whole) is `None`.
    pub cut: bool,
}

impl Answer {
    /// The server's `summary` (or `message`), when it gave one as a string.
    pub fn summary(&self) -> Option<String> {
        let body = self.body.as_ref()?;
        ["summary", "message"]
            .iter()
            .find_map(|k| body.get(k).and_then(|v| v.as_str()))
            .map(str::to_string)
    }
}

/// Parse and check a server URL (http or https, with a host).
pub fn parse_server(text: &str) -> Result<Url, AnalyticsError> {
    let bad = |reason: &str| AnalyticsError::BadUrl {
        url: text.to_string(),
        reason: reason.to_string(),
    };
    let url = Url::parse(text.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if !url.has_host() {
        return Err(bad("it has no host"));
    }
    Ok(url)
}

/// The URL without user name or password, for messages and result files.
pub fn redacted(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string().trim_end_matches('/').to_string()
}

/// The analytics server client.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: Config,
}

impl Client {
    /// Build a client (the TLS set-up happens here, once).
    pub fn new(config: Config) -> Result<Client, AnalyticsError> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .user_agent(concat!("imagetrail/", env!("CARGO_PKG_VERSION")));
        if config.server.scheme() == "http" {
            // A plain-http server needs no CA roots. Loading the system's (one file per CA)
            // costs more than the rest of a single-target scan, and an image without a CA
            // bundle could not even build the client.
            builder = builder.tls_certs_only(Vec::<reqwest::Certificate>::new());
        }
        let http = builder
            .build()
            .map_err(|e| AnalyticsError::Client(error_chain(&e)))?;
        Ok(Client { http, config })
    }

    /// The server's base URL, without credentials.
    pub fn server(&self) -> String {
        redacted(&self.config.server)
    }

    /// `<server path><api prefix>/<name>`: the server's own path is kept (the original dropped
    /// it), slashes between the parts are normalised.
    pub fn endpoint(&self, name: &str) -> Url {
        let mut url = self.config.server.clone();
        let mut path = url.path().trim_end_matches('/').to_string();
        let prefix = self.config.api_prefix.trim_matches('/');
        if !prefix.is_empty() {
            path.push('/');
            path.push_str(prefix);
        }
        path.push('/');
        path.push_str(name);
        url.set_path(&path);
        url.set_query(None);
        url.set_fragment(None);
        url
    }

    /// POST `body` to the endpoint `name`; 2xx is success, anything else an error quoting the
    /// server. Connection errors, 408, 429 and 5xx are retried with exponential backoff and
    /// jitter (honouring `Retry-After`), every attempt with the same `Idempotency-Key`.
    pub async fn post(
        &self,
        name: &str,
        body: &serde_json::Value,
        idempotency_key: &str,
    ) -> Result<Answer, AnalyticsError> {
        let mut url = self.endpoint(name);
        if self.config.token.is_some() {
            // reqwest turns a URL's user:password into `Authorization: Basic`; with a token
            // that would be a second Authorization header, and servers read only one of them
            // (most the first: Basic). The token wins; the URL's credentials are not sent.
            let _ = url.set_username("");
            let _ = url.set_password(None);
        }
        let shown = redacted(&url);
        let bytes = serde_json::to_vec(body).expect("a JSON value serialises");
        let attempts = self.config.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .post(url.clone())
                .header(CONTENT_TYPE, "application/json")
                .header(
                    USER_AGENT,
                    concat!("imagetrail/", env!("CARGO_PKG_VERSION")),
                )
                .header("Idempotency-Key", idempotency_key)
                .body(bytes.clone());
            if let Some(token) = &self.config.token {
                req = req.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            tracing::debug!(url = %shown, attempt, "POST");
            let (retry, wait_hint, err) = match req.send().await {
                Err(e) if let Some(problem) = untrusted_certificate(&e) => (
                    // Asking again cannot change the certificate.
                    false,
                    None,
                    AnalyticsError::Unreachable {
                        url: shown.clone(),
                        attempts: attempt,
                        reason: format!(
                            "the server's TLS certificate is not trusted ({problem}); if an \
                             internal CA signed it, set SSL_CERT_FILE to that CA's certificate \
                             (PEM)"
                        ),
                    },
                ),
                Err(e) => {
                    let reason = if e.is_timeout() {
                        format!(
                            "no answer within {} s (timeout; raise --timeout or check the server)",
                            self.config.timeout.as_secs_f64()
                        )
                    } else if e.is_connect() {
                        // reqwest's own text repeats the URL; the root cause is what helps.
                        format!("cannot connect: {}", root_cause(&e))
                    } else {
                        error_chain(&e)
                    };
                    (
                        true,
                        None,
                        AnalyticsError::Unreachable {
                            url: shown.clone(),
                            attempts: attempt,
                            reason,
                        },
                    )
                }
                Ok(resp) => {
                    let status = resp.status();
                    let wait_hint = retry_after(resp.headers());
                    let (text, cut) = match read_capped(resp).await {
                        Ok((_, true)) if status.is_success() => {
                            return Ok(Answer {
                                status: status.as_u16(),
                                body: None,
                                attempts: attempt,
                                cut: true,
                            });
                        }
                        Ok(read) => read,
                        Err(e) => {
                            let err = AnalyticsError::Unreachable {
                                url: shown.clone(),
                                attempts: attempt,
                                reason: format!(
                                    "the answer ({status}) could not be read: {}",
                                    error_chain(&e)
                                ),
                            };
                            if attempt < attempts {
                                self.wait(attempt, None).await;
                                continue;
                            }
                            return Err(err);
                        }
                    };
                    if status.is_success() {
                        return parse_success(&shown, status, &text, attempt);
                    }
                    let retry = status == StatusCode::REQUEST_TIMEOUT
                        || status == StatusCode::TOO_MANY_REQUESTS
                        || status.is_server_error();
                    (
                        retry,
                        wait_hint,
                        AnalyticsError::Rejected {
                            url: shown.clone(),
                            status: status.as_u16(),
                            message: if cut {
                                format!(
                                    "{} (the answer was longer than {} KiB and was cut there)",
                                    server_message(&text),
                                    MAX_ANSWER_BYTES / 1024
                                )
                            } else {
                                server_message(&text)
                            },
                            attempts: attempt,
                        },
                    )
                }
            };
            if !retry || attempt >= attempts {
                return Err(err);
            }
            tracing::info!(url = %shown, attempt, error = %sanitize(&err.to_string()), "retrying");
            self.wait(attempt, wait_hint).await;
        }
    }

    /// Sleep before attempt `attempt + 1`: `Retry-After` when the server gave one, else
    /// `BACKOFF_BASE * 2^(attempt-1)` with ±50 % jitter, never more than [`MAX_WAIT`].
    async fn wait(&self, attempt: u32, hint: Option<Duration>) {
        let wait = hint.unwrap_or_else(|| {
            let base = BACKOFF_BASE * 2u32.saturating_pow(attempt - 1);
            // Jitter spreads the retries of many concurrent targets; the randomness comes
            // from a v4 UUID so no extra dependency is needed.
            let r = (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 1000.0;
            base.mul_f64(0.5 + r)
        });
        tokio::time::sleep(wait.min(MAX_WAIT)).await;
    }
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

fn parse_success(
    url: &str,
    status: StatusCode,
    text: &str,
    attempts: u32,
) -> Result<Answer, AnalyticsError> {
    if text.trim().is_empty() {
        return Ok(Answer {
            status: status.as_u16(),
            body: None,
            attempts,
            cut: false,
        });
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(body) => Ok(Answer {
            status: status.as_u16(),
            body: Some(body),
            attempts,
            cut: false,
        }),
        Err(_) => Err(AnalyticsError::NotJson {
            url: url.to_string(),
            status: status.as_u16(),
            excerpt: excerpt(text),
        }),
    }
}

/// The server's own words: `summary`, `error` or `message` of a JSON body, else the body's start.
fn server_message(text: &str) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(text) {
        for key in ["summary", "error", "message"] {
            if let Some(s) = v.get(key).and_then(|s| s.as_str()) {
                return excerpt(s);
            }
        }
    }
    excerpt(text)
}

/// The first few hundred bytes of untrusted text, on one line.
fn excerpt(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let (kept, cut) = cap(&one_line, QUOTE_BYTES);
    if cut {
        format!("{kept}...")
    } else {
        kept.to_string()
    }
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

/// The innermost cause of an error (e.g. "Connection refused (os error 111)").
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// Why the server's certificate was refused, when that is what failed: found in the cause
/// chain, where the TLS error sits inside nested `io::Error`s (whose `source` skips the error
/// they wrap, so they are opened with `get_ref`).
fn untrusted_certificate(e: &reqwest::Error) -> Option<String> {
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

/// An error and its causes on one line (reqwest hides the useful part in the source chain).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str, prefix: &str) -> Client {
        Client::new(Config {
            server: parse_server(server).unwrap(),
            api_prefix: prefix.into(),
            token: None,
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            attempts: 1,
        })
        .unwrap()
    }

    #[test]
    fn keeps_the_server_path() {
        assert_eq!(
            client("http://h:5000/some/path?x=1", "/api/v1")
                .endpoint("register")
                .as_str(),
            "http://h:5000/some/path/api/v1/register"
        );
        assert_eq!(
            client("https://h/", "api/v1/")
                .endpoint("scanner-error")
                .as_str(),
            "https://h/api/v1/scanner-error"
        );
        assert_eq!(
            client("http://h", "").endpoint("register").as_str(),
            "http://h/register"
        );
    }

    #[test]
    fn refuses_urls_without_scheme() {
        assert!(parse_server("localhost:5000").is_err());
        assert!(parse_server("ftp://h").is_err());
    }

    #[test]
    fn quotes_the_server() {
        assert_eq!(
            server_message(r#"{"error": "Authentication failed - token missing"}"#),
            "Authentication failed - token missing"
        );
        assert_eq!(
            server_message("<html>\n oops </html>"),
            "<html> oops </html>"
        );
    }

    #[test]
    fn redacts_credentials() {
        assert_eq!(
            redacted(&parse_server("https://u:p@h/x/").unwrap()),
            "https://h/x"
        );
    }
}
