//! The real `docker-registry` (CNCF distribution, from Debian) on a free 127.0.0.1 port with its
//! own config and temp root, shared by every test of the process; plus helpers that push
//! images and multi-platform indexes through the registry API (OCI media types, labels chosen
//! by the test).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _dir: tempfile::TempDir,
    // The watching shell; kept so it is not a zombie-in-waiting nobody owns.
    _watcher: std::process::Child,
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
}

static SHARED: OnceLock<Registry> = OnceLock::new();

/// The registry shared by this test process (started on first use).
pub fn shared() -> &'static Registry {
    SHARED.get_or_init(Registry::start)
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A repository name unique to this call: `it-dep-<what>-<8 hex>`.
pub fn unique_repo(what: &str) -> String {
    format!(
        "it-dep-{what}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

impl Registry {
    fn start() -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("it-dep-registry")
            .tempdir()
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        // The registry must not outlive the test process, which never drops statics: a shell
        // watches our pid, stops the registry when we are gone and removes its temp root.
        let script = r#"docker-registry serve "$1" >"$2" 2>&1 & r=$!
while kill -0 "$3" 2>/dev/null && kill -0 "$r" 2>/dev/null; do sleep 1; done
kill "$r" 2>/dev/null; wait "$r" 2>/dev/null; rm -rf "$4""#;
        let watcher = Command::new("sh")
            .args(["-c", script, "sh"])
            .arg(&cfg)
            .arg(dir.path().join("log"))
            .arg(std::process::id().to_string())
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry (apt-get install docker-registry)");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::new();
        let reg = Registry {
            addr,
            _dir: dir,
            _watcher: watcher,
            rt,
            http,
        };
        for _ in 0..200 {
            if reg.get_status("/v2/") == 200 {
                return reg;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not answer on {}: {}",
            reg.addr,
            std::fs::read_to_string(reg._dir.path().join("log")).unwrap_or_default()
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Status of a GET (with the full manifest Accept list).
    pub fn get_status(&self, path: &str) -> u16 {
        self.rt.block_on(async {
            match self
                .http
                .get(self.url(path))
                .header("accept", imagetrail::registry::MANIFEST_ACCEPT)
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            }
        })
    }

    /// Whether the registry serves the manifest `reference` of `repo`.
    pub fn has_manifest(&self, repo: &str, reference: &str) -> bool {
        self.get_status(&format!("/v2/{repo}/manifests/{reference}")) == 200
    }

    /// The tags of a repository, sorted.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        self.rt.block_on(async {
            let v: serde_json::Value = self
                .http
                .get(self.url(&format!("/v2/{repo}/tags/list")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let mut t: Vec<String> = v["tags"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            t.sort();
            t
        })
    }

    /// Upload a blob; returns its digest.
    pub fn blob(&self, repo: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        self.rt.block_on(async {
            let r = self
                .http
                .post(self.url(&format!("/v2/{repo}/blobs/uploads/")))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202, "start upload");
            let loc = r.headers()["location"].to_str().unwrap().to_string();
            let loc = if loc.starts_with("http") {
                loc
            } else {
                self.url(&loc)
            };
            let sep = if loc.contains('?') { '&' } else { '?' };
            self.put_created(
                format!("{loc}{sep}digest={digest}"),
                "application/octet-stream",
                bytes,
                "finish upload",
            )
            .await;
        });
        digest
    }

    /// PUT a manifest under `reference` (a tag or its digest); returns its digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        let digest = format!("sha256:{:x}", Sha256::digest(bytes));
        self.rt.block_on(self.put_created(
            self.url(&format!("/v2/{repo}/manifests/{reference}")),
            media_type,
            bytes,
            "put manifest",
        ));
        digest
    }

    /// PUT `bytes` as `content_type` to `url` and assert the registry answers 201 Created;
    /// `what` and the answer's body name the failure.
    async fn put_created(&self, url: String, content_type: &str, bytes: &[u8], what: &str) {
        let r = self
            .http
            .put(url)
            .header("content-type", content_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{what}: {:?}", r.text().await);
    }

    /// GET a manifest's bytes and media type.
    pub fn get_manifest(&self, repo: &str, reference: &str) -> (String, Vec<u8>) {
        self.rt.block_on(async {
            let r = self
                .http
                .get(self.url(&format!("/v2/{repo}/manifests/{reference}")))
                .header("accept", imagetrail::registry::MANIFEST_ACCEPT)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "get manifest {repo}:{reference}");
            let mt = r.headers()["content-type"].to_str().unwrap().to_string();
            (mt, r.bytes().await.unwrap().to_vec())
        })
    }

    /// Point `tag` at the manifest `digest` (moves the tag if it exists).
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        let (mt, bytes) = self.get_manifest(repo, digest);
        self.put_manifest(repo, tag, &mt, &bytes);
    }

    /// Push a one-layer OCI image with `labels`, built for `arch`, created at `created`;
    /// tagged `tag` when given. Returns the manifest digest.
    pub fn push_image(
        &self,
        repo: &str,
        tag: Option<&str>,
        arch: &str,
        created: &str,
        labels: &[(&str, &str)],
    ) -> String {
        let layer = format!("layer {repo} {arch} {}", uuid::Uuid::new_v4()).into_bytes();
        let layer_digest = self.blob(repo, &layer);
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "created": created,
            "config": {"Labels": labels},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        })
        .to_string()
        .into_bytes();
        let config_digest = self.blob(repo, &config);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
        })
        .to_string()
        .into_bytes();
        let digest = format!("sha256:{:x}", Sha256::digest(&manifest));
        self.put_manifest(
            repo,
            tag.unwrap_or(&digest),
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
    }

    /// Push an amd64 image tagged `tag`, created at `created`, with the labels a CI build sets
    /// ([`oci_labels`] with the same `created`). Returns the manifest digest.
    pub fn push_ci_image(
        &self,
        repo: &str,
        tag: &str,
        created: &str,
        revision: &str,
        description: &str,
    ) -> String {
        self.push_image(
            repo,
            Some(tag),
            "amd64",
            created,
            &oci_labels(created, revision, description),
        )
    }

    /// Push an OCI index of `children` (digest, arch), tagged `tag`. Returns its digest.
    pub fn push_index(&self, repo: &str, tag: &str, children: &[(&str, &str)]) -> String {
        let manifests: Vec<serde_json::Value> = children
            .iter()
            .map(|(d, arch)| {
                let (_, bytes) = self.get_manifest(repo, d);
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d,
                    "size": bytes.len(),
                    "platform": {"os": "linux", "architecture": arch},
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        })
        .to_string()
        .into_bytes();
        self.put_manifest(repo, tag, "application/vnd.oci.image.index.v1+json", &index)
    }
}

/// The OCI labels a CI build sets (seed 003 §4.2).
pub fn oci_labels<'a>(
    created: &'a str,
    revision: &'a str,
    description: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("org.opencontainers.image.created", created),
        ("org.opencontainers.image.revision", revision),
        ("org.opencontainers.image.description", description),
        (
            "org.opencontainers.image.source",
            "https://github.com/example/hello",
        ),
        ("org.opencontainers.image.title", "hello"),
    ]
}
