//! The OCI distribution client: resolve a reference to digests, read manifests and config blobs,
//! list the catalog and tags, delete manifests. Credentials from `~/.docker/config.json`
//! (`auths`, `credsStore`, `credHelpers`), anonymous, basic and token auth.
//!
//! Hand-rolled on reqwest because the surface is small (HEAD/GET manifest, GET blob, tags,
//! catalog, DELETE) and the behaviour of the registries we meet is specific: HEAD without the
//! full `Accept` list answers 404 for OCI manifests, some registries leave out
//! `Docker-Content-Digest` (so GET and hash), `tags/list` comes back unsorted and may ignore
//! `n`, and pagination follows the `Link` header.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, LINK, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::records::Platform;

/// Every manifest type understood; sent on every manifest request (a narrower list makes
/// distribution answer 404 for OCI manifests and indexes).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// What can go wrong talking to a registry.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The registry could not be reached.
    #[error(
        "cannot reach registry {registry}: {reason}; check that it runs and the address is right \
         (plain HTTP is used only for loopback or --insecure-registry)"
    )]
    Unreachable {
        /// The registry host.
        registry: String,
        /// Why it failed.
        reason: String,
    },
    /// The registry did not connect or answer in time.
    #[error(
        "registry {registry}: no {stage} within {seconds} s (the {kind} timeout); check that it \
         runs and answers, or allow longer with {flag}"
    )]
    TimedOut {
        /// The registry host.
        registry: String,
        /// "connection" or "answer".
        stage: &'static str,
        /// "connect" or "read".
        kind: &'static str,
        /// The timeout that ran out, in seconds.
        seconds: f64,
        /// The flag and variable that set it.
        flag: &'static str,
    },
    /// The reference cannot be understood.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference {
        /// What was given.
        reference: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry refused our credentials (or we had none).
    #[error(
        "registry {registry} answered {status} for {what}: log in with `docker login {registry}` \
         or put credentials for it in the Docker config ({config})"
    )]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// 401 or 403.
        status: u16,
        /// The request.
        what: String,
        /// The Docker config file consulted.
        config: String,
    },
    /// The tag or digest does not exist in the repository.
    #[error(
        "{reference} is not in the registry ({detail}); check the tag or digest, or push the image first"
    )]
    ManifestUnknown {
        /// The full reference.
        reference: String,
        /// What the registry said.
        detail: String,
    },
    /// The index has no manifest for the platform asked for.
    #[error(
        "{reference} is a multi-platform index without {platform}; it has: {available}; choose one with --platform"
    )]
    NoPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms it has.
        available: String,
    },
    /// Any other unexpected answer.
    #[error("registry {registry}: {what} failed: {detail}")]
    Failed {
        /// The registry host.
        registry: String,
        /// The request.
        what: String,
        /// Status and body, or the parse error.
        detail: String,
    },
}

/// A parsed image reference: `host[:port]/path[:tag][@sha256:...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// Registry host and port, e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `team/hello`.
    pub path: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The digest, when given.
    pub digest: Option<String>,
}

impl Reference {
    /// The token scope asking for `action` (`pull`, `delete`) on this repository:
    /// `repository:PATH:ACTION`.
    fn scope(&self, action: &str) -> String {
        format!("repository:{}:{action}", self.path)
    }

    /// Parse a reference. A first component with a `.` or `:` or `localhost` is the registry;
    /// otherwise it is Docker Hub (`docker.io`, `library/` for single names).
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            reference: s.to_string(),
            reason: reason.to_string(),
        };
        let s = s.trim();
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| bad("the digest must be sha256:<64 hex>"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                {
                    return Err(bad("the digest must be sha256:<64 lower-case hex>"));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => {
                (&rest[..i], Some(rest[i + 1..].to_string()))
            }
            _ => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad(
                    "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
                ));
            }
        }
        let (registry, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if name.contains('/') => ("docker.io".to_string(), name.to_string()),
            _ => ("docker.io".to_string(), format!("library/{name}")),
        };
        let path_ok = !path.is_empty()
            && path.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !path_ok {
            return Err(bad(
                "the repository path must be lower-case components of [a-z0-9._-] separated by /",
            ));
        }
        Ok(Reference {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// `registry/path`, the repository as records store it.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// The tag or digest the registry is asked for (digest wins; default tag `latest`).
    pub fn manifest_ref(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.repo())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Parse `os/arch[/variant]`.
pub fn parse_platform(s: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: None,
        }),
        [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: Some(v.to_string()),
        }),
        _ => Err(format!(
            "invalid platform {s:?}: use os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm64/v8"
        )),
    }
}

