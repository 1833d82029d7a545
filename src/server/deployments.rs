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

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::AppState;
use super::auth::KeyLabel;
use super::error::ApiError;
use super::limits::{ContentType, json_body};
use super::metrics::{Metrics, Writer as MetricsWriter};
use super::records::{self, PgOutcome, Records};
use super::reference::PinnedRef;
use crate::tracking_api::DeploymentBody;

use crate::records::{
    Checks, Deployment, DeploymentRecord, InfoFiles, Platform, RecordsError, Stamp, Store, Written,
};

/// The environment when the body names none (Atomist's default).
pub const DEFAULT_ENVIRONMENT: &str = "deployed";

/// The file, under the callback log's directory, that keeps the deployments' idempotency keys
/// across restarts: one JSON line per keyed deployment (`{"key", "deployment"}`), appended and
/// synced by the writer thread in the same batch, before the deployment itself is written. At
/// start a key is remembered only if its deployment's `event_id` is in that app's history: a
/// crash between the two writes leaves a key whose deployment was never recorded nor answered,
/// and its retry is then recorded (once). Entries past [`IDEMPOTENCY_KEYS`] are compacted away
/// at start.
pub const KEYS_FILE: &str = "deployment-keys.jsonl";

/// How many idempotency keys the server remembers (in memory, and across restarts).
pub const IDEMPOTENCY_KEYS: usize = 100_000;

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// One line of [`KEYS_FILE`].
#[derive(Serialize, Deserialize)]
struct KeyEntry {
    key: String,
    deployment: Deployment,
}

