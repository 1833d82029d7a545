//! One storage interface, two backends: [`RecordStore`] is what the CLI's record commands
//! (`deploy`, `status`, `history`, `at`, `where`, `compare`, the protection step of
//! `registry prune`) read and write through, implemented by the YAML files ([`Store`]) and by
//! PostgreSQL ([`PgRecords`], a [`PgStore`] and the Tokio runtime it runs on).
//!
//! Why a sync trait: the file store is sync (it blocks on file locks and `fsync`), its callers
//! (the query commands, the dashboard's reads in `spawn_blocking`) are sync, and a trait object
//! keeps the commands free of generics. The PostgreSQL side blocks on its runtime for each
//! call (see [`PgRecords`]); every call is one or a few indexed statements.
//!
//! What differs between the backends, and how the interface says it:
//!
//! * torn tails exist only in files (an append cut off): [`RecordStore::at`] and
//!   [`RecordStore::visit`] report them beside their answers, PostgreSQL never has one;
//! * "could not read" for PostgreSQL is [`RecordsError::Database`], whose message says what
//!   to check (the database URL, that the server runs, the schema version).

use std::future::Future;
use std::path::Path;

use chrono::{DateTime, Utc};
use tokio::runtime::{Handle, RuntimeFlavor};

use super::postgres::{Key, PAGE, PgError, PgItem, PgStore, PgWritten};
use super::protect::{self, ProtectError, Protection};
use super::range::{PointsRev, for_each_merged};
use super::{
    Checks, DeliveryPoint, Deployment, Digests, HistoryRange, HistoryRead, MergeReport,
    OpenHistory, Recorded, RecordsError, Store, TornTail, names,
};

/// The deployment records, on whichever backend was chosen (see the module documentation).
///
/// Object safe: commands hold a `Box<dyn RecordStore>` from [`open`].
pub trait RecordStore: Send + Sync + std::fmt::Debug {
    /// Where the records are, for messages: `under /var/lib/imagetrail`, `in PostgreSQL at
    /// db:5432`.
    fn place(&self) -> String;

    /// Every environment that has records, sorted.
    fn environments(&self) -> Result<Vec<String>, RecordsError>;

    /// Every app recorded in `env`, sorted.
    fn apps(&self, env: &str) -> Result<Vec<String>, RecordsError>;

    /// What runs of `app` in `env` now.
    fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, RecordsError>;

    /// What ran of `app` in `env` at `t` (the last deployment at or before it), and the
    /// history's torn last entry if it has one (files only; the answer then comes from the
    /// whole entries before it).
    fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<(Option<Deployment>, Option<TornTail>), RecordsError>;

    /// The history's torn last entry, if an append was cut off (files only).
    fn torn_tail(&self, env: &str, app: &str) -> Result<Option<TornTail>, RecordsError>;

    /// The entries of `app` in `env` within `range`, oldest first, held in memory: for small
    /// ranges (`last`, a few days); [`RecordStore::visit`] streams a whole history.
    fn read_range(
        &self,
        env: &str,
        app: &str,
        range: HistoryRange,
    ) -> Result<HistoryRead, RecordsError>;

    /// Call `f` on every entry of the histories of `pairs` (environment, app) within `range`,
    /// merged in `deployed_at` order, each with `workspace` set to its environment; with
    /// `range.last`, only the newest `last` of them. Memory stays flat in the histories'
    /// length (files: a window per history; PostgreSQL: a page per app, keyset paginated).
    /// Torn tails and broken histories (files) come back in the report; an error of `f`
    /// stops the visit and is returned.
    fn visit(
        &self,
        pairs: &[(String, String)],
        range: HistoryRange,
        f: &mut dyn FnMut(&Deployment) -> anyhow::Result<()>,
    ) -> anyhow::Result<MergeReport>;

