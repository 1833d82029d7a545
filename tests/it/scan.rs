//! The scanner end to end: the real binary, the real Docker engine (and Podman's socket),
//! images built FROM scratch, `/scanin` dirs named by real ids, a recording HTTP server.

use crate::support::docker::{build_image, create_container, docker};
use crate::support::http::RecordingServer;
use crate::support::proxy::{RecordingProxy, engine_socket};
use crate::support::scan::{
    GOOD, ScanDirs, atomic_time, image_ids, legacy_time, redact_times, tree,
};
use crate::support::{imagetrail, read, run, stderr, stdout};

const UA: &str = concat!("imagetrail/", env!("CARGO_PKG_VERSION"));

/// `atomic scan --all` with an image and a container mixed: one registration per target, each
/// with that object's own labels; headers, bodies, stdout and the files as the contract says.
#[test]
fn register_all_mixes_images_and_containers() {
    let image = build_image("it-scan-all-img:1", GOOD);
    let base = build_image(
        "it-scan-all-base:1",
        &[
            ("git-url", "https://github.com/example/base"),
            ("git-sha", "0123456789abcdef"),
            ("email-ids", "base@example.com"),
        ],
    );
    let container = create_container(
        "it-scan-all-base:1",
        &[
            ("git-url", "https://github.com/example/svc"),
            ("git-sha", "abcdef0"),
            ("email-ids", "svc@example.com"),
        ],
    );
    let server = RecordingServer::analytics_ok();
    let dirs = ScanDirs::new();
    dirs.target(&image).target(&container);
    // A plain file and a dangling symlink are not targets.
    std::fs::write(dirs.scanin.join("stray-file"), "x").unwrap();
    std::os::unix::fs::symlink(
        "/nonexistent/ostree/mount",
        dirs.scanin.join("f".repeat(64)),
    )
    .unwrap();

    let out = run(dirs
        .command("register")
        .env("SERVER", format!("{}/base/", server.url()))
        .env("SERVER_TOKEN", "s3cret")
        .env("IMAGE_NAME", ""));
    let inspected = docker(&["inspect", &container]);
    docker(&["rm", &container]);
    assert_eq!(out.status.code(), Some(0));

    // Deterministic order: sorted by directory name.
    let mut ids = vec![image.clone(), container.clone()];
    ids.sort();
    assert_eq!(
        stdout(&out),
        format!(
            "Scanner execution status: True\nScanner execution status: True\n2 targets: 2 registered, 0 failed; results in {}\n",
            dirs.scanout.display()
        )
    );

    let requests = server.requests();
    assert_eq!(
        requests.len(),
        2,
        "one registration per target, no scanner-error"
    );
    let mut keys = vec![];
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/base/api/v1/register", "SERVER's path is kept");
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        assert_eq!(r.header("user-agent").as_deref(), Some(UA));
        assert_eq!(r.header("authorization").as_deref(), Some("Bearer s3cret"));
        keys.push(r.header("idempotency-key").expect("Idempotency-Key"));
    }
    assert_ne!(keys[0], keys[1], "one key per target");
    let mut bodies: Vec<serde_json::Value> = requests.iter().map(|r| r.json()).collect();
    bodies.sort_by_key(|b| b["git-url"].as_str().unwrap().to_string());
    assert_eq!(
        bodies[0],
        serde_json::json!({
            "git-url": "https://github.com/example/app", "git-sha": "46e443d", "email-ids": "dev@example.com",
            "image-name": "it-scan-all-img:1", "image-id": format!("sha256:{image}"), "image-digest": null,
            "labels": {"org.opencontainers.image.created": "2026-01-24T22:41:03Z", "org.opencontainers.image.description": "add healthcheck"}
        })
    );
    assert_eq!(
        bodies[1],
        serde_json::json!({
            "git-url": "https://github.com/example/svc", "git-sha": "abcdef0", "email-ids": "svc@example.com",
            "image-name": "it-scan-all-base:1", "image-id": format!("sha256:{base}"), "image-digest": null,
            "labels": {}
        }),
        "the container's own labels, not its image's"
    );

    // The legacy file, byte for byte (times redacted).
    let legacy = read(&dirs.result(&image, "analytics_scanner_results.json"));
    assert_eq!(
        redact_times(&legacy, &["Start Time", "Finished Time"], legacy_time),
        format!(
            r#"{{
    "Scan Type": "register",
    "CVE Feed Last Updated": "NA",
    "UUID": "{image}",
    "Scan Results": {{
        "email-ids": "dev@example.com",
        "git-sha": "46e443d",
        "git-url": "https://github.com/example/app",
        "image_name": "it-scan-all-img:1",
        "server_url": "{}/base"
    }},
    "Successful": true,
    "Finished Time": "TIME",
    "Summary": "Registered repository for scan, report will be availble in next run after some time.",
    "Start Time": "TIME",
    "Scanner": "scanner-analytics-integration"
}}"#,
            server.url()
        )
    );

    // atomic's json, byte for byte.
    let atomic = read(&dirs.result(&container, "json"));
    assert_eq!(
        redact_times(&atomic, &["Time", "Finished Time"], atomic_time),
        format!(
            r#"{{
  "Scanner": "analytics-integration",
  "Time": "TIME",
  "Finished Time": "TIME",
  "Scan Type": "register",
  "UUID": "{}/{container}",
  "Successful": "true",
  "CVE Feed Last Updated": "NA",
  "Custom": {{
    "Image": "it-scan-all-base:1",
    "Object": "container",
    "ID": "{container}",
    "Registered": "yes",
    "Summary": "Registered repository for scan, report will be availble in next run after some time.",
    "Server": "{}/base",
    "Server answer": {{
      "success": true,
      "summary": "Repository https://github.com/example/app with commit hash 46e443d registered for scan"
    }},
    "Labels": {{
      "email-ids": "svc@example.com",
      "git-sha": "abcdef0",
      "git-url": "https://github.com/example/svc"
    }}
  }},
  "Results": []
}}
"#,
            dirs.scanin.display(),
            server.url()
        )
    );

    // environment.json: only the targets, sha256: stripped, plus the scanner block.
    let env: serde_json::Value =
        serde_json::from_str(&read(&dirs.scanout.join("environment.json"))).unwrap();
    let image_ids = image_ids(&env);
    assert_eq!(image_ids.len(), 2);
    assert!(image_ids.contains(&image.as_str()) && image_ids.contains(&base.as_str()));
    assert_eq!(env["containers"][0]["Id"], container.as_str());
    assert_eq!(env["containers"][0]["Image"], base.as_str());
    // Each inspect is the engine's own answer, whole (what `docker inspect` shows, `null`s and
    // all), with only `sha256:` stripped as atomic does.
    let mut shown: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    imagetrail::engine::strip_sha_fields(&mut shown[0]);
    assert_eq!(env["containers"][0], shown[0]);
    assert!(env["info"].is_object());
    assert_eq!(env["scanner"]["name"], "analytics-integration");
    assert_eq!(env["scanner"]["scan type"], "register");
    assert_eq!(env["scanner"]["server"], format!("{}/base", server.url()));

    let mut files = tree(&dirs.scanout);
    files.retain(|f| !f.starts_with('.'));
    let mut want = vec!["environment.json".to_string()];
    for id in &ids {
        want.push(format!("{id}/analytics_scanner_results.json"));
        want.push(format!("{id}/json"));
        want.push(format!("{id}/scanner-analytics-integration.json"));
    }
    want.sort();
    assert_eq!(files, want, "no temp files left behind, no stray targets");
}

