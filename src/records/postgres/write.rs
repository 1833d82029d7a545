//! Writing: one statement per deployment (`imagetrail_record_v1`), a batch per transaction,
//! and the group-commit writer that gathers concurrent callers into batches.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::{BoxFuture, join_all};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::{COLUMNS, PgError, classify, from_row, pool_client, split};
use crate::records::{Checks, Deployment, RecordsError, Stamp};

/// One deployment to record, with what the file backend's writer takes beside it.
#[derive(Debug, Clone)]
pub struct PgItem {
    /// The deployment (its `event_id` is its identity: a stored one is a duplicate).
    pub deployment: Deployment,
    /// The same extra rules as [`crate::records::Store::record_checked_many`], and where
    /// `deployed_at` comes from ([`Stamp`]: the database's clock under the app's lock for
    /// [`Stamp::WriteTime`], so an app's history order is its commit order across replicas).
    pub checks: Checks,
    /// The request's `Idempotency-Key`, if any: one record per key.
    pub idempotency_key: Option<String>,
    /// The answer to give the request and its retries, stored with the record.
    pub answer: Option<Value>,
}

impl PgItem {
    /// A deployment with no key, no answer and the default checks.
    pub fn new(deployment: Deployment) -> PgItem {
        PgItem {
            deployment,
            checks: Checks::default(),
            idempotency_key: None,
            answer: None,
        }
    }
}

/// What happened to one item that was not refused.
#[derive(Debug, Clone, PartialEq)]
pub enum PgWritten {
    /// Stored with its own `deployed_at` ([`Stamp::Given`]), and current unless a newer
    /// deployment of the app was stored before.
    Recorded,
    /// Stored and current, with the `deployed_at` the database stamped ([`Stamp::WriteTime`],
    /// [`Stamp::WriteTimeSeconds`]): after every earlier deployment of the app.
    Stamped(DateTime<Utc>),
    /// Nothing written: the app already runs this repository and digest
    /// ([`Checks::skip_if_current`]); the current deployment.
    AlreadyCurrent(Box<Deployment>),
    /// Nothing written: the `event_id` or the idempotency key is stored already (by this
    /// or another replica); the stored deployment and the answer stored with it.
    Duplicate {
        /// The deployment recorded first.
        deployment: Box<Deployment>,
        /// Its answer, when one was stored.
        answer: Option<Value>,
    },
}

/// The most deployments in one transaction, so one batch's answers are not held back forever
/// under a flood.
const MAX_BATCH: usize = 512;

/// Writer tasks of the deployments, unless `IMAGETRAIL_PG_WRITERS` says otherwise: while one
/// batch commits, the next gathers. Every write holds its app's lock until its commit (that is
/// what makes history order commit order), so batches of the same apps wait for each other's
/// WAL flush; two tasks still measured 1.8x one (BENCHMARKS.md, "PostgreSQL rows").
const WRITERS: usize = 2;

