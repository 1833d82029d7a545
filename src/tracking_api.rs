//! The Atomist-compatible deployment-tracking body, and the client that sends it.
//!
//! [`DeploymentBody`] is the one shape of `POST /api/v1/deployments`: `imagetrail deploy
//! --endpoint` and the scanner's `deploy` scan build it, and `imagetrail serve` parses it.
//!
//! [`Notifier`] is what `imagetrail deploy --endpoint` sends it with: one HTTP client for every
//! endpoint, connection errors, 408, 429 and 5xx retried up to [`ATTEMPTS`] times with
//! exponential backoff and jitter (a `Retry-After` is honoured, up to [`MAX_WAIT`]; the loop is
//! [`crate::retry_post`]'s, shared with the scanner's analytics client), and one
//! `Idempotency-Key` per deployment, the same on every attempt, so a retry whose first attempt
//! was recorded but not answered is not recorded twice.

use std::time::Duration;

use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use crate::records::Deployment;
use crate::retry_post::{self, Failure, server_words};
use crate::terminal::sanitize;

/// `POST /api/v1/deployments`:
///
/// ```json
/// {"image": {"url": "host/repo@sha256:...", "name": "optional"},
///  "environment": {"name": "deployed"},
///  "platform": {"os": "linux", "architecture": "amd64", "variant": null},
///  "deployed_by": "optional"}
/// ```
///
/// Every field is optional in the type, so the server answers a missing one with a message
/// that names it rather than serde's; unknown fields are ignored (Atomist's body may carry more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentBody {
    /// The image that runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageBody>,
    /// The environment (default `deployed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentBody>,
    /// The platform of the image that runs (default `linux/amd64`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<PlatformBody>,
    /// Who deployed (an imagetrail extension; default: the API key's label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed_by: Option<String>,
}

/// `image` of [`DeploymentBody`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageBody {
    /// `host/repo@sha256:<digest>`: the image pinned by digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The instance name, unique per repository per environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `environment` of [`DeploymentBody`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvironmentBody {
    /// The environment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `platform` of [`DeploymentBody`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformBody {
    /// e.g. `linux`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// e.g. `amd64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// e.g. `v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl DeploymentBody {
    /// The body for `url` (pinned by digest) deployed into `environment`.
    pub fn new(url: String, environment: String) -> DeploymentBody {
        DeploymentBody {
            image: Some(ImageBody {
                url: Some(url),
                name: None,
            }),
            environment: Some(EnvironmentBody {
                name: Some(environment),
            }),
            platform: None,
            deployed_by: None,
        }
    }

    /// The same body with its platform.
    pub fn with_platform(
        mut self,
        os: String,
        architecture: String,
        variant: Option<String>,
    ) -> DeploymentBody {
        self.platform = Some(PlatformBody {
            os: Some(os),
            architecture: Some(architecture),
            variant: variant.filter(|v| !v.is_empty()),
        });
        self
    }

    /// The body that tells a tracking endpoint about a recorded deployment: the digest that
    /// runs, its platform, the environment and the optional name.
    pub fn of(d: &Deployment) -> DeploymentBody {
        let mut body = DeploymentBody::new(
            format!("{}@{}", d.image.repo, d.image.digest),
            d.deployment.workspace.clone(),
        )
        .with_platform(
            d.image.platform.os.clone(),
            d.image.platform.architecture.clone(),
            d.image.platform.variant.clone(),
        );
        if let Some(image) = &mut body.image {
            image.name = d.deployment.name.clone();
        }
        body
    }
}

/// Why a deployment could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum TrackingError {
    /// The endpoint is not a usable URL.
    #[error(
        "{0:?} is not an http(s) URL; give e.g. https://tracking.example.com/api/v1/deployments"
    )]
    BadEndpoint(String),
    /// The endpoint answered with an error that a retry cannot change (or every attempt failed
    /// with a retryable one).
    #[error("HTTP {status}: {said}{}", after(*attempts))]
    Refused {
        /// The last status.
        status: StatusCode,
        /// How many attempts were made.
        attempts: u32,
        /// What the endpoint said (`summary`, `error` or `message` of a JSON answer, else the
        /// text), sanitised and cut.
        said: String,
    },
    /// No answer at all on any attempt.
    #[error("no answer after {attempts} attempt(s): {cause}")]
    Unreachable {
        /// How many attempts were made.
        attempts: u32,
        /// The last transport error.
        cause: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
}

