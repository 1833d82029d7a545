//! The real `imagetrail serve` binary killed with SIGKILL in the middle of a stream of
//! deployments and callbacks: after a restart on the same state directory, every request that
//! was answered 2xx is there, and the history reads.

use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{KEY, digest, get_json};
use crate::support::{imagetrail, read, run, spawn_serve, stderr};

/// Start `imagetrail serve` on 127.0.0.1:0; (child, base URL read from its stdout).
fn spawn_server(state: &std::path::Path, keys: &std::path::Path) -> (Child, String) {
    spawn_serve(
        imagetrail()
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(state)
            .arg("--api-keys-file")
            .arg(keys),
    )
}

/// A temporary directory (removed on drop) with a path for the state directory, not created,
/// and an API keys file holding the test key: (dir, state, keys).
fn state_and_keys(prefix: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let state = dir.path().join("state");
    let keys = dir.path().join("keys");
    // A comment line too: the keys file format allows them.
    std::fs::write(&keys, format!("# test keys\nci {KEY}\n")).unwrap();
    (dir, state, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_stream_loses_no_answered_request() {
    let (_dir, state, keys) = state_and_keys("it-srv-crash-");
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
    let (_dir, state, keys) = state_and_keys("it-srv-info-");
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

/// POST one deployment to the real server; (status, answer).
async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let r = client
        .post(format!("{url}/api/v1/deployments"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// Issue 9, bug 1: a U+FFFE in `deployed_by` or a platform field used to be written raw, and
/// after a restart the environment answered 500 and `imagetrail status` exited 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noncharacter_in_deployed_by_or_the_platform_is_a_400_and_the_environment_survives_a_restart()
 {
    let (_dir, state, keys) = state_and_keys("it-srv-field-");
    let client = reqwest::Client::new();
    let body = |n: u32| {
        json!({
            "environment": {"name": "prod"},
            "image": {"url": format!("registry.example.com/team/web@{}", digest(n))},
        })
    };

    let (mut child, url) = spawn_server(&state, &keys);
    let (status, answer) = post(&client, &url, body(1)).await;
    assert_eq!(status, 201, "{answer}");
    let mut hostile = body(2);
    hostile["deployed_by"] = json!("mallory\u{FFFE}");
    let (status, answer) = post(&client, &url, hostile).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"], "invalid-field", "{answer}");
    let summary = answer["summary"].as_str().unwrap();
    assert!(summary.starts_with("invalid deployed_by: "), "{summary}");
    assert!(summary.contains("U+FFFE"), "{summary}");
    let mut hostile = body(3);
    hostile["platform"] = json!({"os": "linux", "architecture": "amd64\u{FFFE}"});
    let (status, answer) = post(&client, &url, hostile).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["summary"]
            .as_str()
            .unwrap()
            .starts_with("invalid platform.architecture: "),
        "{answer}"
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    // After a restart the environment still takes writes and answers reads.
    let (mut child, url) = spawn_server(&state, &keys);
    let (status, answer) = post(&client, &url, body(4)).await;
    assert_eq!(status, 201, "{answer}");
    let r = client
        .get(format!("{url}/api/v1/environments/prod"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["deployments"][0]["image"]["digest"], digest(4), "{env}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    let mut cmd = imagetrail();
    cmd.args(["status", "--state-dir"]).arg(&state);
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let history = read(&state.join("prod/team%2Fweb/deploy-history.yml"));
    assert!(!history.contains('\u{FFFE}'), "{history}");
    assert!(!history.contains("mallory"), "{history}");
}

/// The `deployed_at` of every entry of a history file, in file order.
fn file_times(history: &str) -> Vec<chrono::DateTime<chrono::Utc>> {
    history
        .lines()
        .filter_map(|l| l.strip_prefix("    deployed_at: \""))
        .map(|v| v.trim_end_matches('"').parse().unwrap())
        .collect()
}

/// Issue 9, bug 6: the server stamped `deployed_at` before queueing, so racing requests were
/// appended out of time order and `at` (a bisection) answered the wrong deployment. Two
/// servers share the state directory (as `deploy` and `serve` do): each request waits for the
/// environment's lock, which the other process may hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_deployments_are_appended_in_time_order_and_at_answers_each_one() {
    let (_dir, state, keys) = state_and_keys("it-srv-order-");
    let (mut one, url_one) = spawn_server(&state, &keys);
    let (mut two, url_two) = spawn_server(&state, &keys);
    let client = reqwest::Client::new();
    let mut workers = Vec::new();
    for w in 0..16u32 {
        let client = client.clone();
        let url = if w % 2 == 0 { &url_one } else { &url_two }.clone();
        workers.push(tokio::spawn(async move {
            for n in 0..20u32 {
                let body = json!({
                    "environment": {"name": "prod"},
                    "image": {"url": format!("registry.example.com/team/web@{}", digest(w * 1000 + n))},
                });
                let (status, answer) = post(&client, &url, body).await;
                assert_eq!(status, 201, "{answer}");
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    sigterm(&two);
    assert!(two.wait().unwrap().success());
    let url = url_one;
    let text = read(&state.join("prod/team%2Fweb/deploy-history.yml"));
    let times = file_times(&text);
    assert_eq!(times.len(), 320);
    let out_of_order = times.windows(2).filter(|w| w[1] < w[0]).count();
    assert_eq!(out_of_order, 0, "entries appended out of deployed_at order");

    // What ran at each entry's time: that entry (or a later one at the very same instant).
    let r = client
        .get(format!(
            "{url}/api/v1/deployments?environment=prod&app=team/web"
        ))
        .send()
        .await
        .unwrap();
    let all: Value = r.json().await.unwrap();
    let all = all["deployments"].as_array().unwrap().clone();
    assert_eq!(all.len(), 320);
    for (k, d) in all.iter().enumerate() {
        let t = d["deployment"]["deployed_at"].as_str().unwrap();
        let expected = all[k..]
            .iter()
            .take_while(|e| e["deployment"]["deployed_at"] == t)
            .last()
            .unwrap();
        let r = client
            // RFC 3339 in UTC needs no escaping in a query.
            .get(format!(
                "{url}/api/v1/deployments?environment=prod&app=team/web&at={t}"
            ))
            .send()
            .await
            .unwrap();
        let at: Value = r.json().await.unwrap();
        assert_eq!(
            at["deployments"][0]["deployment"]["event_id"], expected["deployment"]["event_id"],
            "at {t}: {at}"
        );
    }
    sigterm(&one);
    assert!(one.wait().unwrap().success());
}

/// Issue 9, bug 7: a hand-broken last entry (a stray quote, the trailing blank line removed)
/// was taken for a torn tail and moved aside by the next deploy, and one broken history made
/// `imagetrail history` fail for every app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_broken_entry_is_reported_never_moved_and_does_not_hide_other_apps() {
    let (_dir, state, keys) = state_and_keys("it-srv-hand-");
    let client = reqwest::Client::new();
    let body = |app: &str, n: u32| {
        json!({
            "environment": {"name": "prod"},
            "image": {"url": format!("registry.example.com/team/{app}@{}", digest(n)), "name": app},
        })
    };
    let (mut child, url) = spawn_server(&state, &keys);
    for (app, n) in [("web", 1), ("web", 2), ("api", 3)] {
        let (status, answer) = post(&client, &url, body(app, n)).await;
        assert_eq!(status, 201, "{answer}");
    }
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    // A person edits web's last entry: a stray quote, and the final blank line removed.
    let path = state.join("prod/web/deploy-history.yml");
    let text = read(&path);
    let start = text.rfind("\n- image:").unwrap() + 1;
    let (head, last) = text.split_at(start);
    let edited = last.replacen("    deployed_by: \"ci\"", "    deployed_by: \"c\"i\"", 1);
    assert_ne!(edited, last);
    let broken = format!("{head}{}\n", edited.trim_end_matches('\n'));
    std::fs::write(&path, &broken).unwrap();
    let broken_line = broken.lines().position(|l| l.contains("\"c\"i\"")).unwrap() + 1;

    let mut cmd = imagetrail();
    cmd.args(["history", "--format", "json", "--state-dir"])
        .arg(&state);
    let out = run(&mut cmd);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let apps: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["app"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["api"], "the other app is answered");
    assert!(
        err.contains(&format!("{}:{broken_line}:", path.display())),
        "names the file and line: {err}"
    );
    assert!(err.contains("1 history file(s) could not be read"), "{err}");

    // The next deploy of web is refused; nothing is moved aside or overwritten.
    let (mut child, url) = spawn_server(&state, &keys);
    let (status, answer) = post(&client, &url, body("web", 4)).await;
    assert_eq!(status, 500, "{answer}");
    assert_eq!(answer["error"], "malformed-records", "{answer}");
    let (status, answer) = post(&client, &url, body("api", 5)).await;
    assert_eq!(status, 201, "{answer}");
    sigterm(&child);
    assert!(child.wait().unwrap().success());
    assert_eq!(read(&path), broken, "the broken history is untouched");
    assert!(!state.join("prod/web/deploy-history.yml.torn").exists());
}

/// Issue 9, bug 1 without credentials: the admission webhook takes no key, and a Pod whose
/// `nodeSelector` carried a U+FFFE made its environment unreadable. The Pod is still allowed
/// (record mode never denies), with a warning naming the field, and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noncharacter_in_a_pods_node_selector_is_not_recorded_and_the_environment_stays_readable()
{
    let server = crate::server::TestServer::start(|c| c.cluster = "c1".into()).await;
    let mut review: Value =
        serde_json::from_str(include_str!("fixtures/admission-pod-create.json")).unwrap();
    let admit = |review: Value| {
        let url = server.at("/api/v1/admission");
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .json(&review)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let clean = review.clone();
    review["request"]["object"]["spec"]["nodeSelector"]["kubernetes.io/arch"] =
        json!("arm64\u{FFFE}");
    let answer = admit(review).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let warnings = answer["response"]["warnings"].to_string();
    assert!(
        warnings.contains("invalid platform.architecture: character 6 is U+FFFE"),
        "{warnings}"
    );
    let answer = admit(clean).await;
    assert_eq!(answer["response"]["allowed"], true, "{answer}");

    // A restart reads the environment: a new store on the same files, and the CLI.
    let store = imagetrail::records::Store::new(server.dir());
    let current = store
        .current("c1/payments", "payments/api")
        .unwrap()
        .unwrap();
    assert_eq!(current.image.platform.architecture, "arm64");
    let mut cmd = imagetrail();
    cmd.args(["status", "--state-dir"]).arg(server.dir());
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
