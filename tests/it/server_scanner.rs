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

/// The scanner over HTTPS to a server whose certificate no public CA signed, as with an
/// internal CA: trusted through `SSL_CERT_FILE`, the register call is stored; without it, the
/// target fails with the TLS error and nothing is stored.
#[tokio::test]
async fn the_scanner_registers_over_https_trusting_the_ca_in_ssl_cert_file() {
    let certs = tempfile::Builder::new()
        .prefix("it-srv-ca-")
        .tempdir()
        .unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (certs.path().join("ca.crt"), certs.path().join("tls.key"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let tls = (cert.clone(), key);
    let server = TestServer::start(|c| c.tls = Some(tls)).await;
    let url = server.url.replace("127.0.0.1", "localhost");
    assert!(url.starts_with("https://localhost:"), "{url}");
    let good = build_image("it-srv-scan-good:1", GOOD);
    let scan = |ca: Option<&std::path::Path>| {
        let dirs = ScanDirs::new();
        dirs.target(&good);
        let mut cmd = dirs.command("register");
        cmd.env("SERVER", &url)
            .env("SERVER_TOKEN", "")
            .env("IMAGE_NAME", "");
        if let Some(ca) = ca {
            cmd.env("SSL_CERT_FILE", ca);
        }
        (dirs, cmd)
    };

    let (untrusted, mut cmd) = scan(None);
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "a failed target is in the results"
    );
    let results = read(&untrusted.result(&good, "analytics_scanner_results.json"));
    let legacy: Value = serde_json::from_str(&results).unwrap();
    assert_eq!(legacy["Successful"], false, "{results}");
    assert!(
        results.contains("TLS certificate is not trusted (UnknownIssuer)")
            && results.contains("set SSL_CERT_FILE"),
        "{results}"
    );
    assert!(
        results.contains("after 1 attempt(s)"),
        "not retried: {results}"
    );
    assert!(server.callbacks().is_empty());

    let (trusted, mut cmd) = scan(Some(&cert));
    let out = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let results = read(&trusted.result(&good, "analytics_scanner_results.json"));
    let legacy: Value = serde_json::from_str(&results).unwrap();
    assert_eq!(legacy["Successful"], true, "{results}");
    let lines = server.callbacks();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["kind"], "register");
    assert_eq!(lines[0]["request"]["git-sha"], "46e443d");
}
