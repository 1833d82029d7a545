//! The analytics callbacks the scanner sends: `POST /api/v1/register` and
//! `POST /api/v1/scanner-error`, validated as the real analytics server (fabric8-gemini) does:
//! `Content-Type` exactly `application/json`, `git-url` and `git-sha` required.
//!
//! Storage, by default: one append-only JSON-lines file, `<state-dir>/.analytics/callbacks.jsonl`,
//! one line per accepted callback (the request as received, when, and the answer given). A
//! single writer thread does group commit: it writes every line waiting, calls `fdatasync` once,
//! and only then are those requests answered, so an answered callback survives a crash and the
//! cost of one sync is shared by every request that arrived meanwhile. A torn last line (a crash
//! during a write) is reported at startup with its line number and left in place; new lines
//! start on a fresh line, so it never corrupts another entry.
//!
//! With `--database-url`: rows of the `callbacks` table instead
//! ([`crate::records::postgres::PgCallbacks`]), group-committed the same way, the
//! `Idempotency-Key` unique per kind and the repeat-registration answer decided by the database,
//! so replicas share them; a database that cannot be reached is a 503 with `Retry-After`.
//! Either way [`AnalyticsLog::newest`] reads the newest callbacks (the dashboard's Scans page).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::oneshot;

use super::AppState;
use super::error::ApiError;
use super::limits::{ContentType, json_body};
use super::metrics::{Metrics, Writer as MetricsWriter};
use crate::records::postgres::{OnBatch, PgCallback, PgCallbackWritten, PgCallbacks, PgStore};

/// The directory under the state directory that holds the callback log. It starts with a dot
/// because the records' path encoding never produces one, so no environment can collide with it.
pub const ANALYTICS_DIR: &str = ".analytics";

/// The callback log's file name inside [`ANALYTICS_DIR`].
pub const LOG_FILE: &str = "callbacks.jsonl";

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// One line of the log.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    /// `register` or `scanner-error`.
    kind: String,
    /// When the server accepted it.
    received_at: DateTime<Utc>,
    /// The client's `Idempotency-Key`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
    /// The body as received.
    request: Value,
    /// The answer given.
    answer: Value,
}

/// What earlier callbacks decide about later ones.
#[derive(Default)]
struct Seen {
    /// (git-url, git-sha) → when it was last registered.
    registered: HashMap<(String, String), DateTime<Utc>>,
    /// "<kind> <key>" → the answer given to the first request with that key.
    answers: HashMap<String, Value>,
    /// The keys of `answers`, oldest first, so only the newest [`IDEMPOTENCY_KEYS`] are kept
    /// (a retry comes within minutes; the scanner sends a fresh key for every target and run).
    order: std::collections::VecDeque<String>,
}

/// How many idempotency keys of callbacks are remembered (also across restarts: the index is
/// rebuilt from the log).
pub const IDEMPOTENCY_KEYS: usize = 100_000;

impl Seen {
    fn remember(&mut self, key: String, answer: Value) {
        if self.answers.insert(key.clone(), answer).is_none() {
            self.order.push_back(key);
            if self.order.len() > IDEMPOTENCY_KEYS
                && let Some(old) = self.order.pop_front()
            {
                self.answers.remove(&old);
            }
        }
    }
}