    /// The most recent entry of `app` in `env` whose digest or index digest is `digest`,
    /// deployed before `before` when given (compare's rollback rule).
    fn last_with_digest(
        &self,
        env: &str,
        app: &str,
        digest: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Deployment>, RecordsError>;

    /// Since when `app` in `env` has run `digest` without interruption (the oldest entry of
    /// the unbroken run of it at the end of the history).
    fn running_since(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, RecordsError>;

    /// Record one deployment with `checks` (the name rule always holds); with a write-time
    /// [`Stamp`], `deployed_at` is taken by the store and returned in [`Recorded::stamped`].
    fn record(&self, d: &Deployment, checks: Checks) -> Result<Recorded, RecordsError>;

    /// Every digest the records name, for `registry prune`: what it must never delete. Any
    /// failure to read is an error, never an empty answer.
    fn protection(&self) -> Result<Protection, ProtectError>;

    /// One history opened for several bounded reads (the delivery metrics read a window, its
    /// look-back and the entry before that): the files open it and check its tail once.
    fn open_history<'a>(
        &'a self,
        env: &str,
        app: &str,
    ) -> Result<Box<dyn HistoryReader + 'a>, RecordsError>;
}

/// One app's history open for bounded reads (see [`RecordStore::open_history`]). `Send` and
/// `Sync`: the dashboard reads several histories side by side.
pub trait HistoryReader: Send + Sync {
    /// The entries within `range`, oldest first, held in memory (meant for small ranges).
    fn read(&self, range: HistoryRange) -> Result<Vec<Deployment>, RecordsError>;

    /// The delivery points (deployed at, digest, built at) of the entries deployed at or
    /// before `until` (all when `None`), newest first, read as the caller asks for them: a
    /// caller that stops after the last 30 days reads only those.
    fn points_rev(
        &self,
        until: Option<DateTime<Utc>>,
    ) -> Result<Box<dyn PointStream + '_>, RecordsError>;

    /// The whole entry of a point (its [`DeliveryPoint::offset`]), for what a page shows.
    fn entry_at(&self, offset: u64) -> Result<Deployment, RecordsError>;

    /// The most recent entry deployed before `before` whose digest (or index digest) is
    /// `digest`.
    fn last_with_digest_before(
        &self,
        digest: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError>;
}

/// Delivery points, newest first (see [`HistoryReader::points_rev`]).
pub trait PointStream {
    /// The next point, newest first; `Ok(None)` past the oldest.
    fn next_point(&mut self) -> Result<Option<DeliveryPoint>, RecordsError>;

    /// The table of the digests the points returned name, to keep beside them.
    fn into_digests(self: Box<Self>) -> Digests;
}

impl PointStream for PointsRev<'_> {
    fn next_point(&mut self) -> Result<Option<DeliveryPoint>, RecordsError> {
        PointsRev::next_point(self)
    }

    fn into_digests(self: Box<Self>) -> Digests {
        PointsRev::into_digests(*self)
    }
}

impl HistoryReader for OpenHistory {
    fn read(&self, range: HistoryRange) -> Result<Vec<Deployment>, RecordsError> {
        OpenHistory::read(self, range)
    }

    fn points_rev(
        &self,
        until: Option<DateTime<Utc>>,
    ) -> Result<Box<dyn PointStream + '_>, RecordsError> {
        // The server's store keeps the points between reads (see `point_cache`).
        match &self.cache {
            Some(cache) => super::point_cache::points_rev(cache, self, until),
            None => Ok(Box::new(OpenHistory::points_rev(self, until)?)),
        }
    }

    fn entry_at(&self, offset: u64) -> Result<Deployment, RecordsError> {
        OpenHistory::entry_at(self, offset)
    }

    fn last_with_digest_before(
        &self,
        digest: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        OpenHistory::last_with_digest_before(self, digest, before)
    }
}

/// One app's history in PostgreSQL: each read is one indexed statement.
struct PgHistory<'a> {
    records: &'a PgRecords,
    env: String,
    app: String,
}

