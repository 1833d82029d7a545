//! Measure the PostgreSQL store (run by `bench/postgres.sh`, which starts the cluster):
//!
//! * `record CONCURRENCY SECONDS`: that many tasks each record deployments one after another
//!   through the group-commit writer for SECONDS; prints durable deployments/s and p50/p99
//!   latency, and checks that every answered deployment is stored.
//! * `query N`: after a bulk load of the database, N `at` and N `current` calls on random apps;
//!   p50/p99 of each.
//!
//! `IMAGETRAIL_DATABASE_URL` names a migrated database.

use std::time::{Duration, Instant};

use chrono::Utc;
use imagetrail::records::postgres::{PgItem, PgStore};
use imagetrail::records::{Deployment, DeploymentRecord, ImageRecord};

fn deployment(env: String, app: String) -> Deployment {
    Deployment {
        app,
        image: ImageRecord {
            tag: Some("1".into()),
            ..ImageRecord::new("reg.example/bench", format!("sha256:{}", "a".repeat(64)))
        },
        deployment: DeploymentRecord::new(env, Utc::now(), "bench"),
    }
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("IMAGETRAIL_DATABASE_URL")?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let store = PgStore::connect(&url).await?;
    match args.first().map(String::as_str) {
        Some("record") => {
            let conc: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
            let secs: u64 = args.get(2).map_or(Ok(10), |s| s.parse())?;
            let before = store.count().await?;
            let end = Instant::now() + Duration::from_secs(secs);
            let start = Instant::now();
            let mut tasks = Vec::new();
            for t in 0..conc {
                let s = store.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut i = 0;
                    while Instant::now() < end {
                        let d = deployment(format!("env-{}", t % 4), format!("app-{t}-{}", i % 8));
                        let t0 = Instant::now();
                        s.record(PgItem::new(d)).await.expect("record");
                        lat.push(t0.elapsed());
                        i += 1;
                    }
                    lat
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await?);
            }
            let elapsed = start.elapsed().as_secs_f64();
            let stored = store.count().await? - before;
            assert_eq!(
                stored as usize,
                lat.len(),
                "every answered record is stored"
            );
            println!(
                "record: concurrency {conc}: {:.0} deployments/s, p50 {:.2} ms, p99 {:.2} ms, \
                 {} deployments stored",
                lat.len() as f64 / elapsed,
                pct(&mut lat, 0.5),
                pct(&mut lat, 0.99),
                stored
            );
        }
        Some("query") => {
            let n: usize = args.get(1).map_or(Ok(10_000), |s| s.parse())?;
            let rows = store.count().await?;
            let (mut at, mut cur) = (Vec::new(), Vec::new());
            for i in 0..n {
                let (env, app) = (
                    format!("env-{}", i % 10),
                    format!("app-{}", (i * 7919) % 1000),
                );
                let when = chrono::DateTime::parse_from_rfc3339("2021-01-01T00:00:00Z")?
                    .with_timezone(&Utc)
                    // After every app's first deployment (app k of env e: minute 10k + e).
                    + chrono::Duration::minutes((10_010 + i * 104_729 % 990_000) as i64);
                let t0 = Instant::now();
                store.at(&env, &app, when).await?.expect("an answer");
                at.push(t0.elapsed());
                let t0 = Instant::now();
                store
                    .current(&env, &app)
                    .await?
                    .expect("a current deployment");
                cur.push(t0.elapsed());
            }
            println!(
                "query: {rows} deployments stored, {n} calls each: at p50 {:.3} ms p99 {:.3} ms; \
                 current p50 {:.3} ms p99 {:.3} ms",
                pct(&mut at, 0.5),
                pct(&mut at, 0.99),
                pct(&mut cur, 0.5),
                pct(&mut cur, 0.99)
            );
        }
        _ => anyhow::bail!("usage: pg_bench record CONCURRENCY SECONDS | query N"),
    }
    Ok(())
}
