//! `imagetrail serve` driven over real HTTP: the server runs in-process through
//! `server::run(listener, config, shutdown)` on 127.0.0.1:0 with its own state directory, and
//! the tests check the answers and the files it wrote.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imagetrail::records::Store;
use imagetrail::server::{ApiKeys, Config};
use serde_json::{Value, json};

/// The API key the test servers accept.
pub const KEY: &str = "it-srv-key-3f9a0c";

/// A digest for test images.
pub fn digest(n: u32) -> String {
    format!("sha256:{:064x}", n)
}

/// A server running in this test's runtime; dropping it shuts it down.
pub struct TestServer {
    /// `http(s)://127.0.0.1:PORT`.
    pub url: String,
    /// The state directory.
    pub state: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    /// Start with the test key and `configure` applied to the defaults.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestServer {
        let state = tempfile::Builder::new()
            .prefix("it-srv-")
            .tempdir()
            .unwrap();
        let mut config = Config::new(state.path());
        config.api_keys = Some(ApiKeys::parse(&format!("ci {KEY}\n")));
        configure(&mut config);
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(imagetrail::server::run(listener, config, async move {
            let _ = rx.await;
        }));
        TestServer {
            url: format!("{scheme}://{addr}"),
            state,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        self.state.path()
    }

    /// The records the server wrote.
    pub fn store(&self) -> Store {
        Store::new(self.state.path())
    }

