//! The analytics callbacks (`/api/v1/register`, `/api/v1/scanner-error`) of
//! `imagetrail serve --database-url`: real replicas on one throwaway PostgreSQL 15 cluster.

use serde_json::{Value, json};

use crate::server::{client, get_text};
use crate::support::replicas::{Database, Pair, answer, shared_client};

fn register_body(sha: &str) -> Value {
    json!({
        "git-url": "https://github.com/example/app",
        "git-sha": sha,
        "email-ids": "dev@example.com",
        "image-name": format!("r.example/app:{sha}"),
        "image-id": "sha256:0123",
        "image-digest": null,
        "labels": {},
    })
}

/// POST a callback; (status, Retry-After, body).
async fn callback(
    url: &str,
    route: &str,
    body: &Value,
    key: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = shared_client()
        .post(format!("{url}/api/v1/{route}"))
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    answer(req.send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_racing_one_key_on_two_replicas_record_once_and_both_answer_the_first_answer() {
    let pair = Pair::start();
    let (a, b) = (&pair.a, &pair.b);

    // Each key sent to both replicas at once: registers of one commit (so a second record
    // would answer "already registered"), and scanner errors.
    let mut pairs = Vec::new();
    for n in 0..10u32 {
        let (route, body) = if n % 2 == 0 {
            ("register", register_body("46e443d"))
        } else {
            (
                "scanner-error",
                json!({"image-name": "r.example/app:1", "error": [format!("boom {n}")]}),
            )
        };
        let key = format!("scan-{n}");
        let (ua, ub, ka, kb, ba, bb) = (
            a.url.clone(),
            b.url.clone(),
            key.clone(),
            key,
            body.clone(),
            body,
        );
        pairs.push((
            tokio::spawn(async move { callback(&ua, route, &ba, Some(&ka)).await }),
            tokio::spawn(async move { callback(&ub, route, &bb, Some(&kb)).await }),
        ));
    }
    let mut answers = Vec::new();
    for (x, y) in pairs {
        let (sx, _, ax) = x.await.unwrap();
        let (sy, _, ay) = y.await.unwrap();
        assert_eq!((sx, sy), (200, 200), "{ax} {ay}");
        assert_eq!(ax, ay, "both replicas give the first answer");
        answers.push(ax);
    }
    assert_eq!(pair.db.rows("SELECT count(*) FROM callbacks"), "10");
    assert_eq!(
        pair.db.rows(
            "SELECT count(DISTINCT idempotency_key) FROM callbacks WHERE idempotency_key LIKE 'scan-%'"
        ),
        "10"
    );
    // Five registrations of one commit, each recorded once: exactly one was the first.
    let firsts = answers
        .iter()
        .filter(|a| {
            a["summary"]
                .as_str()
                .unwrap()
                .contains("has been successfully registered")
        })
        .count();
    assert_eq!(firsts, 1, "{answers:?}");
    let repeats: Vec<&Value> = answers
        .iter()
        .filter(|a| {
            a["summary"]
                .as_str()
                .unwrap()
                .contains("was already registered")
        })
        .collect();
    assert_eq!(repeats.len(), 4, "{answers:?}");
    for r in repeats {
        let when = r["last_scanned_at"].as_str().unwrap();
        assert!(
            chrono::NaiveDateTime::parse_from_str(when, "%a, %d %b %Y %H:%M:%S GMT").is_ok(),
            "RFC 1123 time: {r}"
        );
        assert_eq!(r["last_scan_report"], Value::Null);
    }
    let recorded: usize = ["a", "b"]
        .iter()
        .zip([a, b])
        .map(|(_, r)| {
            let text = futures_text(r.at("/metrics"));
            text.lines()
                .filter_map(|l| l.strip_prefix("imagetrail_callbacks_recorded_total{kind="))
                .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as usize)
                .sum::<usize>()
        })
        .sum();
    assert_eq!(recorded, 10, "the replicas counted each callback once");
}

/// GET `url` as text (blocking: for use inside an iterator).
fn futures_text(url: String) -> String {
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async { get_text(&client(), url).await })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callbacks_survive_a_replica_restart_show_on_its_scans_page_and_503_while_the_database_is_down()
 {
    let db = Database::start();
    let mut first = db.replica();
    let (status, _, registered) = callback(
        &first.url,
        "register",
        &register_body("aaaa111"),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 200, "{registered}");
    let (status, _, reported) = callback(
        &first.url,
        "scanner-error",
        &json!({"image-name": "r.example/broken:2", "error": ["no labels"]}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{reported}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    // A new replica with a state directory of its own: everything is in the database.
    let second = db.replica();
    let (status, _, replay) = callback(
        &second.url,
        "register",
        &register_body("aaaa111"),
        Some("k-1"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(replay, registered, "a retry gets the first answer");
    let (_, _, again) = callback(
        &second.url,
        "register",
        &register_body("aaaa111"),
        Some("k-2"),
    )
    .await;
    assert!(
        again["summary"]
            .as_str()
            .unwrap()
            .contains("was already registered"),
        "{again}"
    );
    assert_eq!(db.rows("SELECT count(*) FROM callbacks"), "3");
    let page = get_text(&client(), second.at("/scans")).await;
    assert!(page.contains("<p>3 callbacks received"), "{page}");
    assert!(page.contains("r.example/broken:2"), "{page}");
    assert!(page.contains("no labels"), "{page}");
    // Newest first: the repeat registration's summary before the scanner error.
    let repeat = page
        .find("was already registered")
        .expect("the repeat is listed");
    let broken = page.find("r.example/broken:2").unwrap();
    assert!(repeat < broken, "newest first");

    db.pg.stop();
    let (status, retry, answer) =
        callback(&second.url, "register", &register_body("bbbb222"), None).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(answer["error"], "database-unavailable");
    db.pg.start_again();
    let mut resumed = false;
    for _ in 0..20 {
        let (status, _, _) = callback(
            &second.url,
            "register",
            &register_body("bbbb222"),
            Some("k-3"),
        )
        .await;
        if status == 200 {
            resumed = true;
            break;
        }
        assert_eq!(status, 503);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        resumed,
        "callbacks are recorded again once PostgreSQL is back"
    );
    assert_eq!(
        db.rows("SELECT count(*) FROM callbacks WHERE git_sha = 'bbbb222'"),
        "1",
        "the 503 recorded nothing"
    );
}
