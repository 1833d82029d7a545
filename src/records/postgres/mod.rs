//! Deployment records in PostgreSQL: the groundwork of a second backend beside the YAML files
//! (issue 10), so several `imagetrail serve` replicas can share one store. The `imagetrail db`
//! commands and `imagetrail serve --database-url` (deployments API, queries, admission) use
//! it, and so do the CLI's record commands through [`crate::records::RecordStore`].
//!
//! Operations map onto the model types of [`crate::records`] ([`Deployment`], with its
//! [`ImageRecord`] and [`DeploymentRecord`]), and the file backend's rules hold:
//!
//! * **Append-only, unique `event_id`.** `deployments` only ever gains rows; an item whose
//!   `event_id` is stored already is a [`PgWritten::Duplicate`] (so `db import` is idempotent).
//! * **Name rule and idempotency as the database's own rules**, not a check followed by a
//!   write: one statement per batch (the `imagetrail_record_batch_v3` function of
//!   `v3.sql`, under a lock per app and per name) backed by unique indexes, so two replicas
//!   racing on one `Idempotency-Key` or one name still record once, and the loser is told
//!   so once.
//! * **Group commit.** [`PgStore::record`] hands each deployment to writer tasks that take
//!   every deployment waiting and record them in one statement (its own transaction: one
//!   round trip, one commit), like the file backend's writer does with one sync round; a
//!   caller is answered only after the commit.
//! * **Migrations** are embedded and versioned ([`migrate`]); a store opens only on the schema
//!   version this build knows, and a newer one is refused with one clear line.
//!
//! Driver: `tokio-postgres` with `deadpool-postgres` for the pool and
//! `tokio-postgres-rustls` for TLS. Chosen over `sqlx` because it adds far less to build on
//! the 2-core CI machine (no proc-macro query checking, no offline query cache to keep in
//! the repository), it pipelines concurrent statements on one connection (which is what
//! makes a group commit one round trip per batch rather than one per deployment), and the
//! TLS is the rustls with aws-lc the rest of imagetrail already uses. Migrations are a small
//! hand-written migrator ([`migrate`]): one table of applied versions, one advisory lock, one
//! transaction; a migration crate would add a dependency for forty lines.

mod callbacks;
pub mod migrate;
mod read;
mod tls;
mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use thiserror::Error;
use tokio_postgres::Row;
use tokio_postgres::config::Host;

use super::{Deployment, DeploymentRecord, ImageRecord, Platform, RecordsError};

pub use callbacks::{PgCallback, PgCallbackWritten, PgCallbacks, StoredCallback};
pub use migrate::{LATEST, Migrated};
pub use read::{Key, PAGE, PointRow, StoredDigest};
pub use tls::SslMode;
pub use write::{OnBatch, PgItem, PgWritten};

