//! The admission webhook, over HTTPS with a test certificate as the Kubernetes API server calls
//! it, fed a real `AdmissionReview` (a ReplicaSet's Pod with an init container).

use std::time::Duration;

use imagetrail::cli::AdmissionMode;
use serde_json::{Value, json};

use crate::server::TestServer;

const REVIEW: &str = include_str!("fixtures/admission-pod-create.json");
const ENV: &str = "it-srv-cluster/payments";

/// A self-signed certificate for `localhost` written into `dir`; (cert PEM, cert path, key path).
fn test_cert(dir: &std::path::Path) -> (String, std::path::PathBuf, std::path::PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = ck.cert.pem();
    let cert = dir.join("tls.crt");
    let key = dir.join("tls.key");
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    (cert_pem, cert, key)
}

/// A TLS server in `mode`, and a client that trusts only its certificate.
async fn tls_server(mode: AdmissionMode) -> (TestServer, reqwest::Client, tempfile::TempDir) {
    let certs = tempfile::Builder::new()
        .prefix("it-srv-tls-")
        .tempdir()
        .unwrap();
    let (pem, cert, key) = test_cert(certs.path());
    let server = TestServer::start(|c| {
        c.tls = Some((cert, key));
        c.admission_mode = mode;
        c.cluster = "it-srv-cluster".into();
    })
    .await;
    let addr: std::net::SocketAddr = server.url.trim_start_matches("https://").parse().unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(pem.as_bytes()).unwrap()])
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    (server, client, certs)
}

fn https(server: &TestServer, path: &str) -> String {
    let port = server.url.rsplit(':').next().unwrap();
    format!("https://localhost:{port}{path}")
}

async fn review(server: &TestServer, client: &reqwest::Client, body: &Value) -> Value {
    let r = client
        .post(https(server, "/api/v1/admission"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn record_mode_records_init_and_app_containers_and_warns_about_tags() {
    let (server, client, _certs) = tls_server(AdmissionMode::Record).await;
    let body: Value = serde_json::from_str(REVIEW).unwrap();
    let answer = review(&server, &client, &body).await;
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(
        answer["response"]["uid"],
        "705ab4f5-6393-11e8-b7cc-42010a800002"
    );
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(
        answer["response"]["warnings"],
        json!([
            "imagetrail: envoyproxy/envoy:v1.29.1 (container envoy) is not pinned by digest, not recorded"
        ])
    );

    let store = server.store();
    assert_eq!(
        store.apps(ENV).unwrap(),
        vec!["payments/api", "payments/migrate"]
    );
    let migrate = store.current(ENV, "payments/migrate").unwrap().unwrap();
    assert_eq!(migrate.image.repo, "registry.example.com/payments/migrate");
    assert_eq!(migrate.image.tag.as_deref(), Some("2.1"));
    assert_eq!(migrate.image.digest, format!("sha256:{}", "1".repeat(64)));
    assert_eq!(
        migrate.image.platform.architecture, "arm64",
        "from the node selector"
    );
    assert_eq!(
        migrate.deployment.deployed_by,
        "system:serviceaccount:kube-system:replicaset-controller"
    );
    let api = store.current(ENV, "payments/api").unwrap().unwrap();
    assert_eq!(api.image.digest, format!("sha256:{}", "2".repeat(64)));

    // The next Pod of the same ReplicaSet adds nothing to the history.
    let mut again = body.clone();
    again["request"]["uid"] = json!("second-pod");
    let answer = review(&server, &client, &again).await;
    assert_eq!(answer["response"]["uid"], "second-pod");
    assert_eq!(store.history(ENV, "payments/api").unwrap().len(), 1);

    // The same environment through the query API, over TLS.
    let r = client
        .get(https(
            &server,
            "/api/v1/environments/it-srv-cluster/payments",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["deployments"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn enforce_mode_denies_unpinned_images_with_a_message_for_kubectl_and_records_nothing() {
    let (server, client, _certs) = tls_server(AdmissionMode::Enforce).await;
    let body: Value = serde_json::from_str(REVIEW).unwrap();
    let answer = review(&server, &client, &body).await;
    let response = &answer["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(
        response["status"]["message"],
        "imagetrail: images must be pinned by digest in it-srv-cluster/payments (tags move): container \"envoy\" uses \"envoyproxy/envoy:v1.29.1\": use envoyproxy/envoy@sha256:<digest>"
    );
    assert!(server.store().environments().unwrap().is_empty());

    // Pinned everywhere: allowed and recorded.
    let mut pinned = body.clone();
    pinned["request"]["object"]["spec"]["containers"][1]["image"] =
        json!(format!("envoyproxy/envoy@sha256:{}", "3".repeat(64)));
    let answer = review(&server, &client, &pinned).await;
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("warnings").is_none());
    assert_eq!(
        server.store().apps(ENV).unwrap(),
        vec!["envoyproxy/envoy", "payments/api", "payments/migrate"]
    );
}

#[tokio::test]
async fn dry_runs_other_kinds_and_deletes_are_allowed_without_records() {
    let (server, client, _certs) = tls_server(AdmissionMode::Record).await;
    let body: Value = serde_json::from_str(REVIEW).unwrap();
    let mut dry = body.clone();
    dry["request"]["dryRun"] = json!(true);
    let mut delete = body.clone();
    delete["request"]["operation"] = json!("DELETE");
    let mut deployment = body.clone();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    for review_body in [dry, delete, deployment] {
        let answer = review(&server, &client, &review_body).await;
        assert_eq!(answer["response"]["allowed"], true);
    }
    assert!(server.store().environments().unwrap().is_empty());

    // A document without a request is a clear 400.
    let r = client
        .post(https(&server, "/api/v1/admission"))
        .json(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["error"], "invalid-review");
}

#[tokio::test]
async fn the_tls_server_refuses_plain_http_and_untrusting_clients() {
    let (server, client, _certs) = tls_server(AdmissionMode::Record).await;
    let r = client.get(https(&server, "/healthz")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let plain = server.url.replace("https://", "http://");
    let r = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .timeout(Duration::from_secs(10))
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    // A client that does not trust the test CA refuses the handshake.
    let stranger = reqwest::Client::builder()
        .tls_certs_only(Vec::<reqwest::Certificate>::new())
        .resolve(
            "localhost",
            server.url.trim_start_matches("https://").parse().unwrap(),
        )
        .build()
        .unwrap();
    assert!(
        stranger
            .get(https(&server, "/healthz"))
            .send()
            .await
            .is_err()
    );
}
