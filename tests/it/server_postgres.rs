//! `imagetrail serve --database-url`: real `imagetrail serve` processes (the built binary, each
//! on its own port) on one throwaway PostgreSQL 15 cluster.

use std::time::Duration;

use serde_json::{Value, json};

use crate::server::{client, digest, get_json, get_text};
use crate::support::replicas::{Database, Pair, post, send_deployment, serve};
use crate::support::{imagetrail, run, stderr};

fn body(n: u32) -> Value {
    json!({
        "image": {"url": format!("r.example/team/app{}@{}", n % 4, digest(n))},
        "environment": {"name": "prod"},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_database_take_writes_together_and_one_key_records_once() {
    let pair = Pair::start();
    let (a, b) = (&pair.a, &pair.b);

    let mut tasks = Vec::new();
    for n in 0..40u32 {
        let target = pair.alternate(n);
        tasks.push(tokio::spawn(
            async move { post(&target, &body(n), None).await },
        ));
    }
    // The same key sent to both replicas at once, ten times.
    let mut pairs = Vec::new();
    for n in 100..110u32 {
        let key = format!("retry-{n}");
        let (ua, ub) = (a.url.clone(), b.url.clone());
        let (ka, kb) = (key.clone(), key);
        pairs.push((
            tokio::spawn(async move { post(&ua, &body(n), Some(&ka)).await }),
            tokio::spawn(async move { post(&ub, &body(n), Some(&kb)).await }),
        ));
    }
    for t in tasks {
        let (status, _, answer) = t.await.unwrap();
        assert_eq!(status, 201, "{answer}");
    }
    for (x, y) in pairs {
        let (sx, _, ax) = x.await.unwrap();
        let (sy, _, ay) = y.await.unwrap();
        assert_eq!((sx, sy), (201, 201), "{ax} {ay}");
        assert_eq!(ax, ay, "both replicas give the first answer");
    }
    assert_eq!(pair.db.rows("SELECT count(*) FROM deployments"), "50");
    assert_eq!(
        pair.db
            .rows("SELECT count(DISTINCT digest) FROM deployments"),
        "50"
    );

    // Either replica reads what both wrote.
    let list: Value = get_json(&client(), b.at("/api/v1/deployments?environment=prod")).await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 50, "{list}");
    let envs: Value = get_json(&client(), a.at("/api/v1/environments")).await;
    assert_eq!(
        envs,
        json!({"environments": [{"name": "prod", "apps": ["team/app0", "team/app1", "team/app2", "team/app3"]}]})
    );
    let ready = client().get(a.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The pool's use is in the metrics, next to the deployments this replica recorded.
    let text = get_text(&client(), a.at("/metrics")).await;
    assert!(
        text.lines()
            .any(|l| l == "imagetrail_db_pool_connections{state=\"max\"} 16"),
        "{text}"
    );
    let recorded: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("imagetrail_deployments_recorded_total "))
        .expect("the deployments counter")
        .parse()
        .unwrap();
    assert!(
        recorded >= 20.0,
        "replica a recorded its 20 and some keyed ones: {text}"
    );
    // Every request reached a group commit of its replica: the 40 and both of each keyed pair.
    let mut batched = 0.0;
    for r in [a, b] {
        let text = get_text(&client(), r.at("/metrics")).await;
        batched += text
            .lines()
            .find_map(|l| {
                l.strip_prefix("imagetrail_write_batch_size_sum{writer=\"deployments\"} ")
            })
            .expect("the deployments' batch sizes")
            .parse::<f64>()
            .unwrap();
    }
    assert_eq!(batched, 60.0);
}

/// The deployments API on PostgreSQL refuses what it refuses on the files, with the same
/// answer: an environment with a newline, a bidi override or a noncharacter, or 100,000
/// characters long; nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_names_get_the_file_servers_400_and_store_nothing() {
    let db = Database::start();
    let replica = db.replica();
    let files = crate::server::TestServer::start(|_| {}).await;
    for env in [
        "prod\nx",
        "prod\u{202e}",
        "prod\u{fffe}",
        &"p".repeat(100_000),
    ] {
        let hostile = json!({
            "image": {"url": format!("r.example/team/app@{}", digest(1))},
            "environment": {"name": env},
        });
        let (status, _, answer) = post(&replica.url, &hostile, None).await;
        let (file_status, file_answer) =
            crate::server::post_deployment(&files, hostile.clone()).await;
        assert_eq!((status, file_status), (400, 400), "{answer} {file_answer}");
        assert_eq!(answer["error"], "invalid-field", "{answer}");
        assert_eq!(answer["summary"], file_answer["summary"]);
    }
    assert_eq!(db.rows("SELECT count(*) FROM deployments"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stopping_postgres_gives_503_with_retry_after_and_writes_resume_without_a_restart() {
    let db = Database::start();
    let pg = &db.pg;
    let replica = db.replica();

    let mut acknowledged = Vec::new();
    for n in 0..5u32 {
        let (status, _, answer) = post(&replica.url, &body(n), None).await;
        assert_eq!(status, 201, "{answer}");
        acknowledged.push(answer["deployment"]["deployment"]["event_id"].clone());
    }

    pg.stop();
    let (status, retry, answer) = post(&replica.url, &body(10), None).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(retry.as_deref(), Some("2"));
    assert_eq!(answer["error"], "database-unavailable");
    let ready = client().get(replica.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    pg.start_again();
    // The pool reconnects by itself: the next requests succeed (a few tries while the pool
    // drops the connections the stop broke).
    let mut resumed = None;
    for n in 20..40u32 {
        let (status, retry, answer) = post(&replica.url, &body(n), None).await;
        if status == 201 {
            resumed = Some(answer);
            break;
        }
        assert_eq!(status, 503, "only 503 while reconnecting: {answer}");
        assert!(retry.is_some());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let resumed = resumed.expect("writes succeed again once PostgreSQL is back");
    acknowledged.push(resumed["deployment"]["deployment"]["event_id"].clone());
    for id in &acknowledged {
        let id = id.as_str().unwrap();
        assert_eq!(
            db.rows(&format!(
                "SELECT count(*) FROM deployments WHERE event_id = '{id}'"
            )),
            "1",
            "acknowledged {id} is stored"
        );
    }
    let ready = client().get(replica.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[test]
fn a_wrong_password_an_unreachable_host_or_a_newer_schema_is_one_line_at_serve_start_and_exit_1() {
    let db = Database::start();
    let (pg, keys) = (&db.pg, &db.keys);
    let state = tempfile::tempdir().unwrap();
    let out = run(&mut serve(
        &pg.url_with_password("it", "not-the-pw"),
        keys.path(),
        state.path(),
    ));
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "never says listening");
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("refused user \"postgres\""), "{err}");
    assert!(!err.contains("not-the-pw"), "{err}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = run(&mut serve(
        &format!("postgres://postgres:pw@127.0.0.1:{port}/it"),
        keys.path(),
        state.path(),
    ));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}:")),
        "{err}"
    );

    // A schema migrated by a newer imagetrail: refused, nothing changed.
    let url = pg.url("it");
    assert!(
        run(imagetrail().args(["db", "migrate", "--database-url", &url]))
            .status
            .success()
    );
    pg.psql(
        "it",
        "INSERT INTO imagetrail_schema_version (version, description) VALUES (7, 'future')",
    );
    let out = run(&mut serve(&url, keys.path(), state.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "schema is version 7, newer than the {} this imagetrail knows",
            imagetrail::records::postgres::LATEST
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_one_replica_mid_stream_loses_no_acknowledged_deployment_and_the_other_answers()
{
    let mut pair = Pair::start();

    // A stream to both replicas; a request to the killed one may fail, never a 2xx lost.
    let mut tasks = Vec::new();
    for n in 0..200u32 {
        let target = pair.alternate(n);
        tasks.push(tokio::spawn(async move {
            match send_deployment(&target, &body(n), None).await {
                Ok(r) if r.status().is_success() => {
                    let answer: Value = r.json().await.ok()?;
                    answer["deployment"]["deployment"]["event_id"]
                        .as_str()
                        .map(str::to_string)
                }
                _ => None,
            }
        }));
        if n == 60 {
            pair.a.child.kill().unwrap();
        }
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        acknowledged.extend(t.await.unwrap());
    }
    let _ = pair.a.child.wait();
    assert!(acknowledged.len() >= 100, "replica b answered its half");
    let stored = pair.db.rows("SELECT event_id FROM deployments");
    for id in &acknowledged {
        assert!(stored.contains(id.as_str()), "acknowledged {id} is stored");
    }
    let (status, _, answer) = post(&pair.b.url, &body(1000), None).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admission_reviews_to_either_replica_record_in_the_database_once() {
    let pair = Pair::start();
    let (a, b) = (&pair.a, &pair.b);
    let review: Value =
        serde_json::from_str(include_str!("fixtures/admission-pod-create.json")).unwrap();
    for replica in [&a, &b] {
        let r = client()
            .post(replica.at("/api/v1/admission"))
            .json(&review)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let answer: Value = r.json().await.unwrap();
        assert_eq!(answer["response"]["allowed"], true, "{answer}");
    }
    // Two pinned containers; the same Pod admitted again through the other replica records
    // nothing new (the apps already run those digests).
    assert_eq!(
        pair.db
            .rows("SELECT environment || ' ' || app FROM deployments ORDER BY app"),
        "default/payments payments/api\ndefault/payments payments/migrate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_writing_one_app_commit_its_history_in_deployed_at_order() {
    let pair = Pair::start();
    let a = &pair.a;

    // One app, 200 deployments at once through both replicas: each replica's writer tasks
    // and the two replicas' batches interleave their commits.
    let mut tasks = Vec::new();
    for n in 0..200u32 {
        let target = pair.alternate(n);
        let body = json!({
            "image": {"url": format!("r.example/team/one@{}", digest(n))},
            "environment": {"name": "prod"},
        });
        tasks.push(tokio::spawn(
            async move { post(&target, &body, None).await },
        ));
    }
    let mut answered = Vec::new();
    for t in tasks {
        let (status, _, answer) = t.await.unwrap();
        assert_eq!(status, 201, "{answer}");
        answered.push(answer["deployment"]["deployment"].clone());
    }
    // Commit order is seq order (each write holds the app's lock until its commit); the
    // history's deployed_at must go strictly up along it.
    let history = pair.db.rows(
        "SELECT event_id || ' ' || to_char(deployed_at AT TIME ZONE 'UTC', \
         'YYYY-MM-DD\"T\"HH24:MI:SS.US') || ' ' || deployed_at_ns \
         FROM deployments WHERE app = 'team/one' ORDER BY seq",
    );
    let history: Vec<(String, String)> = history
        .lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let id = parts.next().unwrap().to_string();
            let at = format!("{} {:03}", parts.next().unwrap(), parts.next().unwrap());
            (id, at)
        })
        .collect();
    assert_eq!(history.len(), 200);
    for w in history.windows(2) {
        assert!(
            w[0].1 < w[1].1,
            "deployed_at goes up with the commit order, no two equal: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    // The newest by deployed_at is the current one, and every answer gave the stamp stored.
    assert_eq!(
        pair.db.rows(
            "SELECT d.event_id FROM current_deployments c JOIN deployments d ON d.seq = c.seq \
             WHERE c.app = 'team/one'"
        ),
        history.last().unwrap().0
    );
    let list: Value = get_json(
        &client(),
        a.at("/api/v1/deployments?environment=prod&app=team/one"),
    )
    .await;
    let listed: Vec<&Value> = list["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["deployment"])
        .collect();
    let ids: Vec<&str> = listed
        .iter()
        .map(|d| d["event_id"].as_str().unwrap())
        .collect();
    let by_seq: Vec<&str> = history.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, by_seq, "the history read back is in commit order");
    for d in &answered {
        assert!(
            listed.contains(&d),
            "the answer's deployed_at is the one stored: {d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stamped_writes_through_two_stores_follow_the_commit_order_not_the_time_the_caller_took() {
    use imagetrail::records::postgres::{PgItem, PgStore, PgWritten};
    use imagetrail::records::{Checks, Stamp};

    let db = Database::start();
    let url = &db.url;
    let (a, _) = PgStore::migrate(url).await.unwrap();
    let b = PgStore::connect(url).await.unwrap();
    // Each caller took its time before it waited for its turn, and the later callers' times
    // are earlier (as when a request waits behind another replica's batch): a store that
    // kept them would write the history backwards.
    let start = chrono::Utc::now();
    let mut tasks = Vec::new();
    for n in 0..200i64 {
        let store = if n % 2 == 0 { a.clone() } else { b.clone() };
        let at = start + chrono::Duration::hours(1) - chrono::Duration::milliseconds(n);
        let mut d = crate::postgres::deployment("prod", "one", "r.example/one", at);
        d.image.digest = digest(n as u32);
        let item = PgItem {
            checks: Checks {
                stamp: Stamp::WriteTime,
                ..Checks::default()
            },
            ..PgItem::new(d)
        };
        tasks.push(tokio::spawn(async move { store.record(item).await }));
    }
    let mut stamps = Vec::new();
    for t in tasks {
        match t.await.unwrap().unwrap() {
            PgWritten::Stamped(at) => stamps.push(at),
            other => panic!("stamped by the database, got {other:?}"),
        }
    }
    let history = a.history("prod", "one", None, None, None).await.unwrap();
    let by_seq = db.rows("SELECT event_id FROM deployments WHERE app = 'one' ORDER BY seq");
    let ids: Vec<String> = history
        .iter()
        .map(|d| d.deployment.event_id.to_string())
        .collect();
    assert_eq!(ids.join("\n"), by_seq, "deployed_at order is commit order");
    for w in history.windows(2) {
        assert!(
            w[0].deployment.deployed_at < w[1].deployment.deployed_at,
            "strictly after the one committed before: {} then {}",
            w[0].deployment.deployed_at,
            w[1].deployment.deployed_at
        );
    }
    let stored: Vec<_> = history.iter().map(|d| d.deployment.deployed_at).collect();
    stamps.sort();
    assert_eq!(stamps, stored, "each caller was told the time stored");
    assert!(
        stored
            .iter()
            .all(|t| *t < start + chrono::Duration::minutes(5)),
        "the database's clock, not the callers' times"
    );
}
