//! How imagetrail talks to a registry: token auth, credential helpers, `Link` pagination and
//! client-side sorting, checked on the requests a real HTTP server on 127.0.0.1 receives.

use crate::deploy::{deploy_to, it};
use crate::support::http::{RecordingServer, Reply};
use crate::support::{imagetrail, run, stderr};

fn not_found() -> Reply {
    Reply::json(
        404,
        serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN"}]}),
    )
}

#[test]
fn token_auth_follows_the_bearer_challenge_with_basic_credentials() {
    let server = RecordingServer::start(not_found());
    let host = server.addr.to_string();
    let challenge = format!(
        "Bearer realm=\"http://{host}/token\",service=\"registry.test\",scope=\"repository:team/app:pull\""
    );
    server
        .then(Reply::json(401, serde_json::json!({})).header("www-authenticate", &challenge))
        .then(Reply::json(200, serde_json::json!({"token": "tok-123"})));
    let st = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let cfg = st.path().join("config.json");
    std::fs::write(
        &cfg,
        format!("{{\"auths\":{{\"{host}\":{{\"username\":\"ci\",\"password\":\"pw\"}}}}}}"),
    )
    .unwrap();
    let out = deploy_to(
        st.path(),
        "prod",
        &format!("{host}/team/app:v1"),
        &["--docker-config", cfg.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("{host}/team/app:v1 is not in the registry")),
        "{}",
        stderr(&out)
    );
    let reqs = server.requests();
    assert_eq!(reqs[0].path, "/v2/team/app/manifests/v1");
    assert_eq!(reqs[0].header("authorization"), None);
    assert_eq!(
        reqs[1].path,
        "/token?service=registry.test&scope=repository%3Ateam%2Fapp%3Apull"
    );
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Basic Y2k6cHc=")
    );
    assert_eq!(reqs[2].path, "/v2/team/app/manifests/v1");
    assert_eq!(
        reqs[2].header("authorization").as_deref(),
        Some("Bearer tok-123")
    );
    assert!(!st.path().join("prod").exists());
}

#[test]
fn credential_helpers_named_in_the_docker_config_are_run() {
    let server = RecordingServer::start(not_found());
    let host = server.addr.to_string();
    server.then(
        Reply::json(401, serde_json::json!({})).header("www-authenticate", "Basic realm=\"r\""),
    );
    let st = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let bin = st.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-ittest");
    // The helper protocol: `get`, the server on stdin, JSON on stdout.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\n[ \"$1\" = get ] && [ \"$server\" = \"{host}\" ] || exit 1\necho '{{\"ServerURL\":\"{host}\",\"Username\":\"helper-user\",\"Secret\":\"helper-secret\"}}'\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg_dir = st.path().join("docker");
    std::fs::create_dir(&cfg_dir).unwrap();
    std::fs::write(
        cfg_dir.join("config.json"),
        format!("{{\"credHelpers\":{{\"{host}\":\"ittest\"}}}}"),
    )
    .unwrap();
    let mut cmd = imagetrail();
    cmd.args([
        "deploy",
        "--env",
        "prod",
        "--image",
        &format!("{host}/app:v1"),
        "--state-dir",
    ])
    .arg(st.path())
    .env("DOCKER_CONFIG", &cfg_dir)
    .env(
        "PATH",
        format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
    );
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(1));
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    // base64("helper-user:helper-secret")
    assert_eq!(
        reqs[1].header("authorization").as_deref(),
        Some("Basic aGVscGVyLXVzZXI6aGVscGVyLXNlY3JldA==")
    );
}

#[test]
fn tags_follow_link_pages_and_are_sorted_client_side() {
    let server = RecordingServer::start(not_found());
    let host = server.addr.to_string();
    server
        .then(
            Reply::json(
                200,
                serde_json::json!({"name": "app", "tags": ["zeta", "alpha"]}),
            )
            .header("link", "</v2/app/tags/list?last=zeta&n=1000>; rel=\"next\""),
        )
        .then(Reply::json(
            200,
            serde_json::json!({"name": "app", "tags": ["mid"]}),
        ));
    let st = tempfile::Builder::new().prefix("it-dep").tempdir().unwrap();
    let out = it(st.path(), &["images", "overview", &format!("{host}/app")]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v2/app/tags/list?n=1000",
            "/v2/app/tags/list?last=zeta&n=1000",
            "/v2/app/manifests/alpha",
            "/v2/app/manifests/mid",
            "/v2/app/manifests/zeta",
        ]
    );
}

#[test]
fn the_catalog_follows_link_pages() {
    let server = RecordingServer::start(not_found());
    let host = server.addr.to_string();
    server
        .then(
            Reply::json(200, serde_json::json!({"repositories": ["team/b"]}))
                .header("link", "</v2/_catalog?last=team%2Fb&n=100>; rel=\"next\""),
        )
        .then(Reply::json(
            200,
            serde_json::json!({"repositories": ["team/a"]}),
        ))
        .then(Reply::json(
            200,
            serde_json::json!({"name": "team/a", "tags": []}),
        ))
        .then(Reply::json(
            200,
            serde_json::json!({"name": "team/b", "tags": null}),
        ));
    let mut cmd = imagetrail();
    cmd.args(["registry", "overview", "--registry", &host]);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v2/_catalog?n=100",
            "/v2/_catalog?last=team%2Fb&n=100",
            "/v2/team/a/tags/list?n=1000",
            "/v2/team/b/tags/list?n=1000",
        ]
    );
    assert_eq!(
        crate::support::stdout(&out),
        format!("{host}/team/a\n  (no tags)\n{host}/team/b\n  (no tags)\n")
    );
}