/// `os/arch[/variant]`.
pub fn platform_string(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Its digest (sha256 of the bytes).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// The raw bytes.
    pub bytes: Vec<u8>,
}

impl Manifest {
    /// Whether it is an index / manifest list.
    pub fn is_index(&self) -> bool {
        INDEX_TYPES.contains(&self.media_type.as_str())
            || self.json::<IndexJson>().is_ok_and(|j| {
                j.manifests.is_some()
                    && j.media_type
                        .as_deref()
                        .is_none_or(|m| INDEX_TYPES.contains(&m))
            })
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.bytes)
    }

    /// The children of an index (digest, platform), in order.
    pub fn children(&self) -> Vec<(String, Option<Platform>)> {
        self.json::<IndexJson>()
            .ok()
            .and_then(|j| j.manifests)
            .unwrap_or_default()
            .into_iter()
            .map(|m| {
                (
                    m.digest,
                    m.platform.map(|p| Platform {
                        os: p.os,
                        architecture: p.architecture,
                        variant: p.variant,
                    }),
                )
            })
            .collect()
    }

    /// The config blob digest of an image manifest.
    pub fn config_digest(&self) -> Option<String> {
        self.json::<ImageManifestJson>()
            .ok()
            .map(|m| m.config.digest)
    }

    /// The manifest's annotations (OCI `annotations`).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.json::<ImageManifestJson>()
            .ok()
            .and_then(|m| m.annotations)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Deserialize)]
struct IndexEntry {
    digest: String,
    platform: Option<PlatformJson>,
}

#[derive(Deserialize)]
struct PlatformJson {
    os: String,
    architecture: String,
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ImageManifestJson {
    config: Descriptor,
    annotations: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
}

/// The parts of an image config blob we read.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    /// The config's `created` time.
    pub created: Option<String>,
    /// `config.Labels`.
    #[serde(default)]
    pub config: ConfigSection,
    /// `os`.
    pub os: Option<String>,
    /// `architecture`.
    pub architecture: Option<String>,
    /// `variant`.
    pub variant: Option<String>,
}

/// `config` inside the config blob.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigSection {
    /// Labels (`LABEL` in a Dockerfile).
    #[serde(rename = "Labels", default)]
    pub labels: Option<HashMap<String, String>>,
}

impl ImageConfig {
    /// The labels, with the manifest's annotations filling in keys the labels lack.
    pub fn labels(&self) -> HashMap<String, String> {
        self.config.labels.clone().unwrap_or_default()
    }
}

/// A reference resolved to what runs.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The reference as given.
    pub reference: Reference,
    /// The platform manifest's digest (what runs).
    pub digest: String,
    /// The index digest when the reference pointed at an index.
    pub index_digest: Option<String>,
    /// The platform chosen (or the image's own).
    pub platform: Platform,
    /// The image config.
    pub config: ImageConfig,
    /// Labels merged with manifest annotations (labels win).
    pub labels: HashMap<String, String>,
}

/// How the client reaches registries.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// Hosts reached over plain HTTP although not on loopback.
    pub insecure: Vec<String>,
    /// Docker config with credentials (default `$DOCKER_CONFIG/config.json` or
    /// `~/.docker/config.json`).
    pub docker_config: Option<PathBuf>,
    /// How long to wait for a connection (default [`CONNECT_TIMEOUT`]).
    pub connect_timeout: Option<Duration>,
    /// How long to wait for each read of an answer, its first byte included (default
    /// [`READ_TIMEOUT`]): a registry that accepts and never answers fails after this.
    pub read_timeout: Option<Duration>,
}

