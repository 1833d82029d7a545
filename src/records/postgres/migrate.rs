//! Versioned schema migrations, embedded in the binary and applied in order.
//!
//! The applied versions are rows of `imagetrail_schema_version`. [`migrate`] runs in one
//! transaction under a transaction-scoped advisory lock, so two replicas starting at once
//! apply each migration once (the second waits, then finds nothing to do), and a migration
//! that fails leaves the schema as it was (PostgreSQL's DDL is transactional). A database
//! whose newest applied version is above [`LATEST`] was migrated by a newer imagetrail: it is
//! refused before anything is changed, because this build cannot know what the newer schema
//! means.

use tokio_postgres::Client;

use super::PgError;

/// One migration: its version and the SQL that takes the schema from `version - 1` to it.
pub struct Migration {
    /// 1, 2, …: applied in this order.
    pub version: i32,
    /// What it does, stored beside the version.
    pub description: &'static str,
    /// The statements (run as one simple-query batch).
    pub sql: &'static str,
}

/// Every migration this build knows, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "deployments, current deployments, record function",
        sql: include_str!("v1.sql"),
    },
    Migration {
        version: 2,
        description: "analytics callbacks; deployed_at stamped by the writer",
        sql: include_str!("v2.sql"),
    },
    Migration {
        version: 3,
        description: "a batch of deployments recorded in one statement",
        sql: include_str!("v3.sql"),
    },
];

/// The newest schema version this build knows.
pub const LATEST: i32 = 3;

/// Any constant: the advisory lock key that serialises migrations across replicas.
const LOCK_KEY: i64 = 0x696d_6167_6574_7261; // "imagetra"

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version found before (0 on an empty database).
    pub from: i32,
    /// The version now.
    pub to: i32,
}

/// Bring the schema up to [`LATEST`]; refuses a database at a newer version
/// ([`PgError::NewerSchema`]) without changing anything.
pub async fn migrate(client: &mut Client) -> Result<Migrated, PgError> {
    let tx = client.transaction().await.map_err(PgError::query)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(PgError::query)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS imagetrail_schema_version (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(PgError::query)?;
    let from = current_version(&tx).await?;
    if from > LATEST {
        return Err(PgError::NewerSchema {
            found: from,
            known: LATEST,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(m.sql).await.map_err(PgError::query)?;
        tx.execute(
            "INSERT INTO imagetrail_schema_version (version, description) VALUES ($1, $2)",
            &[&m.version, &m.description],
        )
        .await
        .map_err(PgError::query)?;
    }
    tx.commit().await.map_err(PgError::query)?;
    Ok(Migrated { from, to: LATEST })
}

/// The newest applied version (0 when none, or when the version table does not exist).
pub async fn current_version(client: &impl tokio_postgres::GenericClient) -> Result<i32, PgError> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('imagetrail_schema_version') IS NOT NULL",
            &[],
        )
        .await
        .map_err(PgError::query)?
        .get(0);
    if !exists {
        return Ok(0);
    }
    let v: Option<i32> = client
        .query_one("SELECT max(version) FROM imagetrail_schema_version", &[])
        .await
        .map_err(PgError::query)?
        .get(0);
    Ok(v.unwrap_or(0))
}

/// Refuse to work on a schema other than [`LATEST`]: newer is [`PgError::NewerSchema`], older
/// (or none) is [`PgError::SchemaBehind`].
pub async fn check(client: &impl tokio_postgres::GenericClient) -> Result<(), PgError> {
    match current_version(client).await? {
        v if v > LATEST => Err(PgError::NewerSchema {
            found: v,
            known: LATEST,
        }),
        v if v < LATEST => Err(PgError::SchemaBehind {
            found: v,
            known: LATEST,
        }),
        _ => Ok(()),
    }
}