/// What can go wrong with the PostgreSQL store. Each message is one line that says what
/// failed and what to do, and never contains the password.
#[derive(Debug, Error)]
pub enum PgError {
    /// The database URL cannot be used.
    #[error("invalid database URL: {0} (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)")]
    InvalidUrl(String),
    /// No connection: refused, timed out, no route, lost.
    #[error(
        "cannot reach PostgreSQL at {target}: {reason}; check the host and port of the \
         database URL (--database-url or IMAGETRAIL_DATABASE_URL) and that the server runs"
    )]
    Unreachable {
        /// host:port (or socket directory) tried.
        target: String,
        /// What the connection attempt said.
        reason: String,
    },
    /// The server refused the user or password (or, by pg_hba.conf, the connection).
    #[error(
        "PostgreSQL at {target} refused user {user:?}: {message}; check the user, password \
         and sslmode of the database URL"
    )]
    Authentication {
        /// host:port.
        target: String,
        /// The user name.
        user: String,
        /// The server's reason.
        message: String,
    },
    /// The TLS handshake failed (an unknown CA, a name mismatch, a server without TLS).
    #[error(
        "TLS to PostgreSQL at {target} failed: {reason}; check sslmode and sslrootcert of the \
         database URL"
    )]
    Tls {
        /// host:port.
        target: String,
        /// What the handshake said.
        reason: String,
    },
    /// The schema was migrated by a newer imagetrail.
    #[error(
        "the database's schema is version {found}, newer than the {known} this imagetrail \
         knows: it was migrated by a newer imagetrail; run that version (nothing was changed)"
    )]
    NewerSchema {
        /// The version found.
        found: i32,
        /// [`LATEST`].
        known: i32,
    },
    /// The schema is older than this build needs (or absent).
    #[error(
        "the database's schema is version {found}, this imagetrail needs version {known}: \
         run `imagetrail db migrate --database-url …` first"
    )]
    SchemaBehind {
        /// The version found.
        found: i32,
        /// [`LATEST`].
        known: i32,
    },
    /// A deployment refused by a record rule (name taken, name required) or whose fields
    /// cannot be stored.
    #[error("{0}")]
    Rule(RecordsError),
    /// A field the database cannot hold (a NUL character, a key too long to index).
    #[error("{field} cannot be stored in PostgreSQL: {reason}")]
    Unstorable {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
    /// The server answered a statement with an error.
    #[error("PostgreSQL: {0}")]
    Query(String),
    /// The store's writer tasks have stopped (the runtime is shutting down).
    #[error("the PostgreSQL writer has stopped; restart imagetrail")]
    WriterStopped,
}

impl PgError {
    /// A statement's error, without a known target.
    pub(crate) fn query(e: tokio_postgres::Error) -> PgError {
        classify(e, "the database server", "")
    }

    /// Whether a retry of the same request may succeed once the database is back (the
    /// server's 503 with `Retry-After`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, PgError::Unreachable { .. } | PgError::WriterStopped)
    }

    /// The same failure for another caller of a batch that failed as a whole: unavailability
    /// as itself (so each caller gets its 503), anything else as its message. Not `Clone`,
    /// because a rule carries a records error; rebuilding the message into a new
    /// `Unreachable` would repeat its "cannot reach …; check …" around itself.
    pub(crate) fn for_another_caller(&self) -> PgError {
        match self {
            PgError::Unreachable { target, reason } => PgError::Unreachable {
                target: target.clone(),
                reason: reason.clone(),
            },
            PgError::WriterStopped => PgError::WriterStopped,
            e => PgError::Query(e.to_string()),
        }
    }
}

