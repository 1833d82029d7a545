//! Faults the scanner must survive with a clear message and no partial or corrupt file.

use std::process::Output;
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

/// Scan directories holding the one target `id`.
fn one_target(id: &str) -> ScanDirs {
    let dirs = ScanDirs::new();
    dirs.target(id);
    dirs
}

/// `register` over the targets in `dirs` against the analytics server at `server`.
fn register(dirs: &ScanDirs, server: &str, args: &[&str]) -> Output {
    run(dirs.command("register").env("SERVER", server).args(args))
}

#[test]
fn server_down_is_a_failed_target_with_files_written() {
    let id = build_image("it-scan-down:1", GOOD);
    let dirs = one_target(&id);
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = register(&dirs, &url, &["--attempts", "2"]);
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
    assert_eq!(
        atomic(&dirs, &id)["Successful"],
        "true",
        "read but not registered: atomic shows why"
    );

    // --exit-code N makes the failure visible to CI.
    let dirs = one_target(&id);
    let out = register(&dirs, &url, &["--attempts", "1", "--exit-code", "4"]);
    assert_eq!(out.status.code(), Some(4));
}

#[test]
fn slow_server_times_out() {
    let id = build_image("it-scan-slow:1", GOOD);
    let server = RecordingServer::analytics_ok();
    server.then(
        Reply::json(200, serde_json::json!({"success": true})).delayed(Duration::from_secs(5)),
    );
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &["--timeout", "1", "--attempts", "1"]);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
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
    let dirs = one_target(&id);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
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
    let dirs = one_target(&id);
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
    let dirs = one_target(&id);
    let Some(ro) = ReadOnlyDir::make(&dirs.scanout) else {
        panic!("this test needs `mount --bind -o ro` (run the tests as root)");
    };
    let out = register(&dirs, &server.url(), &[]);
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
    let out = register(&dirs, &server.url(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("check that the directory exists and is writable"));
}

/// Running twice into the same output keeps the first results (the original crashed): each
/// old file is kept beside the new one under `<name>.previous-<time>`.
#[test]
fn existing_results_are_kept() {
    let id = build_image("it-scan-again:1", GOOD);
    let dirs = one_target(&id);
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    let first = read(&dirs.result(&id, "json"));
    let first_legacy = read(&dirs.result(&id, "analytics_scanner_results.json"));
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("already held results; the old file was kept as"));
    let files = tree(&dirs.scanout);
    // environment.json, json, the legacy file and its second name, and a kept copy of each
    // (the old second name was a link to the old legacy file: that copy serves both).
    assert_eq!(files.len(), 7, "{files:?}");
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
    let out = register(&dirs, "localhost:5000", &[]);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
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
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &["--attempts", "2"]);
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

/// What `atomic scan` prints for target `id` (typed as a name `name`), read through atomic's
/// display rule (`output_results`, modelled in support::atomic).
fn shown(dirs: &ScanDirs, id: &str, name: &str) -> String {
    crate::support::atomic::output_results(&read(&dirs.result(id, "json")), name, &id[..15])
}

/// The labels block every GOOD image shows.
const GOOD_SHOWN: &str = "   Labels:
     email-ids: dev@example.com
     git-sha: 46e443d
     git-url: https://github.com/example/app
     org.opencontainers.image.created: 2026-01-24T22:41:03Z
     org.opencontainers.image.description: add healthcheck
";

