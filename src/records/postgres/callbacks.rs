//! The analytics callbacks (`register`, `scanner-error`) in PostgreSQL: the `callbacks`
//! table of schema version 2, written through a group-commit writer like the deployments
//! (every callback waiting goes into one transaction; each caller is answered after the
//! commit), with one row per (kind, `Idempotency-Key`) so replicas racing on one key record
//! once and all give the first answer.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::Value;

use super::write::{BatchFuture, GroupCommit, MAX_KEY_BYTES, OnBatch, Slots, retryable};
use super::{PgError, PgStore, classify, pool_client};

/// One callback to record.
#[derive(Debug, Clone)]
pub struct PgCallback {
    /// `register` or `scanner-error`.
    pub kind: &'static str,
    /// When the server accepted it.
    pub received_at: DateTime<Utc>,
    /// The client's `Idempotency-Key`, if any: one record per kind and key.
    pub idempotency_key: Option<String>,
    /// A register's (git-url, git-sha): a repeat of a commit gets [`PgCallback::repeat`].
    pub commit: Option<(String, String)>,
    /// The body as received.
    pub request: Value,
    /// The answer when nothing decides otherwise.
    pub answer: Value,
    /// The answer to a register of a commit registered before; its `last_scanned_at` is set
    /// to the previous registration's time (RFC 1123) by the database.
    pub repeat: Option<Value>,
}

/// What recording a callback gave.
#[derive(Debug, Clone, PartialEq)]
pub enum PgCallbackWritten {
    /// Stored now, with this answer.
    Recorded(Value),
    /// Nothing written: the key was stored before (by this or another replica); its answer.
    Duplicate(Value),
}

/// A stored callback, as the dashboard's Scans page shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCallback {
    /// `register` or `scanner-error`.
    pub kind: String,
    /// When it was accepted.
    pub received_at: DateTime<Utc>,
    /// Its `Idempotency-Key`, if any.
    pub idempotency_key: Option<String>,
    /// The body as received.
    pub request: Value,
    /// The answer given.
    pub answer: Value,
}

/// The most callbacks in one transaction.
const MAX_BATCH: usize = 512;

/// Writer tasks: while one batch commits, the next gathers. Unlike the deployments, whose
/// writes of one app wait for each other, callbacks lock only a register's commit (a
/// repeat's answer), which concurrent batches rarely share.
const WRITERS: usize = 2;

const RECORD: &str =
    "SELECT outcome, answer FROM imagetrail_callback_v2($1, $2, $3, $4, $5, $6, $7, $8)";

/// The callbacks of one database: the writer and the reads. Clones share the writer.
#[derive(Clone)]
pub struct PgCallbacks {
    store: PgStore,
    writer: Arc<GroupCommit<PgCallback, PgCallbackWritten>>,
}

impl std::fmt::Debug for PgCallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgCallbacks")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl PgCallbacks {
    /// Start the callbacks' writer on `store`'s pool (inside a Tokio runtime); `on_batch` is
    /// told each batch's size (the server's metrics).
    pub fn start(store: &PgStore, on_batch: Option<OnBatch>) -> Self {
        let s = store.clone();
        let writer = GroupCommit::spawn(WRITERS, MAX_BATCH, on_batch, move |items| {
            let s = s.clone();
            let fut: BatchFuture<'_, PgCallbackWritten> =
                Box::pin(async move { write_batch(&s, items).await });
            fut
        });
        PgCallbacks {
            store: store.clone(),
            writer: Arc::new(writer),
        }
    }

    /// Record one callback; answered after its commit.
    pub async fn record(&self, callback: PgCallback) -> Result<PgCallbackWritten, PgError> {
        self.writer.submit(callback).await
    }

    /// The newest `limit` callbacks, newest first.
    pub async fn newest(&self, limit: u32) -> Result<Vec<StoredCallback>, PgError> {
        let rows = self
            .store
            .client()
            .await?
            .query(
                "SELECT kind, received_at, idempotency_key, request, answer FROM callbacks \
                 ORDER BY seq DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(self.store.err())?;
        Ok(rows
            .iter()
            .map(|r| StoredCallback {
                kind: r.get(0),
                received_at: r.get(1),
                idempotency_key: r.get(2),
                request: r.get(3),
                answer: r.get(4),
            })
            .collect())
    }
}

