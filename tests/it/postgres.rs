//! The PostgreSQL store (issue 10 groundwork) against a real throwaway PostgreSQL 15 cluster
//! per test: `imagetrail db migrate|import|export` as a user runs them, and the store's rules
//! (idempotency key, name rule, at/current/history) through two pools, as two replicas would.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use imagetrail::records::postgres::{LATEST, PgError, PgItem, PgStore, PgWritten};
use imagetrail::records::{
    Checks, Deployment, DeploymentRecord, ImageRecord, RecordsError, Stamp, Store,
};
use uuid::Uuid;

use crate::support::postgres::Postgres;
use crate::support::{imagetrail, run, stderr, stdout};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn deployment(env: &str, app: &str, repo: &str, at: DateTime<Utc>) -> Deployment {
    Deployment {
        app: app.into(),
        image: ImageRecord {
            tag: Some("1.0".into()),
            ..ImageRecord::new(
                repo,
                format!("sha256:{:064x}", at.timestamp_nanos_opt().unwrap_or(0)),
            )
        },
        deployment: DeploymentRecord::new(env, at, "ci"),
    }
}

fn migrate(url: &str) -> std::process::Output {
    run(imagetrail().args(["db", "migrate", "--database-url", url]))
}

/// A migrated database and a store on it.
async fn store(pg: &Postgres, db: &str) -> (String, PgStore) {
    let url = pg.create_database(db);
    assert!(migrate(&url).status.success());
    let store = PgStore::connect(&url).await.expect("connect");
    (url, store)
}

#[test]
fn db_migrate_twice_is_a_no_op() {
    let pg = Postgres::start();
    let url = pg.create_database("it");
    let first = migrate(&url);
    assert!(first.status.success());
    assert!(
        stdout(&first).contains(&format!("from schema version 0 to {LATEST}")),
        "{}",
        stdout(&first)
    );
    // Through the environment variable this time.
    let second = run(imagetrail()
        .args(["db", "migrate"])
        .env("IMAGETRAIL_DATABASE_URL", &url));
    assert!(second.status.success());
    assert!(
        stdout(&second).contains(&format!("is at version {LATEST}: nothing to do")),
        "{}",
        stdout(&second)
    );
    assert_eq!(
        pg.psql("it", "SELECT count(*) FROM imagetrail_schema_version"),
        format!("{LATEST}\n")
    );
}

#[test]
fn db_refuses_a_newer_schema_with_one_line_and_changes_nothing() {
    let pg = Postgres::start();
    let url = pg.create_database("it");
    assert!(migrate(&url).status.success());
    pg.psql(
        "it",
        "INSERT INTO imagetrail_schema_version (version, description) VALUES (7, 'future')",
    );
    for args in [
        vec!["db", "migrate", "--database-url", &url],
        vec![
            "db",
            "export",
            "--database-url",
            &url,
            "--state-dir",
            "/nonexistent-x",
        ],
    ] {
        let out = run(imagetrail().args(&args));
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "schema is version 7, newer than the {LATEST} this imagetrail knows"
            )),
            "{err}"
        );
    }
    assert_eq!(
        pg.psql(
            "it",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM imagetrail_schema_version"
        ),
        "1,2,3,7\n"
    );
}

