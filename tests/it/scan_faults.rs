//! Faults the scanner must survive with a clear message and no partial or corrupt file.

use std::time::Duration;

use crate::support::docker::build_image;
use crate::support::http::{RecordingServer, Reply};
use crate::support::proxy::engine_socket;
use crate::support::scan::{GOOD, ReadOnlyDir, ScanDirs, tree};
use crate::support::{imagetrail, read, run, stderr, stdout};

fn legacy(dirs: &ScanDirs, id: &str) -> serde_json::Value {
    serde_json::from_str(&read(&dirs.result(id, "analytics_scanner_results.json"))).unwrap()
}

fn atomic(dirs: &ScanDirs, id: &str) -> serde_json::Value {
    serde_json::from_str(&read(&dirs.result(id, "json"))).unwrap()
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn server_down_is_a_failed_target_with_files_written() {
    let id = build_image("it-scan-down:1", GOOD);
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = run(dirs
        .command("register")
        .env("SERVER", &url)
        .args(["--attempts", "2"]));
    assert_eq!(out.status.code(), Some(0), "results written: exit 0");
    assert_eq!(
        stdout(&out),
        format!(
            "Scanner execution status: False\n1 target: 0 registered, 1 failed; results in {}\n",
            dirs.scanout.display()
        )
    );
    let l = legacy(&dirs, &id);
    assert_eq!(l["Successful"], false);
    let summary = l["Summary"].as_str().unwrap();
    assert!(
        summary.starts_with(&format!(
            "Error: Registration failed: could not reach {url}/api/v1/register after 2 attempt(s):"
        )),
        "{summary}"
    );
    assert!(summary.contains("Could not report the error"), "{summary}");
    assert!(!summary.contains("u'"), "no Python reprs: {summary}");
    assert_eq!(atomic(&dirs, &id)["Successful"], "false");

    // --exit-code N makes the failure visible to CI.
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", &url).args([
        "--attempts",
        "1",
        "--exit-code",
        "4",
    ]));
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn slow_server_times_out() {
    let id = build_image("it-scan-slow:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(
        Reply::json(200, serde_json::json!({"success": true})).delayed(Duration::from_secs(5)),
    );
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()).args([
        "--timeout",
        "1",
        "--attempts",
        "1",
    ]));
    assert_eq!(out.status.code(), Some(0));
    let summary = legacy(&dirs, &id)["Summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("no answer within 1 s (timeout"),
        "{summary}"
    );
    assert!(summary.contains("Reported the error to"), "{summary}");
}

#[test]
fn retries_500_with_the_same_idempotency_key() {
    let id = build_image("it-scan-retry:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(Reply::json(
        500,
        serde_json::json!({"success": false, "summary": "Database Ingestion Failure"}),
    ));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: True")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.path == "/api/v1/register"));
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    assert_eq!(requests[0].body, requests[1].body);
    assert_eq!(legacy(&dirs, &id)["Successful"], true);
}

#[test]
fn unauthorized_quotes_the_server_and_reports_the_error() {
    let id = build_image("it-scan-401:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(Reply::json(
        401,
        serde_json::json!({"error": "Authentication failed - token missing"}),
    ));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs
        .command("register")
        .env("SERVER", server.url())
        .env("SERVER_TOKEN", ""));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: False")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "401 is not retried; then scanner-error");
    assert_eq!(
        requests[0].header("authorization"),
        None,
        "empty SERVER_TOKEN = no header"
    );
    assert_eq!(requests[1].path, "/api/v1/scanner-error");
    let error_body = requests[1].json();
    assert_eq!(error_body["email-ids"], "dev@example.com");
    assert_eq!(error_body["image-name"], "it-scan-401:1");
    let expected = format!(
        "Registration failed: {}/api/v1/register answered 401: Authentication failed - token missing.",
        server.url()
    );
    assert_eq!(error_body["error"], serde_json::json!([expected.clone()]));
    assert_eq!(
        legacy(&dirs, &id)["Summary"],
        format!(
            "Error: {expected} Reported the error to {}/api/v1/scanner-error.",
            server.url()
        )
    );
    assert!(stderr(&out).contains("Authentication failed - token missing"));
}

#[test]
fn scanner_error_404_is_reported_as_missing_endpoint() {
    let id = build_image("it-scan-404:1", GOOD);
    let server = RecordingServer::start(Reply::raw(404, "text/html", "<h1>Not Found</h1>"));
    server.then(Reply::json(
        400,
        serde_json::json!({"success": false, "summary": "Set content type to application/json"}),
    ));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    let summary = legacy(&dirs, &id)["Summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("answered 400: Set content type to application/json."),
        "{summary}"
    );
    assert!(
        summary.ends_with(&format!(
            "The server has no scanner-error endpoint ({}/api/v1/scanner-error answered 404); the error was not reported.",
            server.url()
        )),
        "{summary}"
    );
}

