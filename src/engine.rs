//! The container engine (Docker or Podman) behind its socket: endpoint resolution, API version
//! negotiation, and read-only inspection. The scanner never creates, changes or deletes anything:
//! every request this module sends is a GET (`/_ping`, `/version`, `/info`, `/containers/{id}/json`,
//! `/images/{id}/json`), because operators hand a root-equivalent socket to a plug-in. The
//! HTTP itself is in [`http`] (keep-alive connections; answers parsed once, untyped).

mod http;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

/// How long the first contact with the engine may take before we call it unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Targets read from the engine at once: enough to keep the engine busy (it answers requests
/// in parallel), few enough not to queue hundreds of connections on its socket.
pub const ENGINE_IN_FLIGHT: usize = 16;

/// How long any later engine request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The hint every "no engine" message ends with.
const MOUNT_HINT: &str = "mount the engine socket into the scanner (-v /var/run/docker.sock:/var/run/docker.sock), or point --host / DOCKER_HOST / CONTAINER_HOST at it (for Podman: `systemctl enable --now podman.socket`, or `podman system service`)";

/// What can go wrong talking to the engine.
#[derive(Debug, Error)]
pub enum EngineError {
    /// No socket exists at any of the places we look.
    #[error("no container engine socket found (tried {tried}); {hint}", hint = MOUNT_HINT)]
    NoSocket {
        /// The paths tried, comma-separated.
        tried: String,
    },
    /// The endpoint names a scheme we cannot talk to.
    #[error(
        "unsupported engine endpoint {endpoint:?}: use unix:///path/to/docker.sock or tcp://127.0.0.1:2375"
    )]
    Unsupported {
        /// The endpoint given.
        endpoint: String,
    },
    /// No engine answered at the endpoint.
    #[error("cannot reach the container engine at {endpoint}: {reason}; {hint}", hint = MOUNT_HINT)]
    Unreachable {
        /// The endpoint tried.
        endpoint: String,
        /// Why it failed.
        reason: String,
    },
    /// Neither a container nor an image has this id or name.
    #[error(
        "no container or image \"{what}\" on the engine at {endpoint}; check the name for typos, or pull or load the image first"
    )]
    NotFound {
        /// The id or name looked up.
        what: String,
        /// The engine asked.
        endpoint: String,
    },
    /// The engine answered a request with an error.
    #[error("the container engine at {endpoint} failed {request}: {reason}")]
    Request {
        /// The engine asked.
        endpoint: String,
        /// The request, e.g. `GET /images/x/json`.
        request: String,
        /// What it said.
        reason: String,
    },
}

/// Where the engine listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// A plain TCP address `host:port` (no TLS).
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

impl Endpoint {
    /// Parse `unix:///path`, `unix:/path` (Podman's spelling), `/path`, `tcp://h:p` or `http://h:p`.
    pub fn parse(text: &str) -> Result<Endpoint, EngineError> {
        let unsupported = || EngineError::Unsupported {
            endpoint: text.to_string(),
        };
        if let Some(rest) = text.strip_prefix("unix://") {
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        if let Some(rest) = text.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(PathBuf::from(rest)));
        }
        if text.starts_with('/') {
            return Ok(Endpoint::Unix(PathBuf::from(text)));
        }
        for scheme in ["tcp://", "http://"] {
            if let Some(rest) = text.strip_prefix(scheme) {
                let addr = rest.trim_end_matches('/');
                if addr.is_empty() {
                    return Err(unsupported());
                }
                return Ok(Endpoint::Tcp(addr.to_string()));
            }
        }
        Err(unsupported())
    }
}

