//! The Atomist-compatible deployment-tracking body, and the client that sends it.
//!
//! [`DeploymentBody`] is the one shape of `POST /api/v1/deployments`: `imagetrail deploy
//! --endpoint` and the scanner's `deploy` scan build it, and `imagetrail serve` parses it.
//!
//! [`Notifier`] is what `imagetrail deploy --endpoint` sends it with: one HTTP client for every
//! endpoint, connection errors, 408, 429 and 5xx retried with exponential backoff and full
//! jitter (a `Retry-After` is honoured, up to [`MAX_WAIT`]), and one `Idempotency-Key` per
//! deployment, the same on every attempt, so a retry whose first attempt was recorded but not
//! answered is not recorded twice.

use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde::{Deserialize, Serialize};

use crate::records::Deployment;
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
/// The first backoff; each later one doubles, with full jitter.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between two attempts, also for a `Retry-After`.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Sends deployments to tracking endpoints: one client for all of them.
pub struct Notifier {
    http: reqwest::Client,
    api_key: Option<String>,
    attempts: u32,
    first_backoff: Duration,
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
            first_backoff: FIRST_BACKOFF,
        })
    }

    /// Send `body` to `endpoint` under `idempotency_key` (the same on every attempt), retrying
    /// what a retry can fix; the status of the accepting answer.
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
            if let Some(key) = &self.api_key {
                req = req.header(AUTHORIZATION, format!("Bearer {key}"));
            }
            let last = attempt >= self.attempts;
            let hint = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    if status.is_success() {
                        return Ok(status.as_u16());
                    }
                    let hint = retry_after(resp.headers());
                    let said = said(resp.text().await.unwrap_or_default());
                    if !retryable(status) || last {
                        return Err(TrackingError::Refused {
                            status,
                            attempts: attempt,
                            said,
                        });
                    }
                    tracing::info!(%url, attempt, %status, "retrying the deployment: {said}");
                    hint
                }
                Err(e) => {
                    let cause = format!("{e}");
                    if last {
                        return Err(TrackingError::Unreachable {
                            attempts: attempt,
                            cause,
                        });
                    }
                    tracing::info!(%url, attempt, "retrying the deployment: {cause}");
                    None
                }
            };
            tokio::time::sleep(self.wait(attempt, hint)).await;
        }
    }

    /// The wait after failed attempt `attempt` (1-based): the server's `Retry-After` if it gave
    /// one, else full jitter over an exponential backoff; never more than [`MAX_WAIT`].
    fn wait(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        if let Some(hint) = hint {
            return hint.min(MAX_WAIT);
        }
        let ceiling = self
            .first_backoff
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(MAX_WAIT);
        // Full jitter: uniform in [ceiling/2, ceiling], so concurrent clients spread out but
        // never retry at once. The random bits come from a v4 UUID (no extra crate).
        let random = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        ceiling.mul_f64(0.5 + random / 2.0)
    }
}

/// 408, 429 and 5xx: a later attempt may succeed.
fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(MAX_WAIT.as_secs())));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// What an error answer says, for one line of stderr.
fn said(body: String) -> String {
    let text = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| {
            ["summary", "error", "message"]
                .iter()
                .find_map(|k| v.get(*k).and_then(|s| s.as_str()).map(str::to_string))
        })
        .unwrap_or(body);
    let (text, _) = crate::terminal::cap(text.trim(), 500);
    sanitize(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_bounded() {
        let n = Notifier::new(None).unwrap();
        for attempt in 1..40 {
            let w = n.wait(attempt, None);
            assert!(w <= MAX_WAIT, "{attempt}: {w:?}");
            assert!(w >= FIRST_BACKOFF / 2, "{attempt}: {w:?}");
        }
        assert_eq!(
            n.wait(1, Some(Duration::from_secs(3600))),
            MAX_WAIT,
            "a Retry-After is capped"
        );
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