/// The quick start: no server, `register IMAGE --output DIR` reads and checks the labels,
/// writes the three files and says plainly that nothing was registered.
#[test]
fn register_without_server_writes_files_and_says_nothing_was_registered() {
    let id = build_image("it-scan-quick:1", GOOD);
    let out_dir = tempfile::Builder::new()
        .prefix("it-scan")
        .tempdir()
        .unwrap();
    let dest = out_dir.path().join("results");
    let out = run(imagetrail()
        .args(["register", "it-scan-quick:1", "--output"])
        .arg(&dest));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "Scanner execution status: True\n1 target: labels read and checked, nothing was registered (no server given; set SERVER or --server), 0 failed; results in {}\n",
            dest.display()
        )
    );
    let mut want = vec![
        "environment.json".to_string(),
        format!("{id}/analytics_scanner_results.json"),
        format!("{id}/json"),
        format!("{id}/scanner-analytics-integration.json"),
    ];
    want.sort();
    assert_eq!(tree(&dest), want);
    let legacy: serde_json::Value = serde_json::from_str(&read(
        &dest.join(&id).join("analytics_scanner_results.json"),
    ))
    .unwrap();
    assert_eq!(
        legacy["Summary"],
        "Labels read and checked; nothing was registered because no server was given (set SERVER or --server)."
    );
    assert_eq!(legacy["UUID"], id.as_str(), "the full id");
}

