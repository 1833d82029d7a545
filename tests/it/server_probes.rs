//! `/healthz`, `/readyz` and `/metrics` on a real server (127.0.0.1:0): they need no key, the
//! metrics text counts what the server did, and readiness follows the store.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::server::{KEY, TestServer, client, digest, post_deployment};

/// One sample of the exposition text: its name, its labels and its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the text format's sample lines (`name{a="x",b="y"} value`); comments skipped. Panics
/// (the test fails) on a line that is not a sample.
fn samples(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("a sample line has a value");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = BTreeMap::new();
                for pair in rest.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    labels.insert(k.to_string(), v.trim_matches('"').to_string());
                }
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        let value = value
            .parse()
            .unwrap_or_else(|_| panic!("a number in {line}"));
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the sample `name` with (at least) `labels`; 0 when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

async fn metrics(server: &TestServer) -> Vec<Sample> {
    let r = client().get(server.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200, "/metrics needs no key");
    let content_type = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    samples(&text)
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_deployments_callbacks_and_batches() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "reader it-read-key-77\n").unwrap();
    let server = TestServer::start(|c| {
        c.read_keys = Some(imagetrail::server::ApiKeys::load(keys.path()).unwrap());
    })
    .await;
    for n in 0..3 {
        let body = json!({
            "image": {"url": format!("r.example/team/app@{}", digest(n))},
            "environment": {"name": "prod"},
        });
        let (status, answer) = post_deployment(&server, body).await;
        assert_eq!(status, 201, "{answer}");
    }
    let no_key = client()
        .post(server.at("/api/v1/deployments"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    let register = client()
        .post(server.at("/api/v1/register"))
        .json(&json!({"git-url": "https://example.com/a", "git-sha": "abc1234"}))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 200);
    // A hostile path is counted, but not as a label of its own.
    let odd = client()
        .get(server.at("/no/such/\u{202e}path"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 404);

    let s = metrics(&server).await;
    let requests = "imagetrail_http_requests_total";
    let post = [("route", "/api/v1/deployments"), ("method", "POST")];
    assert_eq!(
        value(&s, requests, &[post[0], post[1], ("status", "201")]),
        3.0
    );
    assert_eq!(
        value(&s, requests, &[post[0], post[1], ("status", "401")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            requests,
            &[("route", "/api/v1/register"), ("status", "200")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, requests, &[("route", "unmatched"), ("status", "404")]),
        1.0
    );
    assert!(
        !s.iter()
            .any(|x| x.labels.values().any(|v| v.contains("no/such"))),
        "the raw path is never a label"
    );
    // Latency: the histogram of the deployments route saw all four requests.
    assert_eq!(
        value(&s, "imagetrail_http_request_duration_seconds_count", &post),
        4.0
    );
    assert_eq!(
        value(
            &s,
            "imagetrail_http_request_duration_seconds_bucket",
            &[post[0], post[1], ("le", "+Inf")]
        ),
        4.0
    );
    assert_eq!(value(&s, "imagetrail_deployments_recorded_total", &[]), 3.0);
    assert_eq!(
        value(
            &s,
            "imagetrail_callbacks_recorded_total",
            &[("kind", "register")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "imagetrail_write_batch_size_sum",
            &[("writer", "deployments")]
        ),
        3.0
    );
    assert_eq!(
        value(
            &s,
            "imagetrail_write_batch_size_sum",
            &[("writer", "callbacks")]
        ),
        1.0
    );
}

#[tokio::test]
async fn readyz_answers_503_once_the_state_directory_is_gone_while_healthz_stays_200() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "reader it-read-key-78\n").unwrap();
    let server = TestServer::start(|c| {
        c.read_keys = Some(imagetrail::server::ApiKeys::load(keys.path()).unwrap());
    })
    .await;
    let ready = client().get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "/readyz needs no key");
    assert_eq!(ready.text().await.unwrap(), "ready\n");

    std::fs::remove_dir_all(server.dir()).unwrap();
    let ready = client().get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let answer: Value = ready.json().await.unwrap();
    assert_eq!(answer["error"], "not-ready");
    let summary = answer["summary"].as_str().unwrap();
    assert!(summary.contains("cannot read"), "{summary}");
    assert!(
        summary.contains(&server.dir().display().to_string()),
        "{summary}"
    );
    let health = client().get(server.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    std::fs::create_dir_all(server.dir().join(".analytics")).unwrap();
    let ready = client().get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(
        ready.status(),
        200,
        "ready again once the directory is back"
    );
}
