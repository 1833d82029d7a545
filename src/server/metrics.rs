//! `GET /metrics` (Prometheus/OpenMetrics text), `GET /readyz` and the request metrics layer.
//!
//! The metrics go through `prometheus-client` (the Prometheus project's own Rust client): it has
//! no HTTP listener or global recorder of its own, so the registry lives in the server's state
//! and is rendered by an ordinary route, and two servers in one process (the tests) never share
//! counters. Label values are bounded: the route is the matched route pattern (never the raw
//! path, which a client chooses), the method one of the few this API knows.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::AppState;
use super::error::ApiError;
use super::records::Records;
use crate::records::postgres::PgStore;

/// How long `/readyz` waits for its store check before it answers 503: a probe must answer
/// well within the kubelet's probe timeout (1 s by default) even when the disk hangs.
pub const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// The content type of the exposition: OpenMetrics text, which Prometheus scrapes natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabels {
    writer: &'static str,
}

/// The server's metrics and the registry they are rendered from.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    deployments: Counter,
    callbacks: Family<KindLabels, Counter>,
    batches: Family<WriterLabels, Histogram>,
    /// With PostgreSQL: the store, whose pool is read at each scrape.
    database: Option<(PgStore, Family<PoolLabels, Gauge>)>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

/// The group-commit writers whose batch sizes are measured.
#[derive(Debug, Clone, Copy)]
pub enum Writer {
    /// The deployments writer.
    Deployments,
    /// The analytics callback log.
    Callbacks,
}

impl Metrics {
    /// Every metric, registered and at zero; with `database`, its pool's use too.
    pub fn new(database: Option<PgStore>) -> Metrics {
        let mut registry = Registry::with_prefix("imagetrail");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        // 0.25 ms to about 8 s: a synced write takes milliseconds, a timed-out request seconds.
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its answer's headers, by route pattern and method",
            latency.clone(),
        );
        let deployments = Counter::default();
        registry.register(
            "deployments_recorded",
            "Deployments recorded (written and synced; replays and skipped repeats not counted)",
            deployments.clone(),
        );
        let callbacks = Family::<KindLabels, Counter>::default();
        registry.register(
            "callbacks_recorded",
            "Analytics callbacks recorded, by kind (replays of an Idempotency-Key not counted)",
            callbacks.clone(),
        );
        // 1 to 4096 (the deployments writer's largest batch).
        let batches = Family::<WriterLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 13))
        });
        registry.register(
            "write_batch_size",
            "Requests committed together by one group commit, by writer",
            batches.clone(),
        );
        let database = database.map(|pg| {
            let pool = Family::<PoolLabels, Gauge>::default();
            registry.register(
                "db_pool_connections",
                "PostgreSQL pool connections: open, idle (open and unused) and max",
                pool.clone(),
            );
            (pg, pool)
        });
        Metrics {
            database,
            registry,
            requests,
            latency,
            deployments,
            callbacks,
            batches,
        }
    }

    /// Count `n` deployments recorded.
    pub fn deployments_recorded(&self, n: u64) {
        if n > 0 {
            self.deployments.inc_by(n);
        }
    }

    /// Count one callback recorded (`register` or `scanner-error`).
    pub fn callback_recorded(&self, kind: &str) {
        let kind = match kind {
            "register" => "register",
            "scanner-error" => "scanner-error",
            _ => "other",
        };
        self.callbacks.get_or_create(&KindLabels { kind }).inc();
    }

    /// Observe the size of one group commit.
    pub fn batch(&self, writer: Writer, size: usize) {
        let writer = match writer {
            Writer::Deployments => "deployments",
            Writer::Callbacks => "callbacks",
        };
        self.batches
            .get_or_create(&WriterLabels { writer })
            .observe(size as f64);
    }

    /// The exposition text.
    fn render(&self) -> Result<String, std::fmt::Error> {
        if let Some((pg, pool)) = &self.database {
            let (open, idle, max) = pg.pool_use();
            for (state, n) in [("open", open), ("idle", idle), ("max", max)] {
                pool.get_or_create(&PoolLabels { state })
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// The method as a label: the few this API serves, everything else `other` (a client can send
/// any token as a method).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The layer that counts and times every request, by its matched route pattern.
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = method_label(req.method());
    let response = next.run(req).await;
    let metrics = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
            method,
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => ApiError::internal("cannot render the metrics", &e).into_response(),
    }
}

/// `GET /healthz`: the process answers.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when the store can be reached (within [`READY_TIMEOUT`]), else 503 with
/// what failed.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let failure = match &state.records {
        Records::Postgres(pg) => match tokio::time::timeout(READY_TIMEOUT, pg.ping()).await {
            Ok(Ok(())) => return (StatusCode::OK, "ready\n").into_response(),
            Ok(Err(e)) => format!("the database does not answer: {e}"),
            Err(_) => format!(
                "the database did not answer SELECT 1 within {} ms",
                READY_TIMEOUT.as_millis()
            ),
        },
        Records::Files => {
            let dir = state.config.state_dir.clone();
            let check = tokio::task::spawn_blocking(move || state_dir_usable(&dir));
            match tokio::time::timeout(READY_TIMEOUT, check).await {
                Ok(Ok(Ok(()))) => return (StatusCode::OK, "ready\n").into_response(),
                Ok(Ok(Err(why))) => why,
                Ok(Err(e)) => format!("the readiness check failed: {e}"),
                Err(_) => format!(
                    "the state directory did not answer within {} ms",
                    READY_TIMEOUT.as_millis()
                ),
            }
        }
    };
    tracing::warn!("not ready: {failure}");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", failure).into_response()
}

/// Whether the state directory (and the callback log's directory in it) can be listed and
/// written: one small file created, synced and removed.
fn state_dir_usable(dir: &Path) -> Result<(), String> {
    let log_dir = dir.join(super::ANALYTICS_DIR);
    for d in [dir, log_dir.as_path()] {
        std::fs::read_dir(d).map_err(|e| {
            format!(
                "cannot read {}: {e}; check that the state directory exists and is readable",
                d.display()
            )
        })?;
    }
    let probe = log_dir.join(format!(".readyz-{}", std::process::id()));
    let written = std::fs::File::create(&probe).and_then(|f| f.sync_all());
    let _ = std::fs::remove_file(&probe);
    written.map_err(|e| {
        format!(
            "cannot write in {}: {e}; check that the state directory is writable",
            log_dir.display()
        )
    })
}