enum Job {
    Append {
        line: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Close(oneshot::Sender<()>),
}

/// The callbacks' store: the log file (in-memory indexes plus the group-commit writer), or
/// PostgreSQL.
pub struct AnalyticsLog {
    backend: Backend,
    metrics: Arc<Metrics>,
}

enum Backend {
    File(FileLog),
    Postgres(PgCallbacks),
}

/// The JSON-lines log.
struct FileLog {
    seen: Mutex<Seen>,
    tx: mpsc::Sender<Job>,
    path: PathBuf,
}

impl AnalyticsLog {
    /// Open (or create) the log in `dir`, rebuild the indexes from it and start the writer;
    /// with `database`, start the callbacks' writer on it instead (no file is opened).
    pub fn open(
        dir: &Path,
        database: Option<&PgStore>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<AnalyticsLog> {
        if let Some(pg) = database {
            let m = metrics.clone();
            let on_batch: OnBatch = Arc::new(move |n| m.batch(MetricsWriter::Callbacks, n));
            return Ok(AnalyticsLog {
                backend: Backend::Postgres(PgCallbacks::start(pg, Some(on_batch))),
                metrics,
            });
        }
        std::fs::create_dir_all(dir).with_context(|| {
            format!(
                "cannot create {}; check that the state directory is writable",
                dir.display()
            )
        })?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open the callback log {}", path.display()))?;
        let seen = load(&path, &mut file)?;
        let (tx, rx) = mpsc::channel();
        let writer_path = path.clone();
        std::thread::Builder::new()
            .name("analytics-log".into())
            .spawn({
                let metrics = metrics.clone();
                move || writer(file, &writer_path, rx, &metrics)
            })
            .context("cannot start the callback log writer")?;
        Ok(AnalyticsLog {
            backend: Backend::File(FileLog {
                seen: Mutex::new(seen),
                tx,
                path,
            }),
            metrics,
        })
    }

    /// The newest `limit` callbacks, newest first, each as the log's JSON line has it
    /// (`kind`, `received_at`, `idempotency_key`, `request`, `answer`).
    pub async fn newest(&self, limit: u32) -> Result<Vec<Value>, ApiError> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        match &self.backend {
            Backend::File(log) => {
                let path = log.path.clone();
                let mut entries = tokio::task::spawn_blocking(move || read_tail(&path))
                    .await
                    .map_err(|e| ApiError::internal("the callback log reader failed", &e))?
                    .map_err(|e| ApiError::internal("cannot read the callback log", &e))?;
                entries.truncate(limit);
                Ok(entries)
            }
            Backend::Postgres(pg) => Ok(pg
                .newest(u32::try_from(limit).unwrap_or(u32::MAX))
                .await?
                .into_iter()
                .map(|c| {
                    // The same shape as a log line.
                    serde_json::to_value(Entry {
                        kind: c.kind,
                        received_at: c.received_at,
                        idempotency_key: c.idempotency_key,
                        request: c.request,
                        answer: c.answer,
                    })
                    .unwrap_or(Value::Null)
                })
                .collect()),
        }
    }

    /// Write everything waiting and stop the writer.
    pub async fn close(&self) {
        // The database's writer answers every caller before its commit returns: nothing waits.
        let Backend::File(log) = &self.backend else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if log.tx.send(Job::Close(done)).is_ok() {
            let _ = wait.await;
        }
    }

    /// Record one callback and give its answer, or the stored answer of an earlier request with
    /// the same idempotency key (then nothing new is stored). `answer` decides the answer from
    /// what was recorded before; with PostgreSQL, the database decides between
    /// [`Answers::first`] and [`Answers::repeat`].
    async fn accept(
        &self,
        kind: &'static str,
        key: Option<String>,
        request: Value,
        answers: Answers,
    ) -> Result<Value, ApiError> {
        let now = Utc::now();
        let log = match &self.backend {
            Backend::File(log) => log,
            Backend::Postgres(pg) => {
                let callback = PgCallback {
                    kind,
                    received_at: now,
                    idempotency_key: key,
                    commit: answers.commit.clone(),
                    request,
                    answer: answers.first,
                    repeat: answers.repeat,
                };
                return match pg.record(callback).await? {
                    PgCallbackWritten::Recorded(answer) => {
                        self.metrics.callback_recorded(kind);
                        Ok(answer)
                    }
                    PgCallbackWritten::Duplicate(answer) => Ok(answer),
                };
            }
        };
        let answer = {
            let mut seen = log.seen.lock().expect("callback index lock");
            if let Some(key) = &key
                && let Some(previous) = seen.answers.get(&format!("{kind} {key}"))
            {
                return Ok(previous.clone());
            }
            let answer = answers.decide(&mut seen, now);
            if let Some(key) = &key {
                seen.remember(format!("{kind} {key}"), answer.clone());
            }
            answer
        };
        let entry = Entry {
            kind: kind.to_string(),
            received_at: now,
            idempotency_key: key,
            request,
            answer,
        };
        if let Err(e) = log.append(&entry).await {
            // Nothing was stored: a retry with the same key must be tried again, not answered
            // with the success that was never written.
            if let Some(key) = &entry.idempotency_key {
                let mut seen = log.seen.lock().expect("callback index lock");
                seen.answers.remove(&format!("{kind} {key}"));
            }
            return Err(e);
        }
        self.metrics.callback_recorded(kind);
        Ok(entry.answer)
    }
}

/// The answers a callback can get: `first`, or for a register of a commit registered before,
/// `repeat` with `last_scanned_at` set to that registration's time.
struct Answers {
    commit: Option<(String, String)>,
    first: Value,
    repeat: Option<Value>,
}

impl Answers {
    /// Decide from the file log's index (and remember this registration in it).
    fn decide(&self, seen: &mut Seen, now: DateTime<Utc>) -> Value {
        let Some(commit) = &self.commit else {
            return self.first.clone();
        };
        match (seen.registered.insert(commit.clone(), now), &self.repeat) {
            (Some(previous), Some(repeat)) => {
                let mut answer = repeat.clone();
                answer["last_scanned_at"] = json!(rfc1123(previous));
                answer
            }
            _ => self.first.clone(),
        }
    }
}

/// A time as the real server's `last_scanned_at` has it.
fn rfc1123(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

impl FileLog {
    /// Append one line and wait until it is on disk.
    async fn append(&self, entry: &Entry) -> Result<(), ApiError> {
        let mut line = serde_json::to_vec(entry)
            .map_err(|e| ApiError::internal("cannot encode the callback", &e))?;
        line.push(b'\n');
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Append { line, done })
            .map_err(|_| ApiError::internal("the callback log is closed", &"shutting down"))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ApiError::internal(
                &format!("cannot write the callback log {}", self.path.display()),
                &e,
            )),
            Err(_) => Err(ApiError::internal(
                "the callback log writer stopped",
                &"see earlier errors",
            )),
        }
    }
}

