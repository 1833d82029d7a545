//! Authorising registry requests: anonymous first; on `401`, Basic credentials or a Bearer
//! token fetched from the realm the `WWW-Authenticate` challenge names (the distribution token
//! protocol, with the OAuth2 refresh-token flow for identity tokens), cached per scope.

use std::collections::HashMap;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::credentials::Credential;
use super::{Client, RegistryError};

impl Client {
    /// Send a request with auth: anonymous first; on 401, Basic or a Bearer token as the
    /// `WWW-Authenticate` challenge asks, then once more. `scope` (`repository:NAME:pull`,
    /// ...) keys the cached authorization and names the access in errors.
    pub(super) async fn send(
        &self,
        registry: &str,
        method: Method,
        url: &str,
        accept: Option<&str>,
        scope: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let scope_key = (registry.to_string(), scope.to_string());
        let build = |auth: Option<String>| {
            let mut rb = self.http.request(method.clone(), url);
            if let Some(a) = accept {
                rb = rb.header(ACCEPT, a);
            }
            if let Some(a) = auth {
                rb = rb.header(AUTHORIZATION, a);
            }
            rb
        };
        let cached = self.tokens.lock().unwrap().get(&scope_key).cloned();
        let resp = self.exec(registry, build(cached.clone())).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return self.check_auth(registry, resp, scope);
        }
        let challenge = resp
            .headers()
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let cred = self.credential(registry);
        let auth = if challenge.to_ascii_lowercase().starts_with("bearer") {
            Some(
                self.token(registry, &challenge, cred.as_ref(), scope)
                    .await?,
            )
        } else {
            match &cred {
                Some(Credential::Basic(u, p)) => Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                )),
                Some(Credential::IdentityToken(t)) => Some(format!("Bearer {t}")),
                None => None,
            }
        };
        let Some(auth) = auth else {
            return self.check_auth(registry, resp, scope);
        };
        self.tokens.lock().unwrap().insert(scope_key, auth.clone());
        let resp = self.exec(registry, build(Some(auth))).await?;
        self.check_auth(registry, resp, scope)
    }

    fn check_auth(
        &self,
        registry: &str,
        resp: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        if matches!(resp.status().as_u16(), 401 | 403) {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                status: resp.status().as_u16(),
                what: what.to_string(),
                config: self.config_path().display().to_string(),
            });
        }
        Ok(resp)
    }

    /// Fetch a Bearer token for a `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
    /// challenge, with Basic credentials when we have them.
    async fn token(
        &self,
        registry: &str,
        challenge: &str,
        cred: Option<&Credential>,
        what: &str,
    ) -> Result<String, RegistryError> {
        let params = parse_challenge(challenge);
        let realm = params.get("realm").ok_or_else(|| RegistryError::Failed {
            registry: registry.into(),
            what: what.into(),
            detail: format!("a Bearer challenge without realm: {challenge}"),
        })?;
        let mut url = url::Url::parse(realm).map_err(|e| RegistryError::Failed {
            registry: registry.into(),
            what: what.into(),
            detail: format!("bad token realm {realm:?}: {e}"),
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            if let Some(s) = params.get("scope") {
                q.append_pair("scope", s);
            }
        }
        let mut rb = self.http.get(url.as_str());
        match cred {
            Some(Credential::Basic(u, p)) => rb = rb.basic_auth(u, Some(p)),
            Some(Credential::IdentityToken(t)) => {
                // OAuth2 refresh-token flow for identity tokens.
                rb = self.http.post(url.as_str()).form_like(&[
                    ("grant_type", "refresh_token"),
                    ("refresh_token", t),
                    ("service", params.get("service").map_or("", |s| s)),
                    ("scope", params.get("scope").map_or("", |s| s)),
                    ("client_id", "imagetrail"),
                ]);
            }
            None => {}
        }
        let resp = self.exec(registry, rb).await?;
        if !resp.status().is_success() {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                status: resp.status().as_u16(),
                what: format!("a token for {what}"),
                config: self.config_path().display().to_string(),
            });
        }
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = resp.json().await.map_err(|e| RegistryError::Failed {
            registry: registry.into(),
            what: format!("a token for {what}"),
            detail: e.to_string(),
        })?;
        t.token
            .or(t.access_token)
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| RegistryError::Failed {
                registry: registry.into(),
                what: format!("a token for {what}"),
                detail: "the token answer has neither token nor access_token".into(),
            })
    }
}

/// Form-encoded body without reqwest's `form` feature.
trait FormLike {
    fn form_like(self, pairs: &[(&str, &str)]) -> Self;
}

impl FormLike for reqwest::RequestBuilder {
    fn form_like(self, pairs: &[(&str, &str)]) -> Self {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        self.header("content-type", "application/x-www-form-urlencoded")
            .body(body)
    }
}

/// `Bearer realm="x",service="y",scope="z"` → map.
fn parse_challenge(c: &str) -> HashMap<String, String> {
    let rest = c.split_once(' ').map_or("", |(_, r)| r);
    let mut out = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        let key: String = chars
            .by_ref()
            .skip_while(|c| *c == ',' || c.is_whitespace())
            .take_while(|c| *c != '=')
            .collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            for c in chars.by_ref() {
                if c == '"' {
                    break;
                }
                value.push(c);
            }
        } else {
            for c in chars.by_ref() {
                if c == ',' {
                    break;
                }
                value.push(c);
            }
        }
        out.insert(key.trim().to_ascii_lowercase(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let m = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(m["realm"], "https://auth.example/token");
        assert_eq!(m["service"], "reg");
        assert_eq!(m["scope"], "repository:a/b:pull,push");
    }
}
