//! The OCI distribution client: resolve a reference to digests, read manifests and config blobs,
//! list the catalog and tags, delete manifests. Credentials from `~/.docker/config.json`
//! (`auths`, `credsStore`, `credHelpers`), anonymous, basic and token auth.
//!
//! Hand-rolled on reqwest because the surface is small (HEAD/GET manifest, GET blob, tags,
//! catalog, DELETE) and the behaviour of the registries we meet is specific: HEAD without the
//! full `Accept` list answers 404 for OCI manifests, some registries leave out
//! `Docker-Content-Digest` (so GET and hash), `tags/list` comes back unsorted and may ignore
//! `n`, and pagination follows the `Link` header.
//!
//! Here: the errors and the operations (resolve, manifests, blobs, catalog, tags, delete);
//! [`manifest`] the manifest and config shapes; `credentials` the Docker config and its
//! helpers; `auth` the anonymous/Basic/Bearer token dance. References and platforms are
//! [`crate::reference`]'s value types.

mod auth;
mod credentials;
pub mod manifest;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use reqwest::header::{HeaderMap, LINK};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::error::error_chain;

pub use manifest::{ConfigSection, ImageConfig, MANIFEST_ACCEPT, Manifest};

pub use crate::reference::{ImageRef as Reference, Platform};

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

/// Parse an image reference ([`crate::reference::ImageRef::parse`]) into this module's error.
pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    Reference::parse(s).map_err(|e| RegistryError::InvalidReference {
        reference: s.to_string(),
        reason: e.to_string(),
    })
}

/// The token scope asking for `action` (`pull`, `delete`) on `r`'s repository:
/// `repository:PATH:ACTION`.
fn scope(r: &Reference, action: &str) -> String {
    format!("repository:{}:{action}", r.path)
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
        self.send(&r.registry, method, &url, accept, &scope(r, action))
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
        Ok(Some(Manifest::new(digest, media_type, bytes.to_vec())))
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
            .send(&r.registry, Method::GET, &url, None, &scope(r, "pull"))
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
                    .filter_map(|(_, p)| p.as_ref().map(Platform::to_string))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(RegistryError::NoPlatform {
                    reference: r.to_string(),
                    platform: platform.to_string(),
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
        self.list_pages(&r.registry, first, &scope(r, "pull"), &what, page, no_repo)
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
}