/// Choose the endpoint: `--host` > `DOCKER_HOST` > `CONTAINER_HOST` > `/var/run/docker.sock` >
/// Podman's rootful socket > Podman's rootless sockets. `env` reads a variable (empty = unset),
/// `exists` tells whether a socket path exists; both are parameters so the order is unit-tested.
pub fn resolve_endpoint(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    exists: &dyn Fn(&Path) -> bool,
) -> Result<Endpoint, EngineError> {
    let given = flag
        .map(str::to_string)
        .filter(|s| !s.trim().is_empty())
        .or_else(|| env("DOCKER_HOST"))
        .or_else(|| env("CONTAINER_HOST"));
    if let Some(text) = given {
        return Endpoint::parse(text.trim());
    }
    let mut candidates = vec![
        PathBuf::from("/var/run/docker.sock"),
        PathBuf::from("/run/podman/podman.sock"),
    ];
    if let Some(xdg) = env("XDG_RUNTIME_DIR") {
        candidates.push(Path::new(&xdg).join("podman/podman.sock"));
    }
    if let Some(uid) = env("UID") {
        candidates.push(PathBuf::from(format!("/run/user/{uid}/podman/podman.sock")));
    }
    match candidates.iter().find(|p| exists(p)) {
        Some(p) => Ok(Endpoint::Unix(p.clone())),
        None => Err(EngineError::NoSocket {
            tried: candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// What kind of object a target turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A container (its own config labels are read).
    Container,
    /// An image.
    Image,
}

impl Kind {
    /// `container` or `image`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Image => "image",
        }
    }
}

/// An inspect answer (`docker inspect`'s object) as the engine sent it, parsed once and shared:
/// `environment.json` carries it whole, and one image's inspect serves all its containers.
pub type Inspect = Arc<Value>;

/// One inspected target: a container (with the image it runs) or an image.
#[derive(Debug, Clone)]
pub struct Object {
    /// Container or image.
    pub kind: Kind,
    /// The object's full id without `sha256:`.
    pub id: String,
    /// The object's own labels (a container's config labels, or the image's).
    pub labels: HashMap<String, String>,
    /// The container inspect, for a container.
    pub container: Option<Inspect>,
    /// The image inspect: the image itself, or the image a container runs (when still present).
    pub image: Option<Inspect>,
}

/// A string field at a JSON path.
fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(k))
        .and_then(Value::as_str)
}

