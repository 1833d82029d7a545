//! Deployment records on the host, in the seed's YAML shapes (seed `003`):
//!
//! * `<state-dir>/<env>/<app>/deploy-info.yml`: the current deployment, replaced atomically.
//! * `<state-dir>/<env>/<app>/deploy-history.yml`: append-only, locked and flushed on append;
//!   a torn last entry is reported with its line number, never silently dropped.
//!
//! `<env>` and `<app>` are each stored as one reversibly encoded path segment, so
//! `cluster/namespace` environments and repository-path apps cannot escape the state directory
//! or collide. The CLI (`imagetrail deploy`, the queries) and the server use this module alone.
//!
//! The same records can live in PostgreSQL instead ([`postgres`], `--database-url`): the
//! commands reach either through one interface, [`RecordStore`] ([`backend`]).

pub mod backend;
mod batch;
mod current;
mod fields;
mod history;
mod info;
mod names;
pub mod point_cache;
mod points;
pub mod postgres;
pub mod protect;
mod range;
mod yaml;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// What can go wrong reading or writing records.
#[derive(Debug, Error)]
pub enum RecordsError {
    /// An environment or app name that cannot be stored (empty, or a `..` segment).
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        /// "environment" or "app".
        what: &'static str,
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A field's value breaks the store's rule for that field (see the README's "Field
    /// limits"); nothing was written.
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field, as stored: `deployed_by`, `platform.os`, `name`, `environment`...
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A deployment dated before the last entry of its app's history: the history is
    /// append-only and kept in `deployed_at` order, so it is refused.
    #[error(
        "deployed_at {given} is before the last recorded deployment of {app:?} in environment \
         {env:?} (deployed_at {last}); the history is append-only and kept in time order: \
         record it with a deployed_at at or after {last}"
    )]
    OutOfOrder {
        /// The environment.
        env: String,
        /// The app.
        app: String,
        /// The deployed_at refused (RFC 3339).
        given: String,
        /// The deployed_at of the app's last entry (RFC 3339).
        last: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// A record file is not valid YAML of the expected shape.
    #[error("{path}:{line}: {message}; fix it by hand, nothing was overwritten")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line where the problem starts.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The history's last entry is incomplete (an append was cut off); the entries before it
    /// are intact and readable through [`Store::read_history`].
    #[error("{0}")]
    TornTail(TornTail),
    /// The `name` is already used by the same repository under another app in the environment.
    #[error(
        "the name {name:?} is already used in environment {env:?} by app {other_app:?} for {repo}; \
         a name must be unique per repository per environment: choose another --name"
    )]
    NameTaken {
        /// The environment.
        env: String,
        /// The name.
        name: String,
        /// The repository.
        repo: String,
        /// The app that holds the name.
        other_app: String,
    },
    /// A deployment without a `name` of a repository that runs in the environment as named
    /// instances (checked only when asked, see [`Checks`]).
    #[error(
        "{repo} runs in environment {env:?} as named instances (e.g. {example:?}); \
         send a name to say which instance this deployment is"
    )]
    NameRequired {
        /// The environment.
        env: String,
        /// The repository.
        repo: String,
        /// One of the names in use.
        example: String,
    },
    /// The PostgreSQL store failed (unreachable, refused the password, a schema this build
    /// does not know, a statement refused); the message says what to check.
    #[error("{0}")]
    Database(Box<postgres::PgError>),
}

pub use backend::{HistoryReader, PgRecords, PointStream, RecordStore, check_names, open};
pub use batch::{Checks, Stamp, Written};
pub use fields::{MAX_LABEL, MAX_NAME, MAX_TOKEN};
pub use history::TornTail;
pub use info::InfoFiles;
pub use point_cache::PointCache;
pub use points::{DeliveryPoint, DeliveryPoints, DigestId, Digests, built_time};
pub use range::{
    HistoryCursor, HistoryRange, MergeReport, OpenHistory, PointsRev, for_each_merged,
};

/// A history as read: the whole entries, and the torn last entry if an append was cut off.
#[derive(Debug, Clone)]
pub struct HistoryRead {
    /// Every whole entry, oldest first.
    pub entries: Vec<Deployment>,
    /// The incomplete last entry, reported with its line.
    pub torn: Option<TornTail>,
}

/// What [`Store::record`] did besides writing the deployment.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// A torn last entry found and moved to `deploy-history.yml.torn` before appending.
    pub moved_torn_tail: Option<TornTail>,
    /// The `deployed_at` the store gave the deployment when it was written, if [`Checks::stamp`]
    /// asked for one (the deployment's own time was then replaced by this).
    pub stamped: Option<DateTime<Utc>>,
}

