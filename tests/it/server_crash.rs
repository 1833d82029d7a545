//! The real `imagetrail serve` binary killed with SIGKILL in the middle of a stream of
//! deployments and callbacks: after a restart on the same state directory, every request that
//! was answered 2xx is there, and the history reads.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY, digest};
use crate::support::{imagetrail, read, run, stderr};

/// Start `imagetrail serve` on 127.0.0.1:0; (child, base URL read from its stdout).
fn spawn_server(state: &std::path::Path, keys: &std::path::Path) -> (Child, String) {
    let mut child = imagetrail()
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state)
        .arg("--api-keys-file")
        .arg(keys)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start imagetrail serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first stdout line: {line:?}"))
        .to_string();
    (child, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_loses_no_answered_request() {
    let dir = tempfile::Builder::new()
        .prefix("it-srv-crash-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("# test keys\nci {KEY}\n")).unwrap();
    let (mut child, url) = spawn_server(&state, &keys);

    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let registered: Arc<Mutex<Vec<String>>> = Arc::default();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut workers = Vec::new();
    for w in 0..4u32 {
        let (client, url, answered) = (client.clone(), url.clone(), answered.clone());
        workers.push(tokio::spawn(async move {
            for n in 0u32.. {
                let body = json!({
                    "environment": {"name": "prod"},
                    "image": {"url": format!("registry.example.com/team/app-{w}@sha256:{:064x}", w * 1_000_000 + n)},
                });
                let Ok(r) = client
                    .post(format!("{url}/api/v1/deployments"))
                    .bearer_auth(KEY)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if !r.status().is_success() {
                    return;
                }
                let Ok(answer) = r.json::<Value>().await else {
                    return;
                };
                let d = &answer["deployment"];
                answered.lock().unwrap().push((
                    d["app"].as_str().unwrap().to_string(),
                    d["deployment"]["event_id"].as_str().unwrap().to_string(),
                ));
            }
        }));
    }
    {
        let (client, url, registered) = (client.clone(), url.clone(), registered.clone());
        workers.push(tokio::spawn(async move {
            for n in 0u32.. {
                let sha = format!("{n:07x}");
                let Ok(r) = client
                    .post(format!("{url}/api/v1/register"))
                    .header("content-type", "application/json")
                    .body(
                        json!({"git-url": "https://github.com/example/app", "git-sha": sha})
                            .to_string(),
                    )
                    .send()
                    .await
                else {
                    return;
                };
                if r.status() != 200 || r.bytes().await.is_err() {
                    return;
                }
                registered.lock().unwrap().push(sha);
            }
        }));
    }
    // Kill once a good number of requests were answered, while the stream is still going.
    while answered.lock().unwrap().len() < 200 || registered.lock().unwrap().len() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let registered = registered.lock().unwrap().clone();

    eprintln!(
        "killed after {} deployments and {} callbacks were answered",
        answered.len(),
        registered.len()
    );
    let (mut child, url) = spawn_server(&state, &keys);
    let history: Value = get_json(
        &client,
        format!("{url}/api/v1/deployments?environment=prod"),
    )
    .await;
    let stored: Vec<(String, String)> = history["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["app"].as_str().unwrap().to_string(),
                d["deployment"]["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for a in &answered {
        assert!(
            stored.contains(a),
            "answered {a:?} is missing after the crash"
        );
    }
    // A torn last entry may be reported (the kill can land inside an append); nothing else.
    eprintln!("after restart: {}", history["warnings"]);
    for w in history["warnings"].as_array().into_iter().flatten() {
        assert!(w.as_str().unwrap().contains("incomplete"), "{w}");
    }
    // Writing again moves any torn tail aside; then every history reads without a warning.
    for w in 0..4 {
        let r = client
            .post(format!("{url}/api/v1/deployments"))
            .bearer_auth(KEY)
            .json(&json!({"environment": {"name": "prod"}, "image": {"url": format!("registry.example.com/team/app-{w}@sha256:{:064x}", 999_999_999u64)}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let history: Value = get_json(
        &client,
        format!("{url}/api/v1/deployments?environment=prod"),
    )
    .await;
    assert!(history.get("warnings").is_none(), "{history}");
    assert_eq!(
        history["deployments"].as_array().unwrap().len(),
        stored.len() + 4
    );

    // Every answered callback is in the log, and the log still takes new lines.
    let log = std::fs::read_to_string(state.join(".analytics/callbacks.jsonl")).unwrap();
    let shas: Vec<String> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| e["request"]["git-sha"].as_str().unwrap().to_string())
        .collect();
    for sha in &registered {
        assert!(shas.contains(sha), "answered register {sha} is missing");
    }
    let r = client
        .post(format!("{url}/api/v1/register"))
        .header("content-type", "application/json")
        .body(
            json!({"git-url": "https://github.com/example/app", "git-sha": registered[0]})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    let answer: Value = r.json().await.unwrap();
    assert!(
        answer["last_scanned_at"].is_string(),
        "the index was rebuilt: {answer}"
    );

    // SIGTERM: a graceful exit with status 0.
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A power loss can lose the rename that put a deployment's `deploy-info.yml` in place (the
/// server answers once the history entry is synced and leaves the rename to the next sync), and
/// a server under load replaces an app's info at most every few milliseconds. Simulated here by
/// putting back the files such a crash leaves, with the real binary: the CLI and the API go by
/// the history, and the server brings the files up to date when it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_files_a_crash_left_behind_are_overruled_and_replaced_at_start() {
    let dir = tempfile::Builder::new()
        .prefix("it-srv-info-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("ci {KEY}\n")).unwrap();
    let web_info = state.join("prod/web/deploy-info.yml");
    let api_info = state.join("prod/api/deploy-info.yml");
    let client = reqwest::Client::new();
    let deploy = |url: String, app: &'static str, n: u32| {
        let client = client.clone();
        async move {
            let body = json!({
                "environment": {"name": "prod"},
                "image": {"url": format!("registry.example.com/team/{app}@{}", digest(n)), "name": app},
            });
            let r = client
                .post(format!("{url}/api/v1/deployments"))
                .bearer_auth(KEY)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        }
    };

    let (mut child, url) = spawn_server(&state, &keys);
    deploy(url.clone(), "web", 1).await;
    let stale = read(&web_info);
    assert!(stale.contains(&digest(1)), "{stale}");
    deploy(url.clone(), "web", 2).await;
    deploy(url.clone(), "api", 3).await;
    // A quick second deployment of web may be paced: its file catches up on its own.
    eventually("web's deploy-info.yml names digest 2", || {
        std::fs::read_to_string(&web_info).is_ok_and(|t| t.contains(&digest(2)))
    })
    .await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    // The power loss: web's last rename lost, api's first one too.
    std::fs::write(&web_info, &stale).unwrap();
    std::fs::remove_file(&api_info).unwrap();
    let mut cmd = imagetrail();
    cmd.args(["status", "--format", "json", "--state-dir"])
        .arg(&state);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let digest_of = |app: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["app"] == app)
            .map(|d| d["image"]["digest"].clone())
    };
    assert_eq!(digest_of("web"), Some(json!(digest(2))), "{listed}");
    assert_eq!(digest_of("api"), Some(json!(digest(3))), "{listed}");

    // The restart replaces both files before it records anything new.
    let (mut child, url) = spawn_server(&state, &keys);
    let env: Value = get_json(&client, format!("{url}/api/v1/environments/prod")).await;
    assert_eq!(env["deployments"].as_array().unwrap().len(), 2, "{env}");
    eventually("both deploy-info.yml files are replaced at start", || {
        std::fs::read_to_string(&web_info).is_ok_and(|t| t.contains(&digest(2)))
            && std::fs::read_to_string(&api_info).is_ok_and(|t| t.contains(&digest(3)))
    })
    .await;
    // The name "web" is the app's own, not taken by a stale file.
    deploy(url.clone(), "web", 4).await;
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert!(read(&web_info).contains(&digest(4)));
}

/// GET `url` and parse the JSON answer.
async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Wait until `done` holds, checking every 20 ms; fail saying `what` after 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

/// Send SIGTERM through the `kill` command (no libc dependency for one signal).
fn sigterm(child: &Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

#[test]
fn serve_refuses_a_bad_configuration_with_a_clear_message() {
    let dir = tempfile::Builder::new()
        .prefix("it-srv-cfg-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    let serve = |extra: &[&str]| {
        let mut cmd = imagetrail();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(&state)
            .args(extra);
        crate::support::run(&mut cmd)
    };
    let missing = dir.path().join("no-such-keys");
    let out = serve(&["--api-keys-file", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        crate::support::stderr(&out).contains("cannot read the API keys file"),
        "{}",
        crate::support::stderr(&out)
    );

    let empty = dir.path().join("empty-keys");
    std::fs::write(&empty, "# no keys yet\n\n").unwrap();
    let out = serve(&["--api-keys-file", empty.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::support::stderr(&out).contains("holds no key"));

    let cert = dir.path().join("tls.crt");
    std::fs::write(&cert, "not a certificate").unwrap();
    let out = serve(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!crate::support::stdout(&out).contains("listening"));
    assert!(
        crate::support::stderr(&out).contains("cannot load TLS certificate"),
        "{}",
        crate::support::stderr(&out)
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut cmd = imagetrail();
    cmd.args(["serve", "--listen", &addr, "--state-dir"])
        .arg(&state);
    let out = crate::support::run(&mut cmd);
    assert_eq!(out.status.code(), Some(1));
    assert!(crate::support::stderr(&out).contains(&format!("cannot listen on {addr}")));
}
