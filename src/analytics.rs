//! The analytics server client: the register and scanner-error calls (and the tracking API's
//! deployments call for the `deploy` scan type), with timeouts, bounded retries and idempotency.
//!
//! Every call is `POST <server path><api prefix>/<name>` with exactly
//! `Content-Type: application/json` (the real server compares the string), a
//! `User-Agent: imagetrail/<version>`, `Authorization: Bearer` when a token is given, and an
//! `Idempotency-Key` that stays the same across the retries of one call.

use std::time::Duration;

use reqwest::StatusCode;
use thiserror::Error;
use url::Url;

use crate::error::{error_chain, root_cause};
use crate::retry_post::{self, Failure, server_words, untrusted_certificate};
use crate::terminal::cap;

pub use crate::retry_post::{MAX_ANSWER_BYTES, redacted};

/// The most bytes of a server's answer quoted in a message.
const QUOTE_BYTES: usize = 300;

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
    /// jitter (honouring `Retry-After`), every attempt with the same `Idempotency-Key`
    /// ([`retry_post`] says what is retried and how long it waits).
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
        let request = retry_post::Request {
            url: &url,
            body: &bytes,
            idempotency_key,
            bearer: self.config.token.as_deref(),
            attempts: self.config.attempts,
        };
        match retry_post::post(&self.http, request).await {
            Ok(answer) if answer.cut => Ok(Answer {
                status: answer.status.as_u16(),
                body: None,
                attempts: answer.attempts,
                cut: true,
            }),
            Ok(answer) => parse_success(&shown, answer.status, &answer.text, answer.attempts),
            Err(Failure::NoAnswer { error, attempts }) => Err(AnalyticsError::Unreachable {
                url: shown,
                attempts,
                reason: self.no_answer(&error),
            }),
            Err(Failure::Unreadable {
                status,
                error,
                attempts,
            }) => Err(AnalyticsError::Unreachable {
                url: shown,
                attempts,
                reason: format!(
                    "the answer ({status}) could not be read: {}",
                    error_chain(&error)
                ),
            }),
            Err(Failure::Refused(answer)) => Err(AnalyticsError::Rejected {
                url: shown,
                status: answer.status.as_u16(),
                message: if answer.cut {
                    format!(
                        "{} (the answer was longer than {} KiB and was cut there)",
                        server_message(&answer.text),
                        MAX_ANSWER_BYTES / 1024
                    )
                } else {
                    server_message(&answer.text)
                },
                attempts: answer.attempts,
            }),
        }
    }

    /// Why no answer came, worded for the operator who must fix it.
    fn no_answer(&self, e: &reqwest::Error) -> String {
        if let Some(problem) = untrusted_certificate(e) {
            format!(
                "the server's TLS certificate is not trusted ({problem}); if an internal CA \
                 signed it, set SSL_CERT_FILE to that CA's certificate (PEM)"
            )
        } else if e.is_timeout() {
            format!(
                "no answer within {} s (timeout; raise --timeout or check the server)",
                self.config.timeout.as_secs_f64()
            )
        } else if e.is_connect() {
            // reqwest's own text repeats the URL; the root cause is what helps.
            format!("cannot connect: {}", root_cause(e))
        } else {
            error_chain(e)
        }
    }
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

/// The server's own words ([`server_words`]), else the body's start.
fn server_message(text: &str) -> String {
    match server_words(text) {
        Some(words) => excerpt(&words),
        None => excerpt(text),
    }
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