#[test]
fn wrong_password_and_unreachable_host_are_one_clear_line() {
    let pg = Postgres::start();
    pg.create_database("it");
    let out = migrate(&pg.url_with_password("it", "not-the-pw"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "PostgreSQL at 127.0.0.1:{} refused user \"postgres\": password authentication \
             failed for user \"postgres\"; check the user, password and sslmode",
            pg.port()
        )),
        "{err}"
    );
    assert!(
        !err.contains("not-the-pw"),
        "the password is never shown: {err}"
    );

    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = migrate(&format!("postgres://postgres:pw@127.0.0.1:{port}/it"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot reach PostgreSQL at 127.0.0.1:{port}:")),
        "{err}"
    );
    assert!(err.contains("refused"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_from_two_replicas_records_once() {
    let pg = Postgres::start();
    let (url, one) = store(&pg, "it").await;
    let two = PgStore::connect(&url).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { one.clone() } else { two.clone() };
        let mut d = deployment("prod", "web", "reg.example/web", Utc::now());
        d.deployment.deployed_by = format!("attempt {i}");
        tasks.push(tokio::spawn(async move {
            let item = PgItem {
                idempotency_key: Some("key-1".into()),
                answer: Some(serde_json::json!({"attempt": i})),
                ..PgItem::new(d.clone())
            };
            (d, s.record(item).await)
        }));
    }
    let mut recorded = Vec::new();
    let mut duplicates = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (d, Ok(PgWritten::Recorded)) => recorded.push(d),
            (_, Ok(PgWritten::Duplicate { deployment, answer })) => {
                duplicates.push((deployment, answer))
            }
            (_, other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(recorded.len(), 1, "recorded once");
    assert_eq!(duplicates.len(), 19);
    let first = &recorded[0];
    let attempt: u64 = first.deployment.deployed_by[8..].parse().unwrap();
    for (d, answer) in duplicates {
        assert_eq!(*d, *first, "every retry is told about the first record");
        assert_eq!(answer, Some(serde_json::json!({ "attempt": attempt })));
    }
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_name_raced_by_two_replicas_is_recorded_once_and_refused_once() {
    let pg = Postgres::start();
    let (url, one) = store(&pg, "it").await;
    let two = PgStore::connect(&url).await.unwrap();
    for round in 0..10 {
        let env = format!("env-{round}");
        let mut a = deployment(&env, "web-a", "reg.example/web", Utc::now());
        a.deployment.name = Some("frontend".into());
        let mut b = deployment(&env, "web-b", "reg.example/web", Utc::now());
        b.deployment.name = Some("frontend".into());
        let (ra, rb) = tokio::join!(one.record(PgItem::new(a)), two.record(PgItem::new(b)));
        let (ok, refused) = match (ra, rb) {
            (Ok(PgWritten::Recorded), Err(e)) => ("web-a", e),
            (Err(e), Ok(PgWritten::Recorded)) => ("web-b", e),
            other => panic!("round {round}: one must win: {other:?}"),
        };
        match &refused {
            PgError::Rule(RecordsError::NameTaken {
                other_app, name, ..
            }) => {
                assert_eq!(other_app, ok);
                assert_eq!(name, "frontend");
            }
            e => panic!("not a name conflict: {e}"),
        }
        assert!(
            refused
                .to_string()
                .contains("a name must be unique per repository per environment")
        );
        assert_eq!(one.apps(&env).await.unwrap(), vec![ok.to_string()]);
    }
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "10\n");
}

/// One batch is one statement: the rules still apply item by item, in the order given, each
/// item seeing the ones before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_batch_applies_every_rule_item_by_item_in_the_order_given() {
    let pg = Postgres::start();
    let (_url, s) = store(&pg, "it").await;
    let now = Utc::now();
    let named = |app: &str, name: &str, at| {
        let mut d = deployment("prod", app, "reg.example/web", at);
        d.deployment.name = Some(name.into());
        d
    };
    let stamped = |d: Deployment| PgItem {
        checks: Checks {
            stamp: Stamp::WriteTime,
            ..Checks::default()
        },
        ..PgItem::new(d)
    };
    let first = named("web-a", "frontend", now);
    let keyed = PgItem {
        idempotency_key: Some("key-1".into()),
        answer: Some(serde_json::json!({"first": true})),
        ..PgItem::new(deployment("prod", "api", "reg.example/api", now))
    };
    let retry = PgItem {
        idempotency_key: Some("key-1".into()),
        ..PgItem::new(deployment("prod", "api", "reg.example/api", now))
    };
    // Older than web-c's current deployment (the next-but-one item): stored, not current, so
    // it takes no name from anybody.
    let backfill = named("web-c", "frontend", now - Duration::days(3));
    let results = s
        .record_many(&[
            PgItem::new(first.clone()),
            PgItem::new(named("web-b", "frontend", now)),
            keyed,
            retry,
            stamped(deployment("prod", "job", "reg.example/job", now)),
            stamped(deployment("prod", "job", "reg.example/job", now)),
            PgItem::new(deployment("stage", "web-c", "reg.example/web", now)),
        ])
        .await;
    assert!(matches!(results[0], Ok(PgWritten::Recorded)), "{results:?}");
    match &results[1] {
        Err(PgError::Rule(RecordsError::NameTaken { other_app, .. })) => {
            assert_eq!(other_app, "web-a")
        }
        other => panic!("the second claim of a name in one batch: {other:?}"),
    }
    assert!(matches!(results[2], Ok(PgWritten::Recorded)), "{results:?}");
    match &results[3] {
        Ok(PgWritten::Duplicate { answer, .. }) => {
            assert_eq!(answer, &Some(serde_json::json!({"first": true})))
        }
        other => panic!("a key repeated in one batch: {other:?}"),
    }
    let (one, two) = match (&results[4], &results[5]) {
        (Ok(PgWritten::Stamped(a)), Ok(PgWritten::Stamped(b))) => (*a, *b),
        other => panic!("two stamped writes of one app: {other:?}"),
    };
    assert!(one < two, "stamped in the order given: {one} then {two}");
    let job = s.current("prod", "job").await.unwrap().unwrap();
    assert_eq!(job.deployment.deployed_at, two);

    // The backfill: web-c's current deployment in prod is newer, so it keeps no name.
    let current = deployment("prod", "web-c", "reg.example/web", now);
    let results = s
        .record_many(&[PgItem::new(current.clone()), PgItem::new(backfill)])
        .await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(PgWritten::Recorded))),
        "{results:?}"
    );
    assert_eq!(s.current("prod", "web-c").await.unwrap(), Some(current));
    assert_eq!(s.current("prod", "web-a").await.unwrap(), Some(first));
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "7\n");
}

