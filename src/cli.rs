//! The command line: every subcommand and flag, each flag with its `IMAGETRAIL_*`
//! environment variable. The legacy variables that `atomic scan`'s `custom_args` pass
//! (`SERVER`, `IMAGE_NAME`, `SERVER_TOKEN`, `ENVIRONMENT`) are read as fallbacks by
//! [`crate::settings`]-style resolution in the modules that use them, because an empty
//! legacy variable means "not given" (atomic passes unset variables as empty ones).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Follow a container image from build to deployment.
#[derive(Debug, Parser)]
#[command(name = "imagetrail", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct GlobalOpts {
    /// More log output on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, env = "IMAGETRAIL_QUIET")]
    pub quiet: bool,
    /// Colour in the log on stderr: auto (a terminal, unless NO_COLOR is set or the command is
    /// `scan`, whose terminal is atomic's `docker run -t`), always, never.
    #[arg(long, global = true, env = "IMAGETRAIL_COLOR", value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

/// When the log on stderr carries colour codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// On a terminal, unless `NO_COLOR` is set or the command is `scan`.
    Auto,
    /// Always (even into a pipe or a file).
    Always,
    /// Never.
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The `atomic scan` entry point: read targets from /scanin, write results to /scanout.
    Scan(ScanArgs),
    /// Register images named on the command line with the analytics server.
    Register(ImagesArgs),
    /// Check the labels of images named on the command line, without network.
    Verify(ImagesArgs),
    /// Record a deployment by digest (the tag is resolved through the registry first).
    Deploy(DeployArgs),
    /// What runs now, per environment and app.
    Status(QueryArgs),
    /// Every recorded deployment, oldest first.
    History(HistoryArgs),
    /// What was running at a point in time, when it was built and who deployed it.
    At(AtArgs),
    /// Compare a candidate image with what runs in an environment.
    Compare(CompareArgs),
    /// Every environment and app that runs an image now (digest, tag or git revision).
    Where(WhereArgs),
    /// Look at a registry or prune it.
    #[command(subcommand)]
    Registry(RegistryCommand),
    /// Look at one repository's images with the deployed digest marked.
    #[command(subcommand)]
    Images(ImagesCommand),
    /// Delivery metrics per environment: deployment frequency, lead time, rollback rate, time to restore.
    Metrics(MetricsArgs),
    /// Run the tracking server: analytics callbacks, deployments API, queries, admission webhook.
    Serve(ServeArgs),
    /// The PostgreSQL store of deployment records: migrate its schema, import and export YAML.
    #[command(subcommand)]
    Db(DbCommand),
}

/// Output format of reporting commands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Human-readable text.
    #[default]
    Text,
    /// JSON on stdout.
    Json,
}

/// The scan types of the scanner; each is a `scans` entry in `scanner-config`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum ScanType {
    /// Register each target with the analytics server.
    #[default]
    Register,
    /// Check each target's labels locally, no network.
    Verify,
    /// Record each target as deployed in ENVIRONMENT through the tracking API.
    Deploy,
}

/// Options shared by `scan`, `register` and `verify`.
#[derive(Debug, Args, Clone)]
pub struct ScanOpts {
    /// Analytics server base URL; a path in it is kept as a prefix. [legacy: SERVER]
    #[arg(long, env = "IMAGETRAIL_SERVER")]
    pub server: Option<String>,
    /// API path prefix appended to the server URL.
    #[arg(long, env = "IMAGETRAIL_API_PREFIX", default_value = "/api/v1")]
    pub api_prefix: String,
    /// File holding the Bearer token for the server. [legacy: SERVER_TOKEN holds the token itself]
    #[arg(long, env = "IMAGETRAIL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Image name used in payloads, and the label source for --rootfs targets or an empty /scanin. [legacy: IMAGE_NAME]
    #[arg(long, env = "IMAGETRAIL_IMAGE_NAME")]
    pub image_name: Option<String>,
    /// Environment a `deploy` scan records into. [legacy: ENVIRONMENT]
    #[arg(long, env = "IMAGETRAIL_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Engine endpoint (unix:///path or tcp://host:port); default DOCKER_HOST, CONTAINER_HOST, /var/run/docker.sock, Podman's sockets.
    #[arg(long, env = "IMAGETRAIL_HOST")]
    pub host: Option<String>,
    /// Output format on stdout.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Exit with this code when any target failed (default: exit 0 once results are written).
    #[arg(long, env = "IMAGETRAIL_EXIT_CODE", default_value_t = 0, value_parser = exit_code)]
    pub exit_code: u8,
    /// Seconds to wait for a connection to the server.
    #[arg(long, env = "IMAGETRAIL_CONNECT_TIMEOUT", default_value_t = 5.0, value_parser = seconds)]
    pub connect_timeout: f64,
    /// Seconds one whole request to the server may take.
    #[arg(long, env = "IMAGETRAIL_TIMEOUT", default_value_t = 30.0, value_parser = seconds)]
    pub timeout: f64,
    /// Attempts per request (connection errors, 408, 429 and 5xx are retried).
    #[arg(long, env = "IMAGETRAIL_ATTEMPTS", default_value_t = 3, value_parser = attempts)]
    pub attempts: u32,
    /// Targets processed at once.
    #[arg(long, env = "IMAGETRAIL_CONCURRENCY", default_value_t = 8, value_parser = concurrency)]
    pub concurrency: usize,
}