#[test]
fn atomic_shows_a_registered_target_as_passed() {
    let id = build_image("it-scan-view-ok:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
    assert_eq!(out.status.code(), Some(0));
    let url = server.url();
    assert_eq!(
        shown(&dirs, &id, "it-scan-view-ok:1"),
        format!(
            "\nit-scan-view-ok:1 ({short})\n\n   Image: it-scan-view-ok:1\n   Object: image\n   ID: {id}\n   Registered: yes\n   Summary: Registered repository for scan, report will be availble in next run after some time.\n   Server: {url}\n   Server answer:\n     success: True\n     summary: Repository https://github.com/example/app with commit hash 46e443d registered for scan\n{GOOD_SHOWN}\nit-scan-view-ok:1 passed the scan\n",
            short = &id[..15]
        )
    );
}

/// The server is down: atomic shows the target as scanned, `Registered: no`, the connection
/// error and what to do (not "not supported"); the legacy file and --exit-code still fail.
#[test]
fn atomic_shows_why_when_the_server_is_down() {
    let id = build_image("it-scan-view-down:1", GOOD);
    let dirs = one_target(&id);
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = register(&dirs, &url, &["--attempts", "1"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(atomic(&dirs, &id)["Successful"], "true");
    assert_eq!(legacy(&dirs, &id)["Successful"], false);
    let text = shown(&dirs, &id, "it-scan-view-down:1");
    let conn = "cannot connect: Connection refused (os error 111) (1 attempt(s))";
    let expected_tail = format!(
        "The following results were found:\n\n       Failed: Registration with {url}/api/v1/register\n       Connection error: {conn}\n       What to do: Check that the server at {url}/api/v1/register is running and reachable from the scanner container (SERVER), then scan again.\n\n"
    );
    assert!(text.contains("   Registered: no\n"), "{text}");
    assert!(
        text.contains(&format!("   Error report: Could not report the error: could not reach {url}/api/v1/scanner-error")),
        "{text}"
    );
    assert!(text.ends_with(&expected_tail), "{text}");
    assert!(!text.contains("not supported"), "{text}");

    let dirs = one_target(&id);
    let out = register(&dirs, &url, &["--attempts", "1", "--exit-code", "4"]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "--exit-code still fails a CI job"
    );
}

/// The server refuses (401, 500): its answer and what to do are shown.
#[test]
fn atomic_shows_the_servers_refusal() {
    let id = build_image("it-scan-view-401:1", GOOD);
    for (status, said, todo) in [
        (
            401,
            "Authentication failed - token missing",
            "Check the server token (SERVER_TOKEN or --token-file) with the server's operators, then scan again.",
        ),
        (
            500,
            "Database Ingestion Failure",
            "The server failed; scan again later, and tell the server's operators if it keeps failing.",
        ),
    ] {
        let server = RecordingServer::analytics_ok();
        server.then(Reply::json(status, serde_json::json!({"error": said})));
        let dirs = one_target(&id);
        let out = register(&dirs, &server.url(), &["--attempts", "1"]);
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(legacy(&dirs, &id)["Successful"], false);
        let text = shown(&dirs, &id, "it-scan-view-401:1");
        let url = server.url();
        assert!(text.contains("   Registered: no\n"), "{text}");
        assert!(
            text.ends_with(&format!(
                "The following results were found:\n\n       Failed: Registration with {url}/api/v1/register\n       Server answer: {status}: {said}\n       What to do: {todo}\n\n"
            )),
            "{text}"
        );
    }
}

/// A required label is missing: nothing is sent to /register, atomic shows which label and
/// what to do.
#[test]
fn atomic_shows_missing_labels() {
    let id = build_image("it-scan-view-nolabel:1", &GOOD[1..]);
    let server = RecordingServer::analytics_ok();
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.path != "/api/v1/register")
    );
    assert_eq!(legacy(&dirs, &id)["Successful"], false);
    let text = shown(&dirs, &id, "it-scan-view-nolabel:1");
    assert!(text.contains("   Registered: no\n"), "{text}");
    assert!(
        text.contains("The following results were found:\n\n       Failed: Reading the required labels\n       Label: git-url\n       Problem: missing or empty\n       What to do: Add `LABEL git-url=...` to the image's Dockerfile and rebuild it.\n\n"),
        "{text}"
    );
    // verify's own finding for the same label follows.
    assert!(
        text.ends_with("       Label: git-url\n       Problem: label git-url is missing or empty; add `LABEL git-url=...` to the Dockerfile\n\n"),
        "{text}"
    );
}

/// verify's findings are results atomic shows, one block per problem.
#[test]
fn atomic_shows_verify_problems() {
    let id = build_image(
        "it-scan-view-verify:1",
        &[
            ("git-url", "https://github.com/example/app"),
            ("git-sha", "xyz"),
            ("email-ids", "dev@example.com"),
        ],
    );
    let dirs = one_target(&id);
    let out = run(&mut dirs.command("verify"));
    assert_eq!(out.status.code(), Some(0));
    let text = shown(&dirs, &id, "it-scan-view-verify:1");
    assert!(
        text.ends_with("   Summary: 1 label problem found; see Results.\n   Labels:\n     email-ids: dev@example.com\n     git-sha: xyz\n     git-url: https://github.com/example/app\n\nThe following results were found:\n\n       Label: git-sha\n       Problem: label git-sha \"xyz\" is not a git commit hash (7 to 40 hex digits); use `git rev-parse HEAD`\n\n"),
        "{text}"
    );
}

/// Only a target that could not be read at all is "not supported".
#[test]
fn atomic_shows_an_unreadable_target_as_not_supported() {
    let unknown = "0123456789abcdef".repeat(4);
    let dirs = one_target(&unknown);
    let out = run(&mut dirs.command("register"));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        shown(&dirs, &unknown, &unknown),
        format!(
            "\n{unknown} (0123456789abcde)\n\n     {unknown} is not supported for this scan.\n"
        )
    );
}