/// A replica still on schema version 2's one-deployment function does not take the name
/// lock, so its write can race a batch past the name check; the unique index stops the
/// batch, which is tried again and then refused by its own check, alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_raced_by_a_replica_on_the_older_function_is_refused_not_a_failure() {
    let pg = Postgres::start();
    let (url, s) = store(&pg, "it").await;
    let (mut old, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let tx = old.transaction().await.unwrap();
    let row = tx
        .query_one(
            "SELECT outcome FROM imagetrail_record_v2($1, 'prod', 'web-old', 'reg.example/web', \
             NULL, $2, NULL, 'linux', 'amd64', NULL, NULL, NULL, NULL, NULL, NULL, now(), 0::int2, \
             'ci', 'frontend', NULL, NULL, false, false, 'write')",
            &[&Uuid::now_v7(), &format!("sha256:{}", "a".repeat(64))],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "recorded");
    let mut d = deployment("prod", "web-new", "reg.example/web", Utc::now());
    d.deployment.name = Some("frontend".into());
    let other = deployment("prod", "unrelated", "reg.example/other", Utc::now());
    let batch = {
        let s = s.clone();
        let items = [PgItem::new(other.clone()), PgItem::new(d)];
        tokio::spawn(async move { s.record_many(&items).await })
    };
    // The batch now waits on the uncommitted name in the unique index (or has not reached it
    // yet); either way the older replica commits first.
    while pg.psql(
        "it",
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
         AND query LIKE '%imagetrail_record_batch_v3%'",
    ) != "1\n"
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tx.commit().await.unwrap();
    let results = batch.await.unwrap();
    assert!(matches!(results[0], Ok(PgWritten::Recorded)), "{results:?}");
    match &results[1] {
        Err(PgError::Rule(RecordsError::NameTaken { other_app, .. })) => {
            assert_eq!(other_app, "web-old")
        }
        other => panic!("the name raced by the older function: {other:?}"),
    }
    assert_eq!(s.current("prod", "unrelated").await.unwrap(), Some(other));
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_current_and_history_answer_from_the_database() {
    let pg = Postgres::start();
    let (_url, s) = store(&pg, "it").await;
    let times = [
        t("2026-01-01T10:00:00.000000001Z"),
        t("2026-01-01T10:00:00.000000002Z"),
        t("2026-01-02T10:00:00Z"),
        t("2026-01-03T10:00:00.5Z"),
    ];
    let ds: Vec<Deployment> = times
        .iter()
        .map(|&at| deployment("cluster/ns", "api", "reg.example/team/api", at))
        .collect();
    // Recorded out of order: the newest first; current still goes by deployed_at.
    for d in ds.iter().rev() {
        assert_eq!(
            s.record(PgItem::new(d.clone())).await.unwrap(),
            PgWritten::Recorded
        );
    }
    s.record(PgItem::new(deployment(
        "staging",
        "api",
        "docker.io/r/x",
        times[0],
    )))
    .await
    .unwrap();
    assert_eq!(s.environments().await.unwrap(), ["cluster/ns", "staging"]);
    assert_eq!(
        s.current("cluster/ns", "api").await.unwrap().as_ref(),
        Some(&ds[3])
    );
    assert_eq!(s.current("cluster/ns", "nope").await.unwrap(), None);
    // at: nanosecond-exact boundaries, between entries, before everything.
    let at = |when| s.at("cluster/ns", "api", when);
    assert_eq!(at(times[0] - Duration::nanoseconds(1)).await.unwrap(), None);
    assert_eq!(at(times[0]).await.unwrap().as_ref(), Some(&ds[0]));
    assert_eq!(at(times[1]).await.unwrap().as_ref(), Some(&ds[1]));
    assert_eq!(
        at(t("2026-01-02T23:00:00Z")).await.unwrap().as_ref(),
        Some(&ds[2])
    );
    assert_eq!(
        at(t("2099-01-01T00:00:00Z")).await.unwrap().as_ref(),
        Some(&ds[3])
    );
    // history: all oldest first, a range, the newest N.
    let h = |since, until, n| s.history("cluster/ns", "api", since, until, n);
    assert_eq!(h(None, None, None).await.unwrap(), ds);
    assert_eq!(
        h(Some(times[1]), Some(times[2]), None).await.unwrap(),
        ds[1..3]
    );
    assert_eq!(h(None, None, Some(2)).await.unwrap(), ds[2..]);
}

/// Every file under `dir` (except lock files) and its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap() != ".lock" {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn import_then_export_gives_back_the_same_yaml_files() {
    let pg = Postgres::start();
    let url = pg.create_database("it");
    assert!(migrate(&url).status.success());
    let seed = tempfile::tempdir().unwrap();
    let files_store = Store::new(seed.path());
    // Hostile values, nanosecond times, two environments, names, every optional field.
    let mut d1 = deployment(
        "prod",
        "web",
        "reg.example/web",
        t("2026-03-01T00:00:00.123456789Z"),
    );
    d1.image.description = Some("a: b # c\n\u{202e}evil\u{1}\u{fffe}".into());
    d1.image.index_digest = Some(format!("sha256:{}", "b".repeat(64)));
    d1.image.platform.variant = Some("v8".into());
    d1.image.built_at = Some("2026-02-28T00:00:00Z".into());
    d1.image.revision = Some("abc123".into());
    d1.image.source = Some("https://git.example/web".into());
    // Just under the 64 KiB a label may hold (records::MAX_LABEL).
    d1.image.title = Some("x".repeat(60_000));
    d1.deployment.name = Some("frontend".into());
    let mut d2 = deployment(
        "prod",
        "web-2",
        "reg.example/web",
        t("2026-03-02T00:00:00Z"),
    );
    d2.deployment.name = Some("frontend-2".into());
    let d3 = deployment(
        "cluster/ns",
        "team/api",
        "reg.example/api",
        t("2026-03-03T00:00:00Z"),
    );
    let d4 = deployment("prod", "web", "reg.example/web", t("2026-03-04T00:00:00Z"));
    for d in [&d1, &d2, &d3, &d4] {
        files_store.record(d).unwrap();
    }
    let import = |dir: &Path| {
        run(imagetrail()
            .args(["db", "import", "--database-url", &url, "--state-dir"])
            .arg(dir))
    };
    let first = import(seed.path());
    assert!(first.status.success());
    assert!(
        stdout(&first).contains("imported 4 deployments")
            && stdout(&first).contains("0 already there"),
        "{}",
        stdout(&first)
    );
    let again = import(seed.path());
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("imported 0 deployments")
            && stdout(&again).contains("4 already there"),
        "{}",
        stdout(&again)
    );
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "4\n");

    let out_dir = tempfile::tempdir().unwrap();
    let target = out_dir.path().join("state");
    let export = run(imagetrail()
        .args(["db", "export", "--database-url", &url, "--state-dir"])
        .arg(&target));
    assert!(export.status.success());
    assert!(
        stdout(&export).contains("exported 4 deployments"),
        "{}",
        stdout(&export)
    );
    let (before, after) = (files(seed.path()), files(&target));
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, bytes) in &before {
        assert!(after[path] == *bytes, "{path} differs after the round trip");
    }
    // The file backend reads it back.
    let back = Store::new(&target);
    assert_eq!(back.history("prod", "web").unwrap(), vec![d1, d4.clone()]);
    assert_eq!(back.current("prod", "web").unwrap(), Some(d4));

    // Exporting over existing records is refused.
    let over = run(imagetrail()
        .args(["db", "export", "--database-url", &url, "--state-dir"])
        .arg(&target));
    assert_eq!(over.status.code(), Some(1));
    assert!(
        stderr(&over).contains("already holds records"),
        "{}",
        stderr(&over)
    );
}