/// `verify` lists every label problem in one pass, sends nothing, and `--exit-code` turns
/// problems into a failing exit for CI.
#[test]
fn verify_lists_every_problem_without_network() {
    build_image(
        "it-scan-verify:1",
        &[
            ("git-url", "not a url"),
            ("git-sha", "xyz"),
            ("email-ids", "dev@example.com, not-an-address"),
            ("org.opencontainers.image.created", "last tuesday"),
        ],
    );
    // A server is given but must not be called by verify.
    let server = RecordingServer::analytics_ok();
    let out = run(imagetrail()
        .args([
            "verify",
            "it-scan-verify:1",
            "--format",
            "json",
            "--exit-code",
            "3",
        ])
        .env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(3));
    assert!(server.requests().is_empty(), "verify sends nothing");
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let target = &doc["targets"][0];
    assert_eq!(target["successful"], true);
    let labels: Vec<&str> = target["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        vec![
            "git-url",
            "git-sha",
            "email-ids",
            "org.opencontainers.image.created"
        ]
    );
    assert!(
        target["problems"][2]["message"]
            .as_str()
            .unwrap()
            .contains("\"not-an-address\""),
        "{target}"
    );
    assert_eq!(target["summary"], "4 label problems found; see Results.");

    // Without --exit-code a scan that ran exits 0.
    let out = run(imagetrail().args(["verify", "it-scan-verify:1"]));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out)
            .starts_with("Scanner execution status: True\n1 target verified: 4 label problem(s)")
    );
}

/// An empty /scanin falls back to IMAGE_NAME; without it the scan is a usage error (exit 2).
#[test]
fn empty_scanin_uses_image_name_or_fails_clearly() {
    let id = build_image("it-scan-empty:1", GOOD);
    let dirs = ScanDirs::new();
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("IMAGE_NAME is not set"),
        "{}",
        stderr(&out)
    );
    assert!(tree(&dirs.scanout).is_empty(), "nothing written");

    let out = run(dirs.command("verify").env("IMAGE_NAME", "it-scan-empty:1"));
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_str(&read(&dirs.result(&id, "json"))).unwrap();
    assert_eq!(json["Custom"]["Image"], "it-scan-empty:1");
    assert_eq!(json["Successful"], "true");
}

/// A `--rootfs` target (`_path`) takes its labels from IMAGE_NAME; without IMAGE_NAME it is a
/// failed target that says what to set.
#[test]
fn rootfs_targets_read_image_name() {
    build_image("it-scan-rootfs:1", GOOD);
    let dirs = ScanDirs::new();
    dirs.target("_tmp_chroot");
    let out = run(dirs.command("verify").env("IMAGE_NAME", "it-scan-rootfs:1"));
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value =
        serde_json::from_str(&read(&dirs.result("_tmp_chroot", "json"))).unwrap();
    assert_eq!(json["Successful"], "true");
    assert_eq!(json["Custom"]["Labels"]["git-sha"], "46e443d");

    let dirs = ScanDirs::new();
    dirs.target("_tmp_chroot");
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: False")
    );
    let legacy = read(&dirs.result("_tmp_chroot", "analytics_scanner_results.json"));
    assert!(legacy.contains("set IMAGE_NAME"), "{legacy}");
}

