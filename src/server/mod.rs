//! `imagetrail serve`: analytics callbacks, the deployments API, queries and the admission
//! webhook. Deployments are stored through [`crate::records`], never in a format of its own.
//!
//! Layout:
//!
//! * [`run`] is the seam: it takes a bound listener and a shutdown future (mini-redis style), so
//!   tests start the server on `127.0.0.1:0`; [`serve`] is the CLI entry that binds `--listen`,
//!   waits for SIGTERM/SIGINT and calls it.
//! * `analytics`: `POST /api/v1/register` and `/scanner-error`, stored as append-only JSON lines
//!   with group commit (one `fdatasync` for every batch of waiting requests), or with
//!   `--database-url` as rows of PostgreSQL's `callbacks` table.
//! * `deployments`: `POST /api/v1/deployments` (the Atomist body), through [`crate::records::Store`].
//! * `queries`: the `GET` endpoints over the records.
//! * `admission`: the Kubernetes `AdmissionReview` v1 webhook for Pods.
//! * `records`: which store the deployments API, queries and admission use: the files, or
//!   PostgreSQL (`--database-url`), and the PostgreSQL side of those routes.
//! * `metrics`: `/healthz`, `/readyz`, `/metrics` (no key needed) and the request metrics layer.
//! * `auth` (Bearer API keys, checked from the headers before any body is read), `limits`
//!   (body size, content type, the time to receive a request, the connection limit and the
//!   in-flight body budget), `tls`,
//!   `reference` (image references pinned by digest), `error` (the JSON error answer).

mod admission;
mod analytics;
mod auth;
mod dashboard;
mod deployments;
mod error;
mod limits;
mod metrics;
mod queries;
mod records;
mod reference;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};

use crate::cli::{AdmissionMode, ServeArgs};
use crate::exit::ExitCode;
use crate::records::Store;
use crate::records::postgres::PgStore;

pub use analytics::ANALYTICS_DIR;
pub use auth::ApiKeys;
pub use reference::{PinnedRef, ReferenceError};

/// The default of `--max-connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// The default of `--max-pending-body-bytes` (32 MiB).
pub const DEFAULT_MAX_PENDING_BODY_BYTES: usize = 32 * 1024 * 1024;
/// What hyper may buffer per connection (headers, and body bytes not yet taken by a handler).
/// Its default is about 400 KiB; 64 KiB is plenty for any header this API needs, and it is
/// what makes the memory ceiling (connections × this + the body budget) small.
pub const MAX_CONNECTION_BUFFER: usize = 64 * 1024;

/// Everything the server needs besides its listener.
#[derive(Debug, Clone)]
pub struct Config {
    /// The state directory: deployment records, and the analytics log under [`ANALYTICS_DIR`].
    pub state_dir: PathBuf,
    /// Keys accepted as `Authorization: Bearer` on the deployments API. `None`: writes refused.
    pub api_keys: Option<ApiKeys>,
    /// Keys accepted for reads (the dashboard and `GET /api/v1/...`), besides the API keys.
    /// `None`: reads are open.
    pub read_keys: Option<ApiKeys>,
    /// Whether the analytics callbacks also require an API key.
    pub callbacks_require_key: bool,
    /// PEM certificate chain and key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// What the admission webhook does with images not pinned by digest.
    pub admission_mode: AdmissionMode,
    /// The cluster part of admission environments (`<cluster>/<namespace>`).
    pub cluster: String,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// How long one request may take, from its first byte to the answer (headers and body
    /// included): a client that never finishes is cut off after this.
    pub request_timeout: Duration,
    /// The most connections open at once; more are answered 503 and closed.
    pub max_connections: usize,
    /// The most request body bytes all requests in flight may hold together; a request that
    /// would go over is answered 503 before its body is read.
    pub max_pending_body_bytes: usize,
    /// Bytes of delivery points kept between requests for the dashboard's timeline and
    /// delivery metrics (files store only; see [`crate::records::point_cache`]). 0: none.
    pub points_cache_bytes: usize,
    /// The PostgreSQL store (`--database-url`), connected and migrated: deployments, queries,
    /// admission records and the analytics callbacks go there instead of the state
    /// directory's files. `None`: files.
    pub database: Option<PgStore>,
}