/// What a request that waited for the first one with its key replays: its answer, or its error.
type Replay = Result<Value, (StatusCode, &'static str, String)>;

enum Slot {
    /// The first request with the key is being recorded; its answer comes through this.
    Pending(watch::Receiver<Option<Replay>>),
    /// Recorded; this was the answer, kept as its JSON text: a `Value` tree of the same answer
    /// takes several times the memory, and up to [`IDEMPOTENCY_KEYS`] of them are held.
    Done(Box<str>),
}

/// The deployments' idempotency keys: a retry (or a concurrent duplicate) of a request with the
/// same key gets the first request's answer and records nothing. Checking a key and claiming it
/// are one step under one lock: the first request owns the key until its deployment is written,
/// and every concurrent one waits for that answer.
#[derive(Default)]
pub struct Idempotency {
    inner: Mutex<Keys>,
}

#[derive(Default)]
struct Keys {
    slots: HashMap<String, Slot>,
    /// The recorded keys, oldest first, so only the newest [`IDEMPOTENCY_KEYS`] are kept.
    order: VecDeque<String>,
}

impl Keys {
    fn remember(&mut self, key: String, answer: Value) {
        if !matches!(
            self.slots
                .insert(key.clone(), Slot::Done(answer.to_string().into_boxed_str())),
            Some(Slot::Done(_))
        ) {
            self.order.push_back(key);
            while self.order.len() > IDEMPOTENCY_KEYS {
                if let Some(old) = self.order.pop_front() {
                    self.slots.remove(&old);
                }
            }
        }
    }
}

/// What [`Idempotency::claim`] found.
enum Claim {
    /// Already recorded: the answer.
    Answered(Value),
    /// Being recorded by an earlier request: wait for its answer.
    Wait(watch::Receiver<Option<Replay>>),
    /// This request owns the key.
    Owner(Owner),
}

/// The right to record under a key. Dropped without [`Owner::finish`] (a panic), it frees the
/// key and tells the waiters.
struct Owner {
    state: Arc<AppState>,
    key: String,
    tx: watch::Sender<Option<Replay>>,
    finished: bool,
}

impl Owner {
    /// Remember a success under the key (an error frees it, so a retry tries again) and give
    /// every waiting request the same outcome.
    fn finish(mut self, outcome: Replay) {
        self.finished = true;
        {
            let mut keys = self.state.idempotency.lock();
            match &outcome {
                Ok(answer) => keys.remember(self.key.clone(), answer.clone()),
                Err(_) => {
                    keys.slots.remove(&self.key);
                }
            }
        }
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if !self.finished {
            self.state.idempotency.lock().slots.remove(&self.key);
            self.tx.send_replace(Some(Err((
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the first request with this Idempotency-Key failed; try again".into(),
            ))));
        }
    }
}

impl Idempotency {
    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // A panic while holding this lock cannot leave the map half-updated (every update is
        // one insert or remove), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look `key` up and, if it is free, claim it for this request: one step.
    fn claim(state: &Arc<AppState>, key: &str) -> Claim {
        let mut keys = state.idempotency.lock();
        match keys.slots.get(key) {
            // Text this server serialised itself: it always parses back.
            Some(Slot::Done(answer)) => {
                Claim::Answered(serde_json::from_str(answer).unwrap_or(Value::Null))
            }
            Some(Slot::Pending(rx)) => Claim::Wait(rx.clone()),
            None => {
                let (tx, rx) = watch::channel(None);
                keys.slots.insert(key.to_string(), Slot::Pending(rx));
                Claim::Owner(Owner {
                    state: state.clone(),
                    key: key.to_string(),
                    tx,
                    finished: false,
                })
            }
        }
    }

    /// The keys of [`KEYS_FILE`] whose deployments are in their histories, and the file opened
    /// for appending (compacted first when it holds many more keys than are remembered).
    pub fn load(store: &Store, dir: &Path) -> anyhow::Result<(Idempotency, File)> {
        let path = dir.join(KEYS_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read {}", path.display()));
            }
        };
        let mut entries = Vec::new();
        let mut lines = 0;
        for (n, line) in text.split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            lines += 1;
            match serde_json::from_slice::<KeyEntry>(line) {
                Ok(entry) => entries.push(entry),
                Err(e) => tracing::warn!(
                    "{}:{}: unreadable idempotency entry ({e}), probably torn by a crash; ignored",
                    path.display(),
                    n + 1
                ),
            }
        }
        let keep_from = entries.len().saturating_sub(IDEMPOTENCY_KEYS);
        let entries = entries.split_off(keep_from);
        // Each app's history is read once for all its keys. The answer is rebuilt from the
        // recorded entry, not the journal's copy: the writer stamps `deployed_at` after the key
        // was journaled.
        let mut recorded: HashMap<(String, String), HashMap<Uuid, Deployment>> = HashMap::new();
        let mut keys = Keys::default();
        let mut kept = Vec::new();
        for entry in entries {
            let d = &entry.deployment;
            let app = (d.deployment.workspace.clone(), d.app.clone());
            let history = recorded.entry(app).or_insert_with(|| {
                match store.history(&d.deployment.workspace, &d.app) {
                    Ok(h) => h.into_iter().map(|d| (d.deployment.event_id, d)).collect(),
                    Err(e) => {
                        tracing::warn!(
                            "{e}; the idempotency keys of its deployments are not remembered"
                        );
                        Default::default()
                    }
                }
            });
            if let Some(written) = history.get(&d.deployment.event_id) {
                keys.remember(entry.key.clone(), answer(written));
                kept.push(entry);
            }
        }
        if lines > 2 * IDEMPOTENCY_KEYS || (lines > 0 && kept.len() * 2 < lines) {
            compact(&path, &kept)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        Ok((
            Idempotency {
                inner: Mutex::new(keys),
            },
            file,
        ))
    }
}

/// Rewrite [`KEYS_FILE`] with only `kept`, atomically.
fn compact(path: &Path, kept: &[KeyEntry]) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for entry in kept {
        serde_json::to_writer(&mut buf, entry)?;
        buf.push(b'\n');
    }
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(&buf)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The answer to a recorded deployment (and to every retry of it).
fn answer(d: &Deployment) -> Value {
    json!({
        "success": true,
        "summary": format!(
            "recorded {}@{} as {} in {}",
            d.image.repo, d.image.digest, d.app, d.deployment.workspace
        ),
        "deployment": d,
    })
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
    /// The idempotency key to keep with it in [`KEYS_FILE`].
    key: Option<String>,
    done: oneshot::Sender<Result<Written, RecordsError>>,
}

/// The most deployments one batch takes, so one batch's answers are not held back forever
/// under a flood.
const MAX_BATCH: usize = 4096;

