//! Writing: a batch of deployments in one statement (`imagetrail_record_batch_v3`, so one
//! round trip and one commit), and the group-commit writer that gathers concurrent callers
//! into batches.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::{COLUMNS, PgError, classify, from_row, joined, pool_client, split};
use crate::records::{Checks, Deployment, RecordsError, Stamp, check_names, fields};

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

/// Writer tasks of the deployments, unless `IMAGETRAIL_PG_WRITERS` says otherwise. One: while
/// its batch commits, the next gathers in the queue. A batch holds its apps' locks until its
/// commit (that is what makes history order commit order), so a second task's batch of the
/// same apps only waits for the first's WAL flush, with fewer deployments each (measured in
/// BENCHMARKS.md, "one statement per batch").
const WRITERS: usize = 1;

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
        on_batch: Option<OnBatch>,
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

/// Told the size of each batch a group-commit writer takes (the server's `/metrics`).
pub type OnBatch = Arc<dyn Fn(usize) + Send + Sync>;

/// The deployments' group-commit writer.
pub(super) struct Writer {
    commit: GroupCommit<PgItem, PgWritten>,
    /// Set once by whoever reports the batch sizes (the store is opened before the server's
    /// metrics exist).
    observer: Arc<OnceLock<OnBatch>>,
}

impl Writer {
    pub(super) fn spawn(pool: Pool, target: String, user: String) -> Writer {
        let target: Arc<str> = target.into();
        let user: Arc<str> = user.into();
        let observer: Arc<OnceLock<OnBatch>> = Arc::default();
        let seen = observer.clone();
        let on_batch: OnBatch = Arc::new(move |n| {
            if let Some(f) = seen.get() {
                f(n)
            }
        });
        let commit = GroupCommit::spawn(writers(), MAX_BATCH, Some(on_batch), move |items| {
            let (pool, target, user) = (pool.clone(), target.clone(), user.clone());
            Box::pin(async move { write_batch(&pool, &target, &user, items).await })
        });
        Writer { commit, observer }
    }

    pub(super) async fn submit(&self, item: PgItem) -> Result<PgWritten, PgError> {
        self.commit.submit(item).await
    }

    /// Tell `f` each batch's size from now on; only the first observer set is kept.
    pub(super) fn observe(&self, f: OnBatch) {
        let _ = self.observer.set(f);
    }
}