/// `imagetrail scan [TYPE]`.
#[derive(Debug, Args)]
pub struct ScanArgs {
    /// The scan type (atomic passes it from the `scans` entry).
    #[arg(value_enum, default_value_t = ScanType::Register)]
    pub scan_type: ScanType,
    /// Directory holding one directory per target (atomic mounts it).
    #[arg(long, env = "IMAGETRAIL_SCANIN", default_value = "/scanin")]
    pub scanin: PathBuf,
    /// Directory the results are written to (atomic mounts it).
    #[arg(long, env = "IMAGETRAIL_SCANOUT", default_value = "/scanout")]
    pub scanout: PathBuf,
    /// Options shared with `register` and `verify`.
    #[command(flatten)]
    pub opts: ScanOpts,
}

/// `imagetrail register|verify IMAGE...`.
#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Images (name, name:tag, or id) to work on.
    #[arg(required = true)]
    pub images: Vec<String>,
    /// Also write the result files into this directory.
    #[arg(long, env = "IMAGETRAIL_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Options shared with `scan`.
    #[command(flatten)]
    pub opts: ScanOpts,
}

/// Where deployment records live.
#[derive(Debug, Args, Clone)]
pub struct StateOpts {
    /// Directory of the deployment records.
    #[arg(
        long,
        env = "IMAGETRAIL_STATE_DIR",
        default_value = "/var/lib/imagetrail"
    )]
    pub state_dir: PathBuf,
}

/// Where the record commands read and write: the state directory's files, or PostgreSQL.
/// (`serve` has its own `--database-url`, which also migrates the schema.)
#[derive(Debug, Args, Clone, Default)]
pub struct DatabaseOpts {
    /// Read and write the deployment records in PostgreSQL instead of --state-dir's files:
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (sslmode=, sslrootcert=). The schema must
    /// be the one this imagetrail knows (`imagetrail db migrate` creates it); it is never
    /// migrated by these commands.
    #[arg(long, env = "IMAGETRAIL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

impl StateOpts {
    /// The records these options and `db` name: PostgreSQL when a database URL is given, else
    /// the state directory (see [`crate::records::open`]).
    pub fn open(
        &self,
        db: &DatabaseOpts,
    ) -> Result<Box<dyn crate::records::RecordStore>, crate::records::RecordsError> {
        crate::records::open(&self.state_dir, db.database_url.as_deref())
    }
}

/// How to reach registries.
#[derive(Debug, Args, Clone)]
pub struct RegistryOpts {
    /// Registries reached over plain HTTP although they are not on loopback (repeatable).
    #[arg(
        long = "insecure-registry",
        env = "IMAGETRAIL_INSECURE_REGISTRY",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Docker config file with registry credentials (default ~/.docker/config.json).
    #[arg(long, env = "IMAGETRAIL_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
    /// Seconds to wait for a connection to a registry (fractions allowed).
    #[arg(long, env = "IMAGETRAIL_REGISTRY_CONNECT_TIMEOUT", default_value = "10", value_parser = registry_seconds)]
    pub registry_connect_timeout: std::time::Duration,
    /// Seconds to wait for each read of a registry's answer, the first byte included: a
    /// registry that accepts and never answers fails after this (fractions allowed).
    #[arg(long, env = "IMAGETRAIL_REGISTRY_READ_TIMEOUT", default_value = "30", value_parser = registry_seconds)]
    pub registry_read_timeout: std::time::Duration,
}

/// A registry timeout in seconds: a number above 0 and at most 3600.
fn registry_seconds(s: &str) -> Result<std::time::Duration, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 3600.0 => {
            Ok(std::time::Duration::from_secs_f64(v))
        }
        _ => Err(format!(
            "{s:?} is not a number of seconds above 0 and at most 3600"
        )),
    }
}

