//! A deploy pipeline and the scanner's `deploy` scan type against the real server: the records
//! it writes are the ones the CLI's queries read.

use std::process::Output;

use serde_json::Value;

use crate::server::{KEY, TestServer};
use crate::support::docker::{build_image, docker};
use crate::support::registry::{shared, unique_repo};
use crate::support::scan::ScanDirs;
use crate::support::{imagetrail, run, stderr, stdout};

/// Push a CI image to the shared registry under a new repository named after `repo`, and
/// `imagetrail deploy` it into production as `name` from a throwaway state directory,
/// notifying the deployments API at `base` with the test key: (the deploy's output, the
/// repository as `host/path`, the image's digest). Blocking: call it off the runtime.
fn deploy_to_endpoint(repo: &str, name: &str, base: &str) -> (Output, String, String) {
    let reg = shared();
    let repo = unique_repo(repo);
    let digest = reg.push_ci_image(&repo, "v1", "2026-01-24T22:41:03Z", "46e443d", "x");
    let local = tempfile::Builder::new()
        .prefix("it-srv-")
        .tempdir()
        .unwrap();
    let key = local.path().join("key");
    std::fs::write(&key, format!("{KEY}\n")).unwrap();
    let deploy = run(imagetrail()
        .args(["deploy", "--env", "production", "--name", name, "--image"])
        .arg(format!("{}/{repo}:v1", reg.addr))
        .arg("--endpoint")
        .arg(format!("{base}/api/v1/deployments"))
        .arg("--api-key-file")
        .arg(&key)
        .arg("--state-dir")
        .arg(local.path()));
    (deploy, format!("{}/{repo}", reg.addr), digest)
}

#[tokio::test]
async fn imagetrail_deploy_endpoint_records_on_the_server_and_the_cli_reads_it_back() {
    let server = TestServer::start(|_| {}).await;
    let url = server.url.clone();
    let server_state = server.dir().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let (deploy, repo, digest) = deploy_to_endpoint("srv", "web", &url);
        let history = run(imagetrail()
            .args([
                "history",
                "--format",
                "json",
                "--env",
                "production",
                "--state-dir",
            ])
            .arg(&server_state));
        (deploy, history, repo, digest)
    })
    .await
    .unwrap();
    let (deploy, history, repo, digest) = out;
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    assert!(stdout(&deploy).contains("HTTP 201"), "{}", stdout(&deploy));

    let recorded = server
        .store()
        .current("production", "web")
        .unwrap()
        .unwrap();
    assert_eq!(recorded.image.repo, repo);
    assert_eq!(recorded.image.digest, digest);
    assert_eq!(recorded.deployment.name.as_deref(), Some("web"));

    assert_eq!(history.status.code(), Some(0), "{}", stderr(&history));
    let text = stdout(&history);
    assert!(
        text.contains(&digest),
        "the CLI reads the server's records: {text}"
    );
}

#[tokio::test]
async fn the_scanners_deploy_scan_records_on_the_server() {
    let server = TestServer::start(|_| {}).await;
    let url = server.url.clone();
    let (id, digest, repo, out) = tokio::task::spawn_blocking(move || {
        let reg = shared();
        let repo = format!("{}/{}", reg.addr, unique_repo("srvscan"));
        let image = format!("{repo}:1");
        let id = build_image(
            &image,
            &[
                ("git-url", "https://github.com/example/app"),
                ("git-sha", "46e443d"),
                ("email-ids", "dev@example.com"),
            ],
        );
        let pushed = docker(&["push", &image]);
        let digest = pushed
            .split_whitespace()
            .find(|w| w.starts_with("sha256:"))
            .expect("docker push prints the digest")
            .to_string();
        let dirs = ScanDirs::new();
        dirs.target(&id);
        let out = run(dirs
            .command("deploy")
            .env("SERVER", &url)
            .env("SERVER_TOKEN", KEY)
            .env("ENVIRONMENT", "it-srv/prod")
            .env("IMAGE_NAME", ""));
        let _ = std::process::Command::new("docker")
            .args(["rmi", &image])
            .output();
        (id, digest, repo, (out, dirs))
    })
    .await
    .unwrap();
    let (out, dirs) = out;
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: True"),
        "{}",
        stderr(&out)
    );
    let app = repo.split_once('/').unwrap().1;
    let recorded = server
        .store()
        .current("it-srv/prod", app)
        .unwrap()
        .expect("recorded");
    assert_eq!(recorded.image.digest, digest);
    assert_eq!(recorded.image.repo, repo);
    let legacy: Value = serde_json::from_str(&crate::support::read(
        &dirs.result(&id, "analytics_scanner_results.json"),
    ))
    .unwrap();
    assert_eq!(legacy["Successful"], true);
}

/// What the fault-injecting proxy saw: each request's `Idempotency-Key` and the status it
/// answered with.
type Seen = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, u16)>>>;

/// A real HTTP server on 127.0.0.1 in front of `upstream`: it forwards every request, and
/// answers the first `faults` of them 503 (with `Retry-After: 0`) whatever the upstream said,
/// as a proxy that lost the answer would. Returns its URL and what it saw.
async fn fault_proxy(upstream: String, faults: usize) -> (String, Seen) {
    use axum::body::Bytes;
    use axum::http::{HeaderMap, StatusCode};
    let seen: Seen = Default::default();
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
            let seen = seen.clone();
            let upstream = upstream.clone();
            async move {
                let mut req = reqwest::Client::new()
                    .post(format!("{upstream}{}", uri.path()))
                    .body(body.to_vec());
                for (name, value) in &headers {
                    if name != "host" && name != "content-length" {
                        req = req.header(name.as_str(), value.as_bytes());
                    }
                }
                let answer = req.send().await.unwrap();
                let status = answer.status().as_u16();
                let text = answer.text().await.unwrap();
                let key = headers
                    .get("idempotency-key")
                    .map(|v| v.to_str().unwrap().to_string());
                let mut seen = seen.lock().unwrap();
                let faulty = seen.len() < faults;
                let status = if faulty { 503 } else { status };
                seen.push((key, status));
                (
                    StatusCode::from_u16(status).unwrap(),
                    [("retry-after", "0"), ("content-type", "application/json")],
                    if faulty {
                        r#"{"error":"injected"}"#.to_string()
                    } else {
                        text
                    },
                )
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_endpoint_retries_a_lost_answer_with_the_same_key_and_is_recorded_once() {
    let server = TestServer::start(|_| {}).await;
    let (proxy, seen) = fault_proxy(server.url.clone(), 2).await;
    let (deploy, _, digest) =
        tokio::task::spawn_blocking(move || deploy_to_endpoint("srvretry", "retried", &proxy))
            .await
            .unwrap();
    assert_eq!(deploy.status.code(), Some(0), "{}", stderr(&deploy));
    assert!(stdout(&deploy).contains("HTTP 201"), "{}", stdout(&deploy));
    let seen = seen.lock().unwrap().clone();
    let statuses: Vec<u16> = seen.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [503, 503, 201], "{seen:?}");
    let key = seen[0].0.clone().expect("an Idempotency-Key is sent");
    assert!(
        seen.iter().all(|(k, _)| k.as_deref() == Some(key.as_str())),
        "the same key on every attempt: {seen:?}"
    );
    // Every attempt reached the server; it recorded the deployment once.
    let history = server.store().history("production", "retried").unwrap();
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0].image.digest, digest);
}