/// " (after N attempts)" when there was more than one.
fn after(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

/// How many times one deployment is sent at most.
pub const ATTEMPTS: u32 = 5;
/// The first backoff and the longest wait between two attempts: the shared retry loop's.
pub use crate::retry_post::{FIRST_BACKOFF, MAX_WAIT};

/// Sends deployments to tracking endpoints: one client for all of them.
pub struct Notifier {
    http: reqwest::Client,
    api_key: Option<String>,
    attempts: u32,
}

impl Notifier {
    /// A notifier that sends `api_key` (if any) as `Authorization: Bearer`.
    pub fn new(api_key: Option<String>) -> Result<Notifier, TrackingError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("imagetrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TrackingError::Client(e.to_string()))?;
        Ok(Notifier {
            http,
            api_key: api_key.filter(|k| !k.is_empty()),
            attempts: ATTEMPTS,
        })
    }

    /// Send `body` to `endpoint` under `idempotency_key` (the same on every attempt), retrying
    /// what a retry can fix ([`retry_post`]); the status of the accepting answer.
    pub async fn send(
        &self,
        endpoint: &str,
        body: &DeploymentBody,
        idempotency_key: &str,
    ) -> Result<u16, TrackingError> {
        let url = reqwest::Url::parse(endpoint)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| TrackingError::BadEndpoint(sanitize(endpoint)))?;
        // A body of owned strings always serialises.
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let request = retry_post::Request {
            url: &url,
            body: &bytes,
            idempotency_key,
            bearer: self.api_key.as_deref(),
            attempts: self.attempts,
        };
        match retry_post::post(&self.http, request).await {
            Ok(answer) => Ok(answer.status.as_u16()),
            Err(Failure::Refused(answer)) => Err(TrackingError::Refused {
                status: answer.status,
                attempts: answer.attempts,
                said: said(answer.text),
            }),
            Err(Failure::Unreadable {
                status, attempts, ..
            }) => Err(TrackingError::Refused {
                status,
                attempts,
                said: said(String::new()),
            }),
            Err(Failure::NoAnswer { error, attempts }) => Err(TrackingError::Unreachable {
                attempts,
                cause: error.to_string(),
            }),
        }
    }
}

/// What an error answer says, for one line of stderr.
fn said(body: String) -> String {
    let text = server_words(&body).unwrap_or(body);
    let (text, _) = crate::terminal::cap(text.trim(), 500);
    sanitize(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loopback endpoint answering every request with `answer` (a whole HTTP response);
    /// its URL and each request's `Idempotency-Key`, in order.
    async fn endpoint(
        answer: &'static str,
    ) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/v1/deployments",
            listener.local_addr().unwrap()
        );
        let keys = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = keys.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                // The whole request: headers, then Content-Length bytes of body.
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    let n = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                let length: usize = header("content-length:").unwrap().parse().unwrap();
                while buf.len() < head_end + length {
                    let n = stream.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                seen.lock()
                    .unwrap()
                    .push(header("idempotency-key:").unwrap_or_default());
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        (url, keys)
    }

    #[tokio::test]
    async fn retries_5xx_with_one_key_and_quotes_the_last_answer() {
        let (url, keys) = endpoint(
            "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 0\r\nContent-Type: application/json\r\nContent-Length: 25\r\nConnection: close\r\n\r\n{\"summary\":\"maintenance\"}",
        )
        .await;
        let body = DeploymentBody::new("r.example/a@sha256:00".into(), "prod".into());
        let err = Notifier::new(None)
            .unwrap()
            .send(&url, &body, "key-1")
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "HTTP 503 Service Unavailable: maintenance (after 5 attempts)"
        );
        assert_eq!(*keys.lock().unwrap(), vec!["key-1"; ATTEMPTS as usize]);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried() {
        let (url, keys) = endpoint(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"error\":\"invalid api key\"}",
        )
        .await;
        let body = DeploymentBody::new("r.example/a@sha256:00".into(), "prod".into());
        let err = Notifier::new(Some("k".into()))
            .unwrap()
            .send(&url, &body, "key-2")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "HTTP 401 Unauthorized: invalid api key");
        assert_eq!(keys.lock().unwrap().len(), 1);
    }

    #[test]
    fn the_body_reads_back_as_written() {
        let body = DeploymentBody::new("r.example/a@sha256:00".into(), "prod".into())
            .with_platform("linux".into(), "arm64".into(), Some("v8".into()));
        let text = serde_json::to_string(&body).unwrap();
        assert_eq!(
            text,
            r#"{"image":{"url":"r.example/a@sha256:00"},"environment":{"name":"prod"},"platform":{"os":"linux","architecture":"arm64","variant":"v8"}}"#
        );
        assert_eq!(serde_json::from_str::<DeploymentBody>(&text).unwrap(), body);
    }
}
