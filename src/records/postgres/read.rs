//! The reads the CLI commands need beyond [`PgStore`]'s own (`current`, `at`, `history`):
//! a whole history streamed page by page, since when a digest has run, the last deployment of
//! a digest (compare's rollback rule) and every digest stored (prune's protection).
//!
//! Every read is one indexed statement. Streams use keyset pagination on the history order
//! `(deployed_at, deployed_at_ns, seq)`, so a page costs the same at row 1,000,000 as at row 1
//! and memory is one page, never the history.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chrono::{DateTime, Utc};

use super::{COLUMNS, PgError, PgStore, bound, from_row, joined, split};
use crate::records::Deployment;

/// Rows fetched per page by [`PgStore::visit`]: large enough that the round trip is amortised,
/// small enough that a page is a few megabytes at most.
pub const PAGE: i64 = 1000;

/// The position of a row in the history order: `(deployed_at, deployed_at_ns, seq)`.
pub type Key = (DateTime<Utc>, i16, i64);

/// One row of [`PgStore::points_page`].
#[derive(Debug, Clone)]
pub struct PointRow {
    /// Its place in the history order, to ask for the page after it.
    pub key: Key,
    /// When it was deployed (to the nanosecond).
    pub deployed_at: DateTime<Utc>,
    /// The digest deployed.
    pub digest: String,
    /// `built_at` as stored.
    pub built_at: Option<String>,
}

/// One digest as the database names it: where, and whether it is what runs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDigest {
    /// The environment.
    pub environment: String,
    /// The app.
    pub app: String,
    /// The repository recorded.
    pub repo: String,
    /// Whether the digest is the record's `index_digest`.
    pub index: bool,
    /// Whether the record is the app's current deployment.
    pub current: bool,
}

/// One app's history read page by page (see [`PgStore::visit`]).
struct Cursor {
    env: String,
    app: String,
    after: Key,
    rows: VecDeque<Deployment>,
    done: bool,
}

impl Cursor {
    /// The `deployed_at` of the next row, fetching a page when none is buffered.
    async fn head(
        &mut self,
        pg: &PgStore,
        until: (DateTime<Utc>, i16),
        page: i64,
    ) -> Result<Option<DateTime<Utc>>, PgError> {
        if self.rows.is_empty() && !self.done {
            let sql = format!(
                "SELECT {COLUMNS}, d.seq FROM deployments d \
                 WHERE d.environment = $1 AND d.app = $2 \
                   AND (d.deployed_at, d.deployed_at_ns, d.seq) > ($3, $4, $5) \
                   AND (d.deployed_at, d.deployed_at_ns) <= ($6, $7) \
                 ORDER BY d.deployed_at, d.deployed_at_ns, d.seq LIMIT $8"
            );
            let rows = pg
                .client()
                .await?
                .query(
                    &sql,
                    &[
                        &self.env,
                        &self.app,
                        &self.after.0,
                        &self.after.1,
                        &self.after.2,
                        &until.0,
                        &until.1,
                        &page,
                    ],
                )
                .await
                .map_err(pg.err())?;
            self.done = (rows.len() as i64) < page;
            if let Some(r) = rows.last() {
                self.after = (r.get("deployed_at"), r.get("deployed_at_ns"), r.get("seq"));
            }
            self.rows.extend(rows.iter().map(from_row));
        }
        Ok(self.rows.front().map(|d| d.deployment.deployed_at))
    }
}

