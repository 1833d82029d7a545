//! Value types at the bottom of the module graph: an image reference, a digest, a platform
//! and a registry host, each parsed and normalised once, here, so that the CLI, the scanner,
//! the server and the records compare the same strings for the same image.
//!
//! References follow the distribution reference grammar
//! (`github.com/distribution/reference`):
//!
//! * `[host[:port]/]path[:tag][@digest]`. The first component is the host when it contains
//!   `.` or `:`, is `localhost`, or has an upper-case letter; otherwise the host is
//!   `docker.io`, and a one-component path gets `library/` (Docker Hub's official images).
//!   `index.docker.io` and `registry-1.docker.io` are `docker.io`. The host is lower-cased.
//! * The path is `/`-separated components of `[a-z0-9]+` joined by `.`, `_`, `__` or runs
//!   of `-`; the whole name is at most 255 characters.
//! * A tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
//! * A digest is `sha256:` with 64 or `sha512:` with 128 lower-case hex digits.
//!
//! The stored repository is the normalised `host/path` (`docker.io/library/nginx`); the
//! default app is the familiar path ([`ImageRef::familiar_path`]: `nginx`, `team/app`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Docker Hub, the host of a reference that names none.
pub const DEFAULT_HOST: &str = "docker.io";
/// The namespace of Docker Hub's official images (`nginx` is `library/nginx`).
const OFFICIAL: &str = "library/";
/// The longest repository name (host and path) the grammar allows.
const MAX_NAME: usize = 255;
/// The longest tag the grammar allows.
const MAX_TAG: usize = 128;

/// Why a string is not an image reference, a digest or a platform.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("the image reference is empty")]
    Empty,
    /// The part after `@` is not a digest.
    #[error(
        "the digest {0:?} is malformed: use sha256: and 64 lower-case hex digits (or sha512: and 128)"
    )]
    BadDigest(String),
    /// The tag breaks the tag grammar.
    #[error(
        "the tag {0:?} is malformed: a tag is 1-128 of [A-Za-z0-9_.-], not starting with . or -"
    )]
    BadTag(String),
    /// The host part is not a host name, IP address or `[IPv6]`, with an optional port.
    #[error(
        "the registry host {0:?} is malformed: use a host name or address with an optional :port"
    )]
    BadHost(String),
    /// The repository path breaks the path grammar.
    #[error(
        "the repository path {0:?} is malformed: use lower-case components of [a-z0-9] joined by ., _, __ or -, separated by /"
    )]
    BadPath(String),
    /// Host and path together are longer than the grammar allows.
    #[error("the repository name is {0} characters long; the limit is 255")]
    TooLong(usize),
    /// A platform that is not `os/arch[/variant]`.
    #[error(
        "invalid platform {0:?}: use os/arch or os/arch/variant, e.g. linux/amd64 or linux/arm64/v8"
    )]
    BadPlatform(String),
}

/// A content digest, `sha256:<64 hex>` or `sha512:<128 hex>`, lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// The digest as written, e.g. `sha256:9f86…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `s` is a digest this crate accepts: the one digest check.
    pub fn is_valid(s: &str) -> bool {
        let hex = |h: &str, n: usize| {
            h.len() == n
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match s.split_once(':') {
            Some(("sha256", h)) => hex(h, 64),
            Some(("sha512", h)) => hex(h, 128),
            _ => false,
        }
    }
}