impl Writer {
    /// Start the writer thread over `store`; it stops when the [`Writer`] is dropped.
    pub fn start(store: Store, keys: File, metrics: Arc<Metrics>) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("deployments-writer".into())
            .spawn(move || write_batches(&store, keys, &rx, &metrics))?;
        Ok(Writer { tx })
    }

    /// Queue one deployment and wait until its batch is written and synced.
    async fn submit(
        &self,
        deployment: Deployment,
        checks: Checks,
        key: Option<String>,
    ) -> Result<Written, ApiError> {
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
                key,
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
fn write_batches(store: &Store, mut keys: File, rx: &mpsc::Receiver<Message>, metrics: &Metrics) {
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
        let batch = journal_keys(&mut keys, batch);
        let items: Vec<(Deployment, Checks)> = batch
            .iter()
            .map(|j| (j.deployment.clone(), j.checks))
            .collect();
        let results = store.record_checked_many_with(&items, InfoFiles::AtMostEvery(INFO_EVERY));
        metrics.batch(MetricsWriter::Deployments, results.len());
        metrics.deployments_recorded(
            results
                .iter()
                .filter(|r| matches!(r, Ok(Written::Recorded(_))))
                .count() as u64,
        );
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

/// Append and sync the keyed deployments' [`KEYS_FILE`] lines, before the deployments are
/// written; the jobs to write (a failed append answers its jobs with the error: nothing of
/// them is written, so a retry is recorded once).
fn journal_keys(file: &mut File, batch: Vec<Job>) -> Vec<Job> {
    let mut buf = Vec::new();
    for job in &batch {
        if let Some(key) = &job.key {
            let entry = KeyEntry {
                key: key.clone(),
                deployment: job.deployment.clone(),
            };
            // Plain strings, times and ids: this always serialises.
            let _ = serde_json::to_writer(&mut buf, &entry);
            buf.push(b'\n');
        }
    }
    if buf.is_empty() {
        return batch;
    }
    let len = file.metadata().map(|m| m.len());
    match file.write_all(&buf).and_then(|()| file.sync_data()) {
        Ok(()) => batch,
        Err(e) => {
            tracing::error!(
                "cannot append to {KEYS_FILE}: {e}; the keyed deployments of this batch are not recorded"
            );
            // Cut a partial line off, so the next append starts a fresh one.
            if let Ok(len) = len {
                let _ = file.set_len(len);
            }
            let (keyed, rest): (Vec<Job>, Vec<Job>) =
                batch.into_iter().partition(|j| j.key.is_some());
            for job in keyed {
                let _ = job.done.send(Err(RecordsError::Io {
                    path: KEYS_FILE.into(),
                    source: std::io::Error::new(e.kind(), e.to_string()),
                }));
            }
            rest
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

/// The `Idempotency-Key` header: `None` when absent, a 400 when unusable.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str().map(str::trim) {
        Ok(v) if !v.is_empty() && v.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(v.to_string())),
        _ => Err(ApiError::bad_request(
            "idempotency-key",
            format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            ),
        )),
    }
}

/// The [`Deployment`] a body asks for, or the 400 that says what is wrong with it.
fn deployment_of(body: DeploymentBody, key_label: String) -> Result<Deployment, ApiError> {
    let missing = || {
        ApiError::bad_request(
            "missing-field",
            "image.url is required: {\"image\": {\"url\": \"host/repo@sha256:<digest>\"}}",
        )
    };
    let image = body.image.ok_or_else(missing)?;
    let url = non_empty(image.url).ok_or_else(missing)?;
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
    Ok(Deployment {
        app,
        image: pinned.image_record(platform),
        deployment: DeploymentRecord {
            deployed_at: Utc::now(),
            deployed_by: non_empty(body.deployed_by).unwrap_or(key_label),
            workspace: env,
            name,
            event_id: Uuid::now_v7(),
        },
    })
}

/// `POST /api/v1/deployments`. The API key was checked from the headers before the body was
/// read ([`super::auth::required`]).
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(KeyLabel(key_label)): Extension<KeyLabel>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // Keys are per API key: two clients cannot see each other's answers.
    let key = idempotency_key(&headers)?.map(|k| format!("{key_label} {k}"));
    let body: DeploymentBody = json_body(&headers, body, ContentType::Json)?;
    let deployment = deployment_of(body, key_label)?;
    if let Records::Postgres(pg) = &state.records {
        // The key is a column of the deployment's row: a retry, or the same key racing on
        // another replica, records nothing and gets the answer rebuilt from the stored row
        // (the answer is a function of the deployment, whose deployed_at the database stamps
        // in the write, so no answer is stored beside it).
        let checks = Checks {
            name_required_for_named_instances: true,
            stamp: Stamp::WriteTime,
            ..Checks::default()
        };
        let answer =
            match records::record(pg, deployment, checks, key, None, &state.metrics).await? {
                PgOutcome::Deployment(d) => answer(&d),
                PgOutcome::Replay(a) => a,
            };
        return Ok((StatusCode::CREATED, Json(answer)));
    }
    let Some(key) = key else {
        let deployment = record(&state, deployment).await?;
        return Ok((StatusCode::CREATED, Json(answer(&deployment))));
    };
    let owner = match Idempotency::claim(&state, &key) {
        Claim::Answered(answer) => return Ok((StatusCode::CREATED, Json(answer))),
        Claim::Wait(mut rx) => {
            let replay = rx
                .wait_for(Option::is_some)
                .await
                .map(|r| r.clone())
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the first request with this Idempotency-Key failed; try again".into(),
                    ))
                });
            return replayed(replay);
        }
        Claim::Owner(owner) => owner,
    };
    // Recorded and remembered in a task of its own, so a client that goes away cannot stop it
    // between the two: the key always ends remembered with its deployment, or freed.
    let state = state.clone();
    let outcome = tokio::spawn(async move {
        let outcome = match write(&state, deployment, false, Some(key)).await {
            Ok(d) => Ok(answer(&d)),
            Err(e) => Err((e.status, e.code, e.summary)),
        };
        owner.finish(outcome.clone());
        outcome
    })
    .await
    .map_err(|e| ApiError::internal("the deployment task failed", &e))?;
    replayed(outcome)
}