/// The legacy file is also `scanner-analytics-integration.json` (the seed README's name): one
/// inode, two names, the bytes written once; a second run keeps that true.
#[test]
fn legacy_file_has_the_seed_readme_name_as_a_hard_link() {
    use std::os::unix::fs::MetadataExt;
    let id = build_image("it-scan-alias:1", GOOD);
    let dirs = one_target(&id);
    for _ in 0..2 {
        let out = run(&mut dirs.command("verify"));
        assert_eq!(out.status.code(), Some(0));
        let legacy = std::fs::metadata(dirs.result(&id, "analytics_scanner_results.json")).unwrap();
        let alias =
            std::fs::metadata(dirs.result(&id, "scanner-analytics-integration.json")).unwrap();
        assert_eq!(
            (legacy.dev(), legacy.ino()),
            (alias.dev(), alias.ino()),
            "one inode"
        );
        assert_eq!(legacy.nlink(), 2);
    }
}

/// `/scanout/<id>` planted as a symlink to a directory elsewhere, or as a plain file: nothing
/// is written through it; that target fails, the others get their results and
/// environment.json is written; exit 1 (not every result file could be written).
#[test]
fn symlinked_or_plain_target_dir_is_never_followed() {
    let a = build_image("it-scan-link-a:1", GOOD);
    let b = build_image("it-scan-link-b:1", GOOD);
    for plant in ["symlink", "file"] {
        let dirs = ScanDirs::new();
        dirs.target(&a).target(&b);
        let elsewhere = dirs.tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("json"), "mine").unwrap();
        if plant == "symlink" {
            std::os::unix::fs::symlink(&elsewhere, dirs.scanout.join(&a)).unwrap();
        } else {
            std::fs::write(dirs.scanout.join(&a), "mine").unwrap();
        }
        let out = run(&mut dirs.command("verify"));
        assert_eq!(out.status.code(), Some(1), "{plant}");
        assert_eq!(
            tree(&elsewhere),
            vec!["json".to_string()],
            "{plant}: nothing written there"
        );
        assert_eq!(read(&elsewhere.join("json")), "mine");
        let status: Vec<String> = stdout(&out).lines().take(2).map(str::to_string).collect();
        let (sa, sb) = if a < b { (0, 1) } else { (1, 0) };
        assert_eq!(status[sa], "Scanner execution status: False", "{plant}");
        assert_eq!(status[sb], "Scanner execution status: True", "{plant}");
        assert_eq!(atomic(&dirs, &b)["Successful"], "true");
        assert!(dirs.scanout.join("environment.json").is_file());
        let err = stderr(&out);
        assert!(
            err.contains("it is a symlink or not a directory, and is not followed"),
            "{plant}: {err}"
        );
    }
}