/// Sort a driver error into the kinds a user can act on.
fn classify(e: tokio_postgres::Error, target: &str, user: &str) -> PgError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        // 28P01 invalid_password, 28000 invalid_authorization_specification.
        if code == "28P01" || code == "28000" {
            return PgError::Authentication {
                target: target.to_string(),
                user: user.to_string(),
                message: one_line(db.message()),
            };
        }
        // 57P01 admin_shutdown and friends: the server went away under us.
        if code.starts_with("57P") || code.starts_with("08") {
            return PgError::Unreachable {
                target: target.to_string(),
                reason: one_line(db.message()),
            };
        }
        return PgError::Query(one_line(&format!("{} ({code})", db.message())));
    }
    // Not an answer of the server: the connection failed or was lost.
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reason.push_str(": ");
        reason.push_str(&s.to_string());
        source = s.source();
    }
    // tokio-postgres says "error performing TLS handshake" (and "server does not support
    // TLS") for what the TLS settings can fix.
    if reason.contains("TLS") {
        return PgError::Tls {
            target: target.to_string(),
            reason: one_line(&reason),
        };
    }
    PgError::Unreachable {
        target: target.to_string(),
        reason: one_line(&reason),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Connections in one store's pool.
const POOL_SIZE: usize = 16;

/// A connection attempt that takes longer is [`PgError::Unreachable`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The parsed database URL: the driver's config and the TLS settings it does not parse.
struct Url {
    config: tokio_postgres::Config,
    ssl: SslMode,
    rootcert: Option<PathBuf>,
    target: String,
    user: String,
}

fn parse_url(url: &str) -> Result<Url, PgError> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| PgError::InvalidUrl(format!("not a URL ({e})")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(PgError::InvalidUrl(format!(
            "the scheme is {:?}, not postgres",
            parsed.scheme()
        )));
    }
    // `sslmode` beyond require and `sslrootcert` are libpq's, not the driver's: taken out.
    let mut ssl = SslMode::Prefer;
    let mut rootcert = None;
    let mut kept = Vec::new();
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "sslmode" => ssl = SslMode::parse(&v)?,
            "sslrootcert" => rootcert = Some(PathBuf::from(&*v)),
            _ => kept.push((k.into_owned(), v.into_owned())),
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let mut config = tokio_postgres::Config::from_str(parsed.as_str())
        .map_err(|e| PgError::InvalidUrl(one_line(&e.to_string())))?;
    config.ssl_mode(match ssl {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("imagetrail");
    }
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let target = match hosts.first() {
        Some(h) if !h.starts_with('/') => format!("{h}:{port}"),
        Some(h) => format!("{h} (port {port})"),
        None => format!("localhost:{port}"),
    };
    let user = config.get_user().unwrap_or("").to_string();
    Ok(Url {
        config,
        ssl,
        rootcert,
        target,
        user,
    })
}

/// The deployment records in one PostgreSQL database. Clones share the pool and the writer.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    target: String,
    user: String,
    writer: write::Writer,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.inner.target)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to `url` (first connection made now, so a wrong password or an unreachable
    /// host is an error here) without looking at the schema. Must run inside a Tokio
    /// runtime (the writer tasks are spawned on it).
    async fn open(url: &str) -> Result<PgStore, PgError> {
        let u = parse_url(url)?;
        let tls = tls::connector(u.ssl, u.rootcert.as_deref())?;
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls {
            Some(tls) => Manager::from_config(u.config, tls, mc),
            None => Manager::from_config(u.config, tokio_postgres::NoTls, mc),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .wait_timeout(Some(CONNECT_TIMEOUT * 3))
            .build()
            .map_err(|e| PgError::InvalidUrl(e.to_string()))?;
        let writer = write::Writer::spawn(pool.clone(), u.target.clone(), u.user.clone());
        let store = PgStore {
            inner: Arc::new(Inner {
                pool,
                target: u.target,
                user: u.user,
                writer,
            }),
        };
        drop(store.client().await?);
        Ok(store)
    }

    /// Connect to `url` and check that its schema is the one this build knows
    /// ([`PgError::NewerSchema`], [`PgError::SchemaBehind`] otherwise).
    pub async fn connect(url: &str) -> Result<PgStore, PgError> {
        let store = PgStore::open(url).await?;
        migrate::check(&**store.client().await?).await?;
        Ok(store)
    }

    /// Connect to `url` and migrate its schema to [`LATEST`] (see [`migrate::migrate`]).
    pub async fn migrate(url: &str) -> Result<(PgStore, Migrated), PgError> {
        let store = PgStore::open(url).await?;
        let done = {
            let mut client = store.client().await?;
            migrate::migrate(&mut client).await?
        };
        Ok((store, done))
    }

    /// host:port of the database (no credentials), for messages.
    pub fn target(&self) -> &str {
        &self.inner.target
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        pool_client(&self.inner.pool, &self.inner.target, &self.inner.user).await
    }

    fn err(&self) -> impl Fn(tokio_postgres::Error) -> PgError + '_ {
        |e| classify(e, &self.inner.target, &self.inner.user)
    }

    /// `SELECT 1` through the pool: whether the database answers now (the readiness probe).
    pub async fn ping(&self) -> Result<(), PgError> {
        self.client()
            .await?
            .query_one("SELECT 1", &[])
            .await
            .map_err(self.err())?;
        Ok(())
    }

    /// The pool's connections: (open, idle, the most it opens).
    pub fn pool_use(&self) -> (usize, usize, usize) {
        let s = self.inner.pool.status();
        (s.size, s.available, s.max_size)
    }

    /// Tell `f` the size of every batch the deployments' group-commit writer takes from now
    /// on (the server's `/metrics`); only the first observer is kept.
    pub fn observe_deployment_batches(&self, f: write::OnBatch) {
        self.inner.writer.observe(f);
    }

    /// Record one deployment through the group-commit writer; answered after its commit.
    pub async fn record(&self, item: PgItem) -> Result<PgWritten, PgError> {
        self.inner.writer.submit(item).await
    }

    /// Record `items` in one transaction (for imports): one result per item, in order.
    pub async fn record_many(&self, items: &[PgItem]) -> Vec<Result<PgWritten, PgError>> {
        write::write_batch(
            &self.inner.pool,
            &self.inner.target,
            &self.inner.user,
            &items.iter().collect::<Vec<_>>(),
        )
        .await
    }

    /// Every environment with a current deployment, sorted.
    pub async fn environments(&self) -> Result<Vec<String>, PgError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT DISTINCT environment FROM current_deployments ORDER BY environment",
                &[],
            )
            .await
            .map_err(self.err())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every app with a current deployment in `env`, sorted.
    pub async fn apps(&self, env: &str) -> Result<Vec<String>, PgError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT app FROM current_deployments WHERE environment = $1 ORDER BY app",
                &[&env],
            )
            .await
            .map_err(self.err())?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// What runs of `app` in `env` now: its newest deployment.
    pub async fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, PgError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM current_deployments c JOIN deployments d ON d.seq = c.seq \
             WHERE c.environment = $1 AND c.app = $2"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&env, &app])
            .await
            .map_err(self.err())?;
        Ok(row.as_ref().map(from_row))
    }

    /// What runs now in `env`, one deployment per app, sorted by app.
    pub async fn currents(&self, env: &str) -> Result<Vec<Deployment>, PgError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM current_deployments c JOIN deployments d ON d.seq = c.seq \
             WHERE c.environment = $1 ORDER BY c.app"
        );
        let rows = self
            .client()
            .await?
            .query(&sql, &[&env])
            .await
            .map_err(self.err())?;
        Ok(rows.iter().map(from_row).collect())
    }

    /// The history of `app` in `env` within `[since, until]` (either optional), oldest first;
    /// with `newest`, only that many of the newest entries of the range.
    pub async fn history(
        &self,
        env: &str,
        app: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        newest: Option<u32>,
    ) -> Result<Vec<Deployment>, PgError> {
        // Bounds PostgreSQL can hold (chrono's own extremes are outside its range).
        let (lo, hi) = (bound("0001-01-01T00:00:00Z"), bound("9999-12-31T23:59:59Z"));
        let (since_us, since_ns) = split(since.map_or(lo, |t| t.clamp(lo, hi)));
        let (until_us, until_ns) = split(until.map_or(hi, |t| t.clamp(lo, hi)));
        let limit = newest.map_or(i64::MAX, i64::from);
        // Newest first through the index, limited, then turned around.
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments d \
             WHERE d.environment = $1 AND d.app = $2 \
               AND (d.deployed_at, d.deployed_at_ns) >= ($3, $4) \
               AND (d.deployed_at, d.deployed_at_ns) <= ($5, $6) \
             ORDER BY d.deployed_at DESC, d.deployed_at_ns DESC, d.seq DESC LIMIT $7"
        );
        let rows = self
            .client()
            .await?
            .query(
                &sql,
                &[
                    &env, &app, &since_us, &since_ns, &until_us, &until_ns, &limit,
                ],
            )
            .await
            .map_err(self.err())?;
        Ok(rows.iter().rev().map(from_row).collect())
    }

    /// What ran of `app` in `env` at `t`: the newest deployment at or before `t`.
    pub async fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<Option<Deployment>, PgError> {
        let (lo, hi) = (bound("0001-01-01T00:00:00Z"), bound("9999-12-31T23:59:59Z"));
        if t < lo {
            return Ok(None);
        }
        let (us, ns) = split(t.min(hi));
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments d \
             WHERE d.environment = $1 AND d.app = $2 \
               AND (d.deployed_at, d.deployed_at_ns) <= ($3, $4) \
             ORDER BY d.deployed_at DESC, d.deployed_at_ns DESC, d.seq DESC LIMIT 1"
        );
        let row = self
            .client()
            .await?
            .query_opt(&sql, &[&env, &app, &us, &ns])
            .await
            .map_err(self.err())?;
        Ok(row.as_ref().map(from_row))
    }

    /// How many deployments are stored.
    pub async fn count(&self) -> Result<i64, PgError> {
        let row = self
            .client()
            .await?
            .query_one("SELECT count(*) FROM deployments", &[])
            .await
            .map_err(self.err())?;
        Ok(row.get(0))
    }
}