impl Config {
    /// Defaults for `state_dir`, as `imagetrail serve` would use without flags.
    pub fn new(state_dir: impl Into<PathBuf>) -> Config {
        Config {
            state_dir: state_dir.into(),
            api_keys: None,
            read_keys: None,
            callbacks_require_key: false,
            tls: None,
            admission_mode: AdmissionMode::Record,
            cluster: "default".into(),
            max_body_bytes: 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_body_bytes: DEFAULT_MAX_PENDING_BODY_BYTES,
            points_cache_bytes: crate::records::point_cache::DEFAULT_BUDGET_MIB << 20,
            database: None,
        }
    }
}

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) analytics: analytics::AnalyticsLog,
    pub(crate) deployments: deployments::Writer,
    pub(crate) idempotency: deployments::Idempotency,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) records: records::Records,
}

/// `imagetrail serve`: bind `--listen`, serve until SIGTERM or SIGINT, then finish the requests
/// in flight and exit 0.
pub async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let api_keys = match &args.api_keys_file {
        Some(path) => Some(ApiKeys::load(path)?),
        None => None,
    };
    let read_keys = match &args.read_keys {
        Some(path) => Some(ApiKeys::load(path)?),
        None => None,
    };
    let config = Config {
        state_dir: args.state.state_dir.clone(),
        api_keys,
        read_keys,
        callbacks_require_key: args.callbacks_require_key,
        tls: args.tls_cert.clone().zip(args.tls_key.clone()),
        admission_mode: args.admission_mode,
        cluster: args.cluster.clone(),
        max_body_bytes: args.max_body_bytes,
        // The CLI's value parser allows only finite seconds from 0 to a day.
        request_timeout: Duration::from_secs_f64(args.request_timeout),
        max_connections: args.max_connections,
        max_pending_body_bytes: args.max_pending_body_bytes,
        points_cache_bytes: args.points_cache_mib << 20,
        database: None,
    };
    // Check what can fail before the address is bound and announced, so a misconfigured server
    // never says "listening".
    if let Some((cert, key)) = &config.tls {
        tls::load(cert, key).await?;
    }
    let mut config = config;
    if let Some(url) = &args.database_url {
        // Connected and migrated before the address is announced: a wrong password, an
        // unreachable host or a newer schema is one line and exit 1 (main prints the error).
        let (pg, migrated) = PgStore::migrate(url).await?;
        if migrated.from != migrated.to {
            tracing::info!(
                from = migrated.from,
                to = migrated.to,
                "migrated the database schema"
            );
        }
        tracing::info!(
            database = pg.target(),
            "deployments are stored in PostgreSQL"
        );
        config.database = Some(pg);
    }
    let analytics_dir = config.state_dir.join(ANALYTICS_DIR);
    std::fs::create_dir_all(&analytics_dir).with_context(|| {
        format!(
            "cannot create {}; give a writable --state-dir",
            analytics_dir.display()
        )
    })?;
    if config.api_keys.is_none() {
        tracing::warn!(
            "no --api-keys-file: POST /api/v1/deployments answers 401 until the server has keys"
        );
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {}; pick a free address with --listen HOST:PORT",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    if config.read_keys.is_none() && !addr.ip().is_loopback() {
        tracing::warn!(
            "no --read-keys: anyone who reaches {addr} can read the dashboard and the records; give --read-keys FILE"
        );
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // The bound address goes to stdout (it is the command's result, and `--listen :0` makes it
    // unknown until now); everything else is logged on stderr.
    println!("listening on {scheme}://{addr}");
    run(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::Success)
}

