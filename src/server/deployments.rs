//! `POST /api/v1/deployments`: the Atomist deployment-tracking body, stored through
//! [`crate::records::Store`] in the same files `imagetrail deploy` writes.
//!
//! ```json
//! {"image": {"url": "host/repo@sha256:...", "name": "optional"},
//!  "environment": {"name": "deployed"},
//!  "platform": {"os": "linux", "architecture": "amd64", "variant": null}}
//! ```
//!
//! `image.url` must be pinned by digest. The app is `image.name` when given, else the
//! repository path without the registry host. `image.name` is unique per repository per
//! environment (Atomist's rule): a name already used by another app for the same repository, or
//! a nameless request for a repository that runs as named instances there, is a 409.
//! Extensions: `deployed_by` (default: the API key's label), and `Idempotency-Key` (a retry gets
//! the first answer and is not recorded twice).

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::AppState;
use super::error::ApiError;
use super::limits::{ContentType, json_body};
use super::reference::PinnedRef;
use tokio::sync::oneshot;

use crate::records::{
    Checks, Deployment, DeploymentRecord, InfoFiles, Platform, RecordsError, Stamp, Store, Written,
};

/// The environment when the body names none (Atomist's default).
pub const DEFAULT_ENVIRONMENT: &str = "deployed";

#[derive(Debug, Deserialize)]
struct Body {
    image: Option<ImageBody>,
    #[serde(default)]
    environment: Option<NameBody>,
    #[serde(default)]
    platform: Option<PlatformBody>,
    #[serde(default)]
    deployed_by: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ImageBody {
    url: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NameBody {
    name: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct PlatformBody {
    os: Option<String>,
    architecture: Option<String>,
    variant: Option<String>,
}

/// Answers given to deployments that carried an `Idempotency-Key` (the scanner and
/// `imagetrail deploy` retry with the same key), so a retry whose first attempt was stored but
/// not answered is not recorded twice. Kept in memory for the newest [`IDEMPOTENCY_KEYS`] keys.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<(HashMap<String, Value>, std::collections::VecDeque<String>)>,
}

/// How many idempotency keys the server remembers.
pub const IDEMPOTENCY_KEYS: usize = 100_000;

impl Idempotency {
    fn get(&self, key: &str) -> Option<Value> {
        self.inner.lock().expect("idempotency").0.get(key).cloned()
    }

    fn put(&self, key: String, answer: Value) {
        let mut guard = self.inner.lock().expect("idempotency");
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), answer).is_none() {
            order.push_back(key);
            if order.len() > IDEMPOTENCY_KEYS
                && let Some(old) = order.pop_front()
            {
                map.remove(&old);
            }
        }
    }
}

/// The group-commit writer of deployments: one thread takes every deployment waiting and
/// records them with [`Store::record_checked_many_with`] (one sync round for the batch's
/// history appends and new `deploy-info.yml` files, then one rename per touched app), then
/// answers each request with its own result. A request is answered only after its history
/// entry is synced. Like the callback log's writer; one writer also serialises every
/// environment's name checks.
pub struct Writer {
    tx: mpsc::Sender<Message>,
}

/// What the writer thread is sent.
enum Message {
    /// A deployment to record (boxed, so a `Close` does not take the size of a job).
    Job(Box<Job>),
    /// Replace every `deploy-info.yml` left behind, then say so: the server is stopping.
    Close(oneshot::Sender<()>),
}

struct Job {
    deployment: Deployment,
    checks: Checks,
    done: oneshot::Sender<Result<Written, RecordsError>>,
}

/// The most deployments one batch takes, so one batch's answers are not held back forever
/// under a flood.
const MAX_BATCH: usize = 4096;

impl Writer {
    /// Start the writer thread over `store`; it stops when the [`Writer`] is dropped.
    pub fn start(store: Store) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("deployments-writer".into())
            .spawn(move || write_batches(&store, &rx))?;
        Ok(Writer { tx })
    }

    /// Queue one deployment and wait until its batch is written and synced.
    async fn submit(&self, deployment: Deployment, checks: Checks) -> Result<Written, ApiError> {
        let (done, wait) = oneshot::channel();
        let stopped = |_| {
            ApiError::internal(
                "the deployments writer stopped",
                &"the writer thread is gone",
            )
        };
        self.tx
            .send(Message::Job(Box::new(Job {
                deployment,
                checks,
                done,
            })))
            .map_err(|_| stopped(()))?;
        Ok(wait.await.map_err(|_| stopped(()))??)
    }

    /// Wait until every `deploy-info.yml` the writer left behind its history is replaced: the
    /// last step of a graceful shutdown (a crash leaves them to the next start).
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

/// How long the server may leave an app's `deploy-info.yml` behind its history when the app is
/// deployed again and again (see [`InfoFiles::AtMostEvery`]): at most one replace per app per
/// interval, always with its latest deployment. An app deployed once in a while gets its file
/// replaced with every deployment.
const INFO_EVERY: Duration = Duration::from_millis(50);