/// Refuse what the database cannot hold (a statement that fails aborts the whole batch).
fn storable(c: &PgCallback) -> Result<(), PgError> {
    if c.idempotency_key
        .as_deref()
        .is_some_and(|k| k.len() > MAX_KEY_BYTES)
    {
        return Err(PgError::Unstorable {
            field: "Idempotency-Key",
            reason: "longer than 512 bytes",
        });
    }
    let texts = [
        c.idempotency_key.as_deref(),
        c.commit.as_ref().map(|(u, _)| u.as_str()),
        c.commit.as_ref().map(|(_, s)| s.as_str()),
    ];
    // jsonb cannot hold \u0000 either.
    if texts.iter().flatten().any(|t| t.contains('\0')) || c.request.to_string().contains("\\u0000")
    {
        return Err(PgError::Unstorable {
            field: "callback",
            reason: "it contains a NUL character",
        });
    }
    Ok(())
}

/// Record `items` in one transaction, sorted by the commit they register (the advisory lock
/// order), else in the order given; one result per item, in the order given.
async fn write_batch(
    store: &PgStore,
    items: &[&PgCallback],
) -> Vec<Result<PgCallbackWritten, PgError>> {
    let mut slots = Slots::new(items, |c: &PgCallback| storable(c));
    slots
        .order
        .sort_by(|&a, &b| items[a].commit.cmp(&items[b].commit));
    let outcome = if slots.order.is_empty() {
        Ok(Vec::new())
    } else {
        run_batch(store, items, &slots.order)
            .await
            .map(|answers| answers.into_iter().map(Ok).collect())
    };
    slots.answer(outcome)
}

async fn run_batch(
    store: &PgStore,
    items: &[&PgCallback],
    order: &[usize],
) -> Result<Vec<PgCallbackWritten>, PgError> {
    let (target, user) = (&store.inner.target, &store.inner.user);
    let err = |e| classify(e, target, user);
    let mut client = pool_client(&store.inner.pool, target, user).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let tx = client.transaction().await.map_err(err)?;
        let stmt = tx.prepare_cached(RECORD).await.map_err(err)?;
        let rows = join_all(order.iter().map(|&i| {
            let c = items[i];
            let (url, sha) = match &c.commit {
                Some((u, s)) => (Some(u.as_str()), Some(s.as_str())),
                None => (None, None),
            };
            let repeat = c.repeat.as_ref().filter(|_| c.commit.is_some());
            let stmt = &stmt;
            let tx = &tx;
            async move {
                tx.query_one(
                    stmt,
                    &[
                        &c.kind,
                        &c.idempotency_key,
                        &c.received_at,
                        &url,
                        &sha,
                        &c.request,
                        &c.answer,
                        &repeat,
                    ],
                )
                .await
            }
        }))
        .await;
        let mut failed = None;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            match r {
                Ok(row) => {
                    let outcome: String = row.get(0);
                    let answer: Value = row.get(1);
                    out.push(if outcome == "duplicate" {
                        PgCallbackWritten::Duplicate(answer)
                    } else {
                        PgCallbackWritten::Recorded(answer)
                    });
                }
                // The first error is the cause; the rest say the transaction is aborted.
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        let e = match failed {
            None => match tx.commit().await {
                Ok(()) => return Ok(out),
                Err(e) => e,
            },
            Some(e) => {
                drop(tx.rollback().await);
                e
            }
        };
        if attempt < 3 && retryable(&e) {
            tracing::debug!("callback batch retried after {e}");
            continue;
        }
        return Err(err(e));
    }
}