async fn pool_client(
    pool: &Pool,
    target: &str,
    user: &str,
) -> Result<deadpool_postgres::Object, PgError> {
    use deadpool_postgres::PoolError;
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => classify(e, target, user),
        PoolError::Timeout(_) => PgError::Unreachable {
            target: target.to_string(),
            reason: "timed out waiting for a connection".into(),
        },
        other => PgError::Unreachable {
            target: target.to_string(),
            reason: one_line(&other.to_string()),
        },
    })
}

/// The columns [`from_row`] reads, of `deployments d`.
const COLUMNS: &str = "d.event_id, d.environment, d.app, d.repository, d.tag, d.digest, \
     d.index_digest, d.platform_os, d.platform_architecture, d.platform_variant, d.built_at, \
     d.revision, d.source, d.title, d.description, d.deployed_at, d.deployed_at_ns, \
     d.deployed_by, d.name";

fn from_row(r: &Row) -> Deployment {
    let at: DateTime<Utc> = r.get("deployed_at");
    let ns: i16 = r.get("deployed_at_ns");
    Deployment {
        app: r.get("app"),
        image: ImageRecord {
            repo: r.get("repository"),
            tag: r.get("tag"),
            digest: r.get("digest"),
            index_digest: r.get("index_digest"),
            platform: Platform {
                os: r.get("platform_os"),
                architecture: r.get("platform_architecture"),
                variant: r.get("platform_variant"),
            },
            description: r.get("description"),
            built_at: r.get("built_at"),
            revision: r.get("revision"),
            source: r.get("source"),
            title: r.get("title"),
        },
        deployment: DeploymentRecord {
            deployed_at: joined(at, ns),
            deployed_by: r.get("deployed_by"),
            workspace: r.get("environment"),
            name: r.get("name"),
            event_id: r.get("event_id"),
        },
    }
}