/// The scanner only ever sends GET requests to the engine socket: a recording proxy between the
/// binary and the real engine sees every request.
#[test]
fn engine_sees_only_get_requests() {
    let image = build_image("it-scan-proxy:1", GOOD);
    let container = create_container("it-scan-proxy:1", &[]);
    let dirs = ScanDirs::new();
    dirs.target(&image)
        .target(&container)
        .target(&"0".repeat(64));
    let proxy = RecordingProxy::start(dirs.tmp.path(), engine_socket());
    let server = RecordingServer::analytics_ok();
    let out = run(dirs
        .command("register")
        .env("DOCKER_HOST", format!("unix://{}", proxy.socket.display()))
        .env("SERVER", server.url()));
    docker(&["rm", &container]);
    assert_eq!(out.status.code(), Some(0));
    let requests = proxy.requests();
    let lines: Vec<&str> = requests.iter().map(|r| r.lines().next().unwrap()).collect();
    assert!(!lines.is_empty());
    for (line, head) in lines.iter().zip(&requests) {
        assert!(
            line.starts_with("GET "),
            "a non-GET request reached the engine: {line}"
        );
        assert!(
            head.to_lowercase()
                .contains(&format!("user-agent: {}", UA.to_lowercase())),
            "{head}"
        );
    }
    let joined = lines.join("\n");
    for want in [
        "/_ping".to_string(),
        format!("/containers/{container}/json"),
        format!("/images/{image}/json"),
        "/info".to_string(),
    ] {
        assert!(joined.contains(&want), "{want} not requested:\n{joined}");
    }
    // The API version comes from the ping's header: Docker's `/version` costs it 5-25 ms.
    assert!(
        !lines.iter().any(|l| l.contains("/version")),
        "GET /version was requested:\n{joined}"
    );
    // No list requests: each target's inspects (which environment.json needs anyway) answer
    // it, and a list only made every target wait for it.
    for list in ["/images/json", "/containers/json"] {
        assert!(
            !lines.iter().any(|l| l
                .split(' ')
                .nth(1)
                .is_some_and(|p| p.ends_with(list) || p.contains(&format!("{list}?")))),
            "GET {list} was requested:\n{joined}"
        );
    }
    // One image inspect per image, however many targets run it (the container's image is
    // also a target here).
    let image_gets = lines
        .iter()
        .filter(|l| l.contains(&format!("/images/{image}/json")))
        .count();
    assert_eq!(image_gets, 1, "{joined}");
    // Keep-alive: far fewer connections than requests (the proxy counts them).
    assert!(
        proxy.connections() < lines.len(),
        "{} connections for {} requests:\n{joined}",
        proxy.connections(),
        lines.len()
    );
}