impl FromStr for Digest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Digest, ReferenceError> {
        if Digest::is_valid(s) {
            Ok(Digest(s.to_string()))
        } else {
            Err(ReferenceError::BadDigest(s.to_string()))
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed, normalised image reference: `host/path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host and port, lower-case, e.g. `127.0.0.1:5000` or `docker.io`.
    pub registry: String,
    /// Repository path, e.g. `team/hello` or `library/nginx`.
    pub path: String,
    /// The tag, when given.
    pub tag: Option<String>,
    /// The digest (checked by [`Digest::is_valid`]), when given.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parse and normalise `s` (surrounding white space ignored).
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (r, Some(d.parse::<Digest>()?.0)),
            None => (s, None),
        };
        // A `:` after the last `/` starts the tag; one before it is a host's port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        if let Some(t) = &tag
            && !valid_tag(t)
        {
            return Err(ReferenceError::BadTag(t.clone()));
        }
        let (registry, path) = split_host(name)?;
        if !valid_path(&path) {
            return Err(ReferenceError::BadPath(path));
        }
        let len = registry.len() + 1 + path.len();
        if len > MAX_NAME {
            return Err(ReferenceError::TooLong(len));
        }
        Ok(ImageRef {
            registry,
            path,
            tag,
            digest,
        })
    }

    /// `host/path`, the repository as records store it.
    pub fn repo(&self) -> String {
        format!("{}/{}", self.registry, self.path)
    }

    /// The path people use, the default app name: the host dropped, and on Docker Hub the
    /// `library/` of official images dropped (`nginx`, `team/app`).
    pub fn familiar_path(&self) -> &str {
        if self.registry == DEFAULT_HOST {
            self.path.strip_prefix(OFFICIAL).unwrap_or(&self.path)
        } else {
            &self.path
        }
    }

    /// The tag or digest a registry is asked for (digest wins; default tag `latest`).
    pub fn manifest_ref(&self) -> String {
        self.digest
            .clone()
            .or_else(|| self.tag.clone())
            .unwrap_or_else(|| "latest".into())
    }

    /// The same repository and digest, ignoring the informational tag and loopback/port
    /// spellings of the host (see [`host_key`]).
    pub fn same_image(&self, other: &ImageRef) -> bool {
        self.path == other.path
            && self.digest == other.digest
            && host_key(&self.registry) == host_key(&other.registry)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<ImageRef, ReferenceError> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// A stored repository read back in normalised form: `nginx` and `library/nginx` become
/// `docker.io/library/nginx`, `Registry.Example.com/a` becomes `registry.example.com/a`.
/// Anything that is not a repository name is returned unchanged (readers never fail on it).
pub fn normalize_repo(repo: &str) -> String {
    // Fast path for what every writer of this version stores: already `host/path`, lower-case.
    if let Some((first, rest)) = repo.split_once('/')
        && (first.contains(['.', ':']) || first == "localhost")
        && !rest.contains([':', '@'])
        && !repo.bytes().any(|b| b.is_ascii_uppercase())
        && !matches!(first, "index.docker.io" | "registry-1.docker.io")
        && (first != DEFAULT_HOST || rest.contains('/'))
    {
        return repo.to_string();
    }
    match ImageRef::parse(repo) {
        Ok(r) if r.tag.is_none() && r.digest.is_none() => r.repo(),
        _ => repo.to_string(),
    }
}

/// Whether two repository names (stored or typed, short or full) name the same repository:
/// both normalised, hosts compared by [`host_key`].
pub fn same_repository(a: &str, b: &str) -> bool {
    let key = |r: &str| match ImageRef::parse(r) {
        Ok(r) => (host_key(&r.registry), r.path),
        Err(_) => (String::new(), r.to_string()),
    };
    key(a) == key(b)
}

/// The form of a registry host used to match and show it: lower-case, the default HTTPS port
/// `:443` dropped, and `localhost`, `127.0.0.1` and `[::1]` one loopback host `localhost`
/// (the port kept), so records written through any spelling match the same registry.
pub fn host_key(host: &str) -> String {
    let host = host.trim().trim_end_matches('/').to_ascii_lowercase();
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_HOST.to_string(),
        _ => host,
    };
    let (name, port) = split_port(&host);
    let name = match name {
        "127.0.0.1" | "[::1]" | "localhost" => "localhost",
        n => n,
    };
    match port {
        Some("443") | None => name.to_string(),
        Some(p) => format!("{name}:{p}"),
    }
}

/// `host:port` → (`host`, Some(`port`)); `[v6]:port` keeps its brackets.
fn split_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(i) => match host[i + 1..].strip_prefix(':') {
                Some(p) => (&host[..=i], Some(p)),
                None => (host, None),
            },
            None => (host, None),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host, None),
    }
}

/// Split `name` into a normalised host and a path (docker's `splitDockerDomain`).
fn split_host(name: &str) -> Result<(String, String), ReferenceError> {
    let (host, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.bytes().any(|b| b.is_ascii_uppercase()) =>
        {
            if !valid_host(first) {
                return Err(ReferenceError::BadHost(first.to_string()));
            }
            (first.to_ascii_lowercase(), rest.to_string())
        }
        _ => (DEFAULT_HOST.to_string(), name.to_string()),
    };
    let host = match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => DEFAULT_HOST.to_string(),
        _ => host,
    };
    let path = if host == DEFAULT_HOST && !path.contains('/') {
        format!("{OFFICIAL}{path}")
    } else {
        path
    };
    Ok((host, path))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
/// Whether `t` is a tag by the grammar: 1-128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
pub fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = t.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-')
}

/// Components of `[a-z0-9]+` joined by `.`, `_`, `__` or `-+`, separated by `/`.
fn valid_path(path: &str) -> bool {
    !path.is_empty() && path.split('/').all(valid_component)
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `host[:port]`: domain components of `[A-Za-z0-9]` with inner `-`, joined by `.`, or an
/// `[IPv6]` literal; the port is digits.
fn valid_host(host: &str) -> bool {
    let (name, port) = split_port(host);
    if let Some(p) = port
        && (p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return false;
    }
    if let Some(v6) = name.strip_prefix('[') {
        return v6.strip_suffix(']').is_some_and(|a| {
            !a.is_empty() && a.bytes().all(|b| b.is_ascii_hexdigit() || b == b':')
        });
    }
    !name.is_empty()
        && name.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&x| x.is_ascii_alphanumeric() || x == b'-')
        })
}

/// The platform an image runs on: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`, `arm64`.
    pub architecture: String,
    /// e.g. `v8` for `arm64/v8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`, the platform a deployment that names none runs on.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl FromStr for Platform {
    type Err = ReferenceError;

    /// Parse `os/arch[/variant]`.
    fn from_str(s: &str) -> Result<Platform, ReferenceError> {
        let parts: Vec<&str> = s.split('/').collect();
        let bad = || ReferenceError::BadPlatform(s.to_string());
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad());
        }
        match parts.as_slice() {
            [os, arch] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Platform {
    /// `os/arch[/variant]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:698e0b6c22c8922b2c4ed257afbff40bcfe6597c744648f695f907598d3f6b5c";

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalises_docker_hub_and_hosts() {
        let n = r("nginx");
        assert_eq!(
            (n.repo(), n.familiar_path()),
            ("docker.io/library/nginx".into(), "nginx")
        );
        assert_eq!(r("library/nginx:1.27").repo(), "docker.io/library/nginx");
        assert_eq!(r("docker.io/nginx").repo(), "docker.io/library/nginx");
        assert_eq!(
            r("index.docker.io/library/nginx").repo(),
            "docker.io/library/nginx"
        );
        let t = r("team/app:1");
        assert_eq!(
            (t.repo(), t.familiar_path()),
            ("docker.io/team/app".into(), "team/app")
        );
        let g = r("GCR.io/atomist/bot-service");
        assert_eq!(
            (g.repo(), g.familiar_path()),
            ("gcr.io/atomist/bot-service".into(), "atomist/bot-service")
        );
        let l = r(&format!("localhost:5000/app:1.2@{D}"));
        assert_eq!(l.to_string(), format!("localhost:5000/app:1.2@{D}"));
        assert_eq!(l.familiar_path(), "app");
        assert_eq!(r("[::1]:5000/a/b").registry, "[::1]:5000");
        assert_eq!(r("127.0.0.1:5000/a/b-c__d.e").path, "a/b-c__d.e");
        assert_eq!(r("a/b---c").path, "a/b---c");
    }

    #[test]
    fn tags_and_digests() {
        assert_eq!(r("a:_x").tag.as_deref(), Some("_x"));
        assert_eq!(r(&format!("a:{}", "t".repeat(128))).tag.unwrap().len(), 128);
        assert_eq!(r(&format!("a@{D}")).manifest_ref(), D);
        let sha512 = format!("sha512:{}", "ab".repeat(64));
        assert_eq!(
            r(&format!("a@{sha512}")).digest.as_deref(),
            Some(sha512.as_str())
        );
        assert!(Digest::is_valid(D));
    }

    #[test]
    fn refuses_what_the_grammar_refuses() {
        let bad = [
            "",
            "  ",
            "Nginx",                // upper-case path on Docker Hub
            "registry.io/Team/app", // upper-case path
            "registry.io//app",     // empty segment
            "registry.io/app/",     // trailing empty segment
            "a/../b",               // `..`
            "a/.b",                 // leading separator
            "a/b.",                 // trailing separator
            "a/b..c",               // two dots
            "a/b___c",              // three underscores
            "a:",                   // empty tag
            "a:.x",                 // tag starting with .
            "a:-x",
            "a:x y",
            "a:x/y",
            "bad_host.io:/a", // empty port
            "-bad.io/a",
            "a@sha256:abc", // short hex
            "a@sha256:698E0B6C22C8922B2C4ED257AFBFF40BCFE6597C744648F695F907598D3F6B5C",
            "a@md5:d41d8cd98f00b204e9800998ecf8427e",
            "a@sha512:00",
            "a@",
        ];
        for s in bad {
            assert!(ImageRef::parse(s).is_err(), "{s:?} was accepted");
        }
        assert!(ImageRef::parse(&format!("a:{}", "t".repeat(129))).is_err());
        assert!(ImageRef::parse(&format!("a@sha256:{}", "0".repeat(63))).is_err());
        assert!(ImageRef::parse(&format!("a@sha512:{}", "0".repeat(127))).is_err());
        assert!(ImageRef::parse(&format!("a@sha256:{}", "0".repeat(128))).is_err());
        assert!(matches!(
            ImageRef::parse(&format!("r.io/{}", "a".repeat(260))),
            Err(ReferenceError::TooLong(_))
        ));
    }

    #[test]
    fn short_stored_repositories_read_back_normalised() {
        assert_eq!(normalize_repo("nginx"), "docker.io/library/nginx");
        assert_eq!(
            normalize_repo("docker.io/library/nginx"),
            "docker.io/library/nginx"
        );
        assert_eq!(normalize_repo("Reg.IO/a"), "reg.io/a");
        assert_eq!(normalize_repo("not a repo"), "not a repo");
        assert_eq!(normalize_repo("docker.io/nginx"), "docker.io/library/nginx");
        assert_eq!(normalize_repo("index.docker.io/team/a"), "docker.io/team/a");
        assert_eq!(
            normalize_repo("127.0.0.1:5000/team/a"),
            "127.0.0.1:5000/team/a"
        );
    }

    #[test]
    fn same_repository_under_any_spelling() {
        assert!(same_repository("nginx", "docker.io/library/nginx"));
        assert!(same_repository("127.0.0.1:5000/a", "localhost:5000/a"));
        assert!(!same_repository("127.0.0.1:5000/a", "127.0.0.1:5000/b"));
    }

    #[test]
    fn host_keys_match_loopback_and_default_port() {
        assert_eq!(host_key("127.0.0.1:5000"), "localhost:5000");
        assert_eq!(host_key("[::1]:5000"), host_key("LOCALHOST:5000"));
        assert_eq!(host_key("Registry.Example.com:443"), "registry.example.com");
        assert_ne!(host_key("127.0.0.1:5000"), host_key("127.0.0.1:5001"));
        assert_eq!(host_key("index.docker.io"), "docker.io");
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm64/v8".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux//v8".parse::<Platform>().is_err());
        assert!("a/b/c/d".parse::<Platform>().is_err());
    }
}
