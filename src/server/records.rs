//! Which store the server's deployments API, queries and admission webhook use: the YAML files
//! of the state directory (the default, through the writer and key journal of `deployments`),
//! or PostgreSQL (`--database-url`), shared by every replica. The routes branch on
//! [`Records`] once; the PostgreSQL operations they need are here.

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::error::ApiError;
use super::metrics::Metrics;
use crate::records::postgres::{PgError, PgItem, PgStore, PgWritten};
use std::sync::Arc;

use crate::records::{Checks, Deployment, PgRecords, RecordStore, Store};

/// Seconds a client is told to wait (`Retry-After`) when the database cannot be reached.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// The store behind the routes.
#[derive(Debug, Clone)]
pub enum Records {
    /// The state directory's YAML files (`AppState::store` and the file writer).
    Files,
    /// One PostgreSQL database, possibly shared with other replicas.
    Postgres(PgStore),
}

impl Records {
    /// The records as a [`RecordStore`], for the sync readers (the dashboard, the delivery
    /// metrics) that run in `spawn_blocking`: the state directory's `files`, or PostgreSQL
    /// driven by the current runtime (call from the server's runtime).
    pub fn reader(&self, files: &Store) -> Arc<dyn RecordStore> {
        match self {
            Records::Files => Arc::new(files.clone()),
            Records::Postgres(pg) => Arc::new(PgRecords::new(
                pg.clone(),
                tokio::runtime::Handle::current(),
            )),
        }
    }
}

/// What a PostgreSQL write answered the route.
pub enum PgOutcome {
    /// Recorded now, or nothing written because the app already runs it: the deployment.
    Deployment(Box<Deployment>),
    /// The `Idempotency-Key` (or `event_id`) was recorded before, by this or another replica:
    /// the first request's answer.
    Replay(Value),
}

impl From<PgError> for ApiError {
    fn from(e: PgError) -> ApiError {
        match e {
            PgError::Rule(rule) => rule.into(),
            PgError::Unstorable { .. } => ApiError::bad_request("invalid-field", format!("{e}")),
            e if e.is_unavailable() => {
                tracing::warn!("database unavailable: {e}");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database-unavailable",
                    format!(
                        "the database cannot be reached right now; nothing was recorded, retry after {RETRY_AFTER_SECONDS} s"
                    ),
                )
            }
            e => ApiError::internal("the database refused the request", &e),
        }
    }
}

/// Record one deployment in PostgreSQL, with its key and the answer a retry gets.
pub async fn record(
    pg: &PgStore,
    deployment: Deployment,
    checks: Checks,
    key: Option<String>,
    answer: Option<Value>,
    metrics: &Metrics,
) -> Result<PgOutcome, ApiError> {
    let item = PgItem {
        deployment: deployment.clone(),
        checks,
        idempotency_key: key,
        answer,
    };
    match pg.record(item).await? {
        PgWritten::Recorded => {
            metrics.deployments_recorded(1);
            Ok(PgOutcome::Deployment(Box::new(deployment)))
        }
        PgWritten::Stamped(at) => {
            metrics.deployments_recorded(1);
            let mut deployment = deployment;
            deployment.deployment.deployed_at = at;
            Ok(PgOutcome::Deployment(Box::new(deployment)))
        }
        PgWritten::AlreadyCurrent(current) => Ok(PgOutcome::Deployment(current)),
        PgWritten::Duplicate { deployment, answer } => Ok(match answer {
            Some(a) => PgOutcome::Replay(a),
            None => PgOutcome::Deployment(deployment),
        }),
    }
}

/// Every environment with its apps.
pub async fn environments(pg: &PgStore) -> Result<Vec<(String, Vec<String>)>, ApiError> {
    let mut out = Vec::new();
    for env in pg.environments().await? {
        let apps = pg.apps(&env).await?;
        out.push((env, apps));
    }
    Ok(out)
}

/// The history (or with `at`, what ran at `at`) of the apps selected, oldest first.
pub async fn deployments(
    pg: &PgStore,
    env: Option<String>,
    app: Option<String>,
    at: Option<DateTime<Utc>>,
) -> Result<Vec<Deployment>, ApiError> {
    let envs = match env {
        Some(e) => vec![e],
        None => pg.environments().await?,
    };
    let mut out = Vec::new();
    for env in envs {
        let apps = match &app {
            Some(a) => vec![a.clone()],
            None => pg.apps(&env).await?,
        };
        for app in apps {
            match at {
                Some(t) => out.extend(pg.at(&env, &app, t).await?),
                None => out.extend(pg.history(&env, &app, None, None, None).await?),
            }
        }
    }
    out.sort_by(|a, b| {
        (a.deployment.deployed_at, a.deployment.event_id)
            .cmp(&(b.deployment.deployed_at, b.deployment.event_id))
    });
    Ok(out)
}
