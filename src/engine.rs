//! The container engine (Docker or Podman) behind its socket: endpoint resolution, API version
//! negotiation, and read-only inspection. The scanner never creates, changes or deletes anything:
//! every request this module sends is a GET (`/_ping`, `/version`, `/info`, `/containers/{id}/json`,
//! `/images/{id}/json`), because operators hand a root-equivalent socket to a plug-in.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::models::{ContainerInspectResponse, ImageInspect};
use thiserror::Error;

/// How long the first contact with the engine may take before we call it unreachable.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Engine requests in flight at once for many targets: enough to keep the engine busy, few
/// enough not to queue hundreds of connections on its socket.
pub const ENGINE_IN_FLIGHT: usize = 32;

/// Seconds any later engine request may take (bollard counts whole seconds).
const REQUEST_TIMEOUT_SECS: u64 = 30;

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
        "no container or image {what:?} on the engine at {endpoint}; check the name for typos, or pull or load the image first"
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

/// One inspected target: a container (with the image it runs) or an image.
#[derive(Debug, Clone)]
pub struct Object {
    /// Container or image.
    pub kind: Kind,
    /// The object's full id without `sha256:`.
    pub id: String,
    /// The object's own labels (a container's config labels, or the image's).
    pub labels: HashMap<String, String>,
    /// The container inspect, for a container (boxed: a few KiB each, and many targets are
    /// held before their inspects are fetched).
    pub container: Option<Box<ContainerInspectResponse>>,
    /// The image inspect: the image itself, or the image a container runs (when still present).
    pub image: Option<Box<ImageInspect>>,
    /// What the list endpoints said, for an object read from them (no inspect yet).
    pub listed: Option<Listed>,
}

/// One target as the engine's list endpoints describe it (`GET /containers/json`,
/// `GET /images/json`): enough to register it; `environment.json` still needs the inspect.
#[derive(Debug, Clone, Default)]
pub struct Listed {
    /// The image id without `sha256:` (for a container, its image's).
    pub image_id: Option<String>,
    /// The image's `RepoTags`.
    pub repo_tags: Vec<String>,
    /// The image's `RepoDigests`.
    pub repo_digests: Vec<String>,
    /// The image name a container was created with.
    pub image_name: Option<String>,
}

impl Object {
    /// The image's id without `sha256:` (for a container, the image it was created from).
    pub fn image_id(&self) -> Option<String> {
        match (&self.image, &self.container, &self.listed) {
            (Some(i), _, _) => i.id.as_deref().map(strip_sha),
            (None, Some(c), _) => c.image.as_deref().map(strip_sha),
            (None, None, Some(l)) => l.image_id.clone(),
            _ => None,
        }
    }

    /// `RepoTags` of the image.
    pub fn repo_tags(&self) -> Vec<String> {
        match (&self.image, &self.listed) {
            (Some(i), _) => i.repo_tags.clone().unwrap_or_default(),
            (None, Some(l)) => l.repo_tags.clone(),
            _ => vec![],
        }
    }

    /// `RepoDigests` of the image (`repo@sha256:...`).
    pub fn repo_digests(&self) -> Vec<String> {
        match (&self.image, &self.listed) {
            (Some(i), _) => i.repo_digests.clone().unwrap_or_default(),
            (None, Some(l)) => l.repo_digests.clone(),
            _ => vec![],
        }
    }

    /// The image name a container was created with (`Config.Image`).
    pub fn container_image_name(&self) -> Option<String> {
        match (&self.container, &self.listed) {
            (Some(c), _) => c.config.as_ref().and_then(|c| c.image.clone()),
            (None, Some(l)) if self.kind == Kind::Container => l.image_name.clone(),
            _ => None,
        }
        .filter(|s| !s.is_empty())
    }
}

/// `sha256:abc` → `abc`.
pub fn strip_sha(id: &str) -> String {
    id.strip_prefix("sha256:").unwrap_or(id).to_string()
}

/// A connected, version-negotiated engine client.
#[derive(Debug, Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: Endpoint,
    /// Image inspects by id: many containers of one image (`atomic scan --all`) need the same
    /// image, which is asked for once.
    images: std::sync::Arc<std::sync::Mutex<HashMap<String, ImageInspect>>>,
}