/// The deployments' writer tasks: [`WRITERS`], or `IMAGETRAIL_PG_WRITERS` (1 to 16; for
/// measuring, see bench/serve.sh).
fn writers() -> usize {
    std::env::var("IMAGETRAIL_PG_WRITERS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| (1..=16).contains(n))
        .unwrap_or(WRITERS)
}

/// A deadlock or serialization failure between replicas is retried this often.
const RETRIES: usize = 3;

/// The longest environment, app, repository, name or idempotency key stored: they are
/// index keys, and a B-tree entry must fit a third of a page.
pub(super) const MAX_KEY_BYTES: usize = 512;

/// What one batch write answers: one result per item, in the order given.
pub(super) type BatchFuture<'a, O> = BoxFuture<'a, Vec<Result<O, PgError>>>;

struct Job<I, O> {
    item: I,
    done: oneshot::Sender<Result<O, PgError>>,
}

/// A group-commit writer: callers send items, writer tasks take whatever is waiting (up to a
/// batch), write it in one transaction with the batch function, and answer each caller after
/// the commit. The deployments and the callbacks each have one.
pub(super) struct GroupCommit<I, O> {
    tx: mpsc::UnboundedSender<Job<I, O>>,
}

impl<I: Send + Sync + 'static, O: Send + 'static> GroupCommit<I, O> {
    /// Start `writers` tasks on the current runtime; `on_batch` is told each batch's size.
    pub(super) fn spawn<F>(
        writers: usize,
        max_batch: usize,
        on_batch: Option<Arc<dyn Fn(usize) + Send + Sync>>,
        write: F,
    ) -> GroupCommit<I, O>
    where
        F: for<'a> Fn(&'a [&'a I]) -> BatchFuture<'a, O> + Send + Sync + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel::<Job<I, O>>();
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        for _ in 0..writers {
            let (rx, write, on_batch) = (rx.clone(), write.clone(), on_batch.clone());
            tokio::spawn(async move {
                loop {
                    let mut jobs = Vec::new();
                    {
                        let mut rx = rx.lock().await;
                        match rx.recv().await {
                            Some(j) => jobs.push(j),
                            None => return,
                        }
                        while jobs.len() < max_batch {
                            match rx.try_recv() {
                                Ok(j) => jobs.push(j),
                                Err(_) => break,
                            }
                        }
                    }
                    if let Some(f) = &on_batch {
                        f(jobs.len());
                    }
                    let items: Vec<&I> = jobs.iter().map(|j| &j.item).collect();
                    let results = write(&items).await;
                    drop(items);
                    for (job, r) in jobs.into_iter().zip(results) {
                        // A caller that went away (request cancelled) needs no answer.
                        let _ = job.done.send(r);
                    }
                }
            });
        }
        GroupCommit { tx }
    }

    /// Queue `item` and wait for its batch's commit.
    pub(super) async fn submit(&self, item: I) -> Result<O, PgError> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send(Job { item, done })
            .map_err(|_| PgError::WriterStopped)?;
        answer.await.map_err(|_| PgError::WriterStopped)?
    }
}

/// The deployments' group-commit writer.
pub(super) struct Writer(GroupCommit<PgItem, PgWritten>);

impl Writer {
    pub(super) fn spawn(pool: Pool, target: String, user: String) -> Writer {
        let target: Arc<str> = target.into();
        let user: Arc<str> = user.into();
        Writer(GroupCommit::spawn(
            writers(),
            MAX_BATCH,
            None,
            move |items| {
                let (pool, target, user) = (pool.clone(), target.clone(), user.clone());
                Box::pin(async move { write_batch(&pool, &target, &user, items).await })
            },
        ))
    }

    pub(super) async fn submit(&self, item: PgItem) -> Result<PgWritten, PgError> {
        self.0.submit(item).await
    }
}

/// Refuse what the database cannot hold before it reaches the batch: a statement that fails
/// aborts the whole transaction, so one hostile item would fail every other one.
fn storable(d: &Deployment, key: Option<&str>, answer: Option<&Value>) -> Result<(), PgError> {
    let i = &d.image;
    let keys: [(&'static str, Option<&str>); 5] = [
        ("environment", Some(&d.deployment.workspace)),
        ("app", Some(&d.app)),
        ("image.repo", Some(&i.repo)),
        ("name", d.deployment.name.as_deref()),
        ("Idempotency-Key", key),
    ];
    for (field, v) in keys {
        if v.is_some_and(|v| v.len() > MAX_KEY_BYTES) {
            return Err(PgError::Unstorable {
                field,
                reason: "longer than 512 bytes",
            });
        }
    }
    let texts: [(&'static str, Option<&str>); 13] = [
        ("environment", Some(&d.deployment.workspace)),
        ("app", Some(&d.app)),
        ("image.repo", Some(&i.repo)),
        ("image.tag", i.tag.as_deref()),
        ("image.digest", Some(&i.digest)),
        ("image.index_digest", i.index_digest.as_deref()),
        ("image.platform", Some(&i.platform.os)),
        ("image.platform", Some(&i.platform.architecture)),
        ("image.platform", i.platform.variant.as_deref()),
        ("image.description", i.description.as_deref()),
        ("deployment.deployed_by", Some(&d.deployment.deployed_by)),
        ("name", d.deployment.name.as_deref()),
        ("Idempotency-Key", key),
    ];
    let more = [
        ("image.built_at", i.built_at.as_deref()),
        ("image.revision", i.revision.as_deref()),
        ("image.source", i.source.as_deref()),
        ("image.title", i.title.as_deref()),
    ];
    for (field, v) in texts.into_iter().chain(more) {
        if v.is_some_and(|v| v.contains('\0')) {
            return Err(PgError::Unstorable {
                field,
                reason: "it contains a NUL character",
            });
        }
    }
    if let Some(a) = answer
        && a.to_string().contains("\\u0000")
    {
        return Err(PgError::Unstorable {
            field: "answer",
            reason: "it contains a NUL character",
        });
    }
    Ok(())
}

const RECORD: &str = "SELECT outcome, row_seq, other, stamped_at, stamped_ns \
     FROM imagetrail_record_v2(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20, $21, $22, $23, $24)";

/// Whether the whole transaction may succeed when tried again: 40P01 deadlock_detected (two
/// replicas' batches locking current rows in different orders), 40001
/// serialization_failure.
pub(super) fn retryable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| matches!(d.code().code(), "40P01" | "40001"))
}