/// A list of strings at a key (`RepoTags`, `RepoDigests`); `null` or absent is empty.
fn strings_at(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `Config.Labels` of an inspect (string values only; `null` is none).
fn labels_of(v: &Value) -> HashMap<String, String> {
    v.get("Config")
        .and_then(|c| c.get("Labels"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

impl Object {
    /// The image's id without `sha256:` (for a container, the image it was created from).
    pub fn image_id(&self) -> Option<String> {
        match (&self.image, &self.container) {
            (Some(i), _) => str_at(i, &["Id"]).map(strip_sha),
            (None, Some(c)) => str_at(c, &["Image"]).map(strip_sha),
            _ => None,
        }
        .filter(|s| !s.is_empty())
    }

    /// `RepoTags` of the image.
    pub fn repo_tags(&self) -> Vec<String> {
        self.image
            .as_ref()
            .map(|i| strings_at(i, "RepoTags"))
            .unwrap_or_default()
    }

    /// `RepoDigests` of the image (`repo@sha256:...`).
    pub fn repo_digests(&self) -> Vec<String> {
        self.image
            .as_ref()
            .map(|i| strings_at(i, "RepoDigests"))
            .unwrap_or_default()
    }

    /// The image name a container was created with (`Config.Image`).
    pub fn container_image_name(&self) -> Option<String> {
        self.container
            .as_ref()
            .and_then(|c| str_at(c, &["Config", "Image"]))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }

    /// A string field of the image inspect (`Os`, `Architecture`, `Variant`).
    pub fn image_field(&self, key: &str) -> Option<String> {
        self.image
            .as_ref()
            .and_then(|i| str_at(i, &[key]))
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    }
}

/// `sha256:abc` → `abc`.
pub fn strip_sha(id: &str) -> String {
    id.strip_prefix("sha256:").unwrap_or(id).to_string()
}

/// The newest API version asked for: what the scanner was written against. An older engine
/// (Docker 20.10 speaks 1.41) is spoken to in its own version.
const MAX_API: (u32, u32) = (1, 53);

/// One image's inspect, fetched once however many targets ask for it at the same time.
type ImageSlot = Arc<tokio::sync::OnceCell<Result<Option<Inspect>, String>>>;

/// A connected, version-negotiated engine client.
#[derive(Debug)]
pub struct Engine {
    http: http::Client,
    endpoint: Endpoint,
    /// `/v1.41` (the negotiated API version), prefixed to every later request.
    prefix: String,
    /// Image inspects by id: many containers of one image (`atomic scan --all`) need the same
    /// image, which is asked for once, even by targets read at the same time.
    images: std::sync::Mutex<HashMap<String, ImageSlot>>,
}

/// Parse `1.41` into (1, 41).
fn parse_api(text: &str) -> Option<(u32, u32)> {
    let (major, minor) = text.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The engine's API version: the `Api-Version` header of `GET /_ping`, or, from an engine
/// whose ping does not carry it, `ApiVersion` in `GET /version`'s body (`None`: not said).
///
/// Why the ping first: Docker 20.10 answers `/version` by asking containerd and running
/// `runc --version` and `docker-init --version`, 5-12 ms here (25 ms under load), on the path
/// of every run before its first inspect; `/_ping` takes 0.4 ms and Docker and Podman both put
/// the version in its headers.
async fn api_version(client: &http::Client) -> Result<Option<(u32, u32)>, String> {
    let ping = client.get("/_ping").await.map_err(|e| e.to_string())?;
    if ping.status == 200
        && let Some(v) = ping.api_version.as_deref().and_then(parse_api)
    {
        return Ok(Some(v));
    }
    let answer = client.get("/version").await.map_err(|e| e.to_string())?;
    if answer.status != 200 {
        return Err(format!(
            "GET /version answered {}: {}",
            answer.status,
            message_of(&answer.body)
        ));
    }
    let version: Value = serde_json::from_slice(&answer.body).map_err(|e| {
        format!("GET /version did not answer JSON ({e}); is this a container engine's socket?")
    })?;
    Ok(version
        .get("ApiVersion")
        .and_then(Value::as_str)
        .and_then(parse_api))
}

impl Engine {
    /// Connect, ping within [`PING_TIMEOUT`] and negotiate the API version (Docker 20.10's 1.41,
    /// Podman's compat API and newer engines; see [`api_version`]).
    pub async fn connect(endpoint: Endpoint) -> Result<Engine, EngineError> {
        let unreachable = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let address = match &endpoint {
            Endpoint::Unix(path) => {
                if !path.exists() {
                    return Err(unreachable(format!("{} does not exist", path.display())));
                }
                http::Address::Unix(path.clone())
            }
            Endpoint::Tcp(addr) => http::Address::Tcp(addr.clone()),
        };
        // Engines log the User-Agent.
        let client = http::Client::new(address, concat!("imagetrail/", env!("CARGO_PKG_VERSION")));
        // The timeout makes a hung socket a quick, clear error instead of a long wait.
        let server = match tokio::time::timeout(PING_TIMEOUT, api_version(&client)).await {
            Ok(Ok(v)) => v,
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    PING_TIMEOUT.as_secs()
                )));
            }
        };
        let prefix = match server {
            Some(v) if v < MAX_API => format!("/v{}.{}", v.0, v.1),
            Some(_) => format!("/v{}.{}", MAX_API.0, MAX_API.1),
            // No version said: the engine's own (unversioned paths).
            None => String::new(),
        };
        tracing::debug!(%endpoint, api = %prefix, "engine connected");
        Ok(Engine {
            http: client,
            endpoint,
            prefix,
            images: Default::default(),
        })
    }

    /// The endpoint this engine was reached at.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn request_error(&self, request: String, reason: String) -> EngineError {
        EngineError::Request {
            endpoint: self.endpoint.to_string(),
            request,
            reason,
        }
    }

    /// `GET path` (after the version prefix): the parsed JSON, `None` for a 404.
    async fn get_json(&self, path: &str) -> Result<Option<Value>, EngineError> {
        let request = format!("GET {path}");
        let answer = match tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.http.get(&format!("{}{path}", self.prefix)),
        )
        .await
        {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => return Err(self.request_error(request, e.to_string())),
            Err(_) => {
                return Err(self.request_error(
                    request,
                    format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                ));
            }
        };
        match answer.status {
            200..=299 => serde_json::from_slice(&answer.body)
                .map(Some)
                .map_err(|e| self.request_error(request, format!("the answer is not JSON: {e}"))),
            404 => Ok(None),
            status => {
                Err(self.request_error(request, format!("{status}: {}", message_of(&answer.body))))
            }
        }
    }

    /// `GET /info`, as JSON.
    pub async fn info(&self) -> Result<Value, EngineError> {
        self.get_json("/info")
            .await?
            .ok_or_else(|| self.request_error("GET /info".into(), "404".into()))
    }

    /// `GET /images/{name}/json`; `None` when the engine has no such image.
    pub async fn image(&self, name: &str) -> Result<Option<Inspect>, EngineError> {
        Ok(self
            .get_json(&format!("/images/{}/json", path_segment(name)))
            .await?
            .map(Arc::new))
    }

    /// [`Engine::image`] for an image id, asked of the engine once per run (targets asking at
    /// the same time wait for the one request).
    async fn image_by_id(&self, id: &str) -> Result<Option<Inspect>, EngineError> {
        let slot = self
            .images
            .lock()
            .expect("not poisoned")
            .entry(strip_sha(id))
            .or_default()
            .clone();
        // By the bare id: `sha256:` is how a container names its image, not how it is asked.
        slot.get_or_init(|| async { self.image(&strip_sha(id)).await.map_err(|e| e.to_string()) })
            .await
            .clone()
            .map_err(|reason| self.request_error(format!("GET /images/{id}/json"), reason))
    }

    /// `GET /containers/{name}/json`; `None` when the engine has no such container.
    pub async fn container(&self, name: &str) -> Result<Option<Inspect>, EngineError> {
        Ok(self
            .get_json(&format!("/containers/{}/json", path_segment(name)))
            .await?
            .map(Arc::new))
    }

    /// Resolve an id or name: container first then image (as atomic does), or image first
    /// when `images_first` (names given on the command line are images). A container comes
    /// with the image it runs (which may have been removed since: not an error).
    pub async fn resolve(&self, what: &str, images_first: bool) -> Result<Object, EngineError> {
        let order = if images_first {
            [Kind::Image, Kind::Container]
        } else {
            [Kind::Container, Kind::Image]
        };
        for kind in order {
            match kind {
                Kind::Container => {
                    if let Some(c) = self.container(what).await? {
                        let image = match str_at(&c, &["Image"]) {
                            Some(img) if !img.is_empty() => self.image_by_id(img).await?,
                            _ => None,
                        };
                        return Ok(Object {
                            kind,
                            id: strip_sha(str_at(&c, &["Id"]).unwrap_or(what)),
                            labels: labels_of(&c),
                            container: Some(c),
                            image,
                        });
                    }
                }
                Kind::Image => {
                    // Through the cache: the image may also be a container's image.
                    if let Some(i) = self.image_by_id(what).await? {
                        return Ok(Object {
                            kind,
                            id: strip_sha(str_at(&i, &["Id"]).unwrap_or(what)),
                            labels: labels_of(&i),
                            container: None,
                            image: Some(i),
                        });
                    }
                }
            }
        }
        Err(EngineError::NotFound {
            what: what.to_string(),
            endpoint: self.endpoint.to_string(),
        })
    }
}