/// The writer thread: group commit until every sender is gone. First it replaces any
/// `deploy-info.yml` a crash left behind its history.
fn write_batches(store: &Store, rx: &mpsc::Receiver<Message>) {
    match store.infos_behind() {
        Ok(behind) if !behind.is_empty() => {
            tracing::info!(
                apps = behind.len(),
                "replacing deploy-info.yml files left behind their history by a crash"
            );
            catch_up(store.replace_infos(&behind));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("{e}; deploy-info.yml files not checked against the history"),
    }
    loop {
        let first = match store.infos_due_at() {
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let first = match first {
            Ok(Message::Job(job)) => job,
            Ok(Message::Close(done)) => {
                close(store, done);
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {
                catch_up(store.replace_due_infos());
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![*first];
        let mut closing = None;
        while batch.len() < MAX_BATCH && closing.is_none() {
            match rx.try_recv() {
                Ok(Message::Job(job)) => batch.push(*job),
                Ok(Message::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        let items: Vec<(Deployment, Checks)> = batch
            .iter()
            .map(|j| (j.deployment.clone(), j.checks))
            .collect();
        let results = store.record_checked_many_with(&items, InfoFiles::AtMostEvery(INFO_EVERY));
        for (job, result) in batch.into_iter().zip(results) {
            // The client may have gone (timeout); the deployment is recorded all the same.
            let _ = job.done.send(result);
        }
        match closing {
            Some(done) => close(store, done),
            None => catch_up(store.replace_due_infos()),
        }
    }
}

/// The server is stopping: leave no `deploy-info.yml` behind, then say so.
fn close(store: &Store, done: oneshot::Sender<()>) {
    catch_up(store.replace_all_left_behind());
    let _ = done.send(());
}

/// Log a failed catch-up of `deploy-info.yml` files: the history holds every deployment and
/// readers go by it, so the server goes on.
fn catch_up(result: Result<(), RecordsError>) {
    if let Err(e) = result {
        tracing::warn!("{e}; deploy-info.yml files stay behind their history until replaced");
    }
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `POST /api/v1/deployments`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Authentication first: an unauthenticated client learns nothing about the body rules.
    let key_label = super::auth::require(state.config.api_keys.as_ref(), &headers)?;
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .map(|k| format!("{key_label} {k}"));
    if let Some(answer) = idempotency_key
        .as_deref()
        .and_then(|k| state.idempotency.get(k))
    {
        return Ok((StatusCode::CREATED, Json(answer)));
    }
    let body: Body = json_body(&headers, body, ContentType::Json)?;
    let image = body.image.ok_or_else(|| {
        ApiError::bad_request(
            "missing-field",
            "image.url is required: {\"image\": {\"url\": \"host/repo@sha256:<digest>\"}}",
        )
    })?;
    let url = non_empty(image.url).ok_or_else(|| {
        ApiError::bad_request(
            "missing-field",
            "image.url is required: {\"image\": {\"url\": \"host/repo@sha256:<digest>\"}}",
        )
    })?;
    let pinned = PinnedRef::parse(&url)
        .map_err(|e| ApiError::bad_request("image-not-pinned", e.to_string()))?;
    let name = non_empty(image.name);
    let env = non_empty(body.environment.and_then(|e| e.name))
        .unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_string());
    let platform = body.platform.unwrap_or_default();
    let default = Platform::default();
    let platform = Platform {
        os: non_empty(platform.os).unwrap_or(default.os),
        architecture: non_empty(platform.architecture).unwrap_or(default.architecture),
        variant: non_empty(platform.variant),
    };
    let app = name.clone().unwrap_or_else(|| pinned.path().to_string());
    let deployment = Deployment {
        app,
        image: pinned.image_record(platform),
        deployment: DeploymentRecord {
            deployed_at: Utc::now(),
            deployed_by: non_empty(body.deployed_by).unwrap_or(key_label),
            workspace: env,
            name,
            event_id: Uuid::now_v7(),
        },
    };
    let deployment = record(&state, deployment).await?;
    let answer = json!({
            "success": true,
            "summary": format!(
                "recorded {}@{} as {} in {}",
                deployment.image.repo,
                deployment.image.digest,
                deployment.app,
                deployment.deployment.workspace
            ),
            "deployment": deployment,
    });
    if let Some(key) = idempotency_key {
        state.idempotency.put(key, answer.clone());
    }
    Ok((StatusCode::CREATED, Json(answer)))
}

/// Check the name rule and write `deployment`, one environment at a time. Shared with the
/// admission webhook.
pub async fn record(state: &Arc<AppState>, deployment: Deployment) -> Result<Deployment, ApiError> {
    write(state, deployment, false).await
}

/// [`record`], unless the app's current deployment already runs the same digest (a Pod of a
/// ReplicaSet admitted again); then nothing is written.
pub async fn record_if_new(
    state: &Arc<AppState>,
    deployment: Deployment,
) -> Result<Deployment, ApiError> {
    write(state, deployment, true).await
}

async fn write(
    state: &Arc<AppState>,
    deployment: Deployment,
    skip_if_current: bool,
) -> Result<Deployment, ApiError> {
    // Atomist's rule has two halves: the store refuses a name another app uses for the same
    // repository; `name_required_for_named_instances` refuses a request without a name for a
    // repository that runs as named instances there.
    let checks = Checks {
        name_required_for_named_instances: true,
        skip_if_current,
        // deployed_at is taken by the writer, so racing requests are appended in time order.
        stamp: Stamp::WriteTime,
    };
    match state.deployments.submit(deployment.clone(), checks).await? {
        Written::Recorded(r) => {
            let mut deployment = deployment;
            if let Some(t) = r.stamped {
                deployment.deployment.deployed_at = t;
            }
            Ok(deployment)
        }
        Written::AlreadyCurrent(current) => Ok(*current),
    }
}
