//! The `GET` endpoints over the records, in JSON:
//!
//! * `GET /api/v1/environments`: every environment with records.
//! * `GET /api/v1/environments/{env}`: what runs now in `env`, one current deployment per app.
//!   `env` is the rest of the path, so `cluster/namespace` works as it is or percent-encoded.
//! * `GET /api/v1/deployments?environment=&app=&at=`: the history (oldest first), or with `at`
//!   (RFC 3339) what ran at that time, one deployment per app.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use super::records::{self, Records};
use crate::records::{Deployment, Store};

/// Run a blocking records read off the async workers.
async fn blocking<T: Send + 'static>(
    state: &Arc<AppState>,
    f: impl FnOnce(&Store) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| ApiError::internal("the query task failed", &e))?
}

/// `GET /api/v1/environments`.
pub async fn environments(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if let Records::Postgres(pg) = &state.records {
        let envs: Vec<Value> = records::environments(pg)
            .await?
            .into_iter()
            .map(|(env, apps)| json!({"name": env, "apps": apps}))
            .collect();
        return Ok(Json(json!({"environments": envs})));
    }
    let envs = blocking(&state, |store| {
        let mut out = Vec::new();
        for env in store.environments()? {
            let apps = store.apps(&env)?;
            out.push(json!({"name": env, "apps": apps}));
        }
        Ok(out)
    })
    .await?;
    Ok(Json(json!({"environments": envs})))
}

/// `GET /api/v1/environments/{*env}`.
pub async fn environment(
    State(state): State<Arc<AppState>>,
    Path(env): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let env = env.trim_matches('/').to_string();
    let name = env.clone();
    let current = if let Records::Postgres(pg) = &state.records {
        pg.currents(&env).await?
    } else {
        blocking(&state, move |store| {
            let mut out = Vec::new();
            for app in store.apps(&name)? {
                if let Some(d) = store.current(&name, &app)? {
                    out.push(d);
                }
            }
            Ok(out)
        })
        .await?
    };
    if current.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown-environment",
            format!(
                "no deployment is recorded in environment {env:?}; GET /api/v1/environments lists the known ones"
            ),
        ));
    }
    Ok(Json(json!({"environment": env, "deployments": current})))
}

/// The query of `GET /api/v1/deployments`.
#[derive(Debug, Deserialize)]
pub struct DeploymentsQuery {
    environment: Option<String>,
    app: Option<String>,
    at: Option<String>,
}

/// `GET /api/v1/deployments?environment=&app=&at=`.
pub async fn deployments(
    State(state): State<Arc<AppState>>,
    query: Result<Query<DeploymentsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::bad_request(
            "invalid-query",
            format!("{e}; the parameters are environment, app and at"),
        )
    })?;
    let at = match q.at.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ApiError::bad_request(
                        "invalid-time",
                        format!(
                            "at={text:?} is not an RFC 3339 time ({e}); write e.g. 2026-01-24T05:00:00Z"
                        ),
                    )
                })?,
        ),
        None => None,
    };
    let env_filter = q.environment.filter(|s| !s.is_empty());
    let app_filter = q.app.filter(|s| !s.is_empty());
    if let Records::Postgres(pg) = &state.records {
        let list = records::deployments(pg, env_filter, app_filter, at).await?;
        let mut answer = json!({"deployments": list});
        if let Some(t) = at {
            answer["at"] = json!(t);
        }
        return Ok(Json(answer));
    }
    let list = blocking(&state, move |store| {
        let envs = match env_filter {
            Some(e) => vec![e],
            None => store.environments()?,
        };
        let mut out: Vec<Deployment> = Vec::new();
        let mut warnings = Vec::new();
        for env in envs {
            let apps = match &app_filter {
                Some(a) => vec![a.clone()],
                None => store.apps(&env)?,
            };
            for app in apps {
                // A torn last entry (a crash during an append) does not hide the whole
                // entries before it: they are answered, and the torn one is named.
                let torn = match at {
                    Some(t) => {
                        let (found, torn) = store.at_reporting(&env, &app, t)?;
                        out.extend(found);
                        torn
                    }
                    None => {
                        let read = store.read_history(&env, &app)?;
                        out.extend(read.entries);
                        read.torn
                    }
                };
                warnings.extend(torn.map(|t| t.to_string()));
            }
        }
        out.sort_by(|a, b| {
            (a.deployment.deployed_at, a.deployment.event_id)
                .cmp(&(b.deployment.deployed_at, b.deployment.event_id))
        });
        Ok((out, warnings))
    })
    .await?;
    let (list, warnings) = list;
    let mut answer = json!({"deployments": list});
    if !warnings.is_empty() {
        answer["warnings"] = json!(warnings);
    }
    if let Some(t) = at {
        answer["at"] = json!(t);
    }
    Ok(Json(answer))
}