/// The engine's `{"message": ...}` of an error answer, or the body's start.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(body);
            crate::terminal::cap(text.trim(), 300).0.to_string()
        })
}

/// A name or id as one path segment: characters outside `[A-Za-z0-9._:@-]` (and `/`, which
/// image names carry and the engine's routes accept) are percent-encoded.
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"._:@-/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Strip `sha256:` from the values of `Id`, `Parent`, `Image` and `ImageID` and from lists made
/// only of `sha256:` strings, at any depth, as atomic's client wrapper does (`iter_subs`).
pub fn strip_sha_fields(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s)
                        if matches!(k.as_str(), "Id" | "Parent" | "Image" | "ImageID") =>
                    {
                        if let Some(rest) = s.strip_prefix("sha256:") {
                            *s = rest.to_string();
                        }
                    }
                    _ => strip_sha_fields(v),
                }
            }
        }
        Value::Array(items) => {
            let all_sha = !items.is_empty()
                && items
                    .iter()
                    .all(|i| i.as_str().is_some_and(|s| s.starts_with("sha256:")));
            for item in items.iter_mut() {
                if all_sha {
                    if let Value::String(s) = item {
                        *s = s["sha256:".len()..].to_string();
                    }
                } else {
                    strip_sha_fields(item);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
                .filter(|v| !v.is_empty())
        }
    }

    #[test]
    fn flag_beats_docker_host_beats_container_host() {
        let env = env_of(&[
            ("DOCKER_HOST", "unix:///d.sock"),
            ("CONTAINER_HOST", "unix:/c.sock"),
        ]);
        let yes = |_: &Path| true;
        assert_eq!(
            resolve_endpoint(Some("tcp://127.0.0.1:2375"), &env, &yes).unwrap(),
            Endpoint::Tcp("127.0.0.1:2375".into())
        );
        assert_eq!(
            resolve_endpoint(None, &env, &yes).unwrap(),
            Endpoint::Unix("/d.sock".into())
        );
        let env = env_of(&[("DOCKER_HOST", ""), ("CONTAINER_HOST", "unix:/c.sock")]);
        assert_eq!(
            resolve_endpoint(Some(""), &env, &yes).unwrap(),
            Endpoint::Unix("/c.sock".into())
        );
    }

    #[test]
    fn docker_socket_before_podman_sockets() {
        let env = env_of(&[("XDG_RUNTIME_DIR", "/run/user/1000"), ("UID", "1000")]);
        let only = |want: &'static str| move |p: &Path| p == Path::new(want);
        assert_eq!(
            resolve_endpoint(None, &env, &|_| true).unwrap(),
            Endpoint::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            resolve_endpoint(None, &env, &only("/run/podman/podman.sock")).unwrap(),
            Endpoint::Unix("/run/podman/podman.sock".into())
        );
        assert_eq!(
            resolve_endpoint(None, &env, &only("/run/user/1000/podman/podman.sock")).unwrap(),
            Endpoint::Unix("/run/user/1000/podman/podman.sock".into())
        );
        let err = resolve_endpoint(None, &env, &|_| false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("/var/run/docker.sock:/var/run/docker.sock"),
            "{text}"
        );
    }

    #[test]
    fn rejects_unknown_schemes() {
        assert!(matches!(
            Endpoint::parse("ssh://host"),
            Err(EngineError::Unsupported { .. })
        ));
    }

    #[test]
    fn strips_sha_like_atomic() {
        let mut v = serde_json::json!({"Id": "sha256:aa", "Config": {"Image": "sha256:bb", "Labels": {"x": "sha256:keep"}},
            "RootFS": {"Layers": ["sha256:1", "sha256:2"]}, "RepoDigests": ["r@sha256:3"]});
        strip_sha_fields(&mut v);
        assert_eq!(
            v,
            serde_json::json!({"Id": "aa", "Config": {"Image": "bb", "Labels": {"x": "sha256:keep"}},
            "RootFS": {"Layers": ["1", "2"]}, "RepoDigests": ["r@sha256:3"]})
        );
    }

    /// A scripted engine on a real Unix socket: each request is answered with `answer(path)`
    /// (a raw HTTP answer); the paths asked are recorded.
    fn scripted_engine(
        answer: fn(&str) -> String,
    ) -> (
        tempfile::TempDir,
        Endpoint,
        Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("engine.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut stream = BufReader::new(stream);
                    loop {
                        let mut first = String::new();
                        if stream.read_line(&mut first).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let mut line = String::new();
                        while stream.read_line(&mut line).await.unwrap() > 0 && line != "\r\n" {
                            line.clear();
                        }
                        let path = first.split(' ').nth(1).unwrap_or_default().to_string();
                        log.lock().unwrap().push(path.clone());
                        let raw = answer(&path);
                        stream.get_mut().write_all(raw.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (dir, Endpoint::Unix(path), seen)
    }

    fn ok(headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    #[tokio::test]
    async fn the_version_comes_from_the_ping_header_without_asking_version() {
        let (_dir, endpoint, seen) = scripted_engine(|path| match path {
            "/_ping" => ok("Api-Version: 1.41\r\n", "OK"),
            _ => ok("", "{}"),
        });
        let engine = Engine::connect(endpoint).await.unwrap();
        assert_eq!(engine.prefix, "/v1.41");
        engine.info().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), ["/_ping", "/v1.41/info"]);
    }

    #[tokio::test]
    async fn a_ping_without_the_header_falls_back_to_version() {
        let (_dir, endpoint, seen) = scripted_engine(|path| match path {
            "/_ping" => ok("", "OK"),
            "/version" => ok("", r#"{"ApiVersion": "1.40"}"#),
            _ => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
        });
        let engine = Engine::connect(endpoint).await.unwrap();
        assert_eq!(engine.prefix, "/v1.40");
        assert_eq!(*seen.lock().unwrap(), ["/_ping", "/version"]);
    }

    #[tokio::test]
    async fn a_newer_engine_is_spoken_to_in_the_newest_known_version() {
        let (_dir, endpoint, _) = scripted_engine(|_| ok("API-Version: 1.99\r\n", "OK"));
        let engine = Engine::connect(endpoint).await.unwrap();
        assert_eq!(engine.prefix, "/v1.53");
    }

    #[tokio::test]
    async fn a_socket_that_is_not_an_engine_is_unreachable() {
        let (_dir, endpoint, _) = scripted_engine(|path| match path {
            "/_ping" => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".into(),
            _ => ok("", "<html>"),
        });
        let err = Engine::connect(endpoint).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("did not answer JSON (expected value at line 1 column 1); is this a container engine's socket?"),
            "{err}"
        );
    }
}
