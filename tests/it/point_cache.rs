//! The server's point cache (`records::point_cache`): the delivery metrics and the timeline a
//! running `imagetrail serve` answers from points kept between requests must equal what a
//! fresh process reads from the files, after every way a history changes: appends through
//! the API, a torn tail appended and later completed, a history replaced by a shorter file,
//! and deployments written while requests are being answered.

use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::server::{TestServer, client, get_json, get_text, post_deployment};
use crate::support::{imagetrail, run, stderr, stdout};

use imagetrail::records::Store;

fn digest(n: u32) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(n.to_le_bytes()))
}

/// Record `web` in `env` running image `n`, built at `built`, deployed at `at` (the CLI's
/// `imagetrail deploy` writes through the same `Store::record`).
fn record(store: &Store, env: &str, n: u32, built: Option<DateTime<Utc>>, at: DateTime<Utc>) {
    use imagetrail::records::{Deployment, DeploymentRecord, ImageRecord};
    store
        .record(&Deployment {
            app: "web".into(),
            image: ImageRecord {
                tag: Some(format!("v{n}")),
                built_at: built.map(|b| b.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                ..ImageRecord::new("reg.example/team/web", digest(n))
            },
            deployment: DeploymentRecord::new(env, at, "alice"),
        })
        .unwrap();
}

/// Deploy image `n` of `web` to `env` through the real API (deployed_at stamped now, no
/// `built_at`: the metrics search the history for where it ran before).
async fn deploy(server: &TestServer, env: &str, n: u32) {
    let (status, answer) = post_deployment(
        server,
        json!({
            "image": {"url": format!("reg.example/team/web:v{n}@{}", digest(n)), "name": "web"},
            "environment": {"name": env},
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
}

/// A metrics report without what depends on the moment it was computed (the window's ends
/// and the rates that divide by its length).
fn timeless(mut report: Value) -> Value {
    report.as_object_mut().unwrap().remove("window");
    for env in report["environments"].as_array_mut().unwrap() {
        let env = env.as_object_mut().unwrap();
        env.remove("per_day");
        env.remove("per_week");
    }
    report
}

/// What a fresh process answers: `imagetrail metrics --format json` on the same files.
fn fresh_metrics(state: &Path, since: &str) -> Value {
    let out = run(imagetrail()
        .args([
            "metrics",
            "--format",
            "json",
            "--since",
            since,
            "--state-dir",
        ])
        .arg(state));
    assert!(out.status.success(), "{}", stderr(&out));
    timeless(serde_json::from_str(&stdout(&out)).unwrap())
}

async fn served_metrics(server: &TestServer, since: &str) -> Value {
    timeless(
        get_json(
            &client(),
            server.at(&format!("/api/v1/metrics/delivery?since={since}")),
        )
        .await,
    )
}

/// The deployments of `env` in a report.
fn deployments(report: &Value, env: &str) -> u64 {
    report["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["environment"] == env)
        .map_or(0, |e| e["deployments"].as_u64().unwrap())
}

/// The server's answers (metrics over 30 and 90 days, the timeline's counts) equal a fresh
/// process's; returns the fresh 30-day report.
async fn same_as_fresh(server: &TestServer, step: &str) -> Value {
    let mut fresh30 = Value::Null;
    for since in ["30d", "90d"] {
        let fresh = fresh_metrics(server.dir(), since);
        let served = served_metrics(server, since).await;
        assert_eq!(served, fresh, "{step}: metrics since {since}");
        if since == "30d" {
            fresh30 = fresh.clone();
        }
        if since == "90d" {
            // The timeline reads the same points: its counts are the 90-day metrics'.
            let page = get_text(&client(), server.at("/apps?app=web&days=90")).await;
            let (n, r) =
                fresh["environments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .fold((0, 0), |(n, r), e| {
                        (
                            n + e["deployments"].as_u64().unwrap(),
                            r + e["rollbacks"].as_u64().unwrap(),
                        )
                    });
            let want = format!("{n} deployments in the last 90 days, {r} of them rollbacks");
            assert!(page.contains(&want), "{step}: timeline, want {want:?}");
        }
    }
    fresh30
}

/// One whole history entry as the writer writes it (recorded in a scratch state directory).
fn entry_bytes(env: &str, n: u32, at: DateTime<Utc>) -> Vec<u8> {
    let scratch = tempfile::tempdir().unwrap();
    record(
        &Store::new(scratch.path()),
        env,
        n,
        Some(at - Duration::minutes(30)),
        at,
    );
    std::fs::read(history_file(scratch.path(), env)).unwrap()
}

fn history_file(state: &Path, env: &str) -> std::path::PathBuf {
    state.join(env).join("web").join("deploy-history.yml")
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_metrics_and_timeline_equal_a_fresh_process_however_the_histories_change() {
    let server = TestServer::start(|_| {}).await;
    let store = server.store();
    let now = Utc::now();
    // prod: 200 deployments 2 h apart over the last ~17 days (and 20 older ones, 40-60 days
    // ago, which only the 90-day reads see); every 25th goes back to the image two before
    // it (a rollback); every 7th has no built_at. staging: 40, 6 h apart.
    for i in 0..20u32 {
        let at = now - Duration::days(60) + Duration::days(i64::from(i));
        record(&store, "prod", 1000 + i, Some(at - Duration::hours(1)), at);
    }
    for i in 0..200u32 {
        let n = if i % 25 == 24 { i - 2 } else { i };
        let at = now - Duration::hours(2 * i64::from(200 - i)) - Duration::minutes(30);
        let built = (i % 7 != 3).then(|| at - Duration::minutes(40));
        record(&store, "prod", n, built, at);
    }
    for i in 0..40u32 {
        let at = now - Duration::hours(6 * i64::from(40 - i)) - Duration::minutes(30);
        record(
            &store,
            "staging",
            500 + i,
            Some(at - Duration::hours(2)),
            at,
        );
    }

    let first = same_as_fresh(&server, "first read").await;
    assert_eq!(deployments(&first, "prod"), 200);
    same_as_fresh(&server, "second read, nothing changed").await;

    // Appends through the API: new images, then a rollback to one that ran before.
    for n in [300, 301, 302, 300, 195] {
        deploy(&server, "prod", n).await;
    }
    deploy(&server, "staging", 700).await;
    let appended = same_as_fresh(&server, "after appends").await;
    assert_eq!(
        deployments(&appended, "prod"),
        205,
        "the cache saw the appends"
    );

    // A torn tail: the first half of an entry (an append cut off). It is not an entry yet.
    let prod = history_file(server.dir(), "prod");
    let whole = entry_bytes("prod", 400, Utc::now());
    let (head, rest) = whole.split_at(whole.len() / 2);
    append(&prod, head);
    let torn = same_as_fresh(&server, "with a torn tail").await;
    assert_eq!(deployments(&torn, "prod"), 205);
    // ...completed later: now it is one.
    append(&prod, rest);
    let completed = same_as_fresh(&server, "after the torn tail was completed").await;
    assert_eq!(deployments(&completed, "prod"), 206);

    // The history replaced by a shorter one (renamed over it): read again, whole.
    let scratch = tempfile::tempdir().unwrap();
    let other = Store::new(scratch.path());
    for i in 0..10u32 {
        let at = now - Duration::days(5) + Duration::hours(i64::from(i));
        record(
            &other,
            "prod",
            900 + i % 4,
            Some(at - Duration::hours(3)),
            at,
        );
    }
    let shorter = history_file(scratch.path(), "prod");
    assert!(std::fs::metadata(&shorter).unwrap().len() < std::fs::metadata(&prod).unwrap().len());
    std::fs::rename(&shorter, &prod).unwrap();
    let replaced = same_as_fresh(&server, "after the history was replaced").await;
    assert_eq!(
        deployments(&replaced, "prod"),
        10,
        "the cache dropped the old file"
    );

    // Deployments written while metrics are asked for: every answer is a state the history
    // went through (its prod count never goes back, and never past what was written), and
    // once the writes stop, the answer is a fresh process's.
    let writes = 30u32;
    let writer = {
        let server_url = server.url.clone();
        tokio::spawn(async move {
            for n in 0..writes {
                let r = client()
                    .post(format!("{server_url}/api/v1/deployments"))
                    .bearer_auth(crate::server::KEY)
                    .json(&json!({
                        "image": {"url": format!("reg.example/team/web:w{n}@{}", digest(2000 + n)), "name": "web"},
                        "environment": {"name": "prod"},
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201);
            }
        })
    };
    let mut seen = Vec::new();
    while !writer.is_finished() {
        let (a, b) = tokio::join!(
            served_metrics(&server, "30d"),
            served_metrics(&server, "30d")
        );
        seen.push(deployments(&a, "prod"));
        seen.push(deployments(&b, "prod"));
    }
    writer.await.unwrap();
    assert!(
        seen.iter()
            .all(|&n| (10..=10 + u64::from(writes)).contains(&n)),
        "{seen:?}"
    );
    let last = same_as_fresh(&server, "after concurrent writes").await;
    assert_eq!(deployments(&last, "prod"), 10 + u64::from(writes));
}