/// A directory named `json` in one target's results: that target fails (its status line, the
/// log), the other is registered and written, environment.json is written; exit 1.
#[test]
fn one_unwritable_target_does_not_abort_the_others() {
    let a = build_image("it-scan-stale-a:1", GOOD);
    let b = build_image("it-scan-stale-b:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let dirs = ScanDirs::new();
    dirs.target(&a).target(&b);
    std::fs::create_dir_all(dirs.scanout.join(&a).join("json")).unwrap();
    let out = register(&dirs, &server.url(), &[]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let (sa, sb) = if a < b { (0, 1) } else { (1, 0) };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert_eq!(lines[sa], "Scanner execution status: False");
    assert_eq!(lines[sb], "Scanner execution status: True");
    assert_eq!(atomic(&dirs, &b)["Successful"], "true");
    assert_eq!(legacy(&dirs, &b)["Successful"], true);
    assert!(dirs.scanout.join("environment.json").is_file());
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "it-scan-stale-a:1: its result files could not be written: cannot write {}",
            dirs.scanout.join(&a).join("json").display()
        )),
        "{err}"
    );
    assert!(
        std::fs::metadata(dirs.scanout.join(&a).join("json"))
            .unwrap()
            .is_dir()
    );
}

/// A server answering 200 with 100 MB: only the first 256 KiB are read and the result says the
/// answer was cut (memory is measured in bench/scan.sh, not here).
#[test]
fn a_huge_answer_is_cut_and_said_so() {
    use std::io::{Read, Write};
    let id = build_image("it-scan-huge:1", GOOD);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let _ = stream.read(&mut buf);
                let total = 100 * 1024 * 1024;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {total}\r\n\r\n"
                );
                let chunk = vec![b' '; 1024 * 1024];
                for _ in 0..100 {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let dirs = one_target(&id);
    let out = register(&dirs, &format!("http://127.0.0.1:{port}"), &[]);
    assert_eq!(out.status.code(), Some(0));
    let l = legacy(&dirs, &id);
    assert_eq!(l["Successful"], true, "a 2xx is a registration");
    assert_eq!(
        l["Summary"],
        "Registered repository for scan, report will be availble in next run after some time. The server's answer was longer than 256 KiB; it was cut there and not kept."
    );
}