#[test]
fn ok_with_non_json_body_is_a_clear_failure() {
    let id = build_image("it-scan-html:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(Reply::raw(
        200,
        "text/html",
        "<html><body>Welcome to nginx!</body></html>",
    ));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    let l = legacy(&dirs, &id);
    assert_eq!(l["Successful"], false);
    let summary = l["Summary"].as_str().unwrap();
    assert!(
        summary.contains("answered 200 but not with JSON: <html><body>Welcome to nginx!</body></html>; check that the server URL points at the analytics API"),
        "{summary}"
    );
}

/// A 2xx answer carrying `last_scan_report` goes whole into `Scan Results`.
#[test]
fn last_scan_report_is_kept_whole() {
    let id = build_image("it-scan-report:1", GOOD);
    let answer = serde_json::json!({"success": true, "summary": "already registered", "last_scanned_at": "Mon, 23 Nov 2026 10:00:00 GMT", "last_scan_report": {"dependencies": [{"name": "x", "cve_count": 2}]}});
    let server = RecordingServer::start(Reply::json(200, answer.clone()));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    let l = legacy(&dirs, &id);
    assert_eq!(l["Scan Results"], answer);
    assert_eq!(
        l["Summary"],
        "Last scan report available in 'Scan Results' field."
    );
}

#[test]
fn missing_engine_socket_says_how_to_mount_it() {
    let dirs = ScanDirs::new();
    dirs.target(&"a".repeat(64));
    let missing = dirs.tmp.path().join("no-such.sock");
    let out = run(dirs
        .command("register")
        .arg("--host")
        .arg(format!("unix://{}", missing.display())));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot reach the container engine at unix://{}",
            missing.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("-v /var/run/docker.sock:/var/run/docker.sock"),
        "{err}"
    );
    assert!(tree(&dirs.scanout).is_empty(), "no partial results");
}

#[test]
fn unknown_id_under_scanin_is_a_failed_target() {
    let good = build_image("it-scan-unknown:1", GOOD);
    let unknown = "0123456789abcdef".repeat(4);
    let dirs = ScanDirs::new();
    dirs.target(&unknown).target(&good);
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    let mut want = ["False", "True"];
    if good < unknown {
        want.reverse();
    }
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().take(2).collect();
    assert_eq!(
        lines,
        want.iter()
            .map(|s| format!("Scanner execution status: {s}"))
            .collect::<Vec<_>>()
    );
    let j = atomic(&dirs, &unknown);
    assert_eq!(j["Successful"], "false");
    assert!(
        j["Results"][0]["Title"]
            .as_str()
            .unwrap()
            .starts_with(&format!(
                "no container or image \"{unknown}\" on the engine"
            )),
        "{j}"
    );
}

/// A 1 MiB label is capped (and named as a problem), a label with terminal escapes never
/// reaches the terminal raw; the files stay valid JSON.
#[test]
fn hostile_labels_are_capped_and_escaped() {
    // A Dockerfile line cannot hold 1 MiB (and neither can one argv entry), so the hostile
    // labels go on a container created through the engine API with a JSON body.
    build_image("it-scan-hostile:1", GOOD);
    let huge = "x".repeat(1024 * 1024);
    let body = serde_json::json!({
        "Image": "it-scan-hostile:1",
        "Cmd": ["/payload"],
        "Labels": {
            "git-url": "https://github.com/example/app",
            "git-sha": "46e443d",
            "email-ids": "dev@example.com",
            "org.opencontainers.image.description": huge,
            "org.opencontainers.image.title": "evil\u{1b}]0;pwned\u{7}\u{1b}[2J",
        }
    });
    let id = create_container_api(&body);
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        !out.stdout.contains(&0x1b) && !out.stderr.contains(&0x1b),
        "no raw ESC on the terminal"
    );
    assert!(
        out.stderr.len() < 64 * 1024,
        "stderr stays small: {}",
        out.stderr.len()
    );
    let j = atomic(&dirs, &id);
    let desc = j["Custom"]["Labels"]["org.opencontainers.image.description"]
        .as_str()
        .unwrap();
    assert_eq!(desc.len(), 64 * 1024);
    assert_eq!(
        j["Custom"]["Labels"]["org.opencontainers.image.title"], "evil\u{1b}]0;pwned\u{7}\u{1b}[2J",
        "the file keeps the value, JSON-escaped"
    );
    let raw = read(&dirs.result(&id, "json"));
    assert!(
        raw.contains("\\u001b]0;pwned\\u0007"),
        "escaped in the file"
    );
    assert!(
        j["Results"][0]["Title"]
            .as_str()
            .unwrap()
            .contains("is 1048576 bytes long; only the first 65536 bytes were kept"),
        "{}",
        j["Results"]
    );
    let l = read(&dirs.result(&id, "analytics_scanner_results.json"));
    assert!(l.len() < 200 * 1024);
    crate::support::docker::docker(&["rm", &id]);
}

