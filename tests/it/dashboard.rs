//! The dashboard, delivery metrics and history range reads, through the real binary and the
//! real server: `imagetrail history --last/--since/--until` on a generated history,
//! `imagetrail metrics`, and the pages in headless Chromium (see `support::browser`).

use std::path::Path;

use serde_json::json;

use crate::server::{KEY, TestServer, client, post_deployment};
use crate::support::browser::Browser;
use crate::support::{imagetrail, run, stderr, stdout};

/// A history of `n` entries (one every 10 minutes from 2020-01-01T00:00:00Z, tag = index in
/// hex, 7 digits) written by bench/gen-history.py under `state`/prod/hello.
fn generated_history(state: &Path, n: usize) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/gen-history.py");
    let out = run(std::process::Command::new("python3")
        .arg(script)
        .arg(state)
        .arg(n.to_string())
        .arg("reg.example/hello"));
    assert!(out.status.success(), "{}", stderr(&out));
}

fn history(state: &Path, args: &[&str]) -> String {
    let out = run(imagetrail()
        .arg("history")
        .arg("--state-dir")
        .arg(state)
        .args(args));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// The TAG column of a history table, header dropped.
fn tags(table: &str) -> Vec<String> {
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string())
        .collect()
}

#[test]
fn history_reads_the_last_entries_and_time_bounds_of_a_long_history() {
    let st = tempfile::tempdir().unwrap();
    generated_history(st.path(), 3000);

    let last = history(st.path(), &["--last", "3"]);
    assert_eq!(tags(&last), ["0000bb5", "0000bb6", "0000bb7"], "{last}");
    assert!(last.starts_with("DEPLOYED "), "{last}");

    // Entry i is at i*10 minutes: 2020-01-05T00:00 is entry 576 (0x240); until 00:30 is 579.
    let bounded = history(
        st.path(),
        &[
            "--since",
            "2020-01-05T00:00:00Z",
            "--until",
            "2020-01-05T00:30:00Z",
        ],
    );
    assert_eq!(tags(&bounded), ["0000240", "0000241", "0000242", "0000243"]);
    let bounded_last = history(
        st.path(),
        &[
            "--since",
            "2020-01-05T00:00:00Z",
            "--until",
            "2020-01-05T00:30:00Z",
            "--last",
            "2",
        ],
    );
    assert_eq!(tags(&bounded_last), ["0000242", "0000243"]);

    // The whole history, streamed: every entry once, in order, in text and JSON.
    let all = history(st.path(), &[]);
    let all_tags = tags(&all);
    assert_eq!(all_tags.len(), 3000);
    assert_eq!(all_tags[0], "0000000");
    assert_eq!(all_tags[2999], "0000bb7");
    let json: serde_json::Value =
        serde_json::from_str(&history(st.path(), &["--format", "json", "--last", "2"])).unwrap();
    let list = json.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["image"]["tag"], "0000bb7");
    assert_eq!(list[1]["deployment"]["workspace"], "prod");
    let json_all: serde_json::Value =
        serde_json::from_str(&history(st.path(), &["--format", "json"])).unwrap();
    assert_eq!(json_all.as_array().unwrap().len(), 3000);
    let none: serde_json::Value = serde_json::from_str(&history(
        st.path(),
        &["--format", "json", "--until", "2019-01-01T00:00:00Z"],
    ))
    .unwrap();
    assert_eq!(none, serde_json::json!([]));
}

/// A realistic-looking digest for test image `n` (distinct from its first hex digits on).
fn digest(n: u32) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(n.to_le_bytes()))
}

