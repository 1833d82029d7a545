//! `imagetrail db migrate|import|export`: the PostgreSQL store of
//! [`crate::records::postgres`] from the command line.
//!
//! * `migrate` applies the embedded schema migrations (a no-op when current) and refuses a
//!   database migrated by a newer imagetrail.
//! * `import` reads every history of a state directory through [`Store`] and records it,
//!   environment by environment in `deployed_at` order (so the name rule, which holds at
//!   every point of the history, holds again while it is replayed), idempotent by
//!   `event_id`: importing twice stores each deployment once.
//! * `export` writes every history of the database into a new state directory through
//!   [`Store::record_many`], in the same order, so the file backend reads back what was
//!   stored: the seed's `deploy-history.yml` and `deploy-info.yml` per app.
//!
//! Both load one environment's histories into memory at a time.

use anyhow::Context;

use crate::cli::{DbArgs, DbTransferArgs};
use crate::exit::ExitCode;
use crate::records::postgres::{PgError, PgItem, PgStore, PgWritten};
use crate::records::{Deployment, Store};
use crate::terminal;

/// Deployments per transaction (import) or per group commit (export).
const CHUNK: usize = 1000;

/// `imagetrail db migrate`.
pub async fn migrate(args: DbArgs) -> anyhow::Result<ExitCode> {
    let (store, done) = PgStore::migrate(&args.database_url).await?;
    if done.from == done.to {
        println!(
            "schema of {} is at version {}: nothing to do",
            store.target(),
            done.to
        );
    } else {
        println!(
            "migrated {} from schema version {} to {}",
            store.target(),
            done.from,
            done.to
        );
    }
    Ok(ExitCode::Success)
}

/// Every deployment of `env` in `store`, oldest first across its apps (stable: each app's
/// own order is kept for equal times).
fn sorted(mut all: Vec<Deployment>) -> Vec<Deployment> {
    all.sort_by_key(|d| d.deployment.deployed_at);
    all
}

/// `imagetrail db import`.
pub async fn import(args: DbTransferArgs) -> anyhow::Result<ExitCode> {
    let pg = PgStore::connect(&args.db.database_url).await?;
    let files = Store::new(&args.state_dir);
    if !args.state_dir.is_dir() {
        anyhow::bail!(
            "{}: not a directory; name the state directory to import with --state-dir",
            args.state_dir.display()
        );
    }
    let (mut recorded, mut present, mut refused) = (0usize, 0usize, 0usize);
    let dir = args.state_dir.clone();
    let envs = tokio::task::spawn_blocking(move || Store::new(dir).environments())
        .await?
        .context("reading the state directory")?;
    for env in envs {
        let mut all = Vec::new();
        for app in files.apps(&env)? {
            let read = files.read_history(&env, &app)?;
            if let Some(torn) = read.torn {
                // Never acknowledged: the file backend moves it aside on its next write.
                eprintln!("imagetrail: warning: not imported: {torn}");
            }
            all.extend(read.entries);
        }
        for chunk in sorted(all).chunks(CHUNK) {
            let items: Vec<PgItem> = chunk.iter().cloned().map(PgItem::new).collect();
            for (d, r) in chunk.iter().zip(pg.record_many(&items).await) {
                match r {
                    Ok(PgWritten::Recorded) => recorded += 1,
                    Ok(_) => present += 1,
                    Err(e @ (PgError::Rule(_) | PgError::Unstorable { .. })) => {
                        refused += 1;
                        eprintln!(
                            "imagetrail: error: not imported: {} {} in {} ({}): {}",
                            terminal::sanitize(&d.app),
                            d.deployment.event_id,
                            terminal::sanitize(&d.deployment.workspace),
                            d.deployment.deployed_at,
                            terminal::sanitize(&e.to_string())
                        );
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    println!(
        "imported {recorded} deployments into {} ({present} already there, {refused} refused)",
        pg.target()
    );
    Ok(if refused == 0 {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// `imagetrail db export`.
pub async fn export(args: DbTransferArgs) -> anyhow::Result<ExitCode> {
    let pg = PgStore::connect(&args.db.database_url).await?;
    let dir = args.state_dir.clone();
    let existing = tokio::task::spawn_blocking(move || Store::new(dir).environments())
        .await?
        .context("reading the state directory")?;
    if !existing.is_empty() {
        anyhow::bail!(
            "{} already holds records (environment {:?}): export writes a new state \
             directory; name an empty or missing one",
            args.state_dir.display(),
            terminal::sanitize(&existing[0])
        );
    }
    let mut written = 0usize;
    for env in pg.environments().await? {
        let mut all = Vec::new();
        for app in pg.apps(&env).await? {
            all.extend(pg.history(&env, &app, None, None, None).await?);
        }
        for chunk in sorted(all).chunks(CHUNK) {
            let files = Store::new(&args.state_dir);
            let chunk = chunk.to_vec();
            let results =
                tokio::task::spawn_blocking(move || (files.record_many(&chunk), chunk)).await?;
            for (r, d) in results.0.into_iter().zip(&results.1) {
                r.with_context(|| {
                    format!(
                        "writing {} {} of environment {}",
                        terminal::sanitize(&d.app),
                        d.deployment.event_id,
                        terminal::sanitize(&d.deployment.workspace)
                    )
                })?;
                written += 1;
            }
        }
    }
    println!(
        "exported {written} deployments from {} into {}",
        pg.target(),
        args.state_dir.display()
    );
    Ok(ExitCode::Success)
}