/// `imagetrail deploy`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The app being deployed (default: --name, else the repository path).
    #[arg(long, env = "IMAGETRAIL_APP")]
    pub app: Option<String>,
    /// The environment (workspace) deployed to.
    #[arg(long = "env", env = "IMAGETRAIL_ENV", default_value = "deployed")]
    pub env: String,
    /// The image: host/repo:tag or host/repo@sha256:...
    #[arg(long, env = "IMAGETRAIL_IMAGE")]
    pub image: String,
    /// Who deployed it (default: $USER).
    #[arg(long, env = "IMAGETRAIL_DEPLOYED_BY")]
    pub by: Option<String>,
    /// Optional service name, unique per repository per environment.
    #[arg(long, env = "IMAGETRAIL_NAME")]
    pub name: Option<String>,
    /// Platform os/arch[/variant] chosen from a multi-platform index.
    #[arg(long, env = "IMAGETRAIL_PLATFORM", default_value = "linux/amd64")]
    pub platform: String,
    /// Refuse a tag: the image must be named by digest (the pipeline deploys what it tested).
    #[arg(long, env = "IMAGETRAIL_REQUIRE_DIGEST")]
    pub require_digest: bool,
    /// Record a deployment that happened earlier (backfill; RFC 3339 or "YYYY-MM-DD HH:MM" local); it must be newer than the last one recorded.
    #[arg(long, env = "IMAGETRAIL_DEPLOYED_AT")]
    pub deployed_at: Option<String>,
    /// Tracking endpoints to POST the Atomist-compatible body to (repeatable).
    #[arg(long = "endpoint", env = "IMAGETRAIL_ENDPOINT", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// File holding the API key sent as `Authorization: Bearer` to the endpoints.
    #[arg(long, env = "IMAGETRAIL_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryOpts,
}

/// Filters shared by the query commands.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// Only this environment.
    #[arg(long = "env", env = "IMAGETRAIL_ENV")]
    pub env: Option<String>,
    /// Only this app.
    #[arg(long, env = "IMAGETRAIL_APP")]
    pub app: Option<String>,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
}

/// `imagetrail history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Filters and format.
    #[command(flatten)]
    pub query: QueryArgs,
    /// Only deployments at or after this time (RFC 3339, "YYYY-MM-DD HH:MM" local, "yesterday 05:00").
    #[arg(long)]
    pub since: Option<String>,
    /// Only deployments at or before this time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only the newest N deployments (after --since/--until), read from the end of each history.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
}

/// `imagetrail metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Only this environment.
    #[arg(long = "env", env = "IMAGETRAIL_ENV")]
    pub env: Option<String>,
    /// The window's start: a duration back from now (30d, 2w, 12h) or a time.
    #[arg(long, default_value = "30d")]
    pub since: String,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
}

/// `imagetrail at TIME`.
#[derive(Debug, Args)]
pub struct AtArgs {
    /// The point in time: RFC 3339, "YYYY-MM-DD HH:MM" in the local zone, or "yesterday 05:00".
    pub time: String,
    /// Filters and format.
    #[command(flatten)]
    pub query: QueryArgs,
}

/// `imagetrail compare REF`.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The candidate image reference.
    pub reference: String,
    /// The app to compare against.
    #[arg(long, env = "IMAGETRAIL_APP")]
    pub app: Option<String>,
    /// The environment to compare against.
    #[arg(long = "env", env = "IMAGETRAIL_ENV", default_value = "deployed")]
    pub env: String,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
    /// Registry access.
    #[command(flatten)]
    pub registry: RegistryOpts,
}

/// `imagetrail where REF`.
#[derive(Debug, Args)]
pub struct WhereArgs {
    /// A digest, a tag reference or a git revision.
    pub reference: String,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
}

/// `imagetrail registry ...`.
#[derive(Debug, Subcommand)]
pub enum RegistryCommand {
    /// Repositories, tags, created time and description.
    Overview(RegistryOverviewArgs),
    /// Delete old manifests of a repository, never a deployed one (dry run unless --yes).
    Prune(PruneArgs),
}