fn bound(t: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(t)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_default()
}

/// A time as PostgreSQL's microseconds and the nanoseconds below them.
fn split(t: DateTime<Utc>) -> (DateTime<Utc>, i16) {
    let ns = t.timestamp_subsec_nanos() % 1000;
    // ns < 1000: both conversions are exact.
    (
        t - chrono::Duration::nanoseconds(i64::from(ns)),
        i16::try_from(ns).unwrap_or(0),
    )
}

/// The time [`split`] stored as `deployed_at` and `deployed_at_ns`.
fn joined(at: DateTime<Utc>, ns: i16) -> DateTime<Utc> {
    at + chrono::Duration::nanoseconds(i64::from(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_nanoseconds() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        let (us, ns) = split(t);
        assert_eq!(ns, 789);
        assert_eq!(us.timestamp_subsec_nanos(), 123_456_000);
        assert_eq!(joined(us, ns), t);
    }

    #[test]
    fn url_errors_never_show_the_password() {
        for url in [
            "postgres://u:s3cret@host:notaport/db",
            "mysql://u:s3cret@host/db",
            "postgres://u:s3cret@host/db?sslmode=bogus",
        ] {
            let e = parse_url(url).err().expect("refused").to_string();
            assert!(!e.contains("s3cret"), "{e}");
            assert!(e.starts_with("invalid database URL"), "{e}");
        }
    }

    #[test]
    fn url_takes_libpq_tls_options_out() {
        let u = parse_url("postgres://u:p@db.example:6543/x?sslmode=verify-full&sslrootcert=/ca.pem&application_name=t").unwrap();
        assert_eq!(u.ssl, SslMode::VerifyFull);
        assert_eq!(u.rootcert.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(u.target, "db.example:6543");
        assert_eq!(u.user, "u");
    }
}