/// Refuse, before it reaches the batch, what the records' field rules refuse (the same rules
/// as the file store's writer, [`crate::records::fields`], so a value is accepted or refused
/// alike on either store, whoever sends it) and what the database cannot hold: a statement that
/// fails aborts the whole transaction, so one hostile item would fail every other one.
fn storable(d: &Deployment, key: Option<&str>, answer: Option<&Value>) -> Result<(), PgError> {
    fields::check(d).map_err(PgError::Rule)?;
    check_names(&d.deployment.workspace, &d.app).map_err(PgError::Rule)?;
    // What the field rules leave to the store: the environment, app, name and deployed_by
    // are one short line without control characters by then, the platform a token.
    let i = &d.image;
    let keys = [
        ("image.repo", Some(i.repo.as_str())),
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
    let texts: [(&'static str, Option<&str>); 10] = [
        ("image.repo", Some(&i.repo)),
        ("image.tag", i.tag.as_deref()),
        ("image.digest", Some(&i.digest)),
        ("image.index_digest", i.index_digest.as_deref()),
        ("image.description", i.description.as_deref()),
        ("image.built_at", i.built_at.as_deref()),
        ("image.revision", i.revision.as_deref()),
        ("image.source", i.source.as_deref()),
        ("image.title", i.title.as_deref()),
        ("Idempotency-Key", key),
    ];
    for (field, v) in texts {
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
     FROM imagetrail_record_batch_v3(\
     $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, \
     $20, $21, $22, $23, $24)";

/// Whether the whole transaction may succeed when tried again: 40P01 deadlock_detected (two
/// replicas' batches locking current rows in different orders), 40001
/// serialization_failure.
pub(super) fn retryable(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|d| matches!(d.code().code(), "40P01" | "40001"))
}

/// Whether a batch lost a race for a name to a replica still on `imagetrail_record_v2`
/// (which does not take the name lock): tried again, the batch's own check answers.
fn lost_name_race(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|d| {
        d.code().code() == "23505" && d.constraint() == Some("current_deployments_name")
    })
}

/// Record `items` in one statement, in the order given (so one app's items, as across
/// batches, are recorded in the order they came, and the first to come takes a name). The
/// statement takes every app and name lock of the batch at its start, in one global order,
/// and holds them until its commit, so two replicas' batches never wait on each other in a
/// cycle; a deadlock with a replica on an older schema function aborts the statement, which
/// is retried whole. One result per item, in the order given.
pub(super) async fn write_batch(
    pool: &Pool,
    target: &str,
    user: &str,
    items: &[&PgItem],
) -> Vec<Result<PgWritten, PgError>> {
    let slots = Slots::new(items, |item: &PgItem| {
        storable(
            &item.deployment,
            item.idempotency_key.as_deref(),
            item.answer.as_ref(),
        )
    });
    let outcome = if slots.order.is_empty() {
        Ok(Vec::new())
    } else {
        run_batch(pool, target, user, items, &slots.order).await
    };
    slots.answer(outcome)
}

/// A batch's items as its writer answers them: the indexes that go to the database, in the
/// order they are written, and one slot per item, filled at once for an item refused before
/// the batch. The deployments and the callbacks share it.
pub(super) struct Slots<O> {
    /// The indexes of the items written, in the order written.
    pub(super) order: Vec<usize>,
    results: Vec<Option<Result<O, PgError>>>,
}

impl<O> Slots<O> {
    /// Refuse each item `storable` refuses (a statement that fails aborts the whole batch,
    /// so one hostile item would fail every other one); the rest are written in the order
    /// given unless the writer reorders `order`.
    pub(super) fn new<I>(items: &[&I], storable: impl Fn(&I) -> Result<(), PgError>) -> Self {
        let mut results: Vec<Option<Result<O, PgError>>> = items.iter().map(|_| None).collect();
        let mut order = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match storable(item) {
                Ok(()) => order.push(i),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        Slots { order, results }
    }

    /// One result per item, in the order given: the batch's answers (one per index of
    /// `order`, in that order), or its failure for every item written (the first caller gets
    /// the error itself, the others [`PgError::for_another_caller`]).
    pub(super) fn answer(
        self,
        outcome: Result<Vec<Result<O, PgError>>, PgError>,
    ) -> Vec<Result<O, PgError>> {
        let Slots { order, mut results } = self;
        match outcome {
            Ok(answers) => {
                for (&i, r) in order.iter().zip(answers) {
                    results[i] = Some(r);
                }
            }
            Err(e) => {
                for &i in &order {
                    results[i] = Some(Err(e.for_another_caller()));
                }
                if let Some(&first) = order.first() {
                    results[first] = Some(Err(e));
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PgError::WriterStopped)))
            .collect()
    }
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
    let client = pool_client(pool, target, user).await?;
    let stmt = client.prepare_cached(RECORD).await.map_err(err)?;
    let batch = Columns::of(order.iter().map(|&i| items[i]));
    let params = batch.params();
    let mut attempt = 0;
    let outcomes = loop {
        attempt += 1;
        // One statement, so one transaction: either every item's outcome or none.
        match client.query(&stmt, &params).await {
            Ok(rows) => {
                break rows
                    .iter()
                    .map(|row| Outcome {
                        outcome: row.get(0),
                        seq: row.get(1),
                        other: row.get(2),
                        stamped_at: row.get(3),
                        stamped_ns: row.get(4),
                    })
                    .collect::<Vec<_>>();
            }
            Err(e) if attempt < RETRIES && (retryable(&e) || lost_name_race(&e)) => {
                tracing::debug!("batch retried after {e}");
            }
            Err(e) => return Err(err(e)),
        }
    };
    if outcomes.len() != order.len() {
        return Err(PgError::Query(format!(
            "imagetrail_record_batch_v3 answered {} rows for {} deployments",
            outcomes.len(),
            order.len()
        )));
    }
    // Read back what the duplicates and already-current items refer to (after the commit:
    // those rows are committed either way).
    let mut out = Vec::with_capacity(outcomes.len());
    for (&i, o) in order.iter().zip(outcomes) {
        let d = &items[i].deployment;
        out.push(match o.outcome.as_str() {
            "recorded" => Ok(match (items[i].checks.stamp, o.stamped_at) {
                (Stamp::Given, _) | (_, None) => PgWritten::Recorded,
                (_, Some(at)) => PgWritten::Stamped(joined(at, o.stamped_ns.unwrap_or(0))),
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
                "imagetrail_record_batch_v3 answered {other:?}, which this imagetrail does not know"
            ))),
        });
    }
    Ok(out)
}

/// The parameters of one batch statement: one array per column, one element per item.
struct Columns<'a> {
    event_id: Vec<&'a uuid::Uuid>,
    environment: Vec<&'a str>,
    app: Vec<&'a str>,
    repository: Vec<&'a str>,
    tag: Vec<Option<&'a str>>,
    digest: Vec<&'a str>,
    index_digest: Vec<Option<&'a str>>,
    os: Vec<&'a str>,
    arch: Vec<&'a str>,
    variant: Vec<Option<&'a str>>,
    built_at: Vec<Option<&'a str>>,
    revision: Vec<Option<&'a str>>,
    source: Vec<Option<&'a str>>,
    title: Vec<Option<&'a str>>,
    description: Vec<Option<&'a str>>,
    deployed_at: Vec<DateTime<Utc>>,
    deployed_at_ns: Vec<i16>,
    deployed_by: Vec<&'a str>,
    name: Vec<Option<&'a str>>,
    idempotency_key: Vec<Option<&'a str>>,
    answer: Vec<Option<&'a Value>>,
    skip_if_current: Vec<bool>,
    name_required: Vec<bool>,
    stamp: Vec<&'static str>,
}

impl<'a> Columns<'a> {
    fn of(items: impl ExactSizeIterator<Item = &'a PgItem>) -> Columns<'a> {
        let n = items.len();
        let mut c = Columns {
            event_id: Vec::with_capacity(n),
            environment: Vec::with_capacity(n),
            app: Vec::with_capacity(n),
            repository: Vec::with_capacity(n),
            tag: Vec::with_capacity(n),
            digest: Vec::with_capacity(n),
            index_digest: Vec::with_capacity(n),
            os: Vec::with_capacity(n),
            arch: Vec::with_capacity(n),
            variant: Vec::with_capacity(n),
            built_at: Vec::with_capacity(n),
            revision: Vec::with_capacity(n),
            source: Vec::with_capacity(n),
            title: Vec::with_capacity(n),
            description: Vec::with_capacity(n),
            deployed_at: Vec::with_capacity(n),
            deployed_at_ns: Vec::with_capacity(n),
            deployed_by: Vec::with_capacity(n),
            name: Vec::with_capacity(n),
            idempotency_key: Vec::with_capacity(n),
            answer: Vec::with_capacity(n),
            skip_if_current: Vec::with_capacity(n),
            name_required: Vec::with_capacity(n),
            stamp: Vec::with_capacity(n),
        };
        for item in items {
            let (d, i) = (&item.deployment, &item.deployment.image);
            let (at, ns) = split(d.deployment.deployed_at);
            c.event_id.push(&d.deployment.event_id);
            c.environment.push(&d.deployment.workspace);
            c.app.push(&d.app);
            c.repository.push(&i.repo);
            c.tag.push(i.tag.as_deref());
            c.digest.push(&i.digest);
            c.index_digest.push(i.index_digest.as_deref());
            c.os.push(&i.platform.os);
            c.arch.push(&i.platform.architecture);
            c.variant.push(i.platform.variant.as_deref());
            c.built_at.push(i.built_at.as_deref());
            c.revision.push(i.revision.as_deref());
            c.source.push(i.source.as_deref());
            c.title.push(i.title.as_deref());
            c.description.push(i.description.as_deref());
            c.deployed_at.push(at);
            c.deployed_at_ns.push(ns);
            c.deployed_by.push(&d.deployment.deployed_by);
            c.name.push(d.deployment.name.as_deref());
            c.idempotency_key.push(item.idempotency_key.as_deref());
            c.answer.push(item.answer.as_ref());
            c.skip_if_current.push(item.checks.skip_if_current);
            c.name_required
                .push(item.checks.name_required_for_named_instances);
            c.stamp.push(match item.checks.stamp {
                Stamp::Given => "given",
                Stamp::WriteTime => "write",
                Stamp::WriteTimeSeconds => "write_seconds",
            });
        }
        c
    }

    /// In the order of the statement's `$1` … `$24`.
    fn params(&self) -> [&(dyn ToSql + Sync); 24] {
        [
            &self.event_id,
            &self.environment,
            &self.app,
            &self.repository,
            &self.tag,
            &self.digest,
            &self.index_digest,
            &self.os,
            &self.arch,
            &self.variant,
            &self.built_at,
            &self.revision,
            &self.source,
            &self.title,
            &self.description,
            &self.deployed_at,
            &self.deployed_at_ns,
            &self.deployed_by,
            &self.name,
            &self.idempotency_key,
            &self.answer,
            &self.skip_if_current,
            &self.name_required,
            &self.stamp,
        ]
    }
}
