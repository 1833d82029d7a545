//! What runs now: [`Store::current`], from `deploy-info.yml` checked against the history, and
//! a cache of it that costs two `stat`s per lookup instead of two reads and a YAML parse.
//!
//! The cache matters to the server: every deployment with the name rules reads the current
//! deployment of every app in its environment, and a batch of deployments did that from disk
//! each time. An entry is used only while both files still have the identity (device, inode,
//! size, modification and change times) they had when it was read, so a write by another
//! process (the CLI, a person with an editor) is seen at the next lookup.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    Deployment, HISTORY, INFO, RecordsError, Store, history, io_err, open_existing, to_deployment,
    yaml,
};

/// Current deployments by app directory; see the module documentation.
#[derive(Debug, Clone, Default)]
pub(super) struct Cache(Arc<Mutex<HashMap<PathBuf, Cached>>>);

#[derive(Debug)]
struct Cached {
    stamp: Stamp,
    current: Option<Deployment>,
}

/// The identity of `deploy-info.yml` and `deploy-history.yml` of one app (`None`: no file).
/// A replaced info is a new inode with a new change time; an append grows the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    info: Option<FileStamp>,
    history: Option<FileStamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(dir: &Path) -> Result<Stamp, RecordsError> {
        let file = |name: &str| {
            let path = dir.join(name);
            match std::fs::metadata(&path) {
                Ok(m) => Ok(Some(FileStamp {
                    dev: m.dev(),
                    ino: m.ino(),
                    size: m.size(),
                    mtime: (m.mtime(), m.mtime_nsec()),
                    ctime: (m.ctime(), m.ctime_nsec()),
                })),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(io_err(&path)(e)),
            }
        };
        Ok(Stamp {
            info: file(INFO)?,
            history: file(HISTORY)?,
        })
    }
}

impl Store {
    /// The current deployment of `app` in `env`, if any: `deploy-info.yml`, unless the
    /// history's last whole entry is a later deployment.
    ///
    /// Why the history can be ahead: a deployment is answered once its history entry and its
    /// new `deploy-info.yml` are synced, but the rename that puts that file in place is made
    /// durable by the next sync, not waited for (see [`Store::record_checked_many`]). After a
    /// power loss the info can be one replacement behind, or missing for a first deployment;
    /// the history, durable first, says what runs. A history whose tail cannot be read (edited
    /// by hand) is reported when there is no info to fall back on, and logged otherwise.
    pub fn current(&self, env: &str, app: &str) -> Result<Option<Deployment>, RecordsError> {
        let dir = self.app_dir(env, app)?;
        // Stamped before reading: a file changed in between is read again next time, never
        // kept under a stamp it does not have.
        let stamp = Stamp::of(&dir)?;
        let cached = self
            .currents
            .0
            .lock()
            .expect("cache lock")
            .get(&dir)
            .and_then(|c| (c.stamp == stamp).then(|| c.current.clone()));
        let mut d = match cached {
            Some(d) => d,
            None => {
                let (d, _) = self.read_current(&dir, env, app)?;
                self.remember(dir, stamp, d.clone());
                d
            }
        };
        if let Some(d) = &mut d {
            // The directory is authoritative: the files live where they live.
            d.app = app.to_string();
            d.deployment.workspace = env.to_string();
        }
        Ok(d)
    }

    /// Remember that `d` is what runs in the app directory `dir`, as its files are now: called
    /// by the writer after its rename, while it holds the environment's lock, so the next
    /// lookup needs no read.
    pub(super) fn remember_written(&self, dir: &Path, d: &Deployment) {
        if let Ok(stamp) = Stamp::of(dir) {
            self.remember(dir.to_path_buf(), stamp, Some(d.clone()));
        }
    }

    fn remember(&self, dir: PathBuf, stamp: Stamp, current: Option<Deployment>) {
        self.currents
            .0
            .lock()
            .expect("cache lock")
            .insert(dir, Cached { stamp, current });
    }

    /// [`Store::current`] from the files, and whether `deploy-info.yml` is behind it (missing,
    /// or older than the history's last entry).
    pub(super) fn read_current(
        &self,
        dir: &Path,
        env: &str,
        app: &str,
    ) -> Result<(Option<Deployment>, bool), RecordsError> {
        let info = read_info(&dir.join(INFO))?;
        let last = match last_entry(&dir.join(HISTORY), app) {
            Ok(last) => last,
            Err(e) if info.is_some() => {
                tracing::warn!("{e}; showing deploy-info.yml as the current deployment");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(match (info, last) {
            (Some(info), Some(last))
                if last.deployment.event_id != info.deployment.event_id
                    && last.deployment.deployed_at >= info.deployment.deployed_at =>
            {
                tracing::debug!(
                    env,
                    app,
                    "deploy-info.yml is behind the history (a lost rename); using the history"
                );
                (Some(last), true)
            }
            (Some(info), _) => (Some(info), false),
            (None, last) => {
                let behind = last.is_some();
                (last, behind)
            }
        })
    }
}

/// `deploy-info.yml` at `path`, parsed; `None` when there is none.
fn read_info(path: &Path) -> Result<Option<Deployment>, RecordsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    yaml::parse::<yaml::InfoFile>(&text)
        .map(|f| Some(f.into_deployment()))
        .map_err(|(line, message)| RecordsError::Malformed {
            path: path.to_path_buf(),
            line,
            message,
        })
}

/// The last whole entry of the history at `path` (a torn tail is skipped: it was never
/// answered as stored).
fn last_entry(path: &Path, app: &str) -> Result<Option<Deployment>, RecordsError> {
    let Some(file) = open_existing(path)? else {
        return Ok(None);
    };
    let h = history::HistoryFile::new(&file, path)?;
    let end = h.check_tail()?.map_or(h.len(), |t| t.offset);
    match h.prev_start(end)? {
        Some(start) => Ok(Some(to_deployment(app, h.parse_entry(start)?))),
        None => Ok(None),
    }
}