/// One app's delivery points in PostgreSQL, read a page at a time newest first (keyset
/// pagination on the history order); a point's offset is its row's `seq`.
struct PgPoints<'a> {
    history: &'a PgHistory<'a>,
    until: Option<DateTime<Utc>>,
    /// Where the last page ended; `None` before the first.
    after: Option<Key>,
    /// The page's points not returned yet, oldest first (popped from the end).
    pending: Vec<DeliveryPoint>,
    done: bool,
    digests: Digests,
}

impl PointStream for PgPoints<'_> {
    fn next_point(&mut self) -> Result<Option<DeliveryPoint>, RecordsError> {
        if self.pending.is_empty() && !self.done {
            let h = self.history;
            let rows = h.records.block(
                h.records
                    .pg
                    .points_page(&h.env, &h.app, self.until, self.after, PAGE),
            )?;
            self.done = (rows.len() as i64) < PAGE;
            self.after = rows.last().map(|r| r.key);
            for r in rows.iter().rev() {
                self.pending.push(DeliveryPoint::stored(
                    r.deployed_at,
                    &r.digest,
                    r.built_at.as_deref(),
                    u64::try_from(r.key.2).unwrap_or(0),
                    &mut self.digests,
                ));
            }
        }
        Ok(self.pending.pop())
    }

    fn into_digests(self: Box<Self>) -> Digests {
        self.digests
    }
}

impl HistoryReader for PgHistory<'_> {
    fn read(&self, range: HistoryRange) -> Result<Vec<Deployment>, RecordsError> {
        Ok(self
            .records
            .read_range(&self.env, &self.app, range)?
            .entries)
    }

    fn points_rev(
        &self,
        until: Option<DateTime<Utc>>,
    ) -> Result<Box<dyn PointStream + '_>, RecordsError> {
        Ok(Box::new(PgPoints {
            history: self,
            until,
            after: None,
            pending: Vec::new(),
            done: false,
            digests: Digests::default(),
        }))
    }

    fn entry_at(&self, offset: u64) -> Result<Deployment, RecordsError> {
        let seq = i64::try_from(offset).unwrap_or(i64::MAX);
        self.records
            .block(self.records.pg.by_seq(&self.env, &self.app, seq))?
            .ok_or_else(|| {
                RecordsError::Database(Box::new(PgError::Query(format!(
                    "deployment row {seq} of {} in {} is gone",
                    self.app, self.env
                ))))
            })
    }

    fn last_with_digest_before(
        &self,
        digest: &str,
        before: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        self.records
            .last_with_digest(&self.env, &self.app, digest, Some(before))
    }
}

/// Check that `env` and `app` can be stored (not empty, no `..` segment...), the same rule for
/// both backends, so a name refused by one is refused by the other.
pub fn check_names(env: &str, app: &str) -> Result<(), RecordsError> {
    names::encode("environment", env)?;
    names::encode("app", app)?;
    Ok(())
}

/// The records of `state_dir`, or of the PostgreSQL database at `database_url` when given.
///
/// PostgreSQL is connected now (so a wrong password or an unreachable host is the command's
/// first and only error), on the current Tokio runtime, which must be multi-threaded (the
/// CLI's is); its schema must be the version this build knows: an older one is refused with
/// "run `imagetrail db migrate`", a newer one as written by a newer imagetrail. Nothing is
/// migrated here (see README, "PostgreSQL": `db migrate` and `serve` migrate, the other
/// commands never change the schema).
pub fn open(
    state_dir: &Path,
    database_url: Option<&str>,
) -> Result<Box<dyn RecordStore>, RecordsError> {
    match database_url.filter(|u| !u.is_empty()) {
        None => Ok(Box::new(Store::new(state_dir))),
        Some(url) => Ok(Box::new(PgRecords::connect(url)?)),
    }
}

impl From<PgError> for RecordsError {
    fn from(e: PgError) -> RecordsError {
        match e {
            PgError::Rule(rule) => rule,
            other => RecordsError::Database(Box::new(other)),
        }
    }
}

