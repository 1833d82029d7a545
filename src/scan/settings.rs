//! The scanner's settings: flags and `IMAGETRAIL_*` variables first, then the legacy variables
//! that atomic's `custom_args` pass (`SERVER`, `IMAGE_NAME`, `SERVER_TOKEN`, `ENVIRONMENT`).
//! atomic passes a variable the operator did not set as an empty one, so empty means "not given".

use std::time::Duration;

use url::Url;

use crate::analytics;
use crate::cli::{Format, ScanOpts, ScanType};
use crate::error::Error;

/// Everything a scan needs to know, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    /// What to do with each target.
    pub scan_type: ScanType,
    /// The analytics (or tracking) server, when one is given.
    pub server: Option<Url>,
    /// The API prefix, e.g. `/api/v1`.
    pub api_prefix: String,
    /// The Bearer token, when one is given.
    pub token: Option<String>,
    /// The image named in payloads and used for `--rootfs` targets or an empty `/scanin`.
    pub image_name: Option<String>,
    /// The environment a `deploy` scan records into.
    pub environment: String,
    /// The engine endpoint given with `--host`.
    pub host: Option<String>,
    /// stdout format.
    pub format: Format,
    /// Exit code when a target failed (0 = exit 0).
    pub exit_code: u8,
    /// Connect timeout for the server.
    pub connect_timeout: Duration,
    /// Whole-request timeout for the server.
    pub timeout: Duration,
    /// Attempts per server call.
    pub attempts: u32,
    /// Targets processed at once.
    pub concurrency: usize,
}

/// A variable of the process environment; empty or unset = `None`.
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn given(value: &Option<String>) -> Option<String> {
    value.clone().filter(|v| !v.trim().is_empty())
}

fn seconds(name: &str, value: f64) -> Result<Duration, Error> {
    if value.is_finite() && value > 0.0 && value < 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(Error::Usage(format!(
            "--{name} {value} is not a usable number of seconds; give a positive number such as 5"
        )))
    }
}

impl Settings {
    /// Resolve the options of `scan`, `register` or `verify`.
    pub fn resolve(opts: &ScanOpts, scan_type: ScanType) -> Result<Settings, Error> {
        let server = match given(&opts.server).or_else(|| env_var("SERVER")) {
            Some(text) => {
                Some(analytics::parse_server(&text).map_err(|e| Error::Usage(e.to_string()))?)
            }
            None => None,
        };
        let token = match &opts.token_file {
            Some(path) if !path.as_os_str().is_empty() => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    Error::Usage(format!(
                        "cannot read the token file {}: {e}; give a readable file holding the server's token",
                        path.display()
                    ))
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(Error::Usage(format!(
                        "the token file {} is empty; put the server's token in it",
                        path.display()
                    )));
                }
                Some(token)
            }
            _ => env_var("SERVER_TOKEN").map(|t| t.trim().to_string()),
        };
        if token.as_deref().is_some_and(|t| t.contains(['\r', '\n'])) {
            return Err(Error::Usage(
                "the server token holds a line break; give the token alone".into(),
            ));
        }
        if token.is_some()
            && let Some(url) = &server
            && (!url.username().is_empty() || url.password().is_some())
        {
            tracing::warn!(
                "SERVER carries a user name or password and a token is given too; only the token is sent (Authorization: Bearer), not the URL's credentials"
            );
        }
        let concurrency = if opts.concurrency == 0 {
            return Err(Error::Usage(
                "--concurrency 0 would process nothing; give 1 or more".into(),
            ));
        } else {
            opts.concurrency.min(256)
        };
        if opts.attempts == 0 {
            return Err(Error::Usage("--attempts must be 1 or more".into()));
        }
        Ok(Settings {
            scan_type,
            server,
            api_prefix: opts.api_prefix.clone(),
            token,
            image_name: given(&opts.image_name)
                .or_else(|| env_var("IMAGE_NAME"))
                .map(|s| s.trim().to_string()),
            environment: given(&opts.environment)
                .or_else(|| env_var("ENVIRONMENT"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|| "deployed".to_string()),
            host: given(&opts.host),
            format: opts.format,
            exit_code: opts.exit_code,
            connect_timeout: seconds("connect-timeout", opts.connect_timeout)?,
            timeout: seconds("timeout", opts.timeout)?,
            attempts: opts.attempts.min(10),
            concurrency,
        })
    }

    /// The client for the server, when one is given.
    pub fn client(&self) -> Result<Option<analytics::Client>, analytics::AnalyticsError> {
        let Some(server) = &self.server else {
            return Ok(None);
        };
        analytics::Client::new(analytics::Config {
            server: server.clone(),
            api_prefix: self.api_prefix.clone(),
            token: self.token.clone(),
            connect_timeout: self.connect_timeout,
            timeout: self.timeout,
            attempts: self.attempts,
        })
        .map(Some)
    }
}