/// How much of the end of the callback log [`AnalyticsLog::newest`] reads: the newest
/// callbacks only, whatever the log's size.
const TAIL_BYTES: u64 = 2 * 1024 * 1024;

/// The newest callback log lines (parsed JSON), newest first.
fn read_tail(path: &Path) -> anyhow::Result<Vec<Value>> {
    use std::io::Read;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    let len = f.metadata()?.len();
    let from = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(from))?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf)?;
    // A cut first line (when reading from the middle) is skipped, as is a torn last one.
    let skip_first = from > 0;
    let mut out: Vec<Value> = buf
        .split(|&b| b == b'\n')
        .skip(usize::from(skip_first))
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    out.reverse();
    Ok(out)
}

/// Rebuild the indexes from the log; make sure the next append starts on a fresh line.
fn load(path: &Path, file: &mut File) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    let reader = BufReader::new(File::open(path)?);
    for (n, line) in reader.split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Entry>(&line) {
            Ok(entry) => {
                index(&mut seen, &entry);
            }
            Err(e) => {
                tracing::warn!(
                    "{}:{}: unreadable callback entry ({e}), probably torn by a crash; it is kept as it is and ignored",
                    path.display(),
                    n + 1
                );
            }
        }
    }
    let len = file.seek(SeekFrom::End(0))?;
    if len > 0 {
        let mut last = [0u8; 1];
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut last, len - 1)?;
        if last[0] != b'\n' {
            file.write_all(b"\n")?;
            file.sync_data()?;
        }
    }
    Ok(seen)
}

fn index(seen: &mut Seen, entry: &Entry) {
    if entry.kind == "register"
        && let (Some(url), Some(sha)) = (
            entry.request.get("git-url").and_then(Value::as_str),
            entry.request.get("git-sha").and_then(Value::as_str),
        )
    {
        seen.registered.insert(
            (url.trim().to_string(), sha.trim().to_string()),
            entry.received_at,
        );
    }
    if let Some(key) = &entry.idempotency_key {
        seen.remember(format!("{} {key}", entry.kind), entry.answer.clone());
    }
}