impl Engine {
    /// Connect, ping within [`PING_TIMEOUT`] and negotiate the API version (Docker 20.10's 1.41,
    /// Podman's compat API and newer engines all answer `/version`).
    pub async fn connect(endpoint: Endpoint) -> Result<Engine, EngineError> {
        let unreachable = |reason: String| EngineError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        };
        let docker = match &endpoint {
            Endpoint::Unix(path) => Docker::connect_with_unix(
                &path.to_string_lossy(),
                REQUEST_TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            ),
            Endpoint::Tcp(addr) => {
                Docker::connect_with_http(addr, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
        }
        .map_err(|e| match e {
            BollardError::SocketNotFoundError(p) => unreachable(format!("{p} does not exist")),
            other => unreachable(other.to_string()),
        })?
        // bollard sends no User-Agent of its own; engines log this one.
        .with_request_modifier(|mut req| {
            req.headers_mut().insert(
                http::header::USER_AGENT,
                http::HeaderValue::from_static(concat!("imagetrail/", env!("CARGO_PKG_VERSION"))),
            );
            req
        });
        // `negotiate_version` is a GET /version; the timeout makes a hung socket a quick,
        // clear error instead of a 30 s wait.
        let docker = match tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    PING_TIMEOUT.as_secs()
                )));
            }
        };
        tracing::debug!(%endpoint, version = ?docker.client_version(), "engine connected");
        Ok(Engine {
            docker,
            endpoint,
            images: Default::default(),
        })
    }

    /// The endpoint this engine was reached at.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn request_error(&self, request: String, e: BollardError) -> EngineError {
        EngineError::Request {
            endpoint: self.endpoint.to_string(),
            request,
            reason: e.to_string(),
        }
    }

    /// `GET /info`, as JSON.
    pub async fn info(&self) -> Result<serde_json::Value, EngineError> {
        let info = self
            .docker
            .info()
            .await
            .map_err(|e| self.request_error("GET /info".into(), e))?;
        Ok(serde_json::to_value(info).unwrap_or_default())
    }

    /// `GET /images/{name}/json`; `None` when the engine has no such image.
    pub async fn image(&self, name: &str) -> Result<Option<ImageInspect>, EngineError> {
        match self.docker.inspect_image(name).await {
            Ok(i) => Ok(Some(i)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.request_error(format!("GET /images/{name}/json"), e)),
        }
    }

    /// [`Engine::image`] for an image id, asked of the engine once per run.
    async fn image_by_id(&self, id: &str) -> Result<Option<ImageInspect>, EngineError> {
        if let Some(i) = self.images.lock().expect("not poisoned").get(id) {
            return Ok(Some(i.clone()));
        }
        let found = self.image(id).await?;
        if let Some(i) = &found {
            self.images
                .lock()
                .expect("not poisoned")
                .insert(id.to_string(), i.clone());
        }
        Ok(found)
    }

    /// `GET /containers/{name}/json`; `None` when the engine has no such container.
    pub async fn container(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, EngineError> {
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(e) => Err(self.request_error(format!("GET /containers/{name}/json"), e)),
        }
    }

    /// Resolve an id or name: container first then image (as atomic does), or image first
    /// when `images_first` (names given on the command line are images).
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
                        let labels = c
                            .config
                            .as_ref()
                            .and_then(|c| c.labels.clone())
                            .unwrap_or_default();
                        // The image a container runs gives the digest and tags; it may have
                        // been removed since, which is not an error for the container.
                        let image = match c.image.as_deref() {
                            Some(img) if !img.is_empty() => self.image_by_id(img).await?,
                            _ => None,
                        };
                        return Ok(Object {
                            kind,
                            id: strip_sha(c.id.as_deref().unwrap_or(what)),
                            labels,
                            container: Some(Box::new(c)),
                            image: image.map(Box::new),
                            listed: None,
                        });
                    }
                }
                Kind::Image => {
                    if let Some(i) = self.image(what).await? {
                        let labels = i
                            .config
                            .as_ref()
                            .and_then(|c| c.labels.clone())
                            .unwrap_or_default();
                        return Ok(Object {
                            kind,
                            id: strip_sha(i.id.as_deref().unwrap_or(what)),
                            labels,
                            container: None,
                            image: Some(Box::new(i)),
                            listed: None,
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

impl Engine {
    /// Read many targets (full ids) with one list request instead of an inspect each: the
    /// containers in chunks of ids (`GET /containers/json?all=1&filters={"id":[...]}`), then one
    /// image inspect per distinct image (cached: `environment.json` needs them anyway). Not
    /// `GET /images/json`: the engine builds the whole image list for it (280 ms for 211 images
    /// on Docker 20.10, measured), longer than the rest of a 200-target scan. Ids the container
    /// list does not answer are tried as images. A container id wins over an image id, as in
    /// [`Engine::resolve`]. Ids still unanswered are left out (the caller inspects them); a list
    /// the engine refuses or answers in a shape we cannot read only means every target is
    /// inspected.
    pub async fn list_targets(&self, ids: &[String]) -> HashMap<String, Object> {
        use futures_util::StreamExt;
        let mut found = HashMap::new();
        if ids.is_empty() {
            return found;
        }
        let chunks = ids.chunks(100).map(|chunk| {
            let filters = HashMap::from([("id".to_string(), chunk.to_vec())]);
            self.docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters),
                    ..Default::default()
                }))
        });
        let containers = futures_util::future::join_all(chunks).await;
        let wanted: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        for answer in containers {
            let list = match answer {
                Ok(list) => list,
                Err(e) => {
                    tracing::debug!(error = %e, "GET /containers/json failed; targets are inspected");
                    return HashMap::new();
                }
            };
            for c in list {
                let Some(id) = c.id.as_deref().map(strip_sha) else {
                    continue;
                };
                // The engine's id filter matches prefixes: keep exact ids only.
                if !wanted.contains(id.as_str()) {
                    continue;
                }
                let listed = Listed {
                    image_id: c.image_id.as_deref().map(strip_sha),
                    repo_tags: vec![],
                    repo_digests: vec![],
                    image_name: c.image.clone(),
                };
                found.insert(
                    id.clone(),
                    Object {
                        kind: Kind::Container,
                        id,
                        labels: c.labels.unwrap_or_default(),
                        container: None,
                        image: None,
                        listed: Some(listed),
                    },
                );
            }
        }
        // The containers' images and the ids that are not containers, each inspected once,
        // many in flight (the engine answers them in parallel).
        let mut images: Vec<String> = found
            .values()
            .filter_map(|o| o.listed.as_ref().and_then(|l| l.image_id.clone()))
            .chain(ids.iter().filter(|id| !found.contains_key(*id)).cloned())
            .collect();
        images.sort_unstable();
        images.dedup();
        let inspected: HashMap<String, ImageInspect> = futures_util::stream::iter(images)
            .map(|id| async move {
                let image = self.image_by_id(&id).await.ok().flatten();
                image.map(|i| (id, i))
            })
            .buffer_unordered(ENGINE_IN_FLIGHT)
            .filter_map(|x| async { x })
            .collect()
            .await;
        for object in found.values_mut() {
            if let Some(listed) = object.listed.as_mut()
                && let Some(image) = listed.image_id.as_ref().and_then(|i| inspected.get(i))
            {
                listed.repo_tags = image.repo_tags.clone().unwrap_or_default();
                listed.repo_digests = image.repo_digests.clone().unwrap_or_default();
            }
        }
        for id in ids {
            if found.contains_key(id) {
                continue;
            }
            if let Some(i) = inspected.get(id) {
                found.insert(
                    id.clone(),
                    Object {
                        kind: Kind::Image,
                        id: id.clone(),
                        labels: i
                            .config
                            .as_ref()
                            .and_then(|c| c.labels.clone())
                            .unwrap_or_default(),
                        container: None,
                        image: Some(Box::new(i.clone())),
                        listed: None,
                    },
                );
            }
        }
        found
    }

    /// The inspects of an object read from the lists, for `environment.json`: the container's
    /// and its image's, or the image's. `None` where the engine no longer has it.
    pub async fn inspects(
        &self,
        kind: Kind,
        id: &str,
        image_id: Option<&str>,
    ) -> (Option<ContainerInspectResponse>, Option<ImageInspect>) {
        match kind {
            Kind::Container => {
                let image = async {
                    match image_id {
                        Some(i) => self.image_by_id(i).await.ok().flatten(),
                        None => None,
                    }
                };
                let (c, i) = tokio::join!(self.container(id), image);
                (c.ok().flatten(), i)
            }
            Kind::Image => (None, self.image_by_id(id).await.ok().flatten()),
        }
    }
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
}