/// `imagetrail registry overview`.
#[derive(Debug, Args)]
pub struct RegistryOverviewArgs {
    /// The registry host[:port].
    #[arg(long, env = "IMAGETRAIL_REGISTRY")]
    pub registry: String,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Registry access.
    #[command(flatten)]
    pub access: RegistryOpts,
}

/// `imagetrail registry prune REPO --keep N`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// The repository, host/path.
    pub repository: String,
    /// How many of the newest tags to keep, by build time (a date alone is that day 00:00 UTC;
    /// a tag whose build time is unknown is always kept and takes none of the N places).
    #[arg(long, value_parser = count)]
    pub keep: usize,
    /// Really delete (without it, only print the plan).
    #[arg(long)]
    pub yes: bool,
    /// Where the records live (every record protects its digests).
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
    /// Registry access.
    #[command(flatten)]
    pub access: RegistryOpts,
}

/// `imagetrail images ...`.
#[derive(Debug, Subcommand)]
pub enum ImagesCommand {
    /// One repository's tags, newest first, the deployed digest marked.
    Overview(ImagesOverviewArgs),
}

/// `imagetrail images overview REPO`.
#[derive(Debug, Args)]
pub struct ImagesOverviewArgs {
    /// The repository, host/path.
    pub repository: String,
    /// Environments whose deployed digest is marked (repeatable).
    #[arg(long = "env", env = "IMAGETRAIL_ENV", value_delimiter = ',')]
    pub envs: Vec<String>,
    /// Output format.
    #[arg(long, env = "IMAGETRAIL_FORMAT", value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// Or PostgreSQL.
    #[command(flatten)]
    pub database: DatabaseOpts,
    /// Registry access.
    #[command(flatten)]
    pub access: RegistryOpts,
}

/// Whether the admission webhook only records or also denies unpinned images.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum AdmissionMode {
    /// Record every admitted Pod's images, always allow.
    #[default]
    Record,
    /// Record, and deny images not pinned by digest.
    Enforce,
}

/// `imagetrail serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "IMAGETRAIL_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the records live.
    #[command(flatten)]
    pub state: StateOpts,
    /// File of API keys, one per line, accepted as `Authorization: Bearer` on the deployments API.
    #[arg(long, env = "IMAGETRAIL_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "IMAGETRAIL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "IMAGETRAIL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Admission webhook mode.
    #[arg(long, env = "IMAGETRAIL_ADMISSION_MODE", value_enum, default_value_t = AdmissionMode::Record)]
    pub admission_mode: AdmissionMode,
    /// Cluster name used in admission environments (`<cluster>/<namespace>`).
    #[arg(long, env = "IMAGETRAIL_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// File of read keys (one per line, as --api-keys-file): the dashboard and the `GET` API
    /// then need one of them or an API key. Without it, reads are open.
    #[arg(long, env = "IMAGETRAIL_READ_KEYS")]
    pub read_keys: Option<PathBuf>,
    /// Also require an API key on the analytics callbacks (register, scanner-error).
    #[arg(long, env = "IMAGETRAIL_CALLBACKS_REQUIRE_KEY")]
    pub callbacks_require_key: bool,
    /// The largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "IMAGETRAIL_MAX_BODY_BYTES", default_value_t = 1024 * 1024, value_parser = body_bytes)]
    pub max_body_bytes: usize,
    /// Seconds one request may take from its first byte to its answer; a client that never
    /// finishes its request is cut off after this.
    #[arg(long, env = "IMAGETRAIL_REQUEST_TIMEOUT", default_value_t = 10.0, value_parser = seconds)]
    pub request_timeout: f64,
    /// The most connections open at once; more are answered 503 (Retry-After) and closed.
    #[arg(long, env = "IMAGETRAIL_MAX_CONNECTIONS", default_value_t = 512, value_parser = connections)]
    pub max_connections: usize,
    /// The most request-body bytes all requests in flight may hold together; a request that
    /// would go over is answered 503 (Retry-After) before its body is read.
    #[arg(long, env = "IMAGETRAIL_MAX_PENDING_BODY_BYTES", default_value_t = 32 * 1024 * 1024, value_parser = body_bytes)]
    pub max_pending_body_bytes: usize,
    /// MiB of memory for the delivery points the dashboard's timeline and delivery metrics
    /// keep between requests (files store only), so a request reads only what was appended
    /// since the last; the histories read least recently are dropped past it. 0: no cache.
    #[arg(long, env = "IMAGETRAIL_POINTS_CACHE_MIB", default_value_t = crate::records::point_cache::DEFAULT_BUDGET_MIB, value_parser = mebibytes)]
    pub points_cache_mib: usize,
    /// Store deployments in PostgreSQL instead of the state directory's files, so several
    /// replicas can share them: postgres://USER:PASSWORD@HOST:PORT/DATABASE (sslmode=,
    /// sslrootcert=). The schema is migrated at start. The callback log stays in --state-dir.
    #[arg(long, env = "IMAGETRAIL_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
}