/// Resolve when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// Serve on `listener` until `shutdown` resolves, then stop accepting, let the requests in
/// flight finish (up to the request timeout), bring every `deploy-info.yml` up to date and flush
/// the analytics log.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(metrics::Metrics::new(config.database.clone()));
    let records = match &config.database {
        Some(pg) => {
            let m = metrics.clone();
            pg.observe_deployment_batches(Arc::new(move |n| {
                m.batch(metrics::Writer::Deployments, n)
            }));
            records::Records::Postgres(pg.clone())
        }
        None => records::Records::Files,
    };
    let analytics = analytics::AnalyticsLog::open(
        &config.state_dir.join(ANALYTICS_DIR),
        config.database.as_ref(),
        metrics.clone(),
    )?;
    let tls = match &config.tls {
        Some((cert, key)) => Some(tls::load(cert, key).await?),
        None => None,
    };
    let request_timeout = config.request_timeout;
    let mut store = Store::new(&config.state_dir);
    if config.database.is_none() && config.points_cache_bytes > 0 {
        store = store.with_point_cache(Arc::new(crate::records::PointCache::new(
            config.points_cache_bytes,
        )));
    }
    // The deployments' idempotency keys, rebuilt from their file and checked against the
    // histories before the writer (which appends to that file) starts.
    let (idempotency, keys_file) =
        deployments::Idempotency::load(&store, &config.state_dir.join(ANALYTICS_DIR))?;
    let deployments = deployments::Writer::start(store.clone(), keys_file, metrics.clone())
        .context("cannot start the deployments writer")?;
    let state = Arc::new(AppState {
        store,
        deployments,
        config,
        analytics,
        idempotency,
        metrics,
        records,
    });
    let app = router(state.clone());
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), "imagetrail serve listening");

    let handle = axum_server::Handle::<SocketAddr>::new();
    let shutdown_handle = handle.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_handle.graceful_shutdown(Some(request_timeout));
    });

    let make_service = app.into_make_service();
    // The same timeouts with or without TLS: setting the acceptor keeps them.
    let mut server = axum_server::Server::from_listener(listener)
        .handle(handle)
        .first_request_timeout(request_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(request_timeout)
        .max_buf_size(MAX_CONNECTION_BUFFER);
    let limit = limits::ConnectionLimit::new(state.config.max_connections, tls.is_none());
    match tls {
        Some(tls) => {
            server
                .acceptor(
                    axum_server::tls_rustls::RustlsAcceptor::new(tls)
                        .handshake_timeout(request_timeout)
                        .acceptor(limit),
                )
                .serve(make_service)
                .await
        }
        None => server.acceptor(limit).serve(make_service).await,
    }
    .context("the HTTP server stopped")?;
    state.deployments.close().await;
    state.analytics.close().await;
    tracing::info!("imagetrail serve stopped");
    Ok(())
}

/// Every route. The environment in `/api/v1/environments/{*env}` is the rest of the path, so
/// `cluster/namespace` works both plain and percent-encoded (`cluster%2Fnamespace`).
fn router(state: Arc<AppState>) -> Router {
    let timeout = state.config.request_timeout;
    let budget = limits::BodyBudget::new(
        state.config.max_pending_body_bytes,
        state.config.max_body_bytes,
    );
    // Per route, the key is checked first (from the headers alone), then the body budget is
    // taken, then the handler reads the body.
    let budget =
        axum::middleware::from_fn(move |req, next| limits::body_budget(budget.clone(), req, next));
    let key = axum::middleware::from_fn_with_state(state.clone(), auth::required);
    let callback_key = axum::middleware::from_fn_with_state(state.clone(), auth::for_callbacks);
    Router::new()
        .route(
            "/api/v1/register",
            post(analytics::register)
                .route_layer(budget.clone())
                .route_layer(callback_key.clone()),
        )
        .route(
            "/api/v1/scanner-error",
            post(analytics::scanner_error)
                .route_layer(budget.clone())
                .route_layer(callback_key),
        )
        .route(
            "/api/v1/deployments",
            post(deployments::create)
                .route_layer(budget.clone())
                .route_layer(key)
                .get(queries::deployments),
        )
        .route("/api/v1/environments", get(queries::environments))
        .route("/api/v1/environments/{*env}", get(queries::environment))
        .route(
            "/api/v1/admission",
            post(admission::review).route_layer(budget),
        )
        .merge(dashboard::routes())
        .fallback(error::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(
            state.config.max_body_bytes,
        ))
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            dashboard::read_guard,
        ))
        // The probes and the metrics need no key (the kubelet and Prometheus have none), so
        // they are added after the read guard, which covers only the routes before it.
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .route("/metrics", get(metrics::metrics))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(axum::middleware::from_fn(move |req, next| {
            limits::request_timeout(timeout, req, next)
        }))
        .with_state(state)
}