/// Record `items` in one transaction: their statements pipelined on one connection, sorted
/// by (environment, app) and otherwise in the order given (so one app's items, as across
/// batches, are recorded in the order they came, and the first to come takes a name). Each
/// statement takes its app's advisory lock until the commit; taking them in one global order
/// keeps two replicas' batches from waiting on each other in a cycle. A deadlock that still
/// happens (through the current rows' name index) aborts one transaction, which is retried
/// whole. One result per item, in the order given.
pub(super) async fn write_batch(
    pool: &Pool,
    target: &str,
    user: &str,
    items: &[&PgItem],
) -> Vec<Result<PgWritten, PgError>> {
    let mut results: Vec<Option<Result<PgWritten, PgError>>> = items.iter().map(|_| None).collect();
    let mut order = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match storable(
            &item.deployment,
            item.idempotency_key.as_deref(),
            item.answer.as_ref(),
        ) {
            Ok(()) => order.push(i),
            Err(e) => results[i] = Some(Err(e)),
        }
    }
    order.sort_by(|&a, &b| {
        let (a, b) = (&items[a].deployment, &items[b].deployment);
        (&a.deployment.workspace, &a.app).cmp(&(&b.deployment.workspace, &b.app))
    });
    if !order.is_empty() {
        match run_batch(pool, target, user, items, &order).await {
            Ok(outcomes) => {
                for (i, r) in order.iter().zip(outcomes) {
                    results[*i] = Some(r);
                }
            }
            Err(e) => {
                for i in &order {
                    results[*i] = Some(Err(e.for_another_caller()));
                }
                if let Some(first) = order.first() {
                    results[*first] = Some(Err(e));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or(Err(PgError::WriterStopped)))
        .collect()
}

/// One row of the record function.
struct Outcome {
    outcome: String,
    seq: Option<i64>,
    other: Option<String>,
    stamped_at: Option<DateTime<Utc>>,
    stamped_ns: Option<i16>,
}

async fn run_batch(
    pool: &Pool,
    target: &str,
    user: &str,
    items: &[&PgItem],
    order: &[usize],
) -> Result<Vec<Result<PgWritten, PgError>>, PgError> {
    let err = |e| classify(e, target, user);
    let mut client = pool_client(pool, target, user).await?;
    let mut attempt = 0;
    let outcomes = loop {
        attempt += 1;
        let tx = client.transaction().await.map_err(err)?;
        let stmt = tx.prepare_cached(RECORD).await.map_err(err)?;
        let params: Vec<_> = order.iter().map(|&i| Params::of(items[i])).collect();
        let refs: Vec<_> = params.iter().map(Params::refs).collect();
        let rows = join_all(refs.iter().map(|r| tx.query_one(&stmt, &r[..]))).await;
        let mut failed = None;
        let mut outcomes = Vec::with_capacity(rows.len());
        for r in rows {
            match r {
                Ok(row) => outcomes.push(Outcome {
                    outcome: row.get(0),
                    seq: row.get(1),
                    other: row.get(2),
                    stamped_at: row.get(3),
                    stamped_ns: row.get(4),
                }),
                // The first error is the cause; the rest say the transaction is aborted.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let e = match failed {
            None => match tx.commit().await {
                Ok(()) => break outcomes,
                Err(e) => e,
            },
            Some(e) => {
                drop(tx.rollback().await);
                e
            }
        };
        if attempt < RETRIES && retryable(&e) {
            tracing::debug!("batch retried after {e}");
            continue;
        }
        return Err(err(e));
    };
    // Read back what the duplicates and already-current items refer to (after the commit:
    // those rows are committed either way).
    let mut out = Vec::with_capacity(outcomes.len());
    for (&i, o) in order.iter().zip(outcomes) {
        let d = &items[i].deployment;
        out.push(match o.outcome.as_str() {
            "recorded" => Ok(match (items[i].checks.stamp, o.stamped_at) {
                (Stamp::Given, _) | (_, None) => PgWritten::Recorded,
                (_, Some(at)) => PgWritten::Stamped(
                    at + chrono::Duration::nanoseconds(i64::from(o.stamped_ns.unwrap_or(0))),
                ),
            }),
            "duplicate" | "already_current" => {
                let sql = format!("SELECT {COLUMNS}, d.answer FROM deployments d WHERE d.seq = $1");
                let row = client.query_one(&sql, &[&o.seq]).await.map_err(err)?;
                let stored = Box::new(from_row(&row));
                if o.outcome == "duplicate" {
                    Ok(PgWritten::Duplicate {
                        deployment: stored,
                        answer: row.get("answer"),
                    })
                } else {
                    Ok(PgWritten::AlreadyCurrent(stored))
                }
            }
            "name_taken" => Err(PgError::Rule(RecordsError::NameTaken {
                env: d.deployment.workspace.clone(),
                name: d.deployment.name.clone().unwrap_or_default(),
                repo: d.image.repo.clone(),
                other_app: o.other.unwrap_or_default(),
            })),
            "name_required" => Err(PgError::Rule(RecordsError::NameRequired {
                env: d.deployment.workspace.clone(),
                repo: d.image.repo.clone(),
                example: o.other.unwrap_or_default(),
            })),
            other => Err(PgError::Query(format!(
                "imagetrail_record_v1 answered {other:?}, which this imagetrail does not know"
            ))),
        });
    }
    Ok(out)
}

/// The owned parameters of one record statement.
struct Params<'a> {
    d: &'a Deployment,
    item: &'a PgItem,
    at: DateTime<Utc>,
    ns: i16,
    stamp: &'static str,
}

impl<'a> Params<'a> {
    fn of(item: &'a PgItem) -> Params<'a> {
        let (at, ns) = split(item.deployment.deployment.deployed_at);
        Params {
            d: &item.deployment,
            item,
            at,
            ns,
            stamp: match item.checks.stamp {
                Stamp::Given => "given",
                Stamp::WriteTime => "write",
                Stamp::WriteTimeSeconds => "write_seconds",
            },
        }
    }

    fn refs(&self) -> [&(dyn ToSql + Sync); 24] {
        let (d, i) = (self.d, &self.d.image);
        [
            &d.deployment.event_id,
            &d.deployment.workspace,
            &d.app,
            &i.repo,
            &i.tag,
            &i.digest,
            &i.index_digest,
            &i.platform.os,
            &i.platform.architecture,
            &i.platform.variant,
            &i.built_at,
            &i.revision,
            &i.source,
            &i.title,
            &i.description,
            &self.at,
            &self.ns,
            &d.deployment.deployed_by,
            &d.deployment.name,
            &self.item.idempotency_key,
            &self.item.answer,
            &self.item.checks.skip_if_current,
            &self.item.checks.name_required_for_named_instances,
            &self.stamp,
        ]
    }
}