/// The writer thread: group commit until closed.
fn writer(mut file: File, path: &Path, rx: mpsc::Receiver<Job>, metrics: &Metrics) {
    let mut len = file.metadata().map(|m| m.len()).unwrap_or(0);
    while let Ok(job) = rx.recv() {
        let mut batch = Vec::new();
        let mut close = None;
        match job {
            Job::Append { line, done } => batch.push((line, done)),
            Job::Close(done) => close = Some(done),
        }
        while close.is_none() {
            match rx.try_recv() {
                Ok(Job::Append { line, done }) => batch.push((line, done)),
                Ok(Job::Close(done)) => close = Some(done),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            metrics.batch(MetricsWriter::Callbacks, batch.len());
            let mut buf = Vec::with_capacity(batch.iter().map(|(l, _)| l.len()).sum());
            for (line, _) in &batch {
                buf.extend_from_slice(line);
            }
            let result = file.write_all(&buf).and_then(|()| file.sync_data());
            let outcome = match result {
                Ok(()) => {
                    len += buf.len() as u64;
                    Ok(())
                }
                Err(e) => {
                    // Cut a partial write back off, so the next batch does not continue a torn
                    // line and every entry already answered stays intact.
                    if let Err(t) = file.set_len(len) {
                        tracing::error!(
                            "cannot truncate {} after a failed write: {t}",
                            path.display()
                        );
                    }
                    Err(e.to_string())
                }
            };
            for (_, done) in batch {
                let _ = done.send(outcome.clone());
            }
        }
        if let Some(done) = close {
            let _ = done.send(());
            return;
        }
    }
}

/// The `Idempotency-Key` header, if any and usable.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(v) if !v.trim().is_empty() && v.len() <= MAX_IDEMPOTENCY_KEY => {
            Ok(Some(v.trim().to_string()))
        }
        _ => Err(ApiError::bad_request(
            "idempotency-key",
            format!(
                "the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
            ),
        )),
    }
}

/// The body as a JSON object, or a 400.
fn object(body: Value) -> Result<Map<String, Value>, ApiError> {
    match body {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::bad_request(
            "invalid-body",
            "the body must be a JSON object",
        )),
    }
}

/// A required non-empty string field, with the real server's message when it is missing.
fn required<'a>(body: &'a Map<String, Value>, key: &str) -> Result<&'a str, ApiError> {
    match body.get(key).and_then(Value::as_str).map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        // The real server answers 404 here; 400 is the right status, and a 404 would tell the
        // scanner "this endpoint does not exist".
        _ => Err(ApiError::bad_request(
            "missing-field",
            format!("{key} cannot be empty"),
        )),
    }
}

/// What every callback does first: read the body as a JSON object sent as exactly
/// `application/json`. (The key, when callbacks require one, was checked from the headers
/// before the body was read: [`super::auth::for_callbacks`].)
fn callback_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Map<String, Value>, ApiError> {
    object(json_body(headers, body, ContentType::Exact)?)
}

/// `POST /api/v1/register`.
pub async fn register(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = callback_body(&headers, body)?;
    let url = required(&body, "git-url")?.to_string();
    let sha = required(&body, "git-sha")?.to_string();
    let key = idempotency_key(&headers)?;
    let answers = Answers {
        commit: Some((url.clone(), sha.clone())),
        first: json!({
            "success": true,
            "summary": format!("Repository {url} with commit-hash {sha} has been successfully registered. Please check back for report after some time."),
        }),
        // The real server's answer for a repeat, with the time of the previous one in its
        // RFC 1123 form (set when it is known) and no report (this server does not scan
        // repositories).
        repeat: Some(json!({
            "success": true,
            "summary": format!("Repository {url} with commit-hash {sha} was already registered, but no report was found. Please check back later."),
            "last_scanned_at": null,
            "last_scan_report": null,
        })),
    };
    let answer = state
        .analytics
        .accept("register", key, Value::Object(body), answers)
        .await?;
    Ok((StatusCode::OK, Json(answer)))
}

/// `POST /api/v1/scanner-error`: `{"email-ids", "image-name", "error": [messages]}`.
pub async fn scanner_error(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = callback_body(&headers, body)?;
    let errors = match body.get("error") {
        Some(Value::String(s)) if !s.trim().is_empty() => 1,
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a.len(),
        _ => {
            return Err(ApiError::bad_request(
                "missing-field",
                "error cannot be empty; send \"error\": [\"message\", ...]",
            ));
        }
    };
    let image = body
        .get("image-name")
        .and_then(Value::as_str)
        .unwrap_or("(no image-name)")
        .to_string();
    let key = idempotency_key(&headers)?;
    let answers = Answers {
        commit: None,
        first: json!({
            "success": true,
            "summary": format!("Recorded {errors} scanner error(s) for image {image}."),
        }),
        repeat: None,
    };
    let answer = state
        .analytics
        .accept("scanner-error", key, Value::Object(body), answers)
        .await?;
    Ok((StatusCode::OK, Json(answer)))
}
