//! Deployment records on the host, in the seed's YAML shapes (seed `003`):
//!
//! * `<state-dir>/<env>/<app>/deploy-info.yml`: the current deployment, replaced atomically.
//! * `<state-dir>/<env>/<app>/deploy-history.yml`: append-only, locked and flushed on append;
//!   a torn last entry is reported with its line number, never silently dropped.
//!
//! `<env>` and `<app>` are each stored as one reversibly encoded path segment, so
//! `cluster/namespace` environments and repository-path apps cannot escape the state directory
//! or collide. The CLI (`imagetrail deploy`, the queries) and the server use this module alone.

pub mod query;

use std::path::PathBuf;

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
    #[error("{path}:{line}: {message}; fix or remove that entry by hand, nothing was overwritten")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line where the problem starts.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

/// A platform as in an OCI image index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`, when the architecture has variants.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

/// The image part of a record: identity and build-time metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Registry host and repository path, e.g. `registry.example.com/team/hello`.
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
}

impl Store {
    /// Records under `root` (created on the first write).
    pub fn new(root: impl Into<PathBuf>) -> Store {
        Store { root: root.into() }
    }

    /// The state directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Append `d` to the app's history (locked, flushed) and then replace its
    /// `deploy-info.yml` atomically. Refuses a duplicate `name` for the same repository in the
    /// same environment used by another app.
    pub fn record(&self, d: &Deployment) -> Result<(), RecordsError> {
        let _ = d;
        todo!("records::Store::record")
    }

    /// The current deployment of `app` in `env`, if any.
    pub fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, RecordsError> {
        let _ = (env, app);
        todo!("records::Store::current")
    }

    /// Every environment that has records, decoded, sorted.
    pub fn environments(&self) -> Result<Vec<String>, RecordsError> {
        todo!("records::Store::environments")
    }

    /// Every app recorded in `env`, decoded, sorted.
    pub fn apps(&self, env: &str) -> Result<Vec<String>, RecordsError> {
        let _ = env;
        todo!("records::Store::apps")
    }

    /// The whole history of `app` in `env`, oldest first. A torn last entry is an error with
    /// its line number.
    pub fn history(&self, env: &str, app: &str) -> Result<Vec<Deployment>, RecordsError> {
        let _ = (env, app);
        todo!("records::Store::history")
    }

    /// What ran of `app` in `env` at `t`: the last deployment at or before `t`.
    pub fn at(
        &self,
        env: &str,
        app: &str,
        t: DateTime<Utc>,
    ) -> Result<Option<Deployment>, RecordsError> {
        let _ = (env, app, t);
        todo!("records::Store::at")
    }
}