/// The HTTP answer of a [`Replay`].
fn replayed(replay: Replay) -> Result<(StatusCode, Json<Value>), ApiError> {
    match replay {
        Ok(answer) => Ok((StatusCode::CREATED, Json(answer))),
        Err((status, code, summary)) => Err(ApiError::new(status, code, summary)),
    }
}

/// Check the name rule and write `deployment`, one environment at a time. Shared with the
/// admission webhook.
pub async fn record(state: &Arc<AppState>, deployment: Deployment) -> Result<Deployment, ApiError> {
    write(state, deployment, false, None).await
}

/// [`record`], unless the app's current deployment already runs the same digest (a Pod of a
/// ReplicaSet admitted again); then nothing is written.
pub async fn record_if_new(
    state: &Arc<AppState>,
    deployment: Deployment,
) -> Result<Deployment, ApiError> {
    write(state, deployment, true, None).await
}

async fn write(
    state: &Arc<AppState>,
    deployment: Deployment,
    skip_if_current: bool,
    key: Option<String>,
) -> Result<Deployment, ApiError> {
    // Atomist's rule has two halves: the store refuses a name another app uses for the same
    // repository; `name_required_for_named_instances` refuses a request without a name for a
    // repository that runs as named instances there.
    if let Records::Postgres(pg) = &state.records {
        // deployed_at is stamped by the database under the app's lock, so racing requests
        // (also through other replicas) are recorded in time order.
        let checks = Checks {
            name_required_for_named_instances: true,
            skip_if_current,
            stamp: Stamp::WriteTime,
        };
        return match records::record(pg, deployment.clone(), checks, key, None, &state.metrics)
            .await?
        {
            PgOutcome::Deployment(d) => Ok(*d),
            PgOutcome::Replay(_) => Ok(deployment),
        };
    }
    let checks = Checks {
        name_required_for_named_instances: true,
        skip_if_current,
        // deployed_at is taken by the writer, so racing requests are appended in time order.
        stamp: Stamp::WriteTime,
    };
    match state
        .deployments
        .submit(deployment.clone(), checks, key)
        .await?
    {
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