/// The same register scan against Podman's Docker-compatible socket, found via CONTAINER_HOST.
#[test]
fn register_against_podman() {
    let podman = crate::support::podman::podman();
    let id = build_image("it-scan-podman:1", GOOD);
    podman.load_from_docker("it-scan-podman:1");
    // A second target, so the labels are read through Podman's list endpoints.
    let other = build_image("it-scan-podman-b:1", GOOD);
    podman.load_from_docker("it-scan-podman-b:1");
    let server = RecordingServer::analytics_ok();
    let dirs = ScanDirs::new();
    dirs.target(&id).target(&other);
    let out = run(dirs
        .command("register")
        // Podman's own variable in Podman's spelling (no Docker client library reads it); an empty
        // DOCKER_HOST means "not given", as atomic passes unset variables.
        .env("DOCKER_HOST", "")
        .env(
            "CONTAINER_HOST",
            format!("unix:{}", podman.socket.display()),
        )
        .env("SERVER", server.url())
        .env("IMAGE_NAME", "it-scan-podman:1"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().take(2).collect::<Vec<_>>(),
        ["Scanner execution status: True"; 2]
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.path == "/api/v1/register"));
    let body = requests
        .iter()
        .map(|r| r.json())
        .find(|b| b["image-id"] == format!("sha256:{id}"))
        .expect("the first image registered");
    assert_eq!(body["git-url"], "https://github.com/example/app");
    assert_eq!(body["git-sha"], "46e443d");
    assert_eq!(body["email-ids"], "dev@example.com");
    assert_eq!(body["image-id"], format!("sha256:{id}"));
    // Podman names loaded images localhost/<name>; IMAGE_NAME resolves to the same image.
    assert_eq!(body["image-name"], "it-scan-podman:1");
    let legacy: serde_json::Value =
        serde_json::from_str(&read(&dirs.result(&id, "analytics_scanner_results.json"))).unwrap();
    assert_eq!(legacy["Successful"], true);
    // Podman answered, not the Docker engine (which knows the same image id): only Podman
    // names it localhost/<name>.
    let env: serde_json::Value =
        serde_json::from_str(&read(&dirs.scanout.join("environment.json"))).unwrap();
    let tags: Vec<&serde_json::Value> = env["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| &i["RepoTags"])
        .collect();
    assert!(
        tags.contains(&&serde_json::json!(["localhost/it-scan-podman:1"])),
        "{tags:?}"
    );
}

/// The deploy scan type refuses an image without a registry digest, saying to push it first.
#[test]
fn deploy_without_repo_digest_is_a_failed_target() {
    let id = build_image("it-scan-deploy-nodigest:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs
        .command("deploy")
        .env("SERVER", server.url())
        .env("ENVIRONMENT", "prod"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: False")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "only the scanner-error report");
    assert_eq!(requests[0].path, "/api/v1/scanner-error");
    let legacy = read(&dirs.result(&id, "analytics_scanner_results.json"));
    assert!(legacy.contains("push the image"), "{legacy}");
}

/// The deploy scan type posts the Atomist body (digest from RepoDigests, platform from inspect)
/// to `<SERVER><API_PREFIX>/deployments` with the Bearer token.
#[test]
fn deploy_posts_the_atomist_body_by_digest() {
    let registry = crate::support::scan::LoopbackRegistry::start();
    let id = build_image("it-scan-deploy:1", GOOD);
    let pushed = format!("{}/it-scan/deploy:1", registry.addr);
    docker(&["tag", "it-scan-deploy:1", &pushed]);
    docker(&["push", &pushed]);
    let digest = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .RepoDigests 0}}",
        &pushed,
    ]);
    assert!(digest.starts_with(&format!("{}/it-scan/deploy@sha256:", registry.addr)));

    let server = RecordingServer::start(crate::support::http::Reply::json(
        201,
        serde_json::json!({"id": "x"}),
    ));
    let token_dir = tempfile::Builder::new()
        .prefix("it-scan")
        .tempdir()
        .unwrap();
    let token = token_dir.path().join("token");
    std::fs::write(&token, "deploy-key\n").unwrap();
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs
        .command("deploy")
        .env("SERVER", server.url())
        .env("ENVIRONMENT", "prod")
        .env("IMAGE_NAME", &pushed)
        .arg("--token-file")
        .arg(&token));
    docker(&["rmi", &pushed]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "Scanner execution status: True\n1 target: 1 recorded as deployed in prod, 0 failed; results in {}\n",
            dirs.scanout.display()
        )
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].path, "/api/v1/deployments");
    assert_eq!(
        requests[0].header("authorization").as_deref(),
        Some("Bearer deploy-key")
    );
    assert_eq!(
        requests[0].header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(
        requests[0].json(),
        serde_json::json!({
            "image": {"url": digest},
            "environment": {"name": "prod"},
            "platform": {"os": "linux", "architecture": "amd64"}
        })
    );
    let legacy: serde_json::Value =
        serde_json::from_str(&read(&dirs.result(&id, "analytics_scanner_results.json"))).unwrap();
    assert_eq!(
        legacy["Summary"],
        format!("Recorded {digest} as deployed in prod.")
    );
}
