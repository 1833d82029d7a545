//! Bearer API keys. The keys file holds one key per line, optionally preceded by a label
//! (`ci-prod  3f9a...`), which becomes `deployed_by` when the body does not say who deployed;
//! blank lines and `#` comments are ignored. Only SHA-256 hashes of the keys stay in memory, and
//! a presented key is compared by hash, so the comparison time says nothing about a real key.

use std::path::Path;

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// The keys the server accepts.
#[derive(Clone)]
pub struct ApiKeys {
    keys: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, not even hashes.
        write!(f, "ApiKeys({} keys)", self.keys.len())
    }
}

impl ApiKeys {
    /// Read a keys file. An unreadable file or one without any key is an error: a server
    /// started with a keys file that accepts nothing is a configuration mistake.
    pub fn load(path: &Path) -> anyhow::Result<ApiKeys> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the API keys file {}; give a readable file with one key per line",
                path.display()
            )
        })?;
        let keys = ApiKeys::parse(&text);
        if keys.keys.is_empty() {
            anyhow::bail!(
                "the API keys file {} holds no key; write one key per line (optionally `label key`)",
                path.display()
            );
        }
        Ok(keys)
    }

    /// Parse the keys file's text.
    pub fn parse(text: &str) -> ApiKeys {
        let keys = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|line| {
                let mut parts = line.split_whitespace();
                let first = parts.next().unwrap_or_default();
                match parts.next() {
                    Some(key) => (first.to_string(), hash(key)),
                    None => ("api-key".to_string(), hash(first)),
                }
            })
            .collect();
        ApiKeys { keys }
    }

    /// The label of the key the request presents, or a 401 that says what is missing.
    pub fn check(&self, headers: &HeaderMap) -> Result<&str, ApiError> {
        let token = bearer(headers)?;
        let presented = hash(token);
        self.keys
            .iter()
            .find(|(_, h)| *h == presented)
            .map(|(label, _)| label.as_str())
            .ok_or_else(|| {
                unauthorized("the API key is not valid for this server; check the key you send")
            })
    }
}

/// The label of the key a request was let in with, for its handler (`deployed_by`'s default).
#[derive(Debug, Clone)]
pub struct KeyLabel(pub String);

/// The middleware of every endpoint that takes a key: check `Authorization` from the headers
/// alone, before a byte of the body is read (an unauthenticated client cannot make the server
/// hold its body), and answer a missing or wrong key with the same 401 everywhere.
pub async fn required(
    State(state): State<Arc<super::AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    match require(state.config.api_keys.as_ref(), req.headers()) {
        Ok(label) => {
            req.extensions_mut().insert(KeyLabel(label));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// [`required`] for the analytics callbacks, which take a key only with
/// `--callbacks-require-key`.
pub async fn for_callbacks(
    State(state): State<Arc<super::AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if state.config.callbacks_require_key {
        required(State(state), req, next).await
    } else {
        next.run(req).await
    }
}

/// Check the request against `keys`; `None` (no keys configured) refuses every request.
pub fn require(keys: Option<&ApiKeys>, headers: &HeaderMap) -> Result<String, ApiError> {
    match keys {
        Some(keys) => keys.check(headers).map(str::to_string),
        None => Err(unauthorized(
            "this server has no API keys configured, so it accepts no writes; start it with --api-keys-file",
        )),
    }
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing API key; send Authorization: Bearer <api-key>"))?;
    let value = value
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    // Atomist's own docs write the scheme in lower case (`bearer`): accept any case.
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(unauthorized(
            "the Authorization header is not `Bearer <api-key>`",
        )),
    }
}

fn unauthorized(summary: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", summary)
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}