impl RecordStore for Store {
    fn place(&self) -> String {
        format!("under {}", self.root().display())
    }

    fn environments(&self) -> Result<Vec<String>, RecordsError> {
        Store::environments(self)
    }

    fn apps(&self, env: &str) -> Result<Vec<String>, RecordsError> {
        Store::apps(self, env)
    }

    fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, RecordsError> {
        Store::current(self, env, app)
    }

    fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<(Option<Deployment>, Option<TornTail>), RecordsError> {
        self.at_reporting(env, app, t)
    }

    fn torn_tail(&self, env: &str, app: &str) -> Result<Option<TornTail>, RecordsError> {
        Store::torn_tail(self, env, app)
    }

    fn read_range(
        &self,
        env: &str,
        app: &str,
        range: HistoryRange,
    ) -> Result<HistoryRead, RecordsError> {
        self.read_history_window(env, app, range)
    }

    fn visit(
        &self,
        pairs: &[(String, String)],
        range: HistoryRange,
        f: &mut dyn FnMut(&Deployment) -> anyhow::Result<()>,
    ) -> anyhow::Result<MergeReport> {
        for_each_merged(self, pairs, range, f)
    }

    fn last_with_digest(
        &self,
        env: &str,
        app: &str,
        digest: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Deployment>, RecordsError> {
        match before {
            Some(b) => self.last_with_digest_before(env, app, digest, b),
            None => Store::last_with_digest(self, env, app, digest),
        }
    }

    fn running_since(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, RecordsError> {
        Store::running_since(self, env, app, digest)
    }

    fn record(&self, d: &Deployment, checks: Checks) -> Result<Recorded, RecordsError> {
        self.record_with(d, checks)
    }

    fn protection(&self) -> Result<Protection, ProtectError> {
        protect::collect(self.root())
    }

    fn open_history<'a>(
        &'a self,
        env: &str,
        app: &str,
    ) -> Result<Box<dyn HistoryReader + 'a>, RecordsError> {
        Ok(Box::new(Store::open_history(self, env, app)?))
    }
}

/// The PostgreSQL backend as a [`RecordStore`]: a [`PgStore`] and the handle of the
/// multi-threaded Tokio runtime its connections and writer tasks run on.
///
/// Each call blocks its thread on that runtime: directly on a thread outside any runtime (a
/// `spawn_blocking` thread of the server, a test), through `block_in_place` on a runtime worker
/// (the CLI's commands run inside its runtime), so the runtime's other workers keep driving
/// the connections.
#[derive(Debug, Clone)]
pub struct PgRecords {
    pg: PgStore,
    rt: Handle,
}

impl PgRecords {
    /// `pg`, driven by the runtime of `rt` (multi-threaded).
    pub fn new(pg: PgStore, rt: Handle) -> PgRecords {
        PgRecords { pg, rt }
    }

    /// Connect to `url` on the current runtime and check the schema (see [`open`]).
    pub fn connect(url: &str) -> Result<PgRecords, RecordsError> {
        let rt = Handle::try_current().map_err(|_| {
            RecordsError::Database(Box::new(PgError::Query(
                "no Tokio runtime to run the PostgreSQL connection on (a bug)".into(),
            )))
        })?;
        let pg = block(&rt, PgStore::connect(url))?;
        Ok(PgRecords { pg, rt })
    }

    /// The store underneath, for the async callers (the server's routes).
    pub fn pg(&self) -> &PgStore {
        &self.pg
    }

    fn block<F: Future>(&self, f: F) -> F::Output {
        block(&self.rt, f)
    }
}

/// Run `f` to completion on `rt` from sync code (see [`PgRecords`]).
fn block<F: Future>(rt: &Handle, f: F) -> F::Output {
    match Handle::try_current() {
        Ok(here) if here.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| rt.block_on(f))
        }
        _ => rt.block_on(f),
    }
}

impl RecordStore for PgRecords {
    fn place(&self) -> String {
        format!("in PostgreSQL at {}", self.pg.target())
    }