/// SERVER with user:password and a token: exactly one Authorization header, the token's.
#[test]
fn url_credentials_and_a_token_send_one_authorization_header() {
    let id = build_image("it-scan-auth:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let dirs = one_target(&id);
    let with_creds = server.url().replace("http://", "http://u:p@");
    let out = run(dirs
        .command("register")
        .env("SERVER", &with_creds)
        .env("SERVER_TOKEN", "s3cret"));
    assert_eq!(out.status.code(), Some(0));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    let auth: Vec<_> = requests[0]
        .headers
        .get_all("authorization")
        .iter()
        .collect();
    assert_eq!(auth, vec!["Bearer s3cret"]);
    assert!(
        stderr(&out).contains("only the token is sent"),
        "{}",
        stderr(&out)
    );
}

/// The same image named by full id, short id and `sha256:` id is one target, registered once.
#[test]
fn one_image_by_three_names_is_registered_once() {
    let id = build_image("it-scan-names:1", GOOD);
    let server = RecordingServer::analytics_ok();
    let out = run(imagetrail()
        .args(["register", &id, &id[..12], &format!("sha256:{id}")])
        .env("SERVER", server.url()));
    assert_eq!(out.status.code(), Some(0));
    let registers: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v1/register")
        .collect();
    assert_eq!(registers.len(), 1, "one registration, one idempotency key");
    assert_eq!(
        stdout(&out).lines().next(),
        Some("Scanner execution status: True")
    );
    assert_eq!(stdout(&out).matches("Scanner execution status").count(), 1);
}

/// Target names from directory names and IMAGE_NAME are escaped on stderr: a newline or
/// U+202E cannot split or reverse a log line.
#[test]
fn target_names_are_escaped_on_stderr() {
    let dirs = ScanDirs::new();
    dirs.target("_evil\nFAKE LINE\u{202E}");
    let out = run(dirs
        .command("verify")
        .env("IMAGE_NAME", "no-such-image\nFORGED: registered\u{202E}"));
    let err = stderr(&out);
    assert!(!err.contains("\nFORGED"), "{err}");
    assert!(!err.contains('\u{202E}'), "{err}");
    assert!(err.contains("\\u{a}FORGED: registered\\u{202e}"), "{err}");
}

/// A target refused for a 1 MiB required label: environment.json leaves that value out and
/// says so, instead of carrying it whole.
#[test]
fn environment_json_leaves_out_a_refused_huge_label() {
    build_image("it-scan-hugelabel:1", GOOD);
    let huge = "h".repeat(1024 * 1024);
    let id = create_container_api(&serde_json::json!({
        "Image": "it-scan-hugelabel:1",
        "Cmd": ["/payload"],
        "Labels": {"git-url": huge, "git-sha": "46e443d", "email-ids": "dev@example.com"},
    }));
    let server = RecordingServer::analytics_ok();
    let dirs = one_target(&id);
    let out = register(&dirs, &server.url(), &[]);
    crate::support::docker::docker(&["rm", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(legacy(&dirs, &id)["Successful"], false);
    let env = read(&dirs.scanout.join("environment.json"));
    assert!(env.len() < 256 * 1024, "{} bytes", env.len());
    let env: serde_json::Value = serde_json::from_str(&env).unwrap();
    assert_eq!(
        env["containers"][0]["Config"]["Labels"]["git-url"],
        "(left out by imagetrail: 1048576 bytes, over the 65536 byte limit for a label)"
    );
}

/// Run `imagetrail ARGS` with its stderr (and stdout) on a pseudo-terminal, as atomic's
/// `docker run -t` gives it one; returns what the terminal received.
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> String {
    let bin = env!("CARGO_BIN_EXE_imagetrail");
    let line = std::iter::once(bin)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = std::process::Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("TERM", "xterm");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run script");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// On a terminal: `scan` logs plain text unless asked (`--color always`); other commands
/// follow NO_COLOR.
#[test]
fn scan_logs_plain_text_on_a_terminal_unless_asked() {
    let id = build_image("it-scan-colour:1", &GOOD[1..]);
    let dirs = one_target(&id);
    let (scanin, scanout) = (
        dirs.scanin.to_str().unwrap(),
        dirs.scanout.to_str().unwrap(),
    );
    let scan = ["scan", "verify", "--scanin", scanin, "--scanout", scanout];
    let text = on_a_terminal(&scan, &[]);
    assert!(text.contains("WARN"), "{text}");
    assert!(!text.contains('\u{1b}'), "plain under scan: {text:?}");
    let text = on_a_terminal(&[&scan[..], &["--color", "always"]].concat(), &[]);
    assert!(text.contains("\u{1b}["), "colour when asked: {text:?}");

    let verify = ["verify", "it-scan-colour:1"];
    let text = on_a_terminal(&verify, &[]);
    assert!(text.contains("\u{1b}["), "a terminal gets colour: {text:?}");
    let text = on_a_terminal(&verify, &[("NO_COLOR", "1")]);
    assert!(text.contains("WARN"), "{text}");
    assert!(!text.contains('\u{1b}'), "NO_COLOR: {text:?}");
}