// Numeric flags. Each goes through one of these parsers, so a hostile value (`nan`, `inf`,
// `1e400`, a negative, an overflow, empty text) is a usage error naming the flag (clap adds
// "for '--flag <VALUE>'"), exit 2, and never reaches a conversion that could panic, such as
// `Duration::from_secs_f64`.

/// The longest duration any seconds flag accepts: a day. Longer is surely a mistake, and it
/// keeps every later `Duration` arithmetic far from overflow.
pub const MAX_SECONDS: f64 = 86_400.0;

/// A number of seconds: finite, more than 0, at most [`MAX_SECONDS`]; fractions allowed.
pub fn seconds(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds; give e.g. 10 or 2.5"))?;
    if !value.is_finite() || value <= 0.0 || value > MAX_SECONDS {
        return Err(format!(
            "{text:?} is not a usable number of seconds; give more than 0 and at most {MAX_SECONDS}"
        ));
    }
    Ok(value)
}

/// A whole number in `min..=max`, with a message that says the range.
fn bounded(text: &str, min: u64, max: u64, what: &str) -> Result<u64, String> {
    let value: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number; give {what} from {min} to {max}"))?;
    if !(min..=max).contains(&value) {
        return Err(format!(
            "{value} is out of range; give {what} from {min} to {max}"
        ));
    }
    Ok(value)
}

/// An exit code, 0 to 255.
pub fn exit_code(text: &str) -> Result<u8, String> {
    bounded(text, 0, 255, "an exit code").map(|v| v as u8)
}

/// Attempts per request, 1 to 100 (the scanner uses at most 10).
pub fn attempts(text: &str) -> Result<u32, String> {
    bounded(text, 1, 100, "a number of attempts").map(|v| v as u32)
}

/// Targets at once, 1 to 100,000 (the scanner uses at most 256).
pub fn concurrency(text: &str) -> Result<usize, String> {
    bounded(text, 1, 100_000, "a concurrency").map(|v| v as usize)
}

/// A count of things, 0 to 1,000,000.
pub fn count(text: &str) -> Result<usize, String> {
    bounded(text, 0, 1_000_000, "a count").map(|v| v as usize)
}

/// A body size in bytes, 1 KiB to 1 GiB.
pub fn body_bytes(text: &str) -> Result<usize, String> {
    bounded(text, 1024, 1 << 30, "a size in bytes").map(|v| v as usize)
}

/// A size in MiB, 0 to 64 GiB.
pub fn mebibytes(text: &str) -> Result<usize, String> {
    bounded(text, 0, 64 * 1024, "a size in MiB").map(|v| v as usize)
}

/// A number of connections, 1 to 1,000,000.
pub fn connections(text: &str) -> Result<usize, String> {
    bounded(text, 1, 1_000_000, "a number of connections").map(|v| v as usize)
}

/// `imagetrail db ...`: the PostgreSQL store (see `src/db.rs`).
#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create or upgrade the schema (a no-op when it is current; refuses a newer one).
    Migrate(DbArgs),
    /// Load the YAML records of a state directory into the database (idempotent by event_id).
    Import(DbTransferArgs),
    /// Write the database out as YAML records into a new state directory.
    Export(DbTransferArgs),
}

/// Which database.
#[derive(Debug, Args, Clone)]
pub struct DbArgs {
    /// postgres://USER:PASSWORD@HOST:PORT/DATABASE (sslmode=disable|prefer|require|verify-full,
    /// sslrootcert=FILE).
    #[arg(long, env = "IMAGETRAIL_DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

/// A database and a state directory.
#[derive(Debug, Args, Clone)]
pub struct DbTransferArgs {
    /// Which database.
    #[command(flatten)]
    pub db: DbArgs,
    /// The directory of YAML records to read (import) or to create (export).
    #[arg(long, env = "IMAGETRAIL_STATE_DIR")]
    pub state_dir: PathBuf,
}
