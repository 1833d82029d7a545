//! A deploy pipeline and the scanner's `deploy` scan type against the real server: the records
//! it writes are the ones the CLI's queries read.

use serde_json::Value;

use crate::server::{KEY, TestServer};
use crate::support::docker::{build_image, docker};
use crate::support::registry::{shared, unique_repo};
use crate::support::scan::ScanDirs;
use crate::support::{imagetrail, run, stderr, stdout};

#[tokio::test]
async fn imagetrail_deploy_endpoint_records_on_the_server_and_the_cli_reads_it_back() {
    let server = TestServer::start(|_| {}).await;
    let url = server.url.clone();
    let server_state = server.dir().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        let reg = shared();
        let repo = unique_repo("srv");
        let digest = reg.push_ci_image(&repo, "v1", "2026-01-24T22:41:03Z", "46e443d", "x");
        let local = tempfile::Builder::new()
            .prefix("it-srv-")
            .tempdir()
            .unwrap();
        let key = local.path().join("key");
        std::fs::write(&key, format!("{KEY}\n")).unwrap();
        let deploy = run(imagetrail()
            .args(["deploy", "--env", "production", "--name", "web", "--image"])
            .arg(format!("{}/{repo}:v1", reg.addr))
            .arg("--endpoint")
            .arg(format!("{url}/api/v1/deployments"))
            .arg("--api-key-file")
            .arg(&key)
            .arg("--state-dir")
            .arg(local.path()));
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
        (deploy, history, format!("{}/{repo}", reg.addr), digest)
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