/// The histories of several apps as read by [`Store::read_histories`]: what could be read,
/// and what could not, side by side.
#[derive(Debug, Default)]
pub struct HistoriesRead {
    /// Every whole entry of every readable history, with `workspace` set to its environment,
    /// in `deployed_at` order.
    pub entries: Vec<Deployment>,
    /// The torn last entries (each history's entries before it are in `entries`).
    pub torn: Vec<TornTail>,
    /// The histories that could not be read whole (a hand-broken entry:
    /// [`RecordsError::Malformed`] with its file and line); a history broken at its tail
    /// contributes no entries.
    pub broken: Vec<RecordsError>,
}

pub use crate::reference::Platform;

/// The image part of a record: identity and build-time metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Registry host and repository path, e.g. `registry.example.com/team/hello`, normalised
    /// when read ([`crate::reference::normalize_repo`]) so that records written in the short
    /// form (`nginx`) compare equal to the full one (`docker.io/library/nginx`).
    #[serde(deserialize_with = "normalised_repo")]
    pub repo: String,
    /// The tag the deployer named (informational: tags move).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The digest that runs: the platform manifest's.
    pub digest: String,
    /// The multi-platform index digest the tag pointed at, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_digest: Option<String>,
    /// The platform that runs.
    #[serde(default)]
    pub platform: Platform,
    /// `org.opencontainers.image.description`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `org.opencontainers.image.created`, else the config's `created` (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub built_at: Option<String>,
    /// `org.opencontainers.image.revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// `org.opencontainers.image.source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// `org.opencontainers.image.title`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
}

impl ImageRecord {
    /// An image by repository and digest, on the default platform (`linux/amd64`), with no
    /// tag and no build metadata: the rest is filled in with struct update syntax.
    pub fn new(repo: impl Into<String>, digest: impl Into<String>) -> ImageRecord {
        ImageRecord {
            repo: repo.into(),
            tag: None,
            digest: digest.into(),
            index_digest: None,
            platform: Platform::default(),
            description: None,
            built_at: None,
            revision: None,
            source: None,
            title: None,
        }
    }
}

/// The deployment part of a record: what cannot exist at build time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    /// When (RFC 3339 UTC).
    pub deployed_at: DateTime<Utc>,
    /// Who.
    pub deployed_by: String,
    /// Where: the environment (the seed calls it workspace).
    pub workspace: String,
    /// Optional service name, unique per repository per environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The event id (UUIDv7, so ids sort by time).
    pub event_id: Uuid,
}

impl DeploymentRecord {
    /// A deployment into `workspace` at `deployed_at` by `deployed_by`, without a name, with a
    /// new event id.
    pub fn new(
        workspace: impl Into<String>,
        deployed_at: DateTime<Utc>,
        deployed_by: impl Into<String>,
    ) -> DeploymentRecord {
        DeploymentRecord {
            deployed_at,
            deployed_by: deployed_by.into(),
            workspace: workspace.into(),
            name: None,
            event_id: Uuid::now_v7(),
        }
    }
}

/// One deployment of one app into one environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The app.
    pub app: String,
    /// The image that runs.
    pub image: ImageRecord,
    /// When, by whom, where.
    pub deployment: DeploymentRecord,
}

/// The records under one state directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Current deployments already read, checked against the files before each use (see
    /// [`Store::current`]); shared by the clones of one store.
    currents: current::Cache,
    /// Closes replaced `deploy-info.yml` files off the writer's path (see [`info::Releaser`]).
    release: info::Releaser,
    /// Paces the replaces of `deploy-info.yml` under [`InfoFiles::AtMostEvery`].
    pacer: info::Pacer,
    /// Delivery points kept between reads (the server's; `None`: every read goes to the file),
    /// see [`point_cache`].
    points: Option<Arc<PointCache>>,
}