    fn environments(&self) -> Result<Vec<String>, RecordsError> {
        Ok(self.block(self.pg.environments())?)
    }

    fn apps(&self, env: &str) -> Result<Vec<String>, RecordsError> {
        names::encode("environment", env)?;
        Ok(self.block(self.pg.apps(env))?)
    }

    fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, RecordsError> {
        check_names(env, app)?;
        Ok(self.block(self.pg.current(env, app))?)
    }

    fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<(Option<Deployment>, Option<TornTail>), RecordsError> {
        check_names(env, app)?;
        Ok((self.block(self.pg.at(env, app, t))?, None))
    }

    fn torn_tail(&self, env: &str, app: &str) -> Result<Option<TornTail>, RecordsError> {
        check_names(env, app)?;
        Ok(None)
    }

    fn read_range(
        &self,
        env: &str,
        app: &str,
        range: HistoryRange,
    ) -> Result<HistoryRead, RecordsError> {
        check_names(env, app)?;
        let newest = range.last.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let entries = self.block(self.pg.history(env, app, range.since, range.until, newest))?;
        Ok(HistoryRead {
            entries,
            torn: None,
        })
    }

    fn visit(
        &self,
        pairs: &[(String, String)],
        range: HistoryRange,
        f: &mut dyn FnMut(&Deployment) -> anyhow::Result<()>,
    ) -> anyhow::Result<MergeReport> {
        if let Some(n) = range.last {
            let entries = self
                .block(self.pg.newest(pairs, range.since, range.until, n))
                .map_err(RecordsError::from)?;
            entries.iter().try_for_each(f)?;
            return Ok(MergeReport::default());
        }
        let mut failed = None;
        self.block(
            self.pg
                .visit(pairs, range.since, range.until, &mut |d| match f(&d) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }),
        )
        .map_err(RecordsError::from)?;
        match failed {
            Some(e) => Err(e),
            None => Ok(MergeReport::default()),
        }
    }

    fn last_with_digest(
        &self,
        env: &str,
        app: &str,
        digest: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Deployment>, RecordsError> {
        check_names(env, app)?;
        Ok(self.block(self.pg.last_with_digest(env, app, digest, before))?)
    }

    fn running_since(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, RecordsError> {
        check_names(env, app)?;
        Ok(self.block(self.pg.running_since(env, app, digest))?)
    }

    fn record(&self, d: &Deployment, checks: Checks) -> Result<Recorded, RecordsError> {
        // The field rules are the PostgreSQL writer's first step, as the file writer's. A
        // write-time stamp is taken by the database under the app's lock (see
        // `imagetrail_record_batch_v3`), so the history order is the commit order across every CLI
        // and replica writing the app.
        let item = PgItem {
            deployment: d.clone(),
            checks: Checks {
                skip_if_current: false,
                ..checks
            },
            idempotency_key: None,
            answer: None,
        };
        let stamped = match self.block(self.pg.record(item))? {
            PgWritten::Stamped(t) => Some(t),
            // A duplicate event_id is this very deployment, recorded before (a retry).
            PgWritten::Recorded | PgWritten::Duplicate { .. } => None,
            PgWritten::AlreadyCurrent(_) => unreachable!("skip_if_current was not asked"),
        };
        Ok(Recorded {
            moved_torn_tail: None,
            stamped,
        })
    }

    fn protection(&self) -> Result<Protection, ProtectError> {
        let digests = self
            .block(self.pg.digests())
            .map_err(|e| ProtectError::Database {
                target: self.pg.target().to_string(),
                reason: e.to_string(),
            })?;
        Ok(protect::from_database(self.pg.target(), digests))
    }

    fn open_history<'a>(
        &'a self,
        env: &str,
        app: &str,
    ) -> Result<Box<dyn HistoryReader + 'a>, RecordsError> {
        check_names(env, app)?;
        Ok(Box::new(PgHistory {
            records: self,
            env: env.to_string(),
            app: app.to_string(),
        }))
    }
}
