//! The scanner's real calls against the real server: `imagetrail scan register` over images built
//! on the Docker engine, with `SERVER` pointing at `imagetrail serve` on 127.0.0.1.

use serde_json::Value;

use crate::server::TestServer;
use crate::support::docker::build_image;
use crate::support::scan::{GOOD, ScanDirs};
use crate::support::{read, run};

#[tokio::test]
async fn the_scanners_register_and_scanner_error_calls_are_stored() {
    let server = TestServer::start(|_| {}).await;
    let good = build_image("it-srv-scan-good:1", GOOD);
    let bad = build_image(
        "it-srv-scan-bad:1",
        &[
            ("git-url", "https://github.com/example/app"),
            ("email-ids", "dev@example.com"),
        ],
    );
    let dirs = ScanDirs::new();
    dirs.target(&good).target(&bad);
    let scan = |dirs: &ScanDirs| {
        let mut cmd = dirs.command("register");
        cmd.env("SERVER", &server.url)
            .env("SERVER_TOKEN", "")
            .env("IMAGE_NAME", "");
        cmd
    };
    let mut first = scan(&dirs);
    let out = tokio::task::spawn_blocking(move || run(&mut first))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));

    let lines = server.callbacks();
    let register: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "register").collect();
    let errors: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "scanner-error")
        .collect();
    assert_eq!(register.len(), 1, "{lines:?}");
    assert_eq!(
        register[0]["request"]["git-url"],
        "https://github.com/example/app"
    );
    assert_eq!(register[0]["request"]["git-sha"], "46e443d");
    assert_eq!(register[0]["request"]["image-name"], "it-srv-scan-good:1");
    assert_eq!(register[0]["request"]["image-id"], format!("sha256:{good}"));
    assert_eq!(
        register[0]["request"]["labels"]["org.opencontainers.image.description"],
        "add healthcheck"
    );
    assert!(
        register[0]["idempotency_key"].is_string(),
        "the scanner sends one"
    );
    assert_eq!(errors.len(), 1, "{lines:?}");
    assert_eq!(errors[0]["request"]["image-name"], "it-srv-scan-bad:1");
    let messages = errors[0]["request"]["error"].to_string();
    assert!(messages.contains("git-sha"), "{messages}");

    let legacy: Value =
        serde_json::from_str(&read(&dirs.result(&good, "analytics_scanner_results.json"))).unwrap();
    assert_eq!(legacy["Successful"], true);

    // Scanning the same commit again: the server says when it was last registered, and the
    // scanner copies that answer into its results as the original did.
    let again = ScanDirs::new();
    again.target(&good);
    let mut second = scan(&again);
    let out = tokio::task::spawn_blocking(move || run(&mut second))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let legacy: Value = serde_json::from_str(&read(
        &again.result(&good, "analytics_scanner_results.json"),
    ))
    .unwrap();
    assert!(
        legacy["Scan Results"]["last_scanned_at"].is_string(),
        "{legacy}"
    );
    assert_eq!(server.callbacks().len(), 3);
}