impl Store {
    /// Records under `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store {
            root: root.into(),
            currents: current::Cache::default(),
            release: info::Releaser::default(),
            pacer: info::Pacer::default(),
            points: None,
        }
    }

    /// This store, its histories' delivery points kept in `cache` between reads (see
    /// [`point_cache`]); the clones of the store share it.
    pub fn with_point_cache(mut self, cache: Arc<PointCache>) -> Store {
        self.points = Some(cache);
        self
    }

    /// The state directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    fn env_dir(&self, env: &str) -> Result<PathBuf, RecordsError> {
        Ok(self.root.join(names::encode("environment", env)?))
    }

    fn app_dir(&self, env: &str, app: &str) -> Result<PathBuf, RecordsError> {
        Ok(self.env_dir(env)?.join(names::encode("app", app)?))
    }

    /// `<state>/<env>/<app>/deploy-info.yml` (names encoded, validated).
    pub fn info_path(&self, env: &str, app: &str) -> Result<PathBuf, RecordsError> {
        Ok(self.app_dir(env, app)?.join(INFO))
    }

    /// `<state>/<env>/<app>/deploy-history.yml` (names encoded, validated).
    pub fn history_path(&self, env: &str, app: &str) -> Result<PathBuf, RecordsError> {
        Ok(self.app_dir(env, app)?.join(HISTORY))
    }

    /// Append `d` to the app's history (locked, flushed) and then replace its
    /// `deploy-info.yml` atomically. Refuses a duplicate `name` for the same repository in the
    /// same environment used by another app.
    pub fn record(&self, d: &Deployment) -> Result<(), RecordsError> {
        self.record_reporting(d).map(|_| ())
    }

    /// [`Store::record`], also saying whether a torn history tail was moved aside.
    ///
    /// Order and locks: an environment-wide lock (`<env>/.lock`) serialises deploys in one
    /// environment, so the name check and the write are one step; the history file itself is
    /// locked exclusively for the append (for any other writer). The history is appended
    /// first: if the process dies before `deploy-info.yml` is replaced, the history still has
    /// the deployment and `deploy-info.yml` still describes the previous one whole. This is a
    /// batch of one (see [`Store::record_checked_many`]).
    pub fn record_reporting(&self, d: &Deployment) -> Result<Recorded, RecordsError> {
        self.record_with(d, Checks::default())
    }

    /// [`Store::record_reporting`] with `checks` (e.g. [`Stamp::WriteTime`]: `deployed_at` is
    /// the time of the write, see [`Recorded::stamped`]).
    pub fn record_with(&self, d: &Deployment, checks: Checks) -> Result<Recorded, RecordsError> {
        let checks = Checks {
            skip_if_current: false,
            ..checks
        };
        let mut results = self.record_checked_many(&[(d.clone(), checks)]);
        match results.pop().expect("one result per item") {
            Ok(Written::Recorded(r)) => Ok(r),
            Ok(Written::AlreadyCurrent(_)) => unreachable!("skip_if_current was not asked"),
            Err(e) => Err(e),
        }
    }

    /// Every environment that has records, decoded, sorted.
    pub fn environments(&self) -> Result<Vec<String>, RecordsError> {
        list_dirs(&self.root)
    }

    /// Every app recorded in `env`, decoded, sorted.
    pub fn apps(&self, env: &str) -> Result<Vec<String>, RecordsError> {
        let dir = self.env_dir(env)?;
        let mut apps = list_dirs(&dir)?;
        apps.retain(|a| {
            let d = dir.join(names::encode("app", a).unwrap_or_default());
            d.join(INFO).exists() || d.join(HISTORY).exists()
        });
        Ok(apps)
    }

    /// The whole history of `app` in `env`, oldest first. A torn last entry is an error with
    /// its line number.
    pub fn history(&self, env: &str, app: &str) -> Result<Vec<Deployment>, RecordsError> {
        let read = self.read_history(env, app)?;
        match read.torn {
            Some(t) => Err(RecordsError::TornTail(t)),
            None => Ok(read.entries),
        }
    }

    /// The histories of `apps` (environment, app) within `[since, until]`, every entry in one
    /// list in `deployed_at` order. A history that cannot be read (an entry broken by hand) does
    /// not hide the others: it is reported in [`HistoriesRead::broken`] and the rest answered.
    pub fn read_histories(
        &self,
        apps: &[(String, String)],
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> HistoriesRead {
        let range = HistoryRange {
            since,
            until,
            last: None,
        };
        let mut m = range::MergedHistory::open(self, apps, range);
        let entries = std::iter::from_fn(|| m.next_entry()).collect();
        let report = m.into_report();
        HistoriesRead {
            entries,
            torn: report.torn,
            broken: report.broken,
        }
    }

    /// The whole history of `app` in `env`, oldest first, with a torn last entry reported
    /// beside the entries before it rather than as an error.
    pub fn read_history(&self, env: &str, app: &str) -> Result<HistoryRead, RecordsError> {
        self.read_history_range(env, app, None, None)
    }

    /// The history entries deployed within `[since, until]` (either bound optional), found by
    /// bisection so only the entries returned are parsed.
    pub fn read_history_range(
        &self,
        env: &str,
        app: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
    ) -> Result<HistoryRead, RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = open_existing(&path)? else {
            return Ok(HistoryRead {
                entries: vec![],
                torn: None,
            });
        };
        let h = history::HistoryFile::new(&file, &path)?;
        let torn = h.check_tail()?;
        let whole_end = torn.as_ref().map_or(h.len(), |t| t.offset);
        let from = match since {
            // The first entry after the last one strictly before `since`.
            Some(s) => match h.at(s - chrono::Duration::nanoseconds(1), whole_end)? {
                Some(before) => h.next_start(before + 1)?.unwrap_or(whole_end),
                None => 0,
            },
            None => 0,
        };
        let end = match until {
            Some(u) => match h.at(u, whole_end)? {
                Some(last) => h.next_start(last + 1)?.unwrap_or(whole_end).min(whole_end),
                None => 0,
            },
            None => whole_end,
        };
        let entries = h
            .range(from, end.max(from))?
            .into_iter()
            .map(|e| to_deployment(app, e))
            .collect();
        Ok(HistoryRead { entries, torn })
    }

    /// The torn last entry of the history, if an append was cut off (reads only the tail).
    pub fn torn_tail(&self, env: &str, app: &str) -> Result<Option<TornTail>, RecordsError> {
        let path = self.history_path(env, app)?;
        match open_existing(&path)? {
            Some(file) => history::HistoryFile::new(&file, &path)?.check_tail(),
            None => Ok(None),
        }
    }

    /// The most recent history entry of `app` in `env` whose image digest or index digest is
    /// `digest`, found by a substring search from the end (only that entry is parsed).
    pub fn last_with_digest(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<Deployment>, RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = open_existing(&path)? else {
            return Ok(None);
        };
        let h = history::HistoryFile::new(&file, &path)?;
        let end = h.check_tail()?.map_or(h.len(), |t| t.offset);
        let mut end_at = end;
        // The quoted digest also matches inside index_digest; check the parsed entry.
        let needle = yaml::quote(digest);
        while let Some(start) = h.last_containing(needle.as_bytes(), end_at)? {
            let e = h.parse_entry(start)?;
            if e.image.digest == digest || e.image.index_digest.as_deref() == Some(digest) {
                return Ok(Some(to_deployment(app, e)));
            }
            end_at = start;
        }
        Ok(None)
    }

    /// Since when `app` in `env` has run `digest` without interruption: the oldest entry of
    /// the unbroken run of that digest at the end of the history, read backwards.
    pub fn running_since(
        &self,
        env: &str,
        app: &str,
        digest: &str,
    ) -> Result<Option<DateTime<Utc>>, RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = open_existing(&path)? else {
            return Ok(None);
        };
        let h = history::HistoryFile::new(&file, &path)?;
        let mut end = h.check_tail()?.map_or(h.len(), |t| t.offset);
        let mut since = None;
        while let Some(start) = h.prev_start(end)? {
            let e = h.parse_entry(start)?;
            if e.image.digest != digest {
                break;
            }
            since = Some(e.deployment.deployed_at);
            end = start;
        }
        Ok(since)
    }

    /// What ran of `app` in `env` at `t`: the last deployment at or before `t`.
    pub fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        match self.at_reporting(env, app, t)? {
            (_, Some(torn)) => Err(RecordsError::TornTail(torn)),
            (d, None) => Ok(d),
        }
    }

    /// [`Store::at`], with a torn last entry reported beside the answer (which then comes
    /// from the whole entries before it).
    ///
    /// Cost: a bisection over byte offsets (entries are appended in time order), reading a
    /// few kilobytes and parsing two entries (the answer and the last one), whatever the
    /// length of the history.
    pub fn at_reporting(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<(Option<Deployment>, Option<TornTail>), RecordsError> {
        let path = self.history_path(env, app)?;
        let Some(file) = open_existing(&path)? else {
            return Ok((None, None));
        };
        let h = history::HistoryFile::new(&file, &path)?;
        let torn = h.check_tail()?;
        let end = torn.as_ref().map_or(h.len(), |t| t.offset);
        let found = match h.at(t, end)? {
            Some(start) => Some(to_deployment(app, h.parse_entry(start)?)),
            None => None,
        };
        Ok((found, torn))
    }
}

const INFO: &str = "deploy-info.yml";
const HISTORY: &str = "deploy-history.yml";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RecordsError + '_ {
    move |source| RecordsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a stored repository in its normalised form.
fn normalised_repo<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    String::deserialize(d).map(|r| crate::reference::normalize_repo(&r))
}

fn to_deployment(app: &str, e: yaml::HistoryEntry) -> Deployment {
    Deployment {
        app: app.to_string(),
        image: e.image,
        deployment: e.deployment,
    }
}

fn open_existing(path: &Path) -> Result<Option<File>, RecordsError> {
    match File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Decoded names of the directories in `dir`, sorted; stray entries are skipped.
fn list_dirs(dir: &Path) -> Result<Vec<String>, RecordsError> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(io_err(dir))?;
        if !entry.file_type().map_err(io_err(dir))?.is_dir() {
            continue;
        }
        if let Some(name) = entry.file_name().to_str().and_then(names::decode) {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests;