/// The default connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default read timeout.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The flag and variable of the connect timeout, for messages.
const CONNECT_FLAG: &str = "--registry-connect-timeout (IMAGETRAIL_REGISTRY_CONNECT_TIMEOUT)";
/// The flag and variable of the read timeout, for messages.
const READ_FLAG: &str = "--registry-read-timeout (IMAGETRAIL_REGISTRY_READ_TIMEOUT)";

/// A registry client (one per command run; caches tokens per scope).
pub struct Client {
    http: reqwest::Client,
    opts: ClientOptions,
    tokens: Mutex<HashMap<(String, String), String>>,
}

#[derive(Debug, Clone)]
enum Credential {
    Basic(String, String),
    IdentityToken(String),
}

impl Client {
    /// A client with these options.
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout.unwrap_or(CONNECT_TIMEOUT))
            .read_timeout(opts.read_timeout.unwrap_or(READ_TIMEOUT))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("imagetrail/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Failed {
                registry: String::new(),
                what: "building the HTTP client".into(),
                detail: e.to_string(),
            })?;
        Ok(Client {
            http,
            opts,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    fn base(&self, registry: &str) -> String {
        let host = registry
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(registry, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        let insecure = loopback
            || self
                .opts
                .insecure
                .iter()
                .any(|i| i == registry || i == host);
        let api_host = if registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            registry
        };
        format!("{}://{api_host}", if insecure { "http" } else { "https" })
    }

    fn config_path(&self) -> PathBuf {
        if let Some(p) = &self.opts.docker_config {
            return p.clone();
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return PathBuf::from(d).join("config.json");
        }
        let home = std::env::var_os("HOME").unwrap_or_default();
        PathBuf::from(home).join(".docker/config.json")
    }

    /// Credentials for `registry` from the Docker config: `credHelpers`, then `auths`, then
    /// `credsStore`.
    fn credential(&self, registry: &str) -> Option<Credential> {
        let text = std::fs::read_to_string(self.config_path()).ok()?;
        let cfg: DockerConfig = serde_json::from_str(&text).ok()?;
        let keys: Vec<&str> = if registry == "docker.io" {
            vec![
                "https://index.docker.io/v1/",
                "docker.io",
                "index.docker.io",
                "registry-1.docker.io",
            ]
        } else {
            vec![registry]
        };
        let normalize = |k: &str| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            k.split('/').next().unwrap_or(k).to_string()
        };
        for key in &keys {
            if let Some(helper) = cfg.cred_helpers.get(*key)
                && let Some(c) = run_helper(helper, key)
            {
                return Some(c);
            }
        }
        for (k, entry) in &cfg.auths {
            if keys
                .iter()
                .any(|key| *k == *key || normalize(k) == normalize(key))
            {
                if let Some(t) = entry.identitytoken.clone().filter(|t| !t.is_empty()) {
                    return Some(Credential::IdentityToken(t));
                }
                if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
                    return Some(Credential::Basic(u.clone(), p.clone()));
                }
                if let Some(auth) = &entry.auth {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(auth)
                        .ok()?;
                    let raw = String::from_utf8(raw).ok()?;
                    let (u, p) = raw.split_once(':')?;
                    return Some(Credential::Basic(u.into(), p.into()));
                }
            }
        }
        if let Some(store) = &cfg.creds_store {
            return run_helper(store, keys[0]);
        }
        None
    }

    /// Send a request with auth: anonymous first; on 401, Basic or a Bearer token as the
    /// `WWW-Authenticate` challenge asks, then once more. `scope` (`repository:NAME:pull`,
    /// ...) keys the cached authorization and names the access in errors.
    async fn send(
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

    async fn exec(
        &self,
        registry: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        rb.send().await.map_err(|e| {
            if e.is_timeout() {
                let (stage, kind, t, flag) = if e.is_connect() {
                    let t = self.opts.connect_timeout.unwrap_or(CONNECT_TIMEOUT);
                    ("connection", "connect", t, CONNECT_FLAG)
                } else {
                    let t = self.opts.read_timeout.unwrap_or(READ_TIMEOUT);
                    ("answer", "read", t, READ_FLAG)
                };
                return RegistryError::TimedOut {
                    registry: registry.to_string(),
                    stage,
                    kind,
                    seconds: t.as_secs_f64(),
                    flag,
                };
            }
            RegistryError::Unreachable {
                registry: registry.to_string(),
                reason: error_chain(&e),
            }
        })
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

    async fn fail(registry: &str, what: &str, resp: reqwest::Response) -> RegistryError {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let (body, _) = crate::terminal::cap(body.trim(), 300);
        RegistryError::Failed {
            registry: registry.into(),
            what: what.into(),
            detail: format!("HTTP {status}: {}", crate::terminal::sanitize(body)),
        }
    }

    /// One request on `/v2/<path>/manifests/<reference>`: reads send the full manifest
    /// `Accept` list and ask for pull scope, a DELETE asks for delete scope.
    async fn manifest_request(
        &self,
        method: Method,
        r: &Reference,
        reference: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base(&r.registry),
            r.path
        );
        let (accept, action) = if method == Method::DELETE {
            (None, "delete")
        } else {
            (Some(MANIFEST_ACCEPT), "pull")
        };
        self.send(&r.registry, method, &url, accept, &r.scope(action))
            .await
    }

    /// The digest a tag or digest points at, by HEAD with the full Accept list; falls back to
    /// GET and hashing when HEAD gives no `Docker-Content-Digest`. `None` when unknown.
    pub async fn head_digest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("HEAD {}:{reference}", r.repo());
        let resp = self.manifest_request(Method::HEAD, r, reference).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match header(resp.headers(), "docker-content-digest") {
                Some(d) if d.starts_with("sha256:") => Ok(Some(d)),
                _ => Ok(self.manifest_opt(r, reference).await?.map(|m| m.digest)),
            },
            _ => Err(Self::fail(&r.registry, &what, resp).await),
        }
    }

    /// GET a manifest by tag or digest; `None` when the registry does not know it.
    pub async fn manifest_opt(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let what = format!("GET manifest {}:{reference}", r.repo());
        let resp = self.manifest_request(Method::GET, r, reference).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(Self::fail(&r.registry, &what, resp).await);
        }
        let media_type = header(resp.headers(), "content-type").unwrap_or_default();
        let bytes = resp.bytes().await.map_err(|e| RegistryError::Unreachable {
            registry: r.registry.clone(),
            reason: error_chain(&e),
        })?;
        let digest = format!("sha256:{:x}", Sha256::digest(&bytes));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(RegistryError::Failed {
                registry: r.registry.clone(),
                what,
                detail: format!("the manifest's content hashes to {digest}, not {reference}"),
            });
        }
        let mut m = Manifest {
            digest,
            media_type,
            bytes: bytes.to_vec(),
        };
        if let Ok(IndexJson {
            media_type: Some(mt),
            ..
        }) = m.json::<IndexJson>()
        {
            m.media_type = mt;
        }
        Ok(Some(m))
    }

    /// GET a manifest, an unknown one being [`RegistryError::ManifestUnknown`].
    pub async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<Manifest, RegistryError> {
        self.manifest_opt(r, reference)
            .await?
            .ok_or_else(|| RegistryError::ManifestUnknown {
                reference: if reference.starts_with("sha256:") {
                    format!("{}@{reference}", r.repo())
                } else {
                    format!("{}:{reference}", r.repo())
                },
                detail: "the registry answered 404".into(),
            })
    }

    /// GET a blob and check its digest.
    pub async fn blob(&self, r: &Reference, digest: &str) -> Result<Vec<u8>, RegistryError> {
        let url = format!("{}/v2/{}/blobs/{digest}", self.base(&r.registry), r.path);
        let what = format!("GET blob {}@{digest}", r.repo());
        let resp = self
            .send(&r.registry, Method::GET, &url, None, &r.scope("pull"))
            .await?;
        if !resp.status().is_success() {
            return Err(Self::fail(&r.registry, &what, resp).await);
        }
        let bytes = resp.bytes().await.map_err(|e| RegistryError::Unreachable {
            registry: r.registry.clone(),
            reason: error_chain(&e),
        })?;
        let got = format!("sha256:{:x}", Sha256::digest(&bytes));
        if got != digest {
            return Err(RegistryError::Failed {
                registry: r.registry.clone(),
                what,
                detail: format!("the blob hashes to {got}"),
            });
        }
        Ok(bytes.to_vec())
    }

    /// The config blob of an image manifest.
    pub async fn config(&self, r: &Reference, m: &Manifest) -> Result<ImageConfig, RegistryError> {
        let Some(cd) = m.config_digest() else {
            return Err(RegistryError::Failed {
                registry: r.registry.clone(),
                what: format!("reading the manifest {}", m.digest),
                detail: "it has no config descriptor".into(),
            });
        };
        let bytes = self.blob(r, &cd).await?;
        serde_json::from_slice(&bytes).map_err(|e| RegistryError::Failed {
            registry: r.registry.clone(),
            what: format!("reading the config blob {cd}"),
            detail: e.to_string(),
        })
    }

    /// Resolve a reference to the manifest that runs on `platform`: the platform manifest's
    /// digest, the index digest when the reference points at an index, and the config.
    pub async fn resolve(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<Resolved, RegistryError> {
        let top = self.manifest(r, &r.manifest_ref()).await?;
        let (manifest, index_digest, chosen) = if top.is_index() {
            let children = top.children();
            let pick = children.iter().find(|(_, p)| {
                p.as_ref().is_some_and(|p| {
                    p.os == platform.os
                        && p.architecture == platform.architecture
                        && (platform.variant.is_none() || p.variant == platform.variant)
                })
            });
            let Some((digest, p)) = pick else {
                let available = children
                    .iter()
                    .filter_map(|(_, p)| p.as_ref().map(platform_string))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(RegistryError::NoPlatform {
                    reference: r.to_string(),
                    platform: platform_string(platform),
                    available,
                });
            };
            let child = self.manifest(r, digest).await?;
            (
                child,
                Some(top.digest.clone()),
                p.clone().unwrap_or_default(),
            )
        } else {
            (top, None, platform.clone())
        };
        let config = self.config(r, &manifest).await?;
        // A single-platform image says what it is: trust its config over the default.
        let platform = if index_digest.is_none() {
            match (&config.os, &config.architecture) {
                (Some(os), Some(arch)) => Platform {
                    os: os.clone(),
                    architecture: arch.clone(),
                    variant: config.variant.clone(),
                },
                _ => chosen,
            }
        } else {
            chosen
        };
        let mut labels = manifest.annotations();
        labels.extend(config.labels());
        Ok(Resolved {
            reference: r.clone(),
            digest: manifest.digest,
            index_digest,
            platform,
            config,
            labels,
        })
    }

    /// Every repository in the registry's catalog, following `Link` pages.
    pub async fn catalog(&self, registry: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Catalog {
            #[serde(default)]
            repositories: Vec<String>,
        }
        let first = format!("{}/v2/_catalog?n=100", self.base(registry));
        let page = |c: Catalog| c.repositories;
        self.list_pages(
            registry,
            first,
            "registry:catalog:*",
            "GET /v2/_catalog",
            page,
            || None,
        )
        .await
    }

    /// Every tag of a repository, following `Link` pages, sorted (the registry does not sort).
    pub async fn tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        #[derive(Deserialize)]
        struct Tags {
            tags: Option<Vec<String>>,
        }
        let first = format!("{}/v2/{}/tags/list?n=1000", self.base(&r.registry), r.path);
        let what = format!("GET tags of {}", r.repo());
        let page = |t: Tags| t.tags.unwrap_or_default();
        let no_repo = || {
            Some(RegistryError::ManifestUnknown {
                reference: r.repo(),
                detail: "no such repository".into(),
            })
        };
        self.list_pages(&r.registry, first, &r.scope("pull"), &what, page, no_repo)
            .await
    }

    /// GET `url` and every `Link` page after it with `scope`; the names `page` takes out of
    /// each, sorted and without repeats. A 404 is `not_found()` when that gives an error, else
    /// a failure like any other status.
    async fn list_pages<P: serde::de::DeserializeOwned>(
        &self,
        registry: &str,
        mut url: String,
        scope: &str,
        what: &str,
        page: impl Fn(P) -> Vec<String>,
        not_found: impl Fn() -> Option<RegistryError>,
    ) -> Result<Vec<String>, RegistryError> {
        let base = self.base(registry);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let resp = self.send(registry, Method::GET, &url, None, scope).await?;
            if resp.status() == StatusCode::NOT_FOUND
                && let Some(e) = not_found()
            {
                return Err(e);
            }
            if !resp.status().is_success() {
                return Err(Self::fail(registry, what, resp).await);
            }
            let next = next_link(resp.headers(), &base);
            let body: P = resp.json().await.map_err(|e| RegistryError::Failed {
                registry: registry.into(),
                what: what.into(),
                detail: e.to_string(),
            })?;
            out.extend(page(body));
            match next {
                Some(n) => url = n,
                None => break,
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// DELETE a manifest by digest (the registry removes every tag on it).
    pub async fn delete(&self, r: &Reference, digest: &str) -> Result<(), RegistryError> {
        let what = format!("DELETE {}@{digest}", r.repo());
        let resp = self.manifest_request(Method::DELETE, r, digest).await?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND {
            return Ok(());
        }
        Err(Self::fail(&r.registry, &what, resp).await)
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

#[derive(Deserialize, Default)]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// `docker-credential-<helper> get` with the server on stdin.
fn run_helper(helper: &str, server: &str) -> Option<Credential> {
    use std::io::Write;
    let mut child = std::process::Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(server.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    #[derive(Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout).ok()?;
    if a.username == "<token>" {
        Some(Credential::IdentityToken(a.secret))
    } else {
        Some(Credential::Basic(a.username, a.secret))
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `Link: </v2/...?last=x&n=100>; rel="next"` made absolute.
fn next_link(h: &HeaderMap, base: &str) -> Option<String> {
    let v = h.get(LINK)?.to_str().ok()?;
    for part in v.split(',') {
        if part.contains("rel=\"next\"") || part.contains("rel=next") {
            let start = part.find('<')? + 1;
            let end = part.find('>')?;
            let target = &part[start..end];
            return Some(if target.starts_with("http") {
                target.to_string()
            } else {
                format!("{base}{target}")
            });
        }
    }
    None
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = Reference::parse("127.0.0.1:5000/team/hello:1f3a9c2").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.path.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/hello", Some("1f3a9c2"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost/x@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
        let r = Reference::parse("nginx").unwrap();
        assert_eq!(r.repo(), "docker.io/library/nginx");
        assert!(Reference::parse("host:5000/x@sha256:abc").is_err());
        assert!(Reference::parse("host:5000/UPPER:tag").is_err());
    }

    #[test]
    fn https_unless_loopback_or_marked_insecure() {
        let c = Client::new(ClientOptions {
            insecure: vec!["build.internal:5000".into()],
            ..ClientOptions::default()
        })
        .unwrap();
        assert_eq!(
            c.base("registry.example.com"),
            "https://registry.example.com"
        );
        assert_eq!(c.base("docker.io"), "https://registry-1.docker.io");
        assert_eq!(c.base("127.0.0.1:5000"), "http://127.0.0.1:5000");
        assert_eq!(c.base("[::1]:5000"), "http://[::1]:5000");
        assert_eq!(c.base("localhost:5000"), "http://localhost:5000");
        assert_eq!(c.base("build.internal:5000"), "http://build.internal:5000");
        assert_eq!(c.base("build.internal:5001"), "https://build.internal:5001");
    }

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