    /// `url` + `path`.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The callback log's lines, parsed.
    pub fn callbacks(&self) -> Vec<Value> {
        let path = self.dir().join(".analytics/callbacks.jsonl");
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("each callback line is JSON"))
            .collect()
    }

    /// Shut down gracefully, then move the state directory to `to` (kept after the drop).
    pub async fn stop_and_move(mut self, to: &Path) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        std::fs::rename(self.state.path(), to).unwrap();
    }

    /// Shut down gracefully and wait for `run` to return.
    pub async fn stop(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A plain HTTP client.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// GET `url` with `client` and parse the JSON answer.
pub async fn get_json(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// GET `url` with `client` and read the body as text (a page, `/metrics`).
pub async fn get_text(client: &reqwest::Client, url: impl reqwest::IntoUrl) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// POST `body` as JSON to `path` with the test key; (status, body).
pub async fn post_deployment(server: &TestServer, body: Value) -> (u16, Value) {
    let r = client()
        .post(server.at("/api/v1/deployments"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// GET `path`; (status, body).
pub async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let r = client().get(server.at(path)).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// POST raw bytes with a content type; (status, body).
async fn post_raw(
    server: &TestServer,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Value) {
    let r = client()
        .post(server.at(path))
        .header("content-type", content_type)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

/// POST `body` as `application/json` to `path`, without a key; (status, body).
async fn post_json(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    post_raw(
        server,
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
}

/// The environment directories under the state directory (what a write would have created).
fn env_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.ends_with(".analytics"))
        .collect();
    out.sort();
    out
}

fn register_body(sha: &str) -> Value {
    json!({
        "git-url": "https://github.com/example/app",
        "git-sha": sha,
        "email-ids": "dev@example.com",
        "image-name": "it-srv/app:1",
        "image-id": "0123abcd",
        "labels": {"org.opencontainers.image.revision": sha}
    })
}

#[tokio::test]
async fn register_is_stored_and_a_repeat_says_when_it_was_last_scanned() {
    let server = TestServer::start(|_| {}).await;
    let health = client().get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let body = register_body("46e443d");
    let (status, first) = post_json(&server, "/api/v1/register", &body).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["success"], true);
    assert_eq!(
        first["summary"],
        "Repository https://github.com/example/app with commit-hash 46e443d has been successfully registered. Please check back for report after some time."
    );
    assert!(first.get("last_scanned_at").is_none(), "{first}");

    let (status, again) = post_json(&server, "/api/v1/register", &body).await;
    assert_eq!(status, 200, "{again}");
    let stamp = again["last_scanned_at"].as_str().expect("last_scanned_at");
    assert!(
        chrono::DateTime::parse_from_rfc2822(&stamp.replace("GMT", "+0000")).is_ok(),
        "RFC 1123 date: {stamp}"
    );
    assert_eq!(again["last_scan_report"], Value::Null);

    // Another commit of the same repository is a first registration again.
    let (_, other) = post_json(&server, "/api/v1/register", &register_body("aaaaaaa")).await;
    assert!(other.get("last_scanned_at").is_none(), "{other}");

    let lines = server.callbacks();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["kind"], "register");
    assert_eq!(
        lines[0]["request"], body,
        "the request is stored as received"
    );
    assert_eq!(lines[1]["answer"], again);
}

#[tokio::test]
async fn register_history_survives_a_restart() {
    let server = TestServer::start(|_| {}).await;
    let body = register_body("1234567");
    let (status, _) = post_json(&server, "/api/v1/register", &body).await;
    assert_eq!(status, 200);
    let keep = tempfile::Builder::new()
        .prefix("it-srv-")
        .tempdir()
        .unwrap();
    let moved = keep.path().join("state");
    server.stop_and_move(&moved).await;

    let again = TestServer::start(|c| c.state_dir = moved.clone()).await;
    let (status, answer) = post_json(&again, "/api/v1/register", &body).await;
    assert_eq!(status, 200);
    assert!(answer["last_scanned_at"].is_string(), "{answer}");
}

#[tokio::test]
async fn register_with_the_same_idempotency_key_is_answered_the_same_and_stored_once() {
    let server = TestServer::start(|_| {}).await;
    let send = |sha: &'static str| {
        client()
            .post(server.at("/api/v1/register"))
            .header("content-type", "application/json")
            .header("idempotency-key", "it-srv-retry-1")
            .body(register_body(sha).to_string())
            .send()
    };
    let a: Value = send("46e443d").await.unwrap().json().await.unwrap();
    let b: Value = send("46e443d").await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
    assert!(
        b.get("last_scanned_at").is_none(),
        "a retry is not a repeat: {b}"
    );
    assert_eq!(server.callbacks().len(), 1);
}

#[tokio::test]
async fn callbacks_refuse_a_content_type_that_is_not_exactly_application_json() {
    let server = TestServer::start(|_| {}).await;
    let body = register_body("46e443d").to_string();
    for ct in ["application/json; charset=utf-8", "text/plain"] {
        let (status, answer) = post_raw(&server, "/api/v1/register", ct, body.as_bytes()).await;
        assert_eq!(status, 400, "{ct}");
        assert_eq!(answer["success"], false);
        assert_eq!(answer["summary"], "Set content type to application/json");
    }
    let (status, _) = post_raw(&server, "/api/v1/scanner-error", "text/plain", b"{}").await;
    assert_eq!(status, 400);
    assert!(server.callbacks().is_empty());
}

#[tokio::test]
async fn register_requires_git_url_and_git_sha() {
    let server = TestServer::start(|_| {}).await;
    for (missing, body) in [
        ("git-url", json!({"git-sha": "46e443d"})),
        (
            "git-sha",
            json!({"git-url": "https://github.com/example/app", "git-sha": "  "}),
        ),
    ] {
        let (status, answer) = post_json(&server, "/api/v1/register", &body).await;
        assert_eq!(status, 400);
        assert_eq!(answer["summary"], format!("{missing} cannot be empty"));
    }
    assert!(server.callbacks().is_empty());
}

#[tokio::test]
async fn malformed_json_is_a_400_that_says_where() {
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = post_raw(
        &server,
        "/api/v1/register",
        "application/json",
        b"{\"git-url\": \"x\",\n \"git-sha\": ",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "malformed-json");
    assert!(
        answer["summary"].as_str().unwrap().contains("line 2"),
        "{answer}"
    );
    let r = client()
        .post(server.at("/api/v1/deployments"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"image\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "malformed-json");
    assert!(server.callbacks().is_empty());
    assert!(env_dirs(server.dir()).is_empty());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let server = TestServer::start(|c| c.max_body_bytes = 4096).await;
    let mut body = register_body("46e443d");
    body["labels"]["padding"] = json!("x".repeat(8192));
    let (status, answer) = post_json(&server, "/api/v1/register", &body).await;
    assert_eq!(status, 413);
    assert_eq!(answer["error"], "body-too-large");
    let big =
        json!({"image": {"url": format!("r.example/a@{}", digest(1)), "name": "x".repeat(8192)}});
    let (status, _) = post_deployment(&server, big).await;
    assert_eq!(status, 413);
    assert!(server.callbacks().is_empty());
    assert!(env_dirs(server.dir()).is_empty());
}

#[tokio::test]
async fn scanner_error_is_stored() {
    let server = TestServer::start(|_| {}).await;
    let body = json!({"email-ids": "dev@example.com", "image-name": "it-srv/app:1", "error": ["git-sha label is missing"]});
    let (status, answer) = post_json(&server, "/api/v1/scanner-error", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["success"], true);
    let lines = server.callbacks();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["kind"], "scanner-error");
    assert_eq!(lines[0]["request"], body);

    let (status, answer) = post_json(
        &server,
        "/api/v1/scanner-error",
        &json!({"image-name": "x"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "missing-field");
}

#[tokio::test]
async fn deployments_without_a_valid_api_key_are_401_and_store_nothing() {
    let server = TestServer::start(|_| {}).await;
    let body = json!({"image": {"url": format!("registry.example.com/team/app@{}", digest(1))}});
    let no_key = client()
        .post(server.at("/api/v1/deployments"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        no_key.headers()["www-authenticate"],
        "Bearer realm=\"imagetrail\""
    );
    let answer: Value = no_key.json().await.unwrap();
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .contains("missing API key"),
        "{answer}"
    );
    for auth in ["Bearer wrong-key", "Basic aXQ6c3J2", "Bearer "] {
        let r = client()
            .post(server.at("/api/v1/deployments"))
            .header("authorization", auth)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
    }
    assert!(env_dirs(server.dir()).is_empty(), "nothing stored");

    // A server without keys refuses writes and says how to fix it.
    let keyless = TestServer::start(|c| c.api_keys = None).await;
    let (status, answer) = post_deployment(&keyless, body).await;
    assert_eq!(status, 401);
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .contains("--api-keys-file")
    );
    assert!(env_dirs(keyless.dir()).is_empty());
}

#[tokio::test]
async fn a_deployment_is_recorded_with_defaults_and_read_back_by_the_store_and_the_api() {
    let server = TestServer::start(|_| {}).await;
    let url = format!("registry.example.com/team/app:1.4@{}", digest(7));
    // Lower-case `bearer`, as Atomist's own docs write it.
    let r = client()
        .post(server.at("/api/v1/deployments"))
        .header("authorization", format!("bearer {KEY}"))
        .header("content-type", "application/json")
        .body(json!({"image": {"url": url}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["deployment"]["app"], "team/app");

    let store = server.store();
    let current = store
        .current("deployed", "team/app")
        .unwrap()
        .expect("recorded");
    assert_eq!(current.image.repo, "registry.example.com/team/app");
    assert_eq!(current.image.tag.as_deref(), Some("1.4"));
    assert_eq!(current.image.digest, digest(7));
    assert_eq!(current.image.platform.os, "linux");
    assert_eq!(current.image.platform.architecture, "amd64");
    assert_eq!(current.deployment.deployed_by, "ci", "the key's label");
    assert_eq!(store.history("deployed", "team/app").unwrap().len(), 1);
    // The files the CLI reads, where the CLI expects them.
    assert!(
        server
            .dir()
            .join("deployed/team%2Fapp/deploy-info.yml")
            .is_file()
    );
    assert!(
        server
            .dir()
            .join("deployed/team%2Fapp/deploy-history.yml")
            .is_file()
    );

    let (status, envs) = get(&server, "/api/v1/environments").await;
    assert_eq!(status, 200);
    assert_eq!(
        envs,
        json!({"environments": [{"name": "deployed", "apps": ["team/app"]}]})
    );
    let (status, env) = get(&server, "/api/v1/environments/deployed").await;
    assert_eq!(status, 200);
    assert_eq!(env["deployments"][0]["image"]["digest"], digest(7));
    let (status, _) = get(&server, "/api/v1/environments/nowhere").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn platform_name_and_environment_from_the_body_are_kept() {
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = post_deployment(
        &server,
        json!({
            "environment": {"name": "production"},
            "image": {"url": format!("gcr.io/atomist/bot-service@{}", digest(2)), "name": "bot"},
            "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
            "deployed_by": "alice"
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let d = server
        .store()
        .current("production", "bot")
        .unwrap()
        .unwrap();
    assert_eq!(d.deployment.name.as_deref(), Some("bot"));
    assert_eq!(d.deployment.deployed_by, "alice");
    assert_eq!(d.image.platform.architecture, "arm64");
    assert_eq!(d.image.platform.variant.as_deref(), Some("v8"));
}

#[tokio::test]
async fn a_tag_only_image_url_is_a_400_that_says_why() {
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": "registry.example.com/team/app:1.4"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "image-not-pinned");
    let summary = answer["summary"].as_str().unwrap();
    assert!(summary.contains("not pinned by digest"), "{summary}");
    assert!(summary.contains("tags move"), "{summary}");
    assert!(
        summary.contains("registry.example.com/team/app@sha256:<digest>"),
        "{summary}"
    );
    let (status, answer) = post_deployment(&server, json!({"image": {}})).await;
    assert_eq!(status, 400);
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .contains("image.url is required")
    );
    let (status, _) = post_deployment(
        &server,
        json!({"image": {"url": "registry.example.com/team/app@sha256:1234"}}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(env_dirs(server.dir()).is_empty());
}

#[tokio::test]
async fn image_name_is_unique_per_repository_per_environment() {
    let server = TestServer::start(|_| {}).await;
    let repo = "registry.example.com/team/app";
    // An app recorded by `imagetrail deploy --app frontend --name web` holds the name "web".
    let (status, _) = post_deployment(
        &server,
        json!({"image": {"url": format!("{repo}@{}", digest(1)), "name": "frontend"}}),
    )
    .await;
    assert_eq!(status, 201);
    let mut d = server
        .store()
        .current("deployed", "frontend")
        .unwrap()
        .unwrap();
    d.app = "frontend-cli".into();
    d.deployment.name = Some("web".into());
    server.store().record(&d).unwrap();

    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": format!("{repo}@{}", digest(2)), "name": "web"}}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "duplicate-name");
    assert!(answer["summary"].as_str().unwrap().contains("frontend-cli"));

    // Without a name, the repository is ambiguous: it runs as named instances here.
    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": format!("{repo}@{}", digest(3))}}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "name-required");
    assert!(
        server
            .store()
            .current("deployed", "team/app")
            .unwrap()
            .is_none()
    );

    // The same name in another environment is fine.
    let (status, _) = post_deployment(
        &server,
        json!({"environment": {"name": "staging"}, "image": {"url": format!("{repo}@{}", digest(2)), "name": "web"}}),
    )
    .await;
    assert_eq!(status, 201);
}

#[tokio::test]
async fn an_environment_with_a_dotdot_segment_is_refused_while_cluster_namespace_works() {
    let server = TestServer::start(|_| {}).await;
    let url = format!("registry.example.com/team/app@{}", digest(4));
    for env in ["../escape", "prod/../../etc", "a//b"] {
        let (status, answer) = post_deployment(
            &server,
            json!({"environment": {"name": env}, "image": {"url": url}}),
        )
        .await;
        assert_eq!(status, 400, "{env}: {answer}");
        assert_eq!(answer["error"], "invalid-name");
    }
    assert!(env_dirs(server.dir()).is_empty());
    assert!(!server.dir().parent().unwrap().join("escape").exists());

    let (status, _) = post_deployment(
        &server,
        json!({"environment": {"name": "cluster-1/payments"}, "image": {"url": url}}),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(
        env_dirs(server.dir()),
        vec![server.dir().join("cluster-1%2Fpayments")]
    );
    for path in [
        "/api/v1/environments/cluster-1/payments",
        "/api/v1/environments/cluster-1%2Fpayments",
    ] {
        let (status, env) = get(&server, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(env["environment"], "cluster-1/payments");
        assert_eq!(env["deployments"][0]["image"]["digest"], digest(4));
    }
    // (A `..` in the URL path is resolved by every HTTP client before it is sent; the query
    // parameter carries one as it is.)
    let (status, answer) = get(&server, "/api/v1/deployments?environment=cluster-1/../x").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid-name");
}

#[tokio::test]
async fn history_and_point_in_time_queries() {
    let server = TestServer::start(|_| {}).await;
    let url = |n| format!("registry.example.com/team/app@{}", digest(n));
    let (_, first) = post_deployment(
        &server,
        json!({"environment": {"name": "prod"}, "image": {"url": url(1)}}),
    )
    .await;
    let (_, second) = post_deployment(
        &server,
        json!({"environment": {"name": "prod"}, "image": {"url": url(2)}}),
    )
    .await;
    post_deployment(
        &server,
        json!({"environment": {"name": "staging"}, "image": {"url": url(3)}}),
    )
    .await;

    let (status, all) = get(&server, "/api/v1/deployments").await;
    assert_eq!(status, 200);
    let digests: Vec<&str> = all["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["image"]["digest"].as_str().unwrap())
        .collect();
    assert_eq!(digests, vec![digest(1), digest(2), digest(3)]);

    let (_, prod) = get(&server, "/api/v1/deployments?environment=prod&app=team/app").await;
    assert_eq!(prod["deployments"].as_array().unwrap().len(), 2);

    let t1 = first["deployment"]["deployment"]["deployed_at"]
        .as_str()
        .unwrap();
    let t2 = second["deployment"]["deployment"]["deployed_at"]
        .as_str()
        .unwrap();
    assert!(t1 <= t2);
    let at = |t: &str| {
        format!(
            "/api/v1/deployments?environment=prod&at={}",
            t.replace('+', "%2B")
        )
    };
    let (status, then) = get(&server, &at(t1)).await;
    assert_eq!(status, 200, "{then}");
    assert_eq!(then["deployments"][0]["image"]["digest"], digest(1));
    let (_, now) = get(&server, &at(t2)).await;
    assert_eq!(now["deployments"][0]["image"]["digest"], digest(2));
    let (_, before) = get(&server, &at("2000-01-01T00:00:00Z")).await;
    assert_eq!(before["deployments"], json!([]));

    let (status, bad) = get(&server, "/api/v1/deployments?at=yesterday").await;
    assert_eq!(status, 400);
    assert!(bad["summary"].as_str().unwrap().contains("RFC 3339"));
}

/// Read what the server sends until it closes the connection; panics if it is still open after
/// 60 s (far beyond the 1 s request timeout: the server did not cut the client off).
fn read_to_close(stream: &mut TcpStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut out = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server kept the connection open: {e}"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_is_cut_off_and_does_not_hold_the_server() {
    let server = TestServer::start(|c| c.request_timeout = Duration::from_secs(1)).await;
    let addr = server.url.trim_start_matches("http://").to_string();

    let stalled = tokio::task::spawn_blocking({
        let addr = addr.clone();
        move || {
            // Headers complete, body promised but never sent in full.
            let mut body_stall = TcpStream::connect(&addr).unwrap();
            body_stall
                .write_all(
                    b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"git-url\"",
                )
                .unwrap();
            // Headers never finished.
            let mut header_stall = TcpStream::connect(&addr).unwrap();
            header_stall.write_all(b"POST /api/v1/register HTTP/1.1\r\nHost: x\r\n").unwrap();
            // Connected, nothing sent.
            let silent = TcpStream::connect(&addr).unwrap();
            (body_stall, header_stall, silent)
        }
    })
    .await
    .unwrap();

    // Meanwhile the server answers others.
    let (status, _) = post_json(&server, "/api/v1/register", &register_body("46e443d")).await;
    assert_eq!(status, 200);

    let (mut body_stall, mut header_stall, mut silent) = stalled;
    let answers = tokio::task::spawn_blocking(move || {
        (
            read_to_close(&mut body_stall),
            read_to_close(&mut header_stall),
            read_to_close(&mut silent),
        )
    })
    .await
    .unwrap();
    assert!(answers.0.starts_with("HTTP/1.1 408"), "{}", answers.0);
    assert!(answers.0.contains("request-timeout"), "{}", answers.0);
    // The stalled header and the silent connection are closed (hyper answers 408 or just closes).
    for a in [&answers.1, &answers.2] {
        assert!(a.is_empty() || a.starts_with("HTTP/1.1 408"), "{a}");
    }
    assert_eq!(
        server.callbacks().len(),
        1,
        "only the complete request is stored"
    );
}

#[tokio::test]
async fn graceful_shutdown_returns_and_unknown_paths_are_json_404() {
    let server = TestServer::start(|_| {}).await;
    let (status, answer) = get(&server, "/api/v2/nothing").await;
    assert_eq!(status, 404);
    assert_eq!(answer["error"], "not-found");
    let r = client()
        .delete(server.at("/api/v1/deployments"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    server.stop().await;
}

#[tokio::test]
async fn a_retried_deployment_with_the_same_idempotency_key_is_recorded_once() {
    let server = TestServer::start(|_| {}).await;
    let body = json!({"image": {"url": format!("registry.example.com/team/app@{}", digest(9))}});
    let send = || {
        client()
            .post(server.at("/api/v1/deployments"))
            .bearer_auth(KEY)
            .header("idempotency-key", "it-srv-deploy-1")
            .json(&body)
            .send()
    };
    let a: Value = send().await.unwrap().json().await.unwrap();
    let b: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(a, b);
    assert_eq!(
        server
            .store()
            .history("deployed", "team/app")
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn callbacks_can_require_an_api_key() {
    let server = TestServer::start(|c| c.callbacks_require_key = true).await;
    let body = register_body("46e443d");
    let (status, answer) = post_json(&server, "/api/v1/register", &body).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"], "unauthorized");
    assert!(server.callbacks().is_empty());
    let r = client()
        .post(server.at("/api/v1/register"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.callbacks().len(), 1);
}

#[tokio::test]
async fn a_torn_callback_line_is_kept_and_new_lines_start_fresh() {
    let state = tempfile::Builder::new()
        .prefix("it-srv-")
        .tempdir()
        .unwrap();
    let log = state.path().join(".analytics/callbacks.jsonl");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let whole = json!({
        "kind": "register", "received_at": "2026-11-22T05:00:00Z",
        "request": {"git-url": "https://github.com/example/app", "git-sha": "46e443d"},
        "answer": {"success": true}
    });
    let torn = "{\"kind\":\"register\",\"received_at\":\"2026-11-22T05:00:01Z\",\"requ";
    std::fs::write(&log, format!("{whole}\n{torn}")).unwrap();

    let dir = state.path().to_path_buf();
    let server = TestServer::start(|c| c.state_dir = dir).await;
    let (status, answer) = post_json(&server, "/api/v1/register", &register_body("46e443d")).await;
    assert_eq!(status, 200);
    assert_eq!(
        answer["last_scanned_at"], "Sun, 22 Nov 2026 05:00:00 GMT",
        "the whole line before the torn one still counts"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0], whole.to_string(), "earlier entries byte for byte");
    assert_eq!(lines[1], torn, "the torn line is kept as it was");
    let new: Value = serde_json::from_str(lines[2]).expect("the new entry is a whole line");
    assert_eq!(new["request"]["git-sha"], "46e443d");
}

#[tokio::test]
async fn a_torn_history_entry_is_reported_beside_the_whole_ones() {
    let server = TestServer::start(|_| {}).await;
    let url = format!("registry.example.com/team/app@{}", digest(1));
    let (status, _) = post_deployment(
        &server,
        json!({"environment": {"name": "prod"}, "image": {"url": url}}),
    )
    .await;
    assert_eq!(status, 201);
    let history = server.store().history_path("prod", "team/app").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&history)
        .unwrap();
    // A cut-off copy of what the writer writes (see records::history's framing).
    f.write_all(b"- image:\n    repo: \"regis").unwrap();
    drop(f);
    let (status, answer) = get(&server, "/api/v1/deployments?environment=prod").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deployments"].as_array().unwrap().len(), 1);
    let warning = answer["warnings"][0].as_str().unwrap();
    assert!(warning.contains("incomplete"), "{warning}");
}

/// POST a deployment of `n` with `key` as its Idempotency-Key; (status, body).
async fn post_keyed(server: &TestServer, key: &str, n: u32) -> (u16, Value) {
    let body = json!({"image": {"url": format!("registry.example.com/team/app@{}", digest(n))}});
    let r = client()
        .post(server.at("/api/v1/deployments"))
        .bearer_auth(KEY)
        .header("idempotency-key", key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_requests_with_one_idempotency_key_record_one_deployment() {
    let server = TestServer::start(|_| {}).await;
    for round in 0..5u32 {
        let key = format!("it-srv-race-{round}");
        let answers =
            futures_util::future::join_all((0..10).map(|_| post_keyed(&server, &key, 100 + round)))
                .await;
        for (status, answer) in &answers {
            assert_eq!(*status, 201, "{answer}");
            assert_eq!(
                answer, &answers[0].1,
                "every duplicate replays the one answer"
            );
        }
    }
    let history = server.store().history("deployed", "team/app").unwrap();
    assert_eq!(history.len(), 5, "one entry per key: {history:#?}");
}

#[tokio::test]
async fn an_idempotency_key_is_remembered_across_a_restart() {
    let server = TestServer::start(|_| {}).await;
    let (status, first) = post_keyed(&server, "it-srv-restart-1", 7).await;
    assert_eq!(status, 201, "{first}");
    let keep = tempfile::Builder::new()
        .prefix("it-srv-")
        .tempdir()
        .unwrap();
    let moved = keep.path().join("state");
    server.stop_and_move(&moved).await;

    let again = TestServer::start(|c| c.state_dir = moved.clone()).await;
    let (status, replay) = post_keyed(&again, "it-srv-restart-1", 7).await;
    assert_eq!(status, 201, "{replay}");
    assert_eq!(replay, first, "the retry gets the first answer");
    let (status, _) = post_keyed(&again, "it-srv-restart-2", 8).await;
    assert_eq!(status, 201);
    // (`again` serves the moved directory, not the fresh one of its own.)
    let history = Store::new(&moved).history("deployed", "team/app").unwrap();
    assert_eq!(history.len(), 2, "{history:#?}");
    // A key whose deployment never reached the history (a crash between the two writes) is
    // not remembered: its retry is recorded.
    again.stop().await;
    let moved_again = moved.clone();
    let keys = moved_again.join(".analytics/deployment-keys.jsonl");
    let mut text = std::fs::read_to_string(&keys).unwrap();
    assert_eq!(text.lines().count(), 2, "{text}");
    let mut lost: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    lost["key"] = "ci it-srv-lost".into();
    lost["deployment"]["deployment"]["event_id"] = "01890000-0000-7000-8000-000000000000".into();
    text.push_str(&format!("{lost}\n"));
    std::fs::write(&keys, text).unwrap();
    let third = TestServer::start(|c| c.state_dir = moved_again.clone()).await;
    let (status, _) = post_keyed(&third, "it-srv-lost", 8).await;
    assert_eq!(status, 201);
    let (status, replay) = post_keyed(&third, "it-srv-restart-1", 7).await;
    assert_eq!((status, &replay), (201, &first));
    assert_eq!(
        Store::new(&moved_again)
            .history("deployed", "team/app")
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_write_is_not_answered_408_and_its_retry_is_not_recorded_twice() {
    let server = TestServer::start(|c| c.request_timeout = Duration::from_secs(1)).await;
    // Hold the environment's lock the way a second writer would: the server's write waits.
    let env = server.dir().join("deployed");
    std::fs::create_dir_all(&env).unwrap();
    let lock = std::fs::File::create(env.join(".lock")).unwrap();
    lock.lock().unwrap();
    let first = tokio::spawn({
        let url = server.at("/api/v1/deployments");
        async move {
            let r = client()
                .post(url)
                .bearer_auth(KEY)
                .header("idempotency-key", "it-srv-slow-1")
                .json(&json!({"image": {"url": format!("registry.example.com/team/app@{}", digest(3))}}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap())
        }
    });
    // Past the request timeout with the whole request sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    lock.unlock().unwrap();
    let (status, answer) = first.await.unwrap();
    assert_eq!(status, 201, "{answer}");
    let (status, retry) = post_keyed(&server, "it-srv-slow-1", 3).await;
    assert_eq!((status, &retry), (201, &answer));
    assert_eq!(
        server
            .store()
            .history("deployed", "team/app")
            .unwrap()
            .len(),
        1
    );

    // A body that never completes is the 408, and it says that nothing was recorded.
    let addr = server.url.trim_start_matches("http://").to_string();
    let text = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(
            format!(
                "POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nIdempotency-Key: it-srv-slow-2\r\nContent-Length: 500\r\n\r\n{{\"image\""
            )
            .as_bytes(),
        )
        .unwrap();
        read_to_close(&mut s)
    })
    .await
    .unwrap();
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("nothing was recorded"), "{text}");
    assert_eq!(
        server
            .store()
            .history("deployed", "team/app")
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_refused_from_the_headers_before_the_body_is_read() {
    let server = TestServer::start(|c| {
        c.request_timeout = Duration::from_secs(30);
        c.callbacks_require_key = true;
    })
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    for (path, auth) in [
        ("/api/v1/deployments", "Authorization: Bearer wrong-key\r\n"),
        ("/api/v1/deployments", ""),
        ("/api/v1/register", "Authorization: Bearer wrong-key\r\n"),
        ("/api/v1/scanner-error", ""),
    ] {
        let addr = addr.clone();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: 1048576\r\n\r\n"
        );
        // Headers only: a server that waited for the promised MiB would never answer before
        // its 30 s timeout, and then with a 408.
        let answer = tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(head.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 401"),
            "{path} {auth:?}: {answer}"
        );
        assert!(
            answer.contains("www-authenticate: Bearer realm=\"imagetrail\""),
            "{answer}"
        );
    }
    assert!(env_dirs(server.dir()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_past_the_budget_and_connections_past_the_limit_get_503_with_retry_after() {
    let server = TestServer::start(|c| {
        c.max_body_bytes = 64 * 1024;
        c.max_pending_body_bytes = 100 * 1024;
        c.max_connections = 4;
    })
    .await;
    let addr = server.url.trim_start_matches("http://").to_string();
    let answers = tokio::task::spawn_blocking(move || {
        let head = format!(
            "POST /api/v1/deployments HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n{{"
        );
        // The first takes 60,000 of the 100 KiB budget and stalls; the second does not fit.
        let mut held = TcpStream::connect(&addr).unwrap();
        held.write_all(head.as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let mut refused = TcpStream::connect(&addr).unwrap();
        refused.write_all(head.as_bytes()).unwrap();
        let over_budget = read_to_close(&mut refused);
        // Three more connections fill the limit of 4; the next is refused.
        let _open: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(&addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(500));
        let mut extra = TcpStream::connect(&addr).unwrap();
        let over_limit = read_to_close(&mut extra);
        drop(held);
        (over_budget, over_limit)
    })
    .await
    .unwrap();
    for answer in [&answers.0, &answers.1] {
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(answer.contains("server-busy"), "{answer}");
    }
    assert!(
        answers.0.contains("--max-pending-body-bytes"),
        "{}",
        answers.0
    );
    assert!(answers.1.contains("--max-connections"), "{}", answers.1);
}