/// `POST /containers/create` on the real engine with `body`; returns the new container's id.
fn create_container_api(body: &serde_json::Value) -> String {
    let dir = tempfile::Builder::new()
        .prefix("it-scan")
        .tempdir()
        .unwrap();
    let file = dir.path().join("body.json");
    std::fs::write(&file, body.to_string()).unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--unix-socket"])
        .arg(engine_socket())
        .args([
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
        ])
        .arg(format!("@{}", file.display()))
        .arg("http://localhost/containers/create")
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    answer["Id"].as_str().unwrap().to_string()
}

#[test]
fn read_only_scanout_fails_before_any_registration() {
    let id = build_image("it-scan-ro:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let Some(ro) = ReadOnlyDir::make(&dirs.scanout) else {
        panic!("this test needs `mount --bind -o ro` (run the tests as root)");
    };
    let out = run(dirs.command("register").env("SERVER", server.url()));
    drop(ro);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("cannot write {}", dirs.scanout.display())),
        "{err}"
    );
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(
        server.requests().is_empty(),
        "nothing registered without a place for results"
    );
    assert!(tree(&dirs.scanout).is_empty());

    // No /scanout at all.
    std::fs::remove_dir(&dirs.scanout).unwrap();
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("check that the directory exists and is writable"));
}

/// Running twice into the same output keeps the first results (the original crashed): each
/// old file is kept beside the new one under `<name>.previous-<time>`.
#[test]
fn existing_results_are_kept() {
    let id = build_image("it-scan-again:1", GOOD);
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    let first = read(&dirs.result(&id, "json"));
    let first_legacy = read(&dirs.result(&id, "analytics_scanner_results.json"));
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("already held results; the old file was kept as"));
    let files = tree(&dirs.scanout);
    assert_eq!(files.len(), 6, "{files:?}");
    let kept_json = files
        .iter()
        .find(|f| f.starts_with(&format!("{id}/json.previous-")))
        .expect("old json kept");
    assert_eq!(
        read(&dirs.scanout.join(kept_json)),
        first,
        "old bytes intact"
    );
    let kept_legacy = files
        .iter()
        .find(|f| f.starts_with(&format!("{id}/analytics_scanner_results.json.previous-")))
        .expect("old legacy file kept");
    assert_eq!(read(&dirs.scanout.join(kept_legacy)), first_legacy);
    // The kept copies are not named `json`, so atomic reads only the new one.
    assert!(files.iter().filter(|f| f.ends_with("/json")).count() == 1);
    serde_json::from_str::<serde_json::Value>(&read(&dirs.result(&id, "json"))).unwrap();
}

#[test]
fn bad_settings_are_usage_errors() {
    let dirs = ScanDirs::new();
    dirs.target(&"a".repeat(64));
    let out = run(dirs.command("register").env("SERVER", "localhost:5000"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid server URL \"localhost:5000\""),
        "{}",
        stderr(&out)
    );
    let out = run(imagetrail().args(["register", "x", "--token-file", "/nonexistent/token"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("cannot read the token file /nonexistent/token"));
    let out = run(&mut dirs.command("deploy"));
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("set SERVER or --server"));
}

/// 429 with `Retry-After` is retried (same key, same body), 4xx other than 408/429 is not.
#[test]
fn too_many_requests_is_retried_after_the_servers_wait() {
    let id = build_image("it-scan-429:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(
        Reply::json(429, serde_json::json!({"summary": "slow down"})).header("Retry-After", "1"),
    );
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs.command("register").env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    assert_eq!(legacy(&dirs, &id)["Successful"], true);

    // Attempts exhausted: the last answer is quoted.
    let server = RecordingServer::start(Reply::json(
        503,
        serde_json::json!({"summary": "maintenance"}),
    ));
    let dirs = ScanDirs::new();
    dirs.target(&id);
    let out = run(dirs
        .command("register")
        .env("SERVER", server.url())
        .args(["--attempts", "2"]));
    assert_eq!(out.status.code(), Some(0));
    let register_calls = server
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v1/register")
        .count();
    assert_eq!(register_calls, 2);
    let summary = legacy(&dirs, &id)["Summary"].as_str().unwrap().to_string();
    assert!(
        summary.contains("/api/v1/register answered 503: maintenance."),
        "{summary}"
    );
}