/// Record `repo@digest(n)` as `app` in `env` through the real API, deployed by `by`.
async fn deploy(server: &TestServer, env: &str, tag: &str, n: u32, by: &str) -> serde_json::Value {
    let (status, answer) = post_deployment(
        server,
        json!({
            "image": {"url": format!("reg.example/team/web:{tag}@{}", digest(n)), "name": "web"},
            "environment": {"name": env},
            "deployed_by": by,
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    answer
}

async fn deploy_api(server: &TestServer, env: &str, n: u32) {
    let (status, answer) = post_deployment(
        server,
        json!({
            "image": {"url": format!("reg.example/team/api:1.0@{}", digest(n)), "name": "api"},
            "environment": {"name": env},
        }),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
}

const HOSTILE: &str = "<script>alert(1)</script>";

fn short(n: u32) -> String {
    digest(n)[..19].to_string()
}

#[tokio::test]
async fn a_person_sees_the_matrix_timeline_search_scans_and_delivery_in_chromium() {
    let server = TestServer::start(|_| {}).await;
    // staging: web 1 -> 2 -> 1 (a rollback) -> 3; prod: web 2, by a hostile name; api 4 in both.
    deploy(&server, "staging", "v1", 1, "alice").await;
    let second = deploy(&server, "staging", "v2", 2, "bob").await;
    deploy(&server, "staging", "v1", 1, "carol").await;
    deploy(&server, "staging", "v3", 3, "dave").await;
    deploy(&server, "prod", "v2", 2, HOSTILE).await;
    deploy_api(&server, "staging", 4).await;
    deploy_api(&server, "prod", 4).await;
    // One register and one scanner-error callback, the error last (so first on the page).
    for (path, body) in [
        (
            "/api/v1/register",
            json!({"git-url": "https://git.example/web", "git-sha": "46e443d", "image-name": "team/web:v3"}),
        ),
        (
            "/api/v1/scanner-error",
            json!({"image-name": "team/web:v9", "error": ["label org.opencontainers.image.revision is missing"]}),
        ),
    ] {
        let r = client()
            .post(server.at(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    let b = Browser::start().await;

    // The matrix: one row per app, one column per environment, and the drift column.
    b.goto(&server.at("/")).await;
    assert_eq!(
        b.texts("table.matrix thead th").await,
        ["App", "prod", "staging", "Drift"]
    );
    assert_eq!(b.texts("table.matrix tbody th").await, ["api", "web"]);
    let web_cells = b.texts("table.matrix tbody tr:nth-child(2) td").await;
    assert!(
        web_cells[0].contains(&format!("≠ {}", short(2))),
        "{web_cells:?}"
    );
    assert!(web_cells[0].contains("v2"), "{web_cells:?}");
    // The hostile deployer is shown as the text it is, and ran no script.
    assert!(
        web_cells[0].contains(&format!("by {HOSTILE}")),
        "{web_cells:?}"
    );
    assert!(
        web_cells[1].contains(&format!("≠ {}", short(3))),
        "{web_cells:?}"
    );
    assert!(web_cells[1].contains("by dave"), "{web_cells:?}");
    assert_eq!(web_cells[2], "⚠ drift: 2 different digests");
    let api_cells = b.texts("table.matrix tbody tr:nth-child(1) td").await;
    assert_eq!(api_cells[2], "✓ same digest in 2 environments");
    assert_eq!(b.alert_text().await, None);
    assert!(b.find_all("main script").await.is_empty());
    b.screenshot("matrix").await;

    // What ran at the time of the second deployment: web 2 in staging, nothing in prod yet.
    let at = second["deployment"]["deployment"]["deployed_at"]
        .as_str()
        .unwrap();
    b.goto(&server.at(&format!("/?at={}", urlencode(at)))).await;
    let web_then = b.texts("table.matrix tbody tr:nth-child(2) td").await;
    assert_eq!(web_then[0], "— not deployed");
    assert!(web_then[1].contains(&short(2)), "{web_then:?}");
    assert!(web_then[1].contains("by bob"), "{web_then:?}");
    b.screenshot("matrix-at").await;

    // The timeline: the matrix links to it; 5 points, one a rollback to digest 1.
    b.goto(&server.at("/")).await;
    let link = b.find("table.matrix tbody tr:nth-child(2) th a").await;
    b.click(&link).await;
    b.wait_for("svg.timeline").await;
    assert!(
        b.url().await.ends_with("/apps?app=web"),
        "{}",
        b.url().await
    );
    assert_eq!(b.find_all("svg.timeline g.point").await.len(), 5);
    let rollbacks = b.find_all("svg.timeline g.point.rollback").await;
    assert_eq!(rollbacks.len(), 1);
    assert_eq!(b.texts("svg.timeline g.rollback text").await, ["↺"]);
    let rows = b.texts("table.history tbody tr").await;
    assert_eq!(rows.len(), 5);
    let marked: Vec<&String> = rows.iter().filter(|r| r.contains("↺ rollback")).collect();
    assert_eq!(marked.len(), 1, "{rows:?}");
    assert!(
        marked[0].contains("carol") && marked[0].contains(&short(1)),
        "{marked:?}"
    );
    b.screenshot("timeline").await;

    // Search: typed into the box and submitted, as a person would.
    b.goto(&server.at("/search")).await;
    let input = b.find("input[name=q]").await;
    // The short digest a person copies from the matrix.
    let wanted = short(3);
    b.type_into(&input, &wanted).await;
    b.click(&b.find("form[role=search] button").await).await;
    let result = b.text(&b.wait_for("p.result").await).await;
    assert_eq!(result, format!("{wanted} runs in 1 place:"));
    let hit = b.texts("table.hits tbody tr").await;
    assert_eq!(hit.len(), 1);
    assert!(hit[0].starts_with("staging web v3"), "{hit:?}");
    b.screenshot("search").await;

    // Scans: newest first, the failure marked in text.
    b.goto(&server.at("/scans")).await;
    let scans = b.texts("table.scans tbody tr").await;
    assert_eq!(scans.len(), 2);
    assert!(scans[0].contains("✗ scanner error"), "{scans:?}");
    assert!(scans[0].contains("label org.opencontainers.image.revision is missing"));
    assert!(
        scans[1].contains("✓ register") && scans[1].contains("46e443d"),
        "{scans:?}"
    );
    b.screenshot("scans").await;

    // Delivery: staging had 4 deployments, 1 rollback (25 %); prod 2, none.
    b.goto(&server.at("/delivery")).await;
    let metrics = b.texts("table.metrics tbody tr").await;
    assert_eq!(metrics.len(), 2);
    assert!(metrics[0].starts_with("prod 2 "), "{metrics:?}");
    assert!(metrics[1].starts_with("staging 5 "), "{metrics:?}");
    assert!(metrics[1].contains(" 1 20.0 % "), "{metrics:?}");
    assert_eq!(b.find_all("svg.bars").await.len(), 6);
    b.screenshot("delivery").await;

    b.close().await;
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn with_read_keys_pages_ask_for_a_key_and_the_api_needs_one() {
    let keys = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(keys.path(), "viewer r3ad-k3y\n").unwrap();
    let server = TestServer::start(|c| {
        c.read_keys = Some(imagetrail::server::ApiKeys::load(keys.path()).unwrap());
    })
    .await;
    deploy(&server, "prod", "v1", 1, "alice").await;

    // The API: 401 without a key, 200 with a read key or an API key.
    let get = |key: Option<&'static str>| {
        let mut r = client().get(server.at("/api/v1/environments"));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(get(None).await.unwrap().status(), 401);
    assert_eq!(get(Some("wrong")).await.unwrap().status(), 401);
    assert_eq!(get(Some("r3ad-k3y")).await.unwrap().status(), 200);
    assert_eq!(get(Some(KEY)).await.unwrap().status(), 200);
    let metrics = client()
        .get(server.at("/api/v1/metrics/delivery?since=1d"))
        .bearer_auth("r3ad-k3y")
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let m: serde_json::Value = metrics.json().await.unwrap();
    assert_eq!(m["environments"][0]["environment"], "prod");
    assert_eq!(m["environments"][0]["deployments"], 1);

    // The login form never redirects off this server, and its cookie is HttpOnly, SameSite.
    let no_follow = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_follow
        .post(server.at("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("key=r3ad-k3y&next=%2F%2Fevil.example%2F")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("imagetrail_read=r3ad-k3y;")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // A person: the page asks for the key, then shows what was asked for.
    let b = Browser::start().await;
    b.goto(&server.at("/apps?app=web")).await;
    assert_eq!(b.title().await, "Key needed · imagetrail");
    assert!(b.find_all("table").await.is_empty());
    b.type_into(&b.find("input[name=key]").await, "wrong").await;
    b.click(&b.find("form button").await).await;
    b.wait_for("p.bad").await;
    assert_eq!(b.texts("p.bad").await, ["✗ That key is not accepted here."]);
    b.type_into(&b.find("input[name=key]").await, "r3ad-k3y")
        .await;
    b.click(&b.find("form button").await).await;
    b.wait_for("svg.timeline").await;
    assert!(
        b.url().await.ends_with("/apps?app=web"),
        "{}",
        b.url().await
    );
    assert_eq!(b.find_all("svg.timeline g.point").await.len(), 1);
    b.goto(&server.at("/")).await;
    assert_eq!(b.texts("table.matrix tbody th").await, ["web"]);
    b.screenshot("login-then-matrix").await;
    b.close().await;
}

/// A deployment of `reg.example/web@digest(n)` built at `built`, deployed at `at`.
fn record_at(
    store: &imagetrail::records::Store,
    n: u32,
    built: chrono::DateTime<chrono::Utc>,
    at: chrono::DateTime<chrono::Utc>,
) {
    use imagetrail::records::{Deployment, DeploymentRecord, ImageRecord};
    store
        .record(&Deployment {
            app: "web".into(),
            image: ImageRecord {
                tag: Some(format!("v{n}")),
                built_at: Some(built.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                ..ImageRecord::new("reg.example/web", digest(n))
            },
            deployment: DeploymentRecord::new("prod", at, "alice"),
        })
        .unwrap();
}

#[test]
fn metrics_prints_frequency_lead_time_rollbacks_and_restore_per_environment() {
    use chrono::{Duration, Utc};
    let st = tempfile::tempdir().unwrap();
    let store = imagetrail::records::Store::new(st.path());
    let now = Utc::now();
    let h = Duration::hours;
    // Outside the 30-day window: digest 9, 60 days ago.
    record_at(
        &store,
        9,
        now - Duration::days(61),
        now - Duration::days(60),
    );
    // Lead 1h; lead 3h; then back to digest 1 (a rollback after digest 2 ran 2h), lead 29h.
    record_at(
        &store,
        1,
        now - Duration::days(3),
        now - Duration::days(3) + h(1),
    );
    record_at(
        &store,
        2,
        now - Duration::days(2),
        now - Duration::days(2) + h(3),
    );
    record_at(
        &store,
        1,
        now - Duration::days(3),
        now - Duration::days(2) + h(5),
    );

    let out = run(imagetrail()
        .args(["metrics", "--since", "30d", "--state-dir"])
        .arg(st.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        [
            "ENV",
            "DEPLOYS",
            "PER-DAY",
            "PER-WEEK",
            "LEAD-P50",
            "LEAD-P90",
            "ROLLBACKS",
            "RATE",
            "RESTORE-P50"
        ]
    );
    // 3 deployments in 30 days: 0.10/day, 0.7/week; leads 1h, 3h, 29h: p50 3h, p90 29h;
    // 1 rollback of 3 (33.3 %), restored after 2h.
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        [
            "prod", "3", "0.10", "0.7", "3.0h", "29.0h", "1", "33.3%", "2.0h"
        ]
    );

    let out = run(imagetrail()
        .args([
            "metrics",
            "--env",
            "prod",
            "--since",
            "7d",
            "--format",
            "json",
            "--state-dir",
        ])
        .arg(st.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let prod = &v["environments"][0];
    assert_eq!(prod["environment"], "prod");
    assert_eq!(prod["deployments"], 3);
    assert_eq!(prod["lead_time"]["p50_seconds"], 3 * 3600);
    assert_eq!(prod["lead_time"]["p90_seconds"], 29 * 3600);
    assert_eq!(prod["rollbacks"], 1);
    assert_eq!(prod["time_to_restore"]["p50_seconds"], 2 * 3600);
    assert_eq!(prod["days"].as_array().unwrap().len(), 8);

    let bad = run(imagetrail()
        .args(["metrics", "--since", "soon", "--state-dir"])
        .arg(st.path()));
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("30d"), "{}", stderr(&bad));
}

/// The text of every `<td>` in the `n`-th column (from 0) of the history table of a page.
fn history_column(page: &str, n: usize) -> Vec<String> {
    let body = page
        .split("<table class=\"history\">")
        .nth(1)
        .and_then(|t| t.split("<tbody>").nth(1))
        .and_then(|t| t.split("</tbody>").next())
        .expect("a history table");
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            let cell = row.split("<td>").nth(n + 1).unwrap_or_default();
            let cell = cell.split("</td>").next().unwrap_or_default();
            // Drop any markup inside the cell (the digest's <code>).
            let mut text = String::new();
            let mut in_tag = false;
            for c in cell.chars() {
                match c {
                    '<' => in_tag = true,
                    '>' => in_tag = false,
                    c if !in_tag => text.push(c),
                    _ => {}
                }
            }
            text
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dense_timeline_pages_the_table_and_draws_every_rollback_from_the_records() {
    use chrono::{Duration, Utc};
    let st = tempfile::tempdir().unwrap();
    let store = imagetrail::records::Store::new(st.path());
    let now = Utc::now();
    // 1,200 deployments an hour apart ending an hour ago (more than a chart draws one by one);
    // every 50th goes back to the digest two before it: a rollback.
    let n = 1200u32;
    for i in 0..n {
        let d = if i % 50 == 49 { i - 2 } else { i };
        let at = now - Duration::hours(i64::from(n - i));
        record_at(&store, d, at - Duration::minutes(40), at);
    }
    let (mut child, url) = crate::support::spawn_serve(
        imagetrail()
            .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
            .arg(st.path()),
    );
    let get = |path: String| {
        let url = format!("{url}{path}");
        async move {
            let r = client().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            r.text().await.unwrap()
        }
    };
    let page1 = get("/apps?app=web&days=90".into()).await;
    let rollbacks = (n / 50) as usize;
    assert!(
        page1.contains(&format!(
            "{n} deployments in the last 90 days, {rollbacks} of them rollbacks"
        )),
        "{page1}"
    );
    // Every rollback drawn one by one, with its own tooltip (digest and who, from the whole
    // entry); the rest one mark per column.
    assert_eq!(page1.matches("class=\"point rollback\"").count(), rollbacks);
    assert!(page1.contains(&format!(
        "rollback: web in prod at {}",
        (now - Duration::hours(1)).format("%Y-%m-%d %H:%M:%S UTC")
    )));
    assert!(page1.contains(&format!("{} by alice</title>", digest(n - 3))));
    let columns = page1.matches("class=\"point many\"").count();
    assert!((100..=200).contains(&columns), "{columns} columns");
    assert!(page1.contains(&format!(
        "{n} deployments, drawn as {} marks",
        columns + rollbacks
    )));
    // The table, newest first, 50 rows a page: page 1 starts with the newest deployment (a
    // rollback to v1197), page 2 holds the 51st to the 100th newest.
    let tags = history_column(&page1, 2);
    assert_eq!(tags.len(), 50);
    assert_eq!(tags[0], format!("v{}", n - 3));
    assert_eq!(tags[1], format!("v{}", n - 2));
    assert_eq!(history_column(&page1, 7)[0], "↺ rollback");
    let page2 = get("/apps?app=web&days=90&page=2".into()).await;
    let want: Vec<String> = (n - 100..n - 50)
        .rev()
        .map(|i| format!("v{}", if i % 50 == 49 { i - 2 } else { i }))
        .collect();
    assert_eq!(history_column(&page2, 2), want);
    assert_eq!(history_column(&page2, 6), vec!["alice"; 50]);
    // The last page holds what is left of the 1,200.
    let last = get("/apps?app=web&days=90&page=24".into()).await;
    assert_eq!(history_column(&last, 2).last().unwrap(), "v0");
    child.kill().ok();
    child.wait().ok();
}