#[test]
fn tls_verify_full_trusts_only_the_named_ca_and_require_encrypts() {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pg = Postgres::start_tls(&ck.cert.pem(), &ck.signing_key.serialize_pem());
    pg.create_database("it");
    let certs = tempfile::tempdir().unwrap();
    let ca = certs.path().join("ca.pem");
    std::fs::write(&ca, ck.cert.pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let other_ca = certs.path().join("other.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let base = format!(
        "postgres://postgres:{}@localhost:{}/it",
        crate::support::postgres::PASSWORD,
        pg.port()
    );

    let verified = migrate(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        ca.display()
    ));
    assert!(verified.status.success(), "{}", stderr(&verified));

    let wrong_ca = migrate(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    ));
    assert_eq!(wrong_ca.status.code(), Some(1));
    let err = stderr(&wrong_ca);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "TLS to PostgreSQL at localhost:{} failed",
            pg.port()
        )),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");

    // require: encrypted without verifying (libpq's meaning), accepted by a hostssl-only server.
    let required = migrate(&format!("{base}?sslmode=require"));
    assert!(required.status.success(), "{}", stderr(&required));
    assert!(stdout(&required).contains("nothing to do"));

    // disable: the server takes no plain TCP; its reason is in the one line.
    let plain = migrate(&format!("{base}?sslmode=disable"));
    assert_eq!(plain.status.code(), Some(1));
    let err = stderr(&plain);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no pg_hba.conf entry"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fields_are_stored_exactly_or_refused_alone() {
    let pg = Postgres::start();
    let (_url, s) = store(&pg, "it").await;
    let now = t("2026-05-01T00:00:00.999999999Z");
    // Image labels take any characters up to 64 KiB: stored and read back exactly.
    let mut odd = deployment("prod", "web", "reg.example/web", now);
    odd.image.description = Some("\u{fffe}\u{202e}a: b\n# c\u{7}".into());
    odd.image.revision = Some("\u{1b}[31mred\r\u{2028}".into());
    odd.image.title = Some("t".repeat(imagetrail::records::MAX_LABEL));
    // Refused by the field rules, as the file store's writer refuses them.
    let bidi_env = deployment("prod\u{202e}", "web", "reg.example/web", now);
    let control_app = deployment("prod", "web\u{1}", "reg.example/web", now);
    let mut escape_by = deployment("prod", "by", "reg.example/web", now);
    escape_by.deployment.deployed_by = "\u{1b}[31mred".into();
    let mut long_title = deployment("prod", "title", "reg.example/web", now);
    long_title.image.title = Some("t".repeat(100_000));
    let long_app = deployment("prod", &"a".repeat(100_000), "reg.example/web", now);
    let by_rules = [bidi_env, control_app, escape_by, long_title, long_app];
    // Refused by the database alone: a NUL in a label.
    let mut nul = deployment("prod", "nul", "reg.example/web", now);
    nul.image.description = Some("a\0b".into());
    let fine = deployment("prod", "fine", "reg.example/web", now);
    let mut items = vec![PgItem::new(odd.clone())];
    items.extend(by_rules.iter().cloned().map(PgItem::new));
    items.push(PgItem::new(nul));
    items.push(PgItem::new(fine.clone()));
    let results = s.record_many(&items).await;
    assert!(
        matches!(results[0], Ok(PgWritten::Recorded)),
        "{:?}",
        results[0]
    );
    let files = tempfile::tempdir().unwrap();
    let files = Store::new(files.path());
    for (d, r) in by_rules.iter().zip(&results[1..]) {
        let refused = r
            .as_ref()
            .expect_err("refused by the field rules")
            .to_string();
        let by_files = files.record(d).expect_err("the file store refuses it too");
        assert_eq!(refused, by_files.to_string());
    }
    let e = results[6].as_ref().unwrap_err().to_string();
    assert_eq!(
        e,
        "image.description cannot be stored in PostgreSQL: it contains a NUL character"
    );
    assert!(
        matches!(results[7], Ok(PgWritten::Recorded)),
        "{:?}",
        results[7]
    );
    assert_eq!(s.current("prod", "web").await.unwrap(), Some(odd));
    assert_eq!(s.current("prod", "fine").await.unwrap(), Some(fine));
    assert_eq!(pg.psql("it", "SELECT count(*) FROM deployments"), "2\n");
}

