//! One image reference rule for every path that records or looks up an image: `imagetrail
//! deploy`, the deployments API and the readers (`where`, `status`, the name rule) agree on
//! the repository and the default app, and on which digests are digests.

use chrono::{TimeZone, Utc};
use imagetrail::records::{Deployment, DeploymentRecord, ImageRecord, Store};
use serde_json::json;

use crate::deploy::{deploy_to, it};
use crate::server::{TestServer, digest, post_deployment};
use crate::support::registry::{shared, unique_repo};
use crate::support::{stderr, stdout};

/// `imagetrail where WANTED` on `state`: (exit code, stdout).
fn where_(state: &std::path::Path, wanted: &str) -> (Option<i32>, String) {
    let out = it(state, &["where", wanted]);
    (out.status.code(), stdout(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_and_the_api_record_one_image_as_one_repository_and_app() {
    let server = TestServer::start(|_| {}).await;
    // The registry helper blocks on its own runtime: keep it off this one.
    let reg = tokio::task::spawn_blocking(shared).await.unwrap();
    let repo = unique_repo("oneref");
    let d = {
        let repo = repo.clone();
        tokio::task::spawn_blocking(move || {
            shared().push_ci_image(&repo, "1", "2026-01-20T18:12:55Z", "9c8e712", "first")
        })
        .await
        .unwrap()
    };

    // The CLI resolves the tag; the API is given the digest; both land in the same app.
    let image = format!("{}/{repo}:1", reg.addr);
    let out = deploy_to(server.dir(), "prod", &image, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": format!("{}/{repo}@{d}", reg.addr)}, "environment": {"name": "prod"}}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["deployment"]["app"], repo.as_str());
    let history = server.store().history("prod", &repo).unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0].image.repo, history[1].image.repo);
    assert_eq!(history[0].image.repo, format!("{}/{repo}", reg.addr));

    // A Docker Hub short name is stored as the full repository, with the familiar app name,
    // which is what `imagetrail deploy nginx:1.27` stores too.
    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": format!("nginx:1.27@{}", digest(7))}, "environment": {"name": "prod"}}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(
        answer["deployment"]["image"]["repo"],
        "docker.io/library/nginx"
    );
    assert_eq!(answer["deployment"]["app"], "nginx");

    // `where` finds it under every spelling of the reference.
    for wanted in [
        "nginx:1.27",
        "library/nginx:1.27",
        "docker.io/library/nginx:1.27",
        "index.docker.io/library/nginx:1.27",
    ] {
        let (code, so) = where_(server.dir(), wanted);
        assert_eq!(code, Some(0), "where {wanted}: {so}");
        assert!(
            so.lines().any(|l| l.starts_with("prod  nginx  ")),
            "where {wanted}: {so}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_written_with_the_short_form_read_back_as_the_full_repository() {
    let server = TestServer::start(|_| {}).await;
    // A record as an older server wrote it: repository `nginx`, named instance `web`. The
    // store now refuses to write a short form, so it is written normalised and then edited
    // back to what the older server left on disk.
    let store = Store::new(server.dir());
    store
        .record(&Deployment {
            app: "edge".into(),
            image: ImageRecord {
                tag: Some("1.27".into()),
                ..ImageRecord::new("docker.io/library/nginx", digest(1))
            },
            deployment: DeploymentRecord {
                name: Some("web".into()),
                ..DeploymentRecord::new(
                    "prod",
                    Utc.with_ymd_and_hms(2026, 1, 20, 10, 0, 0).unwrap(),
                    "old-server",
                )
            },
        })
        .unwrap();
    for file in ["deploy-info.yml", "deploy-history.yml"] {
        let path = server.dir().join("prod/edge").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"docker.io/library/nginx\""), "{text}");
        std::fs::write(
            &path,
            text.replace("\"docker.io/library/nginx\"", "\"nginx\""),
        )
        .unwrap();
    }

    let (code, so) = where_(server.dir(), "docker.io/library/nginx:1.27");
    assert_eq!(code, Some(0), "{so}");
    assert!(so.lines().any(|l| l.starts_with("prod  edge  ")), "{so}");
    let out = it(server.dir(), &["status", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"repo\": \"docker.io/library/nginx\""),
        "{}",
        stdout(&out)
    );

    // The name rule compares the same repository: `web` is taken by `edge` for nginx.
    let (status, answer) = post_deployment(
        &server,
        json!({"image": {"url": format!("docker.io/library/nginx@{}", digest(2)), "name": "web"},
               "environment": {"name": "prod"}}),
    )
    .await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["error"], "duplicate-name");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sha512_digest_gets_the_same_answer_from_the_cli_and_the_api() {
    let server = TestServer::start(|_| {}).await;
    let reg = tokio::task::spawn_blocking(shared).await.unwrap();
    let repo = unique_repo("sha512");
    let good = format!("sha512:{}", "0f".repeat(64));
    let bad = format!("sha512:{}", "0".repeat(127));

    // Well-formed: the API records it; the CLI accepts the reference and asks the registry,
    // which does not know it.
    let url = format!("{}/{repo}@{good}", reg.addr);
    let (status, answer) = post_deployment(&server, json!({"image": {"url": url}})).await;
    assert_eq!(status, 201, "{answer}");
    let out = deploy_to(server.dir(), "prod", &url, &[]);
    let se = stderr(&out);
    assert!(
        !se.contains("digest must be") && !se.contains("malformed"),
        "{se}"
    );
    assert!(se.contains(&repo), "{se}");

    // Malformed: both refuse it as a malformed digest, and nothing is written.
    let url = format!("{}/{repo}@{bad}", reg.addr);
    let (status, answer) = post_deployment(&server, json!({"image": {"url": url}})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .contains("malformed digest"),
        "{answer}"
    );
    let out = deploy_to(server.dir(), "prod", &url, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("malformed"), "{}", stderr(&out));
    assert!(server.store().history("prod", &repo).unwrap().is_empty());
}