fn time_bounds(
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> ((DateTime<Utc>, i16), (DateTime<Utc>, i16)) {
    let (lo, hi) = (bound("0001-01-01T00:00:00Z"), bound("9999-12-31T23:59:59Z"));
    (
        split(since.map_or(lo, |t| t.clamp(lo, hi))),
        split(until.map_or(hi, |t| t.clamp(lo, hi))),
    )
}

impl PgStore {
    /// Call `f` on every deployment of the apps `pairs` (environment, app) deployed within
    /// `[since, until]`, oldest first across them (ties in the order of `pairs`, then of
    /// recording), until `f` answers `false`.
    ///
    /// Each app's history is read by keyset pagination on its index (`deployments_history`):
    /// a page costs the same at row 1,000,000 as at row 1, and memory is one page per app
    /// (the pages shrink as apps are added, like the file backend's windows). `f` runs
    /// between statements, with no connection held, so a slow reader holds nothing open.
    pub async fn visit(
        &self,
        pairs: &[(String, String)],
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        f: &mut dyn FnMut(Deployment) -> bool,
    ) -> Result<(), PgError> {
        let page =
            (PAGE * 8 / i64::try_from(pairs.len().max(1)).unwrap_or(i64::MAX)).clamp(16, PAGE);
        let ((since_us, since_ns), until) = time_bounds(since, until);
        let mut cursors: Vec<Cursor> = pairs
            .iter()
            .map(|(env, app)| Cursor {
                env: env.clone(),
                app: app.clone(),
                // Strictly after this; `seq` is never i64::MIN, so this starts at `since`.
                after: (since_us, since_ns, i64::MIN),
                rows: VecDeque::new(),
                done: false,
            })
            .collect();
        let mut heads = BinaryHeap::new();
        for (i, c) in cursors.iter_mut().enumerate() {
            if let Some(at) = c.head(self, until, page).await? {
                heads.push(Reverse((at, i)));
            }
        }
        while let Some(Reverse((_, i))) = heads.pop() {
            let c = &mut cursors[i];
            let Some(d) = c.rows.pop_front() else {
                continue;
            };
            if let Some(at) = c.head(self, until, page).await? {
                heads.push(Reverse((at, i)));
            }
            if !f(d) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The newest `n` deployments of the apps `pairs` within `[since, until]`, oldest first
    /// (each app's newest `n` read through its index, then merged).
    pub async fn newest(
        &self,
        pairs: &[(String, String)],
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        n: usize,
    ) -> Result<Vec<Deployment>, PgError> {
        let limit = u32::try_from(n).unwrap_or(u32::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut all = Vec::new();
        for (i, (env, app)) in pairs.iter().enumerate() {
            all.extend(
                self.history(env, app, since, until, Some(limit))
                    .await?
                    .into_iter()
                    .enumerate()
                    .map(|(k, d)| (d.deployment.deployed_at, i, k, d)),
            );
        }
        all.sort_by_key(|(at, i, k, _)| (*at, *i, *k));
        let skip = all.len().saturating_sub(n);
        Ok(all.into_iter().skip(skip).map(|(.., d)| d).collect())
    }

    /// One page of the delivery points of `app` in `env` (the three columns the metrics
    /// need, and `seq` to read the whole row again), newest first: those deployed at or before
    /// `until` and before `after` in the history order (newest first: the page after it).
    pub async fn points_page(
        &self,
        env: &str,
        app: &str,
        until: Option<DateTime<Utc>>,
        after: Option<Key>,
        page: i64,
    ) -> Result<Vec<PointRow>, PgError> {
        let (_, (u_us, u_ns)) = time_bounds(None, until);
        // Without a previous page: from past any stored row.
        let (a_at, a_ns, a_seq) = after.unwrap_or((u_us, i16::MAX, i64::MAX));
        let rows = self
            .client()
            .await?
            .query(
                "SELECT d.deployed_at, d.deployed_at_ns, d.seq, d.digest, d.built_at \
                 FROM deployments d \
                 WHERE d.environment = $1 AND d.app = $2 \
                   AND (d.deployed_at, d.deployed_at_ns) <= ($3, $4) \
                   AND (d.deployed_at, d.deployed_at_ns, d.seq) < ($5, $6, $7) \
                 ORDER BY d.deployed_at DESC, d.deployed_at_ns DESC, d.seq DESC LIMIT $8",
                &[&env, &app, &u_us, &u_ns, &a_at, &a_ns, &a_seq, &page],
            )
            .await
            .map_err(self.err())?;
        Ok(rows
            .iter()
            .map(|r| {
                let at: DateTime<Utc> = r.get("deployed_at");
                let ns: i16 = r.get("deployed_at_ns");
                PointRow {
                    key: (at, ns, r.get("seq")),
                    deployed_at: joined(at, ns),
                    digest: r.get("digest"),
                    built_at: r.get("built_at"),
                }
            })
            .collect())
    }

    /// The deployment stored as row `seq` of `app` in `env` (a point's `offset`).
    pub async fn by_seq(
        &self,
        env: &str,
        app: &str,
        seq: i64,
    ) -> Result<Option<Deployment>, PgError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments d \
             WHERE d.seq = $1 AND d.environment = $2 AND d.app = $3"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&seq, &env, &app])
            .await
            .map_err(self.err())?;
        Ok(row.as_ref().map(from_row))
    }

    /// The newest deployment of `app` in `env` whose digest or index digest is `digest`,
    /// deployed before `before` when given.
    pub async fn last_with_digest(
        &self,
        env: &str,
        app: &str,
        digest: &str,
        before: Option<DateTime<Utc>>,
    ) -> Result<Option<Deployment>, PgError> {
        let ((_, _), (b_us, b_ns)) = time_bounds(None, before);
        // Without a bound: everything (the upper bound is past any stored time).
        let strict = before.is_some();
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments d \
             WHERE d.environment = $1 AND d.app = $2 \
               AND (d.digest = $3 OR d.index_digest = $3) \
               AND (NOT $6 OR (d.deployed_at, d.deployed_at_ns) < ($4, $5)) \
             ORDER BY d.deployed_at DESC, d.deployed_at_ns DESC, d.seq DESC LIMIT 1"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&env, &app, &digest, &b_us, &b_ns, &strict])
            .await
            .map_err(self.err())?;
        Ok(row.as_ref().map(from_row))
    }

    /// Since when `app` in `env` has run `digest` without interruption: the oldest deployment
    /// after the newest one of another digest.
    pub async fn running_since(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, PgError> {
        let client = self.client().await?;
        let other = client
            .query_opt(
                "SELECT d.deployed_at, d.deployed_at_ns, d.seq FROM deployments d \
                 WHERE d.environment = $1 AND d.app = $2 AND d.digest <> $3 \
                 ORDER BY d.deployed_at DESC, d.deployed_at_ns DESC, d.seq DESC LIMIT 1",
                &[&env, &app, &digest],
            )
            .await
            .map_err(self.err())?;
        let after: Key = match &other {
            Some(r) => (r.get(0), r.get(1), r.get(2)),
            None => (bound("0001-01-01T00:00:00Z"), 0, i64::MIN),
        };
        let first = client
            .query_opt(
                "SELECT d.deployed_at, d.deployed_at_ns, d.digest FROM deployments d \
                 WHERE d.environment = $1 AND d.app = $2 \
                   AND (d.deployed_at, d.deployed_at_ns, d.seq) > ($3, $4, $5) \
                 ORDER BY d.deployed_at, d.deployed_at_ns, d.seq LIMIT 1",
                &[&env, &app, &after.0, &after.1, &after.2],
            )
            .await
            .map_err(self.err())?;
        Ok(first.and_then(|r| {
            let d: String = r.get(2);
            let at: DateTime<Utc> = r.get(0);
            let ns: i16 = r.get(1);
            (d == digest).then(|| joined(at, ns))
        }))
    }

    /// Every digest and index digest any stored deployment names, with every (environment,
    /// app) naming it: what `registry prune` must never delete. Read in one statement (one
    /// snapshot), grouped by the database, so the answer is the distinct names, not the rows.
    pub async fn digests(&self) -> Result<BTreeMap<String, Vec<StoredDigest>>, PgError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT x.digest, x.environment, x.app, x.repository, x.is_index, \
                        bool_or(c.seq IS NOT NULL) AS current \
                 FROM (SELECT d.seq, d.digest, d.environment, d.app, d.repository, \
                              false AS is_index FROM deployments d \
                       UNION ALL \
                       SELECT d.seq, d.index_digest, d.environment, d.app, d.repository, true \
                       FROM deployments d WHERE d.index_digest IS NOT NULL) x \
                 LEFT JOIN current_deployments c ON c.seq = x.seq \
                 GROUP BY x.digest, x.environment, x.app, x.repository, x.is_index \
                 ORDER BY x.digest, x.environment, x.app",
                &[],
            )
            .await
            .map_err(self.err())?;
        let mut out: BTreeMap<String, Vec<StoredDigest>> = BTreeMap::new();
        for r in rows {
            out.entry(r.get(0)).or_default().push(StoredDigest {
                environment: r.get(1),
                app: r.get(2),
                repo: r.get(3),
                index: r.get(4),
                current: r.get(5),
            });
        }
        Ok(out)
    }
}