/// The record commands on `--database-url` never change the schema: an unmigrated database
/// and one migrated by a newer imagetrail are each one clear line and exit 1, and so is a
/// database nobody listens for; nothing is written anywhere.
#[test]
fn record_commands_refuse_an_unmigrated_or_newer_schema_and_an_unreachable_database() {
    let pg = crate::support::postgres::shared();
    let name = format!("it_{}", &Uuid::new_v4().simple().to_string()[..12]);
    let url = pg.create_database(&name);
    let state = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str], url: &str| {
        run(imagetrail()
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .args(["--database-url", url]))
    };
    let one_line = |out: &std::process::Output, want: &str| {
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{want:?}: {err}");
    };
    let deploy = [
        "deploy",
        "--env",
        "prod",
        "--app",
        "a",
        "--image",
        "127.0.0.1:9/x:v1",
    ];
    for args in [&["status"][..], &["history"], &deploy] {
        one_line(
            &cmd(args, &url),
            &format!(
                "this imagetrail needs version {LATEST}: run `imagetrail db migrate --database-url …` first"
            ),
        );
    }
    assert_eq!(
        pg.psql(
            &name,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0\n",
        "nothing migrated implicitly"
    );
    assert!(migrate(&url).status.success());
    pg.psql(
        &name,
        "INSERT INTO imagetrail_schema_version (version, description) VALUES (7, 'future')",
    );
    for args in [
        &["at", "2026-01-01T00:00:00Z"][..],
        &["where", "sha256:00"],
        &deploy,
    ] {
        one_line(
            &cmd(args, &url),
            &format!("schema is version 7, newer than the {LATEST} this imagetrail knows"),
        );
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let down = format!("postgres://postgres:s3cret@127.0.0.1:{port}/it");
    for args in [&["status"][..], &deploy] {
        let out = cmd(args, &down);
        one_line(
            &out,
            &format!("cannot reach PostgreSQL at 127.0.0.1:{port}"),
        );
        assert!(!stderr(&out).contains("s3cret"));
    }
    assert_eq!(pg.psql(&name, "SELECT count(*) FROM deployments"), "0\n");
    assert!(std::fs::read_dir(state.path()).unwrap().next().is_none());
}

/// The same records in the files and in PostgreSQL (`db import`) give the query commands the
/// same answers, byte for byte: 2,600 deployments across three apps in two environments,
/// nanosecond times and ties across apps, so `history` crosses many of PostgreSQL's keyset
/// pages (and the files' windows) and merges them in the same order.
#[test]
fn the_query_commands_answer_the_same_from_the_files_and_from_postgresql() {
    let seed = tempfile::tempdir().unwrap();
    let files = Store::new(seed.path());
    let base = t("2026-01-01T00:00:00Z");
    let n = 2600usize;
    let mut all = Vec::with_capacity(n);
    for i in 0..n {
        let (env, app) = [("prod", "web"), ("prod", "api"), ("staging", "db")][i % 3];
        // Two deployments share each time (ties across apps).
        let k = (i / 2) as i64;
        let at = base + Duration::seconds(61 * k) + Duration::nanoseconds(k % 1000);
        let mut d = deployment(env, app, &format!("reg.example/{app}"), at);
        // Runs of three of one digest per app, for `where`'s "since".
        d.image.digest = format!("sha256:{:064x}", i / 9);
        d.image.revision = Some(format!("{:07x}", i / 9 + 0x1000000));
        all.push(d);
    }
    for r in files.record_many(&all) {
        r.expect("record");
    }
    let url = crate::support::postgres::fresh_database();
    let out = run(imagetrail()
        .args(["db", "import", "--database-url", &url, "--state-dir"])
        .arg(seed.path()));
    assert!(out.status.success(), "{}", stderr(&out));
    let empty = tempfile::tempdir().unwrap();
    let query = |args: &[&str], pg: bool| {
        let mut cmd = imagetrail();
        cmd.args(args).env("TZ", "Europe/Amsterdam");
        if pg {
            cmd.arg("--state-dir")
                .arg(empty.path())
                .args(["--database-url", &url]);
        } else {
            cmd.arg("--state-dir").arg(seed.path());
        }
        let out = cmd.output().unwrap();
        (out.status.code(), stdout(&out), stderr(&out))
    };
    let last = &all[n - 1];
    let current_web = all.iter().rev().find(|d| d.app == "web").unwrap();
    // With a `Z`: a `+` would be a space in the dashboard's query string.
    let middle = (base + Duration::seconds(61 * 700)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let later = (base + Duration::seconds(61 * 900)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let cases: Vec<Vec<&str>> = vec![
        vec!["history", "--format", "json"],
        vec!["history"],
        vec!["history", "--last", "7"],
        vec![
            "history", "--last", "7", "--env", "prod", "--format", "json",
        ],
        vec![
            "history", "--since", &middle, "--until", &later, "--format", "json",
        ],
        vec![
            "history", "--env", "prod", "--app", "web", "--since", &middle,
        ],
        vec!["status", "--format", "json"],
        vec!["status"],
        vec!["at", &middle, "--format", "json"],
        vec!["at", &later, "--env", "staging"],
        vec!["at", "2025-12-31T00:00:00Z"],
        vec!["where", &current_web.image.digest],
        vec!["where", &last.image.digest, "--format", "json"],
        vec!["where", current_web.image.revision.as_deref().unwrap()],
        vec!["where", &all[0].image.digest],
    ];
    for args in cases {
        let (f, p) = (query(&args, false), query(&args, true));
        assert!(f.2.is_empty(), "files {args:?}: {}", f.2);
        assert_eq!(f, p, "files and postgres differ on {args:?}");
    }
    // The delivery metrics, but for the window's end (now, taken by each run).
    let metrics = |pg: bool| {
        let (code, out, err) = query(
            &[
                "metrics",
                "--since",
                "2025-12-01T00:00:00Z",
                "--format",
                "json",
            ],
            pg,
        );
        assert_eq!(code, Some(0), "{err}");
        let mut v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v.as_object_mut().unwrap().remove("window");
        // Deployments per day and week divide by the window's length, which ends at each run's
        // own "now" (seconds apart on a loaded machine); the counts they come from are compared.
        for e in v["environments"].as_array_mut().unwrap() {
            let e = e.as_object_mut().unwrap();
            assert!(e.remove("per_day").is_some() && e.remove("per_week").is_some());
        }
        v
    };
    let m = metrics(false);
    assert!(m.to_string().contains("\"deployments\":"), "{m}");
    assert_eq!(m, metrics(true), "files and postgres differ on metrics");
    // The dashboard's pages of `serve` on each.
    let serve = |pg: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = imagetrail();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--state-dir"]);
        if pg {
            cmd.arg(dir.path()).args(["--database-url", &url]);
        } else {
            cmd.arg(seed.path());
        }
        let (mut child, base) = crate::support::spawn_serve(&mut cmd);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let pages: Vec<(u16, String)> = [
            "/".to_string(),
            format!("/?at={middle}"),
            "/apps?app=web&days=365".to_string(),
            format!("/search?q={}", current_web.image.digest),
        ]
        .iter()
        .map(|p| {
            rt.block_on(async {
                let r = reqwest::get(format!("{base}{p}")).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
        let _ = child.kill();
        let _ = child.wait();
        pages
    };
    let (f, p) = (serve(false), serve(true));
    assert!(f.iter().all(|(code, _)| *code == 200), "{f:?}");
    assert!(
        f[0].1.contains(&current_web.image.digest[..19]),
        "{}",
        f[0].1
    );
    // The app page places points by the time of the request: its points' texts are compared.
    let titles = |page: &str| -> Vec<String> {
        page.split("<title>")
            .skip(1)
            .filter_map(|t| t.split("</title>").next().map(str::to_string))
            .collect()
    };
    assert!(titles(&f[2].1).len() > 100, "{}", f[2].1);
    assert_eq!(
        titles(&f[2].1),
        titles(&p[2].1),
        "app page: files and postgres differ"
    );
    for i in [0, 1, 3] {
        assert_eq!(f[i], p[i], "page {i}: files and postgres differ");
    }
    // And it really is the whole history (every deployment once), in time order.
    let (_, json, _) = query(&["history", "--format", "json"], true);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let got: Vec<(DateTime<Utc>, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                t(d["deployment"]["deployed_at"].as_str().unwrap()),
                d["deployment"]["event_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got.len(), n);
    assert!(
        got.windows(2).all(|w| w[0].0 <= w[1].0),
        "not in time order"
    );
    let mut ids: Vec<&str> = got.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), n, "an entry was read twice or lost");
}
